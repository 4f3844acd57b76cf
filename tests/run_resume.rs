//! `tetrarch run` is killed with SIGKILL at random points, then run again until the plan
//! completes: the final outputs are right, and no task that the store had recorded COMPLETE at a
//! kill ever ran again afterwards.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tetrarch::agents::{RunStatus, TaskState, saved_runs};
use tetrarch::store::{Store, StoreConfig};

const TASKS: usize = 60;

/// A chain with a fan-out in the middle: every task logs its start, sleeps, and outputs
/// `{"n": upstream n + "+"}`, so the last task's output counts the chain. The plan's permission
/// file allows exactly the commands it runs (the run is headless: anything else is denied).
fn write_plan(dir: &Path) {
    let mut plan = String::from(
        "name = \"resume\"\npermissions = \"settings.json\"\n\
         [pools.sh]\nkind = \"process\"\ncommand = [\"sh\", \"-c\"]\nmax_size = 8\n",
    );
    for i in 0..TASKS {
        let (deps, n) = if i == 0 {
            (String::new(), String::new())
        } else {
            // Tasks 1..=4 fan out from 0; the rest form a chain.
            let up = if i <= 4 { 0 } else { i - 1 };
            (
                format!("deps = [\"t{up}\"]\n"),
                format!("{{{{tasks.t{up}.output.n}}}}"),
            )
        };
        plan.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ntool = \"sh.step\"\n{deps}\
             args = {{ argv = [\"echo start t{i} >> log.txt; sleep 0.04; echo '{{\\\"n\\\": \\\"{n}+\\\"}}'\"] }}\n"
        ));
    }
    std::fs::write(dir.join("plan.toml"), plan).unwrap();
    // No scorer pool (this plan has no score gate): start-up stays short, so kills land mid-run.
    std::fs::create_dir_all(dir.join("actors")).unwrap();
    std::fs::write(
        dir.join("actors/executor.toml"),
        "mailbox = 4096\nrecord_outputs = true\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(sleep *)"]}}"#,
    )
    .unwrap();
}

fn starts(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("log.txt"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("start ").map(str::to_owned))
        .collect()
}

fn tetrarch(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tetrarch"));
    command
        .arg("--store")
        .arg(dir.join("store.redb"))
        .arg("run")
        .arg(dir.join("plan.toml"))
        .arg("--actors")
        .arg(dir.join("actors"))
        .arg("--events")
        .arg("json")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Opens the store a killed `tetrarch` used. A tool process it was starting when it was killed
/// holds the file (and its lock) from its fork until its exec a moment later, so `AlreadyOpen`
/// is tried again for a few seconds.
fn open_store(dir: &Path) -> Store {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Store::open(dir.join("store.redb"), StoreConfig::default()) {
            Err(tetrarch::store::StoreError::AlreadyOpen { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened.unwrap(),
        }
    }
}

fn completed_in_store(dir: &Path) -> HashSet<String> {
    let store = open_store(dir);
    let runs = saved_runs(&store).unwrap();
    assert!(runs.len() <= 1, "a resumed run must not start a second run");
    runs.into_iter()
        .flat_map(|r| r.tasks)
        .filter(|(_, state)| *state == TaskState::Complete)
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn a_killed_run_resumes_without_rerunning_completed_tasks() {
    let dir = tempfile::tempdir().unwrap();
    write_plan(dir.path());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut kills = 0;
    // (log length at the kill, tasks COMPLETE in the store at the kill)
    let mut checkpoints = Vec::new();
    for _ in 0..40 {
        if kills >= 12 {
            break;
        }
        let before = starts(dir.path()).len();
        let mut child = tetrarch(dir.path()).spawn().unwrap();
        // Kill at a random point after this process started running tasks (start-up time varies
        // with the machine's load; the kill must land mid-run, not before it).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while starts(dir.path()).len() == before
            && child.try_wait().unwrap().is_none()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(20..250)));
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        // Orphaned `sh` children may still append their start lines; let them.
        std::thread::sleep(Duration::from_millis(60));
        checkpoints.push((starts(dir.path()).len(), completed_in_store(dir.path())));
    }
    assert!(kills >= 10, "only {kills} kills landed mid-run");
    let status = tetrarch(dir.path()).status().unwrap();
    assert!(status.success(), "the final run failed: {status}");

    let store = open_store(dir.path());
    let runs = saved_runs(&store).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Complete);
    let last = tetrarch::agents::saved_output(&store, &runs[0].run_id, &format!("t{}", TASKS - 1))
        .unwrap()
        .unwrap();
    // t0, then t4 (after the fan-out from t0), then the chain t5..: TASKS - 3 pluses.
    assert_eq!(last["n"].as_str().unwrap().len(), TASKS - 3, "{last}");
    assert!(runs[0].tasks.iter().all(|(_, s)| *s == TaskState::Complete));
    drop(store);

    let log = starts(dir.path());
    for i in 0..TASKS {
        assert!(log.contains(&format!("t{i}")), "t{i} never ran");
    }
    for (at, complete) in &checkpoints {
        for task in &log[*at..] {
            assert!(
                !complete.contains(task),
                "{task} was COMPLETE in the store at a kill but ran again"
            );
        }
    }
    let progressed = checkpoints.iter().any(|(_, c)| !c.is_empty());
    assert!(progressed, "no kill happened after a task completed");
}

/// Starts the plan of `write_plan` in `dir`, kills it (SIGKILL) once three tasks have started,
/// and returns the id of the run it left unfinished.
fn killed_mid_run(dir: &Path) -> String {
    write_plan(dir);
    let mut child = tetrarch(dir).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while starts(dir).len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let runs = saved_runs(&open_store(dir)).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Running);
    runs[0].run_id.clone()
}

#[test]
fn a_run_killed_then_replaced_with_fresh_is_not_resumed_later() {
    let dir = tempfile::tempdir().unwrap();
    let killed = killed_mid_run(dir.path());
    let fresh = tetrarch(dir.path()).arg("--fresh").status().unwrap();
    assert!(fresh.success(), "{fresh}");
    // The plain command now starts a run of its own: the user gave the killed one up.
    let plain = tetrarch(dir.path()).status().unwrap();
    assert!(plain.success(), "{plain}");
    let store = open_store(dir.path());
    let runs = saved_runs(&store).unwrap();
    assert_eq!(runs.len(), 3, "{runs:?}");
    let left = runs.iter().find(|r| r.run_id == killed).unwrap();
    assert_eq!(
        left.status,
        RunStatus::Running,
        "the killed run was resumed"
    );
    assert_eq!(
        runs.iter()
            .filter(|r| r.status == RunStatus::Complete)
            .count(),
        2
    );
}

/// Any edit to the plan (a comment too) starts a new run: the command says which unfinished run
/// it leaves, instead of silently running completed tasks again.
#[test]
fn an_edited_plan_names_the_unfinished_run_it_does_not_resume() {
    let dir = tempfile::tempdir().unwrap();
    let killed = killed_mid_run(dir.path());
    let plan = dir.path().join("plan.toml");
    let text = std::fs::read_to_string(&plan).unwrap();
    std::fs::write(&plan, format!("{text}# a comment\n")).unwrap();
    let edited = tetrarch(dir.path())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(edited.status.success(), "{edited:?}");
    let said = String::from_utf8_lossy(&edited.stderr);
    assert!(
        said.contains(&format!("note: run {killed} of")) && said.contains("is unfinished"),
        "{said}"
    );
    // Once a newer run of the file has finished, the old one is not named again.
    let again = tetrarch(dir.path())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&again.stderr).contains("note: run"));
}

/// A task still in flight when another fails runs to its end and is compensated in the
/// rollback. Killed while it runs, the resumed rollback does not know whether its call did its
/// work: it compensates it (it used to call it "not started" and leave its work in place).
#[test]
fn a_rollback_resumed_after_a_kill_compensates_the_task_that_was_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("plan.toml"),
        "name = \"rollback\"\npermissions = \"settings.json\"\n\
         [pools.sh]\nkind = \"process\"\ncommand = [\"sh\", \"-c\"]\n\
         [[task]]\nid = \"slow\"\ntool = \"sh.run\"\n\
         args = { argv = [\"echo slow-start >> log.txt; sleep 3; echo slow-effect >> log.txt\"] }\n\
         compensate = { tool = \"sh.undo\", args = { argv = [\"echo undo-slow >> log.txt\"] } }\n\
         [[task]]\nid = \"bad\"\ntool = \"sh.run\"\nargs = { argv = [\"sleep 0.3; exit 1\"] }\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("actors")).unwrap();
    std::fs::write(dir.path().join("actors/executor.toml"), "mailbox = 4096\n").unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(sleep *)"]}}"#,
    )
    .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("log.txt")).unwrap_or_default();
    let mut child = tetrarch(dir.path()).stdout(Stdio::piped()).spawn().unwrap();
    // `bad` has failed while `slow` still runs (its failure is committed at once).
    let events = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    for line in events {
        let line = line.unwrap();
        if line.contains("\"task_finished\"") && line.contains("\"bad\"") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        log().contains("slow-start") && !log().contains("slow-effect"),
        "{}",
        log()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = tetrarch(dir.path())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(resumed.status.code(), Some(1));
    assert!(log().contains("undo-slow"), "{}", log());
    // The event stream says so too, before the compensation: it had no event for `slow`.
    let events = String::from_utf8_lossy(&resumed.stdout);
    let finished = events
        .lines()
        .position(|l| {
            l.contains("\"task_finished\"")
                && l.contains("\"slow\"")
                && l.contains("\"cancelled\"")
                && l.contains("outcome is unknown")
        })
        .unwrap_or_else(|| panic!("no task_finished for slow: {events}"));
    let compensated = events
        .lines()
        .position(|l| l.contains("\"compensated\"") && l.contains("\"slow\""))
        .unwrap_or_else(|| panic!("no compensation of slow: {events}"));
    assert!(finished < compensated, "{events}");
    let store = open_store(dir.path());
    let runs = saved_runs(&store).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Failed);
    let slow = runs[0].tasks.iter().find(|(id, _)| id == "slow").unwrap().1;
    assert_eq!(slow, TaskState::Compensated);
}

/// A plan whose rollback undoes `b`, then `a`, then `z`: `b`'s compensation reads `a`'s output
/// and fails on its first try, `z`'s takes 3 s. `bad` fails after `b`; `slow` (3 s, compensated)
/// is still running when it does. Each tool call logs to `log.txt`.
fn write_rollback_plan(dir: &Path) {
    std::fs::write(
        dir.join("tool.sh"),
        "case \"$1\" in\n\
         do) echo \"do-$2\" >> log.txt; echo \"{\\\"name\\\": \\\"$2-out\\\"}\" ;;\n\
         slow) echo \"$2-start\" >> log.txt; sleep 3; echo \"$2-end\" >> log.txt ;;\n\
         flaky) if [ -e tried ]; then echo \"undo-$2-$3\" >> log.txt; else touch tried; exit 1; fi ;;\n\
         fail) sleep 0.3; exit 1 ;;\n\
         esac\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("plan.toml"),
        "name = \"undo-order\"\npermissions = \"settings.json\"\n\
         [pools.t]\nkind = \"process\"\ncommand = [\"sh\", \"tool.sh\"]\nmax_size = 4\n\
         [[task]]\nid = \"z\"\ntool = \"t.run\"\nargs = { argv = [\"do\", \"z\"] }\n\
         compensate = { tool = \"t.undo\", args = { argv = [\"slow\", \"undo-z\"] } }\n\
         [[task]]\nid = \"a\"\ntool = \"t.run\"\ndeps = [\"z\"]\nargs = { argv = [\"do\", \"a\"] }\n\
         compensate = { tool = \"t.undo\", args = { argv = [\"do\", \"undo-a\"] } }\n\
         [[task]]\nid = \"b\"\ntool = \"t.run\"\ndeps = [\"a\"]\nargs = { argv = [\"do\", \"b\"] }\n\
         compensate = { tool = \"t.undo\", args = { argv = [\"flaky\", \"b\", \"{{tasks.a.output.name}}\"] } }\n\
         [[task]]\nid = \"slow\"\ntool = \"t.run\"\ndeps = [\"b\"]\nargs = { argv = [\"slow\", \"slow\"] }\n\
         compensate = { tool = \"t.undo\", args = { argv = [\"do\", \"undo-slow\"] } }\n\
         [[task]]\nid = \"bad\"\ntool = \"t.run\"\ndeps = [\"b\"]\nargs = { argv = [\"fail\"] }\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("actors")).unwrap();
    std::fs::write(dir.join("actors/executor.toml"), "mailbox = 4096\n").unwrap();
    std::fs::write(
        dir.join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(sh tool.sh *)"]}}"#,
    )
    .unwrap();
}

/// Killed during its rollback after a compensation failed, the resumed rollback tries that
/// compensation again with the output of the task it reads, which is already undone (it used
/// to fail rendering it, so the task stayed done for good).
#[test]
fn a_resumed_rollback_retries_a_failed_compensation_with_its_upstream_outputs() {
    let dir = tempfile::tempdir().unwrap();
    write_rollback_plan(dir.path());
    let log = || std::fs::read_to_string(dir.path().join("log.txt")).unwrap_or_default();
    let mut child = tetrarch(dir.path()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !log().contains("undo-z-start") {
        assert!(std::time::Instant::now() < deadline, "{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The first try of b's compensation failed; a is undone.
    assert!(dir.path().join("tried").exists() && log().contains("do-undo-a"));
    assert!(!log().contains("undo-b-"), "{}", log());
    let resumed = tetrarch(dir.path()).output().unwrap();
    assert_eq!(resumed.status.code(), Some(1));
    assert!(log().contains("undo-b-a-out"), "{}", log());
    let store = open_store(dir.path());
    let runs = saved_runs(&store).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Failed);
    for id in ["z", "a", "b", "slow"] {
        let state = runs[0].tasks.iter().find(|(t, _)| t == id).unwrap().1;
        assert_eq!(state, TaskState::Compensated, "{id}: {}", log());
    }
}

/// A Ctrl-C after a task failed, while the rollback waits for a call still in flight, does not
/// stop that call: it ends and is compensated, as a resume after a kill at the same moment
/// would compensate it (it used to be killed and left not undone).
#[test]
fn ctrl_c_while_the_rollback_waits_for_a_call_lets_it_end_and_compensates_it() {
    let dir = tempfile::tempdir().unwrap();
    write_rollback_plan(dir.path());
    let log = || std::fs::read_to_string(dir.path().join("log.txt")).unwrap_or_default();
    let mut child = tetrarch(dir.path()).stdout(Stdio::piped()).spawn().unwrap();
    let events = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut rest = Vec::new();
    let mut signalled = false;
    for line in events {
        let line = line.unwrap();
        if !signalled && line.contains("\"task_finished\"") && line.contains("\"bad\"") {
            assert!(
                log().contains("slow-start") && !log().contains("slow-end"),
                "{}",
                log()
            );
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
            signalled = true;
        }
        rest.push(line);
    }
    assert!(signalled, "{rest:?}");
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(log().contains("slow-end"), "{}", log());
    assert!(log().contains("do-undo-slow"), "{}", log());
    let store = open_store(dir.path());
    let runs = saved_runs(&store).unwrap();
    assert_eq!(runs[0].status, RunStatus::Failed);
    let slow = runs[0].tasks.iter().find(|(t, _)| t == "slow").unwrap().1;
    assert_eq!(slow, TaskState::Compensated);
}

/// The same plan text in another folder (a copy, a worktree) sharing the store is another run:
/// its relative paths mean another folder, so it must not resume the first one's run.
#[test]
fn a_copy_of_the_plan_in_another_folder_does_not_resume_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let plan = "name = \"copied\"\npermissions = \"settings.json\"\n\
        [pools.sh]\nkind = \"process\"\ncommand = [\"sh\", \"-c\"]\n\
        [[task]]\nid = \"slow\"\ntool = \"sh.run\"\nargs = { argv = [\"sleep 2\"] }\n";
    let store = dir.path().join("store.redb");
    let on_store = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tetrarch"));
        command.arg("--store").arg(&store);
        command
    };
    let first_event = |folder: &Path, kill: bool| -> String {
        std::fs::create_dir_all(folder).unwrap();
        std::fs::write(folder.join("plan.toml"), plan).unwrap();
        std::fs::write(
            folder.join("settings.json"),
            r#"{"permissions": {"allow": ["Bash(sleep *)"]}}"#,
        )
        .unwrap();
        let mut child = on_store()
            .arg("run")
            .arg(folder.join("plan.toml"))
            .args(["--events", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        let started = lines.next().unwrap().unwrap();
        for line in lines {
            if line.unwrap().contains("\"task_started\"") {
                break;
            }
        }
        if kill {
            // The run's first records are committed in the background: killed once the store
            // (reached through the run's socket) lists it.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let runs = on_store().args(["runs", "--json"]).output().unwrap();
                let listed = String::from_utf8_lossy(&runs.stdout).into_owned();
                if listed.contains("\"running\"") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the run was never listed as running: {listed}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            child.kill().unwrap();
        }
        child.wait().unwrap();
        started
    };
    let first = first_event(&dir.path().join("a"), true);
    assert!(first.contains("\"resumed\":false"), "{first}");
    let copy = first_event(&dir.path().join("b"), false);
    assert!(
        copy.contains("\"resumed\":false"),
        "a copy resumed the first run: {copy}"
    );
    // The same folder again does resume its killed run.
    let again = first_event(&dir.path().join("a"), false);
    assert!(again.contains("\"resumed\":true"), "{again}");
}

/// The pids of running processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .filter(|pid| {
            // A zombie waiting to be reaped has stopped running.
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            !status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .collect()
}

/// A `tetrarch run` killed outright (SIGKILL: no drop, no signal handler runs) takes the tools
/// it was running with it: its reaper kills their process groups. A `sleep` tool used to run on
/// for its whole length. The kill comes a moment after the tool is seen running, not at once:
/// a child killed with us in the moment between its spawn and its listing escapes (the limit
/// src/session/groups.rs documents and measures), and on a loaded 2-core machine that moment
/// once stretched past the time `sh` takes to start `sleep`.
#[test]
fn a_killed_run_leaves_no_tool_running() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("plan.toml"),
        "name = \"reap\"\npermissions = \"settings.json\"\n\
         [pools.sh]\nkind = \"process\"\ncommand = [\"sh\", \"-c\"]\n\
         [[task]]\nid = \"long\"\ntool = \"sh.run\"\n\
         args = { argv = [\"echo started > started.txt; sleep 317\"] }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(sleep *)"]}}"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("actors")).unwrap();
    let mut child = tetrarch(dir.path()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let sleeping = loop {
        let found = processes_running(&["sleep", "317"]);
        if !found.is_empty() {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tool never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !processes_running(&["sleep", "317"]).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = processes_running(&["sleep", "317"]);
    for &pid in &left {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(
        left.is_empty(),
        "the tool (pids {sleeping:?}) outlived the killed tetrarch"
    );
}

/// A run killed during a retry's backoff resumes with that retry counted: the tool is called
/// at most `retries + 1` times in all (the retry used to be saved only at its dispatch, so
/// the resumed run started counting again), and waits out what was left of the backoff before
/// calling it (it used to call it at once).
#[test]
fn a_retry_killed_during_its_backoff_counts_and_waits_out_its_backoff_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("plan.toml"),
        "name = \"backoff\"\npermissions = \"settings.json\"\n\
         [pools.sh]\nkind = \"process\"\ncommand = [\"sh\", \"-c\"]\n\
         [[task]]\nid = \"flaky\"\ntool = \"sh.run\"\nretries = 2\n\
         args = { argv = [\"echo try >> log.txt; exit 3\"] }\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("actors")).unwrap();
    std::fs::write(dir.path().join("actors/executor.toml"), "mailbox = 4096\n").unwrap();
    std::fs::write(
        dir.path().join("actors/orchestrator.toml"),
        "mailbox = 4096\n[run]\nretry_backoff = \"2s\"\nretry_backoff_max = \"2s\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(exit *)"]}}"#,
    )
    .unwrap();
    let tries = || {
        std::fs::read_to_string(dir.path().join("log.txt"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let mut child = tetrarch(dir.path()).stdout(Stdio::piped()).spawn().unwrap();
    let events = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let retrying = events
        .map(Result::unwrap)
        .any(|line| line.contains("\"task_retrying\""));
    assert!(retrying, "the run ended without a retry");
    let backoff_began = std::time::Instant::now();
    // Killed in the backoff (2 s), once the retry's record has had time to commit (queued as
    // the event goes out; one group commit).
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(tries(), 1);
    let mut resumed = tetrarch(dir.path()).spawn().unwrap();
    // The resumed run waits out the rest of the backoff (it used to call the tool at once).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tries() < 2 {
        assert!(std::time::Instant::now() < deadline, "no second try");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second_try = backoff_began.elapsed();
    assert!(
        second_try >= Duration::from_millis(1800),
        "the second try came {second_try:?} after the first, inside its 2 s backoff"
    );
    assert_eq!(resumed.wait().unwrap().code(), Some(1));
    assert_eq!(tries(), 3, "retries = 2 allows 3 calls in all");
}
