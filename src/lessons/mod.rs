//! Error→fix learning: every failure is recorded with the fix that was tried and whether it worked,
//! and a new error gets the most successful fix of the most similar past error.
//!
//! Lessons are memories in the shared store (type `bug_fix`, tag `lesson`), so they are durable,
//! searchable and visible to every agent; the structured record rides in the memory's `context` as
//! JSON. Error messages are normalised before they are stored or compared: paths, UUIDs, hex
//! values, timestamps and numbers become placeholders, so "file /a/b.rs line 12" and
//! "file /c/d.rs line 340" are the same error. A number that is a code is kept: an integer of up
//! to four digits right after `status`, `code`, `exit`, `exited`, `errno`, `signal`, `sig`, `rc`
//! or `HTTP` (`HTTP/1.1`), optionally with `:`, `=` or `#` between, or after `error` and a space,
//! with its sign if negative (`code -9`), and not glued to a unit, decimal or time (`30s`, `1.5`,
//! `12:30`). So "exited with status 137"
//! and "exited with status 2", or "HTTP 404" and "HTTP 500", stay apart, while ids, timestamps,
//! durations, sizes, counts and line numbers (`file.rs:123`) are still placeholders.
//!
//! Similarity is the Jaccard index of the normalised messages' word sets (words as the store's
//! search splits and folds them: each ideograph is a word, and `Straße`, `STRASSE`, fullwidth
//! and decomposed letters fold to one form), except that two
//! messages that both name codes, and not the same ones, are different errors (similarity 0): one
//! differing word in a short message would otherwise leave them similar. Candidates come from the
//! store's BM25 search over the normalised text, so suggesting stays fast with many lessons; when
//! the lowest-ranked candidate read is still close to the message, more are read (200, then four
//! times as many, up to 51,200), so an error recorded hundreds of times keeps its whole tally.
//! Lessons keep the normalised text they were recorded with; those an earlier normalisation wrote
//! are normalised again when read.
//! A suggestion comes from the single most similar past error at or above the threshold (ties:
//! the one with more recorded fix attempts; errors none of whose fixes ever worked are skipped):
//! its fixes are ranked by success rate (Laplace smoothed, so one lucky success does not beat a
//! fix that worked nine times in ten). A fix that worked for a less similar error never outranks
//! the closest error's own fix.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

use crate::store::{MemoryId, MemoryType, Namespace, NewMemory, SearchOptions, Store, StoreError};

/// The tag every lesson memory carries.
pub const LESSON_TAG: &str = "lesson";

/// The tag a lesson with a fix also carries, so suggesting searches among fixes only: a failure
/// recorded without a fix (every failure a plan has no fix for) cannot crowd a known fix out of
/// the candidates.
pub const LESSON_FIX_TAG: &str = "lesson-fix";

/// The tag of a lesson whose stored normalisation is this version's (see the module docs). A
/// lesson recorded by an earlier version (which turned every number into `<num>`, or read a
/// negative code as a number, or kept a number glued to a letter of a script written without
/// spaces) lacks it and is normalised again from its message when read, so it still matches the
/// same error.
const NORMALISED_TAG: &str = "lesson-normalised-3";

/// Candidates first read from the search per suggestion. When the lowest-ranked of them is still
/// close to the message (a frequent error recorded many times fills them), four times as many
/// are read, up to [`MAX_CANDIDATES`]: an error's older lessons (the fix that worked, say) must
/// not fall out of its tally.
const CANDIDATES: usize = 200;

/// The most candidates a suggestion reads.
const MAX_CANDIDATES: usize = 51_200;

/// The similarity below which no fix is suggested.
pub const DEFAULT_THRESHOLD: f64 = 0.6;

/// The longest failure message a lesson keeps (its start; the rest is cut).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Why recording or reading a lesson failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LessonError {
    /// The store refused the write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The failure has an empty message.
    #[error("a failure needs a non-empty message")]
    EmptyMessage,
    /// The failure has an empty error type.
    #[error("a failure needs a non-empty error type (such as compile_error or timeout)")]
    EmptyErrorType,
    /// The fix is given but blank: nothing could be suggested from it.
    #[error("a fix needs a non-empty text (leave it out when none was tried)")]
    EmptyFix,
    /// Whether a fix worked is given without the fix.
    #[error("`worked` says whether the fix worked: give the fix too")]
    WorkedWithoutFix,
}

/// One failure and what was done about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The kind of error, such as `compile_error` or `timeout`.
    pub error_type: String,
    /// The error message as it was printed.
    pub message: String,
    /// What was running: the task, tool or command.
    pub context: String,
    /// The fix that was applied, if any.
    pub fix: Option<String>,
    /// Whether the fix made the error go away (`None`: not known yet).
    pub worked: Option<bool>,
}

/// A recorded lesson as read back.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lesson {
    /// The memory holding it.
    pub id: MemoryId,
    /// The failure.
    pub failure: Failure,
    /// The normalised message used for comparison.
    pub normalised: String,
}

/// A suggested fix.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Suggestion {
    /// The fix to try.
    pub fix: String,
    /// Similarity (0–1) of the most similar past error, the one this fix is for.
    pub similarity: f64,
    /// Share of this fix's attempts on that error that worked.
    pub success_rate: f64,
    /// How many times this fix was tried on that error.
    pub attempts: u32,
    /// A lesson of that error where this fix was applied (one where it worked).
    pub example: MemoryId,
}

/// Which matches of a normalisation rule it replaces.
type Accept = fn(&str) -> bool;

/// A normalisation rule: what to find, what it becomes, and which matches it takes.
type Rule = (Regex, &'static str, Accept);

fn any_match(_: &str) -> bool {
    true
}

/// A hex run of 8 or more digits is only a hex value when it is written `0x…` or has a letter:
/// `12345678` is a number like `1234567`, so both become `<num>`.
fn has_hex_letter(found: &str) -> bool {
    found.starts_with("0x") || found.bytes().any(|b| b.is_ascii_alphabetic())
}

static PATTERNS: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let rules: [(&str, &str, Accept); 5] = [
        (
            r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?\b",
            " <time> ",
            any_match,
        ),
        (
            r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
            " <uuid> ",
            any_match,
        ),
        (
            r"\b0x[0-9a-fA-F]+\b|\b[0-9a-fA-F]{8,}\b",
            " <hex> ",
            has_hex_letter,
        ),
        // A path starts at a root (`/`, `./`, `../`, `~/`, `C:\`) that no word is glued to, or
        // is a relative path of three or more parts or ending in an extension: `I/O`, `TCP/IP`
        // and `and/or` are words.
        (
            r#"(?:[A-Za-z]:\\|\B\.{0,2}/|\B~/)[^\s:'"`,;()\[\]{}<>]+|\b[\w.-]+(?:/[\w.-]+){2,}|\b[\w.-]+/[\w-]*\.[A-Za-z]\w*"#,
            " <path> ",
            any_match,
        ),
        (
            r"\b[\w-]+\.(?:rs|py|cu|cpp|c|h|hpp|js|ts|json|toml|yaml|yml|png|exr|txt|log)\b",
            " <path> ",
            any_match,
        ),
    ];
    rules
        .into_iter()
        .filter_map(|(pattern, replacement, accept)| match Regex::new(pattern) {
            Ok(regex) => Some((regex, replacement, accept)),
            Err(e) => {
                // The patterns are constants; a failure here is a bug caught by the tests.
                tracing::error!(pattern, error = %e, "invalid lesson normalisation pattern");
                None
            }
        })
        .collect()
});

/// A number, with the word before it when that word can introduce a code (see the module docs).
static NUMBER: LazyLock<Option<Regex>> = LazyLock::new(|| {
    // The boundary before the digits is ASCII's, so a number glued to a letter of a script
    // without spaces (`ファイルの123行目`) is still a number; a code may be negative.
    const PATTERN: &str = r"(?i)(\b(?:status|code|exit|exited|errno|signal|sig|rc|https?(?:/[0-9](?:\.[0-9])?)?)(?:\s*[:=#]\s*|\s+)|\berror\s+)?(-?(?-u:\b)[0-9]+(?:\.[0-9]+)?)";
    Regex::new(PATTERN)
        .inspect_err(|e| {
            // A constant; a failure here is a bug caught by the tests.
            tracing::error!(pattern = PATTERN, error = %e, "invalid lesson number pattern");
        })
        .ok()
});

/// Replaces each number in `text` by `<num>`, except codes (see the module docs).
fn normalise_numbers(text: &str) -> String {
    let Some(number) = NUMBER.as_ref() else {
        return text.to_owned();
    };
    number
        .replace_all(text, |found: &regex::Captures<'_>| {
            let (Some(all), Some(digits)) = (found.get(0), found.get(2)) else {
                return String::new();
            };
            let prefix = found.get(1).map_or("", |p| p.as_str());
            let mut after = text[all.end()..].chars();
            let glued = match after.next() {
                Some(c) if c.is_alphanumeric() || c == '_' => true,
                Some('.' | ':' | ',') => after.next().is_some_and(|c| c.is_ascii_digit()),
                _ => false,
            };
            let (minus, unsigned) = match digits.as_str().strip_prefix('-') {
                Some(unsigned) => ("-", unsigned),
                None => ("", digits.as_str()),
            };
            let code = !prefix.is_empty()
                && unsigned.len() <= 4
                && unsigned.bytes().all(|b| b.is_ascii_digit())
                && !glued;
            // The protocol's version is not part of a code (`HTTP/1.1 404` is `HTTP 404`), and
            // its digits must not read as codes of their own.
            let prefix = if prefix
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case("http"))
            {
                "http "
            } else {
                prefix
            };
            if code {
                format!("{prefix}{minus}{unsigned}")
            } else {
                // A minus that is not a code's sign stays as written (`1-5`).
                format!("{prefix}{minus} <num> ")
            }
        })
        .into_owned()
}

/// Normalises an error message for comparison: volatile parts become placeholders, case and
/// spacing are folded.
pub fn normalise_message(message: &str) -> String {
    // NFKC first: fullwidth digits (`１２３`, common in Japanese text) are ASCII digits then, so
    // they are numbers as any other.
    const NFKC: icu_normalizer::ComposingNormalizerBorrowed<'static> =
        icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    let mut text = NFKC.normalize(message).into_owned();
    for (regex, replacement, accept) in PATTERNS.iter() {
        text = regex
            .replace_all(&text, |found: &regex::Captures<'_>| {
                let found = &found[0];
                if accept(found) {
                    (*replacement).to_owned()
                } else {
                    found.to_owned()
                }
            })
            .into_owned();
    }
    let text = normalise_numbers(&text);
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The words of a normalised message, as the store's search splits and folds them (UAX #29
/// words, so each ideograph is a word; NFKC and full case folding, so `Straße` is `strasse`),
/// unstemmed. A code's minus sign stays on it (`-9` is not `9`): a `-` that no letter or digit
/// precedes, followed by digits.
fn word_set(normalised: &str) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    let mut folded = String::new();
    let mut previous: Option<&str> = None;
    let mut before_previous_is_word = false;
    for segment in normalised.split_word_bounds() {
        let is_word = segment.chars().any(char::is_alphanumeric);
        if is_word {
            let signed = previous == Some("-")
                && !before_previous_is_word
                && segment.bytes().all(|b| b.is_ascii_digit());
            crate::store::fold_word(segment, &mut folded);
            if signed {
                folded.insert(0, '-');
            }
            words.insert(folded.clone());
        }
        before_previous_is_word = previous.is_some_and(|p| p.chars().any(char::is_alphanumeric));
        previous = Some(segment);
    }
    words
}

/// The Jaccard similarity of two normalised messages' word sets; 0 when both name codes and not
/// the same ones (see the module docs).
pub fn similarity(a: &str, b: &str) -> f64 {
    word_similarity(&word_set(a), &word_set(b))
}

/// [`similarity`] of two messages' word sets ([`word_set`]), so a message compared with many
/// is split and folded once.
fn word_similarity(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    // Every other number is a placeholder by now, so the words that are all digits are the codes.
    let is_code = |w: &&String| {
        let unsigned = w.strip_prefix('-').unwrap_or(w);
        !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit())
    };
    let (mut codes_a, mut codes_b) = (a.iter().filter(is_code), b.iter().filter(is_code));
    let (first_a, first_b) = (codes_a.next(), codes_b.next());
    if first_a.is_some() && first_b.is_some() && (first_a != first_b || !codes_a.eq(codes_b)) {
        return 0.0;
    }
    let union = a.union(b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// The lessons of one namespace of a store.
#[derive(Clone, Debug)]
pub struct Lessons {
    store: Store,
    namespace: Namespace,
    threshold: f64,
}

impl Lessons {
    /// Lessons kept in `namespace` of `store`, suggesting at [`DEFAULT_THRESHOLD`].
    pub fn new(store: Store, namespace: Namespace) -> Self {
        Lessons {
            store,
            namespace,
            threshold: DEFAULT_THRESHOLD,
        }
    }

    /// The same lessons with another similarity threshold.
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    /// Records a failure durably.
    ///
    /// # Errors
    /// [`LessonError::EmptyMessage`], [`LessonError::EmptyErrorType`], [`LessonError::EmptyFix`],
    /// [`LessonError::WorkedWithoutFix`], or the store's error.
    pub async fn record(&self, mut failure: Failure) -> Result<MemoryId, LessonError> {
        if failure.message.trim().is_empty() {
            return Err(LessonError::EmptyMessage);
        }
        if failure.error_type.trim().is_empty() {
            return Err(LessonError::EmptyErrorType);
        }
        match &failure.fix {
            Some(fix) if fix.trim().is_empty() => return Err(LessonError::EmptyFix),
            None if failure.worked.is_some() => return Err(LessonError::WorkedWithoutFix),
            _ => {}
        }
        // A failing tool may print a megabyte of errors; the lesson keeps its start, which is
        // what similarity needs, and stays well under the store's size limit.
        failure.message.truncate(kept_len(&failure.message));
        let normalised = normalise_message(&failure.message);
        let mut memory = NewMemory::new(self.namespace.clone(), normalised);
        memory.memory_type = MemoryType::BugFix;
        memory.summary = failure.fix.clone();
        memory.keywords = vec![failure.error_type.clone()];
        memory.tags = vec![LESSON_TAG.to_string(), NORMALISED_TAG.to_string()];
        if failure.fix.is_some() {
            memory.tags.push(LESSON_FIX_TAG.to_string());
        }
        memory.context = Some(
            serde_json::to_string(&failure)
                .map_err(|e| StoreError::Codec(format!("encode lesson: {e}")))?,
        );
        Ok(self.store.store(memory).await?)
    }

    fn lessons_matching(&self, query: &str, tags: &[&str], limit: usize) -> Vec<Lesson> {
        let options = SearchOptions {
            namespace: Some(self.namespace.clone()),
            tags: tags.iter().map(|t| (*t).to_string()).collect(),
            exclude_tags: Vec::new(),
            min_importance: None,
            limit,
        };
        self.store
            .search(query, &options)
            .into_iter()
            .filter_map(|hit| to_lesson(&hit.memory))
            .collect()
    }

    /// The lessons carrying `tags` that match `query` (normalised), best first: all those at
    /// least as good as the last one close to it (see [`CANDIDATES`]).
    fn close_lessons(&self, query: &str, tags: &[&str]) -> Vec<Lesson> {
        let mut limit = CANDIDATES;
        loop {
            let found = self.lessons_matching(query, tags, limit);
            let full = found.len() >= limit;
            let last_is_close = found
                .last()
                .is_some_and(|l| similarity(query, &l.normalised) >= self.threshold);
            if !full || !last_is_close || limit >= MAX_CANDIDATES {
                return found;
            }
            limit = (limit * 4).min(MAX_CANDIDATES);
        }
    }

    /// The lessons with a fix that match `query`: those tagged [`LESSON_FIX_TAG`], then any
    /// recorded before that tag existed (found among all lessons).
    fn fixes_matching(&self, query: &str) -> Vec<Lesson> {
        let mut found = self.close_lessons(query, &[LESSON_TAG, LESSON_FIX_TAG]);
        let mut seen: std::collections::HashSet<MemoryId> = found.iter().map(|l| l.id).collect();
        // Lessons without the tag predate it: a fixed number of candidates, so the failures
        // recorded without a fix (most lessons) are not read by the thousand.
        for lesson in self.lessons_matching(query, &[LESSON_TAG], CANDIDATES) {
            if lesson.failure.fix.is_some() && seen.insert(lesson.id) {
                found.push(lesson);
            }
        }
        found
    }

    /// The most recent lessons, newest first.
    pub fn list(&self, limit: usize) -> Vec<Lesson> {
        self.store
            .list_recent_matching(Some(&self.namespace), limit, |m| {
                m.tags.iter().any(|t| t == LESSON_TAG) && to_lesson(m).is_some()
            })
            .iter()
            .filter_map(|memory| to_lesson(memory))
            .collect()
    }

    /// The most successful known fix for the past error most similar to `message`, or `None`
    /// when no past error reaches the threshold with a fix that ever worked.
    ///
    /// Past errors are grouped by their normalised message (one "error" may have failed many
    /// times). The most similar error wins, ties going to the one with more recorded fix
    /// attempts; errors whose fixes never worked are passed over, since they have nothing to
    /// offer. Among that error's fixes the one with the best (Laplace smoothed) success rate is
    /// returned, with the error's similarity and the fix's raw success rate on it.
    pub fn suggest_fix(&self, message: &str) -> Option<Suggestion> {
        // Cut as a lesson's message is cut, so a long error matches its own lesson.
        let normalised = normalise_message(&message[..kept_len(message)]);
        #[derive(Default)]
        struct Tally {
            attempts: u32,
            worked: u32,
            /// The newest lesson where the fix worked, else the newest one (ids sort by time).
            example: Option<(bool, MemoryId)>,
        }
        struct PastError {
            similarity: f64,
            attempts: u32,
            fixes: BTreeMap<String, Tally>,
        }
        let mut errors: BTreeMap<String, PastError> = BTreeMap::new();
        let query_words = word_set(&normalised);
        for lesson in self.fixes_matching(&normalised) {
            let words = word_set(&lesson.normalised);
            let score = word_similarity(&query_words, &words);
            if score < self.threshold {
                continue;
            }
            let Some(fix) = lesson.failure.fix.clone() else {
                continue;
            };
            let worked = lesson.failure.worked == Some(true);
            // Grouped by their words as compared (folded), so `Straße` and `STRASSE` are one
            // error with one tally.
            let key: Vec<String> = words.into_iter().collect();
            let error = errors.entry(key.join(" ")).or_insert(PastError {
                similarity: score,
                attempts: 0,
                fixes: BTreeMap::new(),
            });
            error.attempts += 1;
            let tally = error.fixes.entry(fix).or_default();
            tally.attempts += 1;
            tally.worked += u32::from(worked);
            let example = (worked, lesson.id);
            if tally.example.is_none_or(|best| example > best) {
                tally.example = Some(example);
            }
        }
        let smoothed = |t: &Tally| (f64::from(t.worked) + 1.0) / (f64::from(t.attempts) + 2.0);
        let (_, error) = errors
            .into_iter()
            .filter(|(_, e)| e.fixes.values().any(|t| t.worked > 0))
            .max_by(|(_, a), (_, b)| {
                a.similarity
                    .total_cmp(&b.similarity)
                    .then(a.attempts.cmp(&b.attempts))
            })?;
        let similarity = error.similarity;
        error
            .fixes
            .into_iter()
            .filter(|(_, t)| t.worked > 0)
            .max_by(|(_, a), (_, b)| {
                smoothed(a)
                    .total_cmp(&smoothed(b))
                    .then(a.attempts.cmp(&b.attempts))
            })
            .and_then(|(fix, t)| {
                Some(Suggestion {
                    fix,
                    similarity,
                    success_rate: f64::from(t.worked) / f64::from(t.attempts),
                    attempts: t.attempts,
                    example: t.example?.1,
                })
            })
    }
}

/// How much of a failure message a lesson keeps: its first [`MAX_MESSAGE_BYTES`], cut at a
/// character boundary.
fn kept_len(message: &str) -> usize {
    message.floor_char_boundary(MAX_MESSAGE_BYTES)
}

fn to_lesson(memory: &crate::store::Memory) -> Option<Lesson> {
    let failure: Failure = serde_json::from_str(memory.context.as_deref()?).ok()?;
    let normalised = if memory.tags.iter().any(|t| t == NORMALISED_TAG) {
        memory.content.clone()
    } else {
        normalise_message(&failure.message)
    };
    Some(Lesson {
        id: memory.id,
        normalised,
        failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_parts_are_normalised_away() {
        let a = normalise_message(
            "error[E0308]: mismatched types at /home/ana/render/src/volume.rs:120:17 (build 4f3a9c2e1b)",
        );
        let b = normalise_message(
            "error[E0308]: Mismatched types at /tmp/ci/x/src/main.rs:7:3 (build 0091aa77ff)",
        );
        assert_eq!(a, b);
        assert!(a.contains("<path>") && a.contains("<hex>"), "{a}");
        let t = normalise_message(
            "timeout after 30s at 2026-11-21T10:00:03Z for 01890a5d-ac96-774b-bcce-b302099a8057",
        );
        assert_eq!(t, "timeout after <num> s at <time> for <uuid>");
    }

    #[test]
    fn words_with_a_slash_are_not_paths_and_long_numbers_are_numbers() {
        let io = normalise_message("I/O error while reading config");
        let tcp = normalise_message("TCP/IP error while reading config");
        assert_eq!(io, "i/o error while reading config");
        assert!(similarity(&io, &tcp) < DEFAULT_THRESHOLD, "{io} / {tcp}");
        assert_eq!(
            normalise_message("job 12345678 failed"),
            normalise_message("job 1234567 failed")
        );
        assert_eq!(normalise_message("job 12345678 failed"), "job <num> failed");
        assert_eq!(
            normalise_message("at 0x12345678 and deadbeef00"),
            "at <hex> and <hex>"
        );
        for path in [
            "src/main.rs",
            "a/b/c",
            "./x",
            "../up/x",
            "~/notes",
            "/etc/hosts",
        ] {
            assert_eq!(
                normalise_message(&format!("open {path}")),
                "open <path>",
                "{path}"
            );
        }
    }

    #[test]
    fn codes_after_a_code_word_are_kept_and_other_numbers_are_not() {
        for (message, normalised) in [
            (
                "worker exited with status 137",
                "worker exited with status 137",
            ),
            ("HTTP 404 Not Found", "http 404 not found"),
            ("HTTP/1.1 500 oops", "http 500 oops"),
            ("HTTP/2 404", "http 404"),
            ("exit code: 2", "exit code: 2"),
            (
                "rc=1 errno=28 killed by signal 9",
                "rc=1 errno=28 killed by signal 9",
            ),
            ("Error 503 from upstream", "error 503 from upstream"),
            // Not codes: no code word, a unit, a decimal, a time, too long, a line number.
            ("retry 3 of 5", "retry <num> of <num>"),
            ("status 30s", "status <num> s"),
            ("status 1.5", "status <num>"),
            ("status 12:30", "status <num> : <num>"),
            ("code 123456", "code <num>"),
            ("error: 3 tests failed", "error: <num> tests failed"),
            ("panic at main.rs:123", "panic at <path> : <num>"),
        ] {
            assert_eq!(normalise_message(message), normalised, "{message}");
        }
    }

    #[test]
    fn the_http_version_is_not_part_of_the_code() {
        let similar = |a: &str, b: &str| similarity(&normalise_message(a), &normalise_message(b));
        let plain = "GET /api/items failed: HTTP 404 Not Found";
        for versioned in [
            "GET /api/items failed: HTTP/1.1 404 Not Found",
            "GET /api/items failed: HTTP/2 404 Not Found",
            "GET /api/items failed: HTTP/1.0 404 Not Found",
        ] {
            assert_eq!(similar(plain, versioned), 1.0, "{versioned}");
        }
        assert_eq!(
            similar("HTTP/1.1 404 Not Found", "HTTP/1.1 500 Not Found"),
            0.0
        );
    }

    #[test]
    fn errors_with_different_codes_are_not_similar() {
        let similar = |a: &str, b: &str| similarity(&normalise_message(a), &normalise_message(b));
        assert_eq!(
            similar(
                "worker exited with status 137",
                "worker exited with status 2"
            ),
            0.0
        );
        assert_eq!(similar("HTTP 404 Not Found", "HTTP 500 Not Found"), 0.0);
        assert_eq!(similar("HTTP 404 Not Found", "http 404 not found"), 1.0);
        // A message without a code is compared by its words alone.
        assert!(similar("worker exited with status 137", "worker exited with status") > 0.6);
    }

    #[test]
    fn negative_codes_keep_their_sign() {
        let similar = |a: &str, b: &str| similarity(&normalise_message(a), &normalise_message(b));
        assert_eq!(
            normalise_message("worker exited with code -9"),
            "worker exited with code -9"
        );
        assert_eq!(normalise_message("errno=-2 ENOENT"), "errno=-2 enoent");
        assert_eq!(similar("exited with code -9", "exited with code -9"), 1.0);
        assert_eq!(similar("exited with code -9", "exited with code -11"), 0.0);
        assert_eq!(similar("exited with code -9", "exited with code 9"), 0.0);
        // A minus between numbers is not a sign: the numbers are placeholders.
        assert_eq!(similar("rows 1-5 failed", "rows 20-70 failed"), 1.0);
    }

    #[test]
    fn words_compare_as_the_search_folds_them() {
        let similar = |a: &str, b: &str| similarity(&normalise_message(a), &normalise_message(b));
        // A number glued to a letter of a script without spaces is still a number.
        assert_eq!(
            similar(
                "ファイルの123行目で構文エラー",
                "ファイルの456行目で構文エラー"
            ),
            1.0
        );
        // Fullwidth digits too, glued or not, and they are not read as codes.
        assert_eq!(
            similar(
                "ファイルの１２３行目で構文エラー",
                "ファイルの４５６行目で構文エラー"
            ),
            1.0
        );
        assert_eq!(
            similar(
                "ジョブ １２３ で失敗しました",
                "ジョブ ４５６ で失敗しました"
            ),
            1.0
        );
        // Each ideograph is a word: one more character is one more word, not another word.
        assert!(similar("连接超时", "连接超时了") >= DEFAULT_THRESHOLD);
        assert_eq!(similar("Straße gesperrt", "STRASSE GESPERRT"), 1.0);
        assert_eq!(similar("ＧＰＵ not found", "GPU not found"), 1.0);
        assert_eq!(similar("cafe\u{301} crashed", "café crashed"), 1.0);
        assert!(similar("connection refused", "permission denied") < DEFAULT_THRESHOLD);
    }

    #[test]
    fn similarity_is_jaccard_over_words() {
        assert_eq!(similarity("a b c", "a b c"), 1.0);
        assert_eq!(similarity("a b", "c d"), 0.0);
        assert!((similarity("a b c d", "a b c e") - 0.6).abs() < 1e-9);
    }
}
