//! `advent predict`.

use crate::args::{parse_device, parse_size};
use advent::model::{Arch, AsppSum, BnFold, LoadOptions, ModelOverrides, SegModel, WeightsKind};
use advent::predict::{prepare, write_prediction, Extras, PredictOptions};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Mutex, PoisonError};

#[derive(clap::Args)]
pub struct Args {
    /// Segmentation network checkpoint: .pth (PyTorch zip or legacy format) or .safetensors.
    #[arg(long)]
    checkpoint: PathBuf,
    /// An image, or a folder of images (.png, .jpg, .jpeg; hidden files and folders skipped).
    #[arg(long)]
    input: PathBuf,
    /// Folder for the outputs (created if needed).
    #[arg(long)]
    output: PathBuf,
    /// Architecture; read from the checkpoint's keys when omitted.
    #[arg(long, value_parser = clap::value_parser!(ArchArg))]
    arch: Option<ArchArg>,
    /// Number of classes (1 to 255: train ids are bytes); read from the checkpoint when omitted.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=255))]
    num_classes: Option<i64>,
    /// Resize images (bicubic) to WxH before the network; default: keep their size.
    #[arg(long, value_parser = parse_size)]
    input_size: Option<(u32, u32)>,
    /// Upsample the logits to WxH; default: each image's own size.
    #[arg(long, value_parser = parse_size)]
    output_size: Option<(u32, u32)>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Arithmetic: tf32 (PyTorch's default, the reference's), fp32, or bf16 (autocast
    /// forward pass; probabilities and entropy from float32 logits). tf32 and fp32 differ on
    /// CUDA only; bf16 is bf16 on the CPU too (libtorch's CPU autocast).
    #[arg(long, default_value = "tf32")]
    precision: advent::device::Precision,
    /// Convolution weights and inputs channels-last (faster with bf16 on recent GPUs).
    #[arg(long)]
    channels_last: bool,
    /// Also write <stem>_prob.npy (C x H x W float32) and <stem>_entropy.npy (H x W float32).
    /// The probabilities of up to --workers + 2 images are then in memory at once (~160 MB
    /// each at 2048x1024 with 19 classes).
    #[arg(long)]
    save_prob: bool,
    /// Also write <stem>_overlay.png: the colour map laid over the input image with this
    /// weight (0 to 1; 0.5 when --overlay is given alone), at the output size.
    #[arg(long, value_name = "ALPHA", num_args = 0..=1, default_missing_value = "0.5", value_parser = parse_weight,
          allow_negative_numbers = true)]
    overlay: Option<f32>,
    /// Walk sub-folders of a folder input, mirroring them under --output.
    #[arg(long)]
    recursive: bool,
    /// Load what fits from a checkpoint that does not match the network, listing the rest.
    #[arg(long)]
    allow_partial: bool,
    /// Sum only the d=6 and d=12 classifier branches, as AdaptSegNet's code does (its bug);
    /// for models trained with that code.
    #[arg(long)]
    aspp_two_branches: bool,
    /// Batch norms folded into the convolutions before them: off (as the reference runs
    /// them), on (the same function in other roundings), fused (CUDA: also bias, residual
    /// and ReLU in cuDNN's convolution calls).
    #[arg(long, default_value = "off")]
    fold_bn: BnFold,
    /// Threads reading and resizing images ahead of the network, and as many writing the
    /// outputs (default: the CPU cores, 2 to 8).
    #[arg(long, default_value_t = crate::args::default_workers(), value_parser = clap::value_parser!(u16).range(1..=crate::args::MAX_THREADS as i64))]
    workers: u16,
}

/// A blending weight in [0, 1].
fn parse_weight(s: &str) -> Result<f32> {
    let v: f32 = s.parse().with_context(|| format!("`{s}` is not a number"))?;
    anyhow::ensure!((0.0..=1.0).contains(&v), "`{s}`: a weight from 0 to 1");
    Ok(v)
}

/// `Arch` as a clap value.
#[derive(Clone)]
pub struct ArchArg(Arch);

impl std::str::FromStr for ArchArg {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        s.parse().map(ArchArg)
    }
}

pub fn run(a: Args) -> Result<()> {
    let device = parse_device(&a.device)?;
    let jobs = collect_inputs(&a.input, a.recursive)?;
    if a.output.exists() && !a.output.is_dir() {
        bail!("--output {} is not a folder", a.output.display());
    }
    let overrides = ModelOverrides {
        arch: a.arch.map(|x| x.0),
        num_classes: a.num_classes,
        aspp_sum: if a.aspp_two_branches { AsppSum::FirstTwo } else { AsppSum::AllFour },
    };
    anyhow::ensure!(
        a.fold_bn != BnFold::Fused || device.is_cuda(),
        "--fold-bn fused needs --device cuda (`on` works on the CPU)"
    );
    let (mut model, report) =
        SegModel::from_checkpoint(&a.checkpoint, &overrides, LoadOptions { allow_partial: a.allow_partial }, device)?;
    if device.is_cuda() {
        advent::device::set_precision(a.precision)?;
        advent::device::set_cudnn_benchmark(true)?;
    }
    if a.channels_last {
        model.use_channels_last()?;
    }
    model.fold_batch_norms(a.fold_bn, a.precision)?;
    let problems = report.describe_problems();
    if !problems.is_empty() {
        eprintln!("warning: partial load of {}:{problems}", a.checkpoint.display());
    }
    if report.kind != Some(WeightsKind::Model) {
        eprintln!(
            "warning: {} is an initialisation file; the classifier is untrained ({} tensors keep their initialisation)",
            a.checkpoint.display(),
            report.kept_init.len()
        );
    }
    let options = PredictOptions { input_size: a.input_size, output_size: a.output_size, precision: a.precision };
    // The image as read goes along to the writer when an overlay is asked for.
    process(
        &jobs,
        &a.output,
        usize::from(a.workers),
        |job| {
            let img = advent::image::read_rgb(&job.path)?;
            let prepared = prepare(&img, &options)
                .and_then(|p| p.pinned(device))
                .with_context(|| format!("preparing {}", job.path.display()))?;
            Ok((prepared, a.overlay.map(|_| img)))
        },
        // Queued on a GPU: the writer thread waits for the outputs, the network goes on.
        |job, (prepared, img)| {
            advent::predict::launch(&model, &prepared, options.precision, a.save_prob)
                .map(|launched| (launched, img))
                .with_context(|| format!("predicting {}", job.path.display()))
        },
        |job, out_dir, (launched, img)| {
            let p = launched.wait().with_context(|| format!("predicting {}", job.path.display()))?;
            let overlay = img.as_ref().zip(a.overlay);
            write_prediction(out_dir, &job.stem, &p, Extras { save_prob: a.save_prob, overlay })
        },
    )
}

/// Runs every job through three stages: `load` on `threads` reader threads (decoding,
/// resizing), `run` on this thread (the network), `write` on `threads` writer threads (the
/// output files, into the job's folder, created first), so that the network does not wait
/// for the files on either side. Jobs may finish out of order. One job: its error is the
/// command's. Several: each failure is printed as it happens, the other images are still
/// processed, and the error at the end names the failed files in the jobs' order.
pub fn process<L: Send, O: Send>(
    jobs: &[Job],
    output: &Path,
    threads: usize,
    load: impl Fn(&Job) -> Result<L> + Sync,
    mut run: impl FnMut(&Job, L) -> Result<O>,
    write: impl Fn(&Job, &Path, O) -> Result<()> + Sync,
) -> Result<()> {
    let threads = threads.max(1);
    let bar = if jobs.len() > 1 { ProgressBar::new(jobs.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, eta {eta} {msg}")
            .expect("static template"),
    );
    let failures: Mutex<Vec<(usize, anyhow::Error)>> = Mutex::new(Vec::new());
    let fail = |index: usize, e: anyhow::Error| {
        if jobs.len() > 1 {
            bar.suspend(|| eprintln!("failed: {e:#}"));
        }
        bar.inc(1);
        failures.lock().unwrap_or_else(PoisonError::into_inner).push((index, e));
    };
    let next = AtomicUsize::new(0);
    let (loaded_tx, loaded_rx) = sync_channel::<(usize, Result<L>)>(threads);
    let (done_tx, done_rx) = advent::queue::channel::<(usize, O)>(1);
    std::thread::scope(|scope| {
        let (fail, next, load, write, bar) = (&fail, &next, &load, &write, &bar);
        for _ in 0..threads.min(jobs.len()) {
            let tx = loaded_tx.clone();
            scope.spawn(move || loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= jobs.len() || tx.send((index, load(&jobs[index]))).is_err() {
                    break;
                }
            });
            let done_rx = done_rx.clone();
            scope.spawn(move || {
                while let Some((index, result)) = done_rx.recv() {
                    let job = &jobs[index];
                    let out_dir = output.join(&job.rel_dir);
                    let written = std::fs::create_dir_all(&out_dir)
                        .with_context(|| format!("creating {}", out_dir.display()))
                        .and_then(|()| write(job, &out_dir, result));
                    match written {
                        Ok(()) => bar.inc(1),
                        Err(e) => fail(index, e),
                    }
                }
            });
        }
        drop((loaded_tx, done_rx));
        for (index, loaded) in loaded_rx {
            match loaded.and_then(|l| run(&jobs[index], l)) {
                Ok(result) => {
                    if done_tx.send((index, result)).is_err() {
                        break;
                    }
                }
                Err(e) => fail(index, e),
            }
        }
        drop(done_tx);
    });
    bar.finish_and_clear();
    let mut failures = failures.into_inner().unwrap_or_else(PoisonError::into_inner);
    failures.sort_by_key(|(index, _)| *index);
    if jobs.len() == 1 {
        if let Some((_, e)) = failures.pop() {
            return Err(e);
        }
    }
    if !failures.is_empty() {
        const SHOWN: usize = 5;
        let names: Vec<String> =
            failures.iter().take(SHOWN).map(|(i, _)| jobs[*i].path.display().to_string()).collect();
        bail!(
            "{} of {} images failed (listed above): {}{}",
            failures.len(),
            jobs.len(),
            names.join(", "),
            if failures.len() > SHOWN { ", ..." } else { "" }
        );
    }
    if jobs.len() > 1 {
        eprintln!("wrote predictions of {} images to {}", jobs.len(), output.display());
    }
    Ok(())
}

/// One input image and where its outputs go (`<output>/<rel_dir>/<stem>_*`).
pub struct Job {
    pub path: PathBuf,
    pub rel_dir: PathBuf,
    pub stem: String,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
}

/// The images to process, sorted, with the output names checked for collisions before any
/// work starts.
pub fn collect_inputs(input: &Path, recursive: bool) -> Result<Vec<Job>> {
    let meta = std::fs::metadata(input).with_context(|| format!("reading {}", input.display()))?;
    let paths = if meta.is_dir() {
        let mut paths: Vec<PathBuf> =
            advent::fs::files_under(input, recursive)?.into_iter().filter(|p| is_image(p)).collect();
        paths.sort();
        if paths.is_empty() {
            let below = !recursive && advent::fs::files_under(input, true)?.iter().any(|p| is_image(p));
            let hint = if below { " (there are some in its sub-folders: add --recursive)" } else { "" };
            bail!("no images (.png, .jpg, .jpeg) in {}{hint}", input.display());
        }
        paths
    } else {
        vec![input.to_path_buf()]
    };
    let mut seen: HashMap<(PathBuf, String), PathBuf> = HashMap::new();
    let mut jobs = Vec::new();
    for path in paths {
        let rel_dir = match (meta.is_dir(), path.parent()) {
            (true, Some(parent)) => parent.strip_prefix(input).unwrap_or(Path::new("")).to_path_buf(),
            _ => PathBuf::new(),
        };
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(other) = seen.insert((rel_dir.clone(), stem.clone()), path.clone()) {
            bail!("{} and {} would write the same outputs ({stem}_*)", other.display(), path.display());
        }
        jobs.push(Job { path, rel_dir, stem });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Failures reach `process` out of order (a slow failing image ahead of fast ones, in
    /// both the reading and the writing stage); the error still names them in the jobs'
    /// order, and every other image is written.
    #[test]
    fn failures_are_named_in_the_jobs_order_whatever_order_they_happen_in() {
        let dir = tempfile::tempdir().unwrap();
        let jobs: Vec<Job> = (0..7)
            .map(|i| Job { path: PathBuf::from(format!("in/{i}.png")), rel_dir: PathBuf::new(), stem: i.to_string() })
            .collect();
        let slow = Duration::from_millis(400);
        let written = Mutex::new(Vec::new());
        let result = process(
            &jobs,
            dir.path(),
            3,
            |job| match job.stem.as_str() {
                "1" => {
                    std::thread::sleep(slow);
                    bail!("unreadable {}", job.stem)
                }
                "4" => bail!("unreadable {}", job.stem),
                _ => Ok(job.stem.clone()),
            },
            |_, loaded| Ok(loaded),
            |_, _, stem| match stem.as_str() {
                "2" => {
                    std::thread::sleep(slow);
                    bail!("disk full writing {stem}")
                }
                "5" => bail!("disk full writing {stem}"),
                _ => {
                    written.lock().unwrap().push(stem);
                    Ok(())
                }
            },
        );
        let message = format!("{:#}", result.unwrap_err());
        assert!(
            message.starts_with("4 of 7 images failed (listed above): in/1.png, in/2.png, in/4.png, in/5.png"),
            "{message}"
        );
        let mut written = written.into_inner().unwrap();
        written.sort();
        assert_eq!(written, ["0", "3", "6"]);
    }
}
