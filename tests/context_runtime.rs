//! Context budgets through the real runtime and the `tetrarch` binary: the files a task names
//! (`context_files`), the monitor's alert → preserve → compact path inside the Optimizer, a
//! `[context]` budget and `skills_dir` loaded from an actors folder, bad skill files and a tiny
//! window in `tetrarch run` (warnings, the run completes), and `RUST_LOG` changing what is printed.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tetrarch::agents::{
    ActorsConfig, RunEvent, RunOptions, RunReport, RunStatus, Runtime, RuntimeOptions,
};
use tetrarch::context::{O200kCounter, TokenCounter};
use tetrarch::plan::Plan;
use tetrarch::session::{NativeRegistry, PoolDef, PoolKind};
use tetrarch::store::{Namespace, Store, StoreConfig};
use tetrarch::telemetry::{Telemetry, install_metrics};

/// A runtime with native tools in pool `fn`: `echo` returns its args, `say` returns its `text`
/// arg as a JSON string (so a downstream `{{context}}` holds exactly that text).
async fn runtime(dir: &Path, mut actors: ActorsConfig) -> Runtime {
    let store = Store::open(dir.join("store.redb"), StoreConfig::default()).unwrap();
    let mut natives = NativeRegistry::new();
    natives.register("echo", |args: Value| async move { Ok(args) });
    natives.register("say", |args: Value| async move {
        Ok(args.get("text").cloned().unwrap_or(Value::Null))
    });
    // No score gates here: skip pre-warming the scorer (slow in a debug build).
    actors.executor.pools.remove("scorer");
    let mut pool = PoolDef::new(PoolKind::Native);
    pool.max_size = 8;
    actors.executor.pools.insert("fn".to_owned(), pool);
    let mut options = RuntimeOptions::new(store, actors);
    options.natives = natives;
    Runtime::start(options).await.unwrap()
}

fn options(dir: &Path) -> RunOptions {
    RunOptions {
        base_dir: dir.to_path_buf(),
        ..RunOptions::default()
    }
}

/// Runs the plan `text` with `options` and checks every task completed.
async fn run_complete(runtime: &Runtime, text: &str, options: RunOptions) -> RunReport {
    let plan = Plan::from_toml(text, "plan.toml").unwrap();
    let report = runtime.run(plan, options).await.unwrap();
    assert_eq!(
        report.status,
        RunStatus::Complete,
        "{:?}",
        report.problems()
    );
    report
}

fn notes(report: &RunReport, task: &str) -> String {
    let output = report.task(task).unwrap().output.clone().unwrap();
    output["notes"].as_str().unwrap().to_owned()
}

/// The memories of `namespace` tagged `tag`, once the runtime's background writes (outcome
/// memories, context snapshots) are in.
async fn settled_memories_tagged(
    runtime: &Runtime,
    namespace: &Namespace,
    tag: &str,
) -> Vec<std::sync::Arc<tetrarch::store::Memory>> {
    assert!(runtime.settle(Duration::from_secs(10)).await.unwrap());
    runtime
        .store()
        .list_recent(Some(namespace), 100)
        .into_iter()
        .filter(|m| m.tags.iter().any(|t| t == tag))
        .collect()
}

/// The text of the item `source` in a rendered `{{context}}` (`## SOURCE\nTEXT\n\n...`).
fn section<'a>(context: &'a str, source: &str) -> Option<&'a str> {
    let start = context.find(&format!("## {source}\n"))? + source.len() + 4;
    let rest = &context[start..];
    Some(
        rest.find("\n## ")
            .map_or(rest, |end| &rest[..end])
            .trim_end(),
    )
}

#[test]
fn context_files_are_validated_with_the_plan() {
    let error = |text: &str| Plan::from_toml(text, "p.toml").err().unwrap().to_string();
    let without_context = error(
        "name = \"p\"\n[[task]]\nid = \"a\"\ntool = \"fn.echo\"\n\
         context_files = [\"a.md\"]\nargs = { x = 1 }\n",
    );
    assert!(
        without_context.contains(
            "p.toml:5:18: task \"a\" context_files are sent through {{context}}, which its args do not use"
        ),
        "{without_context}"
    );
    let bad = error(
        "name = \"p\"\n[[task]]\nid = \"a\"\ntool = \"fn.echo\"\n\
         context_files = [\"a.md\", \"\", \"a.md\", \"{{run.id}}.md\"]\nargs = { x = \"{{context}}\" }\n",
    );
    assert!(bad.contains("context_files has an empty path"), "{bad}");
    assert!(bad.contains("context_files names \"a.md\" twice"), "{bad}");
    assert!(bad.contains("is a path, not a template"), "{bad}");
    // The same file spelled with `./` is the same file.
    let dotted = error(
        "name = \"p\"\n[[task]]\nid = \"a\"\ntool = \"fn.echo\"\n\
         context_files = [\"docs/a.md\", \"./docs/./a.md\"]\nargs = { x = \"{{context}}\" }\n",
    );
    assert!(
        dotted.contains("context_files names \"./docs/./a.md\" twice"),
        "{dotted}"
    );
    let plan = Plan::from_toml(
        "name = \"p\"\n[[task]]\nid = \"a\"\ntool = \"fn.echo\"\n\
         context_files = [\"docs/a.md\", \"/abs/b.md\"]\nargs = { x = \"{{context}}\" }\n",
        "p.toml",
    )
    .unwrap();
    let files: Vec<&str> = plan.tasks[0]
        .context_files
        .iter()
        .map(|p| p.to_str().unwrap())
        .collect();
    assert_eq!(files, ["docs/a.md", "/abs/b.md"]);
}

#[tokio::test]
async fn a_second_attempt_gets_its_whole_context_again() {
    // The tools keep nothing between calls: an attempt sent back by a gate must be given the
    // upstream output again, not a reference to what the first attempt received.
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), ActorsConfig::embedded().unwrap()).await;
    let report = run_complete(
        &runtime,
        r#"
name = "second-attempt"
[[task]]
id = "gather"
tool = "fn.say"
args = { text = "the lantern codeword is quetzalcoatl" }
[[task]]
id = "use"
tool = "fn.echo"
deps = ["gather"]
args = { notes = "{{context}}", attempt = "{{attempt}}" }
max_attempts = 2
gates = [{ json = "/attempt", ge = 2 }]
"#,
        options(dir.path()),
    )
    .await;
    assert_eq!(report.task("use").unwrap().attempts, 2);
    let context = notes(&report, "use");
    assert_eq!(
        section(&context, "task:gather"),
        Some("the lantern codeword is quetzalcoatl"),
        "{context}"
    );
    runtime.shutdown().await;
}

#[tokio::test]
async fn the_runs_recent_memories_are_context_candidates_beside_the_search_hits() {
    // With no search hits allowed, a memory of the run reaches a task's context only as one
    // of the run's recent memories.
    for recent in [0, 5] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
        let mut actors = ActorsConfig::embedded().unwrap();
        actors.optimizer.memories = 0;
        actors.optimizer.recent = recent;
        actors.executor.pools.remove("scorer");
        let mut pool = PoolDef::new(PoolKind::Native);
        pool.max_size = 4;
        actors.executor.pools.insert("fn".to_owned(), pool);
        let mut runtime_options = RuntimeOptions::new(store.clone(), actors);
        let mut natives = NativeRegistry::new();
        natives.register("echo", |args: Value| async move { Ok(args) });
        runtime_options.natives = natives;
        let runtime = Runtime::start(runtime_options).await.unwrap();
        let run_id = "recent-memories";
        store
            .store(tetrarch::store::NewMemory::new(
                Namespace::session("run", run_id).unwrap(),
                "the lantern brightness was too low at exposure 2",
            ))
            .await
            .unwrap();
        let run = RunOptions {
            run_id: Some(run_id.to_owned()),
            ..options(dir.path())
        };
        let report = run_complete(
            &runtime,
            r#"
name = "recent"
[[task]]
id = "relight"
tool = "fn.echo"
args = { notes = "{{context}}", topic = "lantern brightness" }
"#,
            run,
        )
        .await;
        let context = notes(&report, "relight");
        assert_eq!(
            context.contains("lantern brightness was too low"),
            recent > 0,
            "recent = {recent}: {context}"
        );
        runtime.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lessons_snapshots_and_template_words_do_not_pull_memories_into_a_tasks_context() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), ActorsConfig::embedded().unwrap()).await;
    let remember = |text: &str, tag: Option<&str>| {
        let mut memory = tetrarch::store::NewMemory::new(Namespace::Global, text);
        memory.tags = tag.into_iter().map(str::to_owned).collect();
        let store = runtime.store().clone();
        async move { store.store(memory).await.unwrap() }
    };
    // Words only the template language uses: `{{context}}`, `tasks`, `output`.
    remember("the invoice context field holds the tasks output", None).await;
    remember("lantern exposure failed: permission denied", Some("lesson")).await;
    remember("lantern exposure notes", Some("context-snapshot")).await;
    remember("lantern exposure is 2 at dusk", None).await;
    let report = run_complete(
        &runtime,
        r#"
name = "quiet"
[[task]]
id = "fetch"
tool = "fn.echo"
args = { path = "scene" }
[[task]]
id = "relight"
tool = "fn.echo"
deps = ["fetch"]
args = { notes = "{{context}}", topic = "lantern exposure", from = "{{tasks.fetch.output.path}}" }
"#,
        options(dir.path()),
    )
    .await;
    let context = notes(&report, "relight");
    assert!(
        context.contains("lantern exposure is 2 at dusk"),
        "{context}"
    );
    for unwanted in ["invoice", "permission denied", "lantern exposure notes"] {
        assert!(!context.contains(unwanted), "{unwanted:?} in: {context}");
    }
    // Outputs are recorded as memories of the run (in the background), typed as task outputs.
    let namespace = Namespace::session("run", &report.run_id).unwrap();
    // Written after each outcome went on: the run can report its end first.
    let outputs = settled_memories_tagged(&runtime, &namespace, "output").await;
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    assert!(
        outputs
            .iter()
            .all(|m| m.memory_type == tetrarch::store::MemoryType::TaskOutput)
    );
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_reads_the_files_it_names_through_context_and_a_missing_one_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    std::fs::write(
        dir.path().join("docs/style.md"),
        "Release notes use the imperative mood. The codeword is quetzalcoatl.\n",
    )
    .unwrap();
    let runtime = runtime(dir.path(), ActorsConfig::embedded().unwrap()).await;
    let report = run_complete(
        &runtime,
        r#"
name = "context-files"
[[task]]
id = "draft"
tool = "fn.echo"
context_files = ["docs/style.md", "docs/missing.md"]
args = { notes = "{{context}}" }
[[task]]
id = "other"
tool = "fn.echo"
args = { notes = "{{context}}" }
"#,
        options(dir.path()),
    )
    .await;
    let draft = notes(&report, "draft");
    assert_eq!(
        section(&draft, "file:docs/style.md"),
        Some("Release notes use the imperative mood. The codeword is quetzalcoatl."),
        "{draft}"
    );
    assert!(!draft.contains("missing.md"), "{draft}");
    // Only the task that names the file gets it as a file. (The draft's output, the file's text
    // in it, is a memory of the run, which the other task may be given if it was recorded first.)
    let other = notes(&report, "other");
    assert_eq!(section(&other, "file:docs/style.md"), None, "{other}");
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_the_alert_ratio_in_a_run_alerts_once_per_session_and_preserves_the_context_once()
{
    let dir = tempfile::tempdir().unwrap();
    let big: String = (0..40)
        .map(|i| format!("Renderer pass {i} finished with spilled registers on the volume. "))
        .collect();
    let big = big.trim_end().to_owned();
    let tokens = O200kCounter::new().unwrap().count(&big);
    let mut actors = ActorsConfig::embedded().unwrap();
    // The big upstream output fills 80% of the window: the first payload crosses 75%.
    actors.optimizer.context.budget.window = tokens * 100 / 80;
    // Upstream outputs only: `gather-big`'s output is also a memory of the run, which `small`
    // would be offered when it happens to be recorded before `small` starts.
    actors.optimizer.memories = 0;
    actors.optimizer.recent = 0;
    let window = actors.optimizer.context.budget.window;
    let runtime = runtime(dir.path(), actors).await;
    let telemetry = Telemetry::new(Some(install_metrics().unwrap()));
    let observer = telemetry.observe(runtime.subscribe_all());
    let mut events = runtime.subscribe();
    let report = run_complete(
        &runtime,
        &format!(
            r#"
name = "context-alert"
[[task]]
id = "gather-big"
tool = "fn.say"
args = {{ text = "{big}" }}
[[task]]
id = "big"
tool = "fn.echo"
deps = ["gather-big"]
args = {{ notes = "{{{{context}}}}" }}
[[task]]
id = "big-again"
tool = "fn.echo"
deps = ["gather-big"]
args = {{ notes = "{{{{context}}}}" }}
[[task]]
id = "gather-small"
tool = "fn.say"
args = {{ text = "one short line" }}
[[task]]
id = "small"
tool = "fn.echo"
deps = ["gather-small"]
args = {{ notes = "{{{{context}}}}" }}
"#
        ),
        options(dir.path()),
    )
    .await;
    assert_eq!(
        section(&notes(&report, "big"), "task:gather-big"),
        Some(&*big)
    );

    let mut alerts = Vec::new();
    let mut built = Vec::new();
    while let Ok(event) = events.try_recv() {
        match event {
            RunEvent::ContextAlert {
                task,
                session,
                used,
                window,
                ..
            } => alerts.push((task, session, used, window)),
            RunEvent::ContextBuilt {
                task,
                session_tokens,
                ..
            } => built.push((task, session_tokens)),
            _ => {}
        }
    }
    // Each task's session crosses once: the two that read the big output, not the small one.
    alerts.sort();
    let sessions: Vec<String> = ["big", "big-again"]
        .iter()
        .map(|task| format!("{}/{task}", report.run_id))
        .collect();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    for (alert, (task, session)) in alerts
        .iter()
        .zip(["big", "big-again"].iter().zip(&sessions))
    {
        assert_eq!((alert.0.as_str(), &alert.1), (*task, session));
        assert_eq!(alert.3, window);
        assert!(alert.2 * 4 >= window * 3, "{alerts:?}");
        let task_built = built.iter().find(|(t, _)| t == task).unwrap();
        assert_eq!(
            task_built.1, alert.2,
            "the alert reports the session's usage"
        );
    }
    assert!(built.iter().any(|(t, _)| t == "small"), "{built:?}");

    // The metric counts the two crossings (no other test in this binary crosses the ratio).
    // The counter is recorded on its own task: wait (up to 10 s) for both crossings (a third
    // would show once the second is there, the run having ended).
    let alerts_total = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("tetrarch_context_alerts_total"))
            .and_then(|l| l.rsplit_once(' '))
            .map(|(_, v)| v.parse::<f64>().unwrap())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut text = install_metrics().unwrap().render();
    while alerts_total(&text) != Some(2.0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        text = install_metrics().unwrap().render();
    }
    assert_eq!(alerts_total(&text), Some(2.0), "{text}");

    // Preserved in the run's namespace before compaction (written in the background).
    let namespace = Namespace::session("run", &report.run_id).unwrap();
    // Each alert's snapshot is written on a task of its own, which a settle waits for.
    let snapshot = settled_memories_tagged(&runtime, &namespace, "context-snapshot").await;
    assert!(
        !snapshot.is_empty(),
        "no context-snapshot memory in {namespace}"
    );
    assert!(
        snapshot.iter().all(|m| sessions
            .iter()
            .any(|s| m.context.as_deref() == Some(format!("session:{s}").as_str()))),
        "only the big sessions crossed"
    );
    // Both sessions held the big output; the run's snapshots hold it once.
    let preserved: Vec<_> = snapshot
        .iter()
        .filter(|m| m.summary.as_deref() == Some("task:gather-big"))
        .collect();
    assert_eq!(preserved.len(), 1, "{preserved:?}");
    assert_eq!(
        preserved[0].content, big,
        "the full context, not an extract"
    );
    assert!(preserved[0].tags.iter().any(|t| t == "critical"));
    observer.abort();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_split_and_skills_dir_from_an_actors_folder_are_what_the_runtime_uses() {
    let dir = tempfile::tempdir().unwrap();
    let actors_dir = dir.path().join("actors");
    std::fs::create_dir_all(actors_dir.join("skills")).unwrap();
    std::fs::write(
        actors_dir.join("optimizer.toml"),
        "[context]\nskills_dir = \"skills\"\n\
         [context.budget]\nwindow = 2000\ncritical = 0.5\nskills = 0.1\nproject = 0.4\ngeneral = 0.0\n",
    )
    .unwrap();
    // Every category wants more than its share, so each gets its share of the 2000-token
    // window, and more only by what another left of its own (the upstream output, compressed
    // at sentence breaks, leaves a little of its 1000).
    let skill: String = (0..60)
        .map(|i| format!("Zebra stripes in the shader need rule {i}. "))
        .collect();
    std::fs::write(actors_dir.join("skills/zebra.md"), &skill).unwrap();
    let project: String = (0..150)
        .map(|i| format!("Line {i} of the changelog lists a fix. "))
        .collect();
    std::fs::write(dir.path().join("changes.md"), &project).unwrap();
    let upstream: String = (0..150)
        .map(|i| format!("Frame {i} rendered in {i} ms without issues. "))
        .collect();

    let actors = ActorsConfig::load(&actors_dir).unwrap();
    assert_eq!(actors.optimizer.context.budget.window, 2000);
    let runtime = runtime(dir.path(), actors).await;
    let mut events = runtime.subscribe();
    let report = run_complete(
        &runtime,
        &format!(
            r#"
name = "custom-budget"
[[task]]
id = "frames"
tool = "fn.say"
args = {{ text = "{upstream}" }}
[[task]]
id = "zebra"
tool = "fn.echo"
deps = ["frames"]
context_files = ["changes.md"]
args = {{ topic = "zebra stripes shader rule", notes = "{{{{context}}}}" }}
"#
        ),
        options(dir.path()),
    )
    .await;
    let context = notes(&report, "zebra");
    let counter = O200kCounter::new().unwrap();
    let tokens_of = |source: &str| {
        let text = section(&context, source).unwrap_or_else(|| panic!("no {source}: {context}"));
        (text, counter.count(text))
    };
    let (_, critical_tokens) = tokens_of("task:frames");
    assert!(critical_tokens <= 1000, "{critical_tokens}");
    assert!(
        critical_tokens > 500,
        "the critical share is 50%: {critical_tokens}"
    );
    let left_by_critical = 1000 - critical_tokens;
    // The skill comes from the folder named in the actors file (resolved against it), cut to
    // the skills share: 10% of 2000.
    let (skill_sent, skill_tokens) = tokens_of("skill:zebra.md");
    assert!(counter.count(&skill) > 200);
    assert!(
        skill_tokens <= 200 + left_by_critical,
        "{skill_tokens} tokens: {skill_sent}"
    );
    assert!(skill_sent.contains("Zebra stripes"), "{skill_sent}");
    let (_, project_tokens) = tokens_of("file:changes.md");
    assert!(counter.count(&project) > 800);
    assert!(project_tokens <= 800 + left_by_critical, "{project_tokens}");
    assert!(
        project_tokens > 200,
        "the project share is 40%: {project_tokens}"
    );
    let window = std::iter::from_fn(|| events.try_recv().ok())
        .find_map(|e| match e {
            RunEvent::ContextBuilt { window, .. } => Some(window),
            _ => None,
        })
        .unwrap();
    assert_eq!(window, 2000);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_a_task_receives_fits_the_window_and_is_what_the_event_reports() {
    // Eight short upstream outputs against a window they fill by the count the Optimizer
    // makes: at 104 tokens the task received 112, and the event said 104.
    let dir = tempfile::tempdir().unwrap();
    let window = 104;
    let mut actors = ActorsConfig::embedded().unwrap();
    actors.optimizer.context.budget.window = window;
    let runtime = runtime(dir.path(), actors).await;
    let mut events = runtime.subscribe();
    let mut plan = String::from("name = \"release-notes\"\n");
    for i in 0..8 {
        plan.push_str(&format!(
            "[[task]]\nid = \"r{i}\"\ntool = \"fn.say\"\n\
             args = {{ text = \"release {i} notes: fixed the crash\" }}\n"
        ));
    }
    plan.push_str(
        "[[task]]\nid = \"z\"\ntool = \"fn.echo\"\n\
         deps = [\"r0\", \"r1\", \"r2\", \"r3\", \"r4\", \"r5\", \"r6\", \"r7\"]\n\
         args = { notes = \"{{context}}\" }\n",
    );
    let report = run_complete(&runtime, &plan, options(dir.path())).await;
    let received = O200kCounter::new().unwrap().count(&notes(&report, "z"));
    let reported = std::iter::from_fn(|| events.try_recv().ok())
        .find_map(|e| match e {
            RunEvent::ContextBuilt { task, tokens, .. } if task == "z" => Some(tokens),
            _ => None,
        })
        .unwrap();
    assert!(received <= window, "{received} tokens received");
    assert_eq!(reported, received);
    runtime.shutdown().await;
}

/// The tokens `gather`'s output costs in the plan of [`write_bad_context_run`]: 300 of text and
/// 5 of its `## task:gather` heading.
const GATHER_TOKENS: usize = 305;

/// A plan folder for `tetrarch run`: an actors folder whose skills folder holds only bad files
/// (a dangling symlink, invalid UTF-8, a file over `max_file_bytes`, a folder named `*.md`) and
/// a context window of `window` tokens, and a plan whose second task reads `{{context}}` (the
/// first task's output, [`GATHER_TOKENS`]) and names a file that does not exist.
fn write_bad_context_run(dir: &Path, window: usize) {
    let actors = dir.join("actors");
    let skills = actors.join("skills");
    std::fs::create_dir_all(skills.join("folder.md")).unwrap();
    std::os::unix::fs::symlink(dir.join("no-such-file.md"), skills.join("gone.md")).unwrap();
    std::fs::write(skills.join("latin1.md"), b"caf\xe9 cr\xe8me \xff\xfe").unwrap();
    std::fs::write(skills.join("huge.md"), "frame ".repeat(2000)).unwrap();
    std::fs::write(
        actors.join("optimizer.toml"),
        format!(
            "[context]\nskills_dir = \"skills\"\nmax_file_bytes = 4000\n\
             [context.budget]\nwindow = {window}\n"
        ),
    )
    .unwrap();
    // No scorer pool: nothing here scores, and pre-warming it is slow in a debug build.
    std::fs::write(actors.join("executor.toml"), "mailbox = 4096\n").unwrap();
    let frames: String = (0..60).map(|i| format!("Frame {i} rendered. ")).collect();
    std::fs::write(
        dir.join("plan.toml"),
        format!(
            r#"name = "bad-context"
permissions = "settings.json"
[pools.sh]
kind = "process"
command = ["sh", "-c"]
[[task]]
id = "gather"
tool = "sh.say"
args = {{ argv = ["echo '\"{frames}\"'"] }}
[[task]]
id = "use"
tool = "sh.count"
deps = ["gather"]
context_files = ["missing.md"]
args = {{ argv = ["wc -c"], stdin = "{{{{context}}}}" }}
"#,
            frames = frames.trim_end()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(wc *)"]}}"#,
    )
    .unwrap();
}

/// `tetrarch run` of that folder with `RUST_LOG` set to `rust_log` (unset when `None`), each
/// run with a store of its own: (success, stderr).
fn run_bad_context(dir: &Path, rust_log: Option<&str>, store: &str) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tetrarch"));
    command
        .arg("--store")
        .arg(dir.join(store))
        .arg("run")
        .arg(dir.join("plan.toml"))
        .arg("--actors")
        .arg(dir.join("actors"));
    match rust_log {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tetrarch_run_warns_about_bad_skill_files_a_tiny_window_and_a_missing_file_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    // A window of 60 tokens: smaller than the critical item.
    write_bad_context_run(dir.path(), 60);
    let (ok, stderr) = run_bad_context(dir.path(), None, "store.redb");
    assert!(ok, "{stderr}");
    for expected in [
        "skill document",
        "gone.md: cannot be read",
        "latin1.md: cannot be read",
        "huge.md: 12000 bytes is more than max_file_bytes (4000); skipped",
        "the context window (60 tokens",
        format!("is smaller than the critical items ({GATHER_TOKENS} tokens waiting)").as_str(),
        "project file",
        "missing.md: cannot be read",
        "2/2 tasks complete",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
    assert!(stderr.contains("WARN"), "{stderr}");
    // A folder named like a skill is searched, not read: no warning names it.
    assert!(!stderr.contains("folder.md"), "{stderr}");
    assert!(stderr.contains(" Complete: "), "{stderr}");
    // Each problem is told once.
    assert_eq!(stderr.matches("huge.md").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("missing.md").count(), 1, "{stderr}");
}

#[test]
fn rust_log_changes_what_tetrarch_prints() {
    let dir = tempfile::tempdir().unwrap();
    // The critical item fills 83% of the window: the monitor alerts (an INFO event).
    write_bad_context_run(dir.path(), GATHER_TOKENS * 6 / 5);
    let (ok, default) = run_bad_context(dir.path(), None, "default.redb");
    assert!(ok, "{default}");
    let (ok, info) = run_bad_context(dir.path(), Some("tetrarch=info"), "info.redb");
    assert!(ok, "{info}");
    let (ok, quiet) = run_bad_context(dir.path(), Some("tetrarch=error"), "quiet.redb");
    assert!(ok, "{quiet}");

    // The default filter is `warn`: warnings, but no INFO events and no spans.
    assert!(default.contains("max_file_bytes"), "{default}");
    assert!(!default.contains(" INFO "), "{default}");
    assert!(!default.contains("task{"), "{default}");
    // `tetrarch=info`: INFO events, and events inside the agents' spans carry them.
    let info_line = info
        .lines()
        .find(|l| l.contains(" INFO ") && l.contains("of its window; preserving it"))
        .unwrap_or_else(|| panic!("no INFO line from the optimizer:\n{info}"));
    assert!(
        info_line.contains("run{") && info_line.contains("task{") && info_line.contains("context"),
        "{info_line}"
    );
    assert!(info.contains("task=use"), "{info}");
    // And the spans themselves, each printed as it closes, with its time.
    let closed = info
        .lines()
        .find(|l| l.contains("tool_call{") && l.contains(" close time.busy="))
        .unwrap_or_else(|| panic!("no closed tool_call span:\n{info}"));
    assert!(
        closed.contains("task=use") || closed.contains("task=gather"),
        "{closed}"
    );
    // `tetrarch=error`: the warnings are gone, the run's own report stays.
    assert!(!quiet.contains("WARN"), "{quiet}");
    assert!(!quiet.contains("max_file_bytes"), "{quiet}");
    assert!(quiet.contains("2/2 tasks complete"), "{quiet}");
}

/// An upstream output reaches a task's context once, as `task:ID`: the memory the Executor
/// recorded of it (the tool's stdout as printed, where the context holds its JSON written out
/// again, so their hashes differ) is not sent and charged a second time.
#[tokio::test]
async fn an_upstream_output_is_sent_once_not_again_as_its_recorded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), ActorsConfig::embedded().unwrap()).await;
    std::fs::write(
        dir.path().join("rules.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(sleep *)"]}}"#,
    )
    .unwrap();
    // `slow` holds `down` back until `up`'s memory has surely been written.
    let text = r#"
name = "once"
permissions = "rules.json"
[pools.sh]
kind = "process"
command = ["sh", "-c"]
[[task]]
id = "up"
tool = "sh.x"
args = { argv = ["echo '{\"walrus\": \"tusks of ivory\", \"count\": 2}'"] }
[[task]]
id = "slow"
tool = "sh.x"
args = { argv = ["sleep 0.3; echo '{}'"] }
[[task]]
id = "down"
tool = "fn.echo"
deps = ["up", "slow"]
args = { notes = "{{context}}", topic = "walrus tusks" }
"#;
    let report = run_complete(&runtime, text, options(dir.path())).await;
    let context = notes(&report, "down");
    assert!(section(&context, "task:up").is_some(), "{context}");
    assert_eq!(context.matches("tusks of ivory").count(), 1, "{context}");
    runtime.shutdown().await;
}
