//! `advent detect train`: a detection training run, in the folder layout of a segmentation
//! run (see [`crate::train::run`]), with the same guarantees (checkpoints written aside and
//! renamed, resumption with the same data order and flips, metrics cut back on resume,
//! TensorBoard restart markers):
//!
//! ```text
//! <run>/config.toml                 the resolved detection configuration
//! <run>/metrics.jsonl               one line per iteration: losses and learning rates
//! <run>/checkpoints/iter_002000/    model.pth (SSD-300, ssd.pytorch's keys: advent detect
//!                                   eval/predict and ssd.pytorch load it), d.pth (AdvEnt's
//!                                   discriminators), optimizer.safetensors, state.json
//! ```

use super::config::DetConfig;
use super::data::{DetDataset, DetectionSet, SyntheticDetection};
use super::loader::DetLoader;
use super::train::{DetMethod, DetTrainer};
use crate::dataset::synthetic::Domain;
use crate::native::to_device_async;
use crate::train::optim::poly_lr;
use crate::train::run::{
    loader_config, parameters, resume_point, start_state, Plan, RunOptions, RunRecord, RunSummary, Schedule, TrainState,
};
use crate::weights::{self, StateDict};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;

/// The detection set of one domain of `config` (images prepared at 300x300; the target's
/// frames without boxes).
pub fn open_set(config: &DetConfig, source: bool) -> Result<Arc<dyn DetDataset>> {
    let d = if source { &config.source } else { &config.target };
    let what = if source { "source" } else { "target" };
    Ok(match d.dataset.as_str() {
        "synthetic" => {
            let domain = if source { Domain::Source } else { Domain::Target };
            Arc::new(SyntheticDetection::scenes(config.synthetic.seed, domain, config.synthetic.len))
        }
        other => {
            let list = (!d.list.is_empty()).then(|| PathBuf::from(&d.list));
            let set = DetectionSet::open(
                other,
                Path::new(&d.root),
                &d.split,
                d.beta,
                list.as_deref(),
                300,
                Default::default(),
            )
            .with_context(|| format!("{what} dataset"))?;
            ensure!(!set.is_empty(), "{what} dataset: no image under {} ({} {})", d.root, other, d.split);
            // The target is unlabelled: its instance maps are neither needed nor read.
            Arc::new(if source { set } else { set.without_boxes() })
        }
    })
}

/// Trains as configured until `train.early_stop`.
pub fn run(config: &DetConfig, options: RunOptions) -> Result<RunSummary> {
    let run_dir = &options.run_dir;
    let resume_state = start_state(run_dir, &options.start)?;
    let t = &config.train;
    let device = options.device;
    if device.is_cuda() {
        crate::device::set_precision(t.precision)?;
        crate::device::set_cudnn_benchmark(true)?;
    }
    tch::manual_seed(t.seed as i64);
    let mut trainer = DetTrainer::new(config.step_config()?, config.model.num_classes, device)?;
    let method = trainer.config.method;
    // A resumed run's weights all come from its checkpoint: `model.init` is not read again.
    if !config.model.init.is_empty() && resume_state.is_none() {
        let path = Path::new(&config.model.init);
        let dict = weights::load(path).context("model.init")?;
        if dict.get("conf.0.weight").is_some() {
            // A whole detector (a run's model.pth): every layer, shapes checked.
            crate::model::load_into(&trainer.ssd.vs, dict, Default::default())
                .with_context(|| format!("model.init: loading {}", path.display()))?;
        } else {
            trainer.ssd.load_imagenet_dict(&dict, path).context("model.init")?;
        }
    }
    let (start, source_order, target_order) =
        resume_point(resume_state.as_ref(), &options.start, method.name(), t.early_stop, |ckpt| {
            load_checkpoint(&mut trainer, ckpt)
        })?;
    // On CUDA the batches come in page-locked memory and their copies are queued without
    // waiting (as a segmentation run's), the losses read an iteration later (RunRecord::push).
    let pin = device.is_cuda();
    let settings = |batch_size: usize, seed: u64| loader_config(t.workers, t.prefetch, batch_size, seed, pin);
    let source_set = open_set(config, true)?;
    let mut data = vec![det_domain_line("source", &config.source, source_set.len(), source_set.size())];
    let mut source = DetLoader::new(
        source_set,
        settings(config.source.batch_size, t.seed),
        source_order,
        config.augment(true)?,
        true,
    )?;
    let mut target = if method != DetMethod::SourceOnly {
        let seed = t.seed.wrapping_add(1);
        let set = open_set(config, false)?;
        data.push(det_domain_line("target", &config.target, set.len(), set.size()));
        Some(DetLoader::new(
            set,
            settings(config.target.batch_size, seed),
            target_order,
            config.augment(false)?,
            false,
        )?)
    } else {
        None
    };
    let plan = Plan {
        what: format!(
            "{}, SSD-300 of width {} ({} classes with the background, {} trainable parameters)",
            method.name(),
            config.model.width,
            config.model.num_classes,
            parameters(&trainer.ssd.vs)
        ),
        data,
        init: config.model.init.clone(),
        start,
        max_iters: t.max_iters,
        schedule: Schedule { early_stop: t.early_stop, save_every: t.save_every, log_every: t.log_every },
        gpu: Vec::new(),
        precision: t.precision,
    };
    if let Some(dry_run) = plan.announce(&options) {
        return Ok(dry_run);
    }

    let mut record = RunRecord::open(
        &options,
        &config.to_toml()?,
        start,
        plan.schedule,
        t.tensorboard,
        format!("{} {}", config.name, method.name()),
        all_losses,
    )?;
    for i in start..=t.early_stop {
        let src = source.next_batch().with_context(|| format!("iteration {i}: loading a source batch"))?;
        let trg = match &mut target {
            Some(l) => Some(l.next_batch().with_context(|| format!("iteration {i}: loading a target batch"))?),
            None => None,
        };
        let to_device = |t: &Tensor| to_device_async(t, device);
        let trg_images = trg.as_ref().map(|b| to_device(&b.images)).transpose()?;
        let boxes = src.targets.as_ref().context("a source batch without matched boxes")?;
        let losses = trainer
            .step(i, &to_device(&src.images)?, &to_device(&boxes.loc)?, &to_device(&boxes.labels)?, trg_images.as_ref())
            .with_context(|| format!("iteration {i}"))?;
        let lr = super::train::detector_lr(&trainer.config, i);
        let lr_d = poly_lr(t.learning_rate_d, i, t.max_iters, t.power);
        record.push(i, lr, lr_d, losses)?;
        if record.checkpoint_due(i) {
            let state = TrainState::at(i, method.name(), source.state(), target.as_ref().map(DetLoader::state));
            record.checkpoint(&state, &checkpoint_files(&trainer), t.keep_checkpoints)?;
        }
        record.advance();
        if record.stopping() {
            break;
        }
    }
    record.finish()
}

/// A detection domain's line of the [`Plan`].
fn det_domain_line(role: &str, d: &super::config::DomainSection, frames: usize, side: u32) -> String {
    let place = match d.dataset.as_str() {
        "synthetic" => "the built-in scenes".to_string(),
        "foggy-cityscapes" => format!("{} in {}, beta {}", d.split, d.root, d.beta),
        _ => format!("{} in {}", d.split, d.root),
    };
    let list = if d.list.is_empty() { String::new() } else { format!(", list {}", d.list) };
    let augment = if d.augment == "none" { String::new() } else { format!(", augmentation {}", d.augment) };
    format!("{role}: {} ({place}{list}), {frames} frames at {side}x{side}{augment}, batch {}", d.dataset, d.batch_size)
}

/// The progress bar's losses of a detection run: every loss (`loc=… conf=… ent=…`).
fn all_losses(row: &[(String, f32)]) -> String {
    row.iter()
        .filter(|(k, _)| k.starts_with("loss_"))
        .map(|(k, v)| format!("{}={v:.3}", k.trim_start_matches("loss_")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A detection checkpoint's files: the detector, AdvEnt's discriminators, every optimiser's
/// state (one file, prefixed names).
fn checkpoint_files(trainer: &DetTrainer) -> Vec<(&'static str, StateDict)> {
    let mut files = vec![("model.pth", trainer.ssd.state_dict())];
    let mut optim = trainer.sgd.state_dict("det.");
    if let Some(d) = &trainer.discriminators {
        files.push(("d.pth", StateDict::from_var_store(&d.vs)));
        for (k, v) in d.opt.state_dict("d.").iter() {
            optim.insert(k, v.shallow_clone());
        }
    }
    files.push(("optimizer.safetensors", optim));
    files
}

fn load_checkpoint(trainer: &mut DetTrainer, dir: &Path) -> Result<()> {
    let context = |file: &str| format!("resuming from {}", dir.join(file).display());
    let opts = crate::model::LoadOptions::default();
    crate::model::load_into(&trainer.ssd.vs, weights::load(&dir.join("model.pth"))?, opts)
        .with_context(|| context("model.pth"))?;
    let optim = weights::load(&dir.join("optimizer.safetensors"))?;
    trainer.sgd.load_state_dict(&optim, "det.").with_context(|| context("optimizer.safetensors"))?;
    if let Some(d) = &mut trainer.discriminators {
        crate::model::load_into(&d.vs, weights::load(&dir.join("d.pth"))?, opts).with_context(|| context("d.pth"))?;
        d.opt.load_state_dict(&optim, "d.").with_context(|| context("optimizer.safetensors"))?;
    }
    Ok(())
}
