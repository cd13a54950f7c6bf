//! `misbehave`: a nocturne worker that breaks the engine–worker protocol on
//! purpose, so the engine's fault tests (`engine/tests/fault_*.rs`) can show
//! that a hostile or buggy worker costs only its own calls: the engine answers
//! them 502, logs a protocol violation, kills and replaces the worker, and
//! never crashes or reads outside the shared region.
//!
//! It does the normal handshake (`nocturne_functions::control::connect_from_env`)
//! but serves calls with its own loop instead of the SDK runtime, because it
//! needs the raw response ring ([`raw`]). Per call it does what the call's
//! `?do=NAME` says, else what `MISBEHAVE_DO` says, else answers normally
//! (`ok from pid N`); the names are in [`abuse::MODES`]. After breaking the
//! protocol it sends nothing more and waits to be killed (bounded: it exits
//! by itself after [`AWAIT_KILL`], saying so on stderr).
//!
//! `MISBEHAVE_EXIT_AFTER_MS=N` makes it exit with code 7 N ms after its
//! handshake, without serving anything: a worker that keeps crashing.
//! `MISBEHAVE_START_DELAY_MS=N` makes it wait N ms before its handshake: a
//! worker that is slow to start.
//!
//! | env / query | effect |
//! |---|---|
//! | `?do=NAME` | this call only |
//! | `MISBEHAVE_DO=NAME` | every call without `?do=` |
//! | `MISBEHAVE_EXIT_AFTER_MS=N` | exit(7) N ms after the handshake |
//! | `MISBEHAVE_START_DELAY_MS=N` | sleep N ms before the handshake |

mod abuse;
mod raw;

use std::process::ExitCode;
use std::time::Duration;

use nocturne_functions::control;
use nocturne_functions::protocol;
use nocturne_ipc::message::Kind;

use abuse::{say, After, Mode, Responder};
use raw::RawChannel;

/// How long a worker that broke the protocol waits for the engine to kill it
/// before it gives up and exits by itself.
const AWAIT_KILL: Duration = Duration::from_secs(60);

/// Exit code of `MISBEHAVE_EXIT_AFTER_MS`.
const CRASH_CODE: u8 = 7;

fn main() -> ExitCode {
    let default_mode = match std::env::var("MISBEHAVE_DO") {
        Ok(name) => match Mode::parse(&name) {
            Some(mode) => mode,
            None => {
                say(&format!("unknown MISBEHAVE_DO={name:?}"));
                return ExitCode::from(2);
            }
        },
        Err(_) => Mode::Normal,
    };
    let ms_env = |key: &str| std::env::var(key).ok().and_then(|v| v.parse::<u64>().ok());
    let exit_after = ms_env("MISBEHAVE_EXIT_AFTER_MS");
    if let Some(ms) = ms_env("MISBEHAVE_START_DELAY_MS") {
        std::thread::sleep(Duration::from_millis(ms));
    }

    let boot = match control::connect_from_env() {
        Ok(boot) => boot,
        Err(e) => {
            say(&format!("handshake with the engine failed: {e}"));
            return ExitCode::from(1);
        }
    };
    // The engine ends a worker by closing the control socket.
    control::spawn_eof_watchdog(&boot.control);

    if let Some(ms) = exit_after {
        std::thread::sleep(Duration::from_millis(ms));
        say(&format!(
            "exiting with code {CRASH_CODE} as MISBEHAVE_EXIT_AFTER_MS says"
        ));
        return ExitCode::from(CRASH_CODE);
    }

    let memfd = match raw::find_own_region() {
        Ok(region) => region,
        Err(e) => {
            say(&format!("cannot find my channel region: {e}"));
            return ExitCode::from(1);
        }
    };
    let raw = match RawChannel::new(&memfd) {
        Ok(raw) => raw,
        Err(e) => {
            say(&format!("my channel region makes no sense: {e}"));
            return ExitCode::from(1);
        }
    };
    let (sender, mut receiver) = boot.end.split();
    let mut responder = Responder {
        sender,
        raw,
        memfd: Some(memfd.fd()),
        region_len: nocturne_ipc::region::Region::len(&memfd),
        lying_about_release: false,
    };

    loop {
        receiver.wait(&boot.wait, None);
        let (call, mode) = match receiver.try_recv() {
            Ok(None) => continue,
            Err(e) => {
                say(&format!("the engine broke the protocol: {e}"));
                return ExitCode::from(1);
            }
            Ok(Some(msg)) => {
                let header = *msg.header();
                if header.kind != Kind::Invoke {
                    continue; // not ours to answer
                }
                let query = protocol::split_query(&header, msg.payload())
                    .ok()
                    .and_then(|(q, _)| q)
                    .unwrap_or("");
                let asked = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("do="))
                    .map(|name| Mode::parse(name).ok_or_else(|| name.to_string()));
                (header, asked)
            }
        };
        responder.after_receive();
        let t0_ns = protocol::monotonic_ns();
        let mode = match mode {
            None => default_mode,
            Some(Ok(mode)) => mode,
            Some(Err(name)) => {
                say(&format!("unknown ?do={name}; answering normally"));
                Mode::Normal
            }
        };
        if mode != Mode::Normal {
            say(&format!("call {:#x}: doing {}", call.call_id, mode.name()));
        }
        if responder.act(mode, &call, t0_ns) == After::AwaitDisconnect {
            std::thread::sleep(AWAIT_KILL);
            say(&format!(
                "the engine did not disconnect me within {AWAIT_KILL:?} of the {} violation",
                mode.name()
            ));
            return ExitCode::from(3);
        }
    }
}
