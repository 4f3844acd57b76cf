//! `tetrarch cache ...`: what the persisted context cache holds, and clearing it.
//!
//! The persisted categories (technique patterns, compiled kernels, results of `cacheable` tools)
//! never expire on their own, so this is how a user bounds them, or drops results that went stale
//! because a tool's own files changed (the cache key covers the call and the pool, not the files
//! a tool reads).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use tetrarch::store::{CacheCategory, CacheClearFilter, Timestamp};

use super::StoreRef;
use super::mem::{open, open_to_read, print_json, runtime};

/// Cache commands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Entries, bytes and age of the persisted cache, per category.
    Stats {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove persisted entries (all of them, or those of one category and/or older than a
    /// duration); each is computed again the next time it is asked for.
    Clear {
        /// Only this category: technique, compiled_kernel or tool_result.
        #[arg(long)]
        category: Option<String>,
        /// Only entries stored longer ago than this, such as 7days or 12h.
        #[arg(long, allow_hyphen_values = true)]
        older_than: Option<String>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

impl CacheCommand {
    /// Whether the command removes entries (`clear`), which a run serving the store refuses.
    pub(crate) fn clears(&self) -> bool {
        matches!(self, CacheCommand::Clear { .. })
    }
}

fn parse_category(text: &str) -> Result<CacheCategory> {
    let category: CacheCategory = text.parse()?;
    anyhow::ensure!(
        category.is_persisted(),
        "invalid --category {text:?}: {text} entries live only in a running process's memory, \
         never in the store (the persisted ones are technique, compiled_kernel and tool_result)"
    );
    Ok(category)
}

fn stored_before(older_than: &str, now: Timestamp) -> Result<Timestamp> {
    let age = tetrarch::plan::parse_duration(older_than).with_context(|| {
        format!("invalid --older-than {older_than:?}: expected a duration such as 7days or 12h")
    })?;
    let millis = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    Ok(Timestamp::from_millis(
        now.as_millis().saturating_sub(millis),
    ))
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Runs one cache command against `store_path`, printing to `out`.
pub(crate) fn run(
    command: CacheCommand,
    store_path: StoreRef<'_>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    match command {
        CacheCommand::Stats { json } => {
            let usage = open_to_read(store_path)?.persisted_cache_usage()?;
            let entries: u64 = usage.iter().map(|u| u.entries).sum();
            let bytes: u64 = usage.iter().map(|u| u.bytes).sum();
            if json {
                let summary = serde_json::json!({
                    "entries": entries,
                    "bytes": bytes,
                    "categories": usage,
                });
                print_json(out, &summary)?;
            } else {
                writeln!(out, "persisted cache: {entries} entries, {}", size(bytes))?;
                for u in &usage {
                    let name = u.category.map_or("does not decode", CacheCategory::as_str);
                    write!(out, "  {name}: {} entries, {}", u.entries, size(u.bytes))?;
                    if let (Some(oldest), Some(newest)) = (u.oldest, u.newest) {
                        write!(out, ", stored {oldest} to {newest}")?;
                    }
                    writeln!(out)?;
                }
            }
        }
        CacheCommand::Clear {
            category,
            older_than,
            json,
        } => {
            let filter = CacheClearFilter {
                category: category.as_deref().map(parse_category).transpose()?,
                stored_before: older_than
                    .as_deref()
                    .map(|text| stored_before(text, Timestamp::now()))
                    .transpose()?,
            };
            let store = open(store_path)?;
            let cleared = runtime()?.block_on(store.clear_persisted_cache(filter))?;
            if json {
                print_json(out, &cleared)?;
            } else {
                writeln!(
                    out,
                    "removed {} {} ({})",
                    cleared.entries,
                    if cleared.entries == 1 {
                        "entry"
                    } else {
                        "entries"
                    },
                    size(cleared.bytes)
                )?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
