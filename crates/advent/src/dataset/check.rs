//! `advent data check`: reads every file of a dataset as training would, and reports what
//! it holds (counts, image sizes, pixels per class) and every problem, each naming its file.

use super::label::{read_label, IdTable, LabelError, IGNORE};
use super::layout::{list_names, walk_names, Layout};
use crate::classes::class_names;
use crate::image::read_rgb;
use anyhow::{ensure, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What is wrong with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// Named by the list file but not on disk.
    MissingImage,
    /// Missing, empty, not a PNG/JPEG, corrupt or truncated.
    UnreadableImage,
    /// The image has no label file.
    MissingLabel,
    /// Not a PNG, corrupt or truncated.
    UnreadableLabel,
    /// A PNG of the wrong bit depth or channel layout for the dataset's labels.
    WrongBitDepth,
    /// Image and label differ in size.
    SizeMismatch,
    /// Label ids that the dataset's id table does not know.
    UnknownIds,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file concerned.
    pub path: PathBuf,
    pub kind: ProblemKind,
    /// What exactly, in words.
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.detail)
    }
}

/// Pixels of one train id over the whole dataset (at native resolution).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassPixels {
    pub train_id: usize,
    /// cityscapesScripts spelling.
    pub name: String,
    pub pixels: u64,
}

/// What a check found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The dataset ("GTA5").
    pub dataset: String,
    /// Where its images are.
    pub image_dir: PathBuf,
    /// Images examined (found by walking, or named by the list file).
    pub images: usize,
    /// Whether labels were examined.
    pub labels_checked: bool,
    /// Labels read successfully.
    pub labels_read: usize,
    /// Count of images of each size, `"WxH"` → count.
    pub image_sizes: BTreeMap<String, usize>,
    /// Class set the label ids were mapped to (19, 16 or 7).
    pub num_classes: usize,
    /// Pixels per train id, in train-id order.
    pub class_pixels: Vec<ClassPixels>,
    /// Pixels of ids the protocol ignores (train id 255).
    pub ignored_pixels: u64,
    /// Pixels of ids the table does not know at all.
    pub unknown_pixels: u64,
    /// Every problem, in item order.
    pub problems: Vec<Problem>,
}

/// The share of each class among a report's labelled pixels (ignored and unknown ids left
/// out), read from the JSON `advent data check --json` writes: the source's class prior
/// `p_s` of the paper's class-ratio prior.
///
/// # Errors
///
/// An unreadable file or not such a report, another class count than `num_classes`, or no
/// labelled pixels (labels not checked), each naming the file.
pub fn class_shares(path: &Path, num_classes: usize) -> Result<Vec<f64>> {
    #[derive(Deserialize)]
    struct Report {
        images: usize,
        labels_read: usize,
        num_classes: usize,
        labels_checked: bool,
        class_pixels: Vec<ClassPixels>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the JSON report of `advent data check`", path.display()))?;
    ensure!(
        report.num_classes == num_classes && report.class_pixels.len() == num_classes,
        "{} counts pixels of {} classes, the network has {num_classes}",
        path.display(),
        report.num_classes
    );
    let total: u64 = report.class_pixels.iter().map(|c| c.pixels).sum();
    ensure!(
        report.labels_checked && total > 0,
        "{} has no labelled pixels (checked with --images-only?)",
        path.display()
    );
    ensure!(
        report.labels_read == report.images,
        "{}: only {} of {} labels were read (the shares would leave the others out): fix the dataset or check \
         a list of the readable ones",
        path.display(),
        report.labels_read,
        report.images
    );
    let mut shares = vec![0.0; num_classes];
    for c in &report.class_pixels {
        ensure!(c.train_id < num_classes, "{}: train id {} of {num_classes} classes", path.display(), c.train_id);
        shares[c.train_id] = c.pixels as f64 / total as f64;
    }
    Ok(shares)
}

/// A dataset about to be checked: its items are known, none is read yet.
pub struct Check {
    layout: Box<dyn Layout>,
    /// `(name, whether the image exists)`; only listed names can be missing.
    names: Vec<(String, bool)>,
    num_classes: usize,
    labels: bool,
}

/// Per-item findings, merged over items.
#[derive(Default)]
struct Tally {
    sizes: BTreeMap<String, usize>,
    id_counts: Vec<u64>,
    labels_read: usize,
    problems: Vec<(usize, Problem)>,
}

impl Tally {
    fn merge(mut self, other: Tally) -> Tally {
        for (k, v) in other.sizes {
            *self.sizes.entry(k).or_default() += v;
        }
        if self.id_counts.len() < other.id_counts.len() {
            self.id_counts.resize(other.id_counts.len(), 0);
        }
        for (a, b) in self.id_counts.iter_mut().zip(other.id_counts) {
            *a += b;
        }
        self.labels_read += other.labels_read;
        self.problems.extend(other.problems);
        self
    }
}

impl Check {
    /// Finds the items of `layout` (walking its folders, or from `list`); labels mapped to
    /// `num_classes` (19, 16 or 7) are examined when `labels` is set and the layout has any.
    ///
    /// # Errors
    ///
    /// A missing image folder, an unreadable list file, no items, a bad class count.
    pub fn new(layout: Box<dyn Layout>, list: Option<&Path>, num_classes: usize, labels: bool) -> Result<Check> {
        let labels = labels && layout.has_labels();
        match labels {
            true => layout.ids().lookup(num_classes).map(drop)?,
            false => super::label::check_num_classes(num_classes)?,
        }
        let names: Vec<(String, bool)> = match list {
            Some(list) => {
                let dir = layout.image_dir();
                list_names(layout.as_ref(), list)?
                    .into_iter()
                    .map(|n| {
                        let exists = dir.join(&n).is_file();
                        (n, exists)
                    })
                    .collect()
            }
            None => walk_names(layout.as_ref())?.into_iter().map(|n| (n, true)).collect(),
        };
        ensure!(!names.is_empty(), "{}: no images found under {}", layout.name(), layout.image_dir().display());
        Ok(Check { layout, names, num_classes, labels })
    }

    /// Number of items to examine.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Reads every item, in parallel on the current rayon pool, calling `progress` after
    /// each.
    pub fn run(&self, progress: &(dyn Fn() + Sync)) -> CheckReport {
        let ids = self.layout.ids();
        let tally = self
            .names
            .par_iter()
            .enumerate()
            .map(|(i, (name, exists))| {
                let t = self.item(i, name, *exists, &ids);
                progress();
                t
            })
            .reduce(Tally::default, Tally::merge);
        let lookup = ids.lookup(self.num_classes).expect("checked in new");
        let names = class_names(self.num_classes).expect("checked in new");
        let mut class_pixels: Vec<ClassPixels> = names
            .iter()
            .enumerate()
            .map(|(train_id, name)| ClassPixels { train_id, name: name.to_string(), pixels: 0 })
            .collect();
        let (mut ignored, mut unknown) = (0, 0);
        for (id, &n) in tally.id_counts.iter().enumerate() {
            match lookup.get(id) {
                Some(&IGNORE) => ignored += n,
                Some(&t) => class_pixels[usize::from(t)].pixels += n,
                None => unknown += n,
            }
        }
        let mut problems = tally.problems;
        problems.sort_by_key(|a| (a.0, a.1.kind));
        CheckReport {
            dataset: self.layout.name().to_string(),
            image_dir: self.layout.image_dir(),
            images: self.names.len(),
            labels_checked: self.labels,
            labels_read: tally.labels_read,
            image_sizes: tally.sizes,
            num_classes: self.num_classes,
            class_pixels,
            ignored_pixels: ignored,
            unknown_pixels: unknown,
            problems: problems.into_iter().map(|(_, p)| p).collect(),
        }
    }

    fn item(&self, index: usize, name: &str, exists: bool, ids: &IdTable) -> Tally {
        let mut t = Tally::default();
        let mut problem = |path: &Path, kind, detail: String| {
            t.problems.push((index, Problem { path: path.to_path_buf(), kind, detail }))
        };
        let image_path = self.layout.image_dir().join(name);
        let mut image_size = None;
        if !exists {
            problem(&image_path, ProblemKind::MissingImage, "named by the list file but does not exist".into());
        } else {
            match read_rgb(&image_path) {
                Ok(img) => image_size = Some(img.dimensions()),
                Err(e) => problem(&image_path, ProblemKind::UnreadableImage, root_cause(&e)),
            }
        }
        let mut label = None;
        if self.labels {
            let label_path = self.layout.label_path(name);
            if !label_path.is_file() {
                problem(
                    &label_path,
                    ProblemKind::MissingLabel,
                    format!("no label file for image {}", image_path.display()),
                );
            } else {
                match read_label(&label_path, self.layout.label_encoding()) {
                    Ok(l) => label = Some((label_path, l)),
                    Err(e) => {
                        let kind = match e.downcast_ref::<LabelError>() {
                            Some(LabelError::WrongFormat { .. }) => ProblemKind::WrongBitDepth,
                            _ => ProblemKind::UnreadableLabel,
                        };
                        problem(&label_path, kind, root_cause(&e));
                    }
                }
            }
        }
        if let Some((path, l)) = &label {
            if let Some((w, h)) = image_size {
                if (w, h) != (l.width, l.height) {
                    problem(
                        path,
                        ProblemKind::SizeMismatch,
                        format!("label is {}x{}, its image {} is {w}x{h}", l.width, l.height, image_path.display()),
                    );
                }
            }
            if let Err(e) = ids.validate(l, self.num_classes) {
                problem(path, ProblemKind::UnknownIds, e.to_string());
            }
        }
        if let Some((w, h)) = image_size {
            t.sizes.insert(format!("{w}x{h}"), 1);
        }
        if let Some((_, l)) = label {
            t.labels_read = 1;
            t.id_counts = l.id_counts();
        }
        t
    }
}

/// The message of an error without its outermost layer, which names the file (the
/// problem's path already does).
fn root_cause(e: &anyhow::Error) -> String {
    let inner: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
    if inner.is_empty() {
        e.to_string()
    } else {
        inner.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(num_classes: usize, pixels: &[u64], labels_checked: bool) -> String {
        let classes: Vec<String> = (0..num_classes)
            .map(|i| {
                format!(r#"{{"train_id": {i}, "name": "c{i}", "pixels": {}}}"#, pixels.get(i).copied().unwrap_or(0))
            })
            .collect();
        format!(
            r#"{{"dataset": "GTA5", "images": 2, "labels_read": 2, "labels_checked": {labels_checked}, "num_classes": {num_classes},
                "class_pixels": [{}], "ignored_pixels": 999, "unknown_pixels": 0, "problems": []}}"#,
            classes.join(", ")
        )
    }

    #[test]
    fn class_shares_of_a_report_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        // 300 road, 100 sidewalk pixels (the 999 ignored ones do not count): 3/4 and 1/4.
        std::fs::write(&path, report(19, &[300, 100], true)).unwrap();
        let shares = class_shares(&path, 19).unwrap();
        assert_eq!(shares.len(), 19);
        assert_eq!((shares[0], shares[1]), (0.75, 0.25));
        assert!(shares[2..].iter().all(|&s| s == 0.0));
        let e = format!("{:#}", class_shares(&path, 16).unwrap_err());
        assert!(e.contains("report.json counts pixels of 19 classes, the network has 16"), "{e}");
        std::fs::write(&path, report(19, &[], false)).unwrap();
        let e = format!("{:#}", class_shares(&path, 19).unwrap_err());
        assert!(e.contains("no labelled pixels"), "{e}");
        std::fs::write(&path, report(19, &[300, 100], true).replace("\"labels_read\": 2", "\"labels_read\": 1"))
            .unwrap();
        let e = format!("{:#}", class_shares(&path, 19).unwrap_err());
        assert!(e.contains("only 1 of 2 labels were read"), "{e}");
        std::fs::write(&path, "{\"miou\": 40.0}").unwrap();
        let e = format!("{:#}", class_shares(&path, 19).unwrap_err());
        assert!(e.contains("is not the JSON report of `advent data check`"), "{e}");
        let e = format!("{:#}", class_shares(&dir.path().join("missing.json"), 19).unwrap_err());
        assert!(e.contains("reading") && e.contains("missing.json"), "{e}");
    }
}
