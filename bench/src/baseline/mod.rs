//! The baselines `nocturne bench compare` measures nocturne against: the
//! foo→bar chain built the way a Rust team would build it without a FaaS
//! runtime, as two plain RPC server processes on tokio.
//!
//! ```text
//!  client ──HTTP/1.1 POST /function/foo──▶ [foo process] ──inner hop──▶ [bar process]
//!                                            rpc-hyper: HTTP/1.1, pooled keep-alive hyper client
//!                                            rpc-grpc:  gRPC (tonic, HTTP/2, one multiplexed channel)
//! ```
//!
//! Both answer exactly what nocturne's built-ins answer: bar
//! `From function Bar: X`, foo `From function Foo: <bar's answer>`, so the
//! same load generator drives all three systems with the same bytes.
//!
//! Each server is a hidden `nocturne` subcommand started as its own process
//! (`nocturne bench rpc-hyper --role foo|bar …`, `bench rpc-grpc …`), built
//! fairly: release build, multi-threaded tokio runtime with `--threads`
//! worker threads pinned round-robin to `--cores`, `TCP_NODELAY` on every
//! socket, keep-alive connections reused across requests. A server prints
//! `nocturne: listening on http://ADDR …` once it accepts connections — for
//! foo, only after bar has answered — and serves until it is killed.
//!
//! Layers: [`front`] (the HTTP/1.1 side every server shows the client, and
//! bar's whole server in `rpc-hyper`), [`hyper_hop`] (foo's pooled hyper
//! client to bar), [`grpc`] (the hand-written prost messages, tonic service
//! and client of `rpc-grpc`'s inner hop; no protoc), [`runtime`] (the
//! pinned tokio runtime and the listener).

pub mod front;
pub mod grpc;
pub mod hyper_hop;
pub mod runtime;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::pin::format_core_list;

pub use front::{serve_http, Downstream, Front};
pub use grpc::{BarClient, BarServer, CallReply, CallRequest};
pub use hyper_hop::HyperBar;
pub use runtime::{bind_listener, build_runtime, ServerCores};

/// What bar prepends to its input (as nocturne's built-in `bar`).
pub const BAR_PREFIX: &[u8] = b"From function Bar: ";
/// What foo prepends to bar's answer (as nocturne's built-in `foo`).
pub const FOO_PREFIX: &[u8] = b"From function Foo: ";
/// Largest request body a server accepts (413 above it), and the largest
/// answer foo accepts from bar.
pub const MAX_BODY: usize = 1 << 20;

/// Why a call to bar failed.
#[derive(Debug, thiserror::Error)]
pub enum BarCallError {
    /// bar answered with a status other than 200.
    #[error("bar answered HTTP {0}")]
    Status(u16),
    /// The request could not be sent or no answer came (connection refused,
    /// reset, closed).
    #[error("bar: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    /// bar's answer body could not be read (or is over [`MAX_BODY`]).
    #[error("reading bar's answer: {0}")]
    Body(String),
    /// The gRPC call failed.
    #[error("bar (gRPC): {0}")]
    Grpc(tonic::Status),
    /// bar did not answer within the start-up wait.
    #[error("bar at {addr} did not answer within {waited:?}: {last}")]
    NotReady {
        /// Where bar should be.
        addr: SocketAddr,
        /// How long foo waited.
        waited: Duration,
        /// The last failure.
        last: String,
    },
}

/// Calls `attempt` every 20 ms until it succeeds or `wait` has passed since
/// the first call; then the last failure (its text) as
/// [`BarCallError::NotReady`]. How foo waits for bar to start, over either
/// inner hop.
async fn retry_until_ready<T, F, Fut>(
    addr: SocketAddr,
    wait: Duration,
    mut attempt: F,
) -> Result<T, BarCallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + wait;
    loop {
        let last = match attempt().await {
            Ok(ready) => return Ok(ready),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(BarCallError::NotReady {
                addr,
                waited: wait,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which function of the chain a server process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Serves `POST /function/foo`, calls bar with its input.
    Foo,
    /// Serves `POST /function/bar` (or the gRPC `Bar/Call`).
    Bar,
}

impl Role {
    /// `foo` or `bar`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Foo => "foo",
            Role::Bar => "bar",
        }
    }
}

/// `nocturne bench rpc-hyper` and `nocturne bench rpc-grpc` options.
#[derive(clap::Args, Debug, Clone)]
pub struct RpcServerArgs {
    /// Which function of the chain this process serves.
    #[arg(long, value_enum, value_name = "ROLE")]
    pub role: Role,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Where bar listens (required for --role foo).
    #[arg(long, required_if_eq("role", "foo"), value_name = "ADDR:PORT")]
    pub bar_addr: Option<SocketAddr>,
    /// tokio worker threads [default: one per --cores entry, or per allowed core]
    /// [range: 1..=1024].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Cores the runtime's threads are pinned to, round-robin, e.g. 0,1 [default: not pinned].
    #[arg(long, value_name = "CORES")]
    pub cores: Option<String>,
    /// How long foo waits at start-up for bar to answer, e.g. 10s or 500ms.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub bar_wait: String,
}

/// The accepted range of the servers' numeric option (the help states it
/// in the same words).
pub mod ranges {
    use crate::compare::ranges::SERVER_THREADS;
    use crate::range::IntRange;

    /// `--threads`: `bench compare`'s `--server-threads`, which it is
    /// given.
    pub const THREADS: IntRange = IntRange::new("threads", SERVER_THREADS.min, SERVER_THREADS.max);
    /// Every integer range, for the help test.
    pub const INTS: [IntRange; 1] = [THREADS];
}

/// The inner hop's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// HTTP/1.1 with hyper.
    Hyper,
    /// gRPC with tonic.
    Grpc,
}

impl Hop {
    /// The subcommand (and system) name: `rpc-hyper` or `rpc-grpc`.
    pub fn system_name(self) -> &'static str {
        match self {
            Hop::Hyper => "rpc-hyper",
            Hop::Grpc => "rpc-grpc",
        }
    }
}

/// `nocturne bench rpc-hyper`: one process of the hyper chain.
pub fn run_rpc_hyper(args: &RpcServerArgs) -> anyhow::Result<()> {
    run_server(Hop::Hyper, args)
}

/// `nocturne bench rpc-grpc`: one process of the gRPC chain.
pub fn run_rpc_grpc(args: &RpcServerArgs) -> anyhow::Result<()> {
    run_server(Hop::Grpc, args)
}

fn run_server(hop: Hop, args: &RpcServerArgs) -> anyhow::Result<()> {
    let cores = ServerCores::from_args(args.threads, args.cores.as_deref())?;
    let runtime = build_runtime(&cores).context("cannot build the tokio runtime")?;
    let system = hop.system_name();
    let role = args.role;
    let listen = args.listen;
    let bar_addr = args.bar_addr;
    let bar_wait = crate::load::spec::parse_duration(&args.bar_wait).context("--bar-wait")?;
    let describe = format!(
        "({system} {}, {} thread{}{})",
        role.name(),
        cores.threads,
        if cores.threads == 1 { "" } else { "s" },
        if cores.cores.is_empty() {
            String::new()
        } else {
            format!(" on cores {}", format_core_list(&cores.cores))
        }
    );
    runtime.block_on(async move {
        // Serving runs on the runtime's workers, not on this (main) thread.
        let task = tokio::spawn(async move {
            let listener = bind_listener(listen)?;
            let addr = listener.local_addr()?;
            match (hop, role) {
                (Hop::Grpc, Role::Bar) => {
                    announce(addr, &describe);
                    grpc::serve_bar(listener).await
                }
                (_, Role::Bar) => {
                    announce(addr, &describe);
                    serve_http(listener, Arc::new(Front::bar())).await
                }
                (_, Role::Foo) => {
                    let bar = bar_addr.context("--role foo needs --bar-addr")?;
                    let downstream = match hop {
                        Hop::Hyper => {
                            Downstream::Hyper(Box::new(HyperBar::connect(bar, bar_wait).await?))
                        }
                        Hop::Grpc => Downstream::Grpc(BarClient::connect(bar, bar_wait).await?),
                    };
                    announce(addr, &describe);
                    serve_http(listener, Arc::new(Front::foo(downstream))).await
                }
            }
        });
        task.await.context("the server task panicked")?
    })
}

/// The line `ServerProcess` waits for.
fn announce(addr: SocketAddr, describe: &str) {
    println!("nocturne: listening on http://{addr} {describe}");
}

#[cfg(test)]
mod tests {
    use super::runtime::{CoresError, ServerCores};
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RpcServerArgs,
    }

    #[test]
    fn every_range_is_stated_in_help_and_is_the_one_checked() {
        crate::range::check_ranges(
            &<Cli as clap::CommandFactory>::command(),
            &ranges::INTS,
            &[],
            |flag, v| {
                let arg = format!("--{flag}={v}");
                let cli = Cli::try_parse_from(["rpc-hyper", "--role=bar", &arg]).unwrap();
                // What `run_server` checks first.
                match ServerCores::from_args(cli.args.threads, cli.args.cores.as_deref()) {
                    Err(CoresError::Threads(e)) => Err(e.to_string()),
                    _ => Ok(()),
                }
            },
        );
    }
}
