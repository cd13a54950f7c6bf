//! `nocturne config check|default|show` run as a user runs them: the real
//! binary, real files, exit codes and messages.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use nocturne_engine::config::DEFAULT_CONFIG_TOML;

/// `nocturne ARGS` with no inherited `NOCTURNE_*` variables, plus `env`.
fn nocturne(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nocturne"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NOCTURNE_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_BACKTRACE", "0");
    cmd.args(args).envs(env.iter().copied());
    cmd.output().expect("run nocturne")
}

/// Fails the test, showing `text`, unless `text` contains `needle`.
#[track_caller]
fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "{needle:?} not in:\n{text}");
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Relaxed: only the uniqueness of the number matters.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("nocturne-config-check-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn default_prints_the_embedded_config_and_it_checks_clean() {
    let out = nocturne(&["config", "default"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), DEFAULT_CONFIG_TOML);

    let dir = Scratch::new();
    let file = dir.write("nocturne.toml", &stdout(&out));
    let out = nocturne(&["config", "check", path_str(&file)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("{}: ok\n", file.display())),
        "{text}"
    );
    for needle in [
        "listen        127.0.0.1:8080",
        "poll          adaptive",
        "functions     5",
    ] {
        assert!(text.contains(needle), "{needle}\n---\n{text}");
    }
    for name in ["echo", "bar", "foo", "spin", "sleep"] {
        assert!(
            text.contains(&format!("builtin {name}; workers 1..4")),
            "{name}\n---\n{text}"
        );
    }
}

#[test]
fn unknown_key_fails_naming_key_and_line() {
    let dir = Scratch::new();
    let file = dir.write(
        "bad.toml",
        "listen = \"127.0.0.1:8080\"\n\n[[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\n  max_worker = 3\n",
    );
    let out = nocturne(&["config", "check", path_str(&file)], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_contains(
        &err,
        &format!(
            "{}:6:3: unknown key `max_worker`; did you mean `max_workers`?",
            file.display()
        ),
    );
    assert!(stdout(&out).is_empty(), "no summary for a bad file");
}

#[test]
fn bad_values_and_syntax_fail_with_their_line() {
    let dir = Scratch::new();
    for (text, needle) in [
        ("listen = \"127.0.0.1:8080\"\nlisten = \"x\"\n", ":2:1:"),
        ("poll = \"fast\"\n", ":1:8: unknown variant `fast`"),
        (
            "[[functions]]\nname = \"f\"\ntimeout = \"10\"\nbuiltin = \"echo\"\n",
            ":3:11: `10` has no unit",
        ),
        ("io_cores = \"2-1\"\n", ":1:12: range `2-1` runs backwards"),
        ("[[functions]\n", ":1:"),
        (
            "[[functions]]\nname = \"f\"\nbuiltin = \"ecoh\"\n",
            ":1:1: invalid functions[f].builtin",
        ),
        (
            "[[functions]]\nname = \"f\"\nbuiltin = \"echo\"\nmin_workers = 5\nmax_workers = 2\n",
            "min_workers 5 is more than max_workers 2",
        ),
        (
            "net = \"smoltcp\"\n[[functions]]\nname = \"f\"\nbuiltin = \"echo\"\n",
            "the smoltcp backend needs a device: --tap IFNAME or --raw IFNAME",
        ),
    ] {
        let file = dir.write("bad.toml", text);
        let out = nocturne(&["config", "check", path_str(&file)], &[]);
        assert!(!out.status.success(), "{text}");
        let err = stderr(&out);
        assert!(err.contains(needle), "{text}\n---\n{err}");
    }
}

#[test]
fn missing_file_fails() {
    let out = nocturne(&["config", "check", "/nonexistent/nocturne.toml"], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_contains(&err, "cannot read config file /nonexistent/nocturne.toml");
}

#[test]
fn cores_are_checked_against_this_machine_or_the_given_set() {
    let dir = Scratch::new();
    let file = dir.write(
        "cores.toml",
        "io_cores = \"1023\"\n[[functions]]\nname = \"f\"\nbuiltin = \"echo\"\n",
    );
    let out = nocturne(&["config", "check", path_str(&file)], &[]);
    assert!(!out.status.success());
    assert_contains(
        &stderr(&out),
        "io cores 1023 is not in this process's allowed cores",
    );
    let out = nocturne(
        &["config", "check", "--cores", "0-1023", path_str(&file)],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(&stdout(&out), "allowed 0-1023; io 1023");

    let file = dir.write(
        "spin.toml",
        "poll = \"spin\"\nio_cores = \"1\"\nworker_cores = \"0-1\"\n[[functions]]\nname = \"f\"\nbuiltin = \"echo\"\n",
    );
    let out = nocturne(&["config", "check", "--cores", "0-1", path_str(&file)], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_contains(
        &err,
        "poll = \"spin\" needs io cores of their own: io cores 1 overlap worker cores 0-1",
    );
}

#[test]
fn relative_commands_resolve_next_to_the_file() {
    let dir = Scratch::new();
    std::fs::create_dir_all(dir.0.join("bin")).unwrap();
    let exe = dir.write("bin/my-fn", "#!/bin/sh\nexit 0\n");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.write(
        "nocturne.toml",
        "[[functions]]\nname = \"my-fn\"\ncommand = [\"./bin/my-fn\", \"--fast\"]\nmax_workers = 2\n",
    );
    let out = nocturne(&["config", "check", "--cores", "0-1", path_str(&file)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // Shown without the `./` (QA s8 m9).
    let resolved = dir.0.join("bin/my-fn");
    assert_contains(
        &text,
        &format!(
            "my-fn  command [{:?}, \"--fast\"]; workers 1..2",
            resolved.display().to_string()
        ),
    );
    let file = dir.write(
        "missing.toml",
        "[[functions]]\nname = \"f\"\ncommand = [\"./bin/nope\"]\n",
    );
    let out = nocturne(&["config", "check", path_str(&file)], &[]);
    assert!(!out.status.success());
    assert_contains(&stderr(&out), "invalid functions[f].command: ./bin/nope");
}

#[test]
fn show_applies_env_and_flags_with_flags_winning() {
    let dir = Scratch::new();
    let file = dir.write(
        "nocturne.toml",
        "listen = \"127.0.0.1:7000\"\nspin_us = 11\n[[functions]]\nname = \"f\"\nbuiltin = \"echo\"\n",
    );
    // The file alone.
    let out = nocturne(&["config", "show", "--config", path_str(&file)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(&stdout(&out), "listen        127.0.0.1:7000");
    assert_contains(&stdout(&out), "polls 11us yielding");

    // The environment beats the file; NOCTURNE_CONFIG names the file.
    let env = [
        ("NOCTURNE_CONFIG", path_str(&file)),
        ("NOCTURNE_LISTEN", "127.0.0.1:7001"),
        ("NOCTURNE_SET", "f.max_workers=3;f.timeout=2s"),
        ("NOCTURNE_DRAIN_TIMEOUT", "250ms"),
    ];
    let out = nocturne(&["config", "show"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_contains(&text, "listen        127.0.0.1:7001");
    assert!(
        text.contains("polls 11us yielding"),
        "the file still provides the rest\n{text}"
    );
    assert_contains(&text, "drain_timeout 250ms");
    assert_contains(&text, "workers 1..3; timeout 2s");

    // A flag beats the environment.
    let out = nocturne(
        &[
            "config",
            "show",
            "--listen",
            "127.0.0.1:7002",
            "--set",
            "f.max_workers=5",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_contains(&text, "listen        127.0.0.1:7002");
    assert_contains(&text, "workers 1..5");

    // A misspelt variable is named, with the one it probably meant.
    let out = nocturne(&["config", "show"], &[("NOCTURNE_DRAIN_TIMOUT", "1s")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(
        &stderr(&out),
        "warning: NOCTURNE_DRAIN_TIMOUT is not a nocturne setting and is ignored \
             (did you mean NOCTURNE_DRAIN_TIMEOUT?)",
    );

    // A bad environment value is refused like a bad flag.
    let out = nocturne(&["config", "show"], &[("NOCTURNE_POLL", "fast")]);
    assert!(!out.status.success());
    assert_contains(&stderr(&out), "fast");
}

#[test]
fn show_without_config_uses_the_embedded_default() {
    let out = nocturne(&["config", "show"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_contains(&text, "config        <embedded default>");
    assert_contains(&text, "listen        127.0.0.1:8080");
}

/// `nocturne ARGS` run in `dir`.
fn nocturne_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nocturne"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NOCTURNE_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_BACKTRACE", "0").current_dir(dir);
    cmd.args(args).envs(env.iter().copied());
    cmd.output().expect("run nocturne")
}

#[test]
fn nocturne_set_merges_with_set_flags() {
    // The variable's other settings stay when a flag is given.
    let out = nocturne(
        &["config", "show", "--set", "echo.timeout=3s"],
        &[("NOCTURNE_SET", "echo.max_workers=8")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(&stdout(&out), "builtin echo; workers 1..8; timeout 3s");
    // For the same setting the flag wins.
    let out = nocturne(
        &["config", "show", "--set", "echo.max_workers=2"],
        &[("NOCTURNE_SET", "echo.max_workers=8;echo.timeout=3s")],
    );
    assert_contains(&stdout(&out), "workers 1..2; timeout 3s");
    // Exported but empty, blanks, a trailing `;`, and `\;` in a value.
    for (value, needle) in [
        ("", "workers 1..4; timeout 10s"),
        (
            " echo.max_workers=8 ; echo.timeout=3s ;",
            "workers 1..8; timeout 3s",
        ),
    ] {
        let out = nocturne(&["config", "show"], &[("NOCTURNE_SET", value)]);
        assert!(out.status.success(), "{value:?}: {}", stderr(&out));
        assert!(stdout(&out).contains(needle), "{value:?}: {}", stdout(&out));
    }
    let out = nocturne(
        &["config", "show", "--toml"],
        &[("NOCTURNE_SET", r"echo.env.A=a\;b;echo.env.B=c")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_contains(&text, "A = \"a;b\"\nB = \"c\"");
    // A bad entry is named as one of the variable's.
    let out = nocturne(
        &["config", "show"],
        &[("NOCTURNE_SET", "echo.max_workers=x y")],
    );
    assert!(!out.status.success());
    assert_contains(
        &stderr(&out),
        "invalid NOCTURNE_SET entry `echo.max_workers=x y`",
    );
    // NOCTURNE_SET is a setting: no "not a nocturne setting" warning.
    assert!(!stderr(&out).contains("not a nocturne setting"));
}

#[test]
fn errors_caused_by_set_name_the_set() {
    let out = nocturne(
        &[
            "config",
            "show",
            "--set",
            "echo.min_workers=3",
            "--set",
            "echo.max_workers=2",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_contains(
        &err,
        "invalid --set `echo.min_workers=3`: min_workers 3 is more than max_workers 2",
    );
    assert!(!err.contains("<embedded default>"), "{err}");
    let out = nocturne(&["config", "show", "--set", "echo.env.NOCTURNE_X=1"], &[]);
    assert_contains(&stderr(&out), "invalid --set `echo.env.NOCTURNE_X=1`: `NOCTURNE_X`: names starting with NOCTURNE_ are reserved");
}

#[test]
fn a_relative_command_in_set_is_relative_to_the_working_directory() {
    let dir = Scratch::new();
    std::fs::create_dir_all(dir.0.join("sub")).unwrap();
    std::fs::create_dir_all(dir.0.join("bin")).unwrap();
    let exe = dir.write("bin/f", "#!/bin/sh\nexit 0\n");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.write(
        "sub/b.toml",
        "[[functions]]\nname = \"f\"\nbuiltin = \"echo\"\n",
    );
    // ./bin/f exists beside the working directory, not beside sub/b.toml.
    let out = nocturne_in(
        &dir.0,
        &[
            "config",
            "show",
            "-c",
            "sub/b.toml",
            "--set",
            r#"f.command=["./bin/f"]"#,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let resolved = dir.0.join("bin/f").display().to_string();
    assert_contains(&stdout(&out), &format!("f  command [{resolved:?}]"));
    let out = nocturne_in(
        &dir.0,
        &[
            "config",
            "show",
            "-c",
            "sub/b.toml",
            "--set",
            r#"f.command=["./nonexist"]"#,
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("invalid --set `f.command=[\"./nonexist\"]`: ./nonexist ("),
        "{err}"
    );
    assert!(!err.contains("b.toml"), "{err}");
}

#[test]
fn check_finds_bare_commands_in_path() {
    let dir = Scratch::new();
    for (command, needle) in [
        (
            "nosuchbinary_xyz",
            "`nosuchbinary_xyz` is not an executable in PATH",
        ),
        (".", "`.` is a directory, not a program"),
    ] {
        let file = dir.write(
            "bare.toml",
            &format!("[[functions]]\nname = \"f\"\ncommand = [\"{command}\"]\n"),
        );
        let out = nocturne(&["config", "check", path_str(&file)], &[]);
        assert!(!out.status.success(), "{command}");
        let err = stderr(&out);
        assert_contains(
            &err,
            &format!(":1:1: invalid functions[f].command: {needle}"),
        );
    }
    // A bare name found in PATH passes; one that also sits beside the
    // config file is flagged, since the PATH one is what runs.
    let file = dir.write(
        "wc.toml",
        "[[functions]]\nname = \"wc\"\ncommand = [\"sh\"]\n",
    );
    let out = nocturne(&["config", "check", path_str(&file)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let local = dir.write("sh", "#!/bin/sh\n");
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = nocturne(&["config", "check", path_str(&file)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: ") && err.contains("functions[wc].command: `sh` runs /"),
        "{err}"
    );
    assert_contains(&err, "write \"./sh\" to run that one");
}

#[test]
fn show_toml_is_a_config_file_that_gives_the_same_configuration() {
    let dir = Scratch::new();
    let args = [
        "config",
        "show",
        "--toml",
        "--header-timeout",
        "1s",
        "--keepalive-timeout",
        "2s",
        "--set",
        "echo.idle_timeout=1s",
        "--set",
        "echo.max_queue=3",
        "--set",
        "echo.concurrency_coef=0.5",
        "--set",
        "bar.max_call_depth=4",
    ];
    let out = nocturne(&args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let toml = stdout(&out);
    let file = dir.write("shown.toml", &toml);
    let out = nocturne(&["config", "check", path_str(&file)], &[]);
    assert!(out.status.success(), "{}\n---\n{toml}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    // Shown again from the saved file: the same settings (the first line
    // names where the configuration came from).
    let out = nocturne(&["config", "show", "--toml", "-c", path_str(&file)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let body = |text: &str| text.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&stdout(&out)), body(&toml));

    // The summary says the same settings.
    let out = nocturne(
        &args[..2]
            .iter()
            .chain(&args[3..])
            .copied()
            .collect::<Vec<_>>(),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "header_timeout 1s, keepalive_timeout 2s",
        "idle_timeout 1s; max_queue 3; max_call_depth 16; concurrency_coef 0.5",
        "idle_timeout 30s; max_queue 1024; max_call_depth 4; concurrency_coef 1",
    ] {
        assert!(text.contains(needle), "{needle}\n---\n{text}");
    }
}

#[test]
fn settings_without_effect_are_warned_about() {
    let out = nocturne(
        &[
            "config",
            "show",
            "--poll",
            "block",
            "--spin-us",
            "20",
            "--spin-max-us",
            "900",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(
        &stderr(&out),
        "nocturne: warning: --spin-us: has no effect with --poll block",
    );
    assert_contains(
        &stderr(&out),
        "nocturne: warning: --spin-max-us: has no effect with --poll block",
    );
    let out = nocturne(
        &["config", "show", "--worker-poll", "park"],
        &[("NOCTURNE_WORKER_SPIN_US", "10")],
    );
    assert_contains(
        &stderr(&out),
        "warning: --worker-spin-us: has no effect with --worker-poll park",
    );
}

#[test]
fn delegate_wakes_is_shown_set_and_refused_when_not_a_boolean() {
    let delegated = "yields 50us, then parks, wakes delegated on the shared core;";
    let dir = Scratch::new();
    // Workers sharing core 0: seated on a board unless told otherwise.
    let file = dir.write(
        "nocturne.toml",
        "worker_cores = \"0\"\nworker_poll = \"yield\"\n[[functions]]\nname = \"f\"\nbuiltin = \"echo\"\n",
    );
    // On by default; `config check` says so.
    let out = nocturne(&["config", "check", path_str(&file), "--cores", "0-1"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(&stdout(&out), delegated);

    // Off in the file; the variable turns it back on, the flag off again.
    let off = dir.write(
        "off.toml",
        "delegate_wakes = false\nworker_cores = \"0\"\nworker_poll = \"yield\"\n\
         [[functions]]\nname = \"f\"\nbuiltin = \"echo\"\n",
    );
    let out = nocturne(&["config", "check", path_str(&off), "--cores", "0-1"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(&stdout(&out), "yields 50us, then parks; ");
    let on = [("NOCTURNE_DELEGATE_WAKES", "true")];
    let out = nocturne(&["config", "show", "--toml", "-c", path_str(&off)], &on);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(&stdout(&out), "\ndelegate_wakes = true\n");
    let args = ["config", "show", "--toml", "-c", path_str(&off)];
    let out = nocturne(&[&args[..], &["--delegate-wakes", "false"]].concat(), &on);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(&stdout(&out), "\ndelegate_wakes = false\n");

    // Not a boolean: the key and its line, or the flag.
    let bad = dir.write(
        "bad.toml",
        "listen = \"127.0.0.1:8080\"\ndelegate_wakes = 3\n[[functions]]\nname = \"f\"\nbuiltin = \"echo\"\n",
    );
    let out = nocturne(&["config", "check", path_str(&bad)], &[]);
    assert!(!out.status.success());
    assert_contains(
        &stderr(&out),
        &format!(
            "{}:2:18: delegate_wakes: invalid type: integer `3`, expected a boolean",
            bad.display()
        ),
    );
    let out = nocturne(&["config", "show", "--delegate-wakes", "maybe"], &[]);
    assert!(!out.status.success());
    assert_contains(
        &stderr(&out),
        "invalid value 'maybe' for '--delegate-wakes <BOOL>'",
    );
    let out = nocturne(&["config", "show"], &[("NOCTURNE_DELEGATE_WAKES", "maybe")]);
    assert!(!out.status.success());
    assert_contains(&stderr(&out), "--delegate-wakes");

    // Without yielding workers it does nothing, and says so.
    let out = nocturne(
        &[
            "config",
            "show",
            "--worker-poll",
            "park",
            "--delegate-wakes",
            "false",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(
        &stderr(&out),
        "warning: --delegate-wakes: has no effect with --worker-poll park",
    );
}

#[test]
fn top_level_errors_and_durations() {
    let dir = Scratch::new();
    let file = dir.write(
        "top.toml",
        "listen = \"127.0.0.1:8080\"\nmax_connections = 0\n[[functions]]\nname = \"f\"\nbuiltin = \"echo\"\ntimeout = \"71m34s\"\n",
    );
    let out = nocturne(&["config", "check", path_str(&file)], &[]);
    assert!(!out.status.success());
    assert_contains(
        &stderr(&out),
        &format!(
            "{}:2:19: invalid max_connections: must be at least 1",
            file.display()
        ),
    );
    let file = dir.write(
        "top.toml",
        "[[functions]]\nname = \"f\"\nbuiltin = \"echo\"\ntimeout = \"71m34s\"\n",
    );
    let out = nocturne(&["config", "check", path_str(&file)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_contains(&stdout(&out), "timeout 4294s");
}
