//! `advent`: train, evaluate and run ADVENT segmentation networks.
//!
//! A thin layer over the `advent` library: argument parsing, progress display and turning
//! errors into one line and a non-zero exit status.

mod args;
mod bench;
mod checkpoint;
mod data;
mod demo;
mod detect;
mod eval;
mod predict;
mod score;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "advent",
    version,
    about = "ADVENT domain adaptation for semantic segmentation (Vu et al., CVPR 2019)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a segmentation network with source-only, MinEnt (+ER, +CP), AdvEnt or AdvEnt+MinEnt.
    Train(train::Args),
    /// Evaluate networks on Cityscapes val with the paper's protocol: ensembles, snapshot sweeps.
    Eval(eval::Args),
    /// Score prediction PNGs of any model against Cityscapes ground truth (as cityscapesScripts matches them) or labels of your own.
    Score(score::Args),
    /// Segment images with a trained network: train ids, colours, entropy maps.
    Predict(predict::Args),
    /// Inspect or convert a checkpoint (.pth in either PyTorch format, .safetensors).
    #[command(subcommand)]
    Checkpoint(checkpoint::Command),
    /// Check a dataset on disk: counts, sizes, pixels per class, every problem.
    #[command(subcommand)]
    Data(data::Command),
    /// Time the network's hot paths on random inputs (see BENCHMARKS.md).
    Bench(bench::Args),
    /// ADVENT on the built-in synthetic-to-real shift: trains every method, compares them,
    /// writes results.json and report.html (CPU, minutes).
    Demo(demo::Args),
    /// The HTML report of a training run (curves, evaluations, predictions).
    Report(demo::ReportArgs),
    /// Object detection with SSD-300 (the paper's detection extension).
    #[command(subcommand)]
    Detect(detect::Command),
}

fn main() -> ExitCode {
    // Die quietly when the reader of our output goes away (`advent ... | head`), as Unix
    // tools do, instead of panicking on a failed print.
    // SAFETY: setting a signal's disposition to the default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Every failure exits with status 1, a bad argument too (clap's own choice is 2).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    // First: MKL reads its reproducibility mode when first called.
    advent::device::repeatable_blas();
    if std::env::var_os("ADVENT_KEEP_DENORMALS").is_none() {
        let _ = advent::device::set_flush_denormal(true);
    }
    if std::env::var_os("ADVENT_MALLOC_DEFAULTS").is_none() && !advent::device::malloc_configured_by_environment() {
        advent::device::keep_freed_host_memory();
    }
    let result = match cli.command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Score(a) => score::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Checkpoint(c) => checkpoint::run(c),
        Command::Bench(a) => bench::run(a),
        Command::Data(c) => data::run(c),
        Command::Demo(a) => demo::run(a),
        Command::Report(a) => demo::report(a),
        Command::Detect(c) => detect::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
