//! What travels through the pipeline: an [`Attempt`] (Orchestrator → Optimizer → Executor →
//! Reviewer), then its [`Verdict`] (Reviewer → Orchestrator); and each agent's messages.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use super::mailbox::Mailbox;
use super::runtime::RunSpec;
use super::{AgentKind, RunReport};
use crate::permissions::PermissionEngine;
use crate::plan::{Task, TemplateContext, ToolRef};
use crate::session::ToolOutcome;

/// Why a tool is being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The task itself (gated).
    Task,
    /// Its compensation during a rollback (not gated).
    Compensation,
    /// A pool's declared warm-up call sent through the agents while pre-warming (see
    /// [`OrchestratorMsg::WarmUp`]): no permission check, cache, memory or event.
    WarmUp,
}

/// One dispatch of a task (or of its compensation).
pub(crate) struct Attempt {
    pub run_id: Arc<str>,
    pub task_index: usize,
    pub task: Arc<Task>,
    /// Identifies this dispatch; a verdict with a stale token is ignored.
    pub token: u64,
    pub purpose: Purpose,
    /// Args that replace the task's own for this attempt (a declared fix applied them).
    pub fixed_args: Option<Value>,
    /// What templates render against; the Optimizer adds `context`.
    pub ctx: TemplateContext,
    /// Whether the args use `{{context}}` (the Optimizer assembles it only then).
    pub wants_context: bool,
    pub timeout: Option<Duration>,
    /// The plan's folder: relative paths in gates resolve against it.
    pub base_dir: Arc<PathBuf>,
    /// Rendered by the Optimizer; `Err` says why the call cannot be made (a template that could
    /// not be rendered, a context whose assembly panicked).
    pub args: Option<Result<Value, String>>,
    /// The run's permission rules.
    pub permissions: Option<Arc<PermissionEngine>>,
    /// Set by the Executor when the call failed: the error as the tool gave it, and the known
    /// fix for the most similar past error.
    pub failure: Option<(String, Option<String>)>,
    /// Set by the Executor for a cacheable call: the result cache's key of its outcome, which
    /// the Reviewer drops when the gates fail (a result that failed them must not be reused).
    pub cache_key: Option<crate::store::CacheKey>,
    /// Set by the Executor when the outcome was the result cache's, not a call's: one that fails
    /// the gates is stale (the tool's files changed, say), and the Orchestrator has the tool
    /// called for the same attempt once the Reviewer has dropped it. The Reviewer clears it when
    /// the entry could not be dropped (the call would be served the same result again).
    pub served_from_cache: bool,
    /// A task's call: cancelled when its run stops (a task failed for good, or a cancel), so
    /// a call still waiting for a session is not made ([`Outcome::NotStarted`]). A call already
    /// made finishes. For compensations (which run while a run stops), cancelled only when the
    /// run is gone with a crashed Orchestrator; `None` for warm-ups.
    pub stop_starting: Option<tokio_util::sync::CancellationToken>,
    /// This attempt's `task` (or `compensate`) span, a child of the run's span: the agents open
    /// their own spans (`context`, `tool_call`, `review`) under it, so one trace follows the
    /// attempt across the four mailboxes. It closes when the Orchestrator drops the attempt.
    pub span: tracing::Span,
}

impl Attempt {
    /// Its run stopped before its call was made (see `stop_starting`): the call is not made.
    pub fn run_stopped(&self) -> bool {
        self.stop_starting
            .as_ref()
            .is_some_and(tokio_util::sync::CancellationToken::is_cancelled)
    }

    /// The tool this attempt calls: the task's, or its compensation's. (Borrowed from the
    /// task, so a dispatch copies neither.)
    pub fn call(&self) -> &ToolRef {
        match (self.purpose, &self.task.compensate) {
            (Purpose::Compensation, Some(compensate)) => &compensate.tool,
            _ => &self.task.tool,
        }
    }

    /// The args as written (templates), which the Optimizer renders.
    pub fn args_template(&self) -> &Value {
        match (self.purpose, &self.task.compensate, &self.fixed_args) {
            (Purpose::Compensation, Some(compensate), _) => &compensate.args,
            (_, _, Some(fixed)) => fixed,
            _ => &self.task.args,
        }
    }
}

/// What the Executor got from the tool.
pub(crate) enum Outcome {
    /// The tool ran (whatever its exit status).
    Ran(ToolOutcome),
    /// It could not run or did not finish: crashed, timed out, pool failure, denied.
    Error { reason: String, retryable: bool },
    /// It was not called: the run stopped while the call waited for a session.
    NotStarted { reason: String },
}

/// The Reviewer's judgement.
pub(crate) enum Verdict {
    /// Every gate passed.
    Pass { output: Value, summary: String },
    /// A gate failed; the reasons are the next attempt's feedback.
    GateFailed { feedback: String },
    /// The tool errored.
    Error { reason: String, retryable: bool },
    /// The tool was not called: the run stopped first.
    NotStarted { reason: String },
}

/// Why the Orchestrator could not start or end a run, as [`Runtime::run`](super::Runtime::run)
/// reports it.
#[derive(Debug, Clone)]
pub(crate) enum RunFailure {
    /// The saved run could not be taken up: not saved, another plan's, or unreadable
    /// ([`AgentError::Resume`](super::AgentError::Resume)).
    Resume(String),
    /// The run's own records could not be written, or its end could not be saved
    /// ([`AgentError::Run`](super::AgentError::Run)).
    Run(String),
}

/// Messages to the Orchestrator.
pub(crate) enum OrchestratorMsg {
    Start {
        spec: Box<RunSpec>,
        reply: oneshot::Sender<Result<RunReport, RunFailure>>,
    },
    Verdict {
        attempt: Box<Attempt>,
        verdict: Verdict,
    },
    Retry {
        run_id: Arc<str>,
        task_index: usize,
        token: u64,
    },
    AgentRestarted(AgentKind),
    /// Pre-warming: each call goes through the Optimizer, the Executor (the pool's session) and
    /// the Reviewer, as a task would; `done` is answered once every verdict is back. The hops and
    /// the session are then warm for the first task, which otherwise took 1.4–1.9× as long as
    /// the tenth.
    WarmUp {
        /// The pools of this run (a plan's own pools), or of none (the runtime's).
        run_id: Option<Arc<str>>,
        calls: Vec<WarmUpCall>,
        done: oneshot::Sender<()>,
    },
    Cancel {
        run_id: String,
    },
    Ping(oneshot::Sender<()>),
    Crash,
}

/// One pool's declared warm-up call, made through the agents.
#[derive(Clone, Debug)]
pub(crate) struct WarmUpCall {
    pub tool: ToolRef,
    pub args: Value,
}

/// Messages to the Optimizer.
pub(crate) enum OptimizerMsg {
    Prepare(Box<Attempt>),
    Ping(oneshot::Sender<()>),
    /// Answered once the context optimizer (token counter, skills) is loaded.
    Ready(oneshot::Sender<()>),
    Crash,
}

/// Messages to the Executor.
pub(crate) enum ExecutorMsg {
    Execute(Box<Attempt>),
    CancelRun(Arc<str>),
    /// A run of this id starts (new, or resumed): an earlier cancel of the id is not its.
    RunStarted(Arc<str>),
    Ping(oneshot::Sender<()>),
    Crash,
}

/// Messages to the Reviewer.
pub(crate) enum ReviewerMsg {
    Review(Box<Attempt>, Outcome),
    Ping(oneshot::Sender<()>),
    Crash,
}

/// Every agent's mailbox: what each agent is given to reach the others.
#[derive(Clone)]
pub(crate) struct Peers {
    pub orchestrator: Mailbox<OrchestratorMsg>,
    pub optimizer: Mailbox<OptimizerMsg>,
    pub executor: Mailbox<ExecutorMsg>,
    pub reviewer: Mailbox<ReviewerMsg>,
}

/// The panic a `Crash` message causes: fault injection for supervision tests.
pub(crate) fn injected_fault(agent: AgentKind) -> ! {
    panic!("injected fault in the {agent} (Runtime::inject_fault)")
}
