//! Recovery: the store goes on after an I/O error, and opens with damaged records set aside.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use tetrarch::store::{Namespace, NewMemory, SearchOptions, Store, StoreConfig, StoreError};

const CHILD_ENV: &str = "TETRARCH_RECOVERY_TEST_STORE";

/// Every message in an error's chain, joined.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

/// The child process of the test below: the file size limit is per process, so it is lowered
/// here, never in the test binary's own process.
#[test]
#[ignore = "child process of writes_work_again_after_an_io_error_without_a_restart"]
fn io_error_child() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    // Over the limit, a write fails with EFBIG instead of killing the process with SIGXFSZ.
    // Blocked before any thread starts, so every thread (the store's writer too) inherits it.
    let mut xfsz = SigSet::empty();
    xfsz.add(Signal::SIGXFSZ);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&xfsz), None).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let kept = store
            .store(NewMemory::new(Namespace::Global, "kept before the failure"))
            .await
            .unwrap();

        let (soft, hard) = getrlimit(Resource::RLIMIT_FSIZE).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        setrlimit(Resource::RLIMIT_FSIZE, size, hard).unwrap();
        let big = "filler words ".repeat(80_000);
        let error = store
            .store(NewMemory::new(Namespace::Global, big))
            .await
            .unwrap_err();
        setrlimit(Resource::RLIMIT_FSIZE, soft, hard).unwrap();
        let text = chain(&error);
        assert!(matches!(error, StoreError::Database { .. }), "{text}");
        // The cause is kept in the chain, not flattened into a string of the first message.
        assert!(text.contains("File too large"), "{text}");

        // The failed write was not acknowledged: nothing of it is visible.
        assert_eq!(store.stats(None).live, 1);
        assert!(store.search("filler", &SearchOptions::default()).is_empty());

        // There is room again: writes work without a restart.
        let after = store
            .store(NewMemory::new(
                Namespace::Global,
                "stored after the failure",
            ))
            .await
            .unwrap_or_else(|e| panic!("a write after the I/O error failed: {}", chain(&e)));
        store.sync().await.unwrap();
        assert_eq!(store.get(kept).unwrap().content, "kept before the failure");
        assert_eq!(
            store.get(after).unwrap().content,
            "stored after the failure"
        );
        assert_eq!(store.stats(None).live, 2);
        drop(store);

        let store = Store::open(&path, StoreConfig::default()).unwrap();
        assert_eq!(store.stats(None).live, 2);
        assert!(store.get(kept).is_ok() && store.get(after).is_ok());
        assert!(store.search("filler", &SearchOptions::default()).is_empty());
    });
    println!("RECOVERY CHILD OK");
}

/// A write that failed on an I/O error (a file size limit here, a full disk in the field) left
/// redb refusing every later transaction, so every write failed with "begin write failed" until
/// the process restarted. The writer now reopens the file and goes on.
#[test]
fn writes_work_again_after_an_io_error_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "io_error_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("RECOVERY CHILD OK"),
        "child failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

const MEMORIES: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("memories");
const DAMAGED: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("damaged_memories");

/// One damaged or empty record refused the whole store at open. The good records load, the
/// bad ones are moved as they were to `damaged_memories` and counted.
#[tokio::test]
async fn damaged_records_are_set_aside_and_the_store_opens_with_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let ids = {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let mut ids = Vec::new();
        for text in ["first good memory", "second good memory"] {
            ids.push(
                store
                    .store(NewMemory::new(Namespace::Global, text))
                    .await
                    .unwrap(),
            );
        }
        ids
    };
    let bad: [(u128, &[u8]); 3] = [
        (7, b"\x05 not a memory at all"),
        (8, b""),
        (9, b"\x00\xff\xff"),
    ];
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(MEMORIES).unwrap();
            for (key, bytes) in bad {
                table.insert(key, bytes).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    for _ in 0..2 {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        assert_eq!(store.stats(None).live, 2);
        assert_eq!(store.stats(None).damaged, 3);
        assert_eq!(store.stats(Some(&Namespace::Global)).damaged, 0);
        for id in &ids {
            assert!(store.get(*id).is_ok());
        }
        assert_eq!(
            store.search("good memory", &SearchOptions::default()).len(),
            2
        );
    }
    let db = redb::Database::open(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let memories = txn.open_table(MEMORIES).unwrap();
    let damaged = txn.open_table(DAMAGED).unwrap();
    for (key, bytes) in bad {
        assert!(
            memories.get(key).unwrap().is_none(),
            "{key} still in memories"
        );
        assert_eq!(damaged.get(key).unwrap().unwrap().value(), bytes, "{key}");
    }
    drop((memories, damaged, txn, db));
    // `tetrarch mem stats` says so, not only `--json`.
    let out = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .arg("--store")
        .arg(&path)
        .args(["mem", "stats"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("live 2 ") && text.contains("damaged 3 ("),
        "{text}"
    );
}

/// A record a newer tetrarch wrote is not damage: the store is refused, naming it, and the
/// record stays where that tetrarch will look for it (moving it aside hid it from both).
#[tokio::test]
async fn a_record_of_a_newer_tetrarch_refuses_the_store_and_stays_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let id = {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        store
            .store(NewMemory::new(
                Namespace::Global,
                "a memory from the future",
            ))
            .await
            .unwrap()
    };
    let key = id.as_u128();
    let newer = {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let newer = {
            let mut table = txn.open_table(MEMORIES).unwrap();
            // The same body under the next version's tag: what a newer build's record reads as.
            let mut bytes = redb::ReadableTable::get(&table, key)
                .unwrap()
                .unwrap()
                .value()
                .to_vec();
            bytes[0] = 1;
            table.insert(key, bytes.as_slice()).unwrap();
            bytes
        };
        txn.commit().unwrap();
        newer
    };
    let error = Store::open(&path, StoreConfig::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("written by a newer tetrarch"), "{error}");
    let db = redb::Database::open(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let memories = txn.open_table(MEMORIES).unwrap();
    assert_eq!(
        memories.get(key).unwrap().unwrap().value(),
        newer.as_slice()
    );
}

/// Another application's redb file was taken over: tetrarch's tables were created in it. It is
/// now refused, and left with only its own tables.
#[test]
fn a_redb_file_of_another_application_is_refused_and_left_alone() {
    const USERS: redb::TableDefinition<u64, &str> = redb::TableDefinition::new("users");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(USERS).unwrap().insert(1, "ada").unwrap();
        txn.commit().unwrap();
    }
    let error = Store::open(&path, StoreConfig::default()).unwrap_err();
    assert!(
        matches!(&error, StoreError::Corrupt { detail, .. } if detail.contains("not a tetrarch store")),
        "{error}"
    );
    assert!(error.to_string().contains("other.redb"), "{error}");
    let db = redb::Database::open(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let tables: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| redb::TableHandle::name(&t).to_owned())
        .collect();
    assert_eq!(tables, ["users"]);
    assert_eq!(
        txn.open_table(USERS)
            .unwrap()
            .get(1)
            .unwrap()
            .unwrap()
            .value(),
        "ada"
    );
}

/// A file with tetrarch's schema but a table of ours with other types is refused as not a
/// tetrarch store (redb's type mismatch), not opened; an empty file becomes a store.
#[test]
fn a_table_of_other_types_is_refused_and_an_empty_file_becomes_a_store() {
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    const WRONG: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("memories");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema", 1u32.to_le_bytes().as_slice())
            .unwrap();
        txn.open_table(WRONG).unwrap().insert("x", 1).unwrap();
        txn.commit().unwrap();
    }
    let error = Store::open(&path, StoreConfig::default()).unwrap_err();
    assert!(
        matches!(&error, StoreError::Corrupt { detail, .. } if detail.contains("`memories` is not tetrarch's")),
        "{error}"
    );

    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    let store = Store::open(&empty, StoreConfig::default()).unwrap();
    assert_eq!(store.stats(None).live, 0);
}

/// The ids of the memories a read-only open of `path` finds, or `None` when it refuses the file
/// (or the engine panics on it).
fn readable_ids(path: &std::path::Path) -> Option<std::collections::BTreeSet<String>> {
    let opened = std::panic::catch_unwind(|| {
        let store = Store::open_read_only(path, StoreConfig::default()).ok()?;
        let ids = store
            .list_recent(None, 10_000)
            .iter()
            .map(|m| m.id.to_string())
            .collect();
        Some(ids)
    });
    opened.ok().flatten()
}

/// A write to a damaged store never costs what was readable before it: the write either works
/// or is refused, and every memory a reader saw is still there. (One damaged bit in redb's
/// record of free pages used to let the commit overwrite pages in use, and the file then read
/// as no store at all; other damage made the close panic.) Single-bit flips across the file's
/// written pages, from a fixed seed.
#[test]
fn a_write_to_a_damaged_store_never_loses_what_was_readable() {
    let dir = tempfile::tempdir().unwrap();
    let golden = dir.path().join("golden.redb");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(&golden, StoreConfig::default()).unwrap();
        for i in 0..30 {
            let text = format!("memory {i}: the poster render at quality {}", i % 7);
            store
                .store(NewMemory::new(Namespace::Global, text))
                .await
                .unwrap();
        }
    });
    let bytes = std::fs::read(&golden).unwrap();
    let written: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != 0).collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let case = dir.path().join("case.redb");
    let (mut readable, mut refused_writes) = (0, 0);
    for round in 0..300 {
        let mut damaged = bytes.clone();
        let at = written[(next() % written.len() as u64) as usize];
        damaged[at] ^= 1 << (next() % 8);
        std::fs::write(&case, &damaged).unwrap();
        let before = readable_ids(&case);
        let wrote = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let store = Store::open(&case, StoreConfig::default())?;
            runtime.block_on(store.store(NewMemory::new(Namespace::Global, "after the damage")))
        }));
        if !matches!(wrote, Ok(Ok(_))) {
            refused_writes += 1;
        }
        let Some(before) = before else { continue };
        readable += 1;
        let after = readable_ids(&case);
        assert!(
            after
                .as_ref()
                .is_some_and(|after| after.is_superset(&before)),
            "round {round}, bit flipped at byte {at}: {} memories readable before the write, \
             {:?} after it (write: {})",
            before.len(),
            after.map(|a| a.len()),
            match &wrote {
                Ok(Ok(_)) => "stored".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "panicked".to_owned(),
            }
        );
    }
    // The sweep met both kinds: damage readers get past, and writes the check refused.
    assert!(
        readable > 0 && refused_writes > 0,
        "{readable} readable, {refused_writes} refused"
    );
}
