//! What pools and tools exist, so a plan naming a missing one is rejected before it runs.

use std::collections::{HashMap, HashSet};

use crate::session::PoolKind;

/// The known pools and their tools.
pub trait ToolCatalog {
    /// Whether a pool of this name exists.
    fn has_pool(&self, pool: &str) -> bool;
    /// Whether the pool has this tool: `None` when the pool accepts any tool name (a process
    /// pool runs whatever command it is given) or the pool is unknown.
    fn has_tool(&self, pool: &str, tool: &str) -> Option<bool>;
    /// The pool's kind, when known: a call's args are then checked as that kind reads them
    /// (a `process` call's keys, an `mcp` call's table).
    fn pool_kind(&self, _pool: &str) -> Option<PoolKind> {
        None
    }
    /// The pool's tools, sorted, when the catalogue lists them (for errors naming a missing one).
    fn tools(&self, _pool: &str) -> Option<Vec<String>> {
        None
    }
    /// The pool the Reviewer runs score gates on, when the catalogue knows it: a plan with a
    /// score gate is then checked to have it as a scorer pool.
    fn score_pool(&self) -> Option<&str> {
        None
    }
}

/// A catalogue held in memory.
#[derive(Debug, Clone, Default)]
pub struct StaticCatalog {
    pools: HashMap<String, KnownPool>,
    score_pool: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct KnownPool {
    /// Its tools; `None` accepts any tool name.
    tools: Option<HashSet<String>>,
    kind: Option<PoolKind>,
}

impl StaticCatalog {
    /// An empty catalogue (every pool unknown).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pool that accepts any tool name.
    /// A pool already known keeps its kind.
    pub fn with_open_pool(mut self, pool: impl Into<String>) -> Self {
        self.pools.entry(pool.into()).or_default().tools = None;
        self
    }

    /// Says what kind of pool `pool` is, adding it (accepting any tool name) if it is not known.
    pub fn with_kind(mut self, pool: impl Into<String>, kind: PoolKind) -> Self {
        self.pools.entry(pool.into()).or_default().kind = Some(kind);
        self
    }

    /// Names the pool score gates run on ([`ToolCatalog::score_pool`]).
    pub fn with_score_pool(mut self, pool: impl Into<String>) -> Self {
        self.score_pool = Some(pool.into());
        self
    }

    /// Adds a pool with exactly these tools.
    pub fn with_tools<I, S>(mut self, pool: impl Into<String>, tools: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let tools = Some(tools.into_iter().map(Into::into).collect());
        self.pools.entry(pool.into()).or_default().tools = tools;
        self
    }
}

impl ToolCatalog for StaticCatalog {
    fn has_pool(&self, pool: &str) -> bool {
        self.pools.contains_key(pool)
    }

    fn has_tool(&self, pool: &str, tool: &str) -> Option<bool> {
        self.pools
            .get(pool)?
            .tools
            .as_ref()
            .map(|tools| tools.contains(tool))
    }

    fn pool_kind(&self, pool: &str) -> Option<PoolKind> {
        self.pools.get(pool)?.kind
    }

    fn tools(&self, pool: &str) -> Option<Vec<String>> {
        let mut tools: Vec<String> = self
            .pools
            .get(pool)?
            .tools
            .as_ref()?
            .iter()
            .cloned()
            .collect();
        tools.sort();
        Some(tools)
    }

    fn score_pool(&self) -> Option<&str> {
        self.score_pool.as_deref()
    }
}
