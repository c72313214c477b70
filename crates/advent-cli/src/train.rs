//! `advent train`.

use crate::args::parse_device;
use advent::config::Config;
use advent::train::{self, Progress, RunOptions, RunSummary, Signal, Start};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// TOML configuration (see configs/defaults.toml, or configs/detection/defaults.toml for
    /// `detect train`, for every key and its default).
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Override a setting: --set train.max_iters=2000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue a run: its folder (newest complete checkpoint) or a checkpoint folder. The
    /// run's saved config.toml is used, with any --set applied. Ctrl-C or SIGTERM stops a run
    /// after the iteration under way, with its checkpoint (exit status 130 or 143).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Run folder (default: runs/<name>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// CPU: round every convolution's operands and incoming gradients to TF32 (10-bit
    /// mantissas), as a GPU's tensor cores do with `precision = "tf32"`, to study TF32's
    /// numerics without a GPU (slower than plain fp32).
    #[arg(long)]
    pub emulate_tf32: bool,
    /// Check everything the run needs (configuration, datasets, network, initial weights, the
    /// checkpoint resumed), print the resolved configuration (stdout) and the plan (stderr),
    /// and stop: nothing is trained or written. ADVENT_DRY_RUN=1 in the environment does the
    /// same, as in the reference's train.py.
    #[arg(long)]
    dry_run: bool,
}

/// `--emulate-tf32`: on for this process (CPU only).
pub fn emulate_tf32(on: bool, device: tch::Device) -> Result<()> {
    if on {
        anyhow::ensure!(
            device == tch::Device::Cpu,
            "--emulate-tf32 is for the CPU (on CUDA, train.precision = \"tf32\" is the real thing)"
        );
        advent::device::set_tf32_emulation(true);
        eprintln!("emulating TF32 convolutions on the CPU (--emulate-tf32)");
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let device = parse_device(&a.device)?;
    emulate_tf32(a.emulate_tf32, device)?;
    let (config, run_dir, start) = resolve(&a, train::Task::Segmentation, Config::load, |c| c.name.clone())?;
    let options = options(&a, run_dir, device, start);
    if options.dry_run {
        print!("{}", config.to_toml()?);
    }
    let summary = train::run(&config, options)?;
    report(&summary, "advent train", a.dry_run())
}

/// The run options of `advent train` and `advent detect train`.
pub fn options(a: &Args, run_dir: PathBuf, device: tch::Device, start: Start) -> RunOptions {
    let dry_run = a.dry_run();
    RunOptions {
        run_dir,
        device,
        start,
        progress: Progress::for_stderr(),
        stop_on_signal: true,
        announce: true,
        dry_run,
    }
}

impl Args {
    /// `--dry-run`, or `ADVENT_DRY_RUN=1` (the reference's switch).
    pub fn dry_run(&self) -> bool {
        self.dry_run || std::env::var_os("ADVENT_DRY_RUN").is_some_and(|v| v == "1")
    }
}

/// The configuration, run folder and start of `advent train` or `advent detect train`:
/// `--config` (a new run in `--run-dir`, default `runs/<name>`) or `--resume` (the run's own
/// config.toml, with `--set` applied). `load` reads a configuration file with overrides.
pub fn resolve<C>(
    a: &Args,
    task: train::Task,
    load: impl Fn(&Path, &[String]) -> Result<C>,
    name: impl Fn(&C) -> String,
) -> Result<(C, PathBuf, Start)> {
    let (config, run_dir, start) = match (&a.resume, &a.config) {
        (Some(_), Some(_)) => {
            bail!("--resume continues with the run's own config.toml: drop --config (use --set to change settings)")
        }
        (Some(path), None) => {
            if a.run_dir.is_some() {
                bail!("--resume writes into the run's own folder: drop --run-dir");
            }
            let (run_dir, start) = train::resolve_resume(path)?;
            let command = match task {
                train::Task::Segmentation => "advent train --resume",
                train::Task::Detection => "advent detect train --resume",
            };
            train::check_run_task(&run_dir, task, command)?;
            let config = load(&run_dir.join("config.toml"), &a.overrides)?;
            (config, run_dir, start)
        }
        (None, Some(file)) => {
            let config = load(file, &a.overrides)?;
            let run_dir = a.run_dir.clone().unwrap_or_else(|| PathBuf::from("runs").join(name(&config)));
            (config, run_dir, Start::New)
        }
        (None, None) => bail!("give --config FILE or --resume RUN"),
    };
    match &start {
        Start::Checkpoint(ckpt) => eprintln!("resuming from {}", ckpt.display()),
        Start::Over => eprintln!("{}: no complete checkpoint yet, starting again from iteration 0", run_dir.display()),
        Start::New => {}
    }
    Ok((config, run_dir, start))
}

/// The closing lines of a training command.
/// A loss or rate: 4 decimals, or 4 significant digits below 0.01 (a learning rate of 2.5e-4
/// is not 0.0002).
fn value(v: f32) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// A run stopped by a signal, its message printed: the process exits with the status of one
/// killed by that signal (130 for SIGINT, 143 for SIGTERM), so that scripts and batch systems
/// see that the run is not complete.
#[derive(Debug)]
pub struct Stopped(pub Signal);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by {}", self.0.name())
    }
}

impl std::error::Error for Stopped {}

/// The closing lines of `command` (`advent train`, `advent detect train`), or of its dry
/// run; an error ([`Stopped`]) when a signal stopped the run.
pub fn report(summary: &RunSummary, command: &str, dry_run: bool) -> Result<()> {
    if dry_run {
        eprintln!("dry run: everything checked; nothing trained or written");
        return Ok(());
    }
    let losses: Vec<String> = summary.last_losses.iter().map(|(k, v)| format!("{k} = {}", value(*v))).collect();
    eprintln!(
        "trained iterations {}..={} in {:.1} s; last: {}",
        summary.first_iteration,
        summary.last_iteration,
        summary.seconds,
        losses.join(", ")
    );
    if let Some(c) = &summary.last_checkpoint {
        eprintln!("checkpoint: {}", c.display());
    }
    match summary.stopped_by {
        Some(signal) => {
            eprintln!(
                "stopped by {} after iteration {}; continue with: {command} --resume {}",
                signal.name(),
                summary.last_iteration,
                summary.run_dir.display()
            );
            Err(Stopped(signal).into())
        }
        None => Ok(()),
    }
}
