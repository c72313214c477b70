//! `advent detect`: the detection extension (SSD-300): `train`, `eval`, `predict`.

use crate::args::parse_device;
use advent::detect::cityscapes::BoxOptions;
use advent::detect::config::DetConfig;
use advent::detect::data::{DetDataset, DetectionSet};
use advent::detect::eval::{evaluate_set, MapScores};
use advent::detect::map::MapConfig;
use advent::detect::nms::DetectConfig;
use advent::detect::priors::PriorConfig;
use advent::detect::ssd::Ssd;
use advent::eval::sweep::{sweep_with, SweepEntry, SweepPlan};
use anyhow::{Context, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train SSD-300 (source-only, MinEnt or AdvEnt) as a TOML configuration says
    /// (configs/detection/), into a run folder with checkpoints, metrics.jsonl and TensorBoard
    /// logs; --resume continues a run.
    Train(crate::train::Args),
    /// Detect objects in an image or a folder of images with an SSD-300 checkpoint: for each,
    /// <stem>_boxes.png (the image with the boxes drawn in the Cityscapes colours of their
    /// classes) and <stem>_boxes.json (class, score, pixel box of each detection).
    Predict(PredictArgs),
    /// VOC mAP at IoU 0.5 (all-point and 11-point) of an SSD-300 checkpoint on Cityscapes or
    /// Foggy Cityscapes, boxes from the gtFine instance maps; --sweep RUN_DIR evaluates every
    /// checkpoint of a detection run (cached in RUN_DIR/eval/, per iteration in scores.csv).
    Eval(EvalArgs),
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// An SSD-300 state dict (ours, or ssd.pytorch's keys).
    #[arg(long, required_unless_present = "sweep", conflicts_with = "sweep")]
    checkpoint: Option<PathBuf>,
    // --sweep RUN_DIR: results cached in RUN_DIR/eval/det-<dataset>[-β]-<split>/, one row per
    // iteration in scores.csv there; the best and the last snapshot are reported.
    #[command(flatten)]
    sweeping: crate::sweep::SweepArgs,
    /// cityscapes or foggy-cityscapes.
    #[arg(long, default_value = "foggy-cityscapes")]
    dataset: String,
    /// The dataset root (holding leftImg8bit[_foggy]/ and gtFine/).
    #[arg(long)]
    root: PathBuf,
    #[arg(long, default_value = "val")]
    split: String,
    /// Foggy Cityscapes' attenuation β.
    #[arg(long, default_value_t = 0.02)]
    beta: f64,
    /// A list file restricting and ordering the frames.
    #[arg(long)]
    list: Option<PathBuf>,
    /// Objects narrower or lower than this many pixels are ignored regions (neither found nor
    /// missed).
    #[arg(long, default_value_t = 0)]
    min_size: u32,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Threads reading and preparing frames ahead of the network.
    #[arg(long, default_value_t = crate::args::default_workers().into(), value_parser = crate::args::threads(0))]
    workers: usize,
    /// Also write the scores as JSON (with --sweep: {"best", "last"}, each {"iteration",
    /// "scores"}).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct PredictArgs {
    /// An SSD-300 state dict (ours, or ssd.pytorch's keys).
    #[arg(long)]
    checkpoint: PathBuf,
    /// An image (.png, .jpg) or a folder of them.
    #[arg(long)]
    input: PathBuf,
    /// Also the images in sub-folders of a folder input.
    #[arg(long)]
    recursive: bool,
    /// Output folder (created).
    #[arg(long)]
    output: PathBuf,
    /// Detections drawn and listed: class score at least this.
    #[arg(long, default_value_t = 0.5)]
    min_score: f32,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Threads reading images ahead of the network, and as many writing the outputs
    /// (default: the CPU cores, 2 to 8).
    #[arg(long, default_value_t = crate::args::default_workers(), value_parser = clap::value_parser!(u16).range(1..=crate::args::MAX_THREADS as i64))]
    workers: u16,
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Train(a) => train(a),
        Command::Predict(a) => predict(a),
        Command::Eval(a) => eval(a),
    }
}

fn train(a: crate::train::Args) -> Result<()> {
    let device = parse_device(&a.device)?;
    crate::train::emulate_tf32(a.emulate_tf32, device)?;
    let (config, run_dir, start) =
        crate::train::resolve(&a, advent::train::Task::Detection, DetConfig::load, |c| c.name.clone())?;
    let options = crate::train::options(&a, run_dir, device, start);
    if options.dry_run {
        print!("{}", config.to_toml()?);
    }
    let summary = advent::detect::run::run(&config, options)?;
    crate::train::report(&summary, "advent detect train", a.dry_run())
}

/// The detector of a checkpoint, which must detect the Cityscapes classes (and the background).
fn cityscapes_detector(path: &std::path::Path, device: tch::Device) -> Result<Ssd> {
    let ssd = Ssd::from_checkpoint(path, device)?;
    let classes = advent::detect::cityscapes::NUM_CLASSES as i64 + 1;
    anyhow::ensure!(
        ssd.num_classes == classes,
        "{}: a detector of {} classes (background included), but advent's detection classes are the \
         background and Cityscapes' 8 (person, rider, car, truck, bus, train, motorcycle, bicycle): {classes}",
        path.display(),
        ssd.num_classes
    );
    Ok(ssd)
}

fn predict(a: PredictArgs) -> Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&a.min_score), "--min-score must be in [0, 1], got {}", a.min_score);
    let device = parse_device(&a.device)?;
    let jobs = crate::predict::collect_inputs(&a.input, a.recursive)?;
    anyhow::ensure!(!a.output.exists() || a.output.is_dir(), "--output {} is not a folder", a.output.display());
    let ssd = cityscapes_detector(&a.checkpoint, device)?;
    let priors = PriorConfig::default().priors();
    let cfg = DetectConfig::default();
    crate::predict::process(
        &jobs,
        &a.output,
        usize::from(a.workers),
        |job| advent::image::read_rgb(&job.path),
        |job, img| {
            let dets = advent::detect::predict::detect_image(&ssd, &img, &priors, &cfg)
                .with_context(|| format!("detecting in {}", job.path.display()))?;
            Ok((img, dets))
        },
        |job, out_dir, (mut img, dets)| {
            let dets: Vec<_> = dets
                .into_iter()
                .filter(|d| d.score >= a.min_score)
                .map(|mut d| {
                    // Clipped to the image (the evaluation, as ssd.pytorch's, keeps them whole).
                    let (w, h) = ((img.width() - 1) as f32, (img.height() - 1) as f32);
                    d.bbox = [
                        d.bbox[0].clamp(0.0, w),
                        d.bbox[1].clamp(0.0, h),
                        d.bbox[2].clamp(0.0, w),
                        d.bbox[3].clamp(0.0, h),
                    ];
                    d
                })
                .collect();
            let thickness = (img.width().max(img.height()) / 400).max(2);
            advent::detect::predict::draw_boxes(&mut img, &dets, thickness);
            advent::image::write_png_rgb(&out_dir.join(format!("{}_boxes.png", job.stem)), &img)?;
            let json = serde_json::to_vec_pretty(&advent::detect::predict::to_json(&dets))?;
            advent::fs::write_bytes_atomic(&out_dir.join(format!("{}_boxes.json", job.stem)), &json)
        },
    )
}

fn eval(a: EvalArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    if let Some(run_dir) = &a.sweeping.sweep {
        return eval_sweep(&a, run_dir, device);
    }
    let checkpoint = a.checkpoint.as_ref().context("--checkpoint or --sweep is needed")?;
    let ssd = cityscapes_detector(checkpoint, device)?;
    let set = open_eval_set(&a)?;
    let scores = score(&ssd, &set, &a, std::io::stderr().is_terminal())?;
    print!("{}", scores.table());
    if let Some(path) = &a.json {
        advent::fs::write_bytes_atomic(path, serde_json::to_string_pretty(&scores)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The evaluation set `a` names.
fn open_eval_set(a: &EvalArgs) -> Result<Arc<DetectionSet>> {
    let options = BoxOptions { min_size: a.min_size };
    let set = DetectionSet::open(&a.dataset, &a.root, &a.split, a.beta, a.list.as_deref(), 300, options)?;
    anyhow::ensure!(!set.is_empty(), "no image under {} ({} {})", a.root.display(), a.dataset, a.split);
    Ok(Arc::new(set))
}

/// A detector's scores on `set`.
fn score(ssd: &Ssd, set: &Arc<DetectionSet>, a: &EvalArgs, progress: bool) -> Result<MapScores> {
    let priors = PriorConfig::default().priors();
    let (cfg, map) = (DetectConfig::default(), MapConfig::default());
    let r = evaluate_set(ssd, set.clone(), &priors, &cfg, &map, a.workers, progress)?;
    Ok(MapScores::new(&r, set.len()))
}

/// `detect eval --sweep`: every checkpoint of a detection run, cached as `eval --sweep`
/// caches a segmentation run's.
fn eval_sweep(a: &EvalArgs, run_dir: &Path, device: tch::Device) -> Result<()> {
    let poll = a.sweeping.check(run_dir, advent::train::Task::Detection, "advent detect eval --sweep")?;
    let set = open_eval_set(a)?;
    let beta = (a.dataset == "foggy-cityscapes").then_some(a.beta);
    let key = advent::detect::eval::cache_key(&a.dataset, beta, &a.split, a.list.as_deref(), a.min_size);
    eprintln!(
        "sweeping the checkpoints of {} on {} frames of {} {}{}",
        run_dir.display(),
        set.len(),
        a.dataset,
        a.split,
        a.sweeping.waiting()
    );
    let plan = SweepPlan { key, wait: a.sweeping.wait, poll, patience: None };
    let progress = std::io::stderr().is_terminal();
    let mut evaluate = |model: &Path| -> Result<MapScores> {
        let ssd = cityscapes_detector(model, device)?;
        score(&ssd, &set, a, progress).with_context(|| format!("evaluating {}", model.display()))
    };
    let result = sweep_with(run_dir, &plan, &mut evaluate, &mut |e: &SweepEntry<MapScores>, best| {
        println!("{}", crate::sweep::entry_line(e, best, "mAP"));
    })?;
    crate::sweep::finish(&result, "mAP", &|s: &MapScores| s.table(), a.json.as_deref())
}
