//! CPU core sets: the `"0,2-3"` lists of `--io-cores`/`--worker-cores`, and
//! the set of cores this process may run on (`sched_getaffinity`).
//!
//! A [`CoreSet`] is sorted and duplicate-free by construction; a list that
//! names a core twice (`"1,1"`, `"0-2,2"`) is refused rather than merged,
//! because two io loops on one core would each get half of it.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// The largest core number a Linux `cpu_set_t` can hold, plus one.
pub const MAX_CORES: usize = 1024;

/// Why a core list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreSetError {
    #[error("empty core list; write cores like \"3\", \"0,2\" or \"0-3\"")]
    Empty,
    #[error("`{0}` is not a core number or a range like \"0-3\"")]
    Malformed(String),
    #[error("range `{0}` runs backwards; write the lower core first")]
    Backwards(String),
    #[error("core {0} is listed more than once")]
    Duplicate(usize),
    /// The core as written (it may not fit a number).
    #[error("core {0} is beyond the {MAX_CORES} cores Linux can address")]
    TooLarge(String),
}

/// A non-empty, sorted, duplicate-free set of core numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CoreSet(Vec<usize>);

impl CoreSet {
    /// Builds a set from core numbers; refuses an empty list, duplicates and
    /// cores Linux cannot address.
    pub fn new(cores: impl IntoIterator<Item = usize>) -> Result<Self, CoreSetError> {
        let mut cores: Vec<usize> = cores.into_iter().collect();
        if cores.is_empty() {
            return Err(CoreSetError::Empty);
        }
        cores.sort_unstable();
        if let Some(pair) = cores.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(CoreSetError::Duplicate(pair[0]));
        }
        if let Some(&core) = cores.iter().find(|&&core| core >= MAX_CORES) {
            return Err(CoreSetError::TooLarge(core.to_string()));
        }
        Ok(CoreSet(cores))
    }

    /// The cores, ascending.
    pub fn cores(&self) -> &[usize] {
        &self.0
    }

    /// The number of cores (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a core set is never empty. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The highest core of the set.
    pub fn last(&self) -> usize {
        // Never empty by construction.
        self.0.last().copied().unwrap_or(0)
    }

    pub fn contains(&self, core: usize) -> bool {
        self.0.binary_search(&core).is_ok()
    }

    /// The cores of `self` that are also in `other`, ascending.
    pub fn intersection(&self, other: &CoreSet) -> Vec<usize> {
        self.0
            .iter()
            .copied()
            .filter(|&c| other.contains(c))
            .collect()
    }

    /// The cores of `self` that are not in `other`, ascending.
    pub fn difference(&self, other: &CoreSet) -> Vec<usize> {
        self.0
            .iter()
            .copied()
            .filter(|&c| !other.contains(c))
            .collect()
    }

    /// Renders a core list in the same compressed form the parser reads
    /// (`"0,2-3"`).
    pub fn format(cores: &[usize]) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < cores.len() {
            let start = cores[i];
            let mut end = start;
            while i + 1 < cores.len() && cores[i + 1] == end + 1 {
                i += 1;
                end = cores[i];
            }
            if !out.is_empty() {
                out.push(',');
            }
            if end == start {
                out.push_str(&start.to_string());
            } else {
                out.push_str(&format!("{start}-{end}"));
            }
            i += 1;
        }
        out
    }
}

impl fmt::Display for CoreSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&CoreSet::format(&self.0))
    }
}

impl FromStr for CoreSet {
    type Err = CoreSetError;

    /// Parses `"3"`, `"0,2"`, `"0-3"`, `"0, 2-3"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(CoreSetError::Empty);
        }
        let parse_core = |text: &str, item: &str| -> Result<usize, CoreSetError> {
            let text = text.trim();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CoreSetError::Malformed(item.to_owned()));
            }
            // All digits: only an overflow can fail, and that is too large too.
            text.parse()
                .map_err(|_| CoreSetError::TooLarge(text.to_owned()))
        };
        let mut cores = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            match item.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (parse_core(lo, item)?, parse_core(hi, item)?);
                    if hi < lo {
                        return Err(CoreSetError::Backwards(item.to_owned()));
                    }
                    if hi >= MAX_CORES {
                        return Err(CoreSetError::TooLarge(hi.to_string()));
                    }
                    cores.extend(lo..=hi);
                }
                None => cores.push(parse_core(item, item)?),
            }
        }
        CoreSet::new(cores)
    }
}

impl<'de> Deserialize<'de> for CoreSet {
    /// Reads a string (`"0,2-3"`), one integer (`3`) or an array of integers
    /// (`[0, 2, 3]`).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CoreSetVisitor;
        impl<'de> Visitor<'de> for CoreSetVisitor {
            type Value = CoreSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a core list such as \"0,2-3\", a core number, or an array of core numbers",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                let core = usize::try_from(v)
                    .map_err(|_| E::custom(CoreSetError::TooLarge(v.to_string())))?;
                CoreSet::new([core]).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                let core = u64::try_from(v)
                    .map_err(|_| E::custom(CoreSetError::Malformed(v.to_string())))?;
                self.visit_u64(core)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut cores = Vec::new();
                while let Some(core) = seq.next_element::<u64>()? {
                    cores.push(usize::try_from(core).map_err(|_| {
                        de::Error::custom(CoreSetError::TooLarge(core.to_string()))
                    })?);
                }
                CoreSet::new(cores).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(CoreSetVisitor)
    }
}

/// The cores this process may run on: its `sched_getaffinity` mask (which
/// honours `taskset`, cgroup cpusets and container limits), ascending.
pub fn allowed_cores() -> std::io::Result<Vec<usize>> {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => Ok(ids.into_iter().map(|id| id.id).collect()),
        Some(_) => Err(std::io::Error::other(
            "sched_getaffinity returned an empty core set",
        )),
        None => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> Result<Vec<usize>, CoreSetError> {
        s.parse::<CoreSet>().map(|c| c.cores().to_vec())
    }

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(set("3"), Ok(vec![3]));
        assert_eq!(set("0,2"), Ok(vec![0, 2]));
        assert_eq!(set("0-3"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(set("0, 2-3"), Ok(vec![0, 2, 3]));
        assert_eq!(set("5,1-2"), Ok(vec![1, 2, 5]));
        assert_eq!(set("4-4"), Ok(vec![4]));
        assert_eq!(set("1023"), Ok(vec![1023]));
    }

    #[test]
    fn refuses_malformed_lists() {
        assert_eq!(set(""), Err(CoreSetError::Empty));
        assert_eq!(set(" "), Err(CoreSetError::Empty));
        assert_eq!(set("a"), Err(CoreSetError::Malformed("a".into())));
        assert_eq!(set("1,"), Err(CoreSetError::Malformed("".into())));
        assert_eq!(set("1-"), Err(CoreSetError::Malformed("1-".into())));
        assert_eq!(set("-1"), Err(CoreSetError::Malformed("-1".into())));
        assert_eq!(set("1-2-3"), Err(CoreSetError::Malformed("1-2-3".into())));
        assert_eq!(set("+1"), Err(CoreSetError::Malformed("+1".into())));
        assert_eq!(set("3-1"), Err(CoreSetError::Backwards("3-1".into())));
    }

    #[test]
    fn refuses_overlap_and_impossible_cores() {
        assert_eq!(set("1,1"), Err(CoreSetError::Duplicate(1)));
        assert_eq!(set("0-2,2"), Err(CoreSetError::Duplicate(2)));
        assert_eq!(set("1024"), Err(CoreSetError::TooLarge("1024".into())));
        assert_eq!(set("0-5000"), Err(CoreSetError::TooLarge("5000".into())));
        // Too large for any integer: said as written, not as a saturated number.
        let huge = "99999999999999999999";
        assert_eq!(set(huge), Err(CoreSetError::TooLarge(huge.into())));
        assert!(set(huge).unwrap_err().to_string().contains(huge));
        assert_eq!(
            set(&format!("0-{huge}")),
            Err(CoreSetError::TooLarge(huge.into()))
        );
        assert!(matches!(
            set("99999999999999999999999"),
            Err(CoreSetError::TooLarge(_))
        ));
        assert_eq!(CoreSet::new([]), Err(CoreSetError::Empty));
    }

    #[test]
    fn formats_compressed_ranges_that_parse_back() {
        for (cores, text) in [
            (vec![3], "3"),
            (vec![0, 2, 3], "0,2-3"),
            (vec![0, 1, 2, 3], "0-3"),
            (vec![0, 2, 4, 5, 6, 9], "0,2,4-6,9"),
        ] {
            let parsed: CoreSet = text.parse().unwrap();
            assert_eq!(parsed.cores(), cores.as_slice());
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(CoreSet::format(&[]), "");
    }

    #[test]
    fn set_operations() {
        let a: CoreSet = "0-3".parse().unwrap();
        let b: CoreSet = "2-5".parse().unwrap();
        assert_eq!(a.intersection(&b), vec![2, 3]);
        assert_eq!(a.difference(&b), vec![0, 1]);
        assert!(a.contains(0) && !a.contains(4));
        assert_eq!(a.last(), 3);
        assert_eq!(a.len(), 4);
        assert!(!a.is_empty());
    }

    #[test]
    fn deserializes_strings_numbers_and_arrays() {
        #[derive(Deserialize)]
        struct Doc {
            c: CoreSet,
        }
        let cores = |src: &str| toml::from_str::<Doc>(src).map(|d| d.c.cores().to_vec());
        assert_eq!(cores("c = \"0,2-3\"").unwrap(), vec![0, 2, 3]);
        assert_eq!(cores("c = 3").unwrap(), vec![3]);
        assert_eq!(cores("c = [3, 1]").unwrap(), vec![1, 3]);
        let err = cores("c = [1, 1]").unwrap_err();
        assert!(
            err.message().contains("more than once"),
            "{}",
            err.message()
        );
        let err = cores("c = -1").unwrap_err();
        assert!(
            err.message().contains("not a core number"),
            "{}",
            err.message()
        );
        let err = cores("c = []").unwrap_err();
        assert!(
            err.message().contains("empty core list"),
            "{}",
            err.message()
        );
        assert!(cores("c = 1.5").is_err());
    }

    #[test]
    fn this_process_has_allowed_cores() {
        let cores = allowed_cores().unwrap();
        assert!(!cores.is_empty());
        assert!(cores.windows(2).all(|w| w[0] < w[1]));
    }
}
