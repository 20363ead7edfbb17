//! The `maskstream` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "maskstream",
    version,
    about = "Real-time Mask R-CNN instance segmentation on video streams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the model on still images (PNG/JPEG): JSON Lines out, annotated PNGs optionally.
    Detect(cli::detect::Args),
    /// Print an engine's manifest summary and check its files.
    Inspect(cli::inspect::Args),
    /// Run a streaming pipeline: a pipelines/*.toml file and/or flags.
    Run(cli::run::Args),
    /// Process every video of a folder (or glob) into annotated videos and JSON Lines.
    Batch(cli::batch::Args),
    /// Measure model-only and full-pipeline throughput.
    Bench(cli::bench::Args),
    /// Time the multi-level ROIAlign on inputs from engines/tools/compare.py (prints JSON).
    #[command(hide = true)]
    BenchRoiAlign(cli::bench::RoiArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("maskstream=info,ort=warn")),
        )
        .with_writer(std::io::stderr)
        // colours for a terminal only: a log file or a CI log gets plain text
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Detect(a) => cli::detect::run(a),
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Run(a) => cli::run::run(a),
        Command::Batch(a) => cli::batch::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::BenchRoiAlign(a) => cli::bench::run_roi_align(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
