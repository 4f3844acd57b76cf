//! The store's behaviour through its public API.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tetrarch::store::{
    CacheCategory, CacheError, CacheKey, CacheTtls, ContextCache, MemoryPatch, MemoryType,
    Namespace, NewMemory, SearchOptions, Store, StoreConfig, StoreError, Timestamp,
};

fn project(name: &str) -> Namespace {
    Namespace::project(name).unwrap()
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap()
}

fn fast_housekeeping() -> StoreConfig {
    StoreConfig {
        housekeeping_interval: Duration::from_millis(50),
        ..StoreConfig::default()
    }
}

#[tokio::test]
async fn a_stored_memory_is_readable_searchable_and_listed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut new = NewMemory::new(
        project("demo"),
        "the smoke shader spills registers on sm_90",
    );
    new.summary = Some("register spill".into());
    new.tags = vec!["gpu".into()];
    new.importance = 8;
    new.memory_type = MemoryType::BugFix;
    let id = store.store(new).await.unwrap();

    let memory = store.get(id).unwrap();
    assert_eq!(memory.content, "the smoke shader spills registers on sm_90");
    assert_eq!(memory.importance, 8);
    assert_eq!(memory.access_count, 1);

    let hits = store.search("spilling shaders", &SearchOptions::default());
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].memory.id, id);
    assert_eq!(hits[0].matched_terms, 2);
    assert!(hits[0].score > 0.0);

    let recent = store.list_recent(Some(&project("demo")), 5);
    assert_eq!(recent.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
    assert!(store.list_recent(Some(&project("other")), 5).is_empty());

    let stats = store.stats(None);
    assert_eq!(stats.live, 1);
    assert_eq!(stats.by_type.get(&MemoryType::BugFix), Some(&1));
    assert!(stats.namespaces["project:demo"].bytes > 40);
}

#[tokio::test]
async fn search_filters_by_namespace_tags_and_importance() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut ids = Vec::new();
    for (ns, tags, importance) in [
        ("a", vec!["gpu"], 9),
        ("a", vec!["cpu"], 9),
        ("b", vec!["gpu"], 2),
        ("b", vec!["gpu", "HDR"], 6),
    ] {
        let mut new = NewMemory::new(project(ns), "tone mapping exposure");
        new.tags = tags.into_iter().map(String::from).collect();
        new.importance = importance;
        ids.push(store.store(new).await.unwrap());
    }
    let search = |options: SearchOptions| {
        let mut found: Vec<_> = store
            .search("exposure", &options)
            .into_iter()
            .map(|h| h.memory.id)
            .collect();
        found.sort();
        found
    };
    assert_eq!(
        search(SearchOptions {
            namespace: Some(project("a")),
            ..Default::default()
        }),
        vec![ids[0], ids[1]]
    );
    // A limit far past the store's size means all of them (it aborted on allocation).
    for limit in [1 << 40, usize::MAX] {
        let all = search(SearchOptions {
            limit,
            ..Default::default()
        });
        assert_eq!(all, ids, "limit {limit}");
    }
    assert_eq!(
        search(SearchOptions {
            tags: vec!["gpu".into()],
            ..Default::default()
        }),
        vec![ids[0], ids[2], ids[3]]
    );
    // Tags compare without case, both ways round.
    for wanted in [["gpu", "hdr"], ["GPU", "Hdr"]] {
        assert_eq!(
            search(SearchOptions {
                tags: wanted.iter().map(|t| (*t).to_owned()).collect(),
                ..Default::default()
            }),
            vec![ids[3]],
            "{wanted:?}"
        );
    }
    assert!(
        search(SearchOptions {
            tags: vec!["hd".into()],
            ..Default::default()
        })
        .is_empty()
    );
    // A tag given exactly as stored is found, whatever its case folds to (`str::to_lowercase`
    // makes a final Σ a ς; a character-wise fold does not), and the full folds of ß and ς make
    // the spellings one tag, as they make words one term.
    let mut greek = NewMemory::new(project("c"), "tone mapping exposure");
    greek.tags = vec!["ΟΔΟΣ".into()];
    let greek = store.store(greek).await.unwrap();
    for wanted in ["ΟΔΟΣ", "οδοσ", "οδος"] {
        assert_eq!(
            search(SearchOptions {
                tags: vec![wanted.into()],
                ..Default::default()
            }),
            vec![greek],
            "{wanted}"
        );
    }
    let mut street = NewMemory::new(project("c"), "tone mapping exposure");
    street.tags = vec!["Straße".into()];
    let street = store.store(street).await.unwrap();
    for wanted in ["Straße", "STRASSE", "strasse", "STRAẞE"] {
        assert_eq!(
            search(SearchOptions {
                tags: vec![wanted.into()],
                ..Default::default()
            }),
            vec![street],
            "{wanted}"
        );
    }
    assert_eq!(
        search(SearchOptions {
            min_importance: Some(6),
            namespace: Some(project("b")),
            ..Default::default()
        }),
        vec![ids[3]]
    );
}

#[tokio::test]
async fn update_and_archive_change_what_search_and_recent_see() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let id = store
        .store(NewMemory::new(
            Namespace::Global,
            "volumetric smoke density",
        ))
        .await
        .unwrap();
    let updated = store
        .update(
            id,
            MemoryPatch {
                content: Some("plasma emission colour".into()),
                importance: Some(9),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.importance, 9);
    assert!(store.search("smoke", &SearchOptions::default()).is_empty());
    assert_eq!(store.search("plasma", &SearchOptions::default()).len(), 1);

    store.archive(id).await.unwrap();
    assert!(store.search("plasma", &SearchOptions::default()).is_empty());
    assert!(store.list_recent(None, 10).is_empty());
    let archived = store.get(id).unwrap();
    assert!(archived.archived);
    assert_eq!(archived.content, "plasma emission colour");
    let stats = store.stats(None);
    assert_eq!((stats.live, stats.archived), (0, 1));
    assert!(matches!(
        store.update(id, MemoryPatch::default()).await,
        Err(StoreError::Archived(_))
    ));
}

/// Search hits and recent lists share the store's copy of a memory: its access statistics are
/// those last written (after `sync`, those `get` counted), neither counts as an access, and an
/// update after the statistics were written is what the next search returns.
#[tokio::test]
async fn shared_memories_carry_the_access_statistics_last_written_and_the_newest_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let id = store
        .store(NewMemory::new(
            Namespace::Global,
            "caustics converge slowly",
        ))
        .await
        .unwrap();
    let mut last_read = store.get(id).unwrap();
    for _ in 0..2 {
        last_read = store.get(id).unwrap();
    }
    store.sync().await.unwrap();
    let before = store.search("caustics", &SearchOptions::default());
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].memory.access_count, 3);
    assert_eq!(
        before[0].memory.last_accessed_at,
        last_read.last_accessed_at
    );
    let recent = store.list_recent(None, 10);
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].access_count, 3);
    assert_eq!(
        store.get(id).unwrap().access_count,
        4,
        "a search or a recent list counted as an access"
    );

    store
        .update(
            id,
            MemoryPatch {
                content: Some("caustics converge faster with photon guiding".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let after = store.search("caustics", &SearchOptions::default());
    assert_eq!(after.len(), 1);
    assert_eq!(
        after[0].memory.content,
        "caustics converge faster with photon guiding"
    );
    assert_eq!(after[0].memory.access_count, 4);
    // A hit taken earlier keeps the version it was given.
    assert_eq!(before[0].memory.content, "caustics converge slowly");
}

#[tokio::test]
async fn a_sync_in_the_same_batch_as_an_update_or_archive_keeps_them() {
    // A `sync` writes the access statistics `get` gathered; in the same batch as an update or
    // an archive of that memory it must not write the older version back over it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (mut updated, mut archived) = (Vec::new(), Vec::new());
    {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        for round in 0..20 {
            let id = store
                .store(NewMemory::new(
                    project("sync"),
                    format!("version one {round}"),
                ))
                .await
                .unwrap();
            store.get(id).unwrap();
            let patch = MemoryPatch {
                content: Some(format!("version two {round}")),
                ..MemoryPatch::default()
            };
            let (update, sync) = tokio::join!(store.update(id, patch), store.sync());
            update.unwrap();
            sync.unwrap();
            updated.push((id, round));
            let id = store
                .store(NewMemory::new(
                    project("sync"),
                    format!("to archive {round}"),
                ))
                .await
                .unwrap();
            store.get(id).unwrap();
            let (archive, sync) = tokio::join!(store.archive(id), store.sync());
            archive.unwrap();
            sync.unwrap();
            archived.push(id);
        }
    }
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    for (id, round) in updated {
        assert_eq!(
            store.get(id).unwrap().content,
            format!("version two {round}")
        );
    }
    for id in archived {
        assert!(
            store.get(id).unwrap().archived,
            "{id:?} came back unarchived"
        );
    }
    assert!(
        store
            .search("archive", &SearchOptions::default())
            .is_empty()
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_a_typed_error_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let kept = store
        .store(NewMemory::new(Namespace::Global, "kept"))
        .await
        .unwrap();
    let big = "x".repeat(1024 * 1024 + 1);
    assert!(matches!(
        store.store(NewMemory::new(Namespace::Global, big)).await,
        Err(StoreError::ContentTooLarge {
            size: 1_048_577,
            limit: 1_048_576
        })
    ));
    let mut bad = NewMemory::new(Namespace::Global, "x");
    bad.importance = 0;
    assert!(matches!(
        store.store(bad.clone()).await,
        Err(StoreError::InvalidImportance { value: 0 })
    ));
    bad.importance = 5;
    bad.confidence = 1.5;
    assert!(matches!(
        store.store(bad.clone()).await,
        Err(StoreError::InvalidConfidence { .. })
    ));
    bad.confidence = f32::NAN;
    assert!(store.store(bad).await.is_err());
    assert!(matches!(
        store
            .update(
                kept,
                MemoryPatch {
                    importance: Some(11),
                    ..Default::default()
                }
            )
            .await,
        Err(StoreError::InvalidImportance { value: 11 })
    ));
    let unknown = "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap();
    assert!(matches!(store.get(unknown), Err(StoreError::NotFound(_))));
    assert!(matches!(
        store.archive(unknown).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        "not-a-uuid".parse::<tetrarch::store::MemoryId>(),
        Err(StoreError::InvalidId { .. })
    ));
    assert_eq!(store.get(kept).unwrap().content, "kept");
    assert_eq!(store.get(kept).unwrap().importance, 5);

    // A namespace built from the enum with a name its printed form cannot hold (stored, it
    // made the whole file unreadable at the next open).
    assert!(matches!(
        store
            .store(NewMemory::new(Namespace::Project("my project".into()), "x"))
            .await,
        Err(StoreError::InvalidNamespace { .. })
    ));
    // Every text field is limited, not only the content.
    let mut wordy = NewMemory::new(Namespace::Global, "short");
    wordy.summary = Some("s".repeat(1024 * 1024 + 1));
    assert!(matches!(
        store.store(wordy).await,
        Err(StoreError::FieldTooLarge {
            field: "summary",
            ..
        })
    ));
    let mut tagged = NewMemory::new(Namespace::Global, "short");
    tagged.tags = vec!["t".repeat(600 * 1024), "u".repeat(600 * 1024)];
    assert!(matches!(
        store.store(tagged).await,
        Err(StoreError::FieldTooLarge { field: "tags", .. })
    ));
    // Each item counts a byte more than its text: empty keywords by the million are not free.
    let mut empty_keywords = NewMemory::new(Namespace::Global, "short");
    empty_keywords.keywords = vec![String::new(); 1024 * 1024 + 1];
    assert!(matches!(
        store.store(empty_keywords).await,
        Err(StoreError::FieldTooLarge {
            field: "keywords",
            ..
        })
    ));
    // Expiries the store cannot keep: under its 1 ms resolution, or past the year 9999.
    for ttl in [
        Duration::from_micros(500),
        Duration::MAX,
        Duration::from_secs(9000 * 366 * 86_400),
    ] {
        let mut fleeting = NewMemory::new(Namespace::Global, "x");
        fleeting.ttl = Some(ttl);
        let refused = store.store(fleeting).await.unwrap_err();
        assert!(
            matches!(refused, StoreError::InvalidExpiry { .. }),
            "{ttl:?}: {refused}"
        );
    }
    assert!(matches!(
        store
            .update(
                kept,
                MemoryPatch {
                    expires_at: Some(Some(tetrarch::store::Timestamp::from_millis(i64::MAX))),
                    ..Default::default()
                }
            )
            .await,
        Err(StoreError::InvalidExpiry { .. })
    ));
    // Nothing of it was stored, and the file still opens.
    assert_eq!(store.stats(None).live, 1);
    drop(store);
    let reopened = open(&dir);
    assert_eq!(reopened.get(kept).unwrap().content, "kept");
}

#[tokio::test]
async fn expired_memories_vanish_and_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = Store::open(&path, fast_housekeeping()).unwrap();
    let mut short = NewMemory::new(Namespace::Global, "ephemeral note");
    // Long enough for two fsync'd stores and a search on a loaded machine.
    let ttl = Duration::from_millis(1500);
    short.ttl = Some(ttl);
    let stored_at = tokio::time::Instant::now();
    let gone = store.store(short).await.unwrap();
    let stays = store
        .store(NewMemory::new(Namespace::Global, "ephemeral but permanent"))
        .await
        .unwrap();
    let hits = store.search("ephemeral", &SearchOptions::default()).len();
    assert!(
        stored_at.elapsed() < ttl,
        "too slow to see it before it expired"
    );
    assert_eq!(hits, 2);
    tokio::time::sleep_until(stored_at + ttl + Duration::from_millis(50)).await;
    // Gone from reads at its expiry time, whether or not the purge has run.
    assert!(matches!(store.get(gone), Err(StoreError::NotFound(_))));
    let hits = store.search("ephemeral", &SearchOptions::default());
    assert_eq!(
        hits.iter().map(|h| h.memory.id).collect::<Vec<_>>(),
        vec![stays]
    );
    assert_eq!(store.list_recent(None, 10).len(), 1);
    // And purged from the file and the counters by the background tick (every 50 ms here; a
    // loaded machine may delay it, so wait for it rather than for a fixed time).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.stats(None).live != 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.stats(None).live, 1, "not purged within 10 s");
    drop(store);
    let reopened = Store::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(reopened.stats(None).live, 1);
    assert!(matches!(reopened.get(gone), Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn an_idle_store_does_not_write_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = Store::open(&path, fast_housekeeping()).unwrap();
    let id = store
        .store(NewMemory::new(Namespace::Global, "written once"))
        .await
        .unwrap();
    // A read queues access statistics, which a sync writes (as the next tick would); then
    // nothing is left to do.
    store.get(id).unwrap();
    store.sync().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let modified = || std::fs::metadata(&path).unwrap().modified().unwrap();
    let before = modified();
    // Eight housekeeping ticks with nothing to do: each one used to commit (and fsync) an
    // empty transaction.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(modified(), before, "the idle store wrote its file");
    store
        .store(NewMemory::new(Namespace::Global, "written twice"))
        .await
        .unwrap();
    assert_ne!(modified(), before);
}

#[tokio::test]
async fn reopening_rebuilds_the_index_and_keeps_access_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let mut ids = Vec::new();
    for i in 0..50 {
        let ns = project(&format!("p{}", i % 3));
        ids.push(
            store
                .store(NewMemory::new(
                    ns,
                    format!("render pass {i} uses shadow maps"),
                ))
                .await
                .unwrap(),
        );
    }
    store.archive(ids[0]).await.unwrap();
    store.get(ids[1]).unwrap();
    store.get(ids[1]).unwrap();
    let before = (
        store.search("shadow render", &SearchOptions::default()),
        store.list_recent(Some(&project("p1")), 7),
        store.stats(None),
    );
    drop(store);
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let after = (
        store.search("shadow render", &SearchOptions::default()),
        store.list_recent(Some(&project("p1")), 7),
        store.stats(None),
    );
    assert_eq!(
        before.0.iter().map(|h| h.memory.id).collect::<Vec<_>>(),
        after.0.iter().map(|h| h.memory.id).collect::<Vec<_>>()
    );
    assert_eq!(
        before.1.iter().map(|m| m.id).collect::<Vec<_>>(),
        after.1.iter().map(|m| m.id).collect::<Vec<_>>()
    );
    assert_eq!(before.2, after.2);
    assert_eq!(after.2.archived, 1);
    assert_eq!(store.get(ids[1]).unwrap().access_count, 3);
}

#[test]
fn a_store_open_elsewhere_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let _first = Store::open(&path, StoreConfig::default()).unwrap();
    match Store::open(&path, StoreConfig::default()) {
        Err(StoreError::AlreadyOpen { path: p }) => assert_eq!(p, path),
        other => panic!("expected AlreadyOpen, got {other:?}"),
    }
}

#[test]
fn files_that_are_not_stores_are_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, b"this is not a database at all, just text").unwrap();
    let error = Store::open(&garbage, StoreConfig::default()).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    assert!(error.to_string().contains("garbage.redb"), "{error}");
    // The file is left as it was.
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        b"this is not a database at all, just text"
    );
}

#[tokio::test]
async fn a_damaged_store_is_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        for i in 0..200 {
            store
                .store(NewMemory::new(Namespace::Global, format!("memory {i}")))
                .await
                .unwrap();
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    // Overwrite the file's body (past the header) with noise.
    for (i, b) in bytes[4096.min(len / 2)..].iter_mut().enumerate() {
        *b = (i * 131 % 251) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    // Either a clear error or, if redb's repair recovers, a working store; never a panic.
    let outcome = std::panic::catch_unwind(|| Store::open(&path, StoreConfig::default()));
    match outcome {
        Ok(Err(e)) => assert!(e.to_string().contains("store.redb"), "{e}"),
        Ok(Ok(_)) => {}
        Err(_) => panic!("opening a damaged store panicked"),
    }
}

#[tokio::test]
async fn many_concurrent_writers_are_all_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..32 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..20 {
                let ns = Namespace::session("demo", &format!("c{client}")).unwrap();
                ids.push(
                    store
                        .store(NewMemory::new(ns, format!("client {client} write {i}")))
                        .await
                        .unwrap(),
                );
            }
            ids
        });
    }
    let mut all = Vec::new();
    while let Some(ids) = tasks.join_next().await {
        all.extend(ids.unwrap());
    }
    assert_eq!(all.len(), 640);
    assert_eq!(store.stats(None).live, 640);
    for id in all {
        store.get(id).unwrap();
    }
}

#[tokio::test]
async fn the_cache_computes_once_per_key_and_counts_hits() {
    let cache = ContextCache::new(CacheTtls::default(), 1 << 20, None);
    let runs = Arc::new(AtomicUsize::new(0));
    let key = CacheKey::new("read_file", &("src/main.rs", 0u32)).unwrap();
    let mut waiters = Vec::new();
    for _ in 0..8 {
        let cache = cache.clone();
        let runs = runs.clone();
        waiters.push(tokio::spawn(async move {
            cache
                .get_or_compute(key, CacheCategory::FileRead, async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::io::Error>(String::from("fn main() {}"))
                })
                .await
        }));
    }
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap(), "fn main() {}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "single-flight");
    let stats = cache.stats().total();
    assert_eq!((stats.hits, stats.misses), (7, 1));
    // Different arguments are a different key.
    assert_ne!(
        key,
        CacheKey::new("read_file", &("src/lib.rs", 0u32)).unwrap()
    );
    assert_ne!(
        key,
        CacheKey::new("stat_file", &("src/main.rs", 0u32)).unwrap()
    );
}

#[tokio::test]
async fn cache_entries_expire_by_category_and_failures_are_not_cached() {
    let ttls = CacheTtls {
        file_read: Duration::from_millis(100),
        ..CacheTtls::default()
    };
    let cache = ContextCache::new(ttls, 1 << 20, None);
    let key = CacheKey::new("f", &1u8).unwrap();
    let failed = cache
        .get_or_compute::<u32, _, _>(key, CacheCategory::FileRead, async {
            Err::<u32, _>(std::io::Error::other("disk gone"))
        })
        .await;
    assert!(matches!(
        failed.as_ref().map_err(|e| &**e),
        Err(CacheError::Compute(_))
    ));
    let v = cache
        .get_or_compute(key, CacheCategory::FileRead, async {
            Ok::<_, std::io::Error>(1u32)
        })
        .await
        .unwrap();
    assert_eq!(v, 1);
    let v = cache
        .get_or_compute(key, CacheCategory::FileRead, async {
            Ok::<_, std::io::Error>(2u32)
        })
        .await
        .unwrap();
    assert_eq!(v, 1, "served from cache within the TTL");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let v = cache
        .get_or_compute(key, CacheCategory::FileRead, async {
            Ok::<_, std::io::Error>(3u32)
        })
        .await
        .unwrap();
    assert_eq!(v, 3, "recomputed after the TTL");
    let research_key = CacheKey::new("f", &2u8).unwrap();
    cache
        .get_or_compute(research_key, CacheCategory::Research, async {
            Ok::<_, std::io::Error>(5u32)
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let v = cache
        .get_or_compute(research_key, CacheCategory::Research, async {
            Ok::<_, std::io::Error>(6u32)
        })
        .await
        .unwrap();
    assert_eq!(v, 5, "research entries live 30 minutes");
}

#[tokio::test]
async fn technique_patterns_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let key = CacheKey::new("technique", &"volumetric raymarch").unwrap();
    {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let cache = ContextCache::new(CacheTtls::default(), 1 << 20, Some(store));
        let v = cache
            .get_or_compute(key, CacheCategory::Technique, async {
                Ok::<_, std::io::Error>(vec!["step 1".to_string(), "step 2".to_string()])
            })
            .await
            .unwrap();
        assert_eq!(v.len(), 2);
    }
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let cache = ContextCache::new(CacheTtls::default(), 1 << 20, Some(store));
    let v: Vec<String> = cache
        .get_or_compute(key, CacheCategory::Technique, async {
            Err::<Vec<String>, _>(std::io::Error::other("must not be computed again"))
        })
        .await
        .unwrap();
    assert_eq!(v, vec!["step 1".to_string(), "step 2".to_string()]);
    assert_eq!(cache.stats().total().hits, 1);
}

#[tokio::test]
async fn a_persisted_entry_that_no_longer_decodes_is_computed_again_and_a_removed_one_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let key = CacheKey::new("technique", &"renamed type").unwrap();
    {
        // Written by a build whose value was a short string.
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let cache = ContextCache::new(CacheTtls::default(), 1 << 20, Some(store));
        cache
            .get_or_compute(key, CacheCategory::Technique, async {
                Ok::<_, std::io::Error>("hi".to_owned())
            })
            .await
            .unwrap();
    }
    // Read by one whose value is four numbers: recomputed, then persisted in its place.
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let cache = ContextCache::new(CacheTtls::default(), 1 << 20, Some(store.clone()));
    let v = cache
        .get_or_compute(key, CacheCategory::Technique, async {
            Ok::<_, std::io::Error>([1u64 << 40, 2, 3, 4])
        })
        .await
        .unwrap();
    assert_eq!(v, [1u64 << 40, 2, 3, 4]);
    let fresh = ContextCache::new(CacheTtls::default(), 1 << 20, Some(store));
    let again = fresh
        .get_or_compute(key, CacheCategory::Technique, async {
            Err::<[u64; 4], _>(std::io::Error::other("must come from the store"))
        })
        .await
        .unwrap();
    assert_eq!(again, [1u64 << 40, 2, 3, 4]);
    // Removed from memory and store: computed again.
    fresh.remove(key).await.unwrap();
    let recomputed = fresh
        .get_or_compute(key, CacheCategory::Technique, async {
            Ok::<_, std::io::Error>([5u64, 6, 7, 8])
        })
        .await
        .unwrap();
    assert_eq!(recomputed, [5, 6, 7, 8]);
}

#[tokio::test]
async fn compiled_kernels_are_cached_in_the_store_across_restarts() {
    use tetrarch::scoring::{KernelCache, KernelCacheKey, StoreKernelCache};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let key = KernelCacheKey {
        kernel: "flip.cu".into(),
        source_sha256: "ab".repeat(32),
        arch: "sm_90".into(),
        nvrtc_version: (12, 9),
    };
    {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let cache = StoreKernelCache::new(store.clone());
        assert_eq!(cache.load(&key), None);
        cache.save(&key, b"cubin bytes");
        store.sync().await.unwrap();
        assert_eq!(cache.load(&key).as_deref(), Some(&b"cubin bytes"[..]));
    }
    let cache = StoreKernelCache::new(Store::open(&path, StoreConfig::default()).unwrap());
    assert_eq!(cache.load(&key).as_deref(), Some(&b"cubin bytes"[..]));
    let other_arch = KernelCacheKey {
        arch: "sm_80".into(),
        ..key
    };
    assert_eq!(cache.load(&other_arch), None);
}

#[test]
fn a_configuration_the_writer_cannot_run_with_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (config, named) in [
        (
            StoreConfig {
                housekeeping_interval: Duration::ZERO,
                ..StoreConfig::default()
            },
            "housekeeping_interval",
        ),
        (
            StoreConfig {
                durability: tetrarch::store::DurabilityMode::Relaxed {
                    sync_interval: Duration::ZERO,
                },
                ..StoreConfig::default()
            },
            "sync_interval",
        ),
        (
            StoreConfig {
                max_content_bytes: 0,
                ..StoreConfig::default()
            },
            "max_content_bytes",
        ),
    ] {
        let err = Store::open(dir.path().join("s.redb"), config)
            .err()
            .unwrap();
        assert!(err.to_string().contains(named), "{err}");
    }
    assert!(!dir.path().join("s.redb").exists());
}

async fn cache_put(cache: &ContextCache, name: &str, category: CacheCategory) {
    let value = name.to_owned();
    cache
        .get_or_compute(CacheKey::new("test", name).unwrap(), category, async {
            Ok::<_, std::io::Error>(value)
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn the_persisted_cache_is_listed_and_cleared_by_category_and_age_durably() {
    use tetrarch::store::{CacheClearFilter, Timestamp};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let cut = {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let cache = ContextCache::new(CacheTtls::default(), 1 << 20, Some(store));
        cache_put(&cache, "old technique", CacheCategory::Technique).await;
        cache_put(&cache, "old result", CacheCategory::ToolResult).await;
        // Not persisted: never listed.
        cache_put(&cache, "a file", CacheCategory::FileRead).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cut = Timestamp::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        cache_put(&cache, "new technique", CacheCategory::Technique).await;
        cache_put(&cache, "new result", CacheCategory::ToolResult).await;
        cut
    };
    // An entry that does not decode (the table is the store's file format: u128 keys, bytes).
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table_def: redb::TableDefinition<u128, &[u8]> =
                redb::TableDefinition::new("context_cache");
            let mut table = txn.open_table(table_def).unwrap();
            table
                .insert(7u128, &b"\xff\xff\xff not an entry"[..])
                .unwrap();
        }
        txn.commit().unwrap();
    }

    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let usage = store.persisted_cache_usage().unwrap();
    let listed: Vec<_> = usage.iter().map(|u| (u.category, u.entries)).collect();
    assert_eq!(
        listed,
        [
            (Some(CacheCategory::Technique), 2),
            (Some(CacheCategory::ToolResult), 2),
            (None, 1)
        ]
    );
    assert!(usage.iter().all(|u| u.bytes > 0));
    assert!(usage[0].oldest.unwrap() < cut && cut < usage[0].newest.unwrap());
    assert_eq!((usage[2].oldest, usage[2].newest), (None, None));

    let cleared = store
        .clear_persisted_cache(CacheClearFilter {
            category: Some(CacheCategory::ToolResult),
            stored_before: Some(cut),
        })
        .await
        .unwrap();
    assert_eq!(cleared.entries, 1, "only the old tool result");
    assert!(cleared.bytes > 0);
    let cleared = store
        .clear_persisted_cache(CacheClearFilter {
            category: Some(CacheCategory::Technique),
            stored_before: None,
        })
        .await
        .unwrap();
    assert_eq!(
        cleared.entries, 2,
        "both techniques, not the entry without a category"
    );
    drop(store);

    // Durable: a reopened store lists what is left, and a cleared entry is computed again.
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let listed: Vec<_> = store
        .persisted_cache_usage()
        .unwrap()
        .iter()
        .map(|u| (u.category, u.entries))
        .collect();
    assert_eq!(listed, [(Some(CacheCategory::ToolResult), 1), (None, 1)]);
    let cache = ContextCache::new(CacheTtls::default(), 1 << 20, Some(store.clone()));
    let kept: String = cache
        .get_or_compute(
            CacheKey::new("test", "new result").unwrap(),
            CacheCategory::ToolResult,
            async { Err::<String, _>(std::io::Error::other("must come from the store")) },
        )
        .await
        .unwrap();
    assert_eq!(kept, "new result");
    let recomputed: String = cache
        .get_or_compute(
            CacheKey::new("test", "old technique").unwrap(),
            CacheCategory::Technique,
            async { Ok::<_, std::io::Error>("recomputed".to_owned()) },
        )
        .await
        .unwrap();
    assert_eq!(recomputed, "recomputed");

    // No filter: everything, the entry that does not decode too.
    let cleared = store
        .clear_persisted_cache(CacheClearFilter::default())
        .await
        .unwrap();
    assert_eq!(cleared.entries, 3);
    assert!(store.persisted_cache_usage().unwrap().is_empty());
    assert_eq!(
        store
            .clear_persisted_cache(CacheClearFilter::default())
            .await
            .unwrap()
            .entries,
        0
    );
}

/// `update` took an expiry already past, and the memory vanished at once. It is refused, like a
/// time to live under 1 ms for `store`, and the memory is left as it was.
#[tokio::test]
async fn an_update_to_an_expiry_already_past_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let id = store
        .store(NewMemory::new(Namespace::Global, "still wanted"))
        .await
        .unwrap();
    let now = Timestamp::now().as_millis();
    for at in [now - 60_000, now, 0] {
        let patch = MemoryPatch {
            expires_at: Some(Some(Timestamp::from_millis(at))),
            ..MemoryPatch::default()
        };
        let error = store.update(id, patch).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::InvalidExpiry { detail } if detail.contains("not in the future")),
            "{error}"
        );
    }
    let memory = store.get(id).unwrap();
    assert_eq!(memory.expires_at, None);
    assert_eq!(store.search("wanted", &SearchOptions::default()).len(), 1);
    let later = Timestamp::from_millis(now + 3_600_000);
    let patch = MemoryPatch {
        expires_at: Some(Some(later)),
        ..MemoryPatch::default()
    };
    assert_eq!(
        store.update(id, patch).await.unwrap().expires_at,
        Some(later)
    );
}

/// The in-memory cache was keyed by the key alone: a value filed as a file read, then asked
/// for as a technique, came back with the file read's time to live, and the technique was
/// never computed nor persisted. Each category now has its own entry.
#[tokio::test]
async fn the_same_key_asked_in_another_category_is_its_own_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let key = CacheKey::new("lookup", &"shared args").unwrap();
    {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let cache = ContextCache::new(CacheTtls::default(), 1 << 20, Some(store));
        let read: String = cache
            .get_or_compute(key, CacheCategory::FileRead, async {
                Ok::<_, std::io::Error>("file contents".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(read, "file contents");
        let technique: String = cache
            .get_or_compute(key, CacheCategory::Technique, async {
                Ok::<_, std::io::Error>("technique pattern".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(technique, "technique pattern");
        let again: String = cache
            .get_or_compute(key, CacheCategory::FileRead, async {
                Ok::<_, std::io::Error>("not computed again".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(again, "file contents");
    }
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let cache = ContextCache::new(CacheTtls::default(), 1 << 20, Some(store));
    let persisted: String = cache
        .get_or_compute(key, CacheCategory::Technique, async {
            Err::<String, _>(std::io::Error::other("must come from the store"))
        })
        .await
        .unwrap();
    assert_eq!(persisted, "technique pattern");
}

/// A store opened read-only reads what was stored without writing a byte of the file (no
/// access is counted either), shares the file with other read-only handles, keeps a writer out
/// while it is open, and refuses writes, naming the file.
#[tokio::test]
async fn a_store_opened_read_only_reads_without_writing_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let id = {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let id = store
            .store(NewMemory::new(Namespace::Global, "the quarterly report"))
            .await
            .unwrap();
        store.get(id).unwrap();
        id
    };
    let before = std::fs::read(&path).unwrap();
    {
        let reader = Store::open_read_only(&path, StoreConfig::default()).unwrap();
        let other = Store::open_read_only(&path, StoreConfig::default()).unwrap();
        assert!(reader.is_read_only() && other.is_read_only());
        let hits = reader.search("quarterly", &SearchOptions::default());
        assert_eq!(hits.len(), 1);
        assert_eq!(other.get(id).unwrap().access_count, 1);
        assert_eq!(other.get(id).unwrap().access_count, 1);
        assert_eq!(other.stats(None).live, 1);
        let writer = Store::open(&path, StoreConfig::default()).unwrap_err();
        assert!(matches!(writer, StoreError::AlreadyOpen { .. }), "{writer}");
        let refused = reader
            .store(NewMemory::new(Namespace::Global, "more"))
            .await
            .unwrap_err();
        assert!(matches!(refused, StoreError::ReadOnly { .. }), "{refused}");
        assert!(
            refused.to_string().contains(&path.display().to_string()),
            "{refused}"
        );
        assert!(matches!(
            other.archive(id).await,
            Err(StoreError::ReadOnly { .. })
        ));
    }
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a read-only open changed the file"
    );
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    assert!(!store.is_read_only());
    assert_eq!(store.get(id).unwrap().access_count, 2);
    let missing = Store::open_read_only(dir.path().join("none.redb"), StoreConfig::default());
    assert!(missing.is_err());
    assert!(
        !dir.path().join("none.redb").exists(),
        "a read-only open created a file"
    );
}

/// A file a crash left needing a repair (here, a copy taken while its store was open) is
/// opened as `Store::open` opens it: writable, repaired, with everything committed.
#[tokio::test]
async fn a_read_only_open_of_a_file_needing_a_repair_opens_it_writable() {
    let dir = tempfile::tempdir().unwrap();
    let (path, copy) = (dir.path().join("store.redb"), dir.path().join("copy.redb"));
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let id = store
        .store(NewMemory::new(
            Namespace::Global,
            "written before the crash",
        ))
        .await
        .unwrap();
    std::fs::copy(&path, &copy).unwrap();
    drop(store);
    let opened = Store::open_read_only(&copy, StoreConfig::default()).unwrap();
    assert!(!opened.is_read_only());
    assert_eq!(opened.get(id).unwrap().content, "written before the crash");
}

/// Memories with an excluded tag take no place in a search's limit or a recent list's: the
/// best other memory comes back even when excluded ones rank above it and are newer.
#[tokio::test]
async fn excluded_tags_take_no_place_in_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let wanted = store
        .store(NewMemory::new(project("p"), "lantern exposure"))
        .await
        .unwrap();
    for i in 0..5 {
        let mut record = NewMemory::new(
            project("p"),
            format!("lantern exposure lantern exposure copy {i}"),
        );
        record.tags = vec!["Context-Snapshot".into()];
        store.store(record).await.unwrap();
    }
    let options = SearchOptions {
        limit: 1,
        exclude_tags: vec!["context-snapshot".into()],
        ..Default::default()
    };
    let hits = store.search("lantern exposure", &options);
    assert_eq!(
        hits.iter().map(|h| h.memory.id).collect::<Vec<_>>(),
        [wanted]
    );
    let recent = store.list_recent_matching(Some(&project("p")), 1, |m| m.tags.is_empty());
    assert_eq!(recent.iter().map(|m| m.id).collect::<Vec<_>>(), [wanted]);
    assert_eq!(store.list_recent(Some(&project("p")), 10).len(), 6);
}

/// `store_many` stores in order and answers once committed; the first memory it refuses stops
/// it, with those before it stored and those after it not.
#[tokio::test]
async fn store_many_keeps_order_and_stops_at_the_first_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ids = store
        .store_many((0..3).map(|i| NewMemory::new(project("m"), format!("batch item {i}"))))
        .await
        .unwrap();
    let contents: Vec<String> = ids
        .iter()
        .map(|id| store.get(*id).unwrap().content)
        .collect();
    assert_eq!(contents, ["batch item 0", "batch item 1", "batch item 2"]);
    let mut bad = NewMemory::new(project("n"), "refused");
    bad.importance = 11;
    let refused = store
        .store_many([
            NewMemory::new(project("n"), "before the refusal"),
            bad,
            NewMemory::new(project("n"), "after the refusal"),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::InvalidImportance { .. }),
        "{refused}"
    );
    let kept: Vec<String> = store
        .list_recent(Some(&project("n")), 10)
        .iter()
        .map(|m| m.content.clone())
        .collect();
    assert_eq!(kept, ["before the refusal"]);
}

/// An archived memory that has since expired is not counted by a store opened after its expiry,
/// read-only included (no writer purges it there), as an expired live one is not.
#[tokio::test]
async fn an_archived_memory_past_its_expiry_is_not_counted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let mut short = NewMemory::new(Namespace::Global, "archived and fleeting");
    let ttl = Duration::from_millis(1500);
    short.ttl = Some(ttl);
    let stored_at = std::time::Instant::now();
    let id = store.store(short).await.unwrap();
    store.archive(id).await.unwrap();
    let kept = store
        .store(NewMemory::new(Namespace::Global, "archived for good"))
        .await
        .unwrap();
    store.archive(kept).await.unwrap();
    assert_eq!(store.stats(None).archived, 2);
    drop(store);
    std::thread::sleep(
        (stored_at + ttl + Duration::from_millis(50))
            .saturating_duration_since(std::time::Instant::now()),
    );
    let kept_bytes = {
        let reader = Store::open_read_only(&path, StoreConfig::default()).unwrap();
        let stats = reader.stats(None);
        assert_eq!(stats.archived, 1, "{stats:?}");
        stats.bytes
    };
    // Its purge by a writer then takes nothing off the counts (it was never counted).
    let store = Store::open(&path, fast_housekeeping()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = store.stats(None);
    assert_eq!((stats.archived, stats.bytes), (1, kept_bytes), "{stats:?}");
}
