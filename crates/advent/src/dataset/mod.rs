//! Datasets: where the images and labels of a domain are, how ids map to train ids, and how
//! they are loaded for training and evaluation.
//!
//! A dataset yields preprocessed [`Sample`]s exactly as the reference prepares them
//! (SPEC §5.1): the image resized bicubically (bit-exact with PIL) to the configured size,
//! RGB turned to BGR, the BGR mean subtracted, no scaling and no augmentation; the label
//! resized with nearest neighbour and mapped to train ids (255 = ignored).
//!
//! * one short file per dataset says where its files are and how its labels read:
//!   [`gta5`], [`synthia`], [`cityscapes`], [`foggy`], [`mapillary`], and [`images`] (a
//!   folder of one's own, unlabelled); [`synthetic`] generates scenes; [`pseudo`] gives any
//!   of them labels of train ids from a folder (IntraDA's pseudo-labels);
//! * [`layout`] finds the items of any of them and loads one ([`FileDataset`]); [`label`]
//!   reads label files as stored and holds the id → train-id tables;
//! * [`loader`] turns a dataset into endless, seeded, resumable batches, loaded ahead by
//!   worker threads; [`check`] reads a whole dataset and reports its problems
//!   (`advent data check`).

pub mod check;
pub mod cityscapes;
pub mod foggy;
pub mod gta5;
pub mod images;
pub mod label;
pub mod layout;
pub mod loader;
pub mod mapillary;
pub mod pseudo;
pub mod synthetic;
pub mod synthia;

pub use layout::{FileDataset, Fit, LabelSize, Layout};
pub use loader::{Batch, Loader, LoaderConfig, OrderState};
pub use synthia::SynthiaLabels;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
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
    /// `gta5`, `synthia`, `cityscapes`, `foggy-cityscapes`, `mapillary`, `images` or
    /// `synthetic`.
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
    /// Class set: 19 (Cityscapes protocol), 16 (SYNTHIA → Cityscapes) or 7 (SYNTHIA →
    /// Mapillary).
    pub num_classes: usize,
    /// Foggy Cityscapes' attenuation β (0.005, 0.01 or 0.02).
    pub foggy_beta: f64,
    /// A folder of train-id labels (`<stem>.png`) read instead of the dataset's own
    /// ([`pseudo`]: IntraDA's pseudo-labels, written by `advent rank`).
    pub pseudo_labels: Option<PathBuf>,
    /// Seed and item count of the `synthetic` generator.
    pub synthetic_seed: u64,
    pub synthetic_len: usize,
    /// `source` or `target` appearance for the `synthetic` generator (the kinds
    /// `synthetic-source` and `synthetic-target` force one).
    pub synthetic_domain: synthetic::Domain,
    /// Strength of the generator's target appearance (1 = the default domain shift).
    pub synthetic_shift: f32,
}

/// The datasets read from files, by `DatasetSpec::kind`: the five in their official folder
/// layouts, and `images` (any folder of images, without labels).
pub const FILE_KINDS: [&str; 6] = ["gta5", "synthia", "cityscapes", "foggy-cityscapes", "mapillary", "images"];

/// What opening a file-based dataset may choose beyond its [`DatasetSpec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Size of the loaded labels (default: the image size, as in training).
    pub label_size: LabelSize,
    /// Which SYNTHIA label set to read (default: `parsed_LABELS` when present).
    pub synthia_labels: SynthiaLabels,
}

/// Whether `kind` names the built-in generator.
pub fn is_synthetic(kind: &str) -> bool {
    matches!(kind, "synthetic" | "synthetic-source" | "synthetic-target")
}

/// Opens the dataset a spec names.
pub fn open(spec: &DatasetSpec) -> Result<Arc<dyn Dataset>> {
    open_with(spec, &OpenOptions::default())
}

/// Opens the dataset a spec names, with options (evaluation loads labels at their native
/// size: `LabelSize::Native`).
pub fn open_with(spec: &DatasetSpec, options: &OpenOptions) -> Result<Arc<dyn Dataset>> {
    match is_synthetic(&spec.kind) {
        true => Ok(Arc::new(synthetic::SyntheticScenes::new(spec)?)),
        false => Ok(Arc::new(open_files(spec, options)?)),
    }
}

/// The folder layout of a file-based dataset kind (see [`FILE_KINDS`]) at `spec.root`, with
/// its labels from `spec.pseudo_labels` when that is set.
pub fn layout(spec: &DatasetSpec, synthia_labels: SynthiaLabels) -> Result<Box<dyn Layout>> {
    let images = layout_of(&spec.kind, &spec.root, &spec.split, spec.foggy_beta, synthia_labels)?;
    Ok(match &spec.pseudo_labels {
        Some(labels) => Box::new(pseudo::PseudoLabels { images, labels: labels.clone() }),
        None => images,
    })
}

/// The folder layout of dataset `kind` (see [`FILE_KINDS`]) at `root`. `split` is used by
/// Cityscapes, Foggy Cityscapes and Mapillary, `foggy_beta` by Foggy Cityscapes,
/// `synthia_labels` by SYNTHIA.
pub fn layout_of(
    kind: &str,
    root: &Path,
    split: &str,
    foggy_beta: f64,
    synthia_labels: SynthiaLabels,
) -> Result<Box<dyn Layout>> {
    let root = root.to_path_buf();
    let split = split.to_string();
    Ok(match kind {
        "gta5" => Box::new(gta5::Gta5 { root }),
        "synthia" => Box::new(synthia::Synthia::new(root, synthia_labels)),
        "cityscapes" => Box::new(cityscapes::Cityscapes { root, split }),
        "foggy-cityscapes" => Box::new(foggy::FoggyCityscapes::new(root, split, foggy_beta)?),
        "mapillary" => Box::new(mapillary::Mapillary::new(root, &split)),
        "images" => Box::new(images::Images { root }),
        other => bail!("unknown dataset `{other}` (known: {}, synthetic)", FILE_KINDS.join(", ")),
    })
}

/// Opens a file-based dataset (see [`FILE_KINDS`]) as its concrete type.
pub fn open_files(spec: &DatasetSpec, options: &OpenOptions) -> Result<FileDataset> {
    let layout = layout(spec, options.synthia_labels)?;
    FileDataset::new(
        layout,
        spec.list.as_deref(),
        spec.size,
        spec.labels.then_some(options.label_size),
        spec.num_classes,
    )
}
