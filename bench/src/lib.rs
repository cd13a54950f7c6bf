//! nocturne-bench: benchmarks.
pub mod hist;
pub mod pin;
pub mod report;
use clap::Subcommand;

/// `nocturne bench …`
#[derive(Subcommand, Debug)]
pub enum BenchCommand {}

/// Runs a benchmark subcommand.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {}
}
