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

/// OTP-style restart intensity: at most `max_restarts` restarts within `within`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Task attempts in flight at once.
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
        Self::assemble(
            |kind| {
                let path = dir.join(format!("{kind}.toml"));
                match std::fs::read_to_string(&path) {
                    Ok(text) => Ok((text, path.display().to_string())),
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
            dir.to_path_buf(),
        )
    }

    fn assemble(
        read: impl Fn(AgentKind) -> Result<(String, String), AgentError>,
        base_dir: PathBuf,
    ) -> Result<Self, AgentError> {
        let (text, source) = read(AgentKind::Orchestrator)?;
        let orchestrator: OrchestratorConfig = parse(&text, &source)?;
        let (text, source) = read(AgentKind::Optimizer)?;
        let optimizer: OptimizerConfig = parse(&text, &source)?;
        let (text, source) = read(AgentKind::Executor)?;
        let executor: ExecutorConfig = parse(&text, &source)?;
        let (text, source) = read(AgentKind::Reviewer)?;
        let reviewer: ReviewerConfig = parse(&text, &source)?;
        let config = Self {
            orchestrator,
            optimizer,
            executor,
            reviewer,
            base_dir,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the limits that keep the pipeline from blocking on itself: every attempt in flight
    /// must fit in each agent's mailbox, so the agents' sends to each other never wait.
    pub fn validate(&self) -> Result<(), AgentError> {
        self.optimizer
            .context
            .validate()
            .map_err(|e| AgentError::Config {
                detail: format!("optimizer [context]: {e}"),
            })?;
        let in_flight = self.orchestrator.run.max_in_flight;
        if in_flight == 0 {
            return Err(AgentError::Config {
                detail: "orchestrator run.max_in_flight must be at least 1".to_owned(),
            });
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
                return Err(AgentError::Config {
                    detail: format!("{kind} mailbox ({mailbox}) is over the limit, {MAX_MAILBOX}"),
                });
            }
            // The Orchestrator also receives control messages (runs, pings, restarts).
            let needed = if kind == AgentKind::Orchestrator {
                in_flight.saturating_add(16)
            } else {
                in_flight
            };
            if mailbox < needed {
                return Err(AgentError::Config {
                    detail: format!(
                        "{kind} mailbox ({mailbox}) must hold every attempt in flight \
                         (orchestrator run.max_in_flight = {in_flight}{}), at least {needed}",
                        if kind == AgentKind::Orchestrator {
                            " plus 16 control messages"
                        } else {
                            ""
                        }
                    ),
                });
            }
            // A window shorter than a restart takes counts each failure alone, so a crash
            // loop would never reach the limit; OTP's period is whole seconds for the same reason.
            if restart.within < MIN_RESTART_WINDOW {
                return Err(AgentError::Config {
                    detail: format!(
                        "{kind} restart.within must be at least 1s (got {:?}): a shorter window never sees two restarts, so a crash loop would never stop",
                        restart.within
                    ),
                });
            }
        }
        Ok(())
    }
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
    fn a_mailbox_smaller_than_the_flight_window_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("reviewer.toml"), "mailbox = 8\n").unwrap();
        let error = ActorsConfig::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("reviewer mailbox (8)"), "{error}");
    }
}
