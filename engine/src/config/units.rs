//! Human-friendly unit literals of the configuration: durations (`"10s"`,
//! `"250ms"`, `"100us"`) and byte sizes (`"1MiB"`, `4096`).
//!
//! Both parse exactly (integer arithmetic, no floating point), refuse
//! ambiguous input (a bare number of seconds? of milliseconds?) and print
//! back in the largest unit that represents the value exactly, so a summary
//! shows `1MiB` rather than `1048576`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Why a duration literal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; write a number and a unit, e.g. \"10s\"")]
    Empty,
    #[error("`{0}` has no unit; write e.g. \"{0}s\" or \"{0}ms\" (units: ns, us, ms, s, m, h)")]
    MissingUnit(String),
    #[error("`{0}` is not a number followed by a unit, e.g. \"10s\", \"2.5ms\"")]
    Malformed(String),
    #[error("unknown unit `{unit}` in `{input}` (units: ns, us, µs, ms, s, m, h)")]
    UnknownUnit { input: String, unit: String },
    #[error("`{0}` is finer than one nanosecond")]
    TooPrecise(String),
    #[error("`{0}` is too long")]
    Overflow(String),
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

/// A duration read from the configuration file as a string literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(HumanDuration)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"10s\", \"250ms\" or \"100us\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                if v == 0 {
                    Ok(HumanDuration(Duration::ZERO))
                } else {
                    Err(E::custom(DurationError::MissingUnit(v.to_string())))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                if v == 0 {
                    Ok(HumanDuration(Duration::ZERO))
                } else {
                    Err(E::custom(DurationError::MissingUnit(v.to_string())))
                }
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// Why a byte-size literal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size; write bytes or a number with a unit, e.g. \"1MiB\"")]
    Empty,
    #[error("`{0}` is not a whole number followed by an optional unit, e.g. \"64KiB\"")]
    Malformed(String),
    #[error("unknown unit `{unit}` in `{input}` (units: B, KiB, MiB, GiB, kB, MB, GB)")]
    UnknownUnit { input: String, unit: String },
    #[error("`{0}` is too large")]
    Overflow(String),
    #[error("a size cannot be negative (got {0})")]
    Negative(i64),
}

/// Parses a byte size: a whole number of bytes with an optional unit,
/// binary (`KiB`, `MiB`, `GiB`) or decimal (`kB`, `MB`, `GB`); unit letters
/// are case-insensitive, e.g. `"1MiB"`, `"512 kib"`, `"4096"`.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim_start());
    if number.is_empty() {
        return Err(SizeError::Malformed(text.to_owned()));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(SizeError::UnknownUnit {
                input: text.to_owned(),
                unit: unit.to_owned(),
            })
        }
    };
    let overflow = || SizeError::Overflow(text.to_owned());
    let number: u64 = number.parse().map_err(|_| overflow())?;
    number.checked_mul(multiplier).ok_or_else(overflow)
}

/// Formats a byte size in the largest binary unit that holds it exactly
/// (`1MiB`, `8KiB`, `1000B`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|(per, _)| bytes != 0 && bytes.is_multiple_of(*per))
        .map(|(per, unit)| format!("{}{unit}", bytes / per))
        .unwrap_or_else(|| format!("{bytes}B"))
}

/// A byte size read from the configuration file: an integer number of bytes
/// or a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes, or a string such as \"1MiB\" or \"64KiB\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(SizeError::Negative(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ByteSize(v))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
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

    #[test]
    fn sizes_with_and_without_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1 mib"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("3kB"), Ok(3000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("MiB"), Err(SizeError::Malformed("MiB".into())));
        assert_eq!(parse_size("-1"), Err(SizeError::Malformed("-1".into())));
        assert!(matches!(
            parse_size("1.5MiB"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(
            matches!(parse_size("1 TiB"), Err(SizeError::UnknownUnit { unit, .. }) if unit == "TiB")
        );
        assert!(matches!(
            parse_size("99999999999GiB"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("999999999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn sizes_format_in_the_largest_exact_unit_and_round_trip() {
        for (value, text) in [
            (0, "0B"),
            (1000, "1000B"),
            (1 << 10, "1KiB"),
            (1536, "1536B"),
            (3 << 19, "1536KiB"),
            (1 << 20, "1MiB"),
            (4 << 30, "4GiB"),
        ] {
            assert_eq!(format_size(value), text);
            assert_eq!(parse_size(text), Ok(value));
        }
    }

    #[test]
    fn deserialize_from_toml_values() {
        #[derive(Deserialize)]
        struct Doc {
            t: HumanDuration,
            s: ByteSize,
        }
        let doc: Doc = toml::from_str("t = \"3ms\"\ns = \"2KiB\"").unwrap();
        assert_eq!(doc.t.0, Duration::from_millis(3));
        assert_eq!(doc.s.0, 2048);
        let doc: Doc = toml::from_str("t = 0\ns = 17").unwrap();
        assert_eq!(doc.t.0, Duration::ZERO);
        assert_eq!(doc.s.0, 17);
        let err = toml::from_str::<Doc>("t = 10\ns = 1").err().unwrap();
        assert!(err.message().contains("has no unit"), "{}", err.message());
        let err = toml::from_str::<Doc>("t = \"1s\"\ns = -5").err().unwrap();
        assert!(err.message().contains("negative"), "{}", err.message());
        let err = toml::from_str::<Doc>("t = true\ns = 1").err().unwrap();
        assert!(
            err.message().contains("duration string"),
            "{}",
            err.message()
        );
    }
}
