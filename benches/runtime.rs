//! Runtime benchmark: what the four agents cost per task, how close a parallel plan gets to its
//! critical path, the round trip to each agent, and the first vs the steady-state call of a
//! pre-warmed MCP pool through the whole runtime.
//!
//! - Orchestration overhead: 10,000 no-op `native` tasks, wide (all independent) and deep (one
//!   chain), run through Orchestrator → Optimizer → Executor → Reviewer with the default
//!   configuration (task states persisted, outputs recorded as memories), against the same DAG
//!   run by a plain tokio `JoinSet` scheduler in the same process (the floor). Both are driven
//!   from a task on a runtime worker, as the agents are (not from `block_on`'s thread, which
//!   would cost the floor two wake-ups across threads per task). Per-task overhead is
//!   wall time ÷ tasks, median over rounds. Targets: ≤ 25 µs per task and ≤ 5× the floor. Also
//!   shown: the same without recording each output as a memory (`record_outputs = false`).
//! - Parallel efficiency: 10 levels × 16 tasks that each sleep 10 ms, every task depending on the
//!   whole previous level: nominal critical path 100 ms. Target: wall ≤ 1.05 × critical path,
//!   taken as the path the tools really took: each tool reports how long its thread slept
//!   (timed around the sleep on the blocking thread, so reaching that thread and coming back
//!   count against the runtime), and
//!   the critical path is the sum over levels of the level's longest sleep (the nominal ratio and
//!   a bare JoinSet running the same sleeps are printed beside it). The tools sleep on the
//!   blocking pool rather than on tokio's 1 ms timer wheel, which by itself adds 5–15% to a 10 ms
//!   sleep; `std::thread::sleep` still overshoots by 0.1–0.5 ms on this kind of machine, which is
//!   the OS's, not the runtime's.
//! - Round trip: a ping through each agent's mailbox, p50/p99.
//! - Pre-warm: a one-task plan calling the `demo-tools` MCP server (the example, which this
//!   benchmark builds with `cargo build --release --example demo-tools` first) from a pool pre-warmed with a declared warm-up call, run 11 times in each of 25
//!   fresh runtimes; the median first-run task latency (dispatch to verdict, through the four
//!   agents and the pooled session) vs the median of the later runs. Target: first ≤ 1.2 ×
//!   steady state. The whole run's wall time is shown beside it: it adds the run's end commit
//!   (fsync'd) and the start's queued one, which vary with the disk far more than the call does.
//!   Also shown, not judged: the same rounds with 5 ms of idle before every run, the first
//!   included, which separates what a pause costs any call (threads parked, caches cooled) from
//!   what the pool's warmth saves the first one.
//!
//! Writes `target/bench/runtime.json`.
#![allow(clippy::unwrap_used)]

/// The allocator the `tetrarch` binary runs with (src/main.rs), so this measures its path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tetrarch::agents::{
    ActorsConfig, AgentKind, RunEvent, RunOptions, RunStatus, Runtime, RuntimeOptions,
};
use tetrarch::plan::Plan;
use tetrarch::session::{NativeRegistry, PoolDef, PoolKind, WarmupDef};
use tetrarch::store::{Store, StoreConfig};
use tokio::task::JoinSet;

const TASKS: usize = 10_000;
const ROUNDS: usize = 5;
/// Fresh runtimes of the pre-warm row, and one-task runs in each (the first, then steady ones).
/// 25, not 9: with 9 the ratio of medians moved 0.85–1.69× between back-to-back runs of one build.
const PREWARM_ROUNDS: usize = 25;
const PREWARM_RUNS: usize = 11;
/// The idle time before each run of the pre-warm row's paused variant.
const PREWARM_PAUSE: Duration = Duration::from_millis(5);

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    let rank = ((values.len() - 1) as f64 * p).round() as usize;
    values[rank]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `deps[i]`: the tasks `i` waits for.
fn shape(name: &str) -> Vec<Vec<usize>> {
    match name {
        "wide" => vec![Vec::new(); TASKS],
        _ => (0..TASKS)
            .map(|i| if i == 0 { Vec::new() } else { vec![i - 1] })
            .collect(),
    }
}

fn plan_text(deps: &[Vec<usize>], tool: &str, args: &str) -> String {
    let mut text = String::from("name = \"bench\"\n");
    for (i, d) in deps.iter().enumerate() {
        text.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ntool = \"{tool}\"\nargs = {args}\n"
        ));
        if !d.is_empty() {
            let list: Vec<String> = d.iter().map(|j| format!("\"t{j}\"")).collect();
            text.push_str(&format!("deps = [{}]\n", list.join(", ")));
        }
    }
    text
}

/// The floor: the same DAG scheduled by hand on a JoinSet (remaining-dependency counters).
async fn joinset_floor(deps: &[Vec<usize>]) -> Duration {
    let started = Instant::now();
    let mut dependents = vec![Vec::new(); deps.len()];
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    for (i, d) in deps.iter().enumerate() {
        for &j in d {
            dependents[j].push(i);
        }
    }
    let mut set = JoinSet::new();
    for (i, &w) in waiting.iter().enumerate() {
        if w == 0 {
            set.spawn(async move {
                std::hint::black_box(json!({ "i": i }));
                i
            });
        }
    }
    while let Some(done) = set.join_next().await {
        let i = done.unwrap();
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                set.spawn(async move {
                    std::hint::black_box(json!({ "i": d }));
                    d
                });
            }
        }
    }
    started.elapsed()
}

/// Sleeps `duration` on the blocking pool rather than on tokio's timer, which rounds every sleep
/// up to its next 1 ms tick, and returns how long the thread slept: `std::thread::sleep`
/// overshoots (0.1–0.5 ms on these machines), so each tool reports that and the critical path is
/// taken from it. It is timed around the sleep itself, on the blocking thread: getting that
/// thread and coming back to the runtime are costs of running the tool, counted against the
/// wall time, not the critical path. The JoinSet floor sleeps the same way.
async fn precise_sleep(duration: Duration) -> Duration {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        std::thread::sleep(duration);
        started.elapsed()
    })
    .await
    .unwrap()
}

fn natives() -> NativeRegistry {
    let mut natives = NativeRegistry::new();
    natives.register("noop", |args: Value| async move { Ok(args) });
    natives.register("sleep", |args: Value| async move {
        let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(10);
        let slept = precise_sleep(Duration::from_millis(ms)).await;
        Ok(json!({ "slept_us": us(slept) }))
    });
    natives
}

async fn start_runtime(dir: &std::path::Path, pools: BTreeMap<String, PoolDef>) -> Runtime {
    start_runtime_with(dir, pools, true).await
}

async fn start_runtime_with(
    dir: &std::path::Path,
    pools: BTreeMap<String, PoolDef>,
    record_outputs: bool,
) -> Runtime {
    let store = Store::open(dir.join("store.redb"), StoreConfig::default()).unwrap();
    let mut actors = ActorsConfig::embedded().unwrap();
    actors.executor.pools.extend(pools);
    actors.executor.record_outputs = record_outputs;
    let mut options = RuntimeOptions::new(store, actors);
    options.natives = natives();
    Runtime::start(options).await.unwrap()
}

fn native_pool(max_size: usize) -> BTreeMap<String, PoolDef> {
    let mut pool = PoolDef::new(PoolKind::Native);
    pool.max_size = max_size;
    pool.min_idle = max_size.min(8);
    BTreeMap::from([("fn".to_owned(), pool)])
}

fn options() -> RunOptions {
    RunOptions {
        base_dir: std::env::temp_dir(),
        ..RunOptions::default()
    }
}

async fn overhead(name: &str, record_outputs: bool) -> Value {
    let deps = shape(name);
    let text = plan_text(&deps, "fn.noop", "{ x = 1 }");
    let plan = Plan::from_toml(&text, "bench.toml").unwrap();
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let runtime = start_runtime_with(dir.path(), native_pool(64), record_outputs).await;
        let started = Instant::now();
        let report = runtime.run(plan.clone(), options()).await.unwrap();
        let took = started.elapsed();
        assert_eq!(report.status, RunStatus::Complete);
        runtime.shutdown().await;
        ours.push(us(took) / TASKS as f64);
        floor.push(us(joinset_floor(&deps).await) / TASKS as f64);
    }
    let (ours, floor) = (median(ours), median(floor));
    println!(
        "{:<28} {:>10.2} µs/task   JoinSet floor {:>7.2} µs/task   ratio {:>6.1}×   (target ≤ 25 µs, ≤ 5×)",
        format!(
            "overhead, {name}{}",
            if record_outputs { "" } else { ", no memories" }
        ),
        ours,
        floor,
        ours / floor
    );
    json!({ "tasks": TASKS, "per_task_us": ours, "joinset_floor_us": floor, "ratio": ours / floor })
}

async fn parallel_efficiency() -> Value {
    let (levels, width) = (10usize, 16usize);
    let deps: Vec<Vec<usize>> = (0..levels * width)
        .map(|i| {
            let level = i / width;
            if level == 0 {
                Vec::new()
            } else {
                ((level - 1) * width..level * width).collect()
            }
        })
        .collect();
    let text = plan_text(&deps, "fn.sleep", "{ ms = 10 }");
    let plan = Plan::from_toml(&text, "bench.toml").unwrap();
    let critical = Duration::from_millis(10 * levels as u64);
    let (mut ratios, mut measured_ratios) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let runtime = start_runtime(dir.path(), native_pool(width)).await;
        let started = Instant::now();
        let report = runtime.run(plan.clone(), options()).await.unwrap();
        let wall = started.elapsed().as_secs_f64();
        assert_eq!(report.status, RunStatus::Complete);
        // The critical path the tools really took: the longest sleep of each level, summed
        // (every task waits for the whole level before it). Task `tI` is on level I / width.
        let mut longest = vec![0.0f64; levels];
        for task in &report.tasks {
            let i: usize = task.id[1..].parse().unwrap();
            let output = task.output.as_ref().and_then(|o| o.get("slept_us"));
            let slept = output.and_then(Value::as_f64).unwrap() / 1e6;
            longest[i / width] = longest[i / width].max(slept);
        }
        let measured: f64 = longest.iter().sum();
        ratios.push(wall / critical.as_secs_f64());
        measured_ratios.push(wall / measured);
        runtime.shutdown().await;
    }
    let ratio = median(ratios);
    let measured_ratio = median(measured_ratios);
    // The same layers on a bare JoinSet: what the sleeps and a level barrier cost by themselves.
    let (mut floors, mut floors_measured) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut path = 0.0;
        for _ in 0..levels {
            let mut set = JoinSet::new();
            for _ in 0..width {
                set.spawn(precise_sleep(Duration::from_millis(10)));
            }
            let mut longest = Duration::ZERO;
            while let Some(slept) = set.join_next().await {
                longest = longest.max(slept.unwrap());
            }
            path += longest.as_secs_f64();
        }
        let wall = started.elapsed().as_secs_f64();
        floors.push(wall / critical.as_secs_f64());
        floors_measured.push(wall / path);
    }
    let floor = median(floors);
    let floor_measured = median(floors_measured);
    println!(
        "{:<28} {:>10.3} × the tools' measured critical path   (target ≤ 1.05)   JoinSet floor {:.3}× its own",
        "parallel efficiency", measured_ratio, floor_measured,
    );
    println!(
        "{:<28} {:>10.3} × nominal critical path ({} ms)   JoinSet floor {:.3}× nominal",
        "",
        ratio,
        critical.as_millis(),
        floor
    );
    json!({
        "levels": levels, "width": width, "critical_path_ms": critical.as_millis() as u64,
        "wall_over_measured_critical": measured_ratio,
        "wall_over_critical": ratio, "joinset_floor": floor,
        "joinset_floor_over_its_measured_critical": floor_measured,
    })
}

async fn round_trips() -> Value {
    let dir = tempfile::tempdir().unwrap();
    let runtime = start_runtime(dir.path(), native_pool(4)).await;
    let mut all = serde_json::Map::new();
    for agent in AgentKind::ALL {
        let mut samples = Vec::new();
        for _ in 0..5000 {
            samples.push(runtime.ping(agent).await.unwrap());
        }
        let (p50, p99) = (
            percentile(&mut samples, 0.5),
            percentile(&mut samples, 0.99),
        );
        println!(
            "{:<28} p50 {:>8.2} µs   p99 {:>8.2} µs",
            format!("round trip, {agent}"),
            us(p50),
            us(p99)
        );
        all.insert(
            agent.to_string(),
            json!({ "p50_us": us(p50), "p99_us": us(p99) }),
        );
    }
    runtime.shutdown().await;
    Value::Object(all)
}

/// The demo MCP tool server, built here (`cargo bench` builds no examples): a binary left by an
/// earlier build could be older than the code it is meant to measure.
fn demo_tools() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join("demo-tools");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--release", "--example", "demo-tools"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status();
    match built {
        Ok(status) if status.success() => {}
        other => {
            println!("pre-warm: building the demo-tools example failed ({other:?})");
            return None;
        }
    }
    path.exists().then_some(path)
}

/// The one task's time from dispatch to verdict, as the Orchestrator measured it (the
/// subscriber's own clock would add its scheduling delay: it often saw both events at once).
async fn task_latency(mut events: tokio::sync::broadcast::Receiver<RunEvent>) -> Option<Duration> {
    while let Ok(event) = events.recv().await {
        match event {
            RunEvent::TaskFinished { elapsed_us, .. } => {
                return elapsed_us.map(Duration::from_micros);
            }
            RunEvent::RunFinished { .. } => return None,
            _ => {}
        }
    }
    None
}

async fn prewarm() -> Value {
    let Some(server) = demo_tools() else {
        println!("pre-warm: skipped (the demo-tools example could not be built)");
        return json!({ "skipped": "demo-tools example could not be built" });
    };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("notes.md");
    std::fs::write(
        &input,
        "tetrarch runs plans through four supervised agents.\n",
    )
    .unwrap();
    let mut pool = PoolDef::new(PoolKind::Mcp);
    pool.command = vec![server.display().to_string()];
    pool.max_size = 1;
    // What a user declares for a pool whose first call matters: a warm-up call of the tool.
    pool.warmup = Some(WarmupDef {
        tool: "count_words".to_owned(),
        args: json!({ "path": input.display().to_string() }),
        calls: 3,
    });
    let text = format!(
        "name = \"prewarm\"\n[[task]]\nid = \"count\"\ntool = \"demo.count_words\"\nargs = {{ path = \"{}\" }}\n",
        input.display()
    );
    let plan = Arc::new(Plan::from_toml(&text, "bench.toml").unwrap());
    let settings = r#"{"permissions": {"allow": ["mcp__demo__count_words"]}}"#;
    let engine = tetrarch::permissions::PermissionEngine::from_settings_json(
        settings,
        &dir.path().join("settings.json"),
        dir.path(),
        dir.path(),
    )
    .unwrap();
    let allowed = RunOptions {
        permissions: Some(Arc::new(engine)),
        ..options()
    };
    // A first call is one sample: each round starts a fresh runtime (fresh store, fresh pool),
    // and the first calls of the rounds are compared with the steady calls of all rounds.
    let back_to_back = prewarm_rounds(&pool, &plan, &allowed, dir.path(), None).await;
    // The same with a pause before every run, the first included (after start): calls that come
    // one after another keep the worker threads, the server and the CPU caches hot, which no
    // first call after a pause can be; this row tells that cost apart from the pool's warmth.
    let paused = prewarm_rounds(&pool, &plan, &allowed, dir.path(), Some(PREWARM_PAUSE)).await;
    let (first, steady, ratio) = back_to_back.call_ratio();
    let (run_first, run_steady, run_ratio) = back_to_back.run_ratio();
    let (paused_first, paused_steady, paused_ratio) = paused.call_ratio();
    println!(
        "{:<28} first {:>8.0} µs   steady {:>8.0} µs   ratio {:>5.2}   (target ≤ 1.2)",
        "pre-warm, mcp task call",
        us(first),
        us(steady),
        ratio
    );
    println!(
        "{:<28} first {:>8.0} µs   steady {:>8.0} µs   ratio {:>5.2}   (with the run's two commits)",
        "  whole one-task run",
        us(run_first),
        us(run_steady),
        run_ratio
    );
    println!(
        "{:<28} first {:>8.0} µs   steady {:>8.0} µs   ratio {:>5.2}   (every run after {} ms idle)",
        "  task call after a pause",
        us(paused_first),
        us(paused_steady),
        paused_ratio,
        PREWARM_PAUSE.as_millis()
    );
    json!({
        "first_us": us(first), "steady_us": us(steady), "ratio": ratio,
        "run_first_us": us(run_first), "run_steady_us": us(run_steady), "run_ratio": run_ratio,
        "paused_ms": PREWARM_PAUSE.as_millis(),
        "paused_first_us": us(paused_first), "paused_steady_us": us(paused_steady),
        "paused_ratio": paused_ratio,
    })
}

/// The task latencies and whole-run times of the pre-warm rounds, first runs apart.
#[derive(Default)]
struct PrewarmSamples {
    firsts: Vec<Duration>,
    steadies: Vec<Duration>,
    run_firsts: Vec<Duration>,
    run_steadies: Vec<Duration>,
}

impl PrewarmSamples {
    fn call_ratio(&self) -> (Duration, Duration, f64) {
        median_ratio(&self.firsts, &self.steadies)
    }

    fn run_ratio(&self) -> (Duration, Duration, f64) {
        median_ratio(&self.run_firsts, &self.run_steadies)
    }
}

fn median_ratio(firsts: &[Duration], steadies: &[Duration]) -> (Duration, Duration, f64) {
    let first = percentile(&mut firsts.to_vec(), 0.5);
    let steady = percentile(&mut steadies.to_vec(), 0.5);
    (first, steady, first.as_secs_f64() / steady.as_secs_f64())
}

/// Runs the one-task plan `PREWARM_RUNS` times in each of `PREWARM_ROUNDS` fresh runtimes,
/// idling `pause` before each run when given.
async fn prewarm_rounds(
    pool: &PoolDef,
    plan: &Plan,
    allowed: &RunOptions,
    dir: &std::path::Path,
    pause: Option<Duration>,
) -> PrewarmSamples {
    let mut samples = PrewarmSamples::default();
    let label = if pause.is_some() {
        "paused"
    } else {
        "back-to-back"
    };
    for round in 0..PREWARM_ROUNDS {
        let store_dir = dir.join(format!("{label}-{round}"));
        std::fs::create_dir_all(&store_dir).unwrap();
        let pools = BTreeMap::from([("demo".to_owned(), pool.clone())]);
        let runtime = start_runtime(&store_dir, pools).await;
        for run in 0..PREWARM_RUNS {
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            let latency = tokio::spawn(task_latency(runtime.subscribe()));
            let started = Instant::now();
            let report = runtime.run(plan.clone(), allowed.clone()).await.unwrap();
            assert_eq!(
                report.status,
                RunStatus::Complete,
                "{:?}",
                report.problems()
            );
            let (call, whole) = (latency.await.unwrap().unwrap(), started.elapsed());
            if run == 0 {
                samples.firsts.push(call);
                samples.run_firsts.push(whole);
            } else {
                samples.steadies.push(call);
                samples.run_steadies.push(whole);
            }
        }
        runtime.shutdown().await;
    }
    samples
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `TETRARCH_BENCH_ONLY=overhead,efficiency,round_trip,prewarm` runs some sections only.
    let only = std::env::var("TETRARCH_BENCH_ONLY").ok();
    let wanted = move |section: &str| {
        only.as_deref()
            .is_none_or(|list| list.split(',').any(|s| s.trim() == section))
    };
    let skipped = || json!({ "skipped": "not in TETRARCH_BENCH_ONLY" });
    // Everything runs in a task on a worker thread, as the agents do: a future driven by
    // `block_on` runs on the main thread, and every task it spawns or awaits costs a wake-up
    // across threads, which the floor's deep chain would pay twice per task.
    let report = runtime.block_on(async {
        tokio::spawn(async move {
            let (wide, deep, wide_bare, deep_bare) = if wanted("overhead") {
                (
                    overhead("wide", true).await,
                    overhead("deep", true).await,
                    overhead("wide", false).await,
                    overhead("deep", false).await,
                )
            } else {
                (skipped(), skipped(), skipped(), skipped())
            };
            let efficiency = if wanted("efficiency") {
                parallel_efficiency().await
            } else {
                skipped()
            };
            let trips = if wanted("round_trip") {
                round_trips().await
            } else {
                skipped()
            };
            let warm = if wanted("prewarm") {
                prewarm().await
            } else {
                skipped()
            };
            json!({
                "overhead": { "wide": wide, "deep": deep },
                "overhead_without_output_memories": { "wide": wide_bare, "deep": deep_bare },
                "parallel_efficiency": efficiency,
                "round_trip": trips,
                "prewarm_mcp": warm,
            })
        })
        .await
        .unwrap()
    });
    let dir = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("runtime.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("wrote {}", dir.join("runtime.json").display());
}
