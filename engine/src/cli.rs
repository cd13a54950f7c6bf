//! Command-line arguments of `nocturne serve` and `nocturne config`.
use clap::{Args, Subcommand};

/// Arguments of `nocturne serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {}

/// `nocturne config …`
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {}

/// Runs a `nocturne config` subcommand.
pub fn config_command(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {}
}
