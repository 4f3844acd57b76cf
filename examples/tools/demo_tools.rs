//! `demo-tools`: a small MCP tool server (rmcp's server side, stdio) for the offline
//! "release notes digest" example plan in `examples/digest/`.
//!
//! Tools:
//! - `count_words { path }` → `{ path, words, lines, top_terms }`: `words` counts
//!   whitespace-separated tokens (as `wc -w` does), `lines` counts lines, `top_terms` are the five
//!   most frequent lower-cased alphabetic terms of three letters or more that are not stopwords.
//! - `draft_report { title, sections, feedback, attempt }` → `{ report, words, limit }`: without
//!   feedback, a long Markdown report that walks through every section and every term; when the
//!   feedback names a word limit ("required <= 120", "max 120", "at most 120 words") it writes a
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
//! field.

use std::collections::HashMap;
use std::os::fd::AsFd;
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

/// Phrases in reviewer feedback that state a word limit, followed by the number.
static LIMIT: LazyLock<Option<regex::Regex>> = LazyLock::new(|| {
    regex::Regex::new(r"(?i)(?:<=|≤|<|at most|max(?:imum)?|limit(?: of)?|le)\s*(\d+)").ok()
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
        description = "Count the words and lines of a text file and list its five most frequent terms"
    )]
    fn count_words(&self, Parameters(args): Parameters<CountWordsArgs>) -> CallToolResult {
        match std::fs::read_to_string(&args.path) {
            Ok(text) => CallToolResult::structured(count(&args.path, &text)),
            Err(e) => tool_error(format!("cannot read {:?}: {e}", args.path)),
        }
    }

    #[tool(
        description = "Draft a Markdown digest of the sections; with feedback naming a word limit, stay within it"
    )]
    fn draft_report(&self, Parameters(args): Parameters<DraftReportArgs>) -> CallToolResult {
        let limit = word_limit(&args.feedback);
        let report = match limit {
            Some(limit) => compact_report(&args.title, &args.sections, limit),
            None if args.feedback.trim().is_empty() => verbose_report(&args.title, &args.sections),
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
    fn publish(&self, Parameters(args): Parameters<PublishArgs>) -> CallToolResult {
        let path = Path::new(&args.path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && let Err(e) = std::fs::create_dir_all(parent)
        {
            return tool_error(format!("cannot create folder {:?}: {e}", parent.display()));
        }
        match std::fs::write(path, &args.report) {
            Ok(()) => CallToolResult::structured(json!({
                "path": args.path,
                "bytes": args.report.len(),
            })),
            Err(e) => tool_error(format!("cannot write {:?}: {e}", args.path)),
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

/// The smallest word limit the feedback states, if any.
fn word_limit(feedback: &str) -> Option<usize> {
    LIMIT
        .as_ref()?
        .captures_iter(feedback)
        .filter_map(|c| c.get(1)?.as_str().parse::<usize>().ok())
        .min()
}

fn attempt_number(attempt: Option<&Value>) -> Option<u64> {
    match attempt? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A first draft that says everything it can: every section, every term, in full sentences.
fn verbose_report(title: &str, sections: &[Section]) -> String {
    let total: u64 = sections.iter().map(|s| s.words).sum();
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
    out
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
    let receiver = pipe::Receiver::from_owned_fd(stdin).ok()?;
    let sender = pipe::Sender::from_owned_fd(stdout).ok()?;
    Some((receiver, sender))
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
