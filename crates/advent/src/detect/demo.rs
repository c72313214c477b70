//! `advent demo --task detection`: source-only, MinEnt and AdvEnt detectors on the built-in
//! synthetic-to-real shift, scored by VOC mAP on held-out target scenes.
//!
//! Per seed (`train.seed` = 1234, 1235, ...: initialisation, data order, augmentation): a
//! source-only detector is trained first; from it each method trains the same number of
//! iterations with `advent detect train`'s code (settings in `configs/detection/demo.toml`),
//! and each is evaluated on scenes of the target domain drawn with another seed. Scores are
//! averaged over seeds with their spread, and shown in `report.html` (the table, what it
//! says, seed 1's training curves, and held-out scenes with each detector's boxes).
//! Everything is written into a hidden folder that replaces `out` at the end.

use super::config::DetConfig;
use super::data::SyntheticDetection;
use super::eval::evaluate_set;
use super::map::{MapConfig, MapResult};
use super::nms::DetectConfig;
use super::priors::PriorConfig;
use super::ssd::Ssd;
use crate::dataset::synthetic::Domain;
use crate::train::{RunOptions, Start};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The demo's settings over `configs/detection/defaults.toml`.
pub const DEMO_CONFIG: &str = include_str!("../../../../configs/detection/demo.toml");

/// Seed of the held-out target scenes (the training scenes use `synthetic.seed`).
pub const VAL_SEED: u64 = 7_000_001;
/// Threads drawing the held-out scenes ahead of the detector.
const EVAL_WORKERS: usize = 2;
/// The report draws boxes of at least this class score: the demo's narrow detectors, trained
/// for minutes, score lower than `advent detect predict`'s default of 0.5 would show.
pub const DEMO_MIN_SCORE: f32 = 0.2;

/// The demo's detectors in the order they are shown: key in the results, and name.
pub const DETECTORS: [(&str, &str); 4] =
    [("pretrain", "the source-only start"), ("source_only", "source-only"), ("minent", "MinEnt"), ("advent", "AdvEnt")];

/// How long a demo trains and how much it evaluates.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DetSchedule {
    pub pretrain_iters: u64,
    pub method_iters: u64,
    pub val_scenes: usize,
}

impl DetSchedule {
    pub fn new(quick: bool) -> Self {
        if quick {
            DetSchedule { pretrain_iters: 200, method_iters: 60, val_scenes: 50 }
        } else {
            DetSchedule { pretrain_iters: 600, method_iters: 200, val_scenes: 150 }
        }
    }
}

pub struct DetDemoOptions {
    pub out: PathBuf,
    /// Training seeds (at least 1).
    pub seeds: usize,
    pub quick: bool,
    pub device: tch::Device,
    /// Each run's progress (see [`crate::demo::DemoOptions::progress`]).
    pub progress: crate::train::Progress,
    /// Replaces the schedule `quick` chooses (tests run a miniature demo).
    pub schedule: Option<DetSchedule>,
    /// `key=value` settings over `configs/detection/demo.toml` for every run.
    pub overrides: Vec<String>,
}

/// One detector's scores on the held-out target scenes (percent).
#[derive(Debug, Clone, Serialize)]
pub struct DetScores {
    /// Mean all-point AP over the classes present.
    pub map: Option<f64>,
    /// The same on held-out scenes of the source domain: how well the detector learned what
    /// it was trained on, so that the gap to `map` is the domain shift's cost.
    pub source_map: Option<f64>,
    /// Mean VOC2007 11-point AP.
    pub map_11: Option<f64>,
    /// All-point AP per class present (car, person).
    pub ap: BTreeMap<String, Option<f64>>,
    pub seconds: f64,
}

/// One detector's scores averaged over seeds (percent).
#[derive(Debug, Clone, Serialize)]
pub struct DetSummary {
    /// Mean over seeds of the all-point mAP (`None` if a seed had none).
    pub map: Option<f64>,
    /// Sample standard deviation over seeds (0 for one seed).
    pub map_std: Option<f64>,
    pub map_per_seed: Vec<Option<f64>>,
    /// Mean over seeds of the source-domain mAP.
    pub source_map: Option<f64>,
    /// Mean over seeds of the 11-point mAP.
    pub map_11: Option<f64>,
    /// Mean over seeds of each class's AP.
    pub ap: BTreeMap<String, Option<f64>>,
    /// Training time, all seeds.
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DetDemoResults {
    pub task: &'static str,
    pub seeds: usize,
    pub schedule: DetSchedule,
    /// source_only (the pretrained detector trained on), minent, advent; and `pretrain`, the
    /// detector every method starts from; over seeds.
    pub methods: BTreeMap<String, DetSummary>,
    /// Each seed's scores.
    pub per_seed: Vec<BTreeMap<String, DetScores>>,
    pub seconds: f64,
    /// Where it ran ([`crate::bench::device_name`]: on the CPU its model and kernels).
    pub device: String,
}

/// Mean (and sample standard deviation) of values that all exist.
fn mean_all(v: &[Option<f64>]) -> Option<(f64, f64)> {
    let v: Vec<f64> = v.iter().copied().collect::<Option<_>>()?;
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let (mean, std) = crate::demo::mean_std(&v);
    Some((round(mean), round(std)))
}

fn summarise(scores: &[&DetScores]) -> DetSummary {
    let maps: Vec<Option<f64>> = scores.iter().map(|s| s.map).collect();
    let classes: Vec<&String> = scores[0].ap.keys().collect();
    let ap = classes
        .into_iter()
        .map(|c| {
            let v: Vec<Option<f64>> = scores.iter().map(|s| s.ap.get(c).copied().flatten()).collect();
            (c.clone(), mean_all(&v).map(|m| m.0))
        })
        .collect();
    DetSummary {
        map: mean_all(&maps).map(|m| m.0),
        map_std: mean_all(&maps).map(|m| m.1),
        map_11: mean_all(&scores.iter().map(|s| s.map_11).collect::<Vec<_>>()).map(|m| m.0),
        source_map: mean_all(&scores.iter().map(|s| s.source_map).collect::<Vec<_>>()).map(|m| m.0),
        map_per_seed: maps,
        ap,
        seconds: (scores.iter().map(|s| s.seconds).sum::<f64>() * 10.0).round() / 10.0,
    }
}

/// Runs the demo into `options.out` (replaced at the end); `say` reports progress.
pub fn run(options: &DetDemoOptions, say: &dyn Fn(&str)) -> Result<DetDemoResults> {
    let began = Instant::now();
    let schedule = options.schedule.unwrap_or_else(|| DetSchedule::new(options.quick));
    crate::fs::staged_output(&options.out, |tmp: &Path| -> Result<DetDemoResults> {
        let base = DetConfig::parse(DEMO_CONFIG, &options.overrides).context("configs/detection/demo.toml")?;
        let val = Arc::new(SyntheticDetection::scenes(VAL_SEED, Domain::Target, schedule.val_scenes));
        let val_source = Arc::new(SyntheticDetection::scenes(VAL_SEED, Domain::Source, schedule.val_scenes));
        let scores = |model: &Path, secs: f64| score(model, &val, Some(&val_source), options.device, secs);
        anyhow::ensure!(options.seeds >= 1, "the demo needs at least one seed");
        let mut per_seed = Vec::new();
        // Seed 1's run folders, shown in the report.
        let mut runs = Vec::new();
        let train = |method: &str, iters: u64, init: &str, seed: u64, dir: &Path| -> Result<(PathBuf, f64)> {
            let mut config = base.clone();
            config.name = method.into();
            config.train.method = method.into();
            config.train.max_iters = iters;
            config.train.early_stop = iters - 1;
            config.train.seed = seed;
            config.model.init = init.into();
            let t = Instant::now();
            let summary = super::run::run(
                &config,
                RunOptions {
                    run_dir: dir.to_path_buf(),
                    device: options.device,
                    start: Start::New,
                    progress: options.progress,
                    stop_on_signal: false,
                    announce: false,
                    dry_run: false,
                },
            )?;
            let ckpt = summary.last_checkpoint.context("the run saved no checkpoint")?;
            Ok((ckpt.join("model.pth"), t.elapsed().as_secs_f64()))
        };
        for k in 0..options.seeds {
            let (seed, dir) = (base.train.seed + k as u64, tmp.join("runs").join(format!("seed{}", k + 1)));
            let tag = format!("seed {}/{}", k + 1, options.seeds);
            let mut methods = BTreeMap::new();
            say(&format!("{tag}: training the source-only detector ({} iterations)", schedule.pretrain_iters));
            let (pretrained, secs) = train("source_only", schedule.pretrain_iters, "", seed, &dir.join("pretrain"))?;
            methods.insert("pretrain".to_string(), scores(&pretrained, secs)?);
            let init = pretrained.to_string_lossy().into_owned();
            for method in ["source_only", "minent", "advent"] {
                say(&format!("{tag}: {method}, {} iterations from the source-only detector", schedule.method_iters));
                let (model, secs) = train(method, schedule.method_iters, &init, seed, &dir.join(method))?;
                let s = scores(&model, secs)?;
                let f = |v: Option<f64>| v.map_or("-".to_string(), |m| format!("{m:.1}"));
                say(&format!("{tag}: {method}: target mAP {} (source scenes {})", f(s.map), f(s.source_map)));
                methods.insert(method.to_string(), s);
            }
            per_seed.push(methods);
            if k == 0 {
                runs = DETECTORS.iter().map(|d| (d.0, dir.join(d.0))).collect();
            }
        }
        let methods = per_seed[0]
            .keys()
            .map(|m| (m.clone(), summarise(&per_seed.iter().map(|s| &s[m]).collect::<Vec<_>>())))
            .collect();
        let results = DetDemoResults {
            task: "detection",
            seeds: options.seeds,
            schedule,
            methods,
            per_seed,
            seconds: began.elapsed().as_secs_f64(),
            device: crate::bench::device_name(options.device),
        };
        let json = serde_json::to_vec_pretty(&results)?;
        crate::fs::write_bytes_atomic(&tmp.join("results.json"), &json)?;
        say("writing the report");
        let html = crate::report::detection::demo_page(
            &results,
            &findings(&results),
            &runs,
            val.as_ref(),
            options.device,
            DEMO_MIN_SCORE,
        )?;
        crate::fs::write_bytes_atomic(&tmp.join("report.html"), html.as_bytes())?;
        Ok(results)
    })
}

/// VOC mAP of a checkpoint on the held-out target scenes `val` and, when given, the mAP on
/// held-out source scenes (`source_map`); the checkpoint is loaded once.
pub fn score(
    model: &Path,
    val: &Arc<SyntheticDetection>,
    source: Option<&Arc<SyntheticDetection>>,
    device: tch::Device,
    seconds: f64,
) -> Result<DetScores> {
    let ssd = Ssd::from_checkpoint(model, device)?;
    let priors = PriorConfig::default().priors();
    let map_of = |set: &Arc<SyntheticDetection>| -> Result<MapResult> {
        evaluate_set(&ssd, set.clone(), &priors, &DetectConfig::default(), &MapConfig::default(), EVAL_WORKERS, false)
    };
    let r = map_of(val)?;
    let pct = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 10.0);
    let ap = r
        .per_class
        .iter()
        .filter(|c| c.num_positives > 0)
        .map(|c| (super::cityscapes::class_name(c.class).unwrap_or("?").to_string(), pct(c.ap)))
        .collect();
    let source_map = match source {
        Some(set) => pct(map_of(set)?.map),
        None => None,
    };
    let seconds = (seconds * 10.0).round() / 10.0;
    Ok(DetScores { map: pct(r.map), source_map, map_11: pct(r.map_11), ap, seconds })
}

/// The results as a table: method, target mAP (all-point and 11-point), AP per class, and
/// the mAP on source scenes.
pub fn table(results: &DetDemoResults) -> String {
    let classes: Vec<String> =
        results.methods.values().next().map(|s| s.ap.keys().cloned().collect()).unwrap_or_default();
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
    let spread = results.seeds > 1;
    let mut out = format!("{:<22} {:>12} {:>9}", "detector", if spread { "mAP (± sd)" } else { "mAP" }, "mAP(11)");
    for c in &classes {
        out.push_str(&format!(" {c:>8}"));
    }
    out.push_str(&format!(" {:>11}", "source mAP"));
    for (key, label) in DETECTORS {
        let Some(s) = results.methods.get(key) else { continue };
        let map = match (s.map, s.map_std) {
            (Some(m), Some(sd)) if spread => format!("{m:.1} ± {sd:.1}"),
            _ => f(s.map),
        };
        out.push_str(&format!("\n{label:<22} {map:>12} {:>9}", f(s.map_11)));
        for c in &classes {
            out.push_str(&format!(" {:>8}", f(s.ap.get(c).copied().flatten())));
        }
        out.push_str(&format!(" {:>11}", f(s.source_map)));
    }
    out
}

/// What the numbers say, computed from them: what the shift costs the source-only detector,
/// and each method's difference from source-only trained as many iterations, paired by seed
/// and per class.
pub fn findings(results: &DetDemoResults) -> Vec<String> {
    let m = &results.methods;
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
    let Some(so) = m.get("source_only") else { return Vec::new() };
    let mut lines = vec![format!(
        "Source-only ({} iterations beyond the start) scores {} mAP on held-out source scenes and {} on target scenes: the shift costs {} points.",
        results.schedule.method_iters,
        f(so.source_map),
        f(so.map),
        f(so.source_map.zip(so.map).map(|(s, t)| s - t))
    )];
    for (key, label) in &DETECTORS[2..] {
        let Some(r) = m.get(*key) else { continue };
        let paired: Vec<Option<f64>> = results
            .per_seed
            .iter()
            .map(|s| s.get(*key).and_then(|a| a.map).zip(s.get("source_only").and_then(|b| b.map)))
            .map(|p| p.map(|(a, b)| a - b))
            .collect();
        let above = paired.iter().flatten().filter(|d| **d > 0.0).count();
        let per_class: Vec<String> =
            r.ap.iter()
                .filter_map(|(c, ap)| Some(format!("{c} {:+.1}", (*ap)? - so.ap.get(c).copied().flatten()?)))
                .collect();
        lines.push(format!(
            "{label}: {} mAP, {} over source-only (per seed: {}; above it on {above} of {} seeds); per class: {}.",
            f(r.map),
            r.map.zip(so.map).map_or("-".into(), |(a, b)| format!("{:+.1}", a - b)),
            paired.iter().map(|d| d.map_or("-".into(), |d| format!("{d:+.1}"))).collect::<Vec<_>>().join(", "),
            results.seeds,
            if per_class.is_empty() { "-".into() } else { per_class.join(", ") }
        ));
    }
    if let (true, Some(sd)) = (results.seeds > 1, m.get("pretrain").and_then(|p| p.map_std)) {
        lines.push(format!(
            "The starts differ from seed to seed (sd {sd:.1} mAP): the methods compare by their paired differences, not by their means alone."
        ));
    } else if results.seeds == 1 {
        lines.push("One seed: with --seeds 3 the demo shows how much another seed changes.".into());
    }
    lines
}
