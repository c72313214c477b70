#[path = "../src/data.rs"]
mod data;
use clap::Parser;
use std::process::ExitCode;
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: data::Command,
}
fn main() -> ExitCode {
    match data::run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
