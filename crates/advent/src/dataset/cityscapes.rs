//! Cityscapes (Cordts et al., 2016), SPEC §5.3: images
//! `<root>/leftImg8bit/<split>/<city>/<x>_leftImg8bit.png`, labels
//! `<root>/gtFine/<split>/<city>/<x>_gtFine_labelIds.png` (8-bit label ids). List files
//! name images relative to `leftImg8bit/<split>` (`aachen/aachen_000000_000019_leftImg8bit.png`,
//! as in the reference's `cityscapes_list/train.txt`). As a target domain it is read without
//! labels, so `gtFine/train` need not be on disk.

use super::label::{IdTable, LabelEncoding, IGNORE};
use super::layout::Layout;
use crate::classes::CITYSCAPES_19;
use std::path::PathBuf;

/// Cityscapes label ids 0..=33 (cityscapesScripts `labels.py`; GTA5 uses the same ids).
/// The protocol's 19 classes get their train ids, every other id is ignored (0–6, 9, 10, 14,
/// 15, 16, 18, 29, 30). `license plate` (id -1) is never written into `labelIds` files, so
/// any id above 33 is an error.
pub const LABEL_IDS: IdTable =
    IdTable { name: "Cityscapes label ids", to_train19: Some(&TRAIN19), to_train7: None, train_ids: false };

const TRAIN19: [u8; 34] = {
    let mut t = [IGNORE; 34];
    let mut i = 0;
    while i < CITYSCAPES_19.len() {
        t[CITYSCAPES_19[i].label_id as usize] = i as u8;
        i += 1;
    }
    t
};

/// Suffix of Cityscapes image files.
pub const IMAGE_SUFFIX: &str = "_leftImg8bit.png";

/// The `gtFine` label ids file of an image `<city>/<x><suffix>` of `split`.
pub fn gtfine_label(root: &std::path::Path, split: &str, name: &str, suffix: &str) -> PathBuf {
    let stem = name.strip_suffix(suffix).unwrap_or_else(|| name.rsplit_once('.').map_or(name, |(s, _)| s));
    root.join("gtFine").join(split).join(format!("{stem}_gtFine_labelIds.png"))
}

pub struct Cityscapes {
    pub root: PathBuf,
    pub split: String,
}

impl Layout for Cityscapes {
    fn name(&self) -> &'static str {
        "Cityscapes"
    }
    fn image_dir(&self) -> PathBuf {
        self.root.join("leftImg8bit").join(&self.split)
    }
    fn is_image(&self, name: &str) -> bool {
        name.ends_with(IMAGE_SUFFIX)
    }
    fn label_path(&self, name: &str) -> PathBuf {
        gtfine_label(&self.root, &self.split, name, IMAGE_SUFFIX)
    }
    fn label_encoding(&self) -> LabelEncoding {
        LabelEncoding::Ids8
    }
    fn ids(&self) -> IdTable {
        LABEL_IDS
    }
}
