//! Datasets: where the images and labels of a domain are, how ids map to train ids, and how
//! they are loaded for training and evaluation.
//!
//! A dataset yields preprocessed [`Sample`]s exactly as the reference prepares them
//! (SPEC §5.1): the image resized bicubically (bit-exact with PIL) to the configured size,
//! RGB turned to BGR, the BGR mean subtracted, no scaling and no augmentation; the label
//! resized with nearest neighbour and mapped to train ids (255 = ignored).

pub mod synthetic;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use tch::Tensor;

/// One preprocessed item.
#[derive(Debug)]
pub struct Sample {
    /// `[3, H, W]` float32, BGR minus the mean, on the CPU.
    pub image: Tensor,
    /// `[H, W]` int64 train ids, 255 where ignored; `None` for datasets used without labels.
    pub label: Option<Tensor>,
    /// A name for messages and outputs (the file stem, or `synthetic-<index>`).
    pub name: String,
}

/// A finite, indexable collection of samples. Implementations are cheap to share between
/// loading threads.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Loads and preprocesses item `index` (< `len()`); errors name the file.
    fn get(&self, index: usize) -> Result<Sample>;
}

/// Which dataset a configuration names, and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSpec {
    /// `gta5`, `synthia`, `cityscapes`, `foggy-cityscapes` or `synthetic`.
    pub kind: String,
    /// Root folder in the dataset's official layout (unused by `synthetic`).
    pub root: PathBuf,
    /// Split (`train`, `val`, `all`, ...).
    pub split: String,
    /// Optional list file in the reference's format restricting and ordering the items.
    pub list: Option<PathBuf>,
    /// Size the images (and labels) are resized to, width × height.
    pub size: (u32, u32),
    /// Whether labels are loaded (the target domain trains without them).
    pub labels: bool,
    /// Class set: 19 (Cityscapes protocol) or 16 (SYNTHIA protocol).
    pub num_classes: usize,
    /// Foggy Cityscapes' attenuation β (0.005, 0.01 or 0.02).
    pub foggy_beta: f64,
    /// Seed and item count of the `synthetic` generator.
    pub synthetic_seed: u64,
    pub synthetic_len: usize,
    /// `source` or `target` appearance for the `synthetic` generator.
    pub synthetic_domain: synthetic::Domain,
}

/// Opens the dataset a spec names.
pub fn open(spec: &DatasetSpec) -> Result<Arc<dyn Dataset>> {
    match spec.kind.as_str() {
        "synthetic" => Ok(Arc::new(synthetic::SyntheticScenes::new(spec)?)),
        other => anyhow::bail!(
            "dataset `{other}` cannot be read yet (known: synthetic); the readers of GTA5, \
             SYNTHIA, Cityscapes and Foggy Cityscapes arrive with the dataset work"
        ),
    }
}
