//! `NOCTURNE_*` environment variables as seen by `ServeArgs::resolve_with`.
//!
//! The environment is process-wide, so this file holds exactly one test and
//! runs as its own process: nothing else reads the variables it sets.

use std::time::Duration;

use clap::Parser;
use nocturne_engine::cli::ServeArgs;
use nocturne_engine::config::{PollMode, WorkerPoll};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn parse(args: &[&str]) -> ServeArgs {
    Cli::try_parse_from(std::iter::once("nocturne").chain(args.iter().copied()))
        .expect("parse flags")
        .serve
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    for (key, _) in std::env::vars() {
        if key.starts_with("NOCTURNE_") {
            std::env::remove_var(key);
        }
    }
    let dir = std::env::temp_dir().join(format!("nocturne-config-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("nocturne.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7000\"\npoll = \"block\"\nspin_us = 11\nspin_max_us = 900\ndelegate_wakes = true\n\
         [[functions]]\nname = \"f\"\nbuiltin = \"echo\"\nmax_workers = 2\n",
    )
    .unwrap();
    let allowed = [0, 1, 2, 3];

    // NOCTURNE_CONFIG alone: the file's values.
    std::env::set_var("NOCTURNE_CONFIG", &file);
    let config = parse(&[]).resolve_with(&allowed).unwrap();
    assert_eq!(config.listen.port(), 7000);
    assert_eq!(config.poll, PollMode::Block);
    assert_eq!(config.io_cores, [3]);
    assert!(config.delegate_wakes);
    assert_eq!(config.spin_max_us, 900);

    // Variables beat the file, and leave the rest of it alone.
    std::env::set_var("NOCTURNE_LISTEN", "127.0.0.1:7001");
    std::env::set_var("NOCTURNE_POLL", "spin");
    std::env::set_var("NOCTURNE_IO_CORES", "2-3");
    std::env::set_var("NOCTURNE_WORKER_POLL", "park");
    std::env::set_var("NOCTURNE_DELEGATE_WAKES", "false");
    std::env::set_var("NOCTURNE_SPIN_MAX_US", "1200");
    std::env::set_var("NOCTURNE_MAX_CONNECTIONS", "42");
    std::env::set_var("NOCTURNE_DRAIN_TIMEOUT", "1500ms");
    std::env::set_var("NOCTURNE_SET", "f.max_workers=3;f.env.MODE=fast");
    let config = parse(&[]).resolve_with(&allowed).unwrap();
    assert_eq!(config.listen.port(), 7001);
    assert_eq!(config.poll, PollMode::Spin);
    assert_eq!(config.io_cores, [2, 3]);
    assert_eq!(config.worker_cores.as_deref(), Some(&[0, 1][..]));
    assert_eq!(config.worker_poll, WorkerPoll::Park);
    assert!(
        !config.delegate_wakes,
        "resolved, though parking workers ignore it"
    );
    assert_eq!(config.max_connections, 42);
    assert_eq!(config.drain_timeout, Duration::from_millis(1500));
    assert_eq!(config.spin_us, 11, "from the file");
    assert_eq!(config.spin_max_us, 1200);
    let f = config.function("f").unwrap();
    assert_eq!(f.max_workers, 3);
    assert_eq!(f.env["MODE"], "fast");

    // Flags beat the variables.
    let config = parse(&[
        "--listen=127.0.0.1:7002",
        "--poll=adaptive",
        "--io-cores=0",
        "--set=f.max_workers=4",
        "--delegate-wakes",
        "true",
        "--spin-max-us=0",
    ])
    .resolve_with(&allowed)
    .unwrap();
    assert_eq!(config.listen.port(), 7002);
    assert_eq!(config.poll, PollMode::Adaptive);
    assert_eq!(config.io_cores, [0]);
    let f = config.function("f").unwrap();
    assert_eq!(f.max_workers, 4);
    assert_eq!(
        f.env["MODE"], "fast",
        "NOCTURNE_SET's other entries stay beside a --set"
    );
    assert_eq!(config.max_connections, 42, "still from the environment");
    assert!(config.delegate_wakes);
    assert_eq!(config.spin_max_us, 0);

    // A variable that fails validation is reported under its flag's name.
    std::env::set_var("NOCTURNE_SPIN_US", "5000000");
    let err = parse(&[]).resolve_with(&allowed).unwrap_err().to_string();
    assert!(err.contains("--spin-us"), "{err}");
    std::env::set_var("NOCTURNE_SPIN_US", "20");
    std::env::set_var("NOCTURNE_SPIN_MAX_US", "2000000");
    let err = parse(&[]).resolve_with(&allowed).unwrap_err().to_string();
    assert!(
        err.contains("--spin-max-us") && err.contains("2000000"),
        "{err}"
    );
    std::env::set_var("NOCTURNE_SPIN_MAX_US", "2000");
    // A malformed variable is refused by the parser, naming the flag.
    std::env::set_var("NOCTURNE_DELEGATE_WAKES", "maybe");
    let err = Cli::try_parse_from(["nocturne"]).unwrap_err().to_string();
    assert!(
        err.contains("invalid value 'maybe' for '--delegate-wakes <BOOL>'"),
        "{err}"
    );
    std::env::set_var("NOCTURNE_DELEGATE_WAKES", "false");
    std::env::set_var("NOCTURNE_WORKER_CORES", "1,1");
    let err = Cli::try_parse_from(["nocturne"]).unwrap_err().to_string();
    assert!(
        err.contains("--worker-cores") && err.contains("more than once"),
        "{err}"
    );

    std::fs::remove_dir_all(&dir).unwrap();
}
