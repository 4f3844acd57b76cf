//! The agents' tracing spans: one `run` span, a `task` span per attempt under it with the plan,
//! run and task ids, and the Optimizer's `context`, the Executor's `tool_call` and the Reviewer's
//! `review` spans under each attempt, with the outcome recorded when the verdict arrives.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use serde_json::Value;
use tetrarch::agents::{ActorsConfig, RunOptions, RunStatus, Runtime, RuntimeOptions};
use tetrarch::plan::Plan;
use tetrarch::session::{NativeRegistry, PoolDef, PoolKind};
use tetrarch::store::{Store, StoreConfig};
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span as the layer saw it: a number unique in the process (registry ids are reused), its
/// parent's number, its name and fields.
#[derive(Debug, Clone)]
struct SeenSpan {
    seq: u64,
    parent: Option<u64>,
    name: String,
    fields: HashMap<String, String>,
    closed: bool,
}

#[derive(Default)]
struct Capture {
    spans: Mutex<Vec<SeenSpan>>,
    next: Mutex<u64>,
}

struct Seq(u64);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").replace('"', ""),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

struct CaptureLayer(Arc<Capture>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for CaptureLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        if !span.metadata().target().starts_with("tetrarch") {
            return;
        }
        let seq = {
            let mut next = self.0.next.lock();
            *next += 1;
            *next
        };
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Seq>().map(|s| s.0));
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        span.extensions_mut().insert(Seq(seq));
        self.0.spans.lock().push(SeenSpan {
            seq,
            parent,
            name: span.name().to_owned(),
            fields,
            closed: false,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(seq) = ctx
            .span(id)
            .and_then(|s| s.extensions().get::<Seq>().map(|s| s.0))
        else {
            return;
        };
        let mut spans = self.0.spans.lock();
        let seen = spans.iter_mut().find(|s| s.seq == seq).unwrap();
        values.record(&mut Fields(&mut seen.fields));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(seq) = ctx
            .span(&id)
            .and_then(|s| s.extensions().get::<Seq>().map(|s| s.0))
        else {
            return;
        };
        let mut spans = self.0.spans.lock();
        spans.iter_mut().find(|s| s.seq == seq).unwrap().closed = true;
    }
}

/// The layer is process-wide (agents run on every worker thread), so it is installed once.
fn capture() -> Arc<Capture> {
    static CAPTURE: OnceLock<Arc<Capture>> = OnceLock::new();
    Arc::clone(CAPTURE.get_or_init(|| {
        let capture = Arc::new(Capture::default());
        let subscriber = tracing_subscriber::registry().with(CaptureLayer(Arc::clone(&capture)));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        capture
    }))
}

const PLAN: &str = r#"
name = "traced"
[[task]]
id = "fetch"
tool = "fn.echo"
args = { words = 1 }
[[task]]
id = "draft"
tool = "fn.echo"
deps = ["fetch"]
max_attempts = 3
args = { words = "{{attempt}}", context = "{{context}}" }
gates = [{ json = "/words", ge = 2 }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_attempt_is_a_task_span_under_the_run_with_the_agents_spans_inside() {
    let capture = capture();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let mut natives = NativeRegistry::new();
    natives.register("echo", |args: Value| async move { Ok(args) });
    let mut actors = ActorsConfig::embedded().unwrap();
    actors.executor.pools.remove("scorer");
    actors
        .executor
        .pools
        .insert("fn".to_owned(), PoolDef::new(PoolKind::Native));
    let mut options = RuntimeOptions::new(store, actors);
    options.natives = natives;
    let runtime = Runtime::start(options).await.unwrap();
    let plan = Plan::from_toml(PLAN, "traced.toml").unwrap();
    let report = runtime
        .run(
            plan,
            RunOptions {
                base_dir: dir.path().to_path_buf(),
                ..RunOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Complete);
    runtime.shutdown().await;

    let spans = capture.spans.lock().clone();
    let runs: Vec<&SeenSpan> = spans.iter().filter(|s| s.name == "run").collect();
    assert_eq!(runs.len(), 1, "{spans:#?}");
    let run = runs[0];
    assert_eq!(run.fields["plan"], "traced");
    assert_eq!(run.fields["run"], report.run_id);
    assert_eq!(run.fields["status"], "complete");
    assert!(run.closed, "the run span stays open after the run");

    let tasks: Vec<&SeenSpan> = spans.iter().filter(|s| s.name == "task").collect();
    // fetch once; draft twice (the gate fails on attempt 1, passes on 2).
    assert_eq!(tasks.len(), 3, "{tasks:#?}");
    for task in &tasks {
        assert_eq!(task.parent, Some(run.seq), "{task:?} is not under the run");
        assert_eq!(task.fields["plan"], "traced");
        assert_eq!(task.fields["run"], report.run_id);
        assert!(task.closed, "{task:?} never closed");
        let children: Vec<&str> = spans
            .iter()
            .filter(|s| s.parent == Some(task.seq))
            .map(|s| s.name.as_str())
            .collect();
        assert!(children.contains(&"tool_call"), "{task:?}: {children:?}");
        assert!(children.contains(&"review"), "{task:?}: {children:?}");
        let wants_context = task.fields["task"] == "draft";
        assert_eq!(children.contains(&"context"), wants_context, "{task:?}");
    }
    let outcomes: Vec<(String, String, String)> = tasks
        .iter()
        .map(|t| {
            (
                t.fields["task"].clone(),
                t.fields["attempt"].clone(),
                t.fields["outcome"].clone(),
            )
        })
        .collect();
    for expected in [
        ("fetch", "1", "pass"),
        ("draft", "1", "gate_failed"),
        ("draft", "2", "pass"),
    ] {
        assert!(
            outcomes
                .iter()
                .any(|(t, a, o)| (t.as_str(), a.as_str(), o.as_str()) == expected),
            "{expected:?} not in {outcomes:?}"
        );
    }
    let calls: Vec<&SeenSpan> = spans.iter().filter(|s| s.name == "tool_call").collect();
    assert!(
        calls
            .iter()
            .all(|c| c.fields["pool"] == "fn" && c.fields["tool"] == "echo"),
        "{calls:#?}"
    );
}
