//! `tetrarch mem ...`: the context store from the command line.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::StoreRef;
use super::terminal_text::printable;
use tetrarch::store::{
    Memory, MemoryId, MemoryType, Namespace, NewMemory, SearchOptions, Store, StoreConfig,
};

/// Memory commands.
#[derive(Debug, Subcommand)]
pub enum MemCommand {
    /// Store a memory and print its id.
    Store(StoreArgs),
    /// Print one memory.
    Get {
        /// The memory's id.
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Search memories, best first.
    Search {
        /// The query text.
        query: String,
        /// Only this namespace.
        #[arg(long)]
        ns: Option<String>,
        /// Only memories with all these tags (comma-separated; compared without case).
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Only memories with none of these tags (comma-separated; e.g. `lesson,context-snapshot`
        /// leaves out the runtime's own records).
        #[arg(long, value_delimiter = ',')]
        exclude_tags: Vec<String>,
        /// Only memories at least this important (1 to 10).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=10), allow_negative_numbers = true)]
        min_importance: Option<u8>,
        /// At most this many results (1 or more).
        #[arg(long, default_value_t = 10, value_parser = positive(), allow_negative_numbers = true)]
        limit: usize,
        #[command(flatten)]
        output: Output,
    },
    /// The most recent memories, newest first.
    Recent {
        /// Only this namespace.
        #[arg(long)]
        ns: Option<String>,
        /// At most this many (1 or more).
        #[arg(long, default_value_t = 20, value_parser = positive(), allow_negative_numbers = true)]
        limit: usize,
        #[command(flatten)]
        output: Output,
    },
    /// Archive a memory: it stays readable by id but leaves search and recent lists.
    Archive {
        /// The memory's id.
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Counts by namespace, type and archived state.
    Stats {
        /// Only this namespace.
        #[arg(long)]
        ns: Option<String>,
        #[command(flatten)]
        output: Output,
    },
}

/// Output format flags.
#[derive(Debug, Args)]
pub struct Output {
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

/// Arguments of `mem store`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Namespace: global, project:NAME or session:PROJECT:ID.
    #[arg(long, default_value = "global")]
    ns: String,
    /// The text to remember.
    #[arg(long)]
    content: String,
    /// A short summary.
    #[arg(long)]
    summary: Option<String>,
    /// Where it came from.
    #[arg(long)]
    context: Option<String>,
    /// 1 (trivia) to 10 (critical).
    #[arg(long, default_value_t = 5, value_parser = importance, allow_negative_numbers = true)]
    importance: u8,
    /// 0.0 to 1.0.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    confidence: f32,
    /// Tags, comma-separated.
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// Keywords, comma-separated.
    #[arg(long, value_delimiter = ',')]
    keywords: Vec<String>,
    /// Memory type (insight, decision, pattern, bug_fix, configuration, preference,
    /// task_output, task_error, reference).
    #[arg(long = "type", default_value = "insight")]
    memory_type: String,
    /// Time to live, such as 10m, 2h or 7days; expired memories disappear.
    #[arg(long, allow_hyphen_values = true)]
    ttl: Option<String>,
    #[command(flatten)]
    output: Output,
}

/// An importance, 1 to 10, said as the store says it (a number past a byte's range was refused
/// as "not in 0..=255").
fn importance(text: &str) -> Result<u8, String> {
    match text.trim().parse::<i64>() {
        Ok(value) => u8::try_from(value)
            .ok()
            .filter(|importance| (1..=10).contains(importance))
            .ok_or_else(|| format!("importance {value} is outside 1..=10")),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// A count of 1 or more: a limit of 0 could only ever print nothing.
pub(crate) fn positive() -> fn(&str) -> Result<usize, String> {
    |text| match text.trim().parse::<usize>() {
        Ok(0) => Err("must be 1 or more".to_owned()),
        Ok(count) => Ok(count),
        Err(_) if text.trim().starts_with('-') => Err("must be 1 or more".to_owned()),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// Whether `text` has a word the search index keeps: the index keeps exactly the words with a
/// letter or digit (UAX #29 words, as `tetrarch::store` analyses them), so text without one can
/// never match or be matched.
fn has_word(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric)
}

/// An optional text given blank is not given: `--summary ""` stores no summary.
fn non_blank(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.trim().is_empty())
}

impl MemCommand {
    /// Whether the command may create the store (`store`); the others need one that exists.
    pub fn creates_store(&self) -> bool {
        matches!(self, MemCommand::Store(_))
    }
}

pub(crate) fn open(store: StoreRef<'_>) -> Result<Store> {
    Ok(store.open(config())?)
}

/// [`open`] for a command that only reads (`search`, `recent`, `stats`; not `get`, which
/// counts an access): see [`super::open_store_to_read`].
pub(crate) fn open_to_read(store: StoreRef<'_>) -> Result<Store> {
    Ok(store.open_to_read(config())?)
}

fn config() -> StoreConfig {
    StoreConfig {
        show_progress: std::io::stderr().is_terminal(),
        ..StoreConfig::default()
    }
}

fn namespace(text: Option<&str>) -> Result<Option<Namespace>> {
    text.map(|t| t.parse::<Namespace>().map_err(anyhow::Error::from))
        .transpose()
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn parse_ttl(text: &str) -> Result<Duration> {
    let ttl = tetrarch::plan::parse_duration(text).with_context(|| {
        format!("invalid --ttl {text:?}: expected a duration such as 10m or 2h")
    })?;
    anyhow::ensure!(
        !ttl.is_zero(),
        "invalid --ttl {text:?}: must be longer than zero"
    );
    Ok(ttl)
}

pub(crate) fn print_json(out: &mut dyn Write, value: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

fn preview(memory: &Memory) -> String {
    let text = memory.summary.as_deref().unwrap_or(&memory.content);
    let line = text.lines().next().unwrap_or_default();
    let mut short: String = line.chars().take(80).collect();
    if short.len() < line.len() || text.lines().nth(1).is_some() {
        short.push('…');
    }
    printable(&short, true).into_owned()
}

fn print_memory(out: &mut dyn Write, m: &Memory) -> Result<()> {
    writeln!(out, "id:          {}", m.id)?;
    writeln!(out, "namespace:   {}", m.namespace)?;
    writeln!(out, "type:        {}", m.memory_type)?;
    writeln!(out, "importance:  {}", m.importance)?;
    writeln!(out, "confidence:  {:.2}", m.confidence)?;
    writeln!(out, "created:     {}", m.created_at)?;
    writeln!(out, "updated:     {}", m.updated_at)?;
    writeln!(
        out,
        "accessed:    {} ({} times)",
        m.last_accessed_at, m.access_count
    )?;
    if let Some(at) = m.expires_at {
        writeln!(out, "expires:     {at}")?;
    }
    if m.archived {
        writeln!(out, "archived:    yes")?;
    }
    if !m.tags.is_empty() {
        writeln!(out, "tags:        {}", printable(&m.tags.join(", "), true))?;
    }
    if !m.keywords.is_empty() {
        writeln!(
            out,
            "keywords:    {}",
            printable(&m.keywords.join(", "), true)
        )?;
    }
    if let Some(s) = &m.summary {
        writeln!(out, "summary:     {}", printable(s, true))?;
    }
    if let Some(c) = &m.context {
        writeln!(out, "context:     {}", printable(c, true))?;
    }
    writeln!(out, "content:\n{}", printable(&m.content, false))?;
    Ok(())
}

/// A comma-separated option's values as meant: `--tags "gpu, cuda"` is `gpu` and `cuda`, empty
/// values (`,,`) are none, and a value given again (in any case, folded as tag filters fold it:
/// `Straße` and `STRASSE` are one) is kept once, as first written, since each copy would weigh
/// in the search's ranking again.
fn list(values: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    values
        .into_iter()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && seen.insert(tetrarch::store::folded_tag(v)))
        .collect()
}

/// Runs one memory command against `store_path`, printing to `out`.
pub(crate) fn run(
    command: MemCommand,
    store_path: StoreRef<'_>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    match command {
        MemCommand::Store(args) => {
            if args.content.trim().is_empty() {
                anyhow::bail!("--content is empty: a memory with no text can never be found");
            }
            let mut new = NewMemory::new(args.ns.parse::<Namespace>()?, args.content);
            new.summary = non_blank(args.summary);
            new.context = non_blank(args.context);
            new.importance = args.importance;
            new.confidence = args.confidence;
            new.tags = list(args.tags);
            new.keywords = list(args.keywords);
            // Every one of these is indexed: a word in any of them finds the memory.
            let findable = [&new.content]
                .into_iter()
                .chain(new.summary.as_ref())
                .chain(new.context.as_ref())
                .chain(&new.tags)
                .chain(&new.keywords)
                .any(|text| has_word(text));
            if !findable {
                anyhow::bail!(
                    "--content {:?} has no word (letters or digits), and neither has \
                     --summary, --context, --tags or --keywords: a memory with no word can never \
                     be found",
                    new.content
                );
            }
            new.memory_type = args.memory_type.parse::<MemoryType>()?;
            new.ttl = args.ttl.as_deref().map(parse_ttl).transpose()?;
            let store = open(store_path)?;
            let id = runtime()?.block_on(store.store(new))?;
            if args.output.json {
                print_json(out, &serde_json::json!({ "id": id }))?;
            } else {
                writeln!(out, "{id}")?;
            }
        }
        MemCommand::Get { id, output } => {
            let id: MemoryId = id.parse()?;
            let store = match store_path.open(config()) {
                Ok(store) => store,
                // A damaged file is refused for writing, and `get` is how an archived memory is
                // read: read it without counting the access.
                Err(refused @ tetrarch::store::StoreError::Corrupt { .. }) => {
                    let store = open_to_read(store_path).map_err(|_| refused)?;
                    stderr_line!(
                        "note: the store is damaged, so it is read without writing: this read \
                         is not counted as an access"
                    );
                    store
                }
                Err(other) => return Err(other.into()),
            };
            let memory = store.get(id)?;
            if output.json {
                print_json(out, &memory)?;
            } else {
                print_memory(out, &memory)?;
            }
        }
        MemCommand::Search {
            query,
            ns,
            tags,
            exclude_tags,
            min_importance,
            limit,
            output,
        } => {
            if !has_word(&query) {
                anyhow::bail!(
                    "the query {query:?} has no word (letters or digits) to search for: it could \
                     never match"
                );
            }
            let options = SearchOptions {
                namespace: namespace(ns.as_deref())?,
                tags: list(tags),
                exclude_tags: list(exclude_tags),
                min_importance,
                limit,
            };
            let store = open_to_read(store_path)?;
            for hit in store.search(&query, &options) {
                if output.json {
                    print_json(out, &hit)?;
                } else {
                    writeln!(
                        out,
                        "{:>8.3}  matched {}  {}  {}  {}",
                        hit.score,
                        hit.matched_terms,
                        hit.memory.id,
                        hit.memory.namespace,
                        preview(&hit.memory)
                    )?;
                }
            }
        }
        MemCommand::Recent { ns, limit, output } => {
            let ns = namespace(ns.as_deref())?;
            let store = open_to_read(store_path)?;
            for memory in store.list_recent(ns.as_ref(), limit) {
                if output.json {
                    print_json(out, &memory)?;
                } else {
                    writeln!(
                        out,
                        "{}  {}  {}  {}",
                        memory.created_at,
                        memory.id,
                        memory.namespace,
                        preview(&memory)
                    )?;
                }
            }
        }
        MemCommand::Archive { id, output } => {
            let id: MemoryId = id.parse()?;
            let store = open(store_path)?;
            runtime()?.block_on(store.archive(id))?;
            if output.json {
                print_json(out, &serde_json::json!({ "id": id, "archived": true }))?;
            } else {
                writeln!(out, "archived {id}")?;
            }
        }
        MemCommand::Stats { ns, output } => {
            let ns = namespace(ns.as_deref())?;
            let store = open_to_read(store_path)?;
            let stats = store.stats(ns.as_ref());
            if output.json {
                print_json(out, &stats)?;
            } else {
                writeln!(
                    out,
                    "live {}  archived {}  bytes {}",
                    stats.live, stats.archived, stats.bytes
                )?;
                if stats.damaged > 0 {
                    writeln!(
                        out,
                        "damaged {} (records that did not decode, set aside as they were in the \
                         file's damaged_memories table)",
                        stats.damaged
                    )?;
                }
                for (t, n) in &stats.by_type {
                    writeln!(out, "  type {t}: {n}")?;
                }
                for (name, s) in &stats.namespaces {
                    writeln!(
                        out,
                        "  {name}: live {}  archived {}  bytes {}",
                        s.live, s.archived, s.bytes
                    )?;
                }
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::list;

    #[test]
    fn a_tag_given_again_in_another_case_or_fold_is_kept_once_as_first_written() {
        let given = ["Straße", " STRASSE", "gpu", "", "GPU", "ΟΔΟΣ", "οδος"];
        let kept = list(given.iter().map(|s| (*s).to_owned()).collect());
        assert_eq!(kept, ["Straße", "gpu", "ΟΔΟΣ"]);
    }
}
