//! Plans: the TOML format, its validation, `{{ }}` templates, gates and DAG analysis — the
//! pure-logic layer the Orchestrator, Executor and Reviewer share.
//!
//! # Format
//!
//! ```toml
//! name = "poster"
//!
//! [defaults]
//! timeout = "2m"        # humantime: "30s", "5m", "1h 30m"
//! retries = 1           # re-runs after an *error* (crash, timeout), same inputs
//! max_attempts = 1      # attempts allowed by *gates* (a failed gate re-runs with feedback)
//!
//! [[task]]
//! id = "render-day"
//! tool = "blender.render"
//! args = { scene = "poster.blend", light = "day", out = "out/{{run.id}}/day.png" }
//! outputs = ["path", "frames"]
//! estimate = "40s"
//! cacheable = true
//!
//! [[task]]
//! id = "render-dusk"
//! tool = "blender.render"
//! args = { scene = "poster.blend", light = "dusk", out = "out/{{run.id}}/dusk.png" }
//! outputs = ["path", "frames"]
//! estimate = "45s"
//! cacheable = true
//!
//! [[task]]
//! id = "render-night"
//! tool = "blender.render"
//! args = { scene = "poster.blend", light = "night", out = "out/{{run.id}}/night.png" }
//! outputs = ["path", "frames"]
//! estimate = "50s"
//! cacheable = true
//!
//! [[task]]
//! id = "compose"
//! tool = "shell.magick"
//! deps = ["render-day", "render-dusk", "render-night"]
//! args = { inputs = ["{{tasks.render-day.output.path}}", "{{tasks.render-dusk.output.path}}",
//!                    "{{tasks.render-night.output.path}}"],
//!          out = "out/{{run.id}}/poster.png",
//!          # Empty on the first attempt; the Reviewer's reasons on later ones.
//!          notes = "attempt {{attempt}}: {{feedback}}" }
//! outputs = ["path"]
//! max_attempts = 3
//! gates = [
//!   { exit = 0 },
//!   { file_exists = "{{tasks.compose.output.path}}" },
//!   { score = "flip", reference = "refs/poster.png", max = 0.05 },
//! ]
//!
//! [[task]]
//! id = "publish"
//! tool = "cdn.upload"
//! deps = ["compose"]
//! args = { file = "{{tasks.compose.output.path}}", bucket = "posters" }
//! outputs = ["url", "version"]
//! timeout = "30s"
//! retries = 3
//! gates = [{ json = "/status", eq = "ok" }]
//! # Run in reverse dependency order if the run is rolled back after this task succeeded.
//! compensate = { tool = "cdn.delete", args = { version = "{{tasks.publish.output.version}}" } }
//! ```
//!
//! - `name` (required) and `[[task]]` tables (at least one). Unknown keys are errors.
//! - `[pools.NAME]` (optional): pools for the plan's own tools, in the format of
//!   [`crate::session::def`] (relative paths are resolved against the plan's folder). A plan's
//!   pool replaces a configured pool of the same name.
//! - `permissions = "FILE"` (optional): a Claude Code settings file whose `permissions` every
//!   `process` and `mcp` call of the run is checked against (see [`crate::permissions`]).
//! - `id`: ASCII letters, digits, `_`, `-` (no `.`, which separates template parts); unique.
//! - `tool = "POOL.TOOL"`: split at the *first* `.`; the pool name is letters, digits, `_`, `-`,
//!   and the tool name is the rest (it may contain further dots, e.g. `mcp.fs.read_file`).
//! - `args`: any TOML value (usually a table); its strings are templates. Default `{}`.
//! - `deps`: ids of tasks that must finish first.
//! - `timeout`, `estimate`: humantime durations, more than zero. `timeout` falls back to
//!   `[defaults]`; `estimate` is only a scheduling hint.
//! - `retries` (default 0): extra runs after an *error* — the tool crashed, timed out, or the
//!   pool failed — with the same inputs. `max_attempts` (default 1, at least 1): total
//!   attempts when *gates fail*; each new attempt sees `{{attempt}}` and the Reviewer's
//!   `{{feedback}}`. The two budgets are separate.
//! - `gates`: see [`gate`] for the shapes.
//! - `compensate = { tool = "POOL.TOOL", args = ... }`: the call that undoes the task.
//! - `cacheable` (default false): the result may be reused for identical rendered args to the same
//!   pool, tool and pool command, folder and variables (a pool of the same name declared elsewhere
//!   runs something else, so its results are kept apart).
//! - `fixes = [{ when = "REGEX", args = { ... }, env = { ... } }]`: automatic fixes, each tried
//!   once when the task fails for good with a matching reason (see [`Fix`]).
//! - `outputs`: the fields of the task's (JSON object) output. When declared, references to
//!   other fields are errors, and an output that lacks one of them fails the task's review like
//!   a failed gate (another attempt, with the missing fields as feedback); when absent, any
//!   field is accepted.
//! - `context_files = ["docs/a.md", ...]`: project files the Optimizer adds to the task's
//!   `{{context}}` (so the args, or a fix's args or env, must use it), relative to the plan's
//!   folder. A file that is
//!   missing or unreadable when the task runs is a warning, not a failure.
//!
//! # Templates
//!
//! `{{tasks.ID.output}}`, `{{tasks.ID.output.FIELD[.SUB...]}}`, `{{attempt}}`, `{{feedback}}`,
//! `{{run.id}}`, `{{plan.name}}`, and in `args` only `{{context}}` (the Optimizer's context for the
//! task) — anything else is an error. In `args`, `ID` must be an
//! upstream task (a direct or indirect dep); gates and `compensate` run after the task, so they
//! may also name the task itself. See [`template::render`] for how values are substituted.
//!
//! # Validation
//!
//! [`Plan::from_toml`] rejects a plan before anything runs. Syntax and shape errors (not TOML, a
//! missing `id`, a wrong type, an unknown key) stop parsing and are reported alone; all semantic
//! errors are collected: empty/bad/duplicate ids, unknown deps, self-deps, cycles (named by their
//! path, `cycle: a -> b -> a`, each task depending on the next; one per group of tasks that
//! depend on each other, counting the group's other cycles, with a path of over 24 tasks cut in
//! the middle), bad durations, zero `max_attempts`, bad gates (including regexes that do not
//! compile and references in expected values), template references to unknown or non-upstream
//! tasks or undeclared fields, and, with a [`ToolCatalog`], unknown pools and tools. Each error
//! has the line and column of the value at fault, `plan.toml:14:9: task "render" depends on
//! unknown task "rendr"`. Args that a `process` or `mcp` pool would refuse are errors too, for the
//! plan's own pools and for pools whose kind the catalogue knows ([`Plan::check_calls`]).
//!
//! # DAG
//!
//! [`Plan::dag`] gives levels, ready sets, the critical path, transitive dependents and the
//! compensation order; see [`Dag`].

pub mod catalog;
pub mod dag;
mod duration;
pub mod gate;
mod print;
pub mod template;
mod validate;

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::session::{PoolDef, PoolKind};

pub use catalog::{StaticCatalog, ToolCatalog};
pub use dag::Dag;
pub use duration::{DurationError, parse_duration};
pub use gate::{Gate, GateResult, JsonOp, ScoreBound, ScoreMetric, ToolOutcome};
pub use template::{TemplateContext, TemplateError, render};

/// A task's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

impl TaskId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TaskId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Wraps the text as is (no validation: ids inside a [`Plan`] were validated when it was parsed).
impl From<&str> for TaskId {
    fn from(id: &str) -> Self {
        TaskId(id.to_owned())
    }
}

/// A 1-based line and column (in characters) in the plan's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1, counted in characters.
    pub column: usize,
}

impl Location {
    /// The location of a byte offset in `text` (clamped to the text).
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// One problem found in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where.
    pub location: Location,
    /// What is wrong, naming the task and the thing.
    pub message: String,
}

/// A plan that could not be accepted: every problem, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.lines().join("\n"))]
pub struct PlanError {
    /// The name the text was read from (a file path), used as the prefix of each line.
    pub source_name: String,
    /// The problems, sorted by location.
    pub diagnostics: Vec<Diagnostic>,
}

impl PlanError {
    /// One `SOURCE:LINE:COLUMN: MESSAGE` line per problem.
    pub fn lines(&self) -> Vec<String> {
        self.diagnostics
            .iter()
            .map(|d| {
                format!(
                    "{}:{}:{}: {}",
                    self.source_name, d.location.line, d.location.column, d.message
                )
            })
            .collect()
    }
}

/// A pool and a tool in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ToolRef {
    /// The session pool.
    pub pool: String,
    /// The tool's name within the pool.
    pub tool: String,
}

impl ToolRef {
    /// Parses `POOL.TOOL` (split at the first `.`).
    pub fn parse(text: &str) -> Result<ToolRef, String> {
        let Some((pool, tool)) = text.split_once('.') else {
            return Err(format!("{text:?} is not POOL.TOOL (no `.`)"));
        };
        if !crate::session::def::is_pool_name(pool) {
            return Err(format!(
                "pool name {pool:?} in {text:?}: {}",
                crate::session::def::POOL_NAME_RULE
            ));
        }
        if tool.is_empty() || tool.chars().any(char::is_whitespace) {
            return Err(format!(
                "tool name {tool:?} in {text:?} must be non-empty without spaces"
            ));
        }
        Ok(ToolRef {
            pool: pool.to_owned(),
            tool: tool.to_owned(),
        })
    }
}

impl fmt::Display for ToolRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.pool, self.tool)
    }
}

/// A tool call that is not a task (a compensation).
#[derive(Debug, Clone)]
pub struct ToolCall {
    /// What to call.
    pub tool: ToolRef,
    /// Its arguments (templates).
    pub args: Value,
    /// Where `tool` is written.
    pub tool_location: Location,
}

/// A fix a plan declares for a task: when the task fails for good with an error (or gate
/// feedback) matching `when`, the runtime runs it once more with `args` merged over the task's
/// args and `env` added to the call's environment (`process` tools), and records whether it
/// worked as a lesson.
#[derive(Debug, Clone)]
pub struct Fix {
    /// Matched against the failure's reason.
    pub when: regex::Regex,
    /// Top-level args replaced or added.
    pub args: serde_json::Map<String, Value>,
    /// Environment variables added (`args.env` of a process call).
    pub env: BTreeMap<String, String>,
}

impl Fix {
    /// The fix in words, as lessons record it.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.args.is_empty() {
            parts.push(format!("set args {}", Value::Object(self.args.clone())));
        }
        if !self.env.is_empty() {
            let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.push(format!("set env {}", env.join(" ")));
        }
        parts.join("; ")
    }

    /// `args` with the fix applied.
    pub fn apply(&self, args: &Value) -> Value {
        let mut fixed = match args {
            Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        for (key, value) in &self.args {
            fixed.insert(key.clone(), value.clone());
        }
        if !self.env.is_empty() {
            let env = fixed
                .entry("env")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Value::Object(env) = env {
                for (key, value) in &self.env {
                    env.insert(key.clone(), Value::String(value.clone()));
                }
            }
        }
        Value::Object(fixed)
    }
}

/// Plan-wide defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Timeout for tasks that give none.
    pub timeout: Option<Duration>,
    /// Retries after errors for tasks that give none.
    pub retries: u32,
    /// Gate attempts for tasks that give none.
    pub max_attempts: u32,
}

/// One task, with defaults applied.
#[derive(Debug, Clone)]
pub struct Task {
    /// Unique id.
    pub id: TaskId,
    /// The tool to call.
    pub tool: ToolRef,
    /// Arguments: a JSON tree whose strings are templates.
    pub args: Value,
    /// Direct dependencies.
    pub deps: Vec<TaskId>,
    /// Time limit per run (task's, else the default's).
    pub timeout: Option<Duration>,
    /// Expected duration, for the critical path.
    pub estimate: Option<Duration>,
    /// Extra runs after errors.
    pub retries: u32,
    /// Total attempts allowed when gates fail.
    pub max_attempts: u32,
    /// The Reviewer's checks.
    pub gates: Vec<Gate>,
    /// The call that undoes this task.
    pub compensate: Option<ToolCall>,
    /// Fixes the runtime may apply once each when the task fails with a matching error.
    pub fixes: Vec<Fix>,
    /// Whether results may be reused.
    pub cacheable: bool,
    /// Declared output fields, if declared.
    pub outputs: Option<Vec<String>>,
    /// Project files sent to the task through `{{context}}` (category project), as written:
    /// relative paths resolve against the plan's folder.
    pub context_files: Vec<std::path::PathBuf>,
    /// Where the task's `id` is written.
    pub location: Location,
    /// Where the task's `tool` is written.
    pub tool_location: Location,
}

/// The keys a `process` call reads from its args.
const PROCESS_ARG_KEYS: [&str; 3] = ["argv", "stdin", "env"];

impl Task {
    /// What a pool of `kind` would refuse in one of this task's calls before running anything:
    /// [`Task::process_args_problems`] for a `process` pool; for an `mcp` pool, args that are not
    /// a table of the tool's arguments (a whole-string template may render to one); for a
    /// `scorer` pool, what the scorer refuses (an unknown key, a missing image path).
    pub fn args_problems(&self, kind: crate::session::PoolKind, compensate: bool) -> Vec<String> {
        let mut problems = self.call_problems(kind, compensate);
        if !compensate && kind != crate::session::PoolKind::Process {
            problems.extend(self.fix_env_problems(kind));
        }
        problems
    }

    /// A fix's `env` is merged into a process call's environment; any other kind of call has
    /// none (it was sent to an MCP tool as an argument, and refused by the scorer).
    fn fix_env_problems(&self, kind: crate::session::PoolKind) -> Vec<String> {
        self.fixes
            .iter()
            .enumerate()
            .filter(|(_, fix)| !fix.env.is_empty())
            .map(|(i, _)| {
                format!(
                    "task {:?} fixes[{i}] env: only a process call has an environment (this \
                     task's pool is {}); set what the tool reads in the fix's args",
                    self.id.as_str(),
                    kind.as_str()
                )
            })
            .collect()
    }

    fn call_problems(&self, kind: crate::session::PoolKind, compensate: bool) -> Vec<String> {
        match kind {
            crate::session::PoolKind::Process => self.process_args_problems(compensate),
            crate::session::PoolKind::Mcp => {
                let Some((what, args)) = self.call_args(compensate) else {
                    return Vec::new();
                };
                match args {
                    Value::Object(_) | Value::Null => Vec::new(),
                    // Only a whole-string reference can render to a table.
                    Value::String(text) if template::may_render_typed(text) => Vec::new(),
                    other => vec![format!(
                        "task {:?} {what} args: an MCP tool's arguments are a table, not {other}",
                        self.id.as_str()
                    )],
                }
            }
            crate::session::PoolKind::Scorer => {
                let Some((what, args)) = self.call_args(compensate) else {
                    return Vec::new();
                };
                let tool = match (&self.compensate, compensate) {
                    (Some(call), true) => &call.tool.tool,
                    _ => &self.tool.tool,
                };
                let own = crate::session::scorer::plan_args_problem(tool, args)
                    .map(|p| format!("task {:?} {what} args: {p}", self.id.as_str()));
                // A fix's args replace the call's: the scorer must take those too.
                let fixes = self.fixes.iter().enumerate().filter(|_| !compensate);
                let fixes = fixes.filter_map(|(i, fix)| {
                    crate::session::scorer::plan_args_problem(tool, &fix.apply(args))
                        .map(|p| format!("task {:?} fixes[{i}] args: {p}", self.id.as_str()))
                });
                own.into_iter().chain(fixes).collect()
            }
            crate::session::PoolKind::Native => Vec::new(),
        }
    }

    /// The args of the task's own call, or of its compensation (`None` when it has none), with
    /// which of the two it is.
    fn call_args(&self, compensate: bool) -> Option<(&'static str, &Value)> {
        match (&self.compensate, compensate) {
            (Some(call), true) => Some(("compensate", &call.args)),
            (None, true) => None,
            (_, false) => Some(("tool", &self.args)),
        }
    }

    /// What a `process` pool would refuse in one of this task's calls before running anything
    /// (`compensate`: its compensation, else its `tool` call and the args of its fixes): args
    /// that are not a table, or a key the call does not read (`arg`, a fix's `argvv`), a typo
    /// that would run the pool's command without what was meant. Each message names the task.
    pub fn process_args_problems(&self, compensate: bool) -> Vec<String> {
        let id = self.id.as_str();
        let Some((what, args)) = self.call_args(compensate) else {
            return Vec::new();
        };
        let own = match args {
            Value::Object(map) => unknown_process_key(map.keys().map(String::as_str))
                .or_else(|| process_arg_type_problem(map)),
            other => Some(format!(
                "a process call's args are a table of {}, not {other}",
                PROCESS_ARG_KEYS.join(", ")
            )),
        };
        let own = own.map(|p| format!("task {id:?} {what} args: {p}"));
        // A fix is applied to the task's own call only.
        let fixes = self.fixes.iter().enumerate().filter(|_| !compensate);
        let fixes = fixes.filter_map(|(i, fix)| {
            let args = unknown_process_key(fix.args.keys().map(String::as_str))
                .or_else(|| process_arg_type_problem(&fix.args))
                .map(|p| format!("task {id:?} fixes[{i}] args: {p}"));
            let env = || {
                fix.env.iter().find_map(|(name, value)| {
                    crate::session::process::variable_name_problem(name)
                        .map(|p| format!("task {id:?} fixes[{i}] env names {name:?}: {p}"))
                        .or_else(|| {
                            value.contains('\0').then(|| {
                                format!(
                                    "task {id:?} fixes[{i}] env {name:?}: its value {}",
                                    crate::session::process::NUL_IN_VALUE
                                )
                            })
                        })
                })
            };
            args.or_else(env)
        });
        own.into_iter().chain(fixes).collect()
    }

    /// What the task's fixes cannot be applied to: a fix's `args` are merged over the task's
    /// args, and its `env` into their `env`, as the plan writes them (before templates are
    /// filled), so those must be tables there, not a template that renders to one.
    pub(crate) fn fix_target_problems(&self) -> Vec<String> {
        let id = self.id.as_str();
        let args_table = matches!(self.args, Value::Object(_) | Value::Null);
        let env_table = match &self.args {
            Value::Object(map) => matches!(map.get("env"), None | Some(Value::Object(_))),
            _ => true,
        };
        let mut problems = Vec::new();
        for (i, fix) in self.fixes.iter().enumerate() {
            let changes_args = !fix.args.is_empty() || !fix.env.is_empty();
            if !args_table && changes_args {
                problems.push(format!(
                    "task {id:?} fixes[{i}]: a fix is merged over the task's args, which are {} here, not a table",
                    self.args
                ));
            } else if !env_table && !fix.env.is_empty() && !fix.args.contains_key("env") {
                problems.push(format!(
                    "task {id:?} fixes[{i}] env: a fix's variables are added to the task's `env`, which is not a table here (a template is filled in only at the call)"
                ));
            }
        }
        problems
    }
}

/// A process call's `argv` or `env` written as a value the call refuses: `argv` must be a list
/// of strings (numbers and booleans are written out), `env` a table of variables. A string
/// that is one whole reference may render to either, so it is left to the call; any other
/// string renders to a string.
fn process_arg_type_problem(args: &serde_json::Map<String, Value>) -> Option<String> {
    use crate::session::{SessionError, process};
    // The call's own checks, on the values written as they are.
    let templated =
        |value: &Value| matches!(value, Value::String(s) if template::may_render_typed(s));
    let literal: serde_json::Map<String, Value> = ["argv", "env"]
        .into_iter()
        .filter_map(|key| {
            let value = args.get(key).filter(|v| !templated(v))?;
            Some((key.to_owned(), value.clone()))
        })
        .collect();
    let literal = Value::Object(literal);
    let refused = process::extra_argv("", &literal)
        .err()
        .or_else(|| process::call_env("", &literal).err())?;
    Some(match refused {
        SessionError::InvalidArguments { detail, .. } => detail,
        other => other.to_string(),
    })
}

/// The first key a `process` call would ignore, named with the keys it reads.
fn unknown_process_key<'a>(mut keys: impl Iterator<Item = &'a str>) -> Option<String> {
    keys.find(|key| !PROCESS_ARG_KEYS.contains(key)).map(|key| {
        format!(
            "unknown key `{key}` for a process call (expected {})",
            PROCESS_ARG_KEYS.join(", ")
        )
    })
}

/// A validated plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The plan's name.
    pub name: String,
    /// Where it was read from.
    pub source_name: String,
    /// The defaults, already applied to each task.
    pub defaults: Defaults,
    /// The tasks in file order (read-only in spirit: the graph was built from them). Shared,
    /// so a run holds them without copying a large plan's arguments.
    pub tasks: Vec<std::sync::Arc<Task>>,
    /// Pools the plan declares for its own tools (`[pools.NAME]`, see
    /// [`crate::session::PoolDef`]); they add to the Executor's configured pools.
    pub pools: BTreeMap<String, PoolDef>,
    /// A Claude Code `settings.json` whose `permissions` govern the plan's tool calls
    /// (`permissions = "settings.json"`, relative to the plan's folder).
    pub permissions: Option<std::path::PathBuf>,
    /// Built from `tasks` when the plan was validated.
    dag: Dag,
}

impl Plan {
    /// Parses and validates a plan without a tool catalogue (pools and tools are not checked).
    /// `source_name` prefixes error locations.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Plan, PlanError> {
        validate::parse(text, source_name, None)
    }

    /// Parses and validates a plan, also checking every pool and tool against `catalog`.
    pub fn from_toml_with_catalog(
        text: &str,
        source_name: &str,
        catalog: &dyn ToolCatalog,
    ) -> Result<Plan, PlanError> {
        validate::parse(text, source_name, Some(catalog))
    }

    /// The task with this id.
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks
            .iter()
            .find(|t| t.id.as_str() == id)
            .map(AsRef::as_ref)
    }

    /// The dependency graph (built at validation).
    pub fn dag(&self) -> &Dag {
        &self.dag
    }

    /// What `catalog` says is wrong with the plan's calls (each task's and its compensation's),
    /// found without starting a pool: pools that are neither the plan's own nor in the
    /// catalogue, tools the catalogue knows a pool lacks, and args that a pool of known kind
    /// (the plan's own, or the catalogue's [`ToolCatalog::pool_kind`]) would refuse
    /// ([`Task::args_problems`]). Each error is at the call's `tool`.
    /// [`Plan::from_toml_with_catalog`] reports these with the plan's other errors.
    pub fn check_calls(&self, catalog: &dyn ToolCatalog) -> Vec<Diagnostic> {
        call_problems(self.tasks.iter().map(|t| &**t), &self.pools, Some(catalog))
    }
}

/// Why a native pool has no tools: the binary registers none.
pub(crate) const NO_NATIVE_TOOLS: &str = "it is a native pool, and no native tools are \
     registered: they are Rust functions a library caller registers (RuntimeOptions::natives)";

/// See [`Plan::check_calls`]; without a catalogue only the args of calls to the plan's own
/// pools are checked.
pub(crate) fn call_problems<'a>(
    tasks: impl IntoIterator<Item = &'a Task>,
    own_pools: &BTreeMap<String, PoolDef>,
    catalog: Option<&dyn ToolCatalog>,
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut score_gated = None;
    for task in tasks {
        if score_gated.is_none() && task.gates.iter().any(|g| matches!(g, Gate::Score { .. })) {
            score_gated = Some(task);
        }
        let compensation = task
            .compensate
            .as_ref()
            .map(|c| (&c.tool, c.tool_location, "compensate.tool", true));
        let calls = std::iter::once((&task.tool, task.tool_location, "tool", false));
        for (tool, location, what, compensate) in calls.chain(compensation) {
            if tool.pool.is_empty() {
                continue; // already reported as malformed
            }
            let own = own_pools.get(&tool.pool);
            if own.is_none()
                && let Some(catalog) = catalog
            {
                let message = if !catalog.has_pool(&tool.pool) {
                    Some(format!(
                        "task {:?} {what}: unknown pool {:?}",
                        task.id.as_str(),
                        tool.pool
                    ))
                } else if catalog.has_tool(&tool.pool, &tool.tool) == Some(false) {
                    let native = catalog.pool_kind(&tool.pool) == Some(PoolKind::Native);
                    let known = match catalog.tools(&tool.pool) {
                        Some(tools) if tools.is_empty() && native => {
                            format!(" ({NO_NATIVE_TOOLS})")
                        }
                        Some(tools) if tools.is_empty() => " (it has none)".to_owned(),
                        Some(tools) => format!(" (its tools: {})", tools.join(", ")),
                        None => String::new(),
                    };
                    Some(format!(
                        "task {:?} {what}: pool {:?} has no tool {:?}{known}",
                        task.id.as_str(),
                        tool.pool,
                        tool.tool
                    ))
                } else {
                    None
                };
                if let Some(message) = message {
                    diagnostics.push(Diagnostic { location, message });
                    continue;
                }
            }
            // A scorer's tools are its metrics, whoever declares the pool.
            if own.is_some_and(|def| def.kind == PoolKind::Scorer)
                && !crate::session::scorer::SCORER_TOOLS.contains(&tool.tool.as_str())
            {
                diagnostics.push(Diagnostic {
                    location,
                    message: format!(
                        "task {:?} {what}: pool {:?} has no tool {:?} (its tools: {})",
                        task.id.as_str(),
                        tool.pool,
                        tool.tool,
                        crate::session::scorer::SCORER_TOOLS.join(", ")
                    ),
                });
                continue;
            }
            let kind = own
                .map(|def| def.kind)
                .or_else(|| catalog.and_then(|c| c.pool_kind(&tool.pool)));
            if let Some(kind) = kind {
                diagnostics.extend(
                    task.args_problems(kind, compensate)
                        .into_iter()
                        .map(|message| Diagnostic { location, message }),
                );
            }
            if !compensate {
                diagnostics.extend(
                    task.fix_target_problems()
                        .into_iter()
                        .map(|message| Diagnostic { location, message }),
                );
            }
        }
    }
    if let Some(task) = score_gated
        && let Some(catalog) = catalog
        && let Some(problem) = score_pool_problem(own_pools, catalog)
    {
        diagnostics.push(Diagnostic {
            location: task.tool_location,
            message: format!(
                "task {:?} has a score gate, but the score pool {:?} (the Reviewer's \
                 `score_pool`, reviewer.toml) cannot run it: {problem}",
                task.id.as_str(),
                catalog.score_pool().unwrap_or_default()
            ),
        });
    }
    diagnostics
}

/// Why the catalogue's score pool cannot run score gates, if it cannot: it must be a scorer
/// (a plan declaring a `process` pool by that name would run any command, unchecked by the
/// permission rules, and report any score it likes). A pool of unknown kind (`plan check
/// --pools`) is given the benefit of the doubt.
fn score_pool_problem(
    own_pools: &BTreeMap<String, PoolDef>,
    catalog: &dyn ToolCatalog,
) -> Option<&'static str> {
    let score_pool = catalog.score_pool()?;
    let kind = match own_pools.get(score_pool) {
        Some(def) => Some(def.kind),
        None if catalog.has_pool(score_pool) => catalog.pool_kind(score_pool),
        None => return Some("no such pool is configured"),
    };
    match kind {
        None | Some(PoolKind::Scorer) => None,
        Some(_) => Some("it is not a scorer pool"),
    }
}
