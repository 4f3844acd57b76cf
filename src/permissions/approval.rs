//! Settling `Ask` decisions.

use std::io::{BufRead, Write};

use super::{Decision, ToolCall};

/// Decides calls the rules left to a person.
pub trait ApprovalHandler {
    /// Returns `true` to allow the call, `false` to deny it.
    fn approve(&self, call: &ToolCall, decision: &Decision) -> bool;
}

/// The headless default: every `Ask` is denied.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyAll;

impl ApprovalHandler for DenyAll {
    fn approve(&self, _call: &ToolCall, _decision: &Decision) -> bool {
        false
    }
}

/// Hands each `Ask` to a closure (the library API's hook).
pub struct CallbackApproval<F>(pub F);

impl<F: Fn(&ToolCall, &Decision) -> bool> ApprovalHandler for CallbackApproval<F> {
    fn approve(&self, call: &ToolCall, decision: &Decision) -> bool {
        (self.0)(call, decision)
    }
}

/// Asks on the terminal (stderr prompt, one line from stdin); anything but
/// `y`/`yes`, and any I/O error or end of input, denies.
#[derive(Debug, Clone, Copy, Default)]
pub struct TerminalPrompt;

impl ApprovalHandler for TerminalPrompt {
    fn approve(&self, call: &ToolCall, decision: &Decision) -> bool {
        let reason = decision.rule.as_ref().map_or_else(
            || "no rule matched".to_string(),
            |r| format!("rule {}[{}] `{}`", r.list, r.index, r.text),
        );
        let mut err = std::io::stderr().lock();
        if writeln!(err, "Allow {} {}? ({reason}) [y/N] ", call.tool, call.input).is_err() {
            return false;
        }
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(n) if n > 0 => matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
            _ => false,
        }
    }
}
