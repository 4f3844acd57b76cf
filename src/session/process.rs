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
//! safe `killpg`), so a shell's grandchildren die with it.

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
}

impl SessionFactory for ProcessFactory {
    fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>> {
        let session = ProcessSession {
            spec: Arc::clone(&self.spec),
        };
        Box::pin(async move { Ok(Box::new(session) as Box<dyn Session>) })
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
    let mut command = super::child_command(
        &spec.program,
        &args,
        spec.cwd.as_ref(),
        &spec.env_allowlist,
        &spec.env,
    );
    // Per-call variables (`args.env`, e.g. from a plan's declared fix) win over the spec's.
    if let Some(env) = request.args.get("env").and_then(|e| e.as_object()) {
        for (name, value) in env {
            if let Some(value) = value_text(value) {
                command.env(name, value);
            }
        }
    }
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
    let stdout = read_capped(child.stdout.take(), spec.max_output_bytes);
    let stderr = read_capped(child.stderr.take(), spec.max_output_bytes);

    let work = async {
        let (fed, out, err, status) = tokio::join!(feed, stdout, stderr, child.wait());
        fed.map_err(io_error("stdin"))?;
        let out = out.map_err(io_error("stdout"))?;
        let err = err.map_err(io_error("stderr"))?;
        let status = status.map_err(io_error("wait"))?;
        Ok::<_, SessionError>((out, err, status))
    };
    let (out, err, status) = match tokio::time::timeout(request.timeout, work).await {
        Ok(done) => done?,
        // `group` kills the group; kill_on_drop kills the child when `child` drops.
        Err(_) => {
            return Err(SessionError::Timeout {
                tool: request.tool,
                after: request.timeout,
            });
        }
    };
    group.reaped();

    let exit_status = status.code();
    if exit_status.is_none() {
        return Err(SessionError::Crashed {
            tool: request.tool,
            reason: signal_reason(&status),
        });
    }
    let stdout = String::from_utf8_lossy(&out.bytes).into_owned();
    let truncated = out.truncated || err.truncated;
    let json = if out.truncated {
        None
    } else {
        serde_json::from_str(stdout.trim()).ok()
    };
    Ok(ToolOutcome {
        exit_status,
        stdout,
        stderr: String::from_utf8_lossy(&err.bytes).into_owned(),
        json,
        truncated,
        duration: started.elapsed(),
    })
}

fn signal_reason(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    format!("ended without an exit code ({status})")
}

struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Reads `pipe` to its end, keeping the first `cap` bytes.
async fn read_capped(
    pipe: Option<impl AsyncRead + Unpin>,
    cap: usize,
) -> std::io::Result<Captured> {
    let mut captured = Captured {
        bytes: Vec::new(),
        truncated: false,
    };
    let Some(mut pipe) = pipe else {
        return Ok(captured);
    };
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = pipe.read(&mut buffer).await?;
        if n == 0 {
            return Ok(captured);
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
