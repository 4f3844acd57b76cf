//! The README's main example end to end: `tetrarch run examples/digest/plan.toml` fans out over
//! the MCP tool server and a process tool, joins, fails the draft's gate once and passes it on the
//! second attempt with the Reviewer's feedback, publishes, and ends COMPLETE.
//!
//! The plan starts its tool server with `cargo run --release --example demo-tools`; here the same
//! example, already built by `cargo test`, is started directly so the test needs no release build.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn demo_tools() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("demo-tools")
}

fn copy_example(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/digest");
    std::fs::create_dir_all(to.join("notes")).unwrap();
    for entry in std::fs::read_dir(from.join("notes")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join("notes").join(entry.file_name())).unwrap();
    }
    std::fs::copy(from.join("settings.json"), to.join("settings.json")).unwrap();
    let plan = std::fs::read_to_string(from.join("plan.toml")).unwrap();
    let cargo = r#"command = ["cargo", "run", "--quiet", "--release", "--example", "demo-tools"]"#;
    assert!(plan.contains(cargo), "the plan's demo pool command changed");
    let direct = format!("command = [{:?}]", demo_tools().display().to_string());
    std::fs::write(to.join("plan.toml"), plan.replace(cargo, &direct)).unwrap();
}

#[test]
fn the_digest_example_runs_to_complete_with_one_gate_failure_and_a_retry() {
    if !demo_tools().exists() {
        panic!("the demo-tools example was not built by cargo test");
    }
    let dir = tempfile::tempdir().unwrap();
    copy_example(dir.path());
    let output = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .arg("--store")
        .arg(dir.path().join("store.redb"))
        .arg("run")
        .arg(dir.path().join("plan.toml"))
        .args(["--events", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "run failed: {stderr}");
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |kind: &str, task: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["event"] == kind && e["task"] == task)
            .collect()
    };
    let gate_failures = of("gate_failed", "draft");
    assert_eq!(gate_failures.len(), 1, "{events:?}");
    assert!(
        gate_failures[0]["feedback"]
            .as_str()
            .unwrap()
            .contains("/words"),
        "{:?}",
        gate_failures[0]
    );
    let draft = of("task_finished", "draft");
    assert_eq!(draft[0]["state"], "complete");
    assert_eq!(draft[0]["attempt"], 2);
    // The four counting tasks fanned out before the join.
    for task in [
        "count-harbor",
        "count-lantern",
        "count-meridian",
        "wc-notes",
    ] {
        assert_eq!(of("task_finished", task)[0]["state"], "complete", "{task}");
    }
    let finished = events
        .iter()
        .find(|e| e["event"] == "run_finished")
        .unwrap();
    assert_eq!(finished["status"], "complete");
    let run_id = finished["run_id"].as_str().unwrap();
    let digest =
        std::fs::read_to_string(dir.path().join(format!("out/{run_id}/digest.md"))).unwrap();
    assert!(digest.split_whitespace().count() <= 120, "{digest}");
    assert!(digest.contains("0.5 Lantern"), "{digest}");
}
