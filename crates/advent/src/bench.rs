//! Timing of the network's hot paths on random inputs, the same work as the reference
//! measurement script (`../shared/bench/torch_reference.py`), for side-by-side numbers.

use crate::config::{Config, Method};
use crate::device::Precision;
use crate::loss;
use crate::model::{Arch, SegModel};
use crate::train::Trainer;
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub what: String,
    pub device: String,
    pub iters: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub images_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// CUDA: the caching allocator's peak over the timed iterations, GiB (PyTorch's
    /// `max_memory_allocated`, as the reference script reports it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_gib: Option<f64>,
    /// The speed options in force (see [`Tuning`]).
    pub channels_last: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fused_optimizer: Option<bool>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cuda_graph: bool,
    /// Training with a CUDA graph: where its gradients live (`held` or `freed`, see
    /// [`crate::train::GraphGrads`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_grads: Option<crate::train::GraphGrads>,
    /// Training: how the logits are upsampled (`train.upsampling`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upsampling: Option<crate::loss::Upsampling>,
    /// Training: the discriminators' input channels zero-padded to this many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_pad: Option<i64>,
    /// CUDA: the cuDNN autotuner's limit of algorithms timed per shape (0: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cudnn_benchmark_limit: Option<u32>,
    /// The segmentation classifiers' output channels zero-padded to this many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aspp_pad: Option<i64>,
    /// Evaluation: the batch-norm folding ([`crate::model::BnFold`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fold_bn: Option<crate::model::BnFold>,
    /// Evaluation: images per pass (the times are per pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<i64>,
}

/// Speed options of a measurement.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Weights and inputs channels-last (`train.channels_last`).
    pub channels_last: bool,
    /// The optimisers' fused multi-tensor kernels (the default) instead of per-parameter
    /// updates.
    pub fused_optimizer: bool,
    /// Replay a CUDA graph: of the forward pass, upsampling and argmax (evaluation), of the
    /// whole step (training, `train.cuda_graph`).
    pub cuda_graph: bool,
    /// Where a CUDA graph of the training step keeps its gradients.
    pub graph_grads: crate::train::GraphGrads,
    /// How training upsamples the logits (`train.upsampling`).
    pub upsampling: crate::loss::Upsampling,
    /// The discriminators' input zero-padded to this many channels
    /// ([`crate::model::Discriminator::padded_input`]).
    pub d_pad: Option<i64>,
    /// The segmentation classifiers' output channels zero-padded to this many
    /// ([`crate::model::SegModel::set_classifier_padding`]).
    pub aspp_pad: Option<i64>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            channels_last: false,
            fused_optimizer: true,
            cuda_graph: false,
            graph_grads: crate::train::GraphGrads::default(),
            upsampling: crate::loss::Upsampling::Kernel,
            d_pad: None,
            aspp_pad: None,
        }
    }
}

/// Starts a peak-memory measurement (CUDA only).
fn start_memory(device: Device) -> Result<()> {
    synchronize(device);
    crate::native::reset_peak_memory(device)
}

/// The peak since [`start_memory`], in GiB with two decimals (CUDA only).
fn peak_memory(device: Device) -> Result<Option<f64>> {
    synchronize(device);
    Ok(crate::native::cuda_memory(device)?
        .map(|m| (m.peak_allocated as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0))
}

impl Timing {
    /// `images`: per timed pass (images/s counts them).
    fn from_samples(what: String, device: Device, mut ms: Vec<f64>, images: i64) -> Self {
        ms.sort_by(f64::total_cmp);
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        let median = ms[ms.len() / 2];
        Timing {
            what,
            device: device_name(device),
            iters: ms.len(),
            median_ms: round1(median),
            min_ms: round1(ms[0]),
            mean_ms: round1(mean),
            images_per_s: round1(1000.0 * images as f64 / median),
            precision: None,
            peak_gib: None,
            channels_last: false,
            fused_optimizer: None,
            cuda_graph: false,
            graph_grads: None,
            upsampling: None,
            d_pad: None,
            cudnn_benchmark_limit: None,
            fold_bn: None,
            aspp_pad: None,
            batch: None,
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => crate::device::cpu_description(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

/// Waits for queued GPU work, so that wall time measures it.
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// How many untimed (`warmup`) and timed (`iters`) repetitions a measurement makes.
#[derive(Debug, Clone, Copy)]
pub struct Repeats {
    pub warmup: usize,
    pub iters: usize,
}

/// Evaluation as the paper does it: an `h x w` input, main head, bilinear upsampling
/// (align_corners) to `2h x 2w`, argmax; `batch` images per pass (the reference: 1).
/// `warmup` untimed runs, then `iters` timed ones. The times are per pass, images/s counts
/// the images.
pub fn eval_step(
    model: &mut SegModel,
    (h, w): (i64, i64),
    batch: i64,
    precision: Precision,
    tuning: Tuning,
    Repeats { warmup, iters }: Repeats,
) -> Result<Timing> {
    model.set_classifier_padding(tuning.aspp_pad);
    let model = &*model;
    let device = model.device();
    anyhow::ensure!(batch >= 1, "an evaluation batch of {batch} images");
    let x = Tensor::f_randn([batch, 3, h, w], (Kind::Float, device))?;
    let step = || -> Result<Tensor> {
        tch::no_grad(|| {
            let main = {
                let _autocast = crate::device::autocast(device, precision)?;
                model.forward_main(&x)?
            };
            Ok(loss::upsample(&main.f_to_kind(Kind::Float)?, 2 * h, 2 * w)?.f_argmax(1, false)?)
        })
    };
    for _ in 0..warmup.max(2) {
        let _ = step()?;
    }
    let graph = if tuning.cuda_graph {
        let (graph, out) = crate::native::CudaGraph::capture(device, step)?;
        graph.replay()?;
        let eager = step()?;
        let agree = out.f_eq_tensor(&eager)?.f_to_kind(Kind::Float)?.f_mean(Kind::Float)?.double_value(&[]);
        eprintln!("eval: the CUDA graph's labels agree with the eager pass's on {:.4}% of the pixels", 100.0 * agree);
        anyhow::ensure!(agree > 0.999, "the CUDA graph's output differs from the eager pass ({agree})");
        Some(graph)
    } else {
        None
    };
    start_memory(device)?;
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        match &graph {
            Some(g) => g.replay()?,
            None => {
                let _ = step()?;
            }
        }
        synchronize(device);
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut timing = Timing::from_samples(format!("eval-{h}x{w}-upsampled-x2"), device, samples, batch);
    timing.batch = Some(batch);
    timing.peak_gib = peak_memory(device)?;
    timing.channels_last = model.is_channels_last();
    timing.cuda_graph = tuning.cuda_graph;
    timing.fold_bn = Some(model.bn_fold());
    timing.aspp_pad = tuning.aspp_pad;
    Ok(timing)
}

/// The image sizes of a training step, `(h, w)` each.
#[derive(Debug, Clone, Copy)]
pub struct StepSizes {
    pub source: (i64, i64),
    pub target: (i64, i64),
}

/// One training iteration of `method` with the reference's settings (multi-level, both
/// discriminators for AdvEnt), on random inputs of the given sizes, labels uniform over the
/// 19 classes.
pub fn train_step(
    arch: Arch,
    method: Method,
    precision: Precision,
    StepSizes { source, target }: StepSizes,
    device: Device,
    tuning: Tuning,
    Repeats { warmup, iters }: Repeats,
) -> Result<Timing> {
    let mut config = Config::defaults();
    config.train.method = method;
    config.model.arch = arch.name().into();
    config.train.precision = precision;
    config.train.channels_last = tuning.channels_last;
    config.train.cuda_graph = tuning.cuda_graph;
    config.train.upsampling = tuning.upsampling;
    config.source.size = [source.1 as u32, source.0 as u32];
    config.target.size = [target.1 as u32, target.0 as u32];
    config.validate()?;
    let mut trainer = Trainer::new(&config, device)?;
    trainer.graph_grads = tuning.graph_grads;
    trainer.model.set_classifier_padding(tuning.aspp_pad);
    trainer.sgd.fused = tuning.fused_optimizer;
    for d in [&mut trainer.d_main, &mut trainer.d_aux].into_iter().flatten() {
        d.opt.fused = tuning.fused_optimizer;
        d.net.padded_input = tuning.d_pad;
    }
    let xs = Tensor::f_randn([1, 3, source.0, source.1], (Kind::Float, device))?;
    let ys = Tensor::f_randint(19, [1, source.0, source.1], (Kind::Int64, device))?;
    let xt = Tensor::f_randn([1, 3, target.0, target.1], (Kind::Float, device))?;
    let mut samples = Vec::with_capacity(iters);
    // A graph is captured after GRAPH_WARMUP eager steps and replayed from then on; its
    // replays allocate nothing, so its peak is measured from the capture on.
    let (warmup, memory_from) = match tuning.cuda_graph {
        true => (warmup.max(crate::train::GRAPH_WARMUP + 1), crate::train::GRAPH_WARMUP),
        false => (warmup, warmup),
    };
    for i in 0..warmup + iters.max(1) {
        if i == memory_from {
            start_memory(device)?;
        }
        let t = Instant::now();
        let losses = trainer.step(i as u64, &xs, &ys, Some(&xt))?;
        synchronize(device);
        if i >= warmup {
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
        if i + 1 == warmup + iters.max(1) {
            // The last step's losses are finite (a broken graph or precision shows here).
            for (name, l) in losses {
                let v = l.f_double_value(&[])?;
                anyhow::ensure!(v.is_finite(), "{name} = {v} at the last timed step");
            }
        }
    }
    let what =
        format!("train-{}-{}-src{}x{}-trg{}x{}", arch.name(), method.name(), source.0, source.1, target.0, target.1);
    let mut timing = Timing::from_samples(what, device, samples, 1);
    timing.peak_gib = peak_memory(device)?;
    timing.channels_last = tuning.channels_last;
    timing.fused_optimizer = Some(tuning.fused_optimizer);
    timing.cuda_graph = tuning.cuda_graph;
    timing.graph_grads = tuning.cuda_graph.then_some(tuning.graph_grads);
    timing.upsampling = Some(tuning.upsampling);
    timing.d_pad = tuning.d_pad;
    timing.aspp_pad = tuning.aspp_pad;
    Ok(timing)
}

/// Detection: one SSD-300 iteration of `method` on a batch of `batch` random 300x300
/// images per domain (images/s counts the source images), with random matched targets (about 2% positive default boxes, as a
/// street scene's few objects give), 8 classes and the background.
pub fn detection_train_step(
    method: crate::detect::train::DetMethod,
    batch: i64,
    device: Device,
    Repeats { warmup, iters }: Repeats,
) -> Result<Timing> {
    use crate::detect::train::{DetTrainConfig, DetTrainer};
    let mut trainer = DetTrainer::new(DetTrainConfig { method, ..Default::default() }, 9, device)?;
    let p = 8732;
    let xs = Tensor::f_randn([batch, 3, 300, 300], (Kind::Float, device))?.f_mul_scalar(50.0)?;
    let xt = Tensor::f_randn([batch, 3, 300, 300], (Kind::Float, device))?.f_mul_scalar(50.0)?;
    let loc = Tensor::f_randn([batch, p, 4], (Kind::Float, device))?;
    let positive = Tensor::f_rand([batch, p], (Kind::Float, device))?.f_lt(0.02)?;
    let classes = Tensor::f_randint_low(1, 9, [batch, p], (Kind::Int64, device))?;
    let labels = classes.f_mul(&positive.f_to_kind(Kind::Int64)?)?;
    let mut samples = Vec::with_capacity(iters);
    for i in 0..warmup + iters.max(1) {
        if i == warmup {
            start_memory(device)?;
        }
        let t = Instant::now();
        trainer.step(i as u64, &xs, &loc, &labels, Some(&xt))?;
        synchronize(device);
        if i >= warmup {
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut timing =
        Timing::from_samples(format!("detect-train-ssd300-{}-batch{batch}", method.name()), device, samples, batch);
    timing.peak_gib = peak_memory(device)?;
    Ok(timing)
}

/// Detection inference: SSD-300 forward on a batch of `batch` 300x300 images.
pub fn detection_eval(batch: i64, device: Device, Repeats { warmup, iters }: Repeats) -> Result<Timing> {
    let ssd = crate::detect::ssd::Ssd::new(9, device)?;
    let x = Tensor::f_randn([batch, 3, 300, 300], (Kind::Float, device))?;
    let mut samples = Vec::with_capacity(iters);
    for i in 0..warmup + iters.max(1) {
        if i == warmup {
            start_memory(device)?;
        }
        let t = Instant::now();
        tch::no_grad(|| ssd.forward(&x))?;
        synchronize(device);
        if i >= warmup {
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut timing = Timing::from_samples(format!("detect-eval-ssd300-batch{batch}"), device, samples, batch);
    timing.peak_gib = peak_memory(device)?;
    Ok(timing)
}
