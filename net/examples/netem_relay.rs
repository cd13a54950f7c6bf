//! A netem stand-in for kernels without `sch_netem`: forwards Ethernet
//! frames between a TAP and a packet socket, dropping, delaying,
//! reordering and duplicating them (`net/tests/netns/impair.rs`).
//!
//! Wiring used by `net/tests/smoltcp_netem.rs` (two namespaces, so that no
//! kernel stack bypasses the relay), by hand:
//!
//! ```sh
//! sudo ip netns add ncc; sudo ip netns add ncs
//! sudo ip -n ncc link set lo up; sudo ip -n ncs link set lo up
//! sudo ip -n ncc tuntap add dev nck0 mode tap
//! sudo ip -n ncc addr add 192.0.2.1/24 dev nck0
//! sudo ip -n ncc link set nck0 up
//! sudo ip -n ncs tuntap add dev nct0 mode tap      # no address
//! sudo ip -n ncs link set nct0 up
//! sudo ip netns exec ncs nocturne serve --net smoltcp --tap nct0 --ip 192.0.2.2/24 …
//! sudo cargo run --release -p nocturne-net --example netem_relay -- \
//!     --tap ncc:nck0 --packet ncs:nct0 --loss 0.02 --delay-ms 5 --jitter-ms 2
//! sudo ip netns exec ncc curl http://192.0.2.2:8080/healthz
//! ```
//!
//! `--tap NS:IF` attaches to the TAP `IF` in namespace `NS` (the client
//! side), `--packet NS:IF` opens a packet socket on `IF` in `NS` (the
//! server's TAP); `NS` may be empty for the current namespace. Impairments
//! apply both ways unless `--to-server-only` or `--to-client-only`. Runs
//! until Ctrl-C, then prints its counters.
#![allow(unsafe_code)] // setns(2), sigaction

#[path = "../tests/netns/impair.rs"]
mod impair;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use impair::{Endpoint, Impairment, Relay, RelayConfig};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Release);
}

const USAGE: &str = "usage: netem_relay --tap [NS:]IF --packet [NS:]IF [--loss P] [--dup P] \
[--reorder P] [--reorder-ms MS] [--delay-ms MS] [--jitter-ms MS] [--seed N] \
[--to-server-only | --to-client-only]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netem_relay: {e}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut tap = None;
    let mut packet = None;
    let mut imp = Impairment::NONE;
    let mut seed = 1u64;
    let (mut to_server, mut to_client) = (true, true);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|e| format!("{v}: {e}"));
        let ms = |v: String| num(v).map(|m| Duration::from_secs_f64(m / 1000.0));
        match flag.as_str() {
            "--tap" => tap = Some(value()?),
            "--packet" => packet = Some(value()?),
            "--loss" => imp.loss = num(value()?)?,
            "--dup" => imp.duplicate = num(value()?)?,
            "--reorder" => imp.reorder = num(value()?)?,
            "--reorder-ms" => imp.reorder_by = ms(value()?)?,
            "--delay-ms" => imp.delay = ms(value()?)?,
            "--jitter-ms" => imp.jitter = ms(value()?)?,
            "--seed" => seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--to-server-only" => to_client = false,
            "--to-client-only" => to_server = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if imp.reorder > 0.0 && imp.reorder_by.is_zero() {
        imp.reorder_by = Duration::from_millis(2);
    }
    let tap = tap.ok_or("--tap is required")?;
    let packet = packet.ok_or("--packet is required")?;
    let a = in_namespace(&tap, Endpoint::tap).map_err(|e| format!("TAP {tap}: {e}"))?;
    let b = in_namespace(&packet, Endpoint::packet)
        .map_err(|e| format!("packet socket on {packet}: {e}"))?;
    let none = Impairment::NONE;
    let config = RelayConfig {
        seed,
        a_to_b: if to_server { imp } else { none },
        b_to_a: if to_client { imp } else { none },
    };
    // SAFETY: on_signal only stores to an atomic, which is
    // async-signal-safe; the handler is a valid extern "C" fn.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    eprintln!("netem_relay: {tap} <-> {packet}: {config:?}; Ctrl-C to stop");
    let stats = Relay::run_here(a, b, config, &STOP);
    eprintln!("to server ({tap} -> {packet}): {:?}", stats.a_to_b.counts());
    eprintln!("to client ({packet} -> {tap}): {:?}", stats.b_to_a.counts());
    Ok(())
}

/// Opens an endpoint for `spec` (`NS:IF` or `IF`) on a thread that entered
/// namespace `NS` (the descriptor keeps its namespace afterwards; this
/// thread never changes its own).
fn in_namespace(spec: &str, open: fn(&str) -> io::Result<Endpoint>) -> io::Result<Endpoint> {
    let (ns, name) = match spec.split_once(':') {
        Some((ns, name)) => (ns.to_owned(), name.to_owned()),
        None => (String::new(), spec.to_owned()),
    };
    std::thread::spawn(move || {
        if !ns.is_empty() {
            let file = File::open(format!("/var/run/netns/{ns}"))?;
            // SAFETY: setns on a valid namespace fd; CLONE_NEWNET changes
            // only this (short-lived) thread's network namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        open(&name)
    })
    .join()
    .map_err(|_| io::Error::other("the opening thread panicked"))?
}
