//! The root supervisor: starts the four agents linked to itself and restarts the one that fails
//! (one-for-one), within an OTP-style intensity limit per agent.
//!
//! Written here because ractor only reports a linked child's failure (`SupervisionEvent`) and
//! leaves the strategy to the supervisor. A restart swaps the agent's [`Mailbox`] to the new
//! actor, counts it, emits [`RunEvent::AgentRestarted`], and tells the Orchestrator so it
//! re-dispatches the work the dead agent held. More than `max_restarts` failures of one agent
//! within `within` stop the whole tree; the runtime then reports
//! [`super::AgentError::IntensityExceeded`].
//!
//! [`Mailbox`]: super::Mailbox

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{oneshot, watch};
use tokio_util::task::TaskTracker;

use super::events::{EventBus, RunEvent};
use super::executor::{Executor, ExecutorArgs};
use super::optimizer::{Optimizer, OptimizerArgs};
use super::orchestrator::{Orchestrator, OrchestratorArgs};
use super::pipeline::{OrchestratorMsg, Peers};
use super::reviewer::{Reviewer, ReviewerArgs};
use super::runtime::PoolSet;
use super::{ActorsConfig, AgentError, AgentKind};
use crate::lessons::Lessons;
use crate::permissions::ApprovalHandler;
use crate::store::{ContextCache, Store};

/// Restarts per agent since the runtime started.
#[derive(Debug, Default)]
pub struct RestartCounters([AtomicU64; 4]);

impl RestartCounters {
    fn slot(&self, agent: AgentKind) -> &AtomicU64 {
        &self.0[AgentKind::ALL.iter().position(|a| *a == agent).unwrap_or(0)]
    }

    /// Restarts of `agent` so far.
    pub fn get(&self, agent: AgentKind) -> u64 {
        self.slot(agent).load(Ordering::Relaxed)
    }
}

/// Why the tree stopped for good.
#[derive(Debug, Clone)]
pub(crate) struct Fatal {
    pub agent: AgentKind,
    pub restarts: u32,
    pub within: Duration,
    pub reason: String,
}

impl Fatal {
    pub(crate) fn error(&self) -> AgentError {
        AgentError::IntensityExceeded {
            agent: self.agent,
            restarts: self.restarts,
            within: self.within,
            reason: self.reason.clone(),
        }
    }
}

/// Messages to the supervisor.
pub(crate) enum SupervisorMsg {
    /// Stop the agents, then the supervisor; answered when the agents were told to stop.
    Shutdown(oneshot::Sender<()>),
}

/// Held by the supervisor's state and each agent's (an Executor's calls hold theirs through its
/// args): [`super::Runtime::shutdown`] waits until every copy is dropped, which is when no agent
/// state holds the store any more, wherever ractor has it then (a stopped agent's state travels
/// in its exit event to the supervisor; a failed one's is dropped after that event).
#[derive(Clone)]
pub(crate) struct StateToken {
    _held: tokio::sync::mpsc::Sender<std::convert::Infallible>,
}

impl StateToken {
    /// A token and what waits for all its copies to be dropped.
    pub(crate) fn new() -> (Self, tokio::sync::mpsc::Receiver<std::convert::Infallible>) {
        let (held, dropped) = tokio::sync::mpsc::channel(1);
        (Self { _held: held }, dropped)
    }
}

/// The supervisor actor.
pub(crate) struct Supervisor;

/// What the supervisor needs to (re)start each agent.
#[derive(Clone)]
pub(crate) struct SupervisorArgs {
    pub peers: Peers,
    pub store: Store,
    pub pools: PoolSet,
    pub cache: ContextCache,
    pub config: Arc<ActorsConfig>,
    pub events: EventBus,
    pub restarts: Arc<RestartCounters>,
    pub fatal: Arc<watch::Sender<Option<Fatal>>>,
    pub approval: Arc<dyn ApprovalHandler + Send + Sync>,
    /// Approval calls out at once (see [`ExecutorArgs::approvals`]).
    pub approvals: Arc<tokio::sync::Semaphore>,
    pub lessons: Arc<Lessons>,
    /// The agents' background writes, which [`super::Runtime::shutdown`] waits for.
    pub background: TaskTracker,
    /// Copied into each agent's args.
    pub token: StateToken,
}

pub(crate) struct SupervisorState {
    args: SupervisorArgs,
    children: HashMap<ActorId, (AgentKind, ActorCell)>,
    history: HashMap<AgentKind, VecDeque<Instant>>,
    stopping: bool,
}

fn spawn_error(agent: AgentKind) -> impl FnOnce(ractor::SpawnErr) -> ActorProcessingErr {
    move |e| {
        Box::new(AgentError::Spawn {
            agent,
            detail: e.to_string(),
        })
    }
}

impl SupervisorState {
    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        kind: AgentKind,
    ) -> Result<(), ActorProcessingErr> {
        let a = &self.args;
        let link = myself.get_cell();
        let cell = match kind {
            AgentKind::Orchestrator => {
                let args = OrchestratorArgs {
                    peers: a.peers.clone(),
                    _token: a.token.clone(),
                    store: a.store.clone(),
                    settings: a.config.orchestrator.run.clone(),
                    events: a.events.clone(),
                    lessons: Arc::clone(&a.lessons),
                    background: a.background.clone(),
                };
                let (actor, _) = Actor::spawn_linked(None, Orchestrator, args, link)
                    .await
                    .map_err(spawn_error(kind))?;
                a.peers.orchestrator.attach(actor.clone());
                actor.get_cell()
            }
            AgentKind::Optimizer => {
                let args = OptimizerArgs {
                    peers: a.peers.clone(),
                    _token: a.token.clone(),
                    store: a.store.clone(),
                    config: a.config.optimizer.clone(),
                    base_dir: a.config.base_dir.clone(),
                    events: a.events.clone(),
                    preserved: Arc::default(),
                    background: a.background.clone(),
                };
                let (actor, _) = Actor::spawn_linked(None, Optimizer, args, link)
                    .await
                    .map_err(spawn_error(kind))?;
                a.peers.optimizer.attach(actor.clone());
                actor.get_cell()
            }
            AgentKind::Executor => {
                let args = ExecutorArgs {
                    peers: a.peers.clone(),
                    _token: a.token.clone(),
                    store: a.store.clone(),
                    pools: a.pools.clone(),
                    cache: a.cache.clone(),
                    config: a.config.executor.clone(),
                    approval: Arc::clone(&a.approval),
                    approvals: Arc::clone(&a.approvals),
                    lessons: Arc::clone(&a.lessons),
                    background: a.background.clone(),
                };
                let (actor, _) = Actor::spawn_linked(None, Executor, args, link)
                    .await
                    .map_err(spawn_error(kind))?;
                a.peers.executor.attach(actor.clone());
                actor.get_cell()
            }
            AgentKind::Reviewer => {
                let args = ReviewerArgs {
                    peers: a.peers.clone(),
                    _token: a.token.clone(),
                    pools: a.pools.clone(),
                    score_pool: a.config.reviewer.score_pool.clone(),
                    cache: a.cache.clone(),
                };
                let (actor, _) = Actor::spawn_linked(None, Reviewer, args, link)
                    .await
                    .map_err(spawn_error(kind))?;
                a.peers.reviewer.attach(actor.clone());
                actor.get_cell()
            }
        };
        self.children.insert(cell.get_id(), (kind, cell));
        Ok(())
    }

    fn detach(&self, kind: AgentKind) {
        let peers = &self.args.peers;
        match kind {
            AgentKind::Orchestrator => peers.orchestrator.detach(),
            AgentKind::Optimizer => peers.optimizer.detach(),
            AgentKind::Executor => peers.executor.detach(),
            AgentKind::Reviewer => peers.reviewer.detach(),
        }
    }

    fn stop_all(&mut self, myself: &ActorRef<SupervisorMsg>, reason: &str) {
        self.stopping = true;
        for (kind, cell) in self.children.values() {
            self.detach(*kind);
            cell.stop(Some(reason.to_owned()));
        }
        myself.stop(Some(reason.to_owned()));
    }

    async fn on_exit(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: ActorId,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        let Some((kind, _)) = self.children.remove(&id) else {
            return Ok(());
        };
        self.detach(kind);
        if self.stopping {
            return Ok(());
        }
        let intensity = match kind {
            AgentKind::Orchestrator => self.args.config.orchestrator.restart,
            AgentKind::Optimizer => self.args.config.optimizer.restart,
            AgentKind::Executor => self.args.config.executor.restart,
            AgentKind::Reviewer => self.args.config.reviewer.restart,
        };
        let now = Instant::now();
        let history = self.history.entry(kind).or_default();
        history.push_back(now);
        while history
            .front()
            .is_some_and(|t| now.duration_since(*t) > intensity.within)
        {
            history.pop_front();
        }
        let recent = u32::try_from(history.len()).unwrap_or(u32::MAX);
        if recent > intensity.max_restarts {
            tracing::error!(
                "supervisor: {kind} failed {recent} times within {:?}; stopping: {reason}",
                intensity.within
            );
            let _ = self.args.fatal.send(Some(Fatal {
                agent: kind,
                restarts: recent,
                within: intensity.within,
                reason: reason.clone(),
            }));
            self.stop_all(myself, &format!("{kind} over its restart intensity"));
            return Ok(());
        }
        tracing::warn!("supervisor: restarting {kind} after: {reason}");
        self.spawn(myself, kind).await?;
        let counter = self.args.restarts.slot(kind);
        let restarts = counter.fetch_add(1, Ordering::Relaxed) + 1;
        self.args.events.send(RunEvent::AgentRestarted {
            agent: kind,
            restarts,
            reason,
        });
        if kind != AgentKind::Orchestrator {
            let _ = self
                .args
                .peers
                .orchestrator
                .send_control(OrchestratorMsg::AgentRestarted(kind));
        }
        Ok(())
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            args,
            children: HashMap::new(),
            history: HashMap::new(),
            stopping: false,
        };
        for kind in AgentKind::ALL {
            state.spawn(&myself, kind).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Shutdown(reply) => {
                state.stop_all(&myself, "shutdown");
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                state
                    .on_exit(&myself, cell.get_id(), error.to_string())
                    .await
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let reason = reason.unwrap_or_else(|| "stopped without a reason".to_owned());
                state.on_exit(&myself, cell.get_id(), reason).await
            }
            _ => Ok(()),
        }
    }
}
