//! The one place values are turned into bytes and back.
//!
//! Every value on disk is a postcard-encoded envelope enum whose variant is the schema version
//! (`Stored::V1`, later `V2`, ...). postcard is not self-describing, so a record written before a
//! field was added could not be read by the new struct; the envelope lets a later schema decode
//! old variants and upgrade them in memory. postcard's wire format is documented stable since 1.0.
//! (bincode is not an option: 3.0 is an empty tombstone crate and 2.x carries RUSTSEC-2025-0141.)
//!
//! The on-disk structs here are separate from the public [`Memory`] so the API can change without
//! changing the file format.

use serde::{Deserialize, Serialize};

use super::cache::CacheCategory;
use super::error::StoreError;
use super::memory::{Memory, MemoryId, MemoryType, Namespace, Timestamp};

/// Version 1 of a stored memory.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub(crate) struct MemoryV1 {
    pub id: u128,
    pub namespace: String,
    pub memory_type: MemoryType,
    pub content: String,
    pub summary: Option<String>,
    pub keywords: Vec<String>,
    pub tags: Vec<String>,
    pub context: Option<String>,
    pub importance: u8,
    pub confidence: f32,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_accessed_at: i64,
    pub access_count: u64,
    pub expires_at: Option<i64>,
    pub archived: bool,
}

/// The envelope of a stored memory.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub(crate) enum StoredMemory {
    V1(MemoryV1),
}

/// Version 1 of a persisted cache entry (the permanent category).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub(crate) struct CacheEntryV1 {
    pub category: CacheCategory,
    pub value: Vec<u8>,
    pub stored_at: i64,
}

/// The envelope of a persisted cache entry.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub(crate) enum StoredCacheEntry {
    V1(CacheEntryV1),
}

/// How many versions of [`StoredMemory`] this build reads.
const MEMORY_VERSIONS: u32 = 1;
/// How many versions of [`StoredCacheEntry`] this build reads.
const CACHE_ENTRY_VERSIONS: u32 = 1;

/// How many versions ahead of this build a record's version tag may be and still be taken for a
/// record of a newer tetrarch; a tag further ahead is damage more likely than a future schema.
const PLAUSIBLE_VERSIONS_AHEAD: u64 = 8;

/// Why an envelope did not decode. postcard writes the envelope's variant (the schema version,
/// from 0) first, as a varint. A variant this build does not know, close above its own and
/// followed by what reads as this build's latest version (a newer schema extends it), is said
/// to be a record of a newer tetrarch; any other unknown variant may be that or damage, and is
/// said as both. A known variant that does not decode is damage.
fn envelope_error(
    what: &str,
    known: u32,
    bytes: &[u8],
    error: &postcard::Error,
    latest_body_reads: fn(&[u8]) -> bool,
) -> StoreError {
    let known = u64::from(known);
    match leading_varint(bytes) {
        Some((variant, _)) if variant >= known => {
            let version = variant.saturating_add(1);
            let plausible = plausibly_newer(known, bytes, latest_body_reads);
            let who = if plausible {
                "written by a newer tetrarch"
            } else {
                "damaged or written by a newer tetrarch"
            };
            StoreError::Codec(format!(
                "decode {what}: {who} ({what} version {version}; this one reads versions 1 to \
                 {known})"
            ))
        }
        _ if bytes.is_empty() => StoreError::Codec(format!("decode {what}: damaged (empty)")),
        _ => StoreError::Codec(format!("decode {what}: damaged ({error})")),
    }
}

/// Whether `bytes` read as a record of a newer tetrarch: an envelope variant close above the
/// `known` ones, followed by what reads as this build's latest version.
fn plausibly_newer(known: u64, bytes: &[u8], latest_body_reads: fn(&[u8]) -> bool) -> bool {
    leading_varint(bytes).is_some_and(|(variant, len)| {
        variant >= known
            && variant < known + PLAUSIBLE_VERSIONS_AHEAD
            && bytes.get(len..).is_some_and(latest_body_reads)
    })
}

/// Whether a memory record that did not decode reads as one written by a newer tetrarch (not
/// damage): such a record is not this build's to set aside.
pub(crate) fn memory_from_a_newer_build(bytes: &[u8]) -> bool {
    plausibly_newer(u64::from(MEMORY_VERSIONS), bytes, reads_as_latest_memory)
}

/// The unsigned LEB128 varint at the start of `bytes` (postcard's encoding of a variant index)
/// and how many bytes it takes.
fn leading_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Whether `body` starts with what reads as the latest memory version.
fn reads_as_latest_memory(body: &[u8]) -> bool {
    postcard::take_from_bytes::<MemoryV1>(body).is_ok()
}

/// Whether `body` starts with what reads as the latest cache entry version.
fn reads_as_latest_cache_entry(body: &[u8]) -> bool {
    postcard::take_from_bytes::<CacheEntryV1>(body).is_ok()
}

/// Encodes a memory in the current schema.
pub(crate) fn encode_memory(memory: &Memory) -> Result<Vec<u8>, StoreError> {
    let record = StoredMemory::V1(MemoryV1 {
        id: memory.id.as_u128(),
        namespace: memory.namespace.to_string(),
        memory_type: memory.memory_type,
        content: memory.content.clone(),
        summary: memory.summary.clone(),
        keywords: memory.keywords.clone(),
        tags: memory.tags.clone(),
        context: memory.context.clone(),
        importance: memory.importance,
        confidence: memory.confidence,
        created_at: memory.created_at.as_millis(),
        updated_at: memory.updated_at.as_millis(),
        last_accessed_at: memory.last_accessed_at.as_millis(),
        access_count: memory.access_count,
        expires_at: memory.expires_at.map(|t| t.as_millis()),
        archived: memory.archived,
    });
    postcard::to_stdvec(&record).map_err(|e| StoreError::Codec(format!("encode memory: {e}")))
}

/// Decodes a memory written by any schema version.
pub(crate) fn decode_memory(bytes: &[u8]) -> Result<Memory, StoreError> {
    let record: StoredMemory = postcard::from_bytes(bytes).map_err(|e| {
        envelope_error("memory", MEMORY_VERSIONS, bytes, &e, reads_as_latest_memory)
    })?;
    match record {
        StoredMemory::V1(v1) => Ok(Memory {
            id: MemoryId::from_u128(v1.id),
            namespace: v1.namespace.parse::<Namespace>()?,
            memory_type: v1.memory_type,
            content: v1.content,
            summary: v1.summary,
            keywords: v1.keywords,
            tags: v1.tags,
            context: v1.context,
            importance: v1.importance,
            confidence: v1.confidence,
            created_at: Timestamp::from_millis(v1.created_at),
            updated_at: Timestamp::from_millis(v1.updated_at),
            last_accessed_at: Timestamp::from_millis(v1.last_accessed_at),
            access_count: v1.access_count,
            expires_at: v1.expires_at.map(Timestamp::from_millis),
            archived: v1.archived,
        }),
    }
}

/// Encodes a persisted cache entry.
pub(crate) fn encode_cache_entry(
    category: CacheCategory,
    value: &[u8],
    stored_at: Timestamp,
) -> Result<Vec<u8>, StoreError> {
    let record = StoredCacheEntry::V1(CacheEntryV1 {
        category,
        value: value.to_vec(),
        stored_at: stored_at.as_millis(),
    });
    postcard::to_stdvec(&record).map_err(|e| StoreError::Codec(format!("encode cache entry: {e}")))
}

/// Decodes a persisted cache entry, returning its category and value bytes.
pub(crate) fn decode_cache_entry(bytes: &[u8]) -> Result<(CacheCategory, Vec<u8>), StoreError> {
    let v1 = decode_cache_record(bytes)?;
    Ok((v1.category, v1.value))
}

/// Decodes a persisted cache entry's category and the time it was stored (for listing and
/// clearing the cache; the value is not returned).
pub(crate) fn decode_cache_entry_meta(
    bytes: &[u8],
) -> Result<(CacheCategory, Timestamp), StoreError> {
    let v1 = decode_cache_record(bytes)?;
    Ok((v1.category, Timestamp::from_millis(v1.stored_at)))
}

/// A persisted cache entry in this build's latest form.
fn decode_cache_record(bytes: &[u8]) -> Result<CacheEntryV1, StoreError> {
    let record: StoredCacheEntry = postcard::from_bytes(bytes).map_err(|e| {
        envelope_error(
            "cache entry",
            CACHE_ENTRY_VERSIONS,
            bytes,
            &e,
            reads_as_latest_cache_entry,
        )
    })?;
    match record {
        StoredCacheEntry::V1(v1) => Ok(v1),
    }
}

/// Encodes any value for the cache (not versioned: cached values are re-computable).
pub(crate) fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Codec(format!("encode value: {e}")))
}

/// Decodes a cached value.
pub(crate) fn decode_value<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Codec(format!("decode value: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_record_from_a_newer_schema_says_so() {
        let memory = Memory {
            id: MemoryId::from_u128(7),
            namespace: Namespace::Global,
            memory_type: MemoryType::Insight,
            content: "kept".into(),
            summary: None,
            keywords: Vec::new(),
            tags: Vec::new(),
            context: None,
            importance: 5,
            confidence: 1.0,
            created_at: Timestamp::from_millis(1),
            updated_at: Timestamp::from_millis(1),
            last_accessed_at: Timestamp::from_millis(1),
            access_count: 0,
            expires_at: None,
            archived: false,
        };
        let mut bytes = encode_memory(&memory).unwrap();
        // The envelope's variant is the first byte: V1 is 0; 1 would be a V2 this build lacks.
        assert_eq!(bytes[0], 0);
        bytes[0] = 1;
        let error = decode_memory(&bytes).unwrap_err().to_string();
        assert!(
            error.contains(
                "written by a newer tetrarch (memory version 2; this one reads versions 1 to 1)"
            ),
            "{error}"
        );
        assert!(!error.contains("damaged"), "{error}");
        // Damage that is not a version stays a decoding error.
        let error = decode_memory(&[0, 0xff]).unwrap_err().to_string();
        assert!(!error.contains("newer"), "{error}");
        assert!(error.contains("damaged"), "{error}");
        let error = decode_memory(&[]).unwrap_err().to_string();
        assert!(error.contains("damaged (empty)"), "{error}");
        let mut entry =
            encode_cache_entry(CacheCategory::ToolResult, b"v", Timestamp::now()).unwrap();
        entry[0] = 3;
        let error = decode_cache_entry(&entry).unwrap_err().to_string();
        assert!(error.contains("cache entry version 4"), "{error}");
    }

    /// Garbage whose first byte is above this build's version was said to be "written by a
    /// newer tetrarch". That is said only when the tag is close above ours and the rest reads as
    /// a record; otherwise it may be either, and is said as both.
    #[test]
    fn garbage_with_a_high_first_byte_is_not_called_newer_for_sure() {
        for garbage in [
            &b"\x01 plain text, no record"[..],
            b"\x05\xff\xff\xff",
            b"\x7f",
        ] {
            let error = decode_memory(garbage).unwrap_err().to_string();
            assert!(
                error.contains("damaged or written by a newer tetrarch"),
                "{garbage:?}: {error}"
            );
        }
        // Far above any version this build could be behind: damage, or a newer one.
        let mut bytes = encode_memory(&Memory {
            id: MemoryId::from_u128(1),
            namespace: Namespace::Global,
            memory_type: MemoryType::Insight,
            content: "x".into(),
            summary: None,
            keywords: vec![],
            tags: vec![],
            context: None,
            importance: 5,
            confidence: 1.0,
            created_at: Timestamp::from_millis(1),
            updated_at: Timestamp::from_millis(1),
            last_accessed_at: Timestamp::from_millis(1),
            access_count: 0,
            expires_at: None,
            archived: false,
        })
        .unwrap();
        bytes[0] = 100;
        let error = decode_memory(&bytes).unwrap_err().to_string();
        assert!(
            error.contains("damaged or written by a newer tetrarch (memory version 101"),
            "{error}"
        );
    }

    fn arb_namespace() -> impl Strategy<Value = Namespace> {
        prop_oneof![
            Just(Namespace::Global),
            "[a-z0-9_-]{1,12}".prop_map(Namespace::Project),
            ("[a-z0-9_-]{1,12}", "[A-Za-z0-9.-]{1,12}")
                .prop_map(|(project, id)| Namespace::Session { project, id }),
        ]
    }

    prop_compose! {
        fn arb_memory()(
            id in any::<u128>(),
            namespace in arb_namespace(),
            type_index in 0..MemoryType::ALL.len(),
            content in ".{0,200}",
            summary in proptest::option::of(".{0,40}"),
            keywords in proptest::collection::vec("\\PC{0,10}", 0..5),
            tags in proptest::collection::vec("[a-z]{1,8}", 0..5),
            context in proptest::option::of(".{0,40}"),
            importance in 1u8..=10,
            confidence in 0.0f32..=1.0,
            times in any::<(i64, i64, i64)>(),
            access_count in any::<u64>(),
            expires_at in proptest::option::of(any::<i64>()),
            archived in any::<bool>(),
        ) -> Memory {
            Memory {
                id: MemoryId::from_u128(id),
                namespace,
                memory_type: MemoryType::ALL[type_index],
                content,
                summary,
                keywords,
                tags,
                context,
                importance,
                confidence,
                created_at: Timestamp::from_millis(times.0),
                updated_at: Timestamp::from_millis(times.1),
                last_accessed_at: Timestamp::from_millis(times.2),
                access_count,
                expires_at: expires_at.map(Timestamp::from_millis),
                archived,
            }
        }
    }

    proptest! {
        #[test]
        fn memory_round_trips(memory in arb_memory()) {
            let bytes = encode_memory(&memory).unwrap();
            prop_assert_eq!(decode_memory(&bytes).unwrap(), memory);
        }

        #[test]
        fn cache_entry_round_trips(value in proptest::collection::vec(any::<u8>(), 0..300), at in any::<i64>()) {
            let bytes = encode_cache_entry(CacheCategory::Technique, &value, Timestamp::from_millis(at)).unwrap();
            let (category, decoded) = decode_cache_entry(&bytes).unwrap();
            prop_assert_eq!(decode_cache_entry_meta(&bytes).unwrap(), (CacheCategory::Technique, Timestamp::from_millis(at)));
            prop_assert_eq!(category, CacheCategory::Technique);
            prop_assert_eq!(decoded, value);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_memory(&bytes);
            let _ = decode_cache_entry(&bytes);
            let _ = decode_cache_entry_meta(&bytes);
        }
    }

    #[test]
    fn envelope_tag_is_the_first_byte() {
        // The version tag leads the record, so a reader can dispatch on it before decoding.
        let memory = Memory {
            id: MemoryId::new(),
            namespace: Namespace::Global,
            memory_type: MemoryType::Insight,
            content: "x".into(),
            summary: None,
            keywords: vec![],
            tags: vec![],
            context: None,
            importance: 5,
            confidence: 1.0,
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
            last_accessed_at: Timestamp::now(),
            access_count: 0,
            expires_at: None,
            archived: false,
        };
        assert_eq!(encode_memory(&memory).unwrap()[0], 0);
    }
}
