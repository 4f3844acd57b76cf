//! The hot tier: every live memory, the search index over them, the recency and expiry orders,
//! and the counters behind `stats`. One `RwLock` guards it all so the index can never disagree
//! with the table; only the writer thread takes the write side, once per committed batch.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use super::index::{DocNo, NewDoc, SearchIndex};
use super::memory::{Memory, MemoryId, MemoryType, Namespace, Timestamp};
use super::text::DocTerms;

/// A live (not archived) memory with its access statistics, which `get` bumps under the read lock.
#[derive(Debug)]
pub(crate) struct LiveEntry {
    pub memory: Arc<Memory>,
    pub doc: DocNo,
    pub encoded_len: u64,
    pub access_count: AtomicU64,
    pub last_accessed: AtomicI64,
    /// Set when the statistics changed since they were last written.
    pub access_dirty: AtomicBool,
}

impl LiveEntry {
    /// The memory with its current access statistics.
    pub fn snapshot(&self) -> Memory {
        let mut memory = (*self.memory).clone();
        memory.access_count = self.access_count.load(Ordering::Relaxed);
        memory.last_accessed_at =
            Timestamp::from_millis(self.last_accessed.load(Ordering::Relaxed));
        memory
    }
}

/// Per-namespace counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct NamespaceCounts {
    pub live: u64,
    pub archived: u64,
    pub bytes: u64,
    pub live_by_type: BTreeMap<MemoryType, u64>,
}

impl NamespaceCounts {
    /// Nothing left to count: the namespace's entry can go (each run has a namespace of its
    /// own, and a long-lived process whose memories expire would keep them all).
    fn is_empty(&self) -> bool {
        self.live == 0 && self.archived == 0
    }
}

/// What a committed batch does to the hot tier.
#[derive(Debug)]
pub(crate) enum Effect {
    /// A memory was written (new, updated or archived). `terms` is `None` for archived ones.
    Upsert {
        memory: Memory,
        terms: Option<DocTerms>,
        encoded_len: u64,
    },
    /// A memory was deleted after its expiry.
    Purged {
        id: MemoryId,
        namespace: Namespace,
        archived: bool,
        encoded_len: u64,
        expires_at: i64,
    },
    /// A memory's access statistics were written (`memory` is the record written); its record
    /// size may have changed.
    AccessWritten { memory: Memory, encoded_len: u64 },
}

/// The hot tier.
#[derive(Debug)]
pub(crate) struct State {
    pub live: HashMap<MemoryId, LiveEntry>,
    pub index: SearchIndex,
    pub recent: HashMap<Namespace, BTreeSet<MemoryId>>,
    pub recent_all: BTreeSet<MemoryId>,
    /// Every memory with an expiry, archived ones included.
    pub expiry: BTreeSet<(i64, MemoryId)>,
    pub counts: BTreeMap<Namespace, NamespaceCounts>,
    /// Records set aside in `damaged_memories` (or left in place when that failed) at load.
    pub damaged: u64,
    /// When the file was loaded (ms): archived records that had expired by then were not
    /// counted, so their purge takes nothing off the counts.
    pub loaded_at_ms: i64,
}

impl State {
    /// An empty hot tier over a store's dictionary.
    pub fn new(dictionary: std::sync::Arc<super::text::Dictionary>) -> Self {
        State {
            live: HashMap::default(),
            index: SearchIndex::new(dictionary),
            recent: HashMap::default(),
            recent_all: BTreeSet::new(),
            expiry: BTreeSet::new(),
            counts: BTreeMap::new(),
            damaged: 0,
            loaded_at_ms: i64::MIN,
        }
    }

    /// Applies a committed effect.
    pub fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Upsert {
                memory,
                terms,
                encoded_len,
            } => self.upsert(memory, terms, encoded_len),
            Effect::Purged {
                id,
                namespace,
                archived,
                encoded_len,
                expires_at,
            } => {
                self.remove_live(id);
                if archived
                    && expires_at > self.loaded_at_ms
                    && let Some(counts) = self.counts.get_mut(&namespace)
                {
                    counts.archived = counts.archived.saturating_sub(1);
                    counts.bytes = counts.bytes.saturating_sub(encoded_len);
                    if counts.is_empty() {
                        self.counts.remove(&namespace);
                    }
                }
                self.expiry.remove(&(expires_at, id));
            }
            Effect::AccessWritten {
                memory,
                encoded_len,
            } => {
                if let Some(entry) = self.live.get_mut(&memory.id) {
                    let counts = self
                        .counts
                        .entry(entry.memory.namespace.clone())
                        .or_default();
                    counts.bytes = counts.bytes.saturating_sub(entry.encoded_len) + encoded_len;
                    entry.encoded_len = encoded_len;
                    // The shared copy that `search` and `list_recent` hand out takes the
                    // statistics as written (the atomics stay the live count). It is the same
                    // version: the writer does not write statistics of a memory its batch
                    // rewrote, and a later rewrite in the batch applies after this.
                    entry.memory = Arc::new(memory);
                }
            }
        }
    }

    /// Loads an archived record at open (it is not hot, only counted).
    pub fn count_archived(&mut self, memory: &Memory, encoded_len: u64) {
        let counts = self.counts.entry(memory.namespace.clone()).or_default();
        counts.archived += 1;
        counts.bytes += encoded_len;
        if let Some(at) = memory.expires_at {
            self.expiry.insert((at.as_millis(), memory.id));
        }
    }

    /// Loads the live records read at open, indexing them in one pass.
    pub fn load_live(&mut self, records: Vec<(Memory, DocTerms, u64)>) {
        let docs: Vec<NewDoc<'_>> = records
            .iter()
            .map(|(memory, terms, _)| NewDoc {
                id: memory.id,
                namespace: &memory.namespace,
                importance: memory.importance,
                recency: memory.updated_at.as_millis(),
                expires_at: memory.expires_at.map(|t| t.as_millis()),
                terms,
            })
            .collect();
        let docnos = self.index.insert_many(&docs);
        drop(docs);
        for ((memory, _, encoded_len), doc) in records.into_iter().zip(docnos) {
            if let Some(at) = memory.expires_at {
                self.expiry.insert((at.as_millis(), memory.id));
            }
            let access = (memory.access_count, memory.last_accessed_at.as_millis());
            self.add_live(memory, doc, encoded_len, access);
        }
    }

    fn upsert(&mut self, memory: Memory, terms: Option<DocTerms>, encoded_len: u64) {
        let id = memory.id;
        let previous = self.remove_live(id);
        if let Some(previous) = &previous
            && let Some(at) = previous.memory.expires_at
        {
            self.expiry.remove(&(at.as_millis(), id));
        }
        if let Some(at) = memory.expires_at {
            self.expiry.insert((at.as_millis(), id));
        }
        let Some(terms) = terms.filter(|_| !memory.archived) else {
            let counts = self.counts.entry(memory.namespace.clone()).or_default();
            counts.bytes += encoded_len;
            counts.archived += 1;
            return;
        };
        let doc = self.index.insert(
            id,
            &memory.namespace,
            memory.importance,
            memory.updated_at.as_millis(),
            memory.expires_at.map(|t| t.as_millis()),
            &terms,
        );
        // Access statistics carry over from the previous version of a live memory.
        let access = match &previous {
            Some(p) => (
                p.access_count.load(Ordering::Relaxed),
                p.last_accessed.load(Ordering::Relaxed),
            ),
            None => (memory.access_count, memory.last_accessed_at.as_millis()),
        };
        self.add_live(memory, doc, encoded_len, access);
    }

    /// Counts an indexed memory and puts it in the recency orders and the live map.
    fn add_live(&mut self, memory: Memory, doc: DocNo, encoded_len: u64, access: (u64, i64)) {
        let id = memory.id;
        // Look up before inserting: cloning the namespace per memory shows in the rebuild at open.
        if !self.counts.contains_key(&memory.namespace) {
            self.counts
                .insert(memory.namespace.clone(), NamespaceCounts::default());
        }
        if let Some(counts) = self.counts.get_mut(&memory.namespace) {
            counts.bytes += encoded_len;
            counts.live += 1;
            *counts.live_by_type.entry(memory.memory_type).or_default() += 1;
        }
        match self.recent.get_mut(&memory.namespace) {
            Some(set) => {
                set.insert(id);
            }
            None => {
                self.recent.insert(memory.namespace.clone(), [id].into());
            }
        }
        self.recent_all.insert(id);
        self.live.insert(
            id,
            LiveEntry {
                memory: Arc::new(memory),
                doc,
                encoded_len,
                access_count: AtomicU64::new(access.0),
                last_accessed: AtomicI64::new(access.1),
                access_dirty: AtomicBool::new(false),
            },
        );
    }

    /// Takes a memory out of the live set, the index and the counters.
    fn remove_live(&mut self, id: MemoryId) -> Option<LiveEntry> {
        let entry = self.live.remove(&id)?;
        self.index.remove(entry.doc);
        if let Some(renumbered) = self.index.renumber_if_sparse() {
            for live in self.live.values_mut() {
                live.doc = renumbered[live.doc as usize];
            }
        }
        let namespace = &entry.memory.namespace;
        if let Some(set) = self.recent.get_mut(namespace) {
            set.remove(&id);
            if set.is_empty() {
                self.recent.remove(namespace);
            }
        }
        self.recent_all.remove(&id);
        if let Some(counts) = self.counts.get_mut(namespace) {
            counts.live = counts.live.saturating_sub(1);
            counts.bytes = counts.bytes.saturating_sub(entry.encoded_len);
            if let Some(n) = counts.live_by_type.get_mut(&entry.memory.memory_type) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.live_by_type.remove(&entry.memory.memory_type);
                }
            }
            if counts.is_empty() {
                self.counts.remove(namespace);
            }
        }
        Some(entry)
    }

    /// Whether any memory's expiry is at or before `now`.
    pub fn any_expired(&self, now: Timestamp) -> bool {
        self.expiry
            .first()
            .is_some_and(|(at, _)| *at <= now.as_millis())
    }

    /// Ids whose expiry is at or before `now`.
    pub fn expired(&self, now: Timestamp) -> Vec<MemoryId> {
        self.expiry
            .range(..=(now.as_millis(), MemoryId::from_u128(u128::MAX)))
            .map(|(_, id)| *id)
            .collect()
    }
}
