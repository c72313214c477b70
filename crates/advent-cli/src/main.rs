//! `advent`: train, evaluate and run ADVENT segmentation networks.
//!
//! A thin layer over the `advent` library: argument parsing, progress display and turning
//! errors into one line and a non-zero exit status.

mod args;
mod bench;
mod checkpoint;
mod data;
mod predict;
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
    /// Train a segmentation network with source-only, MinEnt, AdvEnt or AdvEnt+MinEnt.
    Train(train::Args),
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
    /// The built-in synthetic-to-real demonstration (not built yet).
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Checkpoint(c) => checkpoint::run(c),
        Command::Bench(a) => bench::run(a),
        Command::Data(c) => data::run(c),
        Command::Demo => Err(anyhow::anyhow!(
            "`advent demo` is not built yet: it arrives with the built-in synthetic benchmark \
             (see README.md, \"Status\")"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
