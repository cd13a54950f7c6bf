//! Command-line arguments of `nocturne serve` and the `nocturne config`
//! tools.
//!
//! Every top-level setting of `nocturne.toml` has a flag, and every flag a
//! `NOCTURNE_*` environment variable; function settings are reached with
//! `--set FUNCTION.KEY=VALUE`. Precedence: flag, then variable (clap reads
//! both), then the file, then the built-in default. Flags stay `None` when
//! not given so that a file value is never hidden by a flag default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::config::{
    allowed_cores, parse_duration, parse_listen, parse_set_list, parse_size, Config, ConfigError,
    CoreSet, FunctionOverride, NetBackend, Overrides, PollMode, WorkerPoll, DEFAULT_CONFIG_TOML,
};

/// Arguments of `nocturne serve`.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Settings (each overrides the config file)")]
pub struct ServeArgs {
    /// Configuration file (TOML) [default: the embedded example config]
    ///
    /// Without it, the embedded default serves the built-in functions (echo,
    /// bar, foo, spin, sleep) on 127.0.0.1:8080; `nocturne config default`
    /// prints it as a starting point. The schema is in docs/configuration.md;
    /// `nocturne config check FILE` validates a file without serving.
    #[arg(
        long,
        short = 'c',
        env = "NOCTURNE_CONFIG",
        value_name = "PATH",
        help_heading = "Configuration"
    )]
    pub config: Option<PathBuf>,

    /// HTTP listen address [default: 127.0.0.1:8080]
    ///
    /// An IP and port (host names are not resolved). Use 0.0.0.0:PORT to
    /// accept connections from other hosts, port 0 for any free port.
    #[arg(long, env = "NOCTURNE_LISTEN", value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,

    /// Network stack [default: kernel]
    ///
    /// kernel: kernel TCP sockets, one SO_REUSEPORT listener per io core.
    /// smoltcp: a userspace TCP stack, polled by the io loops, over a
    /// TAP device (--tap) or an AF_PACKET raw socket (--raw), at --ip; it
    /// listens on --listen's port (which must not be 0).
    #[arg(long, env = "NOCTURNE_NET", value_enum, value_name = "BACKEND")]
    pub net: Option<NetBackend>,

    /// --net smoltcp: TAP device to use (created if it does not exist)
    ///
    /// Give the kernel side an address in --ip's subnet and bring it up, e.g.
    /// `ip addr add 192.0.2.1/24 dev IFNAME; ip link set IFNAME up`
    /// (see docs/userspace-networking.md).
    #[arg(
        long,
        env = "NOCTURNE_TAP",
        value_name = "IFNAME",
        conflicts_with = "raw"
    )]
    pub tap: Option<String>,

    /// --net smoltcp: existing interface to send and receive raw Ethernet
    /// frames on (AF_PACKET), e.g. one end of a veth pair
    #[arg(long, env = "NOCTURNE_RAW", value_name = "IFNAME")]
    pub raw: Option<String>,

    /// --net smoltcp: the engine's own IPv4 address and subnet, e.g. 192.0.2.2/24
    #[arg(long, env = "NOCTURNE_IP", value_name = "ADDR/LEN")]
    pub ip: Option<String>,

    /// --net smoltcp: next hop for clients outside --ip's subnet
    #[arg(long, env = "NOCTURNE_GATEWAY", value_name = "ADDR")]
    pub gateway: Option<std::net::Ipv4Addr>,

    /// Cores for the engine's event loops, one pinned loop per core, e.g. 3 or 2-3 [default: the last allowed core]
    ///
    /// Cores must be in this process's allowed set (sched_getaffinity, i.e.
    /// taskset/cgroup cpusets) and listed once. More io cores serve more
    /// connections in parallel; each takes a whole core under --poll spin.
    /// At most 256.
    #[arg(long, env = "NOCTURNE_IO_CORES", value_name = "CORES")]
    pub io_cores: Option<CoreSet>,

    /// Cores the worker processes are pinned to, e.g. 0-2 [default: not pinned; with --poll spin: the allowed cores minus the io cores]
    ///
    /// Give workers cores apart from --io-cores, and at least as many as the
    /// sum of max_workers, to let them spin (--worker-poll spin).
    #[arg(long, env = "NOCTURNE_WORKER_CORES", value_name = "CORES")]
    pub worker_cores: Option<CoreSet>,

    /// How an idle io loop waits [default: adaptive]
    ///
    /// adaptive spins for --spin-us, then sleeps in epoll: right almost
    /// everywhere (when workers may run on its cores it yields while it
    /// polls instead of spinning). spin never sleeps: the lowest latency when io cores are
    /// dedicated; refused when io and worker cores overlap (a spinner on a
    /// shared core costs milliseconds per hand-off). block sleeps at once:
    /// least CPU, highest latency.
    #[arg(long, env = "NOCTURNE_POLL", value_enum, value_name = "MODE")]
    pub poll: Option<PollMode>,

    /// Microseconds an idle io loop polls before sleeping (--poll adaptive), at most 1000000 [default: 50, or 500 when workers may run on the io cores]
    #[arg(long, env = "NOCTURNE_SPIN_US", value_name = "US")]
    pub spin_us: Option<u64>,

    /// Microseconds an idle io loop keeps polling, above --spin-us, while requests arrive closer together than that (--poll adaptive): it saves each request the wake-up of a sleeping core, for a core kept busy between them; at or below --spin-us: never, at most 1000000 [default: 2000]
    #[arg(long, env = "NOCTURNE_SPIN_MAX_US", value_name = "US")]
    pub spin_max_us: Option<u64>,

    /// How an idle worker waits for work [default: spin if every worker has a core of its own, else yield]
    ///
    /// spin spins for --worker-spin-us, then parks: only with a dedicated core
    /// per worker (refused otherwise). yield calls sched_yield for
    /// --worker-spin-us, then parks: right on shared cores (~2.7 us per
    /// internal call on 2 cores). park sleeps on a futex at once (~17 us per
    /// internal call, least CPU).
    #[arg(long, env = "NOCTURNE_WORKER_POLL", value_enum, value_name = "MODE")]
    pub worker_poll: Option<WorkerPoll>,

    /// Microseconds an idle worker spins or yields before parking, at most 1000000 [default: 2000 for spin, 50 for yield]
    #[arg(long, env = "NOCTURNE_WORKER_SPIN_US", value_name = "US")]
    pub worker_spin_us: Option<u64>,

    /// Whether yielding workers wake each other on their shared core (--worker-poll yield with --worker-cores of one core only) [default: true]
    ///
    /// On: a wake-up the engine owes a sleeping worker is done by a worker
    /// awake on its core, instead of across cores by the engine. Workers
    /// allowed on several cores are never seated: a worker on another core
    /// would wake across cores too. false makes every wake the engine's own
    /// (for A/B benchmarks, or as a safety valve).
    #[arg(
        long,
        env = "NOCTURNE_DELEGATE_WAKES",
        value_name = "BOOL",
        action = clap::ArgAction::Set
    )]
    pub delegate_wakes: Option<bool>,

    /// Most open connections across all io cores; more are answered 503 [default: 10000]
    ///
    /// Each kernel-TCP connection is a file descriptor: the engine raises its
    /// soft open-files limit as far as this needs, and where the hard limit
    /// (`ulimit -Hn`) cannot hold it, serves fewer and says so at start.
    #[arg(long, env = "NOCTURNE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Largest request line plus headers, 1KiB to 1MiB, e.g. 8KiB; larger requests get 431 [default: 8KiB]
    #[arg(long, env = "NOCTURNE_MAX_HEADER_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub max_header_bytes: Option<u64>,

    /// On shutdown, how long in-flight calls may take to finish, e.g. 10s; at most 1h [default: 10s]
    #[arg(long, env = "NOCTURNE_DRAIN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// A connection must send a whole request head within this, e.g. 10s (more than 0, at most 1h); slower clients get 408 [default: 10s]
    ///
    /// The defence against slowloris clients: a connection that trickles its
    /// head is closed without holding up anyone else. It is also a body's
    /// grace: after it, a body must have arrived at 32 KiB/s on average.
    #[arg(long, env = "NOCTURNE_HEADER_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,

    /// Close keep-alive connections idle this long, e.g. 60s (more than 0, at most 1h) [default: 60s]
    ///
    /// A request body of which nothing arrives for this long gets 408.
    #[arg(long, env = "NOCTURNE_KEEPALIVE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub keepalive_timeout: Option<Duration>,

    /// Override one function's setting, e.g. echo.max_workers=8 (repeatable) [env: NOCTURNE_SET]
    ///
    /// KEY is any [[functions]] key except name; FUNCTION.env.NAME=VALUE sets
    /// an environment variable of its workers. VALUE is read as TOML when it
    /// is valid TOML (8, true, ["./f", "-v"]) and as a string otherwise (5s,
    /// echo). Setting builtin or command replaces the function's program; a
    /// relative command path is relative to the working directory.
    ///
    /// NOCTURNE_SET holds more, separated by ';' (write '\;' for a ';' in a
    /// value); they apply before the flags, so a --set of the same setting wins.
    // The help names TOML's `[[functions]]` table, which rustdoc would read
    // as a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long = "set", value_name = "FUNCTION.KEY=VALUE")]
    pub set: Vec<FunctionOverride>,
}

/// The variable of `--set` entries. clap's own `env` would drop it as soon
/// as one `--set` is given; it is merged instead (see [`ServeArgs::overrides`]).
pub const SET_ENV: &str = "NOCTURNE_SET";

impl ServeArgs {
    /// The flag (or environment) values as configuration overrides, with
    /// the `NOCTURNE_SET` entries of this process's environment.
    pub fn overrides(&self) -> Result<Overrides, ConfigError> {
        let set_env = match std::env::var_os(SET_ENV) {
            None => None,
            Some(value) => Some(
                value
                    .into_string()
                    .map_err(|_| ConfigError::invalid(SET_ENV, "is not valid UTF-8"))?,
            ),
        };
        self.overrides_with(set_env.as_deref())
    }

    /// The overrides with `set_env` as the value of `NOCTURNE_SET`: its
    /// entries first, then the `--set` flags, so that a flag wins over the
    /// variable for the same setting and the variable's other settings stay.
    pub fn overrides_with(&self, set_env: Option<&str>) -> Result<Overrides, ConfigError> {
        let mut functions = match set_env {
            Some(list) => parse_set_list(list)?,
            None => Vec::new(),
        };
        functions.extend(self.set.iter().cloned());
        Ok(Overrides {
            listen: self.listen,
            net: self.net,
            tap: self.tap.clone(),
            raw: self.raw.clone(),
            ip: self.ip.clone(),
            gateway: self.gateway,
            io_cores: self.io_cores.clone(),
            worker_cores: self.worker_cores.clone(),
            poll: self.poll,
            spin_us: self.spin_us,
            spin_max_us: self.spin_max_us,
            worker_poll: self.worker_poll,
            worker_spin_us: self.worker_spin_us,
            delegate_wakes: self.delegate_wakes,
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            drain_timeout: self.drain_timeout,
            header_timeout: self.header_timeout,
            keepalive_timeout: self.keepalive_timeout,
            functions,
        })
    }

    /// Loads the config file (or the embedded default), applies the flags
    /// and validates against this process's allowed cores.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let allowed = allowed_cores().map_err(ConfigError::Affinity)?;
        self.resolve_with(&allowed)
    }

    /// [`ServeArgs::resolve`] against a given allowed core set (for tests,
    /// and for checking a config meant for another machine).
    pub fn resolve_with(&self, allowed_cores: &[usize]) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), &self.overrides()?, allowed_cores)
    }
}

/// `NOCTURNE_*` variables that are not `serve` settings but are ours all the
/// same: the worker contract, and knobs of the test suite and benchmarks.
const OTHER_NOCTURNE_VARS: &[&str] = &[
    SET_ENV,
    "NOCTURNE_CONTROL_FD",
    "NOCTURNE_FUNCTION",
    "NOCTURNE_SKIP_NETNS",
    "NOCTURNE_SKIP_MULTICORE",
    "NOCTURNE_BENCH_COMMIT",
    "NOCTURNE_TEST_CHILD",
    crate::worker::SPAWNER_IDLE_RETIRE_ENV,
    "NOCTURNE_IPC_STREAM_N",
    "NOCTURNE_IPC_CHILD_FD",
];

/// A warning for each `NOCTURNE_*` variable in `vars` that no setting reads:
/// a misspelt one would otherwise be ignored without a word, unlike a
/// misspelt flag or config key.
pub fn unknown_env_warnings(vars: impl Iterator<Item = String>) -> Vec<String> {
    let command = ServeArgs::augment_args(clap::Command::new("serve"));
    let settings: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env()?.to_str().map(str::to_string))
        .chain([SET_ENV.to_owned()])
        .collect();
    let mut warnings = Vec::new();
    for var in vars.filter(|v| v.starts_with("NOCTURNE_")) {
        if settings.contains(&var) || OTHER_NOCTURNE_VARS.contains(&var.as_str()) {
            continue;
        }
        let hint = crate::config::closest(&var, settings.iter().map(String::as_str))
            .map(|c| format!(" (did you mean {c}?)"))
            .unwrap_or_default();
        warnings.push(format!(
            "nocturne: warning: {var} is not a nocturne setting and is ignored{hint}; \
             `nocturne serve --help` lists each setting's variable"
        ));
    }
    warnings
}

/// Prints [`unknown_env_warnings`] for this process's environment.
pub fn warn_about_unknown_env() {
    let names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
    for warning in unknown_env_warnings(names) {
        eprintln!("{warning}");
    }
}

/// `nocturne config …`
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a configuration file and summarize what it resolves to
    ///
    /// Exits non-zero with the offending key and its line:column when the
    /// file is invalid. Core sets are checked against this machine's allowed
    /// cores unless --cores names another machine's.
    Check {
        /// The configuration file.
        file: PathBuf,
        /// Check against these allowed cores instead of this process's, e.g. 0-15
        #[arg(long, value_name = "CORES")]
        cores: Option<CoreSet>,
    },
    /// Print the embedded default configuration, a commented example to start from
    Default,
    /// Summarize the configuration `nocturne serve` would run with these flags and environment
    ///
    /// The summary is for reading; with --toml, the same effective
    /// configuration is printed as a complete config file that `config check`
    /// accepts and `serve --config` runs as it is.
    Show(Box<ShowArgs>),
}

/// Arguments of `nocturne config show`: `serve`'s, and the output form.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Print a complete configuration file (TOML) with every setting spelt
    /// out, instead of the summary
    #[arg(long, help_heading = "Output")]
    pub toml: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Prints the configuration's warnings (settings with no effect, a bare
/// command that PATH finds somewhere unexpected) to stderr.
pub fn print_config_warnings(config: &Config) {
    for warning in &config.warnings {
        eprintln!("nocturne: warning: {warning}");
    }
}

/// Runs a `nocturne config` subcommand.
pub fn config_command(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check { file, cores } => {
            let allowed = match cores {
                Some(cores) => cores.cores().to_vec(),
                None => allowed_cores().map_err(ConfigError::Affinity)?,
            };
            let config = Config::load(Some(&file), &Overrides::default(), &allowed)?;
            println!("{}: ok", file.display());
            print!("{}", config.summary());
            print_config_warnings(&config);
            Ok(())
        }
        ConfigCommand::Default => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(())
        }
        ConfigCommand::Show(args) => {
            let config = args.serve.resolve()?;
            if args.toml {
                print!("{}", config.to_toml());
            } else {
                print!("{}", config.summary());
            }
            print_config_warnings(&config);
            warn_about_unknown_env();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("nocturne").chain(args.iter().copied()))
            .map(|c| c.serve)
    }

    #[test]
    fn every_flag_parses_into_its_override() {
        let args = parse(&[
            "--listen=0.0.0.0:9",
            "--net=kernel",
            "--io-cores=1",
            "--worker-cores=0",
            "--poll=spin",
            "--spin-us=5",
            "--worker-poll=park",
            "--worker-spin-us=6",
            "--spin-max-us=3000",
            "--delegate-wakes=false",
            "--max-connections=7",
            "--max-header-bytes=16KiB",
            "--drain-timeout=250ms",
            "--set=echo.max_workers=1",
            "--set",
            "echo.env.A=b",
        ])
        .unwrap();
        let ov = args.overrides_with(None).unwrap();
        assert_eq!(ov.listen.unwrap().to_string(), "0.0.0.0:9");
        assert_eq!(ov.net, Some(NetBackend::Kernel));
        assert_eq!(ov.io_cores.unwrap().cores(), [1]);
        assert_eq!(ov.worker_cores.unwrap().cores(), [0]);
        assert_eq!(ov.poll, Some(PollMode::Spin));
        assert_eq!(ov.spin_us, Some(5));
        assert_eq!(ov.spin_max_us, Some(3000));
        assert_eq!(ov.worker_poll, Some(WorkerPoll::Park));
        assert_eq!(ov.worker_spin_us, Some(6));
        assert_eq!(ov.delegate_wakes, Some(false));
        assert_eq!(ov.max_connections, Some(7));
        assert_eq!(ov.max_header_bytes, Some(16384));
        assert_eq!(ov.drain_timeout, Some(Duration::from_millis(250)));
        assert_eq!(ov.functions.len(), 2);

        let config = args.resolve_with(&[0, 1]).unwrap();
        assert_eq!(config.poll, PollMode::Spin);
        assert_eq!(config.worker_poll, WorkerPoll::Park);
        assert!(!config.delegate_wakes);
        assert_eq!(config.function("echo").unwrap().max_workers, 1);
        assert_eq!(config.function("echo").unwrap().env["A"], "b");
    }

    #[test]
    fn bad_flag_values_are_refused_by_the_parser() {
        for (args, needle) in [
            (&["--listen=localhost:80"][..], "not IP:PORT"),
            (&["--io-cores=3-1"], "runs backwards"),
            (&["--worker-cores=1,1"], "more than once"),
            (&["--poll=fast"], "fast"),
            (&["--drain-timeout=10"], "has no unit"),
            (&["--max-header-bytes=lots"], "lots"),
            (&["--spin-us=-1"], "-1"),
            (
                &["--delegate-wakes", "maybe"],
                "invalid value 'maybe' for '--delegate-wakes <BOOL>'",
            ),
            (&["--delegate-wakes=1"], "[possible values: true, false]"),
            (
                &["--delegate-wakes"],
                "a value is required for '--delegate-wakes <BOOL>'",
            ),
            (&["--set=echo"], "FUNCTION.KEY=VALUE"),
            (&["--set=echo.colour=red"], "unknown function setting"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn delegate_wakes_takes_a_value_not_a_bare_switch() {
        let given = |args: &[&str]| parse(args).unwrap().delegate_wakes;
        assert_eq!(given(&["--delegate-wakes", "false"]), Some(false));
        assert_eq!(given(&["--delegate-wakes", "true"]), Some(true));
        assert_eq!(given(&["--delegate-wakes=false"]), Some(false));
        // Only meaningful when NOCTURNE_DELEGATE_WAKES is unset, as in CI
        // (tests/config_env.rs sets it in its own process).
        if std::env::var_os("NOCTURNE_DELEGATE_WAKES").is_none() {
            assert_eq!(
                given(&[]),
                None,
                "not given: the file or the default decides"
            );
        }
    }

    #[test]
    fn misspelt_environment_variables_are_named_with_a_guess() {
        let vars = [
            "NOCTURNE_POLL",
            "NOCTURNE_POLLL",
            "NOCTURNE_WORKERCORES",
            "NOCTURNE_CONTROL_FD",
            "NOCTURNE_ZZZZZZZZ",
            "PATH",
        ]
        .map(String::from);
        let warnings = unknown_env_warnings(vars.into_iter());
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(warnings[0].contains("NOCTURNE_POLLL is not a nocturne setting"));
        assert!(warnings[0].contains("(did you mean NOCTURNE_POLL?)"));
        assert!(warnings[1].contains("did you mean NOCTURNE_WORKER_CORES?"));
        assert!(!warnings[2].contains("did you mean"), "{}", warnings[2]);
    }

    #[test]
    fn no_flags_means_no_overrides() {
        // Only meaningful when the NOCTURNE_* variables are unset, as in CI;
        // the env tests live in their own process (tests/config_env.rs).
        if std::env::vars().any(|(k, _)| k.starts_with("NOCTURNE_")) {
            return;
        }
        let args = parse(&[]).unwrap();
        let config = args.resolve_with(&[0, 1]).unwrap();
        assert_eq!(
            config,
            Config::load(None, &Overrides::default(), &[0, 1]).unwrap()
        );
    }
}
