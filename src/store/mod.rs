//! The context store the agents share: memories, their search index, the context cache.
//!
//! Two tiers. The durable tier is a redb file written by one writer thread with group commit
//! (`writer.rs`); the hot tier (`state.rs`) holds every live memory, the BM25 index (`index.rs`), a
//! recency order per namespace and the counters behind [`Store::stats`]. The hot tier is rebuilt from
//! the file at open and changed only after a commit, so what a reader sees is always durable (or,
//! in relaxed mode, committed) and the index never disagrees with the table.
//!
//! Reads (`get`, `search`, `list_recent`, `stats`) are synchronous and never touch the disk for
//! live memories; writes are `async` and resolve once committed. `search` and `list_recent`
//! hand out the hot tier's own copy of each memory (an `Arc`, never changed in place: a write
//! replaces it), so a read copies no text; `get` returns a copy.
//!
//! Durability: by default every acknowledged write is fsync'd ([`DurabilityMode::Durable`]).
//! [`DurabilityMode::Relaxed`] commits without fsync and makes a durable commit every
//! `sync_interval`: a crash loses at most the writes acknowledged in that window.
//!
//! Access statistics (`access_count`, `last_accessed_at`) are counted in memory by `get` and written
//! by the writer at each housekeeping tick (default every second) and on [`Store::sync`]; a crash can
//! lose the counts of that last tick. `get` returns the current counts; the shared copies that
//! `search` and `list_recent` return carry those last written.
//!
//! Expired memories vanish from reads at their expiry time and are deleted at the next tick; until
//! then `stats` still counts them (a store opened after they expired leaves them out of its counts
//! at once).
//!
//! A record of `memories` that does not load at open because it is damaged is moved, as it was,
//! to the `damaged_memories` table with a warning naming it, and the store opens with the rest;
//! [`StoreStats::damaged`] counts them. One that reads as written by a newer tetrarch is left in
//! place and the store is refused, naming it (as a newer schema is): it is that tetrarch's.
//!
//! After an I/O error (a full disk), or any failed commit but a poisoned transaction's, the
//! writer closes and reopens the file and rebuilds the hot tier from it, so writes work again
//! once there is room, without a restart (see `writer.rs`).
//!
//! [`Store::open_read_only`] opens a store for reading without writing the file (redb's
//! read-only handle, shared by any number of readers, no writer thread); the CLI's commands that
//! only read use it. A file that needs a write first (a repair after a crash, tables a newer
//! build added, damaged records to set aside) is opened writable instead, as [`Store::open`] does.
//! A writable open checks the file's pages first and refuses a damaged one (`create_checked`):
//! a write must never cost what a reader could still read.
//! redb's multi-process modes would also let readers open a store while a run writes it, but
//! they cost a second fsync per commit and forbid relaxed durability, so the writer keeps the
//! file to itself.

mod cache;
mod codec;
mod error;
mod index;
mod memory;
mod state;
pub(crate) mod text;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use redb::{
    Database, DatabaseError, MultimapTableHandle, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, StorageError, TableError, TableHandle,
};
use serde::Serialize;
use tokio::sync::oneshot;

pub use cache::{
    CacheCategory, CacheClearFilter, CacheCleared, CacheError, CacheKey, CacheStats, CacheTtls,
    ContextCache, PersistedCacheUsage,
};
pub use error::StoreError;
pub use memory::{Memory, MemoryId, MemoryPatch, MemoryType, Namespace, NewMemory, Timestamp};
pub(crate) use text::fold_into as fold_word;

use memory::{validate_memory, validate_ttl};
use state::State;
use text::{Dictionary, DocTerms, Fields, analyze_document, analyze_query_matching};
use writer::{
    CACHE, Command, DAMAGED_MEMORIES, MEMORIES, META, OpenDb, RUNS, SharedDb, WriterContext,
    db_error,
};

/// The schema version this build writes; files with a newer one are refused.
const SCHEMA_VERSION: u32 = 1;

/// How writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurabilityMode {
    /// Every write is fsync'd before it is acknowledged (the default).
    Durable,
    /// Writes are committed without fsync and made durable every `sync_interval`; a crash loses at
    /// most the writes acknowledged within that interval.
    Relaxed {
        /// The longest time an acknowledged write may stay unsynced.
        sync_interval: Duration,
    },
}

/// How a store behaves.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// When writes become durable.
    pub durability: DurabilityMode,
    /// The largest `content` accepted, in bytes (default 1 MiB).
    pub max_content_bytes: usize,
    /// How often expired memories are purged and access statistics written (default 1 s).
    pub housekeeping_interval: Duration,
    /// Show a progress bar on stderr while rebuilding the index of a large store.
    pub show_progress: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            durability: DurabilityMode::Durable,
            max_content_bytes: 1024 * 1024,
            housekeeping_interval: Duration::from_secs(1),
            show_progress: false,
        }
    }
}

impl StoreConfig {
    /// Refuses settings the writer cannot run with: a zero housekeeping or sync interval (the
    /// writer would spin, committing without pause) or a zero content limit (nothing fits).
    fn check(&self) -> Result<(), StoreError> {
        let bad = |what: &str| {
            Err(StoreError::InvalidConfig(format!(
                "{what} must be above zero"
            )))
        };
        if self.housekeeping_interval.is_zero() {
            return bad("housekeeping_interval");
        }
        if let DurabilityMode::Relaxed { sync_interval } = self.durability
            && sync_interval.is_zero()
        {
            return bad("the relaxed sync_interval");
        }
        if self.max_content_bytes == 0 {
            return bad("max_content_bytes");
        }
        Ok(())
    }
}

/// Filters and limits for [`Store::search`].
#[derive(Clone, Debug)]
pub struct SearchOptions {
    /// Only this namespace; all namespaces when `None`.
    pub namespace: Option<Namespace>,
    /// Only memories carrying every one of these tags, compared without case (`HDR` finds a
    /// memory tagged `hdr`: tags come from people and tools that spell them either way).
    pub tags: Vec<String>,
    /// Only memories carrying none of these tags (compared as `tags` is). Left out inside the
    /// ranking, so they take no place in `limit`: filtering the hits afterwards would leave
    /// fewer than asked for, or none, where many such memories match.
    pub exclude_tags: Vec<String>,
    /// Only memories at least this important.
    pub min_importance: Option<u8>,
    /// At most this many results (default 10).
    pub limit: usize,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            namespace: None,
            tags: Vec::new(),
            exclude_tags: Vec::new(),
            min_importance: None,
            limit: 10,
        }
    }
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SearchHit {
    /// The BM25F relevance score.
    pub score: f64,
    /// How many distinct query terms the memory contains; results are ordered by this first.
    pub matched_terms: u32,
    /// The memory, shared with the store rather than copied: copying ten memories out was a
    /// fifth of a search's time. Its access statistics (`access_count`, `last_accessed_at`)
    /// are those last written to the file, which the writer does every
    /// [`StoreConfig::housekeeping_interval`] and on [`Store::sync`]; [`Store::get`] returns
    /// a copy with the current ones (and counts as an access, which a search does not).
    pub memory: Arc<Memory>,
}

/// Counts for one namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NamespaceStats {
    /// Live (not archived) memories.
    pub live: u64,
    /// Archived memories.
    pub archived: u64,
    /// Bytes of stored records, live and archived.
    pub bytes: u64,
    /// Live memories by type.
    pub by_type: BTreeMap<MemoryType, u64>,
}

/// Counts for a store or one namespace of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StoreStats {
    /// Live memories.
    pub live: u64,
    /// Archived memories.
    pub archived: u64,
    /// Bytes of stored records.
    pub bytes: u64,
    /// Live memories by type.
    pub by_type: BTreeMap<MemoryType, u64>,
    /// The same counts per namespace.
    pub namespaces: BTreeMap<String, NamespaceStats>,
    /// Records that did not load and were set aside in the `damaged_memories` table, kept as
    /// they were; counted for the whole store (their namespace is unknown), so 0 in the stats of
    /// one namespace.
    pub damaged: u64,
}

/// A handle to an open store. Cheap to clone; all clones share one database and one writer.
///
/// Dropping the last clone closes the store: the thread that drops it waits while the writer
/// commits what is queued, fsync included (usually a few milliseconds), so an async program
/// should drop its last clone outside a busy runtime thread, or call [`Store::sync`] first so
/// nothing is left to write.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    config: StoreConfig,
    db: Arc<SharedDb>,
    state: Arc<RwLock<State>>,
    commands: mpsc::Sender<Command>,
    access_queue: Arc<Mutex<Vec<MemoryId>>>,
    dictionary: Arc<Dictionary>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Opened by [`Store::open_read_only`]: no writer; every write is [`StoreError::ReadOnly`].
    read_only: bool,
    /// Why the writer stopped writing, once the database engine failed under it (see
    /// [`writer::run`]).
    writer_failure: Arc<Mutex<Option<String>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer finishes its queue, makes a last durable commit, and exits.
        let _ = self.commands.send(Command::Shutdown);
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// Whether a memory's `tag` is the `wanted` one of a search (given in lower case): compared
/// without case, without allocating (the filter runs for each hit good enough to enter the
/// results).
fn same_tag(tag: &str, wanted: &str) -> bool {
    folded(tag).eq(wanted.chars())
}

/// A tag (or keyword) folded as the tag filters of [`SearchQuery`] compare it: lower-cased per
/// character, with `ß`/`ẞ` as `ss` and `ς` as `σ` (`Straße` and `STRASSE` are one tag).
pub fn folded_tag(tag: &str) -> String {
    folded(tag).collect()
}

/// A tag folded per character, as the text analysis folds words: lower-cased, with the full folds
/// of `ß`/`ẞ` (`ss`) and `ς` (`σ`), so `Straße` and `STRASSE`, or `ΟΔΟΣ` and `οδος`, are one tag.
/// Per character, not `str::to_lowercase`, which makes a final `Σ` a `ς` by its context, and
/// without NFKC, which tags are not put through (a tag is a label, matched whole).
fn folded(tag: &str) -> impl Iterator<Item = char> + '_ {
    tag.chars().flat_map(|c| {
        let full: &'static [char] = match c {
            'ß' | 'ẞ' => &['s', 's'],
            'ς' => &['σ'],
            _ => &[],
        };
        let lower = full.is_empty().then(|| c.to_lowercase());
        full.iter().copied().chain(lower.into_iter().flatten())
    })
}

/// Borrows the searchable fields of a memory.
pub(crate) fn fields_of(memory: &Memory) -> Fields<'_> {
    Fields {
        content: &memory.content,
        summary: memory.summary.as_deref(),
        keywords: &memory.keywords,
        tags: &memory.tags,
        context: memory.context.as_deref(),
    }
}

/// What a panic of the database engine on damaged data becomes.
pub(crate) fn engine_failed(path: &Path, panic: &(dyn std::any::Any + Send)) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!(
            "the database engine failed on damaged data: {}",
            panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("unknown failure")
        ),
    }
}

thread_local! {
    /// How many [`catching_engine_panics`] calls this thread is inside.
    static CATCHING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f`, a call into the database engine, catching its panic (the caller turns it into
/// [`StoreError::Corrupt`]), and marks the thread meanwhile for [`engine_panic_is_caught`].
pub(crate) fn catching_engine_panics<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    CATCHING.with(|depth| depth.set(depth.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|depth| depth.set(depth.get().saturating_sub(1)));
    result
}

/// Whether a panic on this thread now happens inside a call into the database engine whose
/// panic the store catches and returns as [`StoreError::Corrupt`] (redb panics on some damaged
/// pages). A program's panic hook can stay quiet about such a panic: the error that follows
/// names the file and what failed. (The `tetrarch` binary's hook does.)
pub fn engine_panic_is_caught() -> bool {
    CATCHING.with(|depth| depth.get() > 0)
}

/// Runs a read of the file, turning a panic of the engine into [`StoreError::Corrupt`]. redb
/// panics on some damaged pages (a key that is not UTF-8) instead of returning an error, and
/// damage it did not meet while opening can be met by any later read: the caller gets an error
/// naming the file, and the process goes on to close the store cleanly (a crash left the file
/// needing a repair that damaged data can make impossible, taking every memory with it).
fn guarded_read<T>(
    path: &Path,
    read: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    catching_engine_panics(read).unwrap_or_else(|panic| Err(engine_failed(path, &*panic)))
}

/// Opens (or creates) the database file; a panic of the engine on a damaged file is
/// [`StoreError::Corrupt`].
pub(crate) fn open_database(path: &Path) -> Result<Database, StoreError> {
    guarded_read(path, || create_checked(path))
}

/// Opens (or creates) the database file for writing, checking it first: every page of its
/// trees against its checksum, and the record of free pages rebuilt from them. A plain open
/// trusts that record, and one damaged bit in it let the next commit overwrite pages in use:
/// a file every read command could read became one none could, memories and all. Damage the
/// check finds is [`StoreError::Corrupt`] and nothing is written; reads (the read-only open)
/// still work. It costs about 7% of an open: 2.5 ms of 34 ms at 10k memories, 12 of 300–400 ms
/// at 100k (release build).
fn create_checked(path: &Path) -> Result<Database, StoreError> {
    redb::Builder::new()
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|e| match open_error(path, e) {
            // Say what is left to the user: reading out what is intact.
            StoreError::Corrupt { path, detail } if readable_without_writing(&path) => {
                StoreError::Corrupt {
                    detail: format!(
                        "{detail} (found by the check before writing: nothing was written, and \
                         read-only commands, `mem recent --json` say, still read what is intact)"
                    ),
                    path,
                }
            }
            other => other,
        })
}

/// Whether the file opens read-only (which checks nothing and writes nothing).
fn readable_without_writing(path: &Path) -> bool {
    catching_engine_panics(|| redb::Builder::new().open_read_only(path).is_ok()).unwrap_or(false)
}

fn open_error(path: &Path, error: DatabaseError) -> StoreError {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    match error {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::AlreadyOpen {
                path: path.to_path_buf(),
            }
        }
        // No file yet: the folder refused to hold a new one.
        DatabaseError::Storage(StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::PermissionDenied && !path.exists() =>
        {
            db_error(path, "create the file in its folder")(io)
        }
        DatabaseError::Storage(StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            StoreError::NotWritable {
                path: path.to_path_buf(),
                source: io,
            }
        }
        DatabaseError::Storage(StorageError::Io(io))
            if !matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            db_error(path, "open")(io)
        }
        DatabaseError::Storage(StorageError::Io(io)) => corrupt(io.to_string()),
        DatabaseError::Storage(StorageError::Corrupted(detail)) => corrupt(detail),
        other => corrupt(other.to_string()),
    }
}

/// A decoded record, ready for the hot tier.
struct Loaded {
    memory: Memory,
    terms: Option<DocTerms>,
    encoded_len: u64,
}

/// A record of `memories` that did not load, and why.
struct Damaged {
    key: u128,
    bytes: Vec<u8>,
    reason: String,
}

/// What an open table error means: a table of ours with other types (or a multimap table) is a
/// file that is not a tetrarch store; a storage error is a database error.
fn table_error(path: &Path, table: &str) -> impl FnOnce(TableError) -> StoreError {
    let path = path.to_path_buf();
    let table = table.to_owned();
    move |error| match error {
        // Damage, as `open_error` reads it: a page that ends early or does not decode.
        TableError::Storage(StorageError::Corrupted(detail)) => {
            StoreError::Corrupt { path, detail }
        }
        TableError::Storage(StorageError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            StoreError::Corrupt {
                detail: format!("its table `{table}`: {io}"),
                path,
            }
        }
        TableError::Storage(storage) => db_error(&path, "open table")(storage),
        other => StoreError::Corrupt {
            detail: format!(
                "not a tetrarch store: its table `{table}` is not tetrarch's ({other})"
            ),
            path,
        },
    }
}

/// Checks that a table of the file, if present, has tetrarch's types; says whether it is there.
fn check_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    path: &Path,
    table: redb::TableDefinition<K, V>,
    names: &std::collections::BTreeSet<String>,
) -> Result<bool, StoreError> {
    if !names.contains(table.name()) {
        return Ok(false);
    }
    txn.open_table(table)
        .map_err(table_error(path, table.name()))?;
    Ok(true)
}

impl Store {
    /// Opens (or creates) the store at `path` and rebuilds its index.
    ///
    /// Blocking: it reads the whole file. From async code, call it in `spawn_blocking`.
    ///
    /// Records that do not load are set aside, not refused (see the module docs). A new path or
    /// an empty file becomes a store; a redb file with tables but without tetrarch's schema is
    /// refused and left as it is.
    ///
    /// # Errors
    /// [`StoreError::AlreadyOpen`] when another process holds the file, [`StoreError::Corrupt`]
    /// when the file is not a tetrarch store or is damaged, [`StoreError::NotWritable`] when it
    /// cannot be opened for writing, [`StoreError::Database`] on other I/O errors.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Store, StoreError> {
        config.check()?;
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // A file where a folder of the path should be: "File exists" would not say which.
            if let Some(file) = parent.ancestors().find(|a| a.is_file()) {
                return Err(db_error(&path, "create its folder")(std::io::Error::other(
                    format!("{} is a file, not a folder", file.display()),
                )));
            }
            std::fs::create_dir_all(parent).map_err(db_error(&path, "create directory"))?;
        }
        // redb can panic on some damaged files instead of returning an error; a damaged file
        // must be a clear error, never a crash of the process that opened it.
        let opened = catching_engine_panics(|| {
            let db = create_checked(&path)?;
            Self::prepare_tables(&db, &path)?;
            let dictionary = Arc::new(Dictionary::default());
            let state = Self::load_state(&db, &path, &config, &dictionary)?;
            Ok::<_, StoreError>((db, state, dictionary))
        });
        let (db, state, dictionary) = opened.map_err(|panic| engine_failed(&path, &*panic))??;
        let db = Arc::new(SharedDb::new(OpenDb::Writable(db)));
        let state = Arc::new(RwLock::new(state));
        let access_queue = Arc::new(Mutex::new(Vec::new()));
        let (commands, receiver) = mpsc::channel();
        let writer_failure = Arc::new(Mutex::new(None));
        let context = WriterContext {
            db: db.clone(),
            state: state.clone(),
            path: path.clone(),
            config: config.clone(),
            access_queue: access_queue.clone(),
            dictionary: dictionary.clone(),
            failure: Arc::clone(&writer_failure),
        };
        let handle = std::thread::Builder::new()
            .name("tetrarch-store-writer".into())
            .spawn(move || writer::run(context, receiver))
            .map_err(db_error(&path, "start writer thread"))?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                config,
                db,
                state,
                commands,
                access_queue,
                dictionary,
                writer: Mutex::new(Some(handle)),
                read_only: false,
                writer_failure,
            }),
        })
    }

    /// Opens an existing store to read it, without writing to the file: a read-only handle
    /// (shared with other read-only ones, and refused with [`StoreError::AlreadyOpen`] while a
    /// writer holds the file), whose writes fail with [`StoreError::ReadOnly`]. Reads do not
    /// count as accesses (`get` leaves `access_count` as it was).
    ///
    /// A file that needs a write before it can be read as a store is opened as [`Store::open`]
    /// opens it, writable: one a crash left needing a repair, one without every table of this
    /// build's schema, or one with records that do not load (to be set aside). Blocking, as
    /// [`Store::open`] is.
    ///
    /// # Errors
    /// As [`Store::open`]; a path with no file is [`StoreError::Database`] (nothing is created).
    pub fn open_read_only(
        path: impl AsRef<Path>,
        config: StoreConfig,
    ) -> Result<Store, StoreError> {
        config.check()?;
        let path = path.as_ref().to_path_buf();
        let opened = catching_engine_panics(|| {
            let db = match redb::Builder::new().open_read_only(&path) {
                Ok(db) => db,
                // Only a writable open repairs the file.
                Err(DatabaseError::RepairAborted) => return Ok(None),
                // Not `NotWritable`: nothing here asked to write.
                Err(DatabaseError::Storage(StorageError::Io(io)))
                    if io.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    return Err(db_error(&path, "open")(io));
                }
                Err(e) => return Err(open_error(&path, e)),
            };
            if Self::check_schema(&db, &path)? {
                return Ok(None);
            }
            let dictionary = Arc::new(Dictionary::default());
            let (mut state, damaged) = Self::rebuild(&db, &path, &config, &dictionary)?;
            if !damaged.is_empty() {
                return Ok(None);
            }
            state.damaged = Self::count_set_aside(&db, &path)?;
            Ok::<_, StoreError>(Some((db, state, dictionary)))
        });
        let Some((db, state, dictionary)) =
            opened.map_err(|panic| engine_failed(&path, &*panic))??
        else {
            return Self::open(path, config);
        };
        // No writer: the channel's far end is gone, and `send` refuses before using it.
        let (commands, _) = mpsc::channel();
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                config,
                db: Arc::new(SharedDb::new(OpenDb::ReadOnly(db))),
                state: Arc::new(RwLock::new(state)),
                commands,
                access_queue: Arc::new(Mutex::new(Vec::new())),
                dictionary,
                writer: Mutex::new(None),
                read_only: true,
                writer_failure: Arc::default(),
            }),
        })
    }

    /// Checks that the file is a tetrarch store this build reads, creating the schema in a new
    /// (empty) file and any table an older build did not have. Only reads when nothing is
    /// missing, so opening a store to read it does not write it. A redb file with tables but
    /// no tetrarch schema belongs to something else and is refused untouched.
    fn prepare_tables(db: &Database, path: &Path) -> Result<(), StoreError> {
        if !Self::check_schema(db, path)? {
            return Ok(());
        }
        let txn = db.begin_write().map_err(db_error(path, "begin write"))?;
        let fresh = txn
            .list_tables()
            .map_err(db_error(path, "list tables"))?
            .next()
            .is_none();
        {
            txn.open_table(MEMORIES)
                .map_err(table_error(path, "memories"))?;
            txn.open_table(CACHE)
                .map_err(table_error(path, "context_cache"))?;
            txn.open_table(RUNS).map_err(table_error(path, "runs"))?;
            txn.open_table(DAMAGED_MEMORIES)
                .map_err(table_error(path, "damaged_memories"))?;
            if fresh {
                let mut meta = txn.open_table(META).map_err(table_error(path, "meta"))?;
                meta.insert("schema", SCHEMA_VERSION.to_le_bytes().as_slice())
                    .map_err(db_error(path, "write schema version"))?;
            }
        }
        txn.commit().map_err(db_error(path, "commit schema"))
    }

    /// Checks, reading only, that the file is a tetrarch store this build reads; says whether
    /// it needs tables created (a new file, or one from a build with fewer tables).
    fn check_schema(db: &impl ReadableDatabase, path: &Path) -> Result<bool, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        let txn = db.begin_read().map_err(db_error(path, "begin read"))?;
        let mut names: std::collections::BTreeSet<String> = txn
            .list_tables()
            .map_err(db_error(path, "list tables"))?
            .map(|t| t.name().to_owned())
            .collect();
        names.extend(
            txn.list_multimap_tables()
                .map_err(db_error(path, "list tables"))?
                .map(|t| t.name().to_owned()),
        );
        let fresh = names.is_empty();
        if !fresh {
            // The schema version first: nothing else is opened in a file that is not ours.
            if !names.contains(META.name()) {
                let listed: Vec<&str> = names.iter().map(String::as_str).take(5).collect();
                return Err(corrupt(format!(
                    "not a tetrarch store: a redb file without tetrarch's schema (its tables: {})",
                    listed.join(", ")
                )));
            }
            let meta = txn.open_table(META).map_err(table_error(path, "meta"))?;
            let bytes = meta
                .get("schema")
                .map_err(db_error(path, "read schema version"))?
                .map(|v| v.value().to_vec())
                .ok_or_else(|| {
                    corrupt("not a tetrarch store: its meta table has no schema version".into())
                })?;
            let version = <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_le_bytes)
                .map_err(|_| corrupt("unreadable schema version".into()))?;
            if version > SCHEMA_VERSION {
                return Err(corrupt(format!(
                    "written by a newer tetrarch (schema {version}; this build reads up to {SCHEMA_VERSION})"
                )));
            }
        }
        let missing = [
            check_table(&txn, path, MEMORIES, &names)?,
            check_table(&txn, path, CACHE, &names)?,
            check_table(&txn, path, RUNS, &names)?,
            check_table(&txn, path, DAMAGED_MEMORIES, &names)?,
        ]
        .contains(&false);
        Ok(fresh || missing)
    }

    /// Rebuilds the hot tier from the file and sets aside the records that do not load (see
    /// [`Self::quarantine`]).
    pub(crate) fn load_state(
        db: &Database,
        path: &Path,
        config: &StoreConfig,
        dictionary: &Arc<Dictionary>,
    ) -> Result<State, StoreError> {
        let (mut state, damaged) = Self::rebuild(db, path, config, dictionary)?;
        let mut left_in_place = 0;
        if !damaged.is_empty() {
            left_in_place = Self::quarantine(db, path, &damaged);
        }
        state.damaged = Self::count_set_aside(db, path)? + left_in_place as u64;
        Ok(state)
    }

    /// The records earlier opens set aside in `damaged_memories`.
    fn count_set_aside(db: &impl ReadableDatabase, path: &Path) -> Result<u64, StoreError> {
        guarded_read(path, || {
            let txn = db.begin_read().map_err(db_error(path, "begin read"))?;
            match txn.open_table(DAMAGED_MEMORIES) {
                Ok(table) => table.len().map_err(db_error(path, "count damaged records")),
                Err(TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(table_error(path, "damaged_memories")(e)),
            }
        })
    }

    /// Moves records that did not load from `memories` to `damaged_memories`, as they were, in
    /// one durable commit, so the store opens and nothing is lost. Returns how many stayed in
    /// `memories` (the move failed, or the key is already set aside with other bytes); those
    /// are skipped at each open until the move succeeds.
    fn quarantine(db: &Database, path: &Path, damaged: &[Damaged]) -> usize {
        for d in damaged {
            tracing::warn!(
                path = %path.display(),
                "store: record {:032x} of memories does not load ({}); setting it aside in damaged_memories",
                d.key,
                d.reason
            );
        }
        let moved = guarded_read(path, || {
            let txn = db.begin_write().map_err(db_error(path, "begin write"))?;
            let mut kept = 0;
            {
                let mut memories = txn
                    .open_table(MEMORIES)
                    .map_err(table_error(path, "memories"))?;
                let mut aside = txn
                    .open_table(DAMAGED_MEMORIES)
                    .map_err(table_error(path, "damaged_memories"))?;
                for d in damaged {
                    let earlier = aside
                        .get(d.key)
                        .map_err(db_error(path, "read damaged record"))?
                        .map(|v| v.value() != d.bytes.as_slice());
                    if earlier == Some(true) {
                        // Never overwrite what an earlier open set aside.
                        kept += 1;
                        continue;
                    }
                    aside
                        .insert(d.key, d.bytes.as_slice())
                        .map_err(db_error(path, "set aside damaged record"))?;
                    memories
                        .remove(d.key)
                        .map_err(db_error(path, "set aside damaged record"))?;
                }
            }
            txn.commit()
                .map_err(db_error(path, "commit damaged records"))?;
            Ok(kept)
        });
        match moved {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "store: damaged records could not be set aside; they stay where they are and are skipped"
                );
                damaged.len()
            }
        }
    }

    /// Reads every record and rebuilds the hot tier, decoding and analysing on all cores;
    /// returns the records that do not load beside it.
    fn rebuild(
        db: &impl ReadableDatabase,
        path: &Path,
        config: &StoreConfig,
        dictionary: &Arc<Dictionary>,
    ) -> Result<(State, Vec<Damaged>), StoreError> {
        let started = std::time::Instant::now();
        let txn = db.begin_read().map_err(db_error(path, "begin read"))?;
        let table = txn
            .open_table(MEMORIES)
            .map_err(db_error(path, "open memories table"))?;
        let mut records: Vec<(u128, Vec<u8>)> = Vec::new();
        for item in table.iter().map_err(db_error(path, "scan memories"))? {
            let (key, value) = item.map_err(db_error(path, "scan memories"))?;
            records.push((key.value(), value.value().to_vec()));
        }
        drop(table);
        drop(txn);

        let progress = (config.show_progress && records.len() >= 10_000).then(|| {
            let bar = indicatif::ProgressBar::new(records.len() as u64);
            bar.set_message("rebuilding search index");
            bar
        });
        let read_at = started.elapsed();
        let now = Timestamp::now();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 16);
        let chunk = records.len().div_ceil(threads).max(1);
        type Part = Result<(Vec<Loaded>, Vec<Damaged>), StoreError>;
        let loaded: Vec<Part> = std::thread::scope(|scope| {
            let workers: Vec<_> = records
                .chunks(chunk)
                .map(|part| {
                    let progress = progress.clone();
                    scope.spawn(move || {
                        let mut out = Vec::with_capacity(part.len());
                        let mut damaged = Vec::new();
                        for (i, (key, bytes)) in part.iter().enumerate() {
                            let decoded = codec::decode_memory(bytes).and_then(|memory| {
                                // Every later write and purge goes by the memory's own id: one
                                // stored under another key would be loaded twice or never
                                // removed.
                                if memory.id.as_u128() == *key {
                                    Ok(memory)
                                } else {
                                    Err(StoreError::Codec(format!(
                                        "the record holds memory {}",
                                        memory.id
                                    )))
                                }
                            });
                            let memory = match decoded {
                                Ok(memory) => memory,
                                // A newer tetrarch's record is not damage: moving it aside
                                // would hide it from that tetrarch too. The store is refused,
                                // as a newer schema is.
                                Err(e) if codec::memory_from_a_newer_build(bytes) => {
                                    return Err(StoreError::Corrupt {
                                        path: path.to_path_buf(),
                                        detail: format!("record {key:032x}: {e}"),
                                    });
                                }
                                Err(e) => {
                                    damaged.push(Damaged {
                                        key: *key,
                                        bytes: bytes.clone(),
                                        reason: e.to_string(),
                                    });
                                    continue;
                                }
                            };
                            let terms = (!memory.archived && !memory.is_expired(now))
                                .then(|| analyze_document(&fields_of(&memory), dictionary));
                            out.push(Loaded {
                                memory,
                                terms,
                                encoded_len: bytes.len() as u64,
                            });
                            if i % 1024 == 1023
                                && let Some(bar) = &progress
                            {
                                bar.inc(1024);
                            }
                        }
                        Ok((out, damaged))
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(StoreError::Corrupt {
                            path: path.to_path_buf(),
                            detail: "index rebuild worker failed".into(),
                        })
                    })
                })
                .collect()
        });
        let analysed_at = started.elapsed();
        let mut state = State::new(dictionary.clone());
        state.loaded_at_ms = now.as_millis();
        let mut live = Vec::with_capacity(records.len());
        let mut damaged = Vec::new();
        for part in loaded {
            let (part, part_damaged) = part?;
            damaged.extend(part_damaged);
            for record in part {
                let Loaded {
                    memory,
                    terms,
                    encoded_len,
                } = record;
                match terms {
                    Some(terms) => live.push((memory, terms, encoded_len)),
                    None if memory.archived && !memory.is_expired(now) => {
                        state.count_archived(&memory, encoded_len);
                    }
                    None => {
                        // Expired (archived or not): not counted; the next housekeeping tick
                        // deletes it.
                        if let Some(at) = memory.expires_at {
                            state.expiry.insert((at.as_millis(), memory.id));
                        }
                    }
                }
            }
        }
        state.load_live(live);
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
        tracing::debug!(
            records = records.len(),
            read_ms = read_at.as_millis() as u64,
            analysed_ms = analysed_at.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "store index rebuilt"
        );
        Ok((state, damaged))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    fn send(&self, command: Command) -> Result<(), StoreError> {
        if self.inner.read_only {
            return Err(StoreError::ReadOnly {
                path: self.inner.path.clone(),
            });
        }
        self.inner
            .commands
            .send(command)
            .map_err(|_| self.writer_stopped())
    }

    /// Why the writer did not answer: the engine failed under it (damaged data; see
    /// [`writer::run`]), or the store is shutting down.
    fn writer_stopped(&self) -> StoreError {
        match self.inner.writer_failure.lock().clone() {
            Some(detail) => StoreError::Corrupt {
                path: self.inner.path.clone(),
                detail,
            },
            None => StoreError::Closed,
        }
    }

    /// Whether this handle was opened read-only ([`Store::open_read_only`] found nothing to
    /// write): its writes fail with [`StoreError::ReadOnly`].
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// Stores a new memory and returns its id once the write is committed (durably by default).
    ///
    /// The memory is visible to `get`, `search` and `list_recent` when this returns.
    ///
    /// # Errors
    /// [`StoreError::ContentTooLarge`], [`StoreError::InvalidImportance`],
    /// [`StoreError::InvalidConfidence`] for bad input; [`StoreError::Database`] if the commit fails.
    pub async fn store(&self, new: NewMemory) -> Result<MemoryId, StoreError> {
        let started = std::time::Instant::now();
        let stored = self.store_unmeasured(new).await;
        record_latency("store", started);
        stored
    }

    /// Stores several memories in one group commit (one fsync rather than one each) and returns
    /// their ids, in order, once it is committed.
    ///
    /// # Errors
    /// The first memory refused for bad input (as [`Store::store`] refuses it) stops the call:
    /// those before it are stored, and its error is returned once they are. A failed commit is
    /// [`StoreError::Database`].
    pub async fn store_many(
        &self,
        memories: impl IntoIterator<Item = NewMemory>,
    ) -> Result<Vec<MemoryId>, StoreError> {
        let started = std::time::Instant::now();
        let (mut ids, mut answers, mut refused) = (Vec::new(), Vec::new(), None);
        for new in memories {
            match self.queue_store_unmeasured(new) {
                Ok((id, answer)) => {
                    ids.push(id);
                    answers.push(answer);
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        for answer in answers {
            answer.await.map_err(|_| self.writer_stopped())??;
        }
        record_latency("store_many", started);
        refused.map_or(Ok(ids), Err)
    }

    async fn store_unmeasured(&self, new: NewMemory) -> Result<MemoryId, StoreError> {
        let (id, answer) = self.queue_store_unmeasured(new)?;
        answer.await.map_err(|_| self.writer_stopped())??;
        Ok(id)
    }

    /// Queues a new memory for the next commit and returns its id without waiting for it.
    ///
    /// For writers that must not wait on the disk (the Executor records every tool outcome this
    /// way): the memory becomes visible to reads, and durable, when the writer commits it, in
    /// queue order with everything queued before. A failed write or commit is logged by the writer.
    ///
    /// # Errors
    /// The same bad-input errors as [`Store::store`] (nothing is queued then), and
    /// [`StoreError::Closed`] when the store is shut down.
    pub fn queue_store(&self, new: NewMemory) -> Result<MemoryId, StoreError> {
        let started = std::time::Instant::now();
        let queued = self.queue_store_unmeasured(new).map(|(id, _answer)| id);
        record_latency("queue_store", started);
        queued
    }

    fn queue_store_unmeasured(
        &self,
        new: NewMemory,
    ) -> Result<(MemoryId, oneshot::Receiver<Result<(), StoreError>>), StoreError> {
        let now = Timestamp::now();
        if let Some(ttl) = new.ttl {
            validate_ttl(ttl, now)?;
        }
        let memory = Memory {
            id: MemoryId::new(),
            namespace: new.namespace,
            memory_type: new.memory_type,
            content: new.content,
            summary: new.summary,
            keywords: new.keywords,
            tags: new.tags,
            context: new.context,
            importance: new.importance,
            confidence: new.confidence,
            created_at: now,
            updated_at: now,
            last_accessed_at: now,
            access_count: 0,
            expires_at: new.ttl.map(|ttl| now.plus(ttl)),
            archived: false,
        };
        validate_memory(&memory, self.inner.config.max_content_bytes)?;
        let id = memory.id;
        // Encoding and analysis happen here, on the caller's task, so the writer only writes.
        let encoded = codec::encode_memory(&memory)?;
        let terms = analyze_document(&fields_of(&memory), &self.inner.dictionary);
        let (reply, answer) = oneshot::channel();
        self.send(Command::Store {
            memory: Box::new(memory),
            encoded,
            terms,
            reply,
        })?;
        Ok((id, answer))
    }

    /// Reads a memory by id, counting the access to a live one. Archived memories are readable
    /// (as archived: their access count and time stay as they were); expired ones are not.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when no live or archived memory has this id.
    pub fn get(&self, id: MemoryId) -> Result<Memory, StoreError> {
        let started = std::time::Instant::now();
        let found = self.get_unmeasured(id);
        record_latency("get", started);
        found
    }

    fn get_unmeasured(&self, id: MemoryId) -> Result<Memory, StoreError> {
        let now = Timestamp::now();
        {
            let state = self.inner.state.read();
            if let Some(entry) = state.live.get(&id) {
                if entry.memory.is_expired(now) {
                    return Err(StoreError::NotFound(id));
                }
                // A read-only handle could not save the count; it leaves it as stored.
                if !self.inner.read_only {
                    entry.access_count.fetch_add(1, Ordering::Relaxed);
                    entry
                        .last_accessed
                        .store(now.as_millis(), Ordering::Relaxed);
                    if !entry.access_dirty.swap(true, Ordering::Relaxed) {
                        self.inner.access_queue.lock().push(id);
                    }
                }
                return Ok(entry.snapshot());
            }
        }
        // Not hot: it may be archived.
        let path = &self.inner.path;
        let memory = guarded_read(path, || {
            let table = self.read_table(MEMORIES, "open memories table")?;
            let bytes = table
                .get(id.as_u128())
                .map_err(db_error(path, "read memory"))?
                .ok_or(StoreError::NotFound(id))?;
            codec::decode_memory(bytes.value())
        })?;
        if memory.is_expired(now) {
            return Err(StoreError::NotFound(id));
        }
        Ok(memory)
    }

    /// Changes a live memory and returns the new version once committed.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Archived`], [`StoreError::InvalidExpiry`] for an
    /// expiry that is not in the future, or the validation errors of `store`.
    pub async fn update(&self, id: MemoryId, patch: MemoryPatch) -> Result<Memory, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Update {
            id,
            patch: Box::new(patch),
            reply,
        })?;
        answer.await.map_err(|_| self.writer_stopped())?
    }

    /// Archives a memory: it stays readable by id but leaves search and recent lists.
    /// Archiving an archived memory does nothing.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when no memory has this id.
    pub async fn archive(&self, id: MemoryId) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Archive { id, reply })?;
        answer.await.map_err(|_| self.writer_stopped())?
    }

    /// Makes every acknowledged write durable and writes pending access statistics.
    ///
    /// # Errors
    /// [`StoreError::Database`] if the commit fails.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Sync { reply })?;
        answer.await.map_err(|_| self.writer_stopped())?
    }

    /// Searches live memories, best first (see the ranking in the index docs: more matched terms,
    /// then BM25F score, then importance, then recency).
    pub fn search(&self, query: &str, options: &SearchOptions) -> Vec<SearchHit> {
        let started = std::time::Instant::now();
        let hits = self.search_unmeasured(query, options);
        record_latency("search", started);
        hits
    }

    fn search_unmeasured(&self, query: &str, options: &SearchOptions) -> Vec<SearchHit> {
        let now = Timestamp::now().as_millis();
        let state = self.inner.state.read();
        let terms = analyze_query_matching(query, |term| state.index.has_live_term(term));
        let min_importance = options.min_importance.unwrap_or(0);
        // As `same_tag` folds the stored tags.
        let fold =
            |tags: &[String]| -> Vec<String> { tags.iter().map(|t| folded(t).collect()).collect() };
        let (wanted_tags, excluded_tags) = (fold(&options.tags), fold(&options.exclude_tags));
        let hits = state.index.search(
            &terms,
            options.namespace.as_ref(),
            options.limit,
            now,
            |_, slot| {
                // Importance is 1..=10: without a minimum the slot is not read (a cache miss).
                (min_importance <= 1 || slot.importance >= min_importance)
                    && (wanted_tags.is_empty() && excluded_tags.is_empty()
                        || state.live.get(&slot.id).is_some_and(|e| {
                            let has = |wanted: &String| {
                                e.memory.tags.iter().any(|tag| same_tag(tag, wanted))
                            };
                            wanted_tags.iter().all(has) && !excluded_tags.iter().any(has)
                        }))
            },
        );
        hits.into_iter()
            .filter_map(|hit| {
                let entry = state.live.get(&hit.id)?;
                Some(SearchHit {
                    score: hit.score,
                    matched_terms: hit.matched,
                    memory: Arc::clone(&entry.memory),
                })
            })
            .collect()
    }

    /// The most recently created live memories, newest first, in one namespace or all.
    ///
    /// Each is shared with the store, as a [`SearchHit::memory`] is, with the same access
    /// statistics: those last written. [`Store::get`] returns the current ones.
    pub fn list_recent(&self, namespace: Option<&Namespace>, limit: usize) -> Vec<Arc<Memory>> {
        self.list_recent_matching(namespace, limit, |_| true)
    }

    /// [`Store::list_recent`] of the memories `keep` accepts: the newest `limit` of those (the
    /// others take no place in `limit`).
    pub fn list_recent_matching(
        &self,
        namespace: Option<&Namespace>,
        limit: usize,
        mut keep: impl FnMut(&Memory) -> bool,
    ) -> Vec<Arc<Memory>> {
        let now = Timestamp::now();
        let state = self.inner.state.read();
        let order = match namespace {
            Some(ns) => match state.recent.get(ns) {
                Some(set) => set,
                None => return Vec::new(),
            },
            None => &state.recent_all,
        };
        order
            .iter()
            .rev()
            .filter_map(|id| state.live.get(id))
            .filter(|e| !e.memory.is_expired(now) && keep(&e.memory))
            .take(limit)
            .map(|e| Arc::clone(&e.memory))
            .collect()
    }

    /// Counts by namespace, type and archived state, and bytes stored; for one namespace or all.
    pub fn stats(&self, namespace: Option<&Namespace>) -> StoreStats {
        let state = self.inner.state.read();
        let mut stats = StoreStats {
            damaged: if namespace.is_none() {
                state.damaged
            } else {
                0
            },
            ..StoreStats::default()
        };
        for (ns, counts) in &state.counts {
            if namespace.is_some_and(|wanted| wanted != ns) {
                continue;
            }
            if counts.live == 0 && counts.archived == 0 {
                continue;
            }
            stats.live += counts.live;
            stats.archived += counts.archived;
            stats.bytes += counts.bytes;
            for (t, n) in &counts.live_by_type {
                if *n > 0 {
                    *stats.by_type.entry(*t).or_default() += n;
                }
            }
            stats.namespaces.insert(
                ns.to_string(),
                NamespaceStats {
                    live: counts.live,
                    archived: counts.archived,
                    bytes: counts.bytes,
                    by_type: counts
                        .live_by_type
                        .iter()
                        .filter(|(_, n)| **n > 0)
                        .map(|(t, n)| (*t, *n))
                        .collect(),
                },
            );
        }
        stats
    }

    /// Reads a persisted cache entry.
    pub(crate) fn cache_entry(
        &self,
        key: u128,
    ) -> Result<Option<(CacheCategory, Vec<u8>)>, StoreError> {
        let path = &self.inner.path;
        guarded_read(path, || {
            let table = self.read_table(CACHE, "open cache table")?;
            let found = table.get(key).map_err(db_error(path, "read cache entry"))?;
            found
                .map(|bytes| codec::decode_cache_entry(bytes.value()))
                .transpose()
        })
    }

    /// A table of the file in a read transaction of its own (the table keeps it open).
    fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: redb::TableDefinition<K, V>,
        operation: &'static str,
    ) -> Result<redb::ReadOnlyTable<K, V>, StoreError> {
        let path = &self.inner.path;
        let txn = self.inner.db.begin_read(path)?;
        txn.open_table(table).map_err(db_error(path, operation))
    }

    /// Visits every persisted cache entry: its key, category and time stored (both `None` when
    /// it does not decode) and its size as stored.
    fn scan_cache(
        &self,
        mut visit: impl FnMut(u128, Option<(CacheCategory, Timestamp)>, u64),
    ) -> Result<(), StoreError> {
        let path = &self.inner.path;
        guarded_read(path, || {
            let table = self.read_table(CACHE, "open cache table")?;
            for entry in table.iter().map_err(db_error(path, "read cache entries"))? {
                let (key, value) = entry.map_err(db_error(path, "read cache entry"))?;
                let bytes = value.value();
                visit(
                    key.value(),
                    codec::decode_cache_entry_meta(bytes).ok(),
                    bytes.len() as u64,
                );
            }
            Ok(())
        })
    }

    /// What the persisted cache (technique patterns, compiled kernels, tool results) holds, per
    /// category in [`CacheCategory::ALL`] order, then the entries that do not decode; categories
    /// with no entries are left out.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the file cannot be read.
    pub fn persisted_cache_usage(&self) -> Result<Vec<PersistedCacheUsage>, StoreError> {
        let mut usage: BTreeMap<Option<CacheCategory>, PersistedCacheUsage> = BTreeMap::new();
        self.scan_cache(|_, meta, bytes| {
            let category = meta.map(|(c, _)| c);
            let at = meta.map(|(_, t)| t);
            let entry = usage.entry(category).or_insert(PersistedCacheUsage {
                category,
                entries: 0,
                bytes: 0,
                oldest: at,
                newest: at,
            });
            entry.entries += 1;
            entry.bytes += bytes;
            entry.oldest = entry.oldest.min(at);
            entry.newest = entry.newest.max(at);
        })?;
        // `None` (does not decode) sorts first in the map; it is listed last.
        let mut listed: Vec<PersistedCacheUsage> = usage.into_values().collect();
        let undecodable = listed.first().is_some_and(|u| u.category.is_none());
        listed.rotate_left(usize::from(undecodable));
        Ok(listed)
    }

    /// Removes the persisted cache entries that `filter` matches, durably (fsync'd before this
    /// returns on a durable store, with the next sync on a relaxed one), and says how many. Cached values are recomputable: a removed entry is computed
    /// again the next time its key is asked for. A [`ContextCache`] already running on this
    /// store keeps its in-memory copies.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the file cannot be read or written; nothing is removed then.
    pub async fn clear_persisted_cache(
        &self,
        filter: CacheClearFilter,
    ) -> Result<CacheCleared, StoreError> {
        let mut keys = Vec::new();
        let mut cleared = CacheCleared::default();
        self.scan_cache(|key, meta, bytes| {
            if filter.matches(meta.map(|(c, _)| c), meta.map(|(_, t)| t)) {
                keys.push(key);
                cleared.entries += 1;
                cleared.bytes += bytes;
            }
        })?;
        if keys.is_empty() {
            return Ok(cleared);
        }
        let (reply, answer) = oneshot::channel();
        self.send(Command::CacheRemove { keys, reply })?;
        answer.await.map_err(|_| self.writer_stopped())??;
        Ok(cleared)
    }

    /// Queues a cache entry for the next commit without waiting for it (for synchronous callers
    /// that treat the cache as best effort).
    pub(crate) fn put_cache_entry_detached(
        &self,
        key: u128,
        category: CacheCategory,
        value: &[u8],
    ) -> Result<(), StoreError> {
        // The answer is not awaited: dropping the receiver leaves the write queued.
        self.queue_cache_entry(key, category, value).map(drop)
    }

    fn queue_cache_entry(
        &self,
        key: u128,
        category: CacheCategory,
        value: &[u8],
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let encoded = codec::encode_cache_entry(category, value, Timestamp::now())?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::CachePut {
            key,
            encoded,
            reply,
        })?;
        Ok(answer)
    }

    /// Queues run records (the Orchestrator's encoded run and task states) for the next
    /// commit. Records are committed in the order they are queued, each batch atomically, so a
    /// reader after a crash sees a prefix of what was queued.
    pub(crate) fn queue_run_records(
        &self,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::RunRecords { records, reply })?;
        Ok(answer)
    }

    /// Writes run records durably: fsync'd before this returns on a [`DurabilityMode::Durable`]
    /// store; a relaxed one makes them durable with its next sync, as every write.
    pub(crate) async fn put_run_records(
        &self,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let answer = self.queue_run_records(records)?;
        answer.await.map_err(|_| self.writer_stopped())?
    }

    /// Every run record whose key starts with `prefix`, in key order.
    pub(crate) fn run_records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let path = &self.inner.path;
        guarded_read(path, || {
            let table = self.read_table(RUNS, "open runs table")?;
            let mut found = Vec::new();
            for entry in table
                .range(prefix..)
                .map_err(db_error(path, "read run records"))?
            {
                let (key, value) = entry.map_err(db_error(path, "read run record"))?;
                if !key.value().starts_with(prefix) {
                    break;
                }
                found.push((key.value().to_owned(), value.value().to_vec()));
            }
            Ok(found)
        })
    }

    /// Removes a persisted cache entry (fsync'd before this returns on a durable store, with the
    /// next sync on a relaxed one; absent is not an error).
    pub(crate) async fn remove_cache_entry(&self, key: u128) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::CacheRemove {
            keys: vec![key],
            reply,
        })?;
        answer.await.map_err(|_| self.writer_stopped())?
    }

    /// Persists a cache entry durably (on a relaxed store, with its next sync).
    pub(crate) async fn put_cache_entry(
        &self,
        key: u128,
        category: CacheCategory,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let answer = self.queue_cache_entry(key, category, value)?;
        answer.await.map_err(|_| self.writer_stopped())?
    }
}

/// Records a store operation's latency in the `metrics` recorder (a no-op until the telemetry
/// module installs one).
fn record_latency(op: &'static str, started: std::time::Instant) {
    metrics::histogram!("tetrarch_store_op_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A namespace whose memories are all gone leaves nothing behind in the hot tier's
    /// per-namespace bookkeeping: each run has a namespace of its own, and a long-lived
    /// process whose memories expire kept an entry for every run it ever had.
    #[tokio::test]
    async fn a_namespace_emptied_by_expiry_leaves_no_entry_behind() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            housekeeping_interval: std::time::Duration::from_millis(20),
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path().join("s.redb"), config).unwrap();
        let kept = Namespace::session("run", "kept").unwrap();
        store
            .store(NewMemory::new(kept.clone(), "stays"))
            .await
            .unwrap();
        for run in 0..20 {
            let namespace = Namespace::session("run", &format!("r{run}")).unwrap();
            let mut fleeting = NewMemory::new(namespace, "expires soon");
            fleeting.ttl = Some(std::time::Duration::from_millis(30));
            store.store(fleeting).await.unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (counts, recent) = {
                let state = store.inner.state.read();
                (state.counts.len(), state.recent.len())
            };
            if (counts, recent) == (1, 1) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{counts} namespaces counted, {recent} in the recency map"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(store.stats(None).live, 1);
        assert!(store.inner.state.read().counts.contains_key(&kept));
    }

    /// A run record whose key is no longer UTF-8 made redb panic inside `run_records`; the
    /// process crashed with the file open, and the repair at the next open failed, so every
    /// memory was lost with it. The read is now an error and the store opens again to read; a
    /// writable open finds the damaged page and refuses, writing nothing.
    #[tokio::test]
    async fn a_damaged_run_record_is_an_error_and_the_store_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let key = "run/damaged-key-marker";
        {
            let store = Store::open(&path, StoreConfig::default()).unwrap();
            store
                .store(NewMemory::new(Namespace::Global, "kept through damage"))
                .await
                .unwrap();
            store
                .put_run_records(vec![(key.to_owned(), b"record".to_vec())])
                .await
                .unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let mut damaged = 0;
        for at in 0..bytes.len().saturating_sub(key.len()) {
            if bytes[at..].starts_with(key.as_bytes()) {
                bytes[at + 8] = 0xFF;
                damaged += 1;
            }
        }
        assert!(damaged > 0, "the key is not in the file");
        std::fs::write(&path, &bytes).unwrap();
        let refused = Store::open(&path, StoreConfig::default()).unwrap_err();
        assert!(matches!(refused, StoreError::Corrupt { .. }), "{refused}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the refused open wrote"
        );
        {
            let store = Store::open_read_only(&path, StoreConfig::default()).unwrap();
            let error = store.run_records("run/").unwrap_err();
            assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
            assert!(error.to_string().contains("damaged data"), "{error}");
        }
        let store = Store::open_read_only(&path, StoreConfig::default()).unwrap();
        assert_eq!(store.list_recent(None, 10).len(), 1);
    }

    /// Updates keep the index's document table about the size of the live set (every version
    /// used to keep a slot for the life of the process), and renumbering loses no memory: each
    /// is found by its newest words, none by words it no longer has, and archive still works.
    #[tokio::test]
    async fn updates_do_not_grow_the_index_and_renumbering_keeps_every_memory_findable() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            durability: DurabilityMode::Relaxed {
                sync_interval: Duration::from_millis(50),
            },
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path().join("s.redb"), config).unwrap();
        let ns = Namespace::Project("renumber".to_owned());
        let mut ids = Vec::new();
        for i in 0..12 {
            let new = NewMemory::new(ns.clone(), format!("memory{i} round0"));
            ids.push(store.store(new).await.unwrap());
        }
        let mut most_slots = 0;
        for round in 1..=40 {
            for (i, id) in ids
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 3 != 0 || round % 4 == 0)
            {
                let patch = MemoryPatch {
                    content: Some(format!("memory{i} round{round}")),
                    ..MemoryPatch::default()
                };
                store.update(*id, patch).await.unwrap();
            }
            most_slots = most_slots.max(store.inner.state.read().index.slots());
        }
        assert!(
            most_slots <= 2 * ids.len() + index::RENUMBER_MIN_DEAD,
            "the table grew to {most_slots} slots for {} memories",
            ids.len()
        );
        let find = |text: &str| -> Vec<MemoryId> {
            store
                .search(
                    text,
                    &SearchOptions {
                        limit: 100,
                        ..SearchOptions::default()
                    },
                )
                .into_iter()
                .filter(|hit| hit.matched_terms == 1)
                .map(|hit| hit.memory.id)
                .collect()
        };
        for (i, id) in ids.iter().enumerate() {
            assert!(find(&format!("memory{i}")).contains(id), "memory{i}");
            assert_eq!(
                store.get(*id).unwrap().content,
                format!("memory{i} round40")
            );
        }
        assert_eq!(find("round40").len(), ids.len());
        assert!(find("round39").is_empty());
        store.archive(ids[5]).await.unwrap();
        assert!(find("memory5").is_empty());
        assert_eq!(find("round40").len(), ids.len() - 1);
    }

    /// A memory read just before it expires is purged at the next tick, and its access
    /// statistics, flushed in the same batch, do not write it back to the file.
    #[tokio::test]
    async fn a_memory_read_just_before_it_expires_is_not_written_back_after_its_purge() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            housekeeping_interval: Duration::from_millis(50),
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path().join("s.redb"), config).unwrap();
        let mut new = NewMemory::new(Namespace::Global, "short-lived".to_owned());
        new.ttl = Some(Duration::from_millis(300));
        let id = store.store(new).await.unwrap();
        // Read it until it expires: the last read marks its statistics for the next flush.
        while store.get(id).is_ok() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Purged at a tick (every 50 ms; a loaded machine may delay it), then anything still
        // pending is written.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.stats(None).live != 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.sync().await.unwrap();
        let txn = store.inner.db.begin_read(&store.inner.path).unwrap();
        let table = txn.open_table(writer::MEMORIES).unwrap();
        assert!(
            table.get(id.as_u128()).unwrap().is_none(),
            "the purged memory is back on disk"
        );
        assert_eq!((store.stats(None).live, store.stats(None).bytes), (0, 0));
    }

    /// A record whose memory says another id than its key is set aside at open (loaded, it
    /// would be indexed twice or never purged); the memory under its own key still loads.
    #[tokio::test]
    async fn a_record_under_another_memorys_key_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let id = {
            let store = Store::open(&path, StoreConfig::default()).unwrap();
            let new = NewMemory::new(Namespace::Global, "copied".to_owned());
            let id = store.store(new).await.unwrap();
            store.sync().await.unwrap();
            id
        };
        let copy = {
            let db = redb::Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let copy = {
                let mut table = txn.open_table(writer::MEMORIES).unwrap();
                let bytes = table.get(id.as_u128()).unwrap().unwrap().value().to_vec();
                table.insert(id.as_u128() ^ 1, bytes.as_slice()).unwrap();
                bytes
            };
            txn.commit().unwrap();
            copy
        };
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        assert_eq!(store.get(id).unwrap().content, "copied");
        assert_eq!((store.stats(None).live, store.stats(None).damaged), (1, 1));
        let txn = store.inner.db.begin_read(&path).unwrap();
        let aside = txn.open_table(writer::DAMAGED_MEMORIES).unwrap();
        assert_eq!(aside.get(id.as_u128() ^ 1).unwrap().unwrap().value(), copy);
        let memories = txn.open_table(writer::MEMORIES).unwrap();
        assert!(memories.get(id.as_u128() ^ 1).unwrap().is_none());
    }

    /// A store file the process may not write is said to be that, not a bare "open failed".
    #[test]
    fn a_store_file_that_is_not_writable_is_said_to_be() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        std::fs::write(&path, "").unwrap();
        let refused = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let error = open_error(&path, DatabaseError::Storage(StorageError::Io(refused())));
        assert!(matches!(error, StoreError::NotWritable { .. }), "{error:?}");
        assert!(error.to_string().contains("is not writable"), "{error}");
        // With no file there, it is the folder that refused a new one.
        let missing = dir.path().join("new.redb");
        let error = open_error(
            &missing,
            DatabaseError::Storage(StorageError::Io(refused())),
        );
        assert!(
            error
                .to_string()
                .contains("create the file in its folder failed"),
            "{error}"
        );
    }
}
