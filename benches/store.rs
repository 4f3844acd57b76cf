//! `cargo bench --bench store`: the context store against SQLite FTS5 (Mnemosyne's backend), same
//! corpus, same machine, same run. Writes `target/bench/store.json`.
//!
//! Sizes: `TETRARCH_BENCH_SIZES` (comma-separated, default `10000,100000`).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, params};
use serde_json::{Value, json};
use tetrarch::store::{
    DurabilityMode, MemoryId, Namespace, NewMemory, SearchOptions, Store, StoreConfig,
};

const NAMESPACES: usize = 16;
const VOCABULARY: usize = 20_000;
const CONCURRENT_CLIENTS: usize = 64;
/// Durable stores each of the 64 clients makes in the concurrent row, on a store of N memories.
const STORES_PER_CLIENT: usize = 40;
/// The namespaces of the second corpus: a store that has served a thousand runs has a thousand
/// session namespaces, and a search over all of them must not pay for each.
const MANY_NAMESPACES: usize = 1000;

/// A deterministic synthetic corpus: Zipf-distributed words, 300-700 bytes per memory.
struct Corpus {
    words: Vec<String>,
    cumulative: Vec<f64>,
    rng: SmallRng,
}

impl Corpus {
    fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let syllables = [
            "ka", "ro", "mi", "tes", "lu", "van", "dor", "pe", "shi", "qua", "zen", "bri", "ol",
            "nax", "ti", "gra",
        ];
        let mut words = Vec::with_capacity(VOCABULARY);
        let mut seen = std::collections::HashSet::new();
        while words.len() < VOCABULARY {
            let n = rng.random_range(2..5);
            let w: String = (0..n)
                .map(|_| syllables[rng.random_range(0..syllables.len())])
                .collect();
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let mut cumulative = Vec::with_capacity(VOCABULARY);
        let mut total = 0.0;
        for rank in 1..=VOCABULARY {
            total += 1.0 / rank as f64;
            cumulative.push(total);
        }
        Corpus {
            words,
            cumulative,
            rng,
        }
    }

    fn word(&mut self) -> &str {
        let total = self.cumulative[VOCABULARY - 1];
        let x = self.rng.random::<f64>() * total;
        let i = self
            .cumulative
            .partition_point(|&c| c < x)
            .min(VOCABULARY - 1);
        &self.words[i]
    }

    fn text(&mut self) -> String {
        let target = self.rng.random_range(300..700);
        let mut text = String::with_capacity(target + 16);
        while text.len() < target {
            if !text.is_empty() {
                text.push(' ');
            }
            let w = self.word().to_string();
            text.push_str(&w);
        }
        text
    }

    /// A query of 2-3 words from the useful middle of the distribution (ranks 20-2000).
    fn query(&mut self) -> String {
        let n = self.rng.random_range(2..=3);
        (0..n)
            .map(|_| self.words[self.rng.random_range(20..2000)].clone())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn namespace(i: usize) -> Namespace {
    Namespace::project(&format!("bench{i}")).unwrap()
}

struct Percentiles {
    p50: f64,
    p99: f64,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    Percentiles {
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn time_each(n: usize, mut f: impl FnMut(usize)) -> Percentiles {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        f(i);
        samples.push(start.elapsed());
    }
    percentiles(samples)
}

fn fsync_baseline(dir: &Path) -> Percentiles {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    time_each(200, |i| {
        file.write_all(&[i as u8; 128]).unwrap();
        file.sync_all().unwrap();
    })
}

/// redb by itself, as the store uses it: one 500-byte record inserted under a time-ordered key
/// into a table already holding `n`, then a durable commit. The floor under a durable `store`.
fn redb_commit_floor(dir: &Path, n: usize) -> Percentiles {
    const TABLE: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("memories");
    let db = redb::Database::create(dir.join("redb-floor.redb")).unwrap();
    let value = vec![b'x'; 500];
    let mut key = 0u128;
    while key < n as u128 {
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(TABLE).unwrap();
            for _ in 0..4096.min(n as u128 - key) {
                key += 1;
                table.insert(key, value.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    time_each(300, |_| {
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(TABLE).unwrap();
            key += 1;
            table.insert(key, value.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    })
}

fn entry(p: &Percentiles) -> Value {
    json!({ "p50_us": round(p.p50), "p99_us": round(p.p99) })
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

struct Results {
    store: Percentiles,
    concurrent_per_s: f64,
    get: Percentiles,
    search: Percentiles,
    search_ns: Percentiles,
    recent: Percentiles,
    stats: Percentiles,
    reopen_ms: f64,
}

impl Results {
    fn json(&self) -> Value {
        json!({
            "store": entry(&self.store),
            "store_concurrent_per_s": self.concurrent_per_s.round(),
            "get": entry(&self.get),
            "search": entry(&self.search),
            "search_namespace": entry(&self.search_ns),
            "list_recent_20": entry(&self.recent),
            "stats": entry(&self.stats),
            "reopen_ms": round(self.reopen_ms),
        })
    }
}

fn bench_tetrarch(dir: &Path, n: usize, seed: u64) -> Results {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let path = dir.join("tetrarch.redb");
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let mut corpus = Corpus::new(seed);
    let texts: Vec<(usize, String)> = (0..n).map(|i| (i % NAMESPACES, corpus.text())).collect();
    let texts = Arc::new(texts);

    // Population: 64 clients at once, as the concurrent row below, but not timed (the rate of
    // filling an empty store is not the rate at N).
    let ids: Vec<MemoryId> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for client in 0..CONCURRENT_CLIENTS {
            let store = store.clone();
            let texts = texts.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (client..texts.len()).step_by(CONCURRENT_CLIENTS) {
                    let (ns, text) = &texts[i];
                    ids.push(
                        store
                            .store(NewMemory::new(namespace(*ns), text.clone()))
                            .await
                            .unwrap(),
                    );
                }
                ids
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.extend(t.await.unwrap());
        }
        ids
    });
    // 64 clients each storing 40 memories of the corpus at once, on the store of N.
    let batch: Vec<Vec<NewMemory>> = (0..CONCURRENT_CLIENTS)
        .map(|client| {
            (0..STORES_PER_CLIENT)
                .map(|_| NewMemory::new(namespace(client % NAMESPACES), corpus.text()))
                .collect()
        })
        .collect();
    let start = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = batch
            .into_iter()
            .map(|memories| {
                let store = store.clone();
                tokio::spawn(async move {
                    for memory in memories {
                        store.store(memory).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let concurrent_per_s =
        (CONCURRENT_CLIENTS * STORES_PER_CLIENT) as f64 / start.elapsed().as_secs_f64();

    let store_lat = runtime.block_on(async {
        let mut samples = Vec::new();
        for i in 0..300 {
            let new = NewMemory::new(namespace(i % NAMESPACES), corpus.text());
            let start = Instant::now();
            store.store(new).await.unwrap();
            samples.push(start.elapsed());
        }
        percentiles(samples)
    });
    let mut rng = SmallRng::seed_from_u64(seed ^ 7);
    let get = time_each(20_000, |_| {
        std::hint::black_box(store.get(ids[rng.random_range(0..ids.len())]).unwrap());
    });
    let queries: Vec<String> = (0..2000).map(|_| corpus.query()).collect();
    let search = time_each(queries.len(), |i| {
        std::hint::black_box(store.search(&queries[i], &SearchOptions::default()));
    });
    let search_ns = time_each(queries.len(), |i| {
        let options = SearchOptions {
            namespace: Some(namespace(i % NAMESPACES)),
            ..Default::default()
        };
        std::hint::black_box(store.search(&queries[i], &options));
    });
    let recent = time_each(20_000, |i| {
        std::hint::black_box(store.list_recent(Some(&namespace(i % NAMESPACES)), 20));
    });
    let stats = time_each(5_000, |_| {
        std::hint::black_box(store.stats(None));
    });
    drop(store);
    let start = Instant::now();
    let reopened = Store::open(&path, StoreConfig::default()).unwrap();
    let reopen_ms = start.elapsed().as_secs_f64() * 1e3;
    assert!(reopened.stats(None).live >= n as u64);
    Results {
        store: store_lat,
        concurrent_per_s,
        get,
        search,
        search_ns,
        recent,
        stats,
        reopen_ms,
    }
}

/// Search over every namespace of the same corpus spread over [`MANY_NAMESPACES`] namespaces,
/// written one namespace after another as runs write theirs. The writes are not measured, so they
/// skip the fsync.
fn bench_many_namespaces(dir: &Path, n: usize, seed: u64) -> Percentiles {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = StoreConfig {
        durability: DurabilityMode::Relaxed {
            sync_interval: Duration::from_secs(60),
        },
        ..StoreConfig::default()
    };
    let store = Store::open(dir.join("many-namespaces.redb"), config).unwrap();
    let mut corpus = Corpus::new(seed);
    let per_namespace = n.div_ceil(MANY_NAMESPACES);
    let texts: Vec<(usize, String)> = (0..n).map(|i| (i / per_namespace, corpus.text())).collect();
    runtime.block_on(async {
        for chunk in texts.chunks(CONCURRENT_CLIENTS) {
            let writes = chunk.iter().map(|(ns, text)| {
                store.store(NewMemory::new(
                    Namespace::project(&format!("run{ns}")).unwrap(),
                    text.clone(),
                ))
            });
            for id in futures::future::join_all(writes).await {
                id.unwrap();
            }
        }
    });
    let queries: Vec<String> = (0..2000).map(|_| corpus.query()).collect();
    time_each(queries.len(), |i| {
        std::hint::black_box(store.search(&queries[i], &SearchOptions::default()));
    })
}

fn sqlite_open(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000;",
    )
    .unwrap();
    conn
}

fn bench_sqlite(dir: &Path, n: usize, seed: u64) -> Results {
    let path = dir.join("sqlite.db");
    let conn = sqlite_open(&path);
    // Mnemosyne's shape: a memories table with an external-content FTS5 index kept by triggers.
    // It gets an index on (namespace, created_at) that Mnemosyne lacks, so list_recent is its best case.
    conn.execute_batch(
        "CREATE TABLE memories(id TEXT PRIMARY KEY, namespace TEXT NOT NULL, content TEXT NOT NULL,
            importance INTEGER NOT NULL, created_at INTEGER NOT NULL);
         CREATE INDEX memories_recent ON memories(namespace, created_at);
         CREATE VIRTUAL TABLE memories_fts USING fts5(content, content='memories', content_rowid='rowid');
         CREATE TRIGGER memories_ai AFTER INSERT ON memories BEGIN
            INSERT INTO memories_fts(rowid, content) VALUES (new.rowid, new.content); END;",
    )
    .unwrap();
    let mut corpus = Corpus::new(seed);
    let texts: Vec<(usize, String)> = (0..n).map(|i| (i % NAMESPACES, corpus.text())).collect();
    let mut ids = Vec::with_capacity(n);
    {
        let insert_all = conn.unchecked_transaction().unwrap();
        for (i, (ns, text)) in texts.iter().enumerate() {
            let id = MemoryId::new().to_string();
            insert_all
                .execute(
                    "INSERT INTO memories VALUES (?1, ?2, ?3, 5, ?4)",
                    params![id, namespace(*ns).to_string(), text, i as i64],
                )
                .unwrap();
            ids.push(id);
        }
        insert_all.commit().unwrap();
    }
    // The row's inputs are made before the clock starts, as ours are, and the statement is
    // prepared once.
    let mut next = n as i64;
    let mut row = |client: usize| {
        next += 1;
        (
            MemoryId::new().to_string(),
            namespace(client % NAMESPACES).to_string(),
            corpus.text(),
            next,
        )
    };
    let rows: Vec<_> = (0..300).map(&mut row).collect();
    let insert = "INSERT INTO memories VALUES (?1, ?2, ?3, 5, ?4)";
    let store_lat = time_each(rows.len(), |i| {
        let (id, ns, text, at) = &rows[i];
        conn.prepare_cached(insert)
            .unwrap()
            .execute(params![id, ns, text, at])
            .unwrap();
    });
    // 64 clients each storing 40 memories of the corpus at once. SQLite has one writer at a
    // time, and 64 connections contending for it through `busy_timeout` back off for
    // milliseconds at a time: the clients share one writing connection behind a lock instead,
    // the best a single process does with it (each insert still its own durable commit).
    let batch: Vec<Vec<_>> = (0..CONCURRENT_CLIENTS)
        .map(|client| (0..STORES_PER_CLIENT).map(|_| row(client)).collect())
        .collect();
    let writer = std::sync::Mutex::new(sqlite_open(&path));
    let start = Instant::now();
    std::thread::scope(|scope| {
        for rows in &batch {
            let writer = &writer;
            scope.spawn(move || {
                for (id, ns, text, at) in rows {
                    let conn = writer.lock().unwrap();
                    conn.prepare_cached(insert)
                        .unwrap()
                        .execute(params![id, ns, text, at])
                        .unwrap();
                }
            });
        }
    });
    let concurrent_per_s =
        (CONCURRENT_CLIENTS * STORES_PER_CLIENT) as f64 / start.elapsed().as_secs_f64();
    let mut rng = SmallRng::seed_from_u64(seed ^ 7);
    let mut get_stmt = conn
        .prepare(
            "SELECT id, namespace, content, importance, created_at FROM memories WHERE id = ?1",
        )
        .unwrap();
    let get = time_each(20_000, |_| {
        let id = &ids[rng.random_range(0..ids.len())];
        let row: (String, String, String, i64, i64) = get_stmt
            .query_row([id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap();
        std::hint::black_box(row);
    });
    let queries: Vec<String> = (0..2000).map(|_| corpus.query()).collect();
    let mut search_stmt = conn
        .prepare(
            "SELECT m.id, m.content, bm25(memories_fts) AS score FROM memories_fts
             JOIN memories m ON m.rowid = memories_fts.rowid
             WHERE memories_fts MATCH ?1 ORDER BY score LIMIT 10",
        )
        .unwrap();
    let fts_query = |q: &str| q.split(' ').collect::<Vec<_>>().join(" OR ");
    let search = time_each(queries.len(), |i| {
        let rows: Vec<(String, String, f64)> = search_stmt
            .query_map([fts_query(&queries[i])], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        std::hint::black_box(rows);
    });
    let mut search_ns_stmt = conn
        .prepare(
            "SELECT m.id, m.content, bm25(memories_fts) AS score FROM memories_fts
             JOIN memories m ON m.rowid = memories_fts.rowid
             WHERE memories_fts MATCH ?1 AND m.namespace = ?2 ORDER BY score LIMIT 10",
        )
        .unwrap();
    let search_ns = time_each(queries.len(), |i| {
        let rows: Vec<(String, String, f64)> = search_ns_stmt
            .query_map(
                params![
                    fts_query(&queries[i]),
                    namespace(i % NAMESPACES).to_string()
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        std::hint::black_box(rows);
    });
    let mut recent_stmt = conn
        .prepare("SELECT id, content FROM memories WHERE namespace = ?1 ORDER BY created_at DESC LIMIT 20")
        .unwrap();
    let recent = time_each(20_000, |i| {
        let rows: Vec<(String, String)> = recent_stmt
            .query_map([namespace(i % NAMESPACES).to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        std::hint::black_box(rows);
    });
    let mut stats_stmt = conn
        .prepare(
            "SELECT namespace, count(*), sum(length(content)) FROM memories GROUP BY namespace",
        )
        .unwrap();
    let stats = time_each(200, |_| {
        let rows: Vec<(String, i64, i64)> = stats_stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        std::hint::black_box(rows);
    });
    drop((
        get_stmt,
        search_stmt,
        search_ns_stmt,
        recent_stmt,
        stats_stmt,
    ));
    drop(conn);
    let start = Instant::now();
    let conn = sqlite_open(&path);
    let count: i64 = conn
        .query_row("SELECT count(*) FROM memories", [], |r| r.get(0))
        .unwrap();
    let reopen_ms = start.elapsed().as_secs_f64() * 1e3;
    assert!(count >= n as i64);
    Results {
        store: store_lat,
        concurrent_per_s,
        get,
        search,
        search_ns,
        recent,
        stats,
        reopen_ms,
    }
}

fn row(name: &str, ours: &Percentiles, theirs: &Percentiles, target: &str) {
    println!(
        "{name:<22} {:>10.1} {:>10.1} {:>12.1} {:>12.1} {:>8.1}x {:>8.1}x  {target}",
        ours.p50,
        ours.p99,
        theirs.p50,
        theirs.p99,
        theirs.p50 / ours.p50,
        theirs.p99 / ours.p99
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::var("TETRARCH_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let target_dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let out_dir = Path::new(&target_dir).join("bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut runs = Vec::new();
    for &n in &sizes {
        let dir = tempfile::tempdir_in(&target_dir).unwrap();
        let fsync = fsync_baseline(dir.path());
        let redb_floor = redb_commit_floor(dir.path(), n);
        let ours = bench_tetrarch(dir.path(), n, 42);
        let theirs = bench_sqlite(dir.path(), n, 42);
        let many = bench_many_namespaces(dir.path(), n, 42);
        println!(
            "\nstore benchmark, N = {n} memories, {NAMESPACES} namespaces (µs; ratio = SQLite / tetrarch)"
        );
        println!(
            "one fsync here: p50 {:.1} µs, p99 {:.1} µs",
            fsync.p50, fsync.p99
        );
        println!(
            "redb alone, one insert + durable commit: p50 {:.1} µs, p99 {:.1} µs",
            redb_floor.p50, redb_floor.p99
        );
        println!(
            "{:<22} {:>10} {:>10} {:>12} {:>12} {:>9} {:>9}  target (at 100k)",
            "operation", "ours p50", "ours p99", "sqlite p50", "sqlite p99", "p50 x", "p99 x"
        );
        row(
            "store (durable)",
            &ours.store,
            &theirs.store,
            &format!("p50 <= fsync + 100 = {:.0}", fsync.p50 + 100.0),
        );
        row("get", &ours.get, &theirs.get, "p50 <= 2");
        row(
            "search 2-3 terms",
            &ours.search,
            &theirs.search,
            "p50 <= 50, p99 <= 1000, p99 >= 10x",
        );
        row(
            "search, namespace",
            &ours.search_ns,
            &theirs.search_ns,
            "p50 <= 50, p99 <= 1000, p99 >= 10x",
        );
        row(
            "list_recent(20)",
            &ours.recent,
            &theirs.recent,
            "p50 <= 20, >= 10x",
        );
        row("stats", &ours.stats, &theirs.stats, "");
        println!(
            "{:<22} {:>10.1} {:>10.1} {:>12} {:>12}  the same search over {MANY_NAMESPACES} namespaces",
            "search, 1000 ns", many.p50, many.p99, "—", "—"
        );
        println!(
            "{:<22} {:>10.0}/s {:>22.0}/s  target >= 20000/s",
            "store, 64 clients", ours.concurrent_per_s, theirs.concurrent_per_s
        );
        println!(
            "{:<22} {:>10.1} ms {:>21.1} ms  target <= 2000 ms",
            "reopen", ours.reopen_ms, theirs.reopen_ms
        );
        runs.push(json!({
            "n": n,
            "fsync": entry(&fsync),
            "redb_insert_commit": entry(&redb_floor),
            "tetrarch": ours.json(),
            "tetrarch_1000_namespaces": { "search": entry(&many) },
            "sqlite_fts5": theirs.json(),
        }));
    }
    let path = out_dir.join("store.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&Value::Array(runs)).unwrap(),
    )
    .unwrap();
    println!("\nwrote {}", path.display());
}
