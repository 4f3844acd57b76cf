//! Token counting: the exact o200k_base count and a calibrated estimate.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use super::ContextError;

/// Counts the tokens a text costs in a model's context window.
pub trait TokenCounter: Send + Sync {
    /// The number of tokens of `text`.
    fn count(&self, text: &str) -> usize;
    /// A short name for reports and logs (`"o200k_base"`, `"calibrated"`).
    fn name(&self) -> &str;
}

/// The o200k_base encoding (GPT-4o and later) shared by the whole process: building it parses
/// the ~200k embedded BPE ranks, which takes a noticeable fraction of a second, so it is built
/// once. The error is kept as text so that every later constructor reports the same failure.
static O200K: OnceLock<Result<CoreBPE, String>> = OnceLock::new();

/// Exact token counts with the o200k_base BPE from `tiktoken-rs` (embedded in the crate, so it
/// works offline). The BPE is loaded once per process; clones and new counters share it.
#[derive(Clone, Copy)]
pub struct O200kCounter {
    bpe: &'static CoreBPE,
}

impl std::fmt::Debug for O200kCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("O200kCounter")
    }
}

impl O200kCounter {
    /// The counter, loading the BPE on first use.
    pub fn new() -> Result<Self, ContextError> {
        match O200K.get_or_init(|| tiktoken_rs::o200k_base().map_err(|e| e.to_string())) {
            Ok(bpe) => Ok(O200kCounter { bpe }),
            Err(reason) => Err(ContextError::Tokenizer(reason.clone())),
        }
    }
}

/// The longest run of whitespace counted in one piece. tiktoken's pre-tokenizer (fancy-regex,
/// backtracking on `\s+(?!\S)`) overflows its stack on a run of about 900k whitespace characters
/// and panics inside `encode_ordinary` (openai/tiktoken#245): a tool that printed a megabyte of
/// spaces would take the Optimizer down with every attempt. Longer runs are cut into pieces of
/// this many characters, each counted alone (a count that differs by a token or so per cut).
const LONGEST_WHITESPACE_RUN: usize = 65_536;

impl TokenCounter for O200kCounter {
    fn count(&self, text: &str) -> usize {
        // Ordinary encoding: text that happens to spell a special token costs its plain tokens.
        if text.len() <= LONGEST_WHITESPACE_RUN {
            return self.bpe.encode_ordinary(text).len();
        }
        let (mut total, mut piece_start, mut run) = (0, 0, 0);
        for (at, c) in text.char_indices() {
            if !c.is_whitespace() {
                run = 0;
                continue;
            }
            run += 1;
            if run > LONGEST_WHITESPACE_RUN {
                total += self.bpe.encode_ordinary(&text[piece_start..at]).len();
                (piece_start, run) = (at, 1);
            }
        }
        total + self.bpe.encode_ordinary(&text[piece_start..]).len()
    }

    fn name(&self) -> &str {
        "o200k_base"
    }
}

/// An estimate proportional to the text's length in characters, with the ratio fitted from real
/// usage figures (for a model whose tokenizer is not available, from the token counts its API
/// reports).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CalibratedCounter {
    tokens_per_char: f64,
}

impl CalibratedCounter {
    /// A counter with a known ratio of characters per token (about 4 for English prose).
    pub fn with_chars_per_token(chars_per_token: f64) -> Result<Self, ContextError> {
        if !chars_per_token.is_finite() || chars_per_token <= 0.0 {
            return Err(ContextError::Calibration(format!(
                "chars_per_token must be a positive number, got {chars_per_token}"
            )));
        }
        Ok(CalibratedCounter {
            tokens_per_char: 1.0 / chars_per_token,
        })
    }

    /// Fits the ratio to `(text, real token count)` samples by least squares through the origin
    /// (tokens ≈ k · chars), so long samples weigh more than short ones.
    pub fn fit<'a>(
        samples: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> Result<Self, ContextError> {
        let (mut chars_tokens, mut chars_squared, mut count) = (0.0f64, 0.0f64, 0usize);
        for (text, tokens) in samples {
            let chars = text.chars().count() as f64;
            chars_tokens += chars * tokens as f64;
            chars_squared += chars * chars;
            count += 1;
        }
        if count == 0 {
            return Err(ContextError::Calibration("no samples to fit".into()));
        }
        if chars_squared == 0.0 {
            return Err(ContextError::Calibration(
                "every sample text is empty".into(),
            ));
        }
        let tokens_per_char = chars_tokens / chars_squared;
        if tokens_per_char <= 0.0 {
            return Err(ContextError::Calibration(
                "the samples report no tokens".into(),
            ));
        }
        Ok(CalibratedCounter { tokens_per_char })
    }

    /// The fitted number of characters per token.
    pub fn chars_per_token(&self) -> f64 {
        1.0 / self.tokens_per_char
    }
}

impl TokenCounter for CalibratedCounter {
    fn count(&self, text: &str) -> usize {
        if text.is_empty() {
            return 0;
        }
        (text.chars().count() as f64 * self.tokens_per_char).ceil() as usize
    }

    fn name(&self) -> &str {
        "calibrated"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A megabyte of spaces inside a tool's output used to overflow tiktoken's pre-tokenizer
    /// and panic the Optimizer; tabs and other whitespace the same.
    #[test]
    fn a_megabyte_of_whitespace_is_counted_without_a_panic() {
        let counter = O200kCounter::new().unwrap();
        for blank in [" ", "\t", "\u{3000}"] {
            let text = format!("start{}end", blank.repeat(1_040_000));
            let tokens = counter.count(&text);
            // Whitespace merges into tokens of many characters, never into fewer tokens than
            // the cuts between pieces force.
            assert!(
                tokens > 1_040_000 / LONGEST_WHITESPACE_RUN && tokens < 1_040_000,
                "{blank:?}: {tokens}"
            );
        }
        // Text without such a run counts as tiktoken counts it, in one piece.
        let prose = "word ".repeat(30_000);
        assert_eq!(
            counter.count(&prose),
            counter.bpe.encode_ordinary(&prose).len()
        );
    }
}
