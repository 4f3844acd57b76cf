//! The `native` kind: Rust async functions registered by name through the library API.
//!
//! Each call's future is guarded with `catch_unwind`, so a panicking tool fails its call with
//! [`SessionError::Crashed`] instead of taking the caller down, and a timeout drops it.
//!
//! An answer nested deeper than [`MAX_OUTPUT_DEPTH`] arrays and objects fails its call: every
//! other tool's output is parsed from text, which `serde_json` stops at that depth, and so is a
//! saved output when its run resumes. Taken, it would be an output no resume could read back.
//!
//! An answer's text (its JSON, or the error message) is kept up to [`DEFAULT_MAX_OUTPUT_BYTES`],
//! as a process's output is: a longer one is cut at a character boundary and marked `truncated`,
//! and its value is dropped (the output is then the cut text, as for a process whose output was
//! cut), so one tool cannot hold hundreds of megabytes in every record of its output.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use serde_json::Value;

use super::{
    BoxFuture, DEFAULT_MAX_OUTPUT_BYTES, Session, SessionError, SessionFactory, ToolOutcome,
    ToolRequest,
};

/// The deepest nesting of arrays and objects a native tool's answer may have: what
/// `serde_json` reads back from text.
pub const MAX_OUTPUT_DEPTH: usize = 127;

/// Whether `value` nests arrays and objects more than `limit` deep. It recurses at most
/// `limit + 1` calls deep however deep the value is, and holds nothing per element.
fn nested_deeper_than(value: &Value, limit: usize) -> bool {
    let Some(inner) = limit.checked_sub(1) else {
        return matches!(value, Value::Array(_) | Value::Object(_));
    };
    match value {
        Value::Array(items) => items.iter().any(|item| nested_deeper_than(item, inner)),
        Value::Object(fields) => fields
            .values()
            .any(|field| nested_deeper_than(field, inner)),
        _ => false,
    }
}

/// Drops `value` one level at a time: `serde_json`'s own drop recurses once per level, so an
/// answer nested deep enough (a native tool can build one a million levels deep) would overflow
/// the stack, which aborts the whole process.
fn drop_without_recursion(value: Value) {
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::Array(items) => pending.extend(items),
            Value::Object(fields) => pending.extend(fields.into_iter().map(|(_, field)| field)),
            _ => {}
        }
    }
}

/// A native tool: takes the call's arguments, answers a JSON value or an error message.
pub type NativeTool = Arc<dyn Fn(Value) -> BoxFuture<'static, Result<Value, String>> + Send + Sync>;

/// Native tools by name.
#[derive(Default, Clone)]
pub struct NativeRegistry {
    tools: HashMap<String, NativeTool>,
}

impl std::fmt::Debug for NativeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.tools.keys().collect();
        names.sort();
        f.debug_struct("NativeRegistry")
            .field("tools", &names)
            .finish()
    }
}

impl NativeRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `tool` under `name`, replacing any tool of that name.
    pub fn register<F, Fut>(&mut self, name: impl Into<String>, tool: F)
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, String>> + Send + 'static,
    {
        let tool: NativeTool = Arc::new(move |args| Box::pin(tool(args)));
        self.tools.insert(name.into(), tool);
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.tools.keys().cloned().collect();
        names.sort();
        names
    }
}

/// A session calling the tools of a shared [`NativeRegistry`].
#[derive(Debug, Clone)]
pub struct NativeSession {
    registry: Arc<NativeRegistry>,
}

impl NativeSession {
    /// A session over `registry`.
    pub fn new(registry: Arc<NativeRegistry>) -> Self {
        Self { registry }
    }
}

impl Session for NativeSession {
    fn tools(&mut self) -> BoxFuture<'_, Result<Option<Vec<String>>, SessionError>> {
        let names = self.registry.names();
        Box::pin(async move { Ok(Some(names)) })
    }

    fn call(&mut self, request: ToolRequest) -> BoxFuture<'_, Result<ToolOutcome, SessionError>> {
        let registry = Arc::clone(&self.registry);
        Box::pin(async move {
            let started = Instant::now();
            let Some(tool) = registry.tools.get(&request.tool).cloned() else {
                return Err(SessionError::UnknownTool { tool: request.tool });
            };
            let args = request.args;
            // The tool is called inside the guarded future, so a panic before its first await is
            // caught too. Guarding the future instead of spawning it saves a task per call; the
            // caller's task already runs concurrently with other calls.
            let guarded = AssertUnwindSafe(async move { tool(args).await }).catch_unwind();
            let Ok(finished) = tokio::time::timeout(request.timeout, guarded).await else {
                return Err(SessionError::Timeout {
                    tool: request.tool,
                    after: request.timeout,
                });
            };
            let (exit_status, mut stdout, mut stderr, mut json) = match finished {
                Ok(Ok(value)) if nested_deeper_than(&value, MAX_OUTPUT_DEPTH) => {
                    drop_without_recursion(value);
                    (
                        1,
                        String::new(),
                        format!(
                            "its answer nests arrays and objects more than {MAX_OUTPUT_DEPTH} \
                             deep: a saved output that deep could not be read back"
                        ),
                        None,
                    )
                }
                Ok(Ok(value)) => (0, value.to_string(), String::new(), Some(value)),
                Ok(Err(message)) => (1, String::new(), message, None),
                Err(payload) => {
                    return Err(SessionError::Crashed {
                        tool: request.tool,
                        reason: format!("panicked: {}", super::panic_message(payload.as_ref())),
                    });
                }
            };
            let cut = |text: &mut String| {
                let cut = super::process::cut_at_char(text, DEFAULT_MAX_OUTPUT_BYTES);
                text.shrink_to_fit();
                cut
            };
            let truncated = cut(&mut stdout) | cut(&mut stderr);
            if truncated {
                // A cut answer is not the tool's value; its text is what is left of it.
                json = None;
            }
            Ok(ToolOutcome {
                exit_status: Some(exit_status),
                stdout,
                stderr,
                json,
                truncated,
                duration: started.elapsed(),
            })
        })
    }

    fn health_check(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Makes [`NativeSession`]s over one registry for a pool.
#[derive(Debug, Clone)]
pub struct NativeFactory {
    registry: Arc<NativeRegistry>,
}

impl NativeFactory {
    /// A factory over `registry`.
    pub fn new(registry: Arc<NativeRegistry>) -> Self {
        Self { registry }
    }
}

impl SessionFactory for NativeFactory {
    fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>> {
        let session = NativeSession::new(Arc::clone(&self.registry));
        Box::pin(async move { Ok(Box::new(session) as Box<dyn Session>) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::{Value, json};

    use super::{MAX_OUTPUT_DEPTH, NativeRegistry, NativeSession, nested_deeper_than};
    use crate::session::{Session, ToolRequest};

    fn nested(depth: usize) -> Value {
        let mut value = json!(1);
        for i in 0..depth {
            value = if i % 2 == 0 {
                json!([value])
            } else {
                json!({ "k": value })
            };
        }
        value
    }

    /// The limit is where `serde_json` stops reading text back: an answer at it round-trips,
    /// one level more does not, and only that one is refused.
    #[test]
    fn an_answer_is_refused_exactly_where_its_text_could_not_be_read_back() {
        let deepest = nested(MAX_OUTPUT_DEPTH);
        assert!(serde_json::from_str::<Value>(&deepest.to_string()).is_ok());
        assert!(!nested_deeper_than(&deepest, MAX_OUTPUT_DEPTH));
        let too_deep = nested(MAX_OUTPUT_DEPTH + 1);
        assert!(serde_json::from_str::<Value>(&too_deep.to_string()).is_err());
        assert!(nested_deeper_than(&too_deep, MAX_OUTPUT_DEPTH));
        assert!(!nested_deeper_than(&json!("flat"), 0));
        assert!(nested_deeper_than(&json!([]), 0));
    }

    /// An answer a million levels deep fails its call with the reason; dropping it (serde_json
    /// drops a level per call) used to overflow the stack and abort the process.
    #[tokio::test]
    async fn an_answer_a_million_levels_deep_fails_its_call_without_overflowing() {
        let mut registry = NativeRegistry::new();
        registry.register("deep", |_args: Value| async move {
            let mut value = json!(1);
            for _ in 0..1_000_000 {
                value = Value::Array(vec![value]);
            }
            Ok(value)
        });
        let mut session = NativeSession::new(std::sync::Arc::new(registry));
        let outcome = session
            .call(ToolRequest::new("deep", json!({})))
            .await
            .unwrap();
        assert_eq!(outcome.exit_status, Some(1));
        assert!(outcome.json.is_none());
        assert!(
            outcome
                .stderr
                .contains(&format!("more than {MAX_OUTPUT_DEPTH}")),
            "{}",
            outcome.stderr
        );
    }
}
