//! BM25 over one request's candidates, and extractive compression of an item to a token budget.

use rustc_hash::FxHashSet as HashSet;
use unicode_segmentation::UnicodeSegmentation;

use super::TokenCounter;
use crate::store::text::{
    Dictionary, DocTerms, Fields, TermId, analyze_document, analyze_query_matching,
};

/// BM25 term-frequency saturation.
const K1: f32 = 1.2;
/// BM25 length normalisation.
const B: f32 = 0.75;
/// Marks where sentences were left out of a compressed item.
const ELISION: &str = "… ";

/// The analysed terms of a text.
pub(super) fn analyze(text: &str, dictionary: &Dictionary) -> DocTerms {
    analyze_document(
        &Fields {
            content: text,
            summary: None,
            keywords: &[],
            tags: &[],
            context: None,
        },
        dictionary,
    )
}

fn term_frequency(doc: &DocTerms, term: TermId) -> f32 {
    doc.terms
        .binary_search_by_key(&term, |t| t.0)
        .map(|i| doc.terms[i].1)
        .unwrap_or(0.0)
}

/// BM25 scoring of documents against one query, with the statistics of one pool of documents.
#[derive(Debug)]
pub(super) struct Bm25<'d> {
    /// The query's terms that occur in the pool, with their IDF.
    terms: Vec<(TermId, f32)>,
    average_length: f32,
    /// The dictionary the pool's terms were given ids by (sentences are analysed with it).
    dictionary: &'d Dictionary,
}

impl<'d> Bm25<'d> {
    /// Statistics of `docs` for the terms of `query`.
    pub fn new<'a>(
        query: &str,
        dictionary: &'d Dictionary,
        docs: impl Iterator<Item = &'a DocTerms> + Clone,
    ) -> Bm25<'d> {
        // Only terms some document of this pool holds take the query's places: a task text
        // led by ids and paths still ranks by the words after them. (Known to the dictionary is
        // not enough: it keeps every term of every earlier request, and those took the places
        // of the words this pool matches.)
        let pool: HashSet<TermId> = docs
            .clone()
            .flat_map(|doc| doc.terms.iter().map(|&(term, _)| term))
            .collect();
        let query_terms: Vec<TermId> = analyze_query_matching(query, |term| {
            dictionary.id(term).is_some_and(|id| pool.contains(&id))
        })
        .iter()
        .filter_map(|term| dictionary.id(term))
        .collect();
        let (mut count, mut total_length) = (0usize, 0.0f32);
        let mut frequencies = vec![0usize; query_terms.len()];
        for doc in docs {
            count += 1;
            total_length += doc.length;
            for (i, &term) in query_terms.iter().enumerate() {
                if term_frequency(doc, term) > 0.0 {
                    frequencies[i] += 1;
                }
            }
        }
        let n = count as f32;
        let terms = query_terms
            .into_iter()
            .zip(frequencies)
            .filter(|&(_, df)| df > 0)
            .map(|(term, df)| {
                let df = df as f32;
                (term, (1.0 + (n - df + 0.5) / (df + 0.5)).ln())
            })
            .collect();
        Bm25 {
            terms,
            dictionary,
            average_length: if count == 0 {
                1.0
            } else {
                (total_length / n).max(1.0)
            },
        }
    }

    /// The BM25 score of a document of the pool.
    pub fn score(&self, doc: &DocTerms) -> f32 {
        let norm = K1 * (1.0 - B + B * doc.length / self.average_length);
        self.terms
            .iter()
            .map(|&(term, idf)| {
                let tf = term_frequency(doc, term);
                idf * tf * (K1 + 1.0) / (tf + norm)
            })
            .sum()
    }

    /// The relevance of one sentence: saturated term frequencies, no length normalisation (a
    /// long sentence that mentions the task is as useful as a short one).
    pub fn sentence_score(&self, sentence: &DocTerms) -> f32 {
        self.terms
            .iter()
            .map(|&(term, idf)| {
                let tf = term_frequency(sentence, term);
                idf * tf / (tf + K1)
            })
            .sum()
    }
}

/// Compresses `text` to at most `budget` tokens: the sentences most relevant to the query, in
/// their original order, with `…` where sentences were left out (sentences sharing no term with
/// the task are not sent even when there is room: the budget is a cap, not a target, and what
/// one item leaves goes to the items after it); when no sentence is relevant, the leading sentences (truncation at a sentence boundary); when not even one
/// sentence fits, the first one cut at a word boundary, or at a character (grapheme) boundary
/// when not even one word fits (a base64 blob, a long URL). `None` when nothing fits.
pub(super) fn compress(
    text: &str,
    budget: usize,
    bm25: &Bm25<'_>,
    counter: &dyn TokenCounter,
) -> Option<String> {
    let dictionary = bm25.dictionary;
    if budget == 0 {
        return None;
    }
    let sentences: Vec<&str> = text.split_sentence_bounds().collect();
    let scores: Vec<f32> = sentences
        .iter()
        .map(|s| bm25.sentence_score(&analyze(s, dictionary)))
        .collect();
    let tokens: Vec<usize> = sentences.iter().map(|s| counter.count(s)).collect();
    let extractive = scores.iter().any(|&s| s > 0.0);
    let elision_tokens = counter.count(ELISION);

    let mut order: Vec<usize> = (0..sentences.len()).collect();
    if extractive {
        order.retain(|&i| scores[i] > 0.0);
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    }
    let mut chosen = vec![false; sentences.len()];
    let mut used = 0usize;
    for &i in &order {
        // Reserve room for an elision mark before every sentence: joined text is checked below.
        let cost = tokens[i] + elision_tokens;
        if used + cost <= budget {
            chosen[i] = true;
            used += cost;
        } else if !extractive {
            break;
        }
    }
    // Token counts of joined sentences can differ from the sum of their parts at the seams:
    // drop the least relevant (or last) sentence until the joined text fits.
    loop {
        if !chosen.iter().any(|&c| c) {
            break;
        }
        let joined = join_chosen(&sentences, &chosen);
        if counter.count(&joined) <= budget {
            return Some(joined);
        }
        let drop = order.iter().rev().copied().find(|&i| chosen[i]);
        match drop {
            Some(i) => chosen[i] = false,
            None => break,
        }
    }
    let first = order.first().copied().unwrap_or(0);
    truncate_at_word(sentences.get(first)?, budget, counter)
}

fn join_chosen(sentences: &[&str], chosen: &[bool]) -> String {
    let mut out = String::new();
    for (i, sentence) in sentences.iter().enumerate() {
        if !chosen[i] {
            continue;
        }
        if i > 0 && !chosen[i - 1] {
            out.push_str(ELISION);
        }
        out.push_str(sentence);
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    if chosen.last() == Some(&false) {
        out.push(' ');
        out.push_str(ELISION.trim_end());
    }
    out
}

/// The longest prefix of `sentence` ending at a word boundary that fits in `budget` with an
/// elision mark after it; when not even its first word fits, the longest prefix ending at a
/// grapheme boundary (never inside a character).
fn truncate_at_word(sentence: &str, budget: usize, counter: &dyn TokenCounter) -> Option<String> {
    let mut ends: Vec<usize> = Vec::new();
    let mut offset = 0;
    for segment in sentence.split_word_bounds() {
        offset += segment.len();
        if !segment.trim().is_empty() {
            ends.push(offset);
        }
    }
    let render = |end: usize| format!("{} {}", sentence[..end].trim_end(), ELISION.trim_end());
    let longest_fitting = |ends: &[usize]| {
        // Token counts grow with the prefix, so the longest fitting prefix is found by bisection.
        let (mut low, mut high) = (0usize, ends.len());
        while low < high {
            let mid = (low + high).div_ceil(2);
            if counter.count(&render(ends[mid - 1])) <= budget {
                low = mid;
            } else {
                high = mid - 1;
            }
        }
        low.checked_sub(1).map(|last| render(ends[last]))
    };
    longest_fitting(&ends).or_else(|| {
        let first_word = ends.first().copied().unwrap_or(sentence.len());
        let graphemes: Vec<usize> = sentence[..first_word]
            .grapheme_indices(true)
            .map(|(at, g)| at + g.len())
            .collect();
        longest_fitting(&graphemes)
    })
}
