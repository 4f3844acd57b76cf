//! `tetrarch plan check` end to end, and `tetrarch run` refusing a bad plan before anything runs.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .args(["plan", "check"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn valid_plan_prints_levels_and_critical_path() {
    // Its pools are neither its own nor configured: `run` would refuse it, and so does the check.
    let (code, _, err) = check(&["tests/fixtures/plans/poster.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(":10:8: task \"render-day\" tool: unknown pool \"blender\""),
        "{err}"
    );
    let (code, out, _) = check(&[
        "tests/fixtures/plans/poster.toml",
        "--pools",
        "blender,shell,cdn",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("level 0: render-day, render-dusk, render-night\n"),
        "{out}"
    );
    assert!(
        out.contains("level 1: compose\nlevel 2: publish\n"),
        "{out}"
    );
    assert!(
        out.contains("critical path: render-night -> compose -> publish (3m 20s)"),
        "{out}"
    );
    assert!(
        out.contains("(checked against the plan's pools, the built-in actors' pools and --pools;"),
        "{out}"
    );
}

#[test]
fn invalid_plan_lists_every_error_and_exits_2() {
    let (code, _, err) = check(&["tests/fixtures/plans/broken.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("tests/fixtures/plans/broken.toml:28:9: cycle: fetch -> publish -> fetch"),
        "{err}"
    );
    assert!(
        err.contains(":15:18: task \"render\" depends on unknown task \"rendr\""),
        "{err}"
    );
    assert!(
        err.contains(":27:8: task \"publish\" tool: unknown pool \"cdn\""),
        "{err}"
    );
    assert!(err.contains("17 errors — plan rejected"), "{err}");
}

#[test]
fn pools_option_and_json_report() {
    let (code, out, _) = check(&[
        "tests/fixtures/plans/poster.toml",
        "--pools",
        "blender,shell,cdn",
        "--json",
    ]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["levels"][1][0], "compose");
    assert_eq!(report["critical_path"]["seconds"], 200.0);

    let (code, out, _) = check(&[
        "tests/fixtures/plans/poster.toml",
        "--pools",
        "blender,shell",
        "--json",
    ]);
    assert_eq!(code, 2);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["errors"][0]["line"], 51);
    assert_eq!(
        report["errors"][0]["message"],
        "task \"publish\" tool: unknown pool \"cdn\""
    );
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let (code, _, err) = check(&["tests/fixtures/plans/nope.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read plan tests/fixtures/plans/nope.toml"),
        "{err}"
    );
}

/// `tetrarch --store STORE ARGS…`, to be run.
fn tetrarch_on(store: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tetrarch"));
    command.arg("--store").arg(store).args(args);
    command
}

fn code_and_stderr(out: &std::process::Output) -> (i32, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `tetrarch run PLAN` headless with a fresh store in `dir`.
fn run(dir: &std::path::Path, plan: &str) -> (i32, String) {
    std::fs::write(dir.join("plan.toml"), plan).unwrap();
    let out = tetrarch_on(&dir.join("store.redb"), &["run"])
        .arg(dir.join("plan.toml"))
        .output()
        .unwrap();
    code_and_stderr(&out)
}

#[test]
fn run_refuses_a_plan_that_is_not_toml_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(dir.path(), "name = \"x\"\n[[task]]\nid = \"a\"\ntool = \n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plan.toml:4:"), "{err}");
    assert!(err.contains("nothing ran"), "{err}");
}

#[test]
fn run_refuses_a_tool_its_pool_does_not_have_before_any_task_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(touch *)"]}}"#,
    )
    .unwrap();
    // `mark` could run (its pool takes any tool name and the rules allow it), but the plan
    // also names a scorer tool that does not exist, so nothing may run.
    let plan = r#"
name = "typo"
permissions = "settings.json"
[pools.sh]
kind = "process"
command = ["touch"]
[[task]]
id = "mark"
tool = "sh.touch"
args = { argv = ["marker"] }
[[task]]
id = "score"
tool = "scorer.flipp"
deps = ["mark"]
args = {}
"#;
    let (code, err) = run(dir.path(), plan);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("task \"score\" tool: pool \"scorer\" has no tool \"flipp\""),
        "{err}"
    );
    assert!(!dir.path().join("marker").exists(), "a task ran");
}

#[test]
fn run_of_a_failing_plan_exits_1_naming_the_task_and_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let plan = r#"
name = "fails"
permissions = "settings.json"
[pools.sh]
kind = "process"
command = ["sh", "-c"]
[[task]]
id = "ok"
tool = "sh.run"
args = { argv = ["echo fine"] }
[[task]]
id = "broken"
tool = "sh.run"
deps = ["ok"]
args = { argv = ["echo 'disk quota exceeded' >&2; exit 3"] }
[[task]]
id = "after"
tool = "sh.run"
deps = ["broken"]
args = { argv = ["echo never"] }
"#;
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(exit *)"]}}"#,
    )
    .unwrap();
    let (code, err) = run(dir.path(), plan);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("broken: Failed") && err.contains("disk quota exceeded"),
        "{err}"
    );
    assert!(err.contains("after: Skipped"), "{err}");
}

/// `tetrarch COMMAND` with `--store` in `dir`, stdout a pipe whose reader is already gone (as
/// under `| head -0`): the exit code and stderr.
fn with_closed_stdout(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = tetrarch_on(&dir.join("store.redb"), args)
        .stdout(writer)
        .output()
        .unwrap();
    code_and_stderr(&out)
}

#[test]
fn runs_json_prints_one_run_per_line_and_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let plan = |name: &str, fail: bool| {
        format!(
            "name = \"{name}\"\n[pools.sh]\nkind = \"process\"\ncommand = [\"sh\", \"-c\"]\n\
             [[task]]\nid = \"t\"\ntool = \"sh.run\"\nargs = {{ argv = [\"{}\"] }}\n",
            if fail { "exit 3" } else { "true" }
        )
    };
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(true)", "Bash(exit *)"]}}"#,
    )
    .unwrap();
    let with_rules = |text: String| text.replacen('\n', "\npermissions = \"settings.json\"\n", 1);
    assert_eq!(run(dir.path(), &with_rules(plan("first", false))).0, 0);
    assert_eq!(run(dir.path(), &with_rules(plan("second", true))).0, 1);

    let out = tetrarch_on(&dir.path().join("store.redb"), &["runs", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let runs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "{stdout}");
    assert_eq!(runs[0]["plan"], "first", "{stdout}");
    assert_eq!(runs[1]["plan"], "second", "{stdout}");
    assert_ne!(runs[0]["status"], runs[1]["status"], "{stdout}");
    // Both ended, so each has an end time no earlier than its start, and the list says how long.
    for run in &runs {
        let (started, finished) = (run["started_ms"].as_i64(), run["finished_ms"].as_i64());
        assert!(
            started.is_some_and(|s| finished.is_some_and(|f| f >= s)),
            "{run}"
        );
    }
    let listed = tetrarch_on(&dir.path().join("store.redb"), &["runs"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let ended_in = |line: &str| {
        line.rsplit_once("  in ")
            .is_some_and(|(_, t)| [" µs", " ms", " s"].iter().any(|u| t.ends_with(u)))
    };
    assert!(listed.lines().all(ended_in), "{listed}");

    for args in [
        &["runs"][..],
        &["runs", "--json"],
        &["plan", "check", "plan.toml"],
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if *a == "plan.toml" {
                    dir.path().join(a).display().to_string()
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = with_closed_stdout(dir.path(), &args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn commands_that_read_refuse_a_store_that_does_not_exist_and_create_none() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("stroe.redb");
    for args in [
        &["runs"][..],
        &["mem", "recent"],
        &["mem", "search", "anything"],
        &["lessons", "list"],
        &["dashboard", "--addr", "127.0.0.1:0"],
    ] {
        let out = tetrarch_on(&typo, args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("no store at {}", typo.display())),
            "{args:?}: {err}"
        );
        assert!(!typo.exists(), "{args:?} created the store");
    }
    // An empty file is refused the same way, and stays empty.
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, "").unwrap();
    for args in [&["runs"][..], &["mem", "recent"]] {
        let out = tetrarch_on(&empty, args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("is an empty file, not a store"),
            "{args:?}: {err}"
        );
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    }
    // Storing a memory is how a store begins.
    let out = tetrarch_on(&typo, &["mem", "store", "--content", "first memory"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(typo.exists());
}

#[test]
fn the_permission_file_a_plan_names_is_read_by_plan_check() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    let text = "name = \"p\"\npermissions = \"settings.json\"\n[[task]]\nid = \"t\"\n\
                tool = \"sh.run\"\n[pools.sh]\nkind = \"process\"\ncommand = [\"sh\", \"-c\"]\n";
    std::fs::write(&plan, text).unwrap();
    let plan = plan.to_str().unwrap();
    let (code, _, err) = check(&[plan]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot read permissions") && err.contains("settings.json"),
        "{err}"
    );
    // At the line that names it.
    assert!(err.starts_with(&format!("{plan}:2:1: ")), "{err}");
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash("]}}"#,
    )
    .unwrap();
    let (code, out, _) = check(&[plan, "--json"]);
    assert_eq!(code, 2, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["errors"][0]["line"], 2, "{out}");
    assert!(
        report["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("bad permissions"),
        "{out}"
    );
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(ls)"]}}"#,
    )
    .unwrap();
    let (code, out, err) = check(&[plan]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn an_endless_plan_file_is_refused_and_errors_say_their_cause_once() {
    let (code, _, err) = check(&["/dev/zero"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot read plan /dev/zero: it is over 64 MiB"),
        "{err}"
    );
    let (code, _, err) = check(&["no-such-plan.toml"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn a_native_pool_in_a_plan_run_by_the_binary_says_why_it_has_no_tools() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(
        dir.path(),
        "name = \"n\"\n[pools.n]\nkind = \"native\"\n[[task]]\nid = \"a\"\ntool = \"n.foo\"\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(":6:8: task \"a\" tool: pool \"n\" has no tool \"foo\""),
        "{err}"
    );
    assert!(err.contains("no native tools are registered"), "{err}");
}

/// A plan on an `sh -c` pool whose rules allow everything but `rm`, with `tasks` appended.
fn shell_plan(dir: &std::path::Path, tasks: &str) -> String {
    std::fs::write(
        dir.join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(*)"], "deny": ["Bash(rm *)"]}}"#,
    )
    .unwrap();
    format!(
        "name = \"guarded\"\npermissions = \"settings.json\"\n[pools.sh]\nkind = \"process\"\n\
         command = [\"sh\", \"-c\"]\n{tasks}"
    )
}

#[test]
fn a_shell_pools_script_cannot_hide_behind_an_option_or_another_shell() {
    let dir = tempfile::tempdir().unwrap();
    for (i, argv) in [
        r#"["-e", "rm -f victim"]"#,
        r#"["--", "rm -f victim"]"#,
        r#"["bash -c 'rm -f victim'"]"#,
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(dir.path().join("victim"), "keep").unwrap();
        let plan = shell_plan(
            dir.path(),
            &format!("[[task]]\nid = \"t{i}\"\ntool = \"sh.run\"\nargs = {{ argv = {argv} }}\n"),
        );
        let (code, err) = run(dir.path(), &plan);
        assert_eq!(code, 1, "{argv}: {err}");
        assert!(
            err.contains("starts with `-` or `+` as an option")
                || err.contains("denied by rule deny[0]"),
            "{argv}: {err}"
        );
        assert!(
            dir.path().join("victim").exists(),
            "{argv} deleted the file"
        );
    }
}

#[test]
fn variables_a_call_sets_are_judged_like_leading_assignments() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(ls)", "Bash(ls *)", "Bash(echo *)"]}}"#,
    )
    .unwrap();
    let plan = "name = \"env\"\npermissions = \"settings.json\"\n[pools.sh]\nkind = \"process\"\n\
        command = [\"sh\", \"-c\"]\n\
        [[task]]\nid = \"path\"\ntool = \"sh.run\"\nargs = { argv = [\"ls\"], env = { PATH = \"./bin:/usr/bin:/bin\" } }\n\
        [[task]]\nid = \"harmless\"\ntool = \"sh.run\"\nargs = { argv = [\"echo ok\"], env = { NO_COLOR = \"1\" } }\n";
    // The pool's own `env` reaches the process as the call's does, so it is judged too (with
    // the pool's real shell).
    let evil = dir.path().join("evil.sh");
    std::fs::write(&evil, "touch ran\n").unwrap();
    let plan = format!(
        "{plan}[pools.bash]\nkind = \"process\"\ncommand = [\"bash\", \"-c\"]\n\
         env = {{ BASH_ENV = \"{}\" }}\n\
         [[task]]\nid = \"pool-env\"\ntool = \"bash.run\"\nargs = {{ argv = [\"echo hi\"] }}\n",
        evil.display()
    );
    let (code, err) = run(dir.path(), &plan);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("path: Failed (permission denied: no rule allows Bash")
            && err.contains("env PATH=./bin:/usr/bin:/bin sh -c ls"),
        "{err}"
    );
    assert!(!err.contains("harmless: Failed"), "{err}");
    assert!(
        err.contains("pool-env: Failed (permission denied: no rule allows Bash")
            && err.contains(&format!(
                "env BASH_ENV={} bash -c 'echo hi'",
                evil.display()
            )),
        "{err}"
    );
    assert!(!dir.path().join("ran").exists());
}

#[test]
fn a_cached_result_is_not_served_to_a_call_the_rules_now_deny() {
    let dir = tempfile::tempdir().unwrap();
    let plan = |rules: &str| {
        std::fs::write(dir.path().join("settings.json"), rules).unwrap();
        "name = \"cached\"\npermissions = \"settings.json\"\n[pools.sh]\nkind = \"process\"\n\
         command = [\"sh\", \"-c\"]\n[[task]]\nid = \"secret\"\ntool = \"sh.run\"\ncacheable = true\n\
         args = { argv = [\"echo cached-secret\"] }\n"
            .to_owned()
    };
    let (code, err) = run(
        dir.path(),
        &plan(r#"{"permissions": {"allow": ["Bash(echo *)"]}}"#),
    );
    assert_eq!(code, 0, "{err}");
    let fresh = |text: String| {
        std::fs::write(dir.path().join("plan.toml"), text).unwrap();
        let out = tetrarch_on(&dir.path().join("store.redb"), &["run", "--fresh"])
            .arg(dir.path().join("plan.toml"))
            .output()
            .unwrap();
        code_and_stderr(&out)
    };
    let (code, err) = fresh(plan(
        r#"{"permissions": {"allow": ["Bash(echo *)"], "deny": ["Bash(echo cached-secret)"]}}"#,
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("denied by rule deny[0]"), "{err}");
}

#[test]
fn a_cached_result_is_kept_apart_per_value_of_the_variables_passed_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)"]}}"#,
    )
    .unwrap();
    let plan = "name = \"mode\"\npermissions = \"settings.json\"\n[pools.sh]\nkind = \"process\"\n\
        command = [\"sh\", \"-c\"]\nenv_allowlist = [\"PATH\", \"MODE\"]\n\
        [[task]]\nid = \"show\"\ntool = \"sh.run\"\ncacheable = true\n\
        args = { argv = [\"echo \\\"{\\\\\\\"mode\\\\\\\": \\\\\\\"$MODE\\\\\\\"}\\\"\"] }\n";
    std::fs::write(dir.path().join("plan.toml"), plan).unwrap();
    let shown = |mode: &str| {
        let out = tetrarch_on(&dir.path().join("store.redb"), &["run", "--fresh"])
            .arg(dir.path().join("plan.toml"))
            .args(["--events", "json"])
            .env("MODE", mode)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let store = dir.path().join("store.redb");
        let runs = tetrarch_on(&store, &["runs", "--json"]).output().unwrap();
        let last = String::from_utf8_lossy(&runs.stdout)
            .lines()
            .last()
            .unwrap()
            .to_owned();
        let run: serde_json::Value = serde_json::from_str(&last).unwrap();
        let run_id = run["run_id"].as_str().unwrap().to_owned();
        let s =
            tetrarch::store::Store::open(&store, tetrarch::store::StoreConfig::default()).unwrap();
        tetrarch::agents::saved_output(&s, &run_id, "show")
            .unwrap()
            .unwrap()["mode"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(shown("alpha"), "alpha");
    assert_eq!(shown("beta"), "beta");
    assert_eq!(shown("alpha"), "alpha");
}

#[test]
fn a_task_waiting_to_retry_when_another_fails_stops_at_once_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("actors")).unwrap();
    std::fs::write(
        dir.path().join("actors/orchestrator.toml"),
        "[run]\nretry_backoff = \"60s\"\nretry_backoff_max = \"60s\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(exit *)", "Bash(sleep *)"]}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("plan.toml"),
        "name = \"retrying\"\npermissions = \"settings.json\"\n[pools.sh]\nkind = \"process\"\n\
         command = [\"sh\", \"-c\"]\n\
         [[task]]\nid = \"flaky\"\ntool = \"sh.run\"\nretries = 3\nargs = { argv = [\"exit 1\"] }\n\
         [[task]]\nid = \"bad\"\ntool = \"sh.run\"\nargs = { argv = [\"sleep 0.5; exit 1\"] }\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = tetrarch_on(&dir.path().join("store.redb"), &["run"])
        .arg(dir.path().join("plan.toml"))
        .arg("--actors")
        .arg(dir.path().join("actors"))
        .args(["--events", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Not held up by the 60 s backoff (the bound leaves a loaded machine room).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let events = String::from_utf8_lossy(&out.stdout);
    let flaky = events
        .lines()
        .find(|l| l.contains("\"task_finished\"") && l.contains("\"flaky\""))
        .unwrap_or_else(|| panic!("no task_finished for flaky:\n{events}"));
    assert!(
        flaky.contains("\"skipped\"") && flaky.contains("stopped before the retry"),
        "{flaky}"
    );
}

#[test]
fn a_failed_compensation_is_reported_with_its_exit_status_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(exit *)", "Bash(sleep *)"]}}"#,
    )
    .unwrap();
    let (code, err) = run(
        dir.path(),
        "name = \"undo\"\npermissions = \"settings.json\"\n[pools.sh]\nkind = \"process\"\n\
         command = [\"sh\", \"-c\"]\n\
         [[task]]\nid = \"made\"\ntool = \"sh.run\"\nargs = { argv = [\"echo made\"] }\n\
         compensate = { tool = \"sh.undo\", args = { argv = [\"echo cannot undo >&2; exit 3\"] } }\n\
         [[task]]\nid = \"bad\"\ntool = \"sh.run\"\ndeps = [\"made\"]\nargs = { argv = [\"exit 1\"] }\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("  not undone made: compensation FAILED: compensation exited 3: cannot undo"),
        "{err}"
    );
}

#[test]
fn plan_check_refuses_process_args_that_run_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"name = "ak"
[pools.sh]
kind = "process"
command = ["sh", "-c"]
[[task]]
id = "t"
tool = "sh.x"
args = { arg = ["echo hi"] }
fixes = [{ when = "x", args = { argvv = ["echo x"] } }]
"#;
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, text).unwrap();
    let name = plan.to_str().unwrap();
    let (code, _, err) = check(&[name]);
    assert_eq!(code, 2, "{err}");
    let expected = [
        format!(
            "{name}:7:8: task \"t\" tool args: unknown key `arg` for a process call (expected argv, stdin, env)"
        ),
        format!(
            "{name}:7:8: task \"t\" fixes[0] args: unknown key `argvv` for a process call (expected argv, stdin, env)"
        ),
        format!("{name}: 2 errors — plan rejected"),
    ];
    assert_eq!(err.lines().collect::<Vec<_>>(), expected, "{err}");
    // `run` refuses it with the same lines.
    let (code, run_err) = run(dir.path(), text);
    assert_eq!(code, 2, "{run_err}");
    assert!(run_err.contains(&expected[0][name.len()..]), "{run_err}");

    let (code, out, _) = check(&[name, "--json"]);
    assert_eq!(code, 2, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["errors"][0]["line"], 7, "{out}");
    // A process call with only the keys it reads passes.
    std::fs::write(
        &plan,
        text.replace("arg = ", "argv = ").replace("argvv", "argv"),
    )
    .unwrap();
    let (code, out, err) = check(&[name]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A cacheable task that a rollback undid is called again by the next run, not completed from
/// the cache without its effect.
#[test]
fn a_result_a_compensation_undid_is_not_served_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let plan = shell_plan(
        dir.path(),
        r#"[pools.undo]
kind = "process"
command = ["sh", "-c"]

[[task]]
id = "publish"
tool = "sh.x"
cacheable = true
args = { argv = ['echo pub >> calls; touch published; echo "{\"path\": \"published\"}"'] }
outputs = ["path"]
compensate = { tool = "undo.x", args = { argv = ['mv "$1" undone', "u", "{{tasks.publish.output.path}}"] } }

[[task]]
id = "check"
tool = "sh.x"
deps = ["publish"]
args = { argv = ['test -f published && test -f go'] }
"#,
    );
    let (code, err) = run(dir.path(), &plan);
    assert_eq!(code, 1, "{err}");
    assert!(dir.path().join("undone").exists(), "{err}");
    assert!(!dir.path().join("published").exists(), "{err}");

    std::fs::write(dir.path().join("go"), "").unwrap();
    let (code, err) = run(dir.path(), &plan);
    assert_eq!(code, 0, "{err}");
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert_eq!(calls.lines().count(), 2, "publish ran again: {calls}");
}

/// A tool's stderr reaches the terminal in a failure's reason: its control sequences (colour,
/// window title, carriage return) are printed as escapes, not obeyed.
#[test]
fn a_tools_control_sequences_are_printed_as_escapes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("noisy.sh"),
        "printf 'evil\\033[31mRED\\033]0;title\\007\\rX' >&2\nexit 2\n",
    )
    .unwrap();
    let plan = shell_plan(
        dir.path(),
        "[[task]]\nid = \"noisy\"\ntool = \"sh.x\"\nargs = { argv = [\"sh noisy.sh\"] }\n",
    );
    let (code, err) = run(dir.path(), &plan);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(r"evil\u{1b}[31mRED\u{1b}]0;title\u{7}\rX"),
        "{err}"
    );
    assert!(
        !err.contains(['\u{1b}', '\u{7}', '\r']),
        "a control character reached the terminal: {err:?}"
    );
}

/// Gates judge what was captured: when the capture cut the output, the feedback says so rather
/// than only that the text is missing.
#[test]
fn feedback_says_when_the_gates_saw_a_cut_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("long.sh"),
        "head -c 2000000 /dev/zero | tr '\\0' x\necho RESULT=ok\n",
    )
    .unwrap();
    let plan = shell_plan(
        dir.path(),
        "[[task]]\nid = \"long\"\ntool = \"sh.x\"\nargs = { argv = [\"sh long.sh\"] }\n\
         gates = [{ contains = \"RESULT=ok\" }]\n",
    );
    let (code, err) = run(dir.path(), &plan);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("output does not contain \"RESULT=ok\"")
            && err.contains("the tool's output was cut at the capture limit"),
        "{err}"
    );
}

/// Under an `exit` gate a failing tool's own words are in the reason (and `{{feedback}}`): its
/// stderr, or, when it printed none, its output, where an MCP tool's error result puts its
/// message.
#[test]
fn an_exit_gates_failure_says_what_the_tool_printed() {
    let dir = tempfile::tempdir().unwrap();
    let plan = shell_plan(
        dir.path(),
        "[[task]]\nid = \"quiet\"\ntool = \"sh.x\"\n\
         args = { argv = [\"echo 'cannot read missing.txt'; exit 1\"] }\n\
         gates = [{ exit = 0 }]\n",
    );
    let (code, err) = run(dir.path(), &plan);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("exit status was 1, expected 0; output: cannot read missing.txt"),
        "{err}"
    );
}

/// Every error at once (a bad args key beside an unknown dependency), and `run` refuses the
/// plan before its own pools start.
#[test]
fn args_errors_come_with_the_others_and_no_pool_starts() {
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let text = format!(
        r#"name = "all-at-once"
[pools.srv]
kind = "mcp"
command = ["sh", "-c", "touch '{}'; sleep 30"]
start_timeout = "3s"
[pools.sh]
kind = "process"
command = ["sh", "-c"]
[[task]]
id = "a"
tool = "sh.run"
args = {{ arg = ["true"] }}
[[task]]
id = "b"
tool = "srv.x"
deps = ["ghost"]
args = "notes.md"
"#,
        started.display()
    );
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, &text).unwrap();
    let name = plan.to_str().unwrap();
    let (code, _, err) = check(&[name]);
    assert_eq!(code, 2, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert!(
        lines[0].contains(":11:8: task \"a\" tool args: unknown key `arg`"),
        "{err}"
    );
    assert!(
        lines[1].contains(":15:8: task \"b\" tool args: an MCP tool's arguments are a table"),
        "{err}"
    );
    assert!(
        lines[2].contains(":16:9: task \"b\" depends on unknown task \"ghost\""),
        "{err}"
    );
    // Without the unknown dependency, only the args are wrong.
    let (code, run_err) = run(dir.path(), &text.replace("deps = [\"ghost\"]\n", ""));
    assert_eq!(code, 2, "{run_err}");
    assert!(run_err.contains("unknown key `arg`"), "{run_err}");
    assert!(!run_err.contains("ghost"), "{run_err}");
    assert!(
        !started.exists(),
        "the plan's MCP server was started: {run_err}"
    );
}

/// A store file deleted while a run uses it takes the run's writes with it: the run says so at
/// its end rather than reporting as if its state were saved.
#[test]
fn a_store_deleted_during_the_run_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(sleep *)"]}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("plan.toml"),
        "name = \"gone\"\npermissions = \"settings.json\"\n[pools.sh]\nkind = \"process\"\n\
         command = [\"sh\", \"-c\"]\n[[task]]\nid = \"t\"\ntool = \"sh.run\"\n\
         args = { argv = [\"sleep 1\"] }\n",
    )
    .unwrap();
    let store = dir.path().join("store.redb");
    let child = tetrarch_on(&store, &["run"])
        .arg(dir.path().join("plan.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !store.exists() {
        assert!(std::time::Instant::now() < deadline, "no store was made");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::remove_file(&store).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: the store file {} was deleted or replaced during the run",
            store.display()
        )),
        "{stderr}"
    );
}

/// A cached result that fails the gates is stale (here the tool's data file changed): the tool
/// is called for the same attempt, so a task with one attempt still completes (it used to fail
/// on the cached result without calling the tool).
#[test]
fn a_cached_result_the_gates_refuse_is_replaced_by_a_call_in_the_same_attempt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)", "Bash(cat *)"]}}"#,
    )
    .unwrap();
    let plan = |expected: bool| {
        format!(
            "name = \"stale\"\npermissions = \"settings.json\"\n[pools.sh]\nkind = \"process\"\n\
             command = [\"sh\", \"-c\"]\n[[task]]\nid = \"t\"\ntool = \"sh.run\"\ncacheable = true\n\
             args = {{ argv = [\"echo call >> calls.log; cat data.json\"] }}\n\
             gates = [{{ json = \"/ok\", eq = {expected} }}]\n"
        )
    };
    let calls = || {
        std::fs::read_to_string(dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    std::fs::write(dir.path().join("data.json"), r#"{"ok": true}"#).unwrap();
    let (code, err) = run(dir.path(), &plan(true));
    assert_eq!((code, calls()), (0, 1), "{err}");
    // Served from the cache: no call.
    let (code, err) = run(dir.path(), &plan(true));
    assert_eq!((code, calls()), (0, 1), "{err}");
    std::fs::write(dir.path().join("data.json"), r#"{"ok": false}"#).unwrap();
    let (code, err) = run(dir.path(), &plan(false));
    assert_eq!((code, calls()), (0, 2), "{err}");
    // The refreshing call's own result that fails is the attempt's: one call, no more.
    std::fs::write(dir.path().join("data.json"), r#"{"ok": "neither"}"#).unwrap();
    let (code, err) = run(dir.path(), &plan(true));
    assert_eq!((code, calls()), (1, 3), "{err}");
}

/// A reader of `--events json` that stops reading holds neither the run nor its events: the
/// run finishes and is saved while the reader waits, and the reader then gets every event, the
/// run's `run_finished` last. (The printer wrote from a worker of the runtime: a full pipe held
/// the worker, and the run hung with its tasks ready.)
#[test]
fn a_paused_events_reader_holds_neither_the_run_nor_any_event() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)"]}}"#,
    )
    .unwrap();
    // 600 tasks: about 1,200 events, several times what a pipe holds.
    let mut plan = String::from(
        "name = \"paused\"\npermissions = \"settings.json\"\n[pools.sh]\nkind = \"process\"\n\
         command = [\"echo\"]\n",
    );
    for i in 0..600 {
        plan.push_str(&format!(
            "[[task]]\nid = \"t{i}\"\ntool = \"sh.x\"\nargs = {{ argv = [\"{{}}\"] }}\n"
        ));
    }
    std::fs::write(dir.path().join("plan.toml"), plan).unwrap();
    let store = dir.path().join("store.redb");
    let mut child = tetrarch_on(&store, &["run", "--events", "json"])
        .arg(dir.path().join("plan.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Nobody reads stdout until the store has the run as complete.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let runs = tetrarch_on(&store, &["runs", "--json"]).output().unwrap();
        if String::from_utf8_lossy(&runs.stdout).contains("\"status\":\"complete\"") {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not finish while its events reader paused");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut printed = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut printed)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let events: Vec<serde_json::Value> = printed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let finished = events
        .iter()
        .filter(|e| e["event"] == "task_finished")
        .count();
    assert_eq!(finished, 600, "{} events", events.len());
    assert_eq!(events.last().unwrap()["event"], "run_finished");
}

/// Events that cannot be written for another reason than a reader gone (a full disk) are said
/// to be missing; the run goes on.
#[test]
fn events_that_cannot_be_written_are_said_to_be_missing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"permissions": {"allow": ["Bash(echo *)"]}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("plan.toml"),
        "name = \"full\"\npermissions = \"settings.json\"\n[pools.sh]\nkind = \"process\"\n\
         command = [\"echo\"]\n[[task]]\nid = \"a\"\ntool = \"sh.x\"\nargs = { argv = [\"hi\"] }\n",
    )
    .unwrap();
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipped: no /dev/full here");
        return;
    };
    let out = tetrarch_on(&dir.path().join("store.redb"), &["run", "--events", "json"])
        .arg(dir.path().join("plan.toml"))
        .stdout(full)
        .output()
        .unwrap();
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("cannot write the run's events to stdout") && err.contains("No space left"),
        "{err}"
    );
}
