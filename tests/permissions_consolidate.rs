//! Consolidation keeps every decision (without `--widen`) on a large
//! generated corpus built from the fixture's own vocabulary, and widening
//! only allows what its report lists.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::LazyLock;

use proptest::prelude::*;
use tetrarch::permissions::consolidate::{Consolidation, consolidate};
use tetrarch::permissions::{List, PermissionEngine, PermissionError, ToolCall, Verdict};

const FIXTURE: &str = include_str!("fixtures/permissions/settings.json");
const SETTINGS_PATH: &str = "/proj/.claude/settings.json";

struct Fixture {
    before: Vec<PermissionEngine>,
    after: Vec<PermissionEngine>,
    widened: Vec<PermissionEngine>,
    /// The old rules plus the listed families: a bound on what widening may allow.
    old_plus_families: Vec<PermissionEngine>,
    widening: Consolidation,
    vocab: Vocab,
}

#[derive(Default)]
struct Vocab {
    bash: Vec<String>,
    words: Vec<String>,
    read: Vec<String>,
    domains: Vec<String>,
    mcp: Vec<String>,
}

/// Engines for two layouts: working directory = project root, and a subfolder.
fn engines(text: &str) -> Vec<PermissionEngine> {
    ["/proj", "/proj/sub"]
        .iter()
        .map(|cwd| {
            PermissionEngine::from_settings_json(
                text,
                Path::new(SETTINGS_PATH),
                Path::new(cwd),
                Path::new("/home/u"),
            )
            .unwrap()
        })
        .collect()
}

static FIX: LazyLock<Fixture> = LazyLock::new(|| {
    let plain = consolidate(FIXTURE, Path::new(SETTINGS_PATH), false).unwrap();
    let widening = consolidate(FIXTURE, Path::new(SETTINGS_PATH), true).unwrap();
    let settings: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    let mut vocab = Vocab::default();
    for list in ["allow", "ask", "deny"] {
        for rule in settings["permissions"][list].as_array().unwrap() {
            let rule = rule.as_str().unwrap();
            let (tool, spec) = match rule.split_once('(') {
                Some((tool, rest)) => (tool, rest.strip_suffix(')').unwrap()),
                None => (rule, ""),
            };
            match tool {
                "Bash" => {
                    vocab.bash.push(spec.to_string());
                    vocab.words.extend(
                        spec.split_whitespace()
                            .filter(|w| !w.contains('*'))
                            .map(str::to_string),
                    );
                }
                "Read" | "Edit" => vocab.read.push(spec.to_string()),
                "WebFetch" => vocab.domains.push(
                    spec.trim_start_matches("domain:")
                        .trim_start_matches("*.")
                        .to_string(),
                ),
                t if t.starts_with("mcp__") => vocab.mcp.push(t.to_string()),
                _ => {}
            }
        }
    }
    vocab.words.extend(
        [
            "rm", "-rf", "/", "--force", "origin", "main", "x.txt", "lsof", "sudo", "status",
        ]
        .map(String::from),
    );
    let mut bound = settings.clone();
    let allow = bound["permissions"]["allow"].as_array_mut().unwrap();
    allow.extend(
        widening
            .widened
            .iter()
            .map(|f| serde_json::Value::String(f.rule.clone())),
    );
    Fixture {
        old_plus_families: engines(&bound.to_string()),
        before: engines(FIXTURE),
        after: engines(&plain.settings.to_string()),
        widened: engines(&widening.settings.to_string()),
        widening,
        vocab,
    }
});

/// A tiny deterministic generator driven by proptest's seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, items: &'a [String]) -> &'a str {
        items
            .get(self.below(items.len()))
            .map_or("", String::as_str)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn simple_command(g: &mut Gen, v: &Vocab) -> String {
    let spec = g.pick(&v.bash).trim_end_matches(":*").to_string();
    let mut words: Vec<String> = spec.split(' ').map(str::to_string).collect();
    if g.chance(30) && words.len() > 1 {
        let keep = 1 + g.below(words.len() - 1);
        words.truncate(keep);
    }
    let mut out = Vec::new();
    for word in words {
        if word == "*" {
            for _ in 0..g.below(3) {
                out.push(g.pick(&v.words).to_string());
            }
        } else if word.contains('*') {
            out.push(word.replace('*', g.pick(&v.words)));
        } else {
            out.push(word);
        }
    }
    for _ in 0..if g.chance(40) { 1 + g.below(2) } else { 0 } {
        out.push(g.pick(&v.words).to_string());
    }
    if g.chance(10) {
        // A glued suffix tests word boundaries (`ls` vs `lsof`).
        if let Some(last) = out.last_mut() {
            last.push_str("of");
        }
    }
    let mut command = out.join(" ");
    if g.chance(10) {
        let wrappers = ["timeout 30 ", "nice -n 5 ", "FOO=1 ", "nohup ", "time "];
        command = format!("{}{command}", wrappers[g.below(wrappers.len())]);
    }
    if g.chance(5) {
        command = format!("echo \"$({command})\"");
    }
    command
}

fn random_call(g: &mut Gen, v: &Vocab) -> ToolCall {
    match g.below(10) {
        0..=5 => {
            let operators = [" && ", " || ", "; ", " | ", " |& ", " & ", "\n"];
            let mut command = simple_command(g, v);
            for _ in 0..if g.chance(40) { 1 + g.below(3) } else { 0 } {
                command.push_str(operators[g.below(operators.len())]);
                command.push_str(&simple_command(g, v));
            }
            ToolCall::from_text("Bash", &command)
        }
        6 | 7 => {
            let spec = g.pick(&v.read);
            let mut path = if let Some(p) = spec.strip_prefix("//") {
                format!("/{p}")
            } else if let Some(p) = spec.strip_prefix("~/") {
                format!("/home/u/{p}")
            } else if spec.starts_with('/') {
                format!("/proj{spec}")
            } else {
                spec.to_string()
            };
            let parts = ["a", "b.rs", "deep/c.h", ".env", "x.log"];
            path = path
                .replace("**", parts[g.below(parts.len())])
                .replace('*', "f");
            if g.chance(40) {
                path.push('/');
                path.push_str(parts[g.below(parts.len())]);
            }
            if g.chance(20) {
                path = format!("sub/{path}");
            }
            let tools = ["Read", "Edit", "Write", "Grep"];
            ToolCall::from_text(tools[g.below(tools.len())], &path)
        }
        8 => {
            let subs = ["", "www.", "api.", "docs.", "evil"];
            let url = format!(
                "https://{}{}/page",
                subs[g.below(subs.len())],
                g.pick(&v.domains)
            );
            ToolCall::from_text("WebFetch", &url)
        }
        _ => {
            let name = g.pick(&v.mcp).trim_end_matches("__*").to_string();
            let tools = ["", "__get_issue", "__other_tool", "__capture_frame"];
            let name = if name.matches("__").count() >= 2 {
                name
            } else {
                format!("{name}{}", tools[g.below(tools.len())])
            };
            ToolCall {
                tool: name,
                input: serde_json::json!({}),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn consolidation_without_widening_changes_no_decision(seed in any::<u64>()) {
        let fix = &*FIX;
        let mut g = Gen(seed | 1);
        for _ in 0..20 {
            let call = random_call(&mut g, &fix.vocab);
            for (before, after) in fix.before.iter().zip(&fix.after) {
                let (old, new) = (before.decide(&call), after.decide(&call));
                prop_assert_eq!(old.verdict, new.verdict, "call {:?}\nold {:?}\nnew {:?}", call, old, new);
            }
        }
    }

    #[test]
    fn widening_only_allows_listed_families(seed in any::<u64>()) {
        let fix = &*FIX;
        let listed: Vec<&str> = fix.widening.widened.iter().map(|f| f.rule.as_str()).collect();
        let mut g = Gen(seed | 1);
        for _ in 0..20 {
            let call = random_call(&mut g, &fix.vocab);
            for ((before, after), bound) in fix.before.iter().zip(&fix.widened).zip(&fix.old_plus_families) {
                let (old, new) = (before.decide(&call), after.decide(&call));
                if old.verdict != new.verdict {
                    // Deny and ask rules are untouched: only ask -> allow can happen.
                    prop_assert_eq!(old.verdict, Verdict::Ask, "call {:?}", call);
                    prop_assert_eq!(new.verdict, Verdict::Allow, "call {:?}", call);
                    // Whatever is newly allowed is allowed by the old rules plus
                    // the families the report lists.
                    prop_assert_eq!(bound.decide(&call).verdict, Verdict::Allow, "call {:?} (listed: {:?})", call, listed);
                }
            }
        }
    }
}

#[test]
fn generated_corpus_reaches_every_verdict() {
    let fix = &*FIX;
    let mut g = Gen(0x5eed);
    let mut counts = std::collections::HashMap::new();
    let mut widened_changes = 0;
    for _ in 0..5000 {
        let call = random_call(&mut g, &fix.vocab);
        *counts
            .entry(fix.before[0].decide(&call).verdict)
            .or_insert(0) += 1;
        if fix.before[0].decide(&call).verdict != fix.widened[0].decide(&call).verdict {
            widened_changes += 1;
        }
    }
    for verdict in [Verdict::Allow, Verdict::Ask, Verdict::Deny] {
        assert!(
            counts.get(&verdict).copied().unwrap_or(0) > 300,
            "{counts:?}"
        );
    }
    // Widening really allows more of this corpus (so the bound test bites).
    assert!(widened_changes > 50, "{widened_changes}");
}

#[test]
fn fixture_is_realistic_and_shrinks() {
    let fix = &*FIX;
    let plain = consolidate(FIXTURE, Path::new(SETTINGS_PATH), false).unwrap();
    assert!(
        plain.rules_before >= 200,
        "fixture has {} rules",
        plain.rules_before
    );
    // Only redundant rules go; deny and ask keep their rules (dedup aside).
    assert!(plain.rules_after < plain.rules_before && plain.rules_after >= 50);
    assert!(fix.widening.rules_after < plain.rules_after);
    assert!(!fix.widening.widened.is_empty());
    for family in &fix.widening.widened {
        assert!(family.replaces.len() >= 2, "{family:?}");
        // `X *` never becomes `X*`.
        assert!(
            !family.rule.ends_with("*)")
                || family.rule.ends_with(" *)")
                || family.rule.ends_with("/**)")
                || family.rule.contains("domain:*."),
            "{family:?}"
        );
    }
    // Other keys are untouched.
    let before: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    for key in ["$schema", "model", "env", "hooks", "includeCoAuthoredBy"] {
        assert_eq!(before[key], plain.settings[key], "{key}");
    }
    assert_eq!(
        before["permissions"]["additionalDirectories"],
        plain.settings["permissions"]["additionalDirectories"]
    );
    assert_eq!(
        before["permissions"]["defaultMode"],
        plain.settings["permissions"]["defaultMode"]
    );
    // No rule moved between lists: every rule after is a rule before (or its
    // `:*` -> ` *` rewrite) in the same list.
    for list in ["allow", "ask", "deny"] {
        let old: Vec<String> = before["permissions"][list]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().replace(":*)", " *)"))
            .collect();
        for rule in plain.settings["permissions"][list].as_array().unwrap() {
            assert!(
                old.contains(&rule.as_str().unwrap().to_string()),
                "{list}: {rule}"
            );
        }
    }
}

/// The rules of one list of a settings document, as written.
fn rules(settings: &serde_json::Value, list: &str) -> Vec<String> {
    settings["permissions"][list]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn widening_the_fixture_ends_under_fifty_rules() {
    let fix = &*FIX;
    assert!(fix.widening.rules_before >= 200);
    assert!(
        fix.widening.rules_after < 50,
        "{} rules after widening",
        fix.widening.rules_after
    );
    let after: usize = ["allow", "ask", "deny"]
        .iter()
        .map(|list| rules(&fix.widening.settings, list).len())
        .sum();
    assert_eq!(after, fix.widening.rules_after);
}

#[test]
fn widening_never_moves_a_rule_between_lists() {
    let fix = &*FIX;
    let before: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    let families: Vec<&str> = fix
        .widening
        .widened
        .iter()
        .map(|f| f.rule.as_str())
        .collect();
    for list in ["allow", "ask", "deny"] {
        let old: Vec<String> = rules(&before, list)
            .iter()
            .map(|r| r.replace(":*)", " *)"))
            .collect();
        for rule in rules(&fix.widening.settings, list) {
            // A new family rule may only appear in `allow`.
            let from_here =
                old.contains(&rule) || (list == "allow" && families.contains(&rule.as_str()));
            assert!(
                from_here,
                "{list} gained `{rule}`, which was not in its own list"
            );
        }
    }
    // Deny and ask keep every rule they had (only duplicates and `:*` spellings change).
    for list in ["ask", "deny"] {
        let mut old: Vec<String> = rules(&before, list)
            .iter()
            .map(|r| r.replace(":*)", " *)"))
            .collect();
        let mut new = rules(&fix.widening.settings, list);
        old.sort();
        old.dedup();
        new.sort();
        assert_eq!(old, new, "{list}");
    }
}

#[test]
fn consolidating_twice_changes_nothing_the_second_time() {
    let plain = consolidate(FIXTURE, Path::new(SETTINGS_PATH), false).unwrap();
    let again = consolidate(&plain.settings.to_string(), Path::new(SETTINGS_PATH), false).unwrap();
    assert!(again.changes.is_empty(), "{:#?}", again.changes);
    assert_eq!(again.rules_before, plain.rules_after);
    assert_eq!(again.rules_after, plain.rules_after);
    assert_eq!(again.settings, plain.settings);
    // The same holds for a widened file: widening already dropped what it made redundant.
    let widened = &FIX.widening;
    let again = consolidate(
        &widened.settings.to_string(),
        Path::new(SETTINGS_PATH),
        false,
    )
    .unwrap();
    assert!(again.changes.is_empty(), "{:#?}", again.changes);
    assert_eq!(again.settings, widened.settings);
}

#[test]
fn a_rule_the_engine_cannot_compile_fails_consolidation_as_it_fails_loading() {
    // `Read(src/[)` parses as a rule but its glob does not compile; it is also
    // "covered" by `Read(src/**)`, so a syntax-only check would drop it silently.
    let text =
        r#"{"permissions": {"allow": ["Read(src/**)", "Read(src/[)"], "deny": ["Bash(rm *)"]}}"#;
    let load = PermissionEngine::from_settings_json(
        text,
        Path::new(SETTINGS_PATH),
        Path::new("/proj"),
        Path::new("/home/u"),
    )
    .err()
    .unwrap();
    for widen in [false, true] {
        let err = consolidate(text, Path::new(SETTINGS_PATH), widen).unwrap_err();
        match &err {
            PermissionError::InvalidRule {
                list, index, rule, ..
            } => {
                assert_eq!(
                    (*list, *index, rule.as_str()),
                    (List::Allow, 1, "Read(src/[)")
                );
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(err.to_string(), load.to_string());
        assert!(err.to_string().contains("allow[1] `Read(src/[)`"), "{err}");
    }
    // Deny and ask lists are compiled too, and a bad Bash rule still fails at parse.
    let text = r#"{"permissions": {"deny": ["Edit(//etc/{a,b)"], "allow": ["Bash(ls)"]}}"#;
    let err = consolidate(text, Path::new(SETTINGS_PATH), false).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("rule deny[0] `Edit(//etc/{a,b)`"),
        "{err}"
    );
    let text = r#"{"permissions": {"ask": ["Bash(ls", "Bash(ls)"]}}"#;
    let err = consolidate(text, Path::new(SETTINGS_PATH), false).unwrap_err();
    assert!(
        err.to_string().starts_with("rule ask[0] `Bash(ls`"),
        "{err}"
    );
}
