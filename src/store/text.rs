//! Text analysis shared by indexing and querying: UAX #29 word segmentation
//! (`unicode-segmentation`), case folding, and English Snowball stemming (`rust-stemmers`).
//!
//! Each word is folded before it is stemmed: ASCII words are lower-cased; other words are put in
//! NFKC (`icu_normalizer`: composed and decomposed accents, fullwidth letters and ligatures become
//! one form), lower-cased with the full folds of `ß`/`ẞ` (to `ss`) and final `ς` (to `σ`), and
//! their typographic apostrophes (U+2018, U+2019, U+02BC) become `'`, so `user’s` stems to `user`
//! as `user's` does. A word joined by `.` or `:` between letters (`index.rs`, `Store.open`,
//! `a:b`) is indexed whole and as each of its parts, so a file or dotted name is found by any of
//! its parts, and a query for the whole name matches the whole term and every part (ranking the
//! document that has the whole name first, as it matches more terms).
//!
//! Nothing analysed is persisted: the index is rebuilt from the memories when a store opens, so a
//! change to the analysis applies to every memory at the next open.
//!
//! Documents are analysed as BM25F-style weighted term frequencies: each field's occurrences count
//! with the field's weight, and the document length is the weighted word count (a word's parts
//! add to its terms' frequencies, not to the length). Terms become ids in a [`Dictionary`] shared
//! by every analysing thread, so the writer and the index rebuild only handle integers.
//!
//! ASCII text takes a fast path that implements the UAX #29 word rules for ASCII characters
//! directly (a property test checks it against `unicode-segmentation`); anything else goes through
//! `unicode-segmentation`, and only its non-ASCII words pay for normalisation.

use rustc_hash::FxHashMap as HashMap;
use std::cell::RefCell;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use dashmap::DashMap;

use icu_normalizer::ComposingNormalizerBorrowed;
use rust_stemmers::{Algorithm, Stemmer};
use unicode_segmentation::{UnicodeSegmentation, UnicodeWords};

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
/// Bounded: cleared when it grows past this many words, and words longer than
/// [`WORD_CACHE_MAX_BYTES`] are not kept (base64 blobs, hex dumps and log lines without spaces are
/// rarely seen twice and would make the cache's bytes unbounded).
const WORD_CACHE_LIMIT: usize = 200_000;
/// The longest word the per-thread cache keeps.
const WORD_CACHE_MAX_BYTES: usize = 64;

struct WordCache {
    dictionary: u64,
    ids: HashMap<Box<str>, WordIds>,
    /// Scratch space for folding a word, reused so a new word costs no allocation of its own.
    folded: String,
    /// Scratch space for a new word's term ids.
    fresh: Vec<TermId>,
}

/// The term ids of one word: the whole word's, then its parts' (see the module docs).
enum WordIds {
    One(TermId),
    Many(Box<[TermId]>),
}

impl WordIds {
    fn new(ids: &[TermId]) -> Self {
        match ids {
            [id] => WordIds::One(*id),
            ids => WordIds::Many(ids.into()),
        }
    }

    fn as_slice(&self) -> &[TermId] {
        match self {
            WordIds::One(id) => std::slice::from_ref(id),
            WordIds::Many(ids) => ids,
        }
    }
}

thread_local! {
    static WORD_CACHE: RefCell<WordCache> = RefCell::new(WordCache {
        dictionary: 0,
        ids: HashMap::default(),
        folded: String::new(),
        fresh: Vec::new(),
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

    /// How many terms it holds.
    pub fn len(&self) -> usize {
        self.ids.len()
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
struct AsciiWords<'a> {
    text: &'a str,
    at: usize,
}

fn ascii_words(text: &str) -> AsciiWords<'_> {
    AsciiWords { text, at: 0 }
}

impl<'a> Iterator for AsciiWords<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        use AsciiClass::{Digit, Letter, MidLetter, MidNum, MidNumLet, Underscore};
        let bytes = self.text.as_bytes();
        let mut i = self.at;
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
                self.at = i;
                return Some(&self.text[start..i]);
            }
        }
        self.at = i;
        None
    }
}

/// The UAX #29 words of a text: the ASCII fast path or `unicode-segmentation`.
enum Words<'a> {
    Ascii(AsciiWords<'a>),
    Unicode(UnicodeWords<'a>),
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            Words::Ascii(words) => words.next(),
            Words::Unicode(words) => words.next(),
        }
    }
}

fn words(text: &str) -> Words<'_> {
    if text.is_ascii() {
        Words::Ascii(ascii_words(text))
    } else {
        Words::Unicode(text.unicode_words())
    }
}

/// Folds one word into `out` (cleared first): lower-cased, and for a non-ASCII word also NFKC,
/// the full folds of `ß` and `ς`, and typographic apostrophes as `'` (see the module docs).
/// Lessons fold their words with it too, so they compare words as the search does.
pub(crate) fn fold_into(word: &str, out: &mut String) {
    out.clear();
    if word.is_ascii() {
        out.push_str(word);
        out.make_ascii_lowercase();
        return;
    }
    const NFKC: ComposingNormalizerBorrowed<'static> = ComposingNormalizerBorrowed::new_nfkc();
    for c in NFKC.normalize(word).chars() {
        match c {
            '\u{2018}' | '\u{2019}' | '\u{02BC}' => out.push('\''),
            'ß' | 'ẞ' => out.push_str("ss"),
            'ς' => out.push('σ'),
            c => out.extend(c.to_lowercase()),
        }
    }
    // Lower-casing can leave a string that is not NFKC (as Unicode's NFKC_Casefold accounts for).
    if !out.is_ascii() && !NFKC.is_normalized(out) {
        *out = NFKC.normalize(out).into_owned();
    }
}

/// Calls `sink` with each part of a word joined by `.` or `:` between letters (`index.rs` →
/// `index`, `rs`); nothing when the word has no such joint.
fn for_each_part<'a>(word: &'a str, mut sink: impl FnMut(&'a str)) {
    if !word.bytes().any(|b| b == b'.' || b == b':') {
        return;
    }
    let mut start = 0;
    let mut previous: Option<char> = None;
    let mut chars = word.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | ':')
            && previous.is_some_and(char::is_alphabetic)
            && chars.peek().is_some_and(|&(_, next)| next.is_alphabetic())
        {
            sink(&word[start..i]);
            start = i + c.len_utf8();
        }
        previous = Some(c);
    }
    if start > 0 {
        sink(&word[start..]);
    }
}

/// Calls `sink` with the terms of one word: the folded, stemmed word, then its parts' (see
/// [`for_each_part`]). `folded` is scratch space.
fn for_each_term_of_word(word: &str, folded: &mut String, mut sink: impl FnMut(&str)) {
    fold_into(word, folded);
    sink(&stem(folded));
    for_each_part(folded, |part| sink(&stem(part)));
}

/// The English stem of a folded word. Every suffix the Snowball English stemmer removes or
/// rewrites ends in a letter or an apostrophe, so a word that ends in a digit comes back as it
/// is: it skips the stemmer (ids, versions and counts are most of the new words in tool output,
/// and the stemmer cost more than the rest of their analysis; a test holds this to the stemmer).
fn stem(word: &str) -> std::borrow::Cow<'_, str> {
    if word.as_bytes().last().is_some_and(u8::is_ascii_digit) {
        std::borrow::Cow::Borrowed(word)
    } else {
        STEMMER.stem(word)
    }
}

/// Calls `sink` with the term ids of each word in `text` (the whole word's first, then its parts'),
/// assigning ids to new terms.
fn for_each_word_ids(text: &str, dictionary: &Dictionary, mut sink: impl FnMut(&[TermId])) {
    WORD_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let WordCache {
            dictionary: identity,
            ids: cached,
            folded,
            fresh,
        } = &mut *cache;
        if *identity != dictionary.identity {
            cached.clear();
            *identity = dictionary.identity;
        }
        for word in words(text) {
            if let Some(ids) = cached.get(word) {
                sink(ids.as_slice());
                continue;
            }
            fresh.clear();
            for_each_term_of_word(word, folded, |term| {
                fresh.push(dictionary.id_or_insert(term));
            });
            sink(fresh);
            if word.len() > WORD_CACHE_MAX_BYTES {
                // Nor does the scratch space keep a long word's size (a 10 MB blob held 10 MB
                // on every thread that analysed one).
                folded.clear();
                fresh.clear();
                folded.shrink_to(WORD_CACHE_MAX_BYTES);
                fresh.shrink_to(WORD_CACHE_MAX_BYTES);
                continue;
            }
            if cached.len() >= WORD_CACHE_LIMIT {
                cached.clear();
            }
            cached.insert(word.into(), WordIds::new(fresh));
        }
    });
}

/// The analysed form of a document: distinct terms with weighted frequencies.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct DocTerms {
    /// Distinct terms and their weighted term frequency, sorted by term id.
    pub terms: Vec<(TermId, f32)>,
    /// Weighted number of words.
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
        for_each_word_ids(text, dictionary, |ids| {
            length += weight;
            for &id in ids {
                *counts.entry(id).or_default() += weight;
            }
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
/// appearance (a search uses no more; a query may be a whole error log, and collecting every
/// distinct word of it was quadratic).
pub(crate) fn analyze_query(query: &str) -> Vec<Box<str>> {
    query_terms(query, |_| true)
}

/// Analyses a query into its first [`MAX_QUERY_TERMS`] distinct terms that `matches` keeps, in
/// order of first appearance: for a store's search, those some live memory holds; for a context
/// request, those some candidate holds. Terms that can match nothing are skipped while
/// collecting rather than cut afterwards: an error log whose first hundred words are ids still
/// finds the words after them. (A dictionary keeps the terms of archived, rewritten and purged
/// memories, or of earlier requests, and those would take places in the cut.)
pub(crate) fn analyze_query_matching(
    query: &str,
    matches: impl FnMut(&str) -> bool,
) -> Vec<Box<str>> {
    query_terms(query, matches)
}

fn query_terms(query: &str, mut known: impl FnMut(&str) -> bool) -> Vec<Box<str>> {
    let mut terms: Vec<Box<str>> = Vec::new();
    let mut folded = String::new();
    for word in words(query) {
        for_each_term_of_word(word, &mut folded, |term| {
            if terms.len() < MAX_QUERY_TERMS && !terms.iter().any(|t| **t == *term) && known(term) {
                terms.push(term.into());
            }
        });
        if terms.len() == MAX_QUERY_TERMS {
            break;
        }
    }
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
            let fast: Vec<&str> = ascii_words(&text).collect();
            let reference: Vec<&str> = text.unicode_words().collect();
            prop_assert_eq!(fast, reference);
        }

        // Every word and part the analysis stems, those ending in a digit included.
        #[test]
        fn skipping_the_stemmer_for_a_word_that_ends_in_a_digit_changes_no_term(
            text in "[a-zA-Z0-9'.:_ \u{2019}\u{e9}\u{df}]{0,16}[0-9]"
        ) {
            let mut folded = String::new();
            for word in words(&text) {
                fold_into(word, &mut folded);
                prop_assert_eq!(STEMMER.stem(&folded), stem(&folded));
                for_each_part(&folded, |part| assert_eq!(STEMMER.stem(part), stem(part)));
            }
        }

        // The CLI refuses text with no alphanumeric character as having no word to index.
        #[test]
        fn a_text_has_a_word_exactly_when_it_has_an_alphanumeric_character(
            text in "[a9_.:'\u{2019} \\-!é\u{301}日]{0,12}",
        ) {
            prop_assert_eq!(
                words(&text).next().is_some(),
                text.chars().any(char::is_alphanumeric)
            );
        }
    }

    #[test]
    fn ascii_words_follow_uax29() {
        let words: Vec<&str> = ascii_words("sm_90 can't e.g. 3.14 a:b 1,000 x.. __ _a").collect();
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
        // ß folds to ss.
        assert!(terms.iter().any(|t| t.starts_with("gröss")), "{terms:?}");
        assert!(terms.iter().any(|t| t.starts_with("caf")), "{terms:?}");
        assert!(terms.len() >= 4, "{terms:?}");
    }

    fn terms(text: &str) -> Vec<String> {
        analyze_query(text).iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn typographic_apostrophes_fold_to_ascii_and_possessives_stem() {
        assert_eq!(terms("user’s user‘s userʼs user's users"), ["user"]);
        assert_eq!(terms("can’t"), terms("can't"));
    }

    #[test]
    fn accents_width_and_full_case_folds_are_one_term() {
        assert_eq!(terms("caf\u{e9}"), terms("cafe\u{301}"));
        assert_eq!(terms("Straße"), terms("STRASSE"));
        assert_eq!(terms("STRAẞE"), terms("strasse"));
        assert_eq!(terms("ＧＰＵ"), ["gpu"]);
        assert_eq!(terms("ﬁle"), terms("file"));
        assert_eq!(terms("ΟΔΟΣ"), terms("οδος"));
    }

    #[test]
    fn dotted_and_colon_joined_words_add_their_parts() {
        // Each term is stemmed: the whole word too.
        assert_eq!(terms("index.rs"), ["index.r", "index", "rs"]);
        assert_eq!(terms("Store.open"), ["store.open", "store", "open"]);
        assert_eq!(terms("a:b.c"), ["a:b.c", "a", "b", "c"]);
        // Numbers and apostrophes are not split.
        assert_eq!(terms("3.14 can't"), ["3.14", "can't"]);
    }

    #[test]
    fn a_dotted_word_counts_once_in_the_length_and_its_parts_in_the_frequencies() {
        let dictionary = Dictionary::default();
        let fields = |content| Fields {
            content,
            summary: None,
            keywords: &[],
            tags: &[],
            context: None,
        };
        let doc = analyze_document(&fields("open config.toml"), &dictionary);
        assert_eq!(doc.length, 2.0 * CONTENT_WEIGHT);
        assert_eq!(doc.terms.len(), 4);
        // Cached words give the same result as new ones.
        assert_eq!(
            analyze_document(&fields("open config.toml"), &dictionary),
            doc
        );
    }

    #[test]
    fn a_query_for_a_store_skips_unknown_terms_before_the_limit() {
        let dictionary = Dictionary::default();
        for term in ["plasma", "render"] {
            dictionary.id_or_insert(term);
        }
        let ids: Vec<String> = (0..500).map(|i| format!("id{i}")).collect();
        let query = format!("{} rendering PLASMA plasma", ids.join(" "));
        assert_eq!(
            analyze_query_matching(&query, |term| dictionary.id(term).is_some()),
            vec![Box::<str>::from("render"), Box::from("plasma")]
        );
        assert_eq!(analyze_query(&query).len(), MAX_QUERY_TERMS);
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
