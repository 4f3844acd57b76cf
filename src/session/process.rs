//! The `process` kind: one child process per call.
//!
//! The child's argv is the spec's program and arguments followed by the call's `argv` (a list of
//! strings in the request's args, templated by the Executor from the task), so one pool serves
//! every call of a command family; `args.env` (an object of strings) adds variables for one call.
//! The child gets a cleared environment, then the variables named in
//! [`ProcessSpec::env_allowlist`] copied from ours, then [`ProcessSpec::env`]. stdout and stderr are
//! read concurrently, each kept up to [`ProcessSpec::max_output_bytes`]; past the cap the rest is
//! read and thrown away so that a chatty child never blocks on a full pipe. On unix the child leads
//! its own process group, and a timeout or a dropped call kills the whole group (through `nix`'s
//! safe `killpg`), so a shell's grandchildren die with it; so does the end of a call, once the
//! output is read, so a process the child left in the background (`server &`) does not outlive
//! it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{BoxFuture, Session, SessionError, SessionFactory, ToolOutcome, ToolRequest};

/// Default cap on each of stdout and stderr: 1 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// How to start the child for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The program (a path, or a name looked up in the child's `PATH`).
    pub program: String,
    /// The arguments, already templated by the caller.
    pub args: Vec<String>,
    /// The working directory; ours when `None`.
    pub cwd: Option<PathBuf>,
    /// Names of variables copied from our environment (absent ones are skipped).
    pub env_allowlist: Vec<String>,
    /// Variables set explicitly (they win over the allowlist).
    pub env: BTreeMap<String, String>,
    /// Cap on each of stdout and stderr, in bytes.
    pub max_output_bytes: usize,
}

impl ProcessSpec {
    /// A spec for `program` with `args`, no environment but `PATH`, and the default output cap.
    pub fn new(
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            cwd: None,
            env_allowlist: vec!["PATH".to_owned()],
            env: BTreeMap::new(),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// A launcher that runs its [`ProcessSpec`] once per call; always healthy.
#[derive(Debug, Clone)]
pub struct ProcessSession {
    spec: Arc<ProcessSpec>,
}

impl ProcessSession {
    /// A session running `spec`.
    pub fn new(spec: ProcessSpec) -> Self {
        Self {
            spec: Arc::new(spec),
        }
    }
}

impl Session for ProcessSession {
    fn call(&mut self, request: ToolRequest) -> BoxFuture<'_, Result<ToolOutcome, SessionError>> {
        let spec = Arc::clone(&self.spec);
        Box::pin(async move { run(&spec, request).await })
    }

    fn health_check(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Makes [`ProcessSession`]s for a pool.
#[derive(Debug, Clone)]
pub struct ProcessFactory {
    spec: Arc<ProcessSpec>,
}

impl ProcessFactory {
    /// A factory for sessions running `spec`.
    pub fn new(spec: ProcessSpec) -> Self {
        Self {
            spec: Arc::new(spec),
        }
    }

    /// Checks that the spec's program can be started now: its folder exists and the program
    /// is found. Not a condition of starting a pool, whose program an earlier task may build.
    ///
    /// # Errors
    /// [`SessionError::Spawn`] naming the program, or [`SessionError::InvalidConfig`] naming a
    /// working folder that is missing.
    pub fn check(&self) -> Result<(), SessionError> {
        check_startable(&self.spec)
    }
}

impl SessionFactory for ProcessFactory {
    fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>> {
        let session = ProcessSession {
            spec: Arc::clone(&self.spec),
        };
        Box::pin(async move { Ok(Box::new(session) as Box<dyn Session>) })
    }
}

/// Whether `spec`'s program can be started: its working folder exists, and the program is an
/// executable file (a path with a `/`, relative to that folder as the child sees it) or one is
/// found on a `PATH` the child may search. Lenient where the lookup depends on the platform: a
/// name found on our `PATH` or in `/bin:/usr/bin` passes even if the child's `PATH` lacks it.
fn check_startable(spec: &ProcessSpec) -> Result<(), SessionError> {
    if let Some(dir) = spec.cwd.as_ref().filter(|dir| !dir.is_dir()) {
        return Err(super::spawn_error(
            &spec.program,
            Some(dir),
            std::io::ErrorKind::NotFound.into(),
        ));
    }
    let missing = |detail: &str| SessionError::Spawn {
        program: spec.program.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, detail.to_owned()),
    };
    if spec.program.is_empty() {
        return Err(missing("the program is empty"));
    }
    if spec.program.contains('/') {
        let path = match &spec.cwd {
            Some(dir) => dir.join(&spec.program),
            None => PathBuf::from(&spec.program),
        };
        return if super::is_executable(&path) {
            match super::missing_interpreter(&path) {
                Some(problem) => Err(missing(&problem)),
                None => Ok(()),
            }
        } else {
            Err(missing(&format!(
                "{} is not an executable file",
                path.display()
            )))
        };
    }
    let searched = [
        super::child_path(&spec.env_allowlist, &spec.env),
        std::env::var_os("PATH"),
        Some(super::EXECVP_DEFAULT_PATH.into()),
    ];
    let base = spec.cwd.clone().unwrap_or_default();
    let found = searched.iter().flatten().any(|paths| {
        std::env::split_paths(paths)
            .any(|dir| super::is_executable(&base.join(dir).join(&spec.program)))
    });
    if found {
        Ok(())
    } else {
        Err(missing("no such program on the PATH the child gets"))
    }
}

/// A call's value as text for a variable or stdin: a string as it is, a number or boolean
/// written out, an object or array as JSON (a whole-string template such as
/// `"{{tasks.a.output}}"` renders to the referenced value, not to a string); `null` is none.
pub(crate) fn value_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// Why `name` cannot name an environment variable, if it cannot: the OS keeps `NAME=value`
/// strings, so a name holding `=` (or empty) would set another variable than the one written.
pub(crate) fn variable_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("a variable's name cannot be empty")
    } else if name.contains('=') {
        Some("a variable's name cannot hold `=`")
    } else if name.contains('\0') {
        Some("a variable's name cannot hold a NUL")
    } else {
        None
    }
}

/// The call's own variables (`args.env`): a table of `NAME = value`, each value as
/// [`value_text`] gives it (`null` sets nothing). Anything else is refused, naming the tool: a
/// list or a string here used to be ignored, and the command ran without the variables.
pub(crate) fn call_env(
    tool: &str,
    args: &serde_json::Value,
) -> Result<Vec<(String, String)>, SessionError> {
    let bad = |detail: String| SessionError::InvalidArguments {
        tool: tool.to_owned(),
        detail,
    };
    let table = match args.get("env") {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Object(table)) => table,
        Some(other) => {
            return Err(bad(format!(
                "`env` must be a table of NAME = value, not {other}"
            )));
        }
    };
    let mut set = Vec::with_capacity(table.len());
    for (name, value) in table {
        if let Some(problem) = variable_name_problem(name) {
            return Err(bad(format!("`env` names {name:?}: {problem}")));
        }
        if let Some(text) = value_text(value) {
            if text.contains('\0') {
                return Err(bad(format!("`env` {name:?}: its value {NUL_IN_VALUE}")));
            }
            set.push((name.clone(), text));
        }
    }
    Ok(set)
}

/// Why a value with a NUL byte is refused: the OS passes arguments and variables as C strings.
pub(crate) const NUL_IN_VALUE: &str =
    "holds a NUL byte, which no program argument or environment variable can carry";

/// The call's extra arguments: the strings of `args.argv` (numbers and booleans are written out;
/// anything else is refused, naming the tool and the item). The Executor checks them before the
/// permission rules see the command, so a malformed `argv` is reported as such.
pub(crate) fn extra_argv(
    tool: &str,
    args: &serde_json::Value,
) -> Result<Vec<String>, SessionError> {
    let Some(argv) = args.get("argv") else {
        return Ok(Vec::new());
    };
    let bad = |detail: String| SessionError::InvalidArguments {
        tool: tool.to_owned(),
        detail,
    };
    let items = argv
        .as_array()
        .ok_or_else(|| bad(format!("`argv` must be a list of strings, not {argv}")))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            serde_json::Value::String(s) if s.contains('\0') => {
                Err(bad(format!("`argv[{i}]`: {NUL_IN_VALUE}")))
            }
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            serde_json::Value::Bool(b) => Ok(b.to_string()),
            other => Err(bad(format!("`argv[{i}]` is {other}, not a string"))),
        })
        .collect()
}

async fn run(spec: &ProcessSpec, request: ToolRequest) -> Result<ToolOutcome, SessionError> {
    let started = Instant::now();
    let mut args = spec.args.clone();
    args.extend(extra_argv(&request.tool, &request.args)?);
    // Per-call variables (`args.env`, e.g. from a plan's declared fix) win over the spec's, in
    // the lookup of a bare program name too: the child's `PATH` may be the call's.
    let per_call = call_env(&request.tool, &request.args)?;
    let merged;
    let env = if per_call.is_empty() {
        &spec.env
    } else {
        let mut env = spec.env.clone();
        env.extend(per_call);
        merged = env;
        &merged
    };
    let mut command = super::child_command(
        &spec.program,
        &args,
        spec.cwd.as_ref(),
        &spec.env_allowlist,
        env,
    );
    command
        .stdin(if request.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    super::groups::start_reaper();
    let mut child = command
        .spawn()
        .map_err(|source| super::spawn_error(&spec.program, spec.cwd.as_ref(), source))?;
    // Kills the group when the call ends without the child having been reaped (timeout or
    // cancellation).
    let mut group = super::ChildGroup::new(child.id());
    let io_error = |stream: &'static str| {
        let program = spec.program.clone();
        move |source| SessionError::Io {
            program,
            stream,
            source,
        }
    };

    let stdin_pipe = child.stdin.take();
    let stdin_bytes = request.stdin;
    let feed = async move {
        if let (Some(mut pipe), Some(bytes)) = (stdin_pipe, stdin_bytes) {
            // A child that exits without reading its stdin closes the pipe: not our error.
            match pipe.write_all(&bytes).await {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let (stdout_pipe, stderr_pipe) = (child.stdout.take(), child.stderr.take());
    let (mut out, mut err) = (Captured::default(), Captured::default());
    let cap = spec.max_output_bytes;

    let tool = request.tool.clone();
    let work = async {
        let (ended, mut end_seen) = tokio::sync::watch::channel(ChildEnd::Running);
        // The call's timeout bounds the child's run; what it wrote last is read afterwards, so
        // a child that exits in time is not failed by the moment its output takes to drain.
        let wait = async {
            let status = tokio::time::timeout(request.timeout, child.wait()).await;
            let _ = ended.send(match status {
                Ok(_) => ChildEnd::Exited,
                Err(_) => ChildEnd::TimedOut,
            });
            status
        };
        // The pipes are read alongside the wait (a child blocks on a full pipe), until their
        // end, or until a moment after the child exits: a process that left the child's group
        // (`setsid server &`) may hold them open for ever, and the call is over when the child is.
        let streams = async {
            tokio::try_join!(
                async { feed.await.map_err(io_error("stdin")) },
                async {
                    read_into(stdout_pipe, cap, &mut out)
                        .await
                        .map_err(io_error("stdout"))
                },
                async {
                    read_into(stderr_pipe, cap, &mut err)
                        .await
                        .map_err(io_error("stderr"))
                },
            )
            .map(|_| ())
        };
        let io = async {
            tokio::select! {
                done = streams => done,
                _ = async {
                    let end = end_seen.wait_for(|end| *end != ChildEnd::Running).await;
                    if end.is_ok_and(|end| *end == ChildEnd::Exited) {
                        tokio::time::sleep(PIPES_AFTER_EXIT).await;
                    }
                } => Ok(()),
            }
        };
        let (status, io) = tokio::join!(wait, io);
        let Ok(status) = status else {
            // `group` kills the group; kill_on_drop kills the child when `child` drops.
            return Err(SessionError::Timeout {
                tool: tool.clone(),
                after: request.timeout,
            });
        };
        // The call is one child: what it left in its group goes with it once its output is
        // read (a `tee` of a process substitution may still be copying the last lines), rather
        // than outliving the task, the run and tetrarch. A server meant to outlive the call
        // detaches itself with `setsid`.
        group.kill_leftovers();
        io?;
        status.map_err(io_error("wait"))
    };
    let status = work.await?;
    let exit_status = status.code();
    let (stdout, out_cut) = out.text(cap);
    let (stderr, err_cut) = err.text(cap);
    if exit_status.is_none() {
        return Err(SessionError::Crashed {
            tool,
            reason: crash_reason(&status, &stderr, err_cut),
        });
    }
    let json = if out_cut {
        None
    } else {
        serde_json::from_str(stdout.trim()).ok()
    };
    Ok(ToolOutcome {
        exit_status,
        stdout,
        stderr,
        json,
        truncated: out_cut || err_cut,
        duration: started.elapsed(),
    })
}

/// How long the output pipes are still read after the child exits: enough for what it wrote
/// last, not for what a process it left in the background writes.
const PIPES_AFTER_EXIT: std::time::Duration = std::time::Duration::from_millis(200);

/// How the child's run ended, for the reading of its pipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildEnd {
    Running,
    Exited,
    TimedOut,
}

/// How many of a crashed child's last stderr lines its reason quotes, and at most how many
/// characters of them.
const CRASH_STDERR_LINES: usize = 5;
const CRASH_STDERR_CHARS: usize = 500;

/// Why a child that ended without an exit code did: the signal by name (`SIGSEGV`), and the
/// last lines it wrote on stderr (a sanitizer's report, an assertion), as a non-zero exit's
/// reason quotes them. Stderr past the capture's cap (`cut`) is not there to quote.
fn crash_reason(status: &std::process::ExitStatus, stderr: &str, cut: bool) -> String {
    let mut reason = format!("ended without an exit code ({status})");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            reason = match nix::sys::signal::Signal::try_from(signal) {
                Ok(name) => format!("killed by {} (signal {signal})", name.as_str()),
                Err(_) => format!("killed by signal {signal}"),
            };
            if status.core_dumped() {
                reason.push_str(", core dumped");
            }
        }
    }
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect();
    if !lines.is_empty() {
        let last = lines[lines.len().saturating_sub(CRASH_STDERR_LINES)..].join(" | ");
        // The end is what says why: a long line keeps its last characters.
        let skip = last.chars().count().saturating_sub(CRASH_STDERR_CHARS);
        let text: String = last.chars().skip(skip).collect();
        let (said, more) = if cut {
            (
                "its stderr, cut at the capture's limit, ends",
                " (what followed is lost)",
            )
        } else {
            ("its stderr ends", "")
        };
        reason.push_str(&format!(
            "; {said}: {}{text}{more}",
            if skip > 0 { "…" } else { "" }
        ));
    }
    reason
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Captured {
    /// The captured bytes as text, at most `cap` bytes of it, and whether anything was cut. A
    /// cut can split the last character (its start is dropped, not turned into U+FFFD), and
    /// bytes that are not UTF-8 become U+FFFD, three bytes each, so the text is held to `cap`
    /// again after the conversion.
    fn text(&self, cap: usize) -> (String, bool) {
        let mut bytes = self.bytes.as_slice();
        if self.truncated {
            bytes = &bytes[..complete_utf8_len(bytes)];
        }
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        let cut = cut_at_char(&mut text, cap);
        (text, self.truncated || cut)
    }
}

/// Cuts `text` to at most `cap` bytes, at a character boundary; whether it was cut. Every
/// session kind holds its output and error text to its cap with this.
pub(crate) fn cut_at_char(text: &mut String, cap: usize) -> bool {
    if text.len() <= cap {
        return false;
    }
    text.truncate(text.floor_char_boundary(cap));
    true
}

/// The length of `bytes` without an incomplete UTF-8 sequence at its end.
fn complete_utf8_len(bytes: &[u8]) -> usize {
    // The last character starts at most 3 bytes before the end.
    for start in (bytes.len().saturating_sub(4)..bytes.len()).rev() {
        let lead = bytes[start];
        if lead & 0xC0 == 0x80 {
            continue; // a continuation byte
        }
        let width = match lead {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if start + width > bytes.len() {
            start
        } else {
            bytes.len()
        };
    }
    bytes.len()
}

/// Reads `pipe` to its end, keeping the first `cap` bytes.
async fn read_into(
    pipe: Option<impl AsyncRead + Unpin>,
    cap: usize,
    captured: &mut Captured,
) -> std::io::Result<()> {
    let Some(mut pipe) = pipe else {
        return Ok(());
    };
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = pipe.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        let room = cap.saturating_sub(captured.bytes.len());
        let chunk = buffer.get(..n).unwrap_or_default();
        if chunk.len() > room {
            captured.truncated = true;
        }
        captured
            .bytes
            .extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
    }
}
