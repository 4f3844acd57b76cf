//! Tool sessions and the pools the Executor runs tool calls through.
//!
//! A [`Session`] runs one [`ToolRequest`] at a time and answers a [`ToolOutcome`] or a
//! [`SessionError`]. Four kinds:
//! - [`process`]: one child process per call (argv already templated by the caller, optional
//!   stdin, cwd, a cleared environment plus an allowlist, timeout, capped output capture). The
//!   session itself is a cheap launcher.
//! - [`mcp`]: one Model Context Protocol server started as a child process and spoken to over stdio
//!   through the `rmcp` client; it stays open between calls, tools are called by name.
//! - [`native`]: Rust async functions registered in a [`NativeRegistry`].
//! - [`scorer`]: image metrics ([`crate::scoring`]) on a pre-warmed scorer; tool names are metrics.
//!
//! A [`Pool`] keeps sessions of one kind ready: `min_idle` are started by [`Pool::start`] before
//! the first task (so the first call does not pay the start), at most `max_size` are in use at once
//! (a tokio semaphore), a caller of [`Pool::acquire`] waits at most `acquire_timeout` (the
//! agents' calls wait in turn, [`Pool::acquire_queued`]), idle sessions above `min_idle`
//! are closed after `idle_timeout`, idle sessions are health-checked every
//! `health_check_interval`, and a session that breaks (a crash, a protocol error, a timeout, a dead
//! server) is discarded and replaced in the background; a scorer session is kept after a timeout
//! (its timed-out job finishes on its own: [`Session::timeout_breaks_it`]). The pool is written on tokio primitives
//! because `deadpool` and `bb8` do not pre-warm to a minimum on their own (deadpool has no
//! `min_idle`) and neither runs a health check with a per-kind notion of "broken" after a call.
//!
//! The [`Session`] trait returns [`BoxFuture`]s rather than using `async fn`: sessions of
//! different kinds are pooled and handed out as `Box<dyn Session>`, which needs a dyn-compatible
//! trait, and boxing by hand avoids the `async-trait` macro for the same effect.
//!
//! Cancellation: every call is a cancel-safe future. Dropping it kills the child process (and, on
//! unix, its process group) for the `process` kind, drops the function's future for the `native`
//! kind (a function that blocks its thread cannot be stopped), and drops the request for the
//! `mcp` kind; a pooled session whose call was dropped half-way is
//! treated as broken and replaced.
//!
//! Safe by default: child processes get a cleared environment plus the names in their allowlist
//! (copied from our environment) plus explicit variables. Nothing read from a child or a server
//! is unwrapped; bad output becomes a [`SessionError`] or shows in the outcome.

pub mod def;
mod error;
mod groups;
pub mod mcp;
pub mod native;
mod pool;
pub mod process;
pub mod scorer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use def::{PoolContext, PoolDef, PoolKind, WarmupDef};
pub use error::SessionError;
pub use futures::future::BoxFuture;
pub(crate) use groups::ChildGroup;
pub use groups::kill_child_process_groups;
pub use mcp::{MAX_MESSAGE_BYTES, McpFactory, McpSession, McpSpec};
pub use native::{NativeFactory, NativeRegistry, NativeSession, NativeTool};
pub use pool::{Pool, PoolConfig, PoolStats, PooledSession};
pub use process::{DEFAULT_MAX_OUTPUT_BYTES, ProcessFactory, ProcessSession, ProcessSpec};
pub use scorer::{SCORER_TOOLS, ScorerFactory, ScorerSession, ScorerSpec};

/// One tool call as the Executor hands it to a session.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRequest {
    /// The tool's name (for `mcp` and `native`; a label in errors for `process`).
    pub tool: String,
    /// The tool's arguments (for `mcp`, a JSON object; `process` takes its argv from its spec).
    pub args: serde_json::Value,
    /// Bytes written to the child's stdin, then closed (`process` kind only).
    pub stdin: Option<Vec<u8>>,
    /// How long the call may run.
    pub timeout: Duration,
}

impl ToolRequest {
    /// A request for `tool` with `args`, no stdin, and a 60-second timeout.
    pub fn new(tool: impl Into<String>, args: serde_json::Value) -> Self {
        Self {
            tool: tool.into(),
            args,
            stdin: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// The same request with `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same request with `stdin`.
    pub fn with_stdin(mut self, stdin: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }
}

/// What a tool call produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolOutcome {
    /// The exit status: a process's exit code, `Some(1)` for an MCP result flagged `isError` or a
    /// native tool's `Err`, `Some(0)` otherwise.
    pub exit_status: Option<i32>,
    /// Standard output (lossy UTF-8, capped), or an MCP result's text content joined by newlines.
    pub stdout: String,
    /// Standard error (lossy UTF-8, capped), or a native tool's error message.
    pub stderr: String,
    /// Structured result: stdout parsed as JSON when it is JSON, an MCP result's
    /// `structuredContent`, a native tool's value.
    pub json: Option<serde_json::Value>,
    /// Whether stdout or stderr was cut at the cap.
    pub truncated: bool,
    /// Wall time of the call.
    pub duration: Duration,
}

impl ToolOutcome {
    /// Whether the tool reported success (exit status 0).
    pub fn succeeded(&self) -> bool {
        self.exit_status == Some(0)
    }

    /// What the tool said about a failure: its stderr, else its stdout (where an MCP tool's
    /// error result puts its message), trimmed.
    pub fn error_text(&self) -> &str {
        match self.stderr.trim() {
            "" => self.stdout.trim(),
            stderr => stderr,
        }
    }
}

/// A session: something that runs tool calls one at a time.
pub trait Session: Send {
    /// Runs one tool call. Dropping the future cancels the call.
    fn call(&mut self, request: ToolRequest) -> BoxFuture<'_, Result<ToolOutcome, SessionError>>;

    /// Checks that the session can still take calls (an MCP server answers a ping).
    fn health_check(&mut self) -> BoxFuture<'_, Result<(), SessionError>>;

    /// Brings the session back to a clean state between tasks: a pool calls it before handing
    /// out again a session that served a call, and replaces a session whose reset fails or does
    /// not answer within the pool's `health_check_timeout`. The
    /// built-in kinds keep no state between calls and do nothing; a session kind of your own
    /// (a [`SessionFactory`]) can clear what one task left behind.
    fn reset(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async { Ok(()) })
    }

    /// The tool names this session answers to, when it can tell; `None` when any name is
    /// accepted (a `process` session, whose tool name is only a label). The runtime checks a
    /// plan's tools against this before the run starts.
    fn tools(&mut self) -> BoxFuture<'_, Result<Option<Vec<String>>, SessionError>> {
        Box::pin(async { Ok(None) })
    }

    /// Whether a call that timed out leaves the session unusable, so that its pool replaces it
    /// (the default: a process or a server may be part-way through an answer it will still
    /// send). A session whose calls leave nothing in it says `false`: the scorer, whose
    /// timed-out job finishes on its own, and whose replacement would compile its kernels and
    /// score its warm-up images again.
    fn timeout_breaks_it(&self) -> bool {
        true
    }

    /// A cheap check without I/O: `false` once the session is known to be dead.
    fn is_open(&self) -> bool {
        true
    }

    /// Exercises the session again the way its first real call will (an `mcp` session repeats
    /// its declared warm-up call as many times as it declares; other kinds do nothing). The
    /// runtime calls it on every idle session as the last step of starting, so no session has
    /// sat idle between its warm-up and the first task while other pools were starting. It
    /// repeats the declared count, like the connect does, because one call after tens of
    /// milliseconds idle is itself a slow call: traced hop by hop, it took 300–570 µs and the
    /// next one still up to 370 µs, against 85–290 µs steady.
    fn warm_up(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Starts sessions of one kind for a [`Pool`].
pub trait SessionFactory: Send + Sync + 'static {
    /// Starts one session (for `mcp`, spawns and initializes a server).
    fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>>;
}

/// The text a panic was raised with (`panic!("...")` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned())
}

/// Why `program` could not be started: a missing or non-folder working directory is named as
/// such (the operating system reports it as the program not being found).
pub(crate) fn spawn_error(
    program: &str,
    cwd: Option<&PathBuf>,
    source: std::io::Error,
) -> SessionError {
    match cwd {
        Some(dir) if !dir.is_dir() => SessionError::InvalidConfig {
            detail: format!(
                "cannot start {program:?}: its working directory {} {}",
                dir.display(),
                if dir.exists() {
                    "is not a folder"
                } else {
                    "does not exist"
                }
            ),
        },
        // The usual cause is a template that rendered a large text into an argument.
        _ if source.kind() == std::io::ErrorKind::ArgumentListTooLong => SessionError::Spawn {
            program: program.to_owned(),
            source: std::io::Error::new(
                source.kind(),
                format!(
                    "{source}: an argument, or the arguments and environment together, are over \
                     the system's limit (Linux: 128 KiB for one argument); pass a large text \
                     such as {{{{context}}}} on stdin (`stdin = \"{{{{context}}}}\"`)"
                ),
            ),
        },
        _ if source.kind() == std::io::ErrorKind::NotFound && program.contains('/') => {
            let path = cwd.map_or_else(|| PathBuf::from(program), |dir| dir.join(program));
            let source = match missing_interpreter(&path) {
                Some(problem) => std::io::Error::new(source.kind(), problem),
                None => source,
            };
            SessionError::Spawn {
                program: program.to_owned(),
                source,
            }
        }
        _ => SessionError::Spawn {
            program: program.to_owned(),
            source,
        },
    }
}

/// Why the script at `path` cannot start although it is there: the interpreter its `#!` line
/// names does not exist (the OS then reports the script itself as not found).
pub(crate) fn missing_interpreter(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let read = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..read].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = String::from_utf8_lossy(line);
    // Split as the kernel does, on spaces and tabs: a `\r` (Windows line endings) is part of
    // the interpreter's name.
    let interpreter = line
        .trim_start_matches([' ', '\t'])
        .split([' ', '\t'])
        .next()
        .filter(|name| !name.is_empty())?;
    if std::path::Path::new(interpreter).is_file() {
        return None;
    }
    if let Some(name) = interpreter.strip_suffix('\r') {
        return Some(format!(
            "{} starts with `#!{name}` followed by a carriage return: the file has Windows line \
             endings, so the interpreter looked for is `{name}\\r`, which does not exist",
            path.display()
        ));
    }
    Some(format!(
        "{} starts with `#!{}`, and its interpreter {interpreter} does not exist",
        path.display(),
        line.trim()
    ))
}

/// Whether `path` is a file we may execute.
pub(crate) fn is_executable(path: &std::path::Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// The `PATH` a child gets: its explicit one, else ours when allowlisted (`None`: it gets none).
pub(crate) fn child_path(
    env_allowlist: &[String],
    env: &BTreeMap<String, String>,
) -> Option<std::ffi::OsString> {
    env.get("PATH").map(std::ffi::OsString::from).or_else(|| {
        env_allowlist
            .iter()
            .any(|name| name == "PATH")
            .then(|| std::env::var_os("PATH"))
            .flatten()
    })
}

/// glibc's `execvp` searches this when the child gets no `PATH` (`confstr(_CS_PATH)`).
pub(crate) const EXECVP_DEFAULT_PATH: &str = "/bin:/usr/bin";

/// The file a bare program name starts in the child, found here as glibc's `execvp` would find
/// it there: the first file of that name on the `PATH` the child gets that it may execute.
///
/// Why: the child's environment is cleared, and std then cannot `posix_spawn` a bare name (that
/// would search our `PATH`, not the child's), so it forks the whole process instead, copying its
/// page tables. Measured for a `true` call through tokio on a 2-core machine, with the cleared
/// environment and a process group as here, at 200 MB resident: 10.9–11.2 ms by name against
/// 0.7–1.2 ms by path (groups.rs gives the fork's cost at other sizes).
///
/// `None` leaves the search to the child, as before, wherever `execvp` could decide otherwise: a
/// name with a `/`; a `PATH` with an empty or relative entry (the child's folder takes part); no
/// such program; a lookup error other than "not there" or "not allowed" (`execvp` stops at it);
/// a `#!` script whose interpreter is missing (`execvp` goes on to the next entry); a file that
/// starts with neither `#!` nor ELF's magic (`execvp` runs it through `sh`, a spawn by path would
/// fail it: so nothing is resolved where programs are not ELF). An ELF file for another machine
/// still fails to spawn where `execvp` would hand it to `sh`, which fails it too.
#[cfg(unix)]
pub(crate) fn program_on_child_path(
    program: &str,
    child_path: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    use std::io::ErrorKind;
    use std::os::unix::ffi::OsStrExt;
    if program.is_empty() || program.contains('/') {
        return None;
    }
    let passed_over = |kind: ErrorKind| {
        matches!(
            kind,
            ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::PermissionDenied
        )
    };
    let paths = child_path.unwrap_or(EXECVP_DEFAULT_PATH.as_ref());
    for dir in paths.as_bytes().split(|&b| b == b':') {
        if !dir.starts_with(b"/") {
            return None;
        }
        // Joined as glibc joins it (`/usr/bin/` gives `/usr/bin//tool`): a script sees it as `$0`.
        let mut candidate = std::ffi::OsStr::from_bytes(dir).to_owned();
        candidate.push("/");
        candidate.push(program);
        let candidate = PathBuf::from(candidate);
        match std::fs::metadata(&candidate) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => continue,
            Err(e) if passed_over(e.kind()) => continue,
            Err(_) => return None,
        }
        // As the kernel decides: execute permission for us, and not on a `noexec` mount.
        match nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK) {
            Ok(()) => {}
            Err(e) if passed_over(std::io::Error::from(e).kind()) => continue,
            Err(_) => return None,
        }
        match program_start(&candidate) {
            ProgramStart::Elf => return Some(candidate),
            // `execve` fails it as not found, and `execvp` goes on to the next entry.
            ProgramStart::Script if missing_interpreter(&candidate).is_some() => {}
            ProgramStart::Script => return Some(candidate),
            ProgramStart::Other => return None,
        }
    }
    None
}

/// Never resolved where there is no `posix_spawn` to gain.
#[cfg(not(unix))]
pub(crate) fn program_on_child_path(
    _program: &str,
    _child_path: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    None
}

/// How an executable file starts.
#[cfg(unix)]
enum ProgramStart {
    Elf,
    Script,
    Other,
}

#[cfg(unix)]
fn program_start(path: &std::path::Path) -> ProgramStart {
    use std::io::Read;
    let mut head = [0u8; 4];
    let Ok(mut file) = std::fs::File::open(path) else {
        return ProgramStart::Other;
    };
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return ProgramStart::Other,
        }
    }
    if head[..read] == *b"\x7fELF" {
        ProgramStart::Elf
    } else if head[..read].starts_with(b"#!") {
        ProgramStart::Script
    } else {
        ProgramStart::Other
    }
}

/// A child command with a cleared environment: only the allowlisted variables of ours (absent ones
/// skipped), then the explicit ones, which win. Shared by the process and MCP kinds. A bare
/// program name is started by the path the child would find it at, with the name as its
/// `argv[0]` ([`program_on_child_path`] says why).
pub(crate) fn child_command(
    program: &str,
    args: &[String],
    cwd: Option<&PathBuf>,
    env_allowlist: &[String],
    env: &BTreeMap<String, String>,
) -> tokio::process::Command {
    let child_path = child_path(env_allowlist, env);
    let mut command = match program_on_child_path(program, child_path.as_deref()) {
        Some(path) => {
            let mut command = tokio::process::Command::new(path);
            #[cfg(unix)]
            command.arg0(program);
            command
        }
        None => tokio::process::Command::new(program),
    };
    command.args(args).env_clear();
    for name in env_allowlist {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.envs(env);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    command
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::program_on_child_path;

    fn executable(dir: &std::path::Path, name: &str, text: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A bare name resolves to the file `execvp` would run: the first of that name on the
    /// child's `PATH` it may execute, passing over what `execvp` passes over; every case where
    /// `execvp` could decide otherwise is left to it.
    #[test]
    fn a_bare_name_resolves_only_where_execvp_would_take_the_same_file() {
        let [first, second, third] = [(); 3].map(|()| tempfile::tempdir().unwrap());
        // Passed over, as execvp passes them over: a file without execute permission, a folder,
        // a script whose interpreter is missing.
        std::fs::write(first.path().join("tool"), b"#!/bin/sh\n").unwrap();
        std::fs::create_dir(second.path().join("tool")).unwrap();
        executable(second.path(), "other", b"#!/no/such/interpreter\n");
        let script = executable(third.path(), "tool", b"#!/bin/sh\necho hi\n");
        executable(third.path(), "other", b"#!/bin/sh\n");
        let path = std::env::join_paths([first.path(), second.path(), third.path()]).unwrap();
        assert_eq!(program_on_child_path("tool", Some(&path)), Some(script));
        assert_eq!(
            program_on_child_path("other", Some(&path)),
            Some(third.path().join("other"))
        );
        // Not found, named with a `/`, or empty: left to the child.
        assert_eq!(program_on_child_path("absent-tool", Some(&path)), None);
        assert_eq!(program_on_child_path("./tool", Some(&path)), None);
        assert_eq!(program_on_child_path("", Some(&path)), None);
        // An empty or relative entry before the file means the child's folder takes part.
        let third_path = third.path().display();
        for before in ["", "bin"] {
            let path = format!("{before}:{third_path}");
            assert_eq!(program_on_child_path("tool", Some(path.as_ref())), None);
        }
        // Joined as glibc joins it: a script gets this as its `$0`.
        let slashed = format!("{third_path}/");
        let found = program_on_child_path("tool", Some(slashed.as_ref())).unwrap();
        assert_eq!(found.as_os_str(), format!("{third_path}//tool").as_str());
        // A script without `#!` is run by execvp through `sh`; a spawn by path would fail it.
        executable(third.path(), "plain", b"echo plain\n");
        assert_eq!(
            program_on_child_path("plain", Some(third.path().as_os_str())),
            None
        );
        // An ELF file resolves; with no `PATH` at all, glibc's default is searched.
        let sh = program_on_child_path("sh", None).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
    }
}
