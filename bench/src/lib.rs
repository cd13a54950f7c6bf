//! nocturne-bench: the benchmarks, as subcommands of the `nocturne` binary.
//!
//! ```text
//! nocturne bench ipc ──▶ ipc::run_ipc ──spawns──▶ nocturne bench ipc-peer (core B)
//!        │ (driver, core A)      │ control socket (stdin) + SCM_RIGHTS memfds/fds
//!        ▼                       ▼
//!   report::Report ◀── hist::LatencyHistogram per case ◀── timed round trips
//!        │
//!        └──▶ human table (stdout) + docs/design.md §7 JSON (--json)
//! ```
//!
//! Layers, reusable by the engine benchmark and the load generator:
//!
//! * [`pin`] — core lists (`0,1`, `2-5`), checking them against the process's
//!   affinity mask, pinning the calling thread.
//! * [`hist`] — [`hist::LatencyHistogram`]: nanoseconds into an HdrHistogram
//!   (3 significant figures), percentile summaries, `.hgrm` spectra.
//! * [`report`] — the JSON schema every bench writes ([`report::Report`],
//!   [`report::Machine`], [`report::CaseResult`]) and the human table.
//! * [`ipc`] — `nocturne bench ipc`: round-trip latency of nocturne's
//!   channel against plain shared memory, futex, eventfd, pipes, unix
//!   sockets and TCP loopback, between two pinned processes.
//! * [`load`] — `nocturne bench load URL…`: an open-loop HTTP load generator
//!   (fixed or Poisson arrivals, latency from the intended send time,
//!   HdrHistogram, sweeps with SLOs, mixes, `.hgrm`/JSON/SVG output).
//! * [`engine`] — `nocturne bench engine`: internal, external and chained
//!   call latency and throughput of a real `nocturne serve` (started as a
//!   separate process, as a user would), against a busy-polling TCP floor.
//! * [`baseline`] — the foo→bar chain as plain RPC servers (tokio + hyper
//!   HTTP/1.1, and a tonic gRPC inner hop): hidden `bench rpc-hyper` /
//!   `bench rpc-grpc` processes.
//! * [`compare`] — `nocturne bench compare`: nocturne against those
//!   baselines at the same rates (fractions of rpc-hyper's saturation rate).
//!
//! The `nocturne` binary routes `nocturne bench <subcommand>` to
//! [`BenchCommand`] and [`run`].

pub mod baseline;
#[cfg(test)]
mod build_info;
pub mod chart;
pub mod compare;
pub mod engine;
pub mod hist;
pub mod ipc;
pub mod load;
pub mod pin;
pub mod range;
pub mod report;

use clap::Subcommand;

/// `nocturne bench …`
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// IPC round-trip latency: nocturne's channel vs. shared memory, futex,
    /// eventfd, pipe, unix socket and TCP loopback, between two pinned
    /// processes.
    Ipc(ipc::IpcArgs),
    /// The second process of `bench ipc` (started by it, not by users).
    #[command(hide = true)]
    IpcPeer(ipc::IpcPeerArgs),
    /// Engine latencies and throughput: internal calls, external calls and
    /// the foo→bar chain against a bare busy-polling TCP server, with
    /// `nocturne serve` run as a separate process.
    Engine(Box<engine::EngineArgs>),
    /// The bare server of `bench engine`'s floor case (started by it, not by users).
    #[command(hide = true)]
    EngineFloorServer(engine::FloorServerArgs),
    /// Open-loop HTTP load: latency from each request's intended send time
    /// (coordinated omission corrected), rate sweeps against an SLO.
    Load(Box<load::LoadArgs>),
    /// A trivial HTTP echo server to calibrate `bench load` against.
    #[command(hide = true)]
    LoadEchoServer(load::EchoServerArgs),
    /// The foo→bar chain on nocturne vs. two tokio + hyper RPC servers and
    /// a tonic gRPC inner hop, loaded at the same rates (0.25, 0.5, 0.75 ×
    /// rpc-hyper's saturation rate).
    Compare(Box<compare::CompareArgs>),
    /// One process of `bench compare`'s hyper chain (started by it, not by users).
    #[command(hide = true)]
    RpcHyper(baseline::RpcServerArgs),
    /// One process of `bench compare`'s gRPC chain (started by it, not by users).
    #[command(hide = true)]
    RpcGrpc(baseline::RpcServerArgs),
}

/// Runs a benchmark subcommand.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ipc(args) => run_ipc_command(&args),
        BenchCommand::IpcPeer(args) => ipc::run_peer(&args),
        BenchCommand::Engine(args) => engine::run_command(&args),
        BenchCommand::EngineFloorServer(args) => engine::run_floor_server(&args),
        BenchCommand::Load(args) => load::run_command(&args),
        BenchCommand::LoadEchoServer(args) => load::run_echo_server(&args),
        BenchCommand::Compare(args) => compare::run_command(&args),
        BenchCommand::RpcHyper(args) => baseline::run_rpc_hyper(&args),
        BenchCommand::RpcGrpc(args) => baseline::run_rpc_grpc(&args),
    }
}

/// `nocturne bench ipc`: runs, prints the table and the targets, writes the
/// JSON, and fails when any case counted errors.
fn run_ipc_command(args: &ipc::IpcArgs) -> anyhow::Result<()> {
    let settings = ipc::IpcSettings::from_args(args)?;
    if let Some(path) = &args.json {
        report::prepare_output(path)?;
    }
    let report = ipc::run_ipc(&settings)?;
    print!("{}", report.table());
    for check in ipc::check_targets(&report) {
        println!("target: {check}");
    }
    report.write_json_if_asked(args.json.as_deref())?;
    report.fail_on_errors()
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        bench: super::BenchCommand,
    }

    /// The placeholders of bench flags, the words `serve --help` uses where
    /// it has them.
    const PLACEHOLDERS: &[&str] = &[
        "PATH",
        "DIR",
        "CORE",
        "CORES",
        "N",
        "US",
        "DURATION",
        "BYTES",
        "SIZES",
        "RATE",
        "MODE",
        "MODES",
        "NETS",
        "SYSTEMS",
        "ROLE",
        "KIND",
        "ARG",
        "URL",
        "TEXT",
        "METHOD",
        "NAME:VALUE",
        "OBJECTIVES",
        "FRACTION",
        "FACTOR",
        "ADDR:PORT",
        "PID",
    ];

    /// Every flag's placeholder says what it takes (`<PATH>`, `<CORES>`,
    /// `<DURATION>`, as `serve --help` does), in the same words across the
    /// benches, never clap's upper-cased field name (`<CLIENT_CORE>`,
    /// `<JSON>`).
    #[test]
    fn every_value_has_a_placeholder_of_the_common_words() {
        let mut odd = Vec::new();
        for bench in Cli::command().get_subcommands() {
            for arg in bench.get_arguments() {
                let names = arg.get_value_names().unwrap_or_default();
                if arg.get_action().takes_values()
                    && !names.iter().all(|n| PLACEHOLDERS.contains(&n.as_str()))
                {
                    odd.push(format!(
                        "bench {} --{} {names:?}",
                        bench.get_name(),
                        arg.get_id()
                    ));
                }
            }
        }
        assert!(odd.is_empty(), "placeholders not in PLACEHOLDERS: {odd:?}");
    }
}
