//! The Orchestrator: runs plans.
//!
//! For each run it keeps every task's state, persists the run and each transition in the store
//! (queued on the group-commit writer in order, so a reader after a crash sees a consistent
//! prefix; the run's end is written durably before it is reported), dispatches ready tasks (at most
//! `max_in_flight` at once), and applies the Reviewer's verdicts: a pass completes the task and
//! readies its dependents; a failed gate re-runs it with the feedback, up to `max_attempts`; an
//! error re-runs it after an exponential backoff, up to `retries`. A task that fails for good
//! fails the run: its dependents are skipped, nothing new is dispatched, and once the attempts in
//! flight are back, the completed tasks' compensations run in reverse dependency order. The plan
//! always terminates: every task ends COMPLETE, FAILED, SKIPPED, CANCELLED or COMPENSATED.
//!
//! Resume: a run started with `resume` reloads its tasks from the store; COMPLETE tasks keep
//! their outputs and are never dispatched again, every other unfinished task runs again
//! (at-least-once for the tasks that were in flight), and a retry that was waiting out its
//! backoff waits out the rest of it (`retry_backoff_max` at most). A run that has ended is not
//! taken up: a resume the caller asked for fails, and a restart's start of a new run reusing
//! the id starts it afresh.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::AgentKind;
use super::config::RunSettings;
use super::events::{EventBus, RunEvent};
use super::mailbox::Envelope;
use super::pipeline::{
    Attempt, ExecutorMsg, OptimizerMsg, OrchestratorMsg, Peers, Purpose, RunFailure, Verdict,
    WarmUpCall, injected_fault,
};
use super::runtime::RunSpec;
use super::state::{
    AttemptTimes, CompensationReport, RunRecord, RunReport, RunStatus, Stopping, TaskRecord,
    TaskReport, TaskState, encode_run, encode_task, load_run, load_tasks, parse_output, run_key,
    task_key,
};
use crate::lessons::{Failure, Lessons};
use crate::permissions::PermissionEngine;
use crate::plan::template::{Reference, references_in};
use crate::plan::{Fix, Location, Plan, Task, TaskId, TemplateContext};
use crate::store::{CacheKey, Store};

/// Dispatch tokens, unique in the process, so a verdict for an attempt dispatched by an earlier
/// Orchestrator (before a restart) can never match a new one.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn next_token() -> u64 {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

/// The Orchestrator actor.
pub(crate) struct Orchestrator;

/// What the supervisor starts it with.
#[derive(Clone)]
pub(crate) struct OrchestratorArgs {
    pub peers: Peers,
    pub store: Store,
    pub settings: RunSettings,
    pub events: EventBus,
    pub lessons: Arc<Lessons>,
    /// Where lessons are recorded, off the actor's path (a shutdown waits for them).
    pub background: TaskTracker,
    /// Dropped with the agent's state, after the fields above (declared last: fields drop in
    /// order, and the store's last handle closes the file as it drops). See
    /// [`super::supervisor::StateToken`].
    pub _token: super::supervisor::StateToken,
}

pub(crate) struct OrchestratorState {
    args: OrchestratorArgs,
    runs: HashMap<Arc<str>, RunState>,
    /// Task records changed while handling the current message, queued on the writer as one
    /// command when it is handled (one commit entry per message rather than per transition).
    unsaved: Vec<(String, Vec<u8>)>,
    /// Runs cancelled before they started (a Ctrl-C while the plan's pools were pre-warming):
    /// such a run is cancelled as soon as it starts. The newest [`EARLY_CANCELS`] are kept.
    early_cancels: VecDeque<String>,
    /// Warm-up passes in flight: the tokens still out, and who waits for them.
    warm_ups: Vec<(HashSet<u64>, oneshot::Sender<()>)>,
}

/// How many cancels of runs not started yet are remembered.
const EARLY_CANCELS: usize = 64;

impl Slot {
    /// Forgets the retry this slot waits out, which will not be made: its count was taken when
    /// it was scheduled (so a kill during the backoff counts it), and comes off again here.
    fn drop_scheduled_retry(&mut self) {
        self.backing_off = false;
        self.retry_at_ms = None;
        self.retries = self.retries.saturating_sub(1);
    }
}

struct Slot {
    state: TaskState,
    attempt: u32,
    retries: u32,
    feedback: String,
    reason: Option<String>,
    output: Option<Value>,
    /// The dispatch in flight (or waiting out a retry backoff).
    token: Option<u64>,
    /// When the latest attempt was dispatched (for [`RunEvent::TaskFinished`]'s `elapsed_us`).
    dispatched: Option<Instant>,
    /// The attempts that reached a verdict, this process's and those saved before a resume.
    attempt_times: AttemptTimes,
    /// The task's args with the declared fixes applied so far.
    fixed_args: Option<Value>,
    /// Declared fixes already tried.
    fixes_tried: Vec<usize>,
    /// The fix the attempt in flight is trying, and the failure it answers.
    fix_trial: Option<(usize, String)>,
    /// Waiting out a retry backoff: `token` is the timer's, and no agent holds the task, so a
    /// restart's re-dispatch leaves it to the timer.
    backing_off: bool,
    /// When that retry is due (Unix milliseconds), saved so a resume waits for it too.
    retry_at_ms: Option<i64>,
    /// A resumed rollback found the task in flight when the process stopped: its call may have
    /// done its work, so its compensation runs.
    outcome_unknown: bool,
    /// The result cache's key of the call that completed the task: its compensation drops it.
    result_cache_key: Option<CacheKey>,
    /// The attempt whose stale cached result was replaced by a call (at most once an attempt).
    cache_refreshed: Option<u32>,
}

#[derive(PartialEq, Eq)]
enum Phase {
    Running,
    Compensating,
}

/// Dropped with a crashed Orchestrator's state too: see its `Drop`.
struct RunState {
    id: Arc<str>,
    /// Cancelled when the run stops (its first failure, or a cancel): task calls still waiting
    /// for a session are then not made ("nothing new starts"). A child of `dropped`.
    stop_starting: tokio_util::sync::CancellationToken,
    /// Cancelled when this state is dropped (see its `Drop`): the calls that must be made even
    /// though the run stopped (compensations, a call re-sent during the rollback) are still not
    /// made once the run has gone with a crashed Orchestrator.
    dropped: tokio_util::sync::CancellationToken,
    plan: Arc<Plan>,
    /// The plan's name, shared by every attempt's template context.
    plan_name: Arc<str>,
    base_dir: Arc<PathBuf>,
    permissions: Option<Arc<PermissionEngine>>,
    record: RunRecord,
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    dependents: Vec<Vec<usize>>,
    waiting_on: Vec<usize>,
    /// Tasks whose outputs each task's templates read (args, gates, compensation).
    reads: Vec<Vec<usize>>,
    wants_context: Vec<bool>,
    ready: VecDeque<usize>,
    in_flight: usize,
    failure: Option<String>,
    cancelled: bool,
    phase: Phase,
    compensation_queue: VecDeque<usize>,
    compensation_in_flight: Option<(usize, u64)>,
    compensations: Vec<CompensationReport>,
    replies: Vec<oneshot::Sender<Result<RunReport, RunFailure>>>,
    started: Instant,
    /// The run's span: the parent of every attempt's span (`status` recorded at the end).
    span: tracing::Span,
}

fn referenced_tasks(task: &Task) -> (HashSet<String>, bool) {
    let mut found = HashSet::new();
    let mut context = false;
    let mut visit = |value: &Value, in_args: bool| {
        for (_, _, refs) in references_in(value, "") {
            for reference in refs.into_iter().flatten() {
                match reference {
                    Reference::TaskOutput { task, .. } => {
                        found.insert(task);
                    }
                    Reference::Context if in_args => context = true,
                    _ => {}
                }
            }
        }
    };
    visit(&task.args, true);
    for gate in &task.gates {
        for (_, text) in gate.templates() {
            visit(&Value::String(text.to_owned()), false);
        }
    }
    if let Some(comp) = &task.compensate {
        visit(&comp.args, false);
    }
    // A declared fix's args and variables become the call's args when it is tried.
    for fix in &task.fixes {
        for value in fix.args.values() {
            visit(value, true);
        }
        for value in fix.env.values() {
            visit(&Value::String(value.clone()), true);
        }
    }
    (found, context)
}

impl Drop for RunState {
    /// Attempts of this run still on their way to a call are not called once it is gone: after
    /// a crash of its Orchestrator, the run is resumed by the next one, which dispatches them
    /// again (and their verdicts would find no one waiting for them).
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

impl RunState {
    fn new(spec: &RunSpec, record: RunRecord) -> Self {
        let dropped = tokio_util::sync::CancellationToken::new();
        let plan = Arc::clone(&spec.plan);
        let tasks = &plan.tasks;
        let index: HashMap<String, usize> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.as_str().to_owned(), i))
            .collect();
        let mut dependents = vec![Vec::new(); tasks.len()];
        let mut waiting_on = vec![0; tasks.len()];
        let mut reads = Vec::with_capacity(tasks.len());
        let mut wants_context = Vec::with_capacity(tasks.len());
        for (i, task) in tasks.iter().enumerate() {
            for dep in &task.deps {
                if let Some(&d) = index.get(dep.as_str()) {
                    dependents[d].push(i);
                    waiting_on[i] += 1;
                }
            }
            let (names, context) = referenced_tasks(task);
            let mut ids: Vec<usize> = names.iter().filter_map(|n| index.get(n).copied()).collect();
            if context {
                ids.extend(
                    task.deps
                        .iter()
                        .filter_map(|d| index.get(d.as_str()).copied()),
                );
            }
            ids.sort_unstable();
            ids.dedup();
            reads.push(ids);
            wants_context.push(context);
        }
        let slots = tasks
            .iter()
            .map(|_| Slot {
                state: TaskState::Pending,
                attempt: 1,
                retries: 0,
                feedback: String::new(),
                reason: None,
                output: None,
                token: None,
                dispatched: None,
                attempt_times: AttemptTimes::default(),
                fixed_args: None,
                fixes_tried: Vec::new(),
                fix_trial: None,
                backing_off: false,
                retry_at_ms: None,
                outcome_unknown: false,
                result_cache_key: None,
                cache_refreshed: None,
            })
            .collect();
        let span = tracing::info_span!(
            "run",
            plan = %plan.name,
            run = %spec.run_id,
            resumed = spec.resume,
            status = tracing::field::Empty
        );
        RunState {
            span,
            stop_starting: dropped.child_token(),
            dropped,
            id: Arc::from(spec.run_id.as_str()),
            plan_name: Arc::from(plan.name.as_str()),
            plan,
            base_dir: Arc::new(spec.base_dir.clone()),
            permissions: spec.permissions.clone(),
            record,
            slots,
            index,
            dependents,
            waiting_on,
            reads,
            wants_context,
            ready: VecDeque::new(),
            in_flight: 0,
            failure: None,
            cancelled: false,
            phase: Phase::Running,
            compensation_queue: VecDeque::new(),
            compensation_in_flight: None,
            compensations: Vec::new(),
            replies: Vec::new(),
            started: Instant::now(),
        }
    }

    fn task_record(&self, i: usize) -> TaskRecord {
        let slot = &self.slots[i];
        TaskRecord {
            state: slot.state,
            attempt: slot.attempt,
            retries: slot.retries,
            feedback: slot.feedback.clone(),
            reason: slot.reason.clone(),
            output_json: slot.output.as_ref().map(Value::to_string),
            attempt_times: slot.attempt_times,
            result_cache_key: slot.result_cache_key.map(|key| key.as_u128()),
            fixes_tried: slot
                .fixes_tried
                .iter()
                .map(|&f| u32::try_from(f).unwrap_or(u32::MAX))
                .collect(),
            fix_trial: slot
                .fix_trial
                .as_ref()
                .map(|(f, message)| (u32::try_from(*f).unwrap_or(u32::MAX), message.clone())),
            retry_at_ms: slot.retry_at_ms,
        }
    }

    /// The run's report; it takes the outputs, so it is made once, when the run ends.
    fn take_report(&mut self, status: RunStatus) -> RunReport {
        RunReport {
            run_id: self.id.to_string(),
            plan: self.plan.name.clone(),
            status,
            tasks: self
                .plan
                .tasks
                .iter()
                .zip(&mut self.slots)
                .map(|(task, slot)| TaskReport {
                    id: task.id.as_str().to_owned(),
                    state: slot.state,
                    attempts: slot.attempt,
                    retries: slot.retries,
                    reason: slot.reason.take(),
                    output: slot.output.take(),
                })
                .collect(),
            compensations: std::mem::take(&mut self.compensations),
            duration: self.started.elapsed(),
        }
    }
}

impl OrchestratorState {
    /// Sends the event `make` builds, when anyone listens: without a subscriber (an embedded
    /// run, the benchmark) the per-task events are not even built.
    fn emit(&self, make: impl FnOnce() -> RunEvent) {
        if self.args.events.has_subscribers() {
            self.args.events.send(make());
        }
    }

    /// Records a task's state for [`Self::flush`] (committed in order with everything queued
    /// before).
    fn persist(&mut self, run_id: &Arc<str>, i: usize) {
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        let key = task_key(&run.id, run.plan.tasks[i].id.as_str());
        match encode_task(&run.task_record(i)) {
            Ok(bytes) => self.unsaved.push((key, bytes)),
            Err(e) => tracing::error!("orchestrator: could not encode a task state: {e}"),
        }
    }

    /// Queues the recorded task states on the writer.
    fn flush(&mut self) {
        if self.unsaved.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.unsaved);
        if let Err(e) = self.args.store.queue_run_records(records) {
            tracing::error!("orchestrator: could not persist task states: {e}");
        }
    }

    fn task_event(&self, run: &RunState, i: usize) {
        let slot = &run.slots[i];
        self.emit(|| RunEvent::TaskFinished {
            run_id: run.id.to_string(),
            task: run.plan.tasks[i].id.as_str().to_owned(),
            state: slot.state,
            attempt: slot.attempt,
            reason: slot.reason.clone(),
            elapsed_us: slot
                .dispatched
                .map(|at| u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX)),
        });
    }

    async fn start(
        &mut self,
        mut spec: RunSpec,
        reply: &mut Option<oneshot::Sender<Result<RunReport, RunFailure>>>,
    ) -> Result<(), RunFailure> {
        if let Some(run) = self.runs.get_mut(spec.run_id.as_str()) {
            run.replies.extend(reply.take());
            return Ok(());
        }
        let executor = &self.args.peers.executor;
        // A resume in the same process (this Orchestrator replaced one that crashed) finds the
        // calls the old one made still running: they are stopped first, or a task would run
        // twice at once, and a rollback would undo a call before it finished. (After a restart
        // of the process there are none.)
        if spec.resume {
            let _ = executor.send_control(ExecutorMsg::CancelRun(Arc::from(spec.run_id.as_str())));
        }
        // Before any of its attempts: the Executor forgets an earlier cancel of this id.
        let _ = executor.send_control(ExecutorMsg::RunStarted(Arc::from(spec.run_id.as_str())));
        let record = RunRecord {
            plan_name: spec.plan.name.clone(),
            plan_hash: spec.plan_hash.clone(),
            source: spec.source.clone(),
            status: RunStatus::Running,
            started_ms: crate::store::Timestamp::now().as_millis(),
            plan_text: spec.plan_text.clone(),
            stopping: None,
            finished_ms: None,
        };
        let mut run = RunState::new(&spec, record);
        let mut already_complete = 0;
        'resume: {
            if !spec.resume {
                break 'resume;
            }
            // Commit whatever an earlier Orchestrator of this process still had queued.
            self.args
                .store
                .sync()
                .await
                .map_err(|e| RunFailure::Resume(format!("store: {e}")))?;
            let saved = load_run(&self.args.store, &spec.run_id)
                .map_err(|e| RunFailure::Resume(format!("store: {e}")))?;
            // Another plan's saved tasks would be taken for this one's by their ids alone.
            if let Some(saved) = &saved
                && saved.plan_hash != spec.plan_hash
            {
                return Err(RunFailure::Resume(format!(
                    "it is a run of another plan ({:?} from {}, plan hash {}; this one's is {})",
                    saved.plan_name, saved.source, saved.plan_hash, spec.plan_hash
                )));
            }
            if saved.is_none() && spec.resume_asked {
                return Err(RunFailure::Resume(
                    "no such run is saved in the store".to_owned(),
                ));
            }
            // An ended run is not taken up again: its rollback would run again, compensating
            // the tasks whose compensation failed once more, and its end would be rewritten.
            if let Some(saved) = &saved
                && saved.status != RunStatus::Running
            {
                if spec.resume_asked {
                    return Err(RunFailure::Resume(format!(
                        "it has ended ({}); run the plan again for a new run",
                        saved.status.as_str()
                    )));
                }
                // A new run reusing the id of an ended one, whose start reached this
                // Orchestrator only after a crash of the last: it starts afresh.
                spec.resume = false;
                break 'resume;
            }
            if let Some(saved) = saved {
                run.record.started_ms = saved.started_ms;
                run.record.plan_text = run.record.plan_text.take().or(saved.plan_text);
                run.record.stopping = saved.stopping;
            }
            let saved = load_tasks(&self.args.store, &spec.run_id)
                .map_err(|e| RunFailure::Resume(format!("store: {e}")))?;
            // A run that was rolling back keeps every final state it reached (failed,
            // skipped, undone...) and only finishes its rollback; otherwise only COMPLETE
            // tasks are kept and everything else runs again.
            let rolling_back = run.record.stopping.is_some();
            for (id, mut record) in saved {
                let Some(&i) = run.index.get(&id) else {
                    continue;
                };
                // Kept for a completed task, and for a final state of a rollback: an undone
                // task's output is still what the compensations of the tasks after it read
                // (`{{tasks.ID.output}}`) when one of them runs again.
                let output_json = record.output_json.take();
                let output = || {
                    parse_output(output_json.as_deref(), &id).map_err(|e| {
                        RunFailure::Resume(format!(
                            "store: {e}; the run cannot go on without it (a new run of the plan \
                             can)"
                        ))
                    })
                };
                let task = Arc::clone(&run.plan.tasks[i]);
                let slot = &mut run.slots[i];
                slot.attempt = record.attempt.max(1);
                slot.retries = record.retries;
                slot.feedback = record.feedback;
                slot.attempt_times = record.attempt_times;
                slot.result_cache_key = record.result_cache_key.map(CacheKey::from_u128);
                // The fixes tried, applied again in the order they were (the plan is the one
                // the run saved: its hash matched); a task that was trying one goes on with it.
                let declared = |f: &u32| usize::try_from(*f).ok().filter(|&f| f < task.fixes.len());
                slot.fixes_tried = record.fixes_tried.iter().filter_map(declared).collect();
                slot.fixed_args = (!slot.fixes_tried.is_empty()).then(|| {
                    slot.fixes_tried
                        .iter()
                        .fold(task.args.clone(), |args, &f| task.fixes[f].apply(&args))
                });
                slot.fix_trial = record
                    .fix_trial
                    .and_then(|(f, message)| declared(&f).map(|f| (f, message)));
                slot.retry_at_ms = record.retry_at_ms;
                match record.state {
                    TaskState::Complete => {
                        slot.output = output()?;
                        slot.state = TaskState::Complete;
                        already_complete += 1;
                    }
                    TaskState::Failed
                    | TaskState::Skipped
                    | TaskState::Cancelled
                    | TaskState::Compensated
                        if rolling_back =>
                    {
                        slot.output = output()?;
                        slot.state = record.state;
                        slot.reason = record.reason;
                    }
                    // In flight when the process stopped during the rollback (the failure
                    // committed it as running): whether its call did its work is unknown, so
                    // it does not run again, and its compensation runs as a completed task's.
                    TaskState::Running if rolling_back => {
                        slot.state = TaskState::Cancelled;
                        slot.reason = Some(
                            "in flight when an earlier process of the run stopped: its outcome \
                             is unknown"
                                .to_owned(),
                        );
                        slot.outcome_unknown = true;
                    }
                    _ => {}
                }
            }
            match &run.record.stopping {
                Some(Stopping::Failed(reason)) => run.failure = Some(reason.clone()),
                Some(Stopping::Cancelled) => run.cancelled = true,
                None => {}
            }
            for i in 0..run.plan.tasks.len() {
                if run.slots[i].state == TaskState::Complete {
                    for &d in &run.dependents[i] {
                        run.waiting_on[d] -= 1;
                    }
                }
            }
        }
        // The run and its tasks are queued first, so they commit before (or with) any later
        // transition. Nothing waits for that commit: a crash before it leaves no trace of the
        // run, none of whose transitions can then be durable either, and running the same plan
        // again starts it afresh — the at-least-once the tasks in flight get anyway. (Waiting
        // cost one fsync, 0.1–10 ms here, on every run's start.)
        let mut records = Vec::with_capacity(run.plan.tasks.len() + 1);
        records.push((
            run_key(&spec.run_id),
            encode_run(&run.record).map_err(|e| RunFailure::Run(e.to_string()))?,
        ));
        for i in 0..run.plan.tasks.len() {
            // Tasks a resume kept (complete, or final in a rollback) keep their records.
            if run.slots[i].state == TaskState::Pending {
                records.push((
                    task_key(&spec.run_id, run.plan.tasks[i].id.as_str()),
                    encode_task(&run.task_record(i)).map_err(|e| RunFailure::Run(e.to_string()))?,
                ));
            }
        }
        // The commit's answer is not awaited (see above); a failed commit is logged by the
        // writer, and the run's end is written durably and reported.
        drop(
            self.args
                .store
                .queue_run_records(records)
                .map_err(|e| RunFailure::Run(format!("store: {e}")))?,
        );
        let rolling_back = run.failure.is_some() || run.cancelled;
        // A retry that was waiting out its backoff when the process stopped waits out the
        // rest of it (a rate-limited tool is not called again at once).
        let mut retry_later = Vec::new();
        for i in 0..run.plan.tasks.len() {
            if !rolling_back && run.slots[i].state == TaskState::Pending && run.waiting_on[i] == 0 {
                match run.slots[i].retry_at_ms {
                    Some(due) => retry_later.push((i, due)),
                    None => run.ready.push_back(i),
                }
            }
        }
        self.emit(|| RunEvent::RunStarted {
            run_id: spec.run_id.clone(),
            plan: run.plan.name.clone(),
            tasks: run.plan.tasks.len(),
            resumed: spec.resume,
            already_complete,
        });
        // A task whose outcome a resumed rollback cannot know is reported as cancelled, as a
        // task cancelled in this process is, before its compensation runs.
        for i in 0..run.plan.tasks.len() {
            if run.slots[i].outcome_unknown {
                self.task_event(&run, i);
            }
        }
        run.replies.extend(reply.take());
        let id = Arc::clone(&run.id);
        self.runs.insert(Arc::clone(&id), run);
        for (i, due) in retry_later {
            self.schedule_retry(&id, i, due);
        }
        if let Some(at) = self.early_cancels.iter().position(|c| **c == *id) {
            self.early_cancels.remove(at);
            self.cancel(&id).await;
            // A resumed run whose stop was saved before it started (that cancel, or an earlier
            // failure) starts stopped, which `cancel` leaves alone: `pump` dispatches nothing
            // then and goes on to its rollback.
            self.pump(&id).await;
            return Ok(());
        }
        // A resumed rollback dispatches nothing: it goes on to the compensations.
        self.pump(&id).await;
        Ok(())
    }

    /// Records the run's own record for [`Self::flush`] (with the task records of the same
    /// message, in one commit).
    fn persist_run(&mut self, run_id: &Arc<str>) {
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        match encode_run(&run.record) {
            Ok(bytes) => self.unsaved.push((run_key(&run.id), bytes)),
            Err(e) => tracing::error!("orchestrator: could not encode a run state: {e}"),
        }
    }

    /// Dispatches ready tasks up to the in-flight limit, then ends the run if nothing is left.
    async fn pump(&mut self, run_id: &Arc<str>) {
        let limit = self.args.settings.max_in_flight;
        loop {
            let Some(run) = self.runs.get_mut(run_id) else {
                return;
            };
            if run.failure.is_some() || run.cancelled || run.in_flight >= limit {
                break;
            }
            let Some(i) = run.ready.pop_front() else {
                break;
            };
            self.dispatch(run_id, i).await;
        }
        self.check_finished(run_id).await;
    }

    fn template_context(&self, run: &RunState, i: usize) -> TemplateContext {
        let slot = &run.slots[i];
        TemplateContext {
            outputs: run.reads[i]
                .iter()
                .filter_map(|&r| {
                    let output = run.slots[r].output.clone()?;
                    Some((run.plan.tasks[r].id.as_str().to_owned(), output))
                })
                .collect(),
            attempt: slot.attempt,
            feedback: slot.feedback.clone(),
            run_id: Arc::clone(&run.id),
            plan_name: Arc::clone(&run.plan_name),
            context: String::new(),
        }
    }

    async fn dispatch(&mut self, run_id: &Arc<str>, i: usize) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let token = next_token();
        let slot = &mut run.slots[i];
        slot.state = TaskState::Running;
        slot.token = Some(token);
        slot.backing_off = false;
        slot.retry_at_ms = None;
        slot.dispatched = Some(Instant::now());
        run.in_flight += 1;
        // A first dispatch is not persisted: its record would differ from the pending one
        // written at the start only by saying "running", and a resume re-runs a task that did
        // not complete either way. A later attempt or retry is, for its attempt count and
        // feedback. (This saves a third of the run's writes.)
        if slot.attempt > 1 || slot.retries > 0 || !slot.fixes_tried.is_empty() {
            self.persist(run_id, i);
        }
        let run = &self.runs[run_id];
        self.emit(|| RunEvent::TaskStarted {
            run_id: run.id.to_string(),
            task: run.plan.tasks[i].id.as_str().to_owned(),
            attempt: run.slots[i].attempt,
        });
        let task = Arc::clone(&run.plan.tasks[i]);
        let span = tracing::info_span!(
            parent: &run.span,
            "task",
            plan = %run.plan.name,
            run = %run.id,
            task = %task.id,
            attempt = run.slots[i].attempt,
            outcome = tracing::field::Empty
        );
        let attempt = Attempt {
            span,
            run_id: Arc::clone(&run.id),
            task_index: i,
            fixed_args: run.slots[i].fixed_args.clone(),
            ctx: self.template_context(run, i),
            wants_context: run.wants_context[i],
            timeout: task.timeout,
            base_dir: Arc::clone(&run.base_dir),
            task,
            token,
            purpose: Purpose::Task,
            args: None,
            permissions: run.permissions.clone(),
            failure: None,
            cache_key: None,
            served_from_cache: false,
            // A dispatch after the run stopped re-sends a call that may have run (an agent
            // restarted during the rollback): it is made, so its work is compensated.
            stop_starting: Some(if run.stop_starting.is_cancelled() {
                run.dropped.clone()
            } else {
                run.stop_starting.clone()
            }),
        };
        if let Err(e) = self
            .args
            .peers
            .optimizer
            .send(OptimizerMsg::Prepare(Box::new(attempt)))
            .await
        {
            // It stays in flight; the restart notice re-dispatches it.
            tracing::warn!("orchestrator: dispatch not delivered: {e}");
        }
    }

    fn fail_task(&mut self, run_id: &Arc<str>, i: usize, reason: String) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        run.slots[i].state = TaskState::Failed;
        run.slots[i].reason = Some(reason.clone());
        let id = run.plan.tasks[i].id.as_str().to_owned();
        let first_failure = run.failure.is_none();
        if first_failure {
            run.stop_starting.cancel();
            let failure = format!("task {id} failed: {reason}");
            run.record.stopping = Some(Stopping::Failed(failure.clone()));
            run.failure = Some(failure);
        }
        let skipped = run.plan.dag().dependents_transitive(&id);
        let mut changed = vec![i];
        for dep in skipped {
            if let Some(&d) = run.index.get(dep.as_str())
                && run.slots[d].state == TaskState::Pending
            {
                run.slots[d].state = TaskState::Skipped;
                run.slots[d].reason = Some(format!("dependency {id} failed"));
                changed.push(d);
            }
        }
        // A task waiting out a retry backoff will not retry: it stops now, rather than when
        // its timer fires (the rollback waited up to `retry_backoff_max` for it).
        for (j, slot) in run.slots.iter_mut().enumerate() {
            if slot.backing_off && slot.token.take().is_some() {
                slot.drop_scheduled_retry();
                slot.state = TaskState::Skipped;
                slot.reason = Some("the run stopped before the retry".to_owned());
                run.in_flight -= 1;
                changed.push(j);
            }
        }
        if first_failure {
            // The tasks still in flight finish before the rollback and are compensated then.
            // Their first dispatch was not persisted: they are, as running, in the failure's
            // commit, so a resumed rollback knows they may have done their work.
            let in_flight = run
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s.token.is_some() && s.state == TaskState::Running && !s.backing_off
                })
                .map(|(i, _)| i);
            changed.extend(in_flight);
            self.persist_run(run_id);
        }
        for i in changed {
            self.persist(run_id, i);
            if self.runs[run_id].slots[i].state != TaskState::Running {
                self.task_event(&self.runs[run_id], i);
            }
        }
    }

    async fn on_verdict(&mut self, attempt: Box<Attempt>, verdict: Verdict) {
        attempt.span.record(
            "outcome",
            match &verdict {
                Verdict::Pass { .. } => "pass",
                Verdict::GateFailed { .. } => "gate_failed",
                Verdict::Error { .. } => "error",
                Verdict::NotStarted { .. } => "not_started",
            },
        );
        if attempt.purpose == Purpose::WarmUp {
            self.warmed(&attempt, &verdict);
            return;
        }
        let run_id = Arc::clone(&attempt.run_id);
        let i = attempt.task_index;
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        if attempt.purpose == Purpose::Compensation {
            if run.compensation_in_flight != Some((i, attempt.token)) {
                return;
            }
            run.compensation_in_flight = None;
            let (ok, detail) = match verdict {
                // Text output as it is (not JSON-quoted), as a failure's reason is.
                Verdict::Pass {
                    output: Value::String(text),
                    ..
                } => (true, text),
                Verdict::Pass { output, .. } => (true, output.to_string()),
                Verdict::GateFailed { feedback } => (false, feedback),
                Verdict::Error { reason, .. } | Verdict::NotStarted { reason } => (false, reason),
            };
            if ok {
                run.slots[i].state = TaskState::Compensated;
            }
            let task = run.plan.tasks[i].id.as_str().to_owned();
            run.compensations.push(CompensationReport {
                task: task.clone(),
                ok,
                detail: detail.clone(),
            });
            self.persist(&run_id, i);
            self.emit(|| RunEvent::Compensated {
                run_id: run_id.to_string(),
                task,
                ok,
                detail,
            });
            self.next_compensation(&run_id).await;
            return;
        }
        if run.slots.get(i).and_then(|s| s.token) != Some(attempt.token) {
            return; // superseded (re-dispatched after a restart, or cancelled)
        }
        let slot = &mut run.slots[i];
        slot.token = None;
        // A call that was not made is neither an attempt's time nor a trial of a fix.
        let not_started = matches!(verdict, Verdict::NotStarted { .. });
        if let Some(at) = slot.dispatched.filter(|_| !not_started) {
            slot.attempt_times.add(at.elapsed());
        }
        run.in_flight -= 1;
        let task = Arc::clone(&run.plan.tasks[i]);
        let (message, suggestion) = attempt.failure.clone().unzip();
        let suggestion = suggestion.flatten();
        // A fix trial's lesson is recorded once its outcome is known: not while the task goes
        // on with the fix (a retry after an error, a next attempt or a fresh call after failed
        // gates, as the branches below decide), where a later verdict may still pass; nor when
        // the run stopped while the task had something left to try, or no call was made.
        let slot = &run.slots[i];
        let more_to_try = has_more_to_try(&task, slot.attempt, slot.retries, &verdict)
            || (matches!(verdict, Verdict::GateFailed { .. })
                && attempt.served_from_cache
                && slot.cache_refreshed != Some(slot.attempt));
        let worked = matches!(verdict, Verdict::Pass { .. });
        if let Some((f, original)) = run.slots[i].fix_trial.take_if(|_| !more_to_try)
            && !not_started
        {
            let fix = task.fixes.get(f).map(Fix::describe);
            Self::record_lesson(&self.args, &task, original, fix, Some(worked));
        }
        match verdict {
            Verdict::NotStarted { reason } => {
                let slot = &mut run.slots[i];
                slot.state = TaskState::Skipped;
                slot.reason = Some(reason);
                // No call: its event carries no time (a subscriber counts no call).
                slot.dispatched = None;
                self.persist(&run_id, i);
                self.task_event(&self.runs[&run_id], i);
            }
            Verdict::Pass { output, summary } => {
                let slot = &mut run.slots[i];
                slot.state = TaskState::Complete;
                slot.output = Some(output);
                slot.result_cache_key = attempt.cache_key;
                slot.reason = (!summary.is_empty()).then_some(summary);
                for d in run.dependents[i].clone() {
                    run.waiting_on[d] -= 1;
                    if run.waiting_on[d] == 0 && run.slots[d].state == TaskState::Pending {
                        run.ready.push_back(d);
                    }
                }
                self.persist(&run_id, i);
                self.task_event(&self.runs[&run_id], i);
            }
            Verdict::GateFailed { feedback }
                if attempt.served_from_cache
                    && run.slots[i].cache_refreshed != Some(run.slots[i].attempt)
                    && run.failure.is_none()
                    && !run.cancelled =>
            {
                // A cached result the gates refuse is stale: the tool is called for this same
                // attempt (the Reviewer has dropped the entry), rather than the attempt being
                // spent on a result no call made now.
                let slot = &mut run.slots[i];
                slot.cache_refreshed = Some(slot.attempt);
                tracing::info!(
                    run = %run_id,
                    task = %task.id,
                    "cached result failed the gates ({feedback}); calling the tool"
                );
                self.dispatch(&run_id, i).await;
            }
            Verdict::GateFailed { feedback } => {
                let attempt_no = run.slots[i].attempt;
                self.args.events.send(RunEvent::GateFailed {
                    run_id: run_id.to_string(),
                    task: task.id.as_str().to_owned(),
                    attempt: attempt_no,
                    feedback: feedback.clone(),
                });
                let stopping = run.failure.is_some() || run.cancelled;
                if attempt_no < task.max_attempts && !stopping {
                    let slot = &mut run.slots[i];
                    slot.attempt += 1;
                    slot.feedback = feedback;
                    self.dispatch(&run_id, i).await;
                } else if attempt_no < task.max_attempts {
                    // Not this task's failure: it had attempts left when the run stopped.
                    self.stopped_before_next_attempt(&run_id, i);
                } else {
                    let reason = format!(
                        "gates failed on attempt {attempt_no} of {}: {feedback}",
                        task.max_attempts
                    );
                    self.fail_or_fix(&run_id, i, reason, message.clone(), suggestion.clone())
                        .await;
                }
            }
            Verdict::Error { reason, retryable } => {
                let retries = run.slots[i].retries;
                let stopping = run.failure.is_some() || run.cancelled;
                if retryable && retries < task.retries && stopping {
                    self.stopped_before_next_attempt(&run_id, i);
                } else if retryable && retries < task.retries {
                    let retry = retries + 1;
                    let settings = &self.args.settings;
                    let backoff = settings
                        .retry_backoff
                        .saturating_mul(1u32 << (retry - 1).min(16))
                        .min(settings.retry_backoff_max);
                    run.slots[i].retries = retry;
                    self.args.events.send(RunEvent::TaskRetrying {
                        run_id: run_id.to_string(),
                        task: task.id.as_str().to_owned(),
                        retry,
                        reason,
                        backoff_ms: u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    });
                    let due = crate::store::Timestamp::now()
                        .as_millis()
                        .saturating_add(i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX));
                    self.schedule_retry(&run_id, i, due);
                    // Saved now, not at the retry's dispatch: a process killed during the
                    // backoff resumes with this retry counted, so the tool is not called more
                    // often than `retries` allows, and with its due time, so it is not called
                    // before it either.
                    self.persist(&run_id, i);
                } else {
                    let reason = if retryable && task.retries > 0 {
                        format!(
                            "{reason} (after {retries} {})",
                            if retries == 1 { "retry" } else { "retries" }
                        )
                    } else {
                        reason
                    };
                    self.fail_or_fix(&run_id, i, reason, message.clone(), suggestion.clone())
                        .await;
                }
            }
        }
        self.pump(&run_id).await;
    }

    /// Records a failure (and the fix tried, if any) as a lesson, off the actor's path.
    fn record_lesson(
        args: &OrchestratorArgs,
        task: &Task,
        message: String,
        fix: Option<String>,
        worked: Option<bool>,
    ) {
        let lessons = Arc::clone(&args.lessons);
        let failure = Failure {
            error_type: "task_failure".to_owned(),
            message,
            context: format!("task {} ({})", task.id, task.tool),
            fix,
            worked,
        };
        args.background.spawn(async move {
            if let Err(e) = lessons.record(failure).await {
                tracing::warn!("orchestrator: could not record a lesson: {e}");
            }
        });
    }

    /// A task failed for good: try the first declared fix that matches and was not tried yet,
    /// else fail it (recording the failure as a lesson).
    /// `message` is the error as the tool gave it (what lessons compare); `reason` is the
    /// runtime's account of the failure.
    async fn fail_or_fix(
        &mut self,
        run_id: &Arc<str>,
        i: usize,
        reason: String,
        message: Option<String>,
        suggestion: Option<String>,
    ) {
        let message = message.unwrap_or_else(|| reason.clone());
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let task = Arc::clone(&run.plan.tasks[i]);
        let slot = &mut run.slots[i];
        let fix = task
            .fixes
            .iter()
            .enumerate()
            .find(|(f, fix)| !slot.fixes_tried.contains(f) && fix.when.is_match(&reason));
        if let Some((f, fix)) = fix
            && run.failure.is_none()
            && !run.cancelled
        {
            slot.fixes_tried.push(f);
            slot.fix_trial = Some((f, message));
            let base = slot.fixed_args.clone().unwrap_or_else(|| task.args.clone());
            slot.fixed_args = Some(fix.apply(&base));
            self.args.events.send(RunEvent::FixApplied {
                run_id: run_id.to_string(),
                task: task.id.as_str().to_owned(),
                fix: fix.describe(),
                reason,
            });
            self.dispatch(run_id, i).await;
            return;
        }
        let slot_had_fix = !slot.fixes_tried.is_empty();
        if !slot_had_fix {
            Self::record_lesson(&self.args, &task, message, None, None);
        }
        let reason = match suggestion {
            Some(hint) => format!("{reason}; {hint}"),
            None => reason,
        };
        self.fail_task(run_id, i, reason);
    }

    /// A task whose attempt failed while the run was stopping (another task failed, or a
    /// cancel), with attempts or retries left: skipped, as a retry due then is, and not
    /// recorded as a lesson, since the stop, not the task, ended it.
    fn stopped_before_next_attempt(&mut self, run_id: &Arc<str>, i: usize) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let slot = &mut run.slots[i];
        slot.state = TaskState::Skipped;
        slot.reason = Some("the run stopped before the task's next attempt".to_owned());
        self.persist(run_id, i);
        self.task_event(&self.runs[run_id], i);
    }

    /// Has task `i` wait out a retry's backoff until `due_ms` (Unix milliseconds; one already
    /// past is dispatched at once), then dispatched by [`OrchestratorMsg::Retry`].
    fn schedule_retry(&mut self, run_id: &Arc<str>, i: usize, due_ms: i64) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let token = next_token();
        let slot = &mut run.slots[i];
        slot.state = TaskState::Running;
        slot.token = Some(token);
        slot.backing_off = true;
        run.in_flight += 1;
        let now = crate::store::Timestamp::now().as_millis();
        // At most the longest backoff: a due time saved before the clock was set back (or on
        // another machine's clock) would hold the task for hours.
        let longest =
            i64::try_from(self.args.settings.retry_backoff_max.as_millis()).unwrap_or(i64::MAX);
        let due_ms = due_ms.min(now.saturating_add(longest));
        slot.retry_at_ms = Some(due_ms);
        let wait = due_ms.saturating_sub(now);
        let backoff = std::time::Duration::from_millis(u64::try_from(wait).unwrap_or(0));
        let orchestrator = self.args.peers.orchestrator.clone();
        let retried = Arc::clone(run_id);
        tokio::spawn(async move {
            tokio::time::sleep(backoff).await;
            let _ = orchestrator.send_control(OrchestratorMsg::Retry {
                run_id: retried,
                task_index: i,
                token,
            });
        });
    }

    async fn on_retry(&mut self, run_id: Arc<str>, i: usize, token: u64) {
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        if run.slots.get(i).and_then(|s| s.token) != Some(token) {
            return;
        }
        run.slots[i].token = None;
        run.in_flight -= 1;
        if run.failure.is_some() || run.cancelled {
            run.slots[i].drop_scheduled_retry();
            run.slots[i].state = TaskState::Skipped;
            run.slots[i].reason = Some("the run stopped before the retry".to_owned());
            self.persist(&run_id, i);
            self.task_event(&self.runs[&run_id], i);
        } else {
            self.dispatch(&run_id, i).await;
        }
        self.pump(&run_id).await;
    }

    /// Re-sends every attempt in flight: an agent that held some of them died with them.
    async fn redispatch_in_flight(&mut self) {
        let ids: Vec<Arc<str>> = self.runs.keys().cloned().collect();
        for run_id in ids {
            let Some(run) = self.runs.get_mut(&run_id) else {
                continue;
            };
            let lost: Vec<usize> = (0..run.slots.len())
                .filter(|&i| {
                    let slot = &run.slots[i];
                    slot.token.is_some() && slot.state == TaskState::Running && !slot.backing_off
                })
                .collect();
            for &i in &lost {
                run.slots[i].token = None;
                run.in_flight -= 1;
            }
            let compensation = run.compensation_in_flight.take();
            for i in lost {
                self.dispatch(&run_id, i).await;
            }
            if let Some((i, _)) = compensation {
                self.dispatch_compensation(&run_id, i).await;
            }
        }
    }

    /// Sends each warm-up call down the pipeline as an attempt of a task of its own (one that
    /// belongs to no run: nothing is persisted or emitted for it); `done` is answered by
    /// [`Self::warmed`] once all are back.
    async fn warm_up(
        &mut self,
        run_id: Option<Arc<str>>,
        calls: Vec<WarmUpCall>,
        done: oneshot::Sender<()>,
    ) {
        // Pools are found by run: a run id no run has finds the runtime's own pools.
        let run_id = run_id.unwrap_or_else(|| Arc::from(""));
        let mut tokens = HashSet::new();
        let mut attempts = Vec::new();
        for call in calls {
            let token = next_token();
            tokens.insert(token);
            let task = Task {
                id: TaskId::from("warm-up"),
                tool: call.tool,
                args: call.args,
                deps: Vec::new(),
                timeout: None,
                estimate: None,
                retries: 0,
                max_attempts: 1,
                gates: Vec::new(),
                compensate: None,
                fixes: Vec::new(),
                cacheable: false,
                outputs: None,
                context_files: Vec::new(),
                location: Location { line: 1, column: 1 },
                tool_location: Location { line: 1, column: 1 },
            };
            attempts.push(Attempt {
                span: tracing::Span::none(),
                run_id: Arc::clone(&run_id),
                task_index: 0,
                fixed_args: None,
                ctx: TemplateContext {
                    outputs: HashMap::new(),
                    attempt: 1,
                    feedback: String::new(),
                    run_id: Arc::clone(&run_id),
                    plan_name: Arc::from("warm-up"),
                    context: String::new(),
                },
                wants_context: false,
                timeout: None,
                base_dir: Arc::new(PathBuf::new()),
                task: Arc::new(task),
                token,
                purpose: Purpose::WarmUp,
                args: None,
                permissions: None,
                failure: None,
                cache_key: None,
                served_from_cache: false,
                stop_starting: None,
            });
        }
        if tokens.is_empty() {
            let _ = done.send(());
            return;
        }
        self.warm_ups.push((tokens, done));
        for attempt in attempts {
            if let Err(e) = self
                .args
                .peers
                .optimizer
                .send(OptimizerMsg::Prepare(Box::new(attempt)))
                .await
            {
                // Whoever waits gives up after its own deadline; nothing else depends on it.
                tracing::debug!("orchestrator: warm-up not delivered: {e}");
            }
        }
    }

    /// A warm-up attempt is back: its waiter is answered once its whole pass is.
    fn warmed(&mut self, attempt: &Attempt, verdict: &Verdict) {
        if let Verdict::Error { reason, .. } = verdict {
            tracing::warn!(
                "orchestrator: warm-up call {} failed: {reason}",
                attempt.call()
            );
        }
        let Some(at) = self
            .warm_ups
            .iter()
            .position(|(tokens, _)| tokens.contains(&attempt.token))
        else {
            return;
        };
        let tokens = &mut self.warm_ups[at].0;
        tokens.remove(&attempt.token);
        if tokens.is_empty() {
            let (_, done) = self.warm_ups.swap_remove(at);
            let _ = done.send(());
        }
    }

    async fn cancel(&mut self, run_id: &str) {
        let Some(run) = self.runs.get_mut(run_id) else {
            // A run that has ended is not cancelled again: remembered, the cancel would stop
            // a later resume or reuse of its id.
            let saved = load_run(&self.args.store, run_id).ok().flatten();
            if saved
                .as_ref()
                .is_some_and(|saved| saved.status != RunStatus::Running)
            {
                return;
            }
            // A saved run being resumed (its pools still starting): the cancel is saved with
            // it, so a process that exits before the run starts (a second Ctrl-C, a pool that
            // fails to start) leaves a run whose next resume only finishes the rollback.
            if let Some(mut saved) = saved
                && saved.stopping.is_none()
            {
                saved.stopping = Some(Stopping::Cancelled);
                match encode_run(&saved) {
                    Ok(bytes) => self.unsaved.push((run_key(run_id), bytes)),
                    Err(e) => tracing::error!("orchestrator: could not encode a run state: {e}"),
                }
            }
            // Not started yet: remembered, so it is cancelled when it starts.
            if !self.early_cancels.iter().any(|c| c == run_id) {
                if self.early_cancels.len() == EARLY_CANCELS {
                    self.early_cancels.pop_front();
                }
                self.early_cancels.push_back(run_id.to_owned());
            }
            return;
        };
        // A run that failed is already rolling back (waiting for the calls in flight, to
        // compensate them too): a cancel would stop those calls and leave them not undone,
        // where a kill at the same moment has them compensated on resume.
        if run.cancelled || run.phase != Phase::Running || run.failure.is_some() {
            return;
        }
        run.cancelled = true;
        run.stop_starting.cancel();
        // A run already rolling back for a failure keeps that reason (and status) on resume.
        if run.record.stopping.is_none() {
            run.record.stopping = Some(Stopping::Cancelled);
        }
        let id = Arc::clone(&run.id);
        let mut changed = Vec::new();
        for (i, slot) in run.slots.iter_mut().enumerate() {
            if slot.token.take().is_some() {
                if slot.backing_off {
                    slot.drop_scheduled_retry();
                }
                slot.state = TaskState::Cancelled;
                slot.reason = Some("cancelled".to_owned());
                changed.push(i);
            }
        }
        run.in_flight = 0;
        let _ = self
            .args
            .peers
            .executor
            .send_control(ExecutorMsg::CancelRun(Arc::clone(&id)));
        self.persist_run(&id);
        for i in changed {
            self.persist(&id, i);
            self.task_event(&self.runs[&id], i);
        }
        self.check_finished(&id).await;
    }

    async fn check_finished(&mut self, run_id: &Arc<str>) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        if run.phase != Phase::Running || run.in_flight > 0 {
            return;
        }
        let stopping = run.failure.is_some() || run.cancelled;
        if !stopping && !run.ready.is_empty() {
            return;
        }
        if !stopping {
            self.finish(run_id, RunStatus::Complete).await;
            return;
        }
        // Whatever never started will not: say why.
        let why = run
            .failure
            .clone()
            .unwrap_or_else(|| "the run was cancelled".to_owned());
        let mut changed = Vec::new();
        for (i, slot) in run.slots.iter_mut().enumerate() {
            if slot.state == TaskState::Pending {
                slot.state = TaskState::Skipped;
                slot.reason = Some(format!("not started: {why}"));
                changed.push(i);
            }
        }
        run.ready.clear();
        let completed: HashSet<_> = run
            .plan
            .tasks
            .iter()
            .zip(&run.slots)
            .filter(|(t, s)| {
                (s.state == TaskState::Complete || s.outcome_unknown) && t.compensate.is_some()
            })
            .map(|(t, _)| t.id.clone())
            .collect();
        run.compensation_queue = run
            .plan
            .dag()
            .reverse_completion_order(&completed)
            .iter()
            .filter_map(|id| run.index.get(id.as_str()).copied())
            .collect();
        run.phase = Phase::Compensating;
        let undoes = !run.compensation_queue.is_empty();
        for i in changed {
            self.persist(run_id, i);
            self.task_event(&self.runs[run_id], i);
        }
        // The stop is on disk before the first compensation is called: a kill between them
        // left a run whose resume did not know it was rolling back, so it ran the failed task
        // again and could end COMPLETE with a task undone. (One fsync a rollback.)
        if undoes {
            let records = std::mem::take(&mut self.unsaved);
            if let Err(e) = self.args.store.put_run_records(records).await {
                tracing::error!(
                    "orchestrator: could not save the run's stop before its rollback: {e}"
                );
            }
        }
        self.next_compensation(run_id).await;
    }

    async fn dispatch_compensation(&mut self, run_id: &Arc<str>, i: usize) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let task = Arc::clone(&run.plan.tasks[i]);
        if task.compensate.is_none() {
            return;
        }
        let token = next_token();
        run.compensation_in_flight = Some((i, token));
        let run = &self.runs[run_id];
        let mut ctx = self.template_context(run, i);
        if let Some(output) = &run.slots[i].output {
            ctx.outputs
                .insert(task.id.as_str().to_owned(), output.clone());
        }
        let span = tracing::info_span!(
            parent: &run.span,
            "compensate",
            plan = %run.plan.name,
            run = %run.id,
            task = %task.id,
            outcome = tracing::field::Empty
        );
        let attempt = Attempt {
            span,
            run_id: Arc::clone(&run.id),
            task_index: i,
            fixed_args: None,
            ctx,
            wants_context: false,
            timeout: task.timeout,
            base_dir: Arc::clone(&run.base_dir),
            task: Arc::clone(&task),
            token,
            purpose: Purpose::Compensation,
            args: None,
            permissions: run.permissions.clone(),
            failure: None,
            // The undone call's result, which the Reviewer drops from the cache.
            cache_key: run.slots[i].result_cache_key,
            served_from_cache: false,
            // Made even though the run stopped, unless the run is gone (see `dropped`).
            stop_starting: Some(run.dropped.clone()),
        };
        if let Err(e) = self
            .args
            .peers
            .optimizer
            .send(OptimizerMsg::Prepare(Box::new(attempt)))
            .await
        {
            tracing::warn!("orchestrator: compensation not delivered: {e}");
        }
    }

    async fn next_compensation(&mut self, run_id: &Arc<str>) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        if let Some(i) = run.compensation_queue.pop_front() {
            self.dispatch_compensation(run_id, i).await;
            return;
        }
        // A failure that came first stays the run's outcome, as it does on a resume.
        let status = if run.failure.is_some() {
            RunStatus::Failed
        } else {
            RunStatus::Cancelled
        };
        self.finish(run_id, status).await;
    }

    async fn finish(&mut self, run_id: &Arc<str>, status: RunStatus) {
        let Some(mut run) = self.runs.remove(run_id) else {
            return;
        };
        run.record.status = status;
        run.record.finished_ms = Some(crate::store::Timestamp::now().as_millis());
        run.span.record("status", status.as_str());
        let report = run.take_report(status);
        // Durable before it is reported, in one write with the transitions not yet queued: as
        // two, the first often woke the writer into a commit of its own and the end waited for a
        // second fsync (one-task runs: 11 fsyncs a process in 4 of 6, 10 in every run now).
        // Everything queued before commits with it or earlier.
        let written = match encode_run(&run.record) {
            Ok(bytes) => {
                let mut records = std::mem::take(&mut self.unsaved);
                records.push((run_key(run_id), bytes));
                self.args
                    .store
                    .put_run_records(records)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => {
                self.flush();
                Err(e.to_string())
            }
        };
        self.emit(|| RunEvent::RunFinished {
            run_id: run_id.to_string(),
            status,
            duration_ms: u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
        });
        let answer = |report: RunReport| match &written {
            Ok(()) => Ok(report),
            Err(e) => Err(RunFailure::Run(format!(
                "the run ended but its state was not saved: {e}"
            ))),
        };
        // A run started twice has two callers: the last gets the report, the others a copy.
        let mut replies = std::mem::take(&mut run.replies);
        let last = replies.pop();
        for reply in replies {
            let _ = reply.send(answer(report.clone()));
        }
        if let Some(reply) = last {
            let _ = reply.send(answer(report));
        }
    }
}

/// Whether a verdict leaves the task something to try (an attempt after failed gates, a retry
/// after an error the task retries), had its run not stopped.
fn has_more_to_try(task: &Task, attempt: u32, retries: u32, verdict: &Verdict) -> bool {
    match verdict {
        Verdict::GateFailed { .. } => attempt < task.max_attempts,
        Verdict::Error { retryable, .. } => *retryable && retries < task.retries,
        _ => false,
    }
}

impl Actor for Orchestrator {
    type Msg = Envelope<OrchestratorMsg>;
    type State = OrchestratorState;
    type Arguments = OrchestratorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: OrchestratorArgs,
    ) -> Result<OrchestratorState, ActorProcessingErr> {
        Ok(OrchestratorState {
            args,
            runs: HashMap::new(),
            unsaved: Vec::new(),
            early_cancels: VecDeque::new(),
            warm_ups: Vec::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        envelope: Self::Msg,
        state: &mut OrchestratorState,
    ) -> Result<(), ActorProcessingErr> {
        let Envelope { msg, .. } = envelope;
        match msg {
            OrchestratorMsg::Start { spec, reply } => {
                // `start` keeps the reply in the run; on an early error it is answered here.
                let mut reply = Some(reply);
                if let Err(e) = state.start(*spec, &mut reply).await
                    && let Some(reply) = reply
                {
                    let _ = reply.send(Err(e));
                }
            }
            OrchestratorMsg::Verdict { attempt, verdict } => {
                state.on_verdict(attempt, verdict).await;
            }
            OrchestratorMsg::Retry {
                run_id,
                task_index,
                token,
            } => state.on_retry(run_id, task_index, token).await,
            OrchestratorMsg::AgentRestarted(agent) => {
                tracing::info!("orchestrator: {agent} restarted; re-dispatching its work");
                // A warm-up the dead agent held never comes back, and is not worth redoing:
                // its waiters go on now rather than at their deadline.
                for (_, done) in state.warm_ups.drain(..) {
                    let _ = done.send(());
                }
                state.redispatch_in_flight().await;
            }
            OrchestratorMsg::WarmUp {
                run_id,
                calls,
                done,
            } => state.warm_up(run_id, calls, done).await,
            OrchestratorMsg::Cancel { run_id } => state.cancel(&run_id).await,
            OrchestratorMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            OrchestratorMsg::Crash => injected_fault(AgentKind::Orchestrator),
        }
        state.flush();
        Ok(())
    }
}
