//! Progress events anyone can subscribe to ([`super::Runtime::subscribe`], or
//! [`super::Runtime::subscribe_all`] for every event); `tetrarch run --events json` prints one
//! per line.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use super::{AgentKind, RunStatus, TaskState};

/// Something that happened in a run or to an agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// A run started (or resumed, with the tasks already complete).
    RunStarted {
        /// The run.
        run_id: String,
        /// The plan's name.
        plan: String,
        /// Tasks in the plan.
        tasks: usize,
        /// Whether it continues an earlier run.
        resumed: bool,
        /// Tasks already COMPLETE (resumed runs).
        already_complete: usize,
    },
    /// A task attempt was dispatched.
    TaskStarted {
        /// The run.
        run_id: String,
        /// The task.
        task: String,
        /// The 1-based attempt (gate attempts).
        attempt: u32,
    },
    /// A task reached a state other than running.
    TaskFinished {
        /// The run.
        run_id: String,
        /// The task.
        task: String,
        /// Its state now.
        state: TaskState,
        /// Attempts used.
        attempt: u32,
        /// Why it failed or was skipped; the gates' summary when complete.
        reason: Option<String>,
        /// Microseconds from the dispatch of its latest attempt to this state, as the
        /// Orchestrator measured them (a subscriber's own clock would add its scheduling
        /// delay); none when no attempt was dispatched in this process (skipped, or completed
        /// before a resume).
        elapsed_us: Option<u64>,
    },
    /// A gate failed: the task runs again with this feedback while attempts remain; after
    /// the last one a `TaskFinished` (failed) follows for the same attempt.
    GateFailed {
        /// The run.
        run_id: String,
        /// The task.
        task: String,
        /// The attempt that failed.
        attempt: u32,
        /// The Reviewer's reasons (the next attempt's `{{feedback}}`).
        feedback: String,
    },
    /// A task errored and will be retried after a backoff.
    TaskRetrying {
        /// The run.
        run_id: String,
        /// The task.
        task: String,
        /// Retries used so far, this one included.
        retry: u32,
        /// The error.
        reason: String,
        /// The wait before the retry.
        backoff_ms: u64,
    },
    /// The Optimizer assembled a task's `{{context}}`.
    ContextBuilt {
        /// The run.
        run_id: String,
        /// The task.
        task: String,
        /// The context session (`RUN/TASK`).
        session: String,
        /// Tokens sent in this payload.
        tokens: usize,
        /// Tokens the session holds after it.
        session_tokens: usize,
        /// The session's window.
        window: usize,
    },
    /// A context session crossed the monitor's alert ratio (once per crossing): its full
    /// context is being preserved in the store (tag `context-snapshot`), then compacted.
    ContextAlert {
        /// The run.
        run_id: String,
        /// The task.
        task: String,
        /// The context session (`RUN/TASK`).
        session: String,
        /// Tokens the session holds.
        used: usize,
        /// The session's window.
        window: usize,
    },
    /// A fix the plan declares for the task is being tried after a failure.
    FixApplied {
        /// The run.
        run_id: String,
        /// The task.
        task: String,
        /// The fix in words.
        fix: String,
        /// The failure it answers.
        reason: String,
    },
    /// A completed task's compensation ran during a rollback.
    Compensated {
        /// The run.
        run_id: String,
        /// The task undone.
        task: String,
        /// Whether the compensation succeeded.
        ok: bool,
        /// Its output or error.
        detail: String,
    },
    /// The run ended.
    RunFinished {
        /// The run.
        run_id: String,
        /// How.
        status: RunStatus,
        /// Wall time in milliseconds.
        duration_ms: u64,
    },
    /// The supervisor restarted an agent.
    AgentRestarted {
        /// The agent.
        agent: AgentKind,
        /// Its restarts so far.
        restarts: u64,
        /// Why it failed.
        reason: String,
    },
}

/// Where the agents send their events: a bounded broadcast, whose subscribers lose the oldest
/// events when they fall too far behind (a live view that can reload its state), and the
/// queues of subscribers that must see every event (a printed stream that ends with the run's
/// `run_finished`, a tracker whose totals must add up). A burst of thousands of skipped
/// dependents comes from one message of the Orchestrator, faster than any reader.
#[derive(Clone)]
pub(crate) struct EventBus {
    broadcast: broadcast::Sender<RunEvent>,
    every: Arc<parking_lot::Mutex<Vec<mpsc::UnboundedSender<RunEvent>>>>,
}

impl EventBus {
    /// A bus whose broadcast holds `capacity` events per subscriber.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            broadcast: broadcast::channel(capacity).0,
            every: Arc::default(),
        }
    }

    /// Events from now on, the oldest lost past the broadcast's capacity.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.broadcast.subscribe()
    }

    /// Every event from now on, queued for as long as the receiver takes.
    pub(crate) fn subscribe_all(&self) -> mpsc::UnboundedReceiver<RunEvent> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.every.lock().push(sender);
        receiver
    }

    /// Whether anyone listens (events are not even built otherwise).
    pub(crate) fn has_subscribers(&self) -> bool {
        self.broadcast.receiver_count() > 0 || self.every.lock().iter().any(|s| !s.is_closed())
    }

    /// Sends `event` to every subscriber; one that went away is dropped, not an error.
    pub(crate) fn send(&self, event: RunEvent) {
        self.every
            .lock()
            .retain(|subscriber| subscriber.send(event.clone()).is_ok());
        let _ = self.broadcast.send(event);
    }
}
