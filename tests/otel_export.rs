//! OpenTelemetry export (feature `otel`): `tetrarch run` with an OTLP endpoint sends the agents'
//! spans to a collector. The collector here is a plain HTTP server in the test that keeps every
//! request: the JSON export is checked span by span (names, attributes, parent links, one trace),
//! the protobuf export by its content type and the ids it carries; an unreachable or unsupported
//! endpoint costs a warning, not the run.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use parking_lot::Mutex;
use serde_json::Value;

const PLAN: &str = r#"
name = "exported"
permissions = "settings.json"

[pools.sh]
kind = "process"
command = ["sh", "-c"]

[[task]]
id = "left"
tool = "sh.run"
args = { argv = ["echo '{\"side\": \"left\"}'"] }

[[task]]
id = "right"
tool = "sh.run"
args = { argv = ["echo '{\"side\": \"right\"}'"] }

[[task]]
id = "join"
tool = "sh.run"
deps = ["left", "right"]
args = { argv = ["echo '{\"joined\": \"{{tasks.left.output.side}}+{{tasks.right.output.side}}\"}'"] }
"#;

/// What the collector received: (content type, body) per request to `/v1/traces`.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Starts the collector on an ephemeral 127.0.0.1 port; returns its traces URL.
async fn collector(received: Received) -> String {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let received = Arc::clone(&received);
            async move {
                let kind = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                received.lock().push((kind, body.to_vec()));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1/traces")
}

fn write_plan(dir: &Path) {
    std::fs::write(dir.join("plan.toml"), PLAN).unwrap();
    std::fs::write(
        dir.join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)"]}}"#,
    )
    .unwrap();
    // No score gates: skip the scorer pool's warm-up.
    std::fs::create_dir_all(dir.join("actors")).unwrap();
    std::fs::write(dir.join("actors/executor.toml"), "mailbox = 4096\n").unwrap();
}

/// Runs the plan with `endpoint` (`--otlp-endpoint`) and the protocol in the environment.
async fn run_plan(dir: &Path, endpoint: &str, protocol: &str) -> Output {
    let dir = dir.to_path_buf();
    let endpoint = endpoint.to_owned();
    let protocol = protocol.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tetrarch"))
            .arg("--store")
            .arg(dir.join("store.redb"))
            .args(["--otlp-endpoint", &endpoint])
            .arg("run")
            .arg(dir.join("plan.toml"))
            .arg("--actors")
            .arg(dir.join("actors"))
            .args(["--events", "json"])
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// One exported span, from OTLP JSON.
#[derive(Debug)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
}

fn attribute_value(value: &Value) -> String {
    for kind in ["stringValue", "intValue", "boolValue", "doubleValue"] {
        if let Some(v) = value.get(kind) {
            return v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        }
    }
    value.to_string()
}

fn attributes(list: Option<&Value>) -> HashMap<String, String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap_or("").to_owned(),
                attribute_value(&kv["value"]),
            )
        })
        .collect()
}

/// Every span in the JSON requests, with the service name each came under.
fn parse_json(received: &[(String, Vec<u8>)]) -> Vec<(String, Span)> {
    let mut spans = Vec::new();
    for (kind, body) in received {
        assert!(kind.starts_with("application/json"), "content type {kind}");
        let doc: Value = serde_json::from_slice(body).unwrap();
        for resource in doc["resourceSpans"].as_array().unwrap() {
            let service = attributes(resource["resource"].get("attributes"))
                .remove("service.name")
                .unwrap_or_default();
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    let text = |key: &str| span[key].as_str().unwrap_or("").to_owned();
                    spans.push((
                        service.clone(),
                        Span {
                            trace: text("traceId"),
                            id: text("spanId"),
                            parent: text("parentSpanId"),
                            name: text("name"),
                            attributes: attributes(span.get("attributes")),
                        },
                    ));
                }
            }
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_export_carries_the_span_tree_of_the_run() {
    let dir = tempfile::tempdir().unwrap();
    write_plan(dir.path());
    let received: Received = Arc::default();
    let endpoint = collector(Arc::clone(&received)).await;
    let output = run_plan(dir.path(), &endpoint, "http/json").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}\n{stderr}", output.status);

    let spans = parse_json(&received.lock());
    assert!(
        spans.iter().all(|(service, _)| service == "tetrarch"),
        "service names: {:?}",
        spans.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    let spans: Vec<Span> = spans.into_iter().map(|(_, span)| span).collect();
    let runs: Vec<&Span> = spans.iter().filter(|s| s.name == "run").collect();
    assert_eq!(runs.len(), 1, "{spans:#?}");
    let run = runs[0];
    assert_eq!(run.attributes["plan"], "exported");
    assert_eq!(run.attributes["status"], "complete");
    assert!(run.parent.is_empty(), "the run span is a root: {run:?}");
    let run_id = &run.attributes["run"];

    let tasks: Vec<&Span> = spans.iter().filter(|s| s.name == "task").collect();
    let mut names: Vec<&str> = tasks
        .iter()
        .map(|t| t.attributes["task"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["join", "left", "right"], "{tasks:#?}");
    for task in &tasks {
        assert_eq!(task.parent, run.id, "{task:?} is not under the run");
        assert_eq!(task.trace, run.trace, "{task:?} is in another trace");
        assert_eq!(&task.attributes["run"], run_id);
        assert_eq!(task.attributes["plan"], "exported");
        assert_eq!(task.attributes["outcome"], "pass");
        for child in ["tool_call", "review"] {
            let found: Vec<&Span> = spans
                .iter()
                .filter(|s| s.name == child && s.parent == task.id)
                .collect();
            assert_eq!(found.len(), 1, "{child} under {task:?}: {found:#?}");
            assert_eq!(found[0].trace, run.trace);
        }
    }
    let call = spans.iter().find(|s| s.name == "tool_call").unwrap();
    assert_eq!(call.attributes["pool"], "sh");
    assert_eq!(call.attributes["tool"], "run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_export_is_the_default_wire_format() {
    let dir = tempfile::tempdir().unwrap();
    write_plan(dir.path());
    let received: Received = Arc::default();
    let endpoint = collector(Arc::clone(&received)).await;
    let output = run_plan(dir.path(), &endpoint, "http/protobuf").await;
    assert!(
        output.status.success(),
        "{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let received = received.lock();
    assert!(!received.is_empty(), "nothing was exported");
    let body: Vec<u8> = received
        .iter()
        .inspect(|(kind, _)| assert_eq!(kind, "application/x-protobuf"))
        .flat_map(|(_, body)| body.clone())
        .collect();
    // Strings travel as raw UTF-8 in protobuf: the ids must be in the bytes.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let run_id = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|event| event["run_id"].as_str().map(str::to_owned))
        .unwrap();
    let contains = |needle: &str| body.windows(needle.len()).any(|w| w == needle.as_bytes());
    for needle in [
        "tetrarch",
        "exported",
        run_id.as_str(),
        "left",
        "right",
        "join",
        "tool_call",
        "review",
    ] {
        assert!(contains(needle), "{needle:?} is not in the protobuf export");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_unsupported_collector_does_not_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    write_plan(dir.path());
    // A port that was just free: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let started = Instant::now();
    let output = run_plan(
        dir.path(),
        &format!("http://{closed}/v1/traces"),
        "http/protobuf",
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}\n{stderr}", output.status);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the run waited {:?} on a closed collector",
        started.elapsed()
    );
    assert!(
        stderr.to_lowercase().contains("export failed"),
        "no warning that the export failed: {stderr}"
    );

    let output = run_plan(
        dir.path(),
        "https://collector.invalid/v1/traces",
        "http/json",
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}\n{stderr}", output.status);
    assert!(
        stderr.contains("only http:// is supported") && stderr.contains("spans are not exported"),
        "{stderr}"
    );

    // The same endpoint from the environment is refused the same way (the exporter used to
    // take it and fail on every export).
    let env_dir = dir.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tetrarch"))
            .arg("--store")
            .arg(env_dir.join("store.redb"))
            .arg("run")
            .arg(env_dir.join("plan.toml"))
            .arg("--actors")
            .arg(env_dir.join("actors"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector.invalid")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}\n{stderr}", output.status);
    assert!(
        stderr.contains("(from OTEL_EXPORTER_OTLP_ENDPOINT): only http:// is supported")
            && stderr.contains("spans are not exported"),
        "{stderr}"
    );
}
