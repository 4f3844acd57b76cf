//! What the store's search finds: long queries, Unicode variants of a word, and dotted names.
#![allow(clippy::unwrap_used)]

use tetrarch::store::{MemoryId, Namespace, NewMemory, SearchOptions, Store, StoreConfig};

fn project(name: &str) -> Namespace {
    Namespace::project(name).unwrap()
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap()
}

async fn remember(store: &Store, content: &str) -> MemoryId {
    store
        .store(NewMemory::new(project("demo"), content))
        .await
        .unwrap()
}

fn found(store: &Store, query: &str) -> Vec<MemoryId> {
    store
        .search(query, &SearchOptions::default())
        .into_iter()
        .map(|hit| hit.memory.id)
        .collect()
}

#[tokio::test]
async fn a_long_query_of_unknown_words_still_finds_the_known_words_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let id = remember(&store, "plasma renders too dark at exposure 2").await;
    // An error log: a few hundred distinct ids before the words that matter.
    let ids: Vec<String> = (0..300).map(|i| format!("qzx{i}")).collect();
    let query = format!("{} plasma exposure", ids.join(" "));
    let hits = store.search(&query, &SearchOptions::default());
    assert_eq!(hits.len(), 1, "{query}");
    assert_eq!((hits[0].memory.id, hits[0].matched_terms), (id, 2));
}

#[tokio::test]
async fn typographic_apostrophes_accents_case_and_width_variants_find_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let shader = remember(&store, "the user’s shader can’t compile").await;
    let cafe = remember(&store, "caf\u{e9} lighting preset").await;
    let street = remember(&store, "Straße texture atlas").await;
    let gpu = remember(&store, "ＧＰＵ memory pressure").await;

    for query in ["user", "users", "user's", "can't", "CAN’T"] {
        assert_eq!(found(&store, query), vec![shader], "{query}");
    }
    // Decomposed: e followed by a combining acute accent.
    assert_eq!(found(&store, "cafe\u{301}"), vec![cafe]);
    assert_eq!(found(&store, "STRASSE"), vec![street]);
    assert_eq!(found(&store, "strasse"), vec![street]);
    assert_eq!(found(&store, "gpu"), vec![gpu]);

    // The index is rebuilt from the memories at open with the same analysis.
    drop(store);
    let store = open(&dir);
    assert_eq!(found(&store, "users"), vec![shader]);
    assert_eq!(found(&store, "GPU"), vec![gpu]);
}

#[tokio::test]
async fn file_and_dotted_names_are_found_by_their_parts_and_whole_names_rank_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let panic = remember(
        &store,
        "panic in src/store/index.rs when Store.open reads config.toml",
    )
    .await;
    let loose = remember(&store, "the index of open configs in toml").await;
    for query in ["index", "open", "config", "toml"] {
        assert!(found(&store, query).contains(&panic), "{query}");
    }
    for query in ["index.rs", "Store.open", "config.toml"] {
        let hits = store.search(query, &SearchOptions::default());
        assert_eq!(hits[0].memory.id, panic, "{query}");
        assert!(hits[0].matched_terms > hits.get(1).map_or(0, |h| h.matched_terms));
    }
    assert!(found(&store, "index.rs").contains(&loose));
}

/// A query's first 64 terms that some live memory holds are searched: words only an archived
/// memory held (the store's dictionary keeps them until a reopen) take no place among them.
#[tokio::test]
async fn words_only_an_archived_memory_held_do_not_crowd_out_a_live_match() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let words: Vec<String> = (0..64).map(|i| format!("alpha{i}")).collect();
    let gone = store
        .store(NewMemory::new(Namespace::Global, words.join(" ")))
        .await
        .unwrap();
    store.archive(gone).await.unwrap();
    let live = store
        .store(NewMemory::new(Namespace::Global, "plasma"))
        .await
        .unwrap();
    let query = format!("{} plasma", words.join(" "));
    let hits = store.search(&query, &SearchOptions::default());
    assert_eq!(
        hits.iter().map(|h| h.memory.id).collect::<Vec<_>>(),
        vec![live]
    );
}
