//! What every file-based dataset shares: finding its items (walking the folders, or a list
//! file in the reference's format), and loading one item the way the reference does
//! (SPEC §5.1).
//!
//! Each dataset file (`gta5.rs`, `synthia.rs`, `cityscapes.rs`, `foggy.rs`, `mapillary.rs`,
//! `images.rs`) only answers the questions of [`Layout`]: where its images are, where the
//! label of an image is, how labels are stored, which table maps their ids to train ids, and
//! whether images are stretched or fitted and padded to the configured size ([`Fit`]).
//!
//! # Preprocessing and its distance from PIL
//!
//! An item is loaded as `base_dataset.py` loads it: the image decoded as
//! `Image.open(f).convert('RGB')` ([`read_rgb`]), resized to the configured size with
//! Pillow's bicubic filter ([`resize_bicubic`]), turned into BGR minus `IMG_MEAN` in f32
//! ([`to_input_tensor`]); the label read with its stored ids, resized with Pillow's nearest
//! rule for its sample size ([`resize_nearest`]) and mapped to train ids (255 = ignored).
//!
//! Distance from PIL, measured on the real Cityscapes frames in `../shared/data` (four
//! 2048x1024 train frames to 1024x512, 1280x720 and 1914x1052, and 1914x1052 on to
//! 1280x720 as GTA5 frames go; the 256x128 val frame and its labels): **0 differing bytes**
//! against Pillow 13.0.0, so the network inputs are identical to the reference's. The
//! check is `real_frames_match_pillow` in `tests/image.rs` (hashes of PIL's outputs; with
//! `ADVENT_PIL_DUMP` set it prints max |diff| and the count of differing bytes), together
//! with the fixture comparisons of every resize size class in the same file.
//!
//! Differences from the reference that do not change any loaded value:
//! * an image and its label of different sizes load without complaint (both are resized to
//!   the configured size, as in the reference); `advent data check` reports them;
//! * a label id that the dataset's table does not know at all (e.g. 40 in a Cityscapes
//!   `labelIds` file) is an error naming the file, where the reference silently maps it to
//!   255; ids the table knows but ignores map to 255 as in the reference.

use super::label::{map_ids, read_label, IdTable, LabelEncoding, Samples, IGNORE};
use super::{Dataset, Sample};
use crate::image::{read_rgb, resize_bicubic, resize_nearest, to_input_tensor, RgbImage, IMG_MEAN_BGR};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Where a dataset keeps its files and how its labels read: all a dataset file states.
///
/// Names are paths relative to [`Layout::image_dir`], `/`-separated, as in the reference's
/// list files (`00001.png`, `aachen/aachen_000000_000019_leftImg8bit.png`).
pub trait Layout: Send + Sync {
    /// The dataset's name, for messages ("GTA5").
    fn name(&self) -> &'static str;
    /// The folder holding the images.
    fn image_dir(&self) -> PathBuf;
    /// Whether a file found under [`Layout::image_dir`] is one of the dataset's images.
    fn is_image(&self, name: &str) -> bool;
    /// The name a line of a list file stands for (by default the line itself).
    fn listed(&self, line: &str) -> String {
        line.to_string()
    }
    /// Whether the dataset has labels at all (`images`, a folder of one's own, has none).
    fn has_labels(&self) -> bool {
        true
    }
    /// The label file of the image called `name`.
    fn label_path(&self, name: &str) -> PathBuf;
    /// How the label files store their ids.
    fn label_encoding(&self) -> LabelEncoding;
    /// The id → train-id table of the label files.
    fn ids(&self) -> IdTable;
    /// How images reach the configured size.
    fn fit(&self) -> Fit {
        Fit::Stretch
    }
}

/// How an image of any size becomes an input of the configured size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Resized to it, whatever its aspect ratio (the reference's datasets).
    Stretch,
    /// Resized to fit inside it with its aspect ratio kept ([`fitted_size`]), then padded at
    /// the right or bottom with black pixels (labels: ignored); labels at their native size
    /// are padded to the configured aspect ratio instead ([`padded_size`]). DADA's
    /// `resize_with_pad` and `pad_with_fixed_AS`, for Mapillary.
    Pad,
}

/// The size an image of size `from` is resized to before padding to `to` ([`Fit::Pad`]),
/// computed as DADA's `resize_with_pad` does (float64 ratios, truncated): the side that
/// limits fills `to`. At least 1 pixel on each side.
pub fn fitted_size(from: (u32, u32), to: (u32, u32)) -> (u32, u32) {
    let target_ratio = f64::from(to.0) / f64::from(to.1);
    let image_ratio = f64::from(from.0) / f64::from(from.1);
    let (w, h) = if image_ratio > target_ratio {
        (to.0, (f64::from(from.1) * (f64::from(to.0) / f64::from(from.0))) as u32)
    } else {
        ((f64::from(from.0) * (f64::from(to.1) / f64::from(from.1))) as u32, to.1)
    };
    (w.clamp(1, to.0), h.clamp(1, to.1))
}

/// The size a label of size `from` is padded to for the aspect ratio of `to`, as DADA's
/// `pad_with_fixed_AS` computes it (float64, truncated); never smaller than `from` (DADA
/// would fail where rounding made it so).
pub fn padded_size(from: (u32, u32), to: (u32, u32)) -> (u32, u32) {
    let target_ratio = f64::from(to.0) / f64::from(to.1);
    let (w, h) = (f64::from(from.0), f64::from(from.1));
    let image_ratio = w / h;
    let (pw, ph) = if target_ratio > image_ratio {
        ((target_ratio * h) as u32, from.1)
    } else if target_ratio < image_ratio {
        (from.0, (w / target_ratio) as u32)
    } else {
        from
    };
    (pw.max(from.0), ph.max(from.1))
}

/// `samples` (`from`, row-major) at the top left of a `to` canvas filled with `fill`.
fn pad<T: Copy>(samples: &[T], from: (u32, u32), to: (u32, u32), fill: T) -> Vec<T> {
    let (fw, tw) = (from.0 as usize, to.0 as usize);
    let mut out = vec![fill; tw * to.1 as usize];
    for (src, dst) in samples.chunks_exact(fw).zip(out.chunks_exact_mut(tw)) {
        dst[..fw].copy_from_slice(src);
    }
    out
}

/// The size labels are resized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelSize {
    /// The image size (`DatasetSpec::size`): what training uses (`labels_size` defaults to
    /// the image size in the reference).
    #[default]
    SameAsImage,
    /// As stored: what evaluation compares against (the reference's `OUTPUT_SIZE_TARGET`,
    /// 2048x1024, is Cityscapes' native size).
    Native,
    /// A given width × height.
    Fixed(u32, u32),
}

/// One item: its name and files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Path relative to the image folder, `/`-separated.
    pub name: String,
    pub image: PathBuf,
    pub label: PathBuf,
}

/// The names of a layout's images: those of `list` in its order, or else every image under
/// the image folder, sorted by name (byte order, the same on every platform).
///
/// # Errors
///
/// A missing image folder, an unreadable or empty list file, listed files that do not
/// exist (named), or no images at all.
pub fn find_names(layout: &dyn Layout, list: Option<&Path>) -> Result<Vec<String>> {
    let dir = layout.image_dir();
    let names = match list {
        Some(list) => {
            let names = list_names(layout, list)?;
            let missing: Vec<&String> = names.iter().filter(|n| !dir.join(n).is_file()).collect();
            if !missing.is_empty() {
                let shown: Vec<String> = missing.iter().take(5).map(|n| dir.join(n).display().to_string()).collect();
                bail!(
                    "{}: {} file(s) named by list {} do not exist: {}{}",
                    layout.name(),
                    missing.len(),
                    list.display(),
                    shown.join(", "),
                    if missing.len() > 5 { ", ..." } else { "" }
                );
            }
            names
        }
        None => walk_names(layout)?,
    };
    ensure!(
        !names.is_empty(),
        "{}: no images found {}",
        layout.name(),
        match list {
            Some(l) => format!("in list {}", l.display()),
            None => format!("under {}", dir.display()),
        }
    );
    Ok(names)
}

/// The names a list file gives, in its order (one per line, blank lines skipped), without
/// checking that the files exist.
///
/// # Errors
///
/// A missing image folder or an unreadable list file.
pub fn list_names(layout: &dyn Layout, list: &Path) -> Result<Vec<String>> {
    check_image_dir(layout)?;
    let text = std::fs::read_to_string(list).with_context(|| format!("reading list file {}", list.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| layout.listed(l)).collect())
}

/// Every image under the layout's image folder, sorted by name.
///
/// # Errors
///
/// A missing or unreadable image folder.
pub fn walk_names(layout: &dyn Layout) -> Result<Vec<String>> {
    check_image_dir(layout)?;
    let dir = layout.image_dir();
    let files = crate::fs::files_under(&dir, true)?;
    let mut names: Vec<String> =
        files.iter().filter_map(|p| relative_name(&dir, p)).filter(|n| layout.is_image(n)).collect();
    names.sort();
    Ok(names)
}

fn check_image_dir(layout: &dyn Layout) -> Result<()> {
    let dir = layout.image_dir();
    ensure!(dir.is_dir(), "{}: no image folder {} (is the root right?)", layout.name(), dir.display());
    Ok(())
}

/// `path` below `root` as a `/`-separated name; `None` if a part is not UTF-8 (no dataset
/// names its files so).
fn relative_name(root: &Path, path: &Path) -> Option<String> {
    let parts: Option<Vec<&str>> = path.strip_prefix(root).ok()?.iter().map(|c| c.to_str()).collect();
    Some(parts?.join("/"))
}

/// Reads stored ids, resizes them with Pillow's nearest rule for their sample size and maps
/// them to train ids. Returns `width * height` train ids.
fn resize_and_map(samples: &Samples, from: (u32, u32), to: (u32, u32), lookup: &[u8]) -> Vec<u8> {
    let resized = match samples {
        _ if from == to => return map_ids(samples, lookup),
        Samples::U8(s) => Samples::U8(resize_nearest(s, from.0, from.1, to.0, to.1)),
        Samples::U16(s) => Samples::U16(resize_nearest(s, from.0, from.1, to.0, to.1)),
    };
    map_ids(&resized, lookup)
}

/// A dataset in its official folder layout, loaded as the reference loads it.
pub struct FileDataset {
    layout: Box<dyn Layout>,
    items: Vec<Item>,
    size: (u32, u32),
    label_size: Option<LabelSize>,
    num_classes: usize,
    lookup: Vec<u8>,
}

impl FileDataset {
    /// Finds the items of `layout` (see [`find_names`]). Images are resized to `size`
    /// (width × height); labels are loaded, resized to `label_size`, when that is `Some`.
    ///
    /// # Errors
    ///
    /// Those of [`find_names`]; a class count other than 19, 16 or 7, or one the layout's
    /// labels have no table for; labels asked of a layout
    /// without any; with labels, images whose label file does not exist (named).
    pub fn new(
        layout: Box<dyn Layout>,
        list: Option<&Path>,
        size: (u32, u32),
        label_size: Option<LabelSize>,
        num_classes: usize,
    ) -> Result<FileDataset> {
        ensure!(size.0 > 0 && size.1 > 0, "{}: image size {}x{} is empty", layout.name(), size.0, size.1);
        ensure!(
            label_size.is_none() || layout.has_labels(),
            "{}: {} has no labels: it can only be the target domain",
            layout.name(),
            layout.image_dir().display()
        );
        // A dataset read without labels needs no table (Cityscapes is a 7-class target too).
        let lookup = match label_size {
            Some(_) => layout.ids().lookup(num_classes)?,
            None => super::label::check_num_classes(num_classes).map(|()| Vec::new())?,
        };
        let dir = layout.image_dir();
        let items: Vec<Item> = find_names(layout.as_ref(), list)?
            .into_iter()
            .map(|name| Item { image: dir.join(&name), label: layout.label_path(&name), name })
            .collect();
        if label_size.is_some() {
            let missing: Vec<&Item> = items.iter().filter(|i| !i.label.is_file()).collect();
            if !missing.is_empty() {
                let shown: Vec<String> = missing.iter().take(5).map(|i| i.label.display().to_string()).collect();
                bail!(
                    "{}: {} image(s) without a label file: {}{}",
                    layout.name(),
                    missing.len(),
                    shown.join(", "),
                    if missing.len() > 5 { ", ..." } else { "" }
                );
            }
        }
        Ok(FileDataset { layout, items, size, label_size, num_classes, lookup })
    }

    /// The items, in loading order.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// The layout this dataset reads.
    pub fn layout(&self) -> &dyn Layout {
        self.layout.as_ref()
    }

    /// The class count its labels are mapped to (19, 16 or 7).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Item `index`'s label as train ids `[H, W]` int64 at `label_size`.
    fn load_label(&self, item: &Item, label_size: LabelSize) -> Result<Tensor> {
        let raw = read_label(&item.label, self.layout.label_encoding())?;
        self.layout
            .ids()
            .validate(&raw, self.num_classes)
            .with_context(|| format!("label {}", item.label.display()))?;
        let from = (raw.width, raw.height);
        let (ids, to) = match (self.layout.fit(), label_size) {
            (Fit::Stretch, size) => {
                let to = match size {
                    LabelSize::SameAsImage => self.size,
                    LabelSize::Native => from,
                    LabelSize::Fixed(w, h) => (w, h),
                };
                (resize_and_map(&raw.samples, from, to, &self.lookup), to)
            }
            (Fit::Pad, LabelSize::Native) => {
                let to = padded_size(from, self.size);
                (pad(&map_ids(&raw.samples, &self.lookup), from, to, IGNORE), to)
            }
            (Fit::Pad, size) => {
                let to = match size {
                    LabelSize::Fixed(w, h) => (w, h),
                    _ => self.size,
                };
                let inner = fitted_size(from, to);
                (pad(&resize_and_map(&raw.samples, from, inner, &self.lookup), inner, to, IGNORE), to)
            }
        };
        Ok(Tensor::from_slice(&ids).view([i64::from(to.1), i64::from(to.0)]).to_kind(tch::Kind::Int64))
    }
}

impl Dataset for FileDataset {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let item = self.items.get(index).with_context(|| {
            format!("{} item {index} out of range ({} items)", self.layout.name(), self.items.len())
        })?;
        let img = read_rgb(&item.image)?;
        let img = match self.layout.fit() {
            _ if img.dimensions() == self.size => img,
            Fit::Stretch => resize_bicubic(&img, self.size.0, self.size.1),
            Fit::Pad => {
                let inner = fitted_size(img.dimensions(), self.size);
                let img = if img.dimensions() == inner { img } else { resize_bicubic(&img, inner.0, inner.1) };
                let padded = pad(img.as_raw().as_chunks::<3>().0, inner, self.size, [0, 0, 0]);
                RgbImage::from_raw(self.size.0, self.size.1, padded.concat()).expect("buffer size matches")
            }
        };
        let image = to_input_tensor(&img, IMG_MEAN_BGR).squeeze_dim(0);
        let label = match self.label_size {
            Some(s) => Some(self.load_label(item, s)?),
            None => None,
        };
        let name =
            Path::new(&item.name).file_stem().map_or_else(|| item.name.clone(), |s| s.to_string_lossy().into_owned());
        Ok(Sample { image, label, name })
    }
}
