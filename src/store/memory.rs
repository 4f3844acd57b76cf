//! The memory record, its id, namespace and time types, and the inputs that create and change it.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::error::StoreError;

/// Identifies a memory. A UUID v7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemoryId(Uuid);

impl MemoryId {
    /// A new id for the current time.
    pub fn new() -> Self {
        MemoryId(Uuid::now_v7())
    }

    /// The id as a 128-bit integer (the durable key).
    pub fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }

    /// Rebuilds an id from its durable key.
    pub fn from_u128(value: u128) -> Self {
        MemoryId(Uuid::from_u128(value))
    }
}

impl Default for MemoryId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MemoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for MemoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemoryId({})", self.0.hyphenated())
    }
}

impl FromStr for MemoryId {
    type Err = StoreError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(input.trim())
            .map(MemoryId)
            .map_err(|_| StoreError::InvalidId {
                input: input.to_owned(),
            })
    }
}

/// Milliseconds since the Unix epoch, UTC.
///
/// Serialises as an RFC 3339 string in human-readable formats (JSON) and as an integer otherwise.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(millis)
    }

    /// A timestamp from milliseconds since the epoch.
    pub fn from_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(&self) -> i64 {
        self.0
    }

    /// This time plus a duration, saturating.
    pub fn plus(&self, duration: Duration) -> Self {
        let add = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(add))
    }

    fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        }
    }

    /// The last instant RFC 3339 can write (9999-12-31T23:59:59.999Z); expiries past it are
    /// refused when written.
    pub const LATEST: Timestamp = Timestamp(253_402_300_799_999);
}

impl fmt::Display for Timestamp {
    /// RFC 3339 with milliseconds. A time RFC 3339 cannot write (before 1970 or after 9999,
    /// which only a library caller can set) is written as milliseconds since the epoch rather
    /// than failing the whole output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if (0..=Self::LATEST.0).contains(&self.0) {
            humantime::format_rfc3339_millis(self.to_system_time()).fmt(f)
        } else {
            write!(f, "{} ms since the epoch", self.0)
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            let time = humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)?;
            let millis = match time.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_millis() as i64,
                Err(e) => -(e.duration().as_millis() as i64),
            };
            Ok(Timestamp(millis))
        } else {
            i64::deserialize(deserializer).map(Timestamp)
        }
    }
}

/// Where a memory lives: `global`, `project:NAME` or `session:PROJECT:ID`.
///
/// Names may not be empty and may not contain `:` or whitespace, so the printed form parses back
/// to the same namespace.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Namespace {
    /// Shared by every project.
    Global,
    /// One project.
    Project(String),
    /// One session (a run) of a project.
    Session {
        /// The project the session belongs to.
        project: String,
        /// The session's id.
        id: String,
    },
}

impl Namespace {
    /// The namespace of one project.
    pub fn project(name: &str) -> Result<Self, StoreError> {
        format!("project:{name}").parse()
    }

    /// The namespace of one session of a project.
    pub fn session(project: &str, id: &str) -> Result<Self, StoreError> {
        format!("session:{project}:{id}").parse()
    }

    /// Checks a namespace built directly from the enum, which can hold names its printed form
    /// would not parse back from (a memory stored under one made the whole store unreadable).
    ///
    /// # Errors
    /// [`StoreError::InvalidNamespace`], quoting the namespace.
    pub fn check(&self) -> Result<(), StoreError> {
        let valid = match self {
            Namespace::Global => true,
            Namespace::Project(name) => valid_part(name),
            Namespace::Session { project, id } => valid_part(project) && valid_part(id),
        };
        if valid {
            Ok(())
        } else {
            Err(StoreError::InvalidNamespace {
                input: self.to_string(),
            })
        }
    }
}

fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && !part
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
}

impl FromStr for Namespace {
    type Err = StoreError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || StoreError::InvalidNamespace {
            input: input.to_owned(),
        };
        if input == "global" {
            return Ok(Namespace::Global);
        }
        let mut parts = input.split(':');
        let parsed = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("project"), Some(name), None, None) if valid_part(name) => {
                Namespace::Project(name.to_owned())
            }
            (Some("session"), Some(project), Some(id), None)
                if valid_part(project) && valid_part(id) =>
            {
                Namespace::Session {
                    project: project.to_owned(),
                    id: id.to_owned(),
                }
            }
            _ => return Err(invalid()),
        };
        Ok(parsed)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Namespace::Global => f.write_str("global"),
            Namespace::Project(name) => write!(f, "project:{name}"),
            Namespace::Session { project, id } => write!(f, "session:{project}:{id}"),
        }
    }
}

impl Serialize for Namespace {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What kind of knowledge a memory holds; counted separately in [`super::StoreStats`].
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MemoryType {
    /// Something learned that is not one of the other kinds.
    #[default]
    Insight,
    /// A decision and its reasons.
    Decision,
    /// A reusable technique or code pattern.
    Pattern,
    /// A bug and how it was fixed.
    BugFix,
    /// A setting and why it has its value.
    Configuration,
    /// A person's preference.
    Preference,
    /// The output of a task, written by the Executor.
    TaskOutput,
    /// The error of a failed task, written by the Executor.
    TaskError,
    /// A pointer to a document or other outside reference.
    Reference,
}

impl MemoryType {
    /// Every type, in declaration order.
    pub const ALL: [MemoryType; 9] = [
        MemoryType::Insight,
        MemoryType::Decision,
        MemoryType::Pattern,
        MemoryType::BugFix,
        MemoryType::Configuration,
        MemoryType::Preference,
        MemoryType::TaskOutput,
        MemoryType::TaskError,
        MemoryType::Reference,
    ];

    /// The snake_case name used in JSON and on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            MemoryType::Insight => "insight",
            MemoryType::Decision => "decision",
            MemoryType::Pattern => "pattern",
            MemoryType::BugFix => "bug_fix",
            MemoryType::Configuration => "configuration",
            MemoryType::Preference => "preference",
            MemoryType::TaskOutput => "task_output",
            MemoryType::TaskError => "task_error",
            MemoryType::Reference => "reference",
        }
    }
}

impl fmt::Display for MemoryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MemoryType {
    type Err = StoreError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        MemoryType::ALL
            .into_iter()
            .find(|t| t.as_str() == input)
            .ok_or_else(|| StoreError::InvalidMemoryType {
                input: input.to_owned(),
            })
    }
}

/// One stored memory.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Memory {
    /// Its id; sorts by creation time.
    pub id: MemoryId,
    /// Where it lives.
    pub namespace: Namespace,
    /// What kind of knowledge it holds.
    pub memory_type: MemoryType,
    /// The text itself.
    pub content: String,
    /// A short summary, weighted above the content in search.
    pub summary: Option<String>,
    /// Keywords, weighted highest in search.
    pub keywords: Vec<String>,
    /// Tags, searchable and usable as a filter.
    pub tags: Vec<String>,
    /// Where it came from or what it applies to.
    pub context: Option<String>,
    /// 1 (trivia) to 10 (critical).
    pub importance: u8,
    /// 0.0 to 1.0.
    pub confidence: f32,
    /// When it was stored.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// When it was last read through `get`.
    pub last_accessed_at: Timestamp,
    /// How often it was read through `get`.
    pub access_count: u64,
    /// When it stops being visible; purged in the background after that.
    pub expires_at: Option<Timestamp>,
    /// Archived memories are kept and readable by id but leave search and recent lists.
    pub archived: bool,
}

impl Memory {
    /// Whether the memory is past its expiry time at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The input to [`super::Store::store`].
#[derive(Clone, PartialEq, Debug)]
pub struct NewMemory {
    /// Where it lives.
    pub namespace: Namespace,
    /// What kind of knowledge it holds.
    pub memory_type: MemoryType,
    /// The text itself (at most [`super::StoreConfig::max_content_bytes`]).
    pub content: String,
    /// A short summary.
    pub summary: Option<String>,
    /// Keywords.
    pub keywords: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Where it came from.
    pub context: Option<String>,
    /// 1 to 10; default 5.
    pub importance: u8,
    /// 0.0 to 1.0; default 1.0.
    pub confidence: f32,
    /// How long it lives; `None` keeps it until archived.
    pub ttl: Option<Duration>,
}

impl NewMemory {
    /// A memory with the given namespace and content and default everything else.
    pub fn new(namespace: Namespace, content: impl Into<String>) -> Self {
        NewMemory {
            namespace,
            memory_type: MemoryType::default(),
            content: content.into(),
            summary: None,
            keywords: Vec::new(),
            tags: Vec::new(),
            context: None,
            importance: 5,
            confidence: 1.0,
            ttl: None,
        }
    }
}

/// Changes to apply with [`super::Store::update`]; `None` leaves a field as it is.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct MemoryPatch {
    /// New type.
    pub memory_type: Option<MemoryType>,
    /// New content.
    pub content: Option<String>,
    /// New summary (`Some(None)` clears it).
    pub summary: Option<Option<String>>,
    /// New keywords.
    pub keywords: Option<Vec<String>>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New context (`Some(None)` clears it).
    pub context: Option<Option<String>>,
    /// New importance.
    pub importance: Option<u8>,
    /// New confidence.
    pub confidence: Option<f32>,
    /// New expiry (`Some(None)` makes it permanent).
    pub expires_at: Option<Option<Timestamp>>,
}

/// Checks everything a write would store: the namespace, the size of every text field (each
/// within `max_bytes`; the keywords together, and the tags together, each item counting one
/// byte more than its text, so fifty million empty tags are not a free 1 GiB of hot tier),
/// importance, confidence and expiry.
pub(crate) fn validate_memory(memory: &Memory, max_bytes: usize) -> Result<(), StoreError> {
    memory.namespace.check()?;
    if memory.content.len() > max_bytes {
        return Err(StoreError::ContentTooLarge {
            size: memory.content.len(),
            limit: max_bytes,
        });
    }
    let total = |items: &[String]| {
        items
            .iter()
            .map(|item| item.len().saturating_add(1))
            .fold(0usize, usize::saturating_add)
    };
    for (field, size) in [
        ("summary", memory.summary.as_ref().map_or(0, String::len)),
        ("context", memory.context.as_ref().map_or(0, String::len)),
        ("keywords", total(&memory.keywords)),
        ("tags", total(&memory.tags)),
    ] {
        if size > max_bytes {
            return Err(StoreError::FieldTooLarge {
                field,
                size,
                limit: max_bytes,
            });
        }
    }
    if !(1..=10).contains(&memory.importance) {
        return Err(StoreError::InvalidImportance {
            value: memory.importance,
        });
    }
    if !(0.0..=1.0).contains(&memory.confidence) {
        return Err(StoreError::InvalidConfidence {
            value: memory.confidence,
        });
    }
    if let Some(at) = memory.expires_at
        && !(0..=Timestamp::LATEST.0).contains(&at.0)
    {
        return Err(StoreError::InvalidExpiry {
            detail: format!("{at} is outside 1970 to 9999"),
        });
    }
    Ok(())
}

/// Checks a time to live: at least a millisecond (what the store counts in), and not past
/// [`Timestamp::LATEST`] from `now`.
pub(crate) fn validate_ttl(ttl: Duration, now: Timestamp) -> Result<(), StoreError> {
    if ttl < Duration::from_millis(1) {
        return Err(StoreError::InvalidExpiry {
            detail: format!("a time to live of {ttl:?} is under the store's 1 ms resolution"),
        });
    }
    if now.plus(ttl).0 > Timestamp::LATEST.0 {
        return Err(StoreError::InvalidExpiry {
            detail: format!("a time to live of {ttl:?} ends after the year 9999"),
        });
    }
    Ok(())
}

impl MemoryPatch {
    /// Applies the patch to a memory, stamping `updated_at`.
    pub(crate) fn apply(&self, memory: &mut Memory, now: Timestamp) {
        if let Some(t) = self.memory_type {
            memory.memory_type = t;
        }
        if let Some(c) = &self.content {
            memory.content.clone_from(c);
        }
        if let Some(s) = &self.summary {
            memory.summary.clone_from(s);
        }
        if let Some(k) = &self.keywords {
            memory.keywords.clone_from(k);
        }
        if let Some(t) = &self.tags {
            memory.tags.clone_from(t);
        }
        if let Some(c) = &self.context {
            memory.context.clone_from(c);
        }
        if let Some(i) = self.importance {
            memory.importance = i;
        }
        if let Some(c) = self.confidence {
            memory.confidence = c;
        }
        if let Some(e) = self.expires_at {
            memory.expires_at = e;
        }
        memory.updated_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_rfc_3339_cannot_write_still_print() {
        assert_eq!(Timestamp::LATEST.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            Timestamp::from_millis(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        for millis in [i64::MAX, Timestamp::LATEST.as_millis() + 1, -1, i64::MIN] {
            assert_eq!(
                Timestamp::from_millis(millis).to_string(),
                format!("{millis} ms since the epoch")
            );
        }
    }

    #[test]
    fn namespaces_print_as_they_parse() {
        for text in ["global", "project:demo", "session:demo:run-7"] {
            let ns: Namespace = text.parse().unwrap_or(Namespace::Global);
            assert_eq!(ns.to_string(), text);
        }
    }

    #[test]
    fn malformed_namespaces_are_rejected_with_the_input_quoted() {
        for text in [
            "",
            "Global",
            "project:",
            "project:a:b",
            "session:p",
            "session::x",
            "session:p:x:y",
            "team:x",
            "project:a b",
        ] {
            match text.parse::<Namespace>() {
                Err(StoreError::InvalidNamespace { input }) => assert_eq!(input, text),
                other => panic!("{text:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let first = MemoryId::new();
        std::thread::sleep(Duration::from_millis(2));
        let second = MemoryId::new();
        assert!(first < second);
        assert_eq!(MemoryId::from_u128(first.as_u128()), first);
    }
}
