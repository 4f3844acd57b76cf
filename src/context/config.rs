//! The `[context]` table of `actors/optimizer.toml`: window, category shares, skills folder,
//! ranking weights, alert ratio.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Category, ContextError};

/// Slack allowed on the sum of the shares, for decimal fractions such as 0.1 + 0.2.
const SHARE_SUM_EPSILON: f64 = 1e-6;

/// A session's context window and how it is split between the categories.
///
/// A share a category leaves unused (and whatever the shares leave unallocated) is passed on to
/// the categories that need more.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// The model's context window in tokens.
    pub window: usize,
    /// Share of the window for upstream outputs (0 to 1).
    pub critical: f64,
    /// Share for skill documents.
    pub skills: f64,
    /// Share for project files the task names.
    pub project: f64,
    /// Share for everything else (memories).
    pub general: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            window: 200_000,
            critical: 0.40,
            skills: 0.30,
            project: 0.20,
            general: 0.10,
        }
    }
}

impl BudgetConfig {
    /// The share of a category.
    pub fn share(&self, category: Category) -> f64 {
        match category {
            Category::Critical => self.critical,
            Category::Skills => self.skills,
            Category::Project => self.project,
            Category::General => self.general,
        }
    }

    /// Checks the window and the shares; the error names the offending field.
    pub fn validate(&self) -> Result<(), ContextError> {
        if self.window == 0 {
            return Err(ContextError::Config {
                field: "budget.window".into(),
                reason: "must be greater than 0".into(),
            });
        }
        for category in Category::ALL {
            let share = self.share(category);
            if !share.is_finite() || !(0.0..=1.0).contains(&share) {
                return Err(ContextError::Config {
                    field: format!("budget.{}", category.as_str()),
                    reason: format!("must be between 0 and 1, got {share}"),
                });
            }
        }
        let sum: f64 = Category::ALL.iter().map(|&c| self.share(c)).sum();
        if sum > 1.0 + SHARE_SUM_EPSILON {
            return Err(ContextError::Config {
                field: "budget".into(),
                reason: format!(
                    "critical + skills + project + general must be at most 1, got {sum}"
                ),
            });
        }
        Ok(())
    }
}

/// How candidates are ranked: a weighted sum of relevance (BM25 against the task, scaled so the
/// best candidate of the request scores 1), importance (0 to 1) and recency (halving every
/// `recency_half_life_hours`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankingConfig {
    /// Weight of BM25 relevance.
    pub relevance: f64,
    /// Weight of the candidate's importance.
    pub importance: f64,
    /// Weight of recency.
    pub recency: f64,
    /// Age at which recency is worth half of a brand-new candidate's.
    pub recency_half_life_hours: f64,
    /// Candidates of the skills and general categories whose relevance, relative to the best
    /// candidate of the request, is below this are not sent at all. Upstream outputs and the
    /// files a task names are always sent.
    pub min_relevance: f64,
}

impl Default for RankingConfig {
    fn default() -> Self {
        RankingConfig {
            relevance: 0.7,
            importance: 0.2,
            recency: 0.1,
            recency_half_life_hours: 24.0 * 7.0,
            min_relevance: 0.3,
        }
    }
}

impl RankingConfig {
    /// Checks the weights; the error names the offending field.
    pub fn validate(&self) -> Result<(), ContextError> {
        let fields = [
            ("ranking.relevance", self.relevance),
            ("ranking.importance", self.importance),
            ("ranking.recency", self.recency),
            ("ranking.min_relevance", self.min_relevance),
        ];
        for (field, value) in fields {
            if !value.is_finite() || !(0.0..=1.0).contains(&value) {
                return Err(ContextError::Config {
                    field: field.into(),
                    reason: format!("must be between 0 and 1, got {value}"),
                });
            }
        }
        if !self.recency_half_life_hours.is_finite() || self.recency_half_life_hours <= 0.0 {
            return Err(ContextError::Config {
                field: "ranking.recency_half_life_hours".into(),
                reason: format!(
                    "must be a positive number of hours, got {}",
                    self.recency_half_life_hours
                ),
            });
        }
        Ok(())
    }
}

/// The optimizer's settings: the `[context]` table of `actors/optimizer.toml`.
///
/// ```toml
/// [context]
/// skills_dir = "skills"
/// alert_ratio = 0.75
/// [context.budget]
/// window = 200000
/// critical = 0.4
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContextConfig {
    /// Window and category shares.
    pub budget: BudgetConfig,
    /// A folder of Markdown skill documents (`*.md`, searched recursively).
    pub skills_dir: Option<PathBuf>,
    /// Skill documents and project files larger than this are skipped with a warning.
    pub max_file_bytes: u64,
    /// Usage of the window (0 to 1) at which the monitor alerts.
    pub alert_ratio: f64,
    /// Ranking weights and the relevance cut-off.
    pub ranking: RankingConfig,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            budget: BudgetConfig::default(),
            skills_dir: None,
            max_file_bytes: 1024 * 1024,
            alert_ratio: 0.75,
            ranking: RankingConfig::default(),
        }
    }
}

impl ContextConfig {
    /// Parses the table's TOML text (the `[context]` table's contents, not the whole file).
    pub fn from_toml_str(text: &str) -> Result<Self, ContextError> {
        let config: ContextConfig =
            toml::from_str(text).map_err(|e| ContextError::ConfigSyntax(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the offending one.
    pub fn validate(&self) -> Result<(), ContextError> {
        self.budget.validate()?;
        self.ranking.validate()?;
        if !self.alert_ratio.is_finite() || self.alert_ratio <= 0.0 || self.alert_ratio > 1.0 {
            return Err(ContextError::Config {
                field: "alert_ratio".into(),
                reason: format!("must be in (0, 1], got {}", self.alert_ratio),
            });
        }
        if self.max_file_bytes == 0 {
            return Err(ContextError::Config {
                field: "max_file_bytes".into(),
                reason: "must be greater than 0".into(),
            });
        }
        Ok(())
    }
}
