//! What pools and tools exist, so a plan naming a missing one is rejected before it runs.

use std::collections::{HashMap, HashSet};

/// The known pools and their tools.
pub trait ToolCatalog {
    /// Whether a pool of this name exists.
    fn has_pool(&self, pool: &str) -> bool;
    /// Whether the pool has this tool: `None` when the pool accepts any tool name (a process
    /// pool runs whatever command it is given) or the pool is unknown.
    fn has_tool(&self, pool: &str, tool: &str) -> Option<bool>;
}

/// A catalogue held in memory.
#[derive(Debug, Clone, Default)]
pub struct StaticCatalog {
    /// Pool name to its tools; `None` accepts any tool name.
    pools: HashMap<String, Option<HashSet<String>>>,
}

impl StaticCatalog {
    /// An empty catalogue (every pool unknown).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pool that accepts any tool name.
    pub fn with_open_pool(mut self, pool: impl Into<String>) -> Self {
        self.pools.insert(pool.into(), None);
        self
    }

    /// Adds a pool with exactly these tools.
    pub fn with_tools<I, S>(mut self, pool: impl Into<String>, tools: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.pools.insert(
            pool.into(),
            Some(tools.into_iter().map(Into::into).collect()),
        );
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
            .as_ref()
            .map(|tools| tools.contains(tool))
    }
}
