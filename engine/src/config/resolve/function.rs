//! `[[functions]]` entries + `--set` patches + defaults → [`FunctionConfig`]s.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::super::error::{closest, ConfigError, ConfigWarning, Location};
use super::super::file::FileFunction;
use super::super::overrides::Overrides;
use super::super::units::{format_duration, format_size};
use super::super::{
    defaults, limits, FunctionConfig, FunctionSource, BUILTIN_FUNCTIONS, RESERVED_ENV_PREFIX,
};
use super::blame::Blame;
use super::{command, Text};

pub(super) fn resolve_functions(
    entries: Vec<Spanned<FileFunction>>,
    text: &Text<'_>,
    ov: &Overrides,
    base_dir: &Path,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Vec<FunctionConfig>, ConfigError> {
    if entries.is_empty() {
        return Err(ConfigError::invalid(
            "functions",
            "no [[functions]] entries; declare at least one \
             (`nocturne config default` prints an example)",
        ));
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut located: Vec<(FileFunction, Blame<'_>)> = Vec::with_capacity(entries.len());
    for entry in entries {
        let at = Location::of_offset(text.file, text.text, entry.span().start);
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
        located.push((function, Blame::new(name, at)));
    }
    for o in &ov.functions {
        let Some((function, blame)) = located
            .iter_mut()
            .find(|(f, _)| f.name.as_deref() == Some(o.function()))
        else {
            let names: Vec<&str> = located
                .iter()
                .filter_map(|(f, _)| f.name.as_deref())
                .collect();
            return Err(o.invalid(format!(
                "no function `{}` is configured (functions: {})",
                o.function(),
                names.join(", ")
            )));
        };
        function.apply(o.patch().clone());
        blame.applied(o);
    }
    // A command given on the command line is relative to where it was
    // typed, like every other path there (`--config` included); one
    // written in the file, to the file.
    let cwd = std::path::absolute(".").unwrap_or_else(|_| PathBuf::from("."));
    let mut resolved = Vec::with_capacity(located.len());
    for (function, blame) in located {
        let base = match blame.override_of("command") {
            Some(_) => &cwd,
            None => base_dir,
        };
        resolved.push(resolve_function(function, &blame, base, warnings)?);
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
    blame: &Blame<'_>,
    base_dir: &Path,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<FunctionConfig, ConfigError> {
    let name = f.name.unwrap_or_default();
    let fail = |key: &str, msg: String| blame.error(key, msg);

    check_env(&f.env)
        .map_err(|(key, msg)| blame.error_any(&["env", &format!("env.{key}")], msg))?;

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
        (None, Some(argv)) => {
            // The worker start searches the PATH of the worker's environment.
            let path_var = match f.env.get("PATH") {
                Some(path) => Some(OsStr::new(path.as_str()).to_owned()),
                None => std::env::var_os("PATH"),
            };
            let program = command::resolve(argv.0, base_dir, path_var.as_deref())
                .map_err(|msg| fail("command", msg))?;
            if let Some(runs) = &program.shadows_local {
                let bare = &program.argv[0];
                warnings.push(blame.warning(
                    "command",
                    format!(
                        "`{bare}` runs {} (found in PATH), not the {bare} in {}; \
                         write \"./{bare}\" to run that one",
                        runs.display(),
                        base_dir.display()
                    ),
                ));
            }
            FunctionSource::Command(program.argv)
        }
    };

    let min_workers = f.min_workers.unwrap_or(defaults::MIN_WORKERS);
    let max_workers = f
        .max_workers
        .unwrap_or(defaults::MAX_WORKERS.max(min_workers));
    if max_workers == 0 {
        return Err(fail("max_workers", "must be at least 1".into()));
    }
    if max_workers > limits::MAX_WORKERS {
        // Without a max_workers of its own, the value came from min_workers.
        let key = if f.max_workers.is_some() {
            "max_workers"
        } else {
            "min_workers"
        };
        return Err(fail(
            key,
            format!(
                "{key} {max_workers} is more than {} (the most workers a function may have)",
                limits::MAX_WORKERS
            ),
        ));
    }
    if min_workers > max_workers {
        return Err(blame.error_any(
            &["min_workers", "max_workers"],
            format!("min_workers {min_workers} is more than max_workers {max_workers}"),
        ));
    }

    let timeout = f.timeout.map_or(defaults::TIMEOUT, |d| d.0);
    if timeout < limits::MIN_TIMEOUT || timeout > limits::MAX_TIMEOUT {
        return Err(fail(
            "timeout",
            format!(
                "{} is outside {}..={} (deadlines travel as 32-bit microseconds; the most is about 71m35s)",
                format_duration(timeout),
                format_duration(limits::MIN_TIMEOUT),
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

    Ok(FunctionConfig {
        name,
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

/// The first bad entry of `env`: its name and what is wrong with it.
fn check_env(env: &BTreeMap<String, String>) -> Result<(), (String, String)> {
    for (key, value) in env {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err((
                key.clone(),
                format!(
                    "`{}` is not an environment variable name (empty, or contains `=` or NUL)",
                    key.escape_debug()
                ),
            ));
        }
        if key.starts_with(RESERVED_ENV_PREFIX) {
            return Err((
                key.clone(),
                format!(
                    "`{key}`: names starting with {RESERVED_ENV_PREFIX} are reserved for the engine"
                ),
            ));
        }
        if value.contains('\0') {
            return Err((
                key.clone(),
                format!("the value of `{key}` contains a NUL byte"),
            ));
        }
    }
    Ok(())
}
