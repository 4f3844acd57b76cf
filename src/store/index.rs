//! The in-memory BM25 search index.
//!
//! Hand-written rather than a crate because the two goals pull against every engine we measured:
//! a write must be visible to the next search at once (tantivy: ~8 ms per commit + reload), and a
//! filtered search must stay under a millisecond at p99 with 100k documents (SQLite FTS5: 63 ms).
//!
//! Layout: a global term dictionary and document-frequency table (so scores are comparable across
//! namespaces), and one posting list per (term, namespace) (so a namespace filter touches only that
//! namespace's postings). The lists are kept term-major: a term's lists sit together, ordered by
//! namespace, so a search over every namespace walks each query term's lists once instead of
//! looking each term up in every namespace — a store gets a namespace per run, so it soon has
//! thousands, most without the query's terms. Each posting list is docno-sorted (docnos only grow)
//! and keeps an upper bound of its term's score contribution (largest weighted tf, shortest
//! document).
//!
//! Ranking: documents that match more distinct query terms rank above those matching fewer; within
//! a match count, by BM25F score (k1 = 1.2, b = 0.75, weighted fields from [`super::text`]); then
//! higher importance; then more recently updated. This is one additive score — each matched term
//! contributes `MATCH_BONUS + bm25` — which lets MaxScore pruning skip the long posting lists of
//! common terms once the top k is full: a document that only appears in lists whose bounds sum
//! below the k-th score is never scored.
//!
//! Removal (update, archive, expiry) marks the document dead and fixes the statistics at once;
//! its postings are dropped lazily when a namespace's dead postings pass a quarter of its live ones.
//! Every version of a memory gets a new docno, so dead slots pile up in a long-lived store that
//! updates memories; once they outnumber the live ones the table is renumbered
//! ([`SearchIndex::renumber_if_sparse`], order kept, the owner of docnos remaps its own: a pause
//! of about 5 ms for 10k live 60-word memories, once per 10k removals at that size). The
//! term dictionary is append-only: it grows with the distinct words ever written until the store
//! is reopened, when the index is rebuilt from the live memories.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::memory::{MemoryId, Namespace};
use super::text::{Dictionary, DocTerms, TermId};

/// A document's position in the index. A new version of a memory gets a new docno.
pub(crate) type DocNo = u32;
type NsId = u32;

const K1: f64 = 1.2;
const B: f64 = 0.75;
/// Added per matched term so match count dominates the BM25 part (which stays far below this).
const MATCH_BONUS: f64 = 100_000.0;
/// Pruning compares partial sums with the threshold less this margin, so float rounding can never
/// drop a document that ties with the k-th; kept documents are summed in query-term order, as the
/// exhaustive oracle does, so equal documents get bit-equal scores.
const MARGIN: f64 = 1e-6;
/// Queries are cut to this many distinct terms that the index knows (unknown ones are skipped,
/// not counted), keeping the composite score exact.
pub(crate) const MAX_QUERY_TERMS: usize = 64;

/// Per-document data the ranking and filters need without touching the memory itself.
#[derive(Clone, Debug)]
pub(crate) struct DocSlot {
    pub id: MemoryId,
    pub namespace: NsId,
    pub length: f32,
    pub importance: u8,
    /// Last update time (ms); the final tie-break.
    pub recency: i64,
    /// Expiry time (ms), `i64::MAX` when none.
    pub expires_at: i64,
    /// The document's distinct terms, kept to fix document frequencies on removal.
    terms: Box<[TermId]>,
}

/// Whether a docno's document is live, kept apart from [`DocSlot`]: one byte a document stays in
/// cache where the document table does not (6 MB at 100k documents), and a search asks it about
/// every document good enough for the results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DocState {
    /// Removed (its postings may linger until compaction).
    Dead,
    Live,
    /// Live until its `expires_at`.
    LiveExpiring,
}

impl DocState {
    fn new(expires_at: Option<i64>) -> Self {
        if expires_at.is_some() {
            DocState::LiveExpiring
        } else {
            DocState::Live
        }
    }
}

/// Dead document slots below which the table is never renumbered (small under test, so tests
/// reach it).
pub(crate) const RENUMBER_MIN_DEAD: usize = if cfg!(test) { 8 } else { 4096 };

/// Dead postings a namespace must have before it is compacted (small under test, so the property
/// tests reach it).
const COMPACT_MIN_DEAD: u32 = if cfg!(test) { 2 } else { 64 };

/// Postings per block of a posting list; each block keeps its own score bound (block-max).
/// Small under test so the property tests cross block boundaries.
const BLOCK: usize = if cfg!(test) { 4 } else { 64 };

/// The bound inputs of one block of postings.
#[derive(Clone, Copy, Debug)]
struct Block {
    /// The block's last docno.
    last: DocNo,
    max_tf: f32,
    min_length: f32,
}

/// One document's entry in a term's posting list.
#[derive(Clone, Copy, Debug)]
struct Posting {
    doc: DocNo,
    tf: f32,
    /// The document's length, so scoring never touches the document table.
    length: f32,
}

#[derive(Default, Debug)]
struct PostingList {
    /// Docno-sorted. One array of whole postings rather than one per field: scoring reads all
    /// three of a posting at once.
    postings: Vec<Posting>,
    max_tf: f32,
    min_length: f32,
    blocks: Vec<Block>,
}

impl PostingList {
    fn push(&mut self, doc: DocNo, tf: f32, length: f32) {
        if self.postings.is_empty() {
            self.max_tf = tf;
            self.min_length = length;
        } else {
            self.max_tf = self.max_tf.max(tf);
            self.min_length = self.min_length.min(length);
        }
        match self.blocks.last_mut() {
            Some(block) if !self.postings.len().is_multiple_of(BLOCK) => {
                block.last = doc;
                block.max_tf = block.max_tf.max(tf);
                block.min_length = block.min_length.min(length);
            }
            _ => self.blocks.push(Block {
                last: doc,
                max_tf: tf,
                min_length: length,
            }),
        }
        self.postings.push(Posting { doc, tf, length });
    }

    /// Maps every posting through `map` (old docno → new, `DocNo::MAX` dropping it) in place,
    /// then recomputes the bounds: no allocation, as this runs under the store's write lock.
    fn renumber(&mut self, map: &[DocNo]) {
        self.postings.retain_mut(|posting| {
            posting.doc = map[posting.doc as usize];
            posting.doc != DocNo::MAX
        });
        self.blocks.clear();
        let max_tf = |postings: &[Posting]| postings.iter().map(|p| p.tf).fold(0.0, f32::max);
        let min_length = |postings: &[Posting]| {
            postings
                .iter()
                .map(|p| p.length)
                .fold(f32::INFINITY, f32::min)
        };
        self.max_tf = max_tf(&self.postings);
        self.min_length = min_length(&self.postings);
        for block in self.postings.chunks(BLOCK) {
            if let Some(last) = block.last() {
                self.blocks.push(Block {
                    last: last.doc,
                    max_tf: max_tf(block),
                    min_length: min_length(block),
                });
            }
        }
    }

    /// The first position at or after `from` whose docno is >= `target` (galloping search).
    fn seek(&self, from: usize, target: DocNo) -> usize {
        let docs = &self.postings;
        if from >= docs.len() || docs[from].doc >= target {
            return from;
        }
        let mut step = 1;
        let mut low = from;
        let mut high = from + 1;
        while high < docs.len() && docs[high].doc < target {
            low = high;
            step *= 2;
            high = (high + step).min(docs.len());
        }
        let high = high.min(docs.len());
        low + docs[low..high].partition_point(|p| p.doc < target)
    }
}

/// One term's posting lists: one per namespace that has the term.
#[derive(Default, Debug)]
struct TermLists {
    /// (namespace, index in `lists`), ordered by namespace: a search over every namespace walks
    /// all its terms' lists together in that order. Kept apart from the lists so that a namespace
    /// that comes to hold the term inserts 8 bytes into the middle, not a move of every later
    /// list (which made filling a store of 1,000 namespaces written in turn 1.7× slower).
    by_namespace: Vec<(NsId, u32)>,
    lists: Vec<PostingList>,
}

impl TermLists {
    /// Where `ns` is (or would go) in `by_namespace`. Checks the last first: new documents mostly
    /// go to the newest namespace.
    fn find(&self, ns: NsId) -> Result<usize, usize> {
        match self.by_namespace.last() {
            Some(&(last, _)) if last == ns => Ok(self.by_namespace.len() - 1),
            Some(&(last, _)) if last < ns => Err(self.by_namespace.len()),
            None => Err(0),
            Some(_) => self.by_namespace.binary_search_by_key(&ns, |&(n, _)| n),
        }
    }

    fn get(&self, ns: NsId) -> Option<&PostingList> {
        let at = self.find(ns).ok()?;
        self.lists.get(self.by_namespace[at].1 as usize)
    }

    fn get_mut(&mut self, ns: NsId) -> Option<&mut PostingList> {
        let at = self.find(ns).ok()?;
        self.lists.get_mut(self.by_namespace[at].1 as usize)
    }

    /// The `at`-th list in namespace order, with its namespace.
    fn nth(&self, at: usize) -> Option<(NsId, &PostingList)> {
        let &(ns, list) = self.by_namespace.get(at)?;
        Some((ns, self.lists.get(list as usize)?))
    }

    /// `ns`'s list, created empty if it has none (`true`: created).
    fn get_or_insert(&mut self, ns: NsId) -> (&mut PostingList, bool) {
        match self.find(ns) {
            Ok(at) => (&mut self.lists[self.by_namespace[at].1 as usize], false),
            Err(at) => {
                let list = self.lists.len();
                self.lists.push(PostingList::default());
                self.by_namespace.insert(at, (ns, list as u32));
                (&mut self.lists[list], true)
            }
        }
    }

    /// Drops `ns`'s list, if any.
    fn remove(&mut self, ns: NsId) {
        let Ok(at) = self.find(ns) else {
            return;
        };
        let (_, list) = self.by_namespace.remove(at);
        self.lists.swap_remove(list as usize);
        // The list that was last now sits where the removed one was.
        let moved = self.lists.len() as u32;
        if let Some(entry) = self.by_namespace.iter_mut().find(|(_, i)| *i == moved) {
            entry.1 = list;
        }
    }

    /// Keeps the lists `keep` returns true for, and stores them in namespace order.
    fn retain(&mut self, mut keep: impl FnMut(&mut PostingList) -> bool) {
        let mut lists = std::mem::take(&mut self.lists);
        let mut kept = Vec::with_capacity(lists.len());
        self.by_namespace.retain_mut(|(_, list)| {
            let mut taken = std::mem::take(&mut lists[*list as usize]);
            if !keep(&mut taken) {
                return false;
            }
            *list = kept.len() as u32;
            kept.push(taken);
            true
        });
        self.lists = kept;
    }
}

/// The posting list of `term` in `ns`, created (and recorded among the namespace's terms) when
/// it is the first such posting. Free of `self` so callers can hold other fields.
fn list_for_insert<'a>(
    lists: &'a mut Vec<TermLists>,
    namespaces: &mut [NamespaceCounts],
    term: TermId,
    ns: NsId,
) -> &'a mut PostingList {
    if lists.len() <= term as usize {
        lists.resize_with(term as usize + 1, TermLists::default);
    }
    let (list, created) = lists[term as usize].get_or_insert(ns);
    if created {
        namespaces[ns as usize].terms.push(term);
    }
    list
}

#[derive(Default, Debug)]
struct NamespaceCounts {
    live: u32,
    dead: u32,
    /// The terms that have a posting list in this namespace, so compacting it visits only theirs.
    terms: Vec<TermId>,
}

/// A document to add with [`SearchIndex::insert_many`].
pub(crate) struct NewDoc<'a> {
    pub id: MemoryId,
    pub namespace: &'a Namespace,
    pub importance: u8,
    pub recency: i64,
    pub expires_at: Option<i64>,
    pub terms: &'a DocTerms,
}

/// One search result from the index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct IndexHit {
    pub doc: DocNo,
    pub id: MemoryId,
    /// The BM25F score.
    pub score: f64,
    /// How many distinct query terms the document contains.
    pub matched: u32,
}

/// A document in the running results. Its slot is read only to break a tie of scores, which is
/// rare: a search would otherwise miss the cache once per candidate to copy out the tie-breaks.
#[derive(Clone, Copy, Debug)]
struct Candidate<'a> {
    composite: f64,
    doc: DocNo,
    slot: &'a DocSlot,
}

impl Candidate<'_> {
    fn cmp_rank(&self, other: &Self) -> Ordering {
        self.composite
            .total_cmp(&other.composite)
            .then_with(|| self.slot.importance.cmp(&other.slot.importance))
            .then_with(|| self.slot.recency.cmp(&other.slot.recency))
            .then(self.doc.cmp(&other.doc))
    }
}

impl PartialEq for Candidate<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp_rank(other) == Ordering::Equal
    }
}
impl Eq for Candidate<'_> {}
impl PartialOrd for Candidate<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate<'_> {
    // Reversed, so the BinaryHeap's top is the worst of the kept candidates.
    fn cmp(&self, other: &Self) -> Ordering {
        other.cmp_rank(self)
    }
}

/// The search index. Not thread-safe by itself; the store guards it with its state lock.
#[derive(Debug)]
pub(crate) struct SearchIndex {
    dictionary: Arc<Dictionary>,
    document_frequency: Vec<u32>,
    docs: Vec<DocSlot>,
    /// By docno, beside `docs`.
    states: Vec<DocState>,
    /// Posting lists by term id.
    lists: Vec<TermLists>,
    namespaces: Vec<NamespaceCounts>,
    namespace_ids: HashMap<Namespace, NsId>,
    live_docs: u32,
    total_length: f64,
}

/// Scoring statistics for one query, fixed for its duration, in the form the scoring loop wants:
/// BM25's length normalisation `K1 * (1 - B + B * length / avg_length)` as `base + weight *
/// length`, so a score costs one division.
struct QueryStats {
    norm_base: f64,
    length_weight: f64,
}

impl QueryStats {
    fn new(total_length: f64, live_docs: f64) -> Self {
        let avg_length = (total_length / live_docs).max(f64::MIN_POSITIVE);
        QueryStats {
            norm_base: K1 * (1.0 - B),
            length_weight: K1 * B / avg_length,
        }
    }

    fn bm25(&self, idf: f64, tf: f32, length: f32) -> f64 {
        let tf = f64::from(tf);
        idf * (K1 + 1.0) * tf / (tf + self.norm_base + self.length_weight * f64::from(length))
    }
}

/// What one search's namespace scans share.
#[derive(Clone, Copy)]
struct Scan<'a> {
    stats: &'a QueryStats,
    limit: usize,
    now_ms: i64,
}

/// Buffers a search reuses across its namespace scans.
struct ScanBuffers {
    /// `prefix[i]`: the sum of the bounds of the `i` weakest cursors.
    prefix: Vec<f64>,
    /// The matched terms' score parts of the document being scored, by query-term position.
    parts: Vec<(usize, f64)>,
}

struct Cursor<'a> {
    list: &'a PostingList,
    pos: usize,
    idf: f64,
    bound: f64,
    /// The first block that may hold docs >= the last doc asked about; only moves forward.
    block: usize,
    /// The score bound of block `bound_of_block` (`usize::MAX`: none yet), so a block's bound is
    /// computed once per query rather than at every document it is asked about.
    block_score: f64,
    bound_of_block: usize,
    /// The query term's position, so contributions are summed in one order on every path.
    term: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `list` for the query term at `position`.
    fn new(list: &'a PostingList, position: usize, idf: f64, stats: &QueryStats) -> Self {
        Cursor {
            list,
            pos: 0,
            idf,
            bound: MATCH_BONUS + stats.bm25(idf, list.max_tf, list.min_length),
            block: 0,
            block_score: 0.0,
            bound_of_block: usize::MAX,
            term: position,
        }
    }

    fn current(&self) -> Option<DocNo> {
        self.list.postings.get(self.pos).map(|p| p.doc)
    }

    /// The score contribution of the posting under the cursor.
    fn score_current(&self, stats: &QueryStats) -> f64 {
        let posting = self.list.postings[self.pos];
        MATCH_BONUS + stats.bm25(self.idf, posting.tf, posting.length)
    }

    /// The score bound and last docno of the block that would hold `doc`, if any block can.
    fn block_bound(&mut self, doc: DocNo, stats: &QueryStats) -> Option<(f64, DocNo)> {
        let blocks = &self.list.blocks;
        while self.block < blocks.len() && blocks[self.block].last < doc {
            self.block += 1;
        }
        let block = blocks.get(self.block)?;
        if self.bound_of_block != self.block {
            self.block_score = MATCH_BONUS + stats.bm25(self.idf, block.max_tf, block.min_length);
            self.bound_of_block = self.block;
        }
        Some((self.block_score, block.last))
    }
}

impl SearchIndex {
    /// An empty index over a store's dictionary.
    pub fn new(dictionary: Arc<Dictionary>) -> Self {
        SearchIndex {
            dictionary,
            document_frequency: Vec::new(),
            docs: Vec::new(),
            states: Vec::new(),
            lists: Vec::new(),
            namespaces: Vec::new(),
            namespace_ids: HashMap::default(),
            live_docs: 0,
            total_length: 0.0,
        }
    }

    /// Number of live documents.
    #[cfg(test)]
    pub fn live_docs(&self) -> u32 {
        self.live_docs
    }

    /// Number of document slots, dead ones included.
    #[cfg(test)]
    pub fn slots(&self) -> usize {
        self.docs.len()
    }

    fn namespace_id(&mut self, namespace: &Namespace) -> NsId {
        if let Some(&id) = self.namespace_ids.get(namespace) {
            return id;
        }
        let id = self.namespaces.len() as NsId;
        self.namespaces.push(NamespaceCounts::default());
        self.namespace_ids.insert(namespace.clone(), id);
        id
    }

    /// Adds a document and returns its docno.
    pub fn insert(
        &mut self,
        id: MemoryId,
        namespace: &Namespace,
        importance: u8,
        recency: i64,
        expires_at: Option<i64>,
        terms: &DocTerms,
    ) -> DocNo {
        let doc = self.docs.len() as DocNo;
        let ns = self.namespace_id(namespace);
        let mut term_ids = Vec::with_capacity(terms.terms.len());
        for &(term_id, ref tf) in &terms.terms {
            term_ids.push(term_id);
            if self.document_frequency.len() <= term_id as usize {
                self.document_frequency.resize(term_id as usize + 1, 0);
            }
            self.document_frequency[term_id as usize] += 1;
            list_for_insert(&mut self.lists, &mut self.namespaces, term_id, ns).push(
                doc,
                *tf,
                terms.length,
            );
        }
        self.namespaces[ns as usize].live += 1;
        self.docs.push(DocSlot {
            id,
            namespace: ns,
            length: terms.length,
            importance,
            recency,
            expires_at: expires_at.unwrap_or(i64::MAX),
            terms: term_ids.into_boxed_slice(),
        });
        self.states.push(DocState::new(expires_at));
        self.live_docs += 1;
        self.total_length += f64::from(terms.length);
        doc
    }

    /// Adds many documents at once and returns their docnos, in order.
    ///
    /// Used by the rebuild at open: instead of one random write per posting (a cache miss each),
    /// postings are gathered per namespace, sorted by term, and appended list by list.
    pub fn insert_many(&mut self, docs: &[NewDoc<'_>]) -> Vec<DocNo> {
        let first = self.docs.len();
        let mut gathered: Vec<Vec<(TermId, DocNo, f32, f32)>> = Vec::new();
        let mut docnos = Vec::with_capacity(docs.len());
        for (i, new) in docs.iter().enumerate() {
            let doc = (first + i) as DocNo;
            let ns = self.namespace_id(new.namespace);
            if gathered.len() <= ns as usize {
                gathered.resize_with(ns as usize + 1, Vec::new);
            }
            let mut term_ids = Vec::with_capacity(new.terms.terms.len());
            for &(term, tf) in &new.terms.terms {
                term_ids.push(term);
                if self.document_frequency.len() <= term as usize {
                    self.document_frequency.resize(term as usize + 1, 0);
                }
                self.document_frequency[term as usize] += 1;
                gathered[ns as usize].push((term, doc, tf, new.terms.length));
            }
            self.namespaces[ns as usize].live += 1;
            self.docs.push(DocSlot {
                id: new.id,
                namespace: ns,
                length: new.terms.length,
                importance: new.importance,
                recency: new.recency,
                expires_at: new.expires_at.unwrap_or(i64::MAX),
                terms: term_ids.into_boxed_slice(),
            });
            self.states.push(DocState::new(new.expires_at));
            self.live_docs += 1;
            self.total_length += f64::from(new.terms.length);
            docnos.push(doc);
        }
        // Sorting is most of the work and namespaces are independent: sort them on all cores.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = gathered.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for group in gathered.chunks_mut(per_thread) {
                scope.spawn(move || {
                    for postings in group {
                        postings.sort_unstable_by_key(|&(term, doc, _, _)| (term, doc));
                    }
                });
            }
        });
        // Namespaces in order, so each term's new lists go at the end of its lists.
        for (ns, postings) in gathered.into_iter().enumerate() {
            for run in postings.chunk_by(|a, b| a.0 == b.0) {
                let list =
                    list_for_insert(&mut self.lists, &mut self.namespaces, run[0].0, ns as NsId);
                list.postings.reserve(run.len());
                for &(_, doc, tf, length) in run {
                    list.push(doc, tf, length);
                }
            }
        }
        docnos
    }

    /// Removes a document (its postings are dropped lazily).
    pub fn remove(&mut self, doc: DocNo) {
        let (Some(slot), Some(state)) = (
            self.docs.get_mut(doc as usize),
            self.states.get_mut(doc as usize),
        ) else {
            return;
        };
        if *state == DocState::Dead {
            return;
        }
        *state = DocState::Dead;
        let terms = std::mem::take(&mut slot.terms);
        let ns = slot.namespace as usize;
        for term in terms.iter() {
            let df = &mut self.document_frequency[*term as usize];
            *df = df.saturating_sub(1);
        }
        self.live_docs -= 1;
        self.total_length -= f64::from(slot.length);
        if self.live_docs == 0 {
            self.total_length = 0.0;
        }
        let counts = &mut self.namespaces[ns];
        counts.live -= 1;
        counts.dead += 1;
        if counts.dead > COMPACT_MIN_DEAD && counts.dead * 4 > counts.live {
            self.compact(ns);
        }
    }

    /// Renumbers the documents when the dead slots pass [`RENUMBER_MIN_DEAD`] and outnumber the
    /// live ones (so the work, O(live documents + postings), is paid for by as many removals).
    /// Returns old docno → new docno (`DocNo::MAX` for dead ones) for whoever keeps docnos.
    pub fn renumber_if_sparse(&mut self) -> Option<Vec<DocNo>> {
        let dead = self.docs.len() - self.live_docs as usize;
        (dead >= RENUMBER_MIN_DEAD && dead > self.live_docs as usize).then(|| self.renumber())
    }

    /// Drops every dead document slot and posting, numbering the live documents from 0 in their
    /// old order (posting lists stay sorted, ties still break the same way).
    fn renumber(&mut self) -> Vec<DocNo> {
        let mut next: DocNo = 0;
        let map: Vec<DocNo> = self
            .states
            .iter()
            .map(|&state| {
                if state == DocState::Dead {
                    DocNo::MAX
                } else {
                    next += 1;
                    next - 1
                }
            })
            .collect();
        let mut old = map.iter();
        // `retain` visits the slots in order.
        self.docs
            .retain(|_| old.next().is_some_and(|&new| new != DocNo::MAX));
        self.docs.shrink_to_fit();
        self.states.retain(|&state| state != DocState::Dead);
        self.states.shrink_to_fit();
        for counts in &mut self.namespaces {
            counts.terms.clear();
            counts.dead = 0;
        }
        for (term, term_lists) in self.lists.iter_mut().enumerate() {
            term_lists.retain(|list| {
                list.renumber(&map);
                !list.postings.is_empty()
            });
            term_lists.by_namespace.shrink_to_fit();
            // Term ids in order, so each namespace's terms stay sorted.
            for &(ns, _) in &term_lists.by_namespace {
                self.namespaces[ns as usize].terms.push(term as TermId);
            }
        }
        for counts in &mut self.namespaces {
            counts.terms.shrink_to_fit();
        }
        map
    }

    /// Drops the postings of dead documents in one namespace and tightens the bounds.
    fn compact(&mut self, ns: usize) {
        let states = &self.states;
        let lists = &mut self.lists;
        let counts = &mut self.namespaces[ns];
        counts.terms.retain(|&term| {
            let Some(term_lists) = lists.get_mut(term as usize) else {
                return false;
            };
            let Some(list) = term_lists.get_mut(ns as NsId) else {
                return false;
            };
            let mut kept = PostingList::default();
            for posting in &list.postings {
                if states[posting.doc as usize] != DocState::Dead {
                    kept.push(posting.doc, posting.tf, posting.length);
                }
            }
            if kept.postings.is_empty() {
                term_lists.remove(ns as NsId);
                false
            } else {
                *list = kept;
                true
            }
        });
        counts.dead = 0;
    }

    /// Whether `doc` is live and unexpired at `now_ms`; reads its slot only if it expires.
    fn is_live(&self, doc: DocNo, now_ms: i64) -> bool {
        match self.states.get(doc as usize) {
            Some(DocState::Live) => true,
            Some(DocState::LiveExpiring) => self.docs[doc as usize].expires_at > now_ms,
            Some(DocState::Dead) | None => false,
        }
    }

    /// Whether some live document holds `term`.
    pub fn has_live_term(&self, term: &str) -> bool {
        self.dictionary
            .id(term)
            .and_then(|id| self.document_frequency.get(id as usize))
            .is_some_and(|&df| df > 0)
    }

    /// The posting list of `term` in namespace `ns`, if it has one.
    fn list(&self, term: TermId, ns: NsId) -> Option<&PostingList> {
        self.lists.get(term as usize)?.get(ns)
    }

    /// The top `limit` live documents for the query terms.
    ///
    /// `accept` is asked only about documents good enough to enter the results, so an expensive
    /// filter (tags) runs rarely.
    pub fn search(
        &self,
        query_terms: &[Box<str>],
        namespace: Option<&Namespace>,
        limit: usize,
        now_ms: i64,
        mut accept: impl FnMut(DocNo, &DocSlot) -> bool,
    ) -> Vec<IndexHit> {
        if limit == 0 || self.live_docs == 0 {
            return Vec::new();
        }
        let only = match namespace {
            Some(ns) => match self.namespace_ids.get(ns) {
                Some(&id) => Some(id),
                None => return Vec::new(),
            },
            None => None,
        };
        let n = f64::from(self.live_docs);
        let stats = QueryStats::new(self.total_length, n);
        // Terms no live document has are dropped before the cut, so they take no place in it
        // (a store's search collects only such terms already: see `has_live_term`).
        let terms: Vec<(TermId, f64)> = query_terms
            .iter()
            .filter_map(|t| self.dictionary.id(t))
            .filter_map(|id| {
                let df = f64::from(*self.document_frequency.get(id as usize)?);
                (df > 0.0).then(|| (id, (1.0 + (n - df + 0.5) / (df + 0.5)).ln()))
            })
            .take(MAX_QUERY_TERMS)
            .collect();
        if terms.is_empty() {
            return Vec::new();
        }
        // No more than there are documents: `limit` is the caller's, and may be huge.
        let room = limit.min(self.live_docs as usize).saturating_add(1);
        let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(room);
        // One set of buffers for every namespace.
        let mut cursors: Vec<Cursor<'_>> = Vec::with_capacity(terms.len());
        let mut buffers = ScanBuffers {
            prefix: Vec::with_capacity(terms.len() + 1),
            parts: Vec::with_capacity(terms.len()),
        };
        let scan = Scan {
            stats: &stats,
            limit,
            now_ms,
        };
        if let Some(ns) = only {
            cursors.extend(
                terms
                    .iter()
                    .enumerate()
                    .filter_map(|(position, &(term, idf))| {
                        Some(Cursor::new(self.list(term, ns)?, position, idf, &stats))
                    }),
            );
            if !cursors.is_empty() {
                self.search_namespace(&mut cursors, &scan, &mut buffers, &mut accept, &mut heap);
            }
        } else {
            // Every namespace that has a query term, in namespace order: each term's lists are
            // in that order, so one position per term walks them all together.
            let empty = TermLists::default();
            let term_lists: Vec<&TermLists> = terms
                .iter()
                .map(|&(term, _)| self.lists.get(term as usize).unwrap_or(&empty))
                .collect();
            let mut next = vec![0usize; terms.len()];
            // What one document can get from each term whatever its frequency and length (BM25's
            // term-frequency factor stays below K1 + 1): a namespace whose terms together cannot
            // reach the results so far is passed over before its lists are looked at.
            let ceilings: Vec<f64> = terms
                .iter()
                .map(|&(_, idf)| MATCH_BONUS + idf * (K1 + 1.0))
                .collect();
            let mut present: Vec<(usize, &PostingList)> = Vec::with_capacity(terms.len());
            while let Some(ns) = term_lists
                .iter()
                .zip(&next)
                .filter_map(|(lists, &at)| lists.by_namespace.get(at).map(|&(ns, _)| ns))
                .min()
            {
                present.clear();
                let mut ceiling = 0.0;
                for (position, (lists, at)) in term_lists.iter().zip(next.iter_mut()).enumerate() {
                    if let Some((list_ns, list)) = lists.nth(*at)
                        && list_ns == ns
                    {
                        present.push((position, list));
                        ceiling += ceilings[position];
                        *at += 1;
                    }
                }
                if heap.len() >= limit
                    && heap
                        .peek()
                        .is_some_and(|worst| ceiling < worst.composite - MARGIN)
                {
                    continue;
                }
                cursors.clear();
                cursors.extend(present.iter().map(|&(position, list)| {
                    Cursor::new(list, position, terms[position].1, &stats)
                }));
                self.search_namespace(&mut cursors, &scan, &mut buffers, &mut accept, &mut heap);
            }
        }
        let mut ranked = heap.into_sorted_vec();
        // into_sorted_vec sorts by the reversed order: best first.
        ranked.truncate(limit);
        ranked
            .into_iter()
            .map(|c| {
                let matched = (c.composite / MATCH_BONUS).floor();
                IndexHit {
                    doc: c.doc,
                    id: self.docs[c.doc as usize].id,
                    score: c.composite - matched * MATCH_BONUS,
                    matched: matched as u32,
                }
            })
            .collect()
    }

    /// MaxScore over one namespace's posting lists, feeding the shared heap.
    fn search_namespace<'a>(
        &'a self,
        cursors: &mut [Cursor<'_>],
        scan: &Scan<'_>,
        buffers: &mut ScanBuffers,
        accept: &mut impl FnMut(DocNo, &DocSlot) -> bool,
        heap: &mut BinaryHeap<Candidate<'a>>,
    ) {
        let Scan {
            stats,
            limit,
            now_ms,
        } = *scan;
        cursors.sort_by(|a, b| a.bound.total_cmp(&b.bound));
        // prefix[i] = sum of the bounds of cursors[..i].
        let ScanBuffers { prefix, parts } = buffers;
        prefix.clear();
        prefix.push(0.0);
        for c in cursors.iter() {
            prefix.push(prefix[prefix.len() - 1] + c.bound);
        }
        let mut threshold = f64::NEG_INFINITY;
        let mut first_essential = 0;
        loop {
            if heap.len() >= limit
                && let Some(worst) = heap.peek()
            {
                threshold = worst.composite - MARGIN;
            }
            // Lists whose bounds together cannot reach the threshold are only probed.
            while first_essential < cursors.len() && prefix[first_essential + 1] < threshold {
                first_essential += 1;
            }
            if first_essential == cursors.len() {
                return;
            }
            let Some(doc) = cursors[first_essential..]
                .iter()
                .filter_map(Cursor::current)
                .min()
            else {
                return;
            };
            // Block-max: every doc up to the nearest block end shares one bound; skip them all
            // when it cannot reach the threshold.
            if threshold > f64::NEG_INFINITY {
                let mut bound = 0.0;
                let mut boundary = DocNo::MAX;
                for cursor in cursors.iter_mut() {
                    if let Some((block_bound, last)) = cursor.block_bound(doc, stats) {
                        bound += block_bound;
                        boundary = boundary.min(last);
                    }
                }
                if bound < threshold {
                    let Some(next) = boundary.checked_add(1) else {
                        return;
                    };
                    for cursor in cursors[first_essential..].iter_mut() {
                        cursor.pos = cursor.list.seek(cursor.pos, next);
                    }
                    continue;
                }
            }
            let mut composite = 0.0;
            parts.clear();
            for cursor in cursors[first_essential..].iter_mut() {
                if cursor.current() == Some(doc) {
                    let part = cursor.score_current(stats);
                    composite += part;
                    parts.push((cursor.term, part));
                    cursor.pos += 1;
                }
            }
            let mut pruned = false;
            for i in (0..first_essential).rev() {
                if composite + prefix[i + 1] < threshold {
                    pruned = true;
                    break;
                }
                let cursor = &mut cursors[i];
                cursor.pos = cursor.list.seek(cursor.pos, doc);
                if cursor.current() == Some(doc) {
                    let part = cursor.score_current(stats);
                    composite += part;
                    parts.push((cursor.term, part));
                }
            }
            if pruned || composite < threshold {
                continue;
            }
            parts.sort_unstable_by_key(|&(term, _)| term);
            let composite = parts.iter().map(|&(_, part)| part).sum::<f64>();
            let slot = &self.docs[doc as usize];
            if !self.is_live(doc, now_ms) {
                continue;
            }
            let candidate = Candidate {
                composite,
                doc,
                slot,
            };
            let enters = heap.len() < limit
                || heap
                    .peek()
                    .is_some_and(|worst| candidate.cmp_rank(worst) == Ordering::Greater);
            if enters && accept(doc, slot) {
                heap.push(candidate);
                if heap.len() > limit {
                    heap.pop();
                }
            }
        }
    }

    /// Whether every term's lists are keyed by strictly increasing namespaces, each list once
    /// and none empty, and each namespace's recorded terms are exactly the terms with a list in
    /// it (what compaction relies on to find the namespace's lists).
    #[cfg(test)]
    fn lists_are_consistent(&self) -> bool {
        let mut from_lists: Vec<Vec<TermId>> = vec![Vec::new(); self.namespaces.len()];
        for (term, lists) in self.lists.iter().enumerate() {
            let keys = &lists.by_namespace;
            let mut indices: Vec<u32> = keys.iter().map(|&(_, list)| list).collect();
            indices.sort_unstable();
            if !keys.windows(2).all(|pair| pair[0].0 < pair[1].0)
                || indices != (0..lists.lists.len() as u32).collect::<Vec<_>>()
                || lists.lists.iter().any(|list| list.postings.is_empty())
            {
                return false;
            }
            for &(ns, _) in keys {
                from_lists[ns as usize].push(term as TermId);
            }
        }
        self.namespaces
            .iter()
            .zip(from_lists)
            .all(|(counts, terms)| {
                let mut recorded = counts.terms.clone();
                recorded.sort_unstable();
                recorded == terms
            })
    }

    /// Scores every live document in scope without pruning; the oracle for the pruned search.
    /// It reads each document's terms from `doc_terms` (by docno: what was inserted), not from
    /// the posting lists, so a list lost or damaged by compaction or renumbering shows.
    #[cfg(test)]
    fn search_exhaustive(
        &self,
        doc_terms: &[&DocTerms],
        query_terms: &[Box<str>],
        namespace: Option<&Namespace>,
        limit: usize,
        now_ms: i64,
    ) -> Vec<IndexHit> {
        let n = f64::from(self.live_docs);
        let stats = QueryStats::new(self.total_length, n);
        let ns_filter = namespace.map(|ns| self.namespace_ids.get(ns).copied());
        let mut all: Vec<Candidate> = Vec::new();
        for (doc, slot) in self.docs.iter().enumerate() {
            if !self.is_live(doc as DocNo, now_ms) {
                continue;
            }
            if let Some(filter) = ns_filter
                && filter != Some(slot.namespace)
            {
                continue;
            }
            let mut composite = 0.0;
            for term in query_terms {
                let Some(id) = self.dictionary.id(term) else {
                    continue;
                };
                let terms = doc_terms[doc];
                if let Ok(pos) = terms.terms.binary_search_by_key(&id, |&(term, _)| term) {
                    let df = f64::from(self.document_frequency[id as usize]);
                    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                    let tf = terms.terms[pos].1;
                    composite += MATCH_BONUS + stats.bm25(idf, tf, terms.length);
                }
            }
            if composite > 0.0 {
                all.push(Candidate {
                    composite,
                    doc: doc as DocNo,
                    slot,
                });
            }
        }
        all.sort_by(|a, b| b.cmp_rank(a));
        all.truncate(limit);
        all.into_iter()
            .map(|c| IndexHit {
                doc: c.doc,
                id: self.docs[c.doc as usize].id,
                score: c.composite % MATCH_BONUS,
                matched: (c.composite / MATCH_BONUS).floor() as u32,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::text::{Fields, analyze_document, analyze_query};
    use proptest::prelude::*;

    fn doc(index: &SearchIndex, text: &str) -> DocTerms {
        analyze_document(
            &Fields {
                content: text,
                summary: None,
                keywords: &[],
                tags: &[],
                context: None,
            },
            &index.dictionary,
        )
    }

    fn new_index() -> SearchIndex {
        SearchIndex::new(Arc::new(Dictionary::default()))
    }

    fn ns(i: usize) -> Namespace {
        Namespace::Project(format!("p{i}"))
    }

    #[test]
    fn more_matched_terms_rank_first() {
        let mut index = new_index();
        let both = MemoryId::new();
        let one = MemoryId::new();
        // The single-term document repeats its term, so plain BM25 could rank it first.
        index.insert(
            one,
            &ns(0),
            5,
            1,
            None,
            &doc(&index, "shader shader shader shader"),
        );
        index.insert(
            both,
            &ns(0),
            5,
            1,
            None,
            &doc(&index, "shader compile error in a long sentence"),
        );
        let hits = index.search(&analyze_query("shader compile"), None, 10, 0, |_, _| true);
        assert_eq!(hits.len(), 2);
        assert_eq!((hits[0].id, hits[0].matched), (both, 2));
        assert_eq!((hits[1].id, hits[1].matched), (one, 1));
        assert!(hits[0].score > 0.0 && hits[1].score > 0.0);
    }

    #[test]
    fn ties_break_by_importance_then_recency() {
        let mut index = new_index();
        let old_high = MemoryId::new();
        let new_low = MemoryId::new();
        let new_high = MemoryId::new();
        index.insert(old_high, &ns(0), 9, 10, None, &doc(&index, "volume"));
        index.insert(new_low, &ns(0), 2, 30, None, &doc(&index, "volume"));
        index.insert(new_high, &ns(0), 9, 20, None, &doc(&index, "volume"));
        let ids: Vec<_> = index
            .search(&analyze_query("volume"), None, 10, 0, |_, _| true)
            .iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(ids, vec![new_high, old_high, new_low]);
    }

    #[test]
    fn removed_and_expired_documents_disappear() {
        let mut index = new_index();
        let a = index.insert(MemoryId::new(), &ns(0), 5, 1, None, &doc(&index, "alpha"));
        index.insert(
            MemoryId::new(),
            &ns(0),
            5,
            1,
            Some(100),
            &doc(&index, "alpha"),
        );
        assert_eq!(
            index
                .search(&analyze_query("alpha"), None, 10, 50, |_, _| true)
                .len(),
            2
        );
        assert_eq!(
            index
                .search(&analyze_query("alpha"), None, 10, 100, |_, _| true)
                .len(),
            1
        );
        index.remove(a);
        assert!(
            index
                .search(&analyze_query("alpha"), None, 10, 100, |_, _| true)
                .is_empty()
        );
        assert_eq!(index.live_docs(), 1);
    }

    #[test]
    fn seek_finds_the_first_position_at_or_after_target() {
        let mut list = PostingList::default();
        for d in (0..1000).step_by(3) {
            list.push(d, 1.0, 1.0);
        }
        for from in [0usize, 5, 100, 333] {
            for target in [0u32, 1, 3, 500, 998, 999, 2000] {
                let expected = (from..list.postings.len())
                    .find(|&p| list.postings[p].doc >= target)
                    .unwrap_or(list.postings.len());
                assert_eq!(
                    list.seek(from, target),
                    expected.max(from),
                    "{from} {target}"
                );
            }
        }
    }

    #[test]
    fn insert_many_builds_the_same_index_as_single_inserts() {
        let texts = [
            "red cube light",
            "blue cube",
            "light shadow red",
            "red red red",
            "frame",
        ];
        let mut one_by_one = new_index();
        let mut bulk = SearchIndex::new(one_by_one.dictionary.clone());
        let ids: Vec<MemoryId> = texts.iter().map(|_| MemoryId::new()).collect();
        let analysed: Vec<DocTerms> = texts.iter().map(|t| doc(&one_by_one, t)).collect();
        for (i, terms) in analysed.iter().enumerate() {
            one_by_one.insert(ids[i], &ns(i % 2), 5, i as i64, None, terms);
        }
        let namespaces: Vec<Namespace> = (0..texts.len()).map(|i| ns(i % 2)).collect();
        let new_docs: Vec<NewDoc<'_>> = analysed
            .iter()
            .enumerate()
            .map(|(i, terms)| NewDoc {
                id: ids[i],
                namespace: &namespaces[i],
                importance: 5,
                recency: i as i64,
                expires_at: None,
                terms,
            })
            .collect();
        bulk.insert_many(&new_docs);
        for query in ["red", "cube light", "shadow frame blue"] {
            for filter in [None, Some(ns(0)), Some(ns(1))] {
                let a =
                    one_by_one.search(&analyze_query(query), filter.as_ref(), 10, 0, |_, _| true);
                let b = bulk.search(&analyze_query(query), filter.as_ref(), 10, 0, |_, _| true);
                assert_eq!(a, b, "{query}");
            }
        }
    }

    const WORDS: &[&str] = &[
        "render", "shader", "volume", "smoke", "plasma", "light", "camera", "mesh", "error",
        "build", "cache", "frame", "noise", "color", "depth",
    ];

    fn arb_text() -> impl Strategy<Value = String> {
        // Zipf-ish: early words are far more likely.
        proptest::collection::vec((0usize..WORDS.len(), 0usize..WORDS.len()), 1..12).prop_map(
            |pairs| {
                pairs
                    .into_iter()
                    .map(|(a, b)| WORDS[a.min(b)])
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn pruned_search_equals_exhaustive_scoring(
            docs in proptest::collection::vec((arb_text(), 0usize..3, 1u8..=10, 0i64..5, any::<bool>()), 1..80),
            removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
            later_removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
            query in proptest::collection::vec(0usize..WORDS.len(), 1..4),
            limit in 1usize..12,
            filter in proptest::option::of(0usize..3),
        ) {
            let mut index = new_index();
            let mut docnos = Vec::new();
            let analysed: Vec<DocTerms> = docs.iter().map(|(text, ..)| doc(&index, text)).collect();
            for ((_, space, importance, recency, expiring), terms) in docs.iter().zip(&analysed) {
                let expires = expiring.then_some(50);
                docnos.push(index.insert(MemoryId::new(), &ns(*space), *importance, *recency, expires, terms));
            }
            // By docno; renumbering moves them as it moves the documents.
            let mut doc_terms: Vec<&DocTerms> = analysed.iter().collect();
            for r in removals {
                index.remove(docnos[r.index(docnos.len())]);
            }
            let query = analyze_query(&query.iter().map(|&i| WORDS[i]).collect::<Vec<_>>().join(" "));
            let namespace = filter.map(ns);
            let mut before_renumbering = Vec::new();
            // Then: renumbered; then more removals (compacting lists of the renumbered index).
            for phase in 0..3 {
                if phase == 2 {
                    let live = index.docs.len();
                    for r in later_removals.iter().filter(|_| live > 0) {
                        index.remove(r.index(live) as DocNo);
                    }
                }
                if phase == 1 {
                    let live = index.live_docs();
                    let map = index.renumber();
                    let mut moved = doc_terms.clone();
                    moved.truncate(live as usize);
                    for (old, &new) in map.iter().enumerate() {
                        if new != DocNo::MAX {
                            moved[new as usize] = doc_terms[old];
                        }
                    }
                    doc_terms = moved;
                    prop_assert_eq!(index.docs.len(), live as usize);
                    prop_assert_eq!(map.iter().filter(|&&d| d != DocNo::MAX).count(), live as usize);
                }
                prop_assert!(index.lists_are_consistent());
                for now in [0, 60] {
                    let pruned = index.search(&query, namespace.as_ref(), limit, now, |_, _| true);
                    let exhaustive = index.search_exhaustive(&doc_terms, &query, namespace.as_ref(), limit, now);
                    let pruned_ids: Vec<_> = pruned.iter().map(|h| (h.doc, h.matched)).collect();
                    let exhaustive_ids: Vec<_> = exhaustive.iter().map(|h| (h.doc, h.matched)).collect();
                    prop_assert_eq!(pruned_ids, exhaustive_ids);
                    for (p, e) in pruned.iter().zip(&exhaustive) {
                        prop_assert!((p.score - e.score).abs() < 1e-6);
                    }
                    // Renumbering changes no result: same memories, order and scores.
                    let found: Vec<_> = pruned.iter().map(|h| (h.id, h.matched, h.score)).collect();
                    if phase == 1 {
                        prop_assert_eq!(&found, &before_renumbering[usize::from(now > 0)]);
                    } else if phase == 0 {
                        before_renumbering.push(found);
                    }
                }
            }
        }
    }
}
