//! Pseudo-labels: any dataset's images with labels of train ids from a folder of one's own,
//! as IntraDA's intra-domain stage trains on the easy target images and the argmax of the
//! inter-domain network (`advent rank` writes them; [IDA] `intrada/cityscapes.py` reads
//! `color_masks/<file name>` without any id mapping). The label of image `<dir>/<x>.<ext>`
//! is `<labels>/<x>.png`, 8-bit train ids (255 ignored).

use super::label::{IdTable, LabelEncoding, TRAIN_IDS};
use super::layout::{Fit, Layout};
use std::path::{Path, PathBuf};

pub struct PseudoLabels {
    /// The dataset whose images are read.
    pub images: Box<dyn Layout>,
    /// The folder of `<stem>.png` train-id labels.
    pub labels: PathBuf,
}

/// The pseudo-label file of an image called `name` (a list-file name such as
/// `aachen/aachen_000000_000019_leftImg8bit.png`) in `labels`: `<labels>/<stem>.png`.
pub fn label_file(labels: &Path, name: &str) -> PathBuf {
    let file = name.rsplit('/').next().unwrap_or(name);
    let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
    labels.join(format!("{stem}.png"))
}

impl Layout for PseudoLabels {
    fn name(&self) -> &'static str {
        self.images.name()
    }
    fn image_dir(&self) -> PathBuf {
        self.images.image_dir()
    }
    fn is_image(&self, name: &str) -> bool {
        self.images.is_image(name)
    }
    fn listed(&self, line: &str) -> String {
        self.images.listed(line)
    }
    fn label_path(&self, name: &str) -> PathBuf {
        label_file(&self.labels, name)
    }
    fn label_encoding(&self) -> LabelEncoding {
        LabelEncoding::Ids8
    }
    fn ids(&self) -> IdTable {
        TRAIN_IDS
    }
    fn fit(&self) -> Fit {
        self.images.fit()
    }
}
