//! Session benchmark: does pre-warming make the first pooled MCP call as fast as the tenth?
//!
//! For each real MCP server that is installed under `tests/mcp-servers/`, several rounds each
//! start a fresh pool with `min_idle = 1` and time acquire + `call` for calls 1..=50; the figures
//! are the median over rounds of call 1, call 10, and the steady state (median of calls 2..=50).
//! Beside it, measured in the same run: the first call through a pool with `min_idle = 0` (it pays
//! the server start, which is what pre-warming removes), and a one-shot `process` call (`true`).
//! Each server is measured twice: pre-warmed with the handshake and a ping only, and pre-warmed
//! with a warm-up call of the benchmarked tool ([`McpSpec::warmup`]).
//! Target: first ≤ 1.2 × steady state. Writes `target/bench/sessions.json`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use tetrarch::session::{
    McpFactory, McpSpec, Pool, PoolConfig, ProcessSession, ProcessSpec, Session, ToolRequest,
};

const ROUNDS: usize = 7;
const CALLS: usize = 50;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn timed_call(pool: &Pool, request: &ToolRequest) -> Duration {
    let started = Instant::now();
    let mut session = pool.acquire().await.unwrap();
    let outcome = session.call(request.clone()).await.unwrap();
    assert_eq!(outcome.exit_status, Some(0), "{outcome:?}");
    started.elapsed()
}

fn config(min_idle: usize) -> PoolConfig {
    PoolConfig {
        min_idle,
        max_size: 2,
        ..PoolConfig::new("bench")
    }
}

async fn bench_server(name: &str, spec: McpSpec, request: ToolRequest) -> serde_json::Value {
    let plain = measure(&format!("{name} (ping only)"), spec.clone(), &request).await;
    let warmed = McpSpec {
        warmup: Some(request.clone()),
        ..spec
    };
    let warm = measure(&format!("{name} (+warm-up)"), warmed, &request).await;
    json!({ "ping_only": plain, "with_warmup_call": warm })
}

async fn measure(name: &str, spec: McpSpec, request: &ToolRequest) -> serde_json::Value {
    let (mut firsts, mut tenths, mut steadies, mut colds) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let pool = Pool::start(config(1), McpFactory::new(spec.clone()))
            .await
            .unwrap();
        let mut calls = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            calls.push(timed_call(&pool, request).await);
        }
        firsts.push(calls[0]);
        tenths.push(calls[9]);
        steadies.push(median(calls[1..].to_vec()));
        drop(pool);
        let cold = Pool::start(config(0), McpFactory::new(spec.clone()))
            .await
            .unwrap();
        colds.push(timed_call(&cold, request).await);
    }
    let (first, tenth, steady, cold) = (
        median(firsts),
        median(tenths),
        median(steadies),
        median(colds),
    );
    let ratio = first.as_secs_f64() / steady.as_secs_f64();
    println!(
        "{name:<38} {:>10.3} {:>10.3} {:>10.3} {:>8.2} {:>14.1}",
        ms(first),
        ms(tenth),
        ms(steady),
        ratio,
        ms(cold)
    );
    json!({
        "server": name,
        "first_call_ms": ms(first),
        "tenth_call_ms": ms(tenth),
        "steady_call_ms": ms(steady),
        "first_over_steady": ratio,
        "first_over_tenth": first.as_secs_f64() / tenth.as_secs_f64(),
        "target_first_over_steady": 1.2,
        "meets_target": ratio <= 1.2,
        "peer_cold_first_call_ms": ms(cold),
    })
}

async fn run() -> serde_json::Value {
    let servers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp-servers");
    let everything =
        servers.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    let python = servers.join(".venv/bin/python");
    let echo = ToolRequest::new("echo", json!({"message": "bench"}));
    let add = ToolRequest::new("add", json!({"a": 1, "b": 2}));

    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>8} {:>14}",
        "mcp server (pooled, warm)", "first ms", "10th ms", "steady ms", "1st/st", "cold 1st ms"
    );
    let mut results = Vec::new();
    if everything.exists() {
        let spec = McpSpec::new(
            "node",
            [everything.display().to_string(), "stdio".to_owned()],
        );
        results.push(bench_server("server-everything echo", spec, echo).await);
    } else {
        println!(
            "skipped server-everything: {} missing",
            everything.display()
        );
    }
    if python.exists() {
        let script = servers.join("py_server.py").display().to_string();
        let spec = McpSpec::new(python.display().to_string(), [script]);
        results.push(bench_server("python mcp add", spec, add).await);
    } else {
        println!("skipped python mcp server: {} missing", python.display());
    }

    let mut process = ProcessSession::new(ProcessSpec::new("true", Vec::<String>::new()));
    let mut spawns = Vec::new();
    for _ in 0..CALLS {
        let started = Instant::now();
        process
            .call(ToolRequest::new("true", json!({})))
            .await
            .unwrap();
        spawns.push(started.elapsed());
    }
    let spawn = median(spawns);
    println!(
        "peer: one-shot process call (`true`), median of {CALLS}: {:.3} ms",
        ms(spawn)
    );
    json!({ "mcp": results, "process_call_ms": ms(spawn), "rounds": ROUNDS, "calls_per_round": CALLS })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(run());
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sessions.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
