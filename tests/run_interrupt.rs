//! Ctrl-C (SIGINT) during `tetrarch run`: the call in flight is stopped, the completed task's
//! compensation runs, the run is saved as cancelled, and the process exits 1 promptly.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tetrarch::agents::{RunStatus, TaskState, saved_runs};
use tetrarch::store::{Store, StoreConfig};

const PLAN: &str = r#"
name = "interrupt"
permissions = "settings.json"

[pools.sh]
kind = "process"
command = ["sh", "-c"]

[[task]]
id = "quick"
tool = "sh.run"
args = { argv = ["echo '{\"ok\": true}'"] }
compensate = { tool = "sh.undo", args = { argv = ["echo undone >> undo.txt"] } }

[[task]]
id = "slow"
tool = "sh.run"
deps = ["quick"]
args = { argv = ["sleep 30"] }
"#;

#[test]
fn ctrl_c_cancels_compensates_and_saves_the_run() {
    stopped_by(nix::sys::signal::Signal::SIGINT);
}

/// `kill`, `docker stop`, systemd: the same as Ctrl-C (the process used to end at once, its
/// tools still running and nothing rolled back).
#[test]
fn sigterm_cancels_compensates_and_saves_the_run_as_ctrl_c_does() {
    stopped_by(nix::sys::signal::Signal::SIGTERM);
}

/// A new folder holding `plan`, its rules and an actors folder whose `executor.toml` is
/// `executor`.
fn plan_folder(plan: &str, executor: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plan.toml"), plan).unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(sleep *)"]}}"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("actors")).unwrap();
    std::fs::write(dir.path().join("actors/executor.toml"), executor).unwrap();
    dir
}

/// `tetrarch run` of the plan in `dir` (see [`plan_folder`]), on its store and actors.
fn run_in(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tetrarch"));
    command
        .arg("--store")
        .arg(dir.join("store.redb"))
        .arg("run")
        .arg(dir.join("plan.toml"))
        .arg("--actors")
        .arg(dir.join("actors"));
    command
}

/// Writes `plan` with its rules and an actors folder in a new folder, starts `tetrarch run` on
/// it and returns once the task `slow` has started.
fn run_until_slow_starts(plan: &str) -> (tempfile::TempDir, std::process::Child) {
    let dir = plan_folder(plan, "mailbox = 4096\n");
    let mut child = run_in(dir.path())
        .args(["--events", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next()
            .expect("the run ended before `slow` started")
            .unwrap();
        if line.contains("\"task_started\"") && line.contains("\"slow\"") {
            break;
        }
    }
    (dir, child)
}

fn stopped_by(stop: nix::sys::signal::Signal) {
    let (dir, mut child) = run_until_slow_starts(PLAN);
    std::thread::sleep(Duration::from_millis(100));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, stop).unwrap();
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "Ctrl-C did not stop the run promptly"
    );
    assert_eq!(status.code(), Some(1), "{status}");
    let undone = std::fs::read_to_string(dir.path().join("undo.txt")).unwrap();
    assert_eq!(undone.trim(), "undone");

    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let runs = saved_runs(&store).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Cancelled);
    // The plan is kept with the run as written.
    assert_eq!(runs[0].plan_text.as_deref(), Some(PLAN));
    let state = |id: &str| runs[0].tasks.iter().find(|(t, _)| t == id).unwrap().1;
    assert_eq!(state("quick"), TaskState::Compensated);
    assert_eq!(state("slow"), TaskState::Cancelled);
}

#[test]
fn a_second_ctrl_c_exits_130_and_kills_the_compensation_in_flight() {
    // The completed task's compensation writes its pid and takes its time.
    let plan = PLAN
        .replace("name = \"interrupt\"", "name = \"interrupt-twice\"")
        .replace("echo undone >> undo.txt", "echo $$ > undo.pid; sleep 30");
    let (dir, mut child) = run_until_slow_starts(&plan);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    // The compensation starts and writes its pid.
    let undo = pid_written_to(&dir.path().join("undo.pid"), "the compensation");
    // Later than a repeated delivery of the first signal would come (which is the same stop).
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    // Its child was killed before the exit (it leads its own group, so the terminal's Ctrl-C
    // would not have reached it).
    gone_soon(undo, "the compensation's process");
}

/// The pid `what` writes to `file` once it runs (waiting up to 20 s for it).
fn pid_written_to(file: &std::path::Path, what: &str) -> nix::unistd::Pid {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        {
            return nix::unistd::Pid::from_raw(pid);
        }
        assert!(Instant::now() < deadline, "{what} never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to 5 s) for process `pid`, `what`, to be gone.
fn gone_soon(pid: nix::unistd::Pid, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::kill(pid, None).is_ok() {
        assert!(Instant::now() < deadline, "{what} outlived tetrarch");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ctrl-C typed while a permission question waits on the terminal: the question is answered
/// "no", the run is cancelled and reported, and the process exits. It used to report 10 s late
/// and then wait for Enter for ever (a blocking read of the terminal held the exit).
#[test]
fn ctrl_c_at_a_permission_prompt_cancels_and_exits() {
    use std::io::{Read, Write};
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run this test: util-linux `script` is missing"
        );
        eprintln!("skipped: util-linux `script` (a terminal for the prompt) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // No rules: the call is asked about on the terminal.
    std::fs::write(
        dir.path().join("plan.toml"),
        "name = \"ask\"\n[pools.sh]\nkind = \"process\"\ncommand = [\"sh\", \"-c\"]\n\
         [[task]]\nid = \"a\"\ntool = \"sh.run\"\nargs = { argv = [\"echo asked\"] }\n",
    )
    .unwrap();
    // `exec`: `script` runs the command through `$SHELL -c` (`/bin/sh` when unset), and dash
    // neither execs a lone command nor survives the Ctrl-C, so `script` would report the
    // shell's death by SIGINT (130) rather than tetrarch's status.
    let command = format!(
        "exec '{}' --store '{}' run '{}'",
        env!("CARGO_BIN_EXE_tetrarch"),
        dir.path().join("store.redb").display(),
        dir.path().join("plan.toml").display()
    );
    // `script` gives tetrarch a terminal; what is written to its stdin is typed there.
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buffer = [0_u8; 4096];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0
                || lines
                    .send(String::from_utf8_lossy(&buffer[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut output = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !output.contains("[y/N]") {
        assert!(Instant::now() < deadline, "no prompt: {output}");
        if let Ok(text) = seen.recv_timeout(Duration::from_millis(100)) {
            output.push_str(&text);
        }
    }
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    let typed = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if typed.elapsed() > Duration::from_secs(8) {
            child.kill().unwrap();
            panic!("still running 8 s after Ctrl-C: {output}");
        }
        while let Ok(text) = seen.try_recv() {
            output.push_str(&text);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(text) = seen.recv_timeout(Duration::from_millis(200)) {
        output.push_str(&text);
    }
    // `script -e` exits with the command's status: 1, a cancelled run.
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("Cancelled"), "{output}");
    assert!(!output.contains("\nasked"), "the call ran: {output}");
    drop(stdin);
}

/// `timeout` signals the process and then its group, and a closing terminal can send SIGHUP
/// twice: signals arriving together are one stop, so the run is cancelled and rolled back
/// (exit 1), not left at once.
#[test]
fn two_signals_at_once_are_one_stop() {
    let (dir, mut child) = run_until_slow_starts(PLAN);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{status}");
    let undone = std::fs::read_to_string(dir.path().join("undo.txt")).unwrap();
    assert_eq!(undone.trim(), "undone");
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    assert_eq!(saved_runs(&store).unwrap()[0].status, RunStatus::Cancelled);
}

/// A second Ctrl-C during the rollback exits 130 with the cancel saved: the next run finishes
/// the rollback and never runs the cancelled task (it used to resume the run as if it had not
/// been cancelled when the exit came before the cancel reached the disk).
#[test]
fn a_run_left_by_a_second_ctrl_c_finishes_its_rollback_on_the_next_run() {
    let plan = PLAN
        .replace("name = \"interrupt\"", "name = \"interrupt-resume\"")
        .replace(
            "echo undone >> undo.txt",
            "echo undone >> undo.txt; sleep 2",
        );
    let (dir, mut child) = run_until_slow_starts(&plan);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    let again = run_in(dir.path())
        .args(["--events", "json"])
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&again.stdout);
    assert_eq!(again.status.code(), Some(1), "{events}");
    assert!(
        !events
            .lines()
            .any(|l| l.contains("\"task_started\"") && l.contains("\"slow\"")),
        "the cancelled task ran again:\n{events}"
    );
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let runs = saved_runs(&store).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Cancelled);
    let state = |id: &str| runs[0].tasks.iter().find(|(t, _)| t == id).unwrap().1;
    assert_eq!(state("quick"), TaskState::Compensated);
}

/// A signal while the configured pools start (an MCP server that never answers, here) stops
/// the start: the process says so and exits 130, and the server is killed. It used to end the
/// process by the signal's default action, saying nothing.
#[test]
fn a_signal_while_the_configured_pools_start_stops_the_start() {
    let pid_dir = tempfile::tempdir().unwrap();
    let pid_file = pid_dir.path().join("server.pid");
    let dir = plan_folder(
        PLAN,
        &format!(
            "mailbox = 4096\n[pools.mute]\nkind = \"mcp\"\nmin_idle = 1\nstart_timeout = \"1m\"\n\
             command = [\"sh\", \"-c\", \"echo $$ > '{}'; exec sleep 30\"]\n",
            pid_file.display()
        ),
    );
    let child = run_in(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let server = pid_written_to(&pid_file, "the server");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(
            "interrupted (SIGTERM) while the agents and their pools started: nothing ran"
        ),
        "{stderr}"
    );
    gone_soon(server, "the server");
}

/// The `demo-tools` MCP server, the example `cargo test` builds beside this test.
fn demo_tools() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(std::path::Path::parent).unwrap();
    profile.join("examples").join("demo-tools")
}

/// A Ctrl-C while a resumed run waits for its plan's pools (its rollback needs them) is saved
/// before a second Ctrl-C exits, so the next run only finishes the rollback. It used to be kept
/// in memory only (the run had not started), and the next run ran the cancelled task to the end.
#[test]
fn a_cancel_while_a_resumed_run_waits_for_its_pools_is_saved() {
    cancel_while_a_resumed_run_waits_for_its_pools(true);
}

/// With one Ctrl-C, the run starts once its pools are up, cancelled: it finishes its rollback
/// and ends (a run whose stop was saved before it started used to wait for ever).
#[test]
fn a_resumed_run_cancelled_while_its_pools_start_rolls_back_when_they_are_up() {
    cancel_while_a_resumed_run_waits_for_its_pools(false);
}

/// A run killed while `long` runs (`made` complete), resumed with its MCP server slow to start
/// (hanging, for `second_signal`; 2 s, otherwise), and interrupted while its pools start.
fn cancel_while_a_resumed_run_waits_for_its_pools(second_signal: bool) {
    let pid_dir = tempfile::tempdir().unwrap();
    let pid_file = pid_dir.path().join("server.pid");
    let stall = if second_signal {
        "exec sleep 30"
    } else {
        "sleep 2"
    };
    let plan = format!(
        r#"
name = "early-cancel"
permissions = "settings.json"

[pools.sh]
kind = "process"
command = ["sh", "-c"]

[pools.slow]
kind = "mcp"
min_idle = 1
start_timeout = "1m"
command = ["sh", "-c", "if [ -f hang ]; then echo $$ > '{pid}'; {stall}; fi; exec '{server}'"]

[[task]]
id = "made"
tool = "sh.run"
args = {{ argv = ["echo made >> log.txt"] }}
compensate = {{ tool = "sh.undo", args = {{ argv = ["echo undone >> log.txt"] }} }}

[[task]]
id = "long"
tool = "sh.run"
deps = ["made"]
args = {{ argv = ["echo long-start >> log.txt; sleep 5; echo long-end >> log.txt"] }}
"#,
        pid = pid_file.display(),
        server = demo_tools().display()
    );
    let dir = plan_folder(&plan, "mailbox = 4096\n");
    let log = || std::fs::read_to_string(dir.path().join("log.txt")).unwrap_or_default();
    let quiet = |mut command: Command| {
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    };
    let mut first = quiet(run_in(dir.path())).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log().contains("long-start") {
        assert!(Instant::now() < deadline, "{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    std::fs::write(dir.path().join("hang"), "").unwrap();
    let mut second = quiet(run_in(dir.path())).spawn().unwrap();
    pid_written_to(&pid_file, "the slow server");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(second.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    if second_signal {
        std::thread::sleep(Duration::from_millis(500));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = second.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{status}");
        std::fs::remove_file(dir.path().join("hang")).unwrap();
        let third = quiet(run_in(dir.path())).output().unwrap();
        assert_eq!(third.status.code(), Some(1), "{}", log());
    } else {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = second.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                second.kill().unwrap();
                panic!("the cancelled run never ended: {}", log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(1), "{status}: {}", log());
    }
    assert_eq!(log().matches("long-start").count(), 1, "{}", log());
    assert!(log().contains("undone"), "{}", log());
    let store = Store::open(dir.path().join("store.redb"), StoreConfig::default()).unwrap();
    let runs = saved_runs(&store).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Cancelled);
    let state = |id: &str| runs[0].tasks.iter().find(|(t, _)| t == id).unwrap().1;
    assert_eq!(state("made"), TaskState::Compensated);
    assert_eq!(state("long"), TaskState::Skipped);
}
