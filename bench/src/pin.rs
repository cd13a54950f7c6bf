//! Core pinning for benchmark threads and processes.
//!
//! A benchmark names its cores on the command line (`--cores 0,1`, `2-5`);
//! [`parse_core_list`] turns that into core ids, [`allowed_cores`] reads the
//! set this process may run on (`sched_getaffinity`, through
//! `core_affinity`), [`check_cores`] rejects ids outside it with a message
//! that lists the allowed ones, and [`pin_current_thread`] moves the calling
//! thread onto one core. Read the allowed set *before* pinning anything: a
//! pinned thread (and every process it spawns) sees only its own core.

use std::collections::BTreeSet;

use core_affinity::CoreId;

/// Why a core list could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreListError {
    /// The list names no core at all.
    #[error("empty core list")]
    Empty,
    /// An element is not a core number or a `LOW-HIGH` range of them.
    #[error("bad core list element {0:?}: expected a core number or LOW-HIGH")]
    BadElement(String),
    /// A range runs backwards (`5-2`).
    #[error("bad core range {low}-{high}: the low end is above the high end")]
    BackwardsRange {
        /// First number of the range.
        low: usize,
        /// Second number of the range.
        high: usize,
    },
    /// A core is named twice.
    #[error("core {0} is listed twice")]
    Duplicate(usize),
}

/// Why cores could not be checked or pinned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// `sched_getaffinity` failed.
    #[error("cannot read this process's CPU affinity (sched_getaffinity failed)")]
    AffinityUnavailable,
    /// The core is not in the set this process may run on.
    #[error("core {core} is not available to this process (allowed cores: {allowed})")]
    NotAllowed {
        /// The core that was asked for.
        core: usize,
        /// The allowed cores, formatted as a core list.
        allowed: String,
    },
    /// `sched_setaffinity` refused the core.
    #[error("pinning the current thread to core {core} failed (sched_setaffinity)")]
    SetFailed {
        /// The core that was asked for.
        core: usize,
    },
}

/// Parses a core list such as `0,1`, `2-5` or `0,4-6`, keeping the order the
/// user wrote (the first core often has a role, e.g. the driver's).
pub fn parse_core_list(text: &str) -> Result<Vec<usize>, CoreListError> {
    let mut cores = Vec::new();
    let mut seen = BTreeSet::new();
    for element in text.split(',').map(str::trim) {
        if element.is_empty() {
            if text.trim().is_empty() {
                return Err(CoreListError::Empty);
            }
            return Err(CoreListError::BadElement(element.to_owned()));
        }
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| CoreListError::BadElement(element.to_owned()))
        };
        let (low, high) = match element.split_once('-') {
            Some((low, high)) => (parse(low)?, parse(high)?),
            None => {
                let core = parse(element)?;
                (core, core)
            }
        };
        if low > high {
            return Err(CoreListError::BackwardsRange { low, high });
        }
        for core in low..=high {
            if !seen.insert(core) {
                return Err(CoreListError::Duplicate(core));
            }
            cores.push(core);
        }
    }
    Ok(cores)
}

/// Formats core ids as a compact core list (`0-3,6`), the inverse of
/// [`parse_core_list`] for sorted input.
pub fn format_core_list(cores: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cores.len() {
        let mut j = i;
        while j + 1 < cores.len() && cores[j + 1] == cores[j] + 1 {
            j += 1;
        }
        if j > i {
            out.push(format!("{}-{}", cores[i], cores[j]));
        } else {
            out.push(cores[i].to_string());
        }
        i = j + 1;
    }
    out.join(",")
}

/// The cores the calling thread may run on, sorted.
pub fn allowed_cores() -> Result<Vec<usize>, PinError> {
    let mut cores: Vec<usize> = core_affinity::get_core_ids()
        .ok_or(PinError::AffinityUnavailable)?
        .into_iter()
        .map(|c| c.id)
        .collect();
    cores.sort_unstable();
    Ok(cores)
}

/// Checks that every core in `cores` is in `allowed`.
pub fn check_cores_against(cores: &[usize], allowed: &[usize]) -> Result<(), PinError> {
    match cores.iter().find(|c| !allowed.contains(c)) {
        None => Ok(()),
        Some(&core) => Err(PinError::NotAllowed {
            core,
            allowed: format_core_list(allowed),
        }),
    }
}

/// Checks that every core in `cores` is one this process may run on.
pub fn check_cores(cores: &[usize]) -> Result<(), PinError> {
    check_cores_against(cores, &allowed_cores()?)
}

/// Pins the calling thread to `core`.
pub fn pin_current_thread(core: usize) -> Result<(), PinError> {
    if core_affinity::set_for_current(CoreId { id: core }) {
        Ok(())
    } else {
        Err(PinError::SetFailed { core })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_ranges_in_order() {
        assert_eq!(parse_core_list("0,1"), Ok(vec![0, 1]));
        assert_eq!(parse_core_list("1,0"), Ok(vec![1, 0]));
        assert_eq!(parse_core_list("2-4"), Ok(vec![2, 3, 4]));
        assert_eq!(parse_core_list(" 0 , 4-6 ,9"), Ok(vec![0, 4, 5, 6, 9]));
        assert_eq!(parse_core_list("7-7"), Ok(vec![7]));
    }

    #[test]
    fn rejects_malformed_lists() {
        assert_eq!(parse_core_list(""), Err(CoreListError::Empty));
        assert_eq!(parse_core_list("  "), Err(CoreListError::Empty));
        assert_eq!(
            parse_core_list("0,,1"),
            Err(CoreListError::BadElement(String::new()))
        );
        assert_eq!(
            parse_core_list("a"),
            Err(CoreListError::BadElement("a".into()))
        );
        assert_eq!(
            parse_core_list("-1"),
            Err(CoreListError::BadElement("-1".into()))
        );
        assert_eq!(
            parse_core_list("1-"),
            Err(CoreListError::BadElement("1-".into()))
        );
        assert_eq!(
            parse_core_list("1-2-3"),
            Err(CoreListError::BadElement("1-2-3".into()))
        );
        assert_eq!(
            parse_core_list("5-2"),
            Err(CoreListError::BackwardsRange { low: 5, high: 2 })
        );
        assert_eq!(parse_core_list("0,1,0"), Err(CoreListError::Duplicate(0)));
        assert_eq!(parse_core_list("0-3,2"), Err(CoreListError::Duplicate(2)));
    }

    #[test]
    fn formats_compact_lists() {
        assert_eq!(format_core_list(&[]), "");
        assert_eq!(format_core_list(&[0]), "0");
        assert_eq!(format_core_list(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(format_core_list(&[1, 3, 5, 6]), "1,3,5-6");
        for list in ["0-3,6", "1,3,5-6", "0"] {
            assert_eq!(format_core_list(&parse_core_list(list).unwrap()), list);
        }
    }

    #[test]
    fn checks_against_the_allowed_set() {
        assert_eq!(check_cores_against(&[0, 1], &[0, 1, 2]), Ok(()));
        assert_eq!(
            check_cores_against(&[0, 9], &[0, 1, 2]),
            Err(PinError::NotAllowed {
                core: 9,
                allowed: "0-2".into()
            })
        );
        let err = check_cores_against(&[9], &[0, 1]).unwrap_err();
        assert!(err.to_string().contains("allowed cores: 0-1"), "{err}");
    }

    #[test]
    fn the_allowed_set_is_nonempty_and_pinnable() {
        let allowed = allowed_cores().unwrap();
        assert!(!allowed.is_empty());
        check_cores(&allowed).unwrap();
        assert!(check_cores(&[usize::MAX / 2]).is_err());
        // Pin on a scratch thread so the test harness thread stays unpinned.
        let first = allowed[0];
        std::thread::spawn(move || {
            pin_current_thread(first).unwrap();
            assert_eq!(allowed_cores().unwrap(), vec![first]);
        })
        .join()
        .unwrap();
    }
}
