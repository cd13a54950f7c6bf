//! Resolution: file values + overrides + built-in defaults → a validated
//! [`Config`], including the core placement rules.
//!
//! Errors name a setting the way the user set it: `--poll` when the value
//! came from the flag (or its `NOCTURNE_POLL` variable), `poll` when it came
//! from the file, and `functions[NAME].key` with the entry's line for
//! function settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::cores::CoreSet;
use super::error::{ConfigError, ConfigWarning, Location};
use super::file::FileConfig;
use super::overrides::Overrides;
use super::units::format_duration;
use super::{defaults, limits, Config, ConfigOrigin, NetBackend, PollMode, WorkerPoll};

mod blame;
mod command;
mod function;

/// Where a top-level value came from: its flag (or the flag's variable), or
/// its key and the value's place in the file. Errors name it this way.
#[derive(Debug, Clone)]
struct Source {
    /// `--poll` or `poll`.
    field: String,
    /// The value's place in the file; `None` for flags and defaults.
    at: Option<Location>,
}

impl Source {
    fn invalid(&self, msg: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            field: self.field.clone(),
            at: self.at.clone(),
            msg: msg.into(),
        }
    }

    fn warning(&self, msg: String) -> ConfigWarning {
        ConfigWarning {
            setting: self.field.clone(),
            at: self.at.clone(),
            msg,
        }
    }

    /// A placement error about this setting, with its place in the file
    /// when it has one.
    fn cores(&self, msg: String) -> ConfigError {
        ConfigError::Cores {
            msg: match &self.at {
                Some(at) => format!("{at}: {msg}"),
                None => msg,
            },
        }
    }

    fn is_flag(&self) -> bool {
        self.field.starts_with("--")
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.field)
    }
}

/// The text of the configuration, for turning spans into locations.
struct Text<'a> {
    file: &'a str,
    text: &'a str,
}

impl Text<'_> {
    /// Picks the flag value over the file value, and names the setting
    /// after where the winning value came from.
    fn pick<T>(
        &self,
        flag: Option<T>,
        file: Option<Spanned<T>>,
        key: &str,
        flag_name: &str,
    ) -> (Option<T>, Source) {
        match (flag, file) {
            (Some(v), _) => (
                Some(v),
                Source {
                    field: flag_name.to_owned(),
                    at: None,
                },
            ),
            (None, Some(v)) => {
                let at = Location::of_offset(self.file, self.text, v.span().start);
                (
                    Some(v.into_inner()),
                    Source {
                        field: key.to_owned(),
                        at: Some(at),
                    },
                )
            }
            (None, None) => (
                None,
                Source {
                    field: key.to_owned(),
                    at: None,
                },
            ),
        }
    }
}

/// The smoltcp settings: required (and only allowed) with `net = smoltcp`.
fn resolve_smoltcp(
    net: NetBackend,
    net_source: &Source,
    listen: (std::net::SocketAddr, &Source),
    file: &mut FileConfig,
    ov: &Overrides,
    text: &Text<'_>,
) -> Result<Option<super::SmoltcpConfig>, ConfigError> {
    let (tap, tap_source) = text.pick(ov.tap.clone(), file.tap.take(), "tap", "--tap");
    let (raw, raw_source) = text.pick(ov.raw.clone(), file.raw.take(), "raw", "--raw");
    let (ip, ip_source) = text.pick(ov.ip.clone(), file.ip.take(), "ip", "--ip");
    let (gateway, _) = text.pick(ov.gateway, file.gateway.take(), "gateway", "--gateway");
    if net != NetBackend::Smoltcp {
        for (given, source) in [
            (tap.is_some(), &tap_source),
            (raw.is_some(), &raw_source),
            (ip.is_some(), &ip_source),
        ] {
            if given {
                return Err(source.invalid(format!(
                    "only applies to the smoltcp backend; set {net_source} to smoltcp"
                )));
            }
        }
        return Ok(None);
    }
    let device = match (tap, raw) {
        (Some(tap), None) => nocturne_net::DeviceSpec::Tap(tap),
        (None, Some(raw)) => nocturne_net::DeviceSpec::Raw(raw),
        (Some(_), Some(_)) => {
            return Err(tap_source.invalid("give a TAP device or a raw interface, not both"))
        }
        (None, None) => {
            return Err(net_source
                .invalid("the smoltcp backend needs a device: --tap IFNAME or --raw IFNAME"))
        }
    };
    let Some(ip) = ip else {
        return Err(net_source.invalid(
            "the smoltcp backend needs its own address: --ip ADDR/LEN, e.g. 192.0.2.2/24",
        ));
    };
    let address: nocturne_net::Ipv4Cidr = ip
        .parse()
        .map_err(|e: nocturne_net::smoltcp::ParseCidrError| ip_source.invalid(e.to_string()))?;
    let (listen, listen_source) = listen;
    if listen.port() == 0 {
        return Err(listen_source.invalid(
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
    mut file: FileConfig,
    text: &str,
    origin: ConfigOrigin,
    ov: &Overrides,
    allowed_cores: &[usize],
) -> Result<Config, ConfigError> {
    let allowed = CoreSet::new(allowed_cores.iter().copied()).map_err(|e| ConfigError::Cores {
        msg: format!("unusable allowed core set: {e}"),
    })?;
    let file_name = origin.name();
    let text = Text {
        file: &file_name,
        text,
    };
    let mut warnings = Vec::new();

    let (listen, listen_source) = text.pick(
        ov.listen,
        file.listen.take().map(|l| spanned_map(l, |l| l.0)),
        "listen",
        "--listen",
    );
    let listen = listen.unwrap_or(defaults::LISTEN);

    let (net, net_source) = text.pick(ov.net, file.net.take(), "net", "--net");
    let net = net.unwrap_or(defaults::NET);
    let smoltcp = resolve_smoltcp(
        net,
        &net_source,
        (listen, &listen_source),
        &mut file,
        ov,
        &text,
    )?;

    // Core placement.
    let (io_cores, io_source) = text.pick(
        ov.io_cores.clone(),
        file.io_cores.take(),
        "io_cores",
        "--io-cores",
    );
    let io_cores = match io_cores {
        Some(cores) => {
            check_allowed(&cores, &allowed, "io cores", &io_source)?;
            if cores.len() > limits::MAX_IO_CORES {
                return Err(io_source.cores(format!(
                    "{io_source}: {} io cores are more than {} (a call id names its \
                     core loop in 8 bits); one io core serves ≈ 100 k requests/s",
                    cores.len(),
                    limits::MAX_IO_CORES
                )));
            }
            cores
        }
        // The last allowed core: core 0 tends to take the most interrupts.
        None => {
            CoreSet::new([allowed.last()]).map_err(|e| ConfigError::Cores { msg: e.to_string() })?
        }
    };
    let (worker_cores, worker_source) = text.pick(
        ov.worker_cores.clone(),
        file.worker_cores.take(),
        "worker_cores",
        "--worker-cores",
    );
    if let Some(cores) = &worker_cores {
        check_allowed(cores, &allowed, "worker cores", &worker_source)?;
    }
    let (poll, poll_source) = text.pick(ov.poll, file.poll.take(), "poll", "--poll");
    let poll = poll.unwrap_or(defaults::POLL);
    let spin_poll = setting(&poll_source, "spin");
    let worker_cores = match (poll, worker_cores) {
        (PollMode::Spin, Some(cores)) => {
            let shared = cores.intersection(&io_cores);
            if !shared.is_empty() {
                return Err(poll_source.cores(format!(
                    "{spin_poll} needs io cores of their own: io cores {} overlap worker cores {} (shared: {}); \
                     give disjoint --io-cores/--worker-cores, or use --poll adaptive",
                    io_cores,
                    cores,
                    CoreSet::format(&shared)
                )));
            }
            Some(cores)
        }
        (PollMode::Spin, None) => {
            // A spinning io loop owns its core: keep workers off it.
            let rest = allowed.difference(&io_cores);
            if rest.is_empty() {
                return Err(poll_source.cores(format!(
                    "{spin_poll} needs io cores of their own: io cores {io_cores} take every allowed core \
                     ({allowed}), leaving none for workers; give fewer --io-cores, or use --poll adaptive"
                )));
            }
            Some(CoreSet::new(rest).map_err(|e| ConfigError::Cores { msg: e.to_string() })?)
        }
        (_, cores) => cores,
    };

    let (spin_us_given, spin_source) =
        text.pick(ov.spin_us, file.spin_us.take(), "spin_us", "--spin-us");
    let (spin_max_us_given, spin_max_source) = text.pick(
        ov.spin_max_us,
        file.spin_max_us.take(),
        "spin_max_us",
        "--spin-max-us",
    );
    let (worker_spin_us_given, worker_spin_source) = text.pick(
        ov.worker_spin_us,
        file.worker_spin_us.take(),
        "worker_spin_us",
        "--worker-spin-us",
    );

    let (max_connections, source) = text.pick(
        ov.max_connections,
        file.max_connections.take(),
        "max_connections",
        "--max-connections",
    );
    let max_connections = max_connections.unwrap_or(defaults::MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(source.invalid("must be at least 1"));
    }

    let (max_header_bytes, source) = text.pick(
        ov.max_header_bytes,
        file.max_header_bytes
            .take()
            .map(|b| spanned_map(b, |b| b.0)),
        "max_header_bytes",
        "--max-header-bytes",
    );
    let max_header_bytes = match max_header_bytes {
        None => defaults::MAX_HEADER_BYTES,
        Some(bytes) => usize::try_from(bytes)
            .ok()
            .filter(|b| (limits::MIN_HEADER_BYTES..=limits::MAX_HEADER_BYTES).contains(b))
            .ok_or_else(|| {
                source.invalid(format!(
                    "{bytes} bytes is outside {}..={} (1KiB..=1MiB)",
                    limits::MIN_HEADER_BYTES,
                    limits::MAX_HEADER_BYTES
                ))
            })?,
    };

    let (drain_timeout, source) = text.pick(
        ov.drain_timeout,
        file.drain_timeout.take().map(|d| spanned_map(d, |d| d.0)),
        "drain_timeout",
        "--drain-timeout",
    );
    let drain_timeout = drain_timeout.unwrap_or(defaults::DRAIN_TIMEOUT);
    if drain_timeout > limits::MAX_DRAIN_TIMEOUT {
        return Err(source.invalid(format!(
            "{} is longer than {}",
            format_duration(drain_timeout),
            format_duration(limits::MAX_DRAIN_TIMEOUT)
        )));
    }

    let timeout = |flag: Option<Duration>,
                   file: Option<Spanned<super::units::HumanDuration>>,
                   key: &str,
                   flag_name: &str,
                   default: Duration|
     -> Result<Duration, ConfigError> {
        let (t, source) = text.pick(flag, file.map(|d| spanned_map(d, |d| d.0)), key, flag_name);
        let t = t.unwrap_or(default);
        if t.is_zero() || t > limits::MAX_DRAIN_TIMEOUT {
            return Err(source.invalid(format!(
                "must be more than 0 and at most {} (got {})",
                format_duration(limits::MAX_DRAIN_TIMEOUT),
                format_duration(t)
            )));
        }
        Ok(t)
    };
    let header_timeout = timeout(
        ov.header_timeout,
        file.header_timeout.take(),
        "header_timeout",
        "--header-timeout",
        defaults::HEADER_TIMEOUT,
    )?;
    let keepalive_timeout = timeout(
        ov.keepalive_timeout,
        file.keepalive_timeout.take(),
        "keepalive_timeout",
        "--keepalive-timeout",
        defaults::KEEPALIVE_TIMEOUT,
    )?;

    let base_dir = command_base_dir(&origin);
    let functions = function::resolve_functions(
        std::mem::take(&mut file.functions),
        &text,
        ov,
        &base_dir,
        &mut warnings,
    )?;

    let total_workers: usize = functions.iter().map(|f| f.max_workers).sum();
    let io_cores = io_cores.cores().to_vec();
    let worker_cores = worker_cores.map(|cores| cores.cores().to_vec());
    let own_cores = workers_have_own_cores(&io_cores, worker_cores.as_deref(), total_workers);
    let (worker_poll, worker_poll_source) = text.pick(
        ov.worker_poll,
        file.worker_poll.take(),
        "worker_poll",
        "--worker-poll",
    );
    let worker_poll = match (worker_poll, own_cores) {
        (Some(WorkerPoll::Spin), Err(why)) => {
            return Err(worker_poll_source.cores(format!(
                "{} needs a core of its own for every worker, but {why}; \
                 use --worker-poll yield on shared cores",
                setting(&worker_poll_source, "spin")
            )))
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
        &spin_source,
    )?;
    let spin_max_us = check_spin(
        spin_max_us_given.unwrap_or(defaults::SPIN_MAX_US),
        &spin_max_source,
    )?;
    let worker_spin_us = check_spin(
        worker_spin_us_given.unwrap_or(match worker_poll {
            WorkerPoll::Spin => defaults::WORKER_SPIN_US_OWN_CORE,
            WorkerPoll::Yield | WorkerPoll::Park => defaults::WORKER_SPIN_US,
        }),
        &worker_spin_source,
    )?;
    // A budget the chosen mode never reads is accepted (a shared config
    // may set it for another mode) but said, since it looks like it works.
    if poll != PollMode::Adaptive {
        let io_budgets = [
            (spin_us_given, &spin_source),
            (spin_max_us_given, &spin_max_source),
        ];
        for (_, source) in io_budgets.iter().filter(|(given, _)| given.is_some()) {
            warnings.push(source.warning(format!(
                "has no effect with {} (only an adaptive loop polls before it sleeps)",
                setting(&poll_source, poll.as_str())
            )));
        }
    }
    if worker_spin_us_given.is_some() && worker_poll == WorkerPoll::Park {
        warnings.push(worker_spin_source.warning(format!(
            "has no effect with {} (a parking worker waits at once)",
            setting(&worker_poll_source, worker_poll.as_str())
        )));
    }
    let (delegate_wakes, delegate_source) = text.pick(
        ov.delegate_wakes,
        file.delegate_wakes.take(),
        "delegate_wakes",
        "--delegate-wakes",
    );
    if delegate_wakes.is_some() && worker_poll != WorkerPoll::Yield {
        warnings.push(delegate_source.warning(format!(
            "has no effect with {} (only yielding workers share a wake board)",
            setting(&worker_poll_source, worker_poll.as_str())
        )));
    } else if delegate_wakes.is_some() && !wake_board_applies(worker_poll, worker_cores.as_deref())
    {
        warnings.push(
            delegate_source.warning(
                "has no effect unless the workers share one core (worker_cores of one core)"
                    .to_string(),
            ),
        );
    }
    let delegate_wakes = delegate_wakes.unwrap_or(defaults::DELEGATE_WAKES);

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
        spin_max_us,
        worker_poll,
        worker_spin_us,
        delegate_wakes,
        max_connections,
        max_header_bytes,
        drain_timeout,
        header_timeout,
        keepalive_timeout,
        functions,
        warnings,
    })
}

/// `Spanned::map`, which toml 0.8 lacks.
fn spanned_map<T, U>(value: Spanned<T>, f: impl FnOnce(T) -> U) -> Spanned<U> {
    let span = value.span();
    Spanned::new(span, f(value.into_inner()))
}

/// A setting as the user would have written it: `--poll spin` for a flag,
/// `poll = "spin"` for a file key.
fn setting(source: &Source, value: &str) -> String {
    if source.is_flag() {
        format!("{source} {value}")
    } else {
        format!("{source} = \"{value}\"")
    }
}

/// Whether worker processes may run on an io core: their cores overlap the
/// io cores, or they are not pinned at all.
/// Whether `delegate_wakes` applies: to yielding workers that share one
/// core (see [`Config::delegates_wakes`]).
pub(crate) fn wake_board_applies(worker_poll: WorkerPoll, worker_cores: Option<&[usize]>) -> bool {
    worker_poll == WorkerPoll::Yield && worker_cores.is_some_and(|c| c.len() == 1)
}

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
    source: &Source,
) -> Result<(), ConfigError> {
    let unknown = cores.difference(allowed);
    if unknown.is_empty() {
        return Ok(());
    }
    Err(source.cores(format!(
        "{source}: {what} {} not in this process's allowed cores {allowed} \
         (the sched_getaffinity set; see taskset, cgroup cpusets)",
        if unknown.len() == 1 {
            format!("{} is", unknown[0])
        } else {
            format!("{} are", CoreSet::format(&unknown))
        }
    )))
}

fn check_spin(us: u64, source: &Source) -> Result<u64, ConfigError> {
    if us > limits::MAX_SPIN_US {
        return Err(source.invalid(format!(
            "{us} µs is more than {} µs (one second); the budget is in microseconds",
            limits::MAX_SPIN_US
        )));
    }
    Ok(us)
}

/// Relative program paths in the file's `command`s are relative to the
/// config file (a `--set` command is relative to the working directory,
/// see `function`).
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

#[cfg(test)]
mod tests;
