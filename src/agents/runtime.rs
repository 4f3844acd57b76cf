//! [`Runtime`]: the library API over the supervision tree — start it, run plans, subscribe to
//! events, cancel, shut down.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use ractor::{Actor, ActorRef};
use tokio::sync::{broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::events::{EventBus, RunEvent};
use super::mailbox::Mailbox;
use super::pipeline::{
    ExecutorMsg, OptimizerMsg, OrchestratorMsg, Peers, ReviewerMsg, RunFailure, WarmUpCall,
};
use super::supervisor::{
    Fatal, RestartCounters, StateToken, Supervisor, SupervisorArgs, SupervisorMsg,
};
use super::{ActorsConfig, AgentError, AgentKind, RunReport, RunStatus, TaskState};
use crate::lessons::Lessons;
use crate::permissions::{ApprovalHandler, DenyAll, PermissionEngine};
use crate::plan::{Diagnostic, Plan, PlanError, StaticCatalog, ToolRef};
use crate::session::{
    NativeRegistry, Pool, PoolContext, PoolDef, PoolKind, PoolStats, SCORER_TOOLS, SessionError,
};
use crate::store::{CacheStats, CacheTtls, ContextCache, Namespace, Store};

/// The session pools by name, with each pool's default call timeout. Shared by the Executor and
/// the Reviewer (score gates) across their restarts.
///
/// Configured pools (and those added through [`Runtime::add_pools`]) are seen by every run; the
/// pools a plan declares belong to its run alone, so two runs whose plans declare a pool of the
/// same name each use their own, and a run's pools close when it ends.
#[derive(Clone, Default)]
pub(crate) struct PoolSet(Arc<RwLock<Pools>>);

#[derive(Default)]
struct Pools {
    shared: HashMap<String, PoolEntry>,
    by_run: HashMap<String, HashMap<String, PoolEntry>>,
    /// The last counts of run pools that have closed, by name (the last run's, when runs
    /// declared the same name): a scrape after a run ends still sees what its pools did.
    ended: HashMap<String, PoolStats>,
}

impl Pools {
    /// The run's own pool of that name, else the shared one.
    fn find(&self, run: Option<&str>, name: &str) -> Option<&PoolEntry> {
        run.and_then(|run| self.by_run.get(run)?.get(name))
            .or_else(|| self.shared.get(name))
    }

    fn every(&self) -> impl Iterator<Item = (&String, &PoolEntry)> {
        self.shared
            .iter()
            .chain(self.by_run.values().flat_map(|pools| pools.iter()))
    }
}

/// A started pool and the declaration it was started from.
type PoolEntry = (Pool, Arc<PoolDef>);

impl PoolSet {
    /// The pool `name` as run `run` sees it (`None`: the shared pools only).
    pub(crate) fn get(&self, run: Option<&str>, name: &str) -> Option<(Pool, Duration)> {
        self.0
            .read()
            .find(run, name)
            .map(|(pool, def)| (pool.clone(), def.call_timeout))
    }

    /// The pool and its declaration, as run `run` sees it.
    pub(crate) fn get_with_def(&self, run: &str, name: &str) -> Option<(Pool, Arc<PoolDef>)> {
        self.0.read().find(Some(run), name).cloned()
    }

    /// Adds a pool for every run (`run` is `None`) or for one run; one of the same name there
    /// is replaced and closed.
    fn insert(&self, run: Option<&str>, name: String, pool: Pool, def: &PoolDef) {
        let entry = (pool, Arc::new(def.clone()));
        let mut pools = self.0.write();
        let into = match run {
            Some(run) => pools.by_run.entry(run.to_owned()).or_default(),
            None => &mut pools.shared,
        };
        if let Some((old, _)) = into.insert(name, entry) {
            old.close();
        }
    }

    /// Closes and forgets the pools of a run that ended, keeping their last counts.
    fn close_run(&self, run: &str) {
        let mut all = self.0.write();
        if let Some(pools) = all.by_run.remove(run) {
            for (name, (pool, _)) in pools {
                pool.close();
                // Closed, it holds no session and nobody waits on it.
                let last = PoolStats {
                    size: 0,
                    idle: 0,
                    in_use: 0,
                    waiters: 0,
                    ..pool.stats()
                };
                all.ended.insert(name, last);
            }
        }
    }

    /// Every pool, for [`Pool::warm_up_idle`].
    fn all(&self) -> Vec<Pool> {
        self.0
            .read()
            .every()
            .map(|(_, (pool, _))| pool.clone())
            .collect()
    }

    fn stats(&self) -> Vec<(String, PoolStats)> {
        let mut all: Vec<_> = self
            .0
            .read()
            .every()
            .map(|(name, (pool, _))| (name.clone(), pool.stats()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The last counts of closed run pools whose name no open pool has.
    fn ended_stats(&self) -> Vec<(String, PoolStats)> {
        let pools = self.0.read();
        let open: std::collections::HashSet<&String> =
            pools.every().map(|(name, _)| name).collect();
        let mut ended: Vec<_> = pools
            .ended
            .iter()
            .filter(|(name, _)| !open.contains(name))
            .map(|(name, last)| (name.clone(), last.clone()))
            .collect();
        ended.sort_by(|a, b| a.0.cmp(&b.0));
        ended
    }

    /// Closes every pool and waits for their upkeep to stop ([`Pool::close_and_wait`]).
    async fn close_all(&self) {
        futures::future::join_all(self.all().iter().map(Pool::close_and_wait)).await;
    }
}

/// Closes a run's own pools when [`Runtime::run`] is done with it. When its future was dropped
/// before it returned, a run the Orchestrator has is cancelled first, and the pools close when
/// it has finished (its compensations may need them).
struct RunPools {
    run_id: String,
    pools: PoolSet,
    orchestrator: Mailbox<OrchestratorMsg>,
    events: EventBus,
    store: Store,
    /// The Orchestrator was handed the run.
    started: AtomicBool,
    /// `run` returned: nothing is left running.
    returned: bool,
}

impl Drop for RunPools {
    fn drop(&mut self) {
        let run_id = std::mem::take(&mut self.run_id);
        let handle = tokio::runtime::Handle::try_current();
        let abandoned = !self.returned && self.started.load(Ordering::Acquire);
        let (true, Ok(handle)) = (abandoned, handle) else {
            self.pools.close_run(&run_id);
            return;
        };
        // Subscribed before the cancel is sent, so the run's end cannot be missed.
        let mut finished = self.events.subscribe();
        let (pools, orchestrator) = (self.pools.clone(), self.orchestrator.clone());
        let store = self.store.clone();
        handle.spawn(async move {
            let cancel = OrchestratorMsg::Cancel {
                run_id: run_id.clone(),
            };
            // The run may also have ended just before the cancel (its record says so): checked
            // each second, as the event has then gone by.
            let ended = |store: &Store| {
                super::state::load_run(store, &run_id)
                    .map_or(true, |r| r.is_none_or(|r| r.status != RunStatus::Running))
            };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            if orchestrator.send(cancel).await.is_ok() {
                loop {
                    tokio::select! {
                        event = finished.recv() => match event {
                            Ok(RunEvent::RunFinished { run_id: id, .. }) if id == run_id => break,
                            // A new Orchestrator resumes only the runs whose callers wait.
                            Ok(RunEvent::AgentRestarted { agent: AgentKind::Orchestrator, .. }) => {
                                break;
                            }
                            Err(broadcast::error::RecvError::Closed) => break,
                            _ => {}
                        },
                        _ = tick.tick() => if ended(&store) { break },
                    }
                }
            }
            pools.close_run(&run_id);
        });
    }
}

/// What a run is, as the Orchestrator receives it.
#[derive(Clone)]
pub(crate) struct RunSpec {
    pub run_id: String,
    pub plan: Arc<Plan>,
    pub plan_hash: String,
    pub source: String,
    pub base_dir: PathBuf,
    pub resume: bool,
    /// The caller asked to resume (not only a restarted Orchestrator): the run must be in the
    /// store.
    pub resume_asked: bool,
    pub permissions: Option<Arc<PermissionEngine>>,
    pub plan_text: Option<String>,
}

/// The longest pre-warming waits for its pass through the agents (a call still out then goes
/// on, within its pool's call timeout, and the start goes on without it).
const WARM_UP_PASS_LIMIT: Duration = Duration::from_secs(10);

/// The longest a shutdown waits for the agents' background writes (each is one group commit).
const BACKGROUND_WRITES_WAIT: Duration = Duration::from_secs(10);

/// The longest a shutdown waits for the agents' states to be dropped (a call whose tool blocks
/// its thread cannot be cut off, and holds its agent's).
const AGENT_STATES_WAIT: Duration = Duration::from_secs(1);

/// The warm-up calls declared by the pools of `defs` that are pre-warmed (`min_idle` > 0).
fn warm_up_calls(defs: &BTreeMap<String, PoolDef>) -> Vec<WarmUpCall> {
    defs.iter()
        .filter(|(_, def)| def.min_idle > 0)
        .filter_map(|(name, def)| {
            let warmup = def.warmup.as_ref()?;
            Some(WarmUpCall {
                tool: ToolRef {
                    pool: name.clone(),
                    tool: warmup.tool.clone(),
                },
                args: warmup.args.clone(),
            })
        })
        .collect()
}

/// Pre-warming's last step: each pool's warm-up call once more, through the four agents
/// ([`OrchestratorMsg::WarmUp`]), so the first task's hops are as warm as the tenth's (the
/// sessions alone being warm left the first task 1.4–1.9× as long).
async fn warm_up_through_agents(
    orchestrator: &Mailbox<OrchestratorMsg>,
    run_id: Option<Arc<str>>,
    calls: Vec<WarmUpCall>,
) {
    if calls.is_empty() {
        return;
    }
    let (done, finished) = oneshot::channel();
    let pass = OrchestratorMsg::WarmUp {
        run_id,
        calls,
        done,
    };
    if orchestrator.send(pass).await.is_ok()
        && tokio::time::timeout(WARM_UP_PASS_LIMIT, finished)
            .await
            .is_err()
    {
        tracing::warn!(
            "pre-warming: the warm-up calls through the agents took over {}s; going on",
            WARM_UP_PASS_LIMIT.as_secs()
        );
    }
}

/// How to start the runtime.
pub struct RuntimeOptions {
    /// The context store (runs, memories, caches).
    pub store: Store,
    /// The agents' configuration.
    pub actors: ActorsConfig,
    /// Native tools, for `native` pools.
    pub natives: NativeRegistry,
    /// Settles calls the permission rules leave to a person ("ask"). The default,
    /// [`DenyAll`], is the headless behaviour: ask becomes deny.
    pub approval: Arc<dyn ApprovalHandler + Send + Sync>,
}

impl RuntimeOptions {
    /// Options with no native tools, denying every call the rules would ask about.
    pub fn new(store: Store, actors: ActorsConfig) -> Self {
        Self {
            store,
            actors,
            natives: NativeRegistry::new(),
            approval: Arc::new(DenyAll),
        }
    }
}

/// How to run one plan.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// The plan's folder (relative paths in pools and gates resolve against it).
    pub base_dir: PathBuf,
    /// Where the plan was read from (kept with the run).
    pub source: String,
    /// A stable hash of the plan's text ([`plan_hash`]), used to find a run to resume.
    pub plan_hash: String,
    /// The run's id; a new one when `None`. It names the run's memory namespace
    /// (`session:run:ID`), so it is non-empty, without `:`, `/`, whitespace or control
    /// characters.
    pub run_id: Option<String>,
    /// Continue the run `run_id` from the store instead of starting fresh: it must be there,
    /// unfinished, and of the same plan (`plan_hash`), else the run fails with
    /// [`AgentError::Resume`].
    pub resume: bool,
    /// The permission rules every `process` and `mcp` call of the run is checked against
    /// (native tools and scorers are in-process and exempt). `None`: the plan's own
    /// `permissions` file (relative to `base_dir`), and with none either, no rule allows
    /// anything, so each call goes to the approval handler (denied when headless).
    pub permissions: Option<Arc<PermissionEngine>>,
    /// The plan as written, kept with the run in the store (`tetrarch dashboard --run` shows a
    /// finished run's DAG from it even when the file has moved).
    pub plan_text: Option<String>,
}

/// A stable hash of a plan's text: runs of the same text can be resumed.
pub fn plan_hash(text: &str) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

/// The running supervision tree.
///
/// End it with [`Runtime::shutdown`]: dropping it stops nothing (the agents, the pools' servers
/// and the store's writer go on, and the store file stays held), since stopping them cleanly
/// needs awaiting. A runtime shared behind an `Arc` is shut down by its last owner
/// (`Arc::into_inner`).
pub struct Runtime {
    peers: Peers,
    supervisor: ActorRef<SupervisorMsg>,
    supervisor_done: tokio::task::JoinHandle<()>,
    events: EventBus,
    pools: PoolSet,
    pool_context: PoolContext,
    restarts: Arc<RestartCounters>,
    fatal: watch::Receiver<Option<Fatal>>,
    store: Store,
    cache: ContextCache,
    /// The agents' background writes (outcome memories, lessons, context snapshots), waited for
    /// at shutdown and by [`Runtime::settle`].
    background: TaskTracker,
    /// Ends when the supervisor's and every agent's state have been dropped.
    states_dropped: tokio::sync::mpsc::Receiver<std::convert::Infallible>,
    /// The Reviewer's score pool (for [`Runtime::run`]'s check of score gates).
    score_pool: String,
    /// Runs still starting their pools, by id: [`Runtime::cancel`] stops that start.
    starting: parking_lot::Mutex<HashMap<String, CancellationToken>>,
}

/// A run's entry in [`Runtime`]'s `starting`, removed when the run is past its start.
struct Starting<'a> {
    runs: &'a parking_lot::Mutex<HashMap<String, CancellationToken>>,
    run_id: &'a str,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.runs.lock().remove(self.run_id);
    }
}

/// The rules of the plan's own `permissions` file (relative to `base_dir`, with `~/` rules
/// anchored to the user's home), if it names one.
fn plan_permissions(
    plan: &Plan,
    base_dir: &Path,
) -> Result<Option<Arc<PermissionEngine>>, AgentError> {
    let Some(file) = &plan.permissions else {
        return Ok(None);
    };
    let path = base_dir.join(file);
    let problem = |detail: String| AgentError::Config {
        detail: format!(
            "plan {}: permissions file {}: {detail}",
            plan.name,
            path.display()
        ),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| problem(e.to_string()))?;
    let home = dirs::home_dir().unwrap_or_else(|| PathBuf::from("/"));
    let engine = PermissionEngine::from_settings_json(&text, &path, base_dir, &home)
        .map_err(|e| problem(e.to_string()))?;
    Ok(Some(Arc::new(engine)))
}

/// Starts `defs` (for every run, or for run `run` alone).
async fn start_pools(
    pools: &PoolSet,
    run: Option<&str>,
    defs: &BTreeMap<String, PoolDef>,
    context: &PoolContext,
) -> Result<(), AgentError> {
    let started = futures::future::join_all(
        defs.iter()
            .map(|(name, def)| async move { (name, def, def.start(name, context).await) }),
    )
    .await;
    let mut first_error = None;
    for (name, def, pool) in started {
        match pool {
            // Kept with its `cwd` resolved: the declaration then says where its calls run,
            // which the result cache keys on.
            Ok(pool) => pools.insert(run, name.clone(), pool, &def.resolved(&context.base_dir)),
            // A declaration's error names its pool already.
            Err(e @ SessionError::InvalidConfig { .. }) => {
                first_error.get_or_insert(AgentError::from(e));
            }
            Err(source) => {
                first_error.get_or_insert(AgentError::PoolStart {
                    pool: name.clone(),
                    source,
                });
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

impl Runtime {
    /// Starts the configured pools (pre-warming their `min_idle` sessions, so the first task
    /// pays no start-up), then the supervisor and the four agents.
    pub async fn start(options: RuntimeOptions) -> Result<Runtime, AgentError> {
        let RuntimeOptions {
            store,
            actors,
            natives,
            approval,
        } = options;
        actors.validate()?;
        let events = EventBus::new(16 * 1024);
        let pool_context = PoolContext {
            base_dir: actors.base_dir.clone(),
            natives: Arc::new(natives),
            store: Some(store.clone()),
        };
        let pools = PoolSet::default();
        start_pools(&pools, None, &actors.executor.pools, &pool_context).await?;
        let peers = Peers {
            orchestrator: Mailbox::new(AgentKind::Orchestrator, actors.orchestrator.mailbox),
            optimizer: Mailbox::new(AgentKind::Optimizer, actors.optimizer.mailbox),
            executor: Mailbox::new(AgentKind::Executor, actors.executor.mailbox),
            reviewer: Mailbox::new(AgentKind::Reviewer, actors.reviewer.mailbox),
        };
        let restarts = Arc::new(RestartCounters::default());
        let background = TaskTracker::new();
        let (token, states_dropped) = StateToken::new();
        let warm_ups = warm_up_calls(&actors.executor.pools);
        let (fatal_tx, fatal) = watch::channel(None);
        let cache = ContextCache::new(CacheTtls::default(), 256 << 20, Some(store.clone()));
        let score_pool = actors.reviewer.score_pool.clone();
        let args = SupervisorArgs {
            peers: peers.clone(),
            store: store.clone(),
            pools: pools.clone(),
            cache: cache.clone(),
            config: Arc::new(actors),
            events: events.clone(),
            restarts: Arc::clone(&restarts),
            fatal: Arc::new(fatal_tx),
            approval,
            approvals: Arc::new(tokio::sync::Semaphore::new(
                super::executor::APPROVALS_AT_ONCE,
            )),
            // The namespace `tetrarch lessons` reads by default.
            lessons: Arc::new(Lessons::new(store.clone(), Namespace::Global)),
            background: background.clone(),
            token,
        };
        let (supervisor, supervisor_done) =
            Actor::spawn(None, Supervisor, args)
                .await
                .map_err(|e| AgentError::Spawn {
                    agent: AgentKind::Orchestrator,
                    detail: format!("supervisor: {e}"),
                })?;
        // Pre-warming ends here, not at the pools: the Optimizer's token counter and context are
        // loaded (else the first task waits for them, or shares the CPU with their loading),
        // then every idle session repeats its warm-up, so none has sat idle while other pools
        // and the agents were starting, and last each declared warm-up call goes through the
        // agents once.
        let (ready, loaded) = oneshot::channel();
        if peers
            .optimizer
            .send(OptimizerMsg::Ready(ready))
            .await
            .is_ok()
        {
            let _ = loaded.await;
        }
        futures::future::join_all(pools.all().iter().map(Pool::warm_up_idle)).await;
        warm_up_through_agents(&peers.orchestrator, None, warm_ups).await;
        Ok(Runtime {
            peers,
            supervisor,
            supervisor_done,
            events,
            pools,
            pool_context,
            restarts,
            fatal,
            store,
            cache,
            background,
            states_dropped,
            score_pool,
            starting: parking_lot::Mutex::default(),
        })
    }

    /// Starts (pre-warms) pools every later run may use; a pool of an existing name replaces
    /// it. (The pools a plan declares are started by [`Runtime::run`] for that run alone.) On
    /// an error (the first pool that did not start), the pools that did start are in place.
    pub async fn add_pools(
        &self,
        defs: &BTreeMap<String, PoolDef>,
        base_dir: &Path,
    ) -> Result<(), AgentError> {
        self.start_pools_for(None, defs, base_dir).await
    }

    async fn start_pools_for(
        &self,
        run: Option<&str>,
        defs: &BTreeMap<String, PoolDef>,
        base_dir: &Path,
    ) -> Result<(), AgentError> {
        let context = PoolContext {
            base_dir: base_dir.to_path_buf(),
            ..self.pool_context.clone()
        };
        start_pools(&self.pools, run, defs, &context).await
    }

    /// The pools and tools plans may name: configured pools, plus `extra` (a plan's own).
    pub fn catalog(&self, extra: &BTreeMap<String, PoolDef>) -> StaticCatalog {
        let mut catalog = StaticCatalog::new().with_score_pool(self.score_pool.clone());
        let natives = self.pool_context.natives.names();
        let configured: Vec<(String, PoolKind)> = self
            .pools
            .0
            .read()
            .shared
            .iter()
            .map(|(name, (_, def))| (name.clone(), def.kind))
            .collect();
        let declared = extra.iter().map(|(name, def)| (name.clone(), def.kind));
        // Native pools list the registry's tools, scorers their metrics; other kinds accept
        // any tool name until they start.
        for (name, kind) in configured.into_iter().chain(declared) {
            catalog = match kind {
                PoolKind::Native => catalog.with_tools(name.clone(), natives.clone()),
                PoolKind::Scorer => catalog.with_tools(name.clone(), SCORER_TOOLS),
                _ => catalog,
            }
            .with_kind(name, kind);
        }
        catalog
    }

    /// Runs `plan` to its end and reports it. If the Orchestrator dies during the run, the run
    /// is resumed in its successor from the store (completed tasks are kept).
    ///
    /// Before anything runs, every task's tool (and its compensation's) is checked against the
    /// tools its pool's sessions answer to (an MCP server's list, the native registry, the
    /// scorer's metrics; a `process` pool takes any name): a plan naming a tool or pool that is
    /// not there fails with [`AgentError::Plan`], naming each, and nothing runs. Unknown pools,
    /// native tools the registry lacks and args a pool would refuse ([`Plan::check_calls`]) are
    /// found before the plan's own pools start; the tools of MCP servers once they have.
    ///
    /// The pools the plan declares are started for this run alone (before anything else) and
    /// closed when it returns.
    ///
    /// Dropping the future (a `tokio::time::timeout`, a `select!`) cancels the run as
    /// [`Runtime::cancel`] does; its pools close once its rollback has finished.
    ///
    /// Await it from a spawned task rather than from the future `block_on` drives (the body of
    /// `#[tokio::main]`): that future runs on the thread that called `block_on`, not on a worker,
    /// so each message between it and the agents costs a wake-up across threads (a ping's round
    /// trip from there took 30 µs on the 2-core benchmark machine, from a task under 1 µs).
    pub async fn run(&self, plan: Plan, options: RunOptions) -> Result<RunReport, AgentError> {
        let run_id = options
            .run_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        // The run's memories live in `session:run:ID`: an id that namespace cannot hold would
        // leave its outputs unrecorded and put its context in the global namespace. Its tasks
        // are saved under `task:ID/TASK`: with a `/` in ids, run `a`'s tasks would be listed
        // with run `a/b`'s.
        if crate::store::Namespace::session("run", &run_id).is_err() || run_id.contains('/') {
            return Err(AgentError::Run {
                run_id,
                reason: "a run id must be non-empty, without `:`, `/`, whitespace or control \
                         characters"
                    .to_owned(),
            });
        }
        let mut pools = RunPools {
            run_id: run_id.clone(),
            pools: self.pools.clone(),
            orchestrator: self.peers.orchestrator.clone(),
            events: self.events.clone(),
            store: self.store.clone(),
            started: AtomicBool::new(false),
            returned: false,
        };
        let result = self
            .run_with_own_pools(run_id, plan, options, &pools.started)
            .await;
        pools.returned = true;
        result
    }

    async fn run_with_own_pools(
        &self,
        run_id: String,
        plan: Plan,
        mut options: RunOptions,
        started: &AtomicBool,
    ) -> Result<RunReport, AgentError> {
        if options.permissions.is_none() {
            options.permissions = plan_permissions(&plan, &options.base_dir)?;
        }
        {
            let cancelled = CancellationToken::new();
            self.starting
                .lock()
                .insert(run_id.clone(), cancelled.clone());
            let _starting = Starting {
                runs: &self.starting,
                run_id: &run_id,
            };
            // Unknown pools and args a pool would refuse, before any pool starts.
            let problems = plan.check_calls(&self.catalog(&plan.pools));
            if !problems.is_empty() {
                return Err(AgentError::Plan(PlanError {
                    source_name: plan.source_name.clone(),
                    diagnostics: problems,
                }));
            }
            let prepare = async {
                self.start_pools_for(Some(&run_id), &plan.pools, &options.base_dir)
                    .await?;
                self.check_tools(&run_id, &plan).await?;
                let calls = warm_up_calls(&plan.pools);
                warm_up_through_agents(
                    &self.peers.orchestrator,
                    Some(Arc::from(run_id.as_str())),
                    calls,
                )
                .await;
                Ok::<(), AgentError>(())
            };
            tokio::pin!(prepare);
            tokio::select! {
                prepared = &mut prepare => prepared?,
                () = cancelled.cancelled() => {
                    // Cancelled while its pools start (a tool server building, say): the run
                    // starts cancelled, so no task runs. Its pools are needed only to undo what
                    // an earlier process of this run completed; otherwise the start is stopped
                    // now rather than waited for, up to the pools' start timeouts.
                    if self.rollback_needs_pools(&run_id, &plan, options.resume) {
                        prepare.await?;
                    } else {
                        tracing::info!(run = %run_id, "cancelled while its pools started: start stopped");
                    }
                }
            }
        }
        let mut spec = RunSpec {
            run_id,
            plan: Arc::new(plan),
            plan_hash: options.plan_hash,
            source: options.source,
            base_dir: options.base_dir,
            resume: options.resume,
            resume_asked: options.resume,
            permissions: options.permissions,
            plan_text: options.plan_text,
        };
        loop {
            self.check_alive()?;
            let (reply, answer) = oneshot::channel();
            let start = OrchestratorMsg::Start {
                spec: Box::new(spec.clone()),
                reply,
            };
            if let Err(e) = self.peers.orchestrator.send(start).await {
                tracing::debug!("run: {e}; waiting for the orchestrator");
                self.wait_for_orchestrator().await?;
                spec.resume = true;
                continue;
            }
            started.store(true, Ordering::Release);
            match answer.await {
                Ok(Ok(report)) => return Ok(report),
                Ok(Err(RunFailure::Resume(reason))) => {
                    return Err(AgentError::Resume {
                        run_id: spec.run_id,
                        reason,
                    });
                }
                Ok(Err(RunFailure::Run(reason))) => {
                    return Err(AgentError::Run {
                        run_id: spec.run_id,
                        reason,
                    });
                }
                Err(_) => {
                    // The Orchestrator died holding the run: resume it in the next one.
                    self.wait_for_orchestrator().await?;
                    spec.resume = true;
                }
            }
        }
    }

    /// Whether a resumed run cancelled before its start has a compensation to run: a task the
    /// store has as complete (or as in flight during an earlier rollback) that declares one. An
    /// unreadable store counts as yes (the start is then waited for, as it always was).
    fn rollback_needs_pools(&self, run_id: &str, plan: &Plan, resume: bool) -> bool {
        if !resume {
            return false;
        }
        let Ok(saved) = super::state::saved_tasks(&self.store, run_id) else {
            return true;
        };
        let done: std::collections::HashSet<&str> = saved
            .iter()
            .filter(|task| matches!(task.state, TaskState::Complete | TaskState::Running))
            .map(|task| task.id.as_str())
            .collect();
        plan.tasks
            .iter()
            .any(|t| t.compensate.is_some() && done.contains(t.id.as_str()))
    }

    /// See [`Runtime::run`]: every call the plan makes names a tool its (started) pool has.
    async fn check_tools(&self, run_id: &str, plan: &Plan) -> Result<(), AgentError> {
        let mut tools_of: HashMap<&str, Option<Vec<String>>> = HashMap::new();
        let mut diagnostics = Vec::new();
        for task in &plan.tasks {
            let compensation = task
                .compensate
                .as_ref()
                .map(|c| (&c.tool, c.tool_location, "compensate.tool"));
            let calls =
                std::iter::once((&task.tool, task.tool_location, "tool")).chain(compensation);
            for (tool, location, what) in calls {
                if !tools_of.contains_key(tool.pool.as_str()) {
                    // Unknown pools were refused before the pools started (`check_calls`).
                    let Some((pool, _)) = self.pools.get(Some(run_id), &tool.pool) else {
                        continue;
                    };
                    let tools = pool.tools().await.map_err(|source| AgentError::PoolStart {
                        pool: tool.pool.clone(),
                        source,
                    })?;
                    tools_of.insert(tool.pool.as_str(), tools);
                }
                if let Some(Some(names)) = tools_of.get(tool.pool.as_str())
                    && !names.contains(&tool.tool)
                {
                    let native = self
                        .pools
                        .get_with_def(run_id, &tool.pool)
                        .is_some_and(|(_, def)| def.kind == PoolKind::Native);
                    let known = if names.is_empty() && native {
                        // The binary registers no native tools: only an embedding program can.
                        crate::plan::NO_NATIVE_TOOLS.to_owned()
                    } else {
                        format!("its tools: {}", names.join(", "))
                    };
                    diagnostics.push(Diagnostic {
                        location,
                        message: format!(
                            "task {:?} {what}: pool {:?} has no tool {:?} ({known})",
                            task.id.as_str(),
                            tool.pool,
                            tool.tool,
                        ),
                    });
                }
            }
        }
        if diagnostics.is_empty() {
            return Ok(());
        }
        Err(AgentError::Plan(PlanError {
            source_name: plan.source_name.clone(),
            diagnostics,
        }))
    }

    fn check_alive(&self) -> Result<(), AgentError> {
        if let Some(fatal) = self.fatal.borrow().as_ref() {
            return Err(fatal.error());
        }
        Ok(())
    }

    async fn wait_for_orchestrator(&self) -> Result<(), AgentError> {
        loop {
            self.check_alive()?;
            if let Some(actor) = self.peers.orchestrator.actor()
                && actor.get_status() == ractor::ActorStatus::Running
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Progress events from now on. A subscriber that falls more than 16k events behind loses
    /// the oldest (the run's outcome is always in [`Runtime::run`]'s report).
    pub fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.events.subscribe()
    }

    /// Every progress event from now on, none lost however far the receiver falls behind: they
    /// queue in memory until it reads them (two or three per task), so read them, or drop the
    /// receiver. For a record that must be complete: a printed stream, a tracker's totals.
    pub fn subscribe_all(&self) -> tokio::sync::mpsc::UnboundedReceiver<RunEvent> {
        self.events.subscribe_all()
    }

    /// Cancels a run: its calls in flight are stopped, its completed tasks' compensations run,
    /// and [`Runtime::run`] returns a report with status `cancelled`. A run whose plan's pools
    /// are still starting starts cancelled, before any task: the pools' start is stopped, unless
    /// a resumed run has completed tasks to compensate, which need them. A run not started yet
    /// is cancelled when it starts; one the store has as ended is left alone (a later resume
    /// of its id is not cancelled).
    ///
    /// Returns once the Orchestrator has taken the cancel and what it saved of it (the run as
    /// stopping, its stopped calls) is durable, so a process that exits right after does not
    /// resume the run as if it had not been cancelled: a resume finishes the rollback.
    pub async fn cancel(&self, run_id: &str) -> Result<(), AgentError> {
        self.check_alive()?;
        // Sent first: the Orchestrator then knows of the cancel before the run's start.
        self.peers
            .orchestrator
            .send(OrchestratorMsg::Cancel {
                run_id: run_id.to_owned(),
            })
            .await?;
        if let Some(starting) = self.starting.lock().get(run_id) {
            starting.cancel();
        }
        // The mailbox is in order: the answer to a ping comes after the cancel was handled and
        // its writes handed to the store, whose sync makes them durable.
        self.ping(AgentKind::Orchestrator).await?;
        self.store.sync().await?;
        Ok(())
    }

    /// A round trip through an agent's mailbox.
    pub async fn ping(&self, agent: AgentKind) -> Result<Duration, AgentError> {
        self.check_alive()?;
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        match agent {
            AgentKind::Orchestrator => {
                self.peers
                    .orchestrator
                    .send(OrchestratorMsg::Ping(reply))
                    .await?
            }
            AgentKind::Optimizer => self.peers.optimizer.send(OptimizerMsg::Ping(reply)).await?,
            AgentKind::Executor => self.peers.executor.send(ExecutorMsg::Ping(reply)).await?,
            AgentKind::Reviewer => self.peers.reviewer.send(ReviewerMsg::Ping(reply)).await?,
        }
        answer
            .await
            .map_err(|_| AgentError::Unavailable { agent })?;
        Ok(started.elapsed())
    }

    /// Makes `agent` panic on its next message: fault injection, to test supervision (the
    /// supervisor restarts it; runs go on).
    pub fn inject_fault(&self, agent: AgentKind) -> Result<(), AgentError> {
        self.check_alive()?;
        match agent {
            AgentKind::Orchestrator => self.peers.orchestrator.send_control(OrchestratorMsg::Crash),
            AgentKind::Optimizer => self.peers.optimizer.send_control(OptimizerMsg::Crash),
            AgentKind::Executor => self.peers.executor.send_control(ExecutorMsg::Crash),
            AgentKind::Reviewer => self.peers.reviewer.send_control(ReviewerMsg::Crash),
        }
    }

    /// Restarts of `agent` since start.
    pub fn restarts(&self, agent: AgentKind) -> u64 {
        self.restarts.get(agent)
    }

    /// Messages queued at each agent now.
    pub fn mailbox_depths(&self) -> [(AgentKind, usize); 4] {
        [
            (AgentKind::Orchestrator, self.peers.orchestrator.depth()),
            (AgentKind::Optimizer, self.peers.optimizer.depth()),
            (AgentKind::Executor, self.peers.executor.depth()),
            (AgentKind::Reviewer, self.peers.reviewer.depth()),
        ]
    }

    /// Each open pool's counters.
    pub fn pool_stats(&self) -> Vec<(String, PoolStats)> {
        self.pools.stats()
    }

    /// The last counts of the pools of runs that have ended (a plan's own pools close with its
    /// run), by name, for those no open pool shares a name with: what a final metrics scrape
    /// reports for them. A closed pool holds no session, so its size, idle, in-use and waiter
    /// counts are 0.
    pub fn ended_pool_stats(&self) -> Vec<(String, PoolStats)> {
        self.pools.ended_stats()
    }

    /// The context cache's hits and misses per category.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Waits (at most `limit`) for the agents' background writes to be queued — the memories of
    /// call outcomes, lessons, context snapshots — then commits what the store has queued. A run
    /// reports its end before its last outcome's memory is written (that write is kept off the
    /// attempt's path): read the store after this to see everything a run that completed or
    /// failed wrote. It waits for the whole runtime's writes, other runs' included, so while
    /// other runs go on it may wait out `limit`. Not covered: a cancelled run's calls still out
    /// at the cancel (they are cut off, and one finishing just then records its outcome later).
    /// Returns `false` when `limit` passed first (what was queued by then is still committed).
    pub async fn settle(&self, limit: Duration) -> Result<bool, AgentError> {
        // A `TaskTracker` wakes waiters only once closed, and this one stays open: poll it.
        let deadline = tokio::time::Instant::now() + limit;
        let settled = loop {
            if self.background.is_empty() {
                break true;
            }
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        self.store.sync().await?;
        Ok(settled)
    }

    /// The runtime's fatal error, once the supervisor has given up.
    pub fn failure(&self) -> Option<AgentError> {
        self.fatal.borrow().as_ref().map(Fatal::error)
    }

    /// Stops the agents, waits for their background writes (outcome memories, lessons, context
    /// snapshots), and closes the pools (their servers and children end; their upkeep is stopped
    /// and waited for). Calls in flight are cancelled. When it returns, the runtime holds the
    /// store no longer: the caller's own [`Store`] handle is the last, and the file can be opened
    /// again once that is dropped. (Except behind a tool that blocks its thread: its call cannot
    /// be cut off, and holds the store until it returns.)
    pub async fn shutdown(self) {
        let (reply, answer) = oneshot::channel();
        if self
            .supervisor
            .send_message(SupervisorMsg::Shutdown(reply))
            .is_ok()
        {
            let _ = answer.await;
        }
        let _ = self.supervisor_done.await;
        // The agents' states, and the Executor's calls (cancelled as its state drops), are gone
        // when the last copy of the token is: ractor drops a stopped agent's state after its task
        // has ended (it travels in the exit event to the supervisor), so waiting for the tasks
        // would not do. With them goes each one's handle on the store, and any source of new
        // background writes.
        let mut states_dropped = self.states_dropped;
        if tokio::time::timeout(AGENT_STATES_WAIT, states_dropped.recv())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown: an agent's state is still held after {AGENT_STATES_WAIT:?} (a call \
                 blocking its thread?); the store stays open until it is dropped"
            );
        }
        self.background.close();
        if tokio::time::timeout(BACKGROUND_WRITES_WAIT, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown: background writes still running after {BACKGROUND_WRITES_WAIT:?}; \
                 not waiting for them"
            );
        }
        self.pools.close_all().await;
    }

    /// The newest run of the plan whose text hashes to `plan_hash`, if it is unfinished: what
    /// `tetrarch run` resumes after the process was killed. An unfinished run with a newer run
    /// of the same plan after it (`tetrarch run --fresh` started one) is not resumed.
    pub fn resumable_run(store: &Store, plan_hash: &str) -> Result<Option<String>, AgentError> {
        Ok(newest(decoded_runs(store)?, |r| r.plan_hash == plan_hash)
            .filter(|(_, r)| r.status == RunStatus::Running)
            .map(|(id, _)| id))
    }

    /// The newest run read from `source` (the plan's path as given), if it is unfinished and
    /// its plan text or folder differ from `plan_hash`'s: the run a `tetrarch run` of an
    /// edited plan does not resume, which it names rather than starting afresh in silence.
    pub fn unfinished_run_of_edited_plan(
        store: &Store,
        source: &str,
        plan_hash: &str,
    ) -> Result<Option<String>, AgentError> {
        Ok(newest(decoded_runs(store)?, |r| r.source == source)
            .filter(|(_, r)| r.status == RunStatus::Running && r.plan_hash != plan_hash)
            .map(|(id, _)| id))
    }
}

/// The run records that decode. One that does not (damaged, or from a newer tetrarch) is
/// another plan's business: it is passed over with a warning, not a reason to run nothing.
fn decoded_runs(store: &Store) -> Result<Vec<(String, super::state::RunRecord)>, AgentError> {
    Ok(store
        .run_records("run:")?
        .into_iter()
        .filter_map(|(key, bytes)| {
            let id = key.trim_start_matches("run:").to_owned();
            match super::state::decode_run(&id, &bytes) {
                Ok(record) => Some((id, record)),
                Err(e) => {
                    tracing::warn!("run {id} is passed over when looking for a run to resume: {e}");
                    None
                }
            }
        })
        .collect())
}

/// The newest of the runs `pick` keeps.
fn newest(
    runs: Vec<(String, super::state::RunRecord)>,
    pick: impl Fn(&super::state::RunRecord) -> bool,
) -> Option<(String, super::state::RunRecord)> {
    runs.into_iter()
        .filter(|(_, r)| pick(r))
        .max_by(|(a_id, a), (b_id, b)| (a.started_ms, a_id).cmp(&(b.started_ms, b_id)))
}
