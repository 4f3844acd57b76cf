//! `ContextCache`: results of expensive lookups (file reads, documentation, research, techniques)
//! kept for a time that depends on what they are, so agents stop repeating the same tool calls.
//!
//! Built on moka: per-entry expiry by category and single-flight initialisation (concurrent
//! callers of one key wait for one computation). Values are stored postcard-encoded, so any
//! serde type can be cached. The permanent categories are written through to the store's redb
//! file and survive restarts; they never expire on their own, so the store lists and clears them
//! on request ([`Store::persisted_cache_usage`], [`Store::clear_persisted_cache`], and the CLI's
//! `tetrarch cache`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Store;
use super::codec;
use super::error::StoreError;
use super::memory::Timestamp;

/// What a cached value is; decides how long it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheCategory {
    /// Contents of a file (default 5 minutes).
    FileRead,
    /// A documentation lookup (default 1 hour).
    Documentation,
    /// A research result (default 30 minutes).
    Research,
    /// A technique pattern: permanent, persisted in the store.
    Technique,
    /// A compiled CUDA kernel: permanent, persisted in the store (see `scoring::StoreKernelCache`).
    CompiledKernel,
    /// The result of a tool call a plan marks `cacheable`, keyed by the tool and its rendered
    /// arguments: permanent, persisted, so a resumed or repeated run reuses it.
    ToolResult,
}

impl CacheCategory {
    /// Every category.
    pub const ALL: [CacheCategory; 6] = [
        CacheCategory::FileRead,
        CacheCategory::Documentation,
        CacheCategory::Research,
        CacheCategory::Technique,
        CacheCategory::CompiledKernel,
        CacheCategory::ToolResult,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Whether entries are written through to the store and survive restarts.
    pub fn is_persisted(self) -> bool {
        matches!(
            self,
            CacheCategory::Technique | CacheCategory::CompiledKernel | CacheCategory::ToolResult
        )
    }

    /// The snake_case name used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheCategory::FileRead => "file_read",
            CacheCategory::Documentation => "documentation",
            CacheCategory::Research => "research",
            CacheCategory::Technique => "technique",
            CacheCategory::CompiledKernel => "compiled_kernel",
            CacheCategory::ToolResult => "tool_result",
        }
    }
}

impl std::str::FromStr for CacheCategory {
    type Err = StoreError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        CacheCategory::ALL
            .into_iter()
            .find(|c| c.as_str() == input)
            .ok_or_else(|| StoreError::InvalidCacheCategory {
                input: input.to_owned(),
            })
    }
}

impl std::fmt::Display for CacheCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the store holds of one persisted category (see [`Store::persisted_cache_usage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PersistedCacheUsage {
    /// The category; `None` for entries that do not decode (damaged, or written by a newer
    /// schema). Those are recomputed and overwritten when their key is next asked for.
    pub category: Option<CacheCategory>,
    /// How many entries.
    pub entries: u64,
    /// Their size as stored (encoded), in bytes.
    pub bytes: u64,
    /// When the oldest was stored (`None` for entries that do not decode).
    pub oldest: Option<Timestamp>,
    /// When the newest was stored.
    pub newest: Option<Timestamp>,
}

/// Which persisted entries [`Store::clear_persisted_cache`] removes: those that match every
/// filter given, so the default removes them all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheClearFilter {
    /// Only entries of this category. Entries that do not decode have none, so only a clear
    /// without a category removes them.
    pub category: Option<CacheCategory>,
    /// Only entries stored before this time. Entries that do not decode have no time and match.
    pub stored_before: Option<Timestamp>,
}

impl CacheClearFilter {
    /// Whether an entry of `category` (`None`: it does not decode) stored at `stored_at` is
    /// removed.
    pub(crate) fn matches(
        &self,
        category: Option<CacheCategory>,
        stored_at: Option<Timestamp>,
    ) -> bool {
        let category_matches = match self.category {
            Some(wanted) => category == Some(wanted),
            None => true,
        };
        let age_matches = match (self.stored_before, stored_at) {
            (Some(before), Some(at)) => at < before,
            _ => true,
        };
        category_matches && age_matches
    }
}

/// What [`Store::clear_persisted_cache`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheCleared {
    /// How many entries.
    pub entries: u64,
    /// Their size as stored, in bytes.
    pub bytes: u64,
}

/// Time to live per category; the technique category never expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheTtls {
    /// For [`CacheCategory::FileRead`].
    pub file_read: Duration,
    /// For [`CacheCategory::Documentation`].
    pub documentation: Duration,
    /// For [`CacheCategory::Research`].
    pub research: Duration,
}

impl Default for CacheTtls {
    fn default() -> Self {
        CacheTtls {
            file_read: Duration::from_secs(5 * 60),
            documentation: Duration::from_secs(60 * 60),
            research: Duration::from_secs(30 * 60),
        }
    }
}

impl CacheTtls {
    /// The time to live of a category; `None` is permanent.
    pub fn ttl(&self, category: CacheCategory) -> Option<Duration> {
        match category {
            CacheCategory::FileRead => Some(self.file_read),
            CacheCategory::Documentation => Some(self.documentation),
            CacheCategory::Research => Some(self.research),
            CacheCategory::Technique
            | CacheCategory::CompiledKernel
            | CacheCategory::ToolResult => None,
        }
    }
}

/// A cache key: a stable 128-bit hash of a function name and its serialized arguments.
///
/// Stable across processes and versions (xxh3 over postcard bytes), so persisted entries are found
/// again after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(u128);

impl CacheKey {
    /// The key of `function` called with `args`.
    ///
    /// # Errors
    /// [`StoreError::Codec`] if `args` cannot be serialized.
    pub fn new<A: Serialize + ?Sized>(function: &str, args: &A) -> Result<CacheKey, StoreError> {
        let mut bytes = codec::encode_value(&function)?;
        bytes.extend(codec::encode_value(args)?);
        Ok(CacheKey(xxhash_rust::xxh3::xxh3_128(&bytes)))
    }

    /// The key as an integer.
    pub fn as_u128(&self) -> u128 {
        self.0
    }

    /// A key saved as [`CacheKey::as_u128`] gave it.
    pub fn from_u128(value: u128) -> CacheKey {
        CacheKey(value)
    }
}

/// Why a cached computation failed. Shared (behind an `Arc`) by every caller waiting on the key.
#[derive(Debug, thiserror::Error)]
pub enum CacheError<E> {
    /// The computation itself failed; nothing was cached.
    #[error("the cached computation failed")]
    Compute(#[source] E),
    /// Encoding, decoding or persisting the value failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Hits and misses of one category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CategoryStats {
    /// Served without computing (from memory, or from disk for the permanent category).
    pub hits: u64,
    /// Computed.
    pub misses: u64,
}

/// Hits and misses per category, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Per category, in [`CacheCategory::ALL`] order.
    pub categories: Vec<(CacheCategory, CategoryStats)>,
}

impl CacheStats {
    /// Totals over every category.
    pub fn total(&self) -> CategoryStats {
        self.categories
            .iter()
            .fold(CategoryStats::default(), |acc, (_, s)| CategoryStats {
                hits: acc.hits + s.hits,
                misses: acc.misses + s.misses,
            })
    }
}

#[derive(Clone)]
struct CachedEntry {
    category: CacheCategory,
    bytes: Arc<[u8]>,
}

struct CategoryExpiry {
    ttls: CacheTtls,
}

/// What the in-memory cache is keyed by: the key and the category asked for. With the key alone,
/// a value filed under one category was returned (with that category's time to live) to a caller
/// asking for another, whose value was then never computed nor persisted.
type MemoryKey = (CacheKey, CacheCategory);

impl moka::Expiry<MemoryKey, CachedEntry> for CategoryExpiry {
    fn expire_after_create(
        &self,
        _key: &MemoryKey,
        value: &CachedEntry,
        _created_at: Instant,
    ) -> Option<Duration> {
        self.ttls.ttl(value.category)
    }
}

/// The shared context cache. Cheap to clone.
#[derive(Clone)]
pub struct ContextCache {
    entries: moka::future::Cache<MemoryKey, CachedEntry>,
    store: Option<Store>,
    hits: Arc<[AtomicU64; CacheCategory::ALL.len()]>,
    misses: Arc<[AtomicU64; CacheCategory::ALL.len()]>,
}

impl std::fmt::Debug for ContextCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextCache")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl ContextCache {
    /// A cache holding at most `max_bytes` of encoded values. With a store, the permanent
    /// category is persisted in it; without one, it lives as long as the process.
    pub fn new(ttls: CacheTtls, max_bytes: u64, store: Option<Store>) -> Self {
        let entries = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &MemoryKey, entry: &CachedEntry| {
                u32::try_from(entry.bytes.len()).unwrap_or(u32::MAX).max(1)
            })
            .expire_after(CategoryExpiry { ttls })
            .build();
        ContextCache {
            entries,
            store,
            hits: Arc::new(Default::default()),
            misses: Arc::new(Default::default()),
        }
    }

    /// Returns the cached value of `key`, or runs `compute` once (however many callers ask at the
    /// same time), caches its value for the category's time to live, and returns it.
    ///
    /// The category is part of the key: the same key asked with another category is another
    /// entry. A persisted entry filed under another category is computed again and overwritten
    /// (the file holds one entry per key).
    ///
    /// A persisted category's miss in memory reads the store on the calling thread (a redb read
    /// of one key); only the write of a new value goes through the writer.
    ///
    /// # Errors
    /// The computation's error, or a store error for the permanent category; shared by every
    /// caller that waited on the same key. A failed computation is not cached.
    pub async fn get_or_compute<T, E, F>(
        &self,
        key: CacheKey,
        category: CacheCategory,
        compute: F,
    ) -> Result<T, Arc<CacheError<E>>>
    where
        T: Serialize + DeserializeOwned,
        E: Send + Sync + 'static,
        F: Future<Output = Result<T, E>>,
    {
        let computed = AtomicBool::new(false);
        let init = async {
            if category.is_persisted()
                && let Some(store) = &self.store
            {
                // A persisted entry that cannot be read back as `T` (damaged, or written by a
                // build whose type differed) is computed again and overwritten: cached values
                // are re-computable, and keeping it would fail this key for good.
                match store.cache_entry(key.0) {
                    Ok(Some((stored_category, bytes)))
                        if stored_category == category
                            && codec::decode_value::<T>(&bytes).is_ok() =>
                    {
                        return Ok(CachedEntry {
                            category,
                            bytes: bytes.into(),
                        });
                    }
                    Ok(None) => {}
                    Ok(Some((stored_category, _))) if stored_category != category => {
                        tracing::warn!(
                            "context cache: entry {:032x} is filed as {stored_category}, asked as {category}; recomputing",
                            key.0
                        );
                    }
                    Ok(Some(_)) => {
                        tracing::warn!(
                            "context cache: entry {:032x} does not decode; recomputing",
                            key.0
                        );
                    }
                    Err(e) => {
                        tracing::warn!(
                            "context cache: entry {:032x} unreadable ({e}); recomputing",
                            key.0
                        );
                    }
                }
            }
            computed.store(true, Ordering::Relaxed);
            let value = compute.await.map_err(CacheError::Compute)?;
            let bytes = codec::encode_value(&value)?;
            if category.is_persisted()
                && let Some(store) = &self.store
            {
                store.put_cache_entry(key.0, category, &bytes).await?;
            }
            Ok::<_, CacheError<E>>(CachedEntry {
                category,
                bytes: bytes.into(),
            })
        };
        let entry = self.entries.try_get_with((key, category), init).await?;
        let counter = if computed.load(Ordering::Relaxed) {
            &self.misses
        } else {
            &self.hits
        };
        counter[category.index()].fetch_add(1, Ordering::Relaxed);
        codec::decode_value(&entry.bytes).map_err(|e| Arc::new(CacheError::Store(e)))
    }

    /// Drops one entry from memory, whatever its category (a persisted one stays on disk).
    pub async fn invalidate(&self, key: CacheKey) {
        for category in CacheCategory::ALL {
            self.entries.invalidate(&(key, category)).await;
        }
    }

    /// Drops one entry from memory and from the store: the next `get_or_compute` computes it.
    ///
    /// # Errors
    /// The store's, when removing the persisted entry fails (the memory entry is gone anyway).
    pub async fn remove(&self, key: CacheKey) -> Result<(), StoreError> {
        self.invalidate(key).await;
        match &self.store {
            Some(store) => store.remove_cache_entry(key.0).await,
            None => Ok(()),
        }
    }

    /// Hit and miss counts per category.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            categories: CacheCategory::ALL
                .iter()
                .map(|c| {
                    (
                        *c,
                        CategoryStats {
                            hits: self.hits[c.index()].load(Ordering::Relaxed),
                            misses: self.misses[c.index()].load(Ordering::Relaxed),
                        },
                    )
                })
                .collect(),
        }
    }
}
