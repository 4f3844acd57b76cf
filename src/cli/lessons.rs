//! `tetrarch lessons ...`: error→fix learning from the command line.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use tetrarch::lessons::{DEFAULT_THRESHOLD, Failure, Lessons};
use tetrarch::store::{Namespace, StoreConfig};

use super::StoreRef;
use super::terminal_text::printable;

/// Lesson commands.
#[derive(Debug, Subcommand)]
pub enum LessonsCommand {
    /// Record a failure and the fix that was tried.
    Record {
        /// The kind of error, such as compile_error or timeout.
        #[arg(long = "type")]
        error_type: String,
        /// The error message as printed.
        #[arg(long)]
        message: String,
        /// What was running.
        #[arg(long, default_value = "")]
        context: String,
        /// The fix that was applied.
        #[arg(long)]
        fix: Option<String>,
        /// Whether the fix worked.
        #[arg(long)]
        worked: Option<bool>,
        /// Namespace of the lessons.
        #[arg(long, default_value = "global")]
        ns: String,
    },
    /// The most recent lessons.
    List {
        /// Namespace of the lessons.
        #[arg(long, default_value = "global")]
        ns: String,
        /// At most this many (1 or more).
        #[arg(long, default_value_t = 20, value_parser = super::mem::positive(), allow_negative_numbers = true)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The most successful known fix for the most similar past error (exit 1 when none).
    Suggest {
        /// The error message.
        message: String,
        /// Namespace of the lessons.
        #[arg(long, default_value = "global")]
        ns: String,
        /// Least similarity (0-1) to suggest anything.
        #[arg(long, default_value_t = DEFAULT_THRESHOLD, allow_negative_numbers = true)]
        threshold: f64,
        /// Print the suggestion as one JSON object (`null` when there is none).
        #[arg(long)]
        json: bool,
    },
}

impl LessonsCommand {
    /// Whether the command may create the store (`record`); the others need one that exists.
    pub fn creates_store(&self) -> bool {
        matches!(self, LessonsCommand::Record { .. })
    }
}

/// The lessons of `ns`; `reading`: for a command that only reads (the file is not written).
fn open(store: StoreRef<'_>, ns: &str, reading: bool) -> Result<Lessons> {
    let namespace: Namespace = ns.parse()?;
    let store = if reading {
        store.open_to_read(StoreConfig::default())?
    } else {
        store.open(StoreConfig::default())?
    };
    Ok(Lessons::new(store, namespace))
}

/// Runs one lessons command against `store_path`, printing to `out`.
pub(crate) fn run(
    command: LessonsCommand,
    store_path: StoreRef<'_>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    match command {
        LessonsCommand::Record {
            error_type,
            message,
            context,
            fix,
            worked,
            ns,
        } => {
            let lessons = open(store_path, &ns, false)?;
            let failure = Failure {
                error_type,
                message,
                context,
                fix,
                worked,
            };
            let id = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(lessons.record(failure))?;
            writeln!(out, "{id}")?;
        }
        LessonsCommand::List { ns, limit, json } => {
            for lesson in open(store_path, &ns, true)?.list(limit) {
                if json {
                    serde_json::to_writer(&mut *out, &lesson)?;
                    writeln!(out)?;
                } else {
                    let f = &lesson.failure;
                    let outcome = match f.worked {
                        Some(true) => "worked",
                        Some(false) => "failed",
                        None => "unknown",
                    };
                    writeln!(
                        out,
                        "{}  [{}] {}  fix: {} ({outcome})",
                        lesson.id,
                        printable(&f.error_type, true),
                        printable(&lesson.normalised, true),
                        printable(f.fix.as_deref().unwrap_or("-"), true)
                    )?;
                }
            }
        }
        LessonsCommand::Suggest {
            message,
            ns,
            threshold,
            json,
        } => {
            anyhow::ensure!(
                !message.trim().is_empty(),
                "the error message is empty: give the message to find a fix for"
            );
            anyhow::ensure!(
                (0.0..=1.0).contains(&threshold),
                "--threshold {threshold} is outside 0..=1"
            );
            let suggestion = open(store_path, &ns, true)?
                .with_threshold(threshold)
                .suggest_fix(&message);
            match (suggestion, json) {
                (Some(s), true) => {
                    serde_json::to_writer(&mut *out, &s)?;
                    writeln!(out)?;
                }
                (Some(s), false) => writeln!(
                    out,
                    "{}\n  similarity {:.2}, worked {:.0}% of {} tries (like lesson {})",
                    printable(&s.fix, false),
                    s.similarity,
                    s.success_rate * 100.0,
                    s.attempts,
                    s.example
                )?,
                // Nothing found exits 1 in both forms, so scripts can test the status alone.
                (None, json) => {
                    if json {
                        writeln!(out, "null")?;
                    } else {
                        writeln!(out, "no known fix for a similar error")?;
                    }
                    out.flush()?;
                    return Ok(ExitCode::from(1));
                }
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
