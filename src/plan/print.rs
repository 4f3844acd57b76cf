//! Printing a plan back to TOML, so a plan that was built or rewritten in code (or stored by
//! the Orchestrator) can be read again by [`Plan::from_toml`].

use std::time::Duration;

use serde_json::Value;
use toml::{Table, Value as Toml};

use super::gate::{Gate, JsonOp, ScoreBound, ScoreMetric};
use super::{Plan, ToolCall};

impl Plan {
    /// The plan as TOML. Defaults are already applied to each task, so every task carries its
    /// own `timeout`, `retries` and `max_attempts` and no `[defaults]` table is written; a score
    /// gate's `test` is written out even when it was the default. Parsing the text gives a plan
    /// with the same tasks, args, gates and graph.
    pub fn to_toml(&self) -> String {
        let mut root = Table::new();
        root.insert("name".into(), Toml::String(self.name.clone()));
        let tasks = self
            .tasks
            .iter()
            .map(|task| {
                let mut t = Table::new();
                t.insert("id".into(), Toml::String(task.id.to_string()));
                t.insert("tool".into(), Toml::String(task.tool.to_string()));
                if !is_empty_object(&task.args) {
                    t.insert("args".into(), json_to_toml(&task.args));
                }
                if !task.deps.is_empty() {
                    let deps = task.deps.iter().map(|d| Toml::String(d.to_string()));
                    t.insert("deps".into(), Toml::Array(deps.collect()));
                }
                if let Some(timeout) = task.timeout {
                    t.insert("timeout".into(), duration(timeout));
                }
                if let Some(estimate) = task.estimate {
                    t.insert("estimate".into(), duration(estimate));
                }
                t.insert("retries".into(), Toml::Integer(task.retries.into()));
                t.insert(
                    "max_attempts".into(),
                    Toml::Integer(task.max_attempts.into()),
                );
                if !task.gates.is_empty() {
                    let gates = task.gates.iter().map(|g| Toml::Table(gate_table(g)));
                    t.insert("gates".into(), Toml::Array(gates.collect()));
                }
                if let Some(call) = &task.compensate {
                    t.insert("compensate".into(), Toml::Table(call_table(call)));
                }
                if task.cacheable {
                    t.insert("cacheable".into(), Toml::Boolean(true));
                }
                if let Some(outputs) = &task.outputs {
                    let names = outputs.iter().map(|o| Toml::String(o.clone()));
                    t.insert("outputs".into(), Toml::Array(names.collect()));
                }
                Toml::Table(t)
            })
            .collect();
        root.insert("task".into(), Toml::Array(tasks));
        root.to_string()
    }
}

fn is_empty_object(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.is_empty())
}

fn duration(d: Duration) -> Toml {
    Toml::String(humantime::format_duration(d).to_string())
}

fn call_table(call: &ToolCall) -> Table {
    let mut t = Table::new();
    t.insert("tool".into(), Toml::String(call.tool.to_string()));
    if !is_empty_object(&call.args) {
        t.insert("args".into(), json_to_toml(&call.args));
    }
    t
}

fn gate_table(gate: &Gate) -> Table {
    let mut t = Table::new();
    let mut put = |k: &str, v: Toml| {
        t.insert(k.to_owned(), v);
    };
    match gate {
        Gate::ExitStatus { equals } => put("exit", Toml::Integer((*equals).into())),
        Gate::OutputContains { text } => put("contains", Toml::String(text.clone())),
        Gate::OutputMatches { regex } => put("matches", Toml::String(regex.as_str().to_owned())),
        Gate::JsonField { pointer, op } => {
            put("json", Toml::String(pointer.clone()));
            let (key, value) = match op {
                JsonOp::Eq(v) => ("eq", json_to_toml(v)),
                JsonOp::Ne(v) => ("ne", json_to_toml(v)),
                JsonOp::Lt(v) => ("lt", json_to_toml(v)),
                JsonOp::Le(v) => ("le", json_to_toml(v)),
                JsonOp::Gt(v) => ("gt", json_to_toml(v)),
                JsonOp::Ge(v) => ("ge", json_to_toml(v)),
                JsonOp::Exists(b) => ("exists", Toml::Boolean(*b)),
            };
            put(key, value);
        }
        Gate::FileExists { path } => put("file_exists", Toml::String(path.clone())),
        Gate::Score {
            metric,
            reference,
            test,
            bound,
        } => {
            let name = match metric {
                ScoreMetric::Flip => "flip",
                ScoreMetric::HdrFlip => "hdr-flip",
                ScoreMetric::Ssim => "ssim",
                ScoreMetric::MsSsim => "msssim",
                ScoreMetric::Psnr => "psnr",
            };
            put("score", Toml::String(name.to_owned()));
            put("reference", Toml::String(reference.clone()));
            put("test", Toml::String(test.clone()));
            match bound {
                ScoreBound::Max(v) => put("max", Toml::Float(*v)),
                ScoreBound::Min(v) => put("min", Toml::Float(*v)),
            }
        }
    }
    t
}

/// JSON back to TOML. Plan values come from TOML, so they hold no nulls; a null (only possible in
/// a plan edited in code) is written as an empty string because TOML has no null.
fn json_to_toml(value: &Value) -> Toml {
    match value {
        Value::Null => Toml::String(String::new()),
        Value::Bool(b) => Toml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Toml::Integer(i),
            None => Toml::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Toml::String(s.clone()),
        Value::Array(items) => Toml::Array(items.iter().map(json_to_toml).collect()),
        Value::Object(map) => Toml::Table(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_toml(v)))
                .collect(),
        ),
    }
}
