//! `advent data check`.

use advent::dataset::check::{Check, CheckReport, ProblemKind};
use advent::dataset::{self, SynthiaLabels};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Read every file of a dataset as training would and report the counts, image sizes,
    /// pixels per class and every problem found (unreadable or truncated files, images
    /// without labels, image and label of different sizes, unknown label ids, wrong bit
    /// depths), each naming its file. Exits with a non-zero status if there is any problem.
    Check(CheckArgs),
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum LabelSet {
    /// `parsed_LABELS` when that folder exists, else `GT/LABELS`.
    Auto,
    /// The pre-parsed 8-bit `parsed_LABELS`.
    Parsed,
    /// The raw 16-bit `GT/LABELS` (class in the first channel).
    Raw,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The dataset's kind.
    #[arg(long, value_parser = dataset::FILE_KINDS)]
    dataset: String,
    /// Its root folder, in the official layout (GTA5: images/, labels/; SYNTHIA: RGB/,
    /// parsed_LABELS/ or GT/LABELS/; Cityscapes: leftImg8bit/, gtFine/; Foggy Cityscapes:
    /// leftImg8bit_foggy/, gtFine/; Mapillary: <split>/images/, <split>/labels/; images: any
    /// folder of .png/.jpg/.jpeg, no labels).
    #[arg(long)]
    root: PathBuf,
    /// Split of Cityscapes, Foggy Cityscapes and Mapillary (GTA5 and SYNTHIA have none;
    /// Mapillary's train and val are its training and validation folders).
    #[arg(long, default_value = "train")]
    split: String,
    /// List file in the reference's format (one name per line, relative to the image
    /// folder) restricting the check to the files it names, which must exist.
    #[arg(long)]
    list: Option<PathBuf>,
    /// Class set the label ids are mapped to: 19 (Cityscapes), 16 (SYNTHIA → Cityscapes) or
    /// 7 (SYNTHIA → Mapillary). Default: 16 for SYNTHIA, 7 for Mapillary, 19 otherwise.
    #[arg(long, value_parser = ["19", "16", "7"])]
    num_classes: Option<String>,
    /// Foggy Cityscapes' attenuation β (0.005, 0.01 or 0.02).
    #[arg(long, default_value_t = 0.02)]
    beta: f64,
    /// Which SYNTHIA labels to check.
    #[arg(long, value_enum, default_value = "auto")]
    synthia_labels: LabelSet,
    /// Check the images only (a target domain needs no labels).
    #[arg(long)]
    images_only: bool,
    /// Also write the full report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Check(a) => check(a),
    }
}

fn check(a: CheckArgs) -> Result<()> {
    let num_classes = match a.num_classes.as_deref() {
        Some(n) => n.parse().expect("validated by clap"),
        None if a.dataset == "synthia" => 16,
        None if a.dataset == "mapillary" => 7,
        None => 19,
    };
    let synthia_labels = match a.synthia_labels {
        LabelSet::Auto => SynthiaLabels::Auto,
        LabelSet::Parsed => SynthiaLabels::Parsed,
        LabelSet::Raw => SynthiaLabels::Raw,
    };
    let layout = dataset::layout_of(&a.dataset, &a.root, &a.split, a.beta, synthia_labels)?;
    let check = Check::new(layout, a.list.as_deref(), num_classes, !a.images_only)?;
    let bar = if check.len() > 20 { ProgressBar::new(check.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} files, {per_sec}, eta {eta}").expect("static template"),
    );
    let report = check.run(&|| bar.inc(1));
    bar.finish_and_clear();
    print_report(&report);
    if let Some(path) = &a.json {
        let json = serde_json::to_vec_pretty(&report).context("serialising the report")?;
        advent::fs::write_bytes_atomic(path, &json)?;
    }
    if !report.problems.is_empty() {
        let only_missing_labels = report.problems.iter().all(|p| p.kind == ProblemKind::MissingLabel);
        bail!(
            "{} problem(s) found in {} (listed above){}",
            report.problems.len(),
            report.image_dir.display(),
            if only_missing_labels {
                "; a target domain needs no labels: --images-only checks without them"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn print_report(r: &CheckReport) {
    println!("{}: {} images in {}", r.dataset, r.images, r.image_dir.display());
    let sizes: Vec<String> = r.image_sizes.iter().map(|(size, n)| format!("{size} ({n})")).collect();
    println!("image sizes: {}", sizes.join(", "));
    if r.labels_checked {
        println!("labels read: {}", r.labels_read);
    }
    if r.labels_read > 0 {
        let total: u64 = r.class_pixels.iter().map(|c| c.pixels).sum::<u64>() + r.ignored_pixels + r.unknown_pixels;
        let share = |n: u64| 100.0 * n as f64 / total.max(1) as f64;
        println!("pixels per train id ({} classes):", r.num_classes);
        for c in &r.class_pixels {
            println!("  {:>3} {:<14} {:>14} {:>6.2}%", c.train_id, c.name, c.pixels, share(c.pixels));
        }
        println!("  255 {:<14} {:>14} {:>6.2}%", "(ignored)", r.ignored_pixels, share(r.ignored_pixels));
        if r.unknown_pixels > 0 {
            println!("      {:<14} {:>14} {:>6.2}%", "(unknown ids)", r.unknown_pixels, share(r.unknown_pixels));
        }
    }
    if r.problems.is_empty() {
        println!("no problems found");
    } else {
        println!("{} problem(s):", r.problems.len());
        for p in &r.problems {
            println!("  {p}");
        }
    }
}
