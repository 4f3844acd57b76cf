//! Property test: after any sequence of store / update / archive / expire, search and list_recent
//! return exactly the live memories that match, checked against a plain model.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use tetrarch::store::{
    MemoryId, MemoryPatch, Namespace, NewMemory, SearchOptions, Store, StoreConfig,
};

/// Words that are their own stems, so the model can match them literally.
const WORDS: &[&str] = &[
    "red", "blue", "green", "cube", "mesh", "light", "shadow", "frame",
];

#[derive(Clone, Debug)]
enum Op {
    Store {
        ns: usize,
        words: Vec<usize>,
        expiring: bool,
    },
    Update {
        target: prop::sample::Index,
        words: Vec<usize>,
    },
    Archive {
        target: prop::sample::Index,
    },
}

fn words() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..WORDS.len(), 1..5)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, words(), prop::bool::weighted(0.2))
            .prop_map(|(ns, words, expiring)| Op::Store { ns, words, expiring }),
        2 => (any::<prop::sample::Index>(), words()).prop_map(|(target, words)| Op::Update { target, words }),
        1 => any::<prop::sample::Index>().prop_map(|target| Op::Archive { target }),
    ]
}

struct ModelMemory {
    ns: Namespace,
    text: Vec<usize>,
    expiring: bool,
    archived: bool,
}

fn text(words: &[usize]) -> String {
    words
        .iter()
        .map(|&w| WORDS[w])
        .collect::<Vec<_>>()
        .join(" ")
}

fn namespace(i: usize) -> Namespace {
    Namespace::project(&format!("p{i}")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn reads_match_the_model(ops in proptest::collection::vec(op(), 1..30)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), StoreConfig::default()).unwrap();
        let mut model: BTreeMap<MemoryId, ModelMemory> = BTreeMap::new();
        runtime.block_on(async {
            for op in &ops {
                match op {
                    Op::Store { ns, words, expiring } => {
                        let mut new = NewMemory::new(namespace(*ns), text(words));
                        if *expiring {
                            new.ttl = Some(Duration::from_millis(1));
                        }
                        let id = store.store(new).await.unwrap();
                        model.insert(id, ModelMemory { ns: namespace(*ns), text: words.clone(), expiring: *expiring, archived: false });
                    }
                    Op::Update { target, words } if !model.is_empty() => {
                        let id = *model.keys().nth(target.index(model.len())).unwrap();
                        let m = &model[&id];
                        let result = store.update(id, MemoryPatch { content: Some(text(words)), ..Default::default() }).await;
                        if m.archived || m.expiring {
                            prop_assert!(result.is_err());
                        } else {
                            result.unwrap();
                            model.get_mut(&id).unwrap().text = words.clone();
                        }
                    }
                    Op::Archive { target } if !model.is_empty() => {
                        let id = *model.keys().nth(target.index(model.len())).unwrap();
                        let result = store.archive(id).await;
                        if model[&id].expiring {
                            prop_assert!(result.is_err());
                        } else {
                            result.unwrap();
                            model.get_mut(&id).unwrap().archived = true;
                        }
                    }
                    _ => {}
                }
                // Every expiring memory has a 1 ms TTL; make sure it has passed.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(())
        })?;
        let live = |m: &ModelMemory| !m.archived && !m.expiring;
        for filter in [None, Some(0usize), Some(1), Some(2)] {
            let ns = filter.map(namespace);
            let in_scope = |m: &ModelMemory| ns.as_ref().is_none_or(|n| *n == m.ns);
            for (a, b) in [(0usize, 0usize), (1, 2), (3, 7), (4, 4)] {
                let query = if a == b { WORDS[a].to_string() } else { format!("{} {}", WORDS[a], WORDS[b]) };
                let options = SearchOptions { namespace: ns.clone(), limit: 1000, ..Default::default() };
                let hits = store.search(&query, &options);
                let mut found: Vec<MemoryId> = hits.iter().map(|h| h.memory.id).collect();
                found.sort();
                let expected: Vec<MemoryId> = model.iter()
                    .filter(|(_, m)| live(m) && in_scope(m) && (m.text.contains(&a) || m.text.contains(&b)))
                    .map(|(id, _)| *id).collect();
                prop_assert_eq!(found, expected, "query {:?} in {:?}", query, ns);
                // Memories with both terms come before those with one.
                let counts: Vec<u32> = hits.iter().map(|h| h.matched_terms).collect();
                prop_assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{:?}", counts);
                for hit in &hits {
                    let m = &model[&hit.memory.id];
                    let expected_count = u32::from(m.text.contains(&a)) + u32::from(a != b && m.text.contains(&b));
                    prop_assert_eq!(hit.matched_terms, expected_count);
                }
            }
            let recent: Vec<MemoryId> = store.list_recent(ns.as_ref(), 1000).iter().map(|m| m.id).collect();
            let expected: Vec<MemoryId> = model.iter().rev()
                .filter(|(_, m)| live(m) && in_scope(m))
                .map(|(id, _)| *id).collect();
            prop_assert_eq!(recent, expected);
            let limited = store.list_recent(ns.as_ref(), 2).len();
            prop_assert_eq!(limited, model.values().filter(|m| live(m) && in_scope(m)).count().min(2));
        }
    }
}
