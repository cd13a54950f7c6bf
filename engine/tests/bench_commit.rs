//! `NOCTURNE_BENCH_COMMIT` names the commit of every bench report (for a
//! binary copied to a machine without the checkout): the real binary, run
//! as a subprocess with the variable set or not (no process-wide
//! environment is touched), writes it into the JSON's `machine.commit`;
//! without it, the commit `build.rs` baked into the binary is written,
//! wherever the binary runs.
//! The run is the cheapest report there is: `bench ipc`, one pipe case, a
//! few samples.

use std::time::Duration;

mod bench_run;
use bench_run::{case_names, command, read_report, Scratch};

/// A debug build on a busy 2-core machine; the run itself takes
/// milliseconds.
const RUN_LIMIT: Duration = Duration::from_secs(120);

const VARIABLE: &str = "NOCTURNE_BENCH_COMMIT";

/// A value no checkout's `git rev-parse HEAD` gives.
const COMMIT: &str = "nocturne-test-commit-0123456789";

/// Runs a tiny `bench ipc` with `NOCTURNE_BENCH_COMMIT` set to `value` (or
/// unset) and returns the `machine.commit` of its report.
fn reported_commit(value: Option<&str>, tag: &str) -> String {
    let scratch = Scratch::new(tag);
    let json = scratch.0.join("ipc.json");
    let mut cmd = command(); // without the test's NOCTURNE_* variables
                             // Outside any checkout: the commit must not come from the directory.
    cmd.current_dir(&scratch.0);
    if let Some(value) = value {
        cmd.env(VARIABLE, value);
    }
    let run = bench_run::nocturne_watched(
        cmd,
        &[
            "bench",
            "ipc",
            "--filter",
            "pipe",
            "--payload",
            "64",
            "--rounds",
            "1",
            "--samples",
            "10",
            "--warmup",
            "1",
            "--json",
            json.to_str().unwrap(),
        ],
        &scratch,
        RUN_LIMIT,
        |_| {},
    );
    run.assert_success();
    let report = read_report(&json);
    let names = case_names(&report);
    assert_eq!(names, ["pipe/64"], "{report}");
    report["machine"]["commit"]
        .as_str()
        .unwrap_or_else(|| panic!("no machine.commit: {report}"))
        .to_owned()
}

fn have_two_cores() -> bool {
    bench_run::have_cores_0_and_1("bench ipc")
}

#[test]
fn the_variable_names_the_reports_commit() {
    if !have_two_cores() {
        return;
    }
    assert_eq!(reported_commit(Some(COMMIT), "set"), COMMIT);
    // Surrounding blanks (a value pasted from a file) are trimmed.
    assert_eq!(
        reported_commit(Some(&format!("  {COMMIT}\n")), "padded"),
        COMMIT
    );
}

#[test]
fn without_the_variable_the_commit_is_the_one_the_binary_was_built_from() {
    if !have_two_cores() {
        return;
    }
    // Unset, or set to nothing but blanks: the commit `build.rs` baked in
    // (a short hash, `-dirty` for a tree with changes, or "unknown"),
    // whatever directory the binary runs in (the run's is a scratch
    // directory outside any checkout).
    let built = nocturne_bench::report::BUILD_COMMIT;
    let hash = built.strip_suffix("-dirty").unwrap_or(built);
    assert!(
        built == "unknown" || (hash.len() >= 4 && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "the baked-in commit {built:?} is neither a short git hash nor \"unknown\""
    );
    for (value, tag) in [(None, "unset"), (Some(" \t"), "blank")] {
        let commit = reported_commit(value, tag);
        assert_eq!(commit, built, "{VARIABLE}={value:?}");
    }
}
