//! `advent score`: prediction PNGs of any model against Cityscapes ground truth, or labels of
//! one's own.

use advent::eval::score::{score, ScoreOptions};
use advent::eval::subset_for;
use anyhow::{ensure, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "\
Each ground-truth frame gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png is \
matched to the one PNG under --pred, searched recursively, whose name starts with \
<city>_<seq>_<frame>, as cityscapesScripts' evalPixelLevelSemanticLabeling matches them; \
`advent predict`'s <stem>_trainids.png qualify (its _color.png and _entropy.png pictures are \
passed over). A frame without a prediction is an error. Scores are those of `advent eval`: one \
confusion matrix over all frames, IoU per class, classes without pixels skipped in the mean.

With --dataset folder, --gt is a folder of label PNGs of one's own (Cityscapes label ids, or \
train ids with --gt-train-ids): each <sub>/<name>.png under it, searched recursively, is \
matched to <sub>/<name>_trainids.png (what `advent predict --recursive` writes for an image \
<sub>/<name>.*) or <sub>/<name>.png under --pred.")]
pub struct Args {
    /// Folder of prediction PNGs (8-bit, one value per pixel).
    #[arg(long, value_name = "DIR")]
    pred: PathBuf,
    /// The Cityscapes root holding gtFine/ (with --dataset folder: a folder of label PNGs).
    #[arg(long, value_name = "ROOT")]
    gt: PathBuf,
    /// cityscapes or foggy-cityscapes (both are scored against gtFine), or folder (label
    /// PNGs of one's own under --gt, matched by name).
    #[arg(long, default_value = "cityscapes")]
    dataset: String,
    /// With --dataset folder: the labels hold train ids (255: ignored) instead of Cityscapes
    /// label ids, in the order of --classes (19: Cityscapes' train ids; 16 and 13: the
    /// 16-class SYNTHIA protocol's).
    #[arg(long)]
    gt_train_ids: bool,
    /// Split of the ground truth (Cityscapes).
    #[arg(long, default_value = "val")]
    split: String,
    /// Classes: 19 (Cityscapes), 16 (SYNTHIA → Cityscapes: predictions are 16-class train
    /// ids) or 13 (SYNTHIA's mIoU* over the same 16-class predictions).
    #[arg(long, value_parser = ["19", "16", "13"], default_value = "19")]
    classes: String,
    /// Prediction values are Cityscapes label ids (cityscapesScripts' format) instead of
    /// train ids; predicted ignored ids count as misses, as cityscapesScripts counts them.
    #[arg(long)]
    label_ids: bool,
    /// Write the scores as JSON (the same as `advent eval --json`).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Print the paper's published result (SPEC §8) under the table, with the difference per
    /// class (as `advent eval --paper`; an unknown key lists them all).
    #[arg(long, value_name = "KEY", value_parser = |k: &str| advent::eval::paper::row(k))]
    paper: Option<&'static advent::eval::paper::PaperRow>,
    /// Threads reading and counting frames (default: one per core).
    #[arg(long, value_parser = crate::args::threads(1))]
    threads: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    ensure!(
        !a.gt_train_ids || a.dataset == "folder",
        "--gt-train-ids is for --dataset folder (Cityscapes' gtFine holds label ids)"
    );
    let classes: usize = a.classes.parse().expect("validated by clap");
    let num_classes = if classes == 13 { 16 } else { classes };
    advent::eval::paper::check(a.paper, num_classes)?;
    let options = ScoreOptions {
        dataset: a.dataset.clone(),
        split: a.split.clone(),
        num_classes,
        subset: subset_for(classes, num_classes)?,
        label_ids: a.label_ids,
        gt_train_ids: a.gt_train_ids,
        threads: a.threads.unwrap_or(0),
    };
    let bar = ProgressBar::no_length();
    bar.set_style(ProgressStyle::with_template("{pos} frames scored, {per_sec}").expect("static template"));
    let report = score(&a.pred, &a.gt, &options, &|| bar.inc(1))?;
    bar.finish_and_clear();
    let s = &report.scores;
    print!("{}", s.table_with(a.paper));
    let gt = if a.dataset == "folder" { a.gt.clone() } else { a.gt.join("gtFine").join(&a.split) };
    println!(
        "{} {:.2} over {} classes, {} frames of {}",
        s.score_name(),
        s.miou,
        s.classes.len(),
        report.frames,
        gt.display()
    );
    if let Some(path) = &a.json {
        s.write_json(path)?;
    }
    Ok(())
}
