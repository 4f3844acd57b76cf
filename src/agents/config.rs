//! The agents' configuration: one TOML file per agent in an `actors/` folder, with the same
//! defaults built into the binary (the repository's `actors/*.toml`, embedded), so a run needs
//! no folder. A file present in the folder replaces the embedded one for that agent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{AgentError, AgentKind};
use crate::session::PoolDef;
use crate::session::def::humantime_serde;

/// The shortest restart window accepted (see [`ActorsConfig::validate`]).
pub const MIN_RESTART_WINDOW: Duration = Duration::from_secs(1);

/// OTP-style restart intensity: at most `max_restarts` restarts within `within`. A key left
/// out of `[restart]` keeps its default (5 restarts, 10 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartIntensity {
    /// Restarts allowed in the window.
    pub max_restarts: u32,
    /// The sliding window.
    #[serde(with = "humantime_serde")]
    pub within: Duration,
}

impl Default for RestartIntensity {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            within: Duration::from_secs(10),
        }
    }
}

fn default_mailbox() -> usize {
    4096
}

/// The largest mailbox bound (and so `run.max_in_flight`) accepted. A bound costs nothing until
/// used, but one past a semaphore's permit limit cannot be built, and a million attempts in
/// flight is far past what any pool serves.
pub const MAX_MAILBOX: usize = 1 << 20;

/// `actors/orchestrator.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestratorConfig {
    /// Mailbox bound.
    #[serde(default = "default_mailbox")]
    pub mailbox: usize,
    /// Restart intensity.
    #[serde(default)]
    pub restart: RestartIntensity,
    /// Run settings.
    #[serde(default)]
    pub run: RunSettings,
}

/// The `[run]` table of the Orchestrator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// Task attempts of one run in flight at once (concurrent runs each have their own).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// First retry backoff (doubled per retry).
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Backoff cap.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub retry_backoff_max: Duration,
}

fn default_in_flight() -> usize {
    1024
}
fn default_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(10)
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            max_in_flight: default_in_flight(),
            retry_backoff: default_backoff(),
            retry_backoff_max: default_backoff_max(),
        }
    }
}

/// `actors/optimizer.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Mailbox bound.
    #[serde(default = "default_mailbox")]
    pub mailbox: usize,
    /// Restart intensity.
    #[serde(default)]
    pub restart: RestartIntensity,
    /// Memories (of the run and global) offered to the context optimizer per task.
    #[serde(default = "default_memories")]
    pub memories: usize,
    /// The run's most recent memories offered too, beside the search hits.
    #[serde(default = "default_recent")]
    pub recent: usize,
    /// Token budget, category shares, skills folder, monitor threshold (`[context]`).
    #[serde(default)]
    pub context: crate::context::ContextConfig,
}

fn default_memories() -> usize {
    40
}

fn default_recent() -> usize {
    10
}

/// `actors/executor.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// Mailbox bound.
    #[serde(default = "default_mailbox")]
    pub mailbox: usize,
    /// Restart intensity.
    #[serde(default)]
    pub restart: RestartIntensity,
    /// Whether outputs and errors become memories of the run.
    #[serde(default = "yes")]
    pub record_outputs: bool,
    /// Pools every plan can use, pre-warmed at start.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolDef>,
}

fn yes() -> bool {
    true
}

/// `actors/reviewer.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewerConfig {
    /// Mailbox bound.
    #[serde(default = "default_mailbox")]
    pub mailbox: usize,
    /// Restart intensity.
    #[serde(default)]
    pub restart: RestartIntensity,
    /// The pool that runs `score` gates.
    #[serde(default = "default_score_pool")]
    pub score_pool: String,
}

fn default_score_pool() -> String {
    "scorer".to_owned()
}

/// The four agents' configuration.
#[derive(Debug, Clone)]
pub struct ActorsConfig {
    /// Orchestrator.
    pub orchestrator: OrchestratorConfig,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// Executor.
    pub executor: ExecutorConfig,
    /// Reviewer.
    pub reviewer: ReviewerConfig,
    /// The folder relative paths in the files are resolved against (the repository root for
    /// the embedded defaults: the current directory).
    pub base_dir: PathBuf,
}

const EMBEDDED: [(AgentKind, &str); 4] = [
    (
        AgentKind::Orchestrator,
        include_str!("../../actors/orchestrator.toml"),
    ),
    (
        AgentKind::Optimizer,
        include_str!("../../actors/optimizer.toml"),
    ),
    (
        AgentKind::Executor,
        include_str!("../../actors/executor.toml"),
    ),
    (
        AgentKind::Reviewer,
        include_str!("../../actors/reviewer.toml"),
    ),
];

fn parse<T: for<'de> Deserialize<'de>>(text: &str, source: &str) -> Result<T, AgentError> {
    toml::from_str(text).map_err(|e| {
        let location = e
            .span()
            .map(|span| crate::plan::Location::of_offset(text, span.start));
        AgentError::Config {
            detail: match location {
                Some(at) => format!(
                    "{source}:{}:{}: {}",
                    at.line,
                    at.column,
                    e.message().trim_end()
                ),
                None => format!("{source}: {}", e.message().trim_end()),
            },
        }
    })
}

impl ActorsConfig {
    /// The defaults built into the binary.
    pub fn embedded() -> Result<Self, AgentError> {
        Self::assemble(
            |kind| {
                let text = EMBEDDED
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map_or("", |(_, text)| *text);
                Ok((text.to_owned(), format!("(embedded) actors/{kind}.toml")))
            },
            std::env::current_dir().unwrap_or_default(),
        )
    }

    /// Reads `DIR/<agent>.toml` for each agent, falling back to the embedded file for an agent
    /// whose file is absent. A missing folder, an unreadable file or a bad key is an error
    /// naming the file (and the line).
    pub fn load(dir: &Path) -> Result<Self, AgentError> {
        if !dir.is_dir() {
            return Err(AgentError::Config {
                detail: format!(
                    "actors folder {} {}",
                    dir.display(),
                    if dir.exists() {
                        "is a file, not a folder (give the folder holding <agent>.toml)"
                    } else {
                        "does not exist"
                    }
                ),
            });
        }
        // A misspelled file (`executer.toml`) would be ignored, and its agent run on defaults.
        if let Ok(entries) = std::fs::read_dir(dir) {
            let known = |stem: &str| AgentKind::ALL.iter().any(|kind| kind.as_str() == stem);
            for entry in entries.flatten() {
                let path = entry.path();
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                if path.extension().is_some_and(|e| e == "toml") && !known(stem) {
                    tracing::warn!(
                        "actors folder {}: {} is not an agent's file (orchestrator.toml, \
                         optimizer.toml, executor.toml, reviewer.toml) and is ignored",
                        dir.display(),
                        path.display()
                    );
                }
            }
        }
        Self::assemble(
            |kind| {
                let path = dir.join(format!("{kind}.toml"));
                match std::fs::read_to_string(&path) {
                    Ok(text) => Ok((text, path.display().to_string())),
                    // A link whose file is gone is a mistake, not a missing file: its agent
                    // would run on the defaults unannounced.
                    Err(_) if path.is_symlink() => Err(AgentError::Config {
                        detail: format!(
                            "cannot read {}: it is a symbolic link to a file that does not exist",
                            path.display()
                        ),
                    }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let text = EMBEDDED
                            .iter()
                            .find(|(k, _)| *k == kind)
                            .map_or("", |(_, text)| *text);
                        Ok((text.to_owned(), format!("(embedded) actors/{kind}.toml")))
                    }
                    Err(e) => Err(AgentError::Config {
                        detail: format!("cannot read {}: {e}", path.display()),
                    }),
                }
            },
            // Absolute, so a pool's folder (and with it a cached result's key) is the same
            // folder whatever the working directory of the command.
            std::fs::canonicalize(dir).map_err(|e| AgentError::Config {
                detail: format!("actors folder {}: {e}", dir.display()),
            })?,
        )
    }

    fn assemble(
        read: impl Fn(AgentKind) -> Result<(String, String), AgentError>,
        base_dir: PathBuf,
    ) -> Result<Self, AgentError> {
        let files = [
            AgentKind::Orchestrator,
            AgentKind::Optimizer,
            AgentKind::Executor,
            AgentKind::Reviewer,
        ]
        .map(|kind| read(kind).map(|(text, source)| (kind, text, source)));
        let [orchestrator, optimizer, executor, reviewer] = files;
        let (orchestrator, optimizer, executor, reviewer) =
            (orchestrator?, optimizer?, executor?, reviewer?);
        let config = Self {
            orchestrator: parse(&orchestrator.1, &orchestrator.2)?,
            optimizer: parse(&optimizer.1, &optimizer.2)?,
            executor: parse(&executor.1, &executor.2)?,
            reviewer: parse(&reviewer.1, &reviewer.2)?,
            base_dir,
        };
        // A setting that parsed but cannot work is named with its file and line, as a bad key
        // is: the first candidate written in a file of the user's, else one written in an
        // embedded file, else the first candidate's file without a line.
        let files = [orchestrator, optimizer, executor, reviewer];
        config.check().map_err(|problem| {
            let file = |agent: AgentKind| files.iter().find(|(kind, _, _)| *kind == agent);
            let found = |embedded: bool| {
                problem.spots.iter().find_map(|(agent, spot)| {
                    let (_, text, source) = file(*agent)?;
                    if source.starts_with("(embedded)") != embedded {
                        return None;
                    }
                    spot.line(text).map(|line| format!("{source}:{line}"))
                })
            };
            let at = found(false).or_else(|| found(true)).or_else(|| {
                let (agent, _) = problem.spots.first()?;
                file(*agent).map(|(_, _, source)| source.clone())
            });
            let detail = match at {
                Some(at) => format!("{at}: {}", problem.message),
                None => problem.message,
            };
            AgentError::Config { detail }
        })?;
        Ok(config)
    }

    /// Checks the limits that keep the pipeline from blocking on itself (every attempt in flight
    /// must fit in each agent's mailbox, so the agents' sends to each other never wait), the
    /// restart windows, the retry backoff, the context budget and the Executor's pools.
    pub fn validate(&self) -> Result<(), AgentError> {
        self.check().map_err(|problem| AgentError::Config {
            detail: problem.message,
        })
    }

    fn check(&self) -> Result<(), Problem> {
        let problem =
            |agent, key: &str, message: String| Problem::at(agent, Spot::key(key), message);
        self.optimizer.context.validate().map_err(|e| {
            let message = format!("optimizer [context]: {e}");
            match &e {
                crate::context::ContextError::Config { field, .. } => {
                    let (table, key) = match field.rsplit_once('.') {
                        Some((table, key)) => (format!("[context.{table}]"), key),
                        None => ("[context]".to_owned(), field.as_str()),
                    };
                    // A whole table's problem (shares summing past 1) points at the table.
                    let spot = if ["budget", "ranking"].contains(&key) {
                        Spot::Header(format!("[context.{key}]"))
                    } else {
                        Spot::InTable {
                            headers: vec![table],
                            key: key.to_owned(),
                        }
                    };
                    Problem::at(AgentKind::Optimizer, spot, message)
                        .or_at(AgentKind::Optimizer, Spot::key(key))
                }
                _ => Problem::at(
                    AgentKind::Optimizer,
                    Spot::Header("[context".to_owned()),
                    message,
                ),
            }
        })?;
        // A folder that is not there would leave every task without its skills, said only in
        // a log line.
        if let Some(dir) = &self.optimizer.context.skills_dir {
            let path = self.base_dir.join(dir);
            if !path.is_dir() {
                return Err(Problem::at(
                    AgentKind::Optimizer,
                    Spot::key("skills_dir"),
                    format!(
                        "optimizer [context] skills_dir {}: {}",
                        path.display(),
                        if path.exists() {
                            "is not a folder"
                        } else {
                            "no such folder"
                        }
                    ),
                ));
            }
        }
        let run = &self.orchestrator.run;
        let in_flight = run.max_in_flight;
        if in_flight == 0 {
            return Err(problem(
                AgentKind::Orchestrator,
                "max_in_flight",
                "orchestrator run.max_in_flight must be at least 1".to_owned(),
            ));
        }
        if run.retry_backoff > run.retry_backoff_max {
            return Err(problem(
                AgentKind::Orchestrator,
                "retry_backoff",
                format!(
                    "orchestrator run.retry_backoff ({}) is longer than run.retry_backoff_max ({})",
                    humantime::format_duration(run.retry_backoff),
                    humantime::format_duration(run.retry_backoff_max)
                ),
            ));
        }
        for (name, def) in &self.executor.pools {
            if let Err(e) = def.check(name) {
                let detail = match e {
                    crate::session::SessionError::InvalidConfig { detail } => detail,
                    other => other.to_string(),
                };
                let message = format!("executor [pools.{name}]: {detail}");
                let unplaced = Problem {
                    spots: Vec::new(),
                    message,
                };
                return Err(pool_spots(unplaced, name, &detail));
            }
        }
        // The pool itself may come later (a plan's own `[pools]`, `Runtime::add_pools`): a
        // plan with a score gate is checked against it before it runs.
        if !crate::session::def::is_pool_name(&self.reviewer.score_pool) {
            return Err(problem(
                AgentKind::Reviewer,
                "score_pool",
                format!(
                    "reviewer score_pool {:?}: {}",
                    self.reviewer.score_pool,
                    crate::session::def::POOL_NAME_RULE
                ),
            ));
        }
        for (kind, mailbox, restart) in [
            (
                AgentKind::Orchestrator,
                self.orchestrator.mailbox,
                self.orchestrator.restart,
            ),
            (
                AgentKind::Optimizer,
                self.optimizer.mailbox,
                self.optimizer.restart,
            ),
            (
                AgentKind::Executor,
                self.executor.mailbox,
                self.executor.restart,
            ),
            (
                AgentKind::Reviewer,
                self.reviewer.mailbox,
                self.reviewer.restart,
            ),
        ] {
            if mailbox > MAX_MAILBOX {
                return Err(problem(
                    kind,
                    "mailbox",
                    format!("{kind} mailbox ({mailbox}) is over the limit, {MAX_MAILBOX}"),
                ));
            }
            // The Orchestrator also receives control messages (runs, pings, restarts).
            let needed = if kind == AgentKind::Orchestrator {
                in_flight.saturating_add(16)
            } else {
                in_flight
            };
            if mailbox < needed {
                // Either setting may be the one to change: the one the user wrote comes first.
                return Err(problem(
                    kind,
                    "mailbox",
                    format!(
                        "{kind} mailbox ({mailbox}) must hold every attempt in flight \
                         (orchestrator run.max_in_flight = {in_flight}{}), at least {needed}",
                        if kind == AgentKind::Orchestrator {
                            " plus 16 control messages"
                        } else {
                            ""
                        }
                    ),
                )
                .or_at(AgentKind::Orchestrator, Spot::key("max_in_flight")));
            }
            // A window shorter than a restart takes counts each failure alone, so a crash
            // loop would never reach the limit; OTP's period is whole seconds for the same reason.
            if restart.within < MIN_RESTART_WINDOW {
                return Err(problem(
                    kind,
                    "within",
                    format!(
                        "{kind} restart.within must be at least 1s (got {:?}): a shorter window never sees two restarts, so a crash loop would never stop",
                        restart.within
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A setting that parsed but cannot work: where to point (candidates, best first) and the
/// message.
struct Problem {
    spots: Vec<(AgentKind, Spot)>,
    message: String,
}

impl Problem {
    fn at(agent: AgentKind, spot: Spot, message: String) -> Self {
        Problem {
            spots: vec![(agent, spot)],
            message,
        }
    }

    /// Also points at `spot` of `agent`'s file when the first candidates are not written in a
    /// file of the user's (a default that does not fit another setting).
    fn or_at(mut self, agent: AgentKind, spot: Spot) -> Self {
        self.spots.push((agent, spot));
        self
    }
}

/// Where a setting is written in a configuration file.
enum Spot {
    /// The first `key =` (inline tables included).
    Key(String),
    /// A table header starting with this text (`[context.budget`).
    Header(String),
    /// `key` inside the table under one of these headers, else the header itself.
    InTable { headers: Vec<String>, key: String },
}

impl Spot {
    fn key(key: &str) -> Self {
        Spot::Key(key.to_owned())
    }

    /// The 1-based line of the spot in a configuration file's text; `None` when not written
    /// there.
    fn line(&self, text: &str) -> Option<usize> {
        let lines: Vec<&str> = text.lines().collect();
        let live = |line: &&str| !line.trim_start().starts_with('#');
        let header = |headers: &[String]| {
            lines.iter().position(|line| {
                live(line)
                    && headers
                        .iter()
                        .any(|h| line.trim_start().starts_with(h.as_str()))
            })
        };
        match self {
            Spot::Key(key) => lines
                .iter()
                .position(|line| live(line) && sets_key(line, key))
                .map(|i| i + 1),
            Spot::Header(start) => header(std::slice::from_ref(start)).map(|i| i + 1),
            Spot::InTable { headers, key } => {
                let at = header(headers)?;
                let inside = lines[at + 1..]
                    .iter()
                    .take_while(|line| !line.trim_start().starts_with('['))
                    .position(|line| live(line) && sets_key(line, key));
                Some(inside.map_or(at + 1, |i| at + i + 2))
            }
        }
    }
}

/// Whether `line` sets `key` (`key = ...`, also inside an inline table).
fn sets_key(line: &str, key: &str) -> bool {
    if key.is_empty() {
        return false;
    }
    let line = line.trim_start();
    line.match_indices(key).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + key.len()..].trim_start();
        before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) && after.starts_with('=')
    })
}

/// The settings of a pool's table, to find the one a pool's error names.
const POOL_KEYS: [&str; 16] = [
    "kind",
    "command",
    "cwd",
    "env_allowlist",
    "env",
    "min_idle",
    "max_size",
    "acquire_timeout",
    "idle_timeout",
    "health_check_interval",
    "health_check_timeout",
    "start_timeout",
    "call_timeout",
    "device",
    "warmup_size",
    "warmup",
];

/// Where pool `name`'s error `detail` points: the setting it names first, in the pool's table.
fn pool_spots(problem: Problem, name: &str, detail: &str) -> Problem {
    let named = |key: &str| {
        detail.match_indices(key).find_map(|(at, _)| {
            let before = detail[..at].chars().next_back();
            let after = detail[at + key.len()..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            (!word(before) && !word(after)).then_some(at)
        })
    };
    let setting = POOL_KEYS
        .iter()
        .filter_map(|key| named(key).map(|at| (at, *key)))
        .min()
        .map(|(_, key)| key);
    let headers = vec![format!("[pools.{name}]"), format!("[pools.\"{name}\"]")];
    let spot = match setting {
        Some(key) => Spot::InTable {
            headers,
            key: (*key).to_owned(),
        },
        // The pool as a whole (its name): its header.
        None => Spot::Header(headers[0].clone()),
    };
    problem
        .or_at(AgentKind::Executor, spot)
        .or_at(
            AgentKind::Executor,
            Spot::Header(format!("[pools.\"{name}\"]")),
        )
        .or_at(AgentKind::Executor, Spot::key(name))
        .or_at(AgentKind::Executor, Spot::key(&format!("\"{name}\"")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mailboxes_and_attempts_in_flight_past_the_limit_are_refused() {
        let mut config = ActorsConfig::embedded().unwrap();
        config.reviewer.mailbox = usize::MAX;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("reviewer mailbox") && err.contains("over the limit"),
            "{err}"
        );
        let mut config = ActorsConfig::embedded().unwrap();
        config.orchestrator.run.max_in_flight = usize::MAX;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("max_in_flight"), "{err}");
    }

    #[test]
    fn a_restart_window_too_short_to_see_two_restarts_is_refused() {
        for within in [Duration::from_nanos(1), Duration::from_millis(999)] {
            let mut config = ActorsConfig::embedded().unwrap();
            config.executor.restart.within = within;
            let err = config.validate().unwrap_err().to_string();
            assert!(
                err.contains("executor restart.within must be at least 1s"),
                "{err}"
            );
        }
        let mut config = ActorsConfig::embedded().unwrap();
        config.executor.restart.within = MIN_RESTART_WINDOW;
        config.validate().unwrap();
    }

    #[test]
    fn embedded_defaults_parse_and_validate() {
        let config = ActorsConfig::embedded().unwrap();
        assert!(config.orchestrator.run.max_in_flight >= 1);
        assert_eq!(config.reviewer.score_pool, "scorer");
    }

    #[test]
    fn a_bad_key_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("executor.toml"),
            "mailbox = 8\n[restart]\nmax_restart = 1\n",
        )
        .unwrap();
        let error = ActorsConfig::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("executor.toml:3:1"), "{error}");
        assert!(error.contains("max_restart"), "{error}");
    }

    #[test]
    fn a_setting_that_cannot_work_names_the_file_and_line() {
        let cases = [
            (
                "orchestrator.toml",
                "# comment with within = 1\n[restart]\nmax_restarts = 1\nwithin = \"0s\"\n",
                ":4: orchestrator restart.within must be at least 1s",
            ),
            (
                "orchestrator.toml",
                "[run]\nretry_backoff_max = \"1s\"\nretry_backoff = \"10s\"\n",
                ":3: orchestrator run.retry_backoff (10s) is longer than run.retry_backoff_max (1s)",
            ),
            (
                "executor.toml",
                "mailbox = 4096\n\n[pools.judge]\nkind = \"scorer\"\ncommand = [\"x\"]\n",
                ":5: executor [pools.judge]: pool \"judge\": `command` is for process and mcp pools only",
            ),
            (
                "reviewer.toml",
                "mailbox = 3\n",
                ":1: reviewer mailbox (3) must hold every attempt in flight",
            ),
            (
                "reviewer.toml",
                "# the pool for score gates\nscore_pool = \"\"\n",
                ":2: reviewer score_pool \"\": a pool's name must be",
            ),
            // The mailbox is the embedded default: the setting written is the one named.
            (
                "orchestrator.toml",
                "[run]\nmax_in_flight = 5000\n",
                ":2: orchestrator mailbox (4096) must hold every attempt in flight",
            ),
            (
                "optimizer.toml",
                "[context]\nalert_ratio = 0.5\n[context.budget]\ncritical = 0.9\n",
                ":3: optimizer [context]: ",
            ),
            (
                "executor.toml",
                "[pools.a]\nkind = \"native\"\n[pools.p]\nkind = \"process\"\ncommand = [\"sh\"]\n\
                 max_size = 0\n",
                ":6: executor [pools.p]: pool \"p\": max_size must be at least 1",
            ),
            (
                "executor.toml",
                "[pools.bad_]\nkind = \"process\"\ncommand = [\"sh\"]\n",
                ":1: executor [pools.bad_]: pool \"bad_\": a pool's name must be",
            ),
            (
                "executor.toml",
                "[pools]\nbad_ = { kind = \"process\", command = [\"sh\"] }\n",
                ":2: executor [pools.bad_]: pool \"bad_\": a pool's name must be",
            ),
            (
                "optimizer.toml",
                "[context]\n\nskills_dir = \"skilz\"\n",
                ":3: optimizer [context] skills_dir ",
            ),
        ];
        for (file, text, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(file), text).unwrap();
            let error = ActorsConfig::load(dir.path()).unwrap_err().to_string();
            let named = format!("{}{expected}", dir.path().join(file).display());
            assert!(error.contains(&named), "{error}\nexpected: {named}");
        }
    }

    #[test]
    fn a_restart_table_may_leave_a_key_to_its_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("executor.toml"),
            "[restart]\nmax_restarts = 1\n",
        )
        .unwrap();
        let config = ActorsConfig::load(dir.path()).unwrap();
        assert_eq!(
            config.executor.restart,
            RestartIntensity {
                max_restarts: 1,
                within: Duration::from_secs(10)
            }
        );
    }

    /// A relative folder is made absolute: the pools' folders, and the keys of their cached
    /// results, would otherwise be the same text for two folders.
    #[test]
    fn the_actors_folder_is_taken_as_an_absolute_path() {
        let config = ActorsConfig::load(Path::new("actors")).unwrap();
        assert!(
            config.base_dir.is_absolute(),
            "{}",
            config.base_dir.display()
        );
        assert_eq!(config.base_dir, std::fs::canonicalize("actors").unwrap());
    }

    #[test]
    fn a_link_to_a_missing_file_is_an_error_not_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("executor.toml");
        std::os::unix::fs::symlink(dir.path().join("gone.toml"), &link).unwrap();
        let error = ActorsConfig::load(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains(&format!("cannot read {}", link.display()))
                && error.contains("symbolic link to a file that does not exist"),
            "{error}"
        );
    }

    #[test]
    fn a_mailbox_smaller_than_the_flight_window_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("reviewer.toml"), "mailbox = 8\n").unwrap();
        let error = ActorsConfig::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("reviewer mailbox (8)"), "{error}");
    }
}
