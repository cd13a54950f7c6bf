//! The shell scripts in `bench/scripts`, run for real with bad arguments and
//! with stand-ins that fail: they refuse bad input before they start or
//! create anything, and a failure part-way leaves no process behind and
//! does not hang. Nothing here needs 16 cores or a release build: the
//! stand-ins (a fake `nocturne`, a fake C compiler whose "co-runner" fails
//! its second ping) take the place of the real programs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A script that hangs is the bug these tests look for: give up well
/// before any harness would, with the script's output.
const SCRIPT_LIMIT: Duration = Duration::from_secs(60);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nct-scripts-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Writes an executable file `name` with `text`.
    fn executable(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a script printed and how it ended.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `cmd` to its end, its output into files in `scratch` (not pipes:
/// a process the script leaves behind would hold a pipe open, and reading
/// it would hang the test); kills it and fails the test past
/// [`SCRIPT_LIMIT`].
fn run(mut cmd: Command, scratch: &Scratch) -> Ran {
    let (out_path, err_path) = (scratch.0.join("stdout"), scratch.0.join("stderr"));
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start bash");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > SCRIPT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still ran after {SCRIPT_LIMIT:?}:\n{}\n{}",
                read(&out_path),
                read(&err_path)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        code: status.code(),
        stdout: read(&out_path),
        stderr: read(&err_path),
        took: started.elapsed(),
    }
}

/// Kills, on drop, every process whose command line carries the marker:
/// the stand-ins this test started, should a broken script leave them.
struct KillMarked(Vec<String>);

impl Drop for KillMarked {
    fn drop(&mut self) {
        for needle in &self.0 {
            for pid in pids_mentioning(needle) {
                // SIGKILL through the `kill` program: no unsafe code here.
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

fn bash(script_name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(script(script_name)).args(args);
    cmd
}

/// Live processes (not zombies) whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    processes(needle)
        .into_iter()
        .map(|(_, line)| line)
        .collect()
}

fn pids_mentioning(needle: &str) -> Vec<u32> {
    processes(needle).into_iter().map(|(pid, _)| pid).collect()
}

fn processes(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let zombie = stat
            .rfind(')')
            .is_some_and(|close| stat[close + 1..].trim_start().starts_with('Z'));
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let pid = entry.file_name().to_string_lossy().parse::<u32>();
        if let (false, true, Ok(pid)) = (zombie, line.contains(needle), pid) {
            found.push((pid, line));
        }
    }
    found
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn host16_checks_its_arguments_before_running_or_creating_anything() {
    let scratch = Scratch::new("host16");
    let out_dir = scratch.0.join("out");
    let out = out_dir.to_str().unwrap();
    // A stand-in that leaves a mark if any step ever runs it.
    let ran = scratch.0.join("ran");
    let fake = scratch.executable(
        "nocturne",
        &format!("#!/bin/sh\ntouch '{}'\n", ran.display()),
    );
    let not_executable = scratch.0.join("plain");
    std::fs::write(&not_executable, "").unwrap();
    let fake = fake.to_str().unwrap();
    for (args, needle) in [
        (vec![], "usage: host16.sh BINARY OUTDIR"),
        (
            vec!["/nonexistent/nocturne", out],
            "is not an executable file",
        ),
        (
            vec![not_executable.to_str().unwrap(), out],
            "is not an executable file",
        ),
        (
            vec![scratch.0.to_str().unwrap(), out],
            "is not an executable file",
        ),
        // The known step first: it must not run before the bad name is seen.
        (vec![fake, out, "latency", "bogus"], "unknown step bogus"),
    ] {
        let r = run(bash("host16.sh", &args), &scratch);
        assert_eq!(r.code, Some(2), "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
        assert!(!out_dir.exists(), "{args:?} created OUTDIR");
        assert!(!ran.exists(), "{args:?} ran a step");
        assert!(
            r.took < Duration::from_secs(10),
            "{args:?} took {:?}",
            r.took
        );
    }
    // Good arguments on a machine too small: refused, still nothing made.
    let small = std::thread::available_parallelism().map_or(1, |n| n.get()) < 16;
    if small {
        let r = run(bash("host16.sh", &[fake, out, "latency"]), &scratch);
        assert_eq!(r.code, Some(2), "{}", r.stderr);
        assert!(r.stderr.contains("needs 16 cores"), "{}", r.stderr);
        assert!(!out_dir.exists() && !ran.exists());
    }
}

#[test]
fn count_wakes_refuses_bad_arguments_before_starting_anything() {
    let scratch = Scratch::new("count-wakes-usage");
    let ran = scratch.0.join("ran");
    let fake = scratch.executable(
        "nocturne",
        &format!("#!/bin/sh\ntouch '{}'\n", ran.display()),
    );
    let fake = fake.to_str().unwrap();
    let plain = scratch.0.join("plain");
    std::fs::write(&plain, "").unwrap();
    for (args, needle) in [
        (vec![], "usage: bench/scripts/count_wakes.sh BINARY RATE"),
        (
            vec![fake],
            "usage: bench/scripts/count_wakes.sh BINARY RATE",
        ),
        (
            vec![plain.to_str().unwrap(), "1000"],
            "is not an executable file",
        ),
        (
            vec![scratch.0.to_str().unwrap(), "1000"],
            "is not an executable file",
        ),
        (vec![fake, "0"], "RATE must be a whole number"),
        (vec![fake, "1.5k"], "RATE must be a whole number"),
        (vec![fake, "fast"], "RATE must be a whole number"),
    ] {
        let r = run(bash("count_wakes.sh", &args), &scratch);
        assert_eq!(r.code, Some(2), "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
        assert!(!ran.exists(), "{args:?} ran the binary");
    }
}

#[test]
fn corunners_prints_its_usage_on_bad_arguments() {
    let scratch = Scratch::new("corunners-usage");
    let plain = scratch.0.join("plain");
    std::fs::write(&plain, "").unwrap();
    for args in [
        vec![],
        vec![plain.to_str().unwrap()],
        vec!["/bin/sh", "zero"],
    ] {
        let r = run(bash("corunners.sh", &args), &scratch);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr
                .contains("usage: bench/scripts/corunners.sh BINARY [ROUNDS]")
                || r.stderr.contains("ROUNDS must be a positive number"),
            "{args:?}: {}",
            r.stderr
        );
    }
}

#[test]
fn corunners_stops_every_process_it_started_when_a_ping_fails() {
    for program in ["python3", "curl", "realpath"] {
        if !have(program) {
            eprintln!("skipped: corunners.sh needs {program}");
            return;
        }
    }
    let scratch = Scratch::new("corunners-fail");
    let marker = format!("nct-corunner-test-{}", std::process::id());
    let _reaper = KillMarked(vec![marker.clone(), scratch.0.display().to_string()]);
    // The "echo server": a real HTTP server on the port the script picks,
    // its command line marked with the scratch path.
    let fake_nocturne = scratch.executable(
        "nocturne",
        &format!(
            "#!/bin/bash\n\
             if [ \"$1 $2\" = 'bench load-echo-server' ]; then\n\
             \x20 exec python3 -m http.server --bind 127.0.0.1 --directory '{dir}' \"${{4##*:}}\"\n\
             fi\n\
             exec -a {marker}-serve sleep 300\n",
            dir = scratch.0.display()
        ),
    );
    // The "C compiler" writes a co-runner whose loops never end (a marked
    // sleep) and whose second ping fails, as one against a dead server does.
    let bin = scratch.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let corunner = format!(
        "#!/bin/bash\n\
         case $1 in\n\
         \x20 ping)\n\
         \x20   n=$(cat \"$0.pings\" 2>/dev/null || echo 0)\n\
         \x20   echo $((n + 1)) >\"$0.pings\"\n\
         \x20   if [ \"$n\" = 0 ]; then echo 'p50 1.0'; exit 0; fi\n\
         \x20   echo 'connect: connection refused' >&2; exit 1 ;;\n\
         \x20 *) exec -a {marker}-loop sleep 300 ;;\n\
         esac\n"
    );
    std::fs::write(scratch.0.join("corunner.template"), corunner).unwrap();
    std::fs::write(
        bin.join("cc"),
        format!(
            "#!/bin/bash\n\
             while [ $# -gt 0 ]; do [ \"$1\" = -o ] && out=$2; shift; done\n\
             cp '{}' \"$out\" && chmod +x \"$out\"\n",
            scratch.0.join("corunner.template").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("cc"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = scratch.0.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();

    let mut cmd = bash("corunners.sh", &[fake_nocturne.to_str().unwrap(), "1"]);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path).env("TMPDIR", &tmp);
    let r = run(cmd, &scratch);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(r.code.is_some_and(|c| c != 0), "{all}");
    assert!(r.stderr.contains("connection refused"), "{all}");
    // The first ping ran; the second failed with its co-runner running.
    assert!(r.stdout.contains("echo-server alone"), "{all}");
    assert!(r.stdout.contains("echo-server + 1 yield"), "{all}");
    assert!(r.took < Duration::from_secs(30), "took {:?}", r.took);
    // Nothing it started is left: not the co-runner loop, not the server.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = processes_mentioning(&marker);
        left.extend(processes_mentioning(&scratch.0.display().to_string()));
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left running: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its work directory is gone too.
    let leftovers: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
