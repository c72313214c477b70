//! A training run: its folder, the loop, metrics, checkpoints and resumption.
//!
//! ```text
//! <run>/config.toml                  the resolved configuration
//! <run>/metrics.jsonl                one line per iteration: losses and learning rates
//! <run>/checkpoints/iter_002000/     model.pth (the segmentation network, reference keys,
//!                                    loadable by `advent predict`/`eval` and by PyTorch),
//!                                    d_main.pth, d_aux.pth (discriminators),
//!                                    optimizer.safetensors, state.json (iteration, data order)
//! ```
//! A checkpoint is written into a hidden temporary folder and renamed when complete, so a
//! crash never leaves a half-written one where `--resume` looks; old checkpoints are renamed
//! away before they are deleted, for the same reason. Hidden leftovers of a killed process
//! are removed when its run is resumed. `metrics.jsonl` is cut back to the checkpoint's
//! iteration on resumption (a line half-written by a kill goes with it), and the TensorBoard
//! log gets a restart marker so that the interrupted run's later steps are not shown twice.

use super::step::{Losses, Trainer};
use super::stop::{Signal, StopOnSignal};
use crate::config::Config;
use crate::dataset::loader::{Loader, LoaderConfig, OrderState};
use crate::dataset::{self, Dataset};
use crate::image::colormap;
use crate::native::HostCopy;
use crate::tensorboard::EventWriter;
use crate::weights::{self, StateDict};
use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const STATE_FORMAT: &str = "advent-train-state/1";
const CHECKPOINT_PREFIX: &str = "iter_";

/// Where a run stands at a checkpoint (`state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format: String,
    /// The last completed iteration.
    pub iteration: u64,
    pub method: String,
    pub source_order: OrderState,
    pub target_order: Option<OrderState>,
}

impl TrainState {
    /// The state after iteration `iteration` of a run of `method`.
    pub fn at(iteration: u64, method: &str, source_order: OrderState, target_order: Option<OrderState>) -> Self {
        TrainState { format: STATE_FORMAT.into(), iteration, method: method.into(), source_order, target_order }
    }
}

/// Where a run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A new run: its folder must not hold one.
    New,
    /// Iteration 0 again, in the folder of a run stopped before its first checkpoint.
    Over,
    /// After the iteration of this checkpoint folder.
    Checkpoint(PathBuf),
}

/// How to run.
pub struct RunOptions {
    pub run_dir: PathBuf,
    pub device: Device,
    pub start: Start,
    pub progress: Progress,
    /// SIGINT and SIGTERM stop the run after the iteration under way, with its checkpoint
    /// (see [`super::stop`]); otherwise they keep their usual effect.
    pub stop_on_signal: bool,
    /// The plan (what is trained on what, for how long, where) printed on stderr as the run
    /// starts (`advent train`; not in the demo, which says what it runs).
    pub announce: bool,
    /// Everything a run needs is checked (configuration, datasets, network, initial weights,
    /// the checkpoint resumed) and the plan printed; nothing is trained or written.
    pub dry_run: bool,
}

/// How a run shows its progress on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing (a library caller, the demo's own lines).
    Hidden,
    /// A progress bar with the losses (a terminal).
    Bar,
    /// A line at every checkpoint (a log file, `nohup`: no bar can be drawn there).
    Lines,
}

impl Progress {
    /// [`Progress::Bar`] if stderr is a terminal, else [`Progress::Lines`].
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Lines
        }
    }
}

/// What a finished run reports.
#[derive(Debug)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub first_iteration: u64,
    pub last_iteration: u64,
    pub seconds: f64,
    pub last_losses: Vec<(String, f32)>,
    pub last_checkpoint: Option<PathBuf>,
    /// The signal that stopped the run before `train.early_stop` (with
    /// [`RunOptions::stop_on_signal`]); `last_iteration` is then the last one done, and
    /// `last_checkpoint` its checkpoint.
    pub stopped_by: Option<Signal>,
}

/// The checkpoint folders of a run, oldest first, complete ones only.
pub fn checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run_dir.join("checkpoints");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(i) = name.strip_prefix(CHECKPOINT_PREFIX).and_then(|s| s.parse::<u64>().ok()) {
            if path.join("state.json").is_file() {
                out.push((i, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What a run folder trains: a segmentation network (`advent train`) or a detector
/// (`advent detect train`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Segmentation,
    Detection,
}

impl Task {
    fn describe(self) -> &'static str {
        match self {
            Task::Segmentation => "a segmentation run (made by `advent train`)",
            Task::Detection => "a detection run (made by `advent detect train`)",
        }
    }

    fn commands(self) -> &'static str {
        match self {
            Task::Segmentation => "`advent train --resume`, `advent eval --sweep` and `advent report` take it",
            Task::Detection => {
                "`advent detect train --resume` continues it, `advent detect eval --checkpoint` scores its model.pth \
                 and `advent report` shows it"
            }
        }
    }

    fn runs(self) -> &'static str {
        match self {
            Task::Segmentation => "segmentation runs",
            Task::Detection => "detection runs",
        }
    }
}

/// The task of a run folder, told by its `config.toml` (a detector's `[model]` has a
/// `width` and no `arch`); `None` where that file is missing or unreadable (left to the
/// command's own errors).
pub fn run_task(run_dir: &Path) -> Option<Task> {
    let text = fs::read_to_string(run_dir.join("config.toml")).ok()?;
    let model = text.parse::<toml::Table>().ok()?.get("model")?.as_table()?.clone();
    Some(match (model.contains_key("width"), model.contains_key("arch")) {
        (true, false) => Task::Detection,
        _ => Task::Segmentation,
    })
}

/// Refuses a run folder of the other task, with a word on which commands take it.
pub fn check_run_task(run_dir: &Path, expected: Task, command: &str) -> Result<()> {
    match run_task(run_dir) {
        Some(found) if found != expected => bail!(
            "{} is {}, and `{command}` takes {}: {}",
            run_dir.display(),
            found.describe(),
            expected.runs(),
            found.commands()
        ),
        _ => Ok(()),
    }
}

/// `--resume PATH`: a checkpoint folder, or a run folder (its newest complete checkpoint,
/// or iteration 0 again if it was stopped before its first one). Returns the run folder and
/// where to start.
pub fn resolve_resume(path: &Path) -> Result<(PathBuf, Start)> {
    if path.join("state.json").is_file() {
        let run = path
            .parent()
            .and_then(Path::parent)
            .with_context(|| format!("{} is not inside a run folder", path.display()))?;
        return Ok((run.to_path_buf(), Start::Checkpoint(path.to_path_buf())));
    }
    ensure!(path.is_dir(), "--resume {}: no such run or checkpoint folder", path.display());
    match checkpoints(path)?.pop() {
        Some((_, ckpt)) => Ok((path.to_path_buf(), Start::Checkpoint(ckpt))),
        None if path.join("config.toml").is_file() => Ok((path.to_path_buf(), Start::Over)),
        None => bail!("--resume {}: not a run folder (no config.toml, no checkpoint)", path.display()),
    }
}

/// The segmentation network of a checkpoint folder (`<dir>/model.pth`), as saved.
pub fn checkpoint_model(dir: &Path, device: Device) -> Result<crate::model::SegModel> {
    let path = dir.join("model.pth");
    let overrides = crate::model::ModelOverrides::default();
    Ok(crate::model::SegModel::from_checkpoint(&path, &overrides, Default::default(), device)?.0)
}

pub(crate) fn checkpoint_name(iteration: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{iteration:06}")
}

pub(crate) fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let state: TrainState = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    ensure!(state.format == STATE_FORMAT, "{}: unknown format `{}`", path.display(), state.format);
    // A checkpoint folder is named after its iteration: a state that disagrees would resume
    // at the wrong place (and overwrite later checkpoints).
    let folder = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix(CHECKPOINT_PREFIX));
    if let Some(named) = folder.and_then(|n| n.parse::<u64>().ok()) {
        ensure!(
            state.iteration == named,
            "{}: iteration {} in the checkpoint folder of iteration {named}",
            path.display(),
            state.iteration
        );
    }
    Ok(state)
}

/// The saved state a run starts from (`None`: iteration 0); a new run's folder must not
/// hold a run already.
pub(crate) fn start_state(run_dir: &Path, start: &Start) -> Result<Option<TrainState>> {
    Ok(match start {
        Start::Checkpoint(ckpt) => Some(read_state(ckpt)?),
        Start::Over => None,
        Start::New => {
            // A run that stopped before logging anything (bad data at its first batch) may be
            // started again in its folder.
            let logged = fs::metadata(run_dir.join("metrics.jsonl")).is_ok_and(|m| m.len() > 0);
            let taken = logged || !checkpoints(run_dir)?.is_empty();
            ensure!(
                !taken,
                "{} already holds a run: continue it with --resume {0}, or choose another --run-dir",
                run_dir.display()
            );
            None
        }
    })
}

/// Where a run starts: after a checkpoint's iteration with its data orders (the state's method
/// must be `method`, its iteration before `early_stop`; `load` restores the checkpoint's
/// tensors), or at iteration 0.
pub(crate) fn resume_point(
    state: Option<&TrainState>,
    start: &Start,
    method: &str,
    early_stop: u64,
    load: impl FnOnce(&Path) -> Result<()>,
) -> Result<(u64, OrderState, OrderState)> {
    match (state, start) {
        (Some(state), Start::Checkpoint(ckpt)) => {
            ensure!(
                state.method == method,
                "{}: the checkpoint was trained with `{}`, the config says `{method}`",
                ckpt.display(),
                state.method
            );
            // A checkpoint at early_stop is a complete run: resuming it (after a kill that
            // landed once its last checkpoint was written) trains nothing and succeeds.
            ensure!(
                state.iteration <= early_stop,
                "{}: nothing to train: the checkpoint is of iteration {}, and the run stops at {early_stop} \
                 (train.early_stop; raise it with --set train.early_stop=N to train on)",
                ckpt.display(),
                state.iteration
            );
            load(ckpt)?;
            Ok((state.iteration + 1, state.source_order, state.target_order.unwrap_or_default()))
        }
        _ => Ok((0, OrderState::default(), OrderState::default())),
    }
}

/// A training loader's settings: shuffled, seeded, `workers` threads `prefetch` ahead,
/// batches in page-locked memory if `pin_memory` (CUDA).
pub(crate) fn loader_config(
    workers: usize,
    prefetch: usize,
    batch_size: usize,
    seed: u64,
    pin_memory: bool,
) -> LoaderConfig {
    LoaderConfig { batch_size, shuffle: true, seed, workers, prefetch, pin_memory }
}

/// Trains as configured; returns when `train.early_stop` is reached.
pub fn run(config: &Config, options: RunOptions) -> Result<RunSummary> {
    let run_dir = &options.run_dir;
    let resume_state = start_state(run_dir, &options.start)?;
    let t = &config.train;
    if options.device.is_cuda() {
        crate::device::set_precision(t.precision)?;
        crate::device::set_cudnn_benchmark(t.cudnn_benchmark && !t.deterministic)?;
        crate::device::set_cudnn_benchmark_limit(t.cudnn_benchmark_limit)?;
        crate::device::set_cudnn_deterministic(t.deterministic)?;
    }
    // A resumed run's weights all come from its checkpoint: `model.init` (which may have moved
    // since, or been a temporary file) is not read again.
    let mut trainer = match resume_state {
        Some(_) => Trainer::new(&config.without_init(), options.device)?,
        None => Trainer::new(config, options.device)?,
    };
    let method = trainer.method.name();
    let (start, source_order, target_order) =
        resume_point(resume_state.as_ref(), &options.start, method, t.early_stop, |ckpt| {
            load_checkpoint(&mut trainer, ckpt)
        })?;
    let pin = options.device.is_cuda();
    let settings = |batch_size: usize, seed: u64| loader_config(t.workers, t.prefetch, batch_size, seed, pin);
    let source_set: Arc<dyn Dataset> = dataset::open(&config.dataset_spec(true)).context("source dataset")?;
    let mut data = vec![seg_domain_line("source", &config.source, source_set.len())];
    let mut source = Loader::new(source_set, settings(config.source.batch_size, t.seed), source_order)?;
    let mut target = if trainer.method.uses_target() {
        let set = dataset::open(&config.dataset_spec(false)).context("target dataset")?;
        data.push(seg_domain_line("target", &config.target, set.len()));
        Some(Loader::new(set, settings(config.target.batch_size, t.seed.wrapping_add(1)), target_order)?)
    } else {
        None
    };
    let plan = Plan {
        what: format!(
            "{method}, {} ({} classes{}, {} trainable parameters)",
            config.model.arch,
            config.model.num_classes,
            if config.model.multi_level { ", multi-level" } else { "" },
            parameters(&trainer.model.vs)
        ),
        data,
        init: config.model.init.clone(),
        start,
        max_iters: t.max_iters,
        schedule: Schedule { early_stop: t.early_stop, save_every: t.save_every, log_every: t.log_every },
        gpu: [(t.channels_last, "channels-last"), (t.cuda_graph, "CUDA graph"), (t.deterministic, "deterministic")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| name.to_string())
            .collect(),
        precision: t.precision,
    };
    if let Some(dry_run) = plan.announce(&options) {
        return Ok(dry_run);
    }

    // Everything that can fail on a bad config or bad data has been tried: now the folder.
    let mut record = RunRecord::open(
        &options,
        &config.to_toml()?,
        start,
        plan.schedule,
        t.tensorboard,
        format!("{} {}", config.name, method),
        main_losses,
    )?;
    for i in start..=t.early_stop {
        let src = source.next_batch().with_context(|| format!("iteration {i}: loading a source batch"))?;
        let labels = src.labels.as_ref().context("the source dataset gave no labels")?;
        let trg = match &mut target {
            Some(l) => Some(l.next_batch().with_context(|| format!("iteration {i}: loading a target batch"))?),
            None => None,
        };
        let losses = trainer
            .step(i, &src.images, labels, trg.as_ref().map(|b| &b.images))
            .with_context(|| format!("iteration {i}"))?;
        let (lr, lr_d) = trainer.learning_rates(i);
        record.push(i, lr, lr_d, losses)?;
        if let Some(board) = record.board.as_mut().filter(|_| i % t.viz_every == t.viz_every - 1) {
            visualize(board, &trainer.model, "source", &src.images, i)?;
            if let Some(trg) = &trg {
                visualize(board, &trainer.model, "target", &trg.images, i)?;
            }
            board.flush()?;
        }
        if record.checkpoint_due(i) {
            let state = TrainState::at(i, method, source.state(), target.as_ref().map(Loader::state));
            record.checkpoint(&state, &checkpoint_files(&trainer), t.keep_checkpoints)?;
        }
        record.advance();
        if record.stopping() {
            break;
        }
    }
    record.finish()
}

/// What a run is about to do: printed as it starts (unless hidden), and all that a dry run
/// does.
pub(crate) struct Plan {
    /// The method and the network.
    pub what: String,
    /// A line per domain ([`seg_domain_line`], or detection's).
    pub data: Vec<String>,
    /// `model.init` (empty: none).
    pub init: String,
    pub start: u64,
    pub max_iters: u64,
    /// Its iterations and checkpoints, as the run's record keeps them.
    pub schedule: Schedule,
    /// The CUDA-only settings that are on.
    pub gpu: Vec<String>,
    pub precision: crate::device::Precision,
}

impl Plan {
    pub(crate) fn text(&self, options: &RunOptions) -> String {
        let device = match options.device {
            // TF32 is a GPU's; bf16 autocast runs on the CPU too.
            Device::Cpu if self.precision == crate::device::Precision::Bf16 => "the CPU (bf16)".to_string(),
            Device::Cpu => "the CPU".to_string(),
            Device::Cuda(n) => {
                let settings: Vec<String> =
                    std::iter::once(self.precision.to_string()).chain(self.gpu.clone()).collect();
                format!("cuda:{n} ({})", settings.join(", "))
            }
            other => format!("{other:?}"),
        };
        let mut text = format!("training {} on {device}\n", self.what);
        text += &match (self.start, self.init.as_str()) {
            (0, "") => "  weights: a random initialisation (model.init is empty)\n".to_string(),
            (0, init) => format!("  weights: initialised from {init}\n"),
            (n, _) => format!("  weights: the checkpoint of iteration {}\n", n - 1),
        };
        for line in &self.data {
            text += &format!("  {line}\n");
        }
        let from = match self.start {
            0 => "0".to_string(),
            n => format!("{n} (resumed)"),
        };
        text += &format!(
            "  iterations {from} to {} (poly decay over max_iters = {}); a checkpoint every {} and at the last, in {}",
            self.schedule.early_stop,
            self.max_iters,
            self.schedule.save_every,
            options.run_dir.display()
        );
        text
    }

    /// Prints the plan if asked to (or for a dry run); a dry run's summary (nothing trained)
    /// when the run stops here.
    pub(crate) fn announce(&self, options: &RunOptions) -> Option<RunSummary> {
        if options.announce || options.dry_run {
            eprintln!("{}", self.text(options));
        }
        options.dry_run.then(|| RunSummary {
            run_dir: options.run_dir.clone(),
            first_iteration: self.start,
            last_iteration: self.schedule.early_stop,
            seconds: 0.0,
            last_losses: Vec::new(),
            last_checkpoint: None,
            stopped_by: None,
        })
    }
}

/// A segmentation domain's line of the [`Plan`].
fn seg_domain_line(role: &str, d: &crate::config::DomainSection, images: usize) -> String {
    let place = match d.dataset.as_str() {
        "synthetic" => "the built-in generator".to_string(),
        _ => format!("{} in {}", d.split, d.root),
    };
    let list = if d.list.is_empty() { String::new() } else { format!(", list {}", d.list) };
    let labels = match d.pseudo_labels.as_deref() {
        Some(dir) if !dir.is_empty() => format!(", pseudo-labels {dir}"),
        _ => String::new(),
    };
    format!(
        "{role}: {} ({place}{list}{labels}), {images} images at {}x{}, batch {}",
        d.dataset, d.size[0], d.size[1], d.batch_size
    )
}

/// The count of trainable parameters of a variable store, in groups of three digits
/// (`44,496,216`).
pub(crate) fn parameters(vs: &tch::nn::VarStore) -> String {
    let n: usize = vs.trainable_variables().iter().map(Tensor::numel).sum();
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// When a run logs and saves: iterations up to `early_stop` (inclusive), a checkpoint every
/// `save_every` iterations and at `early_stop`, losses read every `log_every`.
pub(crate) struct Schedule {
    pub early_stop: u64,
    pub save_every: u64,
    pub log_every: u64,
}

/// What a run records as it goes, written once for segmentation and detection runs: the
/// run folder's `config.toml`, `metrics.jsonl`, the TensorBoard log, the progress bar (the
/// losses as its message), and the checkpoints.
pub(crate) struct RunRecord {
    run_dir: PathBuf,
    schedule: Schedule,
    metrics: MetricsLog,
    pub board: Option<EventWriter>,
    bar: ProgressBar,
    /// The progress bar's message for a logged row.
    message: fn(&[(String, f32)]) -> String,
    /// [`Progress::Lines`]: the line's prefix (the bar's).
    lines: Option<String>,
    first_iteration: u64,
    last_losses: Vec<(String, f32)>,
    last_checkpoint: Option<PathBuf>,
    /// The last iteration pushed.
    last_iteration: Option<u64>,
    /// When the last progress line was printed ([`Progress::Lines`]).
    last_line: Instant,
    began: Instant,
    /// With [`RunOptions::stop_on_signal`].
    signals: Option<StopOnSignal>,
    /// A signal received, taken at the start of an iteration's record ([`Self::push`]) so
    /// that the iteration's logging and its checkpoint agree on it.
    stop: Option<Signal>,
}

impl RunRecord {
    /// Prepares the run folder (`checkpoints/`, hidden leftovers of killed processes removed,
    /// the resolved configuration written), opens the logs from iteration `start` and shows
    /// the progress bar. Call it once nothing that a bad config or bad data fails on is left
    /// untried, so that such a failure leaves no folder behind.
    pub(crate) fn open(
        options: &RunOptions,
        config_toml: &str,
        start: u64,
        schedule: Schedule,
        tensorboard: bool,
        prefix: String,
        message: fn(&[(String, f32)]) -> String,
    ) -> Result<Self> {
        let run_dir = &options.run_dir;
        fs::create_dir_all(run_dir.join("checkpoints")).with_context(|| format!("creating {}", run_dir.display()))?;
        remove_leftovers(run_dir)?;
        // First, as a damaged log refuses a resume that should then leave the folder alone.
        let metrics = MetricsLog::open(&run_dir.join("metrics.jsonl"), start)?;
        crate::fs::write_bytes_atomic(&run_dir.join("config.toml"), config_toml.as_bytes())?;
        let mut board = if tensorboard { Some(EventWriter::create(&run_dir.join("tensorboard"))?) } else { None };
        if let Some(board) = board.as_mut().filter(|_| options.start != Start::New) {
            board.session_start(start as i64)?;
        }
        let lines = (options.progress == Progress::Lines).then(|| prefix.clone());
        let bar = progress_bar(options.progress == Progress::Bar, start, schedule.early_stop, prefix);
        let signals = if options.stop_on_signal { Some(StopOnSignal::install()?) } else { None };
        Ok(RunRecord {
            run_dir: run_dir.clone(),
            schedule,
            metrics,
            board,
            bar,
            message,
            lines,
            first_iteration: start,
            last_losses: Vec::new(),
            last_checkpoint: None,
            last_iteration: None,
            last_line: Instant::now(),
            began: Instant::now(),
            signals,
            stop: None,
        })
    }

    /// Whether iteration `i` ends with a checkpoint: periodic, the last, or a stop.
    pub(crate) fn checkpoint_due(&self, i: u64) -> bool {
        let s = &self.schedule;
        (i.is_multiple_of(s.save_every) && i != 0) || i == s.early_stop || self.stop.is_some()
    }

    /// Whether the run stops after this iteration (and its checkpoint): a signal was received.
    pub(crate) fn stopping(&self) -> bool {
        self.stop.is_some()
    }

    /// Records iteration `i`'s losses (queued for the host, see [`MetricsLog`]); at a log
    /// iteration writes the rows before `i` (all of them before a checkpoint) to
    /// `metrics.jsonl` and TensorBoard and shows the newest on the progress bar. So on CUDA
    /// the host queues iteration i + 1 while the device still runs iteration i.
    pub(crate) fn push(&mut self, i: u64, lr: f64, lr_d: f64, losses: Losses) -> Result<()> {
        if self.stop.is_none() {
            self.stop = self.signals.as_ref().and_then(StopOnSignal::received);
        }
        self.last_iteration = Some(i);
        self.metrics.push(i, lr, lr_d, losses)?;
        let save = self.checkpoint_due(i);
        if !save && !(i + 1).is_multiple_of(self.schedule.log_every) {
            return Ok(());
        }
        let rows = if save { self.metrics.flush()? } else { self.metrics.flush_before(i)? };
        if let Some(board) = &mut self.board {
            for (iter, row) in &rows {
                for (name, v) in row {
                    board.add_scalar(name, *v, *iter as i64)?;
                }
            }
            board.flush()?;
        }
        if let Some((_, row)) = rows.into_iter().next_back() {
            self.bar.set_message((self.message)(&row));
            self.last_losses = row;
        }
        Ok(())
    }

    /// Writes the checkpoint of `state` with `files` (see [`write_checkpoint`]), the metrics
    /// up to it synced to disk first, and keeps the newest `keep` checkpoints (0: all). Weights
    /// that hold a NaN or an infinity (a run diverging before its losses show it) stop the
    /// run instead: such a checkpoint could not be resumed or evaluated, and pruning would
    /// delete good ones for it.
    pub(crate) fn checkpoint(&mut self, state: &TrainState, files: &[(&str, StateDict)], keep: usize) -> Result<()> {
        for (file, dict) in files {
            for (key, t) in dict.iter() {
                if t.is_floating_point() && t.f_isfinite()?.f_all()?.int64_value(&[]) == 0 {
                    let last = checkpoints(&self.run_dir)?.pop();
                    bail!(
                        "iteration {}: `{key}` of {file} holds NaN or infinite values; training stopped without \
                         writing its checkpoint{}",
                        state.iteration,
                        last.map(|(_, p)| format!(" (the last one is {})", p.display())).unwrap_or_default()
                    );
                }
            }
        }
        self.metrics.sync()?;
        let written = write_checkpoint(&self.run_dir, state, files)?;
        self.print_line(state.iteration, &format!("; checkpoint {}", written.display()));
        self.last_checkpoint = Some(written);
        prune_checkpoints(&self.run_dir, keep)
    }

    /// [`Progress::Lines`]: a line on stderr for iteration `i` (done), ending with `suffix`.
    fn print_line(&mut self, i: u64, suffix: &str) {
        if let Some(prefix) = &self.lines {
            let done = i + 1 - self.first_iteration;
            let rate = done as f64 / self.began.elapsed().as_secs_f64().max(1e-9);
            let losses = (self.message)(&self.last_losses);
            eprintln!("{}", progress_line(prefix, i, self.schedule.early_stop, rate, &losses, suffix));
            self.last_line = Instant::now();
        }
    }

    /// One iteration done; with [`Progress::Lines`], a line when none was printed for
    /// [`LINE_EVERY`] (checkpoints may be hours apart on a CPU).
    pub(crate) fn advance(&mut self) {
        self.bar.inc(1);
        if self.last_line.elapsed() >= LINE_EVERY {
            if let Some(i) = self.last_iteration {
                self.print_line(i, "");
            }
        }
    }

    /// The run's summary, once its last iteration is done.
    pub(crate) fn finish(mut self) -> Result<RunSummary> {
        self.bar.finish_and_clear();
        if let Some(board) = &mut self.board {
            board.flush()?;
        }
        Ok(RunSummary {
            run_dir: self.run_dir,
            first_iteration: self.first_iteration,
            last_iteration: self.last_iteration.unwrap_or(self.schedule.early_stop),
            seconds: self.began.elapsed().as_secs_f64(),
            last_losses: self.last_losses,
            last_checkpoint: self.last_checkpoint,
            // A signal during the last iteration stopped nothing: the run is complete.
            stopped_by: self.stop.filter(|_| self.last_iteration != Some(self.schedule.early_stop)),
        })
    }
}

/// The longest a run on [`Progress::Lines`] stays silent: a line at every checkpoint, and one
/// whenever this long has passed without.
const LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// A progress line of [`Progress::Lines`]: iteration `i` of `0..=last` done at `rate`
/// iterations per second, the time left at that rate, and the losses.
fn progress_line(prefix: &str, i: u64, last: u64, rate: f64, losses: &str, suffix: &str) -> String {
    let left = last.saturating_sub(i) as f64 / rate.max(1e-9);
    format!("{prefix} iteration {i}/{last}, {rate:.2} it/s, eta {}, {losses}{suffix}", duration(left))
}

/// Seconds as `1h05m`, `4m07s` or `37s`.
pub(crate) fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// The progress bar of a training run: iterations `start..=last`, the losses as message.
fn progress_bar(shown: bool, start: u64, last: u64, prefix: String) -> ProgressBar {
    let bar = if shown { ProgressBar::new(last + 1) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} it, {per_sec}, eta {eta} {msg}")
            .expect("static template"),
    );
    bar.set_prefix(prefix);
    bar.set_position(start);
    bar.reset_eta();
    bar
}

/// The first image of a batch, the network's prediction of it and its entropy map, as
/// TensorBoard images `<domain>/image`, `<domain>/prediction`, `<domain>/entropy`.
fn visualize(
    board: &mut EventWriter,
    model: &crate::model::SegModel,
    domain: &str,
    images: &Tensor,
    iter: u64,
) -> Result<()> {
    let img = crate::image::from_input_tensor(images, crate::image::IMG_MEAN_BGR)?;
    let p = crate::predict::predict(model, &img, &Default::default())?;
    let (w, h) = (p.width, p.height);
    let palette = crate::classes::palette(model.config.num_classes as usize);
    let entropy = Vec::<f32>::try_from(p.entropy.f_flatten(0, -1)?)?;
    board.add_image(&format!("{domain}/image"), &img, iter as i64)?;
    board.add_image(&format!("{domain}/prediction"), &colormap::colorize(&p.train_ids, w, h, &palette), iter as i64)?;
    board.add_image(&format!("{domain}/entropy"), &colormap::heatmap(&entropy, w, h), iter as i64)
}

/// The progress bar's losses of a segmentation run: the main heads' (`seg_src=… ent=…`).
fn main_losses(row: &[(String, f32)]) -> String {
    row.iter()
        .filter(|(k, _)| k.starts_with("loss_") && k.ends_with("_main"))
        .map(|(k, v)| format!("{}={v:.3}", k.trim_start_matches("loss_").trim_end_matches("_main")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One logged iteration: its number and (name, value) pairs.
pub(crate) type MetricsRow = (u64, Vec<(String, f32)>);

/// Per-iteration losses, copied to the host without waiting (on a GPU the copy is queued
/// behind the step and read once done, so that the training step never waits for the host
/// nor the device for the host's reading); checked for NaN and infinity when read.
pub(crate) struct MetricsLog {
    path: PathBuf,
    file: File,
    pending: Vec<PendingRow>,
}

/// One line of `metrics.jsonl`.
pub(crate) struct LoggedRow {
    pub(crate) iter: u64,
    pub(crate) line: String,
    pub(crate) values: serde_json::Map<String, serde_json::Value>,
}

/// Reads `metrics.jsonl`. A last line without its newline that does not parse is the half
/// of a row a killed process was writing, and is left out; any other line that is not a
/// row with an iteration is an error naming the file and the line.
pub(crate) fn read_metrics_rows(path: &Path) -> Result<Vec<LoggedRow>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let torn = !text.is_empty() && !text.ends_with('\n');
    let count = text.lines().count();
    let mut rows = Vec::with_capacity(count);
    for (n, line) in text.lines().enumerate() {
        let row = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line)
            .ok()
            .and_then(|values| Some(LoggedRow { iter: values.get("iter")?.as_u64()?, line: line.to_string(), values }));
        match row {
            Some(row) => rows.push(row),
            None if torn && n + 1 == count => {}
            None => bail!(
                "{}: line {} is not a row of training metrics (a JSON object with an \"iter\"); \
                 the file is damaged: delete or repair that line (checkpoints do not depend on it)",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(rows)
}

/// An iteration's row whose losses are on their way to the host.
struct PendingRow {
    iter: u64,
    lr: f64,
    lr_d: f64,
    names: Vec<&'static str>,
    /// The losses in `names`' order, float32.
    values: HostCopy,
}

impl MetricsLog {
    /// Opens the log for appending from iteration `start`, dropping lines of later
    /// iterations (those after the checkpoint a run resumes from).
    pub(crate) fn open(path: &Path, start: u64) -> Result<Self> {
        if path.exists() {
            let mut kept = String::new();
            for row in read_metrics_rows(path)? {
                if row.iter < start {
                    kept.push_str(&row.line);
                    kept.push('\n');
                }
            }
            crate::fs::write_bytes_atomic(path, kept.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsLog { path: path.to_path_buf(), file, pending: Vec::new() })
    }

    /// Queues the copy of an iteration's losses to the host (call it right after the step,
    /// before a CUDA graph's next replay overwrites them).
    pub(crate) fn push(&mut self, iter: u64, lr: f64, lr_d: f64, losses: Losses) -> Result<()> {
        let names = losses.iter().map(|(n, _)| *n).collect();
        let scalars: Vec<Tensor> = losses.iter().map(|(_, t)| t.f_reshape([1])).collect::<Result<_, _>>()?;
        let values = match scalars.is_empty() {
            true => Tensor::f_zeros([0], (Kind::Float, Device::Cpu))?,
            false => Tensor::f_cat(&scalars, 0)?.f_to_kind(Kind::Float)?,
        };
        self.pending.push(PendingRow { iter, lr, lr_d, names, values: HostCopy::start(&values)? });
        Ok(())
    }

    /// Writes the pending rows and returns them. A non-finite loss stops training with an
    /// error naming the iteration and the loss (rows before it are written).
    pub(crate) fn flush(&mut self) -> Result<Vec<MetricsRow>> {
        self.flush_before(u64::MAX)
    }

    /// [`MetricsLog::flush`] for the rows of iterations before `iter`; later ones stay
    /// pending. The training loop reads the previous iteration's losses once the current
    /// one is queued: reading them waits for their copy, queued behind the previous step,
    /// while the device has the current step to run.
    pub(crate) fn flush_before(&mut self, iter: u64) -> Result<Vec<MetricsRow>> {
        let later = self.pending.iter().position(|p| p.iter >= iter).unwrap_or(self.pending.len());
        let kept = self.pending.split_off(later);
        let rows = self.flush_pending();
        self.pending = kept;
        rows
    }

    fn flush_pending(&mut self) -> Result<Vec<MetricsRow>> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let mut text = String::new();
        let mut rows = Vec::new();
        let mut failure = None;
        for PendingRow { iter, lr, lr_d, names, values } in std::mem::take(&mut self.pending) {
            let values = Vec::<f32>::try_from(values.wait()?)?;
            let mut row = serde_json::Map::new();
            row.insert("iter".into(), iter.into());
            let mut named = Vec::new();
            for (name, v) in names.into_iter().zip(values) {
                if !v.is_finite() && failure.is_none() {
                    failure = Some(format!("iteration {iter}: {name} is {v}; training stopped"));
                }
                named.push((name.to_string(), v));
            }
            if failure.is_some() {
                break;
            }
            for (name, v) in &named {
                row.insert(name.clone(), serde_json::Value::from(*v));
            }
            row.insert("lr".into(), lr.into());
            row.insert("lr_d".into(), lr_d.into());
            text.push_str(&serde_json::Value::Object(row).to_string());
            text.push('\n');
            named.push(("lr".into(), lr as f32));
            named.push(("lr_d".into(), lr_d as f32));
            rows.push((iter, named));
        }
        self.file.write_all(text.as_bytes()).with_context(|| format!("writing {}", self.path.display()))?;
        if let Some(message) = failure {
            self.file.flush()?;
            bail!(message);
        }
        Ok(rows)
    }

    pub(crate) fn sync(&mut self) -> Result<()> {
        self.file.sync_data().with_context(|| format!("writing {}", self.path.display()))
    }
}

/// A segmentation checkpoint's files: the network, the discriminators, every optimiser's
/// state (one file, prefixed names).
fn checkpoint_files(trainer: &Trainer) -> Vec<(&'static str, StateDict)> {
    let mut files = vec![("model.pth", trainer.model.state_dict())];
    let mut optim = trainer.sgd.state_dict("seg.");
    for (d, file, prefix) in [(&trainer.d_main, "d_main.pth", "d_main."), (&trainer.d_aux, "d_aux.pth", "d_aux.")] {
        if let Some(d) = d {
            files.push((file, StateDict::from_var_store(&d.vs)));
            for (k, v) in d.opt.state_dict(prefix).iter() {
                optim.insert(k, v.shallow_clone());
            }
        }
    }
    files.push(("optimizer.safetensors", optim));
    files
}

/// Writes `<run>/checkpoints/iter_NNNNNN/` with `files` (each state dict in the format of
/// its extension) and `state.json`: into a hidden folder first, renamed into place when
/// complete (an existing checkpoint of the same iteration is discarded first).
fn write_checkpoint(run_dir: &Path, state: &TrainState, files: &[(&str, StateDict)]) -> Result<PathBuf> {
    let name = checkpoint_name(state.iteration);
    let parent = run_dir.join("checkpoints");
    let final_dir = parent.join(&name);
    let tmp = parent.join(format!(".{name}{TEMPORARY}{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let result = (|| -> Result<()> {
        fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for (file, dict) in files {
            weights::save(dict, &tmp.join(file))?;
        }
        crate::fs::write_bytes_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(state)?.as_bytes())?;
        if final_dir.exists() {
            discard(&final_dir)?;
        }
        fs::rename(&tmp, &final_dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))?;
        if let Ok(d) = File::open(&parent) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.with_context(|| format!("saving checkpoint {}", final_dir.display()))?;
    Ok(final_dir)
}

fn load_checkpoint(trainer: &mut Trainer, dir: &Path) -> Result<()> {
    let context = |file: &str| format!("resuming from {}", dir.join(file).display());
    let opts = crate::model::LoadOptions::default();
    let model = weights::load(&dir.join("model.pth"))?;
    crate::model::load_into(&trainer.model.vs, model, opts).with_context(|| context("model.pth"))?;
    let optim = weights::load(&dir.join("optimizer.safetensors"))?;
    trainer.sgd.load_state_dict(&optim, "seg.").with_context(|| context("optimizer.safetensors"))?;
    for (d, file, prefix) in
        [(&mut trainer.d_main, "d_main.pth", "d_main."), (&mut trainer.d_aux, "d_aux.pth", "d_aux.")]
    {
        if let Some(d) = d {
            crate::model::load_into(&d.vs, weights::load(&dir.join(file))?, opts).with_context(|| context(file))?;
            d.opt.load_state_dict(&optim, prefix).with_context(|| context("optimizer.safetensors"))?;
        }
    }
    Ok(())
}

fn prune_checkpoints(run_dir: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = checkpoints(run_dir)?;
    for (_, dir) in all.iter().take(all.len().saturating_sub(keep)) {
        discard(dir)?;
    }
    Ok(())
}

/// Hidden name parts of a checkpoint being written (`.iter_000010.tmp-PID`) and of one being
/// deleted (`.iter_000010.old-PID`).
const TEMPORARY: &str = ".tmp-";
const DISCARDED: &str = ".old-";

/// Deletes a checkpoint folder so that no half-deleted one is ever visible under its name:
/// it is renamed to a hidden name first.
fn discard(dir: &Path) -> Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let hidden = dir.with_file_name(format!(".{name}{DISCARDED}{}", std::process::id()));
    let _ = fs::remove_dir_all(&hidden);
    fs::rename(dir, &hidden).with_context(|| format!("removing old checkpoint {}", dir.display()))?;
    fs::remove_dir_all(&hidden).with_context(|| format!("removing old checkpoint {}", hidden.display()))
}

/// Removes the hidden checkpoint folders that processes which no longer run left behind
/// (killed while writing or deleting one). A live process's folders are left alone.
fn remove_leftovers(run_dir: &Path) -> Result<()> {
    crate::fs::remove_leftovers(&run_dir.join("checkpoints"), &[TEMPORARY, DISCARDED], |_| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(v: f32) -> Tensor {
        Tensor::from(v)
    }

    #[test]
    fn a_nan_loss_stops_with_the_iteration_and_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, 0).unwrap();
        log.push(0, 0.1, 0.01, vec![("loss_seg_src_main", scalar(1.5)), ("loss_ent_main", scalar(0.5))]).unwrap();
        log.push(1, 0.1, 0.01, vec![("loss_seg_src_main", scalar(1.25)), ("loss_ent_main", scalar(f32::NAN))]).unwrap();
        log.push(2, 0.1, 0.01, vec![("loss_seg_src_main", scalar(1.0)), ("loss_ent_main", scalar(0.4))]).unwrap();
        let err = log.flush().unwrap_err().to_string();
        assert_eq!(err, "iteration 1: loss_ent_main is NaN; training stopped");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "only the rows before the bad one are kept: {text}");
        assert!(text.starts_with(r#"{"iter":0,"loss_seg_src_main":1.5,"loss_ent_main":0.5,"lr":0.1"#), "{text}");
    }

    /// The training loop's lagged read: the current iteration's row waits for the next
    /// flush, and the file ends up as if every row had been written at once.
    #[test]
    fn rows_of_later_iterations_wait_for_the_next_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, 0).unwrap();
        log.push(0, 0.1, 0.01, vec![("loss_seg_src_main", scalar(3.0))]).unwrap();
        assert!(log.flush_before(0).unwrap().is_empty(), "iteration 0 is not before 0");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        log.push(1, 0.1, 0.01, vec![("loss_seg_src_main", scalar(2.0))]).unwrap();
        let rows = log.flush_before(1).unwrap();
        assert_eq!(rows.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0]);
        assert_eq!(rows[0].1[0], ("loss_seg_src_main".to_string(), 3.0));
        log.push(2, 0.1, 0.01, vec![("loss_seg_src_main", scalar(f32::INFINITY))]).unwrap();
        assert_eq!(log.flush_before(2).unwrap().len(), 1, "iteration 1 only");
        assert_eq!(log.flush().unwrap_err().to_string(), "iteration 2: loss_seg_src_main is inf; training stopped");
        let text = std::fs::read_to_string(&path).unwrap();
        let iters: Vec<&str> = text.lines().map(|l| &l[..9]).collect();
        assert_eq!(iters, vec![r#"{"iter":0"#, r#"{"iter":1"#], "{text}");
    }

    #[test]
    fn progress_lines_say_the_rate_and_the_time_left() {
        // 1000 iterations left at 2.5 it/s: 400 s.
        assert_eq!(
            progress_line("demo advent", 999, 1999, 2.5, "seg_src=0.4", ""),
            "demo advent iteration 999/1999, 2.50 it/s, eta 6m40s, seg_src=0.4"
        );
        assert_eq!(duration(37.4), "37s");
        assert_eq!(duration(3600.0 + 5.0 * 60.0 + 59.0), "1h05m");
        assert_eq!(duration(0.0), "0s");
    }

    fn record(dir: &Path, schedule: Schedule) -> RunRecord {
        let options = RunOptions {
            run_dir: dir.to_path_buf(),
            device: Device::Cpu,
            start: Start::New,
            progress: Progress::Hidden,
            stop_on_signal: false,
            announce: false,
            dry_run: false,
        };
        RunRecord::open(&options, "", 0, schedule, false, "test".into(), |_| String::new()).unwrap()
    }

    fn lines(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().count()
    }

    /// The reference's schedule (a checkpoint every `save_every` iterations, never at 0) plus
    /// the last iteration; the losses reach the log one log iteration late, all of them at a
    /// checkpoint.
    #[test]
    fn a_run_record_saves_and_logs_on_its_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = record(dir.path(), Schedule { early_stop: 7, save_every: 3, log_every: 4 });
        let due: Vec<u64> = (0..=7).filter(|&i| r.checkpoint_due(i)).collect();
        assert_eq!(due, vec![3, 6, 7]);
        let mut written = Vec::new();
        for i in 0..=7 {
            r.push(i, 0.1, 0.01, vec![("loss_seg_src_main", scalar(i as f32))]).unwrap();
            written.push(lines(dir.path()));
        }
        // 3: a checkpoint, every row; 4, 5: nothing due; 6: a checkpoint; 7: the last.
        assert_eq!(written, vec![0, 0, 0, 4, 4, 4, 7, 8]);
        let summary = r.finish().unwrap();
        assert_eq!(summary.last_losses[0], ("loss_seg_src_main".to_string(), 7.0));
        assert_eq!(summary.last_checkpoint, None, "no checkpoint was written");
        assert!(dir.path().join("config.toml").is_file() && dir.path().join("checkpoints").is_dir());

        let dir = tempfile::tempdir().unwrap();
        let mut r = record(dir.path(), Schedule { early_stop: 20, save_every: 100, log_every: 4 });
        let mut written = Vec::new();
        for i in 0..8 {
            r.push(i, 0.1, 0.01, vec![("loss_seg_src_main", scalar(i as f32))]).unwrap();
            written.push(lines(dir.path()));
        }
        // Log iterations 3 and 7 write the rows before them; their own waits for the next.
        assert_eq!(written, vec![0, 0, 0, 3, 3, 3, 3, 7]);
    }

    #[test]
    fn reopening_drops_rows_after_the_resumed_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, 0).unwrap();
        for i in 0..5 {
            log.push(i, 0.1, 0.01, vec![("loss_seg_src_main", scalar(i as f32))]).unwrap();
        }
        log.flush().unwrap();
        drop(log);
        MetricsLog::open(&path, 3).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().last().unwrap().starts_with(r#"{"iter":2,"#));
    }

    /// A kill can leave half a row at the end (no newline): resuming drops it. A damaged
    /// line elsewhere is refused with its number, not silently dropped with the losses.
    #[test]
    fn reopening_drops_a_torn_last_row_and_refuses_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let row = |i: u64| format!("{{\"iter\":{i},\"loss_seg_src_main\":1.0,\"lr\":0.1}}\n");
        std::fs::write(&path, format!("{}{}{{\"iter\":2,\"loss_seg", row(0), row(1))).unwrap();
        MetricsLog::open(&path, 5).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}{}", row(0), row(1)));

        let damaged = format!("{}{{\"iter\":1,\"loss_seg\n{}", row(0), row(2));
        std::fs::write(&path, &damaged).unwrap();
        let err = MetricsLog::open(&path, 5).err().unwrap().to_string();
        assert!(err.contains("metrics.jsonl: line 2 is not a row of training metrics"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), damaged, "the log is left as it was");
        // A complete last line that is damaged is not half a row: refused as well.
        std::fs::write(&path, format!("{}[1, 2]\n", row(0))).unwrap();
        let err = MetricsLog::open(&path, 5).err().unwrap().to_string();
        assert!(err.contains("line 2 is not a row"), "{err}");
    }
}
