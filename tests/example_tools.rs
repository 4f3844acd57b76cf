//! The `demo-tools` example MCP server (`examples/tools/demo_tools.rs`) through the real `mcp`
//! session kind, and the `examples/digest/plan.toml` plan that drives it.
//!
//! `cargo test` builds the examples next to the test binaries (`target/<profile>/examples/`). When
//! only this test was built (`cargo test --test example_tools`), the server is missing: the tests
//! print that they are skipped, unless `CI=true`, where they fail.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tetrarch::plan::{Gate, Plan, TemplateContext, ToolOutcome as GateOutcome, render};
use tetrarch::session::{
    McpSession, McpSpec, ProcessSession, ProcessSpec, Session, ToolOutcome, ToolRequest,
};

fn digest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/digest")
}

/// The built `demo-tools` example next to this test binary, or `None` (skipped) without it.
fn demo_tools() -> Option<PathBuf> {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/example_tools-HASH → target/<profile>/examples/demo-tools
    let server = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("examples").join("demo-tools"))
        .filter(|p| p.exists());
    if server.is_none() {
        let reason =
            "the demo-tools example is not built (run `cargo test` or `cargo build --examples`)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {reason}"
        );
        eprintln!("skipped: {reason}");
    }
    server
}

async fn connect(server: &Path, cwd: &Path) -> McpSession {
    let spec = McpSpec {
        cwd: Some(cwd.to_path_buf()),
        ..McpSpec::new(server.display().to_string(), Vec::<String>::new())
    };
    McpSession::connect(&spec).await.unwrap()
}

fn request(tool: &str, args: Value) -> ToolRequest {
    ToolRequest::new(tool, args).with_timeout(Duration::from_secs(20))
}

#[tokio::test]
async fn lists_its_four_tools() {
    let Some(server) = demo_tools() else { return };
    let session = connect(&server, &digest_dir()).await;
    let mut names = session.tool_names().await.unwrap();
    names.sort();
    assert_eq!(
        names,
        ["count_words", "draft_report", "publish", "unpublish"]
    );
}

#[tokio::test]
async fn count_words_counts_like_wc_and_ranks_terms() {
    let Some(server) = demo_tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("note.md"),
        "# Cache notes\n\nThe cache, the cache: tiles and tiles and TILES.\nRendering of tiles is \
         fast; the cache is small.\n",
    )
    .unwrap();
    let mut session = connect(&server, dir.path()).await;
    let outcome = session
        .call(request("count_words", json!({"path": "note.md"})))
        .await
        .unwrap();
    assert_eq!(outcome.exit_status, Some(0), "{outcome:?}");
    let json = outcome.json.unwrap();
    assert_eq!(json["path"], "note.md");
    // `wc -w`: whitespace-separated tokens, "#" included.
    assert_eq!(json["words"], 21);
    assert_eq!(json["lines"], 4);
    // "tiles" 4×, "cache" 4×, then "fast", "notes", "rendering", "small" once (alphabetical);
    // "the", "and", "is", "of" are stopwords or too short.
    assert_eq!(
        json["top_terms"],
        json!(["cache", "tiles", "fast", "notes", "rendering"])
    );
}

#[tokio::test]
async fn count_words_on_the_example_notes_agrees_with_wc() {
    let Some(server) = demo_tools() else { return };
    let dir = digest_dir();
    let mut session = connect(&server, &dir).await;
    for name in ["v0.4-harbor.md", "v0.5-lantern.md", "v0.6-meridian.md"] {
        let path = format!("notes/{name}");
        let text = std::fs::read_to_string(dir.join(&path)).unwrap();
        let outcome = session
            .call(request("count_words", json!({ "path": path })))
            .await
            .unwrap();
        let json = outcome.json.unwrap();
        assert_eq!(json["words"], text.split_whitespace().count(), "{name}");
        assert_eq!(json["lines"], text.lines().count(), "{name}");
        assert_eq!(json["top_terms"].as_array().unwrap().len(), 5, "{name}");
    }
}

#[tokio::test]
async fn a_missing_file_is_a_tool_error_naming_it_and_the_server_stays_up() {
    let Some(server) = demo_tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut session = connect(&server, dir.path()).await;
    let outcome = session
        .call(request("count_words", json!({"path": "no/such/notes.md"})))
        .await
        .unwrap();
    assert_eq!(outcome.exit_status, Some(1), "{outcome:?}");
    assert!(
        outcome.stdout.contains("no/such/notes.md") && outcome.stdout.contains("cannot read"),
        "{}",
        outcome.stdout
    );
    // Arguments of the wrong shape: rmcp answers a tool error naming the missing field.
    let wrong = session
        .call(request("count_words", json!({"file": "x"})))
        .await
        .unwrap();
    assert_eq!(wrong.exit_status, Some(1));
    assert!(
        wrong.stdout.contains("missing field `path`"),
        "{}",
        wrong.stdout
    );
    session.health_check().await.unwrap();
    std::fs::write(dir.path().join("ok.txt"), "one two three\n").unwrap();
    let outcome = session
        .call(request("count_words", json!({"path": "ok.txt"})))
        .await
        .unwrap();
    assert_eq!(outcome.json.unwrap()["words"], 3);
}

fn sections() -> Value {
    json!([
        {"name": "0.4 Harbor", "words": 326, "top_terms": ["cache", "tiles", "daemon", "style", "rendering"]},
        {"name": "0.5 Lantern", "words": 333, "top_terms": ["night", "style", "metrics", "day", "render"]},
        {"name": "0.6 Meridian", "words": 331, "top_terms": ["cache", "daemon", "cluster", "tiles", "tile"]},
    ])
}

fn words_of(outcome: &ToolOutcome) -> (String, u64) {
    let json = outcome.json.as_ref().unwrap();
    let report = json["report"].as_str().unwrap().to_owned();
    let words = json["words"].as_u64().unwrap();
    assert_eq!(words, report.split_whitespace().count() as u64);
    (report, words)
}

#[tokio::test]
async fn draft_report_is_verbose_first_and_fits_the_limit_named_in_feedback() {
    let Some(server) = demo_tools() else { return };
    let mut session = connect(&server, &digest_dir()).await;
    let first = session
        .call(request(
            "draft_report",
            json!({"title": "Digest", "sections": sections(), "feedback": "", "attempt": 1}),
        ))
        .await
        .unwrap();
    let (report, words) = words_of(&first);
    assert!(words > 120, "the first draft should be long: {words} words");
    for term in [
        "Harbor", "Lantern", "Meridian", "cluster", "metrics", "night",
    ] {
        assert!(report.contains(term), "{term} missing from\n{report}");
    }

    for (feedback, limit) in [
        ("JSON field /words is 412, required <= 120", 120),
        ("words 180 > max 120", 120),
        ("keep it to at most 20 words", 20),
    ] {
        let revised = session
            .call(request(
                "draft_report",
                json!({"title": "Digest", "sections": sections(), "feedback": feedback, "attempt": "2"}),
            ))
            .await
            .unwrap();
        let (report, words) = words_of(&revised);
        assert!(words <= limit, "{feedback}: {words} words\n{report}");
        for name in ["0.4 Harbor", "0.5 Lantern", "0.6 Meridian"] {
            assert!(
                report.contains(name),
                "{feedback}: {name} missing\n{report}"
            );
        }
        let json = revised.json.unwrap();
        assert_eq!(json["limit"], limit);
        assert_eq!(json["attempt"], 2);
    }
    // The 120-word revision keeps the terms (they fit); the 20-word one had to drop them.
    let roomy = session
        .call(request(
            "draft_report",
            json!({"title": "Digest", "sections": sections(), "feedback": "max 120"}),
        ))
        .await
        .unwrap();
    assert!(words_of(&roomy).0.contains("cluster"));
}

#[tokio::test]
async fn publish_writes_and_unpublish_deletes() {
    let Some(server) = demo_tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut session = connect(&server, dir.path()).await;
    let outcome = session
        .call(request(
            "publish",
            json!({"report": "# Digest\n\nshort\n", "path": "out/run-1/digest.md"}),
        ))
        .await
        .unwrap();
    assert_eq!(outcome.exit_status, Some(0), "{outcome:?}");
    assert_eq!(
        outcome.json.unwrap(),
        json!({"path": "out/run-1/digest.md", "bytes": 16})
    );
    let written = dir.path().join("out/run-1/digest.md");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "# Digest\n\nshort\n"
    );

    let outcome = session
        .call(request("unpublish", json!({"path": "out/run-1/digest.md"})))
        .await
        .unwrap();
    assert_eq!(outcome.json.unwrap()["removed"], true);
    assert!(!written.exists());
    // Compensation twice is harmless.
    let again = session
        .call(request("unpublish", json!({"path": "out/run-1/digest.md"})))
        .await
        .unwrap();
    assert_eq!(again.exit_status, Some(0));
    assert_eq!(again.json.unwrap()["removed"], false);

    // A path under a regular file cannot be written: a tool error naming it.
    std::fs::write(dir.path().join("blocker"), "").unwrap();
    let outcome = session
        .call(request(
            "publish",
            json!({"report": "x", "path": "blocker/digest.md"}),
        ))
        .await
        .unwrap();
    assert_eq!(outcome.exit_status, Some(1));
    assert!(outcome.stdout.contains("blocker"), "{}", outcome.stdout);
}

/// The plan, and its `[pools]` table. A plan parser that does not know `[pools]` yet (it rejects
/// unknown keys) is given the plan without it, so the tasks, templates and gates are still
/// validated.
fn digest_plan() -> (Plan, toml::Table) {
    let path = digest_dir().join("plan.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut table: toml::Table = toml::from_str(&text).unwrap();
    let pools = match table.get("pools") {
        Some(toml::Value::Table(pools)) => pools.clone(),
        other => panic!("plan.toml has no [pools] table: {other:?}"),
    };
    let plan = match Plan::from_toml(&text, "examples/digest/plan.toml") {
        Ok(plan) => plan,
        Err(e) if e.to_string().contains("unknown field `pools`") => {
            eprintln!(
                "note: this plan parser does not accept [pools] yet; checking the tasks alone"
            );
            table.remove("pools");
            Plan::from_toml(&toml::to_string(&table).unwrap(), "plan.toml (tasks)").unwrap()
        }
        Err(e) => panic!("{e}"),
    };
    (plan, pools)
}

#[test]
fn the_digest_plan_is_valid() {
    let (plan, pools) = digest_plan();
    assert_eq!(plan.name, "release-digest");
    assert_eq!(pools["demo"]["kind"].as_str(), Some("mcp"));
    assert_eq!(pools["sh"]["kind"].as_str(), Some("process"));
    let levels = plan.dag().levels();
    assert_eq!(levels.len(), 3, "{levels:?}");
    assert_eq!(levels[0].len(), 4, "fan-out of four: {levels:?}");
    let publish = plan.task("publish").unwrap();
    assert_eq!(
        publish.compensate.as_ref().unwrap().tool.to_string(),
        "demo.unpublish"
    );
    assert_eq!(plan.task("draft").unwrap().max_attempts, 3);
}

/// Runs the plan's tasks in file order (a dependency order) against the real server and `sh`,
/// applies the real gates, and retries with the gates' reasons as `{{feedback}}` — the loop the
/// runtime performs — to check the plan does what its comments say: the draft fails its word gate
/// once and passes on attempt 2, and the compensation removes the published file.
#[tokio::test]
async fn the_digest_plan_runs_draft_fails_once_then_passes() {
    let Some(server) = demo_tools() else { return };
    let (plan, pools) = digest_plan();
    let dir = digest_dir();
    let mut demo = connect(&server, &dir).await;
    let prefix: Vec<String> = pools["sh"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let run_id = format!("test-{}", std::process::id());
    let mut outputs: HashMap<String, Value> = HashMap::new();
    let mut attempts_used: HashMap<String, u32> = HashMap::new();

    for task in &plan.tasks {
        let mut feedback = String::new();
        let mut passed = false;
        for attempt in 1..=task.max_attempts {
            let ctx = TemplateContext {
                context: String::new(),
                outputs: outputs.clone(),
                attempt,
                feedback: feedback.clone(),
                run_id: run_id.as_str().into(),
                plan_name: plan.name.as_str().into(),
            };
            let args = render(&task.args, &ctx).unwrap();
            let outcome = match task.tool.pool.as_str() {
                "demo" => demo.call(request(&task.tool.tool, args)).await.unwrap(),
                "sh" => {
                    let argv = args["argv"].as_array().unwrap();
                    let mut full = prefix.clone();
                    full.extend(argv.iter().map(|a| a.as_str().unwrap().to_owned()));
                    let spec = ProcessSpec {
                        cwd: Some(dir.clone()),
                        ..ProcessSpec::new(full[0].clone(), full[1..].to_vec())
                    };
                    let mut sh = ProcessSession::new(spec);
                    sh.call(request(&task.tool.tool, json!({}))).await.unwrap()
                }
                other => panic!("unknown pool {other}"),
            };
            let output = outcome.json.clone().unwrap_or(Value::Null);
            let mut gate_ctx = ctx.clone();
            gate_ctx.outputs.insert(task.id.to_string(), output.clone());
            let gate_outcome = GateOutcome {
                exit_status: outcome.exit_status,
                output: outcome.stdout.clone(),
                json: outcome.json.clone(),
            };
            let mut reasons = Vec::new();
            for gate in &task.gates {
                if let Gate::FileExists { path } = gate {
                    // The runtime resolves plan paths against the plan's folder.
                    let rendered = tetrarch::plan::template::render_text(path, &gate_ctx).unwrap();
                    if !dir.join(&rendered).exists() {
                        reasons.push(format!("file {rendered} does not exist"));
                    }
                    continue;
                }
                let verdict = gate.check(&gate_outcome, &gate_ctx).unwrap();
                if !verdict.passed {
                    reasons.push(verdict.reason);
                }
            }
            attempts_used.insert(task.id.to_string(), attempt);
            if reasons.is_empty() {
                outputs.insert(task.id.to_string(), output);
                passed = true;
                break;
            }
            feedback = reasons.join("; ");
        }
        assert!(passed, "task {} failed its gates: {feedback}", task.id);
    }

    assert_eq!(attempts_used["draft"], 2, "{attempts_used:?}");
    assert!(attempts_used.iter().all(|(id, n)| id == "draft" || *n == 1));
    let wc_total = outputs["wc-notes"]["words"].as_u64().unwrap();
    let mcp_total: u64 = ["count-harbor", "count-lantern", "count-meridian"]
        .iter()
        .map(|id| outputs[*id]["words"].as_u64().unwrap())
        .sum();
    assert_eq!(wc_total, mcp_total, "wc and count_words disagree");
    let published = dir.join(outputs["publish"]["path"].as_str().unwrap());
    let text = std::fs::read_to_string(&published).unwrap();
    assert!(
        text.contains(&format!("({wc_total} words of notes)")),
        "{text}"
    );
    assert!(text.split_whitespace().count() <= 120);

    // Roll back: the compensation removes the published file.
    let compensate = plan.task("publish").unwrap().compensate.clone().unwrap();
    let ctx = TemplateContext {
        context: String::new(),
        outputs: outputs.clone(),
        attempt: 1,
        run_id: run_id.as_str().into(),
        plan_name: plan.name.as_str().into(),
        ..TemplateContext::default()
    };
    let args = render(&compensate.args, &ctx).unwrap();
    let outcome = demo
        .call(request(&compensate.tool.tool, args))
        .await
        .unwrap();
    assert_eq!(outcome.json.unwrap()["removed"], true);
    assert!(!published.exists());
    let _ = std::fs::remove_dir(dir.join("out").join(&run_id));
}

/// The server reads pipes through epoll, and falls back to tokio's stdio when stdin is not a pipe:
/// here a Unix socket, spoken to line by line as JSON-RPC.
#[test]
fn serves_when_stdio_is_a_socket_rather_than_a_pipe() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};

    let Some(server) = demo_tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("note.md"),
        "three little words\nand four more here\n",
    )
    .unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let theirs_out = theirs.try_clone().unwrap();
    let mut child = Command::new(&server)
        .current_dir(dir.path())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(theirs_out)))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(ours.try_clone().unwrap()).lines();
    let send = |message: Value| writeln!(&ours, "{message}").unwrap();
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "socket-test", "version": "1"}}}),
    );
    let init: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(init["id"], 1, "{init}");
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "count_words", "arguments": {"path": "note.md"}}}));
    let reply: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(reply["id"], 2, "{reply}");
    let counted = &reply["result"]["structuredContent"];
    assert_eq!(counted["words"], 7, "{reply}");
    assert_eq!(counted["lines"], 2, "{reply}");
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the server exited with {status} at end of input"
    );
}
