//! Context budgets: what the Optimizer sends to an agent session, within the session's window.
//!
//! This module owns:
//! - token counting ([`TokenCounter`]: exact o200k_base counts from `tiktoken-rs`, or an estimate
//!   calibrated from real usage figures);
//! - the per-session budget split by [`Category`] (critical, skills, project, general), with any
//!   share a category leaves unused passed on to the others;
//! - ranking of candidates (upstream outputs, memories, skill documents from a folder of
//!   Markdown files, project files the task names) by BM25 relevance to the task plus importance
//!   and recency, de-duplication by content hash, and packing, with extractive compression of
//!   items larger than their share (the sentences most relevant to the task, in their order) or
//!   truncation at a sentence boundary, never mid-word;
//! - incremental payloads: a session that already holds an item gets a reference to it, not the
//!   item again;
//! - the [`ContextMonitor`], which alerts once per crossing of the alert ratio, as payloads are
//!   built, and [`preserve_snapshot`], which saves a session's full context in the store before
//!   it is compacted.
//!
//! BM25 is computed here over each request's candidates rather than through the store's index:
//! the candidates are not all memories (skills, files, upstream outputs), and the statistics must
//! be those of this request's pool. Text analysis (UAX #29 words, Snowball stems) is the store's
//! own ([`crate::store`]'s `text` module), so a query means the same thing in both places.
//! Sentence boundaries come from `unicode-segmentation` (UAX #29 sentences).

mod config;
mod counter;
mod monitor;
mod optimizer;
mod rank;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use config::{BudgetConfig, ContextConfig, RankingConfig};
pub use counter::{CalibratedCounter, O200kCounter, TokenCounter};
pub use monitor::ContextMonitor;
pub use optimizer::ContextOptimizer;

use crate::store::{Memory, MemoryId, MemoryType, NewMemory, Store, StoreError, Timestamp};

/// Everything that can go wrong when configuring the optimizer or preserving a context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// A configuration field has a value it cannot have.
    #[error("invalid context configuration: {field}: {reason}")]
    Config {
        /// The field, as written in the `[context]` table (`budget.window`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `[context]` table is not valid TOML for this configuration.
    #[error("invalid context configuration: {0}")]
    ConfigSyntax(String),
    /// The o200k_base tokenizer could not be built.
    #[error("cannot load the o200k_base tokenizer: {0}")]
    Tokenizer(String),
    /// A calibrated counter could not be fitted.
    #[error("cannot calibrate the token counter: {0}")]
    Calibration(String),
    /// The store refused the preserved context.
    #[error("cannot preserve the session's context in the store: {0}")]
    Store(#[from] StoreError),
}

/// The budget category of a candidate.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Outputs of the task's upstream tasks: always sent.
    Critical,
    /// Skill documents.
    Skills,
    /// Project files.
    Project,
    /// Everything else: memories.
    General,
}

impl Category {
    /// Every category, in priority order.
    pub const ALL: [Category; 4] = [
        Category::Critical,
        Category::Skills,
        Category::Project,
        Category::General,
    ];

    /// The lowercase name used in configuration and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Category::Critical => "critical",
            Category::Skills => "skills",
            Category::Project => "project",
            Category::General => "general",
        }
    }

    fn index(self) -> usize {
        match self {
            Category::Critical => 0,
            Category::Skills => 1,
            Category::Project => 2,
            Category::General => 3,
        }
    }
}

/// Something that may be sent to a session.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Its budget category.
    pub category: Category,
    /// Where it comes from: `"task:ID"`, `"memory:UUID"`, `"skill:NAME.md"`, `"file:PATH"`.
    pub source: String,
    /// Its text.
    pub text: String,
    /// 0 to 1.
    pub importance: f32,
    /// How old it is.
    pub age: Duration,
}

impl Candidate {
    /// A memory from the store as a general candidate: importance 1–10 scaled to 0–1, age since
    /// its last update.
    pub fn from_memory(memory: &Memory, now: Timestamp) -> Candidate {
        // Saturating: both come from the store, where a damaged record may hold any value.
        let age_ms = now
            .as_millis()
            .saturating_sub(memory.updated_at.as_millis())
            .max(0);
        Candidate {
            category: Category::General,
            source: format!("memory:{}", memory.id),
            text: memory.content.clone(),
            importance: f32::from(memory.importance.clamp(1, 10) - 1) / 9.0,
            age: Duration::from_millis(age_ms as u64),
        }
    }
}

/// What the Optimizer is asked to build a payload for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContextRequest {
    /// The agent session the payload is for.
    pub session: String,
    /// The task's id.
    pub task_id: String,
    /// The task as text: tool name and rendered arguments.
    pub query: String,
    /// `(upstream task id, its output as text)`: category [`Category::Critical`], always sent.
    pub upstream: Vec<(String, String)>,
    /// Candidates gathered by the agent (memories from the store, or any other kind): each keeps
    /// its category and is sent only if relevant enough to the task.
    pub memories: Vec<Candidate>,
    /// Files the task names: category [`Category::Project`], read from disk, always sent. A
    /// file that cannot be read (missing, not UTF-8, over `max_file_bytes`) is a warning.
    pub project_files: Vec<PathBuf>,
    /// The folder relative `project_files` resolve against (a plan's folder); `None`: the
    /// process's working directory. Sources name each file as given (`file:docs/a.md`).
    pub project_root: Option<PathBuf>,
}

/// One item of a payload, as sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextItem {
    /// Its budget category.
    pub category: Category,
    /// Where it comes from.
    pub source: String,
    /// The text sent (compressed if `compressed`).
    pub text: String,
    /// Tokens the item costs as rendered ([`ContextPayload::render`]): its text and its
    /// `## SOURCE` heading.
    pub tokens: usize,
    /// [`content_hash`] of the full original content.
    pub hash: u64,
    /// Whether `text` is an extract of the original.
    pub compressed: bool,
}

/// What to send to a session.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContextPayload {
    /// Items new or changed since this session's last payload, in rank order within each
    /// category, categories in [`Category::ALL`] order.
    pub items: Vec<ContextItem>,
    /// `(source, hash)` of relevant items the session already holds.
    pub references: Vec<(String, u64)>,
    /// Tokens of the payload as rendered: its items and the line naming its references.
    pub tokens: usize,
    /// Tokens of everything the session holds after this payload: the items sent to it and
    /// the lines naming held items that its payloads carried.
    pub session_tokens: usize,
    /// The session's window.
    pub window: usize,
    /// Files skipped, critical items compressed or dropped to fit.
    pub warnings: Vec<String>,
    /// Set when this payload made the session cross the alert ratio.
    pub alert: Option<ContextAlert>,
}

impl ContextPayload {
    /// The payload as a task's `{{context}}` receives it: each item under a `## SOURCE`
    /// heading followed by a blank line, then the sources the session already holds.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for item in &self.items {
            render_item(&mut text, &item.source, &item.text);
        }
        if let Some(line) = references_line(&self.references) {
            text.push_str(&line);
        }
        text
    }
}

/// Appends one item as [`ContextPayload::render`] writes it.
pub fn render_item(out: &mut String, source: &str, text: &str) {
    out.push_str("## ");
    out.push_str(source);
    out.push('\n');
    out.push_str(text);
    out.push_str("\n\n");
}

/// Tokens an item costs as [`ContextPayload::render`] writes it: heading, text and spacing,
/// counted together. With o200k this is exact, and the items of a payload add up to the count of
/// the whole render: an item ends in a newline and the next starts with `#`, where o200k always
/// splits, so no token spans two items. (With [`CalibratedCounter`] the sum is an upper bound.)
pub fn rendered_item_tokens(counter: &dyn TokenCounter, source: &str, text: &str) -> usize {
    let mut rendered = String::with_capacity(source.len() + text.len() + 6);
    render_item(&mut rendered, source, text);
    counter.count(&rendered)
}

/// Tokens an item's heading and spacing add to its text, counted apart from it: the
/// `## SOURCE` line and the blank line after the text. Exact for text that starts and ends with
/// a letter or a digit; text that starts or ends with whitespace or punctuation can share a
/// token with them, so it is then an upper bound in practice ([`rendered_item_tokens`] is the
/// exact cost).
pub fn item_overhead(counter: &dyn TokenCounter, source: &str) -> usize {
    // Counted apart: counted together, with no text between them, o200k would take the three
    // newlines as one token, which the real render never does.
    counter.count(&format!("## {source}\n")) + counter.count("\n\n")
}

/// The closing line naming what the session already holds, if anything.
fn references_line(references: &[(String, u64)]) -> Option<String> {
    (!references.is_empty()).then(|| {
        let held: Vec<&str> = references.iter().map(|(s, _)| s.as_str()).collect();
        format!("## already in your context\n{}\n", held.join(", "))
    })
}

/// A session's usage crossed the alert ratio: preserve its context, then compact it.
#[derive(Clone, Debug, PartialEq)]
pub struct ContextAlert {
    /// The session.
    pub session: String,
    /// Tokens it holds.
    pub used: usize,
    /// Its window.
    pub window: usize,
    /// `used / window`.
    pub ratio: f64,
}

/// The hash by which content is de-duplicated: XXH3 of the text with runs of whitespace
/// collapsed and the ends trimmed, so re-wrapped copies count as the same content.
pub fn content_hash(text: &str) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            hasher.update(b" ");
        }
        hasher.update(word.as_bytes());
    }
    hasher.digest()
}

/// The baseline the benchmark compares against, as Mnemosyne's skill discovery works: every
/// candidate that shares at least one keyword with the task (a stemmed word of three or more
/// letters that is not an English stop word), whole and in input order.
pub fn keyword_overlap_baseline<'a>(
    query: &str,
    candidates: &'a [Candidate],
) -> Vec<&'a Candidate> {
    let keywords: Vec<Box<str>> = crate::store::text::analyze_query(query)
        .into_iter()
        .filter(|term| is_keyword(term))
        .collect();
    if keywords.is_empty() {
        return Vec::new();
    }
    candidates
        .iter()
        .filter(|candidate| {
            crate::store::text::analyze_query(&candidate.text)
                .iter()
                .any(|term| keywords.contains(term))
        })
        .collect()
}

/// English stop words (stemmed forms included where stemming changes them).
const STOP_WORDS: &[&str] = &[
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was",
    "one", "our", "out", "has", "have", "him", "his", "how", "its", "may", "who", "did", "she",
    "too", "that", "with", "this", "from", "they", "will", "would", "there", "their", "what",
    "about", "which", "when", "just", "into", "your", "some", "could", "them", "than", "then",
    "only", "onli", "over", "also", "after", "these", "most", "been", "were", "where", "does",
    "doe", "each", "such", "should", "very", "veri", "because", "becaus", "why", "whi", "yet",
    "via", "per", "onto", "upon", "once", "onc", "here", "those", "while", "both", "being",
];

fn is_keyword(term: &str) -> bool {
    term.chars().count() >= 3 && !STOP_WORDS.contains(&term)
}

/// The tag of the memories [`preserve_snapshot`] writes.
pub const SNAPSHOT_TAG: &str = "context-snapshot";

/// Saves a session's full context (from [`ContextOptimizer::session_snapshot`]) in the store
/// before it is compacted: one memory per item, type [`MemoryType::Reference`], tagged
/// `context-snapshot`, with the item's source as its summary and `session:ID` as its context,
/// all in one commit. An item longer than the store takes is kept by its start (cut at a
/// character boundary), so one large item does not cost the items after it. Returns the ids in
/// item order; stops at the first item the store refuses (those before it are stored).
pub async fn preserve_snapshot(
    store: &Store,
    namespace: crate::store::Namespace,
    session: &str,
    items: &[ContextItem],
) -> Result<Vec<MemoryId>, ContextError> {
    let limit = store.config().max_content_bytes;
    let memories = items.iter().map(|item| {
        let kept = &item.text[..item.text.floor_char_boundary(limit)];
        let mut memory = NewMemory::new(namespace.clone(), kept);
        memory.memory_type = MemoryType::Reference;
        memory.summary = Some(item.source.clone());
        memory.tags = vec![SNAPSHOT_TAG.to_string(), item.category.as_str().to_string()];
        memory.context = Some(format!("session:{session}"));
        memory
    });
    Ok(store.store_many(memories).await?)
}
