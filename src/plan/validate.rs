//! Turning TOML text into a validated [`Plan`]: every problem is collected with its line and
//! column, not just the first.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::catalog::ToolCatalog;
use super::dag::Dag;
use super::gate::{Gate, toml_to_json};
use super::template::{
    Reference, Segment, failing_opening, find_open, holds_brace_escape, parse_template,
    references_in, references_in_spans,
};
use super::{
    Defaults, Diagnostic, Fix, Location, Plan, PlanError, Task, TaskId, ToolCall, ToolRef,
};
use crate::session::PoolDef;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a plan table")]
struct RawPlan {
    name: Spanned<String>,
    defaults: Option<RawDefaults>,
    #[serde(default)]
    task: Vec<Spanned<RawTask>>,
    #[serde(default)]
    pools: BTreeMap<String, Spanned<PoolDef>>,
    permissions: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of task defaults")]
struct RawDefaults {
    timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    max_attempts: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a task table ([[task]] with id and tool)"
)]
struct RawTask {
    id: Spanned<String>,
    tool: Spanned<String>,
    args: Option<Spanned<toml::Value>>,
    #[serde(default)]
    deps: Vec<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    estimate: Option<Spanned<String>>,
    retries: Option<u32>,
    max_attempts: Option<Spanned<u32>>,
    #[serde(default)]
    gates: Vec<Spanned<toml::Table>>,
    compensate: Option<Spanned<RawCall>>,
    #[serde(default)]
    fixes: Vec<Spanned<RawFix>>,
    #[serde(default)]
    cacheable: bool,
    outputs: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    context_files: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { when = \"error text\", args = { … } }"
)]
struct RawFix {
    when: Spanned<String>,
    args: Option<Spanned<toml::Value>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { tool = \"POOL.TOOL\", args = { … } }"
)]
struct RawCall {
    tool: Spanned<String>,
    args: Option<Spanned<toml::Value>>,
}

/// One string of a task that is rendered as a template, for scope checks after the graph is
/// known.
struct TemplateSite {
    task: usize,
    /// Path of the string for messages (`args.input`, `gates[1].reference`).
    path: String,
    text: String,
    /// The source range of the string's own value, searched for each reference's column; its
    /// start is the fallback location.
    span: std::ops::Range<usize>,
    /// Whether the task's own output may be referenced (gates and compensation run after it).
    self_allowed: bool,
}

/// The task a template belongs to, and whether it may name the task's own output.
#[derive(Clone, Copy)]
struct Owner {
    task: usize,
    self_allowed: bool,
}

/// A value of the parsed document, kept for the source range of each nested value: the
/// deserialized plan has spans only where it asks for them (a `[task.args]` table's span is
/// its header, not the key holding the error).
type Node<'a, 'i> = Option<&'a Spanned<DeValue<'i>>>;

fn child<'a, 'i>(node: Node<'a, 'i>, key: &str) -> Node<'a, 'i> {
    match node?.get_ref() {
        DeValue::Table(table) => table.get(key),
        _ => None,
    }
}

fn item<'a, 'i>(node: Node<'a, 'i>, index: usize) -> Node<'a, 'i> {
    match node?.get_ref() {
        DeValue::Array(items) => items.get(index),
        _ => None,
    }
}

/// Adds a site for every string of `value` holding `{{`, located by the matching value of
/// `node` (the nearest enclosing range, `fallback`, where the document has none).
fn add_sites(
    sites: &mut Vec<TemplateSite>,
    owner: Owner,
    value: &Value,
    node: Node<'_, '_>,
    path: String,
    fallback: &std::ops::Range<usize>,
) {
    let span = node.map_or_else(|| fallback.clone(), Spanned::span);
    match value {
        Value::String(text) if text.contains("{{") => sites.push(TemplateSite {
            task: owner.task,
            path,
            text: text.clone(),
            span,
            self_allowed: owner.self_allowed,
        }),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                add_sites(
                    sites,
                    owner,
                    v,
                    item(node, i),
                    format!("{path}[{i}]"),
                    &span,
                );
            }
        }
        Value::Object(map) => {
            for (key, v) in map {
                add_sites(
                    sites,
                    owner,
                    v,
                    child(node, key),
                    format!("{path}.{key}"),
                    &span,
                );
            }
        }
        _ => {}
    }
}

/// The source range of the string at `path` (`eq[0]`, `eq.k`, as
/// [`super::template::walk_strings`] names them) in the table `node`: for a gate's strings,
/// which are taken from the parsed gate rather than from the TOML.
fn string_span(node: Node<'_, '_>, path: &str) -> Option<std::ops::Range<usize>> {
    fn walk(node: &Spanned<DeValue<'_>>, at: String, want: &str) -> Option<std::ops::Range<usize>> {
        if !want.starts_with(at.as_str()) {
            return None;
        }
        match node.get_ref() {
            DeValue::String(_) => (at == want).then(|| node.span()),
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v, format!("{at}[{i}]"), want)),
            DeValue::Table(table) => table
                .iter()
                .find_map(|(k, v)| walk(v, format!("{at}.{}", k.get_ref()), want)),
            _ => None,
        }
    }
    match node?.get_ref() {
        DeValue::Table(table) => table
            .iter()
            .find_map(|(k, v)| walk(v, k.get_ref().to_string(), path)),
        _ => None,
    }
}

struct Collector<'a> {
    text: &'a str,
    /// Byte offset of each line's start, so locations cost a binary search, not a scan of the
    /// text (a plan of thousands of tasks records two locations per task).
    line_starts: Vec<usize>,
    diagnostics: Vec<Diagnostic>,
}

impl Collector<'_> {
    fn at(&self, offset: usize) -> Location {
        let line = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .max(1);
        let start = self.line_starts[line - 1];
        let column_text = self.text.get(start..offset.min(self.text.len()));
        Location {
            line,
            column: column_text.map_or(1, |t| t.chars().count() + 1),
        }
    }

    fn push(&mut self, offset: usize, message: String) {
        let location = self.at(offset);
        self.diagnostics.push(Diagnostic { location, message });
    }

    fn duration(&mut self, value: &Spanned<String>, what: &str) -> Option<Duration> {
        match super::parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.push(value.span().start, format!("{what} must be more than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.push(
                    value.span().start,
                    format!(
                        "{what} {:?} is not a duration like \"30s\" or \"5m\": {e}",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn attempts(&mut self, value: &Spanned<u32>, what: &str) -> u32 {
        if *value.get_ref() == 0 {
            self.push(value.span().start, format!("{what} must be at least 1"));
            1
        } else {
            *value.get_ref()
        }
    }

    fn json(&mut self, value: &Spanned<toml::Value>, what: &str) -> Value {
        toml_to_json(value.get_ref()).unwrap_or_else(|e| {
            self.push(value.span().start, format!("{what}: {e}"));
            Value::Null
        })
    }

    fn tool(&mut self, value: &Spanned<String>, what: &str) -> ToolRef {
        ToolRef::parse(value.get_ref()).unwrap_or_else(|e| {
            self.push(value.span().start, format!("{what}: {e}"));
            ToolRef {
                pool: String::new(),
                tool: String::new(),
            }
        })
    }
}

fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("task id is empty".to_owned());
    }
    let bad: String = id
        .chars()
        .filter(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "task id {id:?} has characters other than ASCII letters, digits, `_` and `-`: {bad:?}"
        )
    })
}

pub(super) fn parse(
    text: &str,
    source_name: &str,
    catalog: Option<&dyn ToolCatalog>,
) -> Result<Plan, PlanError> {
    let error = |diagnostics: Vec<Diagnostic>| PlanError {
        source_name: source_name.to_owned(),
        diagnostics,
    };
    let raw: RawPlan = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        error(vec![Diagnostic {
            location: Location::of_offset(text, offset),
            message: e.message().trim_end().to_owned(),
        }])
    })?;
    // The same text as a document keeps the range of every nested value, so each template
    // error points at its own string (the text parsed above, so this does not fail; without it
    // errors fall back to the enclosing table).
    let document = DeTable::parse(text).ok();
    let task_nodes = document.as_ref().and_then(|doc| doc.get_ref().get("task"));
    let line_starts = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let mut c = Collector {
        text,
        line_starts,
        diagnostics: Vec::new(),
    };

    if raw.name.get_ref().trim().is_empty() {
        c.push(raw.name.span().start, "plan name is empty".to_owned());
    }
    let mut defaults = Defaults {
        timeout: None,
        retries: 0,
        max_attempts: 1,
    };
    if let Some(d) = &raw.defaults {
        defaults.timeout = d
            .timeout
            .as_ref()
            .and_then(|t| c.duration(t, "defaults.timeout"));
        defaults.retries = d.retries.unwrap_or(0);
        if let Some(m) = &d.max_attempts {
            defaults.max_attempts = c.attempts(m, "defaults.max_attempts");
        }
    }
    if raw.task.is_empty() {
        c.push(0, "plan has no tasks (add [[task]] tables)".to_owned());
    }
    // The plan's own pools, checked as a run would start them (nothing is started here).
    for (name, def) in &raw.pools {
        let at = def.span().start;
        if name.is_empty() || name.contains('.') {
            c.push(
                at,
                format!("pool {name:?}: a pool's name must be non-empty and without `.` (tools are POOL.TOOL)"),
            );
        } else if let Err(e) = def.get_ref().check(name) {
            let detail = match e {
                crate::session::SessionError::InvalidConfig { detail } => detail,
                other => other.to_string(),
            };
            c.push(at, detail);
        }
    }

    // Ids first, so deps and templates can be checked against them.
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    for (i, task) in raw.task.iter().enumerate() {
        let id = task.get_ref().id.get_ref().as_str();
        let offset = task.get_ref().id.span().start;
        if let Some(problem) = id_problem(id) {
            c.push(offset, problem);
        }
        if let Some(&first) = first_seen.get(id) {
            let line = c.at(raw.task[first].get_ref().id.span().start).line;
            c.push(
                offset,
                format!("duplicate task id {id:?} (first defined on line {line})"),
            );
        } else {
            first_seen.insert(id, i);
        }
    }

    let mut tasks = Vec::with_capacity(raw.task.len());
    let mut edges: Vec<Vec<(usize, usize)>> = vec![Vec::new(); raw.task.len()];
    let mut sites = Vec::new();
    for (i, spanned) in raw.task.iter().enumerate() {
        let t = spanned.get_ref();
        let node = item(task_nodes, i);
        let in_args = Owner {
            task: i,
            self_allowed: false,
        };
        let after_run = Owner {
            task: i,
            self_allowed: true,
        };
        let id = t.id.get_ref().clone();
        let tool = c.tool(&t.tool, &format!("task {id:?} tool"));
        let mut deps = Vec::with_capacity(t.deps.len());
        let mut seen_deps = HashSet::new();
        for dep in &t.deps {
            let name = dep.get_ref();
            let offset = dep.span().start;
            if *name == id {
                c.push(offset, format!("task {id:?} depends on itself"));
            } else if !seen_deps.insert(name.as_str()) {
                c.push(
                    offset,
                    format!("task {id:?} lists dependency {name:?} twice"),
                );
            } else if let Some(&target) = first_seen.get(name.as_str()) {
                edges[i].push((target, offset));
                deps.push(TaskId(name.clone()));
            } else {
                c.push(
                    offset,
                    format!("task {id:?} depends on unknown task {name:?}"),
                );
            }
        }
        let timeout = t
            .timeout
            .as_ref()
            .and_then(|v| c.duration(v, &format!("task {id:?} timeout")))
            .or(defaults.timeout);
        let estimate = t
            .estimate
            .as_ref()
            .and_then(|v| c.duration(v, &format!("task {id:?} estimate")));
        let max_attempts = t.max_attempts.as_ref().map_or(defaults.max_attempts, |m| {
            c.attempts(m, &format!("task {id:?} max_attempts"))
        });
        let args = t
            .args
            .as_ref()
            .map_or(Value::Object(serde_json::Map::new()), |a| {
                c.json(a, &format!("task {id:?} args"))
            });
        if let Some(a) = &t.args {
            let path = "args".to_owned();
            add_sites(
                &mut sites,
                in_args,
                &args,
                child(node, "args"),
                path,
                &a.span(),
            );
        }
        let mut gates = Vec::with_capacity(t.gates.len());
        for (g, gate) in t.gates.iter().enumerate() {
            let gate_node = item(child(node, "gates"), g);
            let at = |path: &str| string_span(gate_node, path).unwrap_or_else(|| gate.span());
            match Gate::from_table(gate.get_ref(), &id) {
                Ok(parsed) => {
                    // An expected text is compared as written: a reference in it would never be
                    // filled in, so the gate could never pass as meant (`{{.Names}}` and other
                    // text that is not a reference stays literal).
                    for (path, text) in parsed.literal_texts() {
                        // Each `{{ ... }}` on its own: one that is not a reference does not
                        // hide one that is.
                        let reference = references_in_spans(text).into_iter().next();
                        if let Some(reference) = reference {
                            let span = at(&path);
                            let name = reference.to_string();
                            let offset =
                                locate_reference(c.text, &span, &name).unwrap_or(span.start);
                            c.push(
                                offset,
                                format!(
                                    "task {id:?} gates[{g}].{path}: {{{{{name}}}}} is not filled in: \
                                     a gate's expected text is compared as written (only file_exists, \
                                     reference and test are templates); to look for the text \
                                     itself, use `matches` with the braces escaped (`\\{{\\{{`)"
                                ),
                            );
                        } else if holds_brace_escape(text) {
                            // Compared as written, the escape itself would be looked for.
                            c.push(
                                at(&path).start,
                                format!(
                                    "task {id:?} gates[{g}].{path}: `{{{{ \"{{{{\" }}}}` \
                                     escapes braces in templates, but a gate's expected text is \
                                     compared as written: write `{{{{` itself, or use `matches` \
                                     with the braces escaped (`\\{{\\{{`)"
                                ),
                            );
                        }
                    }
                    for (key, template) in parsed.templates() {
                        // A score gate's `test` left out is the default: say so, or the message
                        // names a key the plan does not hold.
                        let default_test = key == "test"
                            && matches!(parsed, Gate::Score { .. })
                            && !gate.get_ref().contains_key("test");
                        let label = if default_test {
                            "test (the default `test`)"
                        } else {
                            key
                        };
                        sites.push(TemplateSite {
                            task: i,
                            path: format!("gates[{g}].{label}"),
                            text: template.to_owned(),
                            span: at(key),
                            self_allowed: true,
                        });
                    }
                    gates.push(parsed);
                }
                Err(e) => c.push(gate.span().start, format!("task {id:?} gates[{g}]: {e}")),
            }
        }
        let compensate = t.compensate.as_ref().map(|comp| {
            let call = comp.get_ref();
            let tool = c.tool(&call.tool, &format!("task {id:?} compensate.tool"));
            let args = call
                .args
                .as_ref()
                .map_or(Value::Object(serde_json::Map::new()), |a| {
                    c.json(a, &format!("task {id:?} compensate.args"))
                });
            let args_node = child(child(node, "compensate"), "args");
            let fallback = call
                .args
                .as_ref()
                .map_or_else(|| comp.span(), Spanned::span);
            let path = "compensate.args".to_owned();
            add_sites(&mut sites, after_run, &args, args_node, path, &fallback);
            ToolCall {
                tool,
                args,
                tool_location: c.at(call.tool.span().start),
            }
        });
        let mut fixes = Vec::with_capacity(t.fixes.len());
        for (f, fix) in t.fixes.iter().enumerate() {
            let raw = fix.get_ref();
            let when = match regex::Regex::new(raw.when.get_ref()) {
                Ok(regex) => Some(regex),
                Err(e) => {
                    c.push(
                        raw.when.span().start,
                        format!("task {id:?} fixes[{f}].when is not a valid regex: {e}"),
                    );
                    None
                }
            };
            let args = match raw
                .args
                .as_ref()
                .map(|a| c.json(a, &format!("task {id:?} fixes[{f}].args")))
            {
                None => serde_json::Map::new(),
                Some(Value::Object(map)) => map,
                Some(_) => {
                    c.push(
                        fix.span().start,
                        format!("task {id:?} fixes[{f}].args must be a table"),
                    );
                    serde_json::Map::new()
                }
            };
            if args.is_empty() && raw.env.is_empty() {
                c.push(
                    fix.span().start,
                    format!("task {id:?} fixes[{f}] changes nothing (give `args` or `env`)"),
                );
            }
            // A fix's args and variables are rendered like the task's own when it is applied
            // (`Fix::apply` merges `env` into the args' `env`, so both are checked, less the
            // variables `env` replaces).
            let fix_node = item(child(node, "fixes"), f);
            let mut checked = args.clone();
            if let Some(Value::Object(vars)) = checked.get_mut("env") {
                vars.retain(|name, _| !raw.env.contains_key(name));
            }
            add_sites(
                &mut sites,
                in_args,
                &Value::Object(checked),
                child(fix_node, "args"),
                format!("fixes[{f}].args"),
                &raw.args.as_ref().map_or_else(|| fix.span(), Spanned::span),
            );
            let env = raw.env.iter();
            let env = env.map(|(k, v)| (k.clone(), Value::String(v.clone())));
            add_sites(
                &mut sites,
                in_args,
                &Value::Object(env.collect()),
                child(fix_node, "env"),
                format!("fixes[{f}].env"),
                &fix.span(),
            );
            if let Some(when) = when {
                fixes.push(Fix {
                    when,
                    args,
                    env: raw.env.clone(),
                });
            }
        }
        let outputs = t.outputs.as_ref().map(|fields| {
            let mut names: Vec<String> = Vec::with_capacity(fields.len());
            for field in fields {
                let name = field.get_ref();
                if name.is_empty() || name.contains('.') || name.contains("{{") {
                    c.push(
                        field.span().start,
                        format!(
                            "task {id:?} output field {name:?} must be a non-empty name without `.`"
                        ),
                    );
                } else if names.contains(name) {
                    c.push(
                        field.span().start,
                        format!("task {id:?} declares output {name:?} twice"),
                    );
                } else {
                    names.push(name.clone());
                }
            }
            names
        });
        let context_files = context_files(&mut c, &id, &t.context_files, &args, &fixes);
        tasks.push(Task {
            id: TaskId(id),
            tool,
            args,
            deps,
            timeout,
            estimate,
            retries: t.retries.unwrap_or(defaults.retries),
            max_attempts,
            gates,
            compensate,
            fixes,
            cacheable: t.cacheable,
            outputs,
            context_files,
            location: c.at(t.id.span().start),
            tool_location: c.at(t.tool.span().start),
        });
    }

    let mut cycles = find_cycles(&edges);
    cycles.sort_by_key(|cycle| cycle.offset);
    for cycle in cycles {
        c.push(cycle.offset, cycle_message(&cycle, &tasks));
    }

    // Reachability per reference (see `Upstream`): a set of ancestors per task made validating
    // a 10,000-task chain quadratic (seconds).
    let mut upstream = Upstream::new(&edges);
    for site in &sites {
        check_templates(&mut c, site, &tasks, &first_seen, &mut upstream);
    }

    let pools: BTreeMap<String, PoolDef> = raw
        .pools
        .into_iter()
        .map(|(name, def)| (name, def.into_inner()))
        .collect();
    c.diagnostics
        .extend(super::call_problems(&tasks, &pools, catalog));

    if !c.diagnostics.is_empty() {
        let mut diagnostics = c.diagnostics;
        diagnostics.sort_by_key(|d| (d.location.line, d.location.column));
        return Err(error(diagnostics));
    }
    Ok(Plan {
        name: raw.name.into_inner(),
        source_name: source_name.to_owned(),
        defaults,
        dag: Dag::new(&tasks),
        tasks: tasks.into_iter().map(std::sync::Arc::new).collect(),
        pools,
        permissions: raw.permissions.map(std::path::PathBuf::from),
    })
}

/// A task's `context_files`: non-empty, plain (no templates), each named once, and only on a
/// task whose args, or a fix's args or env, read `{{context}}` (the files are sent nowhere
/// else). Whether a file exists
/// is not checked here: it may be written by an upstream task, and a missing one is a warning
/// at run time.
fn context_files(
    c: &mut Collector<'_>,
    id: &str,
    files: &[Spanned<String>],
    args: &Value,
    fixes: &[Fix],
) -> Vec<std::path::PathBuf> {
    let Some(first) = files.first() else {
        return Vec::new();
    };
    let reads = |value: &Value| {
        references_in(value, "args")
            .iter()
            .any(|(_, _, refs)| refs.as_ref().is_ok_and(|r| r.contains(&Reference::Context)))
    };
    let reads_context = reads(args)
        || fixes.iter().any(|fix| {
            reads(&Value::Object(fix.args.clone()))
                || fix.env.values().any(|v| reads(&Value::String(v.clone())))
        });
    if !reads_context {
        c.push(
            first.span().start,
            format!(
                "task {id:?} context_files are sent through {{{{context}}}}, which its args do not use"
            ),
        );
    }
    let mut paths: Vec<std::path::PathBuf> = Vec::with_capacity(files.len());
    // Compared without `.` parts: `./style.md` is `style.md`, and would be sent and charged twice.
    let mut seen: Vec<std::path::PathBuf> = Vec::with_capacity(files.len());
    for file in files {
        let name = file.get_ref();
        let path = std::path::PathBuf::from(name);
        let same: std::path::PathBuf = path
            .components()
            .filter(|part| *part != std::path::Component::CurDir)
            .collect();
        if name.trim().is_empty() {
            c.push(
                file.span().start,
                format!("task {id:?} context_files has an empty path"),
            );
        } else if name.contains("{{") {
            c.push(
                file.span().start,
                format!("task {id:?} context_files entry {name:?} is a path, not a template"),
            );
        } else if seen.contains(&same) {
            c.push(
                file.span().start,
                format!("task {id:?} context_files names {name:?} twice"),
            );
        } else {
            seen.push(same);
            paths.push(path);
        }
    }
    paths
}

fn check_templates(
    c: &mut Collector<'_>,
    site: &TemplateSite,
    tasks: &[Task],
    ids: &HashMap<&str, usize>,
    upstream: &mut Upstream<'_>,
) {
    let owner = tasks[site.task].id.as_str();
    let path = &site.path;
    // Each reference at its own `{{` in the string's source (the string's start when escapes
    // make the source differ from the text).
    let text = c.text;
    let at = |name: &str| locate_reference(text, &site.span, name).unwrap_or(site.span.start);
    let refs = match parse_template(&site.text) {
        Ok(segments) => segments.into_iter().filter_map(|s| match s {
            Segment::Ref(r) => Some(r),
            Segment::Text(_) => None,
        }),
        Err(e) => {
            // At the `{{` the parse failed at, found in the source by its place among the
            // openings (escapes in the source do not make braces).
            let window = text.get(site.span.clone()).unwrap_or("");
            let mut opening = window.len();
            let mut from = 0;
            for _ in 0..=failing_opening(&site.text).unwrap_or(0) {
                let Some(at) = find_open(&window[from..]) else {
                    break;
                };
                opening = from + at;
                // Past its `}}`, as the parser goes (the escape `{{ "{{" }}` holds a `{{`).
                let inside = opening + 2;
                from = window[inside..]
                    .find("}}")
                    .map_or(window.len(), |close| inside + close + 2);
            }
            let offset = if opening < window.len() {
                site.span.start + opening
            } else {
                site.span.start
            };
            c.push(offset, format!("task {owner:?} {path}: {e}"));
            return;
        }
    };
    for reference in refs {
        let name = reference.to_string();
        if reference == Reference::Context && site.self_allowed {
            c.push(
                at(&name),
                format!(
                    "task {owner:?} {path}: {{{{context}}}} is only available in a task's args"
                ),
            );
            continue;
        }
        let Reference::TaskOutput { task, path: field } = &reference else {
            continue;
        };
        let problem = match ids.get(task.as_str()) {
            None => format!("refers to unknown task {task:?}"),
            Some(&target) if target == site.task && !site.self_allowed => {
                "refers to the task's own output, which does not exist before it runs".to_owned()
            }
            Some(&target) if target != site.task && !upstream.is(site.task, target) => {
                format!(
                    "refers to task {task:?}, which is not upstream of {owner:?} (add it to deps)"
                )
            }
            Some(&target) => match (&tasks[target].outputs, field.first()) {
                (Some(declared), Some(first)) if !declared.contains(first) => format!(
                    "refers to output field {first:?}, which task {task:?} does not declare (outputs: {})",
                    declared.join(", ")
                ),
                _ => continue,
            },
        };
        c.push(
            at(&name),
            format!("task {owner:?} {path}: {{{{{name}}}}} {problem}"),
        );
    }
}

/// The offset of the first `{{ ... }}` inside `span` of the source that names `reference`
/// (spaces inside the braces ignored), so each of several references in one string gets its
/// own column. `None` when it is not there as written (escapes in the source).
fn locate_reference(text: &str, span: &std::ops::Range<usize>, reference: &str) -> Option<usize> {
    let window = text.get(span.clone())?;
    let mut from = 0;
    while let Some(open) = find_open(&window[from..]) {
        let start = from + open + 2;
        let end = start + window[start..].find("}}")?;
        let inner = window[start..end].chars().filter(|c| !c.is_whitespace());
        if inner.eq(reference.chars()) {
            return Some(span.start + start - 2);
        }
        from = start;
    }
    None
}

/// Answers "does `task` depend on `target`, directly or not" for the template checks. A search
/// per reference made a plan whose 20k chained tasks each name the first one's output take 15 s
/// to check (a search through the whole chain per task): the tasks below a target are found
/// once and kept, for the first [`Upstream::KEPT`] targets named past a direct dependency.
struct Upstream<'a> {
    edges: &'a [Vec<(usize, usize)>],
    /// Each task's dependents (the edges reversed), built at the first indirect reference.
    dependents: Vec<Vec<usize>>,
    /// For a target: which tasks are below it.
    below: HashMap<usize, Vec<bool>>,
}

impl<'a> Upstream<'a> {
    /// Targets whose dependents are kept (each costs a flag per task).
    const KEPT: usize = 64;

    fn new(edges: &'a [Vec<(usize, usize)>]) -> Self {
        Self {
            edges,
            dependents: Vec::new(),
            below: HashMap::new(),
        }
    }

    fn is(&mut self, task: usize, target: usize) -> bool {
        if self.edges[task].iter().any(|&(dep, _)| dep == target) {
            return true;
        }
        if let Some(below) = self.below.get(&target) {
            return below[task];
        }
        if self.below.len() >= Self::KEPT {
            return self.search(task, target);
        }
        if self.dependents.is_empty() {
            self.dependents = vec![Vec::new(); self.edges.len()];
            for (t, deps) in self.edges.iter().enumerate() {
                for &(dep, _) in deps {
                    self.dependents[dep].push(t);
                }
            }
        }
        let mut below = vec![false; self.edges.len()];
        let mut queue = VecDeque::from([target]);
        while let Some(t) = queue.pop_front() {
            for &d in &self.dependents[t] {
                if !below[d] {
                    below[d] = true;
                    queue.push_back(d);
                }
            }
        }
        let answer = below[task];
        self.below.insert(target, below);
        answer
    }

    /// Breadth-first from `task`, so a near dependency is found in a few steps.
    fn search(&self, task: usize, target: usize) -> bool {
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([task]);
        while let Some(t) = queue.pop_front() {
            for &(dep, _) in &self.edges[t] {
                if dep == target {
                    return true;
                }
                if dep != task && seen.insert(dep) {
                    queue.push_back(dep);
                }
            }
        }
        false
    }
}

/// A cycle to report: the path `a -> b -> ... -> a` (each task depends on the next), the offset
/// of the dependency entry that closes it, how many other dependencies close cycles among the
/// tasks that depend on each other with it (its strongly connected component), and those of
/// the component's tasks that are not on the path (`others`).
struct Cycle {
    path: Vec<usize>,
    offset: usize,
    more: usize,
    others: Vec<usize>,
}

/// Tasks printed in full in a cycle's path; a longer path shows its ends.
const CYCLE_SHOWN: usize = 24;
/// Tasks shown at each end of a longer path.
const CYCLE_ENDS: usize = 10;

/// One line per cycle: a plan of thousands of tasks may have as many cycles through each task,
/// and a path as long as the plan, so the path is cut in the middle and the other cycles of
/// the same tasks are counted, not listed.
fn cycle_message(cycle: &Cycle, tasks: &[Task]) -> String {
    let name = |&i: &usize| tasks[i].id.as_str();
    let path: Vec<&str> = cycle.path.iter().map(name).collect();
    let mut text = if path.len() <= CYCLE_SHOWN + 1 {
        path.join(" -> ")
    } else {
        format!(
            "{} -> … ({} tasks) … -> {}",
            path[..CYCLE_ENDS].join(" -> "),
            path.len() - 2 * CYCLE_ENDS,
            path[path.len() - CYCLE_ENDS..].join(" -> ")
        )
    };
    if cycle.more > 0 {
        let on_path = cycle.path.len().saturating_sub(1);
        text.push_str(&format!(
            " (and at least {} more among the same {} tasks",
            cycle.more,
            on_path + cycle.others.len()
        ));
        // The other cycles may run through tasks the path misses: name them.
        if !cycle.others.is_empty() {
            let named: Vec<&str> = cycle.others.iter().take(CYCLE_ENDS).map(name).collect();
            text.push_str(&format!(", which also include {}", named.join(", ")));
            if cycle.others.len() > CYCLE_ENDS {
                text.push_str(&format!(" and {} others", cycle.others.len() - CYCLE_ENDS));
            }
        }
        text.push(')');
    }
    format!("cycle: {text}")
}

/// The strongly connected component of each task (Tarjan's algorithm, iterative so a long
/// chain cannot overflow the stack): the tasks that depend on each other, directly or not.
fn components(edges: &[Vec<(usize, usize)>]) -> Vec<usize> {
    const NONE: usize = usize::MAX;
    let n = edges.len();
    let mut index = vec![NONE; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut component = vec![NONE; n];
    let (mut next_index, mut next_component) = (0, 0);
    for root in 0..n {
        if index[root] != NONE {
            continue;
        }
        index[root] = next_index;
        low[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(&mut (node, ref mut next)) = work.last_mut() {
            if let Some(&(dep, _)) = edges[node].get(*next) {
                *next += 1;
                if index[dep] == NONE {
                    index[dep] = next_index;
                    low[dep] = next_index;
                    next_index += 1;
                    stack.push(dep);
                    on_stack[dep] = true;
                    work.push((dep, 0));
                } else if on_stack[dep] {
                    low[node] = low[node].min(index[dep]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[node]);
            }
            if low[node] == index[node] {
                while let Some(member) = stack.pop() {
                    on_stack[member] = false;
                    component[member] = next_component;
                    if member == node {
                        break;
                    }
                }
                next_component += 1;
            }
        }
    }
    component
}

/// Cycles found by depth-first search, at most one per strongly connected component: the first
/// the search closes, with the number of other dependencies closing cycles there (each closes
/// at least one more).
fn find_cycles(edges: &[Vec<(usize, usize)>]) -> Vec<Cycle> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let component = components(edges);
    let mut reported: HashMap<usize, usize> = HashMap::new();
    let mut mark = vec![Mark::New; edges.len()];
    // Where each open task is on the stack, so closing a cycle does not scan the stack.
    let mut depth = vec![0; edges.len()];
    let mut found: Vec<Cycle> = Vec::new();
    for root in 0..edges.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative, so a long chain cannot overflow the stack.
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&(dep, offset)) = edges[node].get(*next) {
                *next += 1;
                match mark[dep] {
                    Mark::New => {
                        mark[dep] = Mark::Open;
                        depth[dep] = stack.len();
                        stack.push((dep, 0));
                    }
                    // A dependency on an open task closes a cycle; both are in one component.
                    Mark::Open => match reported.get(&component[dep]) {
                        Some(&at) => found[at].more += 1,
                        None => {
                            reported.insert(component[dep], found.len());
                            let mut path: Vec<usize> =
                                stack[depth[dep]..].iter().map(|&(n, _)| n).collect();
                            path.push(dep);
                            found.push(Cycle {
                                path,
                                offset,
                                more: 0,
                                others: Vec::new(),
                            });
                        }
                    },
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    for (task, c) in component.iter().enumerate() {
        if let Some(&at) = reported.get(c) {
            found[at].others.push(task);
        }
    }
    for cycle in &mut found {
        let on_path: HashSet<usize> = cycle.path.iter().copied().collect();
        cycle.others.retain(|task| !on_path.contains(task));
    }
    found
}
