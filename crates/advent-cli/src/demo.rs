//! `advent demo` and `advent report`.

use crate::args::parse_device;
use advent::demo::{findings, run_demo, table, DemoOptions};
use advent::train::Progress;
use anyhow::{ensure, Context, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// One seed and shorter training (1 to 3 minutes on 2 CPU cores instead of 10 to 25).
    #[arg(long)]
    quick: bool,
    /// Output folder: results.json, report.html and every run (replaced when the demo ends;
    /// an existing folder must be empty or an earlier demo's). Default: runs/demo, or
    /// runs/demo-detection with --task detection.
    #[arg(long)]
    out: Option<PathBuf>,
    /// segmentation (DeepLab-V2, the paper's main task) or detection (SSD, cars and persons).
    #[arg(long, default_value = "segmentation")]
    task: String,
    /// Seeds to average over (default: 3 for segmentation; 1 for detection or with --quick).
    #[arg(long)]
    seeds: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Change a setting of configs/demo.toml (configs/detection/demo.toml with --task
    /// detection) for every run: --set train.lambda_ent_main=0.01 (repeatable; the methods
    /// keep their own method and the control its zero weights).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    let device = parse_device(&a.device)?;
    let detection = match a.task.as_str() {
        "segmentation" => false,
        "detection" => true,
        other => anyhow::bail!("--task: unknown `{other}` (segmentation, detection)"),
    };
    let out =
        a.out.clone().unwrap_or_else(|| PathBuf::from(if detection { "runs/demo-detection" } else { "runs/demo" }));
    // A detection seed takes about 11 minutes on 2 CPU cores: one by default.
    let seeds = a.seeds.unwrap_or(if a.quick || detection { 1 } else { 3 });
    ensure!(seeds >= 1, "--seeds must be at least 1");
    // The demo replaces --out when it ends: refused now, not after minutes of training, if
    // that would replace anything but an earlier demo.
    if out.exists() {
        ensure!(out.is_dir(), "--out {} is not a folder", out.display());
        let earlier_demo = out.join("results.json").is_file();
        let empty = std::fs::read_dir(&out).with_context(|| format!("reading {}", out.display()))?.next().is_none();
        ensure!(
            earlier_demo || empty,
            "--out {} holds files that are not a demo's (no results.json): the demo would replace them",
            out.display()
        );
    }
    let say = |line: &str| eprintln!("demo: {line}");
    let progress = if std::io::stderr().is_terminal() { Progress::Bar } else { Progress::Hidden };
    if detection {
        use advent::detect::demo;
        let options = demo::DetDemoOptions {
            out: out.clone(),
            seeds,
            quick: a.quick,
            device,
            progress,
            schedule: None,
            overrides: a.overrides.clone(),
        };
        let results = demo::run(&options, &say)?;
        summary(&demo::table(&results), &demo::findings(&results), results.seconds, &results.device, &out);
        return Ok(());
    }
    let options = DemoOptions {
        out: out.clone(),
        seeds,
        quick: a.quick,
        device,
        progress,
        schedule: None,
        overrides: a.overrides.clone(),
    };
    let results = run_demo(&options, &say)?;
    summary(&table(&results), &findings(&results), results.seconds, &results.device, &out);
    Ok(())
}

/// Prints a demo's table, its findings, and where its results and report are.
fn summary(table: &str, findings: &[String], seconds: f64, device: &str, out: &Path) {
    println!("{table}");
    println!();
    for line in findings {
        println!("- {line}");
    }
    println!();
    println!(
        "{seconds:.0} s on {device}; results: {}, report: {}",
        out.join("results.json").display(),
        out.join("report.html").display()
    );
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// A training run's folder (its report goes to RUN/report.html); several, with --out,
    /// compare the runs on one page.
    #[arg(required = true, value_name = "RUN")]
    runs: Vec<PathBuf>,
    /// With several runs: the comparison page's file (written whole or not at all).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Device for the sample predictions.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Target images shown with the last checkpoint's predictions (or detections).
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Detection runs: boxes drawn have at least this class score (as `advent detect
    /// predict --min-score`).
    #[arg(long, default_value_t = 0.5)]
    min_score: f32,
}

pub fn report(a: ReportArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    ensure!((0.0..=1.0).contains(&a.min_score), "--min-score must be in [0, 1], got {}", a.min_score);
    if let [_, _, ..] = a.runs.as_slice() {
        let out = a.out.as_ref().context(
            "several runs make a comparison page: give its file with --out (each run's own report: advent report RUN)",
        )?;
        advent::report::compare::write_comparison(&a.runs, out)?;
        eprintln!("wrote {}", out.display());
        return Ok(());
    }
    ensure!(a.out.is_none(), "--out is for a comparison of several runs; a run's report is written to RUN/report.html");
    let options = advent::report::run::ReportOptions { device, samples: a.samples, min_score: a.min_score };
    let report = advent::report::run::write_run_report(&a.runs[0], &options)?;
    if let Some(why) = &report.samples_left_out {
        eprintln!("note: no sample images in the report: {why}");
    }
    eprintln!("wrote {}", report.path.display());
    Ok(())
}
