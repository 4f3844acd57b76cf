//! The dashboard's view of a run: what `/api/state` returns, kept up to date from events and
//! samples.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::agents::{AgentKind, RunEvent, RunStatus, SavedRun, TaskState};
use crate::plan::Plan;

/// Events kept for a page that opens mid-run (older ones are dropped).
const EVENT_LOG: usize = 500;

/// Everything the page draws.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DashboardState {
    /// `live` while a process runs the plan, `finished` for a run read back from a store.
    pub mode: &'static str,
    /// The run, once it has started.
    pub run: Option<RunView>,
    /// The plan's tasks in file order.
    pub tasks: Vec<TaskView>,
    /// The four agents (empty for a finished run: its agents are gone).
    pub agents: Vec<AgentView>,
    /// The session pools, by name.
    pub pools: Vec<PoolView>,
    /// Attempt latency per tool.
    pub latency: Vec<ToolLatency>,
    /// The context cache's hits and misses per category.
    pub cache: Vec<CacheView>,
    /// Context usage per session (task attempt), newest last.
    pub context: Vec<ContextView>,
    /// Share of task time spent with other tasks running (0 when nothing ran yet).
    pub parallel_ratio: f64,
    /// The newest events, oldest first.
    pub events: VecDeque<RunEvent>,
    /// Something the page should say (e.g. the plan file of a finished run is gone).
    pub note: Option<String>,
}

/// The run.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    /// Its id.
    pub run_id: String,
    /// The plan's name.
    pub plan: String,
    /// Its status.
    pub status: RunStatus,
    /// Wall time, once finished.
    pub duration_ms: Option<u64>,
}

/// One task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    /// The task's id.
    pub id: String,
    /// `POOL.TOOL` (empty when the plan is unknown).
    pub tool: String,
    /// The tasks it waits for.
    pub deps: Vec<String>,
    /// Its DAG level (0: no dependencies), the page's column.
    pub level: usize,
    /// Its state.
    pub state: TaskState,
    /// The current or last attempt.
    pub attempt: u32,
    /// Why it failed, was skipped, or is being retried.
    pub reason: Option<String>,
}

/// One agent.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// The agent.
    pub agent: AgentKind,
    /// Restarts since the runtime started.
    pub restarts: u64,
    /// Messages queued now.
    pub mailbox_depth: usize,
    /// False once the supervisor gave up (restart limit).
    pub running: bool,
}

/// One session pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    /// Its name.
    pub name: String,
    /// Live sessions.
    pub size: usize,
    /// Sessions checked out.
    pub in_use: usize,
    /// Idle sessions.
    pub idle: usize,
    /// Callers waiting for a session.
    pub waiters: usize,
    /// Sum of all callers' waits, in milliseconds.
    pub total_wait_ms: f64,
    /// Sessions handed out.
    pub acquired: u64,
}

/// One context session's usage of its window.
#[derive(Debug, Clone, Serialize)]
pub struct ContextView {
    /// The session (`RUN/TASK`).
    pub session: String,
    /// The task.
    pub task: String,
    /// Tokens it holds.
    pub tokens: usize,
    /// Its window.
    pub window: usize,
}

/// One category of the context cache.
#[derive(Debug, Clone, Serialize)]
pub struct CacheView {
    /// The category (`tool_result`, `file_read`, ...).
    pub cache: &'static str,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to compute.
    pub misses: u64,
}

/// Attempt latency of one tool.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ToolLatency {
    /// `POOL.TOOL`.
    pub tool: String,
    /// Attempts measured.
    pub count: u64,
    /// Their mean, in milliseconds.
    pub mean_ms: f64,
    /// The slowest, in milliseconds.
    pub max_ms: f64,
}

impl DashboardState {
    /// The view of a plan about to run: every task pending.
    pub(crate) fn for_plan(plan: &Plan) -> Self {
        let mut levels = HashMap::new();
        for (level, ids) in plan.dag().levels().iter().enumerate() {
            for id in ids {
                levels.insert(id.as_str().to_owned(), level);
            }
        }
        let tasks = plan
            .tasks
            .iter()
            .map(|task| TaskView {
                id: task.id.as_str().to_owned(),
                tool: task.tool.to_string(),
                deps: task.deps.iter().map(|d| d.as_str().to_owned()).collect(),
                level: levels.get(task.id.as_str()).copied().unwrap_or(0),
                state: TaskState::Pending,
                attempt: 0,
                reason: None,
            })
            .collect();
        DashboardState {
            mode: "live",
            tasks,
            ..DashboardState::default()
        }
    }

    /// The view of a finished run read from the store; `plan` is its plan when the file could
    /// still be read (for dependencies and tools).
    pub(crate) fn for_saved(run: &SavedRun, plan: Option<&Plan>) -> Self {
        let mut state = match plan {
            Some(plan) => DashboardState::for_plan(plan),
            None => DashboardState {
                note: Some(format!(
                    "the plan {} could not be read: dependencies are not shown",
                    run.source
                )),
                tasks: run
                    .tasks
                    .iter()
                    .map(|(id, _)| TaskView {
                        id: id.clone(),
                        tool: String::new(),
                        deps: Vec::new(),
                        level: 0,
                        state: TaskState::Pending,
                        attempt: 0,
                        reason: None,
                    })
                    .collect(),
                ..DashboardState::default()
            },
        };
        state.mode = "finished";
        for (id, saved) in &run.tasks {
            state.set_task(id, *saved, None, None);
        }
        state.run = Some(RunView {
            run_id: run.run_id.clone(),
            plan: run.plan.clone(),
            status: run.status,
            duration_ms: run
                .duration()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        });
        state
    }

    pub(crate) fn set_task(
        &mut self,
        id: &str,
        state: TaskState,
        attempt: Option<u32>,
        reason: Option<Option<String>>,
    ) {
        if let Some(task) = self.tasks.iter_mut().find(|t| t.id == id) {
            task.state = state;
            if let Some(attempt) = attempt {
                task.attempt = attempt;
            }
            if let Some(reason) = reason {
                task.reason = reason;
            }
        }
    }

    /// Applies one event.
    pub(crate) fn apply(&mut self, event: &RunEvent) {
        match event {
            RunEvent::RunStarted { run_id, plan, .. } => {
                self.run = Some(RunView {
                    run_id: run_id.clone(),
                    plan: plan.clone(),
                    status: RunStatus::Running,
                    duration_ms: None,
                });
            }
            RunEvent::TaskStarted { task, attempt, .. } => {
                self.set_task(task, TaskState::Running, Some(*attempt), Some(None));
            }
            RunEvent::TaskFinished {
                task,
                state,
                attempt,
                reason,
                ..
            } => self.set_task(task, *state, Some(*attempt), Some(reason.clone())),
            RunEvent::TaskRetrying { task, reason, .. } => {
                self.set_task(task, TaskState::Running, None, Some(Some(reason.clone())));
            }
            RunEvent::GateFailed { task, feedback, .. } => {
                self.set_task(task, TaskState::Running, None, Some(Some(feedback.clone())));
            }
            RunEvent::Compensated { task, ok: true, .. } => {
                self.set_task(task, TaskState::Compensated, None, None);
            }
            RunEvent::RunFinished {
                status,
                duration_ms,
                ..
            } => {
                if let Some(run) = &mut self.run {
                    run.status = *status;
                    run.duration_ms = Some(*duration_ms);
                }
            }
            RunEvent::ContextBuilt {
                task,
                session,
                session_tokens,
                window,
                ..
            } => {
                let view = ContextView {
                    session: session.clone(),
                    task: task.clone(),
                    tokens: *session_tokens,
                    window: *window,
                };
                match self.context.iter_mut().find(|c| c.session == *session) {
                    Some(existing) => *existing = view,
                    None => self.context.push(view),
                }
            }
            RunEvent::Compensated { .. }
            | RunEvent::ContextAlert { .. }
            | RunEvent::FixApplied { .. }
            | RunEvent::AgentRestarted { .. } => {}
        }
        if self.events.len() == EVENT_LOG {
            self.events.pop_front();
        }
        self.events.push_back(event.clone());
    }
}
