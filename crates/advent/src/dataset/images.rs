//! A folder of one's own images (`images`): every `.png`, `.jpg` and `.jpeg` under `<root>`,
//! subfolders included, hidden ones (`.name`) skipped, in name order, without labels. Not in the reference, which knows
//! only its four datasets: this is how a target domain of one's own (a fleet's camera
//! frames, another city) is adapted to. It can only be a target domain; `split` is
//! ignored, and a list file names images relative to `<root>`.

use super::cityscapes::LABEL_IDS;
use super::label::{IdTable, LabelEncoding};
use super::layout::Layout;
use std::path::PathBuf;

pub struct Images {
    pub root: PathBuf,
}

impl Layout for Images {
    fn name(&self) -> &'static str {
        "images"
    }
    fn image_dir(&self) -> PathBuf {
        self.root.clone()
    }
    fn is_image(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        [".png", ".jpg", ".jpeg"].iter().any(|e| lower.ends_with(e))
    }
    fn has_labels(&self) -> bool {
        false
    }
    /// Never read ([`Layout::has_labels`] is false): a path that is not the image.
    fn label_path(&self, name: &str) -> PathBuf {
        self.root.join(".no-labels").join(name)
    }
    fn label_encoding(&self) -> LabelEncoding {
        LabelEncoding::Ids8
    }
    fn ids(&self) -> IdTable {
        LABEL_IDS
    }
}
