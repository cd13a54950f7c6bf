//! The three systems `bench compare` loads, each the foo→bar chain behind
//! `POST /function/foo`, each made of separate processes behind
//! [`ServerProcess`] guards (killed on every exit path):
//!
//! | system | processes |
//! |---|---|
//! | `rpc-hyper` | `nocturne bench rpc-hyper --role bar`, then `--role foo --bar-addr …` |
//! | `rpc-grpc` | `nocturne bench rpc-grpc --role bar` (gRPC), then `--role foo --bar-addr …` |
//! | `nocturne` | `nocturne serve` with a config of the built-ins `foo` and `bar` |
//!
//! A system is ready when its processes have printed their `listening on`
//! line, the HTTP ones answer `GET /healthz`, and foo answers a request with
//! exactly the chain's body. Systems not being measured are frozen with
//! `SIGSTOP`, so nothing idle (a spinning io loop) takes a core from the one
//! under load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::engine::http::{build_request, HttpClient};
use crate::engine::server::{write_temp_file, Launch, ServerProcess, StartError};
use crate::pin::format_core_list;

/// How long a frozen process may take to stop.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The chain's answer before the input.
pub const CHAIN_PREFIX: &[u8] = b"From function Foo: From function Bar: ";

/// One of the systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    /// Two tokio + hyper servers, HTTP/1.1 inner hop.
    RpcHyper,
    /// tokio + hyper outside, tonic gRPC inner hop.
    RpcGrpc,
    /// nocturne functions.
    Nocturne,
}

impl System {
    /// Every system, in report order.
    pub const ALL: [System; 3] = [System::RpcHyper, System::RpcGrpc, System::Nocturne];

    /// The name in case names and tables.
    pub fn name(self) -> &'static str {
        match self {
            System::RpcHyper => "rpc-hyper",
            System::RpcGrpc => "rpc-grpc",
            System::Nocturne => "nocturne",
        }
    }

    /// The system called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name.trim())
    }
}

/// What every system is started with.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The `nocturne` binary.
    pub exe: PathBuf,
    /// nocturne's io cores.
    pub io_cores: Vec<usize>,
    /// nocturne's worker cores.
    pub worker_cores: Vec<usize>,
    /// The baselines' cores: nocturne's io and worker cores together.
    pub server_cores: Vec<usize>,
    /// tokio worker threads of each baseline process.
    pub server_threads: usize,
    /// nocturne's `--poll`.
    pub nocturne_poll: String,
    /// Extra `nocturne serve` arguments.
    pub engine_args: Vec<String>,
    /// Start-up limit of each process.
    pub timeout: Duration,
}

/// A started system: its processes (bar first) and foo's address.
pub struct RunningSystem {
    system: System,
    processes: Vec<ServerProcess>,
}

impl RunningSystem {
    /// Starts every process of `system`, checks the chain answers
    /// correctly, and leaves it running.
    pub fn start(system: System, placement: &Placement) -> anyhow::Result<Self> {
        let processes = match system {
            System::Nocturne => vec![ServerProcess::start(nocturne_launch(placement)?)?],
            System::RpcHyper | System::RpcGrpc => {
                let callee = ServerProcess::start(rpc_launch(system, placement, None))?;
                let caller =
                    ServerProcess::start(rpc_launch(system, placement, Some(callee.addr())))?;
                vec![callee, caller]
            }
        };
        Ok(Self { system, processes })
    }

    /// Which system.
    pub fn system(&self) -> System {
        self.system
    }

    /// Where `POST /function/foo` is served.
    pub fn addr(&self) -> SocketAddr {
        self.front().addr()
    }

    fn front(&self) -> &ServerProcess {
        self.processes.last().expect("a system has a process")
    }

    /// Process ids, bar's first.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(ServerProcess::pid).collect()
    }

    /// Resident memory of its processes (and nocturne's workers), MiB.
    pub fn rss_mib(&self) -> f64 {
        self.processes
            .iter()
            .map(|p| {
                p.rss_mib()
                    + p.children()
                        .iter()
                        .map(|c| crate::engine::procfs::rss_mib(c.pid).unwrap_or(0.0))
                        .sum::<f64>()
            })
            .sum()
    }

    /// Sends `payload` through the chain once and checks the answer is
    /// exactly `From function Foo: From function Bar: <payload>`.
    pub fn check_chain(&self, payload: &[u8], timeout: Duration) -> anyhow::Result<()> {
        let addr = self.addr();
        let request = build_request("POST", "/function/foo", &addr.to_string(), payload);
        let expected = [CHAIN_PREFIX, payload].concat();
        let mut client = HttpClient::connect(addr, timeout)
            .with_context(|| format!("{}: connecting to foo", self.system.name()))?;
        let reply = client
            .round_trip(&request)
            .with_context(|| format!("{}: POST /function/foo", self.system.name()))?;
        if reply.status != 200 || reply.body != expected.as_slice() {
            bail!(
                "{}: POST /function/foo answered {} {:?}, expected 200 {:?}",
                self.system.name(),
                reply.status,
                String::from_utf8_lossy(reply.body),
                String::from_utf8_lossy(&expected)
            );
        }
        Ok(())
    }

    /// Freezes every process (foo first).
    pub fn pause(&mut self) -> anyhow::Result<()> {
        for p in self.processes.iter_mut().rev() {
            p.pause(PAUSE_TIMEOUT)?;
        }
        Ok(())
    }

    /// Thaws every process (bar first).
    pub fn resume(&mut self) -> anyhow::Result<()> {
        for p in &mut self.processes {
            p.resume()?;
        }
        Ok(())
    }

    /// `Err` with the log of a process that has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.processes {
            p.check_alive()?;
        }
        Ok(())
    }

    /// The lines its processes logged when they began listening.
    pub fn listening_lines(&self) -> Vec<String> {
        self.processes
            .iter()
            .map(|p| p.listening_line().to_owned())
            .collect()
    }
}

/// nocturne's config: the built-ins foo and bar with the engine's default
/// settings (what a user gets; `--engine-arg=--set=foo.max_workers=N`
/// changes them).
pub fn nocturne_config() -> String {
    let mut text = String::from("# Written by `nocturne bench compare`.\n");
    for name in ["foo", "bar"] {
        text.push_str(&format!(
            "\n[[functions]]\nname = \"{name}\"\nbuiltin = \"{name}\"\n"
        ));
    }
    text
}

fn nocturne_launch(p: &Placement) -> Result<Launch, StartError> {
    let name = "nocturne".to_owned();
    let config = write_temp_file("compare", "toml", &nocturne_config()).map_err(|source| {
        StartError::Spawn {
            name: name.clone(),
            source,
        }
    })?;
    let mut command = Command::new(&p.exe);
    command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--poll", &p.nocturne_poll])
        .args(["--io-cores", &format_core_list(&p.io_cores)])
        .args(["--worker-cores", &format_core_list(&p.worker_cores)])
        .args(&p.engine_args);
    Ok(Launch {
        name,
        command,
        temp_files: vec![config],
        health_path: Some("/healthz"),
        timeout: p.timeout,
        netns: None,
    })
}

/// The command line of one baseline process.
pub fn rpc_command(
    exe: &Path,
    system: System,
    placement: &Placement,
    bar: Option<SocketAddr>,
) -> Command {
    let mut command = Command::new(exe);
    command
        .args(["bench", system.name(), "--role"])
        .arg(if bar.is_some() { "foo" } else { "bar" })
        .args(["--listen", "127.0.0.1:0"])
        .args(["--threads", &placement.server_threads.to_string()])
        .args(["--cores", &format_core_list(&placement.server_cores)]);
    if let Some(bar) = bar {
        command.args(["--bar-addr", &bar.to_string()]);
    }
    command
}

fn rpc_launch(system: System, p: &Placement, bar: Option<SocketAddr>) -> Launch {
    let role = if bar.is_some() { "foo" } else { "bar" };
    Launch {
        name: format!("{} {role}", system.name()),
        command: rpc_command(&p.exe, system, p, bar),
        temp_files: Vec::new(),
        // gRPC bar speaks only HTTP/2: its listening line is the signal,
        // and foo, which is started after it, checks it answers.
        health_path: (system == System::RpcHyper || bar.is_some()).then_some("/healthz"),
        timeout: p.timeout,
        netns: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in System::ALL {
            assert_eq!(System::parse(s.name()), Some(s));
        }
        assert_eq!(System::parse("grpc"), None);
    }

    #[test]
    fn the_nocturne_config_serves_foo_and_bar() {
        let text = nocturne_config();
        let value: toml::Value = toml::from_str(&text).unwrap();
        let functions = value["functions"].as_array().unwrap();
        assert_eq!(functions.len(), 2);
        assert_eq!(functions[0]["builtin"].as_str(), Some("foo"));
        assert_eq!(functions[1]["name"].as_str(), Some("bar"));
        assert!(functions[1].get("max_workers").is_none(), "engine defaults");
    }

    #[test]
    fn baseline_command_lines() {
        let p = Placement {
            exe: "/bin/nocturne".into(),
            io_cores: vec![1],
            worker_cores: vec![0],
            server_cores: vec![0, 1],
            server_threads: 2,
            nocturne_poll: "adaptive".into(),
            engine_args: Vec::new(),
            timeout: Duration::from_secs(1),
        };
        let args = |c: &Command| {
            c.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let bar = rpc_command(&p.exe, System::RpcGrpc, &p, None);
        assert_eq!(
            args(&bar),
            "bench rpc-grpc --role bar --listen 127.0.0.1:0 --threads 2 --cores 0-1"
        );
        let foo = rpc_command(
            &p.exe,
            System::RpcHyper,
            &p,
            Some("127.0.0.1:9".parse().unwrap()),
        );
        assert_eq!(
            args(&foo),
            "bench rpc-hyper --role foo --listen 127.0.0.1:0 --threads 2 --cores 0-1 --bar-addr 127.0.0.1:9"
        );
        assert!(rpc_launch(System::RpcGrpc, &p, None).health_path.is_none());
        assert!(rpc_launch(System::RpcHyper, &p, None).health_path.is_some());
    }
}
