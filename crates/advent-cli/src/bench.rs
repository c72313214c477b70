//! `advent bench`.

use crate::args::{parse_device, parse_size};
use advent::bench;
use advent::config::Method;
use advent::model::{Arch, ModelConfig, SegModel};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// What to time: eval, or the training step of source_only, minent, advent,
    /// advent_minent (comma-separated).
    #[arg(long, default_value = "eval,advent")]
    what: String,
    /// Network: deeplabv2-r101 (the paper's), deeplabv2-r50, deeplabv2-vgg16, deeplabv2-tiny.
    #[arg(long, default_value = "deeplabv2-r101")]
    arch: String,
    /// Network input for the evaluation timing, WxH (the paper's target size by default).
    #[arg(long, value_parser = parse_size, default_value = "1024x512")]
    eval_size: (u32, u32),
    /// Source images of the training step, WxH (the paper's GTA5 size by default).
    #[arg(long, value_parser = parse_size, default_value = "1280x720")]
    source_size: (u32, u32),
    /// Target images of the training step, WxH (the paper's Cityscapes size by default).
    #[arg(long, value_parser = parse_size, default_value = "1024x512")]
    target_size: (u32, u32),
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 15, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100_000))]
    warmup: usize,
    /// Arithmetic: tf32 (PyTorch's default for convolutions), fp32 or bf16 (autocast; on the
    /// CPU too). tf32 and fp32 differ on CUDA only.
    #[arg(long, default_value = "tf32")]
    precision: advent::device::Precision,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=crate::args::MAX_THREADS as i64))]
    threads: Option<i32>,
    /// Also write the results as JSON lines here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// segmentation (DeepLab-V2, the sizes above) or detection (SSD-300 at 300x300; --what
    /// takes eval, source_only, minent, advent).
    #[arg(long, default_value = "segmentation")]
    task: String,
    /// Convolution weights and inputs channels-last (`train.channels_last`).
    #[arg(long)]
    channels_last: bool,
    /// Per-parameter optimiser updates instead of the fused multi-tensor kernels (for
    /// comparison).
    #[arg(long)]
    unfused_optimizer: bool,
    /// Replay CUDA graphs: of the forward pass, upsampling and argmax in the evaluation
    /// timing (as `advent eval --cuda-graph`), of the whole step in the training timings
    /// (as `train.cuda_graph`).
    #[arg(long)]
    cuda_graph: bool,
    /// With --cuda-graph, training: `held` keeps the gradients allocated between steps and
    /// zeroes them in place; `freed` frees them before the capture, which then allocates them
    /// in the graph's memory pool (PyTorch's recipe; lower peak memory; the default, as in
    /// `advent train`).
    #[arg(long, default_value = "freed")]
    graph_grads: advent::train::GraphGrads,
    /// Training: how logits are upsampled (`train.upsampling`): kernel (libtorch's bilinear
    /// kernel, the reference's) or matmul (two float32 products; fp32 and tf32 only).
    #[arg(long, default_value = "kernel")]
    upsampling: advent::loss::Upsampling,
    /// cuDNN's autotuner: how many convolution algorithms it times per shape, 0 for all
    /// (`train.cudnn_benchmark_limit`; PyTorch's default 10).
    #[arg(long, default_value_t = 10)]
    cudnn_benchmark_limit: u32,
    /// Training: zero-pad the discriminators' input (19 channels) to this many channels, a
    /// count cuDNN's tensor-core kernels take whole; the same results.
    #[arg(long)]
    d_pad: Option<i64>,
    /// Zero-pad the segmentation classifiers' output channels (the 19 classes of every ASPP
    /// branch) to this many, a count cuDNN's tensor-core kernels take whole; the same
    /// results (training and evaluation timings).
    #[arg(long)]
    aspp_pad: Option<i64>,
    /// Evaluation timing: batch norms folded into the convolutions (off, on, or fused: on
    /// CUDA also bias, residual and ReLU in cuDNN's convolution calls), as `advent eval
    /// --fold-bn`.
    #[arg(long, default_value = "off")]
    fold_bn: advent::model::BnFold,
    /// Images per batch: detection, per domain (default 32, ssd.pytorch's); segmentation,
    /// per evaluation pass (default 1, the reference's; its training step is the paper's,
    /// one image per domain).
    #[arg(long)]
    batch: Option<i64>,
}

pub fn run(a: Args) -> Result<()> {
    let device = parse_device(&a.device)?;
    if let Some(n) = a.threads {
        tch::set_num_threads(n);
    }
    if device.is_cuda() {
        advent::device::set_precision(a.precision)?;
        advent::device::set_cudnn_benchmark(true)?;
        advent::device::set_cudnn_benchmark_limit(a.cudnn_benchmark_limit)?;
    }
    tch::manual_seed(0);
    let arch: Arch = a.arch.parse()?;
    let hw = |(w, h): (u32, u32)| (h as i64, w as i64);
    let repeats = bench::Repeats { warmup: a.warmup, iters: a.iters };
    let tuning = bench::Tuning {
        channels_last: a.channels_last,
        fused_optimizer: !a.unfused_optimizer,
        cuda_graph: a.cuda_graph,
        graph_grads: a.graph_grads,
        upsampling: a.upsampling,
        d_pad: a.d_pad,
        aspp_pad: a.aspp_pad,
    };
    let mut lines = String::new();
    let detection = match a.task.as_str() {
        "segmentation" => false,
        "detection" => true,
        other => anyhow::bail!("--task: unknown `{other}` (segmentation, detection)"),
    };
    let batch = a.batch.unwrap_or(if detection { 32 } else { 1 });
    anyhow::ensure!(batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(
        detection || batch == 1 || a.what.split(',').all(|w| w.trim() == "eval"),
        "--batch: the segmentation training step is the paper's, one image per domain; \
         a batch applies to --what eval only"
    );
    anyhow::ensure!(a.d_pad.is_none_or(|c| c >= 19), "--d-pad pads the 19 classes: give at least 19");
    anyhow::ensure!(a.aspp_pad.is_none_or(|c| c >= 19), "--aspp-pad pads the 19 classes: give at least 19");
    for what in a.what.split(',').map(str::trim) {
        let mut timing = if detection {
            use advent::detect::train::DetMethod;
            match what {
                "eval" => bench::detection_eval(batch, device, repeats)?,
                "source_only" => bench::detection_train_step(DetMethod::SourceOnly, batch, device, repeats)?,
                "minent" => bench::detection_train_step(DetMethod::MinEnt, batch, device, repeats)?,
                "advent" => bench::detection_train_step(DetMethod::AdvEnt, batch, device, repeats)?,
                other => anyhow::bail!("--what: unknown `{other}` for detection (eval, source_only, minent, advent)"),
            }
        } else if what == "eval" {
            let config =
                ModelConfig { arch, multi_level: arch != Arch::DeepLabV2Vgg16, ..ModelConfig::deeplabv2_r101(19) };
            let mut model = SegModel::new(config, device)?;
            if tuning.channels_last {
                model.use_channels_last()?;
            }
            model.fold_batch_norms(a.fold_bn, a.precision)?;
            bench::eval_step(&mut model, hw(a.eval_size), batch, a.precision, tuning, repeats)?
        } else {
            let method: Method = serde_json::from_value(serde_json::Value::String(what.into())).map_err(|_| {
                anyhow::anyhow!("--what: unknown `{what}` (eval, source_only, minent, advent, advent_minent)")
            })?;
            let sizes = bench::StepSizes { source: hw(a.source_size), target: hw(a.target_size) };
            bench::train_step(arch, method, a.precision, sizes, device, tuning, repeats)?
        };
        if device.is_cuda() {
            timing.precision = Some(format!("{:?}", a.precision).to_lowercase());
            timing.cudnn_benchmark_limit = Some(a.cudnn_benchmark_limit);
        }
        let line = serde_json::to_string(&timing)?;
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
