//! nocturne-engine: the engine.
pub mod cli;

/// Runs the engine until it is told to stop.
pub fn serve(_args: cli::ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("the engine is not built yet")
}
