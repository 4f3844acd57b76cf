//! Turning TOML text into a validated [`Plan`]: every problem is collected with its line and
//! column, not just the first.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::catalog::ToolCatalog;
use super::dag::Dag;
use super::gate::{Gate, toml_to_json};
use super::template::{Reference, references_in};
use super::{
    Defaults, Diagnostic, Fix, Location, Plan, PlanError, Task, TaskId, ToolCall, ToolRef,
};
use crate::session::PoolDef;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
struct RawDefaults {
    timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    max_attempts: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
struct RawFix {
    when: Spanned<String>,
    args: Option<Spanned<toml::Value>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCall {
    tool: Spanned<String>,
    args: Option<Spanned<toml::Value>>,
}

/// Where the templates of one task sit, for scope checks after the graph is known.
struct TemplateSite {
    task: usize,
    /// Path of the value for messages (`args.input`, `gates[1].reference`).
    base: String,
    value: Value,
    /// Source range to search for the reference text; its start is the fallback location.
    span: std::ops::Range<usize>,
    /// From the task's start to the next task's, searched when `span` does not hold the text
    /// (a table written as a `[task.args]` header has only the header as its span).
    task_span: std::ops::Range<usize>,
    /// Whether the task's own output may be referenced (gates and compensation run after it).
    self_allowed: bool,
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
        match humantime::parse_duration(value.get_ref()) {
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
    let task_extent = |i: usize| {
        let end = raw
            .task
            .get(i + 1)
            .map_or(text.len(), |next| next.span().start);
        raw.task[i].span().start..end
    };
    for (i, spanned) in raw.task.iter().enumerate() {
        let t = spanned.get_ref();
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
            sites.push(TemplateSite {
                task: i,
                base: "args".to_owned(),
                value: args.clone(),
                span: a.span(),
                task_span: task_extent(i),
                self_allowed: false,
            });
        }
        let mut gates = Vec::with_capacity(t.gates.len());
        for (g, gate) in t.gates.iter().enumerate() {
            match Gate::from_table(gate.get_ref(), &id) {
                Ok(parsed) => {
                    // An expected text is compared as written: a reference in it would never be
                    // filled in, so the gate could never pass as meant (`{{.Names}}` and other
                    // text that is not a reference stays literal).
                    for (key, text) in parsed.literal_texts() {
                        let reference =
                            super::template::parse_template(text)
                                .ok()
                                .and_then(|segments| {
                                    segments.into_iter().find_map(|s| match s {
                                        super::template::Segment::Ref(r) => Some(r),
                                        super::template::Segment::Text(_) => None,
                                    })
                                });
                        if let Some(reference) = reference {
                            c.push(
                                gate.span().start,
                                format!(
                                    "task {id:?} gates[{g}].{key}: {{{{{reference}}}}} is not filled in: \
                                     a gate's expected text is compared as written (only file_exists, \
                                     reference and test are templates)"
                                ),
                            );
                        }
                    }
                    for (key, template) in parsed.templates() {
                        sites.push(TemplateSite {
                            task: i,
                            base: format!("gates[{g}].{key}"),
                            value: Value::String(template.to_owned()),
                            span: gate.span(),
                            task_span: task_extent(i),
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
            sites.push(TemplateSite {
                task: i,
                base: "compensate.args".to_owned(),
                value: args.clone(),
                span: comp.span(),
                task_span: task_extent(i),
                self_allowed: true,
            });
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
            // A fix's args (and variables) are rendered like the task's own when it is applied.
            let mut rendered = args.clone();
            if !raw.env.is_empty() {
                let env = raw.env.iter();
                let env = env.map(|(k, v)| (k.clone(), Value::String(v.clone())));
                rendered.insert("env".to_owned(), Value::Object(env.collect()));
            }
            sites.push(TemplateSite {
                task: i,
                base: format!("fixes[{f}]"),
                value: Value::Object(rendered),
                span: fix.span(),
                task_span: task_extent(i),
                self_allowed: false,
            });
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
        let context_files = context_files(&mut c, &id, &t.context_files, &args);
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
    cycles.sort_by_key(|(_, offset)| *offset);
    for (cycle, offset) in cycles {
        let path: Vec<&str> = cycle.iter().map(|&i| tasks[i].id.as_str()).collect();
        c.push(offset, format!("cycle: {}", path.join(" -> ")));
    }

    // Reachability is searched per reference, stopping at the target: a set of ancestors per
    // task made validating a 10,000-task chain quadratic (seconds).
    for site in &sites {
        check_templates(&mut c, site, &tasks, &first_seen, &edges);
    }

    if let Some(catalog) = catalog {
        for task in &tasks {
            let mut calls = vec![(&task.tool, task.tool_location, "tool")];
            if let Some(comp) = &task.compensate {
                calls.push((&comp.tool, comp.tool_location, "compensate.tool"));
            }
            for (tool, location, what) in calls {
                if tool.pool.is_empty() {
                    continue; // already reported as malformed
                }
                if raw.pools.contains_key(&tool.pool) {
                    continue; // declared by the plan itself: any tool name
                }
                let message = if !catalog.has_pool(&tool.pool) {
                    format!(
                        "task {:?} {what}: unknown pool {:?}",
                        task.id.as_str(),
                        tool.pool
                    )
                } else if catalog.has_tool(&tool.pool, &tool.tool) == Some(false) {
                    format!(
                        "task {:?} {what}: pool {:?} has no tool {:?}",
                        task.id.as_str(),
                        tool.pool,
                        tool.tool
                    )
                } else {
                    continue;
                };
                c.diagnostics.push(Diagnostic { location, message });
            }
        }
    }

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
        pools: raw
            .pools
            .into_iter()
            .map(|(name, def)| (name, def.into_inner()))
            .collect(),
        permissions: raw.permissions.map(std::path::PathBuf::from),
    })
}

/// A task's `context_files`: non-empty, plain (no templates), each named once, and only on a
/// task whose args read `{{context}}` (the files are sent nowhere else). Whether a file exists
/// is not checked here: it may be written by an upstream task, and a missing one is a warning
/// at run time.
fn context_files(
    c: &mut Collector<'_>,
    id: &str,
    files: &[Spanned<String>],
    args: &Value,
) -> Vec<std::path::PathBuf> {
    let Some(first) = files.first() else {
        return Vec::new();
    };
    let reads_context = references_in(args, "args")
        .iter()
        .any(|(_, _, refs)| refs.as_ref().is_ok_and(|r| r.contains(&Reference::Context)));
    if !reads_context {
        c.push(
            first.span().start,
            format!(
                "task {id:?} context_files are sent through {{{{context}}}}, which its args do not use"
            ),
        );
    }
    let mut paths: Vec<std::path::PathBuf> = Vec::with_capacity(files.len());
    for file in files {
        let name = file.get_ref();
        let path = std::path::PathBuf::from(name);
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
        } else if paths.contains(&path) {
            c.push(
                file.span().start,
                format!("task {id:?} context_files names {name:?} twice"),
            );
        } else {
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
    edges: &[Vec<(usize, usize)>],
) {
    let owner = tasks[site.task].id.as_str();
    for (path, template, refs) in references_in(&site.value, &site.base) {
        let offset = locate(c.text, &site.span, &template)
            .or_else(|| locate(c.text, &site.task_span, &template))
            .unwrap_or(site.span.start);
        let refs = match refs {
            Ok(refs) => refs,
            Err(e) => {
                c.push(offset, format!("task {owner:?} {path}: {e}"));
                continue;
            }
        };
        for reference in refs {
            if reference == Reference::Context && site.self_allowed {
                c.push(
                    offset,
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
                    "refers to the task's own output, which does not exist before it runs"
                        .to_owned()
                }
                Some(&target) if target != site.task && !is_upstream(edges, site.task, target) => {
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
            let name = reference.to_string();
            let at = locate_reference(c.text, &site.span, &name).unwrap_or(offset);
            c.push(
                at,
                format!("task {owner:?} {path}: {{{{{name}}}}} {problem}"),
            );
        }
    }
}

/// The offset of `template`'s first `{{ ... }}` inside `span` of the source (`None` when it is
/// not there, or escapes make the source text differ).
fn locate(text: &str, span: &std::ops::Range<usize>, template: &str) -> Option<usize> {
    let window = text.get(span.clone()).unwrap_or("");
    let needle = template.find("{{").map_or(template, |i| &template[i..]);
    let needle = needle.find("}}").map_or(needle, |end| &needle[..end + 2]);
    window.find(needle).map(|i| span.start + i)
}

/// The offset of the first `{{ ... }}` inside `span` of the source that names `reference`
/// (spaces inside the braces ignored), so each of several references in one string gets its
/// own column. `None` when it is not there as written (escapes in the source).
fn locate_reference(text: &str, span: &std::ops::Range<usize>, reference: &str) -> Option<usize> {
    let window = text.get(span.clone())?;
    let mut from = 0;
    while let Some(open) = window[from..].find("{{") {
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

/// Whether `task` depends on `target`, directly or not. Breadth-first from `task`, so a direct
/// dependency (the usual reference) is found at the first step.
fn is_upstream(edges: &[Vec<(usize, usize)>], task: usize, target: usize) -> bool {
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([task]);
    while let Some(t) = queue.pop_front() {
        for &(dep, _) in &edges[t] {
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

/// Cycles found by depth-first search, each as the path `a -> b -> ... -> a` (each task depends
/// on the next) with the offset of the dependency entry that closes it. Each cycle is reported
/// once, whichever task the search entered it by.
fn find_cycles(edges: &[Vec<(usize, usize)>]) -> Vec<(Vec<usize>, usize)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; edges.len()];
    let mut found: Vec<(Vec<usize>, usize)> = Vec::new();
    let mut seen: HashSet<Vec<usize>> = HashSet::new();
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
                        stack.push((dep, 0));
                    }
                    Mark::Open => {
                        let start = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut cycle: Vec<usize> =
                            stack[start..].iter().map(|&(n, _)| n).collect();
                        let mut key = cycle.clone();
                        let min = key
                            .iter()
                            .enumerate()
                            .min_by_key(|&(_, n)| *n)
                            .map_or(0, |(i, _)| i);
                        key.rotate_left(min);
                        if seen.insert(key) {
                            cycle.push(dep);
                            found.push((cycle, offset));
                        }
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    found
}
