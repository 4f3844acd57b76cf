//! The binary's commands. Parsing is clap's; each command lives in its own file and returns an
//! exit code. Errors print as `error: ...` with their causes and exit 2; a closed pipe exits 0.

/// A line on stdout, returning the write's error (`println!` panics on a closed pipe): with `?`,
/// `tetrarch runs | head -1` ends quietly with exit 0.
macro_rules! stdout_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// A line on stderr, ignoring a closed stderr (`eprintln!` panics): there is nowhere else to
/// say it, and the exit status still tells the outcome.
macro_rules! stderr_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod cache;
mod dashboard;
mod kernels;
mod lessons;
mod mem;
mod outputs;
mod perms;
mod plan;
mod run;
mod score;
mod store_socket;
use tetrarch::telemetry::terminal_text;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// tetrarch: a supervised four-agent runtime with a shared context store.
#[derive(Debug, Parser)]
#[command(name = "tetrarch", version, about)]
pub struct Cli {
    /// The store file (default: $TETRARCH_STORE, else $TETRARCH_HOME/store.redb, else the XDG data
    /// directory; an empty variable counts as unset).
    // Read by `resolve_store`, not clap's `env`: clap took an empty TETRARCH_STORE as a missing
    // `--store` value and failed every command.
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    /// Export the agents' spans to this OpenTelemetry collector (OTLP/HTTP traces URL, e.g.
    /// http://127.0.0.1:4318/v1/traces). OTEL_EXPORTER_OTLP_ENDPOINT also turns it on. Needs a
    /// binary built with `--features otel`.
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a plan through the four agents (resumes an unfinished run of the same plan).
    Run(run::RunArgs),
    /// List the runs saved in the store.
    Runs {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Store, read and search memories.
    #[command(subcommand)]
    Mem(mem::MemCommand),
    /// Compare a test image with a reference (FLIP, HDR-FLIP, SSIM, MS-SSIM, PSNR).
    Score(score::ScoreArgs),
    /// Work with the CUDA kernels.
    #[command(subcommand)]
    Kernels(kernels::KernelsCommand),
    /// Check, compare and consolidate Claude Code permission rules.
    #[command(subcommand)]
    Perms(perms::PermsCommand),
    /// Record failures and their fixes; suggest fixes for new errors.
    #[command(subcommand)]
    Lessons(lessons::LessonsCommand),
    /// Validate plans and show their DAG.
    #[command(subcommand)]
    Plan(plan::PlanCommand),
    /// Serve the dashboard of a finished run from the store.
    Dashboard(dashboard::DashboardArgs),
    /// Show or clear the persisted context cache (tool results, technique patterns, kernels).
    #[command(subcommand)]
    Cache(cache::CacheCommand),
}

/// Where the store lives when `--store` is not given.
fn default_store_path() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("TETRARCH_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join("store.redb"));
    }
    let data =
        dirs::data_dir().context("no data directory: set TETRARCH_HOME or pass --store PATH")?;
    Ok(data.join("tetrarch").join("store.redb"))
}

fn resolve_store(store: Option<PathBuf>) -> Result<PathBuf> {
    let from_env = || {
        std::env::var_os("TETRARCH_STORE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match store.or_else(from_env) {
        Some(path) => Ok(path),
        None => default_store_path(),
    }
}

/// The store of a command: one that may create it gets the path; for one that only reads or
/// changes what is there, a path with no store is a mistake (a mistyped `--store`), and opening
/// it would leave an empty store behind.
fn store_for(creates: bool, store: Option<PathBuf>) -> Result<PathBuf> {
    let path = resolve_store(store)?;
    anyhow::ensure!(
        creates || path.exists(),
        "no store at {}: nothing has run or been stored there (check --store or TETRARCH_STORE)",
        path.display()
    );
    if let Ok(metadata) = path.metadata() {
        // A device, a pipe or a folder is no store, whatever the command.
        anyhow::ensure!(
            metadata.is_file(),
            "{} is {}: a store is a regular file (check --store or TETRARCH_STORE)",
            path.display(),
            if metadata.is_dir() {
                "a folder"
            } else {
                "a device or a pipe"
            }
        );
        // An empty file is not a store either (opening it would make it one).
        anyhow::ensure!(
            creates || metadata.len() > 0,
            "{} is an empty file, not a store (check --store or TETRARCH_STORE)",
            path.display()
        );
    }
    Ok(path)
}

/// How long a command waits for a store another process holds: long enough for a `mem` command
/// beside another short one. A run holds its store until it ends, and serves the store commands
/// beside it (`store_socket`); the others (`dashboard`, a second `run`) fail at once, saying so.
const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a command waits for a store before it says so on stderr: commands started together
/// take turns in well under this, silently.
const STORE_WAIT_NOTICE: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens the store at `path`, waiting up to [`STORE_WAIT`] while another process holds it:
/// redb takes the file for one writer at a time, so two commands started together would
/// otherwise fail at once.
pub(crate) fn open_store(
    path: &std::path::Path,
    config: tetrarch::store::StoreConfig,
) -> Result<tetrarch::store::Store, tetrarch::store::StoreError> {
    open_waiting(path, config, BesideRun::Refused, |path, config| {
        tetrarch::store::Store::open(path, config)
    })
}

/// What a command does when a `tetrarch run` holds its store.
#[derive(Clone, Copy, PartialEq)]
enum BesideRun {
    /// The run serves it (`served_or` sends it there).
    Served,
    /// It fails, saying which commands work beside a run.
    Refused,
}

/// The store a command works on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StoreRef<'a> {
    /// The file, which the command opens (waiting its turn while another command holds it).
    File(&'a std::path::Path),
    /// The store of the run serving the command (see `store_socket`).
    Served(&'a tetrarch::store::Store),
}

impl StoreRef<'_> {
    /// The store, opened to write: see [`open_store`].
    pub(crate) fn open(
        self,
        config: tetrarch::store::StoreConfig,
    ) -> Result<tetrarch::store::Store, tetrarch::store::StoreError> {
        match self {
            StoreRef::File(path) => {
                open_waiting(path, config, BesideRun::Served, |path, config| {
                    tetrarch::store::Store::open(path, config)
                })
            }
            StoreRef::Served(store) => Ok(store.clone()),
        }
    }

    /// The store, opened only to read: see [`open_store_to_read`]. A served store is the run's,
    /// which is writable: `mem get` beside a run counts an access, as it does without one.
    pub(crate) fn open_to_read(
        self,
        config: tetrarch::store::StoreConfig,
    ) -> Result<tetrarch::store::Store, tetrarch::store::StoreError> {
        match self {
            StoreRef::File(path) => {
                open_waiting(path, config, BesideRun::Served, |path, config| {
                    tetrarch::store::Store::open_read_only(path, config)
                })
            }
            StoreRef::Served(store) => Ok(store.clone()),
        }
    }
}

impl std::fmt::Display for StoreRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreRef::File(path) => write!(f, "{}", path.display()),
            StoreRef::Served(store) => write!(f, "{}", store.path().display()),
        }
    }
}

/// [`open_store`] for a command that only reads: the file is not written (unless a crash left
/// it needing a repair; see `Store::open_read_only`), and such commands share it rather than
/// take turns (a writer still waits for them, and they for it).
pub(crate) fn open_store_to_read(
    path: &std::path::Path,
    config: tetrarch::store::StoreConfig,
) -> Result<tetrarch::store::Store, tetrarch::store::StoreError> {
    open_waiting(path, config, BesideRun::Refused, |path, config| {
        tetrarch::store::Store::open_read_only(path, config)
    })
}

fn open_waiting(
    path: &std::path::Path,
    config: tetrarch::store::StoreConfig,
    beside_run: BesideRun,
    open: impl Fn(
        &std::path::Path,
        tetrarch::store::StoreConfig,
    ) -> Result<tetrarch::store::Store, tetrarch::store::StoreError>,
) -> Result<tetrarch::store::Store, tetrarch::store::StoreError> {
    let started = std::time::Instant::now();
    let deadline = started + STORE_WAIT;
    let mut pause = std::time::Duration::from_millis(20);
    let mut told = false;
    loop {
        match open(path, config.clone()) {
            // A run holds its store until it ends, which is rarely within the wait.
            Err(error @ tetrarch::store::StoreError::AlreadyOpen { .. })
                if store_socket::run_serves(path) =>
            {
                // A run took the file while this command waited for it: it serves the command.
                if beside_run == BesideRun::Served {
                    return Err(error);
                }
                stderr_line!(
                    "note: a `tetrarch run` holds {} until it ends; only `runs`, `mem`, \
                     `lessons` and `cache stats` work beside it (the run's live dashboard is \
                     `tetrarch run --dashboard ADDR`)",
                    path.display()
                );
                return Err(error);
            }
            Err(tetrarch::store::StoreError::AlreadyOpen { .. })
                if std::time::Instant::now() + pause < deadline =>
            {
                if !told && started.elapsed() >= STORE_WAIT_NOTICE {
                    told = true;
                    stderr_line!(
                        "waiting for {}: another process has it open (a `tetrarch run` holds its \
                         store until it ends); giving up after {} s",
                        path.display(),
                        STORE_WAIT.as_secs()
                    );
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(250));
            }
            other => return other,
        }
    }
}

/// The largest plan or settings file read (a 20,000-task plan is about 2 MB): a path such as
/// `/dev/zero` must fail, not fill the memory.
const MAX_TEXT_FILE: u64 = 64 << 20;

/// Reads a plan or settings file as UTF-8, refusing one over [`MAX_TEXT_FILE`].
pub(crate) fn read_text(path: &std::path::Path, what: &str) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_TEXT_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_TEXT_FILE,
        "cannot read {what} {}: it is over {} MiB",
        path.display(),
        MAX_TEXT_FILE >> 20
    );
    String::from_utf8(bytes)
        .with_context(|| format!("cannot read {what} {}: it is not UTF-8", path.display()))
}

/// What must be flushed before the process exits.
struct TracingGuard {
    #[cfg(feature = "otel")]
    otlp: Option<tetrarch::telemetry::OtlpTracing>,
}

impl TracingGuard {
    fn finish(self) {
        #[cfg(feature = "otel")]
        if let Some(otlp) = self.otlp
            && let Err(e) = otlp.shutdown()
        {
            stderr_line!("warning: {e}");
        }
    }
}

fn otlp_requested(endpoint: Option<&str>) -> bool {
    endpoint.is_some()
        || [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// `RUST_LOG` (default `warn`) for what is printed; with `otel`, the exporter's own layer beside it.
fn init_tracing(otlp_endpoint: Option<&str>) -> TracingGuard {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A span is printed when it closes (with its busy and idle time), so `RUST_LOG=tetrarch=info`
    // shows each run, task, tool call and review as it ends.
    let printed = tracing_subscriber::fmt::layer()
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let requested = otlp_requested(otlp_endpoint);
    #[cfg(feature = "otel")]
    {
        let otlp = requested
            .then(|| {
                let config = tetrarch::telemetry::OtlpConfig {
                    endpoint: otlp_endpoint.map(str::to_owned),
                    ..Default::default()
                };
                tetrarch::telemetry::OtlpTracing::new(&config)
                    .inspect_err(|e| stderr_line!("warning: {e}; spans are not exported"))
                    .ok()
            })
            .flatten();
        let exported = otlp.as_ref().map(|o| o.layer());
        let _ = tracing_subscriber::registry()
            .with(printed)
            .with(exported)
            .try_init();
        TracingGuard { otlp }
    }
    #[cfg(not(feature = "otel"))]
    {
        if requested {
            stderr_line!(
                "warning: OpenTelemetry export was asked for, but this tetrarch was built without \
                 the `otel` feature; spans are not exported (build with `--features otel`)"
            );
        }
        let _ = tracing_subscriber::registry().with(printed).try_init();
        TracingGuard {}
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let Cli { store, command, .. } = cli;
    match command {
        Command::Run(args) => run::run(args, &resolve_store(store)?),
        Command::Runs { json } => {
            let store = store_for(false, store)?;
            served_or(&store, |file, out| run::list(file, json, out))
        }
        Command::Mem(command) => {
            let store = store_for(command.creates_store(), store)?;
            served_or(&store, |file, out| mem::run(command, file, out))
        }
        Command::Score(args) => score::run(args, resolve_store(store).ok()),
        Command::Kernels(command) => kernels::run(command),
        Command::Perms(command) => perms::run(command),
        Command::Lessons(command) => {
            let store = store_for(command.creates_store(), store)?;
            served_or(&store, |file, out| lessons::run(command, file, out))
        }
        Command::Plan(command) => plan::run(command),
        Command::Dashboard(args) => dashboard::run(args, &store_for(false, store)?),
        Command::Cache(command) => {
            let store = store_for(false, store)?;
            served_or(&store, |file, out| cache::run(command, file, out))
        }
    }
}

/// Runs a store command in the run that holds `store` when one serves it (see `store_socket`),
/// else `here` on the file, printing to stdout.
fn served_or(
    store: &std::path::Path,
    here: impl FnOnce(StoreRef<'_>, &mut dyn std::io::Write) -> Result<ExitCode>,
) -> Result<ExitCode> {
    if let Some(code) = store_socket::forward(store)? {
        return Ok(code);
    }
    match here(StoreRef::File(store), &mut std::io::stdout().lock()) {
        // A run took the file while this command waited its turn (the store is opened before
        // anything is printed): the run does the command.
        Err(error) if held_by_a_run(&error) && store_socket::run_serves(store) => {
            store_socket::forward(store)?.ok_or(error)
        }
        done => done,
    }
}

fn held_by_a_run(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<tetrarch::store::StoreError>(),
            Some(tetrarch::store::StoreError::AlreadyOpen { .. })
        )
    })
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    let broken = Some(std::io::ErrorKind::BrokenPipe);
    error.chain().any(|cause| {
        // serde_json's writer holds the io::Error without giving it as its source.
        cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            == broken
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == broken
    })
}

/// The error and its causes, each cause once: the library's errors already say their source
/// (`cannot read the file: No such file...`), which `{:#}` would print a second time.
pub(crate) fn error_text(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// A panic of the database engine on a damaged file that the store catches becomes an error
/// naming the file (`StoreError::Corrupt`); printed by the default hook as well, with a
/// backtrace under `RUST_BACKTRACE`, it read as a crash. It is logged at debug level instead.
/// Every other panic is printed as before.
fn quiet_caught_engine_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if tetrarch::store::engine_panic_is_caught() {
            tracing::debug!("the database engine panicked (caught): {info}");
        } else {
            default(info);
        }
    }));
}

/// Parses the arguments, runs the command and maps its outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version print as clap prints them.
        Err(error) if !error.use_stderr() => error.exit(),
        // A usage error echoes what was typed, which may hold control characters: written as
        // escapes, as all human output is. Parsed again without styles, the error's text holds
        // no escape sequence but the user's (clap's plain rendering drops those silently).
        Err(error) => {
            use clap::CommandFactory;
            let plain = Cli::command()
                .styles(clap::builder::Styles::plain())
                .try_get_matches()
                .err()
                .unwrap_or(error);
            let text = plain.render().ansi().to_string();
            // Not `eprint!`, which panics when stderr is closed.
            {
                use std::io::Write as _;
                let _ = write!(
                    std::io::stderr().lock(),
                    "{}",
                    terminal_text::printable(&text, false)
                );
            }
            return ExitCode::from(2);
        }
    };
    let tracing = init_tracing(cli.otlp_endpoint.as_deref());
    quiet_caught_engine_panics();
    let code = match run(cli) {
        Ok(code) => code,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            stderr_line!(
                "error: {}",
                terminal_text::printable(&error_text(&error), false)
            );
            ExitCode::from(2)
        }
    };
    tracing.finish();
    code
}
