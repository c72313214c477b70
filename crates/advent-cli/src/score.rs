//! `advent score`: prediction PNGs of any model against Cityscapes ground truth.

use advent::eval::score::{score, ScoreOptions};
use advent::eval::subset_for;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "\
Each ground-truth frame gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png is \
matched to the one PNG under --pred, searched recursively, whose name starts with \
<city>_<seq>_<frame>, as cityscapesScripts' evalPixelLevelSemanticLabeling matches them; \
`advent predict`'s <stem>_trainids.png qualify (its _color.png and _entropy.png pictures are \
passed over). A frame without a prediction is an error. Scores are those of `advent eval`: one \
confusion matrix over all frames, IoU per class, classes without pixels skipped in the mean.")]
pub struct Args {
    /// Folder of prediction PNGs (8-bit, one value per pixel).
    #[arg(long, value_name = "DIR")]
    pred: PathBuf,
    /// The Cityscapes root holding gtFine/.
    #[arg(long, value_name = "ROOT")]
    gt: PathBuf,
    /// cityscapes or foggy-cityscapes (both are scored against gtFine).
    #[arg(long, default_value = "cityscapes")]
    dataset: String,
    /// Split of the ground truth.
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
    /// Threads reading and counting frames (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    let classes: usize = a.classes.parse().expect("validated by clap");
    let num_classes = if classes == 13 { 16 } else { classes };
    let options = ScoreOptions {
        dataset: a.dataset.clone(),
        split: a.split.clone(),
        num_classes,
        subset: subset_for(classes, num_classes)?,
        label_ids: a.label_ids,
        threads: a.threads.unwrap_or(0),
    };
    let bar = ProgressBar::no_length();
    bar.set_style(ProgressStyle::with_template("{pos} frames scored, {per_sec}").expect("static template"));
    let report = score(&a.pred, &a.gt, &options, &|| bar.inc(1))?;
    bar.finish_and_clear();
    let s = &report.scores;
    print!("{}", s.table());
    println!(
        "{} {:.2} over {} classes, {} frames of {}",
        s.score_name(),
        s.miou,
        s.classes.len(),
        report.frames,
        a.gt.join("gtFine").join(&a.split).display()
    );
    if let Some(path) = &a.json {
        s.write_json(path)?;
    }
    Ok(())
}
