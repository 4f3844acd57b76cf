//! Printing a plan back to TOML, so a plan that was built or rewritten in code (or stored by
//! the Orchestrator) can be read again by [`Plan::from_toml`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use toml::{Table, Value as Toml};

use super::gate::{Gate, JsonOp, ScoreBound, ScoreMetric};
use super::{Fix, Plan, ToolCall};
use crate::session::PoolDef;

impl Plan {
    /// The plan as TOML. Defaults are already applied to each task, so every task carries its
    /// own `timeout`, `retries` and `max_attempts` and no `[defaults]` table is written; a score
    /// gate's `test` and each pool's settings are written out even when they were defaults.
    /// Parsing the text gives a plan with the same tasks (args, gates, fixes, context files),
    /// graph, pools and permissions file. Paths are written as they were given (relative ones
    /// still resolve against the folder of the file the text is saved in); a path that is not
    /// UTF-8 is written lossily.
    pub fn to_toml(&self) -> String {
        let mut root = Table::new();
        root.insert("name".into(), Toml::String(self.name.clone()));
        if let Some(permissions) = &self.permissions {
            root.insert("permissions".into(), path(permissions));
        }
        if !self.pools.is_empty() {
            let pools = self
                .pools
                .iter()
                .map(|(name, def)| (name.clone(), Toml::Table(pool_table(def))));
            root.insert("pools".into(), Toml::Table(pools.collect()));
        }
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
                if !task.fixes.is_empty() {
                    let fixes = task.fixes.iter().map(|f| Toml::Table(fix_table(f)));
                    t.insert("fixes".into(), Toml::Array(fixes.collect()));
                }
                if !task.context_files.is_empty() {
                    let files = task.context_files.iter().map(|f| path(f));
                    t.insert("context_files".into(), Toml::Array(files.collect()));
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

fn path(p: &Path) -> Toml {
    Toml::String(p.to_string_lossy().into_owned())
}

fn strings<'a>(items: impl IntoIterator<Item = &'a String>) -> Toml {
    Toml::Array(items.into_iter().cloned().map(Toml::String).collect())
}

fn string_table(map: &BTreeMap<String, String>) -> Toml {
    let entries = map
        .iter()
        .map(|(k, v)| (k.clone(), Toml::String(v.clone())));
    Toml::Table(entries.collect())
}

fn count(n: usize) -> Toml {
    Toml::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn fix_table(fix: &Fix) -> Table {
    let mut t = Table::new();
    t.insert("when".into(), Toml::String(fix.when.as_str().to_owned()));
    if !fix.args.is_empty() {
        t.insert(
            "args".into(),
            json_to_toml(&Value::Object(fix.args.clone())),
        );
    }
    if !fix.env.is_empty() {
        t.insert("env".into(), string_table(&fix.env));
    }
    t
}

fn pool_table(def: &PoolDef) -> Table {
    let mut t = Table::new();
    t.insert("kind".into(), Toml::String(def.kind.as_str().to_owned()));
    t.insert("command".into(), strings(&def.command));
    if let Some(cwd) = &def.cwd {
        t.insert("cwd".into(), path(cwd));
    }
    t.insert("env_allowlist".into(), strings(&def.env_allowlist));
    t.insert("env".into(), string_table(&def.env));
    t.insert("min_idle".into(), count(def.min_idle));
    t.insert("max_size".into(), count(def.max_size));
    t.insert("acquire_timeout".into(), duration(def.acquire_timeout));
    t.insert("start_timeout".into(), duration(def.start_timeout));
    t.insert("call_timeout".into(), duration(def.call_timeout));
    t.insert("idle_timeout".into(), duration(def.idle_timeout));
    t.insert(
        "health_check_interval".into(),
        duration(def.health_check_interval),
    );
    t.insert(
        "health_check_timeout".into(),
        duration(def.health_check_timeout),
    );
    if let Some(device) = &def.device {
        t.insert("device".into(), Toml::String(device.clone()));
    }
    if let Some(warmup) = &def.warmup {
        let mut w = Table::new();
        w.insert("tool".into(), Toml::String(warmup.tool.clone()));
        w.insert("args".into(), json_to_toml(&warmup.args));
        w.insert("calls".into(), Toml::Integer(warmup.calls.into()));
        t.insert("warmup".into(), Toml::Table(w));
    }
    if let Some([width, height]) = def.warmup_size {
        t.insert(
            "warmup_size".into(),
            Toml::Array(vec![count(width), count(height)]),
        );
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
