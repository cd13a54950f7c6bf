//! Human-friendly unit literals of the configuration: durations (`"10s"`,
//! `"250ms"`, `"100us"`) and byte sizes (`"1MiB"`, `4096`).
//!
//! Both parse exactly (integer arithmetic, no floating point), refuse
//! ambiguous input (a bare number of seconds? of milliseconds?) and print
//! back in the largest unit that represents the value exactly, so a summary
//! shows `1MiB` rather than `1048576`. The duration grammar itself is
//! [`nocturne_ipc::duration`], shared with the benchmarks (which cannot
//! depend on the engine); this module adds reading it from TOML.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

pub use nocturne_ipc::duration::{format_duration, parse_duration, DurationError};

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
