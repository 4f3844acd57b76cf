//! The session layer's error type. Dependency errors (rmcp, io) are kept as sources or text, never
//! exposed as types, so upgrading a dependency does not change our public API.

use std::time::Duration;

/// Everything that can go wrong while starting a session or running a tool call through one.
///
/// A tool that runs and exits non-zero is *not* an error here: it is a [`super::ToolOutcome`] with
/// its exit status, and the Reviewer's gates decide what it means.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A pool or session configuration that cannot work.
    #[error("invalid session configuration: {detail}")]
    InvalidConfig {
        /// What is wrong.
        detail: String,
    },
    /// The program could not be started (not found, not executable, bad cwd...).
    #[error("could not start {program:?}: {source}")]
    Spawn {
        /// The program that was to be started.
        program: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Reading a child's output or writing its stdin failed.
    #[error("i/o with {program:?} failed on {stream}: {source}")]
    Io {
        /// The program.
        program: String,
        /// `stdin`, `stdout`, `stderr` or `wait`.
        stream: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The call ran past its timeout; the child (and its process group) was killed.
    #[error("tool {tool:?} timed out after {after:?}")]
    Timeout {
        /// The tool that was called.
        tool: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The tool died: killed by a signal, or a native tool panicked.
    #[error("tool {tool:?} crashed: {reason}")]
    Crashed {
        /// The tool that was called.
        tool: String,
        /// What happened (signal number, panic message).
        reason: String,
    },
    /// The peer spoke the protocol wrongly (an MCP server's bad answer, a failed handshake).
    #[error("protocol error: {detail}")]
    Protocol {
        /// What went wrong.
        detail: String,
    },
    /// The tool server refused the call with an error response (unknown tool, invalid params).
    #[error("tool {tool:?} was rejected by its server: {detail}")]
    ToolRejected {
        /// The tool that was called.
        tool: String,
        /// The server's message.
        detail: String,
    },
    /// The permission rules refused the call (the detail names the rule).
    #[error("{detail}")]
    PermissionDenied {
        /// What was refused and by which rule.
        detail: String,
    },
    /// No tool of that name is registered with this session.
    #[error("unknown tool {tool:?}")]
    UnknownTool {
        /// The name that was asked for.
        tool: String,
    },
    /// The call's arguments do not fit the session kind (MCP arguments must be a JSON object).
    #[error("invalid arguments for tool {tool:?}: {detail}")]
    InvalidArguments {
        /// The tool that was called.
        tool: String,
        /// What is wrong.
        detail: String,
    },
    /// The session's connection is gone (an MCP server exited or closed its stdio).
    #[error("session closed: {detail}")]
    Closed {
        /// What was observed.
        detail: String,
    },
    /// No session became free within the pool's acquire timeout.
    #[error("pool {pool:?}: no session free after waiting {waited:?} (all {max_size} in use)")]
    AcquireTimeout {
        /// The pool's name.
        pool: String,
        /// How long the caller waited.
        waited: Duration,
        /// The pool's size limit.
        max_size: usize,
    },
    /// The pool was closed.
    #[error("pool {pool:?} is closed")]
    PoolClosed {
        /// The pool's name.
        pool: String,
    },
    /// The call was never made: its run stopped (a task failed for good, or the run was
    /// cancelled) while the call waited for a free session.
    #[error("tool {tool:?} was not called: the run stopped while the call waited for a session")]
    NotStarted {
        /// The tool.
        tool: String,
    },
}

impl SessionError {
    /// Whether this error leaves the session unusable, so that a pool must discard and replace it.
    pub fn breaks_session(&self) -> bool {
        matches!(
            self,
            Self::Crashed { .. }
                | Self::Protocol { .. }
                | Self::Closed { .. }
                | Self::Timeout { .. }
                | Self::Io { .. }
        )
    }
}
