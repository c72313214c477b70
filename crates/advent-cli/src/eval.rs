//! `advent eval`: networks on Cityscapes val with the paper's protocol (Mapillary with DADA's),
//! ensembles, and snapshot sweeps of a training run.

use crate::args::{parse_device, parse_size};
use advent::device::Precision;
use advent::eval::paper::PaperRow;
use advent::eval::sweep::{cache_key, run_num_classes, sweep, SweepEntry, SweepOptions, SweepPlan};
use advent::eval::{evaluate, open_dataset, protocol, subset_for, EvalOptions, EvalSet, Scores, EVAL_DATASETS};
use advent::model::{AsppSum, BnFold, LoadOptions, ModelOverrides, SegModel, WeightsKind};
use anyhow::{bail, ensure, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(after_help = "\
The protocol is the paper's (SPEC §6): each image resized bicubically to --input-size, the \
main head's logits upsampled bilinearly (align_corners=True) to --output-size, argmax, one \
confusion matrix over the whole split, IoU per class, classes without pixels skipped in the \
mean. Several --checkpoint give the weighted ensemble of their upsampled logits (the paper's \
AdvEnt+MinEnt, 45.5, is the AdvEnt and MinEnt+ER models at 0.5/0.5, which equal weights give). \
--dataset mapillary follows DADA's protocol for SYNTHIA → Mapillary (7 classes): each image fitted \
into 1024x768 with its aspect ratio kept and padded, each label padded to 4:3 at its own size.

--sweep evaluates every checkpoint of a training run (the reference's `best` mode); results \
are cached in RUN_DIR/eval/<dataset>-<split>-<classes>/ so that a re-run skips finished ones, \
and written per iteration to scores.csv there. The paper reports the best snapshot on the \
target validation set, which selects the model with target ground truth; the last snapshot \
is reported beside it.")]
pub struct Args {
    /// Segmentation network checkpoint (.pth in either PyTorch format, or .safetensors);
    /// repeat for an ensemble.
    #[arg(long, value_name = "FILE", required_unless_present = "sweep", conflicts_with = "sweep")]
    checkpoint: Vec<PathBuf>,
    /// Weight of each --checkpoint's upsampled logits in the ensemble, one per checkpoint in
    /// the same order (the reference's MODEL_WEIGHT). Default: 1/n each.
    #[arg(long, value_name = "W", requires = "checkpoint")]
    weight: Vec<f64>,
    #[command(flatten)]
    sweeping: crate::sweep::SweepArgs,
    /// The evaluation set: cityscapes, foggy-cityscapes or mapillary (DADA's 7 classes).
    #[arg(long)]
    dataset: String,
    /// Its root folder, in the official layout (leftImg8bit/ or leftImg8bit_foggy/, gtFine/;
    /// Mapillary: <split>/images/, <split>/labels/).
    #[arg(long)]
    root: PathBuf,
    /// Split to evaluate. Default: val (Mapillary: validation).
    #[arg(long)]
    split: Option<String>,
    /// List file in the reference's format restricting and ordering the images.
    #[arg(long)]
    list: Option<PathBuf>,
    /// Classes averaged: 19 (Cityscapes), 16 (SYNTHIA → Cityscapes), 13 (SYNTHIA's mIoU*,
    /// a 16-class network) or 7 (SYNTHIA → Mapillary). Default: the network's class count.
    #[arg(long, value_parser = ["19", "16", "13", "7"])]
    classes: Option<String>,
    /// Network input size WxH (bicubic resize, as PIL). Default: 1024x512 (Mapillary:
    /// 1024x768, each image fitted into it and padded, as DADA evaluates).
    #[arg(long, value_parser = parse_size)]
    input_size: Option<(u32, u32)>,
    /// Size WxH the logits are upsampled to and the labels compared at (labels of another
    /// size are resized with nearest neighbour); `native`: each label's own size. Default:
    /// 2048x1024 (Mapillary: native, each label padded to the input's aspect ratio).
    #[arg(long, value_parser = parse_output_size)]
    output_size: Option<OutputSize>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Arithmetic: tf32 (PyTorch's default, the reference's), fp32, or bf16 (autocast
    /// forward pass; upsampling and argmax of float32 logits). tf32 and fp32 differ on CUDA
    /// only; bf16 is bf16 on the CPU too (libtorch's CPU autocast).
    #[arg(long, default_value = "tf32")]
    precision: String,
    /// Convolution weights and inputs channels-last (faster with bf16 on recent GPUs).
    #[arg(long)]
    channels_last: bool,
    /// CUDA: capture the prediction of an image as a CUDA graph and replay it for every
    /// image of the same size (BENCHMARKS.md).
    #[arg(long)]
    cuda_graph: bool,
    /// Batch norms folded into the convolutions before them: off (as the reference runs
    /// them), on (weights and biases folded; the same function in other roundings), fused
    /// (CUDA: folded, and bias, residual and ReLU in cuDNN's convolution calls).
    #[arg(long, default_value = "off")]
    fold_bn: BnFold,
    /// Write the scores as JSON: {"miou", "iou": {class: IoU}, "classes", "confusion"}
    /// (with --sweep: {"best", "last"}, each {"iteration", "scores"}).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Print the paper's published result (SPEC §8) under the table, with the difference per
    /// class: gta5-r101/advent, gta5-r101/minent, gta5-r101/minent-er, gta5-r101/advent+minent,
    /// gta5-r101/source-only, ... (an unknown key lists them all).
    #[arg(long, value_name = "KEY", value_parser = |k: &str| advent::eval::paper::row(k))]
    paper: Option<&'static PaperRow>,
    /// Write each image's <name>_trainids.png and <name>_color.png into this folder.
    #[arg(long, value_name = "DIR", conflicts_with = "sweep")]
    save_predictions: Option<PathBuf>,
    /// Foggy Cityscapes' attenuation β (0.005, 0.01 or 0.02).
    #[arg(long, default_value_t = 0.02)]
    beta: f64,
    /// Threads loading images ahead of the network (default: the CPU cores, 2 to 8).
    #[arg(long, default_value_t = crate::args::default_workers().into(), value_parser = crate::args::threads(0))]
    workers: usize,
    /// Images per forward pass (consecutive images of one size). The reference evaluates
    /// one at a time; on a GPU a few at once fill more of the chip (BENCHMARKS.md). The
    /// same predictions up to rounding.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    batch: u16,
    /// Sum only the d=6 and d=12 classifier branches, as AdaptSegNet's code does (its bug);
    /// for models trained with that code.
    #[arg(long)]
    aspp_two_branches: bool,
}

/// `--output-size`: a size, or `native`.
#[derive(Clone, Copy)]
pub struct OutputSize(Option<(u32, u32)>);

impl Args {
    /// `--split`, or the dataset's default.
    fn split(&self) -> &str {
        self.split.as_deref().unwrap_or(protocol(&self.dataset).split)
    }
    /// `--input-size`, or the dataset's default.
    fn input_size(&self) -> (u32, u32) {
        self.input_size.unwrap_or(protocol(&self.dataset).input_size)
    }
    /// `--output-size`, or the dataset's default (`None`: each label's size).
    fn output_size(&self) -> Option<(u32, u32)> {
        self.output_size.map_or(protocol(&self.dataset).output_size, |o| o.0)
    }
}

fn parse_output_size(s: &str) -> Result<OutputSize> {
    if s == "native" {
        return Ok(OutputSize(None));
    }
    parse_size(s).map(|size| OutputSize(Some(size)))
}

pub fn run(a: Args) -> Result<()> {
    ensure!(
        EVAL_DATASETS.contains(&a.dataset.as_str()),
        "unknown evaluation dataset `{}` (expected one of: {})",
        a.dataset,
        EVAL_DATASETS.join(", ")
    );
    let device = parse_device(&a.device)?;
    let precision = a.precision.parse::<Precision>()?;
    if device.is_cuda() {
        advent::device::set_precision(precision)?;
        advent::device::set_cudnn_benchmark(true)?;
    }
    ensure!(!a.cuda_graph || device.is_cuda(), "--cuda-graph needs --device cuda");
    ensure!(
        a.fold_bn != BnFold::Fused || device.is_cuda(),
        "--fold-bn fused needs --device cuda (`on` works on the CPU)"
    );
    match &a.sweeping.sweep {
        Some(run_dir) => run_sweep(&a, run_dir, device),
        None => run_checkpoints(&a, device),
    }
}

fn overrides(a: &Args) -> ModelOverrides {
    ModelOverrides {
        aspp_sum: if a.aspp_two_branches { AsppSum::FirstTwo } else { AsppSum::AllFour },
        ..ModelOverrides::default()
    }
}

/// The class count of `--classes`, or of the network.
fn classes(a: &Args, num_classes: usize) -> usize {
    a.classes.as_deref().map_or(num_classes, |c| c.parse().expect("validated by clap"))
}

fn eval_set(a: &Args, num_classes: usize) -> EvalSet {
    EvalSet {
        kind: a.dataset.clone(),
        root: a.root.clone(),
        split: a.split().to_string(),
        list: a.list.clone(),
        num_classes,
        input_size: a.input_size(),
        foggy_beta: a.beta,
    }
}

fn describe_sizes(a: &Args) -> String {
    let out = a.output_size().map_or_else(|| "each label's size".to_string(), |(w, h)| format!("{w}x{h}"));
    let (w, h) = a.input_size();
    format!("input {w}x{h}, output {out}")
}

fn run_checkpoints(a: &Args, device: tch::Device) -> Result<()> {
    let n = a.checkpoint.len();
    let weights: Vec<f64> = if a.weight.is_empty() {
        vec![1.0 / n as f64; n]
    } else {
        ensure!(
            a.weight.len() == n,
            "{} --weight for {n} --checkpoint: give one weight per checkpoint, in the same order",
            a.weight.len()
        );
        if let Some(w) = a.weight.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            bail!("--weight {w}: a weight must be a finite number, 0 or more");
        }
        ensure!(a.weight.iter().any(|&w| w > 0.0), "--weight: at least one weight must be above 0");
        a.weight.clone()
    };
    let mut models = Vec::with_capacity(n);
    for path in &a.checkpoint {
        let (mut model, report) = SegModel::from_checkpoint(path, &overrides(a), LoadOptions::default(), device)?;
        if a.channels_last {
            model.use_channels_last()?;
        }
        model.fold_batch_norms(a.fold_bn, a.precision.parse()?)?;
        if report.kind != Some(WeightsKind::Model) {
            eprintln!(
                "warning: {} is an initialisation file; its classifier is untrained ({} tensors keep their initialisation)",
                path.display(),
                report.kept_init.len()
            );
        }
        models.push(model);
    }
    let num_classes = models[0].config.num_classes as usize;
    advent::eval::paper::check(a.paper, num_classes)?;
    let subset = subset_for(classes(a, num_classes), num_classes)?;
    let dataset = open_dataset(&eval_set(a, num_classes))?;
    let members: Vec<String> = a
        .checkpoint
        .iter()
        .zip(&weights)
        .map(|(p, w)| if n > 1 { format!("{} (weight {w})", p.display()) } else { p.display().to_string() })
        .collect();
    eprintln!(
        "evaluating {} on {} images of {} {} ({} classes; {})",
        members.join(" + "),
        dataset.len(),
        a.dataset,
        a.split(),
        subset.len(),
        describe_sizes(a)
    );
    let options = eval_options(a, subset, a.save_predictions.clone())?;
    let pairs: Vec<(&SegModel, f64)> = models.iter().zip(weights).collect();
    let images = dataset.len();
    let started = std::time::Instant::now();
    let scores = evaluate(&pairs, dataset, &options)?;
    let seconds = started.elapsed().as_secs_f64();
    let noun = if images == 1 { "image" } else { "images" };
    eprintln!("evaluated {images} {noun} in {seconds:.1} s ({:.1} images/s)", images as f64 / seconds);
    print!("{}", scores.table_with(a.paper));
    println!("{} {:.2} over {} classes", scores.score_name(), scores.miou, scores.classes.len());
    if let Some(path) = &a.json {
        scores.write_json(path)?;
    }
    if let Some(dir) = &a.save_predictions {
        eprintln!("wrote predictions to {}", dir.display());
    }
    Ok(())
}

/// The evaluation settings the arguments give, for the classes `subset`.
fn eval_options(a: &Args, subset: Vec<usize>, save_predictions: Option<PathBuf>) -> Result<EvalOptions> {
    Ok(EvalOptions {
        input_size: Some(a.input_size()),
        output_size: a.output_size(),
        subset,
        save_predictions,
        workers: a.workers,
        progress: true,
        precision: a.precision.parse()?,
        channels_last: a.channels_last,
        cuda_graph: a.cuda_graph,
        fold_bn: a.fold_bn,
        batch: usize::from(a.batch),
    })
}

fn run_sweep(a: &Args, run_dir: &Path, device: tch::Device) -> Result<()> {
    let poll = a.sweeping.check(run_dir, advent::train::Task::Segmentation, "advent eval --sweep")?;
    let num_classes = run_num_classes(run_dir)?;
    advent::eval::paper::check(a.paper, num_classes)?;
    let classes = classes(a, num_classes);
    let subset = subset_for(classes, num_classes)?;
    let dataset = open_dataset(&eval_set(a, num_classes))?;
    let key = cache_key(
        &a.dataset,
        (a.dataset == "foggy-cityscapes").then_some(a.beta),
        a.split(),
        classes,
        a.list.as_deref(),
        a.input_size(),
        a.output_size(),
    );
    eprintln!(
        "sweeping the checkpoints of {} on {} images of {} {} ({} classes; {}){}",
        run_dir.display(),
        dataset.len(),
        a.dataset,
        a.split(),
        subset.len(),
        describe_sizes(a),
        a.sweeping.waiting()
    );
    let options = SweepOptions {
        plan: SweepPlan { key, wait: a.sweeping.wait, poll, patience: None },
        eval: eval_options(a, subset, None)?,
        device,
        overrides: overrides(a),
    };
    let result = sweep(run_dir, dataset, &options, &mut |e: &SweepEntry, best: &SweepEntry| {
        println!("{}", crate::sweep::entry_line(e, best, e.scores.score_name()));
    })?;
    let figure = result.best().map_or("mIoU", |b| b.scores.score_name());
    crate::sweep::finish(&result, figure, &|s: &Scores| s.table_with(a.paper), a.json.as_deref())
}
