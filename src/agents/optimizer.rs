//! The Optimizer: assembles a task's context and renders its arguments.
//!
//! For a task whose args use `{{context}}`, it asks the [`ContextOptimizer`] for a payload: the
//! outputs of the task's direct dependencies (critical), the store's memories most relevant to the
//! task (the run's namespace and `global`) and the run's most recent memories (`recent`; ranked
//! like the rest, so they too must pass the relevance cut-off), the configured skill documents
//! and the project files the task names (`context_files`, relative to the plan's folder), ranked
//! and packed into the token budget of `actors/optimizer.toml`. Each attempt's payload is built
//! in a context session (`RUN/TASK`) that is forgotten once built: the tools keep nothing
//! between calls, so a retry or a second attempt gets its whole context again, not references
//! to what an earlier attempt was sent (the incremental payloads of [`ContextOptimizer`] are for
//! callers whose agent keeps a conversation). When a payload crosses the monitor's threshold of
//! the window, it is preserved in the store (tag `context-snapshot`). Every attempt's args are
//! rendered here, then the attempt goes on to the Executor.

use std::sync::Arc;
use tracing::Instrument;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio_util::task::TaskTracker;

use super::AgentKind;
use super::config::OptimizerConfig;
use super::mailbox::Envelope;
use super::pipeline::{Attempt, ExecutorMsg, OptimizerMsg, Peers, Purpose, injected_fault};
use crate::context::{
    Candidate, ContextOptimizer, ContextRequest, O200kCounter, preserve_snapshot,
};
use crate::plan::render;
use crate::store::{Namespace, SearchOptions, Store, Timestamp};

/// The Optimizer actor.
pub(crate) struct Optimizer;

/// What the supervisor starts it with.
#[derive(Clone)]
pub(crate) struct OptimizerArgs {
    pub peers: Peers,
    pub store: Store,
    pub config: OptimizerConfig,
    /// The actors folder: a relative `skills_dir` resolves against it.
    pub base_dir: std::path::PathBuf,
    pub events: super::events::EventBus,
    /// The contents already preserved in each run's snapshots.
    pub preserved: Arc<PreservedContents>,
    /// Where snapshots are stored, off the actor's path (a shutdown waits for them).
    pub background: TaskTracker,
    /// Dropped with the agent's state, after the fields above (declared last: fields drop in
    /// order, and the store's last handle closes the file as it drops). See
    /// [`super::supervisor::StateToken`].
    pub _token: super::supervisor::StateToken,
}

/// The content hashes of the items preserved in context snapshots, per namespace (a run's),
/// for the newest [`PreservedContents::RUNS`] namespaces. Kept by the Optimizer alone; after
/// its restart an item may be preserved once more.
#[derive(Default)]
pub(crate) struct PreservedContents(parking_lot::Mutex<PreservedByRun>);

#[derive(Default)]
struct PreservedByRun {
    hashes: std::collections::HashMap<Namespace, std::collections::HashSet<u64>>,
    order: std::collections::VecDeque<Namespace>,
}

impl PreservedContents {
    /// How many runs' hashes are kept (a long-lived runtime runs many plans).
    const RUNS: usize = 64;

    /// Whether `text` is new to `namespace`'s snapshots; it is counted as preserved from now.
    fn claim(&self, namespace: &Namespace, text: &str) -> bool {
        let hash = crate::context::content_hash(text);
        let mut preserved = self.0.lock();
        let PreservedByRun { hashes, order } = &mut *preserved;
        if !hashes.contains_key(namespace) {
            if order.len() == Self::RUNS
                && let Some(oldest) = order.pop_front()
            {
                hashes.remove(&oldest);
            }
            order.push_back(namespace.clone());
        }
        hashes.entry(namespace.clone()).or_default().insert(hash)
    }

    /// Gives back what [`Self::claim`] took for texts whose snapshot was not stored, so a later
    /// snapshot of the run stores them.
    fn release<'a>(&self, namespace: &Namespace, texts: impl Iterator<Item = &'a str>) {
        let mut preserved = self.0.lock();
        if let Some(hashes) = preserved.hashes.get_mut(namespace) {
            for text in texts {
                hashes.remove(&crate::context::content_hash(text));
            }
        }
    }
}

pub(crate) struct OptimizerState {
    args: OptimizerArgs,
    /// `None` when the tokenizer could not load (logged): `{{context}}` is then the upstream
    /// outputs alone.
    context: Option<Arc<ContextOptimizer>>,
    /// The optimizer being built in the background (loading the o200k tables takes a noticeable
    /// part of a second, which a plan without `{{context}}` should not wait for).
    loading: Option<tokio::task::JoinHandle<Option<Arc<ContextOptimizer>>>>,
}

impl OptimizerState {
    async fn context(&mut self) -> Option<Arc<ContextOptimizer>> {
        if let Some(loading) = self.loading.take() {
            self.context = loading.await.unwrap_or_else(|e| {
                tracing::error!("optimizer: loading the context optimizer failed: {e}");
                None
            });
        }
        self.context.clone()
    }
}

/// The run's memory namespace.
pub(crate) fn run_namespace(run_id: &str) -> Option<Namespace> {
    Namespace::session("run", run_id).ok()
}

fn start_context(args: &OptimizerArgs) -> Option<Arc<ContextOptimizer>> {
    let mut config = args.config.context.clone();
    if let Some(dir) = &config.skills_dir
        && dir.is_relative()
    {
        config.skills_dir = Some(args.base_dir.join(dir));
    }
    let counter = match O200kCounter::new() {
        Ok(counter) => Arc::new(counter),
        Err(e) => {
            tracing::error!("optimizer: no token counter, context is upstream outputs only: {e}");
            return None;
        }
    };
    // The context optimizer logs its own warnings (skipped skill files): not repeated here.
    match ContextOptimizer::new(config, counter) {
        Ok((optimizer, _warnings)) => Some(Arc::new(optimizer)),
        Err(e) => {
            tracing::error!("optimizer: context optimizer unavailable: {e}");
            None
        }
    }
}

/// The memory candidates of a task: the store's best matches for it in the run's namespace and
/// the global one, and the run's most recent memories (each memory once).
fn memories(args: &OptimizerArgs, attempt: &Attempt, query: &str) -> Vec<Candidate> {
    let now = Timestamp::now();
    let run = run_namespace(&attempt.run_id);
    let mut seen = std::collections::HashSet::new();
    let mut found = Vec::new();
    // Lessons (normalised error text) and preserved context snapshots are the runtime's own
    // records, not knowledge for a task: lessons reach a failing task through its reason. They
    // are left out inside the search and the recent list, where they would take the places of
    // the task's memories (a run's snapshots match its tasks' words better than anything).
    let bookkeeping = [crate::lessons::LESSON_TAG, crate::context::SNAPSHOT_TAG];
    // An upstream task's output is in the context already, as `task:ID`: the memory the
    // Executor recorded of it (its stdout as printed, where the context holds the parsed JSON
    // written out again) would be sent and charged a second time under another name.
    let upstream: std::collections::HashSet<String> = attempt
        .task
        .deps
        .iter()
        .map(|dep| format!("task:{dep}"))
        .collect();
    let upstream_output = |memory: &crate::store::Memory| {
        memory.tags.iter().any(|t| t == "output")
            && memory.tags.iter().any(|t| upstream.contains(t))
    };
    let mut offer = |memory: &crate::store::Memory| {
        if !upstream_output(memory) && seen.insert(memory.id) {
            found.push(Candidate::from_memory(memory, now));
        }
    };
    for namespace in [run.clone(), Some(Namespace::Global)].into_iter().flatten() {
        let options = SearchOptions {
            namespace: Some(namespace),
            limit: args.config.memories,
            exclude_tags: bookkeeping.iter().map(|t| (*t).to_owned()).collect(),
            ..SearchOptions::default()
        };
        for hit in args.store.search(query, &options) {
            offer(&hit.memory);
        }
    }
    if let Some(run) = &run {
        let recent = args
            .store
            .list_recent_matching(Some(run), args.config.recent, |memory| {
                !memory
                    .tags
                    .iter()
                    .any(|t| bookkeeping.contains(&t.as_str()))
            });
        for memory in recent {
            offer(&memory);
        }
    }
    found
}

/// `text` without its `{{ ... }}` placeholders: their words (`context`, `tasks`, `output`)
/// are the template language's, not the task's, and matched unrelated memories.
fn without_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        match rest[open..].find("}}") {
            Some(close) => {
                out.push(' ');
                rest = &rest[open + close + 2..];
            }
            None => {
                rest = &rest[open..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Runs a context assembly, a panic in it becoming the failure of its attempt (`Err` says so,
/// with the panic's message).
fn panic_as_failure(assemble: impl FnOnce() -> String) -> Result<String, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(assemble)).map_err(|panic| {
        format!(
            "assembling its context panicked: {}",
            crate::session::panic_message(panic.as_ref())
        )
    })
}

fn assemble(
    args: &OptimizerArgs,
    context: Option<&Arc<ContextOptimizer>>,
    attempt: &Attempt,
) -> String {
    let upstream: Vec<(String, String)> = attempt
        .task
        .deps
        .iter()
        .filter_map(|dep| {
            let output = attempt.ctx.outputs.get(dep.as_str())?;
            let text = match output {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((dep.as_str().to_owned(), text))
        })
        .collect();
    let Some(optimizer) = context else {
        if !attempt.task.context_files.is_empty() {
            tracing::warn!(
                "optimizer: task {}: context_files not sent (no context optimizer)",
                attempt.task.id
            );
        }
        let mut text = String::new();
        for (id, output) in &upstream {
            crate::context::render_item(&mut text, &format!("task:{id}"), output);
        }
        return text;
    };
    let query = format!(
        "{} {} {}",
        attempt.task.id,
        attempt.call(),
        without_placeholders(&attempt.args_template().to_string())
    );
    let session = format!("{}/{}", attempt.run_id, attempt.task.id);
    let request = ContextRequest {
        session: session.clone(),
        task_id: attempt.task.id.as_str().to_owned(),
        memories: memories(args, attempt, &query),
        query,
        upstream,
        project_files: attempt.task.context_files.clone(),
        project_root: Some(attempt.base_dir.as_ref().clone()),
    };
    let payload = optimizer.build(&request);
    args.events.send(super::RunEvent::ContextBuilt {
        run_id: attempt.run_id.to_string(),
        task: attempt.task.id.as_str().to_owned(),
        session: session.clone(),
        tokens: payload.tokens,
        session_tokens: payload.session_tokens,
        window: payload.window,
    });
    if let Some(alert) = &payload.alert {
        args.events.send(super::RunEvent::ContextAlert {
            run_id: attempt.run_id.to_string(),
            task: attempt.task.id.as_str().to_owned(),
            session: session.clone(),
            used: alert.used,
            window: alert.window,
        });
        tracing::info!(
            "optimizer: context of {} at {:.0}% of its window; preserving it",
            alert.session,
            alert.ratio * 100.0
        );
        let namespace = run_namespace(&attempt.run_id).unwrap_or(Namespace::Global);
        // What an earlier snapshot of the run holds already is not stored again: tasks that
        // share an upstream output or a file would each store a copy.
        let snapshot: Vec<_> = optimizer
            .session_snapshot(&session)
            .into_iter()
            .filter(|item| args.preserved.claim(&namespace, &item.text))
            .collect();
        if !snapshot.is_empty() {
            let store = args.store.clone();
            let preserved_session = session.clone();
            let claimed = Arc::clone(&args.preserved);
            // On the blocking pool: the store analyses the text before it queues it (tens of
            // milliseconds for a snapshot near a full window), which would hold an async thread.
            args.background.spawn(async move {
                let handle = tokio::runtime::Handle::current();
                let preserved = tokio::task::spawn_blocking(move || {
                    let stored = handle.block_on(preserve_snapshot(
                        &store,
                        namespace.clone(),
                        &preserved_session,
                        &snapshot,
                    ));
                    // Not committed (nothing of the batch was): the next snapshot of the run
                    // tries these texts again. A refused item is not given back: the items
                    // before it were stored, and it would be refused again.
                    if let Err(crate::context::ContextError::Store(
                        crate::store::StoreError::Database { .. }
                        | crate::store::StoreError::Closed
                        | crate::store::StoreError::NotWritable { .. },
                    )) = &stored
                    {
                        claimed.release(&namespace, snapshot.iter().map(|i| i.text.as_str()));
                    }
                    stored
                })
                .await;
                match preserved {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!("optimizer: context not preserved: {e}"),
                    Err(e) => tracing::error!("optimizer: context not preserved: {e}"),
                }
            });
        }
    }
    // The tools keep nothing between calls (a process exits, an MCP or native call starts
    // afresh, and a later attempt may go to another session of the pool): every attempt gets
    // its whole context, so the session is forgotten once its payload is built. That also keeps
    // a long-lived runtime from holding every task's context for ever.
    optimizer.forget_session(&session);
    payload.render()
}

impl Actor for Optimizer {
    type Msg = Envelope<OptimizerMsg>;
    type State = OptimizerState;
    type Arguments = OptimizerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: OptimizerArgs,
    ) -> Result<OptimizerState, ActorProcessingErr> {
        let for_loading = args.clone();
        let loading = tokio::task::spawn_blocking(move || start_context(&for_loading));
        Ok(OptimizerState {
            args,
            context: None,
            loading: Some(loading),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        envelope: Self::Msg,
        state: &mut OptimizerState,
    ) -> Result<(), ActorProcessingErr> {
        let Envelope { msg, .. } = envelope;
        match msg {
            OptimizerMsg::Prepare(mut attempt) => {
                let mut assembly_panic = None;
                // A task's attempt whose run stopped on its way is not called: its context
                // would be built (and reported, after the run's end) for nothing.
                let stopped = attempt.purpose == Purpose::Task && attempt.run_stopped();
                if attempt.wants_context && !stopped {
                    let span = tracing::info_span!(parent: &attempt.span, "context");
                    let context = state.context().instrument(span.clone()).await;
                    // Off the async threads: it reads files and counts the tokens of upstream
                    // outputs (up to a mebibyte each). The mailbox still waits for it, so the
                    // attempts keep their order. A panic there fails this attempt, not the
                    // agent: the same input would panic the restarted agent again (and every
                    // resume of the run), until the restart limit stopped the runtime.
                    let args = state.args.clone();
                    let (returned, text) = tokio::task::spawn_blocking(move || {
                        let text = panic_as_failure(|| {
                            span.in_scope(|| assemble(&args, context.as_ref(), &attempt))
                        });
                        (attempt, text)
                    })
                    .await
                    .map_err(|e| format!("optimizer: context assembly failed: {e}"))?;
                    attempt = returned;
                    match text {
                        Ok(text) => attempt.ctx.context = text,
                        Err(failure) => {
                            tracing::error!(run = %attempt.run_id, "optimizer: {failure}");
                            assembly_panic = Some(failure);
                        }
                    }
                }
                // A warm-up call's args go as declared, as the sessions' own warm-ups send them.
                attempt.args = Some(match assembly_panic {
                    Some(failure) => Err(failure),
                    None if attempt.purpose == Purpose::WarmUp => {
                        Ok(attempt.args_template().clone())
                    }
                    None => render(attempt.args_template(), &attempt.ctx)
                        .map_err(|e| format!("cannot render args: {e}")),
                });
                if let Err(e) = state
                    .args
                    .peers
                    .executor
                    .send(ExecutorMsg::Execute(attempt))
                    .await
                {
                    // The Orchestrator re-dispatches in-flight work when the Executor is back.
                    tracing::warn!("optimizer: attempt not delivered: {e}");
                }
            }
            OptimizerMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            OptimizerMsg::Ready(reply) => {
                state.context().await;
                let _ = reply.send(());
            }
            OptimizerMsg::Crash => injected_fault(AgentKind::Optimizer),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{PreservedContents, panic_as_failure, without_placeholders};
    use crate::store::Namespace;

    /// A text whose snapshot was not stored is given back, so the run's next snapshot stores
    /// it; the others stay claimed.
    #[test]
    fn a_released_text_is_preserved_by_the_next_snapshot() {
        let preserved = PreservedContents::default();
        let run = Namespace::session("run", "r1").unwrap();
        assert!(preserved.claim(&run, "upstream output"));
        assert!(preserved.claim(&run, "a file"));
        assert!(!preserved.claim(&run, "upstream output"));
        preserved.release(&run, ["upstream output"].into_iter());
        assert!(preserved.claim(&run, "upstream output"));
        assert!(!preserved.claim(&run, "a file"));
    }

    /// A panic while assembling a task's context fails that attempt with the panic's message
    /// (the agent, restarted, would meet the same input again); an assembly that returns is
    /// passed on.
    #[test]
    fn a_panicking_context_assembly_is_the_attempts_failure() {
        assert_eq!(
            panic_as_failure(|| "context".to_owned()),
            Ok("context".to_owned())
        );
        let failure = panic_as_failure(|| panic!("stack overflow in the pre-tokenizer"));
        assert_eq!(
            failure,
            Err("assembling its context panicked: stack overflow in the pre-tokenizer".to_owned())
        );
        let formatted = panic_as_failure(|| panic!("item {} of {}", 3, 7));
        assert_eq!(
            formatted,
            Err("assembling its context panicked: item 3 of 7".to_owned())
        );
    }

    #[test]
    fn a_task_query_leaves_out_the_template_language() {
        assert_eq!(
            without_placeholders(
                r#"{"argv":["wc","{{tasks.fetch.output.path}}"],"note":"{{context}} x"}"#
            ),
            r#"{"argv":["wc"," "],"note":"  x"}"#
        );
        assert_eq!(
            without_placeholders("open {{ never closed"),
            "open {{ never closed"
        );
    }
}
