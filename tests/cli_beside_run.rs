//! Store commands beside a running `tetrarch run`: the run serves them its store through the
//! socket beside the file (they used to wait 5 s for the file and fail), and a socket left by a
//! killed run is passed over.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .arg("--store")
        .arg(dir.join("store.redb"))
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

#[test]
fn store_commands_beside_a_run_use_the_runs_store() {
    let dir = tempfile::tempdir().unwrap();
    write_plan(dir.path(), PLAN);
    let store = dir.path().join("store.redb");
    let mut run = run_until_slow_starts(dir.path());
    assert!(dir.path().join("store.redb.sock").exists());

    // The run itself, as it stands.
    let runs = tetrarch(&store, &["runs", "--json"]);
    assert!(runs.status.success(), "{}", stderr(&runs));
    let listed: serde_json::Value = serde_json::from_str(stdout(&runs).trim()).unwrap();
    assert_eq!(listed["status"], "running", "{listed}");
    // `slow`'s own start may not be recorded yet: its event goes out first.
    assert_eq!(listed["tasks"][0], serde_json::json!(["quick", "complete"]));

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
/// answered (it falls back to the file, which the run holds, and fails as it always did).
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
    let nobody = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
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
    assert!(
        stderr(&nobody).contains("already open"),
        "{}",
        stderr(&nobody)
    );
    // The owner is still served.
    let owner = tetrarch(&dir.path().join("store.redb"), &["runs", "--json"]);
    assert!(owner.status.success(), "{}", stderr(&owner));
    interrupt(&run);
    run.wait().unwrap();
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
