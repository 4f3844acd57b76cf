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

impl TokenCounter for O200kCounter {
    fn count(&self, text: &str) -> usize {
        // Ordinary encoding: text that happens to spell a special token costs its plain tokens.
        self.bpe.encode_ordinary(text).len()
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
