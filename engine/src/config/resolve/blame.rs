//! Which input gave a function setting its value, so that an error about
//! it names the setting as it was given: the `--set` (or `NOCTURNE_SET`
//! entry) that last set it, else the function's entry in the file.
//!
//! Without this, `--set echo.min_workers=3` failing validation would be
//! reported at the line of `echo`'s `[[functions]]` header, which the user
//! may never have touched (or, for the embedded default, cannot see).

use super::super::error::{ConfigError, ConfigWarning, Location};
use super::super::overrides::FunctionOverride;

/// The sources of one function's settings.
pub(super) struct Blame<'a> {
    /// The function's name.
    name: String,
    /// Its `[[functions]]` header in the file.
    entry: Location,
    /// The overrides applied to it, in order (a later one wins).
    overrides: Vec<&'a FunctionOverride>,
}

impl<'a> Blame<'a> {
    pub(super) fn new(name: String, entry: Location) -> Self {
        Blame {
            name,
            entry,
            overrides: Vec::new(),
        }
    }

    /// Records that `o` was applied to the function.
    pub(super) fn applied(&mut self, o: &'a FunctionOverride) {
        self.overrides.push(o);
    }

    /// The override that set `key` last, if any. `builtin` and `command`
    /// are one setting here: setting either replaces the program.
    pub(super) fn override_of(&self, key: &str) -> Option<&'a FunctionOverride> {
        let is_program = |k: &str| k == "builtin" || k == "command";
        self.overrides
            .iter()
            .rev()
            .find(|o| o.key() == key || (is_program(key) && is_program(o.key())))
            .copied()
    }

    /// An error about `key`, named after where its value came from.
    pub(super) fn error(&self, key: &str, msg: String) -> ConfigError {
        self.error_any(&[key], msg)
    }

    /// An error about a check between `keys` (the first is the one the
    /// message is about): blames an override that set any of them, since
    /// that is what changed, else the file entry under the first key.
    pub(super) fn error_any(&self, keys: &[&str], msg: String) -> ConfigError {
        match keys.iter().find_map(|k| self.override_of(k)) {
            Some(o) => o.invalid(msg),
            None => ConfigError::Invalid {
                field: self.field(keys.first().copied().unwrap_or_default()),
                at: Some(self.entry.clone()),
                msg,
            },
        }
    }

    /// A warning about `key`, named like [`Blame::error`] would name it.
    pub(super) fn warning(&self, key: &str, msg: String) -> ConfigWarning {
        match self.override_of(key) {
            Some(o) => ConfigWarning {
                setting: format!("{} `{}`", o.source(), o.arg()),
                at: None,
                msg,
            },
            None => ConfigWarning {
                setting: self.field(key),
                at: Some(self.entry.clone()),
                msg,
            },
        }
    }

    fn field(&self, key: &str) -> String {
        format!("functions[{}].{key}", self.name)
    }
}
