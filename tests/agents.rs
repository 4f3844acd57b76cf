//! The supervision tree end to end with native tools: dispatch, templates, gates with feedback,
//! retries, timeouts, rollback, cancellation, restarts of each agent, and the restart limit.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tetrarch::agents::{
    ActorsConfig, AgentError, AgentKind, RunEvent, RunOptions, RunStatus, Runtime, RuntimeOptions,
    TaskState,
};
use tetrarch::plan::Plan;
use tetrarch::session::{NativeRegistry, PoolDef, PoolKind};
use tetrarch::store::{Store, StoreConfig};

/// Every call of every tool: (task label, args).
type CallLog = Arc<Mutex<Vec<(String, Value)>>>;

struct Harness {
    runtime: Runtime,
    calls: CallLog,
    dir: tempfile::TempDir,
}

fn label(args: &Value) -> String {
    args.get("label")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned()
}

async fn harness(tune: impl FnOnce(&mut ActorsConfig)) -> Harness {
    harness_in(tempfile::tempdir().unwrap(), tune).await
}

/// A harness on the store in `dir` (a new one, or one a harness shut down left).
async fn harness_in(dir: tempfile::TempDir, tune: impl FnOnce(&mut ActorsConfig)) -> Harness {
    harness_with_tools(dir, tune, |_, _| {}).await
}

/// A harness whose `fn` pool also has the tools `register` adds (given the runtime's store).
async fn harness_with_tools(
    dir: tempfile::TempDir,
    tune: impl FnOnce(&mut ActorsConfig),
    register: impl FnOnce(&mut NativeRegistry, &Store),
) -> Harness {
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let calls: CallLog = Arc::default();
    let mut natives = NativeRegistry::new();
    register(&mut natives, &store);
    let log = Arc::clone(&calls);
    // Echoes its args; sleeps `sleep_ms` first when given.
    natives.register("echo", move |args: Value| {
        let log = Arc::clone(&log);
        async move {
            log.lock().push((label(&args), args.clone()));
            if let Some(ms) = args.get("sleep_ms").and_then(Value::as_u64) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Ok(args)
        }
    });
    let log = Arc::clone(&calls);
    // Fails until it has been called `fail_times` times for its label.
    natives.register("flaky", move |args: Value| {
        let log = Arc::clone(&log);
        async move {
            let me = label(&args);
            let seen = {
                let mut log = log.lock();
                log.push((me.clone(), args.clone()));
                log.iter().filter(|(l, _)| *l == me).count()
            };
            let fail_times = args.get("fail_times").and_then(Value::as_u64).unwrap_or(0);
            if (seen as u64) <= fail_times {
                Err(format!("transient failure {seen}"))
            } else {
                Ok(json!({ "label": me, "calls": seen }))
            }
        }
    });
    let log = Arc::clone(&calls);
    // Returns an object of the fields named in `fields_by_attempt[attempt - 1]`, each with the
    // value of the arg of that name (null when there is none): an output whose fields change
    // from one attempt to the next.
    natives.register("fields", move |args: Value| {
        let log = Arc::clone(&log);
        async move {
            log.lock().push((label(&args), args.clone()));
            let attempt = args.get("attempt").and_then(Value::as_u64).unwrap_or(1);
            let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
            let names = args
                .get("fields_by_attempt")
                .and_then(|lists| lists.get(index))
                .and_then(Value::as_array)
                .ok_or_else(|| format!("no fields for attempt {attempt}"))?;
            let output: serde_json::Map<String, Value> = names
                .iter()
                .filter_map(Value::as_str)
                .map(|name| {
                    (
                        name.to_owned(),
                        args.get(name).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect();
            Ok(Value::Object(output))
        }
    });
    // Blocks its thread for `ms` (a tool that never awaits, which no cancel can cut off).
    natives.register("block", |args: Value| async move {
        let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(ms));
        Ok(args)
    });
    let mut actors = ActorsConfig::embedded().unwrap();
    // No score gates here: skip pre-warming the scorer (slow in a debug build).
    actors.executor.pools.remove("scorer");
    let mut pool = PoolDef::new(PoolKind::Native);
    pool.max_size = 32;
    actors.executor.pools.insert("fn".to_owned(), pool);
    actors.orchestrator.run.retry_backoff = Duration::from_millis(5);
    tune(&mut actors);
    let mut options = RuntimeOptions::new(store, actors);
    options.natives = natives;
    let runtime = Runtime::start(options).await.unwrap();
    Harness {
        runtime,
        calls,
        dir,
    }
}

fn plan(text: &str) -> Plan {
    Plan::from_toml(text, "test.toml").unwrap()
}

fn options() -> RunOptions {
    RunOptions {
        base_dir: std::env::temp_dir(),
        ..RunOptions::default()
    }
}

/// The first event (from now) that `pick` returns something for.
async fn first_event<T>(
    events: &mut tokio::sync::broadcast::Receiver<RunEvent>,
    mut pick: impl FnMut(RunEvent) -> Option<T>,
) -> T {
    loop {
        match events.recv().await {
            Ok(event) => {
                if let Some(found) = pick(event) {
                    return found;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(closed) => panic!("no such event: {closed}"),
        }
    }
}

fn calls_per_label(calls: &CallLog) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (label, _) in calls.lock().iter() {
        *counts.entry(label.clone()).or_default() += 1;
    }
    counts
}

const DIAMOND: &str = r#"
name = "diamond"
[[task]]
id = "a"
tool = "fn.echo"
args = { label = "a", value = 2 }
[[task]]
id = "b"
tool = "fn.echo"
deps = ["a"]
args = { label = "b", got = "{{tasks.a.output.value}}" }
[[task]]
id = "c"
tool = "fn.echo"
deps = ["a"]
args = { label = "c", text = "a gave {{tasks.a.output.value}}" }
[[task]]
id = "d"
tool = "fn.echo"
deps = ["b", "c"]
args = { label = "d", from_b = "{{tasks.b.output.got}}", from_c = "{{tasks.c.output.text}}" }
"#;

#[tokio::test]
async fn a_diamond_runs_in_dependency_order_with_outputs_flowing_through_templates() {
    let h = harness(|_| {}).await;
    let mut events = h.runtime.subscribe();
    let report = h.runtime.run(plan(DIAMOND), options()).await.unwrap();
    assert_eq!(
        report.status,
        RunStatus::Complete,
        "{:?}",
        report.problems()
    );
    let d = report.task("d").unwrap().output.clone().unwrap();
    assert_eq!(d["from_b"], json!(2));
    assert_eq!(d["from_c"], json!("a gave 2"));
    let order: Vec<String> = h.calls.lock().iter().map(|(l, _)| l.clone()).collect();
    assert_eq!(order.first().map(String::as_str), Some("a"));
    assert_eq!(order.last().map(String::as_str), Some("d"));
    let mut finished = 0;
    while let Ok(event) = events.try_recv() {
        if let RunEvent::TaskFinished { state, .. } = event {
            assert_eq!(state, TaskState::Complete);
            finished += 1;
        }
    }
    assert_eq!(finished, 4);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn finished_events_carry_the_time_from_dispatch_and_none_for_skipped_tasks() {
    let h = harness(|_| {}).await;
    let mut events = h.runtime.subscribe();
    let text = r#"
name = "timed"
[[task]]
id = "slow"
tool = "fn.echo"
args = { label = "slow", sleep_ms = 30 }
[[task]]
id = "broken"
tool = "fn.flaky"
deps = ["slow"]
args = { label = "broken", fail_times = 9 }
[[task]]
id = "after"
tool = "fn.echo"
deps = ["broken"]
args = { label = "after" }
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let mut elapsed = HashMap::new();
    while let Ok(event) = events.try_recv() {
        if let RunEvent::TaskFinished {
            task, elapsed_us, ..
        } = event
        {
            elapsed.insert(task, elapsed_us);
        }
    }
    let slow = elapsed["slow"].expect("the slow task ran");
    assert!(slow >= 30_000, "slow took {slow} µs from dispatch");
    assert!(elapsed["broken"].is_some(), "{elapsed:?}");
    assert_eq!(elapsed["after"], None, "a skipped task never ran");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_failing_gate_sends_the_task_back_with_the_reviewers_feedback() {
    let h = harness(|_| {}).await;
    let text = r#"
name = "gated"
[[task]]
id = "draft"
tool = "fn.echo"
args = { label = "draft", words = "{{attempt}}", feedback = "{{feedback}}" }
max_attempts = 3
gates = [{ json = "/words", ge = 2 }]
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(
        report.status,
        RunStatus::Complete,
        "{:?}",
        report.problems()
    );
    let draft = report.task("draft").unwrap();
    assert_eq!(draft.attempts, 2);
    {
        let calls = h.calls.lock();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].1["feedback"], json!(""));
        let feedback = calls[1].1["feedback"].as_str().unwrap();
        assert!(feedback.contains("/words"), "feedback: {feedback}");
    }
    h.runtime.shutdown().await;
}

/// `make` declares `path`, `frames` and `previous`; its output has `path` and `previous` (null)
/// on every attempt, and `frames` from attempt `first_complete` on.
fn declared_outputs_plan(max_attempts: u32, first_complete: u32) -> Plan {
    let by_attempt: Vec<&str> = (1..=max_attempts)
        .map(|attempt| {
            if attempt >= first_complete {
                r#"["path", "frames", "previous"]"#
            } else {
                r#"["path", "previous"]"#
            }
        })
        .collect();
    plan(&format!(
        r#"
name = "declared"
[[task]]
id = "make"
tool = "fn.fields"
args = {{ label = "make", attempt = "{{{{attempt}}}}", feedback = "{{{{feedback}}}}", path = "out.png", frames = 24, fields_by_attempt = [{}] }}
outputs = ["path", "frames", "previous"]
max_attempts = {max_attempts}
[[task]]
id = "use"
tool = "fn.echo"
deps = ["make"]
args = {{ label = "use", frames = "{{{{tasks.make.output.frames}}}}" }}
"#,
        by_attempt.join(", ")
    ))
}

#[tokio::test]
async fn an_output_without_a_declared_field_fails_review_and_the_next_attempt_sees_why() {
    let h = harness(|_| {}).await;
    let report = h
        .runtime
        .run(declared_outputs_plan(2, 2), options())
        .await
        .unwrap();
    assert_eq!(
        report.status,
        RunStatus::Complete,
        "{:?}",
        report.problems()
    );
    assert_eq!(report.task("make").unwrap().attempts, 2);
    {
        let calls = h.calls.lock();
        let makes: Vec<&Value> = calls
            .iter()
            .filter(|(l, _)| l == "make")
            .map(|(_, args)| args)
            .collect();
        assert_eq!(makes.len(), 2);
        let feedback = makes[1]["feedback"].as_str().unwrap();
        // `previous` is there (as null): only `frames` is missing.
        assert!(
            feedback.contains(r#"output lacks field "frames" that the task declares"#),
            "feedback: {feedback}"
        );
        let used = calls.iter().find(|(l, _)| l == "use").unwrap();
        assert_eq!(used.1["frames"], json!(24));
    }
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_task_that_never_produces_its_declared_outputs_fails_and_its_dependent_is_skipped() {
    let h = harness(|_| {}).await;
    let report = h
        .runtime
        .run(declared_outputs_plan(1, 2), options())
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let make = report.task("make").unwrap();
    assert_eq!(make.state, TaskState::Failed);
    let reason = make.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains(r#"lacks field "frames""#),
        "reason: {reason}"
    );
    assert_eq!(report.task("use").unwrap().state, TaskState::Skipped);
    assert!(!h.calls.lock().iter().any(|(l, _)| l == "use"));
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn errors_are_retried_with_backoff_up_to_the_limit() {
    let h = harness(|_| {}).await;
    let text = r#"
name = "retries"
[[task]]
id = "recovers"
tool = "fn.flaky"
args = { label = "recovers", fail_times = 2 }
retries = 2
# After `recovers`: failing for good first would stop the run during its backoff.
[[task]]
id = "gives-up"
tool = "fn.flaky"
deps = ["recovers"]
args = { label = "gives-up", fail_times = 5 }
retries = 1
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let recovers = report.task("recovers").unwrap();
    assert_eq!(recovers.state, TaskState::Complete, "{recovers:?}");
    assert_eq!(recovers.retries, 2, "{recovers:?}");
    assert_eq!(calls_per_label(&h.calls)["recovers"], 3);
    let gives_up = report.task("gives-up").unwrap();
    assert_eq!(gives_up.state, TaskState::Failed);
    assert_eq!(gives_up.retries, 1);
    assert!(
        gives_up
            .reason
            .as_deref()
            .unwrap()
            .contains("transient failure 2"),
        "{gives_up:?}"
    );
    assert_eq!(calls_per_label(&h.calls)["gives-up"], 2);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_task_past_its_timeout_is_cancelled_and_fails_with_the_reason() {
    let h = harness(|_| {}).await;
    let text = r#"
name = "timeout"
[[task]]
id = "slow"
tool = "fn.echo"
args = { label = "slow", sleep_ms = 5000 }
timeout = "50ms"
"#;
    let started = std::time::Instant::now();
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    let slow = report.task("slow").unwrap();
    assert_eq!(slow.state, TaskState::Failed);
    assert!(
        slow.reason.as_deref().unwrap().contains("timed out"),
        "{slow:?}"
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn tasks_queued_behind_a_busy_pool_wait_their_turn_past_its_acquire_timeout() {
    // One session, a 50 ms acquire timeout, four independent 200 ms tasks: the last one waits
    // about 600 ms for the session, twelve times the acquire timeout, and must still run.
    let h = harness(|actors| {
        let mut pool = PoolDef::new(PoolKind::Native);
        pool.max_size = 1;
        pool.min_idle = 1;
        pool.acquire_timeout = Duration::from_millis(50);
        actors.executor.pools.insert("one".to_owned(), pool);
    })
    .await;
    let mut text = String::from("name = \"queued\"\n");
    for i in 0..4 {
        text.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ntool = \"one.echo\"\nargs = {{ label = \"t{i}\", sleep_ms = 200 }}\n"
        ));
    }
    let started = std::time::Instant::now();
    let report = h.runtime.run(plan(&text), options()).await.unwrap();
    assert_eq!(report.status, RunStatus::Complete, "{report:?}");
    // They ran one at a time, through the single session.
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(calls_per_label(&h.calls).len(), 4);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn unknown_tools_and_pools_are_refused_before_anything_runs() {
    let h = harness(|_| {}).await;
    let text = r#"
name = "typos"
[[task]]
id = "first"
tool = "fn.echo"
args = { label = "first" }
[[task]]
id = "second"
tool = "fn.ecko"
deps = ["first"]
args = { label = "second" }
compensate = { tool = "nowhere.undo", args = {} }
"#;
    let error = h.runtime.run(plan(text), options()).await.unwrap_err();
    let AgentError::Plan(plan_error) = &error else {
        panic!("not a plan error: {error}");
    };
    let lines = plan_error.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0]
            .starts_with("test.toml:9:8: task \"second\" tool: pool \"fn\" has no tool \"ecko\"")
            && lines[0].contains("echo"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("task \"second\" compensate.tool: unknown pool \"nowhere\""),
        "{lines:?}"
    );
    // Nothing ran, not even the task whose tool exists.
    assert!(h.calls.lock().is_empty());
    h.runtime.shutdown().await;
}

/// The pool `sh` is configured (so the plan parses without a catalogue), and the plan's own
/// MCP pool would leave a file if it were started: the run is refused before any pool starts.
#[tokio::test]
async fn a_process_calls_unknown_arg_keys_are_refused_before_anything_runs() {
    let marker = tempfile::tempdir().unwrap();
    let started = marker.path().join("started");
    let h = harness(|actors| {
        let mut sh = PoolDef::new(PoolKind::Process);
        sh.command = vec!["sh".into(), "-c".into()];
        actors.executor.pools.insert("sh".to_owned(), sh);
    })
    .await;
    let server = format!(
        r#"
name = "process-typos"
[pools.srv]
kind = "mcp"
command = ["sh", "-c", "touch '{}'; sleep 30"]
start_timeout = "3s"
[[task]]
id = "served"
tool = "srv.x"
"#,
        started.display()
    );
    let text = server
        + r#"
[[task]]
id = "first"
tool = "fn.echo"
args = { label = "first", anything = 1 }
[[task]]
id = "typo"
tool = "sh.run"
deps = ["first"]
args = { arg = ["echo typo"] }
fixes = [{ when = "x", env = { A = "1" } }, { when = "y", args = { argvv = ["z"] } }]
compensate = { tool = "sh.undo", args = "echo undo" }
"#;
    let error = h.runtime.run(plan(&text), options()).await.unwrap_err();
    let AgentError::Plan(plan_error) = &error else {
        panic!("not a plan error: {error}");
    };
    assert!(!started.exists(), "the plan's own pool was started");
    let lines = plan_error.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].ends_with(
            "task \"typo\" tool args: unknown key `arg` for a process call (expected argv, stdin, env)"
        ),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("fixes[1] args: unknown key `argvv`"),
        "{lines:?}"
    );
    assert!(
        lines[2].contains("compensate args: a process call's args are a table"),
        "{lines:?}"
    );
    // A native tool's args are its own business; nothing ran.
    assert!(h.calls.lock().is_empty());
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn runs_whose_plans_declare_a_pool_of_the_same_name_each_use_their_own() {
    let h = harness(|_| {}).await;
    // Each plan declares pool `own`; the second run starts while the first still needs its pool.
    let text = |name: &str| {
        format!(
            r#"
name = "{name}"
[pools.own]
kind = "native"
max_size = 1
[[task]]
id = "first"
tool = "own.echo"
args = {{ label = "{name}-first", sleep_ms = 300 }}
[[task]]
id = "second"
tool = "own.echo"
deps = ["first"]
args = {{ label = "{name}-second" }}
"#
        )
    };
    let runtime = &h.runtime;
    let one = runtime.run(plan(&text("one")), options());
    let two = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        runtime.run(plan(&text("two")), options()).await
    };
    let (one, two) = tokio::join!(one, two);
    for report in [one.unwrap(), two.unwrap()] {
        assert_eq!(
            report.status,
            RunStatus::Complete,
            "{:?}",
            report.problems()
        );
    }
    // A run's pools close with it.
    assert!(
        !runtime.pool_stats().iter().any(|(name, _)| name == "own"),
        "{:?}",
        runtime.pool_stats()
    );
    // Their last counts stay (the last run's: its two calls), holding no session.
    let ended = runtime.ended_pool_stats();
    let (_, own) = ended.iter().find(|(name, _)| name == "own").unwrap();
    assert_eq!((own.acquired, own.size, own.in_use), (2, 0, 0), "{ended:?}");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_run_cancelled_before_it_starts_runs_nothing_and_reports_cancelled() {
    let h = harness(|_| {}).await;
    // As `tetrarch run` does on a Ctrl-C while the plan's pools are still starting.
    h.runtime.cancel("early").await.unwrap();
    let run = RunOptions {
        run_id: Some("early".to_owned()),
        ..options()
    };
    let report = h.runtime.run(plan(DIAMOND), run).await.unwrap();
    assert_eq!(report.status, RunStatus::Cancelled);
    assert!(
        report.tasks.iter().all(|t| t.state == TaskState::Skipped),
        "{report:?}"
    );
    assert!(h.calls.lock().is_empty());
    // Another run is not affected.
    let report = h.runtime.run(plan(DIAMOND), options()).await.unwrap();
    assert_eq!(report.status, RunStatus::Complete);
    h.runtime.shutdown().await;
}

/// A run cancelled once, its id used again by a new run (not a resume): the new run's attempts
/// are its own, not the cancelled run's, and run.
#[tokio::test]
async fn a_new_run_of_a_cancelled_runs_id_runs_its_tasks() {
    let h = harness(|_| {}).await;
    h.runtime.cancel("nightly").await.unwrap();
    let run = RunOptions {
        run_id: Some("nightly".to_owned()),
        ..options()
    };
    let report = h.runtime.run(plan(DIAMOND), run.clone()).await.unwrap();
    assert_eq!(report.status, RunStatus::Cancelled);
    let again = tokio::time::timeout(Duration::from_secs(30), h.runtime.run(plan(DIAMOND), run))
        .await
        .expect("the new run of the id never ended")
        .unwrap();
    assert_eq!(again.status, RunStatus::Complete, "{again:?}");
    assert_eq!(h.calls.lock().len(), 4);
    h.runtime.shutdown().await;

    // A run of a cancelled id that fails with many attempts still on their way: those end as
    // not started, and the run ends.
    let h = harness(|actors| actors.orchestrator.run.max_in_flight = 1000).await;
    h.runtime.cancel("again").await.unwrap();
    let run = RunOptions {
        run_id: Some("again".to_owned()),
        ..options()
    };
    let report = h.runtime.run(plan(DIAMOND), run.clone()).await.unwrap();
    assert_eq!(report.status, RunStatus::Cancelled);
    let mut text = String::from(
        "name = \"failing\"\n[[task]]\nid = \"bad\"\ntool = \"fn.flaky\"\n\
         args = { label = \"bad\", fail_times = 100 }\n",
    );
    for i in 0..300 {
        text.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ntool = \"fn.echo\"\nargs = {{ label = \"t{i}\", context = \"{{{{context}}}}\" }}\n"
        ));
    }
    let failed = tokio::time::timeout(Duration::from_secs(60), h.runtime.run(plan(&text), run))
        .await
        .expect("the failing run of the id never ended")
        .unwrap();
    assert_eq!(failed.status, RunStatus::Failed, "{failed:?}");
    h.runtime.shutdown().await;
}

/// A plan of one task whose pool's MCP server never answers its handshake (`sleep`): the run
/// stays in its start, as while a tool server builds, until `sleep` exits.
fn plan_with_a_pool_that_starts_for(seconds: u32) -> Plan {
    plan(&format!(
        r#"
name = "slow-pool"
[pools.slow]
kind = "mcp"
command = ["sleep", "{seconds}"]
env_allowlist = ["PATH"]
min_idle = 1
max_size = 1
start_timeout = "1m"
[[task]]
id = "create"
tool = "fn.echo"
args = {{ label = "create" }}
compensate = {{ tool = "fn.echo", args = {{ label = "undo-create" }} }}
[[task]]
id = "call"
tool = "slow.echo"
deps = ["create"]
args = {{ label = "call" }}
"#
    ))
}

#[tokio::test]
async fn a_run_cancelled_while_its_pools_start_stops_the_start_and_runs_nothing() {
    let h = harness(|_| {}).await;
    let run = RunOptions {
        run_id: Some("starting".to_owned()),
        ..options()
    };
    let started = std::time::Instant::now();
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.runtime.cancel("starting").await.unwrap();
    };
    let (report, ()) = tokio::join!(
        h.runtime.run(plan_with_a_pool_that_starts_for(30), run),
        cancel
    );
    // Answered at the cancel, not when `sleep` exits (30 s) or the start times out (1 min).
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "answered after {took:?}");
    let report = report.unwrap();
    assert_eq!(report.status, RunStatus::Cancelled);
    assert!(
        report.tasks.iter().all(|t| t.state == TaskState::Skipped),
        "{report:?}"
    );
    assert!(h.calls.lock().is_empty());
    h.runtime.shutdown().await;
}

// Worker threads: the first runtime's shutdown goes on while the run's task waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_cancelled_while_its_pools_start_waits_for_them_to_undo_its_work() {
    // The first process completes `create` and stops (its restart limit: the tree stops, nothing
    // is rolled back) while `call` runs.
    let Harness {
        runtime,
        calls,
        dir,
    } = harness(|actors| {
        actors.reviewer.restart.max_restarts = 0;
    })
    .await;
    let first = RunOptions {
        run_id: Some("resumed".to_owned()),
        ..options()
    };
    let plan_text = r#"
name = "slow-pool"
[[task]]
id = "create"
tool = "fn.echo"
args = { label = "create" }
compensate = { tool = "fn.echo", args = { label = "undo-create" } }
[[task]]
id = "call"
tool = "fn.echo"
deps = ["create"]
args = { label = "call", sleep_ms = 30000 }
"#;
    let stop = async {
        while calls.lock().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        runtime.inject_fault(AgentKind::Reviewer).unwrap();
    };
    let (answered, ()) = tokio::join!(runtime.run(plan(plan_text), first), stop);
    assert!(
        matches!(answered, Err(AgentError::IntensityExceeded { .. })),
        "{:?}",
        answered.map(|r| r.status)
    );
    runtime.shutdown().await;
    // The next process resumes it, and is cancelled while a pool starts: `create` has to be
    // undone, which needs the run's pools, so their start is waited for: it fails when `sleep`
    // exits (a fresh run would have been answered at the cancel, cancelled).
    let h = harness_in(dir, |_| {}).await;
    let resume = RunOptions {
        run_id: Some("resumed".to_owned()),
        resume: true,
        ..options()
    };
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.runtime.cancel("resumed").await.unwrap();
    };
    let (outcome, ()) = tokio::join!(
        h.runtime.run(plan_with_a_pool_that_starts_for(2), resume),
        cancel
    );
    let error = outcome.expect_err("the start was waited for, and failed");
    assert!(
        error.to_string().contains("pool \"slow\" could not start")
            && error.to_string().contains("failed to initialize"),
        "{error}"
    );
    h.runtime.shutdown().await;
}

const ROLLBACK: &str = r#"
name = "rollback"
[[task]]
id = "create"
tool = "fn.echo"
args = { label = "create", id = 7 }
compensate = { tool = "fn.echo", args = { label = "undo-create", id = "{{tasks.create.output.id}}" } }
[[task]]
id = "configure"
tool = "fn.echo"
deps = ["create"]
args = { label = "configure" }
compensate = { tool = "fn.echo", args = { label = "undo-configure" } }
[[task]]
id = "publish"
tool = "fn.flaky"
deps = ["configure"]
args = { label = "publish", fail_times = 9 }
[[task]]
id = "announce"
tool = "fn.echo"
deps = ["publish"]
args = { label = "announce" }
"#;

#[tokio::test]
async fn a_failure_skips_dependents_and_compensates_in_reverse_order() {
    let h = harness(|_| {}).await;
    let report = h.runtime.run(plan(ROLLBACK), options()).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.task("publish").unwrap().state, TaskState::Failed);
    assert_eq!(report.task("announce").unwrap().state, TaskState::Skipped);
    assert_eq!(report.task("create").unwrap().state, TaskState::Compensated);
    assert_eq!(
        report.task("configure").unwrap().state,
        TaskState::Compensated
    );
    let undone: Vec<&str> = report
        .compensations
        .iter()
        .map(|c| c.task.as_str())
        .collect();
    assert_eq!(undone, ["configure", "create"]);
    assert!(report.compensations.iter().all(|c| c.ok));
    {
        let calls = h.calls.lock();
        let undo = calls.iter().find(|(l, _)| l == "undo-create").unwrap();
        assert_eq!(undo.1["id"], json!(7));
    }
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn an_orchestrator_panic_during_a_rollback_finishes_the_rollback_and_runs_no_task_again() {
    let h = harness(|_| {}).await;
    // `publish` fails once only: were the resumed run to dispatch it again, it would pass and
    // the run would end COMPLETE after half a rollback.
    let text = r#"
name = "rollback-resume"
[[task]]
id = "create"
tool = "fn.echo"
args = { label = "create" }
compensate = { tool = "fn.echo", args = { label = "undo-create", sleep_ms = 300 } }
[[task]]
id = "publish"
tool = "fn.flaky"
deps = ["create"]
args = { label = "publish", fail_times = 1 }
[[task]]
id = "announce"
tool = "fn.echo"
deps = ["publish"]
args = { label = "announce" }
"#;
    let runtime = &h.runtime;
    let calls = Arc::clone(&h.calls);
    let run = runtime.run(plan(text), options());
    let crash = async {
        // Crash the Orchestrator while the compensation is in flight.
        while !calls.lock().iter().any(|(l, _)| l == "undo-create") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        runtime.inject_fault(AgentKind::Orchestrator).unwrap();
    };
    let (report, ()) = tokio::join!(run, crash);
    let report = report.unwrap();
    assert_eq!(report.status, RunStatus::Failed, "{:?}", report.problems());
    assert_eq!(runtime.restarts(AgentKind::Orchestrator), 1);
    assert_eq!(report.task("publish").unwrap().state, TaskState::Failed);
    assert!(
        report
            .task("publish")
            .unwrap()
            .reason
            .as_deref()
            .unwrap()
            .contains("transient failure 1"),
        "{:?}",
        report.task("publish")
    );
    assert_eq!(report.task("announce").unwrap().state, TaskState::Skipped);
    assert_eq!(report.task("create").unwrap().state, TaskState::Compensated);
    let counts = calls_per_label(&h.calls);
    assert_eq!(counts.get("create"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("publish"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("announce"), None, "{counts:?}");
    // The compensation in flight at the crash runs again in the resumed rollback
    // (at-least-once, like any attempt in flight).
    assert_eq!(counts.get("undo-create"), Some(&2), "{counts:?}");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn cancelling_stops_calls_in_flight_and_compensates() {
    let h = harness(|_| {}).await;
    let text = r#"
name = "cancel"
[[task]]
id = "quick"
tool = "fn.echo"
args = { label = "quick" }
compensate = { tool = "fn.echo", args = { label = "undo-quick" } }
[[task]]
id = "long"
tool = "fn.echo"
deps = ["quick"]
args = { label = "long", sleep_ms = 10000 }
"#;
    let mut events = h.runtime.subscribe();
    let runtime = &h.runtime;
    let run = runtime.run(plan(text), options());
    let cancel = async {
        let run_id = first_event(&mut events, |event| match event {
            RunEvent::TaskStarted { run_id, task, .. } if task == "long" => Some(run_id),
            _ => None,
        })
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        runtime.cancel(&run_id).await.unwrap();
    };
    let (report, ()) = tokio::join!(run, cancel);
    let report = report.unwrap();
    assert_eq!(report.status, RunStatus::Cancelled);
    assert_eq!(report.task("long").unwrap().state, TaskState::Cancelled);
    assert_eq!(report.task("quick").unwrap().state, TaskState::Compensated);
    assert!(report.duration < Duration::from_secs(5));
    h.runtime.shutdown().await;
}

/// A chain of `tasks` echo tasks, each passing on its upstream's `trail` with its own label
/// added: the last output names every task, so an output lost to a crash shows.
fn chain_plan(tasks: usize) -> String {
    let mut text = String::from("name = \"chain\"\n");
    for i in 0..tasks {
        let trail = if i == 0 {
            "t0".to_owned()
        } else {
            format!("{{{{tasks.t{}.output.trail}}}},t{i}", i - 1)
        };
        text.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ntool = \"fn.echo\"\n\
             args = {{ label = \"t{i}\", sleep_ms = 15, trail = \"{trail}\" }}\n"
        ));
        if i > 0 {
            text.push_str(&format!("deps = [\"t{}\"]\n", i - 1));
        }
    }
    text
}

/// Panics `agent` while a chain of tasks runs; the run must still complete with every task run
/// once, except at most the one in flight at the crash (at-least-once), never a completed one,
/// and with every completed task's output (each task reads its upstream's).
async fn crash_during_a_run(agent: AgentKind) {
    let h = harness(|_| {}).await;
    let mut events = h.runtime.subscribe();
    let runtime = &h.runtime;
    let completed_at_crash: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&completed_at_crash);
    let run = runtime.run(plan(&chain_plan(12)), options());
    let crash = async move {
        let mut done = Vec::new();
        loop {
            match events.recv().await {
                Ok(RunEvent::TaskFinished { task, state, .. }) => {
                    assert_eq!(state, TaskState::Complete);
                    done.push(task);
                    if done.len() == 4 {
                        *seen.lock() = done.clone();
                        runtime.inject_fault(agent).unwrap();
                    }
                }
                Ok(RunEvent::RunFinished { .. }) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let (report, ()) = tokio::join!(run, crash);
    let report = report.unwrap();
    assert_eq!(
        report.status,
        RunStatus::Complete,
        "{:?}",
        report.problems()
    );
    assert_eq!(h.runtime.restarts(agent), 1);
    // Every output survived: each task read its upstream's.
    let every: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    let last = report.task("t11").and_then(|t| t.output.clone());
    assert_eq!(
        last.as_ref().and_then(|o| o.get("trail")),
        Some(&json!(every.join(","))),
        "{last:?}"
    );
    let counts = calls_per_label(&h.calls);
    for task in completed_at_crash.lock().iter() {
        assert_eq!(
            counts[task], 1,
            "completed task {task} ran again after the crash"
        );
    }
    let reruns: usize = counts.values().map(|c| c - 1).sum();
    assert!(
        reruns <= 1,
        "more than the in-flight task ran twice: {counts:?}"
    );
    assert_eq!(counts.len(), 12);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn an_orchestrator_panic_loses_and_duplicates_no_completed_task() {
    crash_during_a_run(AgentKind::Orchestrator).await;
}

#[tokio::test]
async fn an_optimizer_panic_loses_and_duplicates_no_completed_task() {
    crash_during_a_run(AgentKind::Optimizer).await;
}

#[tokio::test]
async fn an_executor_panic_loses_and_duplicates_no_completed_task() {
    crash_during_a_run(AgentKind::Executor).await;
}

#[tokio::test]
async fn a_reviewer_panic_loses_and_duplicates_no_completed_task() {
    crash_during_a_run(AgentKind::Reviewer).await;
}

/// Injects a panic into `agent` and waits until it has been handled: restarted for the
/// `count`th time, or the runtime stopped.
async fn crash_and_wait(runtime: &Runtime, agent: AgentKind, count: u64) {
    runtime.inject_fault(agent).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while runtime.restarts(agent) < count && runtime.failure().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "crash {count} of {agent} was not handled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Restarts older than the window are forgotten, and each agent counts its own: with one
/// restart allowed in 1 s, another agent's crash in the same second is restarted too, and so is
/// a crash a second after the last; a second crash within the window is past the limit.
#[tokio::test]
async fn restarts_are_counted_per_agent_within_the_window_only() {
    let h = harness(|actors| {
        for restart in [&mut actors.reviewer.restart, &mut actors.executor.restart] {
            restart.max_restarts = 1;
            restart.within = Duration::from_secs(1);
        }
    })
    .await;
    crash_and_wait(&h.runtime, AgentKind::Reviewer, 1).await;
    crash_and_wait(&h.runtime, AgentKind::Executor, 1).await;
    assert!(h.runtime.failure().is_none(), "{:?}", h.runtime.failure());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    crash_and_wait(&h.runtime, AgentKind::Reviewer, 2).await;
    assert!(h.runtime.failure().is_none(), "{:?}", h.runtime.failure());
    assert_eq!(h.runtime.restarts(AgentKind::Reviewer), 2);
    crash_and_wait(&h.runtime, AgentKind::Reviewer, 3).await;
    assert!(
        matches!(
            h.runtime.failure(),
            Some(AgentError::IntensityExceeded {
                agent: AgentKind::Reviewer,
                ..
            })
        ),
        "{:?}",
        h.runtime.failure()
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn restarts_past_the_intensity_limit_stop_the_runtime_with_a_clear_error() {
    let h = harness(|actors| {
        actors.reviewer.restart.max_restarts = 2;
        actors.reviewer.restart.within = Duration::from_secs(60);
    })
    .await;
    // Each crash is injected once the previous one has been handled (polled, not a fixed wait,
    // which a loaded machine can overrun).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for crash in 1..=3 {
        h.runtime.inject_fault(AgentKind::Reviewer).unwrap();
        while h.runtime.restarts(AgentKind::Reviewer) < crash && h.runtime.failure().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "crash {crash} was not handled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let error = h
        .runtime
        .failure()
        .expect("the runtime should have stopped");
    assert!(matches!(
        error,
        AgentError::IntensityExceeded {
            agent: AgentKind::Reviewer,
            restarts: 3,
            ..
        }
    ));
    assert!(
        error.to_string().contains("reviewer restarted 3 times"),
        "{error}"
    );
    let refused = h.runtime.run(plan(DIAMOND), options()).await.unwrap_err();
    assert!(
        matches!(refused, AgentError::IntensityExceeded { .. }),
        "{refused}"
    );
    // Every other call says the same.
    for refused in [
        h.runtime.ping(AgentKind::Executor).await.map(|_| ()),
        h.runtime.cancel("any").await,
        h.runtime.inject_fault(AgentKind::Optimizer),
    ] {
        assert!(
            matches!(refused, Err(AgentError::IntensityExceeded { .. })),
            "{refused:?}"
        );
    }
    h.runtime.shutdown().await;
}

/// The harness's store opened again right after a shutdown (refused while the runtime holds it).
fn reopen_store(dir: &std::path::Path, round: usize) -> Store {
    Store::open(dir.join("store.redb"), StoreConfig::default())
        .unwrap_or_else(|e| panic!("round {round}: reopening right after shutdown: {e}"))
}

// Worker threads: the agents stop on them while the test's task goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_the_store_holds_every_write_and_opens_again_at_once() {
    // A failed task's lesson is written in the background: a shutdown waits for it, and for the
    // agents to let the store go. (A shutdown that returned before its agents had stopped left
    // the file open: about half the reopens right after it were refused as AlreadyOpen.)
    let text = r#"
name = "fails"
[[task]]
id = "broken"
tool = "fn.flaky"
args = { label = "broken", fail_times = 9 }
"#;
    for round in 0..8 {
        let h = harness(|_| {}).await;
        let report = h.runtime.run(plan(text), options()).await.unwrap();
        assert_eq!(report.status, RunStatus::Failed);
        h.runtime.shutdown().await;
        let store = reopen_store(h.dir.path(), round);
        let lessons =
            tetrarch::lessons::Lessons::new(store.clone(), tetrarch::store::Namespace::Global);
        let recorded = lessons.list(10);
        assert_eq!(
            recorded.len(),
            1,
            "round {round}: the failure's lesson was written before shutdown returned"
        );
    }
}

const BLOCKING_TASK: &str = r#"
name = "blocks"
[[task]]
id = "stuck"
tool = "fn.block"
args = { ms = 6000 }
"#;

// A tool blocking a worker thread needs another to run the agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_tool_blocking_its_thread_delays_a_shutdown_by_a_second_at_most() {
    let h = harness(|_| {}).await;
    let runtime = Arc::new(h.runtime);
    let running = Arc::clone(&runtime);
    let run = tokio::spawn(async move { running.run(plan(BLOCKING_TASK), options()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    let runtime = Arc::into_inner(runtime).expect("the run's handle is gone");
    let started = std::time::Instant::now();
    runtime.shutdown().await;
    // Shutdown waits 1 s for the agents' states, and the cancelled call holds the Executor's; it
    // cannot be cut off. (It waited out the supervisor's 10 s and a kill when the Executor waited
    // for its calls unbounded.)
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_restart_limit_stop_answers_a_run_at_once_while_a_tool_blocks_its_thread() {
    let h = harness(|actors| {
        actors.reviewer.restart.max_restarts = 0;
        actors.reviewer.restart.within = Duration::from_secs(60);
    })
    .await;
    let runtime = Arc::new(h.runtime);
    let running = Arc::clone(&runtime);
    let run = tokio::spawn(async move { running.run(plan(BLOCKING_TASK), options()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    runtime.inject_fault(AgentKind::Reviewer).unwrap();
    // The error comes as the tree stops, not when the slowest agent has stopped (10 s later,
    // behind the blocked call, when the escalation waited for every agent).
    let answered = tokio::time::timeout(Duration::from_secs(4), run)
        .await
        .expect("the run was answered while the tool still blocked")
        .unwrap();
    assert!(
        matches!(answered, Err(AgentError::IntensityExceeded { .. })),
        "{:?}",
        answered.map(|r| r.status)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_limit_stop_a_shutdown_lets_the_store_go() {
    let sleeping = r#"
name = "sleeps"
[[task]]
id = "long"
tool = "fn.echo"
args = { label = "long", sleep_ms = 30000 }
"#;
    // The store was let go late in about one round in eight: the failed agent's state is
    // dropped after its exit event, and a pool's upkeep replacing the cancelled call's session
    // held the pool's context (with the store) a moment longer.
    for round in 0..20 {
        let h = harness(|actors| {
            actors.reviewer.restart.max_restarts = 0;
        })
        .await;
        let runtime = Arc::new(h.runtime);
        let running = Arc::clone(&runtime);
        let run = tokio::spawn(async move { running.run(plan(sleeping), options()).await });
        while h.calls.lock().is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        runtime.inject_fault(AgentKind::Reviewer).unwrap();
        let answered = run.await.unwrap();
        assert!(
            matches!(answered, Err(AgentError::IntensityExceeded { .. })),
            "round {round}: {:?}",
            answered.map(|r| r.status)
        );
        let runtime = Arc::into_inner(runtime).expect("the run's handle is gone");
        runtime.shutdown().await;
        reopen_store(h.dir.path(), round);
    }
}

#[tokio::test]
async fn every_agent_answers_a_round_trip() {
    let h = harness(|_| {}).await;
    for agent in AgentKind::ALL {
        let took = h.runtime.ping(agent).await.unwrap();
        assert!(took < Duration::from_secs(1));
    }
    assert!(
        h.runtime
            .mailbox_depths()
            .iter()
            .all(|(_, depth)| *depth == 0)
    );
    h.runtime.shutdown().await;
}

async fn shell_runtime(approve: bool) -> (Runtime, tempfile::TempDir) {
    let approval: Option<Arc<dyn tetrarch::permissions::ApprovalHandler + Send + Sync>> = approve
        .then(|| {
            Arc::new(tetrarch::permissions::CallbackApproval(
                |call: &tetrarch::permissions::ToolCall, _: &tetrarch::permissions::Decision| {
                    call.input["command"].as_str() == Some("echo asked")
                },
            )) as _
        });
    shell_runtime_with(approval).await
}

/// A runtime with an `sh -c` process pool and, when given, that approval handler.
async fn shell_runtime_with(
    approval: Option<Arc<dyn tetrarch::permissions::ApprovalHandler + Send + Sync>>,
) -> (Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let mut actors = ActorsConfig::embedded().unwrap();
    actors.executor.pools.remove("scorer");
    let mut sh = PoolDef::new(PoolKind::Process);
    sh.command = vec!["sh".to_owned(), "-c".to_owned()];
    actors.executor.pools.insert("sh".to_owned(), sh);
    let mut options = RuntimeOptions::new(store, actors);
    if let Some(approval) = approval {
        options.approval = approval;
    }
    (Runtime::start(options).await.unwrap(), dir)
}

fn with_rules(dir: &std::path::Path, settings: &str) -> RunOptions {
    let path = dir.join("settings.json");
    std::fs::write(&path, settings).unwrap();
    let engine =
        tetrarch::permissions::PermissionEngine::from_settings_json(settings, &path, dir, dir)
            .unwrap();
    RunOptions {
        base_dir: dir.to_path_buf(),
        permissions: Some(Arc::new(engine)),
        ..RunOptions::default()
    }
}

#[tokio::test]
async fn stdin_and_variables_that_render_to_json_values_reach_the_tool_as_text() {
    // `"{{tasks.a.output}}"` renders to the object itself and `"{{attempt}}"` to a number:
    // both were dropped (empty stdin, unset variable) with no error.
    let (runtime, dir) = shell_runtime(false).await;
    let text = r#"
name = "typed"
[[task]]
id = "a"
tool = "sh.run"
args = { argv = ["printf '{\"k\":\"v\",\"port\":8080}'"] }
[[task]]
id = "b"
tool = "sh.run"
deps = ["a"]
args = { argv = ["echo N=$N PORT=$PORT; cat"], stdin = "{{tasks.a.output}}", env = { N = "{{attempt}}", PORT = "{{tasks.a.output.port}}" } }
gates = [{ contains = "N=1 PORT=8080" }, { contains = '"k":"v"' }]
"#;
    let report = runtime
        .run(
            plan(text),
            with_rules(dir.path(), r#"{"permissions": {"allow": ["Bash"]}}"#),
        )
        .await
        .unwrap();
    assert_eq!(
        report.status,
        RunStatus::Complete,
        "{:?}",
        report.problems()
    );
    runtime.shutdown().await;
}

/// The refused calls wait for `allowed`: once a task fails, calls not yet made are not made.
const SHELL_PLAN: &str = r#"
name = "shell"
[[task]]
id = "allowed"
tool = "sh.run"
args = { argv = ["echo hello"] }
[[task]]
id = "denied"
tool = "sh.run"
deps = ["allowed"]
args = { argv = ["echo hi && rm -rf ./nothing"] }
[[task]]
id = "unmatched"
tool = "sh.run"
deps = ["allowed"]
args = { argv = ["echo asked"] }
"#;

#[tokio::test]
async fn the_executor_enforces_permission_rules_and_denies_what_would_ask_when_headless() {
    let (runtime, dir) = shell_runtime(false).await;
    let rules = r#"{"permissions": {"allow": ["Bash(echo hello)", "Bash(echo hi)"], "deny": ["Bash(rm *)"]}}"#;
    let report = runtime
        .run(plan(SHELL_PLAN), with_rules(dir.path(), rules))
        .await
        .unwrap();
    assert_eq!(report.task("allowed").unwrap().state, TaskState::Complete);
    let denied = report.task("denied").unwrap();
    assert_eq!(denied.state, TaskState::Failed);
    let reason = denied.reason.as_deref().unwrap();
    assert!(reason.contains("deny[0] `Bash(rm *)`"), "{reason}");
    let unmatched = report.task("unmatched").unwrap();
    assert!(
        unmatched.reason.as_deref().is_some_and(
            |r| r.contains("no rule allows") && r.contains("headless runs deny what would ask")
        ),
        "{unmatched:?}"
    );
    runtime.shutdown().await;
}

#[tokio::test]
async fn an_approval_callback_settles_calls_the_rules_leave_open() {
    let (runtime, dir) = shell_runtime(true).await;
    let rules = r#"{"permissions": {"allow": ["Bash(echo hello)"], "deny": ["Bash(rm *)"]}}"#;
    let text = r#"
name = "approval"
[[task]]
id = "unmatched"
tool = "sh.run"
args = { argv = ["echo asked"] }
[[task]]
id = "refused"
tool = "sh.run"
deps = ["unmatched"]
args = { argv = ["echo refused"] }
"#;
    let report = runtime
        .run(plan(text), with_rules(dir.path(), rules))
        .await
        .unwrap();
    assert_eq!(report.task("unmatched").unwrap().state, TaskState::Complete);
    let refused = report.task("refused").unwrap();
    assert_eq!(refused.state, TaskState::Failed);
    // The reason says who declined: here the callback, not a headless default.
    let reason = refused.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("the approval handler declined it"),
        "{reason}"
    );
    runtime.shutdown().await;
}

#[tokio::test]
async fn a_no_at_the_prompt_is_reported_as_the_users_not_as_headless() {
    let prompt = tetrarch::permissions::TerminalPrompt::with_io(
        std::io::Cursor::new("n\n"),
        std::io::sink(),
    );
    let (runtime, dir) = shell_runtime_with(Some(Arc::new(prompt))).await;
    let rules = r#"{"permissions": {"allow": ["Bash(echo hello)"]}}"#;
    let text = "name = \"prompt\"\n[[task]]\nid = \"asked\"\ntool = \"sh.run\"\nargs = { argv = [\"echo asked\"] }\n";
    let report = runtime
        .run(plan(text), with_rules(dir.path(), rules))
        .await
        .unwrap();
    let asked = report.task("asked").unwrap();
    assert_eq!(asked.state, TaskState::Failed);
    let reason = asked.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("no rule allows") && reason.contains("not approved at the prompt"),
        "{reason}"
    );
    runtime.shutdown().await;
}

#[tokio::test]
async fn a_declared_fix_is_tried_once_recorded_as_a_lesson_and_suggested_later() {
    let h = harness(|_| {}).await;
    let text = r#"
name = "fixes"
[[task]]
id = "fragile"
tool = "fn.flaky"
args = { label = "fragile", fail_times = 1 }
fixes = [
  { when = "no such thing", args = { never = true } },
  { when = "transient failure \\d+", args = { mode = "safe" } },
]
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(
        report.status,
        RunStatus::Complete,
        "{:?}",
        report.problems()
    );
    {
        let calls = h.calls.lock();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].1.get("mode"), None);
        assert_eq!(calls[1].1["mode"], json!("safe"));
        assert_eq!(calls[1].1.get("never"), None);
    }
    let recorded = lessons_recorded(&h.runtime).await;
    let lesson = &recorded.first().expect("a lesson was recorded").failure;
    assert_eq!(lesson.fix.as_deref(), Some(r#"set args {"mode":"safe"}"#));
    assert_eq!(lesson.worked, Some(true));

    // Another task failing the same way (no declared fix) is told about the fix that worked.
    let text = r#"
name = "hint"
[[task]]
id = "other"
tool = "fn.flaky"
args = { label = "other", fail_times = 3 }
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    let reason = report.task("other").unwrap().reason.clone().unwrap();
    assert!(
        reason.contains(r#"known fix for a similar error: set args {"mode":"safe"}"#),
        "{reason}"
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_declared_fix_may_use_upstream_outputs() {
    // The fix's args name an upstream output that the task's own args do not: the fixed
    // attempt failed with "no output from task" although `plan check` accepted it.
    let h = harness(|_| {}).await;
    let text = r#"
name = "fix-upstream"
[[task]]
id = "source"
tool = "fn.echo"
args = { label = "source", mode = "safe" }
[[task]]
id = "fragile"
tool = "fn.flaky"
deps = ["source"]
args = { label = "fragile", fail_times = 1 }
fixes = [{ when = "transient failure", args = { mode = "{{tasks.source.output.mode}}" } }]
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(
        report.status,
        RunStatus::Complete,
        "{:?}",
        report.problems()
    );
    let fixed_mode = {
        let calls = h.calls.lock();
        let fixed = calls.iter().filter(|(l, _)| l == "fragile").nth(1).unwrap();
        fixed.1["mode"].clone()
    };
    assert_eq!(fixed_mode, json!("safe"));
    h.runtime.shutdown().await;
}

/// Waits for the lessons the orchestrator records off its path.
/// The lessons recorded so far: each is written by a background task, which a settle waits for.
async fn lessons_recorded(runtime: &Runtime) -> Vec<tetrarch::lessons::Lesson> {
    assert!(runtime.settle(Duration::from_secs(10)).await.unwrap());
    tetrarch::lessons::Lessons::new(runtime.store().clone(), tetrarch::store::Namespace::Global)
        .list(50)
}

#[tokio::test]
async fn a_declared_fix_can_set_an_environment_variable_of_a_process_tool() {
    let (runtime, dir) = shell_runtime(false).await;
    let rules = r#"{"permissions": {"allow": ["Bash"]}}"#;
    // Fails unless FIX_MODE=safe is in its environment.
    let text = r#"
name = "env-fix"
[[task]]
id = "needs_env"
tool = "sh.run"
args = { argv = ['test "$FIX_MODE" = safe && echo "ran with $FIX_MODE" || { echo "FIX_MODE is not set to safe" >&2; exit 3; }'] }
fixes = [{ when = "FIX_MODE is not set", env = { FIX_MODE = "safe" } }]
"#;
    let mut events = runtime.subscribe();
    let report = runtime
        .run(plan(text), with_rules(dir.path(), rules))
        .await
        .unwrap();
    let task = report.task("needs_env").unwrap();
    assert_eq!(task.state, TaskState::Complete, "{:?}", report.problems());
    // The process saw the variable the fix set.
    assert_eq!(
        task.output.as_ref().and_then(Value::as_str).map(str::trim),
        Some("ran with safe"),
        "{task:?}"
    );
    let mut applied = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let RunEvent::FixApplied { fix, reason, .. } = event {
            applied.push((fix, reason));
        }
    }
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(applied[0].0, "set env FIX_MODE=safe");
    assert!(applied[0].1.contains("exited with status 3"), "{applied:?}");
    let recorded = lessons_recorded(&runtime).await;
    let lesson = &recorded.first().expect("a lesson was recorded").failure;
    assert_eq!(lesson.fix.as_deref(), Some("set env FIX_MODE=safe"));
    assert_eq!(lesson.worked, Some(true));
    assert!(lesson.message.contains("FIX_MODE is not set"), "{lesson:?}");
    runtime.shutdown().await;
}

/// A fix trial that fails in a way the task retries (a transient error) is not judged there: the
/// retry runs with the fix too, and the lesson says how the task ended.
#[tokio::test]
async fn a_fix_whose_trial_is_retried_is_recorded_by_how_the_retry_ends() {
    let h = harness(|_| {}).await;
    let text = r#"
name = "fix-then-retry"
[[task]]
id = "t"
tool = "fn.flaky"
args = { label = "plain", fail_times = 0 }
retries = 1
gates = [{ json = "/label", eq = "fixed" }]
fixes = [{ when = "gates failed", args = { label = "fixed", fail_times = 1 } }]
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(
        report.task("t").unwrap().state,
        TaskState::Complete,
        "{report:?}"
    );
    let labels: Vec<String> = h.calls.lock().iter().map(|(l, _)| l.clone()).collect();
    assert_eq!(labels, ["plain", "fixed", "fixed"]);
    let recorded = lessons_recorded(&h.runtime).await;
    let worked: Vec<Option<bool>> = recorded.iter().map(|l| l.failure.worked).collect();
    assert_eq!(worked, [Some(true)], "{recorded:?}");
}

#[tokio::test]
async fn a_fix_that_does_not_work_is_recorded_not_retried_and_the_next_match_is_tried() {
    let h = harness(|_| {}).await;
    // Fails twice: the first matching fix does not help, the second (third declared,
    // the second declared does not match) does.
    let text = r#"
name = "fixes"
[[task]]
id = "stubborn"
tool = "fn.flaky"
args = { label = "stubborn", fail_times = 2 }
fixes = [
  { when = "transient failure", args = { mode = "first" } },
  { when = "no such thing", args = { never = true } },
  { when = "transient failure \\d+", args = { mode = "second" } },
  { when = "transient", args = { mode = "third" } },
]
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(report.task("stubborn").unwrap().state, TaskState::Complete);
    {
        let calls = h.calls.lock();
        let modes: Vec<Value> = calls
            .iter()
            .map(|(_, args)| args.get("mode").cloned().unwrap_or(Value::Null))
            .collect();
        assert_eq!(modes, [Value::Null, json!("first"), json!("second")]);
        assert!(calls.iter().all(|(_, args)| args.get("never").is_none()));
    }
    let recorded = lessons_recorded(&h.runtime).await;
    let outcome = |fix: &str| {
        recorded
            .iter()
            .filter(|l| l.failure.fix.as_deref() == Some(fix))
            .map(|l| l.failure.worked)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        outcome(r#"set args {"mode":"first"}"#),
        [Some(false)],
        "{recorded:?}"
    );
    assert_eq!(
        outcome(r#"set args {"mode":"second"}"#),
        [Some(true)],
        "{recorded:?}"
    );
    assert_eq!(recorded.len(), 2, "{recorded:?}");

    // When every matching fix fails, each is tried once and the task fails.
    let text = r#"
name = "hopeless"
[[task]]
id = "hopeless"
tool = "fn.flaky"
args = { label = "hopeless", fail_times = 100 }
fixes = [
  { when = "transient failure", args = { mode = "first" } },
  { when = "transient failure", args = { mode = "second" } },
]
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(report.task("hopeless").unwrap().state, TaskState::Failed);
    let per_label = calls_per_label(&h.calls);
    assert_eq!(per_label.get("hopeless"), Some(&3), "{per_label:?}");
    let recorded = lessons_recorded(&h.runtime).await;
    let failed: Vec<_> = recorded
        .iter()
        .filter(|l| l.failure.context.contains("hopeless"))
        .map(|l| (l.failure.fix.clone(), l.failure.worked))
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed.iter().all(|(_, worked)| *worked == Some(false)),
        "{failed:?}"
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn cached_results_are_not_shared_by_pools_of_one_name_that_run_different_commands() {
    let (runtime, dir) = shell_runtime(false).await;
    let rules = r#"{"permissions": {"allow": ["Bash(echo *)"]}}"#;
    // Two plans declare a pool `say` for a cacheable call with the same args.
    let text = |word: &str| {
        format!(
            r#"
name = "say-{word}"
[pools.say]
kind = "process"
command = ["echo", "{word}"]
[[task]]
id = "say"
tool = "say.run"
args = {{ argv = ["it"] }}
cacheable = true
"#
        )
    };
    let output = |report: &tetrarch::agents::RunReport| {
        let task = report.task("say").unwrap();
        assert_eq!(task.state, TaskState::Complete, "{task:?}");
        task.output.clone().unwrap()
    };
    for word in ["first", "second", "first"] {
        let report = runtime
            .run(plan(&text(word)), with_rules(dir.path(), rules))
            .await
            .unwrap();
        assert_eq!(output(&report), format!("{word} it"));
    }
    runtime.shutdown().await;
}

/// The MCP server written on Python's standard library alone (`tests/mcp-servers`), or `None`
/// (the test reports itself skipped) where `python3` does not run; CI has it.
fn stdlib_server() -> Option<std::path::PathBuf> {
    let runs = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !runs {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but python3 does not run"
        );
        eprintln!("skipped: python3 (the test MCP server's interpreter) does not run");
        return None;
    }
    Some(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp-servers/stdlib_server.py"),
    )
}

/// Pre-warming ends with each pool's declared warm-up call made once more through the four
/// agents, as a task would be (the sessions' own warm-ups are not acquires; this call is),
/// without permission rules (none allow it here), with its args as declared (not templates, as
/// the sessions' own warm-ups send them), and it leaves no memory behind.
#[tokio::test]
async fn pre_warming_sends_each_declared_warm_up_call_through_the_agents() {
    let Some(script) = stdlib_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let mut actors = ActorsConfig::embedded().unwrap();
    actors.executor.pools.remove("scorer");
    for (name, declared) in [("warm", true), ("cold", false)] {
        let mut pool = PoolDef::new(PoolKind::Mcp);
        pool.command = vec!["python3".to_owned(), script.display().to_string()];
        pool.warmup = declared.then(|| tetrarch::session::WarmupDef {
            tool: "say".to_owned(),
            args: json!({ "message": "a {{literal}} brace" }),
            calls: 2,
        });
        actors.executor.pools.insert(name.to_owned(), pool);
    }
    let runtime = Runtime::start(RuntimeOptions::new(store.clone(), actors))
        .await
        .unwrap();
    let stats: HashMap<String, _> = runtime.pool_stats().into_iter().collect();
    assert_eq!(stats["warm"].acquired, 1, "{:?}", stats["warm"]);
    assert_eq!(stats["cold"].acquired, 0, "{:?}", stats["cold"]);
    assert_eq!(stats["warm"].discarded, 0, "{:?}", stats["warm"]);
    // Memories are written in the background: once settled, any the warm-up call made would
    // be counted.
    assert!(runtime.settle(Duration::from_secs(10)).await.unwrap());
    assert_eq!(store.stats(None).live, 0, "a warm-up call is not a memory");
    runtime.shutdown().await;
}

/// An agent that restarts while a warm-up call is out does not hold the run's start for the
/// warm-up's deadline (10 s): its waiter is answered at the restart.
#[tokio::test]
async fn a_restart_during_a_plans_warm_up_does_not_hold_its_start() {
    let Some(script) = stdlib_server() else {
        return;
    };
    let (runtime, dir) = shell_runtime(false).await;
    let rules = r#"{"permissions": {"allow": ["mcp__slow__say"]}}"#;
    let text = format!(
        r#"
name = "slow-warm-up"
[pools.slow]
kind = "mcp"
command = ["python3", "{}"]
warmup = {{ tool = "sleep", args = {{ seconds = 1.5 }} }}
[[task]]
id = "said"
tool = "slow.say"
args = {{ message = "after the warm-up" }}
"#,
        script.display()
    );
    let runtime = Arc::new(runtime);
    let started = std::time::Instant::now();
    let run = tokio::spawn({
        let runtime = Arc::clone(&runtime);
        let options = with_rules(dir.path(), rules);
        async move { runtime.run(plan(&text), options).await }
    });
    // The pool's own warm-up (1.5 s) is not an acquire; the call through the agents is.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !runtime
        .pool_stats()
        .iter()
        .any(|(name, stats)| name == "slow" && stats.in_use == 1)
    {
        assert!(std::time::Instant::now() < deadline, "no warm-up call");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runtime.inject_fault(AgentKind::Executor).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(
        report.status,
        RunStatus::Complete,
        "{:?}",
        report.problems()
    );
    // Two warm-ups (4.5 s at most with the restart) and the task, not the 10 s deadline.
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the run started {:?} after it was asked",
        started.elapsed()
    );
    let Ok(runtime) = Arc::try_unwrap(runtime) else {
        panic!("the run still holds the runtime");
    };
    runtime.shutdown().await;
}

#[tokio::test]
async fn an_mcp_tools_error_message_is_the_failure_reason_and_fixes_match_it() {
    let Some(script) = stdlib_server() else {
        return;
    };
    let (runtime, dir) = shell_runtime(false).await;
    let rules = r#"{"permissions": {"allow": ["mcp__py__say"]}}"#;
    // `say` answers an error result (isError, the message as text) while `fail` is true.
    let text = format!(
        r#"
name = "mcp-fix"
[pools.py]
kind = "mcp"
command = ["python3", "{}"]
[[task]]
id = "fixed"
tool = "py.say"
args = {{ message = "disk quota exceeded", fail = true }}
fixes = [{{ when = "quota exceeded", args = {{ message = "saved elsewhere", fail = false }} }}]
[[task]]
id = "unfixed"
tool = "py.say"
args = {{ message = "the volume is read-only", fail = true }}
"#,
        script.display()
    );
    let report = runtime
        .run(plan(&text), with_rules(dir.path(), rules))
        .await
        .unwrap();
    let fixed = report.task("fixed").unwrap();
    assert_eq!(fixed.state, TaskState::Complete, "{fixed:?}");
    assert_eq!(fixed.output.as_ref(), Some(&json!("saved elsewhere")));
    let unfixed = report.task("unfixed").unwrap();
    assert_eq!(unfixed.state, TaskState::Failed);
    let reason = unfixed.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("the volume is read-only"), "{reason}");
    runtime.shutdown().await;
}

#[tokio::test]
async fn a_malformed_argv_fails_its_task_naming_it_without_retries() {
    let (runtime, dir) = shell_runtime(false).await;
    let rules = r#"{"permissions": {"allow": ["Bash(echo *)"]}}"#;
    // Written literally they are refused with the plan; rendered from upstream outputs, the
    // call refuses them.
    let text = r#"
name = "argv"
[[task]]
id = "src"
tool = "sh.run"
args = { argv = ["echo '{\"line\": \"echo {}\", \"obj\": {\"k\": 1}}'"] }
[[task]]
id = "string"
tool = "sh.run"
deps = ["src"]
args = { argv = "{{tasks.src.output.line}}" }
retries = 2
[[task]]
id = "table"
tool = "sh.run"
deps = ["src"]
args = { argv = ["echo", "{{tasks.src.output.obj}}"] }
"#;
    let report = runtime
        .run(plan(text), with_rules(dir.path(), rules))
        .await
        .unwrap();
    for (id, why) in [
        ("string", "`argv` must be a list of strings"),
        ("table", "`argv[1]` is {\"k\":1}, not a string"),
    ] {
        let task = report.task(id).unwrap();
        assert_eq!(
            (task.state, task.retries),
            (TaskState::Failed, 0),
            "{task:?}"
        );
        let reason = task.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains(why) && !reason.contains("permission"),
            "{reason}"
        );
    }
    runtime.shutdown().await;
}

#[tokio::test]
async fn dropping_a_runs_future_cancels_the_run_and_closes_its_pools() {
    let h = harness(|_| {}).await;
    let text = r#"
name = "dropped"
[pools.own]
kind = "native"
[[task]]
id = "slow"
tool = "own.echo"
args = { label = "slow", sleep_ms = 30000 }
compensate = { tool = "own.echo", args = { label = "undo-slow" } }
[[task]]
id = "next"
tool = "own.echo"
deps = ["slow"]
args = { label = "next" }
"#;
    let mut events = h.runtime.subscribe();
    let dropped = tokio::time::timeout(
        Duration::from_millis(500),
        h.runtime.run(plan(text), options()),
    )
    .await;
    assert!(dropped.is_err(), "the run should still have been going");
    // The run ends cancelled, well before its 30 s task would have.
    let finished = first_event(&mut events, |event| match event {
        RunEvent::RunFinished { status, .. } => Some(status),
        _ => None,
    });
    let status = tokio::time::timeout(Duration::from_secs(10), finished)
        .await
        .expect("the abandoned run was not cancelled");
    assert_eq!(status, RunStatus::Cancelled);
    // ...and its pool closes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.runtime.pool_stats().iter().any(|(name, _)| name == "own") {
        assert!(
            std::time::Instant::now() < deadline,
            "pool `own` still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls_per_label(&h.calls).get("next"), None);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_cached_result_that_fails_its_gates_is_not_reused_by_the_next_attempt() {
    let h = harness(|_| {}).await;
    // `flaky` answers how many times it has been called for its label: the first answer fails
    // the gate. Reusing it from the cache, every attempt would fail the same way.
    let text = r#"
name = "cached-gate"
[[task]]
id = "counted"
tool = "fn.flaky"
args = { label = "counted" }
cacheable = true
max_attempts = 3
gates = [{ json = "/calls", ge = 2 }]
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    let task = report.task("counted").unwrap();
    assert_eq!(task.state, TaskState::Complete, "{task:?}");
    assert_eq!(
        (task.attempts, calls_per_label(&h.calls)["counted"]),
        (2, 2)
    );
    // The result that passed is cached: a later run of the same call is served from it.
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(report.task("counted").unwrap().state, TaskState::Complete);
    assert_eq!(calls_per_label(&h.calls)["counted"], 2);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_task_stopped_by_another_tasks_failure_is_skipped_not_failed() {
    let h = harness(|_| {}).await;
    // `broken` fails at once and stops the run; `gated` fails its gate on its first attempt
    // after that, with two attempts left.
    let text = r#"
name = "stopped"
[[task]]
id = "broken"
tool = "fn.flaky"
args = { label = "broken", fail_times = 100 }
[[task]]
id = "gated"
tool = "fn.echo"
args = { label = "gated", sleep_ms = 300, ok = false }
max_attempts = 3
gates = [{ json = "/ok", eq = true }]
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.task("broken").unwrap().state, TaskState::Failed);
    let gated = report.task("gated").unwrap();
    assert_eq!(gated.state, TaskState::Skipped, "{gated:?}");
    assert_eq!(
        gated.reason.as_deref(),
        Some("the run stopped before the task's next attempt")
    );
    // Only the real failure is a lesson.
    let lessons = lessons_recorded(&h.runtime).await;
    assert_eq!(lessons.len(), 1, "{lessons:?}");
    assert!(lessons[0].failure.context.contains("broken"), "{lessons:?}");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_cancel_after_a_failure_keeps_the_run_failed() {
    let h = harness(|_| {}).await;
    let text = r#"
name = "cancel-after-failure"
[[task]]
id = "slow"
tool = "fn.echo"
args = { label = "slow", sleep_ms = 800 }
[[task]]
id = "broken"
tool = "fn.flaky"
args = { label = "broken", fail_times = 100 }
"#;
    let mut events = h.runtime.subscribe();
    let runtime = &h.runtime;
    let cancel = async {
        // Ctrl-C once the failure is in, while `slow` is still running.
        let run_id = first_event(&mut events, |event| match event {
            RunEvent::TaskFinished { run_id, task, .. } if task == "broken" => Some(run_id),
            _ => None,
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        runtime.cancel(&run_id).await.unwrap();
    };
    let (report, ()) = tokio::join!(runtime.run(plan(text), options()), cancel);
    let report = report.unwrap();
    assert_eq!(report.status, RunStatus::Failed, "{:?}", report.problems());
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn attempts_still_on_their_way_when_a_run_is_cancelled_do_not_run() {
    let h = harness(|actors| actors.orchestrator.run.max_in_flight = 1000).await;
    // A thousand independent tasks whose args need a context: at the cancel most of them wait
    // at the Optimizer, on their way to the Executor.
    let mut text = String::from("name = \"many\"\n");
    for i in 0..1000 {
        text.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ntool = \"fn.echo\"\nargs = {{ label = \"t{i}\", context = \"{{{{context}}}}\" }}\n"
        ));
    }
    let runtime = &h.runtime;
    let mut events = runtime.subscribe();
    let mut every = runtime.subscribe_all();
    let cancel = async {
        let run_id = first_event(&mut events, |event| match event {
            RunEvent::ContextBuilt { run_id, .. } => Some(run_id),
            _ => None,
        })
        .await;
        runtime.cancel(&run_id).await.unwrap();
    };
    let (report, ()) = tokio::join!(runtime.run(plan(&text), options()), cancel);
    assert_eq!(report.unwrap().status, RunStatus::Cancelled);
    let ran = h.calls.lock().len();
    assert!(ran < 1000, "the cancel came after every call");
    // Nothing of the cancelled run starts once it has been reported.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.calls.lock().len(), ran);
    // Nor is anything of it reported after its end: the attempts on their way get no context.
    let mut ended = false;
    while let Ok(event) = every.try_recv() {
        match event {
            RunEvent::RunFinished { .. } => ended = true,
            RunEvent::ContextBuilt { task, .. } | RunEvent::ContextAlert { task, .. } if ended => {
                panic!("context of {task} reported after the run's end")
            }
            _ => {}
        }
    }
    assert!(ended);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_restart_leaves_a_task_waiting_out_its_backoff_to_its_timer() {
    let h = harness(|actors| {
        actors.orchestrator.run.retry_backoff = Duration::from_secs(4);
        actors.orchestrator.run.retry_backoff_max = Duration::from_secs(4);
    })
    .await;
    let text = r#"
name = "backoff"
[[task]]
id = "flaky"
tool = "fn.flaky"
args = { label = "flaky", fail_times = 1 }
retries = 1
"#;
    let runtime = &h.runtime;
    let mut events = runtime.subscribe();
    let meddle = async {
        first_event(&mut events, |event| {
            matches!(event, RunEvent::TaskRetrying { .. }).then_some(())
        })
        .await;
        // Another agent restarts while the task waits out its backoff.
        runtime.inject_fault(AgentKind::Reviewer).unwrap();
        first_event(&mut events, |event| {
            matches!(event, RunEvent::AgentRestarted { .. }).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        calls_per_label(&h.calls)["flaky"]
    };
    let (report, calls_during_backoff) = tokio::join!(runtime.run(plan(text), options()), meddle);
    assert_eq!(report.unwrap().status, RunStatus::Complete);
    assert_eq!(
        calls_during_backoff, 1,
        "the restart re-sent the task before its backoff ended"
    );
    assert_eq!(calls_per_label(&h.calls)["flaky"], 2);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_program_that_is_gone_fails_its_task_without_retries() {
    let (runtime, dir) = shell_runtime(false).await;
    let tool = dir.path().join("tool.sh");
    std::fs::write(&tool, "#!/bin/sh\necho ran\n").unwrap();
    let mut mode = std::fs::metadata(&tool).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o755);
    std::fs::set_permissions(&tool, mode).unwrap();
    // The pool starts (its program is there), then the first task deletes the program.
    let text = format!(
        r#"
name = "gone"
[pools.gone]
kind = "process"
command = ["{tool}"]
min_idle = 0
[[task]]
id = "delete"
tool = "sh.run"
args = {{ argv = ["rm {tool}"] }}
[[task]]
id = "call"
tool = "gone.run"
deps = ["delete"]
retries = 3
"#,
        tool = tool.display()
    );
    let rules = r#"{"permissions": {"allow": ["Bash"]}}"#;
    let report = runtime
        .run(plan(&text), with_rules(dir.path(), rules))
        .await
        .unwrap();
    let call = report.task("call").unwrap();
    assert_eq!(call.state, TaskState::Failed, "{call:?}");
    assert_eq!(call.retries, 0, "{call:?}");
    let reason = call.reason.clone().unwrap_or_default();
    assert!(reason.contains("could not start"), "{reason}");
    runtime.shutdown().await;
}

/// A plan's own `permissions` file governs its calls in an embedding program too (it was read
/// by the binary only, so a library run asked about every call instead).
#[tokio::test]
async fn a_plans_own_permissions_file_governs_its_calls_in_the_library() {
    let h = harness(|_| {}).await;
    let dir = h.dir.path();
    std::fs::write(
        dir.join("rules.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)"], "deny": ["Bash(touch *)"]}}"#,
    )
    .unwrap();
    let text = r#"name = "ruled"
permissions = "rules.json"
[pools.sh]
kind = "process"
command = ["sh", "-c"]
[[task]]
id = "allowed"
tool = "sh.x"
args = { argv = ["echo '{\"ok\": true}'"] }
[[task]]
id = "denied"
tool = "sh.x"
deps = ["allowed"]
args = { argv = ["touch ran"] }
"#;
    let here = RunOptions {
        base_dir: dir.to_path_buf(),
        ..RunOptions::default()
    };
    let report = h.runtime.run(plan(text), here.clone()).await.unwrap();
    let task = |id: &str| report.tasks.iter().find(|t| t.id == id).unwrap();
    assert_eq!(task("allowed").state, TaskState::Complete);
    assert_eq!(task("denied").state, TaskState::Failed);
    let reason = task("denied").reason.clone().unwrap_or_default();
    assert!(reason.contains("denied by rule deny[0]"), "{reason}");
    assert!(!dir.join("ran").exists());
    // A file that is not there is an error naming it, before anything runs.
    let missing = text.replace("rules.json", "gone.json");
    let error = h.runtime.run(plan(&missing), here).await.unwrap_err();
    assert!(
        error.to_string().contains("permissions file") && error.to_string().contains("gone.json"),
        "{error}"
    );
    h.runtime.shutdown().await;
}

/// Resuming is for a run the store has, of the same plan: another plan's saved tasks would be
/// taken for this one's by their ids alone, and an unknown id used to start a fresh run.
#[tokio::test]
async fn a_resume_of_an_unknown_run_or_of_another_plans_run_is_refused() {
    let h = harness(|_| {}).await;
    let text =
        "name = \"first\"\n[[task]]\nid = \"a\"\ntool = \"fn.echo\"\nargs = { label = \"a\" }\n";
    let first = RunOptions {
        run_id: Some("kept".to_owned()),
        plan_hash: "hash-of-first".to_owned(),
        ..options()
    };
    let report = h.runtime.run(plan(text), first.clone()).await.unwrap();
    assert_eq!(report.status, RunStatus::Complete);
    let other = RunOptions {
        resume: true,
        plan_hash: "hash-of-second".to_owned(),
        ..first.clone()
    };
    let error = h
        .runtime
        .run(plan(&text.replace("first", "second")), other)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, AgentError::Resume { run_id, reason }
            if run_id == "kept" && reason.contains("a run of another plan")),
        "{error}"
    );
    let unknown = RunOptions {
        run_id: Some("never-ran".to_owned()),
        resume: true,
        ..first
    };
    let error = h.runtime.run(plan(text), unknown).await.unwrap_err();
    assert!(
        matches!(&error, AgentError::Resume { reason, .. } if reason.contains("no such run")),
        "{error}"
    );
    // The calls of the refused resumes never ran.
    assert_eq!(h.calls.lock().len(), 1);
    h.runtime.shutdown().await;
}

/// Cancelling a run that has ended does nothing: it used to be remembered as a cancel for a run
/// not started yet, and cancelled the next run of that id at its start.
#[tokio::test]
async fn cancelling_a_run_that_ended_leaves_a_later_run_of_its_id_alone() {
    let h = harness(|_| {}).await;
    let run = RunOptions {
        run_id: Some("done".to_owned()),
        plan_hash: "diamond".to_owned(),
        ..options()
    };
    let report = h.runtime.run(plan(DIAMOND), run.clone()).await.unwrap();
    assert_eq!(report.status, RunStatus::Complete);
    h.runtime.cancel("done").await.unwrap();
    let report = h.runtime.run(plan(DIAMOND), run).await.unwrap();
    assert_eq!(report.status, RunStatus::Complete, "{report:?}");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_run_id_its_memory_namespace_cannot_hold_is_refused() {
    let h = harness(|_| {}).await;
    for bad in ["", "a:b", "two words", "tab\there"] {
        let run = RunOptions {
            run_id: Some(bad.to_owned()),
            ..options()
        };
        let error = h.runtime.run(plan(DIAMOND), run).await.unwrap_err();
        assert!(
            matches!(&error, AgentError::Run { run_id, reason }
                if run_id == bad && reason.contains("a run id must be")),
            "{bad:?}: {error}"
        );
    }
    assert!(h.calls.lock().is_empty());
    h.runtime.shutdown().await;
}

/// `subscribe_all` gets every event, also a burst beyond the broadcast's 16k: a failure whose
/// 17,000 dependents are skipped in one go (the broadcast's subscriber loses the oldest, the
/// failure itself among them).
#[tokio::test]
async fn subscribe_all_loses_no_event_of_a_burst_past_the_broadcast() {
    let h = harness(|_| {}).await;
    let n = 17_000;
    let mut text = String::from(
        "name = \"burst\"\n[[task]]\nid = \"t0\"\ntool = \"fn.flaky\"\n\
         args = { label = \"t0\", fail_times = 9 }\n",
    );
    for i in 1..n {
        text.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ntool = \"fn.echo\"\ndeps = [\"t{}\"]\n",
            i - 1
        ));
    }
    let mut every = h.runtime.subscribe_all();
    let mut some = h.runtime.subscribe();
    let report = h.runtime.run(plan(&text), options()).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let mut finished = HashMap::new();
    while let Ok(event) = every.try_recv() {
        if let RunEvent::TaskFinished { task, state, .. } = event {
            finished.insert(task, state);
        }
    }
    assert_eq!(finished.len(), n);
    assert_eq!(finished["t0"], TaskState::Failed);
    assert_eq!(finished[&format!("t{}", n - 1)], TaskState::Skipped);
    // The broadcast's subscriber did lose some: the burst is what the test is about.
    let lagged = loop {
        match some.try_recv() {
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => break true,
            Err(_) => break false,
        }
    };
    assert!(lagged, "the burst fitted the broadcast");
    h.runtime.shutdown().await;
}

/// A harness whose `fn` pool has one session: a second call waits for the first.
async fn harness_with_one_session() -> Harness {
    harness(|actors| {
        if let Some(pool) = actors.executor.pools.get_mut("fn") {
            pool.max_size = 1;
        }
    })
    .await
}

/// Nothing new starts once a task has failed for good: calls still waiting for a session are
/// not made, and their tasks end skipped, saying so; the call already made finishes.
#[tokio::test]
async fn calls_waiting_for_a_session_are_not_made_once_a_task_has_failed() {
    let h = harness_with_one_session().await;
    let mut text = String::from(
        "name = \"fail-fast\"\n[[task]]\nid = \"bad\"\ntool = \"fn.flaky\"\n\
         args = { label = \"bad\", fail_times = 9 }\n",
    );
    for i in 0..10 {
        text.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ntool = \"fn.echo\"\nargs = {{ label = \"t{i}\", sleep_ms = 50 }}\n"
        ));
    }
    let report = h.runtime.run(plan(&text), options()).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    // `bad` and at most the one call that held the session when it failed.
    let made = h.calls.lock().len();
    assert!(made <= 2, "{made} calls made: {:?}", h.calls.lock());
    let not_started: Vec<_> = report
        .tasks
        .iter()
        .filter(|t| t.state == TaskState::Skipped)
        .collect();
    assert!(not_started.len() >= 9, "{:?}", report.tasks);
    for task in not_started {
        let reason = task.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("was not called: the run stopped while the call waited"),
            "{reason}"
        );
    }
    h.runtime.shutdown().await;
}

/// Two cacheable calls with the same args wait on one computation: when the run stops before
/// it is made, neither is made, and both tasks end skipped (the one that waited on the other's
/// computation was failed with the other's reason).
#[tokio::test]
async fn a_cached_call_waiting_on_one_that_was_not_made_is_not_made_either() {
    let h = harness_with_one_session().await;
    // `hold` keeps the one session while `bad` is refused by the (absent) permission rules.
    let text = r#"
name = "shared-not-started"
[pools.sh]
kind = "process"
command = ["true"]
[[task]]
id = "hold"
tool = "fn.echo"
args = { label = "hold", sleep_ms = 300 }
[[task]]
id = "bad"
tool = "sh.x"
[[task]]
id = "a"
tool = "fn.echo"
cacheable = true
args = { label = "same", sleep_ms = 20 }
[[task]]
id = "b"
tool = "fn.echo"
cacheable = true
args = { label = "same", sleep_ms = 20 }
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    for id in ["a", "b"] {
        let task = report.task(id).unwrap();
        assert_eq!(task.state, TaskState::Skipped, "{task:?}");
    }
    assert_eq!(calls_per_label(&h.calls).get("same"), None);
    h.runtime.shutdown().await;
}

/// Hundreds of permission questions left unanswered do not hold the blocking threads the other
/// tasks' permission checks need: an allowed task after them runs while they wait (with 512
/// or more waiting, each on a thread of its own, it waited for the answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_permission_questions_do_not_stall_allowed_tasks() {
    struct Unanswered(std::sync::Mutex<bool>, std::sync::Condvar);
    impl tetrarch::permissions::ApprovalHandler for Unanswered {
        fn approve(
            &self,
            _: &tetrarch::permissions::ToolCall,
            _: &tetrarch::permissions::Decision,
        ) -> bool {
            let answered = self.0.lock().unwrap();
            drop(self.1.wait_while(answered, |answered| !*answered).unwrap());
            false
        }
    }
    let unanswered = Arc::new(Unanswered(
        std::sync::Mutex::new(false),
        std::sync::Condvar::new(),
    ));
    let (runtime, dir) = shell_runtime_with(Some(unanswered.clone() as _)).await;
    let mut text = String::from(
        "name = \"questions\"\n[[task]]\nid = \"first\"\ntool = \"sh.run\"\n\
         args = { argv = [\"sleep 0.2\"] }\n[[task]]\nid = \"second\"\ntool = \"sh.run\"\n\
         deps = [\"first\"]\nargs = { argv = [\"echo second\"] }\n",
    );
    for i in 0..600 {
        text.push_str(&format!(
            "[[task]]\nid = \"q{i}\"\ntool = \"sh.run\"\nargs = {{ argv = [\"printf {i}\"] }}\n"
        ));
    }
    let mut events = runtime.subscribe_all();
    let options = with_rules(
        dir.path(),
        r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(sleep *)"], "ask": ["Bash(printf *)"]}}"#,
    );
    let run = runtime.run(plan(&text), options);
    let watch = async {
        let second_done = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(event) = events.recv().await {
                if let RunEvent::TaskFinished { task, state, .. } = event
                    && task == "second"
                {
                    return state;
                }
            }
            TaskState::Pending
        })
        .await;
        *unanswered.0.lock().unwrap() = true;
        unanswered.1.notify_all();
        second_done
    };
    let (report, second_done) = tokio::join!(run, watch);
    let report = report.unwrap();
    assert_eq!(
        second_done,
        Ok(TaskState::Complete),
        "{:?}",
        report.task("second")
    );
    runtime.shutdown().await;
}

/// The rollback's first compensation is called only once the run's failure is in the store: a
/// kill before that commit left a run whose resume ran the failed task again, not the rollback.
#[tokio::test]
async fn a_rollback_calls_its_first_compensation_once_the_failure_is_saved() {
    let seen: Arc<Mutex<Vec<Option<TaskState>>>> = Arc::default();
    let saw = Arc::clone(&seen);
    let h = harness_with_tools(
        tempfile::tempdir().unwrap(),
        |_| {},
        move |natives, store| {
            let store = store.clone();
            // Records the saved state of task `publish` as it is called.
            natives.register("saved_publish", move |_args: Value| {
                let (store, saw) = (store.clone(), Arc::clone(&saw));
                async move {
                    let runs = tetrarch::agents::saved_runs(&store).map_err(|e| e.to_string())?;
                    let state = runs
                        .iter()
                        .flat_map(|run| &run.tasks)
                        .find(|(id, _)| id == "publish")
                        .map(|(_, state)| *state);
                    saw.lock().push(state);
                    Ok(json!({}))
                }
            });
            natives.register("fail", |_args: Value| async move {
                Err::<Value, _>("it does not work".to_owned())
            });
        },
    )
    .await;
    let text = r#"
name = "saved-before-undo"
[[task]]
id = "create"
tool = "fn.echo"
args = { label = "create" }
compensate = { tool = "fn.saved_publish", args = {} }
[[task]]
id = "publish"
tool = "fn.fail"
deps = ["create"]
args = {}
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed, "{:?}", report.problems());
    assert_eq!(report.task("create").unwrap().state, TaskState::Compensated);
    assert_eq!(*seen.lock(), [Some(TaskState::Failed)]);
    h.runtime.shutdown().await;
}

/// After the Orchestrator crashes, the run resumed in its successor stops the calls the old
/// one made before making them again: a task never runs twice at once.
#[tokio::test]
async fn a_run_resumed_after_an_orchestrator_crash_stops_the_old_calls_first() {
    /// Counts the calls running now, down again when a call ends or is dropped.
    struct Running(Arc<AtomicUsize>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (now_in, most_in) = (Arc::clone(&now), Arc::clone(&most));
    let finished_in = Arc::clone(&finished);
    let h = harness_with_tools(
        tempfile::tempdir().unwrap(),
        |_| {},
        move |natives, _| {
            natives.register("exclusive", move |_args: Value| {
                let (now, most) = (Arc::clone(&now_in), Arc::clone(&most_in));
                let finished = Arc::clone(&finished_in);
                async move {
                    let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                    let _running = Running(now);
                    most.fetch_max(running, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok(json!({}))
                }
            });
        },
    )
    .await;
    let text = r#"
name = "exclusive"
[[task]]
id = "deploy"
tool = "fn.exclusive"
args = {}
"#;
    let runtime = &h.runtime;
    let run = runtime.run(plan(text), options());
    let crash = async {
        while now.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        runtime.inject_fault(AgentKind::Orchestrator).unwrap();
    };
    let (report, ()) = tokio::join!(run, crash);
    let report = report.unwrap();
    assert_eq!(
        report.status,
        RunStatus::Complete,
        "{:?}",
        report.problems()
    );
    assert_eq!(runtime.restarts(AgentKind::Orchestrator), 1);
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two calls of the task ran at once"
    );
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "the old Orchestrator's call was not stopped"
    );
    h.runtime.shutdown().await;
}

/// A run that has ended is not resumed (its rollback would run again), and a run id holding a
/// `/` is refused (its saved tasks would be listed under another run's).
#[tokio::test]
async fn an_ended_run_is_not_resumed_and_a_run_id_with_a_slash_is_refused() {
    let h = harness(|_| {}).await;
    let first = RunOptions {
        run_id: Some("once".to_owned()),
        ..options()
    };
    let report = h.runtime.run(plan(DIAMOND), first).await.unwrap();
    assert_eq!(report.status, RunStatus::Complete);
    let again = RunOptions {
        run_id: Some("once".to_owned()),
        resume: true,
        ..options()
    };
    let err = h.runtime.run(plan(DIAMOND), again).await.unwrap_err();
    assert!(matches!(err, AgentError::Resume { .. }), "{err}");
    assert!(err.to_string().contains("has ended (complete)"), "{err}");
    assert_eq!(calls_per_label(&h.calls).get("a"), Some(&1));
    let slashed = RunOptions {
        run_id: Some("a/b".to_owned()),
        ..options()
    };
    let err = h.runtime.run(plan(DIAMOND), slashed).await.unwrap_err();
    assert!(err.to_string().contains("`/`"), "{err}");
    h.runtime.shutdown().await;
}

/// A task skipped while it waits out a retry's backoff (another task failed) made no retry:
/// the report does not count the one that was scheduled.
#[tokio::test]
async fn a_retry_scheduled_but_not_made_is_not_counted() {
    let h = harness(|actors| {
        actors.orchestrator.run.retry_backoff = Duration::from_secs(4);
        actors.orchestrator.run.retry_backoff_max = Duration::from_secs(4);
    })
    .await;
    let text = r#"
name = "not-retried"
[[task]]
id = "flaky"
tool = "fn.flaky"
args = { label = "flaky", fail_times = 5 }
retries = 2
[[task]]
id = "slow"
tool = "fn.echo"
args = { label = "slow", sleep_ms = 100 }
[[task]]
id = "bad"
tool = "fn.flaky"
deps = ["slow"]
args = { label = "bad", fail_times = 1 }
"#;
    let report = h.runtime.run(plan(text), options()).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let flaky = report.task("flaky").unwrap();
    assert_eq!(flaky.state, TaskState::Skipped, "{flaky:?}");
    assert_eq!((flaky.attempts, flaky.retries), (1, 0), "{flaky:?}");
    assert_eq!(calls_per_label(&h.calls)["flaky"], 1);
    h.runtime.shutdown().await;
}

/// A cacheable call that waited on another run's computation of the same call does not take
/// that call's timeout as its own: it makes its call (a task with a long timeout used to fail
/// with "timed out" after another's short one).
#[tokio::test]
async fn a_cached_call_does_not_take_another_calls_timeout_as_its_own() {
    let h = harness(|_| {}).await;
    let plan_with = |name: &str, timeout: &str| {
        plan(&format!(
            "name = \"{name}\"\n[[task]]\nid = \"t\"\ntool = \"fn.echo\"\ncacheable = true\n\
             timeout = \"{timeout}\"\nargs = {{ label = \"same\", sleep_ms = 400 }}\n"
        ))
    };
    let runtime = &h.runtime;
    let impatient = runtime.run(plan_with("impatient", "100ms"), options());
    let patient = async {
        // Started once the impatient run's call leads the computation.
        while !calls_per_label(&h.calls).contains_key("same") {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        runtime.run(plan_with("patient", "10s"), options()).await
    };
    let (impatient, patient) = tokio::join!(impatient, patient);
    let impatient = impatient.unwrap();
    assert_eq!(impatient.status, RunStatus::Failed);
    let patient = patient.unwrap();
    assert_eq!(
        patient.status,
        RunStatus::Complete,
        "{:?}",
        patient.problems()
    );
    h.runtime.shutdown().await;
}
