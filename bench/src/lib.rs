//! nocturne-bench: benchmarks.
use clap::Subcommand;

/// `nocturne bench …`
#[derive(Subcommand, Debug)]
pub enum BenchCommand {}

/// Runs a benchmark subcommand.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {}
}
