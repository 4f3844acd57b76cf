//! Pool declarations as written in `actors/executor.toml` and in a plan's `[pools.NAME]` tables,
//! and starting a [`Pool`] from one.
//!
//! ```toml
//! [pools.demo]
//! kind = "mcp"                      # process | mcp | native | scorer
//! command = ["cargo", "run", "--quiet", "--release", "--example", "demo-tools"]
//! cwd = "."                         # relative to the file that declares the pool
//! env_allowlist = ["PATH", "HOME"]  # copied from our environment; the rest is cleared
//! env = { RUST_LOG = "warn" }
//! min_idle = 1                      # started before the first task
//! max_size = 4
//! acquire_timeout = "30s"
//! idle_timeout = "5m"               # sessions above min_idle unused this long are closed
//! health_check_interval = "30s"     # idle sessions are checked this often; broken ones replaced
//! health_check_timeout = "5s"       # a check or a reset between calls answered later: replaced
//! start_timeout = "2m"
//! call_timeout = "60s"              # for tasks that give no timeout
//! # mcp only: a call made while pre-warming each session, `calls` times, so the first task's
//! # call costs what the tenth does (the server's lazy imports, a JIT, our own first-call paths)
//! warmup = { tool = "count_words", args = { path = "README.md" }, calls = 3 }
//! # scorer only: the size of the synthetic pair scored while pre-warming (default 256×256)
//! warmup_size = [1920, 1080]
//! ```
//!
//! `process`: `command` is the prefix of every call's argv (a task adds `args.argv`). `mcp`:
//! `command` starts the server. `native`: tools registered through the library API. `scorer`:
//! image scoring (`device = "auto" | "cpu" | "cuda"`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{
    McpFactory, McpSpec, NativeFactory, NativeRegistry, Pool, PoolConfig, ProcessFactory,
    ProcessSpec, ScorerFactory, ScorerSpec, SessionError, ToolRequest,
};
use crate::scoring::Device;

/// What a pool's sessions are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// One child process per call.
    Process,
    /// A Model Context Protocol server kept open.
    Mcp,
    /// Rust functions registered in a [`NativeRegistry`].
    Native,
    /// Image scoring (FLIP, SSIM, ...).
    Scorer,
}

impl PoolKind {
    /// The kind as a plan writes it (`kind = "process"`).
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Process => "process",
            PoolKind::Mcp => "mcp",
            PoolKind::Native => "native",
            PoolKind::Scorer => "scorer",
        }
    }
}

/// A pool as declared in TOML.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDef {
    /// The kind of session.
    pub kind: PoolKind,
    /// `process`: argv prefix; `mcp`: the server's command line.
    #[serde(default)]
    pub command: Vec<String>,
    /// Working directory, relative to the declaring file's folder.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Variables copied from our environment into the child's (otherwise empty) environment.
    #[serde(default = "default_allowlist")]
    pub env_allowlist: Vec<String>,
    /// Variables set explicitly.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Sessions started before the first task.
    #[serde(default = "one")]
    pub min_idle: usize,
    /// Most sessions in use at once.
    #[serde(default = "four")]
    pub max_size: usize,
    /// Longest wait for a free session through [`Pool::acquire`]. A plan's tasks and score
    /// gates do not use it: they wait in turn ([`Pool::acquire_queued`]), since more tasks than
    /// sessions is normal.
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Sessions above `min_idle` left unused this long are closed.
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How often idle sessions are health-checked in the background (a broken one is
    /// replaced).
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Longest health check, and longest reset of a session between calls: a session that
    /// answers neither in time is replaced.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub health_check_timeout: Duration,
    /// Longest start of one session (an MCP server's spawn, handshake, first ping and
    /// warm-up calls).
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    pub start_timeout: Duration,
    /// Timeout of a call whose task gives none.
    #[serde(default = "sixty_seconds", with = "humantime_serde")]
    pub call_timeout: Duration,
    /// `scorer` only: `auto`, `cpu` or `cuda`.
    #[serde(default)]
    pub device: Option<String>,
    /// `mcp` only: a tool call made while pre-warming each session.
    #[serde(default)]
    pub warmup: Option<WarmupDef>,
    /// `scorer` only: the `[width, height]` of the synthetic pair each session scores while
    /// pre-warming (default 256×256). Set it to the size of the images the gates score, so the
    /// buffers the first gate needs (pinned host memory and device memory on CUDA) already exist.
    #[serde(default)]
    pub warmup_size: Option<[usize; 2]>,
}

/// A warm-up call of an `mcp` pool: `{ tool = "NAME", args = { ... }, calls = N }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupDef {
    /// The tool to call.
    pub tool: String,
    /// Its arguments (relative paths in them are the server's business: it runs in `cwd`).
    #[serde(default = "empty_object")]
    pub args: serde_json::Value,
    /// How many times (default 1).
    #[serde(default = "one_call")]
    pub calls: u32,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}
fn one_call() -> u32 {
    1
}

fn default_allowlist() -> Vec<String> {
    vec!["PATH".to_owned()]
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn sixty_seconds() -> Duration {
    Duration::from_secs(60)
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

/// Serde adapter for humantime durations (`"30s"`, `"2m"`).
pub(crate) mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Parses a humantime string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::plan::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("bad duration {text:?}: {e}")))
    }
}

/// What a pool needs from its surroundings to start.
#[derive(Clone, Default)]
pub struct PoolContext {
    /// Folder that relative `cwd`s (and a scorer's relative image paths) are resolved against:
    /// the declaring file's folder.
    pub base_dir: PathBuf,
    /// Native tools, for `native` pools.
    pub natives: Arc<NativeRegistry>,
    /// Where `scorer` pools keep compiled CUDA kernels across runs.
    pub store: Option<crate::store::Store>,
}

/// What a pool's name may be, in words (for errors).
pub const POOL_NAME_RULE: &str = "a pool's name must be ASCII letters, digits, `-` and single inner `_` (permission rules read `mcp__POOL__TOOL` at the first `__`)";

/// Whether `name` can name a pool. Permission rules name an MCP pool's tools
/// `mcp__POOL__TOOL` and split at the first `__`: a pool named `my__srv` (or `a_`) would be
/// read as another pool, so its deny rules would never match.
pub fn is_pool_name(name: &str) -> bool {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    !name.is_empty()
        && name.chars().all(plain)
        && !name.contains("__")
        && !name.starts_with('_')
        && !name.ends_with('_')
}

impl PoolDef {
    /// A declaration of `kind` with the defaults.
    pub fn new(kind: PoolKind) -> Self {
        Self {
            kind,
            command: Vec::new(),
            cwd: None,
            env_allowlist: default_allowlist(),
            env: BTreeMap::new(),
            min_idle: 1,
            max_size: 4,
            acquire_timeout: thirty_seconds(),
            idle_timeout: five_minutes(),
            health_check_interval: thirty_seconds(),
            health_check_timeout: five_seconds(),
            start_timeout: thirty_seconds(),
            call_timeout: sixty_seconds(),
            device: None,
            warmup: None,
            warmup_size: None,
        }
    }

    /// This declaration with its `cwd` resolved against `base` (the declaring file's folder).
    pub(crate) fn resolved(&self, base: &Path) -> PoolDef {
        PoolDef {
            cwd: self.cwd_in(base),
            ..self.clone()
        }
    }

    /// The folder the pool's children run in; `None` (ours) when neither the declaration nor
    /// `base` names one (a [`PoolContext::default`]).
    fn cwd_in(&self, base: &Path) -> Option<PathBuf> {
        match &self.cwd {
            Some(dir) if dir.is_absolute() => Some(dir.clone()),
            Some(dir) => Some(base.join(dir)),
            None if base.as_os_str().is_empty() => None,
            None => Some(base.to_path_buf()),
        }
    }

    /// The pool's limits as a [`PoolConfig`] for the pool named `name`.
    fn config(&self, name: &str) -> PoolConfig {
        PoolConfig {
            min_idle: self.min_idle,
            max_size: self.max_size,
            acquire_timeout: self.acquire_timeout,
            idle_timeout: self.idle_timeout,
            health_check_interval: self.health_check_interval,
            health_check_timeout: self.health_check_timeout,
            ..PoolConfig::new(name)
        }
    }

    /// The scorer device named by `device`.
    fn scorer_device(&self) -> Result<Device, String> {
        match self.device.as_deref().unwrap_or("auto") {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(format!("device {other:?} is not auto, cpu or cuda")),
        }
    }

    /// Checks the declaration of the pool named `name` without starting anything: what
    /// `tetrarch plan check` reports for a plan's own pools, and what [`PoolDef::start`] refuses.
    ///
    /// # Errors
    /// [`SessionError::InvalidConfig`] naming the pool and the setting.
    pub fn check(&self, name: &str) -> Result<(), SessionError> {
        let invalid = |detail: String| SessionError::InvalidConfig {
            detail: format!("pool {name:?}: {detail}"),
        };
        if !is_pool_name(name) {
            return Err(invalid(POOL_NAME_RULE.to_owned()));
        }
        self.config(name).validate()?;
        let (mcp, scorer) = (self.kind == PoolKind::Mcp, self.kind == PoolKind::Scorer);
        match self.kind {
            PoolKind::Process | PoolKind::Mcp if self.command.is_empty() => {
                return Err(invalid("`command` is empty".to_owned()));
            }
            PoolKind::Process | PoolKind::Mcp
                if self.command.first().is_some_and(String::is_empty) =>
            {
                return Err(invalid(
                    "`command` starts with an empty program name".to_owned(),
                ));
            }
            // Nothing would run it: a scorer scores in-process, native tools are registered.
            PoolKind::Scorer | PoolKind::Native if !self.command.is_empty() => {
                return Err(invalid(
                    "`command` is for process and mcp pools only".to_owned(),
                ));
            }
            _ => {}
        }
        if let Some(i) = self.command.iter().position(|word| word.contains('\0')) {
            return Err(invalid(format!(
                "`command[{i}]` {}",
                super::process::NUL_IN_VALUE
            )));
        }
        if let Some(name) = self
            .env
            .iter()
            .find(|(_, v)| v.contains('\0'))
            .map(|(n, _)| n)
        {
            return Err(invalid(format!(
                "`env` {name:?}: its value {}",
                super::process::NUL_IN_VALUE
            )));
        }
        // Settings the kind would ignore are refused, so a declaration means what it says.
        let child = matches!(self.kind, PoolKind::Process | PoolKind::Mcp);
        if !child && (!self.env.is_empty() || self.env_allowlist != default_allowlist()) {
            return Err(invalid(
                "`env` and `env_allowlist` are for process and mcp pools only (nothing is \
                 started with an environment)"
                    .to_owned(),
            ));
        }
        let mut names = self.env.keys().chain(&self.env_allowlist);
        if let Some((name, problem)) =
            names.find_map(|name| super::process::variable_name_problem(name).map(|p| (name, p)))
        {
            let list = if self.env.contains_key(name) {
                "env"
            } else {
                "env_allowlist"
            };
            return Err(invalid(format!("`{list}` names {name:?}: {problem}")));
        }
        if self.kind == PoolKind::Native && self.cwd.is_some() {
            return Err(invalid(
                "`cwd` is for process, mcp and scorer pools only".to_owned(),
            ));
        }
        if !mcp && self.start_timeout != thirty_seconds() {
            return Err(invalid(
                "`start_timeout` is for mcp pools only (the time to start a server)".to_owned(),
            ));
        }
        for (setting, value) in [
            ("start_timeout", self.start_timeout),
            ("call_timeout", self.call_timeout),
            ("health_check_timeout", self.health_check_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(format!("`{setting}` must be more than zero")));
            }
        }
        match &self.warmup {
            Some(_) if !mcp => {
                return Err(invalid(
                    "`warmup` is for mcp pools only (a scorer pool takes `warmup_size`)".to_owned(),
                ));
            }
            Some(warmup) if warmup.calls == 0 => {
                return Err(invalid("`warmup.calls` must be at least 1".to_owned()));
            }
            _ => {}
        }
        if self.device.is_some() && !scorer {
            return Err(invalid("`device` is for scorer pools only".to_owned()));
        }
        self.scorer_device().map_err(invalid)?;
        match self.warmup_size {
            Some(_) if !scorer => Err(invalid("`warmup_size` is for scorer pools only".to_owned())),
            Some([width, height]) if width == 0 || height == 0 => Err(invalid(format!(
                "`warmup_size` {width}x{height} has an empty side"
            ))),
            Some([width, height]) if width.saturating_mul(height) > crate::scoring::MAX_PIXELS => {
                Err(invalid(format!(
                    "`warmup_size` {width}x{height} is over the {}-pixel limit of the images a \
                     scorer takes",
                    crate::scoring::MAX_PIXELS
                )))
            }
            _ => Ok(()),
        }
    }

    /// Starts the pool named `name` (pre-warming `min_idle` sessions).
    ///
    /// # Errors
    /// A declaration [`PoolDef::check`] refuses, or the pool's failure to start.
    pub async fn start(&self, name: &str, context: &PoolContext) -> Result<Pool, SessionError> {
        self.check(name)?;
        let config = self.config(name);
        let cwd = self.cwd_in(&context.base_dir);
        let (program, args) = self
            .command
            .split_first()
            .map_or((String::new(), Vec::new()), |(p, a)| {
                (p.clone(), a.to_vec())
            });
        match self.kind {
            PoolKind::Process => {
                let mut spec = ProcessSpec::new(program, args);
                spec.cwd = cwd;
                spec.env_allowlist = self.env_allowlist.clone();
                spec.env = self.env.clone();
                let factory = ProcessFactory::new(spec);
                // Said before any task runs; not refused, since an earlier task of the plan may
                // build the program (or the folder). A call that finds it missing fails its
                // task, without retries.
                if let Err(problem) = factory.check() {
                    tracing::warn!(
                        pool = name,
                        "{problem}: calls to pool {name:?} fail unless it exists by then"
                    );
                }
                Pool::start(config, factory).await
            }
            PoolKind::Mcp => {
                let mut spec = McpSpec::new(program, args);
                spec.cwd = cwd;
                spec.env_allowlist = self.env_allowlist.clone();
                spec.env = self.env.clone();
                spec.start_timeout = self.start_timeout;
                if let Some(warmup) = &self.warmup {
                    spec.warmup = Some(
                        ToolRequest::new(warmup.tool.clone(), warmup.args.clone())
                            .with_timeout(self.call_timeout),
                    );
                    spec.warmup_calls = warmup.calls;
                }
                Pool::start(config, McpFactory::new(spec)).await
            }
            PoolKind::Native => {
                Pool::start(config, NativeFactory::new(Arc::clone(&context.natives))).await
            }
            PoolKind::Scorer => {
                let device =
                    self.scorer_device()
                        .map_err(|detail| SessionError::InvalidConfig {
                            detail: format!("pool {name:?}: {detail}"),
                        })?;
                let mut spec = ScorerSpec::new(device);
                if let Some(store) = &context.store {
                    spec = spec.with_store(store.clone());
                }
                spec.base_dir = cwd;
                spec.warmup_size = self.warmup_size.map(|[width, height]| (width, height));
                spec.max_jobs = self.max_size;
                Pool::start(config, ScorerFactory::new(spec)).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The TOML's health-check timeout reaches the pool (it was fixed at 5 s).
    #[test]
    fn a_declared_health_check_timeout_is_the_pools() {
        let def: PoolDef =
            toml::from_str("kind = \"native\"\nhealth_check_timeout = \"250ms\"\n").unwrap();
        assert_eq!(
            def.config("p").health_check_timeout,
            Duration::from_millis(250)
        );
        let default: PoolDef = toml::from_str("kind = \"native\"\n").unwrap();
        assert_eq!(
            default.config("p").health_check_timeout,
            Duration::from_secs(5)
        );
    }
}
