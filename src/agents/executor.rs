//! The Executor: runs each attempt's tool call through its session pool, many at once.
//!
//! Each call runs as a task of the actor (so killing the actor aborts them, and the pools'
//! own limits decide the concurrency); the outcome goes on to the Reviewer. Results of tasks
//! marked `cacheable` are kept in the [`ContextCache`] (category `tool_result`, persisted), keyed
//! by pool, tool and rendered arguments. Outputs and errors become memories of the run.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use tracing::Instrument;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::AgentKind;
use super::config::ExecutorConfig;
use super::mailbox::Envelope;
use super::optimizer::run_namespace;
use super::pipeline::{Attempt, ExecutorMsg, Outcome, Peers, Purpose, ReviewerMsg, injected_fault};
use super::runtime::PoolSet;
use crate::lessons::Lessons;
use crate::permissions::{ApprovalHandler, Decision, List, ToolCall, Verdict};
use crate::session::{PoolDef, PoolKind, SessionError, ToolOutcome, ToolRequest};
use crate::store::{
    CacheCategory, CacheError, CacheKey, ContextCache, MemoryType, NewMemory, Store,
};

/// Longest output kept in a memory.
const MEMORY_CAP: usize = 8 * 1024;

/// The Executor actor.
pub(crate) struct Executor;

/// What the supervisor starts it with.
#[derive(Clone)]
pub(crate) struct ExecutorArgs {
    pub peers: Peers,
    pub store: Store,
    pub pools: PoolSet,
    pub cache: ContextCache,
    pub config: ExecutorConfig,
    pub approval: Arc<dyn ApprovalHandler + Send + Sync>,
    /// Bounds the approval handler's calls out at once (each holds a blocking thread while it
    /// waits, for a person perhaps): hundreds of unanswered questions held every thread of the
    /// blocking pool, which the permission checks and the Optimizer need. Per runtime, across
    /// restarts.
    pub approvals: Arc<tokio::sync::Semaphore>,
    pub lessons: Arc<Lessons>,
    /// The agents' background writes: an outcome's memory counts among them until it is
    /// queued (see [`OutcomeRecord`]), so [`super::Runtime::settle`] waits for it.
    pub background: TaskTracker,
    /// Dropped with the agent's state, after the fields above (declared last: fields drop in
    /// order, and the store's last handle closes the file as it drops). See
    /// [`super::supervisor::StateToken`].
    pub _token: super::supervisor::StateToken,
}

pub(crate) struct ExecutorState {
    shared: Arc<ExecutorArgs>,
    calls: JoinSet<()>,
    runs: HashMap<tokio::task::Id, (Arc<str>, AbortHandle)>,
    /// Runs cancelled lately (the newest [`CANCELLED_RUNS`]): their task attempts still on
    /// their way (queued at the Optimizer, or in this mailbox) are dropped, not run. Their
    /// compensations still run.
    cancelled: std::collections::VecDeque<Arc<str>>,
    /// Outcome records on their way to [`record_when_quiet`].
    records: tokio::sync::mpsc::Sender<OutcomeRecord>,
}

/// How many cancelled runs the Executor remembers.
const CANCELLED_RUNS: usize = 64;

/// A cacheable outcome (postcard cannot carry `serde_json::Value`, so JSON stays text).
#[derive(Serialize, Deserialize)]
struct CachedOutcome {
    exit_status: Option<i32>,
    stdout: String,
    stderr: String,
    json: Option<String>,
    truncated: bool,
}

fn retryable(error: &SessionError) -> bool {
    match error {
        SessionError::UnknownTool { .. }
        | SessionError::InvalidArguments { .. }
        | SessionError::ToolRejected { .. }
        | SessionError::InvalidConfig { .. }
        | SessionError::PermissionDenied { .. } => false,
        // A program that is not there, or may not be run, will not be there on a retry either,
        // nor will the same arguments fit or become valid (running out of processes or file
        // handles might pass).
        SessionError::Spawn { source, .. } => !matches!(
            source.kind(),
            std::io::ErrorKind::NotFound
                | std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::ArgumentListTooLong
                | std::io::ErrorKind::InvalidInput
        ),
        _ => true,
    }
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The call as the permission rules see it: `Bash` with the command line for a process pool
/// (the script itself for `sh -c` / `bash -c` pools), `mcp__POOL__TOOL` with the arguments for
/// an MCP pool (`extra` is a process call's `argv`, as the process will get it). Native tools
/// and scorers run in-process and are not checked.
fn permission_call(
    def: &PoolDef,
    attempt: &Attempt,
    args: &serde_json::Value,
    extra: &[String],
) -> Option<ToolCall> {
    match def.kind {
        PoolKind::Process => {
            let shell = runs_script(&def.command);
            let line = || {
                def.command
                    .iter()
                    .chain(extra)
                    .map(|w| shell_word(w))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            // Variables the process gets from its pool's `env` and the call's own (`args.env`,
            // which wins) that could change what runs (`PATH`, `LD_PRELOAD`, `BASH_ENV`):
            // judged as `env NAME=value …` around the command, so allow rules see them as they
            // see leading assignments.
            let mut set: BTreeMap<&str, String> = def
                .env
                .iter()
                .map(|(name, value)| (name.as_str(), value.clone()))
                .collect();
            let call_env = args.get("env").and_then(|e| e.as_object());
            for (name, value) in call_env.into_iter().flatten() {
                if let Some(text) = crate::session::process::value_text(value) {
                    set.insert(name, text);
                }
            }
            let variables: Vec<String> = set
                .into_iter()
                .filter(|(name, _)| !crate::permissions::is_harmless_variable(name))
                .map(|(name, text)| shell_word(&format!("{name}={text}")))
                .collect();
            // `sh -c SCRIPT NAME ARGS...`: the script is the command; the rest are its data.
            let command = match (shell && !extra.is_empty(), variables.is_empty()) {
                (true, true) => extra[0].clone(),
                (true, false) => format!(
                    "env {} {} {}",
                    variables.join(" "),
                    def.command
                        .iter()
                        .map(|w| shell_word(w))
                        .collect::<Vec<_>>()
                        .join(" "),
                    shell_word(&extra[0])
                ),
                (false, true) => line(),
                (false, false) => format!("env {} {}", variables.join(" "), line()),
            };
            Some(ToolCall::from_text("Bash", &command))
        }
        PoolKind::Mcp => Some(ToolCall {
            tool: format!("mcp__{}__{}", attempt.call().pool, attempt.call().tool),
            input: args.clone(),
        }),
        PoolKind::Native | PoolKind::Scorer => None,
    }
}

/// Whether a pool's command is a shell taking its script as the next word: `sh -c`, `bash -lc`,
/// `/usr/bin/bash -e -c` (a shell by its file name, then short options, the last with `c`).
/// The rules then judge the script itself, not the shell's command line.
fn runs_script(command: &[String]) -> bool {
    let Some((program, options)) = command.split_first() else {
        return false;
    };
    let name = program.rsplit('/').next().unwrap_or(program);
    let short = |o: &String| o.len() > 1 && o.starts_with('-') && !o.starts_with("--");
    ["sh", "bash", "dash", "zsh", "ksh"].contains(&name)
        && options.iter().all(short)
        && options.last().is_some_and(|o| o.contains('c'))
}

/// Approval calls a runtime has out at once (see [`ExecutorArgs::approvals`]).
pub(crate) const APPROVALS_AT_ONCE: usize = 16;

/// Checks the call against the run's rules; `Err` names the rule that denied it.
async fn check_permission(
    shared: &ExecutorArgs,
    attempt: &Attempt,
    def: &PoolDef,
    args: &serde_json::Value,
    argv: &[String],
) -> Result<(), String> {
    let Some(call) = permission_call(def, attempt, args, argv) else {
        return Ok(());
    };
    let subject = format!("{} {}", call.tool, call.input);
    // A tool name decides inline (a microsecond, no I/O). A shell command may be parsed, which
    // waits on a parser thread (tens of µs, up to its 500 ms deadline), so it is decided off the
    // async threads, as is an `ask`, whose approval handler may prompt on the terminal.
    let decided = match &attempt.permissions {
        Some(engine) if call.tool == "Bash" => {
            let (engine, command) = (Arc::clone(engine), call.clone());
            tokio::task::spawn_blocking(move || engine.decide(&command))
                .await
                .map_err(|e| format!("permission check failed: {e}"))?
        }
        Some(engine) => engine.decide(&call),
        None => Decision {
            verdict: Verdict::Ask,
            rule: None,
        },
    };
    let decision = if decided.verdict == Verdict::Ask {
        let approval = Arc::clone(&shared.approval);
        // Waited for here, not on the blocking pool (see `ExecutorArgs::approvals`).
        let _turn = shared
            .approvals
            .acquire()
            .await
            .map_err(|e| format!("permission check failed: {e}"))?;
        tokio::task::spawn_blocking(move || {
            let verdict = if approval.approve(&call, &decided) {
                Verdict::Allow
            } else {
                Verdict::Deny
            };
            Decision { verdict, ..decided }
        })
        .await
        .map_err(|e| format!("permission check failed: {e}"))?
    } else {
        decided
    };
    if decision.verdict == Verdict::Allow {
        return Ok(());
    }
    let declined = shared.approval.declined();
    Err(match decision.rule {
        Some(rule) if rule.list == List::Deny => format!(
            "permission denied: {subject} is denied by rule {}[{}] `{}`",
            rule.list, rule.index, rule.text
        ),
        // Only plan mode asks where an allow rule matched.
        Some(rule) if rule.list == List::Allow => format!(
            "permission denied: {subject} needs approval in plan mode, which asks for anything \
             but a read even where a rule allows it ({}[{}] `{}`): {declined}",
            rule.list, rule.index, rule.text
        ),
        Some(rule) => format!(
            "permission denied: {subject} needs approval (rule {}[{}] `{}`): {declined}",
            rule.list, rule.index, rule.text
        ),
        None => format!("permission denied: no rule allows {subject} ({declined})"),
    })
}

/// A call [`check_call`] let through: the pool to make it on, and the pool's call timeout
/// (for a task that gives none).
struct Checked {
    pool: crate::session::Pool,
    call_timeout: std::time::Duration,
    /// Set by [`make_call`] when the run stopped before a session was free: no call was made.
    not_started: std::sync::atomic::AtomicBool,
}

/// Everything that must hold before a call is made, or its result served from the cache: the
/// pool exists, the args are well formed, and the permission rules allow the call.
async fn check_call(
    shared: &ExecutorArgs,
    attempt: &Attempt,
    args: &serde_json::Value,
) -> Result<Checked, SessionError> {
    let Some((pool, def)) = shared
        .pools
        .get_with_def(&attempt.run_id, &attempt.call().pool)
    else {
        return Err(SessionError::InvalidConfig {
            detail: format!("no pool named {:?}", attempt.call().pool),
        });
    };
    // Parsed before the rules see the command, so a malformed `argv` or `env` is reported as
    // such.
    let argv = match def.kind {
        PoolKind::Process => {
            crate::session::process::call_env(&attempt.call().tool, args)?;
            crate::session::process::extra_argv(&attempt.call().tool, args)?
        }
        _ => Vec::new(),
    };
    // A shell pool's script is `argv[0]`; one that starts with `-` or `+` is read by the shell
    // as an option, and the next word runs as the script, unseen by the rules.
    if def.kind == PoolKind::Process
        && runs_script(&def.command)
        && argv
            .first()
            .is_some_and(|script| script.starts_with(['-', '+']))
    {
        return Err(SessionError::InvalidArguments {
            tool: attempt.call().tool.clone(),
            detail: format!(
                "`argv[0]` {:?} is the script of a shell pool, and a shell reads a script that \
                 starts with `-` or `+` as an option",
                argv[0]
            ),
        });
    }
    // A warm-up call is the pool's own configuration, made without rules as at the pool's start.
    if attempt.purpose != Purpose::WarmUp
        && let Err(detail) = check_permission(shared, attempt, &def, args, &argv).await
    {
        return Err(SessionError::PermissionDenied { detail });
    }
    Ok(Checked {
        pool,
        call_timeout: def.call_timeout,
        not_started: std::sync::atomic::AtomicBool::new(false),
    })
}

/// Makes a call [`check_call`] let through.
async fn make_call(
    attempt: &Attempt,
    checked: &Checked,
    args: serde_json::Value,
) -> Result<ToolOutcome, SessionError> {
    let Checked {
        pool,
        call_timeout,
        not_started,
    } = checked;
    let call_timeout = *call_timeout;
    let stdin = args
        .get("stdin")
        .and_then(crate::session::process::value_text)
        .map(String::into_bytes);
    let request = ToolRequest {
        tool: attempt.call().tool.clone(),
        args,
        stdin,
        timeout: attempt.timeout.unwrap_or(call_timeout),
    };
    // In turn, however long the pool's sessions are busy: a plan may hold more tasks than its
    // pool has sessions, and a task must not fail for having waited behind the others.
    // A task's call that has not started when its run stops is not made: "nothing new starts"
    // once a task has failed for good (a wide plan had up to a thousand calls queued).
    let stopped = async {
        match &attempt.stop_starting {
            Some(stop) => stop.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let mut session = tokio::select! {
        biased;
        () = stopped => {
            not_started.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(SessionError::NotStarted {
                tool: attempt.call().to_string(),
            });
        }
        session = pool.acquire_queued() => session?,
    };
    let started = std::time::Instant::now();
    let outcome = session.call(request).await;
    // A warm-up is not a task's call: counted, it would put the histogram ahead of
    // `tetrarch_tool_calls_total`.
    if attempt.purpose != Purpose::WarmUp {
        metrics::histogram!(
            "tetrarch_tool_call_duration_seconds",
            "tool" => attempt.call().to_string(),
            "agent" => AgentKind::Executor.as_str()
        )
        .record(started.elapsed().as_secs_f64());
    }
    outcome
}

/// The call's outcome, the result cache's key when the call is cacheable, and whether the
/// outcome was the cache's (no call was made).
async fn execute(shared: &ExecutorArgs, attempt: &Attempt) -> (Outcome, Option<CacheKey>, bool) {
    // Its run stopped before it came to this call: not even its permission is asked.
    if attempt.run_stopped() {
        let reason = SessionError::NotStarted {
            tool: attempt.call().to_string(),
        };
        let outcome = Outcome::NotStarted {
            reason: reason.to_string(),
        };
        return (outcome, None, false);
    }
    let args = match &attempt.args {
        Some(Ok(args)) => args.clone(),
        Some(Err(e)) => return (not_run(e.clone()), None, false),
        None => return (not_run("args were not rendered".to_owned()), None, false),
    };
    // Checked first, cached or not: a result cached under looser rules is not served under
    // stricter ones.
    let checked = match check_call(shared, attempt, &args).await {
        Ok(checked) => checked,
        Err(e) => {
            let outcome = Outcome::Error {
                retryable: retryable(&e),
                reason: e.to_string(),
            };
            return (outcome, None, false);
        }
    };
    let (result, key, served) = if attempt.task.cacheable && attempt.purpose == Purpose::Task {
        match result_key(shared, attempt, &args) {
            // Boxed: the cache's future is large, and every call's task would carry (and copy
            // on spawn) its size, cached or not.
            Ok(key) => {
                let (result, served) =
                    Box::pin(cached_call(shared, attempt, &checked, args, key)).await;
                (result, Some(key), served)
            }
            Err(e) => (Err((false, format!("cache key: {e}"))), None, false),
        }
    } else {
        let result = make_call(attempt, &checked, args).await;
        (
            result.map_err(|e| (retryable(&e), e.to_string())),
            None,
            false,
        )
    };
    let outcome = match result {
        Ok(outcome) => Outcome::Ran(outcome),
        Err((_, reason))
            if checked
                .not_started
                .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            Outcome::NotStarted { reason }
        }
        Err((retryable, reason)) => Outcome::Error { reason, retryable },
    };
    (outcome, key, served)
}

/// A call that cannot be made (it would fail the same way again).
fn not_run(reason: String) -> Outcome {
    Outcome::Error {
        reason,
        retryable: false,
    }
}

/// The result cache's key of a call: what decides the result besides the args is the pool's
/// kind, command, folder and variables, set (`env`) or passed on from ours (`env_allowlist`,
/// with the values they have now). The cache outlives runs and plans, and two plans (or one plan
/// in two folders: relative paths and a relative `cwd` resolve there) may declare a pool of one
/// name that runs something else.
fn result_key(
    shared: &ExecutorArgs,
    attempt: &Attempt,
    args: &serde_json::Value,
) -> Result<CacheKey, crate::store::StoreError> {
    let pool = shared
        .pools
        .get_with_def(&attempt.run_id, &attempt.call().pool)
        .map(|(_, def)| def);
    let runs = pool.as_deref().map(|def| {
        let passed_on: Vec<(&str, Option<String>)> = def
            .env_allowlist
            .iter()
            .map(|name| (name.as_str(), std::env::var(name).ok()))
            .collect();
        (
            format!("{:?}", def.kind),
            &def.command,
            &def.cwd,
            &def.env,
            passed_on,
        )
    });
    CacheKey::new(
        "tool_result",
        &(
            attempt.call().pool.as_str(),
            attempt.call().tool.as_str(),
            args.to_string(),
            runs,
            attempt.base_dir.as_ref(),
        ),
    )
}

/// Why a cacheable call gave no result to keep: every caller waiting on the same key gets it.
struct CallFailure {
    retryable: bool,
    reason: String,
    /// The call was not made: the run of the attempt that led the computation stopped.
    not_started: bool,
    /// The call ran past this timeout, the attempt's own that led the computation.
    timed_out_after: Option<std::time::Duration>,
}

/// A cacheable call: the result from the [`ContextCache`], else the call's (kept when it
/// succeeded); and whether it was the cache's (this call made no call of its own).
async fn cached_call(
    shared: &ExecutorArgs,
    attempt: &Attempt,
    checked: &Checked,
    args: serde_json::Value,
    key: CacheKey,
) -> (Result<ToolOutcome, (bool, String)>, bool) {
    loop {
        let called = std::sync::atomic::AtomicBool::new(false);
        let computed = shared
            .cache
            .get_or_compute(key, CacheCategory::ToolResult, async {
                called.store(true, std::sync::atomic::Ordering::Relaxed);
                let outcome = make_call(attempt, checked, args.clone())
                    .await
                    .map_err(|e| CallFailure {
                        retryable: retryable(&e),
                        not_started: matches!(e, SessionError::NotStarted { .. }),
                        timed_out_after: match &e {
                            SessionError::Timeout { after, .. } => Some(*after),
                            _ => None,
                        },
                        reason: e.to_string(),
                    })?;
                if !outcome.succeeded() {
                    // A failing run is not worth reusing: report it uncached.
                    return Err(CallFailure {
                        retryable: false,
                        reason: encode_outcome(&outcome),
                        not_started: false,
                        timed_out_after: None,
                    });
                }
                Ok(CachedOutcome {
                    exit_status: outcome.exit_status,
                    json: outcome.json.as_ref().map(|j| j.to_string()),
                    stdout: outcome.stdout,
                    stderr: outcome.stderr,
                    truncated: outcome.truncated,
                })
            })
            .await;
        let served = !called.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(error) = &computed
            && let CacheError::Compute(failure) = error.as_ref()
            && served
        {
            if failure.not_started {
                // Another attempt led the computation, and its run stopped before the call
                // was made: this attempt's call is not made either only when its own run
                // stopped too (the cache keeps no error, so computing again makes the call).
                if attempt.run_stopped() {
                    checked
                        .not_started
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    return (Err((false, failure.reason.clone())), false);
                }
                continue;
            }
            let own_timeout = attempt.timeout.unwrap_or(checked.call_timeout);
            if failure
                .timed_out_after
                .is_some_and(|theirs| own_timeout > theirs)
            {
                // Another attempt's call ran past its own shorter timeout: this attempt makes
                // its call with the time it has (a task with a 10 minute timeout failed with
                // another's 1 second one). Any other failure is the tool's, taken as it is:
                // this task's retries and backoff apply, rather than a call at once for each
                // of the waiters.
                continue;
            }
        }
        return (served_result(computed), served);
    }
}

/// A cached call's result, its failure as the call's own.
fn served_result(
    computed: Result<CachedOutcome, Arc<CacheError<CallFailure>>>,
) -> Result<ToolOutcome, (bool, String)> {
    match computed {
        Ok(cached) => Ok(ToolOutcome {
            exit_status: cached.exit_status,
            stdout: cached.stdout,
            stderr: cached.stderr,
            json: cached.json.and_then(|j| serde_json::from_str(&j).ok()),
            truncated: cached.truncated,
            duration: std::time::Duration::ZERO,
        }),
        Err(error) => match error.as_ref() {
            CacheError::Compute(failure)
                if !failure.retryable && failure.reason.starts_with('{') =>
            {
                decode_outcome(&failure.reason).ok_or((false, failure.reason.clone()))
            }
            CacheError::Compute(failure) => Err((failure.retryable, failure.reason.clone())),
            CacheError::Store(e) => Err((true, format!("result cache: {e}"))),
        },
    }
}

/// A failing outcome carried through the cache's error path as JSON.
fn encode_outcome(outcome: &ToolOutcome) -> String {
    serde_json::json!({
        "exit_status": outcome.exit_status,
        "stdout": outcome.stdout,
        "stderr": outcome.stderr,
        "json": outcome.json,
        "truncated": outcome.truncated,
    })
    .to_string()
}

fn decode_outcome(encoded: &str) -> Option<ToolOutcome> {
    let value: serde_json::Value = serde_json::from_str(encoded).ok()?;
    Some(ToolOutcome {
        exit_status: value
            .get("exit_status")
            .and_then(|v| v.as_i64())
            .and_then(|v| i32::try_from(v).ok()),
        stdout: value.get("stdout")?.as_str()?.to_owned(),
        stderr: value.get("stderr")?.as_str()?.to_owned(),
        json: value.get("json").filter(|j| !j.is_null()).cloned(),
        truncated: value.get("truncated")?.as_bool()?,
        duration: std::time::Duration::ZERO,
    })
}

fn capped(text: &str) -> &str {
    &text[..text.floor_char_boundary(MEMORY_CAP)]
}

/// The outcome as a memory of the run (`None` when outputs are not recorded, or it is empty).
fn outcome_memory(
    shared: &ExecutorArgs,
    attempt: &Attempt,
    outcome: &Outcome,
) -> Option<NewMemory> {
    if !shared.config.record_outputs || attempt.purpose == Purpose::WarmUp {
        return None;
    }
    let namespace = run_namespace(&attempt.run_id)?;
    let (content, tag, memory_type) = match outcome {
        Outcome::Ran(o) if o.succeeded() => (
            capped(&o.stdout).to_owned(),
            "output",
            MemoryType::TaskOutput,
        ),
        Outcome::Ran(o) => (
            format!(
                "exit status {}\n{}\n{}",
                o.exit_status
                    .map_or_else(|| "none".to_owned(), |code| code.to_string()),
                capped(&o.stderr),
                capped(&o.stdout)
            ),
            "error",
            MemoryType::TaskError,
        ),
        Outcome::Error { reason, .. } => (reason.clone(), "error", MemoryType::TaskError),
        // Nothing ran: nothing to record.
        Outcome::NotStarted { .. } => return None,
    };
    if content.trim().is_empty() {
        return None;
    }
    let mut memory = NewMemory::new(namespace, content);
    memory.memory_type = memory_type;
    memory.tags = vec![tag.to_owned(), format!("task:{}", attempt.task.id)];
    memory.context = Some(format!(
        "{} of task {} ({})",
        if attempt.purpose == Purpose::Task {
            "attempt"
        } else {
            "compensation"
        },
        attempt.task.id,
        attempt.call()
    ));
    Some(memory)
}

/// An outcome's memory, queued when this drops: once the outcome is on its way to the Reviewer,
/// the call task hands it to [`record_when_quiet`], so the text analysis and the write are off
/// the attempt's path, and nothing waits on the disk for them. A call task cut off before that
/// (its run cancelled, or the Executor stopping) drops it, so the memory is still queued.
/// (Like any memory write, it is not ordered with the run's own records.) Until then it counts
/// as one of the runtime's background writes: a run can be over before its last outcome is
/// recorded.
struct OutcomeRecord {
    store: Store,
    memory: Option<NewMemory>,
    /// Released after `drop` has queued the memory (fields drop after it).
    _pending: TaskTrackerToken,
}

impl Drop for OutcomeRecord {
    fn drop(&mut self) {
        if let Some(memory) = self.memory.take()
            && let Err(e) = self.store.queue_store(memory)
        {
            tracing::warn!("executor: could not record an outcome: {e}");
        }
    }
}

/// How long [`record_when_quiet`] waits for more outcome records before it queues those it
/// holds: one that came in during a wait starts another.
const RECORD_QUIET: std::time::Duration = std::time::Duration::from_millis(2);
/// How many outcome records [`record_when_quiet`] holds at most: that many are queued at once,
/// whether records are still coming in or not.
const RECORD_BATCH: usize = 64;
/// Outcome records on their way to [`record_when_quiet`]; one that finds no room is queued by
/// its call task.
const RECORD_BACKLOG: usize = 1024;

/// Queues outcome memories once no new one has come in during a wait of `quiet` (so 1–2 such
/// waits after the last, give or take the timer's millisecond), or as soon as `batch` are held,
/// not as each call ends. The calls of a level of a plan end together, and that is when the
/// level after it is dispatched: the memories' text analysis and the writer's commit, made
/// then, took a CPU from that dispatch (about 0.3% of the wall time of the runtime benchmark's
/// parallel plan, on two cores; see the README). Made a moment later, they run while the next
/// calls do. Records sent during a wait do not wake it: it looks when the wait is over. The
/// records are queued one at a time with a yield between them, so a batch of large outputs
/// does not hold a worker thread. A record is queued as it drops, so the records it holds (and
/// those still in the channel) are queued if this task is cut off.
async fn record_when_quiet(
    mut records: tokio::sync::mpsc::Receiver<OutcomeRecord>,
    quiet: std::time::Duration,
    batch: usize,
) {
    // Moves what is waiting in the channel into `held`, up to a batch.
    fn take_waiting(
        held: &mut Vec<OutcomeRecord>,
        records: &mut tokio::sync::mpsc::Receiver<OutcomeRecord>,
        batch: usize,
    ) {
        while held.len() < batch
            && let Ok(record) = records.try_recv()
        {
            held.push(record);
        }
    }
    let mut held = Vec::new();
    while let Some(first) = records.recv().await {
        held.push(first);
        take_waiting(&mut held, &mut records, batch);
        while held.len() < batch {
            tokio::time::sleep(quiet).await;
            let before = held.len();
            take_waiting(&mut held, &mut records, batch);
            if held.len() == before {
                break;
            }
        }
        for record in held.drain(..) {
            // Queues its memory.
            drop(record);
            tokio::task::yield_now().await;
        }
    }
}

/// A failed call's error message, with the most successful known fix for an error like it
/// (from the lessons).
fn failure(shared: &ExecutorArgs, outcome: &Outcome) -> Option<(String, Option<String>)> {
    let message = match outcome {
        Outcome::Ran(o) if o.succeeded() => return None,
        Outcome::Ran(o) => o.error_text().to_owned(),
        Outcome::Error { reason, .. } => reason.clone(),
        Outcome::NotStarted { .. } => return None,
    };
    if message.is_empty() {
        return None;
    }
    let suggestion = shared.lessons.suggest_fix(&message).map(|found| {
        format!(
            "known fix for a similar error: {} (similarity {:.2}, worked {:.0}% of {} tries)",
            found.fix,
            found.similarity,
            found.success_rate * 100.0,
            found.attempts
        )
    });
    Some((message, suggestion))
}

impl Actor for Executor {
    type Msg = Envelope<ExecutorMsg>;
    type State = ExecutorState;
    type Arguments = ExecutorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ExecutorArgs,
    ) -> Result<ExecutorState, ActorProcessingErr> {
        let (records, waiting) = tokio::sync::mpsc::channel(RECORD_BACKLOG);
        // Not one of the runtime's background tasks (a settle would wait for it for ever): the
        // records it holds are, each by its own token. It ends once this state and the call
        // tasks are gone, queuing what it still holds.
        tokio::spawn(record_when_quiet(waiting, RECORD_QUIET, RECORD_BATCH));
        Ok(ExecutorState {
            shared: Arc::new(args),
            calls: JoinSet::new(),
            runs: HashMap::new(),
            cancelled: std::collections::VecDeque::new(),
            records,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        envelope: Self::Msg,
        state: &mut ExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        while let Some(done) = state.calls.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => e.id(),
            };
            state.runs.remove(&id);
        }
        let Envelope { msg, .. } = envelope;
        match msg {
            ExecutorMsg::Execute(attempt)
                if attempt.purpose == Purpose::Task
                    && state.cancelled.contains(&attempt.run_id) =>
            {
                // The Orchestrator has forgotten this attempt (its verdict would be ignored):
                // running it would act after the cancel, with nothing to undo it.
                tracing::debug!(
                    "executor: {} of cancelled run {} not run",
                    attempt.task.id,
                    attempt.run_id
                );
            }
            ExecutorMsg::Execute(attempt) => {
                let shared = Arc::clone(&state.shared);
                let records = state.records.clone();
                let run_id = Arc::clone(&attempt.run_id);
                let warm_up = attempt.purpose == Purpose::WarmUp;
                // A warm-up belongs to no run, so it has no trace either.
                let span = if attempt.purpose == Purpose::WarmUp {
                    tracing::Span::none()
                } else {
                    tracing::info_span!(
                        parent: &attempt.span,
                        "tool_call",
                        pool = %attempt.call().pool,
                        tool = %attempt.call().tool
                    )
                };
                let handle = state.calls.spawn(async move {
                    let mut attempt = attempt;
                    // The call's span ends before the outcome goes on: once the Reviewer has
                    // it, the run may finish, and an open child would keep the run's span open.
                    // A panic on the way (ours: a tool's own panic is caught by its session)
                    // fails this attempt like a crashed tool, and the attempt still goes on:
                    // swallowed, its run would wait for its verdict for ever.
                    let called = AssertUnwindSafe(async {
                        let (outcome, key, served) = execute(&shared, &attempt).await;
                        let memory = outcome_memory(&shared, &attempt, &outcome);
                        (failure(&shared, &outcome), outcome, key, served, memory)
                    })
                    .catch_unwind()
                    .instrument(span)
                    .await;
                    let (outcome, memory) = match called {
                        Ok((failed, outcome, key, served, memory)) => {
                            attempt.failure = failed;
                            attempt.served_from_cache = served;
                            // A compensation carries the key of the call it undoes.
                            attempt.cache_key = key.or(attempt.cache_key);
                            (outcome, memory)
                        }
                        Err(panic) => {
                            let reason = format!(
                                "the executor failed during the call: {}",
                                crate::session::panic_message(panic.as_ref())
                            );
                            tracing::error!("executor: {reason}");
                            (
                                Outcome::Error {
                                    reason,
                                    retryable: true,
                                },
                                None,
                            )
                        }
                    };
                    let record = OutcomeRecord {
                        store: shared.store.clone(),
                        memory,
                        _pending: shared.background.token(),
                    };
                    if let Err(e) = shared
                        .peers
                        .reviewer
                        .send(ReviewerMsg::Review(attempt, outcome))
                        .await
                    {
                        tracing::warn!("executor: outcome not delivered: {e}");
                    }
                    // The Reviewer, woken by the send, waits in this worker's next-task slot
                    // until this task yields: waking the recorder first would push it out of
                    // that slot. A yielded task runs again once its worker has nothing else to
                    // run. A record the recorder has no room for is queued here; one with no
                    // memory (outputs not recorded, nothing ran) only releases its token.
                    tokio::task::yield_now().await;
                    if record.memory.is_some()
                        && let Err(full) = records.try_send(record)
                    {
                        drop(full.into_inner());
                    }
                });
                // A warm-up is not stopped with its run: it has no effect to stop, and cut
                // off mid-call it would cost its session (a server restarted, a scorer rebuilt).
                if !warm_up {
                    state.runs.insert(handle.id(), (run_id, handle));
                }
            }
            ExecutorMsg::CancelRun(run_id) => {
                for (run, handle) in state.runs.values() {
                    if *run == run_id {
                        handle.abort();
                    }
                }
                if state.cancelled.len() == CANCELLED_RUNS {
                    state.cancelled.pop_front();
                }
                state.cancelled.push_back(run_id);
            }
            ExecutorMsg::RunStarted(run_id) => {
                // A later run of a cancelled run's id (a new run, or a resume) runs its tasks:
                // dropped, they would leave it waiting for their verdicts for ever. Attempts of
                // the cancelled run still on their way are not called either way: their stop
                // has fired, so they end as not started, and their verdicts are ignored.
                state.cancelled.retain(|cancelled| *cancelled != run_id);
            }
            ExecutorMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            ExecutorMsg::Crash => injected_fault(AgentKind::Executor),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{
        OutcomeRecord, RECORD_BACKLOG, RECORD_QUIET, TaskTracker, record_when_quiet, retryable,
        runs_script,
    };
    use crate::session::SessionError;
    use crate::store::{Namespace, NewMemory, Store, StoreConfig};

    #[test]
    fn a_spawn_that_would_fail_the_same_way_again_is_not_retried() {
        let spawn = |kind: std::io::ErrorKind| SessionError::Spawn {
            program: "sh".into(),
            source: std::io::Error::from(kind),
        };
        assert!(!retryable(&spawn(std::io::ErrorKind::ArgumentListTooLong)));
        assert!(!retryable(&spawn(std::io::ErrorKind::NotFound)));
        assert!(retryable(&spawn(std::io::ErrorKind::WouldBlock)));
    }

    /// A store, a run's namespace and a background tracker, for outcome records.
    struct Recording {
        _dir: tempfile::TempDir,
        store: Store,
        namespace: Namespace,
        background: TaskTracker,
    }

    impl Recording {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().join("s.redb"), StoreConfig::default()).unwrap();
            Self {
                _dir: dir,
                store,
                namespace: Namespace::session("run", "r1").unwrap(),
                background: TaskTracker::new(),
            }
        }

        fn record(&self, text: &str) -> OutcomeRecord {
            OutcomeRecord {
                store: self.store.clone(),
                memory: Some(NewMemory::new(self.namespace.clone(), text)),
                _pending: self.background.token(),
            }
        }

        /// The texts of the memories written so far, sorted.
        async fn recorded(&self) -> Vec<String> {
            self.store.sync().await.unwrap();
            let mut texts: Vec<String> = self
                .store
                .list_recent(Some(&self.namespace), 100)
                .into_iter()
                .map(|m| m.content.clone())
                .collect();
            texts.sort();
            texts
        }

        /// Waits (10 s at most) until no more than `held` records are still to be queued.
        async fn held_at_most(&self, held: usize) {
            let limit = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while self.background.len() > held && tokio::time::Instant::now() < limit {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }

    #[tokio::test]
    async fn an_outcome_record_is_queued_when_its_call_task_is_cut_off() {
        let recording = Recording::new();
        let record = recording.record("lantern rendered");
        // A call task holding its record when it is aborted (its run cancelled, or the
        // Executor stopping) before it hands the record over.
        let call = tokio::spawn(async move {
            let _record = record;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        // Pending until queued: a settle waits for it.
        assert_eq!(recording.background.len(), 1);
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert!(recording.background.is_empty());
        assert_eq!(recording.recorded().await, ["lantern rendered"]);
    }

    /// The recorder holds outcome records (a settle still counts them) while it waits, queues
    /// them once a wait brings no new one or as soon as a batch is held, and queues what it
    /// holds when its senders are gone or it is cut off.
    #[tokio::test]
    async fn the_recorder_holds_records_until_quiet_or_a_batch_and_queues_them_at_its_end() {
        use std::time::Duration;
        let recording = Recording::new();
        let (record, background) = (|text| recording.record(text), &recording.background);
        let hour = Duration::from_secs(3600);

        // Held while it waits (an hour here); queued when it is cut off, including a record
        // still in the channel.
        let (records, waiting) = tokio::sync::mpsc::channel(RECORD_BACKLOG);
        let recorder = tokio::spawn(record_when_quiet(waiting, hour, 64));
        assert!(records.try_send(record("a1")).is_ok());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(records.try_send(record("a2")).is_ok());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(background.len(), 2);
        assert_eq!(recording.recorded().await, Vec::<String>::new());
        recorder.abort();
        assert!(recorder.await.unwrap_err().is_cancelled());
        assert!(background.is_empty());
        assert_eq!(recording.recorded().await, ["a1", "a2"]);

        // A full batch is queued without waiting (the wait is an hour), and no more than a
        // batch: of four waiting, the fourth is held.
        let (records, waiting) = tokio::sync::mpsc::channel(RECORD_BACKLOG);
        let recorder = tokio::spawn(record_when_quiet(waiting, hour, 3));
        for text in ["b1", "b2", "b3", "b4"] {
            assert!(records.try_send(record(text)).is_ok());
        }
        recording.held_at_most(1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(background.len(), 1);
        assert_eq!(recording.recorded().await, ["a1", "a2", "b1", "b2", "b3"]);
        recorder.abort();
        assert!(recorder.await.unwrap_err().is_cancelled());
        assert_eq!(
            recording.recorded().await,
            ["a1", "a2", "b1", "b2", "b3", "b4"]
        );

        // Queued after a quiet wait; and, held when the last sender goes, queued as it ends.
        let (records, waiting) = tokio::sync::mpsc::channel(RECORD_BACKLOG);
        let recorder = tokio::spawn(record_when_quiet(waiting, RECORD_QUIET, 64));
        for text in ["c1", "c2"] {
            assert!(records.try_send(record(text)).is_ok());
        }
        recording.held_at_most(0).await;
        assert!(
            background.is_empty(),
            "{} records still held",
            background.len()
        );
        assert!(records.try_send(record("c3")).is_ok());
        tokio::task::yield_now().await;
        assert!(records.try_send(record("c4")).is_ok());
        drop(records);
        tokio::time::timeout(Duration::from_secs(10), recorder)
            .await
            .unwrap()
            .unwrap();
        assert!(background.is_empty());
        assert_eq!(
            recording.recorded().await,
            ["a1", "a2", "b1", "b2", "b3", "b4", "c1", "c2", "c3", "c4"]
        );
    }

    #[test]
    fn shells_given_a_script_are_recognised_by_name_and_options() {
        let command = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        for script in [
            &["sh", "-c"][..],
            &["bash", "-lc"],
            &["/usr/bin/bash", "-c"],
            &["sh", "-e", "-c"],
            &["zsh", "-ec"],
        ] {
            assert!(runs_script(&command(script)), "{script:?}");
        }
        for not in [
            &["sh"][..],
            &["bash", "script.sh"],
            &["bash", "-c", "echo"],
            &["bash", "--norc", "-c"],
            &["python3", "-c"],
            &["sh", "-e"],
            &[],
        ] {
            assert!(!runs_script(&command(not)), "{not:?}");
        }
    }
}
