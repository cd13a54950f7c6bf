//! The configuration file schema as written: every key optional, every
//! table closed (`deny_unknown_fields`), values already in their typed form
//! (a bad duration or core list fails here, with its line). Defaults and
//! cross-checks are applied later by [`super::resolve`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::cores::CoreSet;
use super::error::ConfigError;
use super::units::{ByteSize, HumanDuration};
use super::{NetBackend, PollMode, WorkerPoll};

/// The top level of `nocturne.toml`. Values keep their span so that an
/// error about one (found when resolving) can name its line, like the
/// errors found while parsing do.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub listen: Option<Spanned<ListenAddr>>,
    pub net: Option<Spanned<NetBackend>>,
    pub tap: Option<Spanned<String>>,
    pub raw: Option<Spanned<String>>,
    pub ip: Option<Spanned<String>>,
    pub gateway: Option<Spanned<std::net::Ipv4Addr>>,
    pub io_cores: Option<Spanned<CoreSet>>,
    pub worker_cores: Option<Spanned<CoreSet>>,
    pub poll: Option<Spanned<PollMode>>,
    pub spin_us: Option<Spanned<u64>>,
    pub spin_max_us: Option<Spanned<u64>>,
    pub worker_poll: Option<Spanned<WorkerPoll>>,
    pub worker_spin_us: Option<Spanned<u64>>,
    pub delegate_wakes: Option<Spanned<bool>>,
    pub max_connections: Option<Spanned<usize>>,
    pub max_header_bytes: Option<Spanned<ByteSize>>,
    pub drain_timeout: Option<Spanned<HumanDuration>>,
    pub header_timeout: Option<Spanned<HumanDuration>>,
    pub keepalive_timeout: Option<Spanned<HumanDuration>>,
    #[serde(default, deserialize_with = "function_array")]
    pub functions: Vec<Spanned<FileFunction>>,
}

/// One `[[functions]]` entry. `name` is optional here only so that the same
/// type can carry a `--set` patch; [`super::resolve`] requires it for
/// file entries.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileFunction {
    pub name: Option<String>,
    pub builtin: Option<String>,
    pub command: Option<Argv>,
    pub min_workers: Option<usize>,
    pub max_workers: Option<usize>,
    pub timeout: Option<HumanDuration>,
    pub max_payload: Option<ByteSize>,
    pub allow_get: Option<bool>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub idle_timeout: Option<HumanDuration>,
    pub max_queue: Option<usize>,
    pub max_call_depth: Option<u32>,
    pub concurrency_coef: Option<f64>,
}

impl FileFunction {
    /// Applies a `--set` patch: set keys replace, `env` entries are added
    /// (replacing equal keys), and setting `builtin` or `command` replaces
    /// the function's source.
    pub fn apply(&mut self, patch: FileFunction) {
        if patch.builtin.is_some() || patch.command.is_some() {
            self.builtin = patch.builtin;
            self.command = patch.command;
        }
        macro_rules! take {
            ($($field:ident),*) => { $( if patch.$field.is_some() { self.$field = patch.$field; } )* };
        }
        take!(
            min_workers,
            max_workers,
            timeout,
            max_payload,
            allow_get,
            idle_timeout,
            max_queue,
            max_call_depth,
            concurrency_coef
        );
        self.env.extend(patch.env);
    }
}

/// `functions` must be an array of tables; say how to write one when it is
/// not (`[functions]` instead of `[[functions]]` is the usual slip).
fn function_array<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Spanned<FileFunction>>, D::Error> {
    struct FunctionsVisitor;
    impl<'de> Visitor<'de> for FunctionsVisitor {
        type Value = Vec<Spanned<FileFunction>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of tables: start each function with [[functions]] (two brackets)")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut functions = Vec::new();
            while let Some(function) = seq.next_element()? {
                functions.push(function);
            }
            Ok(functions)
        }
    }
    deserializer.deserialize_seq(FunctionsVisitor)
}

/// `command`: an argv array of strings, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Argv(pub Vec<String>);

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArgvVisitor;
        impl<'de> Visitor<'de> for ArgvVisitor {
            type Value = Argv;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an argv array such as [\"./bin/my-function\", \"--flag\"] (no shell)")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element()? {
                    argv.push(arg);
                }
                Ok(Argv(argv))
            }
        }
        deserializer.deserialize_seq(ArgvVisitor)
    }
}

/// Parses the text of a configuration file; `file` names it in errors.
pub(crate) fn parse(file: &str, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|err| ConfigError::from_toml(&err, file, text))
}

/// `listen`: an `IP:PORT` socket address, with a message that shows the form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenAddr(pub SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AddrVisitor;
        impl Visitor<'_> for AddrVisitor {
            type Value = ListenAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address string such as \"127.0.0.1:8080\" or \"[::1]:8080\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_listen(v).map(ListenAddr).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(AddrVisitor)
    }
}

/// Parses `IP:PORT` (host names are not resolved: an engine binds exactly
/// what it is told).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "`{text}` is not IP:PORT; write e.g. \"127.0.0.1:8080\", \"0.0.0.0:8080\" or \"[::1]:8080\" (host names are not resolved)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse("t.toml", text).unwrap_err()
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let file = parse("t.toml", "").unwrap();
        assert!(file.listen.is_none() && file.functions.is_empty());
    }

    #[test]
    fn reads_every_key() {
        let text = r#"
listen = "0.0.0.0:9000"
net = "kernel"
io_cores = "1"
worker_cores = [0]
poll = "spin"
spin_us = 20
spin_max_us = 3000
worker_poll = "park"
worker_spin_us = 5
delegate_wakes = false
max_connections = 10
max_header_bytes = "16KiB"
drain_timeout = "2s"

[[functions]]
name = "f"
command = ["./f", "--fast"]
min_workers = 2
max_workers = 3
timeout = "1s"
max_payload = 100
allow_get = true
idle_timeout = "1m"
max_queue = 5
max_call_depth = 4
concurrency_coef = 1.5
[functions.env]
RUST_LOG = "debug"
"#;
        let file = parse("t.toml", text).unwrap();
        assert_eq!(file.listen.unwrap().get_ref().0.port(), 9000);
        assert_eq!(file.poll.map(Spanned::into_inner), Some(PollMode::Spin));
        assert_eq!(
            file.worker_poll.map(Spanned::into_inner),
            Some(WorkerPoll::Park)
        );
        assert_eq!(file.delegate_wakes.map(Spanned::into_inner), Some(false));
        assert_eq!(file.spin_max_us.map(Spanned::into_inner), Some(3000));
        assert_eq!(file.max_header_bytes.unwrap().get_ref().0, 16384);
        let f = file.functions[0].get_ref();
        assert_eq!(f.command.as_ref().unwrap().0, ["./f", "--fast"]);
        assert_eq!(f.env["RUST_LOG"], "debug");
        assert_eq!(f.concurrency_coef, Some(1.5));
    }

    #[test]
    fn unknown_top_level_key_names_key_and_line() {
        let e = err("listen = \"127.0.0.1:1\"\n\nlsiten = \"x\"\n");
        match &e {
            ConfigError::UnknownKey { key, at, expected } => {
                assert_eq!(key, "lsiten");
                assert_eq!((at.line, at.col), (3, 1));
                assert!(expected.iter().any(|k| k == "listen"));
            }
            other => panic!("{other:?}"),
        }
        let msg = e.to_string();
        assert!(msg.starts_with("t.toml:3:1: unknown key `lsiten`"), "{msg}");
        assert!(msg.contains("did you mean `listen`"), "{msg}");
    }

    #[test]
    fn unknown_function_key_names_key_and_line() {
        let e = err("[[functions]]\nname = \"a\"\nbuiltin = \"echo\"\nmax_worker = 3\n");
        match &e {
            ConfigError::UnknownKey { key, at, .. } => {
                assert_eq!(key, "max_worker");
                assert_eq!(at.line, 4);
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("did you mean `max_workers`"), "{e}");
    }

    #[test]
    fn bad_values_point_at_their_line() {
        for (text, line, needle) in [
            ("\nio_cores = \"3-1\"", 2, "runs backwards"),
            ("\n\ndrain_timeout = \"10\"", 3, "has no unit"),
            ("poll = \"spinn\"", 1, "spinn"),
            ("listen = \"localhost:80\"", 1, "not IP:PORT"),
            ("listen = 8080", 1, "address string"),
            ("max_connections = -1", 1, "-1"),
            (
                "\ndelegate_wakes = 3",
                2,
                "delegate_wakes: invalid type: integer `3`, expected a boolean",
            ),
            ("delegate_wakes = \"no\"", 1, "delegate_wakes: invalid type"),
            (
                "[[functions]]\nname = \"a\"\nmax_payload = \"1TiB\"",
                3,
                "unknown unit",
            ),
            ("[[functions]]\nenv = { A = 1 }", 2, "string"),
            ("spin_us = ", 1, ""),
            (
                "[functions]\nname = \"x\"",
                1,
                "[[functions]] (two brackets)",
            ),
            ("functions = 3", 1, "[[functions]] (two brackets)"),
            ("[[functions]]\ncommand = \"./x\"", 2, "argv array"),
            ("[[functions]]\ncommand = [1]", 2, "string"),
        ] {
            match err(text) {
                ConfigError::Toml { at, msg } => {
                    assert_eq!(at.line, line, "{text}: {msg}");
                    assert!(msg.contains(needle), "{text}: {msg}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn patches_replace_settings_and_source_and_add_env() {
        let mut f = FileFunction {
            name: Some("f".into()),
            builtin: Some("echo".into()),
            max_workers: Some(2),
            env: [("A".to_owned(), "1".to_owned())].into(),
            ..FileFunction::default()
        };
        f.apply(FileFunction {
            command: Some(Argv(vec!["/bin/true".into()])),
            max_workers: Some(7),
            env: [("B".to_owned(), "2".to_owned())].into(),
            ..FileFunction::default()
        });
        assert_eq!(f.builtin, None);
        assert_eq!(f.command.as_ref().unwrap().0, ["/bin/true"]);
        assert_eq!(f.max_workers, Some(7));
        assert_eq!(f.name.as_deref(), Some("f"));
        assert_eq!(f.env.len(), 2);
        f.apply(FileFunction {
            timeout: Some("1s".parse().unwrap()),
            ..FileFunction::default()
        });
        assert_eq!(f.command.as_ref().unwrap().0, ["/bin/true"]);
        assert_eq!(f.max_workers, Some(7));
    }
}
