//! Foggy Cityscapes (Sakaridis et al., 2018): Cityscapes frames with synthetic fog,
//! `<root>/leftImg8bit_foggy/<split>/<city>/<x>_leftImg8bit_foggy_beta_<β>.png` for
//! β = 0.005, 0.01 and 0.02 side by side; labels are Cityscapes' own
//! (`<root>/gtFine/<split>/<city>/<x>_gtFine_labelIds.png`). A list file may name either
//! the foggy files or the clear Cityscapes ones (`…_leftImg8bit.png`, as in the reference's
//! `cityscapes_list`), which stand for their foggy version at the chosen β.

use super::cityscapes::{gtfine_label, IMAGE_SUFFIX, LABEL_IDS};
use super::label::{IdTable, LabelEncoding};
use super::layout::Layout;
use std::path::PathBuf;

pub struct FoggyCityscapes {
    pub root: PathBuf,
    pub split: String,
    /// Attenuation β; the file names spell it as Rust's `{}` does (`0.005`, `0.01`, `0.02`).
    pub beta: f64,
}

/// The densities Foggy Cityscapes was released with.
pub const BETAS: [f64; 3] = [0.005, 0.01, 0.02];

impl FoggyCityscapes {
    /// The dataset at `root`; `beta` must be one of [`BETAS`] (its files' names spell it).
    pub fn new(root: PathBuf, split: String, beta: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            BETAS.contains(&beta),
            "Foggy Cityscapes' beta (fog density) must be 0.005, 0.01 or 0.02, the released ones; got {beta}"
        );
        Ok(FoggyCityscapes { root, split, beta })
    }

    fn suffix(&self) -> String {
        format!("_leftImg8bit_foggy_beta_{}.png", self.beta)
    }
}

impl Layout for FoggyCityscapes {
    fn name(&self) -> &'static str {
        "Foggy Cityscapes"
    }
    fn image_dir(&self) -> PathBuf {
        self.root.join("leftImg8bit_foggy").join(&self.split)
    }
    fn is_image(&self, name: &str) -> bool {
        name.ends_with(&self.suffix())
    }
    fn listed(&self, line: &str) -> String {
        match line.strip_suffix(IMAGE_SUFFIX) {
            Some(stem) => format!("{stem}{}", self.suffix()),
            None => line.to_string(),
        }
    }
    fn label_path(&self, name: &str) -> PathBuf {
        gtfine_label(&self.root, &self.split, name, &self.suffix())
    }
    fn label_encoding(&self) -> LabelEncoding {
        LabelEncoding::Ids8
    }
    fn ids(&self) -> IdTable {
        LABEL_IDS
    }
}
