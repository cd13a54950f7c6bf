//! Accepted ranges of numeric options, each stated once: the settings
//! check values against it, its `--help` states it in the same words
//! ([`IntRange::text`], [`DurationRange::text`], [`DecimalRange::text`]),
//! and each command's test
//! `every_range_is_stated_in_help_and_is_the_one_checked` checks that the
//! two agree at both ends.

use std::time::Duration;

use crate::load::spec::format_duration;

/// A value outside its option's range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} {got} is out of range: it takes {range}")]
pub struct RangeError {
    /// The option, without its dashes.
    pub flag: &'static str,
    /// The value as given (a duration as it reads back).
    pub got: String,
    /// The range, as the help states it.
    pub range: String,
}

/// The inclusive range of a numeric option: an [`IntRange`], a
/// [`DurationRange`] or a [`DecimalRange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionRange<T> {
    /// The option, without its dashes.
    pub flag: &'static str,
    /// Least accepted value.
    pub min: T,
    /// Greatest accepted value.
    pub max: T,
}

/// The inclusive range of an integer option.
pub type IntRange = OptionRange<u64>;
/// The inclusive range of a duration option.
pub type DurationRange = OptionRange<Duration>;
/// The inclusive range of a decimal option (a rate, a fraction, a factor).
pub type DecimalRange = OptionRange<f64>;

/// A value a range ends at, written the way the option's parser reads it
/// back: `1024`, `3600s`, `0.01`.
pub trait RangeEnd: PartialOrd + Copy {
    /// The value as help and errors write it.
    fn write(self) -> String;
}

impl RangeEnd for u64 {
    fn write(self) -> String {
        self.to_string()
    }
}

impl RangeEnd for Duration {
    fn write(self) -> String {
        format_duration(self)
    }
}

/// Plain decimals (`1000000000`, never `1e9`), which every parser reads.
impl RangeEnd for f64 {
    fn write(self) -> String {
        self.to_string()
    }
}

impl<T> OptionRange<T> {
    /// The range of `--flag`.
    pub const fn new(flag: &'static str, min: T, max: T) -> Self {
        Self { flag, min, max }
    }
}

impl<T: RangeEnd> OptionRange<T> {
    /// How help and errors write it: `1..=1024`, `1ms..=3600s`, `0.01..=1`.
    pub fn text(&self) -> String {
        format!("{}..={}", self.min.write(), self.max.write())
    }

    /// `got`, when it is in the range (a NaN never is); otherwise the error
    /// quoting `typed()`.
    fn within(&self, got: T, typed: impl FnOnce() -> String) -> Result<T, RangeError> {
        if self.min <= got && got <= self.max {
            Ok(got)
        } else {
            Err(RangeError {
                flag: self.flag,
                got: typed(),
                range: self.text(),
            })
        }
    }
}

impl IntRange {
    /// `got`, when it is in the range.
    pub fn check(&self, got: u64) -> Result<u64, RangeError> {
        self.within(got, || got.to_string())
    }

    /// [`check`](Self::check) for a `usize` option.
    pub fn check_usize(&self, got: usize) -> Result<usize, RangeError> {
        self.check(got as u64).map(|_| got)
    }
}

impl DurationRange {
    /// `got` (parsed from `typed`, which the error quotes), when it is in
    /// the range.
    pub fn check(&self, got: Duration, typed: &str) -> Result<Duration, RangeError> {
        self.within(got, || typed.trim().to_owned())
    }
}

impl DecimalRange {
    /// `got` (parsed from `typed`, which the error quotes), when it is in
    /// the range (never NaN).
    pub fn check(&self, got: f64, typed: &str) -> Result<f64, RangeError> {
        self.within(got, || typed.trim().to_owned())
    }
}

/// The help paragraph of `--flag` in `command` (test support).
#[cfg(test)]
fn help_of(command: &clap::Command, flag: &str) -> String {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(flag))
        .unwrap_or_else(|| panic!("no --{flag}"))
        .get_help()
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// The check of each command's `every_range_is_stated_in_help_and_is_the_one_checked`:
/// for every range, `--help` of its flag states `[range: TEXT]`; `run(flag,
/// value)` (the command's settings with `--flag=value`) accepts both ends
/// (`Ok`; a refusal for another reason than the range is `Ok` too) and
/// refuses the values just outside with the error
/// `--flag VALUE is out of range: it takes TEXT`. Durations are given in
/// nanoseconds, so that one nanosecond past an end is a value of its own.
/// Commands with decimal options check those with
/// [`check_decimal_ranges`] too.
#[cfg(test)]
pub(crate) fn check_ranges(
    command: &clap::Command,
    ints: &[IntRange],
    durations: &[DurationRange],
    run: impl Fn(&str, &str) -> Result<(), String>,
) {
    check_each(command, ints, &run);
    check_each(command, durations, &run);
}

/// [`check_ranges`] for decimal options: both ends are accepted, and the
/// nearest decimals past them (the next `f64` up from the greatest, down
/// from a positive least, written so that they parse back to themselves)
/// are refused with the range's error.
#[cfg(test)]
pub(crate) fn check_decimal_ranges(
    command: &clap::Command,
    decimals: &[DecimalRange],
    run: impl Fn(&str, &str) -> Result<(), String>,
) {
    check_each(command, decimals, &run);
}

/// The values the range test gives an option at and just past a range's
/// ends (test support).
#[cfg(test)]
trait TestEnd: RangeEnd {
    /// The value as the test types it.
    fn typed(self) -> String;
    /// The nearest value above.
    fn above(self) -> Self;
    /// The nearest value below; none under zero, which the parsers refuse
    /// on their own.
    fn below(self) -> Option<Self>;
}

#[cfg(test)]
impl TestEnd for u64 {
    fn typed(self) -> String {
        self.to_string()
    }
    fn above(self) -> Self {
        self + 1
    }
    fn below(self) -> Option<Self> {
        self.checked_sub(1)
    }
}

#[cfg(test)]
impl TestEnd for Duration {
    fn typed(self) -> String {
        format!("{}ns", self.as_nanos())
    }
    fn above(self) -> Self {
        self + Duration::from_nanos(1)
    }
    fn below(self) -> Option<Self> {
        self.checked_sub(Duration::from_nanos(1))
    }
}

#[cfg(test)]
impl TestEnd for f64 {
    fn typed(self) -> String {
        self.to_string()
    }
    fn above(self) -> Self {
        self.next_up()
    }
    fn below(self) -> Option<Self> {
        (self > 0.0).then(|| self.next_down())
    }
}

/// The checks of [`check_ranges`] on ranges of one kind.
#[cfg(test)]
fn check_each<T: TestEnd>(
    command: &clap::Command,
    ranges: &[OptionRange<T>],
    run: &impl Fn(&str, &str) -> Result<(), String>,
) {
    for r in ranges {
        let (flag, text) = (r.flag, r.text());
        let help = help_of(command, flag);
        assert!(
            help.contains(&format!("[range: {text}]")),
            "--{flag}: {help}"
        );
        for v in [r.min, r.max].map(T::typed) {
            assert_eq!(run(flag, &v), Ok(()), "--{flag}={v}");
        }
        for v in std::iter::once(r.max.above()).chain(r.min.below()) {
            let v = v.typed();
            assert_eq!(
                run(flag, &v),
                Err(format!("--{flag} {v} is out of range: it takes {text}")),
                "--{flag}={v}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_inclusive_and_errors_name_flag_value_and_range() {
        let r = IntRange::new("threads", 1, 1024);
        assert_eq!(r.check(1), Ok(1));
        assert_eq!(r.check(1024), Ok(1024));
        let err = r.check(1025).unwrap_err().to_string();
        assert_eq!(err, "--threads 1025 is out of range: it takes 1..=1024");
        assert!(r.check(0).is_err());
        let d = DurationRange::new(
            "timeout",
            Duration::from_millis(1),
            Duration::from_secs(3600),
        );
        assert_eq!(d.text(), "1ms..=3600s");
        assert!(d.check(Duration::from_secs(3600), "1h").is_ok());
        let err = d
            .check(Duration::from_secs(3601), "1h1s")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--timeout 1h1s is out of range: it takes 1ms..=3600s");
        let f = DecimalRange::new("keep-up-fraction", 0.01, 1.0);
        assert_eq!(f.text(), "0.01..=1");
        assert_eq!(f.check(1.0, "1"), Ok(1.0));
        assert!(f.check(f64::NAN, "nan").is_err());
        let err = f.check(1.5, " 1.5 ").unwrap_err().to_string();
        assert_eq!(
            err,
            "--keep-up-fraction 1.5 is out of range: it takes 0.01..=1"
        );
    }
}
