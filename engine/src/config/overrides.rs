//! Command-line overrides: the typed values of the `serve` flags, and
//! `--set FUNCTION.KEY=VALUE` patches of one function's settings.
//!
//! Overrides are plain data so that resolution can be tested without clap
//! and without the environment; `cli::ServeArgs` fills them.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::cores::CoreSet;
use super::error::{closest, parse_unknown_field, ConfigError};
use super::file::FileFunction;
use super::{NetBackend, PollMode, WorkerPoll};

/// Values that replace the file's (or the built-in default's); `None`
/// leaves the setting alone.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub net: Option<NetBackend>,
    pub tap: Option<String>,
    pub raw: Option<String>,
    pub ip: Option<String>,
    pub gateway: Option<std::net::Ipv4Addr>,
    pub io_cores: Option<CoreSet>,
    pub worker_cores: Option<CoreSet>,
    pub poll: Option<PollMode>,
    pub spin_us: Option<u64>,
    pub spin_max_us: Option<u64>,
    pub worker_poll: Option<WorkerPoll>,
    pub worker_spin_us: Option<u64>,
    pub delegate_wakes: Option<bool>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<u64>,
    pub drain_timeout: Option<Duration>,
    pub header_timeout: Option<Duration>,
    pub keepalive_timeout: Option<Duration>,
    /// `--set` patches, applied in order (a later one wins).
    pub functions: Vec<FunctionOverride>,
}

/// Where a `--set`-style override came from; errors name it so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideSource {
    /// A `--set` flag.
    Flag,
    /// An entry of the `NOCTURNE_SET` environment variable.
    Env,
}

impl std::fmt::Display for OverrideSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OverrideSource::Flag => "--set",
            OverrideSource::Env => "NOCTURNE_SET entry",
        })
    }
}

/// One `--set FUNCTION.KEY=VALUE`: a setting of one configured function.
///
/// `VALUE` is read as a TOML value when it is one (`8`, `true`,
/// `["./f", "-v"]`, `"quoted"`) and as a plain string otherwise (`5s`,
/// `echo`), so shells need no extra quoting for the common cases; blanks
/// around it are dropped. `FUNCTION.env.NAME=VALUE` sets one environment
/// variable of the function's workers; its value is always taken
/// literally.
#[derive(Debug, Clone)]
pub struct FunctionOverride {
    function: String,
    /// The key path as written after the function: `max_workers`, `env.A`.
    key: String,
    arg: String,
    source: OverrideSource,
    patch: FileFunction,
}

impl FunctionOverride {
    /// Parses one override given by `source`.
    pub fn parse(arg: &str, source: OverrideSource) -> Result<Self, ConfigError> {
        let fail = |msg: String| ConfigError::Override {
            via: source,
            arg: arg.to_owned(),
            msg,
        };
        let (path, value) = arg
            .split_once('=')
            .ok_or_else(|| fail("expected FUNCTION.KEY=VALUE, e.g. echo.max_workers=8".into()))?;
        let mut segments = path.trim().split('.');
        let function = segments.next().unwrap_or_default().to_owned();
        let key: Vec<&str> = segments.collect();
        let is_bare_key = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !is_bare_key(&function) || key.is_empty() || !key.iter().all(|k| is_bare_key(k)) {
            return Err(fail(
                "expected FUNCTION.KEY=VALUE, e.g. echo.max_workers=8 or echo.env.RUST_LOG=debug"
                    .into(),
            ));
        }
        let value = match key.as_slice() {
            ["name"] => return Err(fail("a function cannot be renamed with --set".into())),
            ["env", _] => toml::Value::String(value.to_owned()),
            // `8 ` is meant as 8: blanks around a value are never part of it.
            [_] => {
                let value = value.trim();
                toml::Value::deserialize(toml::de::ValueDeserializer::new(value))
                    .unwrap_or_else(|_| toml::Value::String(value.to_owned()))
            }
            _ => {
                return Err(fail(format!(
                    "`{}` is not a function setting (only env takes a sub-key: FUNCTION.env.NAME=VALUE)",
                    key.join(".")
                )))
            }
        };
        // Nest the value under its key path: {max_workers = 8} or {env = {NAME = "v"}}.
        let table = key.iter().rev().fold(value, |inner, &k| {
            toml::Value::Table(toml::Table::from_iter([(k.to_owned(), inner)]))
        });
        let patch = FileFunction::deserialize(table).map_err(|err| {
            let msg = err.message().trim_end();
            match parse_unknown_field(msg) {
                Some((unknown, expected)) => fail(unknown_setting(&unknown, &expected)),
                None => fail(format!("{}: {msg}", key.join("."))),
            }
        })?;
        Ok(FunctionOverride {
            function,
            key: key.join("."),
            arg: arg.to_owned(),
            source,
            patch,
        })
    }

    /// The function the override is for.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The key path it sets: `max_workers`, `env.RUST_LOG`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The override as the user wrote it.
    pub fn arg(&self) -> &str {
        &self.arg
    }

    /// Whether it came from `--set` or `NOCTURNE_SET`.
    pub fn source(&self) -> OverrideSource {
        self.source
    }

    /// An error about the value this override set, naming it as given.
    pub(crate) fn invalid(&self, msg: impl Into<String>) -> ConfigError {
        ConfigError::Override {
            via: self.source,
            arg: self.arg.clone(),
            msg: msg.into(),
        }
    }

    pub(crate) fn patch(&self) -> &FileFunction {
        &self.patch
    }
}

impl FromStr for FunctionOverride {
    type Err = ConfigError;

    /// Parses a `--set` flag's value.
    fn from_str(arg: &str) -> Result<Self, Self::Err> {
        FunctionOverride::parse(arg, OverrideSource::Flag)
    }
}

/// "unknown function setting `x`; did you mean `y`?", offering only keys
/// that `--set` takes (not `name`).
fn unknown_setting(unknown: &str, expected: &[String]) -> String {
    let settable: Vec<&str> = expected
        .iter()
        .map(String::as_str)
        .filter(|k| *k != "name")
        .collect();
    match closest(unknown, settable.iter().copied()) {
        Some(close) => format!("unknown function setting `{unknown}`; did you mean `{close}`?"),
        None => format!(
            "unknown function setting `{unknown}` (settings: {})",
            settable.join(", ")
        ),
    }
}

/// Parses the `NOCTURNE_SET` variable: overrides separated by `;`.
///
/// Blanks around an entry and empty entries (`a=1;;b=2;`, or an exported
/// but empty variable) are ignored, so the variable can be built up by
/// shell concatenation. `\;` stands for a `;` inside a value and `\\` for
/// a backslash; any other backslash is taken literally (`a\d` stays `a\d`).
pub fn parse_set_list(text: &str) -> Result<Vec<FunctionOverride>, ConfigError> {
    split_set_list(text)
        .iter()
        .map(|entry| entry.trim())
        .filter(|entry| !entry.is_empty())
        .map(|entry| FunctionOverride::parse(entry, OverrideSource::Env))
        .collect()
}

/// Splits at each `;` not escaped by a backslash, unescaping `\;` and `\\`.
fn split_set_list(text: &str) -> Vec<String> {
    let mut entries = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(&next @ (';' | '\\'))) => {
                current.push(next);
                chars.next();
            }
            (';', _) => entries.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    entries.push(current);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(arg: &str) -> FileFunction {
        arg.parse::<FunctionOverride>().unwrap().patch
    }

    fn refusal(arg: &str) -> String {
        match arg.parse::<FunctionOverride>() {
            Err(ConfigError::Override { arg: a, msg, .. }) => {
                assert_eq!(a, arg);
                msg
            }
            other => panic!("{arg}: {other:?}"),
        }
    }

    #[test]
    fn values_read_as_toml_or_as_plain_strings() {
        assert_eq!(patch("echo.max_workers=8").max_workers, Some(8));
        assert_eq!(patch("echo.allow_get=true").allow_get, Some(true));
        assert_eq!(patch("echo.timeout=5s").timeout.unwrap().0.as_secs(), 5);
        assert_eq!(patch("echo.timeout=\"5s\"").timeout.unwrap().0.as_secs(), 5);
        assert_eq!(patch("echo.builtin=bar").builtin.as_deref(), Some("bar"));
        assert_eq!(
            patch("echo.max_payload=2MiB").max_payload.unwrap().0,
            2 << 20
        );
        assert_eq!(
            patch("echo.concurrency_coef=0.5").concurrency_coef,
            Some(0.5)
        );
        assert_eq!(
            patch(r#"my-fn.command=["./f", "-v"]"#).command.unwrap().0,
            ["./f", "-v"]
        );
        let o: FunctionOverride = "my-fn.max_queue=3".parse().unwrap();
        assert_eq!(o.function(), "my-fn");
        assert_eq!(o.arg(), "my-fn.max_queue=3");
    }

    #[test]
    fn blanks_around_a_value_are_dropped_but_env_values_are_literal() {
        assert_eq!(patch("echo.max_workers= 8 ").max_workers, Some(8));
        assert_eq!(patch("echo.timeout = 5s").timeout.unwrap().0.as_secs(), 5);
        assert_eq!(patch("echo.env.PAD= x ").env["PAD"], " x ");
    }

    #[test]
    fn env_values_are_literal() {
        let env = patch("echo.env.RUST_LOG=debug").env;
        assert_eq!(env["RUST_LOG"], "debug");
        let env = patch("echo.env.N=5").env;
        assert_eq!(env["N"], "5");
        let env = patch("echo.env.EMPTY=").env;
        assert_eq!(env["EMPTY"], "");
        let env = patch("echo.env.EQ=a=b").env;
        assert_eq!(env["EQ"], "a=b");
    }

    #[test]
    fn malformed_overrides_are_refused() {
        assert!(refusal("echo.max_workers").contains("FUNCTION.KEY=VALUE"));
        assert!(refusal("echo=3").contains("FUNCTION.KEY=VALUE"));
        assert!(refusal(".x=3").contains("FUNCTION.KEY=VALUE"));
        assert!(refusal("echo..x=3").contains("FUNCTION.KEY=VALUE"));
        assert!(refusal("echo.a b=3").contains("FUNCTION.KEY=VALUE"));
        assert!(refusal("echo.name=x").contains("renamed"));
        assert!(refusal("echo.timeout.x=1").contains("only env takes a sub-key"));
        assert!(refusal("echo.env=1").contains("env"));
        let msg = refusal("echo.max_wrkers=3");
        assert_eq!(
            msg,
            "unknown function setting `max_wrkers`; did you mean `max_workers`?"
        );
        // `name` is a key of the file but not of --set: never offered.
        let msg = refusal("echo.nme=x");
        assert!(!msg.contains("name"), "{msg}");
        let msg = refusal("echo.colour=red");
        assert!(
            msg.starts_with("unknown function setting `colour` (settings: builtin, command,"),
            "{msg}"
        );
        assert!(!msg.contains("name"), "{msg}");
        let msg = refusal("echo.max_workers=-1");
        assert!(msg.starts_with("max_workers:"), "{msg}");
        let msg = refusal("echo.max_workers=lots");
        assert!(msg.contains("lots"), "{msg}");
        let msg = refusal("echo.timeout=10");
        assert!(msg.contains("has no unit"), "{msg}");
        assert!(refusal("echo.command=./f").contains("command"));
    }
}

#[cfg(test)]
mod set_list_tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        parse_set_list(text)
            .unwrap()
            .iter()
            .map(|o| {
                assert_eq!(o.source(), OverrideSource::Env);
                o.arg().to_owned()
            })
            .collect()
    }

    #[test]
    fn entries_are_trimmed_and_empty_ones_ignored() {
        assert_eq!(args(""), Vec::<String>::new());
        assert_eq!(args(" ; ;"), Vec::<String>::new());
        assert_eq!(
            args(" echo.max_workers=8 ; echo.timeout=3s;"),
            ["echo.max_workers=8", "echo.timeout=3s"]
        );
        let list = parse_set_list(" echo.max_workers=8 ;").unwrap();
        assert_eq!(list[0].patch().max_workers, Some(8));
        assert_eq!(list[0].key(), "max_workers");
    }

    #[test]
    fn a_backslash_escapes_a_semicolon_or_itself_only() {
        let list = parse_set_list(r"echo.env.A=a\;b;echo.env.B=c\\;echo.env.C=x\d").unwrap();
        let env: Vec<(&str, &str)> = list
            .iter()
            .flat_map(|o| o.patch().env.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, [("A", "a;b"), ("B", "c\\"), ("C", r"x\d")]);
    }

    #[test]
    fn a_bad_entry_is_named_as_an_entry_of_the_variable() {
        match parse_set_list("echo.max_workers=2;oops") {
            Err(e @ ConfigError::Override { .. }) => {
                assert_eq!(
                    e.to_string(),
                    "invalid NOCTURNE_SET entry `oops`: expected FUNCTION.KEY=VALUE, e.g. echo.max_workers=8"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
