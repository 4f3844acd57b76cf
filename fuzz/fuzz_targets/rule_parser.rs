//! Fuzzes the rule parser and the settings loader: no input may panic, and a
//! rule that parses must round-trip through its canonical text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tetrarch::permissions::{PermissionEngine, Rule};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = Rule::parse(text) {
        assert_eq!(Rule::parse(&rule.to_string()).ok(), Some(rule));
    }
    let settings = serde_json_text(text);
    let _ = PermissionEngine::from_settings_json(
        &settings,
        Path::new("/p/.claude/settings.json"),
        Path::new("/p"),
        Path::new("/h"),
    );
});

/// Wraps the input as one allow rule (JSON-escaped by hand to avoid a dependency).
fn serde_json_text(rule: &str) -> String {
    let escaped: String = rule
        .chars()
        .map(|c| match c {
            '"' => "\\\"".to_string(),
            '\\' => "\\\\".to_string(),
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
            c => c.to_string(),
        })
        .collect();
    format!("{{\"permissions\":{{\"allow\":[\"{escaped}\"]}}}}")
}
