//! Scoring prediction files of any model against Cityscapes ground truth (`advent score`),
//! found as cityscapesScripts' `evalPixelLevelSemanticLabeling` finds them.
//!
//! The ground-truth frames are `<root>/gtFine/<split>/**/<city>_<seq>_<frame>_gtFine_labelIds.png`
//! (Foggy Cityscapes has the same). For each, the prediction is the one PNG under the
//! prediction folder, searched recursively, whose name starts with `<city>_<seq>_<frame>`
//! (cityscapesScripts' pattern `<city>_<seq>_<frame>*.png`), so `advent predict`'s and
//! `advent eval --save-predictions`' `<stem>_trainids.png` qualify; their `_color.png` and
//! `_entropy.png` pictures beside them are not predictions and are passed over. Predictions
//! that match no frame are ignored, as there.
//!
//! Ground truth of one's own (`dataset = "folder"`, not in the reference): every PNG under the
//! ground-truth folder, `<sub>/<name>.png`, holding Cityscapes label ids (or train ids, with
//! `gt_train_ids`), is scored against `<sub>/<name>_trainids.png` (what `advent predict
//! --recursive` writes for an image `<sub>/<name>.*`) or `<sub>/<name>.png` under the
//! prediction folder: names match exactly, subfolders included.
//!
//! Prediction values are train ids, or Cityscapes label ids (`label_ids`, cityscapesScripts'
//! own format): mapped to train ids, where an ignored label id counts as a miss for the
//! pixel's class, as cityscapesScripts counts it. Frames are read and counted in parallel
//! (rayon), into one confusion matrix.

use super::confusion::{ConfusionMatrix, PairCounts, IDENTITY};
use super::{class_names, Scores};
use crate::dataset::cityscapes::LABEL_IDS;
use crate::dataset::label::{read_ids, LabelEncoding, Samples, IGNORE};
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Suffix of Cityscapes' ground-truth label-id files.
pub const GT_SUFFIX: &str = "_gtFine_labelIds.png";

/// How [`score`] reads and averages.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// `cityscapes` or `foggy-cityscapes` (both read `gtFine`), or `folder` (label PNGs of
    /// one's own, see the module's documentation).
    pub dataset: String,
    pub split: String,
    /// The class set ids are mapped to: 19, or 16 (SYNTHIA protocol).
    pub num_classes: usize,
    /// Class indices the mIoU averages over; empty: all.
    pub subset: Vec<usize>,
    /// Predictions hold Cityscapes label ids instead of train ids.
    pub label_ids: bool,
    /// `folder` ground truth holds train ids (255: ignored) instead of Cityscapes label ids.
    pub gt_train_ids: bool,
    /// Threads reading and counting frames; 0: rayon's global pool (one per core).
    pub threads: usize,
}

impl Default for ScoreOptions {
    /// Cityscapes val, 19 classes, train-id predictions, every core.
    fn default() -> Self {
        ScoreOptions {
            dataset: "cityscapes".into(),
            split: "val".into(),
            num_classes: 19,
            subset: Vec::new(),
            label_ids: false,
            gt_train_ids: false,
            threads: 0,
        }
    }
}

/// What [`score`] scores against: Cityscapes' and Foggy Cityscapes' `gtFine` (the datasets of
/// [`super::EVAL_DATASETS`]) and label PNGs of one's own.
pub const SCORE_DATASETS: [&str; 3] = ["cityscapes", "foggy-cityscapes", "folder"];

/// A ground-truth frame and its prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `<city>_<seq>_<frame>`; for `folder` ground truth, `<sub>/<name>`.
    pub key: String,
    pub ground_truth: PathBuf,
    pub prediction: PathBuf,
}

/// What [`score`] found.
#[derive(Debug, Clone)]
pub struct ScoreReport {
    pub scores: Scores,
    /// Frames scored.
    pub frames: usize,
}

/// Every ground-truth frame of a split, `(key, file)`, sorted by key.
///
/// # Errors
///
/// A missing `gtFine/<split>` folder, or no label files in it.
pub fn ground_truth_frames(root: &Path, split: &str) -> Result<Vec<(String, PathBuf)>> {
    let dir = root.join("gtFine").join(split);
    ensure!(dir.is_dir(), "no ground-truth folder {} (is --gt the Cityscapes root?)", dir.display());
    let mut frames = Vec::new();
    for path in crate::fs::files_under(&dir, true)? {
        let name = file_name(&path);
        if let Some(key) = name.strip_suffix(GT_SUFFIX) {
            frames.push((key.to_string(), path));
        }
    }
    ensure!(!frames.is_empty(), "no `*{GT_SUFFIX}` files under {}", dir.display());
    frames.sort();
    Ok(frames)
}

/// `advent predict`'s pictures, which sit beside its `_trainids.png` and are not predictions.
fn is_picture(name: &str) -> bool {
    name.ends_with("_color.png") || name.ends_with("_entropy.png")
}

/// Finds each frame's prediction under `pred_dir` (recursively).
///
/// # Errors
///
/// Frames without a prediction (one error naming how many and the first ones), or with
/// several.
pub fn match_predictions(pred_dir: &Path, frames: &[(String, PathBuf)]) -> Result<Vec<Frame>> {
    ensure!(pred_dir.is_dir(), "no prediction folder {}", pred_dir.display());
    let mut found: Vec<(String, PathBuf)> = crate::fs::files_under(pred_dir, true)?
        .into_iter()
        .map(|p| (file_name(&p).to_string(), p))
        .filter(|(n, _)| n.ends_with(".png"))
        .collect();
    found.sort();
    let mut matched = Vec::with_capacity(frames.len());
    let mut missing = Vec::new();
    let mut only_pictures = false;
    for (key, gt) in frames {
        let start = found.partition_point(|(n, _)| n.as_str() < key.as_str());
        let candidates: Vec<&(String, PathBuf)> =
            found[start..].iter().take_while(|(n, _)| n.starts_with(key.as_str())).collect();
        let predictions: Vec<&PathBuf> = candidates.iter().filter(|(n, _)| !is_picture(n)).map(|(_, p)| p).collect();
        match predictions[..] {
            [one] => matched.push(Frame { key: key.clone(), ground_truth: gt.clone(), prediction: one.clone() }),
            [] => {
                only_pictures |= !candidates.is_empty();
                missing.push(key.as_str());
            }
            ref several => {
                let list: Vec<String> = several.iter().map(|p| p.display().to_string()).collect();
                bail!("several predictions for frame {key}: {}", list.join(", "));
            }
        }
    }
    if !missing.is_empty() {
        let what = format!(
            "a PNG named <city>_<seq>_<frame>*.png, searched recursively{}",
            if only_pictures { "; _color.png and _entropy.png pictures are not predictions" } else { "" }
        );
        return Err(missing_predictions(&missing, frames.len(), pred_dir, &what));
    }
    Ok(matched)
}

/// The error for ground-truth frames without a prediction: how many, the first ones, and
/// `what` a prediction is.
fn missing_predictions(missing: &[&str], total: usize, pred_dir: &Path, what: &str) -> anyhow::Error {
    const SHOWN: usize = 10;
    anyhow::anyhow!(
        "{} of {total} ground-truth frames have no prediction in {} (a prediction is {what}): {}{}",
        missing.len(),
        pred_dir.display(),
        missing[..missing.len().min(SHOWN)].join(", "),
        if missing.len() > SHOWN { format!(", ... and {} more", missing.len() - SHOWN) } else { String::new() }
    )
}

/// Label PNGs of one's own under `gt_dir` (recursively, hidden entries skipped, `.png` in any
/// case), each with its prediction under `pred_dir`: for `<sub>/<name>.png`,
/// `<sub>/<name>_trainids.png` or `<sub>/<name>.png` there. Sorted by name.
///
/// # Errors
///
/// A missing folder, folders one inside the other, no PNGs under `gt_dir`, frames without a
/// prediction (how many, the first ones) or with both candidates.
pub fn folder_frames(gt_dir: &Path, pred_dir: &Path) -> Result<Vec<Frame>> {
    ensure!(gt_dir.is_dir(), "no ground-truth folder {}", gt_dir.display());
    ensure!(pred_dir.is_dir(), "no prediction folder {}", pred_dir.display());
    let real = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("reading {}", p.display()));
    let (gt_real, pred_real) = (real(gt_dir)?, real(pred_dir)?);
    ensure!(
        !gt_real.starts_with(&pred_real) && !pred_real.starts_with(&gt_real),
        "the prediction folder {} and the ground-truth folder {} must be apart (neither inside the other): \
         a label would be read as its own prediction",
        pred_dir.display(),
        gt_dir.display()
    );
    let is_png = |p: &PathBuf| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let mut labels: Vec<PathBuf> = crate::fs::files_under(gt_dir, true)?.into_iter().filter(is_png).collect();
    labels.sort();
    ensure!(!labels.is_empty(), "no label PNGs under {}", gt_dir.display());
    let mut frames = Vec::with_capacity(labels.len());
    let mut missing = Vec::new();
    for gt in labels {
        let rel = gt.strip_prefix(gt_dir).expect("found under the folder");
        let key = rel.with_extension("").to_string_lossy().into_owned();
        let stem = rel.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let sub = pred_dir.join(rel.parent().unwrap_or(Path::new("")));
        let found: Vec<PathBuf> = [sub.join(format!("{stem}_trainids.png")), pred_dir.join(rel)]
            .into_iter()
            .filter(|p| p.is_file())
            .collect();
        match &found[..] {
            [one] => frames.push(Frame { key, ground_truth: gt.clone(), prediction: one.clone() }),
            [] => missing.push(key),
            [a, b] => bail!("two predictions for {}: {} and {}", gt.display(), a.display(), b.display()),
            _ => unreachable!("two candidates"),
        }
    }
    if !missing.is_empty() {
        let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
        let what = "<sub>/<name>_trainids.png or <sub>/<name>.png for a label <sub>/<name>.png";
        return Err(missing_predictions(&missing, frames.len() + missing.len(), pred_dir, what));
    }
    Ok(frames)
}

/// Scores the predictions under `pred_dir` against the ground truth under `gt_root`;
/// `progress` is called once per frame scored (from the worker threads).
///
/// # Errors
///
/// An unknown dataset; those of [`ground_truth_frames`] and [`match_predictions`]; an
/// unreadable file, a prediction of another size than its ground truth, or values that are
/// not ids of the class set, each naming the file.
pub fn score(
    pred_dir: &Path,
    gt_root: &Path,
    options: &ScoreOptions,
    progress: &(dyn Fn() + Sync),
) -> Result<ScoreReport> {
    ensure!(
        SCORE_DATASETS.contains(&options.dataset.as_str()),
        "unknown dataset `{}` to score against (expected one of: {})",
        options.dataset,
        SCORE_DATASETS.join(", ")
    );
    let n = options.num_classes;
    // Label id → train id, every other byte value ignored (unknown ids are caught first).
    let mut lookup = [IGNORE; 256];
    for (id, train) in LABEL_IDS.lookup(n)?.into_iter().enumerate() {
        lookup[id] = train;
    }
    if let Some(c) = options.subset.iter().find(|&&c| c >= n) {
        bail!("class {c} of the evaluated subset is not one of the {n} classes");
    }
    let frames = match options.dataset.as_str() {
        "folder" => folder_frames(gt_root, pred_dir)?,
        _ => match_predictions(pred_dir, &ground_truth_frames(gt_root, &options.split)?)?,
    };
    let gt_train_ids = options.gt_train_ids && options.dataset == "folder";
    let count = || {
        frames
            .par_iter()
            .map(|frame| {
                let cm = score_frame(frame, n, &lookup, options.label_ids, gt_train_ids);
                progress();
                cm
            })
            .try_reduce(
                || ConfusionMatrix::new(n),
                |mut a, b| {
                    a.merge(&b);
                    Ok(a)
                },
            )
    };
    let cm = if options.threads == 0 {
        count()?
    } else {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.threads)
            .build()
            .context("starting the scoring threads")?;
        pool.install(count)?
    };
    let names = class_names(n);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(ScoreReport { scores: Scores::from_confusion(&cm, &names, &options.subset), frames: frames.len() })
}

/// Both files' pair counts: streamed row by row when both are plain 8-bit single-channel PNGs
/// (what label files and predictions are), else from [`read_ids`], which reads the other
/// layouts or says what is wrong with them.
fn pair_counts(frame: &Frame) -> Result<PairCounts> {
    if let Some(counts) = stream_pair_counts(frame)? {
        return Ok(counts);
    }
    let gt = read_ids(&frame.ground_truth, LabelEncoding::Ids8, "ground truth")?;
    let pred = read_ids(&frame.prediction, LabelEncoding::Ids8, "prediction")?;
    check_sizes(frame, (gt.width, gt.height), (pred.width, pred.height))?;
    let (Samples::U8(truth), Samples::U8(predicted)) = (&gt.samples, &pred.samples) else {
        bail!("8-bit label files read as 16-bit samples");
    };
    PairCounts::of(truth, predicted)
}

fn check_sizes(frame: &Frame, gt: (u32, u32), pred: (u32, u32)) -> Result<()> {
    ensure!(
        gt == pred,
        "prediction {} is {}x{}, its ground truth {} is {}x{}",
        frame.prediction.display(),
        pred.0,
        pred.1,
        frame.ground_truth.display(),
        gt.0,
        gt.1
    );
    Ok(())
}

/// Counts the pairs two PNGs' rows at a time, never holding a whole image (whole 2048×1024
/// images, allocated and freed per frame, cost more in page faults than the counting);
/// `None` unless both are non-interlaced 8-bit greyscale or palette images.
fn stream_pair_counts(frame: &Frame) -> Result<Option<PairCounts>> {
    let open = |path: &Path| -> Result<Option<png::Reader<Cursor<Vec<u8>>>>> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut decoder = png::Decoder::new(Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::IDENTITY);
        let Ok(reader) = decoder.read_info() else { return Ok(None) };
        let info = reader.info();
        let plain = matches!(info.color_type, png::ColorType::Grayscale | png::ColorType::Indexed)
            && info.bit_depth == png::BitDepth::Eight
            && !info.interlaced;
        Ok(plain.then_some(reader))
    };
    let (Some(mut gt), Some(mut pred)) = (open(&frame.ground_truth)?, open(&frame.prediction)?) else {
        return Ok(None);
    };
    let size = |r: &png::Reader<_>| (r.info().width, r.info().height);
    check_sizes(frame, size(&gt), size(&pred))?;
    let mut counts = PairCounts::new();
    let row_error = |what: &str, path: &Path, e: png::DecodingError| {
        anyhow::anyhow!("decoding {what} {}: corrupt or truncated PNG data: {e}", path.display())
    };
    for _ in 0..size(&gt).1 {
        let g = gt.next_row().map_err(|e| row_error("ground truth", &frame.ground_truth, e))?;
        let p = pred.next_row().map_err(|e| row_error("prediction", &frame.prediction, e))?;
        match (g, p) {
            (Some(g), Some(p)) => counts.add(g.data(), p.data())?,
            (None, _) => bail!("decoding ground truth {}: truncated PNG data", frame.ground_truth.display()),
            (_, None) => bail!("decoding prediction {}: truncated PNG data", frame.prediction.display()),
        }
    }
    Ok(Some(counts))
}

/// One frame's confusion matrix: the raw values' pair counts, mapped through the tables.
fn score_frame(
    frame: &Frame,
    num_classes: usize,
    lookup: &[u8; 256],
    label_ids: bool,
    gt_train_ids: bool,
) -> Result<ConfusionMatrix> {
    let counts = pair_counts(frame)?;
    let gt_context = || format!("ground truth {}", frame.ground_truth.display());
    let gt_map = if gt_train_ids {
        known_train_ids(&counts.ground_truth_values(), num_classes).with_context(gt_context)?;
        &IDENTITY
    } else {
        known_label_ids(&counts.ground_truth_values()).with_context(gt_context)?;
        lookup
    };
    let mut cm = ConfusionMatrix::new(num_classes);
    let context = || format!("prediction {}", frame.prediction.display());
    if label_ids {
        known_label_ids(&counts.prediction_values()).with_context(context)?;
        cm.add_counts(&counts, gt_map, lookup, true).with_context(context)?;
    } else {
        cm.add_counts(&counts, gt_map, &IDENTITY, false).with_context(|| {
            let max = counts.prediction_values().iter().rposition(|&c| c > 0).unwrap_or(0);
            let hint = if max < LABEL_IDS.known() { " (label-id predictions need --label-ids)" } else { "" };
            format!("{}{hint}", context())
        })?;
    }
    Ok(cm)
}

/// Fails on values that are no Cityscapes label id (`pixels[value]` > 0 beyond 33), as
/// [`crate::dataset::label::IdTable::validate`] does for a dataset's labels.
fn known_label_ids(pixels: &[u64]) -> Result<()> {
    match values_outside(pixels, |v| v < LABEL_IDS.known()) {
        Some(list) => bail!("ids outside the {} table (0..={}): {list}", LABEL_IDS.name, LABEL_IDS.known() - 1),
        None => Ok(()),
    }
}

/// Fails on values that are neither a train id of the `n` classes nor 255 (ignored).
fn known_train_ids(pixels: &[u64], n: usize) -> Result<()> {
    match values_outside(pixels, |v| v < n || v == usize::from(IGNORE)) {
        Some(list) => bail!("values that are no train id of the {n} classes (0..={}) nor 255 (ignored): {list}", n - 1),
        None => Ok(()),
    }
}

/// The values with pixels (`pixels[value]` > 0) that `allowed` refuses, as `"40 (12 px), ..."`
/// (the first 8); `None` if there are none.
fn values_outside(pixels: &[u64], allowed: impl Fn(usize) -> bool) -> Option<String> {
    let outside: Vec<String> = pixels
        .iter()
        .enumerate()
        .filter(|&(v, &n)| n > 0 && !allowed(v))
        .map(|(v, n)| format!("{v} ({n} px)"))
        .collect();
    (!outside.is_empty()).then(|| {
        format!("{}{}", outside[..outside.len().min(8)].join(", "), if outside.len() > 8 { ", ..." } else { "" })
    })
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}
