//! GTA5 (Richter et al., 2016), SPEC §5.2: `<root>/images/<name>` and `<root>/labels/<name>`,
//! flat folders of PNGs (`00001.png` … `24966.png`). Labels are palette PNGs whose indices
//! are Cityscapes label ids, mapped with the Cityscapes table. GTA5 has no splits: the
//! reference trains on all of it (`gta5_list/all.txt`); `split` is ignored.

use super::cityscapes::LABEL_IDS;
use super::label::{IdTable, LabelEncoding};
use super::layout::Layout;
use std::path::PathBuf;

pub struct Gta5 {
    pub root: PathBuf,
}

impl Layout for Gta5 {
    fn name(&self) -> &'static str {
        "GTA5"
    }
    fn image_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    fn is_image(&self, name: &str) -> bool {
        name.ends_with(".png")
    }
    fn label_path(&self, name: &str) -> PathBuf {
        self.root.join("labels").join(name)
    }
    fn label_encoding(&self) -> LabelEncoding {
        LabelEncoding::Ids8
    }
    fn ids(&self) -> IdTable {
        LABEL_IDS
    }
}
