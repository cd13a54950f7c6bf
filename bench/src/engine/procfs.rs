//! What the benchmark reads about its servers from `/proc`: resident memory
//! (`VmRSS` of `/proc/PID/status`) and the engine's worker processes (every
//! process whose parent is the engine, with its command line), so a case can
//! report memory and name the exact processes on both ends of a call.

use std::fs;

/// A child process of a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildProcess {
    /// Its process id.
    pub pid: u32,
    /// Its command line.
    pub args: Vec<String>,
}

impl ChildProcess {
    /// The function a built-in worker serves: `NAME` of `… worker NAME`.
    pub fn worker_function(&self) -> Option<&str> {
        match &self.args[..] {
            [_, sub, name] if sub == "worker" => Some(name),
            _ => None,
        }
    }
}

/// `VmRSS` of a `/proc/PID/status` text, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(value),
        _ => None,
    }
}

/// The resident memory of process `pid` in MiB, if it is alive.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss_kib(&text).map(|kib| kib as f64 / 1024.0)
}

/// The parent pid in a `/proc/PID/stat` line (the field after the state,
/// which follows the command name in parentheses; the name may itself
/// contain `)` and spaces).
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let close = stat.rfind(')')?;
    let mut fields = stat[close + 1..].split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// A `/proc/PID/cmdline` (NUL-separated) as arguments.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Every live process whose parent is `ppid`, sorted by pid. Processes
/// that exit during the scan are skipped.
pub fn children_of(ppid: u32) -> Vec<ChildProcess> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children: Vec<ChildProcess> = entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            if parse_stat_ppid(&stat)? != ppid {
                return None;
            }
            let args = parse_cmdline(&fs::read(format!("/proc/{pid}/cmdline")).ok()?);
            Some(ChildProcess { pid, args })
        })
        .collect();
    children.sort_by_key(|c| c.pid);
    children
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tnocturne\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(5120));
        assert_eq!(parse_vm_rss_kib("Name: x\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS: lots kB\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS: 12 MB\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\n"), None);
    }

    #[test]
    fn parses_the_parent_of_a_stat_line() {
        assert_eq!(parse_stat_ppid("42 (nocturne) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("42 (a) b) (c) R 9 1"), Some(9));
        assert_eq!(parse_stat_ppid("42 (x) S"), None);
        assert_eq!(parse_stat_ppid("garbage"), None);
        assert_eq!(parse_stat_ppid("1 (x) S notanumber"), None);
    }

    #[test]
    fn parses_command_lines_and_worker_names() {
        let args = parse_cmdline(b"/bin/nocturne\0worker\0nop\0");
        assert_eq!(args, ["/bin/nocturne", "worker", "nop"]);
        let child = ChildProcess { pid: 1, args };
        assert_eq!(child.worker_function(), Some("nop"));
        let other = ChildProcess {
            pid: 2,
            args: parse_cmdline(b"./my-function\0--flag\0"),
        };
        assert_eq!(other.worker_function(), None);
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn finds_real_children_and_their_memory() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id();
        // `spawn` returns once the child exists, possibly before its `exec`
        // has finished; meanwhile `/proc/PID/cmdline` reads empty (or the
        // parent's). Scan until the child shows its own command line.
        // The last scan is kept for the assertion, made after the child is
        // killed so that a failure leaves no process behind.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let sleeper = loop {
            let sleeper = children_of(me).into_iter().find(|c| c.pid == child.id());
            let exec_done = sleeper
                .as_ref()
                .is_some_and(|s| s.args.first().is_some_and(|a| a == "sleep"));
            if exec_done || std::time::Instant::now() > deadline {
                break sleeper;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            sleeper.map(|s| s.args),
            Some(vec!["sleep".to_owned(), "30".to_owned()])
        );
        assert!(rss_mib(me).unwrap() > 0.0);
        assert_eq!(rss_mib(u32::MAX), None);
        assert!(children_of(u32::MAX).is_empty());
    }
}
