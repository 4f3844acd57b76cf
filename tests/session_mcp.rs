//! The `mcp` session kind against real MCP servers nobody here wrote the protocol side of:
//! `@modelcontextprotocol/server-everything` (npm) and a small server on the PyPI `mcp` package.
//!
//! The servers live under `tests/mcp-servers/` (see the report / `.ci/run` for the install
//! commands). Without them a test prints why it is skipped and passes, unless `CI=true`, where it
//! fails.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tetrarch::session::{
    McpFactory, McpSession, McpSpec, Pool, PoolConfig, Session, SessionError, ToolRequest,
};

fn servers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp-servers")
}

/// The spec for `what` when its files exist; otherwise skips (or fails under CI).
fn available(what: &str, needed: PathBuf, spec: McpSpec) -> Option<McpSpec> {
    if needed.exists() {
        return Some(spec);
    }
    let reason = format!("{what} is not installed ({} missing)", needed.display());
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {reason}"
    );
    eprintln!("skipped: {reason}");
    None
}

fn everything() -> Option<McpSpec> {
    let script =
        servers_dir().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    let spec = McpSpec::new("node", [script.display().to_string(), "stdio".to_owned()]);
    available("@modelcontextprotocol/server-everything", script, spec)
}

fn python_server() -> Option<McpSpec> {
    let python = servers_dir().join(".venv/bin/python");
    let script = servers_dir().join("py_server.py");
    let spec = McpSpec::new(python.display().to_string(), [script.display().to_string()]);
    available("the Python `mcp` package venv", python, spec)
}

fn call(tool: &str, args: serde_json::Value) -> ToolRequest {
    ToolRequest::new(tool, args).with_timeout(Duration::from_secs(20))
}

#[tokio::test]
async fn server_everything_echo_and_structured_arguments() {
    let Some(spec) = everything() else { return };
    let mut session = McpSession::connect(&spec).await.unwrap();
    let tools = session.tool_names().await.unwrap();
    assert!(tools.iter().any(|t| t == "echo"), "{tools:?}");

    let outcome = session
        .call(call("echo", json!({"message": "hi there"})))
        .await
        .unwrap();
    assert_eq!(outcome.exit_status, Some(0));
    assert_eq!(outcome.stdout, "Echo: hi there");

    let outcome = session
        .call(call("get-sum", json!({"a": 2, "b": 40})))
        .await
        .unwrap();
    assert!(outcome.stdout.contains("42"), "{}", outcome.stdout);

    let outcome = session
        .call(call(
            "get-structured-content",
            json!({"location": "New York"}),
        ))
        .await
        .unwrap();
    let json = outcome.json.unwrap();
    assert!(json.get("temperature").is_some(), "{json}");

    session.health_check().await.unwrap();
}

#[tokio::test]
async fn server_everything_bad_calls_keep_the_session() {
    let Some(spec) = everything() else { return };
    let mut session = McpSession::connect(&spec).await.unwrap();
    let err = session
        .call(call("echo", json!(["not", "an", "object"])))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SessionError::InvalidArguments { .. }),
        "{err}"
    );
    // Unknown tool and arguments that fail the tool's schema: the tool fails, the session lives.
    for (tool, args) in [("no-such-tool", json!({})), ("get-sum", json!({"a": "x"}))] {
        match session.call(call(tool, args)).await {
            Ok(outcome) => assert_eq!(outcome.exit_status, Some(1), "{outcome:?}"),
            Err(err) => assert!(matches!(err, SessionError::ToolRejected { .. }), "{err}"),
        }
    }
    assert!(session.is_open());
    let outcome = session
        .call(call("echo", json!({"message": "still"})))
        .await
        .unwrap();
    assert_eq!(outcome.stdout, "Echo: still");
}

#[tokio::test]
async fn python_server_structured_result_error_flag_and_clean_env() {
    let Some(spec) = python_server() else { return };
    let mut session = McpSession::connect(&spec).await.unwrap();
    let outcome = session
        .call(call("add", json!({"a": 5, "b": 7})))
        .await
        .unwrap();
    assert_eq!(outcome.exit_status, Some(0));
    assert_eq!(outcome.json, Some(json!({"sum": 12})));

    let outcome = session
        .call(call("fail", json!({"message": "bad thing"})))
        .await
        .unwrap();
    assert_eq!(outcome.exit_status, Some(1));
    assert!(outcome.stdout.contains("bad thing"), "{}", outcome.stdout);

    // CARGO is set for the test process by cargo; the server must not see it.
    assert!(std::env::var_os("CARGO").is_some());
    let outcome = session
        .call(call("env", json!({"name": "CARGO"})))
        .await
        .unwrap();
    assert!(outcome.stdout.contains("<unset>"), "{}", outcome.stdout);
    let outcome = session
        .call(call("env", json!({"name": "PATH"})))
        .await
        .unwrap();
    assert!(!outcome.stdout.contains("<unset>"), "{}", outcome.stdout);
}

async fn server_pid(pool: &Pool) -> u64 {
    let mut session = pool.acquire().await.unwrap();
    let outcome = session.call(call("pid", json!({}))).await.unwrap();
    let pid = outcome.json.unwrap();
    pid.as_u64()
        .or_else(|| pid.get("result").and_then(|v| v.as_u64()))
        .unwrap()
}

#[tokio::test]
async fn killed_server_is_replaced_in_its_pool() {
    let Some(spec) = python_server() else { return };
    let config = PoolConfig {
        min_idle: 1,
        max_size: 2,
        ..PoolConfig::new("python-mcp")
    };
    let pool = Pool::start(config, McpFactory::new(spec)).await.unwrap();
    let first = server_pid(&pool).await;
    assert_eq!(server_pid(&pool).await, first, "the warm server is reused");

    let killed = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Either the pool notices the dead server first, or the next call does and breaks it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let replacement = loop {
        let mut session = pool.acquire().await.unwrap();
        match session.call(call("pid", json!({}))).await {
            Ok(outcome) => {
                let pid = outcome.json.unwrap();
                break pid
                    .as_u64()
                    .or_else(|| pid.get("result").and_then(|v| v.as_u64()))
                    .unwrap();
            }
            Err(err) => {
                assert!(err.breaks_session(), "{err}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "no replacement: {err}"
                );
            }
        }
    };
    assert_ne!(replacement, first);
    assert!(pool.stats().discarded >= 1);
    assert_eq!(server_pid(&pool).await, replacement);
}

#[tokio::test]
async fn server_that_is_not_mcp_fails_to_start_with_a_reason() {
    // A program that prints garbage instead of speaking MCP.
    let mut spec = McpSpec::new("sh", ["-c", "echo 'not json at all'; sleep 5"]);
    spec.start_timeout = Duration::from_secs(2);
    let err = McpSession::connect(&spec).await.unwrap_err();
    assert!(matches!(err, SessionError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("sh"), "{err}");
}

#[tokio::test]
async fn hanging_tool_times_out_and_breaks_the_pooled_session() {
    let Some(spec) = everything() else { return };
    let config = PoolConfig {
        min_idle: 1,
        max_size: 1,
        ..PoolConfig::new("everything")
    };
    let pool = Pool::start(config, McpFactory::new(spec)).await.unwrap();
    {
        let mut session = pool.acquire().await.unwrap();
        let request = ToolRequest::new(
            "trigger-long-running-operation",
            json!({"duration": 30, "steps": 3}),
        )
        .with_timeout(Duration::from_millis(300));
        let err = session.call(request).await.unwrap_err();
        assert!(matches!(err, SessionError::Timeout { .. }), "{err}");
        assert!(session.is_broken());
    }
    assert_eq!(pool.stats().discarded, 1);
    // The replacement answers.
    let mut session = pool.acquire().await.unwrap();
    let outcome = session
        .call(call("echo", json!({"message": "after"})))
        .await
        .unwrap();
    assert_eq!(outcome.stdout, "Echo: after");
}

#[tokio::test]
async fn a_declared_warm_up_call_runs_n_times_while_pre_warming() {
    use tetrarch::session::{PoolContext, PoolDef};
    let Some(spec) = python_server() else { return };
    let text = format!(
        "kind = \"mcp\"\ncommand = [{:?}, {:?}]\nmin_idle = 1\nmax_size = 1\n\
         warmup = {{ tool = \"calls\", calls = 3 }}\n",
        spec.program, spec.args[0]
    );
    let def: PoolDef = toml::from_str(&text).unwrap();
    let context = PoolContext {
        base_dir: servers_dir(),
        ..PoolContext::default()
    };
    let pool = def.start("py", &context).await.unwrap();
    // Pre-warmed: the session exists before the first acquire, and has been called 3 times.
    assert_eq!(pool.stats().created, 1);
    let mut session = pool.acquire().await.unwrap();
    let outcome = session.call(call("calls", json!({}))).await.unwrap();
    assert_eq!(outcome.stdout.trim(), "4", "{outcome:?}");
    drop(session);

    // The runtime's last start-up step repeats the warm-up (as many times as declared) on each
    // idle session, without counting it as an acquire.
    let acquired = pool.stats().acquired;
    pool.warm_up_idle().await;
    assert_eq!(pool.stats().acquired, acquired);
    assert_eq!(pool.stats().idle, 1);
    let mut session = pool.acquire().await.unwrap();
    let outcome = session.call(call("calls", json!({}))).await.unwrap();
    assert_eq!(outcome.stdout.trim(), "8", "{outcome:?}");
    drop(session);
    pool.close();

    // A warm-up that fails is a start-up error naming the call, not a broken first task.
    let text = format!(
        "kind = \"mcp\"\ncommand = [{:?}, {:?}]\nwarmup = {{ tool = \"fail\", args = {{ message = \"cold\" }} }}\n",
        spec.program, spec.args[0]
    );
    let def: PoolDef = toml::from_str(&text).unwrap();
    let err = def.start("py", &context).await.unwrap_err();
    assert!(
        err.to_string().contains("warm-up call \"fail\" failed"),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_silent_after_its_handshake_fails_to_start_within_the_start_timeout() {
    let script = servers_dir().join("silent_after_init.py");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let python = std::env::split_paths(&path)
        .map(|dir| dir.join("python3"))
        .find(|candidate| candidate.exists())
        .unwrap_or_else(|| PathBuf::from("python3"));
    let spec = McpSpec::new(python.display().to_string(), [script.display().to_string()]);
    let Some(mut spec) = available("python3", python, spec) else {
        return;
    };
    spec.start_timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let failed = tokio::time::timeout(Duration::from_secs(20), McpSession::connect(&spec))
        .await
        .expect("connect hung past its start timeout");
    let error = failed.unwrap_err();
    assert!(
        matches!(&error, SessionError::Protocol { detail } if detail.contains("did not answer its first ping")),
        "{error}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_server_killed_during_a_run_is_replaced_and_no_completed_task_runs_again() {
    use std::sync::Arc;
    use tetrarch::agents::{ActorsConfig, RunOptions, RunStatus, Runtime, RuntimeOptions};
    use tetrarch::permissions::PermissionEngine;
    use tetrarch::plan::Plan;
    use tetrarch::session::{NativeRegistry, PoolDef, PoolKind};
    use tetrarch::store::{Store, StoreConfig};

    let Some(spec) = python_server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let mut actors = ActorsConfig::embedded().unwrap();
    actors.executor.pools.remove("scorer");
    let mut py = PoolDef::new(PoolKind::Mcp);
    py.command = std::iter::once(spec.program.clone())
        .chain(spec.args.clone())
        .collect();
    py.min_idle = 1;
    py.max_size = 1;
    actors.executor.pools.insert("py".to_owned(), py);
    actors
        .executor
        .pools
        .insert("fn".to_owned(), PoolDef::new(PoolKind::Native));
    let mut natives = NativeRegistry::new();
    // SIGKILLs the server whose pid the upstream task reported.
    natives.register("kill", |args: serde_json::Value| async move {
        let pid = args["pid"]["result"]
            .as_i64()
            .or_else(|| args["pid"].as_i64())
            .ok_or_else(|| format!("no pid in {args}"))?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).map_err(|e| e.to_string())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(json!({ "killed": pid.as_raw() }))
    });
    let mut options = RuntimeOptions::new(store, actors);
    options.natives = natives;
    let runtime = Runtime::start(options).await.unwrap();
    let plan = Plan::from_toml(
        r#"
name = "server-dies"
[[task]]
id = "before"
tool = "py.pid"
args = {}
[[task]]
id = "kill"
tool = "fn.kill"
deps = ["before"]
args = { pid = "{{tasks.before.output}}" }
[[task]]
id = "after"
tool = "py.pid"
deps = ["kill"]
args = {}
retries = 1
[[task]]
id = "sum"
tool = "py.add"
deps = ["after"]
args = { a = 2, b = 3 }
"#,
        "plan.toml",
    )
    .unwrap();
    let rules = PermissionEngine::from_settings_json(
        r#"{"permissions": {"allow": ["mcp__py"]}}"#,
        &dir.path().join("settings.json"),
        dir.path(),
        dir.path(),
    )
    .unwrap();
    let run = RunOptions {
        base_dir: dir.path().to_path_buf(),
        permissions: Some(Arc::new(rules)),
        ..RunOptions::default()
    };
    let report = runtime.run(plan, run).await.unwrap();
    assert_eq!(
        report.status,
        RunStatus::Complete,
        "{:?}",
        report.problems()
    );
    let pid = |task: &str| report.task(task).unwrap().output.clone().unwrap();
    assert_ne!(pid("before"), pid("after"), "the dead server was replaced");
    let sum = report.task("sum").unwrap().output.clone().unwrap();
    assert_eq!(sum["sum"], 5, "{sum}");
    // The task that completed before the kill kept its output and ran once.
    assert_eq!(report.task("before").unwrap().attempts, 1);
    assert_eq!(report.task("before").unwrap().retries, 0);
    runtime.shutdown().await;
}

/// A server on Python's standard library (`tests/mcp-servers/stdlib_server.py`), started through
/// `sh -c` so that it is a wrapper's child, as servers run by `npx` or `uvx` are.
fn stdlib_server(mode: &str) -> Option<McpSpec> {
    let script = servers_dir().join("stdlib_server.py");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let python = std::env::split_paths(&path)
        .map(|dir| dir.join("python3"))
        .find(|candidate| candidate.exists())
        .unwrap_or_else(|| PathBuf::from("python3"));
    // `; exit` keeps the shell from exec'ing python, so the server is the shell's child.
    let line = format!("'{}' '{}' {mode}; exit", python.display(), script.display());
    available(
        "python3",
        python,
        McpSpec::new("sh", ["-c".to_owned(), line]),
    )
}

#[tokio::test]
async fn an_oversized_result_is_cut_at_the_output_cap_and_marked_truncated() {
    let Some(spec) = stdlib_server("") else {
        return;
    };
    let mut session = McpSession::connect(&spec).await.unwrap();
    let cap = tetrarch::session::DEFAULT_MAX_OUTPUT_BYTES;
    let outcome = session
        .call(call("big", json!({ "bytes": cap * 3 })))
        .await
        .unwrap();
    assert_eq!(outcome.stdout.len(), cap);
    assert!(outcome.truncated);
    // Under the cap nothing is marked.
    let outcome = session
        .call(call("big", json!({ "bytes": 10 })))
        .await
        .unwrap();
    assert_eq!(
        (outcome.stdout.as_str(), outcome.truncated),
        ("xxxxxxxxxx", false)
    );
}

#[tokio::test]
async fn a_message_over_the_limit_fails_its_call_at_once_naming_the_limit() {
    let Some(spec) = stdlib_server("") else {
        return;
    };
    let mut session = McpSession::connect(&spec).await.unwrap();
    // rmcp dropped the line and kept waiting: the call waited for its whole timeout.
    let started = std::time::Instant::now();
    let request = call(
        "big",
        json!({ "bytes": tetrarch::session::MAX_MESSAGE_BYTES + 1 }),
    )
    .with_timeout(Duration::from_secs(60));
    let error = session.call(request).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let text = error.to_string();
    assert!(text.contains("a message over 16 MiB"), "{text}");
    // The session is broken: its pool replaces it.
    assert!(error.breaks_session(), "{error:?}");
    assert!(!session.is_open());
}

#[tokio::test]
async fn a_tool_list_that_never_comes_fails_within_the_start_timeout() {
    let Some(mut spec) = stdlib_server("silent-list") else {
        return;
    };
    spec.start_timeout = Duration::from_secs(1);
    let session = McpSession::connect(&spec).await.unwrap();
    let listed = tokio::time::timeout(Duration::from_secs(20), session.tool_names())
        .await
        .expect("asking for the tool list hung past the start timeout");
    let error = listed.unwrap_err();
    assert!(
        matches!(&error, SessionError::Timeout { tool, .. } if tool == "tools/list"),
        "{error}"
    );
}

#[tokio::test]
async fn a_start_timeout_too_large_for_the_clock_means_none() {
    let Some(mut spec) = stdlib_server("") else {
        return;
    };
    spec.start_timeout = Duration::MAX;
    let session = McpSession::connect(&spec).await.unwrap();
    assert_eq!(
        session.tool_names().await.unwrap(),
        ["big", "pid", "sleep", "say", "die", "leave"]
    );
}

fn is_alive(pid: i32) -> bool {
    // Gone, or a zombie waiting to be reaped: it has stopped running either way.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    !status.is_empty()
        && !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
}

#[tokio::test]
async fn a_discarded_session_takes_a_wrapped_server_stuck_in_a_call_with_it() {
    let Some(spec) = stdlib_server("") else {
        return;
    };
    let mut session = McpSession::connect(&spec).await.unwrap();
    let pid: i32 = session
        .call(call("pid", json!({})))
        .await
        .unwrap()
        .stdout
        .parse()
        .unwrap();
    assert_ne!(
        Some(pid as u32),
        session.server_pid(),
        "the server is the shell's child"
    );
    let stuck = ToolRequest::new("sleep", json!({ "seconds": 120 }))
        .with_timeout(Duration::from_millis(200));
    let err = session.call(stuck).await.unwrap_err();
    assert!(matches!(err, SessionError::Timeout { .. }), "{err}");
    assert!(is_alive(pid));
    drop(session);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while is_alive(pid) && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!is_alive(pid), "server {pid} outlived its session");
}

#[tokio::test]
async fn a_server_that_dies_mid_call_is_reported_with_its_last_stderr_lines() {
    let Some(spec) = stdlib_server("") else {
        return;
    };
    let mut session = McpSession::connect(&spec).await.unwrap();
    let error = session.call(call("die", json!({}))).await.unwrap_err();
    assert!(matches!(error, SessionError::Closed { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("the server's stderr ends: ValueError: model file corrupt"),
        "{error}"
    );
}

/// A server that exited between calls is not handed out again, even when a process it left
/// holds its pipes open (so the client never reads their end): its next call used to go to
/// nobody and fail, or wait out its timeout.
#[tokio::test]
async fn a_server_that_exited_while_idle_is_replaced_before_its_next_call() {
    let Some(spec) = stdlib_server("") else {
        return;
    };
    let config = PoolConfig {
        min_idle: 1,
        max_size: 1,
        ..PoolConfig::new("leaving")
    };
    let pool = Pool::start(config, McpFactory::new(spec)).await.unwrap();
    let left = {
        let mut session = pool.acquire().await.unwrap();
        session.call(call("leave", json!({}))).await.unwrap().stdout
    };
    // The server and its wrapper exit just after answering: the server first (however slowly a
    // loaded machine runs it), then its wrapper, a moment later.
    let server: i32 = left.trim().parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while is_alive(server) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!is_alive(server), "the server did not leave");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut session = pool.acquire().await.unwrap();
    let request = call("pid", json!({})).with_timeout(Duration::from_secs(5));
    let pid = session.call(request).await.unwrap().stdout;
    assert_ne!(pid, left, "the server that left answered");
    assert!(pool.stats().discarded >= 1);
}
