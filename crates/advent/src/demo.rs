//! `advent demo`: ADVENT on the built-in synthetic-to-real shift, on the CPU, in minutes.
//!
//! Per seed: a source-only network is trained on the labelled "synthetic" domain; from it,
//! every method trains the same number of iterations with the same settings
//! (`configs/demo.toml`): source-only (continued), a control that only runs the target
//! images through the network (MinEnt with its loss weights at zero: BatchNorm statistics of
//! the target, no target loss), MinEnt, AdvEnt and AdvEnt+MinEnt. An oracle is trained on
//! labelled target images for as many iterations in total. Each is evaluated on held-out
//! target images; results are averaged over seeds with their spread.

use crate::classes;
use crate::config::{Config, Method};
use crate::dataset::{self, synthetic::Domain, Dataset, DatasetSpec};
use crate::eval::{sweep, EvalOptions, Scores};
use crate::model::{ModelOverrides, SegModel};
use crate::predict::{predict, PredictOptions};
use crate::report::{
    self, escape, line_chart,
    run::{grid, read_metrics, sample_cells, smooth},
    Series,
};
use crate::train::{self, RunOptions};
use anyhow::{Context, Result};
use indexmap::IndexMap;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Device;

/// The demo's settings over `configs/defaults.toml`.
pub const DEMO_CONFIG: &str = include_str!("../../../configs/demo.toml");
/// Seed of the held-out target images (the training images use `synthetic.seed`).
const VAL_SEED: u64 = 1_000_003;
/// The classes the generator draws (Cityscapes train ids): the mIoU averages over them.
pub const DRAWN_CLASSES: [usize; 8] = [0, 1, 2, 5, 8, 10, 11, 13];

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub out: PathBuf,
    pub seeds: usize,
    pub quick: bool,
    pub device: Device,
    /// Each run's progress (a bar on a terminal; nothing otherwise, as the demo says where it
    /// is).
    pub progress: crate::train::Progress,
    /// Replaces the schedule `quick` chooses (tests run a miniature demo).
    pub schedule: Option<Schedule>,
    /// `key=value` settings applied to every run over `configs/demo.toml` (e.g. other loss
    /// weights, or `synthetic.shift`).
    pub overrides: Vec<String>,
}

/// Iterations and set sizes of a demo.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Schedule {
    /// Source-only training that every method starts from.
    pub pretrain: u64,
    /// Iterations of each method from there (the oracle trains pretrain + adapt).
    pub adapt: u64,
    /// A checkpoint (and a target evaluation) every this many adaptation iterations.
    pub eval_every: u64,
    /// Held-out target images.
    pub val_images: usize,
}

impl Schedule {
    pub fn new(quick: bool) -> Self {
        if quick {
            Schedule { pretrain: 400, adapt: 150, eval_every: 50, val_images: 40 }
        } else {
            Schedule { pretrain: 1000, adapt: 400, eval_every: 100, val_images: 100 }
        }
    }
}

/// What one method does in the demo.
struct Entry {
    name: &'static str,
    label: &'static str,
    overrides: Vec<String>,
}

fn entries() -> Vec<Entry> {
    let method = |m: Method| format!("train.method=\"{}\"", m.name());
    vec![
        Entry { name: "source_only", label: "Source only", overrides: vec![method(Method::SourceOnly)] },
        Entry {
            name: "target_bn",
            label: "Target BN only (control)",
            overrides: vec![method(Method::MinEnt), "train.lambda_ent_main=0".into(), "train.lambda_ent_aux=0".into()],
        },
        Entry { name: "minent", label: "MinEnt", overrides: vec![method(Method::MinEnt)] },
        Entry { name: "advent", label: "AdvEnt", overrides: vec![method(Method::AdvEnt)] },
        Entry { name: "advent_minent", label: "AdvEnt+MinEnt (joint)", overrides: vec![method(Method::AdvEntMinEnt)] },
    ]
}

/// Mean, spread and per-seed values of one method.
#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    /// Mean over seeds of the mIoU (percent) over the drawn classes.
    pub miou: f64,
    /// Sample standard deviation over seeds (0 for one seed).
    pub miou_std: f64,
    pub miou_min: f64,
    pub miou_max: f64,
    pub miou_per_seed: Vec<f64>,
    /// Mean over seeds of each drawn class's IoU (percent).
    pub iou: IndexMap<String, Option<f64>>,
    /// Mean normalised entropy of the predictions on the held-out target images.
    pub mean_entropy: f64,
    pub label: String,
}

/// `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct DemoResults {
    pub methods: IndexMap<String, MethodResult>,
    pub target_oracle: MethodResult,
    pub seeds: usize,
    pub classes: Vec<String>,
    pub schedule: Schedule,
    pub seconds: f64,
    pub device: String,
}

/// Mean and sample standard deviation (0 for one value).
pub(crate) fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

fn aggregate(label: &str, scores: &[Scores], entropies: &[f64], names: &[String]) -> MethodResult {
    let mious: Vec<f64> = scores.iter().map(|s| s.miou).collect();
    let (miou, miou_std) = mean_std(&mious);
    let iou = names
        .iter()
        .map(|n| {
            let v: Vec<f64> = scores.iter().filter_map(|s| s.iou.get(n).copied().flatten()).collect();
            (n.clone(), (!v.is_empty()).then(|| mean_std(&v).0))
        })
        .collect();
    MethodResult {
        miou,
        miou_std,
        miou_min: mious.iter().copied().fold(f64::INFINITY, f64::min),
        miou_max: mious.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        miou_per_seed: mious,
        iou,
        mean_entropy: mean_std(entropies).0,
        label: label.to_string(),
    }
}

fn val_spec() -> DatasetSpec {
    let base = Config::parse(DEMO_CONFIG, &[]).expect("configs/demo.toml parses");
    let mut spec = base.dataset_spec(false);
    spec.kind = "synthetic-target".into();
    spec.labels = true;
    spec.synthetic_seed = VAL_SEED;
    spec.synthetic_domain = Domain::Target;
    spec
}

/// Mean normalised entropy of a model's predictions over a set.
fn mean_entropy(model: &SegModel, set: &dyn Dataset) -> Result<f64> {
    let mut total = 0.0;
    for i in 0..set.len() {
        let img = crate::image::from_input_tensor(&set.get(i)?.image, crate::image::IMG_MEAN_BGR)?;
        total +=
            predict(model, &img, &PredictOptions::default())?.entropy.f_mean(tch::Kind::Double)?.f_double_value(&[])?;
    }
    Ok(total / set.len().max(1) as f64)
}

struct Trained {
    run_dir: PathBuf,
    scores: Scores,
    entropy: f64,
}

/// Trains one configuration and evaluates its checkpoints on the held-out target images.
fn train_and_evaluate(
    overrides: &[String],
    run_dir: &Path,
    val: &Arc<dyn Dataset>,
    options: &DemoOptions,
    say: &dyn Fn(&str),
) -> Result<Trained> {
    // The user's settings first: each run's own (method, the control's zero weights,
    // iterations) take precedence.
    let all: Vec<String> = options.overrides.iter().chain(overrides).cloned().collect();
    let config = Config::parse(DEMO_CONFIG, &all).context("configs/demo.toml")?;
    let config =
        Config { name: run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), ..config };
    let t = Instant::now();
    let summary = train::run(
        &config,
        RunOptions {
            run_dir: run_dir.to_path_buf(),
            device: options.device,
            start: crate::train::Start::New,
            progress: options.progress,
            stop_on_signal: false,
            announce: false,
            dry_run: false,
        },
    )?;
    let eval_options = EvalOptions { subset: DRAWN_CLASSES.to_vec(), workers: 0, ..Default::default() };
    let sweep_options = sweep::SweepOptions {
        plan: sweep::SweepPlan {
            key: "demo-target-val".into(),
            wait: false,
            poll: Duration::from_secs(1),
            patience: None,
        },
        eval: eval_options,
        device: options.device,
        overrides: ModelOverrides::default(),
    };
    let result = sweep::sweep(run_dir, val.clone(), &sweep_options, &mut |_, _| {})?;
    let last = result.last().context("no checkpoint was evaluated")?;
    let ckpt = summary.last_checkpoint.context("the run saved no checkpoint")?;
    let model = crate::train::checkpoint_model(&ckpt, options.device)?;
    let entropy = mean_entropy(&model, val.as_ref())?;
    say(&format!(
        "target mIoU {:.1}, mean entropy {:.3} ({:.0} s)",
        last.scores.miou,
        entropy,
        t.elapsed().as_secs_f64()
    ));
    Ok(Trained { run_dir: run_dir.to_path_buf(), scores: last.scores.clone(), entropy })
}

/// Runs the demo into `options.out` (replaced only when the demo completes).
pub fn run_demo(options: &DemoOptions, say: &dyn Fn(&str)) -> Result<DemoResults> {
    let began = Instant::now();
    let schedule = options.schedule.unwrap_or_else(|| Schedule::new(options.quick));
    // The user's settings are checked now, not after the first run has been announced.
    Config::parse(DEMO_CONFIG, &options.overrides).context("configs/demo.toml")?;
    crate::fs::staged_output(&options.out, |tmp: &Path| -> Result<DemoResults> {
        let mut val_spec = val_spec();
        val_spec.synthetic_len = schedule.val_images;
        let val = dataset::open(&val_spec)?;
        let names: Vec<String> = DRAWN_CLASSES.iter().map(|&i| classes::CITYSCAPES_19[i].name.to_string()).collect();
        let mut per_method: Vec<(Vec<Scores>, Vec<f64>, Vec<PathBuf>)> =
            entries().iter().map(|_| Default::default()).collect();
        let mut oracle: (Vec<Scores>, Vec<f64>, Vec<PathBuf>) = Default::default();
        let adapt = |extra: &[String]| {
            let mut o = vec![
                format!("train.max_iters={}", schedule.adapt),
                format!("train.early_stop={}", schedule.adapt - 1),
                format!("train.save_every={}", schedule.eval_every),
            ];
            o.extend_from_slice(extra);
            o
        };
        for seed in 0..options.seeds {
            let seed_dir = tmp.join("runs").join(format!("seed{}", seed + 1));
            let train_seed = format!("train.seed={}", 1234 + seed);
            let total = schedule.pretrain + schedule.adapt;
            say(&format!(
                "seed {}/{}: source-only pre-training ({} iterations)",
                seed + 1,
                options.seeds,
                schedule.pretrain
            ));
            let pre = train_and_evaluate(
                &[
                    "train.method=\"source_only\"".into(),
                    format!("train.max_iters={}", schedule.pretrain),
                    format!("train.early_stop={}", schedule.pretrain - 1),
                    format!("train.save_every={}", schedule.pretrain),
                    train_seed.clone(),
                ],
                &seed_dir.join("pretrain"),
                &val,
                options,
                say,
            )?;
            let init = crate::train::checkpoints(&pre.run_dir)?
                .pop()
                .context("pre-training saved no checkpoint")?
                .1
                .join("model.pth");
            let init = format!("model.init=\"{}\"", init.display().to_string().replace('\\', "/"));
            for (entry, acc) in entries().iter().zip(per_method.iter_mut()) {
                say(&format!(
                    "seed {}/{}: {} ({} iterations from the source-only network)",
                    seed + 1,
                    options.seeds,
                    entry.label,
                    schedule.adapt
                ));
                let mut extra = entry.overrides.clone();
                extra.push(init.clone());
                extra.push(train_seed.clone());
                let r = train_and_evaluate(&adapt(&extra), &seed_dir.join(entry.name), &val, options, say)?;
                acc.0.push(r.scores);
                acc.1.push(r.entropy);
                acc.2.push(r.run_dir);
            }
            say(&format!(
                "seed {}/{}: target oracle ({} iterations on labelled target images)",
                seed + 1,
                options.seeds,
                total
            ));
            let r = train_and_evaluate(
                &[
                    "train.method=\"source_only\"".into(),
                    "source.dataset=\"synthetic-target\"".into(),
                    format!("train.max_iters={total}"),
                    format!("train.early_stop={}", total - 1),
                    format!("train.save_every={total}"),
                    train_seed,
                ],
                &seed_dir.join("target_oracle"),
                &val,
                options,
                say,
            )?;
            oracle.0.push(r.scores);
            oracle.1.push(r.entropy);
            oracle.2.push(r.run_dir);
        }
        let methods: IndexMap<String, MethodResult> = entries()
            .iter()
            .zip(&per_method)
            .map(|(e, (s, h, _))| (e.name.to_string(), aggregate(e.label, s, h, &names)))
            .collect();
        let results = DemoResults {
            target_oracle: aggregate("Target oracle", &oracle.0, &oracle.1, &names),
            methods,
            seeds: options.seeds,
            classes: names,
            schedule,
            seconds: began.elapsed().as_secs_f64(),
            device: crate::bench::device_name(options.device),
        };
        crate::fs::write_bytes_atomic(&tmp.join("results.json"), serde_json::to_string_pretty(&results)?.as_bytes())?;
        let runs: Vec<(String, PathBuf)> =
            entries().iter().zip(&per_method).map(|(e, (_, _, d))| (e.label.to_string(), d[0].clone())).collect();
        let html = demo_report(&results, &runs, &oracle.2[0], &val, options.device)?;
        crate::fs::write_bytes_atomic(&tmp.join("report.html"), html.as_bytes())?;
        Ok(results)
    })
}

/// The demo's per-class table as text, in the paper's style (IoU with one decimal).
pub fn table(results: &DemoResults) -> String {
    let mut rows = vec![];
    let mut header = format!("{:<26}", "method");
    for c in &results.classes {
        header.push_str(&format!(" {:>7}", abbreviate(c)));
    }
    header.push_str(&format!(" {:>13}", "mIoU"));
    rows.push(header);
    let all = results.methods.values().chain(std::iter::once(&results.target_oracle));
    for m in all {
        let mut row = format!("{:<26}", m.label);
        for c in &results.classes {
            row.push_str(&match m.iou.get(c).copied().flatten() {
                Some(v) => format!(" {v:>7.1}"),
                None => format!(" {:>7}", "-"),
            });
        }
        row.push_str(&format!(" {:>6.1} ± {:<4.1}", m.miou, m.miou_std));
        rows.push(row);
    }
    rows.join("\n")
}

fn abbreviate(name: &str) -> &str {
    match name {
        "sidewalk" => "side.",
        "building" => "build.",
        "vegetation" => "veg",
        "person" => "pers.",
        other => other,
    }
}

/// What the numbers say, computed from them: the gain of each method over source-only and
/// over the control, against the seed-to-seed spread.
pub fn findings(results: &DemoResults) -> Vec<String> {
    let m = &results.methods;
    let so = &m["source_only"];
    let bn = &m["target_bn"];
    let spread = m.values().map(|r| r.miou_std).fold(0.0, f64::max);
    let mut lines = vec![format!(
        "Source only reaches {:.1} mIoU on the target, the oracle trained on target labels {:.1}: the shift costs {:.1} points.",
        so.miou,
        results.target_oracle.miou,
        results.target_oracle.miou - so.miou
    )];
    for key in ["minent", "advent", "advent_minent"] {
        let r = &m[key];
        let paired: Vec<String> =
            r.miou_per_seed.iter().zip(&bn.miou_per_seed).map(|(a, b)| format!("{:+.1}", a - b)).collect();
        lines.push(format!(
            "{}: {:.1} mIoU, {:+.1} over source only and {:+.1} over the control (per seed: {}; {}), mean target entropy {:.3} (source only {:.3}).",
            r.label,
            r.miou,
            r.miou - so.miou,
            r.miou - bn.miou,
            paired.join(", "),
            if results.seeds > 1 { format!("largest seed spread ±{spread:.1}") } else { "one seed: no spread".into() },
            r.mean_entropy,
            so.mean_entropy
        ));
    }
    lines.push(format!(
        "The control runs the target images through the network in training mode, as every adaptive method does, but adds no target loss: \
         {:.1} mIoU, {:+.1} over source only. That part of the gain comes from BatchNorm's running statistics, which the target passes pull \
         towards the target domain (the reference does the same: its BatchNorm stays in training mode on both domains).",
        bn.miou,
        bn.miou - so.miou
    ));
    lines
}

fn demo_report(
    results: &DemoResults,
    runs: &[(String, PathBuf)],
    oracle_run: &Path,
    val: &Arc<dyn Dataset>,
    device: Device,
) -> Result<String> {
    let mut sections = vec![format!(
        r#"<p class="note">ADVENT (Vu et al., CVPR 2019) on the built-in synthetic-to-real shift: {} seed(s); every method trains {} iterations from the same source-only network ({} iterations), the oracle {} iterations on labelled target images; evaluated on {} held-out target images over the {} drawn classes. {:.0} s on {}. Settings: <code>configs/demo.toml</code>.</p>"#,
        results.seeds,
        results.schedule.adapt,
        results.schedule.pretrain,
        results.schedule.pretrain + results.schedule.adapt,
        results.schedule.val_images,
        results.classes.len(),
        results.seconds,
        escape(&results.device)
    )];
    // Table.
    let all: Vec<&MethodResult> = results.methods.values().chain(std::iter::once(&results.target_oracle)).collect();
    let adaptive: Vec<&MethodResult> = results.methods.values().collect();
    let best = |c: Option<&String>| -> f64 {
        adaptive
            .iter()
            .filter_map(|m| match c {
                Some(c) => m.iou.get(c).copied().flatten(),
                None => Some(m.miou),
            })
            .fold(f64::NEG_INFINITY, f64::max)
    };
    let mut table = String::from(r#"<table><tr><th class="name">method</th>"#);
    for c in &results.classes {
        table.push_str(&format!("<th>{}</th>", escape(c)));
    }
    table.push_str("<th>mIoU (mean ± std)</th><th>per seed</th><th>target entropy</th></tr>");
    for m in &all {
        table.push_str(&format!(r#"<tr><td class="name">{}</td>"#, escape(&m.label)));
        for c in &results.classes {
            let v = m.iou.get(c).copied().flatten();
            let cls = if v.is_some_and(|v| v >= best(Some(c)) && !std::ptr::eq(*m, &results.target_oracle)) {
                r#" class="best""#
            } else {
                ""
            };
            table.push_str(&format!("<td{cls}>{}</td>", v.map_or("–".into(), |v| format!("{v:.1}"))));
        }
        let cls =
            if m.miou >= best(None) && !std::ptr::eq(*m, &results.target_oracle) { r#" class="best""# } else { "" };
        let per_seed: Vec<String> = m.miou_per_seed.iter().map(|v| format!("{v:.1}")).collect();
        table.push_str(&format!(
            "<td{cls}>{:.1} ± {:.1}</td><td>{}</td><td>{:.3}</td></tr>",
            m.miou,
            m.miou_std,
            per_seed.join(", "),
            m.mean_entropy
        ));
    }
    table.push_str("</table>");
    sections.push("<h2>Target IoU per class (%)</h2>".into());
    sections.push(table);
    sections.push(format!(
        "<ul class=\"note\">{}</ul>",
        findings(results).iter().map(|l| format!("<li>{}</li>", escape(l))).collect::<String>()
    ));
    // Curves of the adaptation runs (seed 1); the oracle trains on another schedule and
    // stands in the table.
    let mut miou_series = Vec::new();
    let mut seg_series = Vec::new();
    let mut ent_series = Vec::new();
    let mut adv_series = Vec::new();
    let mut d_series = Vec::new();
    // Each run in one colour in every chart, whichever runs a chart holds.
    for (color, (label, dir)) in runs.iter().enumerate() {
        let line = |points| Series { name: label.clone(), points, color: Some(color) };
        if let Some((_, points)) = report::run::read_sweeps(dir)?.into_iter().next() {
            miou_series.push(line(points));
        }
        let metrics = read_metrics(dir)?;
        let window = (metrics.values().map(Vec::len).max().unwrap_or(0) / 20).max(1);
        for (key, series) in [
            ("loss_seg_src_main", &mut seg_series),
            ("loss_ent_main", &mut ent_series),
            ("loss_adv_trg_main", &mut adv_series),
            ("loss_d_main", &mut d_series),
        ] {
            if let Some(v) = metrics.get(key) {
                series.push(line(smooth(v, window)));
            }
        }
    }
    sections.push(format!(
        "<h2>Adaptation (seed 1, {} iterations from the source-only network)</h2>",
        results.schedule.adapt
    ));
    sections.push(format!(
        r#"<div class="charts">{}{}{}{}{}</div><p class="note">Losses are moving averages. The entropy loss is logged (unweighted) by the methods that minimise it; the control logs it too, with weight 0. The adversarial loss is the discriminator's BCE on the target maps against the "source" label: rising means the discriminator tells the domains apart. Every loss of every run, aux heads included, is in each run's TensorBoard logs and in <code>advent report</code> of its folder (<code>runs/seed1/&lt;method&gt;</code>).</p>"#,
        line_chart("Target mIoU (%) at each checkpoint", "iteration", &miou_series, 560, 320),
        line_chart("Source segmentation loss (main head)", "iteration", &seg_series, 560, 320),
        line_chart("Target entropy loss (main head)", "iteration", &ent_series, 560, 320),
        line_chart("Adversarial loss (main head)", "iteration", &adv_series, 560, 320),
        line_chart("Discriminator loss, target half (main head)", "iteration", &d_series, 560, 320)
    ));
    // Predictions: a row per model, a column per held-out image (prediction | entropy).
    let mut models = Vec::new();
    for (label, dir) in runs.iter().chain(std::iter::once(&("Target oracle".to_string(), oracle_run.to_path_buf()))) {
        let (_, ckpt) = crate::train::checkpoints(dir)?.pop().context("a demo run has no checkpoint")?;
        let model = crate::train::checkpoint_model(&ckpt, device)?;
        models.push((label.clone(), model));
    }
    let shown = 4.min(val.len());
    let mut headers = vec![String::new()];
    headers.extend((1..=shown).map(|i| format!("target image {i}")));
    let samples: Vec<_> = (0..shown).map(|i| val.get(i)).collect::<Result<_>>()?;
    let mut first = vec!["input | ground truth".to_string()];
    for s in &samples {
        let cells = sample_cells(&[], &s.image, s.label.as_ref(), 19, 1)?;
        first.push(cells.join(""));
    }
    let mut rows = vec![first];
    for (label, model) in &models {
        let mut row = vec![format!("{}<br>prediction | entropy", escape(label))];
        for s in &samples {
            let cells = sample_cells(&[(label.as_str(), model)], &s.image, None, 19, 1)?;
            row.push(cells[1..].join(""));
        }
        rows.push(row);
    }
    sections.push("<h2>Held-out target images (seed 1)</h2>".into());
    sections.push(grid(&headers, &rows));
    let names: Vec<(usize, String)> =
        DRAWN_CLASSES.iter().map(|&i| (i, classes::CITYSCAPES_19[i].name.to_string())).collect();
    sections.push(report::class_legend(&names, &classes::palette(19)));
    sections.push(report::entropy_legend());
    Ok(report::page("advent demo: ADVENT on a synthetic-to-real shift", &sections))
}
