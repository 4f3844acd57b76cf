//! The store's error type. Dependency errors (redb, postcard) are kept as sources, never exposed as
//! types, so upgrading a dependency does not change our public API.

use std::path::PathBuf;

use super::memory::MemoryId;

/// A boxed cause kept for `source()`.
pub type BoxedCause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A namespace that is not `global`, `project:NAME` or `session:PROJECT:ID`.
    #[error(
        "invalid namespace {input:?}: expected `global`, `project:NAME` or `session:PROJECT:ID` (names non-empty, without `:` or spaces)"
    )]
    InvalidNamespace {
        /// The text that was given.
        input: String,
    },
    /// A memory id that is not a UUID.
    #[error(
        "invalid memory id {input:?}: expected a UUID such as 01890a5d-ac96-774b-bcce-b302099a8057"
    )]
    InvalidId {
        /// The text that was given.
        input: String,
    },
    /// A memory type name that is unknown.
    #[error("unknown memory type {input:?}")]
    InvalidMemoryType {
        /// The text that was given.
        input: String,
    },
    /// A cache category name that is unknown.
    #[error(
        "unknown cache category {input:?}: expected file_read, documentation, research, technique, compiled_kernel or tool_result"
    )]
    InvalidCacheCategory {
        /// The text that was given.
        input: String,
    },
    /// Content over the configured limit.
    #[error("content is {size} bytes, over the limit of {limit} bytes")]
    ContentTooLarge {
        /// The content's size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A text field other than the content (summary, context, keywords, tags) over the limit.
    #[error("{field} is {size} bytes, over the limit of {limit} bytes")]
    FieldTooLarge {
        /// The field.
        field: &'static str,
        /// Its size in bytes (keywords and tags: all of them together).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An expiry the store cannot keep: a time to live under 1 ms, an expiry time not in the
    /// future, or one after 9999.
    #[error("invalid expiry: {detail}")]
    InvalidExpiry {
        /// Why.
        detail: String,
    },
    /// Importance outside 1..=10.
    #[error("importance {value} is outside 1..=10")]
    InvalidImportance {
        /// The value given.
        value: u8,
    },
    /// Confidence outside 0..=1 (or NaN).
    #[error("confidence {value} is outside 0.0..=1.0")]
    InvalidConfidence {
        /// The value given.
        value: f32,
    },
    /// No live memory has this id (it never existed, expired or was purged).
    #[error("no memory with id {0}")]
    NotFound(MemoryId),
    /// The memory is archived and can no longer be changed.
    #[error("memory {0} is archived and cannot be changed")]
    Archived(MemoryId),
    /// Another process (or another `Store` in this one) holds the database.
    #[error("store {path} is already open in another process (or another Store in this one)")]
    AlreadyOpen {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not a tetrarch store or is damaged.
    #[error("store {path} is not a valid tetrarch store or is damaged: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// An I/O or database failure.
    #[error("store {path}: {operation} failed")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The underlying cause.
        #[source]
        source: BoxedCause,
    },
    /// A stored value could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// A [`super::StoreConfig`] a store cannot run with.
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),
    /// The store file (or its folder) cannot be opened for writing. [`super::Store::open`]
    /// opens it for writing even to read it (the database engine takes the file's write lock);
    /// [`super::Store::open_read_only`] does not, unless the file needs a repair first.
    #[error(
        "store {path} is not writable: tetrarch needs write access to its store file to write \
         it, or to repair it after a crash"
    )]
    NotWritable {
        /// The database file.
        path: PathBuf,
        /// The refusal.
        #[source]
        source: std::io::Error,
    },
    /// The store's writer has stopped: the store is shutting down, or its writer thread ended
    /// unexpectedly. A failed commit is not this: it is a [`StoreError::Database`] error, and
    /// the writer goes on (reopening the file first after an I/O error).
    #[error("the store's writer has stopped")]
    Closed,
    /// A write to a store opened with [`super::Store::open_read_only`].
    #[error("store {path} is open read-only")]
    ReadOnly {
        /// The database file.
        path: PathBuf,
    },
}
