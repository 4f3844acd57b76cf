//! `{{ ... }}` templates in task arguments, gate paths and compensation arguments.
//!
//! Hand-written rather than a template engine (Tera, Handlebars): the language is only
//! substitution of five kinds of reference, with no logic, and validation must know every
//! reference statically to check it against the DAG.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// One `{{ ... }}` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `{{tasks.ID.output}}` or `{{tasks.ID.output.FIELD.SUB}}`: an upstream task's output
    /// (or a part of it; numeric path parts index arrays).
    TaskOutput {
        /// The producing task.
        task: String,
        /// The field path inside the output; empty for the whole output.
        path: Vec<String>,
    },
    /// `{{attempt}}`: the 1-based attempt number.
    Attempt,
    /// `{{feedback}}`: the Reviewer's reasons from the previous failed attempt ("" on the first).
    Feedback,
    /// `{{run.id}}`: the run's id.
    RunId,
    /// `{{plan.name}}`: the plan's name.
    PlanName,
    /// `{{context}}`: the context the Optimizer assembled for the task (upstream outputs and
    /// relevant memories within the token budget), as text. Only in a task's `args`.
    Context,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::TaskOutput { task, path } => {
                write!(f, "tasks.{task}.output")?;
                for part in path {
                    write!(f, ".{part}")?;
                }
                Ok(())
            }
            Reference::Attempt => f.write_str("attempt"),
            Reference::Feedback => f.write_str("feedback"),
            Reference::RunId => f.write_str("run.id"),
            Reference::PlanName => f.write_str("plan.name"),
            Reference::Context => f.write_str("context"),
        }
    }
}

/// A piece of a parsed template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text.
    Text(String),
    /// A reference to substitute.
    Ref(Reference),
}

/// Why a template could not be parsed or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template text is malformed (unclosed `{{`, unknown reference).
    #[error("{reason} in template {template:?}")]
    Syntax {
        /// The template string.
        template: String,
        /// What is wrong.
        reason: String,
    },
    /// The context has no output for a referenced task.
    #[error("no output from task {task:?} (referenced as {{{{{reference}}}}})")]
    MissingOutput {
        /// The task.
        task: String,
        /// The full reference.
        reference: String,
    },
    /// The referenced task's output has no such field.
    #[error("output of task {task:?} has no field {field:?} (referenced as {{{{{reference}}}}})")]
    MissingField {
        /// The task.
        task: String,
        /// The missing field path part.
        field: String,
        /// The full reference.
        reference: String,
    },
}

/// Where the next `{{` that opens a reference starts in `text`: the last two braces of a run,
/// so `{{{x}}}` is a literal `{`, the reference, and a literal `}` (a `}}` left over is never
/// special).
pub(crate) fn find_open(text: &str) -> Option<usize> {
    let start = text.find("{{")?;
    let run = text[start..].bytes().take_while(|&b| b == b'{').count();
    Some(start + run - 2)
}

/// Splits a string into literal text and references.
pub fn parse_template(text: &str) -> Result<Vec<Segment>, TemplateError> {
    parse_counting(text).map_err(|(_, e)| e)
}

/// Which `{{` of `text` (0 for the first) [`parse_template`] fails at, if it fails.
pub(crate) fn failing_opening(text: &str) -> Option<usize> {
    parse_counting(text).err().map(|(at, _)| at)
}

/// [`parse_template`], with the failing `{{`'s place among the openings on error.
fn parse_counting(text: &str) -> Result<Vec<Segment>, (usize, TemplateError)> {
    let mut opening = 0;
    let syntax = |opening: usize, reason: String| {
        (
            opening,
            TemplateError::Syntax {
                template: text.to_owned(),
                reason,
            },
        )
    };
    let mut segments = Vec::new();
    let mut rest = text;
    while let Some(start) = find_open(rest) {
        if start > 0 {
            push_text(&mut segments, &rest[..start]);
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(syntax(opening, "unclosed `{{`".to_owned()));
        };
        // `{{ "{{" }}` is a literal `{{` (for `docker ps --format '{{ "{{" }}.Names}}'`); a
        // lone `}}` is never special.
        if after[..end].trim() == "\"{{\"" {
            push_text(&mut segments, "{{");
        } else {
            let reference =
                parse_reference(&after[..end]).map_err(|reason| syntax(opening, reason))?;
            segments.push(Segment::Ref(reference));
        }
        rest = &after[end + 2..];
        opening += 1;
    }
    if !rest.is_empty() {
        push_text(&mut segments, rest);
    }
    Ok(segments)
}

/// Whether `text` holds the escape `{{ "{{" }}` (a literal `{{` in a template).
pub(crate) fn holds_brace_escape(text: &str) -> bool {
    let mut rest = text;
    while let Some(start) = find_open(rest) {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return false;
        };
        if after[..end].trim() == "\"{{\"" {
            return true;
        }
        rest = &after[end + 2..];
    }
    false
}

/// Whether `text` may render to something other than a string: it is one reference and nothing
/// else (as [`render_str`] reads it). A string that does not parse counts too: its syntax error
/// is reported where the plan is checked.
pub(crate) fn may_render_typed(text: &str) -> bool {
    parse_template(text).map_or(true, |segments| {
        matches!(segments.as_slice(), [Segment::Ref(_)])
    })
}

/// The references among the `{{ ... }}` of `text`, each read on its own: those of a text that
/// is not a template as a whole (a gate's expected text, where `{{.Names}}` stays literal).
pub(crate) fn references_in_spans(text: &str) -> Vec<Reference> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = find_open(rest) {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        if let Ok(reference) = parse_reference(&after[..end]) {
            found.push(reference);
        }
        rest = &after[end + 2..];
    }
    found
}

/// Appends literal text, joining it to literal text just before (an escaped `{{` and what
/// follows it are one piece of text).
fn push_text(segments: &mut Vec<Segment>, text: &str) {
    match segments.last_mut() {
        Some(Segment::Text(previous)) => previous.push_str(text),
        _ => segments.push(Segment::Text(text.to_owned())),
    }
}

fn parse_reference(inner: &str) -> Result<Reference, String> {
    let trimmed = inner.trim();
    let unknown = || {
        format!(
            "unknown template reference `{{{{{trimmed}}}}}` (expected tasks.ID.output[.FIELD], \
             attempt, feedback, run.id, plan.name or context)"
        )
    };
    match trimmed {
        "attempt" => return Ok(Reference::Attempt),
        "feedback" => return Ok(Reference::Feedback),
        "run.id" => return Ok(Reference::RunId),
        "plan.name" => return Ok(Reference::PlanName),
        "context" => return Ok(Reference::Context),
        _ => {}
    }
    let parts: Vec<&str> = trimmed.split('.').collect();
    match parts.as_slice() {
        ["tasks", task, "output", path @ ..] if !task.is_empty() => {
            if path.iter().any(|p| p.is_empty()) {
                return Err(format!("empty field name in `{{{{{trimmed}}}}}`"));
            }
            Ok(Reference::TaskOutput {
                task: (*task).to_owned(),
                path: path.iter().map(|p| (*p).to_owned()).collect(),
            })
        }
        _ => Err(unknown()),
    }
}

/// Every reference in the strings of a JSON tree, each with the path of the string that holds it
/// (`base.key[0].sub`).
pub fn references_in(
    value: &Value,
    base: &str,
) -> Vec<(String, String, Result<Vec<Reference>, TemplateError>)> {
    let mut found = Vec::new();
    walk_strings(value, base.to_owned(), &mut |path, text| {
        if text.contains("{{") {
            let refs = parse_template(text).map(|segs| {
                segs.into_iter()
                    .filter_map(|s| match s {
                        Segment::Ref(r) => Some(r),
                        Segment::Text(_) => None,
                    })
                    .collect()
            });
            found.push((path, text.to_owned(), refs));
        }
    });
    found
}

/// Calls `visit` with every string in a JSON tree and its path (`base.key[0].sub`).
pub(crate) fn walk_strings<'a>(
    value: &'a Value,
    path: String,
    visit: &mut dyn FnMut(String, &'a str),
) {
    match value {
        Value::String(s) => visit(path, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_strings(item, format!("{path}[{i}]"), visit);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                walk_strings(item, format!("{path}.{key}"), visit);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// What templates are rendered against.
#[derive(Debug, Clone, Default)]
pub struct TemplateContext {
    /// Outputs of finished tasks by task id (for gates and compensation, the task's own output too).
    pub outputs: HashMap<String, Value>,
    /// The 1-based attempt number.
    pub attempt: u32,
    /// The Reviewer's feedback from the previous attempt; empty on the first.
    pub feedback: String,
    /// The run's id (shared: every attempt of the run carries it).
    pub run_id: Arc<str>,
    /// The plan's name (shared likewise).
    pub plan_name: Arc<str>,
    /// The Optimizer's context for the task (`{{context}}`); empty when none was assembled.
    pub context: String,
}

impl TemplateContext {
    fn resolve(&self, reference: &Reference) -> Result<Value, TemplateError> {
        match reference {
            Reference::Attempt => Ok(Value::from(self.attempt)),
            Reference::Feedback => Ok(Value::String(self.feedback.clone())),
            Reference::RunId => Ok(Value::String(self.run_id.to_string())),
            Reference::PlanName => Ok(Value::String(self.plan_name.to_string())),
            Reference::Context => Ok(Value::String(self.context.clone())),
            Reference::TaskOutput { task, path } => {
                let mut current =
                    self.outputs
                        .get(task)
                        .ok_or_else(|| TemplateError::MissingOutput {
                            task: task.clone(),
                            reference: reference.to_string(),
                        })?;
                for field in path {
                    let next = match current {
                        Value::Object(map) => map.get(field),
                        Value::Array(items) => {
                            field.parse::<usize>().ok().and_then(|i| items.get(i))
                        }
                        _ => None,
                    };
                    current = next.ok_or_else(|| TemplateError::MissingField {
                        task: task.clone(),
                        field: field.clone(),
                        reference: reference.to_string(),
                    })?;
                }
                Ok(current.clone())
            }
        }
    }
}

/// Renders every string in `value`. A string that is exactly one reference becomes the referenced
/// JSON value (an object stays an object, `{{attempt}}` a number); otherwise references are
/// substituted into the text, strings as they are and other values JSON-encoded. Object keys are
/// not templated.
pub fn render(value: &Value, ctx: &TemplateContext) -> Result<Value, TemplateError> {
    match value {
        Value::String(text) => render_str(text, ctx),
        Value::Array(items) => items
            .iter()
            .map(|item| render(item, ctx))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (key, item) in map {
                out.insert(key.clone(), render(item, ctx)?);
            }
            Ok(Value::Object(out))
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(value.clone()),
    }
}

/// Renders one template string (see [`render`]).
pub fn render_str(text: &str, ctx: &TemplateContext) -> Result<Value, TemplateError> {
    let segments = parse_template(text)?;
    if let [Segment::Ref(reference)] = segments.as_slice() {
        return ctx.resolve(reference);
    }
    let mut out = String::with_capacity(text.len());
    for segment in &segments {
        match segment {
            Segment::Text(t) => out.push_str(t),
            Segment::Ref(reference) => match ctx.resolve(reference)? {
                Value::String(s) => out.push_str(&s),
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

/// Renders a template that must produce text (a path): strings as they are, other values
/// JSON-encoded.
pub fn render_text(text: &str, ctx: &TemplateContext) -> Result<String, TemplateError> {
    Ok(match render_str(text, ctx)? {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn ctx() -> TemplateContext {
        let mut outputs = HashMap::new();
        outputs.insert(
            "render".to_owned(),
            json!({"path": "out/a.png", "sizes": [1, 2], "meta": {"w": 4}}),
        );
        TemplateContext {
            context: String::new(),
            outputs,
            attempt: 2,
            feedback: "too dark".to_owned(),
            run_id: "r1".into(),
            plan_name: "p".into(),
        }
    }

    #[test]
    fn an_escaped_pair_of_braces_is_literal_text() {
        let rendered = render(
            &json!("docker ps --format '{{ \"{{\" }}.Names}}' --filter name={{tasks.render.output.path}}"),
            &ctx(),
        )
        .unwrap();
        assert_eq!(
            rendered,
            json!("docker ps --format '{{.Names}}' --filter name=out/a.png")
        );
        assert_eq!(
            parse_template("{{\"{{\"}}x").unwrap(),
            [Segment::Text("{{x".to_owned())]
        );
        // Anything else in quotes is still an unknown reference.
        assert!(parse_template("{{ \"}\" }}").is_err());
    }

    #[test]
    fn whole_reference_keeps_json_type() {
        let v = render(&json!({"m": "{{ tasks.render.output.meta }}"}), &ctx()).unwrap();
        assert_eq!(v, json!({"m": {"w": 4}}));
        assert_eq!(render_str("{{attempt}}", &ctx()).unwrap(), json!(2));
    }

    #[test]
    fn mixed_text_substitutes_and_encodes() {
        let v = render_str(
            "{{plan.name}}/{{run.id}}: {{tasks.render.output.path}} {{tasks.render.output.sizes}} #{{attempt}} {{feedback}}",
            &ctx(),
        )
        .unwrap();
        assert_eq!(v, json!("p/r1: out/a.png [1,2] #2 too dark"));
        assert_eq!(
            render_str("{{tasks.render.output.sizes.1}}", &ctx()).unwrap(),
            json!(2)
        );
    }

    #[test]
    fn missing_things_are_errors() {
        assert!(matches!(
            render_str("{{tasks.nope.output}}", &ctx()),
            Err(TemplateError::MissingOutput { .. })
        ));
        assert!(matches!(
            render_str("x {{tasks.render.output.nope}}", &ctx()),
            Err(TemplateError::MissingField { .. })
        ));
        assert!(matches!(
            parse_template("a {{attempt"),
            Err(TemplateError::Syntax { .. })
        ));
        let err = parse_template("{{tasks.x.result}}").unwrap_err();
        assert!(
            err.to_string().contains("unknown template reference"),
            "{err}"
        );
    }

    #[test]
    fn references_are_listed_with_paths() {
        let found = references_in(&json!({"a": ["x", "{{feedback}}"]}), "args");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "args.a[1]");
        assert_eq!(found[0].2.as_ref().unwrap(), &vec![Reference::Feedback]);
    }
}
