//! `demo-tools`: a small MCP tool server (rmcp's server side, stdio) for the offline
//! "release notes digest" example plan in `examples/digest/`.
//!
//! Tools:
//! - `count_words { path }` → `{ path, words, lines, top_terms }`: `words` counts
//!   whitespace-separated tokens (as `wc -w` does), `lines` counts lines, `top_terms` are the five
//!   most frequent lower-cased alphabetic terms of three letters or more that are not stopwords.
//! - `draft_report { title, sections, feedback, attempt }` → `{ report, words, limit }`: without
//!   feedback, a long Markdown report that walks through every section and every term; when the
//!   feedback names a word limit ("required <= 120", "required < 120" (119), "max 120", "at most 120
//!   words"; a gate's "JSON field /F is …, required …" counts only for `/words`) it writes a
//!   compact report within that many words, still naming every section. This stands in for an
//!   agent that revises its draft on a reviewer's feedback; it is deterministic text assembly, not a
//!   language model.
//! - `publish { report, path }` → `{ path, bytes }`: writes the report, creating parent folders.
//! - `unpublish { path }` → `{ path, removed }`: deletes it (the plan's compensation); a file that
//!   is already gone is not an error.
//!
//! Relative paths are resolved against the server's working directory (the pool's `cwd`). Errors a
//! caller can fix (an unreadable path, a write that fails) are tool results with `isError` and a
//! message naming the path; arguments that do not deserialize get rmcp's own tool error naming the
//! field. `count_words` reads only regular files of at most 16 MiB, and `publish` writes only to a
//! new or regular file: a FIFO would block, a device such as `/dev/zero` never ends. Both do their
//! file I/O on tokio's blocking pool, so a slow disk does not stall the single-threaded server.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::LazyLock;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::schemars::{self, JsonSchema};
use rmcp::{ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::unix::pipe;

/// Words too common to say anything about a release.
const STOPWORDS: &[&str] = &[
    "about", "after", "all", "also", "and", "any", "are", "but", "can", "each", "for", "from",
    "had", "has", "have", "into", "its", "may", "more", "most", "not", "now", "one", "only", "our",
    "out", "over", "than", "that", "the", "their", "them", "then", "there", "these", "they",
    "this", "those", "through", "too", "two", "under", "was", "were", "what", "when", "which",
    "while", "who", "will", "with", "would", "you", "your", "been", "being", "does", "did", "just",
    "like", "many", "much", "some", "such", "very", "where", "how", "why", "use", "used", "uses",
    "get", "gets", "per", "via", "yet", "off", "own", "same", "both", "few", "other", "who",
];

/// The largest file `count_words` reads: far above any release note, small enough to hold.
const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;

/// A gate's verdict on a field: "JSON field /words is 412, required <= 120" (src/plan/gate.rs),
/// or just "required < 120". The field, when named, says whether the bound is on the word count.
static REQUIRED_LIMIT: LazyLock<Option<regex::Regex>> = LazyLock::new(|| {
    regex::Regex::new(
        r"(?i)(?:JSON field (\S+) is [^;]*?,\s*)?\brequired\s*(<=|≤|<)\s*(\d+(?:\.\d+)?)",
    )
    .ok()
});

/// "max 120", "maximum 120 words", "at most 120 words". The word after the number is captured so
/// that "at most 2 columns" is not read as a word limit.
static WORDS_LIMIT: LazyLock<Option<regex::Regex>> = LazyLock::new(|| {
    regex::Regex::new(r"(?i)\b(?:at\s+most|max(?:imum)?)\s+(\d+(?:\.\d+)?)(?:\s*([[:alpha:]]+))?")
        .ok()
});

#[derive(Debug, Deserialize, JsonSchema)]
struct CountWordsArgs {
    /// The file to count (relative to the server's working directory).
    path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct Section {
    /// The section's name (usually the input file's stem).
    name: String,
    /// Its word count.
    words: u64,
    /// Its most frequent terms.
    #[serde(default)]
    top_terms: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct DraftReportArgs {
    /// The report's title.
    title: String,
    /// One entry per input.
    sections: Vec<Section>,
    /// The reviewer's feedback on the previous attempt (empty on the first).
    #[serde(default)]
    feedback: String,
    /// The attempt number (a number or a numeric string).
    #[serde(default)]
    attempt: Option<Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct PublishArgs {
    /// The report text.
    report: String,
    /// Where to write it.
    path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct UnpublishArgs {
    /// The file to delete.
    path: String,
}

/// The server: every tool reads its arguments only. The router is built once: rmcp's default
/// handler (`#[tool_router(server_handler)]`) builds it again, a map of every tool, on every call.
struct DemoTools {
    router: ToolRouter<DemoTools>,
}

#[tool_handler(router = self.router)]
impl ServerHandler for DemoTools {}

#[tool_router]
impl DemoTools {
    #[tool(
        description = "Count the words and lines of a text file (a regular file of at most 16 MiB) and list its five most frequent terms"
    )]
    async fn count_words(&self, Parameters(args): Parameters<CountWordsArgs>) -> CallToolResult {
        let path = args.path.clone();
        // Counting 16 MiB takes a while too, so it goes to the blocking pool with the read.
        let counted = tokio::task::spawn_blocking(move || {
            read_text_capped(&path).map(|text| count(&path, &text))
        })
        .await;
        match counted {
            Ok(Ok(counts)) => CallToolResult::structured(counts),
            Ok(Err(message)) => tool_error(message),
            Err(e) => tool_error(format!("counting {:?} failed: {e}", args.path)),
        }
    }

    #[tool(
        description = "Draft a Markdown digest of the sections; with feedback naming a word limit, stay within it"
    )]
    fn draft_report(&self, Parameters(args): Parameters<DraftReportArgs>) -> CallToolResult {
        let limit = word_limit(&args.feedback);
        let report = match limit {
            Some(limit) => compact_report(&args.title, &args.sections, limit),
            None if args.feedback.trim().is_empty() => {
                match verbose_report(&args.title, &args.sections) {
                    Ok(report) => report,
                    Err(message) => return tool_error(message),
                }
            }
            // Feedback without a number: the compact form, untrimmed.
            None => compact_report(&args.title, &args.sections, usize::MAX),
        };
        let words = report.split_whitespace().count();
        CallToolResult::structured(json!({
            "report": report,
            "words": words,
            "limit": limit,
            "attempt": attempt_number(args.attempt.as_ref()),
        }))
    }

    #[tool(description = "Write a report to a file, creating parent folders")]
    async fn publish(&self, Parameters(args): Parameters<PublishArgs>) -> CallToolResult {
        let (path, report) = (args.path.clone(), args.report);
        let bytes = report.len();
        match tokio::task::spawn_blocking(move || write_report(&path, &report)).await {
            Ok(Ok(())) => CallToolResult::structured(json!({ "path": args.path, "bytes": bytes })),
            Ok(Err(message)) => tool_error(message),
            Err(e) => tool_error(format!("writing {:?} failed: {e}", args.path)),
        }
    }

    #[tool(description = "Delete a published report (a file already gone is not an error)")]
    fn unpublish(&self, Parameters(args): Parameters<UnpublishArgs>) -> CallToolResult {
        match std::fs::remove_file(&args.path) {
            Ok(()) => CallToolResult::structured(json!({ "path": args.path, "removed": true })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                CallToolResult::structured(json!({ "path": args.path, "removed": false }))
            }
            Err(e) => tool_error(format!("cannot delete {:?}: {e}", args.path)),
        }
    }
}

fn tool_error(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// What a file that is not a regular file is, for the error that refuses it.
fn file_kind(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// The text of the regular file at `path`, refusing anything over [`MAX_READ_BYTES`]. Blocking.
fn read_text_capped(path: &str) -> Result<String, String> {
    let cannot = |reason: String| format!("cannot read {path:?}: {reason}");
    let over_cap = |what: String| {
        cannot(format!(
            "{what}, over the limit of {MAX_READ_BYTES} bytes (16 MiB)"
        ))
    };
    // The type is checked before opening: opening a FIFO waits for a writer, and a device such as
    // /dev/zero never reaches its end.
    let metadata = std::fs::metadata(path).map_err(|e| cannot(e.to_string()))?;
    if !metadata.is_file() {
        return Err(cannot(format!(
            "{}, not a regular file",
            file_kind(metadata.file_type())
        )));
    }
    if metadata.len() > MAX_READ_BYTES {
        return Err(over_cap(format!("{} bytes", metadata.len())));
    }
    let file = File::open(path).map_err(|e| cannot(e.to_string()))?;
    // The path may have been replaced since the check; what was opened is what counts.
    let opened = file.metadata().map_err(|e| cannot(e.to_string()))?;
    if !opened.is_file() {
        return Err(cannot(format!(
            "{}, not a regular file",
            file_kind(opened.file_type())
        )));
    }
    // A file that grew since the check (or a /proc file, which reports size 0) is bounded here.
    let bytes = read_at_most(file, MAX_READ_BYTES)
        .map_err(|e| cannot(e.to_string()))?
        .ok_or_else(|| over_cap("it grew while being read".to_owned()))?;
    String::from_utf8(bytes).map_err(|e| {
        cannot(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// All of `reader` if it holds at most `cap` bytes, else `None`; never more than `cap + 1` bytes
/// in memory (the one past the cap tells a reader that fits from one that does not).
fn read_at_most(reader: impl Read, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    reader.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= cap).then_some(bytes))
}

/// Writes `report` to `path`, creating parent folders; an existing path must be a regular file
/// (opening a FIFO to write waits for a reader). Blocking.
fn write_report(path: &str, report: &str) -> Result<(), String> {
    let target = Path::new(path);
    match std::fs::metadata(target) {
        Ok(metadata) if !metadata.is_file() => {
            return Err(format!(
                "cannot write {path:?}: {}, not a regular file",
                file_kind(metadata.file_type())
            ));
        }
        _ => {}
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create folder {:?}: {e}", parent.display()))?;
    }
    std::fs::write(target, report).map_err(|e| format!("cannot write {path:?}: {e}"))
}

fn count(path: &str, text: &str) -> Value {
    let mut frequency: HashMap<String, usize> = HashMap::new();
    for term in text
        .split(|c: char| !c.is_alphabetic())
        .filter(|t| t.chars().count() >= 3)
        .map(str::to_lowercase)
        .filter(|t| !STOPWORDS.contains(&t.as_str()))
    {
        *frequency.entry(term).or_default() += 1;
    }
    let mut terms: Vec<(String, usize)> = frequency.into_iter().collect();
    // Most frequent first; ties alphabetically, so the answer does not depend on hashing.
    terms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let top_terms: Vec<String> = terms.into_iter().take(5).map(|(t, _)| t).collect();
    json!({
        "path": path,
        "words": text.split_whitespace().count(),
        "lines": text.lines().count(),
        "top_terms": top_terms,
    })
}

/// The smallest word limit the feedback states, if any: "required <= N" and "max N" allow N words,
/// "required < N" allows N - 1 (the gate's `lt` is strict). A gate's bound on another field than
/// `/words`, and a number followed by another unit ("at most 2 columns"), are not word limits.
fn word_limit(feedback: &str) -> Option<usize> {
    let required = REQUIRED_LIMIT
        .as_ref()?
        .captures_iter(feedback)
        .filter(|c| c.get(1).is_none_or(|field| field.as_str() == "/words"))
        .filter_map(|c| {
            let bound: f64 = c.get(3)?.as_str().parse().ok()?;
            let strict = c.get(2)?.as_str() == "<";
            // `< 120` allows 119 and `< 120.5` allows 120; `<= 120.5` allows 120 too.
            let most = if strict && bound.fract() == 0.0 {
                bound - 1.0
            } else {
                bound.floor()
            };
            // A bound under zero words cannot be met; the shortest report is the best attempt.
            Some(most.max(0.0) as usize)
        });
    let stated = WORDS_LIMIT
        .as_ref()?
        .captures_iter(feedback)
        .filter(|c| {
            c.get(2).is_none_or(|unit| {
                matches!(unit.as_str().to_lowercase().as_str(), "word" | "words")
            })
        })
        // A word count is whole: "max 0.05" is some other bound.
        .filter_map(|c| c.get(1)?.as_str().parse::<usize>().ok());
    required.chain(stated).min()
}

fn attempt_number(attempt: Option<&Value>) -> Option<u64> {
    match attempt? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A first draft that says everything it can: every section, every term, in full sentences. Fails
/// when the sections' word counts add up to more than a u64 holds (they are the caller's numbers).
fn verbose_report(title: &str, sections: &[Section]) -> Result<String, String> {
    let total = sections
        .iter()
        .try_fold(0u64, |sum, s| sum.checked_add(s.words))
        .ok_or_else(|| {
            format!(
                "the sections' word counts add up to more than {}: {}",
                u64::MAX,
                sections
                    .iter()
                    .map(|s| format!("{:?} {}", s.name, s.words))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let mut out = format!(
        "# {title}\n\nThis digest walks through {} release notes, {total} words in all, one section \
         per note, and explains for each of them the terms that came up most often and why they \
         matter to anyone following the project from one release to the next.\n",
        sections.len()
    );
    for section in sections {
        out.push_str(&format!(
            "\n## {}\n\nThe note on {} runs to {} words. Its most frequent terms, in order, are listed \
             below with a short remark on each one.\n\n",
            section.name, section.name, section.words
        ));
        for (rank, term) in section.top_terms.iter().enumerate() {
            out.push_str(&format!(
                "- **{term}** is term number {} of the {} note, which suggests that {term} was a \
                 recurring concern for the people who wrote this release.\n",
                rank + 1,
                section.name
            ));
        }
    }
    out.push_str(
        "\nTaken together, these sections give a broad picture of where the work went, what \
         changed for users, and which themes are likely to carry over into the next release.\n",
    );
    Ok(out)
}

/// A revised draft within `limit` words: a heading and one line per section, dropping terms
/// (least frequent first) until it fits. Every section keeps at least its name and word count.
fn compact_report(title: &str, sections: &[Section], limit: usize) -> String {
    let most_terms = sections
        .iter()
        .map(|s| s.top_terms.len())
        .max()
        .unwrap_or(0);
    let mut kept = most_terms;
    loop {
        let mut out = format!("# {title}\n\n");
        for section in sections {
            out.push_str(&format!("- {}: {} words", section.name, section.words));
            let terms: Vec<&str> = section
                .top_terms
                .iter()
                .take(kept)
                .map(String::as_str)
                .collect();
            if !terms.is_empty() {
                out.push_str(&format!("; {}", terms.join(", ")));
            }
            out.push('\n');
        }
        if kept == 0 || out.split_whitespace().count() <= limit {
            return out;
        }
        kept -= 1;
    }
}

/// stdin and stdout as pipes driven by the runtime's epoll loop, when they are pipes (as under a
/// tetrarch pool). tokio's own stdin and stdout read and write on its blocking thread pool: a
/// thread hand-off per message each way, and each hand-off wakes a thread that has gone idle, which
/// is most of what a call costs after the server has sat idle. `None` (a terminal, a file) falls
/// back to tokio's stdio.
fn pipe_stdio() -> Option<(pipe::Receiver, pipe::Sender)> {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let stdout = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
    // Both or neither, decided before either end is made: making one sets O_NONBLOCK on the open
    // file it shares with fd 0 or 1, and tokio's blocking stdio would then take EAGAIN for EOF.
    if !(is_pipe(&stdin) && is_pipe(&stdout)) {
        return None;
    }
    let receiver = pipe::Receiver::from_owned_fd(stdin).ok()?;
    match pipe::Sender::from_owned_fd(stdout) {
        Ok(sender) => Some((receiver, sender)),
        Err(_) => {
            // stdout is a pipe we cannot write (opened read-only): put stdin back in blocking mode
            // for the fallback. If even that fails, the fallback reports what goes wrong.
            let _ = receiver.into_blocking_fd();
            None
        }
    }
}

fn is_pipe(fd: &OwnedFd) -> bool {
    fd.try_clone()
        .map(File::from)
        .and_then(|file| file.metadata())
        .is_ok_and(|metadata| metadata.file_type().is_fifo())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tools = DemoTools {
        router: DemoTools::tool_router(),
    };
    let served = match pipe_stdio() {
        Some(pipes) => tools.serve(pipes).await,
        None => tools.serve(rmcp::transport::stdio()).await,
    };
    let service = match served {
        Ok(service) => service,
        Err(e) => {
            eprintln!("demo-tools: MCP initialization failed: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = service.waiting().await {
        eprintln!("demo-tools: server stopped with an error: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_strict_gate_bound_allows_one_word_less() {
        assert_eq!(
            word_limit("JSON field /words is 412, required < 40"),
            Some(39)
        );
        assert_eq!(word_limit("required < 40"), Some(39));
        assert_eq!(word_limit("required < 40.5"), Some(40));
        assert_eq!(word_limit("required < 0"), Some(0));
    }

    #[test]
    fn an_inclusive_gate_bound_allows_as_many_words() {
        assert_eq!(
            word_limit("JSON field /words is 412, required <= 120"),
            Some(120)
        );
        assert_eq!(word_limit("required ≤ 120"), Some(120));
        assert_eq!(word_limit("required <= 120.7"), Some(120));
    }

    #[test]
    fn the_documented_phrases_state_limits() {
        assert_eq!(word_limit("words 180 > max 120"), Some(120));
        assert_eq!(word_limit("max 120"), Some(120));
        assert_eq!(word_limit("maximum 80 words, please"), Some(80));
        assert_eq!(word_limit("keep it to at most 20 words"), Some(20));
        // The smallest of several.
        assert_eq!(
            word_limit("at most 100 words; JSON field /words is 130, required <= 90"),
            Some(90)
        );
    }

    #[test]
    fn other_numbers_are_not_limits() {
        assert_eq!(word_limit("Table 3 is wrong"), None);
        assert_eq!(word_limit("see table 2; limit 3"), None);
        assert_eq!(
            word_limit("keep the table 2 columns; at most 100 words"),
            Some(100)
        );
        assert_eq!(word_limit("at most 2 columns"), None);
        assert_eq!(word_limit("flip 0.081 > max 0.05"), None);
        // A gate on another field bounds that field, not the words.
        assert_eq!(word_limit("JSON field /attempt is 3, required < 3"), None);
        assert_eq!(
            word_limit(
                "JSON field /attempt is 3, required < 3; JSON field /words is 50, required <= 40"
            ),
            Some(40)
        );
        assert_eq!(word_limit("JSON field /words is 50, required >= 60"), None);
    }

    #[test]
    fn reads_stop_one_byte_past_the_cap() {
        // An endless reader (what /dev/zero is) ends in `None` after cap + 1 bytes.
        assert!(matches!(
            read_at_most(std::io::repeat(b'a'), 1024),
            Ok(None)
        ));
        assert!(matches!(read_at_most(&b"abc"[..], 3), Ok(Some(ref b)) if b == b"abc"));
        assert!(matches!(read_at_most(&b"abcd"[..], 3), Ok(None)));
    }

    #[test]
    fn word_counts_that_overflow_are_refused() {
        let sections = [
            Section {
                name: "a".to_owned(),
                words: u64::MAX,
                top_terms: Vec::new(),
            },
            Section {
                name: "b".to_owned(),
                words: 1,
                top_terms: Vec::new(),
            },
        ];
        let Err(error) = verbose_report("t", &sections) else {
            panic!("a total over u64::MAX was accepted");
        };
        assert!(error.contains("add up to more than"), "{error}");
    }
}
