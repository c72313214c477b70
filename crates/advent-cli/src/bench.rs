//! `advent bench`.

use crate::args::{parse_device, parse_size};
use advent::bench;
use advent::model::{ModelConfig, SegModel};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Network input for the evaluation timing, WxH (the paper's target size by default).
    #[arg(long, value_parser = parse_size, default_value = "1024x512")]
    eval_size: (u32, u32),
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 15)]
    iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 4)]
    warmup: usize,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Also write the results as JSON lines here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let device = parse_device(&a.device)?;
    if let Some(n) = a.threads {
        tch::set_num_threads(n);
    }
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::manual_seed(0);
    let model = SegModel::new(ModelConfig::deeplabv2_r101(19), device)?;
    let (w, h) = a.eval_size;
    let timings = vec![bench::eval_step(
        &model, h as i64, w as i64, a.warmup, a.iters,
    )?];
    let mut lines = String::new();
    for t in &timings {
        let line = serde_json::to_string(t)?;
        println!("{line}");
        lines.push_str(&line);
        lines.push('\n');
    }
    if let Some(path) = a.json {
        advent::fs::write_bytes_atomic(&path, lines.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
