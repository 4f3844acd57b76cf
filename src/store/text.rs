//! Text analysis shared by indexing and querying: UAX #29 word segmentation
//! (`unicode-segmentation`), lower-casing, and English Snowball stemming (`rust-stemmers`).
//!
//! Documents are analysed as BM25F-style weighted term frequencies: each field's occurrences count
//! with the field's weight, and the document length is the weighted token count.

use rustc_hash::FxHashMap as HashMap;
use std::cell::RefCell;
use std::sync::LazyLock;

use rust_stemmers::{Algorithm, Stemmer};
use unicode_segmentation::UnicodeSegmentation;

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

/// Stemming dominates analysis cost and the vocabulary is Zipf-distributed, so each thread keeps
/// the stems it has computed. Bounded: cleared when it grows past this many words.
const STEM_CACHE_LIMIT: usize = 200_000;

thread_local! {
    static STEM_CACHE: RefCell<HashMap<Box<str>, Box<str>>> = RefCell::new(HashMap::default());
}

/// Calls `sink` with the normalised term of every word in `text`.
pub(crate) fn for_each_term(text: &str, mut sink: impl FnMut(&str)) {
    STEM_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        for word in text.unicode_words() {
            if let Some(term) = cache.get(word) {
                sink(term);
                continue;
            }
            let lower = word.to_lowercase();
            let stem: Box<str> = STEMMER.stem(&lower).into();
            sink(&stem);
            if cache.len() >= STEM_CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(word.into(), stem);
        }
    });
}

/// The analysed form of a document: distinct terms with weighted frequencies.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct DocTerms {
    /// Distinct terms and their weighted term frequency, sorted by term.
    pub terms: Vec<(Box<str>, f32)>,
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
pub(crate) fn analyze_document(fields: &Fields<'_>) -> DocTerms {
    let mut counts: HashMap<Box<str>, f32> = HashMap::default();
    let mut length = 0.0f32;
    let mut add = |text: &str, weight: f32| {
        for_each_term(text, |term| {
            length += weight;
            match counts.get_mut(term) {
                Some(tf) => *tf += weight,
                None => {
                    counts.insert(term.into(), weight);
                }
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
    let mut terms: Vec<(Box<str>, f32)> = counts.into_iter().collect();
    terms.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    DocTerms { terms, length }
}

/// Analyses a query into its distinct terms, in order of first appearance.
pub(crate) fn analyze_query(query: &str) -> Vec<Box<str>> {
    let mut terms: Vec<Box<str>> = Vec::new();
    for_each_term(query, |term| {
        if !terms.iter().any(|t| &**t == term) {
            terms.push(term.into());
        }
    });
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_and_lowercases() {
        assert_eq!(
            analyze_query("Rendering renders RENDERED render"),
            vec![Box::<str>::from("render")]
        );
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
        let doc = analyze_document(&Fields {
            content: "the shader compiles",
            summary: Some("shader"),
            keywords: &keywords,
            tags: &[],
            context: None,
        });
        let shader = doc
            .terms
            .iter()
            .find(|(t, _)| &**t == "shader")
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
