//! The supervisor and the four agents, each a supervised `ractor` actor.
//!
//! ```text
//!            plan ─► Orchestrator ─► Optimizer ─► Executor ─► Reviewer ─┐
//!                         ▲          (context,     (session     (gates,  │
//!                         │           {{context}})  pools)      scores)  │
//!                         └───────────────── verdict ───────────────────┘
//! ```
//!
//! Data flows one way: the Orchestrator sends a ready task's attempt to the Optimizer, which
//! renders its templates, assembles its context and passes it to the Executor, which runs the tool
//! through a session pool and passes the outcome to the Reviewer, which applies the gates and
//! sends the verdict back to the Orchestrator. No agent waits for another's answer; the store is
//! the only shared state (plus the session pools, a resource the supervisor hands to each agent
//! it starts, so a restarted agent finds its sessions warm).
//!
//! # Supervision ([`supervisor`])
//! ractor links actors and reports a child's panic or exit to its supervisor, but has no restart
//! strategies, so the supervisor here implements one: one-for-one restart with an OTP-style
//! intensity limit (at most `max_restarts` in a sliding `within` window, per agent, from
//! `actors/*.toml`). Past the limit the whole tree stops and [`Runtime`] calls fail with
//! [`AgentError::IntensityExceeded`]. Each restart is a [`RunEvent::AgentRestarted`] and is
//! counted. Work lost with a dead agent is not lost for the run: the Orchestrator re-dispatches
//! every attempt in flight (at-least-once), and a restarted Orchestrator reloads its runs from the
//! store. A task already COMPLETE is never run again.
//!
//! # Bounded mailboxes ([`mailbox`])
//! ractor's mailboxes are unbounded. Every agent is reached through a [`Mailbox`] holding a
//! semaphore of `mailbox` slots: a message takes a slot until the agent has handled it. Callers
//! of the library API ([`Runtime::run`], [`Runtime::cancel`], [`Runtime::ping`]) wait for a slot
//! ([`Mailbox::send`]); the non-waiting [`Mailbox::try_send`] fails with [`AgentError::Busy`]
//! instead (crate-internal for now). Inside the pipeline the Orchestrator never has more than
//! `max_in_flight` attempts of a run out, and configuration validation demands every mailbox
//! hold that many, so one run's sends never wait on each other. Concurrent runs each have their
//! own window, so their sends can wait for a slot; none deadlocks, since the Executor's handler
//! never waits on a send (its calls run as tasks that do, holding no slot).
//!
//! ractor's `factory` was considered for the Executor: its queue bound discards jobs when full
//! (work silently dropped instead of the caller waiting) and its workers run one job each, so
//! per-pool concurrency would be limited twice. The Executor is one actor that runs each call as
//! a task under the pool's own limits; killing the actor aborts its calls.

mod config;
mod events;
mod executor;
pub mod mailbox;
mod optimizer;
mod orchestrator;
mod pipeline;
mod reviewer;
mod runtime;
mod state;
pub mod supervisor;

use std::fmt;

pub use config::{
    ActorsConfig, ExecutorConfig, OptimizerConfig, OrchestratorConfig, RestartIntensity,
    ReviewerConfig, RunSettings,
};
pub use events::RunEvent;
pub use mailbox::Mailbox;
pub use runtime::{RunOptions, Runtime, RuntimeOptions, plan_hash};
pub use state::{
    AttemptTimes, CompensationReport, RunReport, RunStatus, SavedRun, SavedTask, TaskReport,
    TaskState, saved_output, saved_runs, saved_tasks,
};

/// The four agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// Runs plans.
    Orchestrator,
    /// Assembles context.
    Optimizer,
    /// Runs tool calls.
    Executor,
    /// Applies gates.
    Reviewer,
}

impl AgentKind {
    /// All four, in pipeline order.
    pub const ALL: [AgentKind; 4] = [
        AgentKind::Orchestrator,
        AgentKind::Optimizer,
        AgentKind::Executor,
        AgentKind::Reviewer,
    ];

    /// The lowercase name (`orchestrator`, ...), also its config file's stem.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Orchestrator => "orchestrator",
            AgentKind::Optimizer => "optimizer",
            AgentKind::Executor => "executor",
            AgentKind::Reviewer => "reviewer",
        }
    }
}

impl fmt::Display for AgentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can go wrong starting or talking to the agents.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent's mailbox is full (from the non-waiting API).
    #[error("{agent} is busy: its mailbox of {bound} messages is full")]
    Busy {
        /// The agent.
        agent: AgentKind,
        /// Its mailbox bound.
        bound: usize,
    },
    /// The agent is not running (restarting, or the runtime stopped).
    #[error("{agent} is not running")]
    Unavailable {
        /// The agent.
        agent: AgentKind,
    },
    /// An agent restarted too often; the runtime stopped.
    #[error(
        "{agent} restarted {restarts} times within {within:?}, over its limit: the runtime stopped (last failure: {reason})"
    )]
    IntensityExceeded {
        /// The agent.
        agent: AgentKind,
        /// Restarts counted in the window.
        restarts: u32,
        /// The window.
        within: std::time::Duration,
        /// The last failure.
        reason: String,
    },
    /// A bad `actors/*.toml`.
    #[error("bad actors configuration: {detail}")]
    Config {
        /// What and where.
        detail: String,
    },
    /// An actor could not be spawned.
    #[error("could not start {agent}: {detail}")]
    Spawn {
        /// The agent.
        agent: AgentKind,
        /// Why.
        detail: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A session pool's declaration is invalid, or a session failed.
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    /// A pool could not start its sessions (an MCP server that does not start or answer).
    #[error("pool {pool:?} could not start: {source}")]
    PoolStart {
        /// The pool, as declared.
        pool: String,
        /// Why.
        #[source]
        source: crate::session::SessionError,
    },
    /// The plan is invalid (for the runtime's pools).
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// A run asked to resume cannot be taken up: it is not saved, it has ended, it belongs to
    /// another plan, or the store or a completed task's saved output cannot be read.
    #[error("cannot resume run {run_id}: {reason}")]
    Resume {
        /// The run.
        run_id: String,
        /// Why.
        reason: String,
    },
    /// A run, new or resumed, could not start or go on (its id is not usable, its records could
    /// not be written, or its end could not be saved).
    #[error("run {run_id}: {reason}")]
    Run {
        /// The run.
        run_id: String,
        /// Why.
        reason: String,
    },
    /// The runtime was shut down.
    #[error("the runtime has shut down")]
    ShutDown,
}
