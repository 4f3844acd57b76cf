//! The `mcp` kind: a Model Context Protocol server started as a child process, spoken to over its
//! stdio through the `rmcp` client, initialized once and kept open for many calls.
//!
//! The server gets a cleared environment plus [`McpSpec::env_allowlist`] plus [`McpSpec::env`].
//! [`McpSpec::new`] allows `PATH`, so that `node`/`python` are found, and `HOME`, which npm- and
//! pip-installed servers read; a pool declared in TOML allows only `PATH` unless its
//! `env_allowlist` names more. Its stderr is read line by line into `tracing` at debug level. It runs in a
//! process group of its own, killed with the session: a server started through a wrapper
//! (`npx`, `uvx`, `cargo run`, `sh -c`) is not left behind when its session is discarded.
//!
//! Results map onto [`ToolOutcome`]: `structuredContent` → `json`, text content blocks (joined by
//! newlines) → `stdout` (and, when there is no structured content and the text is JSON, `json`),
//! `isError` → exit status 1. The text is kept up to [`DEFAULT_MAX_OUTPUT_BYTES`], as a process
//! call's output is, and marked `truncated` past it; the server's stderr lines are cut too. One
//! message (a JSON-RPC line) over [`MAX_MESSAGE_BYTES`] (16 MiB) closes the connection and fails
//! the call waiting for it at once, naming the limit (rmcp dropped the line, and the call waited
//! for its whole timeout); the session is replaced. A
//! JSON-RPC error answer (unknown tool, invalid arguments) is [`SessionError::ToolRejected`] and
//! leaves the session usable; a closed transport, a dead server or a timeout breaks the session,
//! and its pool replaces it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientRequest, PingRequest};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::async_rw::AsyncRwTransport;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, ReadBuf};

use super::process::DEFAULT_MAX_OUTPUT_BYTES;
use super::{BoxFuture, Session, SessionError, SessionFactory, ToolOutcome, ToolRequest};

/// How to start an MCP server.
#[derive(Debug, Clone, PartialEq)]
pub struct McpSpec {
    /// The program (e.g. `node`, `python3`, a server's own executable).
    pub program: String,
    /// Its arguments (e.g. the server script and `stdio`).
    pub args: Vec<String>,
    /// The working directory; ours when `None`.
    pub cwd: Option<PathBuf>,
    /// Names of variables copied from our environment (absent ones are skipped).
    pub env_allowlist: Vec<String>,
    /// Variables set explicitly (they win over the allowlist).
    pub env: BTreeMap<String, String>,
    /// How long starting the server may take: the spawn, the initialize handshake, the first ping
    /// and the warm-up calls.
    pub start_timeout: Duration,
    /// A call made once right after the handshake, so that the server's (and our) first-call
    /// costs — a JIT compiling the tool's code, schema compilation, lazy imports — are paid while
    /// pre-warming rather than by the first task. Its result must not be an error.
    pub warmup: Option<ToolRequest>,
    /// How many times the warm-up call is made (at least once when there is one): a JIT such as
    /// V8's compiles a function fully only after it has run a few times.
    pub warmup_calls: u32,
}

impl McpSpec {
    /// A spec for `program` with `args`, allowlisting `PATH` and `HOME`, with a 30-second start
    /// timeout and no warm-up call.
    pub fn new(
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            cwd: None,
            env_allowlist: vec!["PATH".to_owned(), "HOME".to_owned()],
            env: BTreeMap::new(),
            start_timeout: Duration::from_secs(30),
            warmup: None,
            warmup_calls: 1,
        }
    }
}

/// One running MCP server and the client connected to it.
pub struct McpSession {
    service: RunningService<RoleClient, ()>,
    server_pid: Option<u32>,
    /// The server leads its own group (see `connect`), killed when the session drops.
    _group: super::ChildGroup,
    /// The server process (killed when dropped, then reaped in the background).
    _child: tokio::process::Child,
    program: String,
    /// The declared warm-up call, repeated by [`Session::warm_up`].
    warmup: Option<ToolRequest>,
    warmup_calls: u32,
    /// How long asking for the tool list may take (the spec's start timeout).
    list_timeout: Duration,
    /// The server's last stderr lines, for the reason when it dies.
    stderr: ServerStderr,
}

/// The last lines a server wrote on stderr, and whether it has closed it (exited).
#[derive(Clone, Default)]
struct ServerStderr {
    lines: Arc<parking_lot::Mutex<std::collections::VecDeque<String>>>,
    closed: Option<tokio::sync::watch::Receiver<bool>>,
    /// Set when the server sent a message over [`MAX_MESSAGE_BYTES`] (see [`LineLimit`]).
    oversized: Arc<AtomicBool>,
}

/// The most one message from a server (one line of JSON-RPC) may hold: rmcp's own limit.
pub const MAX_MESSAGE_BYTES: usize = rmcp::transport::async_rw::DEFAULT_MAX_LINE_LENGTH;

/// The server's stdout as the transport reads it, ended with an error at a line over `limit`
/// bytes. rmcp drops such a line and keeps reading, so the call it answered would wait for its
/// whole timeout; ending the stream fails it at once, and `oversized` says why.
struct LineLimit<R> {
    inner: R,
    line: usize,
    limit: usize,
    oversized: Arc<AtomicBool>,
}

impl<R: AsyncRead + Unpin> AsyncRead for LineLimit<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let mut rest = &buf.filled()[before..];
        // Each line ended in this read, then the start of the next one.
        let mut over = false;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            over |= this.line.saturating_add(end) > this.limit;
            this.line = 0;
            rest = &rest[end + 1..];
        }
        this.line = this.line.saturating_add(rest.len());
        if over || this.line > this.limit {
            this.oversized.store(true, Ordering::SeqCst);
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a message over {} bytes", this.limit),
            )));
        }
        Poll::Ready(Ok(()))
    }
}

/// How many of a server's last stderr lines a lost connection's reason quotes.
const STDERR_LINES_KEPT: usize = 5;

impl ServerStderr {
    /// `error` with the server's last stderr lines, when it lost the connection or broke the
    /// protocol (a Python traceback says why; "transport closed" does not). Waits a moment for
    /// the server's last lines when it has just exited.
    async fn explain(&self, error: SessionError) -> SessionError {
        let append =
            |detail: String, lines: &str| format!("{detail}; the server's stderr ends: {lines}");
        if !matches!(
            error,
            SessionError::Closed { .. } | SessionError::Protocol { .. }
        ) {
            return error;
        }
        if self.oversized.load(Ordering::SeqCst) {
            return SessionError::Protocol {
                detail: format!(
                    "the MCP server sent a message over {} MiB, the most one JSON-RPC message \
                     may hold: the connection was closed ({error})",
                    MAX_MESSAGE_BYTES >> 20
                ),
            };
        }
        if let Some(mut closed) = self.closed.clone() {
            let _ = tokio::time::timeout(Duration::from_millis(200), closed.wait_for(|c| *c)).await;
        }
        let lines: Vec<String> = self.lines.lock().iter().cloned().collect();
        if lines.is_empty() {
            return error;
        }
        let lines = lines.join(" | ");
        match error {
            SessionError::Closed { detail } => SessionError::Closed {
                detail: append(detail, &lines),
            },
            SessionError::Protocol { detail } => SessionError::Protocol {
                detail: append(detail, &lines),
            },
            other => other,
        }
    }
}

impl std::fmt::Debug for McpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpSession")
            .field("program", &self.program)
            .field("server_pid", &self.server_pid)
            .finish_non_exhaustive()
    }
}

impl McpSession {
    /// Starts the server of `spec`, runs the initialize handshake, a ping, and the spec's warm-up
    /// call if it has one, all within the spec's `start_timeout` (a server that initializes but
    /// never answers would otherwise hang the pool's start, or an acquire, for ever).
    pub async fn connect(spec: &McpSpec) -> Result<Self, SessionError> {
        // A start timeout too large to add to the clock (a plan may say "1000000y") means none.
        let deadline = tokio::time::Instant::now()
            .checked_add(spec.start_timeout)
            .unwrap_or_else(far_future);
        let mut command = super::child_command(
            &spec.program,
            &spec.args,
            spec.cwd.as_ref(),
            &spec.env_allowlist,
            &spec.env,
        );
        #[cfg(unix)]
        command.process_group(0);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        super::groups::start_reaper();
        let mut child = command
            .spawn()
            .map_err(|source| super::spawn_error(&spec.program, spec.cwd.as_ref(), source))?;
        let server_pid = child.id();
        // From here the group dies with this function's failure or with the session.
        let group = super::ChildGroup::new(server_pid);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(SessionError::Protocol {
                detail: format!("MCP server {:?}: its stdio was not piped", spec.program),
            });
        };
        let mut server_stderr = ServerStderr::default();
        // rmcp's transport over the server's stdio (what its TokioChildProcess builds), reading
        // through a limit of our own that fails an oversized message at once.
        let transport = AsyncRwTransport::<RoleClient, _, _>::new(
            LineLimit {
                inner: stdout,
                line: 0,
                limit: MAX_MESSAGE_BYTES,
                oversized: Arc::clone(&server_stderr.oversized),
            },
            stdin,
        )
        // One more than ours, so that rmcp (which counts a line's newline) never drops a line
        // our limit let through.
        .with_max_line_length(MAX_MESSAGE_BYTES.saturating_add(1));
        if let Some(stderr) = child.stderr.take() {
            let program = spec.program.clone();
            let kept = Arc::clone(&server_stderr.lines);
            let (closed, closed_seen) = tokio::sync::watch::channel(false);
            server_stderr.closed = Some(closed_seen);
            tokio::spawn(async move {
                let mut stderr = BufReader::new(stderr);
                let mut line = Vec::new();
                // Each line is read up to the cap and the rest of it skipped: a server writing
                // without newlines must not grow our memory.
                while let Ok(Some(cut)) = read_capped_line(&mut stderr, &mut line).await {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end();
                    let more = if cut { " [line cut]" } else { "" };
                    tracing::debug!(target: "tetrarch::session::mcp", %program, "server stderr: {text}{more}");
                    if !text.is_empty() {
                        let mut kept = kept.lock();
                        if kept.len() == STDERR_LINES_KEPT {
                            kept.pop_front();
                        }
                        let short = &text[..text.floor_char_boundary(500)];
                        kept.push_back(short.to_owned());
                    }
                }
                let _ = closed.send(true);
            });
        }
        let service = match tokio::time::timeout_at(deadline, ().serve(transport)).await {
            Ok(Ok(service)) => service,
            Ok(Err(e)) => {
                let error = SessionError::Protocol {
                    detail: format!("MCP server {:?} failed to initialize: {e}", spec.program),
                };
                return Err(server_stderr.explain(error).await);
            }
            Err(_) => {
                return Err(SessionError::Protocol {
                    detail: format!(
                        "MCP server {:?} did not finish initializing within {:?}",
                        spec.program, spec.start_timeout
                    ),
                });
            }
        };
        let mut session = Self {
            service,
            server_pid,
            _group: group,
            _child: child,
            program: spec.program.clone(),
            warmup: spec.warmup.clone(),
            warmup_calls: spec.warmup_calls.max(1),
            list_timeout: spec.start_timeout,
            stderr: server_stderr,
        };
        let ready = tokio::time::timeout_at(deadline, async {
            session.health_check().await?;
            session.warm_up_all().await
        })
        .await;
        match ready {
            Ok(result) => result.map(|()| session),
            Err(_) => Err(SessionError::Protocol {
                detail: format!(
                    "MCP server {:?} initialized but did not answer its first ping and warm-up \
                     within {:?} of starting",
                    spec.program, spec.start_timeout
                ),
            }),
        }
    }

    /// The declared warm-up call, as many times as declared.
    async fn warm_up_all(&mut self) -> Result<(), SessionError> {
        for _ in 0..self.warmup_calls {
            self.warm_up_once().await?;
        }
        Ok(())
    }

    /// The declared warm-up call, once (nothing when none is declared).
    async fn warm_up_once(&mut self) -> Result<(), SessionError> {
        let Some(warmup) = self.warmup.clone() else {
            return Ok(());
        };
        let tool = warmup.tool.clone();
        let outcome = self.call_tool(warmup).await?;
        if !outcome.succeeded() {
            return Err(SessionError::Protocol {
                detail: format!(
                    "MCP server {:?}: warm-up call {tool:?} failed: {}",
                    self.program, outcome.stdout
                ),
            });
        }
        Ok(())
    }

    /// The server process's id, when known.
    pub fn server_pid(&self) -> Option<u32> {
        self.server_pid
    }

    /// The names of the server's tools, asked within the spec's start timeout (a run checks
    /// its plan against them before it starts, so a server that never answers must not hang it).
    pub async fn tool_names(&self) -> Result<Vec<String>, SessionError> {
        let tools =
            match tokio::time::timeout(self.list_timeout, self.service.list_all_tools()).await {
                Ok(listed) => listed.map_err(|e| map_service_error("tools/list", e))?,
                Err(_) => {
                    return Err(SessionError::Timeout {
                        tool: "tools/list".to_owned(),
                        after: self.list_timeout,
                    });
                }
            };
        Ok(tools.into_iter().map(|t| t.name.into_owned()).collect())
    }

    async fn call_tool(&self, request: ToolRequest) -> Result<ToolOutcome, SessionError> {
        let started = Instant::now();
        let mut params = CallToolRequestParams::new(request.tool.clone());
        match request.args {
            serde_json::Value::Object(map) => params = params.with_arguments(map),
            serde_json::Value::Null => {}
            other => {
                return Err(SessionError::InvalidArguments {
                    tool: request.tool,
                    detail: format!("MCP tool arguments must be a JSON object, got {other}"),
                });
            }
        }
        let result =
            match tokio::time::timeout(request.timeout, self.service.call_tool(params)).await {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => {
                    let error = map_service_error(&request.tool, e);
                    return Err(self.stderr.explain(error).await);
                }
                Err(_) => {
                    return Err(SessionError::Timeout {
                        tool: request.tool,
                        after: request.timeout,
                    });
                }
            };
        let texts: Vec<&str> = result
            .content
            .iter()
            .filter_map(|block| block.as_text().map(|t| t.text.as_str()))
            .collect();
        let mut stdout = texts.join("\n");
        let truncated = super::process::cut_at_char(&mut stdout, DEFAULT_MAX_OUTPUT_BYTES);
        let json = match result.structured_content {
            Some(value) => Some(value),
            // Cut text is not the server's JSON, even where what is left parses.
            None if !truncated => serde_json::from_str(stdout.trim()).ok(),
            None => None,
        };
        Ok(ToolOutcome {
            exit_status: Some(if result.is_error == Some(true) { 1 } else { 0 }),
            stdout,
            stderr: String::new(),
            json,
            truncated,
            duration: started.elapsed(),
        })
    }
}

/// A deadline no run reaches (about 30 years), for timeouts too large to add to the clock.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// Reads one line into `line` (cleared first), keeping at most [`MAX_STDERR_LINE`] bytes and
/// skipping the rest of it. `Ok(None)` at the end of the stream; `Ok(Some(cut))` says whether
/// the line was longer than kept.
async fn read_capped_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut cut = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok((!line.is_empty() || cut).then_some(cut));
        }
        let (chunk, ends) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..=at], true),
            None => (available, false),
        };
        let room = MAX_STDERR_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        cut |= chunk.len() > room;
        let used = chunk.len();
        reader.consume(used);
        if ends {
            return Ok(Some(cut));
        }
    }
}

/// The longest stderr line of a server kept for the log.
const MAX_STDERR_LINE: usize = 8 * 1024;

impl McpSession {
    /// Whether the server process has ended (a zombie not yet reaped counts; the process is
    /// left for the session's drop to reap). The client notices a closed pipe only when it next
    /// reads, so a server that exited between calls was handed out by its pool, and the next
    /// call failed without reaching any server.
    fn server_exited(&self) -> bool {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
            let Some(pid) = self.server_pid.and_then(|pid| i32::try_from(pid).ok()) else {
                return false;
            };
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::Pid(nix::unistd::Pid::from_raw(pid)), flags) {
                Ok(WaitStatus::StillAlive) => false,
                Ok(_) | Err(nix::errno::Errno::ECHILD) => true,
                Err(_) => false,
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        false
    }
}

fn map_service_error(tool: &str, error: ServiceError) -> SessionError {
    match error {
        ServiceError::McpError(e) => SessionError::ToolRejected {
            tool: tool.to_owned(),
            // Capped as a call's text is: a server may send megabytes of message.
            detail: {
                let mut detail = e.message.into_owned();
                super::process::cut_at_char(&mut detail, DEFAULT_MAX_OUTPUT_BYTES);
                detail
            },
        },
        ServiceError::TransportClosed | ServiceError::TransportSend(_) => SessionError::Closed {
            detail: format!("MCP server connection lost during {tool:?}: {error}"),
        },
        other => SessionError::Protocol {
            detail: format!("MCP call {tool:?} failed: {other}"),
        },
    }
}

impl Session for McpSession {
    fn call(&mut self, request: ToolRequest) -> BoxFuture<'_, Result<ToolOutcome, SessionError>> {
        Box::pin(self.call_tool(request))
    }

    fn health_check(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            if !self.is_open() {
                return Err(SessionError::Closed {
                    detail: format!("MCP server {:?} has exited", self.program),
                });
            }
            self.service
                .send_request(ClientRequest::PingRequest(PingRequest::default()))
                .await
                .map(|_| ())
                .map_err(|e| map_service_error("ping", e))
        })
    }

    fn tools(&mut self) -> BoxFuture<'_, Result<Option<Vec<String>>, SessionError>> {
        Box::pin(async move { self.tool_names().await.map(Some) })
    }

    fn is_open(&self) -> bool {
        !self.service.is_closed() && !self.service.is_transport_closed() && !self.server_exited()
    }

    fn warm_up(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(self.warm_up_all())
    }
}

/// Starts [`McpSession`]s of one [`McpSpec`] for a pool.
#[derive(Debug, Clone)]
pub struct McpFactory {
    spec: Arc<McpSpec>,
}

impl McpFactory {
    /// A factory for servers of `spec`.
    pub fn new(spec: McpSpec) -> Self {
        Self {
            spec: Arc::new(spec),
        }
    }
}

impl SessionFactory for McpFactory {
    fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>> {
        Box::pin(async move {
            let session = McpSession::connect(&self.spec).await?;
            Ok(Box::new(session) as Box<dyn Session>)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{MAX_STDERR_LINE, read_capped_line};

    #[tokio::test]
    async fn stderr_lines_are_kept_up_to_the_cap_and_the_rest_skipped() {
        let long = "y".repeat(MAX_STDERR_LINE * 3);
        let text = format!("first\n{long}\nlast");
        // A small buffer, so the long line arrives in many reads.
        let mut reader = tokio::io::BufReader::with_capacity(64, text.as_bytes());
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while let Some(cut) = read_capped_line(&mut reader, &mut line).await.unwrap() {
            lines.push((String::from_utf8(line.clone()).unwrap(), cut));
        }
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], ("first\n".to_owned(), false));
        assert_eq!(lines[1].0.len(), MAX_STDERR_LINE);
        assert!(lines[1].1);
        assert_eq!(lines[2], ("last".to_owned(), false));
    }
}
