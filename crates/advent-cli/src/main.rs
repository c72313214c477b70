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
mod rank;
mod score;
mod sweep;
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
    /// Evaluate networks on Cityscapes val with the paper's protocol (Mapillary with DADA's): ensembles, snapshot sweeps.
    Eval(eval::Args),
    /// Score prediction PNGs of any model against Cityscapes ground truth (as cityscapesScripts matches them) or labels of your own.
    Score(score::Args),
    /// Segment images with a trained network: train ids, colours, entropy maps.
    Predict(predict::Args),
    /// Rank target images by the entropy of an adapted network's predictions into easy and
    /// hard splits, with pseudo-labels for the easy ones (IntraDA's next step).
    Rank(rank::Args),
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
    /// The HTML report of a training run (curves, evaluations, predictions), or of several runs side by side.
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
        Command::Rank(a) => rank::run(a),
        Command::Checkpoint(c) => checkpoint::run(c),
        Command::Bench(a) => bench::run(a),
        Command::Data(c) => data::run(c),
        Command::Demo(a) => demo::run(a),
        Command::Report(a) => demo::report(a),
        Command::Detect(c) => detect::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A training run stopped by a signal, its message printed already.
        Err(ref e) if let Some(train::Stopped(signal)) = e.downcast_ref() => ExitCode::from(signal.exit_status()),
        Err(e) => {
            let message = format!("{e:#}");
            let keep_trace = std::env::var_os("TORCH_SHOW_CPP_STACKTRACES").is_some_and(|v| v == "1");
            eprintln!("error: {}", if keep_trace { &message } else { without_torch_trace(&message) });
            ExitCode::FAILURE
        }
    }
}

/// An error message without the C++ backtrace libtorch appends to its errors ("Exception
/// raised from … (most recent call first):" and a "frame #N" line per frame): one reads the
/// error itself. `TORCH_SHOW_CPP_STACKTRACES=1` keeps the trace, as it makes PyTorch show it.
fn without_torch_trace(message: &str) -> &str {
    let cut = ["\nException raised from ", "\nframe #0: "].iter().filter_map(|m| message.find(m)).min();
    cut.map_or(message, |at| message[..at].trim_end())
}

#[cfg(test)]
mod tests {
    use super::without_torch_trace;

    #[test]
    fn libtorchs_backtrace_is_cut_from_errors() {
        let torch = "iteration 0: Internal torch error: index 3 is out of bounds for dimension 1 with size 3\n\
                     Exception raised from operator() at /pytorch/aten/src/ATen/native/cpu/ScatterGatherKernel.cpp:116 \
                     (most recent call first):\nframe #0: c10::Error::Error(c10::SourceLocation) + 0x9d\n\
                     frame #1: <unknown function> + 0x1a3b2c4";
        assert_eq!(
            without_torch_trace(torch),
            "iteration 0: Internal torch error: index 3 is out of bounds for dimension 1 with size 3"
        );
        let enforce = "Internal torch error: [enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: \
                       not enough memory: you tried to allocate 2457600000000 bytes.\nframe #0: c10::ThrowEnforceNotMet";
        assert!(without_torch_trace(enforce).ends_with("allocate 2457600000000 bytes."));
        let plain = "reading x.png: No such file or directory\nsecond line";
        assert_eq!(without_torch_trace(plain), plain);
    }
}
