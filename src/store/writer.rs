//! The single writer: group commit onto redb, then the hot tier, then the acknowledgements.
//!
//! One OS thread owns every write transaction (redb allows one writer at a time, and a commit
//! blocks on fsync, which must not stall an async runtime). It takes every command waiting in its
//! queue, up to [`MAX_BATCH`], applies them in one transaction, commits, applies the effects to the
//! hot tier, and only then answers the callers. A durable commit costs one fsync whether it carries
//! one memory or a thousand; that is what turns ~300 durable stores/s into tens of thousands.
//!
//! The same thread does housekeeping between batches: it purges expired memories, writes access
//! statistics that `get` accumulated in memory, and (in relaxed mode) makes the periodic durable
//! commit.
//!
//! After an I/O error (disk full, a file size limit), and after any failed commit but a poisoned
//! transaction's, redb refuses every later write transaction until the database is closed and
//! opened again. The writer does that itself before its next batch or housekeeping tick, and
//! rebuilds the hot tier from the reopened file, so the store recovers once there is room again
//! and what readers see is exactly what the file holds. A failed commit is indeterminate: its
//! callers get the error, but redb may have made the batch durable before failing, so after the
//! reopen it may be in the file (a caller that retries a `store` may then hold two copies).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use redb::{
    CommitError, Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, TransactionError, WriteTransaction,
};
use tokio::sync::oneshot;

use super::codec;
use super::error::StoreError;
use super::memory::{Memory, MemoryId, MemoryPatch, Timestamp, validate_memory};
use super::state::{Effect, State};
use super::text::{Dictionary, DocTerms, analyze_document};
use super::{DurabilityMode, StoreConfig, fields_of};

/// Memories, keyed by id.
pub(crate) const MEMORIES: TableDefinition<u128, &[u8]> = TableDefinition::new("memories");
/// Persisted cache entries (the permanent category), keyed by cache key.
pub(crate) const CACHE: TableDefinition<u128, &[u8]> = TableDefinition::new("context_cache");
/// Run and task states of the Orchestrator, keyed `RUN_ID` (the run) and `RUN_ID/TASK_ID`.
pub(crate) const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
/// File-level metadata, such as the schema version.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Records of `memories` that did not load at open, moved here as they were (key → raw bytes)
/// so one damaged record neither stops the store from opening nor is lost.
pub(crate) const DAMAGED_MEMORIES: TableDefinition<u128, &[u8]> =
    TableDefinition::new("damaged_memories");

/// Most commands applied in one transaction.
pub(crate) const MAX_BATCH: usize = 4096;

/// A request to the writer.
pub(crate) enum Command {
    Store {
        memory: Box<Memory>,
        encoded: Vec<u8>,
        terms: DocTerms,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Update {
        id: MemoryId,
        patch: Box<MemoryPatch>,
        reply: oneshot::Sender<Result<Memory, StoreError>>,
    },
    Archive {
        id: MemoryId,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    CachePut {
        key: u128,
        encoded: Vec<u8>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Removes persisted cache entries (absent keys are not an error).
    CacheRemove {
        keys: Vec<u128>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    RunRecords {
        records: Vec<(String, Vec<u8>)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Commit everything so far durably, writing pending access statistics too.
    Sync {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Shutdown,
}

/// The open database, shared by the writer and the readers. The writer replaces it after an I/O
/// error (see the module docs); `None` while a reopen has failed and is waiting to be retried.
/// Callers hold the lock only to begin a transaction: a transaction does not borrow the
/// database, and the reopen needs the old one dropped (it holds the file's lock).
pub(crate) struct SharedDb(RwLock<Option<OpenDb>>);

/// How the file is open: for the writer, or read-only ([`super::Store::open_read_only`]: no
/// writer, and nothing written to the file).
pub(crate) enum OpenDb {
    Writable(Database),
    ReadOnly(ReadOnlyDatabase),
}

/// Why a write transaction could not begin on a store opened read-only.
#[derive(Debug, thiserror::Error)]
#[error("the store is open read-only")]
struct OpenReadOnly;

/// Why a transaction could not begin while the writer has no database open.
#[derive(Debug, thiserror::Error)]
#[error("the file was closed after an I/O error and is not open again yet (the writer retries)")]
struct NotReopenedYet;

impl SharedDb {
    pub(crate) fn new(db: OpenDb) -> Self {
        SharedDb(RwLock::new(Some(db)))
    }

    /// Begins a read transaction.
    pub(crate) fn begin_read(&self, path: &Path) -> Result<ReadTransaction, StoreError> {
        let begun = match &*self.0.read() {
            Some(OpenDb::Writable(db)) => db.begin_read(),
            Some(OpenDb::ReadOnly(db)) => db.begin_read(),
            None => return Err(db_error(path, "begin read")(NotReopenedYet)),
        };
        begun.map_err(db_error(path, "begin read"))
    }

    /// Runs `f` on the database open for writing.
    pub(crate) fn with<T>(
        &self,
        path: &Path,
        operation: &'static str,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &*self.0.read() {
            Some(OpenDb::Writable(db)) => f(db),
            Some(OpenDb::ReadOnly(_)) => Err(db_error(path, operation)(OpenReadOnly)),
            None => Err(db_error(path, operation)(NotReopenedYet)),
        }
    }

    fn begin_write(&self, path: &Path) -> Result<WriteTransaction, StoreError> {
        self.with(path, "begin write", |db| {
            db.begin_write().map_err(db_error(path, "begin write"))
        })
    }
}

/// Whether a failed begin left redb refusing every later transaction (a storage error: an I/O
/// error now or before, or the allocator state a failed commit discarded), which only closing
/// and reopening the file clears.
fn begin_needs_reopen(error: &StoreError) -> bool {
    let StoreError::Database { source, .. } = error else {
        return false;
    };
    // Any storage error, not only a latched I/O error: after a failed commit redb refuses
    // every write transaction (its allocator state discarded) until the file is reopened.
    match source.downcast_ref::<TransactionError>() {
        Some(TransactionError::Storage(_)) => true,
        _ => source.is::<NotReopenedYet>(),
    }
}

/// What the writer shares with the store handles.
pub(crate) struct WriterContext {
    pub db: Arc<SharedDb>,
    pub state: Arc<RwLock<State>>,
    pub path: PathBuf,
    pub config: StoreConfig,
    pub access_queue: Arc<Mutex<Vec<MemoryId>>>,
    pub dictionary: Arc<Dictionary>,
    /// Set when the engine panicked under the writer: why it writes no more.
    pub failure: Arc<Mutex<Option<String>>>,
}

/// Wraps a database error with the file and the operation.
pub(crate) fn db_error<E>(path: &Path, operation: &'static str) -> impl FnOnce(E) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let path = path.to_path_buf();
    move |source| StoreError::Database {
        path,
        operation,
        source: Box::new(source),
    }
}

enum Pending {
    Unit(oneshot::Sender<Result<(), StoreError>>),
    Memory(oneshot::Sender<Result<Memory, StoreError>>, Box<Memory>),
}

/// The buffers of a batch, handed from one batch to the next so a busy writer does not regrow
/// them (and fault in fresh pages) for every batch.
#[derive(Default)]
struct Buffers {
    /// Versions written earlier in this batch, so later commands see them: the index of the
    /// memory's latest upsert in `effects` (not a second copy of it).
    written: HashMap<MemoryId, usize>,
    effects: Vec<Effect>,
    replies: Vec<Pending>,
}

/// One transaction's worth of work.
struct Batch<'a> {
    ctx: &'a WriterContext,
    txn: WriteTransaction,
    written: HashMap<MemoryId, usize>,
    effects: Vec<Effect>,
    replies: Vec<Pending>,
}

impl<'a> Batch<'a> {
    fn begin(
        ctx: &'a WriterContext,
        durable: bool,
        buffers: &mut Buffers,
    ) -> Result<Self, StoreError> {
        let mut txn = ctx.db.begin_write(&ctx.path)?;
        let durability = if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(durability)
            .map_err(db_error(&ctx.path, "set durability"))?;
        Ok(Batch {
            ctx,
            txn,
            written: std::mem::take(&mut buffers.written),
            effects: std::mem::take(&mut buffers.effects),
            replies: std::mem::take(&mut buffers.replies),
        })
    }

    /// Applies the commands in order. A run of `Store` commands (the bulk of a busy batch)
    /// shares one open of the memories table rather than opening it per memory: with the
    /// reused buffers, 11% less writer CPU per task in the runtime benchmark (5 interleaved
    /// runs of each build, 10 × 10k tasks).
    fn execute_all(&mut self, commands: &mut Vec<Command>, now: Timestamp) {
        let is_store = |c: &Command| matches!(c, Command::Store { .. });
        let mut commands = commands.drain(..).peekable();
        while let Some(command) = commands.next() {
            if is_store(&command) {
                let run = std::iter::once(command)
                    .chain(std::iter::from_fn(|| commands.next_if(is_store)));
                self.store_memories(run);
            } else {
                self.execute(command, now);
            }
        }
    }

    /// Inserts new memories through one open of the table (non-`Store` commands are skipped).
    fn store_memories(&mut self, stores: impl Iterator<Item = Command>) {
        let mut table = match self.txn.open_table(MEMORIES) {
            Ok(table) => table,
            Err(e) => {
                let error = SharedError::new(&self.ctx.path, "open memories table", e);
                for command in stores {
                    fail_command(command, &error);
                }
                return;
            }
        };
        for command in stores {
            let Command::Store {
                memory,
                encoded,
                terms,
                reply,
            } = command
            else {
                continue;
            };
            match table.insert(memory.id.as_u128(), encoded.as_slice()) {
                Ok(_) => {
                    record_upsert(
                        &mut self.written,
                        &mut self.effects,
                        *memory,
                        Some(terms),
                        &encoded,
                    );
                    self.replies.push(Pending::Unit(reply));
                }
                Err(e) => send(reply, Err(db_error(&self.ctx.path, "insert memory")(e))),
            }
        }
    }

    fn put_memory(
        &mut self,
        memory: Memory,
        encoded: &[u8],
        terms: Option<DocTerms>,
    ) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(MEMORIES)
            .map_err(db_error(&self.ctx.path, "open memories table"))?;
        table
            .insert(memory.id.as_u128(), encoded)
            .map_err(db_error(&self.ctx.path, "insert memory"))?;
        record_upsert(&mut self.written, &mut self.effects, memory, terms, encoded);
        Ok(())
    }

    /// The current version of a memory: written in this batch, hot, or (archived) in the table.
    fn current(&self, id: MemoryId) -> Result<Option<Memory>, StoreError> {
        if let Some(&at) = self.written.get(&id)
            && let Some(Effect::Upsert { memory, .. }) = self.effects.get(at)
        {
            return Ok(Some(memory.clone()));
        }
        if let Some(entry) = self.ctx.state.read().live.get(&id) {
            return Ok(Some(entry.snapshot()));
        }
        let table = self
            .txn
            .open_table(MEMORIES)
            .map_err(db_error(&self.ctx.path, "open memories table"))?;
        let found = table
            .get(id.as_u128())
            .map_err(db_error(&self.ctx.path, "read memory"))?;
        found
            .map(|bytes| codec::decode_memory(bytes.value()))
            .transpose()
    }

    /// Applies one command; its caller is answered now on failure, after the commit on success.
    fn execute(&mut self, command: Command, now: Timestamp) {
        match command {
            store @ Command::Store { .. } => self.store_memories(std::iter::once(store)),
            Command::Update { id, patch, reply } => match self.update(id, &patch, now) {
                Ok(memory) => self.replies.push(Pending::Memory(reply, Box::new(memory))),
                Err(e) => send(reply, Err(e)),
            },
            Command::Archive { id, reply } => match self.archive(id, now) {
                Ok(()) => self.replies.push(Pending::Unit(reply)),
                Err(e) => send(reply, Err(e)),
            },
            Command::CachePut {
                key,
                encoded,
                reply,
            } => match self.put_cache_entry(key, &encoded) {
                Ok(()) => self.replies.push(Pending::Unit(reply)),
                Err(e) => send(reply, Err(e)),
            },
            Command::CacheRemove { keys, reply } => match self.remove_cache_entries(&keys) {
                Ok(()) => self.replies.push(Pending::Unit(reply)),
                Err(e) => send(reply, Err(e)),
            },
            Command::RunRecords { records, reply } => match self.put_run_records(&records) {
                Ok(()) => self.replies.push(Pending::Unit(reply)),
                Err(e) => send(reply, Err(e)),
            },
            Command::Sync { reply } => match self.flush_access_statistics(now) {
                Ok(()) => self.replies.push(Pending::Unit(reply)),
                Err(e) => send(reply, Err(e)),
            },
            Command::Shutdown => {}
        }
    }

    fn update(
        &mut self,
        id: MemoryId,
        patch: &MemoryPatch,
        now: Timestamp,
    ) -> Result<Memory, StoreError> {
        let mut memory = self
            .current(id)?
            .filter(|m| !m.is_expired(now))
            .ok_or(StoreError::NotFound(id))?;
        if memory.archived {
            return Err(StoreError::Archived(id));
        }
        // A memory given an expiry already past would vanish the moment it is written.
        if let Some(Some(at)) = patch.expires_at
            && at.as_millis() <= now.as_millis()
        {
            return Err(StoreError::InvalidExpiry {
                detail: format!("{at} is not in the future (now is {now})"),
            });
        }
        patch.apply(&mut memory, now);
        validate_memory(&memory, self.ctx.config.max_content_bytes)?;
        let encoded = codec::encode_memory(&memory)?;
        let terms = analyze_document(&fields_of(&memory), &self.ctx.dictionary);
        self.put_memory(memory.clone(), &encoded, Some(terms))?;
        Ok(memory)
    }

    fn archive(&mut self, id: MemoryId, now: Timestamp) -> Result<(), StoreError> {
        let mut memory = self
            .current(id)?
            .filter(|m| !m.is_expired(now))
            .ok_or(StoreError::NotFound(id))?;
        if memory.archived {
            return Ok(());
        }
        memory.archived = true;
        memory.updated_at = now;
        let encoded = codec::encode_memory(&memory)?;
        self.put_memory(memory, &encoded, None)
    }

    fn put_cache_entry(&mut self, key: u128, encoded: &[u8]) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(CACHE)
            .map_err(db_error(&self.ctx.path, "open cache table"))?;
        table
            .insert(key, encoded)
            .map_err(db_error(&self.ctx.path, "insert cache entry"))?;
        Ok(())
    }

    fn remove_cache_entries(&mut self, keys: &[u128]) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(CACHE)
            .map_err(db_error(&self.ctx.path, "open cache table"))?;
        for &key in keys {
            table
                .remove(key)
                .map_err(db_error(&self.ctx.path, "remove cache entry"))?;
        }
        Ok(())
    }

    fn put_run_records(&mut self, records: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(RUNS)
            .map_err(db_error(&self.ctx.path, "open runs table"))?;
        for (key, value) in records {
            table
                .insert(key.as_str(), value.as_slice())
                .map_err(db_error(&self.ctx.path, "insert run record"))?;
        }
        Ok(())
    }

    /// Deletes memories whose expiry has passed.
    fn purge_expired(&mut self, now: Timestamp) -> Result<(), StoreError> {
        let expired = self.ctx.state.read().expired(now);
        if expired.is_empty() {
            return Ok(());
        }
        let mut table = self
            .txn
            .open_table(MEMORIES)
            .map_err(db_error(&self.ctx.path, "open memories table"))?;
        for id in expired {
            let Some(bytes) = table
                .get(id.as_u128())
                .map_err(db_error(&self.ctx.path, "read memory"))?
                .map(|b| b.value().to_vec())
            else {
                continue;
            };
            // A record damaged on disk since the store opened is judged by the hot tier's copy:
            // failing here would stop every later purge (and the access statistics after it).
            let memory = match codec::decode_memory(&bytes) {
                Ok(memory) => memory,
                Err(e) => {
                    let held = self.ctx.state.read().live.get(&id).map(|e| e.snapshot());
                    let Some(held) = held else { continue };
                    tracing::warn!(
                        "store: expired memory {id} is damaged on disk ({e}); purging it"
                    );
                    held
                }
            };
            let Some(expires_at) = memory.expires_at.filter(|_| memory.is_expired(now)) else {
                continue;
            };
            table
                .remove(id.as_u128())
                .map_err(db_error(&self.ctx.path, "delete expired memory"))?;
            self.effects.push(Effect::Purged {
                id,
                namespace: memory.namespace,
                archived: memory.archived,
                encoded_len: bytes.len() as u64,
                expires_at: expires_at.as_millis(),
            });
        }
        Ok(())
    }

    /// Writes the access statistics `get` gathered since the last flush.
    fn flush_access_statistics(&mut self, now: Timestamp) -> Result<(), StoreError> {
        let ids = std::mem::take(&mut *self.ctx.access_queue.lock());
        if ids.is_empty() {
            return Ok(());
        }
        let snapshots: Vec<Memory> = {
            let state = self.ctx.state.read();
            // A memory this batch already rewrote is left alone: the hot tier still holds its
            // previous version, and writing that would undo the update in the file.
            ids.iter()
                .filter(|id| !self.written.contains_key(id))
                .filter_map(|id| state.live.get(id))
                .filter(|e| {
                    e.access_dirty
                        .swap(false, std::sync::atomic::Ordering::Relaxed)
                })
                .map(|e| e.snapshot())
                // An expired one is (or is about to be) purged: writing it back would leave a
                // record the hot tier no longer knows (purged earlier in this very batch).
                .filter(|m| !m.is_expired(now))
                .collect()
        };
        let mut table = self
            .txn
            .open_table(MEMORIES)
            .map_err(db_error(&self.ctx.path, "open memories table"))?;
        for memory in snapshots {
            let encoded = codec::encode_memory(&memory)?;
            table
                .insert(memory.id.as_u128(), encoded.as_slice())
                .map_err(db_error(&self.ctx.path, "write access statistics"))?;
            self.effects.push(Effect::AccessWritten {
                memory,
                encoded_len: encoded.len() as u64,
            });
        }
        Ok(())
    }

    /// Commits, applies the effects to the hot tier, then answers every caller; hands the
    /// emptied buffers back for the next batch. Returns whether it committed, and whether the
    /// file must be reopened before the next write (after any failed commit but a poisoned
    /// transaction's).
    fn commit(self, buffers: &mut Buffers) -> (bool, bool) {
        let Batch {
            ctx,
            txn,
            mut written,
            mut effects,
            mut replies,
        } = self;
        // Dropped before `replies` if the engine panics in the commit (see `write_batch`).
        let _failure_noted = NoteFailureOnPanic(&ctx.failure);
        let mut needs_reopen = false;
        let mut committed = true;
        #[cfg(test)]
        tests::panic_if_asked(&ctx.path);
        match txn.commit() {
            Ok(()) => {
                if !effects.is_empty() {
                    let mut state = ctx.state.write();
                    for effect in effects.drain(..) {
                        state.apply(effect);
                    }
                }
                for reply in replies.drain(..) {
                    match reply {
                        Pending::Unit(tx) => send(tx, Ok(())),
                        Pending::Memory(tx, memory) => send(tx, Ok(*memory)),
                    }
                }
            }
            Err(e) => {
                tracing::error!(path = %ctx.path.display(), error = %e, "store commit failed");
                // Not acknowledged, so none of it reaches the hot tier (the reopen rebuilds it
                // from the file, which may or may not hold the batch).
                effects.clear();
                committed = false;
                // redb refuses later writes after any failed commit but a poisoned
                // transaction's (rolled back) until the file is reopened.
                needs_reopen = !matches!(&e, CommitError::TransactionPoisoned);
                let error = SharedError::new(&ctx.path, "commit", e);
                for reply in replies.drain(..) {
                    match reply {
                        Pending::Unit(tx) => send(tx, Err(error.get())),
                        Pending::Memory(tx, _) => send(tx, Err(error.get())),
                    }
                }
            }
        }
        written.clear();
        *buffers = Buffers {
            written,
            effects,
            replies,
        };
        (committed, needs_reopen)
    }
}

/// Records a memory written in this batch: its effect on the hot tier, and where later
/// commands of the batch find it.
fn record_upsert(
    written: &mut HashMap<MemoryId, usize>,
    effects: &mut Vec<Effect>,
    memory: Memory,
    terms: Option<DocTerms>,
    encoded: &[u8],
) {
    written.insert(memory.id, effects.len());
    effects.push(Effect::Upsert {
        memory,
        terms,
        encoded_len: encoded.len() as u64,
    });
}

fn send<T>(reply: oneshot::Sender<Result<T, StoreError>>, value: Result<T, StoreError>) {
    // A caller that stopped waiting is not an error: the write happened (or failed) regardless.
    // A failure nobody hears of (a queued write, such as an outcome's memory, has no caller
    // waiting) is logged, so it is not lost without a trace.
    if let Err(Err(error)) = reply.send(value) {
        tracing::error!(%error, "store write failed (no caller was waiting for it)");
    }
}

/// One error for many callers. [`StoreError`] is not `Clone` (its source is boxed), so the
/// cause is shared and each caller's error keeps it, with its own sources, in its chain.
struct SharedError {
    path: PathBuf,
    operation: &'static str,
    cause: Arc<dyn std::error::Error + Send + Sync + 'static>,
}

/// A shared cause, shown as itself (Display and source are the cause's).
#[derive(Debug)]
struct SharedCause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl std::fmt::Display for SharedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl SharedError {
    fn new<E>(path: &Path, operation: &'static str, cause: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        SharedError {
            path: path.to_path_buf(),
            operation,
            cause: Arc::new(cause),
        }
    }

    /// Shares a store error: a database error keeps its operation and cause; any other is the
    /// cause of a failed `operation`.
    fn from_store(path: &Path, error: StoreError, operation: &'static str) -> Self {
        match error {
            StoreError::Database {
                path,
                operation,
                source,
            } => SharedError {
                path,
                operation,
                cause: Arc::from(source),
            },
            other => SharedError {
                path: path.to_path_buf(),
                operation,
                cause: Arc::new(other),
            },
        }
    }

    fn get(&self) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            operation: self.operation,
            source: Box::new(SharedCause(self.cause.clone())),
        }
    }
}

fn fail_command(command: Command, error: &SharedError) {
    answer_with_error(command, || error.get());
}

/// Answers `command` with the error `error` makes.
fn answer_with_error(command: Command, error: impl Fn() -> StoreError) {
    match command {
        Command::Store { reply, .. }
        | Command::Archive { reply, .. }
        | Command::CachePut { reply, .. }
        | Command::CacheRemove { reply, .. }
        | Command::RunRecords { reply, .. }
        | Command::Sync { reply } => send(reply, Err(error())),
        Command::Update { reply, .. } => send(reply, Err(error())),
        Command::Shutdown => {}
    }
}

/// Closes the database and opens the file again, then rebuilds the hot tier from it: after an
/// I/O error the file is what recovery made of it (a failed commit may or may not be in it, and
/// in relaxed mode unsynced commits may be gone), and the hot tier must match it.
fn reopen(ctx: &WriterContext) -> Result<(), StoreError> {
    {
        let mut slot = ctx.db.0.write();
        // The writer's store is never a read-only one.
        if let Some(OpenDb::Writable(old)) = slot.take()
            && let Err(e) = old.close()
        {
            // Expected after an I/O error; the open below recovers the file.
            tracing::debug!(error = %e, "store: closing after an I/O error");
        }
        *slot = Some(OpenDb::Writable(super::open_database(&ctx.path)?));
    }
    let state = ctx.db.with(&ctx.path, "reopen", |db| {
        super::guarded_read(&ctx.path, || {
            super::Store::load_state(db, &ctx.path, &ctx.config, &ctx.dictionary)
        })
    })?;
    // Reads counted against the old hot tier are lost, as in a crash (see the module docs).
    ctx.access_queue.lock().clear();
    *ctx.state.write() = state;
    tracing::info!(path = %ctx.path.display(), "store reopened after an I/O error");
    Ok(())
}

/// The writer thread's loop. Returns when told to shut down or when every store handle is gone.
pub(crate) fn run(ctx: WriterContext, commands: Receiver<Command>) {
    let tick = ctx.config.housekeeping_interval;
    let relaxed_interval = match ctx.config.durability {
        DurabilityMode::Durable => None,
        DurabilityMode::Relaxed { sync_interval } => Some(sync_interval),
    };
    let mut last_housekeeping = Instant::now();
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut shutting_down = false;
    // Set after an I/O error; cleared once the file is reopened (see `reopen`).
    let mut needs_reopen = false;
    // Kept across batches, like the batch's own buffers (see `Buffers`).
    let mut batch: Vec<Command> = Vec::new();
    let mut buffers = Buffers::default();
    // Set once the engine panicked during a write (redb panics on some damaged pages instead
    // of returning an error): every later write is refused with it, and the thread lives on to
    // shut down in order, since a crash of this thread left the file needing a repair.
    let mut broken: Option<String> = None;
    while !shutting_down {
        // In relaxed mode, unsynced commits wake the writer when their sync is due, not at the
        // next housekeeping tick (which made the loss window the tick, 1 s by default).
        // A file waiting to be reopened is retried once a tick, not at once: a failed sync
        // stays due, and with the reopen failing too the loop would spin.
        let wait = match relaxed_interval {
            Some(interval) if unsynced && !needs_reopen => {
                tick.min(interval.saturating_sub(last_sync.elapsed()))
            }
            _ => tick,
        };
        match commands.recv_timeout(wait) {
            Ok(c) => batch.push(c),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => shutting_down = true,
        }
        while batch.len() < MAX_BATCH {
            match commands.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        if batch.iter().any(|c| matches!(c, Command::Shutdown)) {
            shutting_down = true;
        }
        if let Some(detail) = &broken {
            let corrupt = || StoreError::Corrupt {
                path: ctx.path.clone(),
                detail: detail.clone(),
            };
            for command in batch.drain(..) {
                answer_with_error(command, corrupt);
            }
            continue;
        }
        let housekeeping = shutting_down || last_housekeeping.elapsed() >= tick;
        let wants_sync = batch.iter().any(|c| matches!(c, Command::Sync { .. }));
        let sync_due =
            relaxed_interval.is_some_and(|i| unsynced && !needs_reopen && last_sync.elapsed() >= i);
        if batch.is_empty() && !housekeeping && !sync_due {
            continue;
        }
        if needs_reopen {
            if housekeeping {
                last_housekeeping = Instant::now();
            }
            match reopen(&ctx) {
                Ok(()) => {
                    needs_reopen = false;
                    // The rebuilt hot tier is what the file holds: nothing is unsynced.
                    unsynced = false;
                }
                Err(e) => {
                    tracing::error!(path = %ctx.path.display(), error = %e, "store reopen failed; will retry");
                    let error = SharedError::from_store(&ctx.path, e, "reopen after an I/O error");
                    for command in batch.drain(..) {
                        fail_command(command, &error);
                    }
                    continue;
                }
            }
        }
        let now = Timestamp::now();
        // An idle store does not commit: an empty housekeeping commit was an fsync every tick.
        let chores = housekeeping
            && (ctx.state.read().any_expired(now) || !ctx.access_queue.lock().is_empty());
        // Nor does a store closed with nothing to write (a read-only command's): the last
        // commit only makes unsynced commits durable.
        let nothing_to_write = batch.iter().all(|c| matches!(c, Command::Shutdown));
        let closing_unsynced = shutting_down && unsynced;
        if nothing_to_write && !chores && !sync_due && !closing_unsynced {
            last_housekeeping = Instant::now();
            batch.clear();
            continue;
        }
        let durable = relaxed_interval.is_none() || wants_sync || sync_due || shutting_down;
        let written = super::catching_engine_panics(|| {
            write_batch(
                &ctx,
                &mut batch,
                &mut buffers,
                durable,
                housekeeping.then_some(&mut last_housekeeping),
                chores,
                now,
            )
        });
        match written {
            Ok(Written::Committed { committed, reopen }) => {
                needs_reopen = reopen;
                // A failed sync is no sync: the writes before it stay due (the reopen, which
                // rebuilds the hot tier from the file, clears them).
                if committed && durable {
                    last_sync = Instant::now();
                    unsynced = false;
                } else if committed {
                    unsynced = true;
                } else if durable {
                    // Tried again an interval later, not at once (a commit that keeps failing
                    // without a reopen would spin).
                    last_sync = Instant::now();
                }
            }
            Ok(Written::NotBegun { reopen, reopened }) => {
                needs_reopen |= reopen;
                if reopened {
                    unsynced = false;
                }
            }
            Err(panic) => {
                let detail = match super::engine_failed(&ctx.path, &*panic) {
                    StoreError::Corrupt { detail, .. } => format!(
                        "{detail} (while writing; the store takes no more writes until it is \
                         opened again)"
                    ),
                    other => other.to_string(),
                };
                tracing::error!(path = %ctx.path.display(), "store writer: {detail}");
                *ctx.failure.lock() = Some(detail.clone());
                // Those the batch had not taken yet; the callers it had taken find the failure
                // when their answer does not come.
                for command in batch.drain(..) {
                    answer_with_error(command, || StoreError::Corrupt {
                        path: ctx.path.clone(),
                        detail: detail.clone(),
                    });
                }
                broken = Some(detail);
            }
        }
    }
}

/// Records that the engine failed, while a panic unwinds past it (the panic's own message
/// replaces this once it is caught).
struct NoteFailureOnPanic<'a>(&'a Mutex<Option<String>>);

impl Drop for NoteFailureOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            *self.0.lock() = Some(
                "the database engine failed on damaged data while writing; the store takes no \
                 more writes until it is opened again"
                    .to_owned(),
            );
        }
    }
}

/// What [`write_batch`] did.
enum Written {
    /// The batch's commit was tried (`committed` whether it succeeded; a failure is answered
    /// to its callers); `reopen` when the file must be reopened before the next.
    Committed { committed: bool, reopen: bool },
    /// No write could begin: the batch's callers were answered with the error.
    NotBegun { reopen: bool, reopened: bool },
}

/// Begins a write, runs the chores and the batch's commands, and commits.
fn write_batch(
    ctx: &WriterContext,
    batch: &mut Vec<Command>,
    buffers: &mut Buffers,
    durable: bool,
    last_housekeeping: Option<&mut Instant>,
    chores: bool,
    now: Timestamp,
) -> Written {
    let (mut reopened, mut reopen_failed) = (false, false);
    let begun = match Batch::begin(ctx, durable, buffers) {
        // Latched by an error the writer did not see (a read's): reopen and try once more.
        Err(e) if begin_needs_reopen(&e) => {
            tracing::warn!(path = %ctx.path.display(), error = %e, "store: reopening after an I/O error");
            match reopen(ctx) {
                Ok(()) => {
                    reopened = true;
                    Batch::begin(ctx, durable, buffers)
                }
                Err(e) => {
                    // Retried at the next batch or tick.
                    reopen_failed = true;
                    Err(e)
                }
            }
        }
        begun => begun,
    };
    let mut work = match begun {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(path = %ctx.path.display(), error = %e, "store write failed");
            let reopen = reopen_failed || begin_needs_reopen(&e);
            let error = SharedError::from_store(&ctx.path, e, "begin write");
            for command in batch.drain(..) {
                fail_command(command, &error);
            }
            return Written::NotBegun { reopen, reopened };
        }
    };
    // Declared after `work`, so dropped before it when the engine panics: the callers whose
    // answers `work` holds find the failure recorded when those answers are dropped.
    let _failure_noted = NoteFailureOnPanic(&ctx.failure);
    if let Some(last) = last_housekeeping {
        *last = Instant::now();
    }
    if chores {
        // Each chore runs whatever the other did.
        for chore in [work.purge_expired(now), work.flush_access_statistics(now)] {
            if let Err(e) = chore {
                tracing::warn!(error = %e, "store housekeeping failed; will retry");
            }
        }
    }
    work.execute_all(batch, now);
    let (committed, reopen) = work.commit(buffers);
    Written::Committed { committed, reopen }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::{Path, PathBuf};

    use parking_lot::Mutex;

    use crate::store::{Namespace, NewMemory, Store, StoreConfig, StoreError};

    /// The store whose next commit panics, as redb does on some damaged pages (a damaged file
    /// that reaches the writer depends on the build's layout and checks, so the test injects it).
    static PANIC_AT_COMMIT: Mutex<Option<PathBuf>> = Mutex::new(None);

    pub(super) fn panic_if_asked(path: &Path) {
        let mut asked = PANIC_AT_COMMIT.lock();
        if asked.as_deref() == Some(path) {
            *asked = None;
            drop(asked);
            panic!("internal error: entered unreachable code");
        }
    }

    /// After a failed commit redb refuses writes with a storage error that is not an I/O
    /// error (its allocator state was discarded); the writer reopens the file for it too, or
    /// every later write failed until the process restarted.
    #[test]
    fn a_begin_refused_for_any_storage_error_reopens_the_file() {
        let path = Path::new("store.redb");
        let refused = |storage: redb::StorageError| {
            super::db_error(path, "begin write")(redb::TransactionError::Storage(storage))
        };
        let discarded = redb::StorageError::Corrupted(
            "Allocator state was discarded by a failed integrity check or commit; reopen the \
             database to repair it"
                .to_owned(),
        );
        assert!(super::begin_needs_reopen(&refused(discarded)));
        assert!(super::begin_needs_reopen(&refused(
            redb::StorageError::PreviousIo
        )));
        let other = StoreError::InvalidConfig("not the engine's".to_owned());
        assert!(!super::begin_needs_reopen(&other));
    }

    #[tokio::test]
    async fn an_engine_panic_in_a_write_refuses_writes_naming_the_file_and_reads_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let kept = store
            .store(NewMemory::new(Namespace::Global, "written before"))
            .await
            .unwrap();
        *PANIC_AT_COMMIT.lock() = Some(path.clone());
        for attempt in ["the write that meets it", "a later write"] {
            let error = store
                .store(NewMemory::new(Namespace::Global, attempt))
                .await
                .unwrap_err();
            match &error {
                StoreError::Corrupt {
                    path: named,
                    detail,
                } => {
                    assert_eq!(named, &path);
                    assert!(detail.contains("while writing"), "{detail}");
                }
                other => panic!("{attempt}: {other:?}"),
            }
        }
        assert_eq!(store.get(kept).unwrap().content, "written before");
        assert_eq!(store.list_recent(None, 10).len(), 1);
        // It closes in order, and the file opens again with what was committed.
        drop(store);
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        assert_eq!(store.list_recent(None, 10).len(), 1);
        store
            .store(NewMemory::new(Namespace::Global, "after reopening"))
            .await
            .unwrap();
    }
}
