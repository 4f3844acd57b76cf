//! `tetrarch plan check`: validate a plan and show its DAG.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use tetrarch::agents::ActorsConfig;
use tetrarch::plan::{Plan, PlanError};

/// Plan commands.
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Validate a plan; print its levels and critical path, or every error with its line.
    Check {
        /// The plan file (TOML).
        file: PathBuf,
        /// Actor configuration folder whose pools the plan may name, as `run --actors` reads
        /// it (default: the built-in configuration).
        #[arg(long)]
        actors: Option<PathBuf>,
        /// More pools the plan may name, comma-separated: pools an embedding program adds
        /// (their kind unknown, so their calls' args are not checked).
        #[arg(long, value_delimiter = ',')]
        pools: Option<Vec<String>>,
        /// Print a JSON report instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a plan command: exit 0 when the plan is valid, 2 when it is not.
pub fn run(cmd: PlanCommand) -> Result<ExitCode> {
    match cmd {
        PlanCommand::Check {
            file,
            actors,
            pools,
            json,
        } => check(&file, actors.as_deref(), pools, json),
    }
}

fn check(
    file: &std::path::Path,
    actors: Option<&std::path::Path>,
    pools: Option<Vec<String>>,
    as_json: bool,
) -> Result<ExitCode> {
    let text = super::read_text(file, "plan")?;
    let source = file.display().to_string();
    let (config, configured) = match actors {
        Some(dir) => (
            ActorsConfig::load(dir)?,
            format!("the pools of {}", dir.display()),
        ),
        None => (
            ActorsConfig::embedded()?,
            "the built-in actors' pools".to_owned(),
        ),
    };
    let extra = pools.iter().flatten().filter(|n| !n.is_empty());
    let catalog = extra.fold(super::run::configured_pools(&config), |c, n| {
        c.with_open_pool(n.clone())
    });
    let result = Plan::from_toml_with_catalog(&text, &source, &catalog);
    let scope = format!(
        "checked against the plan's pools{}; tool names of mcp and native pools are checked \
         when a run starts them",
        if pools.is_some() {
            format!(", {configured} and --pools")
        } else {
            format!(" and {configured}")
        }
    );
    match result {
        Ok(plan) => {
            // The permission file the plan names is read and parsed as `run` would.
            if let Some(path) = &plan.permissions {
                let base = file
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                if let Err(e) = super::run::load_permissions(&base.join(path), base) {
                    // Named at the plan's `permissions =` line, as the plan's other errors are.
                    let line = text.lines().position(|l| {
                        let l = l.trim_start();
                        l.strip_prefix("permissions")
                            .is_some_and(|rest| rest.trim_start().starts_with('='))
                    });
                    let message = super::error_text(&e);
                    if as_json {
                        let errors = [match line {
                            Some(i) => json!({ "line": i + 1, "column": 1, "message": message }),
                            None => json!({ "message": message }),
                        }];
                        let report = json!({ "ok": false, "source": source, "errors": errors });
                        stdout_line!("{report}")?;
                    } else {
                        let at = line.map_or(String::new(), |i| format!(":{}:1", i + 1));
                        stderr_line!("{source}{at}: {message} — plan rejected");
                    }
                    return Ok(ExitCode::from(2));
                }
            }
            print_plan(&plan, &scope, as_json)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            print_errors(&err, as_json)?;
            Ok(ExitCode::from(2))
        }
    }
}

fn print_plan(plan: &Plan, scope: &str, as_json: bool) -> std::io::Result<()> {
    let dag = plan.dag();
    let levels = dag.levels();
    let (path, length) = dag.critical_path();
    if as_json {
        let report = json!({
            "ok": true,
            "plan": plan.name,
            "tasks": plan.tasks.len(),
            "checked": scope,
            "levels": levels.iter().map(|l| l.iter().map(|t| t.as_str()).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "critical_path": {
                "tasks": path.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                "seconds": length.as_secs_f64(),
            },
        });
        return stdout_line!("{report}");
    }
    stdout_line!(
        "plan {:?}: {} tasks, {} levels ({scope})",
        plan.name,
        plan.tasks.len(),
        levels.len()
    )?;
    for (n, level) in levels.iter().enumerate() {
        let ids: Vec<&str> = level.iter().map(|t| t.as_str()).collect();
        stdout_line!("level {n}: {}", ids.join(", "))?;
    }
    let ids: Vec<&str> = path.iter().map(|t| t.as_str()).collect();
    stdout_line!(
        "critical path: {} ({})",
        ids.join(" -> "),
        humantime::format_duration(length)
    )
}

fn print_errors(err: &PlanError, as_json: bool) -> std::io::Result<()> {
    if as_json {
        let errors: Vec<_> = err
            .diagnostics
            .iter()
            .map(|d| {
                json!({
                    "line": d.location.line,
                    "column": d.location.column,
                    "message": d.message,
                })
            })
            .collect();
        let report = json!({ "ok": false, "source": err.source_name, "errors": errors });
        return stdout_line!("{report}");
    }
    // A diagnostic quotes the plan (a name or value holding an escape sequence).
    for line in err.lines() {
        stderr_line!("{}", super::terminal_text::printable(&line, false));
    }
    let n = err.diagnostics.len();
    stderr_line!(
        "{}: {n} error{} — plan rejected",
        err.source_name,
        if n == 1 { "" } else { "s" }
    );
    Ok(())
}
