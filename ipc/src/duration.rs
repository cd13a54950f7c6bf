//! Duration literals, as `nocturne serve` and every `nocturne bench` read
//! them from the command line (and the engine from its configuration):
//! `"10s"`, `"250ms"`, `"1.5s"`, `"1m30s"`. One grammar in the crate both
//! depend on, so that a duration a user writes for one is read the same by
//! the other.
//!
//! Parsing is exact (integer arithmetic, no floating point) and refuses
//! ambiguous input: a bare number is not taken for seconds here (a caller
//! that documents such a default adds it, as the benchmarks do).
//! [`format_duration`] prints back in the largest unit that holds the value
//! exactly.

use std::time::Duration;

/// Why a duration literal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing but white space.
    #[error("empty duration; write a number and a unit, e.g. \"10s\"")]
    Empty,
    /// A number (other than zero) with no unit after it.
    #[error("`{0}` has no unit; write e.g. \"{0}s\" or \"{0}ms\" (units: ns, us, ms, s, m, h)")]
    MissingUnit(String),
    /// Not a number where one must be (`s`, `-1s`, `1.s`).
    #[error("`{0}` is not a number followed by a unit, e.g. \"10s\", \"2.5ms\"")]
    Malformed(String),
    /// A unit that is none of ns, us, ms, s, m, h.
    #[error("unknown unit `{unit}` in `{input}` (units: ns, us, µs, ms, s, m, h)")]
    UnknownUnit {
        /// The whole literal.
        input: String,
        /// The unit it has.
        unit: String,
    },
    /// A fraction of a nanosecond.
    #[error("`{0}` is finer than one nanosecond")]
    TooPrecise(String),
    /// More than a `Duration` holds.
    #[error("`{0}` is too long")]
    Overflow(String),
    /// Units repeated or not from the largest down (`1s1m`, `1s2s`).
    #[error("`{0}`: write each unit once, the largest first, e.g. \"1m30s\"")]
    UnitOrder(String),
}

/// Parses a duration literal: a decimal number and a unit (`ns`, `us`/`µs`,
/// `ms`, `s`, `m`, `h`), e.g. `"10s"`, `"250ms"`, `"1.5s"`, or several such
/// from the largest unit down, e.g. `"1m30s"`, `"71m34s"`, `"1h 5m"`. Plain
/// `"0"` is accepted (zero needs no unit); any other bare number is refused.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return if text.bytes().all(|b| b == b'0') {
            Ok(Duration::ZERO)
        } else {
            Err(DurationError::MissingUnit(text.to_owned()))
        };
    }
    let overflow = || DurationError::Overflow(text.to_owned());
    let mut nanos: u128 = 0;
    let mut previous_unit: Option<u128> = None;
    let mut rest = text;
    while !rest.is_empty() {
        let (part, nanos_per_unit, tail) = duration_component(rest, text)?;
        // `1s1m` or `1s2s` is more likely a slip than a sum.
        if previous_unit.is_some_and(|previous| nanos_per_unit >= previous) {
            return Err(DurationError::UnitOrder(text.to_owned()));
        }
        previous_unit = Some(nanos_per_unit);
        nanos = nanos.checked_add(part).ok_or_else(overflow)?;
        rest = tail.trim_start();
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| overflow())?;
    // The remainder is below 10^9 and always fits.
    let subsec = u32::try_from(nanos % 1_000_000_000).map_err(|_| overflow())?;
    Ok(Duration::new(secs, subsec))
}

/// The first `NUMBER UNIT` of `rest` (a part of `text`): its nanoseconds,
/// the unit's nanoseconds, and what follows.
fn duration_component<'a>(
    rest: &'a str,
    text: &str,
) -> Result<(u128, u128, &'a str), DurationError> {
    let split = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, after) = (&rest[..split], rest[split..].trim_start());
    if number.is_empty() {
        return Err(DurationError::Malformed(text.to_owned()));
    }
    let unit_len = after
        .find(|c: char| !c.is_alphabetic())
        .unwrap_or(after.len());
    let (unit, tail) = after.split_at(unit_len);
    let nanos_per_unit: u128 = match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err(DurationError::MissingUnit(text.to_owned())),
        _ => {
            return Err(DurationError::UnknownUnit {
                input: text.to_owned(),
                unit: unit.to_owned(),
            })
        }
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) if !w.is_empty() && !f.is_empty() && !f.contains('.') => (w, f),
        Some(_) => return Err(DurationError::Malformed(text.to_owned())),
        None => (number, ""),
    };
    let overflow = || DurationError::Overflow(text.to_owned());
    let whole: u128 = whole.parse().map_err(|_| overflow())?;
    let mut nanos = whole.checked_mul(nanos_per_unit).ok_or_else(overflow)?;
    if !fraction.is_empty() {
        // fraction / 10^digits of a unit, in whole nanoseconds or refused.
        let digits = u32::try_from(fraction.len()).map_err(|_| overflow())?;
        let scale = 10u128.checked_pow(digits).ok_or_else(overflow)?;
        let numerator: u128 = fraction.parse().map_err(|_| overflow())?;
        let scaled = numerator.checked_mul(nanos_per_unit).ok_or_else(overflow)?;
        if scaled % scale != 0 {
            return Err(DurationError::TooPrecise(text.to_owned()));
        }
        nanos = nanos.checked_add(scaled / scale).ok_or_else(overflow)?;
    }
    Ok((nanos, nanos_per_unit, tail))
}

/// Formats a duration in the largest unit that holds it exactly
/// (`10s`, `250ms`, `1500us`, `2m`); the output parses back to the same value.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    UNITS
        .iter()
        .find(|(per, _)| nanos.is_multiple_of(*per))
        .map(|(per, unit)| format!("{}{unit}", nanos / per))
        .unwrap_or_else(|| format!("{nanos}ns"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Result<Duration, DurationError> {
        parse_duration(s)
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(d("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(d("100µs"), Ok(Duration::from_micros(100)));
        assert_eq!(d("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(d("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d(" 5 s "), Ok(Duration::from_secs(5)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        assert_eq!(d("000"), Ok(Duration::ZERO));
    }

    #[test]
    fn compound_durations_add_up_from_the_largest_unit() {
        assert_eq!(d("1m5s"), Ok(Duration::from_secs(65)));
        assert_eq!(d("71m34s"), Ok(Duration::from_secs(71 * 60 + 34)));
        assert_eq!(d("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("1m0.5s"), Ok(Duration::from_millis(60_500)));
        assert_eq!(
            d("1h11m34s967ms295us"),
            Ok(Duration::from_micros(u32::MAX as u64))
        );
        assert_eq!(d("1s1m"), Err(DurationError::UnitOrder("1s1m".into())));
        assert_eq!(d("1s2s"), Err(DurationError::UnitOrder("1s2s".into())));
        assert_eq!(d("1m5"), Err(DurationError::MissingUnit("1m5".into())));
        assert!(matches!(d("1m5x"), Err(DurationError::UnknownUnit { unit, .. }) if unit == "x"));
    }

    #[test]
    fn fractional_durations_are_exact() {
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("0.25ms"), Ok(Duration::from_micros(250)));
        assert_eq!(d("2.000001s"), Ok(Duration::new(2, 1000)));
        assert_eq!(d("1.5ns"), Err(DurationError::TooPrecise("1.5ns".into())));
    }

    #[test]
    fn bad_durations_are_refused_with_the_reason() {
        assert_eq!(d(""), Err(DurationError::Empty));
        assert_eq!(d("  "), Err(DurationError::Empty));
        assert_eq!(d("10"), Err(DurationError::MissingUnit("10".into())));
        assert_eq!(d("s"), Err(DurationError::Malformed("s".into())));
        assert_eq!(d("-1s"), Err(DurationError::Malformed("-1s".into())));
        assert_eq!(d("1.s"), Err(DurationError::Malformed("1.s".into())));
        assert_eq!(d(".5s"), Err(DurationError::Malformed(".5s".into())));
        assert_eq!(d("1.2.3s"), Err(DurationError::Malformed("1.2.3s".into())));
        assert!(
            matches!(d("10 parsecs"), Err(DurationError::UnknownUnit { unit, .. }) if unit == "parsecs")
        );
        assert!(matches!(d("10S"), Err(DurationError::UnknownUnit { .. })));
        assert!(matches!(
            d("99999999999999999999999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            d("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
        let msg = d("10").unwrap_err().to_string();
        assert!(msg.contains("\"10s\""), "{msg}");
    }

    #[test]
    fn durations_format_in_the_largest_exact_unit_and_round_trip() {
        for (value, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(50), "50us"),
            (Duration::new(1, 1), "1000000001ns"),
        ] {
            assert_eq!(format_duration(value), text);
            assert_eq!(d(text), Ok(value));
        }
    }
}
