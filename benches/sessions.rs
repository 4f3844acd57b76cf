//! Session benchmark: does pre-warming make the first pooled MCP call as fast as the tenth?
//!
//! For each real MCP server that is installed under `tests/mcp-servers/`, several rounds each
//! start a fresh pool with `min_idle = 1` and time acquire + `call` for calls 1..=50; the figures
//! are the median over rounds of call 1, call 10, and the steady state (median of calls 2..=50).
//! Beside it, measured in the same run: the first call through a pool with `min_idle = 0` (it pays
//! the server start, which is what pre-warming removes), and a one-shot `process` call (`true`).
//! Each server is measured three ways: pre-warmed with the handshake and a ping only, and pre-warmed
//! with a warm-up call of the benchmarked tool ([`McpSpec::warmup`]), once and 20 times
//! ([`McpSpec::warmup_calls`]: a JIT such as V8 compiles a function fully only after a few runs).
//! The `scorer` kind is measured the same way on a 1920×1080 FLIP pair (fewer rounds: each call
//! takes about a second on the CPU), pre-warmed with a 256×256 synthetic pair and with a pair of
//! the real size, beside a session started without a warm-up (its first call pays what the
//! warm-up moves to start-up).
//! Target: first ≤ 1.2 × steady state (scorer: first ≤ 1.2 × tenth). `TETRARCH_BENCH_SCORER=off`
//! skips the scorer rows. Writes `target/bench/sessions.json`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use tetrarch::scoring::Device;
use tetrarch::session::{
    McpFactory, McpSpec, Pool, PoolConfig, ProcessSession, ProcessSpec, ScorerFactory,
    ScorerSession, ScorerSpec, Session, ToolRequest,
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
    let warm = measure(&format!("{name} (+warm-up)"), warmed.clone(), &request).await;
    let repeated = McpSpec {
        warmup_calls: 20,
        ..warmed
    };
    let warm_n = measure(&format!("{name} (+20 warm-ups)"), repeated, &request).await;
    json!({ "ping_only": plain, "with_warmup_call": warm, "with_20_warmup_calls": warm_n })
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
    let scorer = if std::env::var("TETRARCH_BENCH_SCORER").as_deref() == Ok("off") {
        json!({ "skipped": "TETRARCH_BENCH_SCORER=off" })
    } else {
        bench_scorer().await
    };
    json!({ "mcp": results, "process_call_ms": ms(spawn), "rounds": ROUNDS, "calls_per_round": CALLS, "scorer": scorer })
}

const SCORER_ROUNDS: usize = 3;
const SCORER_CALLS: usize = 10;

/// Writes a 1920×1080 reference (smooth colour field with fine stripes) and a test image (the
/// same, shifted in tone and with coarser stripes) for the scorer rows.
fn scorer_pair(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (w, h) = (1920u32, 1080u32);
    let image = |tone: f32, period: u32| {
        image::RgbImage::from_fn(w, h, |x, y| {
            let stripe = if (x / period + y / period).is_multiple_of(2) {
                20.0
            } else {
                0.0
            };
            let r = 255.0 * x as f32 / w as f32 * tone + stripe;
            let g = 255.0 * y as f32 / h as f32 * tone + stripe;
            let b = 128.0 * tone + stripe;
            image::Rgb([r.min(255.0) as u8, g.min(255.0) as u8, b.min(255.0) as u8])
        })
    };
    let reference = dir.join("ref.png");
    let test = dir.join("test.png");
    image(1.0, 4).save(&reference).unwrap();
    image(0.9, 6).save(&test).unwrap();
    (reference, test)
}

async fn bench_scorer() -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("tetrarch-bench-scorer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (reference, test) = scorer_pair(&dir);
    let request = ToolRequest::new("flip", json!({"reference": reference, "test": test}))
        .with_timeout(Duration::from_secs(120));
    println!();
    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "scorer flip 1920x1080 (pooled, cpu)",
        "first ms",
        "10th ms",
        "steady ms",
        "1st/10th",
        "1st/st"
    );
    let mut rows = Vec::new();
    for (name, warmup) in [
        ("warm-up 256x256", Some((256, 256))),
        ("warm-up 1920x1080", Some((1920, 1080))),
    ] {
        let spec = ScorerSpec {
            warmup_size: warmup,
            ..ScorerSpec::new(Device::Cpu)
        };
        let (mut firsts, mut tenths, mut steadies, mut starts) = (vec![], vec![], vec![], vec![]);
        for _ in 0..SCORER_ROUNDS {
            let started = Instant::now();
            let pool = Pool::start(config(1), ScorerFactory::new(spec.clone()))
                .await
                .unwrap();
            starts.push(started.elapsed());
            let mut calls = Vec::with_capacity(SCORER_CALLS);
            for _ in 0..SCORER_CALLS {
                calls.push(timed_call(&pool, &request).await);
            }
            firsts.push(calls[0]);
            tenths.push(calls[SCORER_CALLS - 1]);
            steadies.push(median(calls[1..].to_vec()));
        }
        let (first, tenth, steady, start) = (
            median(firsts),
            median(tenths),
            median(steadies),
            median(starts),
        );
        let over_tenth = first.as_secs_f64() / tenth.as_secs_f64();
        let over_steady = first.as_secs_f64() / steady.as_secs_f64();
        println!(
            "{name:<38} {:>10.1} {:>10.1} {:>10.1} {:>8.2} {:>8.2}   (pool start {:.0} ms)",
            ms(first),
            ms(tenth),
            ms(steady),
            over_tenth,
            over_steady,
            ms(start)
        );
        rows.push(json!({
            "warmup": name,
            "first_call_ms": ms(first),
            "tenth_call_ms": ms(tenth),
            "steady_call_ms": ms(steady),
            "first_over_tenth": over_tenth,
            "first_over_steady": over_steady,
            "pool_start_ms": ms(start),
            "target_first_over_tenth": 1.2,
            "meets_target": over_tenth <= 1.2,
        }));
    }
    // Peer, same run: a session started without a warm-up, first call vs its tenth.
    let (mut firsts, mut tenths) = (vec![], vec![]);
    for _ in 0..SCORER_ROUNDS {
        let spec = ScorerSpec {
            warmup_size: None,
            ..ScorerSpec::new(Device::Cpu)
        };
        let mut session = ScorerSession::start(&spec).await.unwrap();
        let mut calls = Vec::with_capacity(SCORER_CALLS);
        for _ in 0..SCORER_CALLS {
            let started = Instant::now();
            let outcome = session.call(request.clone()).await.unwrap();
            assert_eq!(outcome.exit_status, Some(0), "{outcome:?}");
            calls.push(started.elapsed());
        }
        firsts.push(calls[0]);
        tenths.push(calls[SCORER_CALLS - 1]);
    }
    let (first, tenth) = (median(firsts), median(tenths));
    println!(
        "peer: no warm-up, first {:.1} ms, 10th {:.1} ms ({:.2}x)",
        ms(first),
        ms(tenth),
        first.as_secs_f64() / tenth.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    json!({
        "pooled": rows,
        "peer_no_warmup": { "first_call_ms": ms(first), "tenth_call_ms": ms(tenth) },
        "rounds": SCORER_ROUNDS,
        "calls_per_round": SCORER_CALLS,
    })
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
