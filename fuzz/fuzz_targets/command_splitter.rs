//! Fuzzes the Bash command splitter and the decision procedure: no input
//! may panic, and a command the splitter rejects is never allowed.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tetrarch::permissions::{PermissionEngine, ToolCall, Verdict, split_command};

static ENGINE: LazyLock<Option<PermissionEngine>> = LazyLock::new(|| {
    let settings = r#"{"permissions": {"allow": ["Bash"], "deny": ["Bash(rm *)"]}}"#;
    PermissionEngine::from_settings_json(
        settings,
        Path::new("/p/s.json"),
        Path::new("/p"),
        Path::new("/h"),
    )
    .ok()
});

/// `brush-parser` panics on some inputs; the splitter catches those and
/// refuses the command, which is the behaviour under test. libFuzzer's hook
/// would abort on any panic, caught or not, so panics raised inside
/// brush-parser are let through to that catch; any other panic aborts.
fn tolerate_caught_parser_panics() {
    let fuzzer_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_parser = info
            .location()
            .is_some_and(|l| l.file().contains("brush-parser"));
        if !in_parser {
            fuzzer_hook(info);
        }
    }));
}

static HOOK: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    HOOK.call_once(tolerate_caught_parser_panics);
    let Ok(command) = std::str::from_utf8(data) else {
        return;
    };
    let split = split_command(command);
    if let Some(engine) = ENGINE.as_ref() {
        let verdict = engine.decide(&ToolCall::from_text("Bash", command)).verdict;
        if split.is_err() {
            assert_ne!(verdict, Verdict::Allow);
        }
    }
});
