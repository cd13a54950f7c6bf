//! [`Config::to_toml`]: the resolved configuration as a configuration file.
//!
//! Every setting is written out, defaults included, so the file says what
//! the engine runs with even after the defaults change, and loading it
//! gives the same [`Config`] (`config show --toml > x.toml` round-trips
//! through `config check x.toml`). Values are written in the forms the
//! parser reads: durations and sizes in their largest exact unit, core lists
//! compressed, strings through `toml`'s own escaping.

use std::fmt::Write as _;

use super::{
    format_duration, format_size, resolve, Config, CoreSet, FunctionSource, PollMode, WorkerPoll,
};

impl Config {
    /// A complete configuration file that resolves to this configuration.
    /// Relative command paths are written resolved (absolute), so the file
    /// can be saved anywhere.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_toml(&mut out);
        out
    }

    fn write_toml(&self, out: &mut String) -> std::fmt::Result {
        writeln!(
            out,
            "# The effective configuration of {}, every setting spelt out\n\
             # (`nocturne config show --toml`). The reference is docs/configuration.md.\n",
            self.origin.name()
        )?;
        writeln!(out, "listen = {}", string(&self.listen.to_string()))?;
        writeln!(out, "net = {}", string(self.net.as_str()))?;
        if let Some(sc) = &self.smoltcp {
            match &sc.device {
                nocturne_net::DeviceSpec::Tap(name) => writeln!(out, "tap = {}", string(name))?,
                nocturne_net::DeviceSpec::Raw(name) => writeln!(out, "raw = {}", string(name))?,
            }
            writeln!(out, "ip = {}", string(&sc.address.to_string()))?;
            if let Some(gateway) = sc.gateway {
                writeln!(out, "gateway = {}", string(&gateway.to_string()))?;
            }
        }
        writeln!(
            out,
            "io_cores = {}",
            string(&CoreSet::format(&self.io_cores))
        )?;
        match &self.worker_cores {
            Some(cores) => writeln!(out, "worker_cores = {}", string(&CoreSet::format(cores)))?,
            // There is no value for "not pinned": it is the key's absence.
            None => writeln!(out, "# worker_cores: not pinned")?,
        }
        writeln!(out, "poll = {}", string(self.poll.as_str()))?;
        // A budget the mode never reads is left out (setting it would only
        // draw a warning).
        match self.poll {
            PollMode::Adaptive => {
                writeln!(out, "spin_us = {}", self.spin_us)?;
                writeln!(out, "spin_max_us = {}", self.spin_max_us)?
            }
            mode => writeln!(
                out,
                "# spin_us, spin_max_us: unused with poll = \"{}\"",
                mode.as_str()
            )?,
        }
        writeln!(out, "worker_poll = {}", string(self.worker_poll.as_str()))?;
        match self.worker_poll {
            WorkerPoll::Park => {
                writeln!(out, "# worker_spin_us: unused with worker_poll = \"park\"")?
            }
            _ => writeln!(out, "worker_spin_us = {}", self.worker_spin_us)?,
        }
        // Only yielding workers that share one core are seated on a wake
        // board.
        match self.worker_poll {
            _ if resolve::wake_board_applies(self.worker_poll, self.worker_cores.as_deref()) => {
                writeln!(out, "delegate_wakes = {}", self.delegate_wakes)?
            }
            WorkerPoll::Yield => writeln!(
                out,
                "# delegate_wakes: unused unless the workers share one core (worker_cores)"
            )?,
            mode => writeln!(
                out,
                "# delegate_wakes: unused with worker_poll = \"{}\"",
                mode.as_str()
            )?,
        }
        writeln!(out, "max_connections = {}", self.max_connections)?;
        writeln!(
            out,
            "max_header_bytes = {}",
            string(&format_size(self.max_header_bytes as u64))
        )?;
        for (key, value) in [
            ("drain_timeout", self.drain_timeout),
            ("header_timeout", self.header_timeout),
            ("keepalive_timeout", self.keepalive_timeout),
        ] {
            writeln!(out, "{key} = {}", string(&format_duration(value)))?;
        }

        for f in &self.functions {
            writeln!(out, "\n[[functions]]")?;
            writeln!(out, "name = {}", string(&f.name))?;
            match &f.source {
                FunctionSource::Builtin(name) => writeln!(out, "builtin = {}", string(name))?,
                FunctionSource::Command(argv) => {
                    let args: Vec<String> = argv.iter().map(|a| string(a)).collect();
                    writeln!(out, "command = [{}]", args.join(", "))?;
                }
            }
            writeln!(out, "min_workers = {}", f.min_workers)?;
            writeln!(out, "max_workers = {}", f.max_workers)?;
            writeln!(out, "timeout = {}", string(&format_duration(f.timeout)))?;
            writeln!(
                out,
                "max_payload = {}",
                string(&format_size(f.max_payload as u64))
            )?;
            writeln!(out, "allow_get = {}", f.allow_get)?;
            writeln!(
                out,
                "idle_timeout = {}",
                string(&format_duration(f.idle_timeout))
            )?;
            writeln!(out, "max_queue = {}", f.max_queue)?;
            writeln!(out, "max_call_depth = {}", f.max_call_depth)?;
            // `{:?}` keeps the decimal point (`1.0`): TOML reads `1` as an integer.
            writeln!(out, "concurrency_coef = {:?}", f.concurrency_coef)?;
            if !f.env.is_empty() {
                writeln!(out, "[functions.env]")?;
                for (key, value) in &f.env {
                    writeln!(out, "{} = {}", key_text(key), string(value))?;
                }
            }
        }
        Ok(())
    }
}

/// A TOML string literal, escaped as the `toml` crate escapes it.
fn string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// A TOML key: bare when it can be, else quoted.
fn key_text(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        string(key)
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    const CORES: &[usize] = &[0, 1, 2, 3];

    /// `config` written out and read back (as a file elsewhere) is
    /// `config`, but for budgets its modes never read, and without warnings.
    #[track_caller]
    fn round_trips(config: &Config) {
        let text = config.to_toml();
        let origin = ConfigOrigin::File(PathBuf::from("/nonexistent/elsewhere/x.toml"));
        let back = Config::from_toml(&text, origin.clone(), &Overrides::default(), CORES)
            .unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
        assert_eq!(back.warnings, [], "\n{text}");
        let mut expected = Config {
            origin,
            warnings: Vec::new(),
            ..config.clone()
        };
        if expected.poll != PollMode::Adaptive {
            expected.spin_us = back.spin_us;
            expected.spin_max_us = back.spin_max_us;
        }
        if expected.worker_poll == WorkerPoll::Park {
            expected.worker_spin_us = back.worker_spin_us;
        }
        if !resolve::wake_board_applies(expected.worker_poll, expected.worker_cores.as_deref()) {
            expected.delegate_wakes = back.delegate_wakes;
        }
        assert_eq!(back, expected, "\n{text}");
    }

    fn load(text: &str) -> Config {
        let origin = ConfigOrigin::File(PathBuf::from("/tmp/t.toml"));
        Config::from_toml(text, origin, &Overrides::default(), CORES).unwrap()
    }

    #[test]
    fn the_embedded_default_round_trips() {
        round_trips(&Config::load(None, &Overrides::default(), CORES).unwrap());
    }

    #[test]
    fn every_setting_round_trips() {
        round_trips(&load(
            r#"
listen = "[::1]:0"
io_cores = "2-3"
poll = "spin"
spin_us = 7
worker_poll = "park"
max_connections = 3
max_header_bytes = 1500
drain_timeout = "1500ms"
header_timeout = "1us"
keepalive_timeout = "1h"

[[functions]]
name = "odd-env"
command = ["/bin/sh", "-c", "echo \"quoted\" 'single' \\ back"]
min_workers = 0
max_workers = 2
timeout = "1m5s"
max_payload = "3KiB"
allow_get = true
idle_timeout = "90s"
max_queue = 0
max_call_depth = 1
concurrency_coef = 0.125
[functions.env]
"A B" = "x\ny"
"é" = "\u001b[31m"
PLAIN = ""

[[functions]]
name = "e"
builtin = "echo"
concurrency_coef = 3
"#,
        ));
    }

    #[test]
    fn delegate_wakes_round_trips_with_yielding_workers_only() {
        let one_core = "worker_cores = \"0\"\n[[functions]]\nname = \"e\"\nbuiltin = \"echo\"\n";
        let on = load(one_core);
        assert_eq!(on.worker_poll, WorkerPoll::Yield);
        assert!(on.to_toml().contains("\ndelegate_wakes = true\n"));
        round_trips(&on);
        let off = load(&format!("delegate_wakes = false\n{one_core}"));
        assert!(!off.delegate_wakes);
        assert!(off.to_toml().contains("\ndelegate_wakes = false\n"));
        round_trips(&off);
        // Unused by parking (and spinning) workers: not written, so that
        // loading the file draws no warning.
        let park =
            load("worker_poll = \"park\"\n[[functions]]\nname = \"e\"\nbuiltin = \"echo\"\n");
        let text = park.to_toml();
        assert!(
            text.contains("\n# delegate_wakes: unused with worker_poll = \"park\"\n"),
            "{text}"
        );
        round_trips(&park);
        // Yielding workers on several cores: not seated, not written.
        let floating = load("[[functions]]\nname = \"e\"\nbuiltin = \"echo\"\n");
        assert_eq!(floating.worker_poll, WorkerPoll::Yield);
        let text = floating.to_toml();
        assert!(
            text.contains("\n# delegate_wakes: unused unless the workers share one core"),
            "{text}"
        );
        round_trips(&floating);
    }

    #[test]
    fn smoltcp_settings_round_trip() {
        round_trips(&load(
            "net = \"smoltcp\"\ntap = \"tap0\"\nip = \"192.0.2.2/24\"\ngateway = \"192.0.2.1\"\n\
             [[functions]]\nname = \"e\"\nbuiltin = \"echo\"\n",
        ));
        round_trips(&load(
            "net = \"smoltcp\"\nraw = \"veth1\"\nip = \"10.0.0.2/8\"\n\
             [[functions]]\nname = \"e\"\nbuiltin = \"echo\"\n",
        ));
    }

    #[test]
    fn the_stretch_of_an_adaptive_loop_round_trips() {
        let config = load("spin_max_us = 900\n[[functions]]\nname = \"e\"\nbuiltin = \"echo\"\n");
        assert_eq!(config.spin_max_us, 900);
        assert!(config.to_toml().contains("\nspin_max_us = 900\n"));
        round_trips(&config);
        let text =
            load("poll = \"block\"\n[[functions]]\nname = \"e\"\nbuiltin = \"echo\"\n").to_toml();
        assert!(
            text.contains("\n# spin_us, spin_max_us: unused with poll = \"block\"\n"),
            "{text}"
        );
    }

    #[test]
    fn it_says_every_setting() {
        let text = Config::load(None, &Overrides::default(), CORES)
            .unwrap()
            .to_toml();
        for key in [
            "listen",
            "net",
            "io_cores",
            "poll",
            "spin_us",
            "spin_max_us",
            "worker_poll",
            "worker_spin_us",
            "max_connections",
            "max_header_bytes",
            "drain_timeout",
            "header_timeout",
            "keepalive_timeout",
            "min_workers",
            "max_workers",
            "timeout",
            "max_payload",
            "allow_get",
            "idle_timeout",
            "max_queue",
            "max_call_depth",
            "concurrency_coef",
        ] {
            assert!(text.contains(&format!("\n{key} = ")), "{key}\n{text}");
        }
        // The default's workers go on any core: no wake board, so the
        // key is a comment there (delegate_wakes_round_trips… writes it).
        assert!(text.contains("\n# delegate_wakes: "), "{text}");
    }
}
