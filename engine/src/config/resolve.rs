//! Resolution: file values + overrides + built-in defaults → a validated
//! [`Config`], including the core placement rules.
//!
//! Errors name a setting the way the user set it: `--poll` when the value
//! came from the flag (or its `NOCTURNE_POLL` variable), `poll` when it came
//! from the file, and `functions[NAME].key` with the entry's line for
//! function settings.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::cores::CoreSet;
use super::error::{closest, ConfigError, Location};
use super::file::{FileConfig, FileFunction};
use super::overrides::Overrides;
use super::units::{format_duration, format_size};
use super::{
    defaults, limits, Config, ConfigOrigin, FunctionConfig, FunctionSource, NetBackend, PollMode,
    WorkerPoll, BUILTIN_FUNCTIONS, RESERVED_ENV_PREFIX,
};

/// Picks the flag value over the file value, and names the setting after
/// where the winning value came from: `--poll` or `poll`.
fn pick<T>(flag: Option<T>, file: Option<T>, key: &str, flag_name: &str) -> (Option<T>, String) {
    match (flag, file) {
        (Some(v), _) => (Some(v), flag_name.to_owned()),
        (None, v) => (v, key.to_owned()),
    }
}

/// The smoltcp settings: required (and only allowed) with `net = smoltcp`.
fn resolve_smoltcp(
    net: NetBackend,
    net_field: &str,
    listen: std::net::SocketAddr,
    file: &FileConfig,
    ov: &Overrides,
) -> Result<Option<super::SmoltcpConfig>, ConfigError> {
    let (tap, tap_field) = pick(ov.tap.clone(), file.tap.clone(), "tap", "--tap");
    let (raw, raw_field) = pick(ov.raw.clone(), file.raw.clone(), "raw", "--raw");
    let (ip, ip_field) = pick(ov.ip.clone(), file.ip.clone(), "ip", "--ip");
    let (gateway, _) = pick(ov.gateway, file.gateway, "gateway", "--gateway");
    if net != NetBackend::Smoltcp {
        for (given, field) in [
            (tap.is_some(), &tap_field),
            (raw.is_some(), &raw_field),
            (ip.is_some(), &ip_field),
        ] {
            if given {
                return Err(ConfigError::invalid(
                    field.clone(),
                    format!("only applies to the smoltcp backend; set {net_field} to smoltcp"),
                ));
            }
        }
        return Ok(None);
    }
    let device = match (tap, raw) {
        (Some(tap), None) => nocturne_net::DeviceSpec::Tap(tap),
        (None, Some(raw)) => nocturne_net::DeviceSpec::Raw(raw),
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                tap_field,
                "give a TAP device or a raw interface, not both",
            ))
        }
        (None, None) => {
            return Err(ConfigError::invalid(
                net_field.to_owned(),
                "the smoltcp backend needs a device: --tap IFNAME or --raw IFNAME",
            ))
        }
    };
    let Some(ip) = ip else {
        return Err(ConfigError::invalid(
            net_field.to_owned(),
            "the smoltcp backend needs its own address: --ip ADDR/LEN, e.g. 192.0.2.2/24",
        ));
    };
    let address: nocturne_net::Ipv4Cidr =
        ip.parse()
            .map_err(|e: nocturne_net::smoltcp::ParseCidrError| {
                ConfigError::invalid(ip_field, e.to_string())
            })?;
    if listen.port() == 0 {
        return Err(ConfigError::invalid(
            "listen".to_owned(),
            "the smoltcp backend needs a fixed port (every core loop listens on it): not 0",
        ));
    }
    Ok(Some(super::SmoltcpConfig {
        device,
        address,
        gateway,
    }))
}

pub(crate) fn resolve(
    file: FileConfig,
    text: &str,
    origin: ConfigOrigin,
    ov: &Overrides,
    allowed_cores: &[usize],
) -> Result<Config, ConfigError> {
    let allowed = CoreSet::new(allowed_cores.iter().copied()).map_err(|e| ConfigError::Cores {
        msg: format!("unusable allowed core set: {e}"),
    })?;

    let listen = ov
        .listen
        .or(file.listen.map(|l| l.0))
        .unwrap_or(defaults::LISTEN);

    let (net, net_field) = pick(ov.net, file.net, "net", "--net");
    let net = net.unwrap_or(defaults::NET);
    let smoltcp = resolve_smoltcp(net, &net_field, listen, &file, ov)?;

    // Core placement.
    let (io_cores, io_field) = pick(ov.io_cores.clone(), file.io_cores, "io_cores", "--io-cores");
    let io_cores = match io_cores {
        Some(cores) => {
            check_allowed(&cores, &allowed, "io cores", &io_field)?;
            if cores.len() > limits::MAX_IO_CORES {
                return Err(ConfigError::Cores {
                    msg: format!(
                        "{io_field}: {} io cores are more than {} (a call id names its \
                         core loop in 8 bits); one io core serves ≈ 100 k requests/s",
                        cores.len(),
                        limits::MAX_IO_CORES
                    ),
                });
            }
            cores
        }
        // The last allowed core: core 0 tends to take the most interrupts.
        None => {
            CoreSet::new([allowed.last()]).map_err(|e| ConfigError::Cores { msg: e.to_string() })?
        }
    };
    let (worker_cores, worker_field) = pick(
        ov.worker_cores.clone(),
        file.worker_cores,
        "worker_cores",
        "--worker-cores",
    );
    if let Some(cores) = &worker_cores {
        check_allowed(cores, &allowed, "worker cores", &worker_field)?;
    }
    let (poll, poll_field) = pick(ov.poll, file.poll, "poll", "--poll");
    let poll = poll.unwrap_or(defaults::POLL);
    let spin_poll = setting(&poll_field, "spin");
    let worker_cores = match (poll, worker_cores) {
        (PollMode::Spin, Some(cores)) => {
            let shared = cores.intersection(&io_cores);
            if !shared.is_empty() {
                return Err(ConfigError::Cores {
                    msg: format!(
                        "{spin_poll} needs io cores of their own: io cores {} overlap worker cores {} (shared: {}); \
                         give disjoint --io-cores/--worker-cores, or use --poll adaptive",
                        io_cores,
                        cores,
                        CoreSet::format(&shared)
                    ),
                });
            }
            Some(cores)
        }
        (PollMode::Spin, None) => {
            // A spinning io loop owns its core: keep workers off it.
            let rest = allowed.difference(&io_cores);
            if rest.is_empty() {
                return Err(ConfigError::Cores {
                    msg: format!(
                        "{spin_poll} needs io cores of their own: io cores {io_cores} take every allowed core \
                         ({allowed}), leaving none for workers; give fewer --io-cores, or use --poll adaptive"
                    ),
                });
            }
            Some(CoreSet::new(rest).map_err(|e| ConfigError::Cores { msg: e.to_string() })?)
        }
        (_, cores) => cores,
    };

    let (spin_us_given, spin_field) = pick(ov.spin_us, file.spin_us, "spin_us", "--spin-us");
    let (worker_spin_us, worker_spin_field) = pick(
        ov.worker_spin_us,
        file.worker_spin_us,
        "worker_spin_us",
        "--worker-spin-us",
    );

    let (max_connections, field) = pick(
        ov.max_connections,
        file.max_connections,
        "max_connections",
        "--max-connections",
    );
    let max_connections = max_connections.unwrap_or(defaults::MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(ConfigError::invalid(field, "must be at least 1"));
    }

    let (max_header_bytes, field) = pick(
        ov.max_header_bytes,
        file.max_header_bytes.map(|b| b.0),
        "max_header_bytes",
        "--max-header-bytes",
    );
    let max_header_bytes = match max_header_bytes {
        None => defaults::MAX_HEADER_BYTES,
        Some(bytes) => usize::try_from(bytes)
            .ok()
            .filter(|b| (limits::MIN_HEADER_BYTES..=limits::MAX_HEADER_BYTES).contains(b))
            .ok_or_else(|| {
                ConfigError::invalid(
                    field,
                    format!(
                        "{bytes} bytes is outside {}..={} (1KiB..=1MiB)",
                        limits::MIN_HEADER_BYTES,
                        limits::MAX_HEADER_BYTES
                    ),
                )
            })?,
    };

    let (drain_timeout, field) = pick(
        ov.drain_timeout,
        file.drain_timeout.map(|d| d.0),
        "drain_timeout",
        "--drain-timeout",
    );
    let drain_timeout = drain_timeout.unwrap_or(defaults::DRAIN_TIMEOUT);
    if drain_timeout > limits::MAX_DRAIN_TIMEOUT {
        return Err(ConfigError::invalid(
            field,
            format!(
                "{} is longer than {}",
                format_duration(drain_timeout),
                format_duration(limits::MAX_DRAIN_TIMEOUT)
            ),
        ));
    }

    let timeout = |flag: Option<Duration>,
                   file: Option<super::units::HumanDuration>,
                   key: &str,
                   flag_name: &str,
                   default: Duration|
     -> Result<Duration, ConfigError> {
        let (t, field) = pick(flag, file.map(|d| d.0), key, flag_name);
        let t = t.unwrap_or(default);
        if t.is_zero() || t > limits::MAX_DRAIN_TIMEOUT {
            return Err(ConfigError::invalid(
                field,
                format!(
                    "{} is not between 0 and {}",
                    format_duration(t),
                    format_duration(limits::MAX_DRAIN_TIMEOUT)
                ),
            ));
        }
        Ok(t)
    };
    let header_timeout = timeout(
        ov.header_timeout,
        file.header_timeout,
        "header_timeout",
        "--header-timeout",
        defaults::HEADER_TIMEOUT,
    )?;
    let keepalive_timeout = timeout(
        ov.keepalive_timeout,
        file.keepalive_timeout,
        "keepalive_timeout",
        "--keepalive-timeout",
        defaults::KEEPALIVE_TIMEOUT,
    )?;

    let file_name = origin.name();
    let base_dir = command_base_dir(&origin);
    let functions = resolve_functions(file.functions, text, &file_name, ov, &base_dir)?;

    let total_workers: usize = functions.iter().map(|f| f.max_workers).sum();
    let io_cores = io_cores.cores().to_vec();
    let worker_cores = worker_cores.map(|cores| cores.cores().to_vec());
    let own_cores = workers_have_own_cores(&io_cores, worker_cores.as_deref(), total_workers);
    let (worker_poll, worker_poll_field) = pick(
        ov.worker_poll,
        file.worker_poll,
        "worker_poll",
        "--worker-poll",
    );
    let worker_poll = match (worker_poll, own_cores) {
        (Some(WorkerPoll::Spin), Err(why)) => {
            return Err(ConfigError::Cores {
                msg: format!(
                    "{} needs a core of its own for every worker, but {why}; \
                     use --worker-poll yield on shared cores",
                    setting(&worker_poll_field, "spin")
                ),
            })
        }
        (Some(mode), _) => mode,
        (None, Ok(())) => WorkerPoll::Spin,
        (None, Err(_)) => WorkerPoll::Yield,
    };
    // An adaptive loop that shares its core with workers yield-polls (see
    // `Config::io_shares_workers`): polling longer costs them nothing.
    let spin_us = check_spin(
        spin_us_given.unwrap_or(if io_shares_workers(&io_cores, worker_cores.as_deref()) {
            defaults::SPIN_US_YIELDING
        } else {
            defaults::SPIN_US
        }),
        &spin_field,
    )?;
    let worker_spin_us = check_spin(
        worker_spin_us.unwrap_or(match worker_poll {
            WorkerPoll::Spin => defaults::WORKER_SPIN_US_OWN_CORE,
            WorkerPoll::Yield | WorkerPoll::Park => defaults::WORKER_SPIN_US,
        }),
        &worker_spin_field,
    )?;

    Ok(Config {
        origin,
        allowed_cores: allowed.cores().to_vec(),
        listen,
        net,
        smoltcp,
        io_cores,
        worker_cores,
        poll,
        spin_us,
        worker_poll,
        worker_spin_us,
        max_connections,
        max_header_bytes,
        drain_timeout,
        header_timeout,
        keepalive_timeout,
        functions,
    })
}

/// A setting as the user would have written it: `--poll spin` for a flag,
/// `poll = "spin"` for a file key.
fn setting(field: &str, value: &str) -> String {
    if field.starts_with("--") {
        format!("{field} {value}")
    } else {
        format!("{field} = \"{value}\"")
    }
}

/// Whether worker processes may run on an io core: their cores overlap the
/// io cores, or they are not pinned at all.
pub(crate) fn io_shares_workers(io_cores: &[usize], worker_cores: Option<&[usize]>) -> bool {
    worker_cores.is_none_or(|cores| cores.iter().any(|c| io_cores.contains(c)))
}

/// The placement rule for spinning workers: every worker that can exist at
/// once must be able to sit on a distinct core that no io loop uses.
/// Two spinners sharing a core pay a scheduler tick (~4 ms) per hand-off.
pub(crate) fn workers_have_own_cores(
    io_cores: &[usize],
    worker_cores: Option<&[usize]>,
    total_workers: usize,
) -> Result<(), String> {
    let io = CoreSet::format(io_cores);
    let Some(cores) = worker_cores else {
        return Err(format!(
            "workers are not pinned and share the io cores ({io})"
        ));
    };
    let listed = CoreSet::format(cores);
    if cores.iter().any(|core| io_cores.contains(core)) {
        return Err(format!("worker cores {listed} overlap io cores {io}"));
    }
    if cores.len() < total_workers {
        return Err(format!(
            "{total_workers} workers (sum of max_workers) would share {} worker core{} ({listed})",
            cores.len(),
            if cores.len() == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}

fn check_allowed(
    cores: &CoreSet,
    allowed: &CoreSet,
    what: &str,
    field: &str,
) -> Result<(), ConfigError> {
    let unknown = cores.difference(allowed);
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ConfigError::Cores {
        msg: format!(
            "{field}: {what} {} not in this process's allowed cores {allowed} \
             (the sched_getaffinity set; see taskset, cgroup cpusets)",
            if unknown.len() == 1 {
                format!("{} is", unknown[0])
            } else {
                format!("{} are", CoreSet::format(&unknown))
            }
        ),
    })
}

fn check_spin(us: u64, field: &str) -> Result<u64, ConfigError> {
    if us > limits::MAX_SPIN_US {
        return Err(ConfigError::invalid(
            field,
            format!(
                "{us} µs is more than {} µs (one second); the budget is in microseconds",
                limits::MAX_SPIN_US
            ),
        ));
    }
    Ok(us)
}

/// Relative program paths in `command` are relative to the config file.
fn command_base_dir(origin: &ConfigOrigin) -> PathBuf {
    let dir = match origin {
        ConfigOrigin::File(path) => path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned(),
        ConfigOrigin::Embedded => PathBuf::from("."),
    };
    std::path::absolute(&dir).unwrap_or(dir)
}

fn resolve_functions(
    entries: Vec<Spanned<FileFunction>>,
    text: &str,
    file_name: &str,
    ov: &Overrides,
    base_dir: &Path,
) -> Result<Vec<FunctionConfig>, ConfigError> {
    if entries.is_empty() {
        return Err(ConfigError::invalid(
            "functions",
            "no [[functions]] entries; declare at least one \
             (`nocturne config default` prints an example)",
        ));
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut resolved = Vec::with_capacity(entries.len());
    let mut located: Vec<(FileFunction, Location)> = Vec::with_capacity(entries.len());
    for entry in entries {
        let at = Location::of_offset(file_name, text, entry.span().start);
        let function = entry.into_inner();
        let Some(name) = function.name.clone() else {
            return Err(ConfigError::Invalid {
                field: "functions[].name".into(),
                at: Some(at),
                msg: "every [[functions]] entry needs a name".into(),
            });
        };
        check_name(&name, &at)?;
        if !seen.insert(name.clone()) {
            return Err(ConfigError::Invalid {
                field: format!("functions[{name}].name"),
                at: Some(at),
                msg: format!("function `{name}` is declared twice"),
            });
        }
        located.push((function, at));
    }
    for o in &ov.functions {
        let Some((function, _)) = located
            .iter_mut()
            .find(|(f, _)| f.name.as_deref() == Some(o.function()))
        else {
            let names: Vec<&str> = located
                .iter()
                .filter_map(|(f, _)| f.name.as_deref())
                .collect();
            return Err(ConfigError::Override {
                arg: o.arg().to_owned(),
                msg: format!(
                    "no function `{}` is configured (functions: {})",
                    o.function(),
                    names.join(", ")
                ),
            });
        };
        function.apply(o.patch().clone());
    }
    for (function, at) in located {
        resolved.push(resolve_function(function, at, base_dir)?);
    }
    Ok(resolved)
}

fn check_name(name: &str, at: &Location) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= limits::MAX_FUNCTION_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        field: "functions[].name".into(),
        at: Some(at.clone()),
        msg: format!(
            "`{name}` is not a function name: use 1 to {} of a-z, 0-9, `_`, `-` (it becomes the URL /function/NAME)",
            limits::MAX_FUNCTION_NAME
        ),
    })
}

fn resolve_function(
    f: FileFunction,
    at: Location,
    base_dir: &Path,
) -> Result<FunctionConfig, ConfigError> {
    let name = f.name.unwrap_or_default();
    let fail = |key: &str, msg: String| ConfigError::Invalid {
        field: format!("functions[{name}].{key}"),
        at: Some(at.clone()),
        msg,
    };

    let source = match (f.builtin, f.command) {
        (Some(_), Some(_)) => {
            return Err(fail(
                "builtin",
                "set either `builtin` or `command`, not both".into(),
            ))
        }
        (None, None) => {
            return Err(fail(
                "builtin",
                format!(
                    "set `builtin` (one of {}) or `command` (an argv array)",
                    BUILTIN_FUNCTIONS.join(", ")
                ),
            ))
        }
        (Some(builtin), None) => {
            if !BUILTIN_FUNCTIONS.contains(&builtin.as_str()) {
                let hint = closest(&builtin, BUILTIN_FUNCTIONS.iter().copied())
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                return Err(fail(
                    "builtin",
                    format!(
                        "no built-in function `{builtin}` (built-ins: {}){hint}",
                        BUILTIN_FUNCTIONS.join(", ")
                    ),
                ));
            }
            FunctionSource::Builtin(builtin)
        }
        (None, Some(argv)) => FunctionSource::Command(
            resolve_command(argv.0, base_dir).map_err(|msg| fail("command", msg))?,
        ),
    };

    let min_workers = f.min_workers.unwrap_or(defaults::MIN_WORKERS);
    let max_workers = f
        .max_workers
        .unwrap_or(defaults::MAX_WORKERS.max(min_workers));
    if max_workers == 0 {
        return Err(fail("max_workers", "must be at least 1".into()));
    }
    if max_workers > limits::MAX_WORKERS {
        return Err(fail(
            "max_workers",
            format!("{max_workers} is more than {}", limits::MAX_WORKERS),
        ));
    }
    if min_workers > max_workers {
        return Err(fail(
            "min_workers",
            format!("min_workers {min_workers} is more than max_workers {max_workers}"),
        ));
    }

    let timeout = f.timeout.map_or(defaults::TIMEOUT, |d| d.0);
    if timeout.is_zero() || timeout > limits::MAX_TIMEOUT {
        return Err(fail(
            "timeout",
            format!(
                "{} is outside 1us..={} (deadlines travel as 32-bit microseconds)",
                format_duration(timeout),
                format_duration(limits::MAX_TIMEOUT)
            ),
        ));
    }

    let max_payload = match f.max_payload {
        None => defaults::MAX_PAYLOAD,
        Some(size) => usize::try_from(size.0)
            .ok()
            .filter(|&b| b <= limits::MAX_PAYLOAD)
            .ok_or_else(|| {
                fail(
                    "max_payload",
                    format!(
                        "{} bytes is more than {} (a payload and its query string share a \
                         worker's 1GiB arena)",
                        size.0,
                        format_size(limits::MAX_PAYLOAD as u64)
                    ),
                )
            })?,
    };

    let idle_timeout = f.idle_timeout.map_or(defaults::IDLE_TIMEOUT, |d| d.0);
    if idle_timeout.is_zero() {
        return Err(fail(
            "idle_timeout",
            "must be more than 0 (an idle worker would exit at once)".into(),
        ));
    }

    let max_queue = f.max_queue.unwrap_or(defaults::MAX_QUEUE);
    if max_queue > limits::MAX_QUEUE {
        return Err(fail(
            "max_queue",
            format!("{max_queue} is more than {}", limits::MAX_QUEUE),
        ));
    }

    let max_call_depth = f.max_call_depth.unwrap_or(defaults::MAX_CALL_DEPTH);
    if !(1..=limits::MAX_CALL_DEPTH).contains(&max_call_depth) {
        return Err(fail(
            "max_call_depth",
            format!("{max_call_depth} is outside 1..={}", limits::MAX_CALL_DEPTH),
        ));
    }

    let concurrency_coef = f.concurrency_coef.unwrap_or(defaults::CONCURRENCY_COEF);
    if !(concurrency_coef > 0.0 && concurrency_coef <= limits::MAX_CONCURRENCY_COEF) {
        return Err(fail(
            "concurrency_coef",
            format!(
                "{concurrency_coef} is outside (0, {}]",
                limits::MAX_CONCURRENCY_COEF
            ),
        ));
    }

    check_env(&f.env).map_err(|msg| fail("env", msg))?;

    Ok(FunctionConfig {
        name: name.clone(),
        source,
        min_workers,
        max_workers,
        timeout,
        max_payload,
        allow_get: f.allow_get.unwrap_or(defaults::ALLOW_GET),
        env: f.env,
        idle_timeout,
        max_queue,
        max_call_depth,
        concurrency_coef,
    })
}

/// Checks an argv and resolves a relative program path containing `/`
/// against `base_dir`; such a path must name an executable file. A bare
/// program name is left for the `PATH` search at spawn time.
fn resolve_command(mut argv: Vec<String>, base_dir: &Path) -> Result<Vec<String>, String> {
    let Some(program) = argv.first() else {
        return Err("empty argv; write e.g. [\"./bin/my-function\", \"--flag\"]".into());
    };
    if program.is_empty() {
        return Err("the program (first element) is empty".into());
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err("an argument contains a NUL byte".into());
    }
    if program.contains('/') {
        let path = base_dir.join(program);
        check_executable(&path).map_err(|why| format!("{program} ({}): {why}", path.display()))?;
        argv[0] = path.to_string_lossy().into_owned();
    }
    Ok(argv)
}

fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("not executable (chmod +x)".into());
    }
    Ok(())
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in env {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(format!(
                "`{key}` is not an environment variable name (empty, or contains `=` or NUL)"
            ));
        }
        if key.starts_with(RESERVED_ENV_PREFIX) {
            return Err(format!(
                "`{key}`: names starting with {RESERVED_ENV_PREFIX} are reserved for the engine"
            ));
        }
        if value.contains('\0') {
            return Err(format!("the value of `{key}` contains a NUL byte"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
