//! [`Telemetry`]: turns a run's events and the runtime's counters into metrics and the
//! dashboard's view. (The spans are the agents' own: see `crate::agents`.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::TelemetryError;
use super::view::{AgentView, CacheView, DashboardState, PoolView, ToolLatency};
use crate::agents::{AgentKind, RunEvent, RunStatus, Runtime, TaskState, saved_runs, saved_tasks};
use crate::plan::Plan;
use crate::store::Store;

/// How often [`Telemetry::drive`] samples the runtime's gauges.
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(250);

/// Buckets of the context tokens per payload histogram.
const TOKEN_BUCKETS: &[f64] = &[
    100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 25_000.0, 50_000.0, 100_000.0, 200_000.0,
];

/// Buckets of the pool wait histogram in seconds: most acquires find a free session at once, so
/// the low end is finer than for durations.
const POOL_WAIT_BUCKETS: &[f64] = &[
    0.000_01, 0.000_1, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
];

/// Histogram buckets in seconds, for call, attempt, run and store durations: 1 ms to 10 min.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Every metric this module exports, with its help text.
pub const METRIC_NAMES: &[(&str, &str)] = &[
    (
        "tetrarch_store_op_duration_seconds",
        "Store operation latency (store, get, search), by operation",
    ),
    (
        "tetrarch_context_tokens",
        "Tokens per context payload the Optimizer built (tasks whose args use {{context}})",
    ),
    (
        "tetrarch_context_alerts_total",
        "Context sessions that crossed the monitor's alert ratio (preserved in the store, then compacted)",
    ),
    (
        "tetrarch_tool_call_duration_seconds",
        "Tool call latency (session acquired to outcome) by tool and agent: the Executor's calls and the Reviewer's score gates",
    ),
    (
        "tetrarch_task_attempt_duration_seconds",
        "Task attempt latency, from dispatch to outcome (context, tool call and gates), by tool and agent",
    ),
    (
        "tetrarch_tool_calls_total",
        "Task attempts by tool and outcome (complete, failed, cancelled, gate_failed, retrying); a task that never started (skipped) is not an attempt",
    ),
    (
        "tetrarch_active_agents",
        "Agents running (4, or 0 once the supervisor gave up)",
    ),
    ("tetrarch_agent_restarts_total", "Agent restarts by agent"),
    ("tetrarch_mailbox_depth", "Messages queued at each agent"),
    ("tetrarch_pool_sessions", "Live sessions per pool"),
    (
        "tetrarch_pool_sessions_in_use",
        "Sessions checked out per pool",
    ),
    (
        "tetrarch_pool_waiters",
        "Callers waiting for a session per pool",
    ),
    (
        "tetrarch_pool_wait_seconds",
        "Time a caller waited for a session, per acquire, by pool",
    ),
    (
        "tetrarch_pool_acquired_total",
        "Sessions handed out per pool",
    ),
    (
        "tetrarch_parallel_execution_ratio",
        "Share of task time spent with other tasks running",
    ),
    (
        "tetrarch_cache_hits_total",
        "Context cache lookups answered from the cache, by cache category",
    ),
    (
        "tetrarch_cache_misses_total",
        "Context cache lookups that had to compute, by cache category",
    ),
    ("tetrarch_runs_total", "Finished runs by status"),
    ("tetrarch_run_duration_seconds", "Run wall time"),
    (
        "tetrarch_store_memories",
        "Memories in the store by state (live, archived)",
    ),
    ("tetrarch_store_bytes", "Bytes of stored memory records"),
];

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once; later calls
/// return the same handle) and describes every metric in [`METRIC_NAMES`].
pub fn install_metrics() -> Result<PrometheusHandle, TelemetryError> {
    RECORDER
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(DURATION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("tetrarch_context_tokens".to_owned()),
                        TOKEN_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("tetrarch_pool_wait_seconds".to_owned()),
                        POOL_WAIT_BUCKETS,
                    )
                })
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|e| e.to_string())?;
            for (name, help) in METRIC_NAMES {
                if name.ends_with("_total") {
                    describe_counter!(*name, *help);
                } else if name.ends_with("_duration_seconds")
                    || *name == "tetrarch_pool_wait_seconds"
                {
                    describe_histogram!(*name, metrics::Unit::Seconds, *help);
                } else if *name == "tetrarch_context_tokens" {
                    describe_histogram!(*name, metrics::Unit::Count, *help);
                } else {
                    describe_gauge!(*name, *help);
                }
            }
            Ok(handle)
        })
        .clone()
        .map_err(|detail| TelemetryError::Metrics { detail })
}

/// A run seen from the outside. Cheap to clone (shared).
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    tracker: Mutex<Tracker>,
    live: broadcast::Sender<RunEvent>,
    metrics: Option<PrometheusHandle>,
}

#[derive(Default)]
struct Tracker {
    view: DashboardState,
    /// Task id → `POOL.TOOL`.
    tools: HashMap<String, String>,
    /// Attempts in flight: task id → dispatch time.
    running: HashMap<String, Instant>,
    /// When the running set last changed.
    last_change: Option<Instant>,
    /// Task-seconds, and those spent with at least one other task running.
    task_time: f64,
    parallel_time: f64,
    latency: BTreeMap<String, (u64, f64, f64)>,
    /// A resumed run whose earlier COMPLETE tasks are still to be read from the store.
    resumed: Option<String>,
    /// Tasks whose last attempt ended with failed gates: the `failed` that follows on the
    /// final attempt is the same attempt, already counted as `gate_failed`.
    gates_failed: HashSet<String>,
}

impl Tracker {
    /// Accounts the time since the last change to the running set.
    fn advance(&mut self, now: Instant) {
        if let Some(last) = self.last_change {
            let tasks = self.running.len() as f64;
            let elapsed = now.saturating_duration_since(last).as_secs_f64() * tasks;
            self.task_time += elapsed;
            if self.running.len() > 1 {
                self.parallel_time += elapsed;
            }
        }
        self.last_change = Some(now);
    }

    /// The share of task time spent with another task running, up to `now`: the time of the
    /// tasks running now counts too (one long task alone lowers the ratio while it runs, not
    /// only when it ends).
    fn parallel_ratio(&self, now: Instant) -> f64 {
        let (mut task_time, mut parallel_time) = (self.task_time, self.parallel_time);
        if let Some(last) = self.last_change {
            let elapsed =
                now.saturating_duration_since(last).as_secs_f64() * self.running.len() as f64;
            task_time += elapsed;
            if self.running.len() > 1 {
                parallel_time += elapsed;
            }
        }
        if task_time > 0.0 {
            parallel_time / task_time
        } else {
            0.0
        }
    }

    /// Shows a task as the store saved it, in `state`, and counts its saved attempts' times.
    fn add_saved_task(&mut self, task: crate::agents::SavedTask, state: TaskState) {
        let times = task.attempt_times;
        if times.count > 0
            && let Some(tool) = self.tools.get(&task.id).cloned()
        {
            add_latency(
                &mut self.latency,
                tool,
                u64::from(times.count),
                times.total_us as f64 / 1e6,
                times.longest_us as f64 / 1e6,
            );
        }
        self.view
            .set_task(&task.id, state, Some(task.attempt), Some(task.reason));
    }

    fn start_attempt(&mut self, task: &str, now: Instant) {
        self.advance(now);
        self.running.insert(task.to_owned(), now);
    }

    /// Forgets a task's attempt in flight that made no call, counting nothing.
    fn drop_attempt(&mut self, task: &str, now: Instant) {
        self.advance(now);
        self.running.remove(task);
    }

    /// Ends a task's attempt in flight with `status`, counting it and recording its latency;
    /// nothing for a task with no attempt in flight (skipped, or cancelled before it started).
    fn end_attempt(&mut self, task: &str, status: &'static str, now: Instant) {
        self.advance(now);
        let Some(started) = self.running.remove(task) else {
            return;
        };
        let tool = self.tools.get(task).cloned().unwrap_or_default();
        counter!("tetrarch_tool_calls_total", "tool" => tool.clone(), "status" => status)
            .increment(1);
        let seconds = now.saturating_duration_since(started).as_secs_f64();
        histogram!("tetrarch_task_attempt_duration_seconds", "tool" => tool.clone(), "agent" => AgentKind::Executor.as_str())
            .record(seconds);
        add_latency(&mut self.latency, tool, 1, seconds, seconds);
        gauge!("tetrarch_parallel_execution_ratio").set(self.parallel_ratio(now));
    }
}

/// Counts `count` attempts of `tool` taking `seconds` in all, the longest `longest` seconds.
fn add_latency(
    latency: &mut BTreeMap<String, (u64, f64, f64)>,
    tool: String,
    count: u64,
    seconds: f64,
    longest: f64,
) {
    let entry = latency.entry(tool).or_insert((0, 0.0, 0.0));
    entry.0 += count;
    entry.1 += seconds;
    entry.2 = entry.2.max(longest);
}

/// Each task's `POOL.TOOL`, by task id.
fn task_tools(plan: &Plan) -> HashMap<String, String> {
    plan.tasks
        .iter()
        .map(|t| (t.id.as_str().to_owned(), t.tool.to_string()))
        .collect()
}

fn task_status(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "pending",
        TaskState::Running => "running",
        TaskState::Complete => "complete",
        TaskState::Failed => "failed",
        TaskState::Skipped => "skipped",
        TaskState::Cancelled => "cancelled",
        TaskState::Compensated => "compensated",
    }
}

impl Telemetry {
    /// A telemetry hub; `metrics` (from [`install_metrics`]) is what `/metrics` renders.
    pub fn new(metrics: Option<PrometheusHandle>) -> Self {
        let (live, _) = broadcast::channel(4096);
        Telemetry {
            inner: Arc::new(Inner {
                tracker: Mutex::new(Tracker::default()),
                live,
                metrics,
            }),
        }
    }

    /// The view of a finished run from `store`: `run_id`, or the newest run when `None`. The
    /// plan's file is read again (from where the run recorded it) for dependencies and tools.
    pub fn finished(
        store: &Store,
        run_id: Option<&str>,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, TelemetryError> {
        let runs = saved_runs(store)?;
        let run = match run_id {
            Some(id) => runs.iter().find(|r| r.run_id == id),
            None => runs.last(),
        };
        let Some(run) = run else {
            return Err(TelemetryError::NoRun {
                detail: match run_id {
                    Some(id) => format!("the store holds no run {id}"),
                    None => "the store holds no runs".to_owned(),
                },
            });
        };
        // The plan as the run saved it; a run saved without it (older stores, or a library
        // caller that gave none) is read from its source path.
        let plan = run
            .plan_text
            .clone()
            .or_else(|| std::fs::read_to_string(&run.source).ok())
            .and_then(|text| Plan::from_toml(&text, &run.source).ok());
        let telemetry = Telemetry::new(metrics);
        let view = DashboardState::for_saved(run, plan.as_ref());
        // Why each task ended as it did, its attempt and how long its attempts took: the run
        // list holds only the states. Each task's tool, for the latency table, is not known
        // when the plan is gone.
        let tasks = saved_tasks(store, &run.run_id)?;
        {
            let mut tracker = telemetry.inner.tracker.lock();
            tracker.view = view;
            tracker.tools = plan.as_ref().map(task_tools).unwrap_or_default();
            for task in tasks {
                let state = task.state;
                tracker.add_saved_task(task, state);
            }
        }
        telemetry.sample_store(store);
        Ok(telemetry)
    }

    /// Starts watching `plan` (resets the view: every task pending).
    pub fn watch_plan(&self, plan: &Plan) {
        let mut tracker = self.inner.tracker.lock();
        *tracker = Tracker {
            view: DashboardState::for_plan(plan),
            tools: task_tools(plan),
            ..Tracker::default()
        };
    }

    /// Starts the view of a resumed run (after [`Telemetry::watch_plan`]) from what the store
    /// has of it: each saved task's state, attempt and reason, and its attempts' times in the
    /// latency table, so the page shows what happened before the process was killed. A task
    /// that was in flight then runs again, so it shows as pending until it does.
    ///
    /// # Errors
    /// The store's, reading the run's tasks.
    pub fn resume_from(&self, store: &Store, run_id: &str) -> Result<(), crate::store::StoreError> {
        let saved = saved_tasks(store, run_id)?;
        let mut tracker = self.inner.tracker.lock();
        for task in saved {
            let state = match task.state {
                TaskState::Running => TaskState::Pending,
                state => state,
            };
            tracker.add_saved_task(task, state);
        }
        Ok(())
    }

    /// Records every event from `events` (a [`Runtime::subscribe_all`] receiver: none is lost,
    /// however far the recording falls behind; a burst of thousands of skipped tasks overflowed
    /// the broadcast, and the view kept a failed task as running) until the runtime closes it,
    /// passing each on to [`Telemetry::subscribe`]rs.
    pub fn observe(
        &self,
        mut events: tokio::sync::mpsc::UnboundedReceiver<RunEvent>,
    ) -> tokio::task::JoinHandle<()> {
        let telemetry = self.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                telemetry.record(&event);
                let _ = telemetry.inner.live.send(event);
            }
        })
    }

    /// Records one event: the view, the metrics and the task's span.
    pub fn record(&self, event: &RunEvent) {
        let now = Instant::now();
        let mut tracker = self.inner.tracker.lock();
        tracker.view.apply(event);
        match event {
            RunEvent::RunStarted {
                run_id, resumed, ..
            } => {
                if *resumed {
                    tracker.resumed = Some(run_id.clone());
                }
            }
            RunEvent::TaskStarted { task, .. } => {
                tracker.gates_failed.remove(task.as_str());
                tracker.start_attempt(task, now);
            }
            RunEvent::TaskFinished {
                task,
                state,
                elapsed_us,
                ..
            } => {
                if *state == TaskState::Skipped && elapsed_us.is_none() {
                    // Dispatched, but its run stopped before the call was made: no call.
                    tracker.drop_attempt(task, now);
                } else if !(tracker.gates_failed.remove(task.as_str())
                    && *state == TaskState::Failed)
                {
                    tracker.end_attempt(task, task_status(*state), now);
                }
            }
            RunEvent::GateFailed { task, .. } => {
                tracker.gates_failed.insert(task.clone());
                tracker.end_attempt(task, "gate_failed", now);
            }
            RunEvent::TaskRetrying { task, .. } => tracker.end_attempt(task, "retrying", now),
            RunEvent::RunFinished {
                status,
                duration_ms,
                ..
            } => {
                let status = format!("{status:?}").to_lowercase();
                counter!("tetrarch_runs_total", "status" => status).increment(1);
                histogram!("tetrarch_run_duration_seconds")
                    .record(Duration::from_millis(*duration_ms).as_secs_f64());
            }
            RunEvent::AgentRestarted { agent, reason, .. } => {
                tracing::warn!(agent = agent.as_str(), "agent restarted: {reason}");
            }
            RunEvent::ContextBuilt { tokens, .. } => {
                histogram!("tetrarch_context_tokens").record(*tokens as f64);
            }
            RunEvent::ContextAlert { .. } => {
                counter!("tetrarch_context_alerts_total").increment(1);
            }
            // The failed call before a fix is a call of its own (the fixed one starts anew).
            RunEvent::FixApplied { task, .. } => tracker.end_attempt(task, "failed", now),
            RunEvent::Compensated { .. } => {}
        }
        tracker.view.parallel_ratio = tracker.parallel_ratio(now);
    }

    /// Reads the runtime's gauges: agents (restarts, mailbox depth), pools, the context cache,
    /// the store.
    pub fn sample(&self, runtime: &Runtime) {
        let running = runtime.failure().is_none();
        let agents: Vec<AgentView> = runtime
            .mailbox_depths()
            .into_iter()
            .map(|(agent, depth)| AgentView {
                agent,
                restarts: runtime.restarts(agent),
                mailbox_depth: depth,
                running,
            })
            .collect();
        gauge!("tetrarch_active_agents").set(if running { agents.len() as f64 } else { 0.0 });
        for agent in &agents {
            let name = agent.agent.as_str();
            counter!("tetrarch_agent_restarts_total", "agent" => name).absolute(agent.restarts);
            gauge!("tetrarch_mailbox_depth", "agent" => name).set(agent.mailbox_depth as f64);
        }
        // A plan's own pools close with its run: their last counts are still shown.
        let mut all = runtime.pool_stats();
        all.extend(runtime.ended_pool_stats());
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let pools: Vec<PoolView> = all
            .into_iter()
            .map(|(name, stats)| PoolView {
                name,
                size: stats.size,
                in_use: stats.in_use,
                idle: stats.idle,
                waiters: stats.waiters,
                total_wait_ms: stats.total_wait.as_secs_f64() * 1000.0,
                acquired: stats.acquired,
            })
            .collect();
        for pool in &pools {
            let name = pool.name.clone();
            gauge!("tetrarch_pool_sessions", "pool" => name.clone()).set(pool.size as f64);
            gauge!("tetrarch_pool_sessions_in_use", "pool" => name.clone()).set(pool.in_use as f64);
            gauge!("tetrarch_pool_waiters", "pool" => name.clone()).set(pool.waiters as f64);
            counter!("tetrarch_pool_acquired_total", "pool" => name).absolute(pool.acquired);
        }
        let cache: Vec<CacheView> = runtime
            .cache_stats()
            .categories
            .into_iter()
            .map(|(category, stats)| CacheView {
                cache: category.as_str(),
                hits: stats.hits,
                misses: stats.misses,
            })
            .collect();
        for c in &cache {
            counter!("tetrarch_cache_hits_total", "cache" => c.cache).absolute(c.hits);
            counter!("tetrarch_cache_misses_total", "cache" => c.cache).absolute(c.misses);
        }
        self.sample_store(runtime.store());
        let resumed = {
            let mut tracker = self.inner.tracker.lock();
            gauge!("tetrarch_parallel_execution_ratio").set(tracker.parallel_ratio(Instant::now()));
            tracker.view.agents = agents;
            tracker.view.pools = pools;
            tracker.view.cache = cache;
            tracker.resumed.take()
        };
        if let Some(run_id) = resumed {
            self.load_resumed(runtime.store(), &run_id);
        }
        if let Some(handle) = &self.inner.metrics {
            handle.run_upkeep();
        }
    }

    /// Shows the tasks a resumed run completed before (they send no events again).
    fn load_resumed(&self, store: &Store, run_id: &str) {
        let saved = match saved_runs(store) {
            Ok(runs) => runs.into_iter().find(|r| r.run_id == run_id),
            Err(e) => {
                tracing::warn!("telemetry: cannot read run {run_id}: {e}");
                return;
            }
        };
        let Some(saved) = saved else { return };
        let mut tracker = self.inner.tracker.lock();
        for (id, state) in saved.tasks {
            if let Some(task) = tracker.view.tasks.iter_mut().find(|t| t.id == id)
                && task.state == TaskState::Pending
            {
                task.state = state;
            }
        }
    }

    fn sample_store(&self, store: &Store) {
        let stats = store.stats(None);
        gauge!("tetrarch_store_memories", "state" => "live").set(stats.live as f64);
        gauge!("tetrarch_store_memories", "state" => "archived").set(stats.archived as f64);
        gauge!("tetrarch_store_bytes").set(stats.bytes as f64);
    }

    /// Runs `run` (typically [`Runtime::run`]) to its end, sampling the runtime every
    /// [`SAMPLE_PERIOD`] meanwhile and once at the end.
    pub async fn drive<F: Future>(&self, runtime: &Runtime, run: F) -> F::Output {
        tokio::pin!(run);
        let mut tick = tokio::time::interval(SAMPLE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                output = &mut run => {
                    self.sample(runtime);
                    return output;
                }
                _ = tick.tick() => self.sample(runtime),
            }
        }
    }

    /// The dashboard's view now.
    pub fn state(&self) -> DashboardState {
        let tracker = self.inner.tracker.lock();
        let mut view = tracker.view.clone();
        view.parallel_ratio = tracker.parallel_ratio(Instant::now());
        view.latency = tracker
            .latency
            .iter()
            .map(|(tool, (count, sum, max))| ToolLatency {
                tool: tool.clone(),
                count: *count,
                mean_ms: sum * 1000.0 / *count as f64,
                max_ms: max * 1000.0,
            })
            .collect();
        view
    }

    /// Whether the watched run has ended (or the view is of a finished run).
    pub fn run_over(&self) -> bool {
        let tracker = self.inner.tracker.lock();
        tracker.view.mode == "finished"
            || tracker
                .view
                .run
                .as_ref()
                .is_some_and(|run| run.status != RunStatus::Running)
    }

    /// Events recorded from now on (what `/api/events` streams).
    pub fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.inner.live.subscribe()
    }

    /// The Prometheus handle `/metrics` renders, if one was given.
    pub fn metrics(&self) -> Option<&PrometheusHandle> {
        self.inner.metrics.as_ref()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    fn calls(text: &str, status: &str) -> f64 {
        let labels = format!("status=\"{status}\"");
        text.lines()
            .filter(|l| l.starts_with("tetrarch_tool_calls_total{") && l.contains(&labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Each attempt is counted once: the last attempt's failed gates end it, and the task's
    /// FAILED that follows is the same attempt, not another call.
    #[test]
    fn an_attempt_whose_gates_fail_is_counted_once() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let plan = Plan::from_toml(
            "name = \"p\"\n[[task]]\nid = \"t\"\ntool = \"fn.echo\"\nmax_attempts = 2\n",
            "p.toml",
        )
        .unwrap();
        let telemetry = Telemetry::new(None);
        telemetry.watch_plan(&plan);
        let run_id = "r".to_owned();
        let task = "t".to_owned();
        let started = |attempt| RunEvent::TaskStarted {
            run_id: run_id.clone(),
            task: task.clone(),
            attempt,
        };
        let gate_failed = |attempt| RunEvent::GateFailed {
            run_id: run_id.clone(),
            task: task.clone(),
            attempt,
            feedback: "output lacks \"ok\"".to_owned(),
        };
        let finished = |state| RunEvent::TaskFinished {
            run_id: run_id.clone(),
            task: task.clone(),
            state,
            attempt: 2,
            reason: None,
            elapsed_us: None,
        };
        metrics::with_local_recorder(&recorder, || {
            for event in [
                started(1),
                gate_failed(1),
                started(2),
                gate_failed(2),
                finished(TaskState::Failed),
            ] {
                telemetry.record(&event);
            }
        });
        let text = handle.render();
        assert_eq!(calls(&text, "gate_failed"), 2.0, "{text}");
        assert_eq!(calls(&text, "failed"), 0.0, "{text}");

        // A failure that is not a gate's is still counted as failed.
        metrics::with_local_recorder(&recorder, || {
            telemetry.record(&started(1));
            telemetry.record(&finished(TaskState::Failed));
        });
        assert_eq!(calls(&handle.render(), "failed"), 1.0);

        // A task skipped after a failed dependency never started: it is not an attempt.
        metrics::with_local_recorder(&recorder, || {
            telemetry.record(&finished(TaskState::Skipped));
        });
        assert_eq!(calls(&handle.render(), "skipped"), 0.0);

        // The failed call before a declared fix is a call: two calls, one failed, one complete.
        let fixed = RunEvent::FixApplied {
            run_id: run_id.clone(),
            task: task.clone(),
            fix: "env FIXED=1".to_owned(),
            reason: "out of memory".to_owned(),
        };
        let before = calls(&handle.render(), "failed");
        metrics::with_local_recorder(&recorder, || {
            for event in [started(1), fixed, started(1), finished(TaskState::Complete)] {
                telemetry.record(&event);
            }
        });
        let text = handle.render();
        assert_eq!(calls(&text, "failed") - before, 1.0, "{text}");
        assert_eq!(calls(&text, "complete"), 1.0, "{text}");
    }

    #[test]
    fn the_parallel_ratio_counts_the_tasks_running_now() {
        let mut tracker = Tracker::default();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        tracker.start_attempt("a", at(0));
        tracker.start_attempt("b", at(0));
        tracker.end_attempt("a", "complete", at(100));
        // b ran alongside a for 100 ms each (200 ms of task time, all parallel); then alone.
        assert!((tracker.parallel_ratio(at(100)) - 1.0).abs() < 1e-9);
        // Alone for 1.8 s more: 200 of 2,000 ms of task time were parallel, though nothing
        // has started or ended since.
        assert!((tracker.parallel_ratio(at(1_900)) - 0.1).abs() < 1e-9);
    }
}
