//! Evaluating every checkpoint of a training run (`advent eval --sweep`), the reference's
//! `best` test mode (SPEC §6): snapshots in iteration order, each result cached in the run
//! folder so that a re-run skips finished ones, optionally following a run that is still
//! training until its last iteration is evaluated.
//!
//! ```text
//! <run>/eval/<key>/iter_002000.json   one checkpoint's result: its Scores, and the size and
//!                                     time of the model.pth it came from
//! <run>/eval/<key>/scores.csv         iteration, mIoU and per-class IoU, one row each
//! ```
//! `<key>` names what was evaluated on (dataset, split, class set, sizes; see
//! [`cache_key`]), so results under different protocols never mix. A cached result is used
//! while its checkpoint's `model.pth` has the same size and modification time (a re-created
//! run is evaluated afresh); results of checkpoints that training has since pruned
//! (`train.keep_checkpoints`) are kept and reported.
//!
//! The paper reports the **best snapshot on the target validation set** (SPEC §6, [ADV]
//! issues #3 and #15): model selection on target ground truth. The last snapshot is the
//! choice that does not look at it; both are reported.
//!
//! The machinery ([`sweep_with`]) takes any score that says its headline figure
//! ([`Swept`]): segmentation's [`Scores`] (mIoU) here, detection's mAP
//! ([`crate::detect::eval::MapScores`], `advent detect eval --sweep`).

use super::{confusion_matrix, EvalOptions, Scores};
use crate::dataset::Dataset;
use crate::model::{LoadOptions, ModelOverrides, SegModel};
use anyhow::{bail, ensure, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Device;

const CACHE_FORMAT: &str = "advent-eval-cache/1";

/// How [`sweep`] runs: where it caches and how it follows a run, and how a segmentation
/// checkpoint is evaluated.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    pub plan: SweepPlan,
    pub eval: EvalOptions,
    pub device: Device,
    pub overrides: ModelOverrides,
}

/// What a sweep records of a checkpoint: a result that names its headline figure (the one
/// the best checkpoint is chosen by) and its per-class columns.
pub trait Swept: Clone + Serialize + DeserializeOwned {
    /// The headline's column in `scores.csv` (`miou`, `map`).
    const HEADLINE: &'static str;
    /// The headline figure in percent; NaN where there is none (ranked lowest).
    fn headline(&self) -> f64;
    /// The per-class columns of `scores.csv`, by name, in percent.
    fn columns(&self) -> Vec<(String, Option<f64>)>;
}

impl Swept for Scores {
    const HEADLINE: &'static str = "miou";

    fn headline(&self) -> f64 {
        self.miou
    }

    fn columns(&self) -> Vec<(String, Option<f64>)> {
        self.iou.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Where [`sweep_with`] caches, and how it follows a run that is still training.
#[derive(Debug, Clone)]
pub struct SweepPlan {
    /// Name of the cache folder under `<run>/eval/` (see [`cache_key`]).
    pub key: String,
    /// Keep polling for new checkpoints until the run's last iteration (`train.early_stop`
    /// of `<run>/config.toml`) is evaluated.
    pub wait: bool,
    /// How often to look for new checkpoints while waiting (the reference polls every 5 s).
    pub poll: Duration,
    /// Stop waiting after this long without a new checkpoint (`None`: wait as long as it
    /// takes, as the reference does).
    pub patience: Option<Duration>,
}

/// One evaluated checkpoint.
#[derive(Debug, Clone)]
pub struct SweepEntry<S = Scores> {
    pub iteration: u64,
    pub scores: S,
    /// Whether the result came from the cache (else it was evaluated now).
    pub cached: bool,
}

/// The results of a sweep, in iteration order.
#[derive(Debug, Clone)]
pub struct SweepResult<S = Scores> {
    pub entries: Vec<SweepEntry<S>>,
    /// `<run>/eval/<key>`.
    pub cache_dir: PathBuf,
    /// `<run>/eval/<key>/scores.csv`.
    pub csv: PathBuf,
    /// The run's last iteration (`train.early_stop`), when its config says.
    pub final_iteration: Option<u64>,
}

impl<S: Swept> SweepResult<S> {
    /// The best snapshot by the headline figure (mIoU: the paper's protocol); the earliest
    /// of equals.
    pub fn best(&self) -> Option<&SweepEntry<S>> {
        best_of(&self.entries)
    }

    /// The last snapshot.
    pub fn last(&self) -> Option<&SweepEntry<S>> {
        self.entries.last()
    }

    /// How many checkpoints were evaluated now (not taken from the cache).
    pub fn evaluated(&self) -> usize {
        self.entries.iter().filter(|e| !e.cached).count()
    }

    /// Whether the run's last iteration is among the results.
    pub fn complete(&self) -> bool {
        self.final_iteration.is_some_and(|f| self.entries.iter().any(|e| e.iteration == f))
    }
}

fn best_of<S: Swept>(entries: &[SweepEntry<S>]) -> Option<&SweepEntry<S>> {
    // NaN (no pixels, no objects) ranks lowest; `>` keeps the earliest of equals.
    let score = |e: &SweepEntry<S>| if e.scores.headline().is_nan() { f64::NEG_INFINITY } else { e.scores.headline() };
    entries.iter().fold(None, |best: Option<&SweepEntry<S>>, e| match best {
        Some(b) if score(e) <= score(b) => Some(b),
        _ => Some(e),
    })
}

/// The cache folder name for an evaluation protocol: `<dataset>[-<β>]-<split>-<classes>`,
/// with `-list-<stem>`, `-in<W>x<H>` and `-out<W>x<H>` (or `-outnative`) appended where
/// they differ from the defaults (no list, 1024×512 in, 2048×1024 out). E.g.
/// `cityscapes-val-19`, `foggy-cityscapes-0.02-val-19`, `cityscapes-val-13-in512x256`.
pub fn cache_key(
    dataset: &str,
    foggy_beta: Option<f64>,
    split: &str,
    classes: usize,
    list: Option<&Path>,
    input_size: (u32, u32),
    output_size: Option<(u32, u32)>,
) -> String {
    let mut key = dataset.to_string();
    if let Some(beta) = foggy_beta {
        let _ = write!(key, "-{beta}");
    }
    let _ = write!(key, "-{split}-{classes}");
    if let Some(stem) = list.and_then(Path::file_stem) {
        let _ = write!(key, "-list-{}", stem.to_string_lossy());
    }
    if input_size != super::PAPER_INPUT_SIZE {
        let _ = write!(key, "-in{}x{}", input_size.0, input_size.1);
    }
    match output_size {
        Some(s) if s == super::PAPER_OUTPUT_SIZE => {}
        Some((w, h)) => {
            let _ = write!(key, "-out{w}x{h}");
        }
        None => key.push_str("-outnative"),
    }
    key
}

/// `train.early_stop` of `<run>/config.toml`, the run's last iteration; `None` without a
/// config file.
///
/// # Errors
///
/// A config file that does not parse or has no integer `train.early_stop`.
pub fn final_iteration(run_dir: &Path) -> Result<Option<u64>> {
    let path = run_dir.join("config.toml");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let early_stop = table.get("train").and_then(|t| t.get("early_stop")).and_then(toml::Value::as_integer);
    match early_stop {
        Some(i) if i >= 0 => Ok(Some(i as u64)),
        _ => bail!("{}: no train.early_stop", path.display()),
    }
}

/// The class count of a run's network: `model.num_classes` of its `config.toml`, else that
/// of its first checkpoint.
///
/// # Errors
///
/// A config file that does not parse; no config and no readable checkpoint.
pub fn run_num_classes(run_dir: &Path) -> Result<usize> {
    let path = run_dir.join("config.toml");
    if path.is_file() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let table: toml::Table = toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        let n = table.get("model").and_then(|m| m.get("num_classes")).and_then(toml::Value::as_integer);
        if let Some(n) = n.and_then(|n| usize::try_from(n).ok()) {
            return Ok(n);
        }
    }
    match crate::train::checkpoints(run_dir)?.into_iter().next() {
        Some((_, dir)) => {
            let model = dir.join("model.pth");
            let dict = crate::weights::load(&model)?;
            let config =
                crate::model::ModelConfig::detect(&dict).with_context(|| format!("checkpoint {}", model.display()))?;
            Ok(config.num_classes as usize)
        }
        None => bail!("cannot tell the run's class count: no config.toml and no checkpoint in {}", run_dir.display()),
    }
}

/// What a cache file holds.
#[derive(Serialize, Deserialize)]
struct Cached<S> {
    format: String,
    iteration: u64,
    /// `model.pth`'s size and modification time when it was evaluated.
    checkpoint: String,
    scores: S,
}

fn cache_file(cache_dir: &Path, iteration: u64) -> PathBuf {
    cache_dir.join(format!("iter_{iteration:06}.json"))
}

fn read_cache<S: Swept>(path: &Path) -> Option<Cached<S>> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<Cached<S>>(&text).ok().filter(|c| c.format == CACHE_FORMAT)
}

/// Size and modification time of a file, as a string to compare.
fn fingerprint(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    Ok(format!("{} bytes, modified {}.{:09}", meta.len(), modified.as_secs(), modified.subsec_nanos()))
}

/// Cached results in the cache folder, by iteration.
fn cached_iterations(cache_dir: &Path) -> Result<BTreeMap<u64, PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(cache_dir).with_context(|| format!("listing {}", cache_dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(i) = name.strip_prefix("iter_").and_then(|s| s.strip_suffix(".json")).and_then(|s| s.parse().ok()) {
            out.insert(i, path);
        }
    }
    Ok(out)
}

/// Evaluates every checkpoint of a run on `dataset`, in iteration order, using and filling
/// the cache; calls `on_entry(entry, best so far)` for each as it comes.
///
/// # Errors
///
/// A missing run folder; a run without checkpoints (unless waiting for them); `wait` without
/// the run's `config.toml`; a checkpoint that does not load (naming it); those of
/// [`super::evaluate`].
pub fn sweep(
    run_dir: &Path,
    dataset: Arc<dyn Dataset>,
    options: &SweepOptions,
    on_entry: &mut dyn FnMut(&SweepEntry, &SweepEntry),
) -> Result<SweepResult> {
    sweep_with(
        run_dir,
        &options.plan,
        &mut |model_path| score_checkpoint(model_path, dataset.clone(), options),
        on_entry,
    )
}

/// [`sweep`] with any score: `score(model.pth)` evaluates one checkpoint (errors are named
/// with its path here).
///
/// # Errors
///
/// A missing run folder; a run without checkpoints (unless waiting for them); `wait` without
/// the run's `config.toml`; a checkpoint whose `model.pth` is missing; those of `score`.
pub fn sweep_with<S: Swept>(
    run_dir: &Path,
    plan: &SweepPlan,
    score: &mut dyn FnMut(&Path) -> Result<S>,
    on_entry: &mut dyn FnMut(&SweepEntry<S>, &SweepEntry<S>),
) -> Result<SweepResult<S>> {
    ensure!(run_dir.is_dir(), "no run folder {}", run_dir.display());
    let final_iteration = final_iteration(run_dir)?;
    ensure!(
        !plan.wait || final_iteration.is_some(),
        "--wait needs {} to know the run's last iteration",
        run_dir.join("config.toml").display()
    );
    let cache_dir = run_dir.join("eval").join(&plan.key);
    std::fs::create_dir_all(&cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    let csv = cache_dir.join("scores.csv");
    let mut entries: BTreeMap<u64, SweepEntry<S>> = BTreeMap::new();
    let mut last_new = Instant::now();
    loop {
        let checkpoints: BTreeMap<u64, PathBuf> = crate::train::checkpoints(run_dir)?.into_iter().collect();
        let cached = cached_iterations(&cache_dir)?;
        // Checkpoints, and cached results of checkpoints pruned since: all in iteration order.
        let mut todo: Vec<u64> = checkpoints.keys().chain(cached.keys()).copied().collect();
        todo.sort_unstable();
        todo.dedup();
        todo.retain(|i| !entries.contains_key(i));
        // Until a checkpoint is (re-)evaluated, scores.csv keeps its cached result: a pass that
        // fails half-way leaves the rows after the failure as they were.
        let mut earlier: BTreeMap<u64, SweepEntry<S>> = todo
            .iter()
            .filter_map(|i| cached.get(i).and_then(|p| read_cache::<S>(p)).map(|c| (*i, c)))
            .map(|(iteration, c)| (iteration, SweepEntry { iteration, scores: c.scores, cached: true }))
            .collect();
        for iteration in todo {
            let entry = match checkpoints.get(&iteration) {
                Some(dir) => evaluate_checkpoint(iteration, dir, &cache_dir, score)?,
                None => match read_cache::<S>(&cached[&iteration]) {
                    Some(c) => SweepEntry { iteration, scores: c.scores, cached: true },
                    None => continue, // an unreadable result of a vanished checkpoint
                },
            };
            entries.insert(iteration, entry);
            earlier.remove(&iteration);
            let rows: BTreeMap<u64, &SweepEntry<S>> = earlier.iter().chain(&entries).map(|(i, e)| (*i, e)).collect();
            write_csv(&csv, &rows.into_values().cloned().collect::<Vec<_>>())?;
            let all: Vec<SweepEntry<S>> = entries.values().cloned().collect();
            let best = best_of(&all).expect("one entry at least");
            on_entry(&entries[&iteration], best);
            last_new = Instant::now();
        }
        let done = final_iteration.is_some_and(|f| entries.contains_key(&f));
        if !plan.wait || done {
            break;
        }
        if plan.patience.is_some_and(|p| last_new.elapsed() > p) {
            bail!(
                "no new checkpoint in {} for {:.0} s while waiting for iteration {} (is the run still training?)",
                run_dir.join("checkpoints").display(),
                last_new.elapsed().as_secs_f64(),
                final_iteration.expect("checked above")
            );
        }
        std::thread::sleep(plan.poll);
    }
    ensure!(!entries.is_empty(), "no checkpoints in {}", run_dir.join("checkpoints").display());
    Ok(SweepResult { entries: entries.into_values().collect(), cache_dir, csv, final_iteration })
}

/// One checkpoint's result: from the cache when it is for the same `model.pth`, else
/// evaluated and cached.
fn evaluate_checkpoint<S: Swept>(
    iteration: u64,
    dir: &Path,
    cache_dir: &Path,
    score: &mut dyn FnMut(&Path) -> Result<S>,
) -> Result<SweepEntry<S>> {
    let model_path = dir.join("model.pth");
    let stamp = fingerprint(&model_path).with_context(|| format!("checkpoint {}", dir.display()))?;
    let path = cache_file(cache_dir, iteration);
    if let Some(c) = read_cache::<S>(&path).filter(|c| c.checkpoint == stamp && c.iteration == iteration) {
        return Ok(SweepEntry { iteration, scores: c.scores, cached: true });
    }
    let scores = score(&model_path)?;
    let cached = Cached { format: CACHE_FORMAT.into(), iteration, checkpoint: stamp, scores };
    let json = serde_json::to_vec_pretty(&cached).context("serialising a sweep result")?;
    crate::fs::write_bytes_atomic(&path, &json)?;
    Ok(SweepEntry { iteration, scores: cached.scores, cached: false })
}

/// A segmentation checkpoint's scores on `dataset`.
fn score_checkpoint(model_path: &Path, dataset: Arc<dyn Dataset>, options: &SweepOptions) -> Result<Scores> {
    let (mut model, _) =
        SegModel::from_checkpoint(model_path, &options.overrides, LoadOptions::default(), options.device)
            .with_context(|| format!("checkpoint {}", model_path.display()))?;
    if options.eval.channels_last {
        model.use_channels_last()?;
    }
    model.fold_batch_norms(options.eval.fold_bn, options.eval.precision)?;
    let cm = confusion_matrix(&[(&model, 1.0)], dataset, &options.eval)
        .with_context(|| format!("evaluating {}", model_path.display()))?;
    let names = super::class_names(cm.num_classes());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(Scores::from_confusion(&cm, &names, &options.eval.subset))
}

/// `iteration,<headline>,<class>,...` (`iteration,miou,road,...`): percentages with 4
/// decimals, empty where a class has no pixels (no objects). The classes are those of the
/// first entry.
pub fn csv_text<S: Swept>(entries: &[SweepEntry<S>]) -> String {
    let mut out = format!("iteration,{}", S::HEADLINE);
    if let Some(first) = entries.first() {
        for (name, _) in first.scores.columns() {
            let _ = write!(out, ",{name}");
        }
    }
    out.push('\n');
    let cell = |v: Option<f64>| v.filter(|v| !v.is_nan()).map_or_else(String::new, |v| format!("{v:.4}"));
    for e in entries {
        let _ = write!(out, "{},{}", e.iteration, cell(Some(e.scores.headline())));
        for (_, v) in e.scores.columns() {
            let _ = write!(out, ",{}", cell(v));
        }
        out.push('\n');
    }
    out
}

fn write_csv<S: Swept>(path: &Path, entries: &[SweepEntry<S>]) -> Result<()> {
    crate::fs::write_bytes_atomic(path, csv_text(entries).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::ConfusionMatrix;

    fn entry(iteration: u64, right: u8) -> SweepEntry {
        // 2 classes, 4 pixels of class 0, `right` of them predicted right, the rest class 1:
        // IoU_0 = right / 4, IoU_1 = 0 (predicted, never true) → mIoU = right / 8.
        let mut m = ConfusionMatrix::new(2);
        let pred: Vec<u8> = (0..4).map(|i| if i < right { 0 } else { 1 }).collect();
        m.add(&[0; 4], &pred).unwrap();
        SweepEntry { iteration, scores: Scores::from_confusion(&m, &["a", "b"], &[]), cached: false }
    }

    #[test]
    fn best_is_the_earliest_maximum() {
        let e = vec![entry(2, 1), entry(4, 3), entry(6, 3), entry(8, 2)];
        assert_eq!(best_of(&e).unwrap().iteration, 4);
        assert_eq!(best_of(&e).unwrap().scores.miou, 37.5);
        assert!(best_of::<Scores>(&[]).is_none());
    }

    #[test]
    fn csv_rows() {
        let text = csv_text(&[entry(2, 1), entry(4, 4)]);
        // iteration 4: IoU_0 = 1, class b has no pixel at all → empty; mIoU = 100.
        assert_eq!(text, "iteration,miou,a,b\n2,12.5000,25.0000,0.0000\n4,100.0000,100.0000,\n");
    }

    #[test]
    fn cache_keys() {
        let k = cache_key("cityscapes", None, "val", 19, None, (1024, 512), Some((2048, 1024)));
        assert_eq!(k, "cityscapes-val-19");
        let k = cache_key("foggy-cityscapes", Some(0.02), "val", 13, None, (512, 256), None);
        assert_eq!(k, "foggy-cityscapes-0.02-val-13-in512x256-outnative");
        let k = cache_key("cityscapes", None, "val", 16, Some(Path::new("lists/val.txt")), (1024, 512), Some((8, 4)));
        assert_eq!(k, "cityscapes-val-16-list-val-out8x4");
    }
}
