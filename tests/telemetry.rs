//! Telemetry over HTTP during a real run with native tools: the dashboard page, its JSON, the
//! server-sent event stream, Prometheus metrics after the run, restarts, the view of a finished
//! run from the store, and a dashboard address already in use (in the library and in
//! `tetrarch run`, where the run goes on), and the servers' connection limits (a client that
//! sends no request is disconnected; connections past the limit wait).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tetrarch::agents::{ActorsConfig, AgentKind, RunOptions, RunStatus, Runtime, RuntimeOptions};
use tetrarch::plan::Plan;
use tetrarch::session::{NativeRegistry, PoolDef, PoolKind};
use tetrarch::store::{Store, StoreConfig};
use tetrarch::telemetry::{
    DashboardServer, MetricsServer, ServeLimits, Telemetry, TelemetryError, install_metrics,
    parse_addr,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Waits (up to 10 s) until `done` holds: the observer records some metrics from the run's
/// events on its own task, a moment after the run returns.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A diamond whose middle tasks sleep side by side.
const DIAMOND: &str = r#"
name = "telemetry-diamond"
[[task]]
id = "a"
tool = "fn.echo"
args = { sleep_ms = 20 }
[[task]]
id = "b"
tool = "fn.echo"
deps = ["a"]
args = { sleep_ms = 150 }
[[task]]
id = "c"
tool = "fn.echo"
deps = ["a"]
args = { sleep_ms = 150 }
[[task]]
id = "d"
tool = "fn.echo"
deps = ["b", "c"]
args = { sleep_ms = 20 }
"#;

/// Two identical cacheable calls, one after the other.
const CACHED: &str = r#"
name = "telemetry-cached"
[[task]]
id = "x"
tool = "fn.echo"
cacheable = true
args = { value = 7 }
[[task]]
id = "y"
tool = "fn.echo"
deps = ["x"]
cacheable = true
args = { value = 7 }
"#;

async fn start_runtime(store: Store) -> Runtime {
    let mut natives = NativeRegistry::new();
    natives.register("echo", |args: Value| async move {
        if let Some(ms) = args.get("sleep_ms").and_then(Value::as_u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(args)
    });
    natives.register("fail", |_args: Value| async move {
        Err::<Value, String>("the tool broke".to_owned())
    });
    let mut actors = ActorsConfig::embedded().unwrap();
    let mut pool = PoolDef::new(PoolKind::Native);
    pool.max_size = 8;
    actors.executor.pools.insert("fn".to_owned(), pool.clone());
    // The metrics recorder is process-wide and tests run in parallel: the context test calls its
    // tools through its own pool so its calls carry their own label.
    actors.executor.pools.insert("ctx".to_owned(), pool.clone());
    // One session at a time: of two calls side by side, one waits for the other.
    let mut single = pool;
    single.max_size = 1;
    actors.executor.pools.insert("one".to_owned(), single);
    let mut options = RuntimeOptions::new(store, actors);
    options.natives = natives;
    Runtime::start(options).await.unwrap()
}

/// One HTTP/1.1 GET: (status, head, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    get_as(addr, &addr.to_string(), path).await
}

/// [`get`] with `host` as the `Host` header.
async fn get_as(addr: SocketAddr, host: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, head, body) = get(addr, path).await;
    assert_eq!(status, 200, "{path}: {head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/json")
    );
    serde_json::from_str(&body).unwrap()
}

/// Opens `/api/events` and returns a reader positioned after the response head.
async fn open_events(addr: SocketAddr) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_lowercase().contains("text/event-stream"), "{head}");
    reader
}

/// Reads server-sent events (the JSON of each `data:` line) until `run_finished`. The body is
/// chunked, so chunk-size lines are skipped: only `data:` lines are events.
async fn read_events_until_finished(reader: &mut BufReader<TcpStream>) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(20), reader.read_line(&mut line))
            .await
            .expect("the event stream went quiet before run_finished")
            .unwrap();
        assert!(n > 0, "the event stream closed before run_finished");
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            let event: Value = serde_json::from_str(data).unwrap();
            let done = event["event"] == "run_finished";
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

/// The value of the one sample line of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|line| {
            let (series, _) = line.rsplit_once(' ').unwrap_or((line, ""));
            let bare = series.split('{').next().unwrap_or("");
            bare == name && labels.iter().all(|l| series.contains(l))
        })
        .and_then(|line| line.rsplit_once(' '))
        .map(|(_, v)| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_serves_page_state_events_and_metrics_of_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let plan_path = dir.path().join("plan.toml");
    std::fs::write(&plan_path, DIAMOND).unwrap();
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let runtime = start_runtime(store).await;
    let plan = Plan::from_toml(DIAMOND, "plan.toml").unwrap();

    let telemetry = Telemetry::new(Some(install_metrics().unwrap()));
    telemetry.watch_plan(&plan);
    let observer = telemetry.observe(runtime.subscribe_all());
    let server = DashboardServer::bind("127.0.0.1:0".parse().unwrap(), telemetry.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());

    // The page: one HTML file that reads the JSON and the event stream.
    let (status, head, page) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(head.to_lowercase().contains("content-type: text/html"));
    assert!(page.contains("<title>tetrarch dashboard</title>"));
    assert!(page.contains("/api/state") && page.contains("/api/events"));
    // The page carries the state as of its request.
    assert!(page.contains("\"mode\":\"live\"") && !page.contains("/*INITIAL_STATE*/"));

    // Before the run: every task pending, the DAG's levels and dependencies.
    let state = get_json(addr, "/api/state").await;
    assert_eq!(state["mode"], "live");
    let tasks = state["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 4);
    assert!(tasks.iter().all(|t| t["state"] == "pending"));
    let d = tasks.iter().find(|t| t["id"] == "d").unwrap();
    assert_eq!(d["deps"], serde_json::json!(["b", "c"]));
    assert_eq!(d["level"], 2);
    assert_eq!(d["tool"], "fn.echo");

    // Subscribe before the run starts, then run.
    let mut stream = open_events(addr).await;
    let reader = tokio::spawn(async move { read_events_until_finished(&mut stream).await });
    let options = RunOptions {
        base_dir: dir.path().to_path_buf(),
        source: plan_path.display().to_string(),
        ..RunOptions::default()
    };
    let report = telemetry
        .drive(&runtime, runtime.run(plan, options))
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Complete);

    let events = reader.await.unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"run_started"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "task_started").count(), 4);
    assert_eq!(kinds.iter().filter(|k| **k == "task_finished").count(), 4);
    assert_eq!(events.last().unwrap()["status"], "complete");

    // After the run: the JSON shows the outcome and the runtime's gauges.
    let state = get_json(addr, "/api/state").await;
    assert_eq!(state["run"]["status"], "complete");
    assert_eq!(state["run"]["run_id"], report.run_id.as_str());
    assert!(
        state["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "complete")
    );
    let agents = state["agents"].as_array().unwrap();
    let names: Vec<&str> = agents
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orchestrator", "optimizer", "executor", "reviewer"]);
    assert!(
        agents
            .iter()
            .all(|a| a["restarts"] == 0 && a["running"] == true)
    );
    assert!(agents.iter().all(|a| a["mailbox_depth"].is_u64()));
    let pool = state["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "fn")
        .unwrap();
    assert!(pool["acquired"].as_u64().unwrap() >= 4, "{pool}");
    assert_eq!(pool["in_use"], 0);
    let latency = &state["latency"][0];
    assert_eq!(latency["tool"], "fn.echo");
    assert_eq!(latency["count"], 4);
    // b and c sleep 150 ms each: an attempt took at least that long.
    assert!(latency["max_ms"].as_f64().unwrap() >= 150.0, "{latency}");
    // b and c ran side by side: a real share of task time was parallel.
    let ratio = state["parallel_ratio"].as_f64().unwrap();
    assert!(ratio > 0.3 && ratio <= 1.0, "parallel ratio {ratio}");
    assert_eq!(
        state["events"].as_array().unwrap().len(),
        events.len(),
        "the JSON keeps the event log a page opened late shows"
    );

    // Prometheus text with the run's numbers.
    let (status, _, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let echo = "tool=\"fn.echo\"";
    assert_eq!(
        metric(
            &text,
            "tetrarch_tool_calls_total",
            &[echo, "status=\"complete\""]
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "tetrarch_task_attempt_duration_seconds_count",
            &[echo, "agent=\"executor\""]
        ),
        Some(4.0)
    );
    // The Executor's own measure of the calls.
    assert_eq!(
        metric(
            &text,
            "tetrarch_tool_call_duration_seconds_count",
            &[echo, "agent=\"executor\""]
        ),
        Some(4.0),
        "{text}"
    );
    // Explicit buckets: a histogram, not a summary. b and c slept 150 ms, so at most a and d
    // fall in the 0.1 s bucket; all four in +Inf.
    let bucket = |le: &str| {
        let le = format!("le=\"{le}\"");
        metric(
            &text,
            "tetrarch_task_attempt_duration_seconds_bucket",
            &[echo, &le],
        )
    };
    assert!(bucket("0.1").unwrap() <= 2.0, "{text}");
    assert_eq!(bucket("+Inf"), Some(4.0), "{text}");
    // The recorder is process-wide and the context test may have finished a run already.
    let runs = metric(&text, "tetrarch_runs_total", &["status=\"complete\""]).unwrap_or(0.0);
    assert!((1.0..=2.0).contains(&runs), "{text}");

    assert_eq!(metric(&text, "tetrarch_active_agents", &[]), Some(4.0));
    for agent in AgentKind::ALL {
        let label = format!("agent=\"{agent}\"");
        assert!(
            metric(&text, "tetrarch_mailbox_depth", &[&label]).is_some(),
            "{text}"
        );
        assert_eq!(
            metric(&text, "tetrarch_agent_restarts_total", &[&label]),
            Some(0.0)
        );
    }
    assert!(metric(&text, "tetrarch_pool_acquired_total", &["pool=\"fn\""]).unwrap() >= 4.0);
    assert_eq!(
        metric(&text, "tetrarch_pool_sessions_in_use", &["pool=\"fn\""]),
        Some(0.0)
    );
    // One wait sample per acquire (a histogram, not a running total).
    assert!(
        metric(&text, "tetrarch_pool_wait_seconds_count", &["pool=\"fn\""]).unwrap() >= 4.0,
        "{text}"
    );
    assert!(
        metric(&text, "tetrarch_pool_wait_seconds", &["pool=\"fn\""]).is_none(),
        "no gauge of the same name: {text}"
    );
    let exported_ratio = metric(&text, "tetrarch_parallel_execution_ratio", &[]).unwrap();
    assert!((exported_ratio - ratio).abs() < 1e-9);
    assert!(metric(&text, "tetrarch_store_memories", &["state=\"live\""]).is_some());

    // The run is over: the event stream says so (204 stops EventSource reconnecting).
    let (status, _, _) = get(addr, "/api/events").await;
    assert_eq!(status, 204);

    // A restart shows in the JSON (agents and event log) and the metrics.
    runtime.inject_fault(AgentKind::Optimizer).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while runtime.restarts(AgentKind::Optimizer) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the optimizer was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    telemetry.sample(&runtime);
    let state = get_json(addr, "/api/state").await;
    assert_eq!(state["agents"][1]["agent"], "optimizer");
    assert_eq!(state["agents"][1]["restarts"], 1);
    let mut logged = None;
    for _ in 0..200 {
        let state = get_json(addr, "/api/state").await;
        logged = state["events"].as_array().unwrap().last().cloned();
        if logged
            .as_ref()
            .is_some_and(|e| e["event"] == "agent_restarted")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let logged = logged.unwrap();
    assert_eq!(logged["event"], "agent_restarted", "{logged}");
    assert_eq!(logged["agent"], "optimizer");
    let (_, _, text) = get(addr, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "tetrarch_agent_restarts_total",
            &["agent=\"optimizer\""]
        ),
        Some(1.0)
    );

    // The same run read back from the store, as `tetrarch dashboard` shows it.
    let finished = Telemetry::finished(runtime.store(), None, None).unwrap();
    let saved = serde_json::to_value(finished.state()).unwrap();
    assert_eq!(saved["mode"], "finished");
    assert_eq!(saved["run"]["run_id"], report.run_id.as_str());
    assert_eq!(saved["run"]["status"], "complete");
    // From its start to its end, saved with the run: at least the critical path a→b→d's sleeps.
    let duration_ms = saved["run"]["duration_ms"].as_u64().unwrap_or(0);
    assert!(duration_ms >= 190, "{saved}");
    assert!(
        saved["note"].is_null(),
        "the plan file was readable: {saved}"
    );
    let saved_tasks = saved["tasks"].as_array().unwrap();
    assert!(saved_tasks.iter().all(|t| t["state"] == "complete"));
    // Each task's attempt (and reason, had it failed) comes from its record, not only its state.
    assert!(
        saved_tasks.iter().all(|t| t["attempt"] == 1),
        "{saved_tasks:?}"
    );
    assert_eq!(saved_tasks[3]["deps"], serde_json::json!(["b", "c"]));
    // Each tool's latency, from the attempt times saved with the tasks: four attempts, the
    // longest at least b's or c's 150 ms sleep, the mean at least the sleeps' (20+150+150+20)/4.
    let latency = &saved["latency"][0];
    assert_eq!(latency["tool"], "fn.echo", "{saved}");
    assert_eq!(latency["count"], 4, "{latency}");
    assert!(latency["max_ms"].as_f64().unwrap() >= 150.0, "{latency}");
    assert!(latency["mean_ms"].as_f64().unwrap() >= 85.0, "{latency}");
    let missing = Telemetry::finished(runtime.store(), Some("no-such-run"), None)
        .err()
        .unwrap();
    assert_eq!(
        missing.to_string(),
        "dashboard: the store holds no run no-such-run"
    );

    // A live view of the same run resumed starts from what the store has of it.
    let resumed = Telemetry::new(None);
    resumed.watch_plan(&Plan::from_toml(DIAMOND, "plan.toml").unwrap());
    resumed
        .resume_from(runtime.store(), report.run_id.as_str())
        .unwrap();
    let view = serde_json::to_value(resumed.state()).unwrap();
    let tasks = view["tasks"].as_array().unwrap();
    assert!(
        tasks
            .iter()
            .all(|t| t["state"] == "complete" && t["attempt"] == 1),
        "{view}"
    );
    assert_eq!(view["latency"][0]["count"], 4, "{view}");

    // Context cache hits and misses: the second of two identical cacheable calls is a hit.
    let cached = Plan::from_toml(CACHED, "cached.toml").unwrap();
    telemetry.watch_plan(&cached);
    let report = telemetry
        .drive(&runtime, runtime.run(cached, RunOptions::default()))
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Complete);
    let state = get_json(addr, "/api/state").await;
    let tool_results = state["cache"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cache"] == "tool_result")
        .unwrap()
        .clone();
    assert_eq!(tool_results["hits"], 1, "{tool_results}");
    assert_eq!(tool_results["misses"], 1, "{tool_results}");
    let (_, _, text) = get(addr, "/metrics").await;
    let tool_result = "cache=\"tool_result\"";
    assert_eq!(
        metric(&text, "tetrarch_cache_hits_total", &[tool_result]),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "tetrarch_cache_misses_total", &[tool_result]),
        Some(1.0)
    );

    server.shutdown().await;
    observer.abort();
    runtime.shutdown().await;
}

#[tokio::test]
async fn a_dashboard_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let error = DashboardServer::bind(addr, Telemetry::new(None))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, TelemetryError::AddrInUse { .. }));
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("dashboard: 127.0.0.1:{} is in use: ", addr.port())),
        "{message}"
    );
}

#[tokio::test]
async fn metrics_without_a_recorder_say_so() {
    let server = DashboardServer::bind("127.0.0.1:0".parse().unwrap(), Telemetry::new(None))
        .await
        .unwrap();
    let (status, _, body) = get(server.local_addr(), "/metrics").await;
    assert_eq!(status, 404);
    assert!(body.contains("no Prometheus recorder"), "{body}");
    server.shutdown().await;
}

#[test]
fn dashboard_addresses_default_to_loopback() {
    for (given, meant) in [
        ("8080", "127.0.0.1:8080"),
        (":9000", "127.0.0.1:9000"),
        ("0.0.0.0:81", "0.0.0.0:81"),
        ("localhost:7400", "127.0.0.1:7400"),
        ("LocalHost:7400", "127.0.0.1:7400"),
        ("[::1]:7400", "[::1]:7400"),
    ] {
        assert_eq!(
            parse_addr(given).unwrap(),
            meant.parse::<SocketAddr>().unwrap(),
            "{given}"
        );
    }
    // An IPv6 address without a port is not a port: `::1` used to bind 127.0.0.1:1.
    for bad in ["::1", ":::8080", "::"] {
        assert!(parse_addr(bad).is_err(), "{bad}");
    }
    let error = parse_addr("localhost:http").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("\"localhost:http\" is not an address")
    );
}

fn write_cli_plan(dir: &Path) {
    std::fs::write(
        dir.join("plan.toml"),
        "name = \"cli-dashboard\"\npermissions = \"settings.json\"\n\
         [pools.sh]\nkind = \"process\"\ncommand = [\"sh\", \"-c\"]\n\
         [[task]]\nid = \"hello\"\ntool = \"sh.say\"\nargs = { argv = [\"echo '{\\\"ok\\\": true}'\"] }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)"]}}"#,
    )
    .unwrap();
}

#[test]
fn tetrarch_run_warns_when_the_dashboard_port_is_taken_and_runs_anyway_then_dashboard_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    write_cli_plan(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .arg("--store")
        .arg(dir.path().join("store.redb"))
        .arg("run")
        .arg(dir.path().join("plan.toml"))
        .arg("--dashboard")
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("warning: dashboard: 127.0.0.1:{port} is in use: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains("the run goes on without the dashboard"),
        "{stderr}"
    );
    assert!(stderr.contains("1/1 tasks complete"), "{stderr}");

    // The finished run, served by `tetrarch dashboard` on a port it picks.
    let mut dashboard = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .arg("--store")
        .arg(dir.path().join("store.redb"))
        .args(["dashboard", "--addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(dashboard.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let served = first
        .strip_prefix("dashboard: http://")
        .and_then(|rest| rest.split('/').next())
        .map(str::parse::<SocketAddr>);
    let state = served.map(|addr| {
        let mut stream = std::net::TcpStream::connect(addr.unwrap()).unwrap();
        stream
            .write_all(b"GET /api/state HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    });
    // The dashboard read the run and closed the store: another command can open it meanwhile.
    let runs = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .arg("--store")
        .arg(dir.path().join("store.redb"))
        .args(["runs", "--json"])
        .output()
        .unwrap();
    dashboard.kill().unwrap();
    dashboard.wait().unwrap();
    assert!(
        runs.status.success(),
        "{}",
        String::from_utf8_lossy(&runs.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&runs.stdout).lines().count(), 1);
    let state = state.unwrap_or_else(|| panic!("unexpected first line: {first}"));
    let body: Value = serde_json::from_str(state.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["mode"], "finished");
    assert_eq!(body["run"]["status"], "complete");
    assert_eq!(body["tasks"][0]["id"], "hello");
    assert_eq!(body["tasks"][0]["state"], "complete");
}

/// A task whose args use `{{context}}`: the payload's size is a metric and a bar on the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn context_payloads_are_measured_and_shown_per_session() {
    const WITH_CONTEXT: &str = r#"
name = "telemetry-context"
[[task]]
id = "gather"
tool = "ctx.echo"
args = { finding = "the smoke shader spills registers on sm_90" }
[[task]]
id = "summarise"
tool = "ctx.echo"
deps = ["gather"]
args = { notes = "{{context}}" }
"#;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let runtime = start_runtime(store).await;
    let plan = Plan::from_toml(WITH_CONTEXT, "plan.toml").unwrap();
    let telemetry = Telemetry::new(Some(install_metrics().unwrap()));
    telemetry.watch_plan(&plan);
    let observer = telemetry.observe(runtime.subscribe_all());
    let server = DashboardServer::bind("127.0.0.1:0".parse().unwrap(), telemetry.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    let options = RunOptions {
        base_dir: dir.path().to_path_buf(),
        ..RunOptions::default()
    };
    let report = runtime.run(plan, options).await.unwrap();
    let notes = report.task("summarise").unwrap().output.clone().unwrap();
    assert!(
        notes["notes"]
            .as_str()
            .unwrap()
            .contains("spills registers"),
        "{notes}"
    );
    // This run's own view: the metric is process-wide, and a test beside this one raises it.
    eventually("the context payload is shown", async || {
        let state = get_json(addr, "/api/state").await;
        state["context"].as_array().is_some_and(|c| !c.is_empty())
    })
    .await;
    let (_, _, text) = get(addr, "/metrics").await;
    assert!(
        metric(&text, "tetrarch_context_tokens_count", &[]).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    let state = get_json(addr, "/api/state").await;
    let context = state["context"].as_array().unwrap();
    assert_eq!(context.len(), 1, "{state}");
    assert_eq!(context[0]["task"], "summarise");
    assert!(context[0]["tokens"].as_u64().unwrap() > 0, "{state}");
    assert_eq!(context[0]["window"], 200_000);
    server.shutdown().await;
    observer.abort();
    runtime.shutdown().await;
}

/// A pool of one session (one caller waits), a score gate (the Reviewer calls the scorer), a
/// task reading `{{context}}` (the store is searched) and a task that fails: each is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_waits_score_gates_store_ops_and_failed_calls_are_measured() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scoring");
    let plan_text = format!(
        r#"
name = "telemetry-measures"
[[task]]
id = "w1"
tool = "one.echo"
args = {{ sleep_ms = 200 }}
[[task]]
id = "w2"
tool = "one.echo"
args = {{ sleep_ms = 200 }}
[[task]]
id = "scored"
tool = "one.echo"
deps = ["w1", "w2"]
args = {{ notes = "{{{{context}}}}" }}
gates = [{{ score = "ssim", reference = "{reference}", test = "{test}", min = 0.0 }}]
[[task]]
id = "broken"
tool = "one.fail"
deps = ["scored"]
"#,
        reference = fixtures.join("ref.png").display(),
        test = fixtures.join("test_blur.png").display(),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let runtime = start_runtime(store).await;
    let plan = Plan::from_toml(&plan_text, "plan.toml").unwrap();
    let handle = install_metrics().unwrap();
    let count = |text: &str, name: &str, labels: &[&str]| metric(text, name, labels).unwrap_or(0.0);
    let before = handle.render();
    let telemetry = Telemetry::new(Some(handle.clone()));
    telemetry.watch_plan(&plan);
    let observer = telemetry.observe(runtime.subscribe_all());
    let options = RunOptions {
        base_dir: dir.path().to_path_buf(),
        ..RunOptions::default()
    };
    let report = telemetry
        .drive(&runtime, runtime.run(plan, options))
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(
        report.task("scored").unwrap().state,
        tetrarch::agents::TaskState::Complete
    );
    // The observer counts calls from the finished events (`broken` finishes last), and the
    // store times the output memories' writes as they commit, after the run may have returned.
    eventually(
        "every finished call and store operation is counted",
        async || {
            let text = handle.render();
            let store_ops = ["store", "search"].iter().all(|op| {
                let label = format!("op=\"{op}\"");
                let name = "tetrarch_store_op_duration_seconds_count";
                count(&text, name, &[&label]) > count(&before, name, &[&label])
            });
            store_ops
                && count(&text, "tetrarch_tool_calls_total", &["tool=\"one.fail\""]) >= 1.0
                && count(&text, "tetrarch_tool_calls_total", &["tool=\"one.echo\""]) >= 3.0
        },
    )
    .await;
    let text = handle.render();

    // Failed calls by status.
    let fail = "tool=\"one.fail\"";
    assert_eq!(
        metric(
            &text,
            "tetrarch_tool_calls_total",
            &[fail, "status=\"failed\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "tetrarch_tool_calls_total",
            &["tool=\"one.echo\"", "status=\"complete\""]
        ),
        Some(3.0),
        "{text}"
    );

    // Pool waits: one sample per acquire, and w1 and w2 shared one session, so one of them
    // waited for the other's 200 ms (more than the 0.1 s bucket).
    let one = "pool=\"one\"";
    let waits = metric(&text, "tetrarch_pool_wait_seconds_count", &[one]).unwrap();
    assert_eq!(waits, 4.0, "{text}");
    let quick = metric(
        &text,
        "tetrarch_pool_wait_seconds_bucket",
        &[one, "le=\"0.1\""],
    )
    .unwrap();
    assert_eq!(quick, 3.0, "one acquire waited: {text}");
    assert!(metric(&text, "tetrarch_pool_wait_seconds_sum", &[one]).unwrap() >= 0.15);
    // The explicit buckets reach below a millisecond.
    assert!(
        metric(
            &text,
            "tetrarch_pool_wait_seconds_bucket",
            &[one, "le=\"0.0001\""]
        )
        .is_some(),
        "{text}"
    );

    // The Reviewer's score gate is a tool call of its own, by tool and agent.
    assert_eq!(
        metric(
            &text,
            "tetrarch_tool_call_duration_seconds_count",
            &["tool=\"scorer.ssim\"", "agent=\"reviewer\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "tetrarch_tool_call_duration_seconds_count",
            &["tool=\"one.echo\"", "agent=\"executor\""]
        ),
        Some(3.0),
        "{text}"
    );

    // Store operations: the outputs were stored and the context searched the store.
    for op in ["store", "search"] {
        let label = format!("op=\"{op}\"");
        let name = "tetrarch_store_op_duration_seconds_count";
        assert!(
            count(&text, name, &[&label]) > count(&before, name, &[&label]),
            "{op}: {text}"
        );
        assert!(
            metric(
                &text,
                "tetrarch_store_op_duration_seconds_bucket",
                &[&label, "le=\"+Inf\""]
            )
            .is_some()
        );
    }
    observer.abort();
    runtime.shutdown().await;
}

/// Starts `tetrarch run` on a plan whose one task sleeps `sleep_s`, with `--metrics ADDR` and
/// `extra` arguments.
fn spawn_cli_run(dir: &Path, sleep_s: u32, metrics: &str, extra: &[&str]) -> std::process::Child {
    std::fs::write(
        dir.join("plan.toml"),
        format!(
            "name = \"cli-metrics\"\npermissions = \"settings.json\"\n\
             [pools.sh]\nkind = \"process\"\ncommand = [\"sh\", \"-c\"]\n\
             [[task]]\nid = \"hello\"\ntool = \"sh.say\"\n\
             args = {{ argv = [\"sleep {sleep_s}; echo '{{\\\"ok\\\": true}}'\"] }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(sleep *)"]}}"#,
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .arg("--store")
        .arg(dir.join("store.redb"))
        .arg("run")
        .arg(dir.join("plan.toml"))
        .arg("--metrics")
        .arg(metrics)
        .args(extra)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Blocking HTTP/1.1 GET with a deadline: (status, body).
fn blocking_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

#[test]
fn tetrarch_run_metrics_serves_only_metrics_and_a_stalled_or_dropped_scraper_does_not_hold_up_the_run()
 {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let mut child = spawn_cli_run(dir.path(), 2, "127.0.0.1:0", &[]);
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let addr = loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("tetrarch ended before serving /metrics: {seen}");
        }
        seen.push_str(&line);
        if let Some(rest) = line.trim_end().strip_prefix("metrics: http://") {
            break rest
                .strip_suffix("/metrics")
                .unwrap()
                .parse::<SocketAddr>()
                .unwrap();
        }
    };
    assert!(addr.ip().is_loopback(), "{addr}");
    // A scraper that sends half a request and stalls, one that never reads its answer, one
    // that hangs up mid-request: held open (or gone) while the run goes on.
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    stalled
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let mut unread = std::net::TcpStream::connect(addr).unwrap();
    unread
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    {
        let mut dropped = std::net::TcpStream::connect(addr).unwrap();
        dropped.write_all(b"GET /metr").unwrap();
    }
    // A well-behaved scrape during the run: Prometheus text (the runtime's gauges once the
    // first sample is in); nothing else is served here.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = blocking_get(addr, "/metrics");
        assert_eq!(status, 200, "{body}");
        if body.contains("tetrarch_active_agents 4") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(blocking_get(addr, "/").0, 404);
    assert_eq!(blocking_get(addr, "/api/state").0, 404);

    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        rest
    });
    // The task sleeps 2 s; the stalled connections are still open while tetrarch ends.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("tetrarch did not end with stalled scrapers open: {seen}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    seen.push_str(&reader.join().unwrap());
    assert!(status.success(), "{seen}");
    assert!(seen.contains("1/1 tasks complete"), "{seen}");
    stalled.write_all(b"\r\n").ok();
    drop((stalled, unread));
}

#[test]
fn tetrarch_run_warns_when_the_metrics_port_is_taken_and_runs_anyway() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // A bare port means 127.0.0.1, as for the dashboard.
    let out = spawn_cli_run(dir.path(), 0, &port.to_string(), &[])
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("warning: metrics: 127.0.0.1:{port} is in use: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains("the run goes on without /metrics"),
        "{stderr}"
    );
    assert!(stderr.contains("1/1 tasks complete"), "{stderr}");
    let bad = spawn_cli_run(dir.path(), 0, "localhost:http", &[])
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(bad.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: metrics: \"localhost:http\" is not an address"),
        "{stderr}"
    );
}

/// Reads one response off a kept-alive connection (its head, then `Content-Length` bytes).
async fn read_response(reader: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// Opens a connection, sends one HTTP/1.1 GET (keep-alive, the default) and reads its
/// response; the connection is returned still open.
async fn keep_alive_get(addr: SocketAddr, path: &str) -> (BufReader<TcpStream>, u16, String) {
    let mut reader = BufReader::new(TcpStream::connect(addr).await.unwrap());
    reader
        .get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (status, body) = read_response(&mut reader).await;
    (reader, status, body)
}

/// Reads until the server closes the connection; fails if it has not within 10 s.
async fn closed_by_server(stream: &mut (impl tokio::io::AsyncRead + Unpin), what: &str) {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after 10 s"))
        .unwrap();
}

#[tokio::test]
async fn a_client_that_sends_no_request_or_idles_is_disconnected_while_others_are_served() {
    let limits = ServeLimits {
        header_read_timeout: Duration::from_millis(300),
        ..ServeLimits::default()
    };
    let server = DashboardServer::bind_with_limits(
        "127.0.0.1:0".parse().unwrap(),
        Telemetry::new(None),
        limits,
    )
    .await
    .unwrap();
    let addr = server.local_addr();

    // Half a request, then silence; and a connection that never sends a byte.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(format!("GET /api/state HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .await
        .unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Both stall only themselves.
    let state = get_json(addr, "/api/state").await;
    assert!(state["tasks"].is_array(), "{state}");

    // A keep-alive connection served once, then idle.
    let (mut idle, status, body) = keep_alive_get(addr, "/api/state").await;
    assert_eq!(status, 200, "{body}");

    closed_by_server(&mut half, "a connection with half a request").await;
    closed_by_server(&mut silent, "a connection that sent nothing").await;
    closed_by_server(&mut idle, "an idle keep-alive connection").await;
    server.shutdown().await;
}

#[tokio::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    let limits = ServeLimits {
        max_connections: 1,
        ..ServeLimits::default()
    };
    let server = MetricsServer::bind_with_limits(
        "127.0.0.1:0".parse().unwrap(),
        Telemetry::new(None),
        limits,
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    // Served once and kept alive: it holds the only slot.
    let (first, status, _) = keep_alive_get(addr, "/metrics").await;
    assert_eq!(
        status, 404,
        "no recorder installed in this server's telemetry"
    );

    let waiting = tokio::spawn(get(addr, "/metrics"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second connection was served while the only slot was taken"
    );
    drop(first);
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting connection was not served after the first closed")
        .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no Prometheus recorder"), "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn limits_that_could_serve_nothing_are_refused_naming_the_limit() {
    for (limits, named) in [
        (
            ServeLimits {
                max_connections: 0,
                ..ServeLimits::default()
            },
            "max_connections is 0",
        ),
        (
            ServeLimits {
                header_read_timeout: Duration::ZERO,
                ..ServeLimits::default()
            },
            "header_read_timeout is 0",
        ),
    ] {
        let error = MetricsServer::bind_with_limits(
            "127.0.0.1:0".parse().unwrap(),
            Telemetry::new(None),
            limits,
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(error, TelemetryError::BadLimits { .. }), "{error}");
        let message = error.to_string();
        assert!(message.starts_with("metrics: bad limits: "), "{message}");
        assert!(message.contains(named), "{message}");
    }
}

#[tokio::test]
async fn a_loopback_server_answers_only_to_localhost_and_ip_addresses() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), Telemetry::new(None))
        .await
        .unwrap();
    let addr = server.local_addr();
    let port = addr.port();
    for host in [
        addr.to_string(),
        format!("localhost:{port}"),
        "LOCALHOST".to_owned(),
        format!("[::1]:{port}"),
    ] {
        let (status, _, _) = get_as(addr, &host, "/metrics").await;
        assert_ne!(status, 403, "Host: {host}");
    }
    // A name a web page controls, pointed at 127.0.0.1 (DNS rebinding).
    for host in [
        format!("attacker.example:{port}"),
        "localhost.attacker.example".to_owned(),
    ] {
        let (status, _, body) = get_as(addr, &host, "/metrics").await;
        assert_eq!(status, 403, "Host: {host}: {body}");
        assert!(body.contains("Host not allowed"), "{body}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_on_every_address_still_checks_the_host_of_loopback_connections() {
    // Bound to 0.0.0.0 it also answers on 127.0.0.1, where a rebinding page's requests arrive.
    let server = MetricsServer::bind("0.0.0.0:0".parse().unwrap(), Telemetry::new(None))
        .await
        .unwrap();
    let port = server.local_addr().port();
    let loopback: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, _, _) = get_as(loopback, "attacker.example", "/metrics").await;
    assert_eq!(status, 403);
    let (status, _, _) = get_as(loopback, &format!("localhost:{port}"), "/metrics").await;
    assert_ne!(status, 403);
    server.shutdown().await;
}

#[test]
fn serve_after_keeps_metrics_up_for_the_runs_final_values_until_ctrl_c() {
    serve_after_until(nix::sys::signal::Signal::SIGINT);
}

#[test]
fn serve_after_stops_on_sigterm_as_on_ctrl_c() {
    // `docker stop` and systemd send SIGTERM: it was ignored, and the process served on.
    serve_after_until(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn serve_after_without_a_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plan.toml"), "name = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .arg("--store")
        .arg(dir.path().join("store.redb"))
        .arg("run")
        .arg(dir.path().join("plan.toml"))
        .args(["--serve-after", "5s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--serve-after") && err.contains("needs --dashboard or --metrics"),
        "{err}"
    );
}

fn serve_after_until(stop: nix::sys::signal::Signal) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_cli_run(dir.path(), 0, "127.0.0.1:0", &["--serve-after", "5m"]);
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut addr = None;
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("tetrarch ended before the run was over: {seen}");
        }
        seen.push_str(&line);
        if let Some(rest) = line.trim_end().strip_prefix("metrics: http://") {
            addr = Some(
                rest.strip_suffix("/metrics")
                    .unwrap()
                    .parse::<SocketAddr>()
                    .unwrap(),
            );
        }
        if line.starts_with("run over: serving") {
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no metrics address in: {seen}"));
    // Set only when the run ended: without the extra time no scrape could see it.
    let (status, body) = blocking_get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.lines()
            .any(|l| l.starts_with("tetrarch_runs_total{status=\"complete\"} 1")),
        "{body}"
    );
    // The task's output memory, recorded after its outcome went on, is counted (sampled at the
    // run's end it sometimes was not yet committed).
    assert!(
        body.lines()
            .any(|l| l == "tetrarch_store_memories{state=\"live\"} 1"),
        "{body}"
    );
    assert!(seen.contains("run over: serving /metrics for"), "{seen}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let interrupted = std::time::Instant::now();
    nix::sys::signal::kill(pid, stop).unwrap();
    let status = child.wait().unwrap();
    assert!(interrupted.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{seen}");
}

/// A run stopped by Ctrl-C and then served on: the Ctrl-C that ends the serving is an ordinary
/// stop (the cancelled run's status and report), not the "second Ctrl-C" that exits at once.
#[test]
fn serve_after_a_cancelled_run_ends_on_ctrl_c_with_the_runs_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_cli_run(dir.path(), 60, "127.0.0.1:0", &["--serve-after", "5m"]);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut read_until = |wanted: &str, seen: &mut String| loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("tetrarch ended before {wanted:?}: {seen}");
        }
        seen.push_str(&line);
        if line.starts_with(wanted) {
            break;
        }
    };
    read_until("metrics: http://", &mut seen);
    // The task's `sleep 60` is under way by now; the stop cancels it.
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    read_until("run over: serving", &mut seen);
    // Well past the moment in which a signal counts as the first one's twin.
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    seen.push_str(&rest);
    assert_eq!(status.code(), Some(1), "{seen}");
    assert!(seen.contains("Cancelled: 0/1 tasks complete"), "{seen}");
}

#[tokio::test]
async fn event_streams_cannot_take_every_connection() {
    let limits = ServeLimits {
        max_connections: 4,
        ..ServeLimits::default()
    };
    let server = DashboardServer::bind_with_limits(
        "127.0.0.1:0".parse().unwrap(),
        Telemetry::new(None),
        limits,
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    // Half the connections may be event streams; the next one is told to poll instead.
    let _first = open_events(addr).await;
    let _second = open_events(addr).await;
    let (status, _, body) = get(addr, "/api/events").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many event streams"), "{body}");
    // The page's state is still served beside the open streams.
    let (status, _, _) = get(addr, "/api/state").await;
    assert_eq!(status, 200);
    server.shutdown().await;
}
