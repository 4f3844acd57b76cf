//! `tetrarch perms ...`: check a tool call, diff two settings files over a
//! corpus of calls, consolidate a settings file.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use tetrarch::permissions::{
    Decision, PermissionEngine, PermissionError, ToolCall, consolidate::consolidate,
};

use super::outputs::{refuse_overwriting, write_all_or_none};

/// Permission-rule commands.
#[derive(Debug, clap::Subcommand)]
pub enum PermsCommand {
    /// Rewrite a settings file with fewer rules (same decisions unless --widen).
    Consolidate {
        /// The settings.json to read (left untouched).
        settings: PathBuf,
        /// Also merge allow rules sharing a prefix into broader ones, listing each newly allowed family.
        #[arg(long)]
        widen: bool,
        /// Where to write the new settings file [default: SETTINGS with `.consolidated.json`].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where to write the report [default: the new file's name with `.report.md`].
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Print `allow`, `ask` or `deny` for one tool call, and the deciding rule.
    Check {
        /// The settings.json to read.
        settings: PathBuf,
        /// Tool name, e.g. `Bash`, `Read`, `WebFetch`, `mcp__github__create_issue`.
        tool: String,
        /// The command, path or URL; or the tool's whole JSON input object.
        input: String,
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Replay a corpus against two settings files; exit 1 if any decision differs.
    Diff {
        /// The settings file before.
        old: PathBuf,
        /// The settings file after.
        new: PathBuf,
        /// JSON lines, each `{"tool": .., "input": ..}` (input: object or text).
        #[arg(long)]
        corpus: PathBuf,
        #[command(flatten)]
        dirs: Dirs,
    },
}

/// Directories rules are anchored to.
#[derive(Debug, clap::Args)]
pub struct Dirs {
    /// Working directory for relative rules and paths [default: the current directory].
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Home directory for `~/` rules [default: $HOME].
    #[arg(long)]
    home: Option<PathBuf>,
}

impl Dirs {
    fn resolve(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cwd = match &self.cwd {
            Some(c) => c.clone(),
            None => std::env::current_dir().context("cannot read the current directory")?,
        };
        let home = match &self.home {
            Some(h) => h.clone(),
            None => std::env::var_os("HOME")
                .map(PathBuf::from)
                .context("HOME is not set; pass --home")?,
        };
        Ok((cwd, home))
    }
}

fn load(settings: &Path, dirs: &Dirs) -> anyhow::Result<PermissionEngine> {
    let (cwd, home) = dirs.resolve()?;
    let text = super::read_text(settings, "settings")?;
    PermissionEngine::from_settings_json(&text, settings, &cwd, &home)
        .map_err(|e| naming_the_file(e, settings))
}

/// A rule's error says which rule but not which file (the other errors name it): with two
/// settings files (`diff`) that is ambiguous.
fn naming_the_file(error: PermissionError, settings: &Path) -> anyhow::Error {
    match error {
        PermissionError::InvalidRule { .. } => {
            anyhow::Error::new(error).context(format!("settings file {}", settings.display()))
        }
        other => other.into(),
    }
}

fn describe(decision: &Decision) -> String {
    match &decision.rule {
        Some(rule) => format!(
            "{}\t{}[{}] {}",
            decision.verdict, rule.list, rule.index, rule.text
        ),
        None => format!("{}\t(no rule matched)", decision.verdict),
    }
}

/// Runs one `perms` command; the exit code is 1 when `diff` finds a difference.
pub fn run(command: PermsCommand) -> anyhow::Result<ExitCode> {
    match command {
        PermsCommand::Check {
            settings,
            tool,
            input,
            dirs,
        } => {
            let engine = load(&settings, &dirs)?;
            stdout_line!(
                "{}",
                describe(&engine.decide(&call_from_argument(&tool, &input)))
            )?;
            Ok(ExitCode::SUCCESS)
        }
        PermsCommand::Diff {
            old,
            new,
            corpus,
            dirs,
        } => {
            let (old_engine, new_engine) = (load(&old, &dirs)?, load(&new, &dirs)?);
            let file = std::fs::File::open(&corpus)
                .with_context(|| format!("cannot read {}", corpus.display()))?;
            let (mut replayed, mut differ) = (0usize, 0usize);
            for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line.with_context(|| format!("cannot read {}", corpus.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let call = parse_corpus_line(&line).with_context(|| {
                    format!(
                        "{} line {}: expected {{\"tool\": .., \"input\": ..}}",
                        corpus.display(),
                        number + 1
                    )
                })?;
                replayed += 1;
                let (before, after) = (old_engine.decide(&call), new_engine.decide(&call));
                if before.verdict != after.verdict {
                    differ += 1;
                    stdout_line!(
                        "line {}: {} {}\n  old: {}\n  new: {}",
                        number + 1,
                        call.tool,
                        call.input,
                        describe(&before),
                        describe(&after)
                    )?;
                }
            }
            stdout_line!("{replayed} calls replayed, {differ} decisions differ")?;
            Ok(if differ == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PermsCommand::Consolidate {
            settings,
            widen,
            out,
            report,
        } => {
            let out = out.unwrap_or_else(|| settings.with_extension("consolidated.json"));
            let report = report.unwrap_or_else(|| out.with_extension("report.md"));
            refuse_overwriting("--out", &out, &[(&settings, "the settings file")])?;
            refuse_overwriting(
                "--report",
                &report,
                &[
                    (&settings, "the settings file"),
                    (&out, "the new settings file"),
                ],
            )?;
            let text = super::read_text(&settings, "settings")?;
            let result =
                consolidate(&text, &settings, widen).map_err(|e| naming_the_file(e, &settings))?;
            let json = serde_json::to_string_pretty(&result.settings)? + "\n";
            write_all_or_none(&[
                (&out, json.as_bytes()),
                (&report, result.report().as_bytes()),
            ])?;
            stdout_line!(
                "rules: {} -> {}{}\nwrote {} and {}",
                result.rules_before,
                result.rules_after,
                if widen {
                    format!(
                        " ({} {} widened, review the report)",
                        result.widened.len(),
                        if result.widened.len() == 1 {
                            "family"
                        } else {
                            "families"
                        }
                    )
                } else {
                    String::new()
                },
                out.display(),
                report.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// INPUT is the tool's JSON input object when it is one, else its main argument.
fn call_from_argument(tool: &str, input: &str) -> ToolCall {
    match serde_json::from_str(input) {
        Ok(value @ serde_json::Value::Object(_)) => ToolCall {
            tool: tool.to_string(),
            input: value,
        },
        _ => ToolCall::from_text(tool, input),
    }
}

fn parse_corpus_line(line: &str) -> anyhow::Result<ToolCall> {
    let value: serde_json::Value = serde_json::from_str(line)?;
    let tool = value
        .get("tool")
        .and_then(|t| t.as_str())
        .context("missing \"tool\" string")?;
    match value.get("input") {
        Some(serde_json::Value::String(text)) => Ok(ToolCall::from_text(tool, text)),
        Some(input @ serde_json::Value::Object(_)) => Ok(ToolCall {
            tool: tool.to_string(),
            input: input.clone(),
        }),
        _ => anyhow::bail!("missing \"input\" (a string or an object)"),
    }
}
