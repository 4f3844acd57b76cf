//! Run and task states: what the Orchestrator persists in the store (so a restart, or a new
//! process after a kill, resumes a run) and what a finished run reports.
//!
//! Records live in the store's `runs` table under `run:RUN_ID` and `task:RUN_ID/TASK_ID`, each a
//! postcard value inside a versioned enum (the variant index is the version tag). Outputs are
//! kept as JSON text, since postcard cannot carry a self-describing `serde_json::Value`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Store, StoreError};

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Not started.
    Pending,
    /// Dispatched; not finished.
    Running,
    /// Every gate passed.
    Complete,
    /// Failed for good (errors past `retries`, gates past `max_attempts`).
    Failed,
    /// Not run: a dependency failed, or the run stopped first.
    Skipped,
    /// Stopped by a cancellation.
    Cancelled,
    /// Completed, then undone by its compensation during a rollback.
    Compensated,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Still running (or killed before it ended: resumable).
    Running,
    /// Every task COMPLETE.
    Complete,
    /// A task failed for good; compensations ran.
    Failed,
    /// Cancelled (Ctrl-C); compensations ran.
    Cancelled,
}

impl RunStatus {
    /// The status as written in JSON and on spans: `running`, `complete`, `failed`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Complete => "complete",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// One task in a [`RunReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    /// The task.
    pub id: String,
    /// Its final state.
    pub state: TaskState,
    /// Gate attempts used.
    pub attempts: u32,
    /// Error retries used.
    pub retries: u32,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// Its output, when complete.
    pub output: Option<Value>,
}

/// One compensation run during a rollback.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompensationReport {
    /// The task undone.
    pub task: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Its output or error.
    pub detail: String,
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// The run.
    pub run_id: String,
    /// The plan's name.
    pub plan: String,
    /// How it ended.
    pub status: RunStatus,
    /// Every task, in plan order.
    pub tasks: Vec<TaskReport>,
    /// Compensations, in the order they ran.
    pub compensations: Vec<CompensationReport>,
    /// Wall time of this process's part of the run.
    pub duration: Duration,
}

impl RunReport {
    /// The report of a task.
    pub fn task(&self, id: &str) -> Option<&TaskReport> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// One line per task that is not COMPLETE, with its reason.
    pub fn problems(&self) -> Vec<String> {
        self.tasks
            .iter()
            .filter(|t| t.state != TaskState::Complete)
            .map(|t| {
                format!(
                    "{}: {:?}{}",
                    t.id,
                    t.state,
                    t.reason
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }
}

#[derive(Serialize, Deserialize)]
enum StoredRun {
    V1(RunRecordV1),
    V2(RunRecordV2),
    V3(RunRecord),
}

/// A run as the first version persisted it (read from older stores only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct RunRecordV1 {
    plan_name: String,
    plan_hash: String,
    source: String,
    status: RunStatus,
    started_ms: i64,
}

/// Why a run stopped dispatching before its end: it is rolling back, or rolled back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) enum Stopping {
    /// A task failed for good (the run's failure).
    Failed(String),
    /// The run was cancelled.
    Cancelled,
}

/// A run as the second version persisted it: no end time (read from older stores only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct RunRecordV2 {
    plan_name: String,
    plan_hash: String,
    source: String,
    status: RunStatus,
    started_ms: i64,
    plan_text: Option<String>,
    stopping: Option<Stopping>,
}

/// A run as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct RunRecord {
    pub plan_name: String,
    pub plan_hash: String,
    pub source: String,
    pub status: RunStatus,
    pub started_ms: i64,
    /// The plan as written, when the caller gave it ([`super::RunOptions::plan_text`]).
    pub plan_text: Option<String>,
    /// Set, in the same commit as the failing task's record (or on a cancel), when the run
    /// starts rolling back: a resume then finishes the rollback instead of running tasks again.
    pub stopping: Option<Stopping>,
    /// When the run ended (milliseconds since the epoch), saved with its final status; `None`
    /// while it runs, for a run killed before its end, and for runs older stores saved.
    pub finished_ms: Option<i64>,
}

impl From<RunRecordV1> for RunRecord {
    fn from(old: RunRecordV1) -> Self {
        RunRecordV2 {
            plan_name: old.plan_name,
            plan_hash: old.plan_hash,
            source: old.source,
            status: old.status,
            started_ms: old.started_ms,
            plan_text: None,
            stopping: None,
        }
        .into()
    }
}

impl From<RunRecordV2> for RunRecord {
    fn from(old: RunRecordV2) -> Self {
        RunRecord {
            plan_name: old.plan_name,
            plan_hash: old.plan_hash,
            source: old.source,
            status: old.status,
            started_ms: old.started_ms,
            plan_text: old.plan_text,
            stopping: old.stopping,
            finished_ms: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
enum StoredTask {
    V1(TaskRecordV1),
    V2(TaskRecordV2),
    V3(TaskRecordV3),
    V4(TaskRecordV4),
    V5(TaskRecord),
}

/// How long a task's attempts took, each from its dispatch to its verdict (context, tool call
/// and gates), as the Orchestrator measured them. Saved with the task, so a finished run's
/// dashboard shows each tool's latency. An attempt cancelled before its verdict is not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptTimes {
    /// Attempts measured.
    pub count: u32,
    /// Their total, in microseconds.
    pub total_us: u64,
    /// The longest, in microseconds.
    pub longest_us: u64,
}

impl AttemptTimes {
    /// Counts one more attempt that took `elapsed`.
    pub(crate) fn add(&mut self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.count = self.count.saturating_add(1);
        self.total_us = self.total_us.saturating_add(us);
        self.longest_us = self.longest_us.max(us);
    }
}

/// A task as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct TaskRecord {
    pub state: TaskState,
    pub attempt: u32,
    pub retries: u32,
    pub feedback: String,
    pub reason: Option<String>,
    pub output_json: Option<String>,
    pub attempt_times: AttemptTimes,
    /// The result cache's key of the call that completed the task (a `cacheable` task's): its
    /// compensation drops that entry, or a later run would be handed the undone result without
    /// the call's effect.
    pub result_cache_key: Option<u128>,
    /// The declared fixes tried so far, by index in the task's `fixes`, in the order tried: a
    /// resume applies them again to the task's args, so a task that was trying a fix when the
    /// process stopped is not run again without it.
    pub fixes_tried: Vec<u32>,
    /// The fix the attempt in flight was trying, and the failure it answers (its lesson is
    /// recorded once the outcome is known).
    pub fix_trial: Option<(u32, String)>,
    /// When a retry waiting out its backoff is due (Unix milliseconds): a resume waits until
    /// then rather than call a rate-limited tool again at once.
    pub retry_at_ms: Option<i64>,
}

/// A task as persisted before a retry's due time was kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct TaskRecordV4 {
    pub state: TaskState,
    pub attempt: u32,
    pub retries: u32,
    pub feedback: String,
    pub reason: Option<String>,
    pub output_json: Option<String>,
    pub attempt_times: AttemptTimes,
    pub result_cache_key: Option<u128>,
    pub fixes_tried: Vec<u32>,
    pub fix_trial: Option<(u32, String)>,
}

impl From<TaskRecordV4> for TaskRecord {
    fn from(old: TaskRecordV4) -> Self {
        TaskRecord {
            state: old.state,
            attempt: old.attempt,
            retries: old.retries,
            feedback: old.feedback,
            reason: old.reason,
            output_json: old.output_json,
            attempt_times: old.attempt_times,
            result_cache_key: old.result_cache_key,
            fixes_tried: old.fixes_tried,
            fix_trial: old.fix_trial,
            retry_at_ms: None,
        }
    }
}

/// A task as persisted before its fixes were kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct TaskRecordV3 {
    pub state: TaskState,
    pub attempt: u32,
    pub retries: u32,
    pub feedback: String,
    pub reason: Option<String>,
    pub output_json: Option<String>,
    pub attempt_times: AttemptTimes,
    pub result_cache_key: Option<u128>,
}

impl From<TaskRecordV3> for TaskRecord {
    fn from(old: TaskRecordV3) -> Self {
        TaskRecord {
            state: old.state,
            attempt: old.attempt,
            retries: old.retries,
            feedback: old.feedback,
            reason: old.reason,
            output_json: old.output_json,
            attempt_times: old.attempt_times,
            result_cache_key: old.result_cache_key,
            fixes_tried: Vec::new(),
            fix_trial: None,
            retry_at_ms: None,
        }
    }
}

/// A task's saved output (its record's `output_json`), parsed. Unreadable JSON is an error
/// naming the task, not "no output": a dependent would otherwise be rendered (or a compensation
/// run) without its input.
pub(crate) fn parse_output(json: Option<&str>, task: &str) -> Result<Option<Value>, StoreError> {
    json.map(serde_json::from_str)
        .transpose()
        .map_err(|e| StoreError::Codec(format!("the saved output of task {task} is not JSON: {e}")))
}

impl From<TaskRecordV1> for TaskRecord {
    fn from(old: TaskRecordV1) -> Self {
        TaskRecordV2 {
            state: old.state,
            attempt: old.attempt,
            retries: old.retries,
            feedback: old.feedback,
            reason: old.reason,
            output_json: old.output_json,
            attempt_times: AttemptTimes::default(),
        }
        .into()
    }
}

impl From<TaskRecordV2> for TaskRecord {
    fn from(old: TaskRecordV2) -> Self {
        TaskRecordV3 {
            state: old.state,
            attempt: old.attempt,
            retries: old.retries,
            feedback: old.feedback,
            reason: old.reason,
            output_json: old.output_json,
            attempt_times: old.attempt_times,
            result_cache_key: None,
        }
        .into()
    }
}

/// A task as persisted before the result cache's key was kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct TaskRecordV2 {
    pub state: TaskState,
    pub attempt: u32,
    pub retries: u32,
    pub feedback: String,
    pub reason: Option<String>,
    pub output_json: Option<String>,
    pub attempt_times: AttemptTimes,
}

/// A task as persisted before attempt times were kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct TaskRecordV1 {
    pub state: TaskState,
    pub attempt: u32,
    pub retries: u32,
    pub feedback: String,
    pub reason: Option<String>,
    pub output_json: Option<String>,
}

pub(crate) fn run_key(run_id: &str) -> String {
    format!("run:{run_id}")
}

pub(crate) fn task_key(run_id: &str, task: &str) -> String {
    format!("task:{run_id}/{task}")
}

fn codec_error(what: &str, e: postcard::Error) -> StoreError {
    StoreError::Codec(format!("{what}: {e}"))
}

pub(crate) fn encode_run(record: &RunRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(&StoredRun::V3(record.clone())).map_err(|e| codec_error("encode run", e))
}

pub(crate) fn decode_run(id: &str, bytes: &[u8]) -> Result<RunRecord, StoreError> {
    match postcard::from_bytes::<StoredRun>(bytes) {
        Ok(StoredRun::V1(old)) => Ok(old.into()),
        Ok(StoredRun::V2(old)) => Ok(old.into()),
        Ok(StoredRun::V3(record)) => Ok(record),
        Err(e) => Err(codec_error(&format!("decode run {id}"), e)),
    }
}

pub(crate) fn encode_task(record: &TaskRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(&StoredTask::V5(record.clone())).map_err(|e| codec_error("encode task", e))
}

/// Every run in the store, `(run id, record)`, oldest first (ids sort by time).
pub(crate) fn load_runs(store: &Store) -> Result<Vec<(String, RunRecord)>, StoreError> {
    store
        .run_records("run:")?
        .into_iter()
        .map(|(key, bytes)| {
            let id = key.trim_start_matches("run:").to_owned();
            let record = decode_run(&id, &bytes)?;
            Ok((id, record))
        })
        .collect()
}

/// One run's record, if the store holds it.
pub(crate) fn load_run(store: &Store, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
    let key = run_key(run_id);
    store
        .run_records(&key)?
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, bytes)| decode_run(run_id, &bytes))
        .transpose()
}

/// The persisted tasks of a run, by task id.
pub(crate) fn load_tasks(
    store: &Store,
    run_id: &str,
) -> Result<Vec<(String, TaskRecord)>, StoreError> {
    let prefix = format!("task:{run_id}/");
    store
        .run_records(&prefix)?
        .into_iter()
        .map(|(key, bytes)| {
            let task = key[prefix.len()..].to_owned();
            let record = decode_task(run_id, &task, &bytes)?;
            Ok((task, record))
        })
        .collect()
}

fn decode_task(run_id: &str, task: &str, bytes: &[u8]) -> Result<TaskRecord, StoreError> {
    match postcard::from_bytes::<StoredTask>(bytes) {
        Ok(StoredTask::V1(old)) => Ok(old.into()),
        Ok(StoredTask::V2(old)) => Ok(old.into()),
        Ok(StoredTask::V3(old)) => Ok(old.into()),
        Ok(StoredTask::V4(old)) => Ok(old.into()),
        Ok(StoredTask::V5(record)) => Ok(record),
        Err(e) => Err(codec_error(
            &format!("decode task {task} of run {run_id}"),
            e,
        )),
    }
}

/// A run as saved in the store (for `tetrarch runs` and resume checks).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SavedRun {
    /// The run.
    pub run_id: String,
    /// The plan's name.
    pub plan: String,
    /// Where the plan was read from.
    pub source: String,
    /// Its status (`running` for a run killed before it ended).
    pub status: RunStatus,
    /// Each saved task and its state, by task id.
    pub tasks: Vec<(String, TaskState)>,
    /// The plan as written, when the run was started with it (`tetrarch run` always is).
    pub plan_text: Option<String>,
    /// When the run first started, in milliseconds since the epoch (a resume keeps it).
    pub started_ms: i64,
    /// When it ended, in milliseconds since the epoch: `None` while it runs, for a run killed
    /// before its end, and for runs saved by an older version of tetrarch.
    pub finished_ms: Option<i64>,
}

impl SavedRun {
    /// From its first start to its end, including any time between a kill and its resume;
    /// `None` until it ends.
    pub fn duration(&self) -> Option<Duration> {
        let ms = self.finished_ms?.checked_sub(self.started_ms)?;
        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }
}

/// Every run in the store, oldest first, with its tasks' states.
pub fn saved_runs(store: &Store) -> Result<Vec<SavedRun>, StoreError> {
    load_runs(store)?
        .into_iter()
        .map(|(run_id, record)| {
            let tasks = load_tasks(store, &run_id)?
                .into_iter()
                .map(|(id, task)| (id, task.state))
                .collect();
            Ok(SavedRun {
                plan: record.plan_name,
                source: record.source,
                status: record.status,
                tasks,
                plan_text: record.plan_text,
                started_ms: record.started_ms,
                finished_ms: record.finished_ms,
                run_id,
            })
        })
        .collect()
}

/// One task of a saved run as its last record left it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SavedTask {
    /// The task's id.
    pub id: String,
    /// Its state.
    pub state: TaskState,
    /// Its latest attempt (a task that never started is at its first).
    pub attempt: u32,
    /// Why it failed, was skipped or cancelled, when it did.
    pub reason: Option<String>,
    /// How long its attempts took (none counted in a store written before they were kept).
    pub attempt_times: AttemptTimes,
}

/// The tasks of one saved run, with their attempts and reasons (what [`saved_runs`] leaves out).
pub fn saved_tasks(store: &Store, run_id: &str) -> Result<Vec<SavedTask>, StoreError> {
    Ok(load_tasks(store, run_id)?
        .into_iter()
        .map(|(id, record)| SavedTask {
            id,
            state: record.state,
            attempt: record.attempt,
            reason: record.reason,
            attempt_times: record.attempt_times,
        })
        .collect())
}

/// The saved output of one task of a run, when it completed.
///
/// # Errors
/// The store could not be read, a record does not decode, or the saved output is not JSON
/// ([`StoreError::Codec`], naming the task).
pub fn saved_output(store: &Store, run_id: &str, task: &str) -> Result<Option<Value>, StoreError> {
    match load_tasks(store, run_id)?
        .into_iter()
        .find(|(id, _)| id == task)
    {
        Some((_, record)) => parse_output(record.output_json.as_deref(), task),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A saved output that is not JSON fails with the task named; it is not taken for
    /// a task without output (its dependents would run without their input).
    #[test]
    fn an_unreadable_saved_output_is_an_error_naming_the_task() {
        assert_eq!(parse_output(None, "t").unwrap(), None);
        assert_eq!(
            parse_output(Some("{\"ok\":true}"), "t").unwrap(),
            Some(serde_json::json!({ "ok": true }))
        );
        let error = parse_output(Some("{\"ok\":tr"), "render")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("saved output of task render is not JSON"),
            "{error}"
        );
    }

    /// The saved records of run `run_id`'s tasks `tasks` (id, record), its own record put back to
    /// unfinished, as a process killed mid-run left them.
    async fn save_as_killed(store: &Store, run_id: &str, tasks: Vec<(&str, TaskRecord)>) {
        let mut run = load_run(store, run_id).unwrap().unwrap();
        run.status = crate::agents::RunStatus::Running;
        run.finished_ms = None;
        let mut records = vec![(run_key(run_id), encode_run(&run).unwrap())];
        for (task, record) in tasks {
            records.push((task_key(run_id, task), encode_task(&record).unwrap()));
        }
        store.put_run_records(records).await.unwrap();
    }

    /// A store in `dir` and a runtime on it with a native pool `fn` of `natives`.
    async fn native_runtime(
        dir: &std::path::Path,
        natives: crate::session::NativeRegistry,
    ) -> (Store, crate::agents::Runtime) {
        use crate::agents::{ActorsConfig, Runtime, RuntimeOptions};
        use crate::session::{PoolDef, PoolKind};
        let store =
            Store::open(dir.join("store.redb"), crate::store::StoreConfig::default()).unwrap();
        let mut actors = ActorsConfig::embedded().unwrap();
        actors
            .executor
            .pools
            .insert("fn".to_owned(), PoolDef::new(PoolKind::Native));
        let mut options = RuntimeOptions::new(store.clone(), actors);
        options.natives = natives;
        (store, Runtime::start(options).await.unwrap())
    }

    /// A resume whose saved output of a completed task is not JSON fails as a resume
    /// ([`AgentError::Resume`](crate::agents::AgentError::Resume)), naming the task, and calls
    /// nothing: the task after it, not reached yet, would otherwise run as if that task had no
    /// output.
    #[tokio::test]
    async fn a_resume_with_an_unreadable_saved_output_fails_naming_the_task() {
        use crate::agents::{AgentError, RunOptions};
        use crate::session::NativeRegistry;
        let dir = tempfile::tempdir().unwrap();
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut natives = NativeRegistry::new();
        let counted = std::sync::Arc::clone(&calls);
        natives.register("echo", move |args: Value| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok(args) }
        });
        let (store, runtime) = native_runtime(dir.path(), natives).await;
        let plan = crate::plan::Plan::from_toml(
            "name = \"p\"\n[[task]]\nid = \"a\"\ntool = \"fn.echo\"\nargs = { x = 1 }\n\
             [[task]]\nid = \"b\"\ntool = \"fn.echo\"\ndeps = [\"a\"]\n\
             args = { y = 2 }\n",
            "p.toml",
        )
        .unwrap();
        let run = RunOptions {
            run_id: Some("r".to_owned()),
            plan_hash: "h".to_owned(),
            base_dir: dir.path().to_path_buf(),
            ..RunOptions::default()
        };
        let report = runtime.run(plan.clone(), run.clone()).await.unwrap();
        assert_eq!(report.status, RunStatus::Complete);
        let (_, mut record) = load_tasks(&store, "r")
            .unwrap()
            .into_iter()
            .find(|(id, _)| id == "a")
            .unwrap();
        record.output_json = Some("{\"x\":".to_owned());
        // b as if the run had stopped before it: a resume that took a as having no output
        // would run it.
        let pending = TaskRecord {
            state: TaskState::Pending,
            attempt: 0,
            retries: 0,
            feedback: String::new(),
            reason: None,
            output_json: None,
            attempt_times: AttemptTimes::default(),
            result_cache_key: None,
            fixes_tried: Vec::new(),
            fix_trial: None,
            retry_at_ms: None,
        };
        save_as_killed(&store, "r", vec![("a", record), ("b", pending)]).await;
        let made = calls.load(std::sync::atomic::Ordering::SeqCst);
        let resume = RunOptions {
            resume: true,
            ..run
        };
        let error = runtime.run(plan, resume).await;
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), made);
        let error = error.unwrap_err();
        assert!(
            matches!(&error, AgentError::Resume { run_id, reason }
                if run_id == "r" && reason.contains("saved output of task a is not JSON")),
            "{error}"
        );
        runtime.shutdown().await;
    }

    /// A task that was trying a declared fix when the process stopped goes on with the fix on
    /// resume: it used to run with its args as written again (and then apply the fix anew).
    #[tokio::test]
    async fn a_resume_during_a_fix_trial_runs_the_task_with_the_fix() {
        use crate::agents::{RunOptions, RunStatus};
        use crate::session::NativeRegistry;
        let dir = tempfile::tempdir().unwrap();
        let modes = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
        let mut natives = NativeRegistry::new();
        let seen = std::sync::Arc::clone(&modes);
        natives.register("render", move |args: Value| {
            let mode = args["mode"].as_str().unwrap_or("").to_owned();
            seen.lock().push(mode.clone());
            async move {
                if mode == "safe" {
                    Ok(serde_json::json!({ "mode": mode }))
                } else {
                    Err("the renderer needs a fix".to_owned())
                }
            }
        });
        let (store, runtime) = native_runtime(dir.path(), natives).await;
        let plan = crate::plan::Plan::from_toml(
            "name = \"p\"\n[[task]]\nid = \"a\"\ntool = \"fn.render\"\n\
             args = { mode = \"fast\" }\n\
             fixes = [{ when = \"needs a fix\", args = { mode = \"safe\" } }]\n",
            "p.toml",
        )
        .unwrap();
        let run = RunOptions {
            run_id: Some("r".to_owned()),
            plan_hash: "h".to_owned(),
            base_dir: dir.path().to_path_buf(),
            ..RunOptions::default()
        };
        let report = runtime.run(plan.clone(), run.clone()).await.unwrap();
        assert_eq!(report.status, RunStatus::Complete);
        assert_eq!(*modes.lock(), ["fast", "safe"]);
        // `a` as the fix trial's dispatch saved it, the process stopping before its verdict.
        let (_, mut record) = load_tasks(&store, "r")
            .unwrap()
            .into_iter()
            .find(|(id, _)| id == "a")
            .unwrap();
        assert_eq!(record.fixes_tried, [0]);
        record.state = TaskState::Running;
        record.output_json = None;
        record.fix_trial = Some((0, "the renderer needs a fix".to_owned()));
        save_as_killed(&store, "r", vec![("a", record)]).await;
        modes.lock().clear();
        let resume = RunOptions {
            resume: true,
            ..run
        };
        let report = runtime.run(plan, resume).await.unwrap();
        assert_eq!(report.status, RunStatus::Complete);
        assert_eq!(*modes.lock(), ["safe"]);
        runtime.shutdown().await;
    }

    #[test]
    fn a_first_version_run_record_still_reads() {
        let old = RunRecordV1 {
            plan_name: "p".into(),
            plan_hash: "h".into(),
            source: "p.toml".into(),
            status: RunStatus::Running,
            started_ms: 7,
        };
        let bytes = postcard::to_stdvec(&StoredRun::V1(old)).unwrap();
        let read = decode_run("r", &bytes).unwrap();
        assert_eq!(read.plan_name, "p");
        assert_eq!(read.status, RunStatus::Running);
        assert_eq!((read.plan_text, read.stopping), (None, None));
        // The second version reads with no end time.
        let second = RunRecordV2 {
            plan_name: "p".into(),
            plan_hash: "h".into(),
            source: "p.toml".into(),
            status: RunStatus::Complete,
            started_ms: 7,
            plan_text: Some("name = \"p\"".into()),
            stopping: Some(Stopping::Cancelled),
        };
        let bytes = postcard::to_stdvec(&StoredRun::V2(second)).unwrap();
        let read = decode_run("r", &bytes).unwrap();
        assert_eq!(read.plan_text.as_deref(), Some("name = \"p\""));
        assert_eq!(
            (read.status, read.stopping.clone(), read.finished_ms),
            (RunStatus::Complete, Some(Stopping::Cancelled), None)
        );
        // The current version round-trips with its new fields.
        let current = RunRecord {
            stopping: Some(Stopping::Failed("task a failed: boom".into())),
            finished_ms: Some(1_234),
            ..read
        };
        assert_eq!(
            decode_run("r", &encode_run(&current).unwrap()).unwrap(),
            current
        );
        assert!(decode_run("r", &[9, 9]).is_err());
    }

    #[test]
    fn older_task_records_read_with_no_attempt_times_cache_key_or_fixes() {
        let old = TaskRecordV1 {
            state: TaskState::Complete,
            attempt: 2,
            retries: 1,
            feedback: "too dark".into(),
            reason: None,
            output_json: Some("{\"ok\":true}".into()),
        };
        let bytes = postcard::to_stdvec(&StoredTask::V1(old)).unwrap();
        let read = decode_task("r", "t", &bytes).unwrap();
        assert_eq!(
            (read.state, read.attempt, read.retries),
            (TaskState::Complete, 2, 1)
        );
        assert_eq!(read.output_json.as_deref(), Some("{\"ok\":true}"));
        assert_eq!(read.attempt_times, AttemptTimes::default());
        // The current version round-trips with its attempt times.
        let mut times = AttemptTimes::default();
        times.add(Duration::from_micros(300));
        times.add(Duration::from_micros(1200));
        assert_eq!(
            (times.count, times.total_us, times.longest_us),
            (2, 1500, 1200)
        );
        // The second version reads with no result cache key.
        let second = TaskRecordV2 {
            state: read.state,
            attempt: read.attempt,
            retries: read.retries,
            feedback: read.feedback.clone(),
            reason: None,
            output_json: read.output_json.clone(),
            attempt_times: times,
        };
        let bytes = postcard::to_stdvec(&StoredTask::V2(second)).unwrap();
        let read = decode_task("r", "t", &bytes).unwrap();
        assert_eq!(read.attempt_times, times);
        assert_eq!(read.result_cache_key, None);
        // The third version reads with no fixes tried.
        let third = TaskRecordV3 {
            state: read.state,
            attempt: read.attempt,
            retries: read.retries,
            feedback: read.feedback.clone(),
            reason: None,
            output_json: read.output_json.clone(),
            attempt_times: times,
            result_cache_key: Some(u128::MAX - 7),
        };
        let bytes = postcard::to_stdvec(&StoredTask::V3(third)).unwrap();
        let read = decode_task("r", "t", &bytes).unwrap();
        assert_eq!(read.result_cache_key, Some(u128::MAX - 7));
        assert_eq!((read.fixes_tried.len(), read.fix_trial.clone()), (0, None));
        let fourth = TaskRecordV4 {
            state: read.state,
            attempt: read.attempt,
            retries: read.retries,
            feedback: read.feedback.clone(),
            reason: None,
            output_json: read.output_json.clone(),
            attempt_times: times,
            result_cache_key: read.result_cache_key,
            fixes_tried: vec![1, 0],
            fix_trial: Some((0, "render timed out".into())),
        };
        let bytes = postcard::to_stdvec(&StoredTask::V4(fourth)).unwrap();
        let read = decode_task("r", "t", &bytes).unwrap();
        assert_eq!(
            (read.fixes_tried.clone(), read.retry_at_ms),
            (vec![1, 0], None)
        );
        let current = TaskRecord {
            retry_at_ms: Some(1_765_000_000_000),
            ..read
        };
        let bytes = encode_task(&current).unwrap();
        assert_eq!(decode_task("r", "t", &bytes).unwrap(), current);
        let damaged = decode_task("r", "t", &[9, 9]).unwrap_err().to_string();
        assert!(damaged.contains("decode task t of run r"), "{damaged}");
    }

    #[tokio::test]
    async fn a_run_record_that_does_not_decode_does_not_stop_another_plan_resuming() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), Default::default()).unwrap();
        let running = RunRecord {
            plan_name: "p".into(),
            plan_hash: "h".into(),
            source: "p.toml".into(),
            status: RunStatus::Running,
            started_ms: 7,
            plan_text: None,
            stopping: None,
            finished_ms: None,
        };
        store
            .put_run_records(vec![
                (run_key("good"), encode_run(&running).unwrap()),
                (run_key("damaged"), vec![9, 9]),
            ])
            .await
            .unwrap();
        assert_eq!(
            crate::agents::Runtime::resumable_run(&store, "h").unwrap(),
            Some("good".to_owned())
        );
    }
}
