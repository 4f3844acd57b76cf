//! `cargo bench --bench permissions`: decision latency over the 200+-rule
//! fixture (simple and compound commands, paths, URLs) and consolidation of
//! that fixture. Peers measured in the same run: a whole-line `globset`
//! matcher (fast but unsafe: it splits nothing) and the splitter alone.
//! Writes `target/bench/permissions.json` (or under `CARGO_TARGET_DIR`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use globset::{GlobBuilder, GlobSetBuilder};
use tetrarch::permissions::consolidate::consolidate;
use tetrarch::permissions::{PermissionEngine, ToolCall, split_command};

const FIXTURE: &str = include_str!("../tests/fixtures/permissions/settings.json");
const SETTINGS_PATH: &str = "/proj/.claude/settings.json";
const ITERATIONS: usize = 20_000;

fn engine(text: &str) -> PermissionEngine {
    PermissionEngine::from_settings_json(
        text,
        Path::new(SETTINGS_PATH),
        Path::new("/proj"),
        Path::new("/home/u"),
    )
    .unwrap()
}

/// p50 and p99 in microseconds of `f` over the inputs, round-robin.
fn latency<T>(inputs: &[T], mut f: impl FnMut(&T)) -> (f64, f64) {
    for input in inputs.iter().cycle().take(1_000) {
        f(input);
    }
    let mut samples: Vec<u64> = Vec::with_capacity(ITERATIONS);
    for input in inputs.iter().cycle().take(ITERATIONS) {
        let start = Instant::now();
        f(input);
        samples.push(start.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    (at(0.50), at(0.99))
}

/// Calls built from the fixture's own rules: every Bash specifier with its
/// wildcards filled in, alone and chained, plus paths, URLs and MCP tools.
fn corpus(settings: &serde_json::Value) -> Vec<ToolCall> {
    let mut calls = Vec::new();
    let mut bash = Vec::new();
    for list in ["allow", "ask", "deny"] {
        for rule in settings["permissions"][list]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r.as_str())
        {
            let Some((tool, spec)) = rule.split_once('(') else {
                calls.push(ToolCall {
                    tool: rule.trim_end_matches("__*").to_string(),
                    input: serde_json::json!({}),
                });
                continue;
            };
            let spec = spec.trim_end_matches(')');
            match tool {
                "Bash" => {
                    let base = spec
                        .trim_end_matches(":*")
                        .trim_end_matches(" *")
                        .replace('*', "x");
                    for variant in [
                        base.clone(),
                        format!("{base} --extra arg"),
                        format!("{base}x"),
                    ] {
                        bash.push(variant);
                    }
                }
                "Read" | "Edit" => {
                    let path = spec
                        .replace("//", "/")
                        .replace("~/", "/home/u/")
                        .replace("**", "deep/f.rs")
                        .replace('*', "f");
                    calls.push(ToolCall::from_text("Read", &path));
                    calls.push(ToolCall::from_text("Edit", &path));
                    calls.push(ToolCall::from_text("Write", &format!("{path}/new.txt")));
                }
                "WebFetch" => {
                    let host = spec.trim_start_matches("domain:").trim_start_matches("*.");
                    calls.push(ToolCall::from_text(
                        "WebFetch",
                        &format!("https://{host}/x"),
                    ));
                    calls.push(ToolCall::from_text(
                        "WebFetch",
                        &format!("https://sub.{host}/x"),
                    ));
                }
                _ => {}
            }
        }
    }
    for (i, command) in bash.iter().enumerate() {
        calls.push(ToolCall::from_text("Bash", command));
        let other = &bash[(i * 7 + 3) % bash.len()];
        calls.push(ToolCall::from_text(
            "Bash",
            &format!("{command} && {other}"),
        ));
        calls.push(ToolCall::from_text(
            "Bash",
            &format!("{command} | {other}; echo \"$({other})\""),
        ));
    }
    calls
}

fn main() {
    let settings: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    let rule_count: usize = ["allow", "ask", "deny"]
        .iter()
        .map(|l| settings["permissions"][*l].as_array().unwrap().len())
        .sum();
    let load_start = Instant::now();
    let e = engine(FIXTURE);
    let load_ms = load_start.elapsed().as_secs_f64() * 1000.0;

    let simple: Vec<ToolCall> = [
        "git status",
        "cargo test -p ecs",
        "ls -la build",
        "cmake --build build",
        "make install",
        "rm -rf build",
        "npm run lint",
        "rg -n shadow src",
    ]
    .iter()
    .map(|c| ToolCall::from_text("Bash", c))
    .collect();
    let compound: Vec<ToolCall> = [
        "git add -A && git commit -m \"fix shadow acne\" && git push origin main",
        "find . -name \"*.cpp\" | xargs grep -n VkPipeline | head -20",
        "cmake --build build -j 8 2>&1 | tail -50; ctest --test-dir build --output-on-failure",
        "FOO=1 timeout 60 cargo test -p ecs && echo \"$(git rev-parse HEAD)\"",
    ]
    .iter()
    .map(|c| ToolCall::from_text("Bash", c))
    .collect();
    let paths: Vec<ToolCall> = [
        "src/renderer/vk_pipeline.cpp",
        "/proj/.env",
        "/usr/include/vulkan/vulkan_core.h",
        "/etc/passwd",
    ]
    .iter()
    .flat_map(|p| {
        [
            ToolCall::from_text("Read", p),
            ToolCall::from_text("Edit", p),
        ]
    })
    .collect();
    let urls: Vec<ToolCall> = [
        "https://docs.rs/x",
        "https://api.github.com/y",
        "https://example.org/",
    ]
    .iter()
    .map(|u| ToolCall::from_text("WebFetch", u))
    .collect();

    let (simple_p50, simple_p99) = latency(&simple, |c| {
        std::hint::black_box(e.decide(c));
    });
    let (compound_p50, compound_p99) = latency(&compound, |c| {
        std::hint::black_box(e.decide(c));
    });
    let (path_p50, path_p99) = latency(&paths, |c| {
        std::hint::black_box(e.decide(c));
    });
    let (url_p50, url_p99) = latency(&urls, |c| {
        std::hint::black_box(e.decide(c));
    });

    // Peer 1: whole-line globset over the Bash specifiers (no splitting: unsafe).
    let mut builder = GlobSetBuilder::new();
    for rule in settings["permissions"]["allow"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
    {
        let spec = rule.strip_prefix("Bash(").and_then(|s| s.strip_suffix(')'));
        if let Some(Ok(glob)) = spec.map(|s| GlobBuilder::new(&s.replace(":*", " *")).build()) {
            builder.add(glob);
        }
    }
    let whole_line = builder.build().unwrap();
    let texts: Vec<String> = simple
        .iter()
        .chain(&compound)
        .map(|c| c.input["command"].as_str().unwrap().to_string())
        .collect();
    let (simple_texts, compound_texts) = texts.split_at(simple.len());
    let (glob_simple_p50, glob_simple_p99) = latency(simple_texts, |t| {
        std::hint::black_box(whole_line.matches(t.as_str()));
    });
    let (glob_compound_p50, glob_compound_p99) = latency(compound_texts, |t| {
        std::hint::black_box(whole_line.matches(t.as_str()));
    });
    // Peer 2: the splitter alone (the parse cost inside our figures; plain
    // simple commands skip brush-parser).
    let (split_simple_p50, split_simple_p99) = latency(simple_texts, |t| {
        std::hint::black_box(split_command(t).ok());
    });
    let (split_compound_p50, split_compound_p99) = latency(compound_texts, |t| {
        std::hint::black_box(split_command(t).ok());
    });

    // Consolidation.
    let start = Instant::now();
    let plain = consolidate(FIXTURE, Path::new(SETTINGS_PATH), false).unwrap();
    let plain_ms = start.elapsed().as_secs_f64() * 1000.0;
    let start = Instant::now();
    let widened = consolidate(FIXTURE, Path::new(SETTINGS_PATH), true).unwrap();
    let widen_ms = start.elapsed().as_secs_f64() * 1000.0;
    let calls = corpus(&settings);
    let (after_plain, after_widen) = (
        engine(&plain.settings.to_string()),
        engine(&widened.settings.to_string()),
    );
    let plain_changed = calls
        .iter()
        .filter(|c| e.decide(c).verdict != after_plain.decide(c).verdict)
        .count();
    let widen_changed = calls
        .iter()
        .filter(|c| e.decide(c).verdict != after_widen.decide(c).verdict)
        .count();

    println!(
        "permissions benchmark: fixture with {rule_count} rules (engine load {load_ms:.2} ms), {ITERATIONS} decisions per row"
    );
    println!();
    println!("| decision latency (µs)                 | p50    | p99    |");
    println!("|---------------------------------------|--------|--------|");
    let row = |name: &str, p50: f64, p99: f64| println!("| {name:<37} | {p50:>6.2} | {p99:>6.2} |");
    row("tetrarch: Bash, simple command", simple_p50, simple_p99);
    row(
        "tetrarch: Bash, compound command",
        compound_p50,
        compound_p99,
    );
    row("tetrarch: Read/Edit path", path_p50, path_p99);
    row("tetrarch: WebFetch URL", url_p50, url_p99);
    row(
        "peer: whole-line globset, simple",
        glob_simple_p50,
        glob_simple_p99,
    );
    row(
        "peer: whole-line globset, compound",
        glob_compound_p50,
        glob_compound_p99,
    );
    row(
        "peer: splitter alone, simple",
        split_simple_p50,
        split_simple_p99,
    );
    row(
        "peer: splitter alone, compound",
        split_compound_p50,
        split_compound_p99,
    );
    println!();
    println!(
        "| consolidation        | rules before | rules after | decisions changed (of {}) | time (ms) |",
        calls.len()
    );
    println!(
        "|----------------------|--------------|-------------|---------------------------|-----------|"
    );
    println!(
        "| without --widen      | {:>12} | {:>11} | {:>25} | {:>9.1} |",
        plain.rules_before, plain.rules_after, plain_changed, plain_ms
    );
    println!(
        "| with --widen         | {:>12} | {:>11} | {:>25} | {:>9.1} |",
        widened.rules_before, widened.rules_after, widen_changed, widen_ms
    );
    println!();
    println!(
        "widened families ({}), each newly allowed:",
        widened.widened.len()
    );
    for family in &widened.widened {
        println!("  {} <- {} rules", family.rule, family.replaces.len());
    }
    println!(
        "targets: simple p50 <= 5 µs; without --widen no decision changed; with --widen < 50 rules"
    );

    let json = serde_json::json!({
        "fixture_rules": rule_count,
        "iterations": ITERATIONS,
        "engine_load_ms": load_ms,
        "decide_us": {
            "bash_simple": {"p50": simple_p50, "p99": simple_p99},
            "bash_compound": {"p50": compound_p50, "p99": compound_p99},
            "path": {"p50": path_p50, "p99": path_p99},
            "webfetch": {"p50": url_p50, "p99": url_p99},
        },
        "peers_us": {
            "whole_line_globset_simple": {"p50": glob_simple_p50, "p99": glob_simple_p99},
            "whole_line_globset_compound": {"p50": glob_compound_p50, "p99": glob_compound_p99},
            "split_only_simple": {"p50": split_simple_p50, "p99": split_simple_p99},
            "split_only_compound": {"p50": split_compound_p50, "p99": split_compound_p99},
        },
        "consolidation": {
            "corpus_calls": calls.len(),
            "plain": {"before": plain.rules_before, "after": plain.rules_after, "decisions_changed": plain_changed, "ms": plain_ms},
            "widen": {"before": widened.rules_before, "after": widened.rules_after, "decisions_changed": widen_changed, "ms": widen_ms,
                      "families": widened.widened.iter().map(|f| serde_json::json!({"rule": f.rule, "replaces": f.replaces})).collect::<Vec<_>>()},
        },
    });
    let dir = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("permissions.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
