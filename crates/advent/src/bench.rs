//! Timing of the network's hot paths on random inputs, the same work as the reference
//! measurement script (`../shared/bench/torch_reference.py`), for side-by-side numbers.

use crate::loss;
use crate::model::SegModel;
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
}

impl Timing {
    fn from_samples(what: String, device: Device, mut ms: Vec<f64>) -> Self {
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
            images_per_s: round1(1000.0 / median),
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
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

/// Evaluation as the paper does it: an `h x w` input, main head, bilinear upsampling
/// (align_corners) to `2h x 2w`, argmax. `warmup` untimed runs, then `iters` timed ones.
pub fn eval_step(model: &SegModel, h: i64, w: i64, warmup: usize, iters: usize) -> Result<Timing> {
    let device = model.device();
    let x = Tensor::f_randn([1, 3, h, w], (Kind::Float, device))?;
    let step = || -> Result<()> {
        tch::no_grad(|| {
            let heads = model.forward_t(&x, false)?;
            let _labels = loss::upsample(&heads.main, 2 * h, 2 * w)?.f_argmax(1, false)?;
            Ok(())
        })
    };
    for _ in 0..warmup {
        step()?;
    }
    synchronize(device);
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        step()?;
        synchronize(device);
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Timing::from_samples(
        format!("eval-{h}x{w}-upsampled-x2"),
        device,
        samples,
    ))
}
