//! Telemetry: Prometheus metrics, per-task tracing spans and the run dashboard.
//!
//! - [`install_metrics`] installs the process-wide `metrics` recorder (the Prometheus exporter,
//!   with explicit histogram buckets) once; its handle renders `/metrics`.
//! - [`Telemetry`] watches a run from the outside: it turns the runtime's [`RunEvent`]s into
//!   metrics and the dashboard's view, and samples the runtime's gauges (mailbox
//!   depths, restarts, pools, context cache, store) while [`Telemetry::drive`] runs a future.
//! - [`DashboardServer`] serves the page (`/`, one HTML file embedded in the binary, plain
//!   JavaScript: no front-end build), its JSON (`/api/state`), the live event stream
//!   (`/api/events`, server-sent events) and `/metrics`, on 127.0.0.1 unless told otherwise;
//!   [`MetricsServer`] serves `/metrics` alone (`tetrarch run --metrics ADDR`).
//!
//! Spans are opened by the agents themselves (target `tetrarch::agents::*`, INFO): `run` (plan,
//! run, resumed, status) is the parent of one `task` span per attempt (plan, run, task, attempt,
//! outcome) or `compensate` span per compensation, and each of those holds the Optimizer's
//! `context` (when the task reads `{{context}}`), the Executor's `tool_call` (pool, tool) and the
//! Reviewer's `review`. The attempt carries its span through the mailboxes, so the tree is the
//! attempt's real path; `RUST_LOG=tetrarch=info` prints them, and with the cargo feature `otel`
//! `OtlpTracing` exports them over OTLP/HTTP.
//!
//! What is measured from events rather than inside the agents: a task attempt's latency runs from
//! its dispatch (`task_started`) to its outcome (`gate_failed`, `task_retrying` or
//! `task_finished`), so it includes context assembly and review, not only the tool call.
//!
//! [`RunEvent`]: crate::agents::RunEvent

mod observer;
#[cfg(feature = "otel")]
mod otel;
mod server;
pub mod terminal_text;
mod view;

#[cfg(feature = "otel")]
pub use otel::{OtlpConfig, OtlpProtocol, OtlpTracing};

pub use observer::{METRIC_NAMES, SAMPLE_PERIOD, Telemetry, install_metrics};
pub use server::{DashboardServer, MetricsServer, ServeLimits, parse_addr, parse_server_addr};
pub use view::{AgentView, CacheView, DashboardState, PoolView, RunView, TaskView, ToolLatency};

/// What can go wrong serving telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The server's address is taken by another process.
    #[error("{server}: {addr} is in use: {source}")]
    AddrInUse {
        /// Which server (`dashboard`, `metrics`).
        server: &'static str,
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The server could not listen on its address for another reason.
    #[error("{server}: cannot listen on {addr}: {source}")]
    Bind {
        /// Which server (`dashboard`, `metrics`).
        server: &'static str,
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A server's [`ServeLimits`] could not serve anything.
    #[error("{server}: bad limits: {problem}")]
    BadLimits {
        /// Which server (`dashboard`, `metrics`).
        server: &'static str,
        /// Which limit, and why.
        problem: String,
    },
    /// The text given as a server's address is not an address.
    #[error(
        "{server}: {text:?} is not an address (expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080, localhost:PORT, or a port)"
    )]
    BadAddr {
        /// Which server (`dashboard`, `metrics`).
        server: &'static str,
        /// What was given.
        text: String,
    },
    /// The metrics recorder could not be installed (another recorder is installed).
    #[error("metrics: cannot install the Prometheus recorder: {detail}")]
    Metrics {
        /// Why.
        detail: String,
    },
    /// The OpenTelemetry exporter could not be set up or flushed (feature `otel`).
    #[error("OpenTelemetry export: {detail}")]
    Otlp {
        /// What went wrong.
        detail: String,
    },
    /// The store could not be read (finished runs).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The store holds no run to show.
    #[error("dashboard: {detail}")]
    NoRun {
        /// Which run was looked for.
        detail: String,
    },
}
