//! `nocturne`: the single entry point of the runtime.
//!
//! * `serve` — run the engine (see `nocturne_engine`).
//! * `worker NAME` — run a built-in function as a worker process; the engine
//!   re-executes this binary with it, users never need to.
//! * `config check FILE` — validate a configuration file.
//! * `bench …` — the benchmarks of `nocturne_bench`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nocturne",
    version,
    about = "A function-as-a-service runtime for latency-sensitive microservices",
    long_about = "nocturne runs functions as long-lived worker processes behind an engine of \
                  pinned per-core event loops; functions call each other through shared-memory \
                  rings, never through TCP.\n\nQuick start: `nocturne serve` serves the built-in \
                  example functions on 127.0.0.1:8080, e.g. `curl -d hi 127.0.0.1:8080/function/foo`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: serve functions over HTTP.
    Serve(Box<nocturne_engine::cli::ServeArgs>),
    /// Run a built-in function as a worker process (started by the engine).
    #[command(hide = true)]
    Worker {
        /// Name of the built-in function.
        name: String,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(nocturne_engine::cli::ConfigCommand),
    /// Benchmarks (IPC micro-benchmarks, engine, load generator, comparison with RPC baselines).
    #[command(subcommand)]
    Bench(nocturne_bench::BenchCommand),
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        // Usage errors get the prefix of every other error (`nocturne:
        // error: …`); help and version output stays as clap prints it.
        if e.use_stderr() {
            eprint!("nocturne: {}", e.render());
            std::process::exit(e.exit_code());
        }
        e.exit()
    });
    if let Err(e) = run(cli) {
        // The chain of causes on one line, each said once, without the
        // backtrace anyhow would add under RUST_BACKTRACE: users get the message.
        eprintln!(
            "nocturne: error: {}",
            nocturne_engine::error_report::one_line(&e)
        );
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => nocturne_engine::serve(*args),
        Command::Worker { name } => Ok(nocturne_functions::builtin::worker_main(&name)?),
        Command::Config(cmd) => nocturne_engine::cli::config_command(cmd),
        Command::Bench(cmd) => nocturne_bench::run(cmd),
    }
}
