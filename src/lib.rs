//! tetrarch: an actor-system runtime for multi-agent orchestration.
//!
//! Four agents — Orchestrator, Optimizer, Reviewer, Executor — run as supervised actors and share
//! one context store. This crate is usable as a library (start a [`agents::Runtime`] and run plans,
//! or embed the store) and through the `tetrarch` binary.
//!
//! Modules, one per concern:
//! - [`agents`]: the supervisor, the four agents, bounded mailboxes and the [`agents::Runtime`] API.
//! - [`context`]: context budgets: token counting, ranking, packing and incremental payloads per session.
//! - [`store`]: memories, the BM25 search index, the context cache, the group-commit writer.
//! - [`scoring`]: image distance (FLIP, HDR-FLIP, SSIM, MS-SSIM, PSNR) on the CPU and with CUDA.
//! - [`permissions`]: Claude Code-compatible permission rules, their evaluation and consolidation.
//! - [`lessons`]: error→fix learning over the store.
//! - [`plan`]: the plan format, its validation, templates, gates and DAG analysis.
//! - [`session`]: the `Session` trait, pools, and the process, MCP, native and scorer kinds.
//! - [`telemetry`]: Prometheus metrics, per-task tracing spans and the run dashboard over HTTP.

pub mod agents;
pub mod context;
pub mod lessons;
pub mod permissions;
pub mod plan;
pub mod scoring;
pub mod session;
pub mod store;
pub mod telemetry;
