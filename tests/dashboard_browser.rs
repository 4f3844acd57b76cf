//! The dashboard in a real browser (headless Chromium) during a slow run: the page loaded while
//! the first task runs shows it running; a page left open while it finishes shows it complete,
//! with the change delivered by the event stream (live entries in the event log). A screenshot
//! is kept in `target/test-artifacts/dashboard.png`.
//!
//! Needs Debian's `chromium` (`apt-get install -y chromium`); without it the test prints why it
//! is skipped, unless `CI=true`, where it fails.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tetrarch::agents::{ActorsConfig, RunOptions, RunStatus, Runtime, RuntimeOptions};
use tetrarch::plan::Plan;
use tetrarch::session::{NativeRegistry, PoolDef, PoolKind};
use tetrarch::store::{Store, StoreConfig};
use tetrarch::telemetry::{DashboardServer, Telemetry};

/// A chain of sleeping tasks, slow enough for a browser to watch.
const CHAIN: &str = r#"
name = "browser-chain"
[[task]]
id = "first"
tool = "fn.echo"
args = { sleep_ms = 6000 }
[[task]]
id = "second"
tool = "fn.echo"
deps = ["first"]
args = { sleep_ms = 3000 }
[[task]]
id = "third"
tool = "fn.echo"
deps = ["second"]
args = { sleep_ms = 100 }
"#;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
    })
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-artifacts")
}

/// Runs headless Chromium on the page with `extra` arguments; returns its stdout.
async fn browse(browser: &Path, profile: &Path, addr: SocketAddr, extra: &[&str]) -> String {
    let out = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("http://{addr}/"))
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `data-state` of the task box of `task` in a dumped DOM.
fn task_state(dom: &str, task: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"task-{task}\""))?;
    let tag_end = start + dom[start..].find('>')?;
    let tag = &dom[start..tag_end];
    let at = tag.find("data-state=\"")? + "data-state=\"".len();
    Some(tag[at..].split('"').next()?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_shows_task_states_change_during_a_run() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is not installed (CI installs Debian's `chromium`)"
        );
        eprintln!("skipped: no chromium on PATH (apt-get install -y chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let mut natives = NativeRegistry::new();
    natives.register("echo", |args: Value| async move {
        if let Some(ms) = args.get("sleep_ms").and_then(Value::as_u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(args)
    });
    let mut actors = ActorsConfig::embedded().unwrap();
    actors
        .executor
        .pools
        .insert("fn".to_owned(), PoolDef::new(PoolKind::Native));
    let mut options = RuntimeOptions::new(store, actors);
    options.natives = natives;
    let runtime = Runtime::start(options).await.unwrap();
    let plan = Plan::from_toml(CHAIN, "chain.toml").unwrap();
    let telemetry = Telemetry::new(None);
    telemetry.watch_plan(&plan);
    let observer = telemetry.observe(runtime.subscribe_all());
    let server = DashboardServer::bind("127.0.0.1:0".parse().unwrap(), telemetry.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);

    let watch = async {
        // Wait until the first task runs (the run has started).
        while telemetry.state().tasks[0].state != tetrarch::agents::TaskState::Running {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Snapshot 1: loaded while `first` runs.
        let early = browse(&browser, &dir.path().join("p1"), addr, &["--dump-dom"]).await;
        // Snapshot 2: the page stays open past the end of `first`; the change arrives by the
        // event stream (the page's own state poll is once a second, its log only grows from
        // events).
        let late = browse(
            &browser,
            &dir.path().join("p2"),
            addr,
            &["--virtual-time-budget=6000", "--dump-dom"],
        )
        .await;
        browse(
            &browser,
            &dir.path().join("p3"),
            addr,
            &[
                "--virtual-time-budget=1500",
                &format!("--screenshot={}", screenshot.display()),
            ],
        )
        .await;
        (early, late)
    };
    let run = telemetry.drive(
        &runtime,
        runtime.run(
            plan,
            RunOptions {
                base_dir: dir.path().to_path_buf(),
                ..RunOptions::default()
            },
        ),
    );
    let (report, (early, late)) = tokio::join!(run, watch);
    assert_eq!(report.unwrap().status, RunStatus::Complete);

    assert_eq!(
        task_state(&early, "first").as_deref(),
        Some("running"),
        "{early}"
    );
    assert_eq!(
        task_state(&early, "third").as_deref(),
        Some("pending"),
        "{early}"
    );
    assert_eq!(
        task_state(&late, "first").as_deref(),
        Some("complete"),
        "{late}"
    );
    assert!(
        late.contains("data-live=\"1\""),
        "no event reached the open page through the event stream: {late}"
    );
    // `first` finished while this page was open: its completion came as a live event.
    assert!(late.contains("data-live=\"1\">first: complete<"), "{late}");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    eprintln!("screenshot: {}", screenshot.display());

    server.shutdown().await;
    observer.abort();
    runtime.shutdown().await;
}
