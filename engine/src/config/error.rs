//! [`ConfigError`]: everything that can be wrong with a configuration, each
//! case carrying enough to fix it without reading the source: the key, the
//! file and `line:column`, the flag a value came from, the allowed choices.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// A position in a configuration file, 1-based; `col` counts characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file as the user named it, or `<embedded default>`.
    pub file: String,
    pub line: usize,
    pub col: usize,
}

impl Location {
    /// The location of byte `offset` of `text` (clamped to the text, and
    /// to a character boundary).
    pub fn of_offset(file: &str, text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = text[line_start..offset].chars().count() + 1;
        Location {
            file: file.to_owned(),
            line,
            col,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// A setting that is valid but probably not what was meant (it has no
/// effect, or runs something other than it seems to): the configuration is
/// accepted, and `serve`, `config check` and `config show` print this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The setting as it was given: `--spin-us`, `spin_us`,
    /// `functions[wc].command`, `--set \`wc.command=wc\``.
    pub setting: String,
    /// Its place in the file, when it came from one.
    pub at: Option<Location>,
    pub msg: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = &self.at {
            write!(f, "{at}: ")?;
        }
        write!(f, "{}: {}", self.setting, self.msg)
    }
}

/// Why a configuration could not be loaded, resolved or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// The file is not valid TOML, or a value has the wrong type or form.
    #[error("{at}: {msg}")]
    Toml { at: Location, msg: String },
    /// A key the schema does not know (a typo, or a setting of another
    /// version).
    #[error("{at}: unknown key `{key}`{}", suggestion(key, expected))]
    UnknownKey {
        key: String,
        at: Location,
        /// The keys that are valid where this one stands.
        expected: Vec<String>,
    },
    /// A setting whose value is wrong, on its own or against another.
    /// `field` names it as the user wrote it: `poll`, `--poll`,
    /// `functions[echo].max_workers`.
    #[error("{}invalid {field}: {msg}", at.as_ref().map(|at| format!("{at}: ")).unwrap_or_default())]
    Invalid {
        field: String,
        at: Option<Location>,
        msg: String,
    },
    /// A core placement that cannot work: a core outside the allowed set, or
    /// a poll mode that needs cores of its own and does not have them.
    #[error("{msg}")]
    Cores { msg: String },
    /// The allowed core set of this process could not be read.
    #[error("cannot read this process's allowed cores (sched_getaffinity): {0}")]
    Affinity(std::io::Error),
    /// A malformed `--set FUNCTION.KEY=VALUE` override (or `NOCTURNE_SET`
    /// entry), or one whose value fails validation: named as given, since
    /// no line of the file is to blame.
    #[error("invalid {via} `{arg}`: {msg}")]
    Override {
        /// `--set` or `NOCTURNE_SET` (not `source`: thiserror reserves it).
        via: super::overrides::OverrideSource,
        arg: String,
        msg: String,
    },
}

impl ConfigError {
    /// Converts a `toml` error into a located one. An unknown key (from
    /// `deny_unknown_fields`) becomes [`ConfigError::UnknownKey`].
    pub(crate) fn from_toml(err: &toml::de::Error, file: &str, text: &str) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        let at = Location::of_offset(file, text, span.start);
        let msg = err.message().trim_end().to_owned();
        if let Some((key, expected)) = parse_unknown_field(&msg) {
            let key = key_at(text, &span).unwrap_or(key);
            return ConfigError::UnknownKey { key, at, expected };
        }
        // serde's "invalid type: integer `3`, expected a boolean" names no
        // key: name the one the value is assigned to.
        if msg.starts_with("invalid type:") {
            if let Some(key) = key_before(text, span.start) {
                return ConfigError::Toml {
                    at,
                    msg: format!("{key}: {msg}"),
                };
            }
        }
        ConfigError::Toml { at, msg }
    }

    pub(crate) fn invalid(field: impl Into<String>, msg: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            field: field.into(),
            at: None,
            msg: msg.into(),
        }
    }
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" (or
/// "expected `a`", or "there are no fields") into the key and the choices.
pub(crate) fn parse_unknown_field(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (key, tail) = rest.split_once('`')?;
    let expected = tail
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((key.to_owned(), expected))
}

/// The key as written in the file at `span` (it may be quoted there), when
/// the span covers exactly a key.
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    let raw = text.get(span.clone())?.trim();
    let unquoted = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        .unwrap_or(raw);
    (!unquoted.is_empty() && !unquoted.contains(['\n', '='])).then(|| unquoted.to_owned())
}

/// The key that the value at `offset` is assigned to, when the value
/// follows `KEY =` on its own line (not inside an inline table or array).
fn key_before(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    let key = line.trim_end().strip_suffix('=')?;
    key_at(key, &(0..key.len()))
}

/// "; did you mean `x`?" for the closest expected key, or the list of
/// valid keys when nothing is close.
fn suggestion(key: &str, expected: &[String]) -> String {
    if expected.is_empty() {
        return String::new();
    }
    if let Some(close) = closest(key, expected.iter().map(String::as_str)) {
        return format!("; did you mean `{close}`?");
    }
    let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    format!(" (valid keys here: {})", list.join(", "))
}

/// The candidate within edit distance 2 (or 1 for short words) of `word`.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Edit distance over characters, counting a swap of two neighbours as
/// one edit (optimal string alignment): `ehco` is one edit from `echo`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * width + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let substitution = d[(i - 1) * width + j - 1] + usize::from(a[i - 1] != b[j - 1]);
                let mut best = substitution
                    .min(d[(i - 1) * width + j] + 1)
                    .min(d[i * width + j - 1] + 1);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_count_lines_and_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(Location::of_offset("f", text, 0).to_string(), "f:1:1");
        assert_eq!(Location::of_offset("f", text, 4).to_string(), "f:1:5");
        assert_eq!(Location::of_offset("f", text, 6).to_string(), "f:2:1");
        // "bé = " is 6 bytes but 5 characters.
        let at = Location::of_offset("f", text, 12);
        assert_eq!((at.line, at.col), (2, 6));
        // Inside the two-byte é: clamped back to its start.
        assert_eq!(Location::of_offset("f", text, 8).col, 2);
        // Past the end: the end.
        assert_eq!(Location::of_offset("f", text, 999).line, 3);
    }

    #[test]
    fn unknown_field_messages_are_taken_apart() {
        assert_eq!(
            parse_unknown_field("unknown field `lsiten`, expected one of `listen`, `net`"),
            Some(("lsiten".into(), vec!["listen".into(), "net".into()]))
        );
        assert_eq!(
            parse_unknown_field("unknown field `x`, expected `y`"),
            Some(("x".into(), vec!["y".into()]))
        );
        assert_eq!(
            parse_unknown_field("unknown field `x`, there are no fields"),
            Some(("x".into(), vec![]))
        );
        assert_eq!(parse_unknown_field("invalid type: integer"), None);
    }

    #[test]
    fn suggestions_pick_a_close_key_or_list_them_all() {
        let keys: Vec<String> = ["listen", "net", "max_workers"].map(String::from).to_vec();
        assert_eq!(suggestion("lsiten", &keys), "; did you mean `listen`?");
        assert_eq!(
            suggestion("max_worker", &keys),
            "; did you mean `max_workers`?"
        );
        assert_eq!(suggestion("nett", &keys), "; did you mean `net`?");
        assert_eq!(
            suggestion("colour", &keys),
            " (valid keys here: `listen`, `net`, `max_workers`)"
        );
        assert_eq!(suggestion("x", &[]), "");
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ehco", "echo"), 1);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn keys_are_read_back_from_the_span() {
        let text = "\"quoted key\" = 1\nplain = 2";
        assert_eq!(key_at(text, &(0..12)), Some("quoted key".into()));
        assert_eq!(key_at(text, &(17..22)), Some("plain".into()));
        assert_eq!(key_at(text, &(0..30)), None);
        assert_eq!(key_at(text, &(0..999)), None);
    }

    #[test]
    fn a_value_knows_its_key_only_when_it_follows_key_equals() {
        let text = "a = 1\n  \"b c\" = true\nenv = { A = 1 }\nxs = [1]\n";
        assert_eq!(key_before(text, 4), Some("a".into()));
        assert_eq!(key_before(text, 16), Some("b c".into()));
        let inline = text.find("1 }").unwrap();
        assert_eq!(key_before(text, inline), None);
        let array = text.find("1]").unwrap();
        assert_eq!(key_before(text, array), None);
        assert_eq!(key_before(text, 0), None);
    }

    #[test]
    fn type_errors_name_their_key() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            on: Option<bool>,
        }
        let text = "\non = 3\n";
        let err = toml::from_str::<T>(text).unwrap_err();
        let e = ConfigError::from_toml(&err, "t.toml", text);
        assert_eq!(
            e.to_string(),
            "t.toml:2:6: on: invalid type: integer `3`, expected a boolean"
        );
    }
}
