//! `tetrarch mem ...` and `tetrarch cache ...` end to end through the built binary, alone and beside
//! a running `tetrarch run`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn tetrarch(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("TETRARCH_HOME")
        .env_remove("TETRARCH_STORE")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn store_get_search_recent_and_stats_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    let out = tetrarch(
        &store,
        &[
            "mem",
            "store",
            "--ns",
            "project:demo",
            "--content",
            "HDR exposure bracket for the plasma render",
            "--summary",
            "exposure bracket",
            "--importance",
            "7",
            "--tags",
            "hdr,render",
            "--keywords",
            "exposure",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 36, "{id}");

    let out = tetrarch(&store, &["mem", "get", &id, "--json"]);
    assert!(out.status.success());
    let memory: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(memory["namespace"], "project:demo");
    assert_eq!(memory["importance"], 7);
    assert_eq!(memory["tags"], serde_json::json!(["hdr", "render"]));

    tetrarch(
        &store,
        &[
            "mem",
            "store",
            "--ns",
            "project:other",
            "--content",
            "exposure of a different kind",
        ],
    );
    let out = tetrarch(
        &store,
        &[
            "mem",
            "search",
            "exposure",
            "--ns",
            "project:demo",
            "--json",
        ],
    );
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["memory"]["id"], id.as_str());
    assert!(lines[0]["score"].as_f64().unwrap() > 0.0);

    let out = tetrarch(&store, &["mem", "recent", "--limit", "5", "--json"]);
    assert_eq!(stdout(&out).lines().count(), 2);

    let out = tetrarch(&store, &["mem", "stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(stats["live"], 2);
    assert_eq!(stats["namespaces"]["project:demo"]["live"], 1);
    let out = tetrarch(&store, &["mem", "stats", "--ns", "project:other", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(stats["live"], 1);
}

#[test]
fn bad_input_exits_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    let cases: &[(&[&str], &str)] = &[
        (
            &["mem", "store", "--ns", "team:x", "--content", "a"],
            "invalid namespace \"team:x\"",
        ),
        (
            &["mem", "store", "--content", "a", "--importance", "0"],
            "importance 0 is outside 1..=10",
        ),
        (
            &["mem", "store", "--content", "a", "--confidence", "2"],
            "confidence 2 is outside",
        ),
        (
            &["mem", "store", "--content", "a", "--ttl", "soon"],
            "invalid --ttl \"soon\"",
        ),
        (&["mem", "store", "--content", "  "], "--content is empty"),
        (&["mem", "get", "nope"], "invalid memory id \"nope\""),
        (
            &["mem", "get", "01890a5d-ac96-774b-bcce-b302099a8057"],
            "no memory with id",
        ),
    ];
    for (args, message) in cases {
        let out = tetrarch(&store, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, "not a database").unwrap();
    let out = tetrarch(&garbage, &["mem", "stats"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("garbage.redb"));
}

/// `mem store CONTENT` with no `--store`, the store variables cleared and then `vars` set.
fn store_by_environment(content: &str, vars: &[(&str, &std::ffi::OsStr)]) {
    let out = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .args(["mem", "store", "--content", content])
        .env_remove("TETRARCH_HOME")
        .env_remove("TETRARCH_STORE")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tetrarch_home_sets_the_default_store() {
    let dir = tempfile::tempdir().unwrap();
    store_by_environment("homed", &[("TETRARCH_HOME", dir.path().as_os_str())]);
    assert!(dir.path().join("store.redb").exists());
}

#[test]
fn tetrarch_store_names_the_store_and_an_empty_one_counts_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let named = dir.path().join("named.redb");
    store_by_environment("named", &[("TETRARCH_STORE", named.as_os_str())]);
    assert!(named.exists());
    // Empty: every command failed with "a value is required for '--store'".
    let home = dir.path().join("home");
    store_by_environment(
        "homed",
        &[
            ("TETRARCH_STORE", "".as_ref()),
            ("TETRARCH_HOME", home.as_os_str()),
        ],
    );
    assert!(home.join("store.redb").exists());
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn cache_stats_and_clear_through_the_binary() {
    use tetrarch::store::{CacheCategory, CacheKey, CacheTtls, ContextCache, Store, StoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("s.redb");
    {
        let store = Store::open(&store_path, StoreConfig::default()).unwrap();
        let cache = ContextCache::new(CacheTtls::default(), 1 << 20, Some(store));
        for (name, category) in [
            ("a technique", CacheCategory::Technique),
            ("a tool result", CacheCategory::ToolResult),
        ] {
            cache
                .get_or_compute(CacheKey::new("cli", name).unwrap(), category, async {
                    Ok::<_, std::io::Error>(name.to_owned())
                })
                .await
                .unwrap();
        }
    }

    let stats = json(&tetrarch(&store_path, &["cache", "stats", "--json"]));
    assert_eq!(stats["entries"], 2);
    let names: Vec<_> = stats["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["category"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["technique", "tool_result"]);
    let human = stdout(&tetrarch(&store_path, &["cache", "stats"]));
    assert!(human.contains("persisted cache: 2 entries"), "{human}");
    assert!(human.contains("tool_result: 1 entries"), "{human}");

    let refused: &[(&[&str], &str)] = &[
        (
            &["cache", "clear", "--category", "file_read"],
            "live only in a running process's memory",
        ),
        (
            &["cache", "clear", "--category", "bogus"],
            "unknown cache category \"bogus\"",
        ),
        (
            &["cache", "clear", "--older-than", "soon"],
            "invalid --older-than \"soon\"",
        ),
    ];
    for (args, message) in refused {
        let out = tetrarch(&store_path, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }

    // Nothing is an hour old yet.
    let none = json(&tetrarch(
        &store_path,
        &["cache", "clear", "--older-than", "1h", "--json"],
    ));
    assert_eq!(none["entries"], 0);
    let one = json(&tetrarch(
        &store_path,
        &["cache", "clear", "--category", "tool_result", "--json"],
    ));
    assert_eq!(one["entries"], 1);
    let stats = json(&tetrarch(&store_path, &["cache", "stats", "--json"]));
    assert_eq!(stats["entries"], 1);
    assert_eq!(stats["categories"][0]["category"], "technique");
    let all = stdout(&tetrarch(&store_path, &["cache", "clear"]));
    assert!(all.starts_with("removed 1 entry ("), "{all}");

    let missing = tetrarch(&dir.path().join("nope.redb"), &["cache", "stats"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no store at"));
    assert!(!dir.path().join("nope.redb").exists());
}

#[test]
fn comma_separated_tags_are_trimmed_and_empty_and_repeated_ones_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    let out = tetrarch(
        &store,
        &[
            "mem",
            "store",
            "--content",
            "tagged lantern",
            "--tags",
            "gpu, cuda,,GPU, gpu ",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = json(&out)["id"].as_str().unwrap().to_owned();
    let memory = json(&tetrarch(&store, &["mem", "get", &id, "--json"]));
    assert_eq!(memory["tags"], serde_json::json!(["gpu", "cuda"]));
    let found = tetrarch(
        &store,
        &["mem", "search", "lantern", "--tags", " cuda", "--json"],
    );
    assert_eq!(stdout(&found).lines().count(), 1, "{}", stdout(&found));
}

/// A path that cannot be a store is refused saying why: a folder, a device, a file standing
/// where a folder of the path should be.
#[test]
fn a_store_path_that_cannot_be_a_store_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.redb");
    std::fs::write(&file, "").unwrap();
    let cases: [(&Path, &[&str], String); 4] = [
        (
            dir.path(),
            &["mem", "recent"],
            format!(
                "{} is a folder: a store is a regular file",
                dir.path().display()
            ),
        ),
        (
            Path::new("/dev/null"),
            &["mem", "store", "--content", "x"],
            "/dev/null is a device or a pipe: a store is a regular file".to_owned(),
        ),
        (
            &file.join("sub.redb"),
            &["mem", "store", "--content", "x"],
            format!("{} is a file, not a folder", file.display()),
        ),
        (
            &file,
            &["mem", "recent"],
            format!("{} is an empty file, not a store", file.display()),
        ),
    ];
    for (store, args, expected) in cases {
        let out = tetrarch(store, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"");
}

#[test]
fn commands_started_together_wait_their_turn_for_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    // One store file is open in one process at a time: the others wait instead of failing.
    let spawned: Vec<_> = (0..8)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_tetrarch"))
                .arg("--store")
                .arg(&store)
                .args(["mem", "store", "--content", &format!("together {i}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in spawned {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let recent = tetrarch(
        &store,
        &["mem", "search", "together", "--limit", "20", "--json"],
    );
    assert_eq!(stdout(&recent).lines().count(), 8, "{}", stdout(&recent));
}

/// A command that finds the store held for long says so while it waits, then fails naming the
/// file; what was stored stays.
#[test]
fn a_command_beside_a_process_holding_the_store_says_it_waits_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    let out = tetrarch(&store, &["mem", "store", "--content", "kept while held"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held =
        tetrarch::store::Store::open(&store, tetrarch::store::StoreConfig::default()).unwrap();
    let out = tetrarch(&store, &["mem", "store", "--content", "refused"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let waiting = format!(
        "waiting for {}: another process has it open",
        store.display()
    );
    assert_eq!(stderr.matches(&waiting).count(), 1, "{stderr}");
    assert!(stderr.contains("already open"), "{stderr}");
    drop(held);
    let found = tetrarch(&store, &["mem", "search", "kept", "--json"]);
    assert_eq!(stdout(&found).lines().count(), 1, "{}", stdout(&found));
}

/// The commands that only read leave the store file as it was, byte for byte (they used to
/// open it for writing, which rewrites its header, and failed on a file they could not write).
#[test]
fn commands_that_only_read_do_not_write_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    let stored = tetrarch(
        &store,
        &["mem", "store", "--content", "a lantern in the fog"],
    );
    assert!(stored.status.success());
    let before = std::fs::read(&store).unwrap();
    for args in [
        &["mem", "search", "lantern"][..],
        &["mem", "recent"],
        &["mem", "stats"],
        &["cache", "stats"],
        &["lessons", "list"],
        &["runs"],
    ] {
        let out = tetrarch(&store, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::fs::read(&store).unwrap() == before,
            "{args:?} changed the store file"
        );
    }
    let found = tetrarch(&store, &["mem", "search", "lantern", "--json"]);
    assert_eq!(stdout(&found).lines().count(), 1, "{}", stdout(&found));
}

#[test]
fn arguments_that_could_only_give_nothing_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    let out = tetrarch(
        &store,
        &[
            "mem",
            "store",
            "--content",
            "plasma renders too dark",
            "--summary",
            " ",
            "--context",
            "",
        ],
    );
    assert!(out.status.success());
    let id = stdout(&out).trim().to_string();
    let memory = json(&tetrarch(&store, &["mem", "get", &id, "--json"]));
    // Blank is not given: no summary or context, rather than an empty one.
    assert_eq!(memory["summary"], serde_json::Value::Null);
    assert_eq!(memory["context"], serde_json::Value::Null);
    // The preview falls back to the content when there is no summary.
    let listed = stdout(&tetrarch(&store, &["mem", "recent"]));
    assert!(listed.contains("plasma renders too dark"), "{listed}");

    let cases: &[(&[&str], &str)] = &[
        (&["mem", "search", "plasma", "--limit", "0"], "--limit"),
        (&["mem", "recent", "--limit", "0"], "--limit"),
        (&["lessons", "list", "--limit", "0"], "--limit"),
        // Said as what is wrong, not as a parse of the number.
        (&["mem", "recent", "--limit", "-1"], "must be 1 or more"),
        (
            &["mem", "store", "--content", "x", "--importance", "256"],
            "importance 256 is outside 1..=10",
        ),
        (
            &["mem", "store", "--content", "x", "--confidence", "-0.1"],
            "confidence -0.1 is outside",
        ),
        (&["mem", "search", ""], "has no word"),
        (&["mem", "search", "!!! ---"], "has no word"),
        (&["mem", "store", "--content", "!!! ---"], "has no word"),
    ];
    for (args, message) in cases {
        let out = tetrarch(&store, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let stats = json(&tetrarch(&store, &["mem", "stats", "--json"]));
    assert_eq!(stats["live"], 1, "nothing more was stored");
    // Symbols alone are findable when another indexed field has a word.
    let out = tetrarch(
        &store,
        &[
            "mem",
            "store",
            "--content",
            "→ ✓ ✓",
            "--summary",
            "deploy checklist passed",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let found = stdout(&tetrarch(&store, &["mem", "search", "checklist"]));
    assert!(found.contains(stdout(&out).trim()), "{found}");
    let found = stdout(&tetrarch(
        &store,
        &["mem", "search", "plasma", "--limit", "1"],
    ));
    assert!(found.contains(&id), "{found}");
}

/// Store commands beside a running `tetrarch run`: the run serves them its store through the
/// socket beside the file (they used to wait 5 s for the file and fail, as above), and a socket
/// left by a killed run is passed over.
#[cfg(unix)]
mod beside_a_run {
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Output, Stdio};

    use super::{stdout, tetrarch};

    const PLAN: &str = r#"
    name = "beside"
    permissions = "settings.json"

    [pools.sh]
    kind = "process"
    command = ["sh", "-c"]

    [[task]]
    id = "quick"
    tool = "sh.run"
    args = { argv = ["echo '{\"ok\": true}'"] }

    [[task]]
    id = "slow"
    tool = "sh.run"
    deps = ["quick"]
    args = { argv = ["sleep 30"] }
    "#;

    fn stderr(output: &Output) -> String {
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// The plan and its rules in `dir`.
    fn write_plan(dir: &Path, plan: &str) {
        std::fs::write(dir.join("plan.toml"), plan).unwrap();
        std::fs::write(
            dir.join("settings.json"),
            r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(sleep *)"]}}"#,
        )
        .unwrap();
    }

    /// Starts `tetrarch run` on `dir`'s plan and returns once the task `slow` has started.
    fn run_until_slow_starts(dir: &Path) -> Child {
        run_on_store_until_slow_starts(dir, &dir.join("store.redb"))
    }

    /// [`run_until_slow_starts`] with the store at `store`.
    fn run_on_store_until_slow_starts(dir: &Path, store: &Path) -> Child {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
            .arg("--store")
            .arg(store)
            .arg("run")
            .arg(dir.join("plan.toml"))
            .args(["--events", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines
                .next()
                .expect("the run ended before `slow` started")
                .unwrap();
            if line.contains("\"task_started\"") && line.contains("\"slow\"") {
                break;
            }
        }
        child
    }

    fn interrupt(child: &Child) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    }

    /// A command waiting its turn for the store while a run takes it is done by the run (it
    /// used to fail at once, saying only some commands work beside a run).
    #[test]
    fn a_command_waiting_for_the_store_when_a_run_takes_it_is_served_by_the_run() {
        let dir = tempfile::tempdir().unwrap();
        write_plan(dir.path(), PLAN);
        let store = dir.path().join("store.redb");
        let held =
            tetrarch::store::Store::open(&store, tetrarch::store::StoreConfig::default()).unwrap();
        let waiting = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
            .arg("--store")
            .arg(&store)
            .args([
                "mem",
                "store",
                "--content",
                "stored while a run took the file",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Long enough for it to wait between tries, so the run usually takes the file first.
        std::thread::sleep(std::time::Duration::from_millis(1200));
        drop(held);
        let mut run = run_on_store_until_slow_starts(dir.path(), &store);
        let stored = waiting.wait_with_output().unwrap();
        assert!(stored.status.success(), "{}", stderr(&stored));
        let found = tetrarch(&store, &["mem", "search", "stored while", "--json"]);
        assert_eq!(stdout(&found).lines().count(), 1, "{}", stdout(&found));
        interrupt(&run);
        run.wait().unwrap();
    }

    #[test]
    fn store_commands_beside_a_run_use_the_runs_store() {
        let dir = tempfile::tempdir().unwrap();
        write_plan(dir.path(), PLAN);
        let store = dir.path().join("store.redb");
        let mut run = run_until_slow_starts(dir.path());
        assert!(dir.path().join("store.redb.sock").exists());

        // The run itself, as it stands. `quick`'s completion is committed just after `slow`'s
        // start goes out (both queued by the handler that emits it; `slow`'s own start may not
        // be recorded yet): a loaded machine may answer before that commit.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let listed = loop {
            let runs = tetrarch(&store, &["runs", "--json"]);
            assert!(runs.status.success(), "{}", stderr(&runs));
            let listed: serde_json::Value = serde_json::from_str(stdout(&runs).trim()).unwrap();
            if listed["tasks"][0] == serde_json::json!(["quick", "complete"])
                || std::time::Instant::now() > deadline
            {
                break listed;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert_eq!(listed["status"], "running", "{listed}");
        assert_eq!(
            listed["tasks"][0],
            serde_json::json!(["quick", "complete"]),
            "{listed}"
        );

        // A write goes through the run's writer, and reads see it.
        let stored = tetrarch(
            &store,
            &["mem", "store", "--content", "a note beside the run"],
        );
        assert!(stored.status.success(), "{}", stderr(&stored));
        let id = stdout(&stored).trim().to_owned();
        let found = tetrarch(&store, &["mem", "search", "beside", "--json"]);
        assert!(found.status.success(), "{}", stderr(&found));
        let hit: serde_json::Value = serde_json::from_str(stdout(&found).trim()).unwrap();
        assert_eq!(hit["memory"]["id"], id.as_str());
        let got = tetrarch(&store, &["mem", "get", &id, "--json"]);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(stdout(&got).trim()).unwrap()["content"],
            "a note beside the run"
        );

        // Exit statuses and errors come back as they would without the run.
        let recorded = tetrarch(
            &store,
            &[
                "lessons",
                "record",
                "--type",
                "timeout",
                "--message",
                "render timed out",
                "--fix",
                "raise the timeout",
                "--worked",
                "true",
            ],
        );
        assert!(recorded.status.success(), "{}", stderr(&recorded));
        let suggested = tetrarch(&store, &["lessons", "suggest", "render timed out"]);
        assert!(suggested.status.success(), "{}", stderr(&suggested));
        assert!(
            stdout(&suggested).starts_with("raise the timeout"),
            "{}",
            stdout(&suggested)
        );
        let none = tetrarch(
            &store,
            &["lessons", "suggest", "disk quota exceeded on the farm"],
        );
        assert_eq!(none.status.code(), Some(1), "{}", stderr(&none));
        let bad = tetrarch(&store, &["mem", "get", "not-an-id"]);
        assert_eq!(bad.status.code(), Some(2));
        assert!(
            stderr(&bad).contains("invalid memory id \"not-an-id\""),
            "{}",
            stderr(&bad)
        );
        let stats = tetrarch(&store, &["cache", "stats", "--json"]);
        assert!(stats.status.success(), "{}", stderr(&stats));
        // Clearing the file would not clear the run's copies in memory: refused, saying so.
        let clear = tetrarch(&store, &["cache", "clear"]);
        assert_eq!(clear.status.code(), Some(2));
        assert!(
            stderr(&clear).contains("`cache clear` does not run beside a run"),
            "{}",
            stderr(&clear)
        );

        // The commands it does not serve fail at once (no 5 s wait, which says so after 1 s),
        // saying why.
        let dashboard = tetrarch(&store, &["dashboard", "--addr", "127.0.0.1:0"]);
        let second = tetrarch(
            &store,
            &["run", &dir.path().join("plan.toml").to_string_lossy()],
        );
        for refused in [dashboard, second] {
            assert_eq!(refused.status.code(), Some(2));
            assert!(
                stderr(&refused).contains("a `tetrarch run` holds")
                    && !stderr(&refused).contains("waiting for"),
                "{}",
                stderr(&refused)
            );
        }

        interrupt(&run);
        assert_eq!(run.wait().unwrap().code(), Some(1));
        assert!(!dir.path().join("store.redb.sock").exists());
        // What was stored beside the run stays, read from the file now.
        let found = tetrarch(&store, &["mem", "search", "beside", "--json"]);
        assert_eq!(stdout(&found).lines().count(), 1, "{}", stdout(&found));
        let runs = tetrarch(&store, &["runs", "--json"]);
        let listed: serde_json::Value = serde_json::from_str(stdout(&runs).trim()).unwrap();
        assert_eq!(listed["status"], "cancelled", "{listed}");
    }

    /// The socket is the user's alone: even opened to everyone, another user's command is not
    /// answered (the command, seeing the run is not its user's, sends nothing and fails).
    #[test]
    fn another_users_command_is_not_served() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: switching to another user for the command needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        write_plan(dir.path(), PLAN);
        let mut run = run_until_slow_starts(dir.path());
        let socket = dir.path().join("store.redb.sock");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        // The build's own folder may be closed to other users (CI builds in a `mktemp -d`).
        let binary = dir.path().join("tetrarch");
        std::fs::hard_link(env!("CARGO_BIN_EXE_tetrarch"), &binary)
            .or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_tetrarch"), &binary).map(drop))
            .unwrap();
        let nobody = Command::new(&binary)
            .arg("--store")
            .arg(dir.path().join("store.redb"))
            .args(["runs", "--json"])
            .env_clear()
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(nobody.status.code(), Some(2), "{}", stderr(&nobody));
        assert!(stdout(&nobody).is_empty(), "{}", stdout(&nobody));
        // The command sees whose run it is before it sends anything (the run would refuse it
        // by its credentials too).
        assert!(
            stderr(&nobody).contains("is served by another user (uid 0)"),
            "{}",
            stderr(&nobody)
        );
        // The owner is still served.
        let owner = tetrarch(&dir.path().join("store.redb"), &["runs", "--json"]);
        assert!(owner.status.success(), "{}", stderr(&owner));
        interrupt(&run);
        run.wait().unwrap();
    }

    /// The next connection to `listener`, failing the test if none comes within `limit` (a
    /// command that never connects must not hang it).
    fn accept_within(
        listener: &std::os::unix::net::UnixListener,
        limit: std::time::Duration,
    ) -> (
        std::os::unix::net::UnixStream,
        std::os::unix::net::SocketAddr,
    ) {
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + limit;
        loop {
            match listener.accept() {
                Ok((stream, address)) => {
                    stream.set_nonblocking(false).unwrap();
                    return (stream, address);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the command never connected"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    /// A socket at the store's path that another user serves (a store in a shared folder) is
    /// not told the command, which may hold a secret: the command fails, naming the file.
    #[test]
    fn a_socket_another_user_serves_is_not_told_the_command() {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: running the command as another user needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let socket = dir.path().join("store.redb.sock");
        // This process (root) plays the other user's listener.
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        let heard = std::thread::spawn(move || {
            let (mut stream, _) = accept_within(&listener, std::time::Duration::from_secs(30));
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .unwrap();
            let mut heard = Vec::new();
            let _ = stream.read_to_end(&mut heard);
            heard
        });
        let binary = dir.path().join("tetrarch");
        std::fs::hard_link(env!("CARGO_BIN_EXE_tetrarch"), &binary)
            .or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_tetrarch"), &binary).map(drop))
            .unwrap();
        let nobody = Command::new(&binary)
            .arg("--store")
            .arg(dir.path().join("store.redb"))
            .args(["mem", "store", "--content", "token=hunter2"])
            .env_clear()
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(nobody.status.code(), Some(2), "{}", stderr(&nobody));
        assert!(
            stderr(&nobody).contains("is served by another user (uid 0)")
                && stderr(&nobody).contains("store.redb.sock"),
            "{}",
            stderr(&nobody)
        );
        let heard = heard.join().unwrap();
        assert!(heard.is_empty(), "{}", String::from_utf8_lossy(&heard));
    }

    /// An answer whose frame is longer than a run ever writes is refused, not allocated.
    #[test]
    fn an_oversized_answer_frame_is_refused() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("store.redb.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let answer = std::thread::spawn(move || {
            let (mut stream, _) = accept_within(&listener, std::time::Duration::from_secs(30));
            let mut request = [0u8; 1];
            // The request's first byte, then a header claiming 4 GiB of output.
            stream.read_exact(&mut request).unwrap();
            let mut header = vec![2u8];
            header.extend(u32::MAX.to_le_bytes());
            stream.write_all(&header).unwrap();
            std::thread::sleep(std::time::Duration::from_secs(2));
        });
        let out = tetrarch(
            &dir.path().join("store.redb"),
            &["mem", "store", "--content", "x"],
        );
        answer.join().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("sent a frame of 4294967295 bytes"),
            "{}",
            stderr(&out)
        );
    }

    /// A store deep in a folder tree has a socket path longer than a socket address holds, a
    /// command may name the store through a symbolic link, and a path need not be UTF-8: all are
    /// still served.
    #[test]
    fn a_long_store_path_and_a_link_to_the_store_are_served() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        write_plan(dir.path(), PLAN);
        let deep = dir.path().join("a-folder-with-a-long-name".repeat(5));
        std::fs::create_dir(&deep).unwrap();
        let store = deep.join(std::ffi::OsStr::from_bytes(b"store\xff.redb"));
        assert!(store.as_os_str().len() > 120);
        let socket = deep.join(std::ffi::OsStr::from_bytes(b"store\xff.redb.sock"));
        let mut run = run_on_store_until_slow_starts(dir.path(), &store);
        assert!(socket.exists());

        let link = dir.path().join("linked.redb");
        std::os::unix::fs::symlink(&store, &link).unwrap();
        for named in [&store, &link] {
            // Not served, the command would wait for the run's file and fail.
            let stored = tetrarch(named, &["mem", "store", "--content", "a deep note"]);
            assert!(stored.status.success(), "{}", stderr(&stored));
        }
        let found = tetrarch(&link, &["mem", "search", "deep", "--json"]);
        assert_eq!(stdout(&found).lines().count(), 2, "{}", stdout(&found));

        interrupt(&run);
        assert_eq!(run.wait().unwrap().code(), Some(1));
        assert!(!socket.exists());
    }

    #[test]
    fn a_socket_left_by_a_killed_run_is_passed_over_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        write_plan(dir.path(), PLAN);
        let store = dir.path().join("store.redb");
        let socket = dir.path().join("store.redb.sock");
        let mut run = run_until_slow_starts(dir.path());
        run.kill().unwrap();
        run.wait().unwrap();
        assert!(socket.exists(), "kill -9 leaves the socket file");

        // Nobody answers on it: the commands open the store themselves.
        let stored = tetrarch(&store, &["mem", "store", "--content", "after the kill"]);
        assert!(stored.status.success(), "{}", stderr(&stored));
        let runs = tetrarch(&store, &["runs"]);
        assert!(runs.status.success(), "{}", stderr(&runs));

        // The next run serves on the same path (no warning that it could not), and removes it at
        // its end.
        write_plan(
            dir.path(),
            &PLAN
                .replace("name = \"beside\"", "name = \"again\"")
                .replace("sleep 30", "sleep 0"),
        );
        let again = tetrarch(
            &store,
            &["run", &dir.path().join("plan.toml").to_string_lossy()],
        );
        assert!(again.status.success(), "{}", stderr(&again));
        assert!(
            !stderr(&again).contains("cannot serve the store"),
            "{}",
            stderr(&again)
        );
        assert!(!socket.exists());
    }
}

/// A negative number or duration gets the error about its value, not clap's "unexpected
/// argument '-0'" (it was read as a flag).
#[test]
fn negative_values_are_refused_by_their_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    assert!(
        tetrarch(&store, &["mem", "store", "--content", "seed"])
            .status
            .success()
    );
    for (args, says) in [
        (
            &["lessons", "suggest", "--threshold", "-0.5", "x"][..],
            "--threshold -0.5 is outside 0..=1",
        ),
        (
            &["mem", "store", "--content", "x", "--ttl", "-5m"],
            "invalid --ttl \"-5m\"",
        ),
        (
            &["mem", "search", "x", "--min-importance", "-1"],
            "-1 is not in 1..=10",
        ),
        (
            &["cache", "clear", "--older-than", "-3d"],
            "invalid --older-than \"-3d\"",
        ),
    ] {
        let out = tetrarch(&store, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// A usage error echoes what was typed without its control characters (a value holding a
/// terminal escape must not retitle or recolour the terminal).
#[test]
fn a_usage_error_prints_no_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let out = tetrarch(
        &dir.path().join("s.redb"),
        &[
            "mem",
            "store",
            "--content",
            "x",
            "--importance",
            "\u{1b}]0;pwned\u{7}",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // Shown as escapes where clap quotes the value, not dropped.
    assert!(
        stderr.contains(r"invalid value '\u{1b}]0;pwned\u{7}' for '--importance"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}'),
        "{stderr:?}"
    );
}

/// A closed pipe (`| head -c 1`) ends a command quietly with 0, also when the pipe closes while
/// a large memory is being written out as JSON (the I/O error then comes wrapped in JSON's).
#[test]
fn json_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.redb");
    let content = "a long memory ".repeat(8_000);
    let stored = tetrarch(&store, &["mem", "store", "--content", &content]);
    assert_eq!(stored.status.code(), Some(0), "{stored:?}");
    let id = stdout(&stored).trim().to_owned();
    for args in [
        vec!["mem", "recent", "--json"],
        vec!["mem", "get", id.as_str(), "--json"],
        vec!["mem", "search", "long", "--json"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
            .arg("--store")
            .arg(&store)
            .args(&args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// On a store a writable open refuses as damaged, `mem get` (the one command that reads an
/// archived memory) still reads it, without counting the access.
#[test]
fn mem_get_reads_a_damaged_store_without_writing() {
    use tetrarch::store::{MemoryId, Store, StoreConfig, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.redb");
    let mut ids = Vec::new();
    for i in 0..20 {
        let text = format!("memory {i} about the poster render");
        let stored = tetrarch(&store, &["mem", "store", "--content", &text]);
        ids.push(stdout(&stored).trim().to_owned());
    }
    let archived = ids[0].clone();
    assert_eq!(
        tetrarch(&store, &["mem", "archive", &archived])
            .status
            .code(),
        Some(0)
    );
    let id: MemoryId = archived.parse().unwrap();
    // A single flipped bit the check before writing finds while a read-only open still reads
    // the memory.
    let golden = std::fs::read(&store).unwrap();
    let written = (0..golden.len()).filter(|&at| golden[at] != 0);
    let damaged = written.step_by(3).find_map(|at| {
        let mut bytes = golden.clone();
        bytes[at] ^= 1 << (at % 8);
        std::fs::write(&store, &bytes).unwrap();
        let refused = matches!(
            Store::open(&store, StoreConfig::default()),
            Err(StoreError::Corrupt { .. })
        );
        let readable = Store::open_read_only(&store, StoreConfig::default())
            .is_ok_and(|s| s.get(id).is_ok_and(|m| m.archived));
        (refused && readable).then_some(bytes)
    });
    let damaged = damaged.expect("no single-bit damage refused for writing and still readable");
    std::fs::write(&store, &damaged).unwrap();
    let got = tetrarch(&store, &["mem", "get", &archived]);
    let stderr = String::from_utf8_lossy(&got.stderr);
    assert_eq!(got.status.code(), Some(0), "{stderr}");
    assert!(stdout(&got).contains(&archived), "{}", stdout(&got));
    assert!(stderr.contains("not counted as an access"), "{stderr}");
    assert_eq!(
        std::fs::read(&store).unwrap(),
        damaged,
        "the read wrote to the file"
    );
}
