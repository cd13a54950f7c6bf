use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::super::*;

const TWO_CORES: &[usize] = &[0, 1];
const SIXTEEN_CORES: &[usize] = &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// One function, so that worker counts are easy to reason about.
const ONE_ECHO: &str = "[[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\n";

fn origin() -> ConfigOrigin {
    ConfigOrigin::File(PathBuf::from("/etc/nocturne/t.toml"))
}

fn resolve_text(text: &str, ov: &Overrides, allowed: &[usize]) -> Result<Config, ConfigError> {
    Config::from_toml(text, origin(), ov, allowed)
}

fn ok(text: &str) -> Config {
    resolve_text(text, &Overrides::default(), TWO_CORES).unwrap()
}

fn err(text: &str) -> ConfigError {
    resolve_text(text, &Overrides::default(), TWO_CORES).unwrap_err()
}

fn err_on(text: &str, ov: &Overrides, allowed: &[usize]) -> ConfigError {
    resolve_text(text, ov, allowed).unwrap_err()
}

fn cores(s: &str) -> Vec<usize> {
    s.parse::<CoreSet>().unwrap().cores().to_vec()
}

/// Asserts an `Invalid` error for `field` whose message contains `needle`;
/// returns its location.
#[track_caller]
fn assert_invalid(e: ConfigError, field: &str, needle: &str) -> Option<Location> {
    match e {
        ConfigError::Invalid { field: f, at, msg } => {
            assert_eq!(f, field, "{msg}");
            assert!(msg.contains(needle), "{field}: {msg}");
            at
        }
        other => panic!("expected Invalid {field}, got {other:?}"),
    }
}

/// Asserts an error that names the override `arg` (not a file line).
#[track_caller]
fn assert_override(e: ConfigError, arg: &str, needle: &str) -> OverrideSource {
    match e {
        ConfigError::Override { via, arg: a, msg } => {
            assert_eq!(a, arg, "{msg}");
            assert!(msg.contains(needle), "{arg}: {msg}");
            via
        }
        other => panic!("expected an error about {arg}, got {other:?}"),
    }
}

fn sets(args: &[&str]) -> Overrides {
    Overrides {
        functions: args.iter().map(|a| a.parse().unwrap()).collect(),
        ..Overrides::default()
    }
}

#[track_caller]
fn assert_cores(e: ConfigError, needle: &str) -> String {
    match e {
        ConfigError::Cores { msg } => {
            assert!(msg.contains(needle), "{msg}\n  does not contain: {needle}");
            msg
        }
        other => panic!("expected Cores, got {other:?}"),
    }
}

#[test]
fn embedded_default_serves_the_builtins_on_localhost_8080() {
    let config = Config::load(None, &Overrides::default(), TWO_CORES).unwrap();
    assert_eq!(config.origin, ConfigOrigin::Embedded);
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.net, NetBackend::Kernel);
    assert_eq!(config.io_cores, cores("1"));
    assert_eq!(config.worker_cores, None);
    assert_eq!(config.poll, PollMode::Adaptive);
    assert_eq!(config.worker_poll, WorkerPoll::Yield);
    let names: Vec<&str> = config.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["echo", "bar", "foo", "spin", "sleep"]);
    for f in &config.functions {
        assert!(BUILTIN_FUNCTIONS.contains(&f.name.as_str()));
        assert_eq!(f.source, FunctionSource::Builtin(f.name.clone()));
        assert!(f.min_workers >= 1 && f.min_workers <= f.max_workers);
    }
    assert!(config.function("foo").unwrap().allow_get);
    assert!(config.function("nope").is_none());
}

#[test]
fn embedded_default_resolves_on_one_and_many_cores() {
    let one = Config::load(None, &Overrides::default(), &[0]).unwrap();
    assert_eq!(one.io_cores, cores("0"));
    let many = Config::load(None, &Overrides::default(), SIXTEEN_CORES).unwrap();
    assert_eq!(many.io_cores, cores("15"));
    let odd = Config::load(None, &Overrides::default(), &[2, 5, 7]).unwrap();
    assert_eq!(odd.io_cores, cores("7"));
    assert_eq!(odd.allowed_cores, cores("2,5,7"));
}

#[test]
fn function_defaults() {
    let config = ok(ONE_ECHO);
    let f = &config.functions[0];
    assert_eq!(f.min_workers, defaults::MIN_WORKERS);
    assert_eq!(f.max_workers, defaults::MAX_WORKERS);
    assert_eq!(f.timeout, defaults::TIMEOUT);
    assert_eq!(f.max_payload, defaults::MAX_PAYLOAD);
    assert!(!f.allow_get);
    assert!(f.env.is_empty());
    assert_eq!(f.idle_timeout, defaults::IDLE_TIMEOUT);
    assert_eq!(f.max_queue, defaults::MAX_QUEUE);
    assert_eq!(f.max_call_depth, defaults::MAX_CALL_DEPTH);
    assert_eq!(f.concurrency_coef, defaults::CONCURRENCY_COEF);
    assert_eq!(
        config.spin_us,
        defaults::SPIN_US_YIELDING,
        "unpinned workers"
    );
    assert_eq!(config.worker_spin_us, defaults::WORKER_SPIN_US);
    assert_eq!(config.max_connections, defaults::MAX_CONNECTIONS);
    assert_eq!(config.max_header_bytes, defaults::MAX_HEADER_BYTES);
    assert_eq!(config.drain_timeout, defaults::DRAIN_TIMEOUT);
    // max_workers follows a larger min_workers.
    let config = ok(&format!("{ONE_ECHO}min_workers = 6"));
    assert_eq!(config.functions[0].max_workers, 6);
}

#[test]
fn at_most_256_io_cores() {
    let many: Vec<usize> = (0..300).collect();
    let text = |n: usize| format!("io_cores = \"0-{}\"\n{ONE_ECHO}", n - 1);
    assert_cores(
        resolve_text(&text(257), &Overrides::default(), &many).unwrap_err(),
        "io_cores: 257 io cores are more than 256",
    );
    let config = resolve_text(&text(256), &Overrides::default(), &many).unwrap();
    assert_eq!(config.io_cores.len(), 256);
}

#[test]
fn io_and_worker_cores_must_be_allowed() {
    let e = err(&format!("io_cores = \"1-2\"\n{ONE_ECHO}"));
    let msg = assert_cores(
        e,
        "io_cores: io cores 2 is not in this process's allowed cores 0-1",
    );
    assert!(msg.contains("sched_getaffinity"), "{msg}");
    let e = err(&format!("worker_cores = \"0,3-4\"\n{ONE_ECHO}"));
    assert_cores(e, "worker cores 3-4 are not in");
    let ov = Overrides {
        io_cores: Some("7".parse().unwrap()),
        ..Overrides::default()
    };
    assert_cores(
        err_on(ONE_ECHO, &ov, TWO_CORES),
        "--io-cores: io cores 7 is not",
    );
}

#[test]
fn spinning_io_refuses_shared_cores() {
    let e = err(&format!(
        "poll = \"spin\"\nio_cores = \"1\"\nworker_cores = \"0-1\"\n{ONE_ECHO}"
    ));
    assert_cores(
        e,
        "poll = \"spin\" needs io cores of their own: io cores 1 overlap worker cores 0-1",
    );
    let ov = Overrides {
        poll: Some(PollMode::Spin),
        worker_cores: Some("0-1".parse().unwrap()),
        ..Overrides::default()
    };
    assert_cores(
        err_on(ONE_ECHO, &ov, TWO_CORES),
        "--poll spin needs io cores of their own: io cores 1 overlap worker cores 0-1",
    );
    // Every allowed core is an io core: nothing left for workers.
    let e = err(&format!("poll = \"spin\"\nio_cores = \"0-1\"\n{ONE_ECHO}"));
    assert_cores(e, "leaving none for workers");
    let e = resolve_text(
        &format!("poll = \"spin\"\n{ONE_ECHO}"),
        &Overrides::default(),
        &[0],
    );
    assert_cores(e.unwrap_err(), "leaving none for workers");
}

#[test]
fn spinning_io_keeps_workers_off_its_cores() {
    let config = ok(&format!("poll = \"spin\"\n{ONE_ECHO}"));
    assert_eq!(config.io_cores, cores("1"));
    assert_eq!(config.worker_cores, Some(cores("0")));
    let config = ok(&format!(
        "poll = \"spin\"\nio_cores = \"0\"\nworker_cores = \"1\"\n{ONE_ECHO}"
    ));
    assert_eq!(config.worker_cores, Some(cores("1")));
    // Adaptive and block io leave workers unpinned and may share cores.
    for mode in ["adaptive", "block"] {
        let config = ok(&format!(
            "poll = \"{mode}\"\nio_cores = \"0-1\"\nworker_cores = \"0-1\"\n{ONE_ECHO}"
        ));
        assert_eq!(config.worker_cores, Some(cores("0-1")));
    }
}

#[test]
fn worker_poll_defaults_to_spin_only_with_a_core_per_worker() {
    let echo4 = "[[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\nmax_workers = 4\n";
    let run = |head: &str| {
        resolve_text(
            &format!("{head}\n{echo4}"),
            &Overrides::default(),
            SIXTEEN_CORES,
        )
        .unwrap()
    };
    // 4 workers on 4 cores of their own; they spin long before parking.
    let config = run("worker_cores = \"0-3\"");
    assert_eq!(config.worker_poll, WorkerPoll::Spin);
    assert_eq!(config.worker_spin_us, defaults::WORKER_SPIN_US_OWN_CORE);
    // A budget given is kept.
    let config = run("worker_cores = \"0-3\"\nworker_spin_us = 7");
    assert_eq!(config.worker_spin_us, 7);
    assert!(config.worker_cores_reserved().is_ok());
    // Too few cores.
    let config = run("worker_cores = \"0-2\"");
    assert_eq!(config.worker_poll, WorkerPoll::Yield);
    assert!(config
        .worker_cores_reserved()
        .unwrap_err()
        .contains("4 workers"));
    // Shares the io core.
    let config = run("worker_cores = \"12-15\"");
    assert_eq!(config.worker_poll, WorkerPoll::Yield);
    assert!(config
        .worker_cores_reserved()
        .unwrap_err()
        .contains("overlap io cores 15"));
    // Not pinned.
    let config = run("");
    assert_eq!(config.worker_poll, WorkerPoll::Yield);
    assert_eq!(config.worker_spin_us, defaults::WORKER_SPIN_US);
    assert!(config
        .worker_cores_reserved()
        .unwrap_err()
        .contains("not pinned"));
    // Spinning io reserves the rest for workers: 15 cores for 4 workers.
    let config = run("poll = \"spin\"");
    assert_eq!(config.worker_poll, WorkerPoll::Spin);
    // An explicit choice other than spin is always honoured.
    let config = run("worker_poll = \"park\"\nworker_cores = \"0-3\"");
    assert_eq!(config.worker_poll, WorkerPoll::Park);
    let config = run("worker_poll = \"yield\"");
    assert_eq!(config.worker_poll, WorkerPoll::Yield);
}

#[test]
fn io_cores_shared_with_workers_are_recognised() {
    let echo = "[[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\nmax_workers = 2\n";
    let run = |head: &str| {
        resolve_text(
            &format!("{head}\n{echo}"),
            &Overrides::default(),
            SIXTEEN_CORES,
        )
        .unwrap()
    };
    // Unpinned workers may run anywhere, the io core included.
    assert!(run("").io_shares_workers());
    assert!(run("io_cores = \"3\"\nworker_cores = \"2-3\"").io_shares_workers());
    assert!(!run("io_cores = \"3\"\nworker_cores = \"0-2\"").io_shares_workers());
    // Spinning io reserves the other cores for the workers.
    assert!(!run("poll = \"spin\"").io_shares_workers());
    // The adaptive loop's budget follows: it yield-polls longer beside
    // workers, spins briefly alone; a budget given is kept.
    assert_eq!(run("").spin_us, defaults::SPIN_US_YIELDING);
    assert_eq!(
        run("io_cores = \"3\"\nworker_cores = \"0-2\"").spin_us,
        defaults::SPIN_US
    );
    assert_eq!(run("spin_us = 7").spin_us, 7);
}

#[test]
fn explicit_worker_spin_on_shared_cores_is_refused() {
    let e = err(&format!("worker_poll = \"spin\"\n{ONE_ECHO}"));
    assert_cores(e, "worker_poll = \"spin\" needs a core of its own for every worker, but workers are not pinned");
    let e = err(&format!(
        "worker_poll = \"spin\"\nworker_cores = \"0-1\"\n{ONE_ECHO}"
    ));
    assert_cores(e, "worker cores 0-1 overlap io cores 1");
    let ov = Overrides {
        worker_poll: Some(WorkerPoll::Spin),
        worker_cores: Some("0".parse().unwrap()),
        ..Overrides::default()
    };
    // echo defaults to 4 workers: one core is not enough.
    let msg = assert_cores(err_on(ONE_ECHO, &ov, TWO_CORES), "--worker-poll spin");
    assert!(
        msg.contains("4 workers (sum of max_workers) would share 1 worker core (0)"),
        "{msg}"
    );
    let ov = Overrides {
        worker_poll: Some(WorkerPoll::Spin),
        worker_cores: Some("0".parse().unwrap()),
        ..Overrides::default()
    };
    let config = resolve_text(&format!("{ONE_ECHO}max_workers = 1"), &ov, TWO_CORES).unwrap();
    assert_eq!(config.worker_poll, WorkerPoll::Spin);
}

#[test]
fn smoltcp_needs_a_device_an_address_and_a_port() {
    let e = err(&format!("net = \"smoltcp\"\n{ONE_ECHO}"));
    assert_invalid(e, "net", "--tap IFNAME or --raw IFNAME");
    let e = err(&format!("net = \"smoltcp\"\ntap = \"tap0\"\n{ONE_ECHO}"));
    assert_invalid(e, "net", "--ip ADDR/LEN");
    let e = err(&format!(
        "net = \"smoltcp\"\ntap = \"tap0\"\nip = \"192.0.2.2\"\n{ONE_ECHO}"
    ));
    assert_invalid(e, "ip", "192.0.2.2/24");
    let ov = Overrides {
        net: Some(NetBackend::Smoltcp),
        tap: Some("tap0".into()),
        raw: Some("veth0".into()),
        ip: Some("192.0.2.2/24".into()),
        ..Overrides::default()
    };
    assert_invalid(err_on(ONE_ECHO, &ov, TWO_CORES), "--tap", "not both");
    let ov = Overrides {
        raw: None,
        listen: Some("0.0.0.0:0".parse().unwrap()),
        ..ov
    };
    assert_invalid(err_on(ONE_ECHO, &ov, TWO_CORES), "--listen", "fixed port");
    let ov = Overrides { listen: None, ..ov };
    let config = resolve_text(ONE_ECHO, &ov, TWO_CORES).unwrap();
    let sc = config.smoltcp.expect("smoltcp settings");
    assert_eq!(sc.device, nocturne_net::DeviceSpec::Tap("tap0".into()));
    assert_eq!(sc.address.to_string(), "192.0.2.2/24");
}

#[test]
fn smoltcp_settings_need_the_smoltcp_backend() {
    let e = err(&format!("tap = \"tap0\"\n{ONE_ECHO}"));
    assert_invalid(e, "tap", "only applies to the smoltcp backend");
    let ov = Overrides {
        ip: Some("192.0.2.2/24".into()),
        ..Overrides::default()
    };
    assert_invalid(
        err_on(ONE_ECHO, &ov, TWO_CORES),
        "--ip",
        "only applies to the smoltcp backend",
    );
    assert_eq!(ok(ONE_ECHO).smoltcp, None);
}

#[test]
fn top_level_limits() {
    assert_invalid(
        err(&format!("spin_us = 2000000\n{ONE_ECHO}")),
        "spin_us",
        "microseconds",
    );
    assert_invalid(
        err(&format!("worker_spin_us = 1000001\n{ONE_ECHO}")),
        "worker_spin_us",
        "one second",
    );
    assert_eq!(ok(&format!("spin_us = 0\n{ONE_ECHO}")).spin_us, 0);
    assert_invalid(
        err(&format!("max_connections = 0\n{ONE_ECHO}")),
        "max_connections",
        "at least 1",
    );
    assert_invalid(
        err(&format!("max_header_bytes = 100\n{ONE_ECHO}")),
        "max_header_bytes",
        "outside",
    );
    assert_invalid(
        err(&format!("max_header_bytes = \"2MiB\"\n{ONE_ECHO}")),
        "max_header_bytes",
        "outside",
    );
    assert_eq!(
        ok(&format!("max_header_bytes = \"16KiB\"\n{ONE_ECHO}")).max_header_bytes,
        16384
    );
    assert_invalid(
        err(&format!("drain_timeout = \"2h\"\n{ONE_ECHO}")),
        "drain_timeout",
        "longer than 1h",
    );
    assert_eq!(
        ok(&format!("drain_timeout = \"0s\"\n{ONE_ECHO}")).drain_timeout,
        Duration::ZERO
    );
}

#[test]
fn overrides_beat_the_file_and_name_the_flag() {
    let text = format!("listen = \"0.0.0.0:1\"\npoll = \"block\"\nspin_us = 7\n{ONE_ECHO}");
    let ov = Overrides {
        listen: Some("127.0.0.1:9".parse().unwrap()),
        poll: Some(PollMode::Adaptive),
        max_connections: Some(3),
        max_header_bytes: Some(4096),
        drain_timeout: Some(Duration::from_secs(1)),
        worker_spin_us: Some(9),
        worker_poll: Some(WorkerPoll::Park),
        ..Overrides::default()
    };
    let config = resolve_text(&text, &ov, TWO_CORES).unwrap();
    assert_eq!(config.listen.port(), 9);
    assert_eq!(config.poll, PollMode::Adaptive);
    assert_eq!(
        config.spin_us, 7,
        "the file value stands where no flag is given"
    );
    assert_eq!(config.max_connections, 3);
    assert_eq!(config.max_header_bytes, 4096);
    assert_eq!(config.drain_timeout, Duration::from_secs(1));
    assert_eq!(config.worker_spin_us, 9);
    assert_eq!(config.worker_poll, WorkerPoll::Park);
    let ov = Overrides {
        spin_us: Some(5_000_000),
        ..Overrides::default()
    };
    assert_invalid(err_on(&text, &ov, TWO_CORES), "--spin-us", "microseconds");
}

#[test]
fn set_overrides_patch_functions() {
    let ov = Overrides {
        functions: vec![
            "echo.max_workers=9".parse().unwrap(),
            "echo.env.RUST_LOG=debug".parse().unwrap(),
            "echo.timeout=250ms".parse().unwrap(),
            "echo.max_workers=7".parse().unwrap(),
        ],
        ..Overrides::default()
    };
    let config = resolve_text(ONE_ECHO, &ov, TWO_CORES).unwrap();
    let f = &config.functions[0];
    assert_eq!(f.max_workers, 7, "a later --set wins");
    assert_eq!(f.timeout, Duration::from_millis(250));
    assert_eq!(f.env["RUST_LOG"], "debug");

    let ov = Overrides {
        functions: vec!["ehco.max_workers=2".parse().unwrap()],
        ..Overrides::default()
    };
    match err_on(ONE_ECHO, &ov, TWO_CORES) {
        ConfigError::Override { arg, msg, .. } => {
            assert_eq!(arg, "ehco.max_workers=2");
            assert!(
                msg.contains("no function `ehco` is configured (functions: echo)"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A patch is validated like the file.
    let ov = Overrides {
        functions: vec![
            "echo.min_workers=9".parse().unwrap(),
            "echo.max_workers=2".parse().unwrap(),
        ],
        ..Overrides::default()
    };
    assert_override(
        err_on(ONE_ECHO, &ov, TWO_CORES),
        "echo.min_workers=9",
        "min_workers 9 is more than max_workers 2",
    );
    // Switching the source drops the old one.
    let ov = Overrides {
        functions: vec!["echo.command=[\"true\"]".parse().unwrap()],
        ..Overrides::default()
    };
    let config = resolve_text(ONE_ECHO, &ov, TWO_CORES).unwrap();
    assert_eq!(
        config.functions[0].source,
        FunctionSource::Command(vec!["true".into()])
    );
}

#[test]
fn function_list_rules() {
    assert_invalid(
        err("listen = \"127.0.0.1:1\""),
        "functions",
        "no [[functions]]",
    );
    let at = assert_invalid(
        err("\n[[functions]]\nbuiltin = \"echo\"\n"),
        "functions[].name",
        "needs a name",
    );
    assert_eq!(at.unwrap().line, 2);
    let at = assert_invalid(
        err(&format!("{ONE_ECHO}\n\n{ONE_ECHO}")),
        "functions[echo].name",
        "declared twice",
    );
    assert_eq!(at.unwrap().line, 6, "the second declaration");
    for bad in ["Echo", "", "a b", "é", "a/b", &"x".repeat(65)] {
        let e = err(&format!(
            "[[functions]]\nname = \"{bad}\"\nbuiltin = \"echo\""
        ));
        assert_invalid(e, "functions[].name", "is not a function name");
    }
    let config = ok(&format!(
        "{ONE_ECHO}[[functions]]\nname = \"my_fn-2\"\nbuiltin = \"echo\"\n[[functions]]\nname = \"{}\"\nbuiltin = \"bar\"",
        "x".repeat(64)
    ));
    assert_eq!(config.functions.len(), 3);
    assert_eq!(config.functions[1].name, "my_fn-2");
}

#[test]
fn function_source_rules() {
    let e = err("[[functions]]\nname = \"f\"\nbuiltin = \"echo\"\ncommand = [\"true\"]");
    assert_invalid(e, "functions[f].builtin", "not both");
    let e = err("[[functions]]\nname = \"f\"\n");
    let at = assert_invalid(e, "functions[f].builtin", "set `builtin`");
    let at = at.unwrap();
    assert_eq!((at.file.as_str(), at.line), ("/etc/nocturne/t.toml", 1));
    let e = err("[[functions]]\nname = \"f\"\nbuiltin = \"ehco\"");
    assert_invalid(e, "functions[f].builtin", "did you mean `echo`?");
    let e = err("[[functions]]\nname = \"f\"\nbuiltin = \"cowsay\"");
    assert_invalid(
        e,
        "functions[f].builtin",
        "built-ins: echo, bar, foo, spin, sleep",
    );
    let e = err("[[functions]]\nname = \"f\"\ncommand = []");
    assert_invalid(e, "functions[f].command", "empty argv");
    let e = err("[[functions]]\nname = \"f\"\ncommand = [\"\"]");
    assert_invalid(e, "functions[f].command", "empty");
    let e = err("[[functions]]\nname = \"f\"\ncommand = [\"true\", \"a\\u0000b\"]");
    assert_invalid(e, "functions[f].command", "NUL");
    // A bare program name is searched in PATH at spawn time.
    let config = ok("[[functions]]\nname = \"f\"\ncommand = [\"true\", \"x\"]");
    assert_eq!(
        config.functions[0].source,
        FunctionSource::Command(vec!["true".into(), "x".into()])
    );
}

/// A fresh directory under the system temp dir (removed by the test).
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // Relaxed: only uniqueness of the returned number matters.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("nocturne-config-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn relative_commands_resolve_against_the_config_directory() {
    let dir = scratch_dir();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let exe = dir.join("bin/f");
    std::fs::write(&exe, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plain = dir.join("bin/data");
    std::fs::write(&plain, "").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = dir.join("nocturne.toml");
    let load = |command: &str| {
        let text = format!("[[functions]]\nname = \"f\"\ncommand = {command}\n");
        Config::from_toml(
            &text,
            ConfigOrigin::File(file.clone()),
            &Overrides::default(),
            TWO_CORES,
        )
    };

    let config = load(r#"["./bin/f", "--fast"]"#).unwrap();
    let FunctionSource::Command(argv) = &config.functions[0].source else {
        panic!("{:?}", config.functions[0].source)
    };
    // Compared as text: `Path` equality would ignore a `.` left in it.
    assert_eq!(argv[0], format!("{}/bin/f", dir.display()));
    assert_eq!(argv[1], "--fast");
    let absolute = format!("[\"{}\"]", exe.display());
    assert!(load(&absolute).is_ok());

    assert_invalid(
        load(r#"["./bin/missing"]"#).unwrap_err(),
        "functions[f].command",
        "No such file",
    );
    assert_invalid(
        load(r#"["./bin/data"]"#).unwrap_err(),
        "functions[f].command",
        "not executable",
    );
    assert_invalid(
        load(r#"["./bin"]"#).unwrap_err(),
        "functions[f].command",
        "not a regular file",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn function_setting_limits() {
    let check = |extra: &str, key: &str, needle: &str| {
        let e = err(&format!("{ONE_ECHO}{extra}"));
        let at = assert_invalid(e, &format!("functions[echo].{key}"), needle);
        assert_eq!(at.unwrap().line, 1);
    };
    check("max_workers = 0", "max_workers", "at least 1");
    check("max_workers = 1025", "max_workers", "more than 1024");
    check(
        "min_workers = 3\nmax_workers = 2",
        "min_workers",
        "min_workers 3 is more than max_workers 2",
    );
    check("timeout = \"0s\"", "timeout", "outside 1us");
    check("timeout = \"2h\"", "timeout", "32-bit");
    check("max_payload = \"2GiB\"", "max_payload", "more than 1022MiB");
    check(
        "max_payload = \"1GiB\"",
        "max_payload",
        "share a worker's 1GiB arena",
    );
    check("idle_timeout = \"0s\"", "idle_timeout", "more than 0");
    check("max_queue = 2000000", "max_queue", "more than");
    check("max_call_depth = 0", "max_call_depth", "outside 1..=1024");
    check("max_call_depth = 1025", "max_call_depth", "outside");
    check("concurrency_coef = 0.0", "concurrency_coef", "outside");
    check("concurrency_coef = -1.0", "concurrency_coef", "outside");
    check("concurrency_coef = nan", "concurrency_coef", "outside");
    check("concurrency_coef = inf", "concurrency_coef", "outside");
    check("env = { NOCTURNE_FUNCTION = \"x\" }", "env", "reserved");
    check(
        "env = { \"A=B\" = \"x\" }",
        "env",
        "not an environment variable name",
    );
    check(
        "env = { \"\" = \"x\" }",
        "env",
        "not an environment variable name",
    );
    check("env = { A = \"x\\u0000\" }", "env", "NUL");

    let config = ok(&format!(
        "{ONE_ECHO}min_workers = 0\nmax_workers = 1\ntimeout = \"71m\"\nmax_payload = 0\nmax_queue = 0\n\
         max_call_depth = 1\nconcurrency_coef = 0.25\nallow_get = true\nenv = {{ A = \"1\" }}"
    ));
    let f = &config.functions[0];
    assert_eq!(
        (f.min_workers, f.max_workers, f.max_payload, f.max_queue),
        (0, 1, 0, 0)
    );
    assert_eq!(f.timeout, Duration::from_secs(71 * 60));
    assert_eq!(f.concurrency_coef, 0.25);
    assert!(f.allow_get);
    assert_eq!(f.env["A"], "1");
}

#[test]
fn unusable_allowed_sets_are_reported() {
    assert_cores(
        err_on(ONE_ECHO, &Overrides::default(), &[]),
        "unusable allowed core set",
    );
    assert_cores(
        err_on(ONE_ECHO, &Overrides::default(), &[1, 1]),
        "more than once",
    );
}

#[test]
fn summary_names_everything_that_matters() {
    let config = Config::load(None, &Overrides::default(), TWO_CORES).unwrap();
    let summary = config.summary();
    for needle in [
        "<embedded default>",
        "127.0.0.1:8080 (kernel sockets)",
        "allowed 0-1; io 1; workers not pinned (0-1)",
        "adaptive (polls 500us yielding to the workers on its cores, up to 2000us while requests come closer, then epoll)",
        "yield (yields 50us, then parks; workers are not pinned",
        "max_connections 10000, max_header_bytes 8KiB, drain_timeout 10s",
        "functions     5",
        "foo    builtin foo; workers 1..4; timeout 10s; max_payload 1MiB; POST, GET, HEAD",
    ] {
        assert!(summary.contains(needle), "{needle}\n---\n{summary}");
    }
    let config = ok(
        "poll = \"spin\"\n[[functions]]\nname = \"f\"\ncommand = [\"true\"]\nmax_workers = 1\nenv = { B = \"1\", A = \"2\" }",
    );
    let summary = config.summary();
    for needle in [
        "spin (never sleeps)",
        "io 1; workers 0",
        "spin (spins 2000us, then parks; every worker has a core of its own)",
        "command [\"true\"]",
        "; env A, B",
    ] {
        assert!(summary.contains(needle), "{needle}\n---\n{summary}");
    }
}

/// Yielding workers that share core 0 (the io loop on core 1).
const ONE_CORE: &str = "worker_cores = \"0\"\nworker_poll = \"yield\"\n";

#[test]
fn delegate_wakes_is_on_by_default_and_the_flag_beats_the_file() {
    let config = ok(&format!("{ONE_CORE}{ONE_ECHO}"));
    assert!(config.delegate_wakes && config.delegates_wakes());
    assert_eq!(config.delegate_wakes, defaults::DELEGATE_WAKES);
    let config = ok(&format!("delegate_wakes = false\n{ONE_CORE}{ONE_ECHO}"));
    assert!(!config.delegate_wakes && !config.delegates_wakes());
    assert_eq!(config.warnings, []);
    assert!(ok(&format!("delegate_wakes = true\n{ONE_CORE}{ONE_ECHO}")).delegates_wakes());
    let ov = Overrides {
        delegate_wakes: Some(true),
        ..Overrides::default()
    };
    let text = format!("delegate_wakes = false\n{ONE_CORE}{ONE_ECHO}");
    assert!(resolve_text(&text, &ov, TWO_CORES)
        .unwrap()
        .delegates_wakes());
    let ov = Overrides {
        delegate_wakes: Some(false),
        ..Overrides::default()
    };
    let config = resolve_text(&format!("{ONE_CORE}{ONE_ECHO}"), &ov, TWO_CORES).unwrap();
    assert!(!config.delegates_wakes());
    assert_eq!(config.warnings, []);
    // Yielding workers on any core (the 2-core default): on, but no board.
    let config = ok(ONE_ECHO);
    assert!(config.delegate_wakes && !config.delegates_wakes());
}

#[test]
fn the_summary_says_when_wakes_are_delegated() {
    let delegated = "wakes delegated on the shared core";
    let summary = ok(&format!("{ONE_CORE}{ONE_ECHO}")).summary();
    assert!(
        summary.contains("yield (yields 50us, then parks, wakes delegated on the shared core;"),
        "{summary}"
    );
    let summary = ok(&format!("delegate_wakes = false\n{ONE_CORE}{ONE_ECHO}")).summary();
    assert!(
        summary.contains("yield (yields 50us, then parks; "),
        "{summary}"
    );
    // Workers on any core: no board.
    let summary = ok(ONE_ECHO).summary();
    assert!(
        summary.contains("yield (yields 50us, then parks; workers are not pinned"),
        "{summary}"
    );
    // Only yielding workers are seated on a wake board.
    let summary = ok(&format!("worker_poll = \"park\"\n{ONE_ECHO}")).summary();
    assert!(!summary.contains(delegated), "{summary}");
    let summary = ok(&format!(
        "worker_cores = \"0\"\n{ONE_ECHO}max_workers = 1\n"
    ))
    .summary();
    assert!(!summary.contains(delegated), "{summary}");
}

#[test]
fn delegate_wakes_without_yielding_workers_is_warned_about() {
    assert_eq!(
        warnings(
            &format!("worker_poll = \"park\"\ndelegate_wakes = true\n{ONE_ECHO}"),
            &Overrides::default()
        ),
        [
            "/etc/nocturne/t.toml:2:18: delegate_wakes: has no effect with worker_poll = \"park\" \
             (only yielding workers share a wake board)"
        ]
    );
    let ov = Overrides {
        io_cores: Some("1".parse().unwrap()),
        worker_cores: Some("0".parse().unwrap()),
        worker_poll: Some(WorkerPoll::Spin),
        delegate_wakes: Some(false),
        ..Overrides::default()
    };
    let w = warnings(&format!("{ONE_ECHO}max_workers = 1\n"), &ov);
    assert_eq!(
        w,
        ["--delegate-wakes: has no effect with --worker-poll spin \
          (only yielding workers share a wake board)"]
    );
    // Yielding workers not confined to one core.
    assert_eq!(
        warnings(
            &format!("delegate_wakes = true\n{ONE_ECHO}"),
            &Overrides::default()
        ),
        [
            "/etc/nocturne/t.toml:1:18: delegate_wakes: has no effect unless the workers share \
             one core (worker_cores of one core)"
        ]
    );
    // Not given: nothing to say, whatever the mode.
    assert_eq!(
        warnings(
            &format!("worker_poll = \"park\"\n{ONE_ECHO}"),
            &Overrides::default()
        ),
        Vec::<String>::new()
    );
}

#[test]
fn functions_with_fewer_workers_than_loops_name_the_loops_that_run_them() {
    let text = "io_cores = \"0-1\"\n\
        [[functions]]\nname = \"one\"\nbuiltin = \"echo\"\nmax_workers = 1\n\
        [[functions]]\nname = \"two\"\nbuiltin = \"echo\"\nmax_workers = 2\n";
    let config = ok(text);
    assert_eq!(config.worker_loops(0), Some(&[0][..]));
    assert_eq!(config.worker_loops(1), None);
    let summary = config.summary();
    assert!(
        summary.contains("workers 1..1 on the loops of io cores [0] (the others forward);"),
        "{summary}"
    );
    assert!(
        summary.contains("two  builtin echo; workers 1..2; timeout"),
        "{summary}"
    );
    // One loop runs everything.
    let config = ok("[[functions]]\nname = \"one\"\nbuiltin = \"echo\"\nmax_workers = 1\n");
    assert_eq!(config.worker_loops(0), None);
}

#[test]
fn the_largest_payload_and_query_fit_a_workers_arena() {
    let config = ok(&format!(
        "max_header_bytes = \"1MiB\"\n{ONE_ECHO}max_payload = \"1022MiB\"\n"
    ));
    let f = &config.functions[0];
    assert_eq!(f.max_payload, 1022 << 20);
    let channel = crate::engine::channel_config(&config, 0);
    assert!(channel.validate().is_ok(), "{channel:?}");
    assert!(
        channel.arena_bytes as usize >= f.max_payload + config.max_header_bytes,
        "{channel:?}"
    );
    // The default: a 1 MiB body with an 8 KiB query fits with room to spare.
    let config = ok(ONE_ECHO);
    let channel = crate::engine::channel_config(&config, 0);
    assert_eq!(channel.arena_bytes, 2 << 20);
}

#[test]
fn errors_caused_by_a_set_name_the_set_not_the_file() {
    let file = format!("{ONE_ECHO}max_workers = 2\n");
    // The value that broke the check came from --set: it is named, as given.
    let e = err_on(&file, &sets(&["echo.min_workers=3"]), TWO_CORES);
    assert_eq!(
        e.to_string(),
        "invalid --set `echo.min_workers=3`: min_workers 3 is more than max_workers 2"
    );
    // Either side of a cross-check: the one the --set changed.
    let e = err_on(
        "[[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\nmin_workers = 3\n",
        &sets(&["echo.max_workers=2"]),
        TWO_CORES,
    );
    assert_override(
        e,
        "echo.max_workers=2",
        "min_workers 3 is more than max_workers 2",
    );
    // One env entry among several: the one that is wrong.
    let e = err_on(
        ONE_ECHO,
        &sets(&["echo.env.OK=1", "echo.env.NOCTURNE_X=1"]),
        TWO_CORES,
    );
    assert_override(e, "echo.env.NOCTURNE_X=1", "reserved");
    let e = err_on(ONE_ECHO, &sets(&["echo.builtin=ecoh"]), TWO_CORES);
    assert_override(e, "echo.builtin=ecoh", "did you mean `echo`");
    let e = err_on(ONE_ECHO, &sets(&["echo.timeout=999ns"]), TWO_CORES);
    assert_override(e, "echo.timeout=999ns", "outside 1us..=");
    // NOCTURNE_SET entries are named as such.
    let ov = Overrides {
        functions: parse_set_list("echo.max_queue=2000000").unwrap(),
        ..Overrides::default()
    };
    let e = err_on(ONE_ECHO, &ov, TWO_CORES);
    assert_eq!(
        e.to_string(),
        "invalid NOCTURNE_SET entry `echo.max_queue=2000000`: 2000000 is more than 1048576"
    );
    // A file value that is wrong by itself is still the file's, with its line.
    let at = assert_invalid(
        err_on(
            &format!("{ONE_ECHO}max_queue = 2000000\n"),
            &sets(&["echo.min_workers=2"]),
            TWO_CORES,
        ),
        "functions[echo].max_queue",
        "2000000",
    );
    assert_eq!(at.map(|at| at.line), Some(1));
}

#[test]
fn top_level_value_errors_name_their_line() {
    for (text, field, needle) in [
        (
            "max_connections = 0",
            "max_connections",
            "must be at least 1",
        ),
        (
            "max_header_bytes = 10",
            "max_header_bytes",
            "10 bytes is outside",
        ),
        ("drain_timeout = \"2h\"", "drain_timeout", "longer than 1h"),
        (
            "header_timeout = \"0\"",
            "header_timeout",
            "must be more than 0 and at most 1h (got 0s)",
        ),
        (
            "keepalive_timeout = \"61m\"",
            "keepalive_timeout",
            "must be more than 0 and at most 1h (got 61m)",
        ),
        ("spin_us = 5000000", "spin_us", "more than 1000000"),
        (
            "worker_spin_us = 5000000",
            "worker_spin_us",
            "more than 1000000",
        ),
        (
            "tap = \"tap0\"",
            "tap",
            "only applies to the smoltcp backend",
        ),
        ("net = \"smoltcp\"", "net", "needs a device"),
    ] {
        let at = assert_invalid(err(&format!("\n\n{text}\n{ONE_ECHO}")), field, needle);
        let at = at.unwrap_or_else(|| panic!("{text}: no location"));
        assert_eq!(
            (at.file.as_str(), at.line),
            ("/etc/nocturne/t.toml", 3),
            "{text}"
        );
    }
    let msg = err("\nworker_poll = \"spin\"\n[[functions]]\nname = \"e\"\nbuiltin = \"echo\"\n")
        .to_string();
    assert!(
        msg.starts_with("/etc/nocturne/t.toml:2:15: worker_poll = \"spin\" needs a core"),
        "{msg}"
    );
    // From a flag: named after the flag, without a line.
    let ov = Overrides {
        max_connections: Some(0),
        ..Overrides::default()
    };
    let at = assert_invalid(
        err_on(ONE_ECHO, &ov, TWO_CORES),
        "--max-connections",
        "at least 1",
    );
    assert_eq!(at, None);
}

#[test]
fn validation_messages_name_what_was_set() {
    // min_workers alone raises the default max_workers: min_workers is named.
    assert_invalid(
        err(&format!("{ONE_ECHO}min_workers = 1025\n")),
        "functions[echo].min_workers",
        "min_workers 1025 is more than 1024",
    );
    assert_invalid(
        err(&format!("{ONE_ECHO}max_workers = 1025\n")),
        "functions[echo].max_workers",
        "max_workers 1025 is more than 1024",
    );
    // Deadlines are whole microseconds on the wire: less than 1us is refused.
    for short in ["999ns", "1ns"] {
        assert_invalid(
            err(&format!("{ONE_ECHO}timeout = \"{short}\"\n")),
            "functions[echo].timeout",
            &format!("{short} is outside 1us..=4294967295us"),
        );
    }
    for fine in ["1us", "71m34s", "1h11m34s967ms295us"] {
        ok(&format!("{ONE_ECHO}timeout = \"{fine}\"\n"));
    }
    assert_invalid(
        err(&format!("{ONE_ECHO}timeout = \"71m35s\"\n")),
        "functions[echo].timeout",
        "outside",
    );
}

/// The warnings `text` (with `ov`) resolves with, on two cores.
fn warnings(text: &str, ov: &Overrides) -> Vec<String> {
    resolve_text(text, ov, TWO_CORES)
        .unwrap()
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn settings_without_effect_are_accepted_with_a_warning() {
    let none = Overrides::default();
    assert_eq!(
        warnings(
            &format!("poll = \"block\"\nspin_us = 20\n{ONE_ECHO}"),
            &none
        ),
        [
            "/etc/nocturne/t.toml:2:11: spin_us: has no effect with poll = \"block\" \
          (only an adaptive loop polls before it sleeps)"
        ]
    );
    let ov = Overrides {
        poll: Some(PollMode::Spin),
        spin_us: Some(20),
        worker_poll: Some(WorkerPoll::Park),
        worker_spin_us: Some(5),
        ..Overrides::default()
    };
    let w = warnings(ONE_ECHO, &ov);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("--spin-us: has no effect with --poll spin"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("--worker-spin-us: has no effect with --worker-poll park"),
        "{w:?}"
    );
    // Budgets that the chosen modes read, and defaults, say nothing.
    assert!(warnings(
        &format!("spin_us = 20\nworker_spin_us = 5\n{ONE_ECHO}"),
        &none
    )
    .is_empty());
    assert!(warnings(
        &format!("poll = \"block\"\nworker_poll = \"park\"\n{ONE_ECHO}"),
        &none
    )
    .is_empty());
}
