//! Gates: the Reviewer's checks on a task's outcome, parsed from TOML inline tables.
//!
//! Shapes (one key names the kind; the others qualify it):
//!
//! | TOML | gate |
//! |---|---|
//! | `{ exit = 0 }` | exit status equals 0 |
//! | `{ contains = "done" }` | output text contains `done` |
//! | `{ matches = "^ok: \\d+" }` | output text matches the regex (compiled at validation) |
//! | `{ json = "/status", eq = "ok" }` | JSON field at the RFC 6901 pointer compared with `eq`, `ne`, `lt`, `le`, `gt`, `ge` |
//! | `{ json = "/id", exists = true }` | JSON field exists (`false`: must not exist) |
//! | `{ file_exists = "{{tasks.render.output.path}}" }` | the (templated) path exists |
//! | `{ score = "flip", reference = "ref.png", max = 0.05 }` | image score; `test` defaults to the task's own `{{tasks.ID.output.path}}`, `max` or `min` bounds it |

use std::path::Path;

use serde_json::Value;

use super::template::{TemplateContext, render_text, walk_strings};

/// An image-comparison metric for [`Gate::Score`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreMetric {
    /// LDR FLIP (lower is better).
    Flip,
    /// HDR FLIP (lower is better).
    HdrFlip,
    /// SSIM (higher is better).
    Ssim,
    /// MS-SSIM (higher is better).
    MsSsim,
    /// PSNR in dB (higher is better).
    Psnr,
}

impl ScoreMetric {
    /// Parses `flip`, `hdr-flip`, `ssim`, `msssim` (or `ms-ssim`), `psnr`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "flip" => Some(Self::Flip),
            "hdr-flip" => Some(Self::HdrFlip),
            "ssim" => Some(Self::Ssim),
            "msssim" | "ms-ssim" => Some(Self::MsSsim),
            "psnr" => Some(Self::Psnr),
            _ => None,
        }
    }
}

/// The bound a score must respect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScoreBound {
    /// The score must be at most this.
    Max(f64),
    /// The score must be at least this.
    Min(f64),
}

/// A comparison for [`Gate::JsonField`].
#[derive(Debug, Clone, PartialEq)]
pub enum JsonOp {
    /// Equal (numbers compare by value).
    Eq(Value),
    /// Not equal.
    Ne(Value),
    /// Less than (numbers or strings).
    Lt(Value),
    /// Less or equal.
    Le(Value),
    /// Greater than.
    Gt(Value),
    /// Greater or equal.
    Ge(Value),
    /// The field exists (`true`) or does not (`false`).
    Exists(bool),
}

/// One check the Reviewer applies to a task's outcome.
#[derive(Debug, Clone)]
pub enum Gate {
    /// The tool's exit status equals this.
    ExitStatus {
        /// Expected status.
        equals: i32,
    },
    /// The output text contains this.
    OutputContains {
        /// Text to find.
        text: String,
    },
    /// The output text matches this regex.
    OutputMatches {
        /// The compiled pattern.
        regex: regex::Regex,
    },
    /// A field of the JSON output compared with a value.
    JsonField {
        /// RFC 6901 pointer (`""` is the whole document).
        pointer: String,
        /// The comparison.
        op: JsonOp,
    },
    /// A file exists.
    FileExists {
        /// The path, a template.
        path: String,
    },
    /// An image score against a reference, bounded.
    Score {
        /// The metric.
        metric: ScoreMetric,
        /// The reference image path, a template.
        reference: String,
        /// The test image path, a template.
        test: String,
        /// The bound.
        bound: ScoreBound,
    },
}

/// The default test image of a score gate: the gated task's own output `path`.
pub fn default_score_test(task: &str) -> String {
    format!("{{{{tasks.{task}.output.path}}}}")
}

/// What a tool run produced, as the Reviewer sees it.
#[derive(Debug, Clone, Default)]
pub struct ToolOutcome {
    /// The exit status, if the tool exited (None: killed, timed out, or not a process).
    pub exit_status: Option<i32>,
    /// The output text (stdout, or the tool's text result).
    pub output: String,
    /// The output parsed as JSON, when it is JSON.
    pub json: Option<Value>,
}

/// A gate's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateResult {
    /// Whether the gate passed.
    pub passed: bool,
    /// Why, in words fit for the task's `{{feedback}}`.
    pub reason: String,
}

impl GateResult {
    fn new(passed: bool, reason: String) -> Self {
        Self { passed, reason }
    }
}

impl Gate {
    /// Parses one gate table; `task` is the gated task's id (for the score gate's default test).
    /// Errors say what is wrong in words.
    pub fn from_table(table: &toml::Table, task: &str) -> Result<Gate, String> {
        let keys: Vec<&str> = table.keys().map(String::as_str).collect();
        let allow = |allowed: &[&str]| -> Result<(), String> {
            match keys.iter().find(|k| !allowed.contains(k)) {
                Some(k) => Err(format!(
                    "unexpected key `{k}` in gate (allowed here: {})",
                    allowed.join(", ")
                )),
                None => Ok(()),
            }
        };
        let string = |key: &str| -> Result<String, String> {
            match table.get(key) {
                Some(toml::Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(format!(
                    "gate key `{key}` must be a string, not {}",
                    other.type_str()
                )),
                None => Err(format!("gate needs `{key}`")),
            }
        };
        if let Some(value) = table.get("exit") {
            allow(&["exit"])?;
            // A process exits with 0 to 255; any other value could never be met.
            let equals = value
                .as_integer()
                .filter(|i| (0..=255).contains(i))
                .and_then(|i| i32::try_from(i).ok())
                .ok_or("gate `exit` must be an exit status from 0 to 255")?;
            return Ok(Gate::ExitStatus { equals });
        }
        if table.contains_key("contains") {
            allow(&["contains"])?;
            return Ok(Gate::OutputContains {
                text: string("contains")?,
            });
        }
        if table.contains_key("matches") {
            allow(&["matches"])?;
            let pattern = string("matches")?;
            let regex = regex::Regex::new(&pattern).map_err(|e| {
                // regex's syntax errors draw a caret diagram over several lines; keep the
                // last line (the reason) so each diagnostic stays on one line.
                let text = e.to_string();
                let reason = text
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                format!("gate `matches` has a bad regex {pattern:?}: {reason}")
            })?;
            return Ok(Gate::OutputMatches { regex });
        }
        if table.contains_key("json") {
            allow(&["json", "eq", "ne", "lt", "le", "gt", "ge", "exists"])?;
            let pointer = string("json")?;
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(format!(
                    "gate `json` must be an RFC 6901 pointer starting with `/`, got {pointer:?}"
                ));
            }
            // `~` only starts `~0` (a `~`) or `~1` (a `/`): anything else finds nothing.
            if pointer
                .match_indices('~')
                .any(|(at, _)| !matches!(pointer.as_bytes().get(at + 1), Some(b'0' | b'1')))
            {
                return Err(format!(
                    "gate `json` pointer {pointer:?}: a `~` must be followed by 0 (for `~`) or 1 \
                     (for `/`)"
                ));
            }
            let ops: Vec<&&str> = keys.iter().filter(|k| **k != "json").collect();
            let [op] = ops.as_slice() else {
                return Err(
                    "gate `json` needs exactly one of eq, ne, lt, le, gt, ge, exists".to_owned(),
                );
            };
            let value = table.get(**op).map(toml_to_json).transpose()?;
            let value = value.unwrap_or(Value::Null);
            let ordering = matches!(**op, "lt" | "le" | "gt" | "ge");
            if ordering && !matches!(value, Value::Number(_) | Value::String(_)) {
                return Err(format!(
                    "gate `{}` compares numbers or strings, not {value}",
                    **op
                ));
            }
            let op = match **op {
                "eq" => JsonOp::Eq(value),
                "ne" => JsonOp::Ne(value),
                "lt" => JsonOp::Lt(value),
                "le" => JsonOp::Le(value),
                "gt" => JsonOp::Gt(value),
                "ge" => JsonOp::Ge(value),
                _ => JsonOp::Exists(
                    value
                        .as_bool()
                        .ok_or("gate `exists` must be true or false")?,
                ),
            };
            return Ok(Gate::JsonField { pointer, op });
        }
        if table.contains_key("file_exists") {
            allow(&["file_exists"])?;
            let path = string("file_exists")?;
            if path.trim().is_empty() {
                return Err("gate `file_exists` needs a path".to_owned());
            }
            return Ok(Gate::FileExists { path });
        }
        if table.contains_key("score") {
            allow(&["score", "reference", "test", "max", "min"])?;
            let name = string("score")?;
            let metric = ScoreMetric::parse(&name).ok_or_else(|| {
                format!(
                    "unknown score metric {name:?} (expected flip, hdr-flip, ssim, msssim, psnr)"
                )
            })?;
            let number = |key: &str| -> Result<Option<f64>, String> {
                match table.get(key) {
                    None => Ok(None),
                    Some(toml::Value::Float(f)) if f.is_finite() => Ok(Some(*f)),
                    Some(toml::Value::Integer(i)) => Ok(Some(*i as f64)),
                    Some(_) => Err(format!("gate `{key}` must be a finite number")),
                }
            };
            let bound = match (number("max")?, number("min")?) {
                (Some(max), None) => ScoreBound::Max(max),
                (None, Some(min)) => ScoreBound::Min(min),
                _ => return Err("score gate needs exactly one of `max` or `min`".to_owned()),
            };
            // A bound outside what the metric can score would fail every attempt.
            let range = match metric {
                ScoreMetric::Flip | ScoreMetric::HdrFlip => Some((0.0, 1.0)),
                ScoreMetric::Ssim => Some((-1.0, 1.0)),
                // Its terms are clamped at 0 (a negative scale would make the product meaningless).
                ScoreMetric::MsSsim => Some((0.0, 1.0)),
                ScoreMetric::Psnr => None,
            };
            if let Some((low, high)) = range {
                let never = match bound {
                    ScoreBound::Max(max) => (max < low).then(|| format!("`max = {max}`")),
                    ScoreBound::Min(min) => (min > high).then(|| format!("`min = {min}`")),
                };
                if let Some(setting) = never {
                    return Err(format!(
                        "score gate {setting} can never pass: {name} scores from {low} to {high}"
                    ));
                }
            }
            let test = match table.get("test") {
                Some(_) => string("test")?,
                None => default_score_test(task),
            };
            let reference = string("reference")?;
            // An empty path, or `.`, is the plan's folder, which no attempt can score.
            for (key, path) in [("reference", &reference), ("test", &test)] {
                if path.trim().is_empty() {
                    return Err(format!("score gate `{key}` is an empty path"));
                }
                if std::path::Path::new(path.trim())
                    .components()
                    .all(|part| part == std::path::Component::CurDir)
                {
                    return Err(format!(
                        "score gate `{key}` names the plan's folder, not an image"
                    ));
                }
            }
            return Ok(Gate::Score {
                metric,
                reference,
                test,
                bound,
            });
        }
        Err(format!(
            "unknown gate {{ {} }} (expected one of exit, contains, matches, json, file_exists, score)",
            keys.join(", ")
        ))
    }

    /// The gate's templated strings, with their names, for validation.
    pub fn templates(&self) -> Vec<(&'static str, &str)> {
        match self {
            Gate::FileExists { path } => vec![("file_exists", path)],
            Gate::Score {
                reference, test, ..
            } => vec![("reference", reference), ("test", test)],
            _ => Vec::new(),
        }
    }

    /// The gate's expected texts, compared as written (not templates), each with its key and
    /// its place in a JSON value (`eq`, `eq[0]`, `eq.k`): every string of an array or object
    /// `eq` is compared as written too.
    pub fn literal_texts(&self) -> Vec<(String, &str)> {
        let mut found = Vec::new();
        match self {
            Gate::OutputContains { text } => found.push(("contains".to_owned(), text.as_str())),
            Gate::OutputMatches { regex } => found.push(("matches".to_owned(), regex.as_str())),
            Gate::JsonField { op, .. } => {
                let (key, value) = match op {
                    JsonOp::Eq(v) => ("eq", v),
                    JsonOp::Ne(v) => ("ne", v),
                    JsonOp::Lt(v) => ("lt", v),
                    JsonOp::Le(v) => ("le", v),
                    JsonOp::Gt(v) => ("gt", v),
                    JsonOp::Ge(v) => ("ge", v),
                    JsonOp::Exists(_) => return found,
                };
                walk_strings(value, key.to_owned(), &mut |path, text| {
                    found.push((path, text));
                });
            }
            _ => {}
        }
        found
    }

    /// Evaluates a pure gate against an outcome; templates (file paths) render against `ctx`.
    /// Returns `None` for [`Gate::Score`], which the scorer evaluates.
    pub fn check(&self, outcome: &ToolOutcome, ctx: &TemplateContext) -> Option<GateResult> {
        self.check_in(outcome, ctx, Path::new(""))
    }

    /// [`Gate::check`] with relative file paths resolved against `base_dir` (the plan's folder).
    pub fn check_in(
        &self,
        outcome: &ToolOutcome,
        ctx: &TemplateContext,
        base_dir: &Path,
    ) -> Option<GateResult> {
        Some(match self {
            Gate::ExitStatus { equals } => match outcome.exit_status {
                Some(code) if code == *equals => {
                    GateResult::new(true, format!("exit status {code}"))
                }
                Some(code) => {
                    GateResult::new(false, format!("exit status was {code}, expected {equals}"))
                }
                None => GateResult::new(
                    false,
                    format!("the tool did not exit normally, expected exit status {equals}"),
                ),
            },
            Gate::OutputContains { text } => {
                let found = printed(&outcome.output).contains(text.as_str());
                let verb = if found {
                    "contains"
                } else {
                    "does not contain"
                };
                GateResult::new(found, format!("output {verb} {text:?}"))
            }
            Gate::OutputMatches { regex } => {
                let found = regex.is_match(printed(&outcome.output));
                let verb = if found { "matches" } else { "does not match" };
                GateResult::new(found, format!("output {verb} /{}/", regex.as_str()))
            }
            Gate::JsonField { pointer, op } => check_json(outcome.json.as_ref(), pointer, op),
            Gate::FileExists { path } => match render_text(path, ctx) {
                // An empty path would name the plan's own folder, which always exists.
                Ok(rendered) if rendered.trim().is_empty() => {
                    GateResult::new(false, "file_exists path is empty".to_owned())
                }
                Ok(rendered) => {
                    let exists = base_dir.join(&rendered).exists();
                    let verb = if exists { "exists" } else { "does not exist" };
                    GateResult::new(exists, format!("file {rendered} {verb}"))
                }
                Err(e) => GateResult::new(false, format!("file_exists path: {e}")),
            },
            Gate::Score { .. } => return None,
        })
    }
}

fn check_json(json: Option<&Value>, pointer: &str, op: &JsonOp) -> GateResult {
    let Some(doc) = json else {
        return GateResult::new(false, format!("output is not JSON, cannot check {pointer}"));
    };
    let found = doc.pointer(pointer);
    let (expected, want): (&Value, &[std::cmp::Ordering]) = match op {
        JsonOp::Exists(should) => {
            let passed = found.is_some() == *should;
            let state = if found.is_some() {
                "exists"
            } else {
                "is missing"
            };
            return GateResult::new(passed, format!("JSON field {pointer} {state}"));
        }
        JsonOp::Eq(v) | JsonOp::Ne(v) => {
            // A missing field fails `ne` as it fails every comparison: a gate fails closed
            // (`{ json = "/status", ne = "error" }` must not pass a tool that printed `{}`).
            let passed = found.is_some_and(|f| json_equal(f, v) == matches!(op, JsonOp::Eq(_)));
            let shown = found.map_or("missing".to_owned(), Value::to_string);
            let sym = if matches!(op, JsonOp::Eq(_)) {
                "=="
            } else {
                "!="
            };
            return GateResult::new(
                passed,
                format!("JSON field {pointer} is {shown}, required {sym} {v}"),
            );
        }
        JsonOp::Lt(v) => (v, &[std::cmp::Ordering::Less]),
        JsonOp::Le(v) => (v, &[std::cmp::Ordering::Less, std::cmp::Ordering::Equal]),
        JsonOp::Gt(v) => (v, &[std::cmp::Ordering::Greater]),
        JsonOp::Ge(v) => (v, &[std::cmp::Ordering::Greater, std::cmp::Ordering::Equal]),
    };
    let sym = match op {
        JsonOp::Lt(_) => "<",
        JsonOp::Le(_) => "<=",
        JsonOp::Gt(_) => ">",
        _ => ">=",
    };
    let Some(actual) = found else {
        return GateResult::new(false, format!("JSON field {pointer} is missing"));
    };
    match json_order(actual, expected) {
        Some(ord) => GateResult::new(
            want.contains(&ord),
            format!("JSON field {pointer} is {actual}, required {sym} {expected}"),
        ),
        None => GateResult::new(
            false,
            format!("JSON field {pointer} is {actual}, which cannot be compared with {expected}"),
        ),
    }
}

/// The output as text gates read: without the one line break a program prints last, so
/// `matches = "^ok$"` holds for `echo ok` (as `{{tasks.ID.output}}` is trimmed too).
fn printed(output: &str) -> &str {
    output
        .strip_suffix('\n')
        .map_or(output, |o| o.strip_suffix('\r').unwrap_or(o))
}

/// Numbers by value: integers exactly (two ids above 2^53 that round to one `f64` differ),
/// and through `f64` when either is a fraction.
fn number_order(x: &serde_json::Number, y: &serde_json::Number) -> Option<std::cmp::Ordering> {
    let exact = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (exact(x), exact(y)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
    }
}

/// Equality with numbers by value, at any depth (`[1]` equals `[1.0]`).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            number_order(x, y) == Some(std::cmp::Ordering::Equal)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| json_equal(p, q)))
        }
        _ => a == b,
    }
}

fn json_order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_order(x, y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Converts a TOML value to JSON (datetimes become their RFC 3339 text).
pub fn toml_to_json(value: &toml::Value) -> Result<Value, String> {
    Ok(match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} is not a finite number"))?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(
            items
                .iter()
                .map(toml_to_json)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        toml::Value::Table(table) => {
            let mut map = serde_json::Map::with_capacity(table.len());
            for (k, v) in table {
                map.insert(k.clone(), toml_to_json(v)?);
            }
            Value::Object(map)
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn gate(src: &str) -> Result<Gate, String> {
        let table: toml::Table = toml::from_str(&format!("g = {src}")).unwrap();
        let toml::Value::Table(t) = &table["g"] else {
            panic!("not a table")
        };
        Gate::from_table(t, "t")
    }

    fn outcome(exit: Option<i32>, out: &str) -> ToolOutcome {
        ToolOutcome {
            exit_status: exit,
            output: out.to_owned(),
            json: serde_json::from_str(out).ok(),
        }
    }

    fn passes(src: &str, o: &ToolOutcome) -> bool {
        let g = gate(src).unwrap();
        g.check(o, &TemplateContext::default()).unwrap().passed
    }

    #[test]
    fn exit_contains_matches() {
        let ok = outcome(Some(0), "render done: 12 frames");
        assert!(passes("{ exit = 0 }", &ok));
        assert!(!passes("{ exit = 1 }", &ok));
        assert!(!passes("{ exit = 0 }", &outcome(None, "")));
        assert!(passes("{ contains = \"done\" }", &ok));
        assert!(!passes("{ contains = \"fail\" }", &ok));
        assert!(passes("{ matches = '\\d+ frames' }", &ok));
        assert!(!passes("{ matches = '^\\d' }", &ok));
        let r = gate("{ exit = 0 }")
            .unwrap()
            .check(&outcome(Some(3), ""), &TemplateContext::default())
            .unwrap();
        assert_eq!(r.reason, "exit status was 3, expected 0");
    }

    #[test]
    fn json_comparisons() {
        let o = outcome(Some(0), r#"{"status":"ok","n":3,"list":[1.5]}"#);
        assert!(passes("{ json = \"/status\", eq = \"ok\" }", &o));
        assert!(!passes("{ json = \"/status\", ne = \"ok\" }", &o));
        assert!(passes("{ json = \"/n\", eq = 3.0 }", &o));
        assert!(passes("{ json = \"/n\", lt = 4 }", &o));
        assert!(passes("{ json = \"/n\", le = 3 }", &o));
        assert!(!passes("{ json = \"/n\", gt = 3 }", &o));
        assert!(passes("{ json = \"/list/0\", ge = 1.5 }", &o));
        assert!(passes("{ json = \"/n\", exists = true }", &o));
        assert!(passes("{ json = \"/gone\", exists = false }", &o));
        assert!(!passes("{ json = \"/gone\", lt = 1 }", &o));
        // A missing field fails `ne` too: a tool that printed `{}` has not shown it is fine.
        assert!(!passes("{ json = \"/gone\", ne = \"error\" }", &o));
        assert!(passes("{ json = \"/status\", ne = \"error\" }", &o));
        assert!(!passes("{ json = \"/status\", lt = 1 }", &o));
        assert!(!passes(
            "{ json = \"/n\", eq = 3 }",
            &outcome(Some(0), "not json")
        ));
    }

    #[test]
    fn file_exists_renders_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.png");
        std::fs::write(&file, b"x").unwrap();
        let mut ctx = TemplateContext::default();
        ctx.outputs
            .insert("r".into(), json!({"path": file.to_string_lossy()}));
        let g = gate("{ file_exists = \"{{tasks.r.output.path}}\" }").unwrap();
        assert!(g.check(&ToolOutcome::default(), &ctx).unwrap().passed);
        std::fs::remove_file(&file).unwrap();
        assert!(!g.check(&ToolOutcome::default(), &ctx).unwrap().passed);
    }

    #[test]
    fn an_empty_file_exists_path_fails() {
        // It joined to the plan's own folder, which always exists.
        let mut ctx = TemplateContext::default();
        ctx.outputs.insert("r".into(), json!({"path": ""}));
        let g = gate("{ file_exists = \"{{tasks.r.output.path}}\" }").unwrap();
        let result = g.check(&ToolOutcome::default(), &ctx).unwrap();
        assert!(!result.passed);
        assert_eq!(result.reason, "file_exists path is empty");
    }

    #[test]
    fn the_last_line_break_is_not_part_of_what_text_gates_see() {
        let printed = outcome(Some(0), "ok\n");
        assert!(passes("{ matches = '^ok$' }", &printed));
        assert!(passes("{ matches = '^ok$' }", &outcome(Some(0), "ok\r\n")));
        assert!(!passes("{ matches = '^ok$' }", &outcome(Some(0), "ok\n\n")));
        assert!(passes("{ contains = \"ok\" }", &printed));
    }

    #[test]
    fn integers_compare_exactly_and_numbers_by_value_at_any_depth() {
        let big = outcome(Some(0), r#"{"n":9007199254740993,"list":[1,{"x":2}]}"#);
        assert!(!passes("{ json = \"/n\", eq = 9007199254740992 }", &big));
        assert!(passes("{ json = \"/n\", ne = 9007199254740992 }", &big));
        assert!(!passes("{ json = \"/n\", le = 9007199254740992 }", &big));
        assert!(passes("{ json = \"/n\", gt = 9007199254740992 }", &big));
        assert!(passes("{ json = \"/n\", eq = 9007199254740993 }", &big));
        assert!(passes(
            "{ json = \"/list\", eq = [1.0, { x = 2.0 }] }",
            &big
        ));
        assert!(!passes("{ json = \"/list\", eq = [1.0, { x = 3 }] }", &big));
        let u = outcome(Some(0), r#"{"u":18446744073709551615}"#);
        assert!(passes("{ json = \"/u\", gt = 9223372036854775807 }", &u));
    }

    #[test]
    fn score_gate_shape_and_bad_gates() {
        let g = gate("{ score = \"flip\", reference = \"ref.png\", max = 0.05 }").unwrap();
        match &g {
            Gate::Score {
                metric,
                test,
                bound,
                ..
            } => {
                assert_eq!(*metric, ScoreMetric::Flip);
                assert_eq!(test, "{{tasks.t.output.path}}");
                assert_eq!(*bound, ScoreBound::Max(0.05));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            g.check(&ToolOutcome::default(), &TemplateContext::default())
                .is_none()
        );
        for (bad, why) in [
            ("{ matches = \"(\" }", "bad regex"),
            (
                "{ score = \"mse\", reference = \"r\", max = 1 }",
                "unknown score metric",
            ),
            (
                "{ score = \"ssim\", reference = \"r\" }",
                "exactly one of `max` or `min`",
            ),
            ("{ json = \"status\", eq = 1 }", "RFC 6901"),
            ("{ json = \"/a\", eq = 1, ne = 2 }", "exactly one"),
            ("{ exit = 0, contains = \"x\" }", "unexpected key"),
            ("{ exists = true }", "unknown gate"),
            (
                "{ score = \"flip\", reference = \"r\", max = -1 }",
                "`max = -1` can never pass: flip scores from 0 to 1",
            ),
            (
                "{ score = \"ssim\", reference = \"r\", min = 1.5 }",
                "`min = 1.5` can never pass",
            ),
            (
                "{ score = \"msssim\", reference = \"r\", max = -0.5 }",
                "`max = -0.5` can never pass: msssim scores from 0 to 1",
            ),
            // Gates no outcome could ever pass.
            ("{ exit = 300 }", "from 0 to 255"),
            ("{ exit = -1 }", "from 0 to 255"),
            (
                "{ json = \"/a\", lt = true }",
                "compares numbers or strings",
            ),
            ("{ json = \"/a\", ge = [1] }", "compares numbers or strings"),
        ] {
            let err = gate(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
