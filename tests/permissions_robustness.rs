//! Arbitrary text never panics the rule parser, the command splitter, the
//! settings loader or the decision procedure, and a rule that fails to
//! parse never loads.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use proptest::prelude::*;
use tetrarch::permissions::{PermissionEngine, Rule, ToolCall, Verdict, split_command};

/// Strings rich in shell and rule syntax, plus fully arbitrary ones.
fn shellish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop::sample::select(vec![
                "ls", " ", "*", ":*", "(", ")", "$(", "`", "'", "\"", "\\", ";", "&&", "||", "|",
                "|&", "&", "\n", "${x:-", "}", "<(", ">", "<<EOF\n", "EOF", "[[", "]]", "((", "))",
                "if", "then", "fi", "for", "do", "done", "case", "esac", "Bash", "Read", "mcp__",
                "__", "domain:", "//", "~/", "**", "{a,b}", "[!x]", "=", "timeout", "xargs", "-n",
            ]),
            0..24,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn rule_parser_never_panics(text in shellish()) {
        if let Ok(rule) = Rule::parse(&text) {
            // The canonical text parses again to the same rule.
            let canonical = rule.to_string();
            prop_assert_eq!(Rule::parse(&canonical).unwrap(), rule);
        }
    }

    #[test]
    fn splitter_never_panics(text in shellish()) {
        if let Ok(parts) = split_command(&text) {
            // Every part is non-empty text.
            prop_assert!(parts.iter().all(|p| !p.is_empty()));
        }
    }

    #[test]
    fn loading_and_deciding_never_panic(rule in shellish(), command in shellish()) {
        let settings = serde_json::json!({"permissions": {"allow": [rule.clone()], "deny": ["Bash(rm *)"]}}).to_string();
        let loaded = PermissionEngine::from_settings_json(&settings, Path::new("/p/s.json"), Path::new("/p"), Path::new("/h"));
        match loaded {
            Ok(engine) => {
                // Loaded, so the rule parsed: one that does not must never load.
                prop_assert!(Rule::parse(&rule).is_ok(), "{:?} loaded but does not parse", rule);
                for tool in ["Bash", "Read", "Edit", "WebFetch", "mcp__a__b"] {
                    let _ = engine.decide(&ToolCall::from_text(tool, &command));
                }
            }
            // A rule that does not parse fails the load: it cannot allow anything.
            Err(e) => prop_assert!(Rule::parse(&rule).is_err() || e.to_string().contains("allow[0]"), "{}", e),
        }
    }

    #[test]
    fn unparseable_commands_are_never_allowed(command in shellish()) {
        let settings = r#"{"permissions": {"allow": ["Bash"]}}"#;
        let engine = PermissionEngine::from_settings_json(settings, Path::new("/p/s.json"), Path::new("/p"), Path::new("/h")).unwrap();
        let verdict = engine.decide(&ToolCall::from_text("Bash", &command)).verdict;
        if split_command(&command).is_err() {
            prop_assert_ne!(verdict, Verdict::Allow);
        }
    }
}
