//! `advent rank`: IntraDA's entropy ranking of the target images, the easy and hard splits
//! and the easy images' pseudo-labels.

use crate::args::{parse_device, parse_size};
use advent::dataset::{self, Dataset, DatasetSpec, OpenOptions};
use advent::device::Precision;
use advent::model::{LoadOptions, ModelOverrides, SegModel, WeightsKind};
use advent::rank::{rank, RankOptions, DEFAULT_LAMBDA};
use anyhow::{ensure, Result};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
#[command(after_help = "\
IntraDA (Pan et al., CVPR 2020) continues ADVENT: the adapted network ranks the target \
training images by the mean entropy of its predictions (eval mode, main head, upsampled to \
--input-size), the first share --lambda of them is the easy split and the rest the hard \
split, and its predictions of the easy images become their labels. Then `advent train \
--config configs/intrada_cityscapes_easy2hard.toml` adapts from the easy split to the hard one.

Writes, into the new folder --out: easy_split.txt and hard_split.txt (list files, in ranking \
order), scores.csv, and pseudo_labels/<stem>.png (train ids) with <stem>_color.png.")]
pub struct Args {
    /// The adapted network (the inter-domain stage's best checkpoint).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// The target dataset: cityscapes, foggy-cityscapes, mapillary or images (a folder of
    /// one's own).
    #[arg(long, default_value = "cityscapes")]
    dataset: String,
    /// Its root folder, in the official layout.
    #[arg(long)]
    root: PathBuf,
    /// Split to rank (the training split: the hard split is adapted to, the easy one
    /// trained on).
    #[arg(long, default_value = "train")]
    split: String,
    /// List file in the reference's format restricting and ordering the images.
    #[arg(long)]
    list: Option<PathBuf>,
    /// Network input size WxH, the size of the pseudo-labels (the target's training size).
    /// Default: 1024x512 (Mapillary: 1024x768, each image fitted and padded).
    #[arg(long, value_parser = parse_size)]
    input_size: Option<(u32, u32)>,
    /// Share of the images in the easy split (IntraDA's λ1).
    #[arg(long, default_value_t = DEFAULT_LAMBDA)]
    lambda: f64,
    /// Multiply each score by IntraDA's rare-class normaliser (19 classes).
    #[arg(long)]
    normalize: bool,
    /// The new folder for the outputs.
    #[arg(long)]
    out: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Arithmetic: tf32 (PyTorch's default, the reference's), fp32, or bf16.
    #[arg(long, default_value = "tf32")]
    precision: Precision,
    /// Foggy Cityscapes' attenuation β.
    #[arg(long, default_value_t = 0.02)]
    beta: f64,
    /// Threads loading images ahead of the network (default: the CPU cores, 2 to 8).
    #[arg(long, default_value_t = crate::args::default_workers().into(), value_parser = crate::args::threads(0))]
    workers: usize,
}

pub fn run(a: Args) -> Result<()> {
    ensure!(
        ["cityscapes", "foggy-cityscapes", "mapillary", "images"].contains(&a.dataset.as_str()),
        "--dataset {}: rank a target domain (cityscapes, foggy-cityscapes, mapillary or images)",
        a.dataset
    );
    let device = parse_device(&a.device)?;
    if device.is_cuda() {
        advent::device::set_precision(a.precision)?;
        advent::device::set_cudnn_benchmark(true)?;
    }
    let (model, report) =
        SegModel::from_checkpoint(&a.checkpoint, &ModelOverrides::default(), LoadOptions::default(), device)?;
    if report.kind != Some(WeightsKind::Model) {
        eprintln!("warning: {} is an initialisation file; its classifier is untrained", a.checkpoint.display());
    }
    let input_size = a.input_size.unwrap_or(advent::eval::protocol(&a.dataset).input_size);
    let spec = DatasetSpec {
        kind: a.dataset.clone(),
        root: a.root.clone(),
        split: a.split.clone(),
        list: a.list.clone(),
        size: input_size,
        labels: false,
        num_classes: model.config.num_classes as usize,
        foggy_beta: a.beta,
        ..advent::config::Config::defaults().dataset_spec(false)
    };
    let set = Arc::new(dataset::open_files(&spec, &OpenOptions::default())?);
    eprintln!(
        "ranking {} images of {} {} with {} (input {}x{}, easy share {})",
        set.len(),
        a.dataset,
        a.split,
        a.checkpoint.display(),
        input_size.0,
        input_size.1,
        a.lambda
    );
    let options = RankOptions {
        lambda: a.lambda,
        normalize: a.normalize,
        workers: a.workers,
        precision: a.precision,
        progress: true,
    };
    let ranking = rank(&model, set, &options, &a.out)?;
    let n = ranking.ranked.len();
    let mean = |part: &[advent::rank::Ranked]| part.iter().map(|r| r.score()).sum::<f64>() / part.len().max(1) as f64;
    let (easy, hard) = ranking.ranked.split_at(ranking.easy);
    println!("easy: {} images, mean score {:.5}", easy.len(), mean(easy));
    println!("hard: {} images, mean score {:.5}", hard.len(), mean(hard));
    eprintln!("wrote {} ({n} pseudo-labels, easy_split.txt, hard_split.txt, scores.csv)", a.out.display());
    Ok(())
}
