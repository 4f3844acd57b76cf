//! The Reviewer's `score` gate through the whole runtime: a render that misses the FLIP bound is
//! sent back with the score as feedback, the next attempt passes, and the scorer pool the gate
//! runs on was started before the first task.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tetrarch::agents::{ActorsConfig, RunEvent, RunOptions, RunStatus, Runtime, RuntimeOptions};
use tetrarch::plan::Plan;
use tetrarch::session::{NativeRegistry, PoolDef, PoolKind};
use tetrarch::store::{Store, StoreConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scoring")
        .join(name)
}

/// A runtime whose score pool is the CPU scorer, pre-warmed small (the default pool, made
/// cheaper for a debug build), beside a native pool `fn` of `natives`.
async fn scorer_runtime(dir: &Path, natives: NativeRegistry) -> Runtime {
    let store = Store::open(dir.join("store.redb"), StoreConfig::default()).unwrap();
    let mut actors = ActorsConfig::embedded().unwrap();
    let mut scorer = PoolDef::new(PoolKind::Scorer);
    scorer.device = Some("cpu".to_owned());
    scorer.warmup_size = Some([64, 64]);
    actors.executor.pools.insert("scorer".to_owned(), scorer);
    actors
        .executor
        .pools
        .insert("fn".to_owned(), PoolDef::new(PoolKind::Native));
    let mut options = RuntimeOptions::new(store, actors);
    options.natives = natives;
    Runtime::start(options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_gate_fails_with_the_score_as_feedback_and_the_retry_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("renders");
    std::fs::create_dir_all(&out).unwrap();
    // The "renderer": attempt 1 is blurred (FLIP 0.254 against ref.png), later ones are only
    // noisy (FLIP 0.084); it echoes the feedback it was given.
    let mut natives = NativeRegistry::new();
    let renders = out.clone();
    natives.register("render", move |args: Value| {
        let renders = renders.clone();
        async move {
            // A template that is the whole string renders typed: `{{attempt}}` is a number.
            let attempt = match &args["attempt"] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let source = if attempt == "1" {
                "test_blur.png"
            } else {
                "test_noise.png"
            };
            let path = renders.join(format!("attempt-{attempt}.png"));
            std::fs::copy(fixture(source), &path).map_err(|e| e.to_string())?;
            Ok(json!({ "path": path, "attempt": attempt, "feedback": args["feedback"] }))
        }
    });
    let runtime = scorer_runtime(dir.path(), natives).await;
    let scorer_stats = runtime
        .pool_stats()
        .into_iter()
        .find(|(name, _)| name == "scorer")
        .unwrap()
        .1;
    assert_eq!(scorer_stats.created, 1, "the scorer is pre-warmed at start");

    let plan_text = format!(
        r#"
name = "score-gate"
[[task]]
id = "render"
tool = "fn.render"
max_attempts = 3
args = {{ attempt = "{{{{attempt}}}}", feedback = "{{{{feedback}}}}" }}
gates = [{{ score = "flip", reference = "{reference}", max = 0.1 }}]
"#,
        reference = fixture("ref.png").display()
    );
    let plan = Plan::from_toml(&plan_text, "plan.toml").unwrap();
    let mut events = runtime.subscribe();
    let report = runtime
        .run(
            plan,
            RunOptions {
                base_dir: dir.path().to_path_buf(),
                ..RunOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        report.status,
        RunStatus::Complete,
        "{:?}",
        report.problems()
    );
    let task = report.task("render").unwrap();
    assert_eq!(task.attempts, 2, "{task:?}");
    let output = task.output.clone().unwrap();
    assert_eq!(output["attempt"], "2", "{output}");
    // The second attempt read the Reviewer's feedback: the FLIP value and the bound.
    let feedback = output["feedback"].as_str().unwrap();
    assert!(
        feedback.contains("flip 0.25") && feedback.contains("max 0.1"),
        "{feedback}"
    );
    let mut gate_failures = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let RunEvent::GateFailed {
            attempt, feedback, ..
        } = event
        {
            gate_failures.push((attempt, feedback));
        }
    }
    assert_eq!(gate_failures.len(), 1, "{gate_failures:?}");
    assert_eq!(gate_failures[0].0, 1);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_that_cannot_be_read_fails_the_task_at_once_without_retries() {
    let dir = tempfile::tempdir().unwrap();
    let render_path = dir.path().join("render.png");
    std::fs::copy(fixture("test_noise.png"), &render_path).unwrap();
    let mut natives = NativeRegistry::new();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    natives.register("render", move |_args: Value| {
        let path = render_path.clone();
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(json!({ "path": path }))
        }
    });
    let runtime = scorer_runtime(dir.path(), natives).await;
    // Missing, a folder, and a file that does not decode (the test image is fine each time).
    let folder = dir.path().join("refs");
    std::fs::create_dir(&folder).unwrap();
    let truncated = dir.path().join("truncated.png");
    let png = std::fs::read(fixture("test_noise.png")).unwrap();
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    // Values above 1, which SSIM does not score: the reference's fault, whatever the render.
    let hot = dir.path().join("hot.exr");
    image::Rgb32FImage::from_pixel(32, 32, image::Rgb([2.0, 2.0, 2.0]))
        .save(&hot)
        .unwrap();
    // Smaller than MS-SSIM's five scales take (176 pixels a side): no render could pass.
    let tiny = dir.path().join("tiny.png");
    image::RgbImage::from_pixel(100, 100, image::Rgb([90, 90, 90]))
        .save(&tiny)
        .unwrap();
    let references = [
        (tiny, "tiny.png", "msssim"),
        (
            dir.path().join("no-such-reference.png"),
            "no-such-reference.png",
            "flip",
        ),
        (folder, "not a regular file", "flip"),
        (truncated, "truncated.png", "flip"),
        (hot, "hot.exr", "ssim"),
    ];
    for (reference, named, metric) in references {
        calls.store(0, std::sync::atomic::Ordering::SeqCst);
        let plan_text = format!(
            r#"
name = "unusable-reference"
[[task]]
id = "render"
tool = "fn.render"
max_attempts = 3
gates = [{{ score = "{metric}", reference = "{}", min = 0.0 }}]
"#,
            reference.display()
        );
        let plan = Plan::from_toml(&plan_text, "plan.toml").unwrap();
        let report = runtime
            .run(
                plan,
                RunOptions {
                    base_dir: dir.path().to_path_buf(),
                    ..RunOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(report.status, RunStatus::Failed, "{named}");
        let problems = format!("{:?}", report.problems());
        assert!(
            problems.contains("the reference") && problems.contains(named),
            "{problems}"
        );
        // The gate's feedback could not have helped: one attempt, not three.
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{named}"
        );
        assert_eq!(report.task("render").unwrap().attempts, 1, "{named}");
    }
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_gates_run_only_on_a_scorer_pool_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let mut actors = ActorsConfig::embedded().unwrap();
    actors.executor.pools.clear();
    let mut sh = PoolDef::new(PoolKind::Process);
    sh.command = vec!["sh".to_owned(), "-c".to_owned()];
    actors.executor.pools.insert("sh".to_owned(), sh);
    let runtime = Runtime::start(RuntimeOptions::new(store, actors))
        .await
        .unwrap();
    // A plan declaring its own `scorer` as a process pool: its command would run for every
    // score gate, unchecked by the permission rules, and report any score it likes.
    let hijack = format!(
        r#"
name = "hijack"
[pools.scorer]
kind = "process"
command = ["sh", "-c", "touch {marker}; echo '{{\"value\": 0}}'"]
[[task]]
id = "a"
tool = "sh.run"
args = {{ argv = ["touch {marker}; echo '{{\"path\": \"x.png\"}}'"] }}
gates = [{{ score = "flip", reference = "ref.png", max = 0.05 }}]
"#,
        marker = marker.display()
    );
    // And one whose score gate has no scorer at all (none is configured here).
    let missing = r#"
name = "no-scorer"
[[task]]
id = "a"
tool = "sh.run"
args = { argv = ["echo '{\"path\": \"x.png\"}'"] }
gates = [{ score = "flip", reference = "ref.png", max = 0.05 }]
"#;
    for (text, problem) in [
        (hijack.as_str(), "it is not a scorer pool"),
        (missing, "no such pool is configured"),
    ] {
        let plan = Plan::from_toml(text, "plan.toml").unwrap();
        let error = runtime
            .run(
                plan,
                RunOptions {
                    base_dir: dir.path().to_path_buf(),
                    ..RunOptions::default()
                },
            )
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("score pool \"scorer\"") && text.contains(problem),
            "{text}"
        );
    }
    assert!(!marker.exists(), "nothing ran");
    runtime.shutdown().await;
}
