//! Built-in example functions, served by `nocturne worker NAME`.
//!
//! They are what the quick start, the tests and the benchmarks run:
//!
//! | name     | does |
//! |----------|------|
//! | `echo`   | returns its input |
//! | `bar`    | returns `From function Bar: <input>` |
//! | `foo`    | calls `bar` with its input, returns `From function Foo: <bar's output>` (Nightcore's hello-world chain) |
//! | `spin`   | busy-loops for `?us=N` or `{"us":N}` µs (a CPU-bound service time) |
//! | `sleep`  | sleeps for `?us=N` or `{"us":N}` µs (an I/O-bound service time) |
//! | `nop`    | returns nothing (its process id when the input is `pid`): the callee of internal-call benchmarks |
//! | `whoami` | returns its process id |
//! | `ping`   | calls `nop` `?n=N` times (default 1000) and returns the round trips, measured inside the caller, with both process ids, as JSON |
//! | `fanout` | calls `echo` `?n=N` times concurrently (default 4) and returns the outputs joined with `,` |
//! | `relay`  | calls the function named by its `RELAY_TO` environment variable (set per function in the config) with its input; two relays pointing at each other make a call cycle |
//! | `crash`  | aborts its worker process (`?how=abort|exit|panic`): for failure tests and demos |

use std::time::{Duration, Instant};

use crate::ctx::Ctx;
use crate::handler::{Error, Functions};

/// The names of every built-in function.
pub const NAMES: &[&str] = &[
    "echo", "bar", "foo", "spin", "sleep", "nop", "whoami", "ping", "fanout", "relay", "crash",
];

/// Error of a worker process.
pub use crate::serve::ServeError as WorkerError;

/// Runs the built-in function `name` as a worker process. Started by an
/// engine, a name that is not a built-in refuses the handshake; started by
/// hand, it is reported at once.
pub fn worker_main(name: &str) -> Result<(), WorkerError> {
    if !NAMES.contains(&name) && std::env::var_os(crate::control::CONTROL_FD_ENV).is_none() {
        return Err(WorkerError::UnknownFunction {
            name: name.to_string(),
            available: NAMES.iter().map(|n| n.to_string()).collect(),
        });
    }
    crate::serve::serve_as(all(), Some(name))
}

/// The table of all built-in functions.
pub fn all() -> Functions {
    Functions::new()
        .handler("echo", |_, input| Ok(input.to_vec()))
        .handler("bar", bar)
        .handler("foo", foo)
        .handler("spin", spin)
        .handler("sleep", sleep)
        .handler("nop", |_, input| {
            Ok(if input == b"pid" {
                std::process::id().to_string().into_bytes()
            } else {
                Vec::new()
            })
        })
        .handler("whoami", |_, _| {
            Ok(std::process::id().to_string().into_bytes())
        })
        .handler("ping", ping)
        .handler("fanout", fanout)
        .handler("relay", relay)
        .handler("crash", crash)
}

fn relay(ctx: &mut Ctx<'_>, input: &[u8]) -> Result<Vec<u8>, Error> {
    let to = std::env::var("RELAY_TO")
        .map_err(|_| Error::new("relay needs RELAY_TO in its function's env"))?;
    let out = ctx.invoke(&to, input)?;
    Ok([
        format!("{} via {to}: ", ctx.function_name()).as_bytes(),
        &out,
    ]
    .concat())
}

fn crash(ctx: &mut Ctx<'_>, _input: &[u8]) -> Result<Vec<u8>, Error> {
    match ctx.query_param("how").unwrap_or("abort") {
        "exit" => std::process::exit(3),
        "panic" => panic!("crash was asked to panic"),
        _ => std::process::abort(),
    }
}

fn bar(_ctx: &mut Ctx<'_>, input: &[u8]) -> Result<Vec<u8>, Error> {
    Ok([b"From function Bar: ".as_slice(), input].concat())
}

fn foo(ctx: &mut Ctx<'_>, input: &[u8]) -> Result<Vec<u8>, Error> {
    let from_bar = ctx.invoke("bar", input)?;
    Ok([b"From function Foo: ".as_slice(), &from_bar].concat())
}

fn spin(ctx: &mut Ctx<'_>, input: &[u8]) -> Result<Vec<u8>, Error> {
    let us = service_time_us(ctx, input)?;
    let until = Instant::now() + Duration::from_micros(us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    Ok(format!("spun {us} us").into_bytes())
}

fn sleep(ctx: &mut Ctx<'_>, input: &[u8]) -> Result<Vec<u8>, Error> {
    let us = service_time_us(ctx, input)?;
    std::thread::sleep(Duration::from_micros(us));
    Ok(format!("slept {us} us").into_bytes())
}

/// Service time for `spin`/`sleep`: `?us=N`, else `{"us":N}` in the body, else 0.
fn service_time_us(ctx: &Ctx<'_>, input: &[u8]) -> Result<u64, Error> {
    if let Some(v) = ctx.query_param("us") {
        return v
            .parse()
            .map_err(|_| Error::with_status(400, format!("?us= wants an integer, got {v:?}")));
    }
    if input.iter().all(u8::is_ascii_whitespace) {
        return Ok(0);
    }
    json_u64_field(input, "us")
        .ok_or_else(|| Error::with_status(400, "expected ?us=N or a body like {\"us\":N}"))
}

/// Reads `"key": N` from a flat JSON object without a JSON library; enough for
/// the one-field bodies the built-ins take.
fn json_u64_field(input: &[u8], key: &str) -> Option<u64> {
    let text = std::str::from_utf8(input).ok()?.trim();
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    inner.split(',').find_map(|pair| {
        let (k, v) = pair.split_once(':')?;
        (k.trim().trim_matches('"') == key).then(|| v.trim().parse().ok())?
    })
}

fn ping(ctx: &mut Ctx<'_>, _input: &[u8]) -> Result<Vec<u8>, Error> {
    let n: usize = match ctx.query_param("n") {
        Some(v) => v
            .parse()
            .map_err(|_| Error::with_status(400, format!("?n= wants an integer, got {v:?}")))?,
        None => 1000,
    };
    // The worker that answers the timed calls: `nop` itself (one call made
    // in a row keeps hitting the same idle worker, the top of its LIFO).
    let callee_pid = String::from_utf8_lossy(&ctx.invoke("nop", b"pid")?).into_owned();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        ctx.invoke("nop", b"")?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let mut out = format!(
        "{{\"caller_pid\":{},\"callee_pid\":{},\"samples_ns\":[",
        std::process::id(),
        callee_pid
    );
    for (i, s) in samples.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&s.to_string());
    }
    out.push_str("]}");
    ctx.set_content_type("application/json");
    Ok(out.into_bytes())
}

fn fanout(ctx: &mut Ctx<'_>, input: &[u8]) -> Result<Vec<u8>, Error> {
    let n: usize = ctx
        .query_param("n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let calls = (0..n)
        .map(|i| {
            ctx.invoke_async(
                "echo",
                format!("{}{i}", String::from_utf8_lossy(input)).as_bytes(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut outputs = Vec::with_capacity(n);
    // Wait in reverse order: completions arrive in any order and are matched by id.
    for call in calls.into_iter().rev() {
        outputs.push(String::from_utf8_lossy(&ctx.wait(call)?).into_owned());
    }
    outputs.reverse();
    Ok(outputs.join(",").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_field_parser() {
        assert_eq!(json_u64_field(br#"{"us":250}"#, "us"), Some(250));
        assert_eq!(json_u64_field(br#" { "a": 1, "us" : 7 } "#, "us"), Some(7));
        assert_eq!(json_u64_field(br#"{"us":"x"}"#, "us"), None);
        assert_eq!(json_u64_field(b"us=3", "us"), None);
        assert_eq!(json_u64_field(br#"{"other":3}"#, "us"), None);
    }

    #[test]
    fn every_name_has_a_handler() {
        let table = all();
        let mut names: Vec<_> = table.names().collect();
        names.sort_unstable();
        let mut expected = NAMES.to_vec();
        expected.sort_unstable();
        assert_eq!(names, expected);
    }
}
