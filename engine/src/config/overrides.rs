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
use super::error::ConfigError;
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
    pub worker_poll: Option<WorkerPoll>,
    pub worker_spin_us: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<u64>,
    pub drain_timeout: Option<Duration>,
    pub header_timeout: Option<Duration>,
    pub keepalive_timeout: Option<Duration>,
    /// `--set` patches, applied in order (a later one wins).
    pub functions: Vec<FunctionOverride>,
}

/// One `--set FUNCTION.KEY=VALUE`: a setting of one configured function.
///
/// `VALUE` is read as a TOML value when it is one (`8`, `true`,
/// `["./f", "-v"]`, `"quoted"`) and as a plain string otherwise (`5s`,
/// `echo`), so shells need no extra quoting for the common cases.
/// `FUNCTION.env.NAME=VALUE` sets one environment variable of the
/// function's workers; its value is always taken literally.
#[derive(Debug, Clone)]
pub struct FunctionOverride {
    function: String,
    arg: String,
    patch: FileFunction,
}

impl FunctionOverride {
    /// The function the override is for.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The override as the user wrote it.
    pub fn arg(&self) -> &str {
        &self.arg
    }

    pub(crate) fn patch(&self) -> &FileFunction {
        &self.patch
    }
}

impl FromStr for FunctionOverride {
    type Err = ConfigError;

    fn from_str(arg: &str) -> Result<Self, Self::Err> {
        let fail = |msg: String| ConfigError::Override {
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
            [_] => toml::Value::deserialize(toml::de::ValueDeserializer::new(value))
                .unwrap_or_else(|_| toml::Value::String(value.to_owned())),
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
            match msg.strip_prefix("unknown field ") {
                Some(rest) => fail(format!("unknown function setting {rest}")),
                None => fail(format!("{}: {msg}", key.join("."))),
            }
        })?;
        Ok(FunctionOverride {
            function,
            arg: arg.to_owned(),
            patch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(arg: &str) -> FileFunction {
        arg.parse::<FunctionOverride>().unwrap().patch
    }

    fn refusal(arg: &str) -> String {
        match arg.parse::<FunctionOverride>() {
            Err(ConfigError::Override { arg: a, msg }) => {
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
        assert!(
            msg.contains("unknown function setting `max_wrkers`"),
            "{msg}"
        );
        let msg = refusal("echo.max_workers=-1");
        assert!(msg.starts_with("max_workers:"), "{msg}");
        let msg = refusal("echo.max_workers=lots");
        assert!(msg.contains("lots"), "{msg}");
        let msg = refusal("echo.timeout=10");
        assert!(msg.contains("has no unit"), "{msg}");
        assert!(refusal("echo.command=./f").contains("command"));
    }
}
