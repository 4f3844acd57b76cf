//! `tetrarch run PLAN`: start the supervision tree, run the plan to its end, report.
//! `tetrarch runs`: the runs saved in the store.
//!
//! Resume: the run is keyed by a hash of the plan's folder and text. If the store holds an
//! unfinished run of the same text in the same folder (the process was killed), `run` continues
//! it: COMPLETE tasks keep their
//! outputs and are not run again; tasks that were in flight run again (at-least-once).
//! `--fresh` starts a new run instead; the unfinished one stays in `runs` as it was and is no
//! longer resumed (only the newest run of a plan is). Ctrl-C cancels the run (calls in flight are stopped,
//! compensations run, the state is saved); a second Ctrl-C kills the children still running and exits
//! at once (130).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tetrarch::agents::{
    ActorsConfig, RunEvent, RunOptions, RunReport, RunStatus, Runtime, RuntimeOptions, TaskState,
    plan_hash, saved_runs,
};
use tetrarch::permissions::{
    ApprovalHandler, Decision, PermissionEngine, TerminalPrompt, ToolCall,
};
use tetrarch::plan::{Plan, StaticCatalog};
use tetrarch::session::{PoolKind, SCORER_TOOLS};
use tetrarch::store::{Store, StoreConfig};
use tokio::sync::mpsc;

use super::StoreRef;
use super::terminal_text::printable;

/// How progress is shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum EventsFormat {
    /// A progress bar on a terminal, plain lines otherwise.
    #[default]
    Human,
    /// One JSON event per line on stdout.
    Json,
}

/// `tetrarch run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plan file (TOML).
    plan: PathBuf,
    /// A folder of agent configuration files (`orchestrator.toml`, ...); the built-in defaults
    /// are used for any file it lacks, and for all when this is not given.
    #[arg(long)]
    actors: Option<PathBuf>,
    /// Progress output.
    #[arg(long, value_enum, default_value_t)]
    events: EventsFormat,
    /// Start a new run even if the store holds an unfinished run of this plan.
    #[arg(long)]
    fresh: bool,
    /// A Claude Code settings file whose `permissions` govern the run's tool calls (default:
    /// the plan's `permissions` file). Calls no rule allows are asked about on a terminal and
    /// denied otherwise.
    #[arg(long)]
    permissions: Option<PathBuf>,
    /// Serve the live dashboard and `/metrics` on this address (IP:PORT, localhost:PORT, or a
    /// port on 127.0.0.1) during the run.
    #[arg(long, value_name = "ADDR")]
    dashboard: Option<String>,
    /// Serve Prometheus metrics at `/metrics` (and nothing else) on this address (IP:PORT,
    /// localhost:PORT, or a port on 127.0.0.1) during the run.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Keep serving the dashboard and `/metrics` this long after the run ends (`30s`, `5m`), so
    /// a scraper sees the run's final values (`tetrarch_runs_total`,
    /// `tetrarch_run_duration_seconds`); Ctrl-C, SIGTERM or SIGHUP stops early. Needs
    /// `--dashboard` or `--metrics`.
    #[arg(long, value_name = "DURATION", value_parser = parse_serve_after, allow_hyphen_values = true)]
    serve_after: Option<Duration>,
}

fn parse_serve_after(text: &str) -> Result<Duration, String> {
    tetrarch::plan::parse_duration(text).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

pub(crate) fn load_permissions(path: &Path, base: &Path) -> Result<Arc<PermissionEngine>> {
    let text = super::read_text(path, "permissions")?;
    let home = dirs::home_dir().unwrap_or_else(|| PathBuf::from("/"));
    let engine = PermissionEngine::from_settings_json(&text, path, base, &home)
        .with_context(|| format!("bad permissions in {}", path.display()))?;
    Ok(Arc::new(engine))
}

fn open_store(path: &Path) -> Result<Store> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    super::open_store(path, StoreConfig::default())
        .with_context(|| format!("cannot open the store {}", path.display()))
}

/// Runs `tetrarch run`: exit 0 when every task is COMPLETE, 1 when the run failed or was
/// cancelled, 2 when it could not run (bad plan, bad configuration).
pub fn run(args: RunArgs, store: &Path) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Driven from a task on a worker, as the agents are: a future that `block_on` drives runs
    // on this thread, and each message between it and the agents would cost a wake-up across
    // threads.
    let store = store.to_path_buf();
    let result = runtime.block_on(async move {
        tokio::spawn(async move { run_plan(args, &store).await })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the run's task ended abnormally: {e}")))
    });
    // Not a plain drop, which waits for every blocking thread: one still reading a terminal
    // prompt would keep the process alive after its report.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run_plan(args: RunArgs, store_path: &Path) -> Result<ExitCode> {
    if args.serve_after.is_some() && args.dashboard.is_none() && args.metrics.is_none() {
        stderr_line!(
            "error: --serve-after keeps the dashboard or metrics server up after the run: it \
             needs --dashboard or --metrics"
        );
        return Ok(ExitCode::from(2));
    }
    let text = super::read_text(&args.plan, "plan")?;
    let source = args.plan.display().to_string();
    let base_dir = args
        .plan
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .canonicalize()
        .with_context(|| format!("cannot resolve the folder of {source}"))?;
    let actors = match &args.actors {
        Some(dir) => ActorsConfig::load(dir)?,
        None => ActorsConfig::embedded()?,
    };
    // Validate everything before anything starts.
    let catalog = configured_pools(&actors);
    let plan = match Plan::from_toml_with_catalog(&text, &source, &catalog) {
        Ok(plan) => plan,
        Err(error) => {
            // A diagnostic quotes the plan (a name or value holding an escape sequence).
            for line in error.lines() {
                stderr_line!("{}", printable(&line, false));
            }
            stderr_line!("error: the plan is invalid; nothing ran");
            return Ok(ExitCode::from(2));
        }
    };
    let permissions = match (&args.permissions, &plan.permissions) {
        (Some(path), _) => Some(load_permissions(path, &base_dir)?),
        (None, Some(path)) => Some(load_permissions(&base_dir.join(path), &base_dir)?),
        (None, None) => None,
    };
    let store = open_store(store_path)?;
    let store_file = file_identity(store_path);
    // From here until the run ends, `tetrarch mem`, `runs`, `lessons` and `cache stats` beside
    // it use this process's store instead of waiting for the file.
    let socket = super::store_socket::StoreSocket::serve(&store, store_path);
    // A run resumes the unfinished run of the same plan text in the same folder: relative
    // paths (the tools' files, gates, a pool's cwd) mean that folder, so a copy of the plan
    // elsewhere sharing the store is another run.
    let folder = std::fs::canonicalize(&base_dir).unwrap_or_else(|_| base_dir.clone());
    let hash = plan_hash(&format!("{}\n{text}", folder.display()));
    let resume = Runtime::resumable_run(&store, &hash)?;
    if args.fresh
        && let Some(old) = &resume
    {
        stderr_line!(
            "note: --fresh leaves run {old} of {source} unfinished for good: it is not resumed, \
             and what it left undone (a rollback cut short included) stays so"
        );
    }
    let resume = resume.filter(|_| !args.fresh);
    if resume.is_none()
        && !args.fresh
        && let Some(old) = Runtime::unfinished_run_of_edited_plan(&store, &source, &hash)?
    {
        stderr_line!(
            "note: run {old} of {source} is unfinished, but the plan's text (or its folder) has \
             changed since: starting a new run (any edit, a comment too, starts one; undo the \
             edit to resume {old})"
        );
    }
    let run_id = resume
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let human = args.events == EventsFormat::Human;
    if human {
        match &resume {
            Some(id) => stderr_line!("resuming run {id} of {source}"),
            None => stderr_line!("run {run_id} of {source}"),
        }
        if !plan.pools.is_empty() {
            stderr_line!(
                "starting pools {} (pre-warm)",
                printable(
                    &plan.pools.keys().cloned().collect::<Vec<_>>().join(", "),
                    true
                )
            );
        }
    }
    let mut runtime_options = RuntimeOptions::new(store, actors);
    let bar = (args.events == EventsFormat::Human && std::io::stderr().is_terminal())
        .then(|| progress_bar(plan.tasks.len()));
    // Asked on stderr, answered on stdin: both must be the terminal (with stderr sent to a
    // file, the question went there and the run waited for an answer no one saw).
    if human && std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        runtime_options.approval = Arc::new(PromptAboveBar {
            prompt: TerminalPrompt::new(),
            bar: bar.clone(),
        });
    }
    // Listened for from before the start: the configured pools may take long to start (an MCP
    // server building), and a signal then must stop the start, not end the process unseen.
    let mut stops = Interrupts::new()?;
    let runtime = tokio::select! {
        started = Runtime::start(runtime_options) => started?,
        signal = stops.next() => {
            stderr_line!("interrupted ({signal}) while the agents and their pools started: nothing ran");
            // Dropping the start stops it; a server it had started is killed with its group.
            tetrarch::session::kill_child_process_groups();
            if let Some(socket) = socket {
                socket.close().await;
            }
            return Ok(ExitCode::from(130));
        }
    };
    let live = super::dashboard::start_live(
        args.dashboard.as_deref(),
        args.metrics.as_deref(),
        &plan,
        resume.as_deref(),
        &runtime,
    )
    .await;
    let events = runtime.subscribe_all();
    let mut printed = spawn_printer(events, args.events, bar, run_id.clone())?;
    let options = RunOptions {
        base_dir,
        source,
        plan_hash: hash,
        run_id: Some(run_id.clone()),
        resume: resume.is_some(),
        permissions,
        plan_text: Some(text),
    };
    // One listener (`stops`) from the start to the end: a signal between the run's end and
    // `--serve-after`'s wait is seen by that wait.
    let mut interrupted = false;
    // The listener a stop sets up for a second one (which exits at once).
    let mut second_stop: Option<tokio::task::JoinHandle<()>> = None;
    let outcome = {
        let run = super::dashboard::drive(live.as_ref(), &runtime, runtime.run(plan, options));
        tokio::pin!(run);
        // SIGTERM (`kill`, `docker stop`, systemd) and SIGHUP (the terminal closed) stop a run
        // as Ctrl-C does: they used to end the process with its tools still running and no
        // rollback.
        loop {
            tokio::select! {
                report = &mut run => break report,
                signal = stops.next(), if !interrupted => {
                    interrupted = true;
                    let first = std::time::Instant::now();
                    stderr_line!(
                        "\ninterrupted ({signal}): cancelling run {run_id} (Ctrl-C again to exit \
                         now; a rollback cut short resumes on the next `tetrarch run` of this plan)"
                    );
                    let mut again = Interrupts::new()?;
                    let (cancel_saved, saved) = tokio::sync::oneshot::channel::<()>();
                    second_stop = Some(tokio::spawn(async move {
                        // `timeout` and a closing terminal signal the process and then its
                        // group: one stop can arrive twice at once. A signal sent later is the
                        // second one.
                        loop {
                            again.next().await;
                            if first.elapsed() >= SAME_STOP {
                                break;
                            }
                        }
                        // The cancel is saved first, or the next run would resume the run as if
                        // it had not been cancelled (and finish it).
                        let _ = tokio::time::timeout(CANCEL_SAVE_WAIT, saved).await;
                        // Exiting skips every drop: the children's groups are killed here.
                        tetrarch::session::kill_child_process_groups();
                        std::process::exit(130);
                    }));
                    // A question on the terminal is answered "no": nobody is answering now.
                    tetrarch::permissions::abandon_prompts();
                    let cancelled = runtime.cancel(&run_id).await;
                    let _ = cancel_saved.send(());
                    cancelled?;
                }
            }
        }
    };
    // The printer stops after the run's `run_finished` event, the last one it emits: wait for
    // it to print everything queued before that, however slowly the reader reads, rather than
    // cut the stream (a signal ends the wait; the run is saved by then). A run that ended in an
    // error emits none, so then only a moment is given.
    if outcome.is_ok() && !interrupted {
        tokio::select! {
            _ = &mut printed => {}
            _ = stops.next() => {}
        }
    } else if outcome.is_ok() {
        // After a stop the listener set up then (a second signal exits at once) is the one to
        // end this wait: `stops` may hold the first stop's twin (`timeout` signals the process
        // and then its group), which would cut the stream before its `run_finished`.
        let _ = (&mut printed).await;
    } else {
        let _ = tokio::time::timeout(Duration::from_millis(20), &mut printed).await;
    }
    if let Some(live) = live {
        if let Some(linger) = args.serve_after.filter(|d| !d.is_zero()) {
            // The run is over and saved: the Ctrl-C that ends the serving is an ordinary stop,
            // not a second one that exits at once (130, with no report).
            if let Some(listener) = second_stop.take() {
                listener.abort();
            }
            // A stop while the last values settle ends the serving too.
            let settled = tokio::select! {
                () = live.settle(&runtime, outcome.is_ok()) => true,
                _ = stops.next() => false,
            };
            if settled {
                stderr_line!(
                    "run over: serving {} for {} more (Ctrl-C to stop)",
                    live.serving(),
                    humantime::format_duration(linger)
                );
                tokio::select! {
                    () = tokio::time::sleep(linger) => {}
                    _ = stops.next() => {}
                }
            }
        }
        live.shutdown().await;
    }
    if let Some(socket) = socket {
        socket.close().await;
    }
    runtime.shutdown().await;
    let report = outcome?;
    print_report(&report);
    // The run's writes went to the file it opened; one deleted or replaced meanwhile took them
    // with it, and nothing else would say so.
    if store_file.is_some() && file_identity(store_path) != store_file {
        stderr_line!(
            "warning: the store file {} was deleted or replaced during the run: what the run \
             saved (and what commands beside it stored) went to the old file and is lost; this \
             report is all that is left of the run",
            store_path.display()
        );
    }
    Ok(if report.status == RunStatus::Complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The device and inode of the file at `path` (following links), if there is one.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).ok().map(|_| (0, 0))
    }
}

/// Signals this soon after the one that cancelled a run count as the same stop (see `run_plan`).
const SAME_STOP: Duration = Duration::from_millis(100);

/// How long a second Ctrl-C waits for the cancel to be saved before it exits.
const CANCEL_SAVE_WAIT: Duration = Duration::from_secs(2);

/// A run's length as saved (whole milliseconds): `740 ms`, `12.3 s`, `2m 5s`.
fn run_length(length: Duration) -> String {
    let ms = length.as_millis();
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", length.as_secs_f64()),
        _ => humantime::format_duration(Duration::from_secs(length.as_secs())).to_string(),
    }
}

/// A task's time from dispatch, at a precision that reads well on a progress line.
fn took(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..10_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.1} s", us as f64 / 1e6),
    }
}

fn describe(event: &RunEvent) -> Option<String> {
    Some(match event {
        RunEvent::TaskStarted { task, attempt, .. } if *attempt > 1 => {
            format!("{task}: attempt {attempt}")
        }
        RunEvent::TaskStarted { task, .. } => format!("{task}: started"),
        RunEvent::TaskFinished {
            task,
            state,
            reason,
            elapsed_us,
            ..
        } => match (state, reason) {
            (TaskState::Complete, _) => match elapsed_us {
                Some(us) => format!("{task}: complete in {}", took(*us)),
                None => format!("{task}: complete"),
            },
            (state, Some(reason)) => {
                format!("{task}: {} ({reason})", format!("{state:?}").to_lowercase())
            }
            (state, None) => format!("{task}: {}", format!("{state:?}").to_lowercase()),
        },
        RunEvent::GateFailed {
            task,
            attempt,
            feedback,
            ..
        } => format!("{task}: gate failed on attempt {attempt}: {feedback}"),
        RunEvent::TaskRetrying {
            task,
            retry,
            reason,
            backoff_ms,
            ..
        } => format!(
            "{task}: retry {retry} in {} after: {reason}",
            humantime::format_duration(Duration::from_millis(*backoff_ms))
        ),
        RunEvent::FixApplied { task, fix, .. } => format!("{task}: trying declared fix: {fix}"),
        RunEvent::ContextAlert {
            task, used, window, ..
        } => format!(
            "{task}: context at {used} of {window} tokens; preserved in the store, then compacted"
        ),
        RunEvent::Compensated {
            task, ok, detail, ..
        } => {
            // A compensation that printed nothing has nothing more to say than "done".
            let said = detail.trim();
            match (*ok, said.is_empty() || said == "null") {
                (true, true) => format!("{task}: compensation done"),
                (true, false) => format!("{task}: compensation done: {detail}"),
                (false, _) => format!("{task}: compensation FAILED: {detail}"),
            }
        }
        RunEvent::AgentRestarted {
            agent,
            restarts,
            reason,
        } => format!("supervisor: restarted {agent} (restart {restarts}): {reason}"),
        RunEvent::RunStarted {
            already_complete, ..
        } if *already_complete > 0 => {
            format!(
                "{already_complete} {} already complete from the earlier attempt",
                if *already_complete == 1 {
                    "task"
                } else {
                    "tasks"
                }
            )
        }
        RunEvent::RunStarted { .. }
        | RunEvent::RunFinished { .. }
        | RunEvent::ContextBuilt { .. } => return None,
    })
}

/// The signals that stop a run: Ctrl-C (SIGINT), SIGTERM and SIGHUP. Each is listened for from
/// `new` on, so one that comes while nothing awaits `next` is kept for the next call rather
/// than lost.
struct Interrupts {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Interrupts {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
                hangup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Interrupts {})
    }

    /// The next signal, by name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "Ctrl-C",
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.hangup.recv() => "SIGHUP",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// The run's progress bar on a terminal, hidden until the printer shows it (the pools start,
/// and print, in between).
fn progress_bar(tasks: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(u64::try_from(tasks).unwrap_or(u64::MAX)),
        ProgressDrawTarget::hidden(),
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// The terminal's `y/N` prompt with the progress bar hidden while it waits: the bar's ticks
/// redrew its line and erased the question.
struct PromptAboveBar {
    prompt: TerminalPrompt,
    bar: Option<ProgressBar>,
}

impl ApprovalHandler for PromptAboveBar {
    fn approve(&self, call: &ToolCall, decision: &Decision) -> bool {
        match &self.bar {
            Some(bar) => bar.suspend(|| self.prompt.approve(call, decision)),
            None => self.prompt.approve(call, decision),
        }
    }

    fn declined(&self) -> &'static str {
        self.prompt.declined()
    }
}

/// Prints the run's events on a thread of its own, and says when it is done: a reader that
/// stops reading blocks that thread's writes, never a worker of the runtime (a stalled pipe
/// held a worker, and the run hung with tasks ready and did not take a SIGTERM).
fn spawn_printer(
    events: mpsc::UnboundedReceiver<RunEvent>,
    format: EventsFormat,
    bar: Option<ProgressBar>,
    run_id: String,
) -> Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, printed) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tetrarch-events".to_owned())
        .spawn(move || {
            print_events(events, format, bar, &run_id);
            let _ = done.send(());
        })
        .context("cannot start the thread that prints the run's events")?;
    Ok(printed)
}

/// Prints every event (none is dropped: the receiver queues them) until the run's
/// `run_finished`, or until the reader of stdout goes away.
fn print_events(
    mut events: mpsc::UnboundedReceiver<RunEvent>,
    format: EventsFormat,
    bar: Option<ProgressBar>,
    run_id: &str,
) {
    if let Some(bar) = &bar {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.enable_steady_tick(Duration::from_millis(120));
    }
    while let Some(event) = events.blocking_recv() {
        let last = matches!(&event, RunEvent::RunFinished { run_id: id, .. } if *id == run_id);
        if format == EventsFormat::Json {
            // A reader that went away (`| head`) ends the printing, not the run: it still
            // finishes (or rolls back) and reports on stderr. Any other failure (a full disk)
            // is said, so a cut stream is not taken for the whole one.
            if let Ok(line) = serde_json::to_string(&event)
                && let Err(e) = stdout_line!("{line}")
            {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    stderr_line!(
                        "warning: cannot write the run's events to stdout ({e}): the rest are \
                         not printed; the run goes on"
                    );
                }
                break;
            }
        } else {
            print_human(&event, bar.as_ref());
        }
        if last {
            break;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

/// One event as a progress line: above the bar on a terminal, else on stderr.
fn print_human(event: &RunEvent, bar: Option<&ProgressBar>) {
    if let RunEvent::RunStarted {
        already_complete, ..
    } = event
        && let Some(bar) = bar
    {
        bar.set_position(u64::try_from(*already_complete).unwrap_or(0));
    }
    let done = matches!(event, RunEvent::TaskFinished { .. });
    if let Some(line) = describe(event) {
        let line = printable(&line, false).into_owned();
        match bar {
            Some(bar) => {
                if done {
                    bar.inc(1);
                }
                bar.set_message(line.clone());
                if !matches!(event, RunEvent::TaskStarted { .. }) {
                    bar.println(line);
                }
            }
            None => stderr_line!("{line}"),
        }
    }
}

/// The run's outcome on stderr, with each problem's reason (also with `--events json`, whose
/// stdout stays one JSON event per line).
fn print_report(report: &RunReport) {
    let complete = report
        .tasks
        .iter()
        .filter(|t| t.state == TaskState::Complete)
        .count();
    stderr_line!(
        "run {} {:?}: {complete}/{} tasks complete in {:.2?}",
        report.run_id,
        report.status,
        report.tasks.len(),
        report.duration
    );
    for problem in report.problems() {
        stderr_line!("  {}", printable(&problem, false));
    }
    for comp in &report.compensations {
        if comp.ok {
            stderr_line!("  undone {}: ok", comp.task);
        } else {
            stderr_line!(
                "  not undone {}: compensation FAILED: {}",
                comp.task,
                printable(&comp.detail, false)
            );
        }
    }
}

/// The pools a run of the binary has besides the plan's own: those `actors` configures, with
/// their kinds (so calls' args are checked before any pool starts) and the Reviewer's score
/// pool. A scorer's tools are known; the others' are checked when the run starts them.
pub(crate) fn configured_pools(actors: &ActorsConfig) -> StaticCatalog {
    actors.executor.pools.iter().fold(
        StaticCatalog::new().with_score_pool(actors.reviewer.score_pool.clone()),
        |c, (name, def)| {
            match def.kind {
                PoolKind::Scorer => c.with_tools(name.clone(), SCORER_TOOLS),
                _ => c,
            }
            .with_kind(name.clone(), def.kind)
        },
    )
}

/// `tetrarch runs`: every run in the store, with its status and task states, printed to `out`.
pub(crate) fn list(store: StoreRef<'_>, json: bool, out: &mut dyn Write) -> Result<ExitCode> {
    let opened = store
        .open_to_read(StoreConfig::default())
        .with_context(|| format!("cannot open the store {store}"))?;
    let runs = saved_runs(&opened)?;
    for run in runs {
        if json {
            writeln!(out, "{}", serde_json::to_string(&run)?)?;
            continue;
        }
        let ended_in = run
            .duration()
            .map(|d| format!("  in {}", run_length(d)))
            .unwrap_or_default();
        writeln!(
            out,
            "{}  {:<9}  {}  {} ({}){ended_in}",
            run.run_id,
            format!("{:?}", run.status).to_lowercase(),
            task_counts(&run.tasks),
            printable(&run.plan, true),
            printable(&run.source, true)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A run's tasks by state: `3/5 complete` then any other state held (`, 1 failed, 1 skipped`).
fn task_counts(tasks: &[(String, TaskState)]) -> String {
    let count = |state: TaskState| tasks.iter().filter(|(_, s)| *s == state).count();
    let mut text = format!("{}/{} complete", count(TaskState::Complete), tasks.len());
    for (state, name) in [
        (TaskState::Failed, "failed"),
        (TaskState::Skipped, "skipped"),
        (TaskState::Cancelled, "cancelled"),
        (TaskState::Compensated, "compensated"),
        (TaskState::Running, "running"),
        (TaskState::Pending, "pending"),
    ] {
        let n = count(state);
        if n > 0 {
            text.push_str(&format!(", {n} {name}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{TaskState, run_length, task_counts, took};

    #[test]
    fn a_runs_line_counts_its_tasks_by_state() {
        let tasks: Vec<(String, TaskState)> = [
            TaskState::Complete,
            TaskState::Failed,
            TaskState::Skipped,
            TaskState::Skipped,
            TaskState::Compensated,
        ]
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("t{i}"), s))
        .collect();
        assert_eq!(
            task_counts(&tasks),
            "1/5 complete, 1 failed, 2 skipped, 1 compensated"
        );
        assert_eq!(task_counts(&tasks[..1]), "1/1 complete");
    }

    #[test]
    fn task_times_read_in_the_unit_that_fits() {
        assert_eq!(took(740), "740 µs");
        assert_eq!(took(12_340), "12.3 ms");
        assert_eq!(took(42_500_000), "42.5 s");
    }

    #[test]
    fn run_lengths_read_in_the_unit_that_fits() {
        let ms = std::time::Duration::from_millis;
        assert_eq!(run_length(ms(740)), "740 ms");
        assert_eq!(run_length(ms(1_347)), "1.3 s");
        assert_eq!(run_length(ms(125_400)), "2m 5s");
    }
}
