//! Errors raised while loading a settings file or its rules.

use super::List;

/// Why a settings file or one of its rules could not be loaded.
///
/// A rule that fails to parse makes the whole load fail: the engine never
/// runs with a rule it does not understand, so a broken rule can never widen
/// what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum PermissionError {
    /// The settings text is not valid JSON.
    #[error("settings file {path} is not valid JSON: {source}")]
    InvalidJson {
        /// The settings file (as given by the caller).
        path: String,
        /// The JSON parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A key of `permissions` has the wrong JSON type.
    #[error("settings file {path}: `{key}` must be {expected}")]
    WrongType {
        /// The settings file.
        path: String,
        /// The offending key, e.g. `permissions.allow`.
        key: String,
        /// What the key should hold.
        expected: &'static str,
    },
    /// `permissions` holds a key this engine does not read: a misspelt `deny` would otherwise
    /// drop every deny rule without a word.
    #[error(
        "settings file {path}: unknown key `permissions.{key}` (expected allow, ask, deny, \
         defaultMode, additionalDirectories or disableBypassPermissionsMode)"
    )]
    UnknownKey {
        /// The settings file.
        path: String,
        /// The unknown key.
        key: String,
    },
    /// `defaultMode` names a mode this engine does not know.
    #[error("settings file {path}: unknown permissions.defaultMode `{mode}`")]
    UnknownMode {
        /// The settings file.
        path: String,
        /// The unknown mode.
        mode: String,
    },
    /// One rule could not be parsed.
    #[error("rule {list}[{index}] `{rule}`: {reason}")]
    InvalidRule {
        /// The list holding the rule.
        list: List,
        /// The rule's position in that list (0-based).
        index: usize,
        /// The rule text as written.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
}
