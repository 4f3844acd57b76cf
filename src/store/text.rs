//! Text analysis shared by indexing and querying: UAX #29 word segmentation
//! (`unicode-segmentation`), lower-casing, and English Snowball stemming (`rust-stemmers`).
//!
//! Documents are analysed as BM25F-style weighted term frequencies: each field's occurrences count
//! with the field's weight, and the document length is the weighted token count. Terms become ids
//! in a [`Dictionary`] shared by every analysing thread, so the writer and the index rebuild only
//! handle integers.
//!
//! ASCII text takes a fast path that implements the UAX #29 word rules for ASCII characters
//! directly (a property test checks it against `unicode-segmentation`); anything else goes through
//! `unicode-segmentation`.

use rustc_hash::FxHashMap as HashMap;
use std::cell::RefCell;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use dashmap::DashMap;

use rust_stemmers::{Algorithm, Stemmer};
use unicode_segmentation::UnicodeSegmentation;

use super::index::MAX_QUERY_TERMS;

/// Weight of a token in the content field.
pub const CONTENT_WEIGHT: f32 = 1.0;
/// Weight of a token in the summary field.
pub const SUMMARY_WEIGHT: f32 = 2.0;
/// Weight of a token in a keyword.
pub const KEYWORD_WEIGHT: f32 = 3.0;
/// Weight of a token in a tag.
pub const TAG_WEIGHT: f32 = 3.0;
/// Weight of a token in the context field.
pub const CONTEXT_WEIGHT: f32 = 0.5;

static STEMMER: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::English));

/// Analysis cost is dominated by per-word lookups and the vocabulary is Zipf-distributed, so each
/// thread remembers the term id of every raw word it has seen, for one dictionary at a time.
/// Bounded: cleared when it grows past this many words.
const WORD_CACHE_LIMIT: usize = 200_000;

struct WordCache {
    dictionary: u64,
    ids: HashMap<Box<str>, TermId>,
}

thread_local! {
    static WORD_CACHE: RefCell<WordCache> = RefCell::new(WordCache {
        dictionary: 0,
        ids: HashMap::default(),
    });
}

/// Tells dictionaries apart in the per-thread caches; 0 is never used.
static NEXT_DICTIONARY: AtomicU64 = AtomicU64::new(1);

/// A term's id in a [`Dictionary`].
pub(crate) type TermId = u32;

/// Term strings to ids, shared by all threads of one store. Ids are dense and never reused.
#[derive(Debug)]
pub(crate) struct Dictionary {
    ids: DashMap<Box<str>, TermId, rustc_hash::FxBuildHasher>,
    next: AtomicU32,
    identity: u64,
}

impl Default for Dictionary {
    fn default() -> Self {
        Dictionary {
            ids: DashMap::default(),
            next: AtomicU32::new(0),
            identity: NEXT_DICTIONARY.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Dictionary {
    /// The id of a term, assigning one if it is new.
    pub fn id_or_insert(&self, term: &str) -> TermId {
        if let Some(id) = self.ids.get(term) {
            return *id;
        }
        *self
            .ids
            .entry(term.into())
            .or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// The id of a known term.
    pub fn id(&self, term: &str) -> Option<TermId> {
        self.ids.get(term).map(|id| *id)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AsciiClass {
    Letter,
    Digit,
    Underscore,
    /// `:` — joins letters only.
    MidLetter,
    /// `.` and `'` — join letters or digits.
    MidNumLet,
    /// `,` and `;` — join digits only.
    MidNum,
    Other,
}

fn ascii_class(b: u8) -> AsciiClass {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' => AsciiClass::Letter,
        b'0'..=b'9' => AsciiClass::Digit,
        b'_' => AsciiClass::Underscore,
        b':' => AsciiClass::MidLetter,
        b'.' | b'\'' => AsciiClass::MidNumLet,
        b',' | b';' => AsciiClass::MidNum,
        _ => AsciiClass::Other,
    }
}

/// UAX #29 words of ASCII text, keeping those with a letter or digit (as `unicode_words` does).
fn ascii_words<'a>(text: &'a str, mut sink: impl FnMut(&'a str)) {
    use AsciiClass::{Digit, Letter, MidLetter, MidNum, MidNumLet, Underscore};
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let class = ascii_class(bytes[i]);
        if !matches!(class, Letter | Digit | Underscore) {
            i += 1;
            continue;
        }
        let start = i;
        let mut last = class;
        let mut alphanumeric = class != Underscore;
        i += 1;
        while i < bytes.len() {
            let next = ascii_class(bytes[i]);
            if matches!(next, Letter | Digit | Underscore) {
                alphanumeric |= next != Underscore;
                last = next;
                i += 1;
                continue;
            }
            // A middle character joins only between two letters or two digits (WB6/7, WB11/12).
            let after = bytes.get(i + 1).map(|&b| ascii_class(b));
            let joins = matches!(
                (last, next, after),
                (Letter, MidLetter | MidNumLet, Some(Letter))
                    | (Digit, MidNum | MidNumLet, Some(Digit))
            );
            if !joins {
                break;
            }
            i += 2;
        }
        if alphanumeric {
            sink(&text[start..i]);
        }
    }
}

fn for_each_word<'a>(text: &'a str, mut sink: impl FnMut(&'a str)) {
    if text.is_ascii() {
        ascii_words(text, sink);
    } else {
        for word in text.unicode_words() {
            sink(word);
        }
    }
}

/// The normalised term of one word: lower-cased and stemmed.
fn normalise(word: &str) -> Box<str> {
    STEMMER.stem(&word.to_lowercase()).into()
}

/// Calls `sink` with the term id of every word in `text`, assigning ids to new terms.
fn for_each_term_id(text: &str, dictionary: &Dictionary, mut sink: impl FnMut(TermId)) {
    WORD_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.dictionary != dictionary.identity {
            cache.ids.clear();
            cache.dictionary = dictionary.identity;
        }
        for_each_word(text, |word| {
            if let Some(&id) = cache.ids.get(word) {
                sink(id);
                return;
            }
            let id = dictionary.id_or_insert(&normalise(word));
            sink(id);
            if cache.ids.len() >= WORD_CACHE_LIMIT {
                cache.ids.clear();
            }
            cache.ids.insert(word.into(), id);
        });
    });
}

/// The analysed form of a document: distinct terms with weighted frequencies.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct DocTerms {
    /// Distinct terms and their weighted term frequency, sorted by term id.
    pub terms: Vec<(TermId, f32)>,
    /// Weighted number of tokens.
    pub length: f32,
}

/// The searchable fields of a memory, borrowed.
pub(crate) struct Fields<'a> {
    pub content: &'a str,
    pub summary: Option<&'a str>,
    pub keywords: &'a [String],
    pub tags: &'a [String],
    pub context: Option<&'a str>,
}

/// Analyses a document's fields.
pub(crate) fn analyze_document(fields: &Fields<'_>, dictionary: &Dictionary) -> DocTerms {
    let mut counts: HashMap<TermId, f32> = HashMap::default();
    let mut length = 0.0f32;
    let mut add = |text: &str, weight: f32| {
        for_each_term_id(text, dictionary, |id| {
            length += weight;
            *counts.entry(id).or_default() += weight;
        });
    };
    add(fields.content, CONTENT_WEIGHT);
    if let Some(summary) = fields.summary {
        add(summary, SUMMARY_WEIGHT);
    }
    for keyword in fields.keywords {
        add(keyword, KEYWORD_WEIGHT);
    }
    for tag in fields.tags {
        add(tag, TAG_WEIGHT);
    }
    if let Some(context) = fields.context {
        add(context, CONTEXT_WEIGHT);
    }
    let mut terms: Vec<(TermId, f32)> = counts.into_iter().collect();
    terms.sort_unstable_by_key(|t| t.0);
    DocTerms { terms, length }
}

/// Analyses a query into its first [`MAX_QUERY_TERMS`] distinct terms, in order of first
/// appearance (the search uses no more; a query may be a whole error log, and collecting every
/// distinct word of it was quadratic).
pub(crate) fn analyze_query(query: &str) -> Vec<Box<str>> {
    let mut terms: Vec<Box<str>> = Vec::new();
    for_each_word(query, |word| {
        if terms.len() == MAX_QUERY_TERMS {
            return;
        }
        let term = normalise(word);
        if !terms.contains(&term) {
            terms.push(term);
        }
    });
    terms
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn ascii_fast_path_equals_unicode_segmentation(text in "[aZ9_.:',; \\-\n]{0,24}") {
            let mut fast = Vec::new();
            ascii_words(&text, |w| fast.push(w));
            let reference: Vec<&str> = text.unicode_words().collect();
            prop_assert_eq!(fast, reference);
        }
    }

    #[test]
    fn ascii_words_follow_uax29() {
        let mut words = Vec::new();
        ascii_words("sm_90 can't e.g. 3.14 a:b 1,000 x.. __ _a", |w| {
            words.push(w)
        });
        assert_eq!(
            words,
            ["sm_90", "can't", "e.g", "3.14", "a:b", "1,000", "x", "_a"]
        );
    }

    #[test]
    fn stems_and_lowercases() {
        assert_eq!(
            analyze_query("Rendering renders RENDERED render"),
            vec![Box::<str>::from("render")]
        );
    }

    #[test]
    fn a_query_keeps_its_first_distinct_terms_up_to_the_search_limit() {
        let log: Vec<String> = (0..10_000).map(|i| format!("symbol{i}")).collect();
        let terms = analyze_query(&log.join(" "));
        assert_eq!(terms.len(), MAX_QUERY_TERMS);
        assert_eq!((&*terms[0], &*terms[63]), ("symbol0", "symbol63"));
    }

    #[test]
    fn segments_unicode_words() {
        let terms = analyze_query("Größe, naïve café—日本語");
        assert!(terms.iter().any(|t| t.starts_with("größ")), "{terms:?}");
        assert!(terms.iter().any(|t| t.starts_with("caf")), "{terms:?}");
        assert!(terms.len() >= 4, "{terms:?}");
    }

    #[test]
    fn fields_carry_their_weights() {
        let keywords = vec!["shader".to_string()];
        let dictionary = Dictionary::default();
        let doc = analyze_document(
            &Fields {
                content: "the shader compiles",
                summary: Some("shader"),
                keywords: &keywords,
                tags: &[],
                context: None,
            },
            &dictionary,
        );
        let shader_id = dictionary.id("shader");
        let shader = doc
            .terms
            .iter()
            .find(|(t, _)| Some(*t) == shader_id)
            .map(|(_, tf)| *tf);
        assert_eq!(
            shader,
            Some(CONTENT_WEIGHT + SUMMARY_WEIGHT + KEYWORD_WEIGHT)
        );
        assert_eq!(
            doc.length,
            3.0 * CONTENT_WEIGHT + SUMMARY_WEIGHT + KEYWORD_WEIGHT
        );
    }
}
