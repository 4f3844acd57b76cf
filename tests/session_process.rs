//! The `process` session kind against real programs (sh, cat, sleep).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use tetrarch::session::{ProcessSession, ProcessSpec, Session, SessionError, ToolRequest};

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec::new("sh", ["-c", script])
}

fn request() -> ToolRequest {
    ToolRequest::new("shell", json!({})).with_timeout(Duration::from_secs(10))
}

async fn run(
    spec: ProcessSpec,
    request: ToolRequest,
) -> Result<tetrarch::session::ToolOutcome, SessionError> {
    ProcessSession::new(spec).call(request).await
}

#[tokio::test]
async fn echo_args_and_exit_status() {
    let outcome = run(ProcessSpec::new("echo", ["hello", "two words"]), request())
        .await
        .unwrap();
    assert_eq!(outcome.exit_status, Some(0));
    assert_eq!(outcome.stdout, "hello two words\n");
    assert!(outcome.json.is_none());
    assert!(!outcome.truncated);
}

#[tokio::test]
async fn stdin_is_fed_and_json_is_parsed() {
    let outcome = run(
        ProcessSpec::new("cat", Vec::<String>::new()),
        request().with_stdin(br#"{"answer": 42}"#.to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(outcome.json, Some(json!({"answer": 42})));
}

/// A program named without a `/` is started from where the child's own `PATH` finds it (a
/// `sh` of its own here, before ours), keeps its name as `argv[0]`, and a script without a
/// `#!` line still runs, through `sh`, as `execvp` runs it.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_bare_program_name_is_found_on_the_childs_path_and_keeps_its_name() {
    use std::os::unix::fs::PermissionsExt;
    let outcome = run(sh("tr '\\0' ' ' < /proc/$$/cmdline"), request())
        .await
        .unwrap();
    assert!(outcome.stdout.starts_with("sh -c "), "{:?}", outcome.stdout);
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("sh", "#!/bin/sh\necho \"the child's own sh, as $0\"\n"),
        ("no-hash-bang", "echo plain\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let on_child_path = |program: &str| {
        let mut spec = ProcessSpec::new(program, Vec::<String>::new());
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        spec.env.insert("PATH".to_owned(), path);
        spec
    };
    let outcome = run(on_child_path("sh"), request()).await.unwrap();
    let expected = format!(
        "the child's own sh, as {}\n",
        dir.path().join("sh").display()
    );
    assert_eq!(outcome.stdout, expected);
    let outcome = run(on_child_path("no-hash-bang"), request()).await.unwrap();
    assert_eq!(
        (outcome.exit_status, outcome.stdout.as_str()),
        (Some(0), "plain\n")
    );
    // A call's own `env.PATH` is the child's, so the lookup follows it, not the pool's.
    let mut pool_path = ProcessSpec::new("sh", Vec::<String>::new());
    pool_path
        .env
        .insert("PATH".to_owned(), "/usr/bin:/bin".to_owned());
    let call_path = format!("{}:/usr/bin:/bin", dir.path().display());
    let request = ToolRequest::new("shell", json!({ "env": { "PATH": call_path } }));
    let outcome = run(pool_path, request).await.unwrap();
    assert_eq!(outcome.stdout, expected);
}

#[tokio::test]
async fn environment_is_cleared_except_the_allowlist() {
    // HOME is always set for the test process; the child sees it only when allowlisted.
    let script = r#"printf '%s|%s|%s' "${HOME:-unset}" "${PATH:+set}" "${EXTRA:-unset}""#;
    let mut spec = sh(script);
    spec.env_allowlist = vec!["PATH".to_owned()];
    let outcome = run(spec.clone(), request()).await.unwrap();
    assert_eq!(outcome.stdout, "unset|set|unset");

    spec.env_allowlist.push("HOME".to_owned());
    spec.env.insert("EXTRA".to_owned(), "given".to_owned());
    let outcome = run(spec, request()).await.unwrap();
    let home = std::env::var("HOME").unwrap();
    assert_eq!(outcome.stdout, format!("{home}|set|given"));
}

#[tokio::test]
async fn a_calls_env_that_is_not_a_table_of_variables_is_refused() {
    for (env, expected) in [
        (
            json!(["A=1"]),
            "`env` must be a table of NAME = value, not [\"A=1\"]",
        ),
        (json!("A=1"), "`env` must be a table of NAME = value"),
        (json!({"": "1"}), "a variable's name cannot be empty"),
    ] {
        let request = ToolRequest::new("shell", json!({ "env": env }));
        let err = run(sh("echo ran"), request).await.unwrap_err();
        assert!(
            matches!(&err, SessionError::InvalidArguments { tool, detail }
                if tool == "shell" && detail.contains(expected)),
            "{err}"
        );
    }
    // Values other than strings are written out, and `null` sets nothing.
    let request = ToolRequest::new("shell", json!({ "env": { "A": 1, "B": null } }));
    let outcome = run(sh("printf '%s|%s' \"$A\" \"${B-unset}\""), request)
        .await
        .unwrap();
    assert_eq!(outcome.stdout, "1|unset");
}

#[tokio::test]
async fn non_zero_exit_passes_through_with_stderr() {
    let outcome = run(sh("echo oops >&2; exit 3"), request()).await.unwrap();
    assert_eq!(outcome.exit_status, Some(3));
    assert_eq!(outcome.stderr, "oops\n");
    assert!(!outcome.succeeded());
}

#[tokio::test]
async fn timeout_kills_the_child_and_its_group() {
    let started = Instant::now();
    // The shell's child `sleep` is in the same process group and must die too: if it lived, it
    // would hold the pipe open and nothing here would notice, so check with a marker file.
    let dir = std::env::temp_dir().join(format!("tetrarch-timeout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("survived");
    let script = format!("(sleep 2; touch {}) & sleep 10", marker.display());
    let err = run(
        sh(&script),
        request().with_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SessionError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!marker.exists(), "a grandchild outlived the timeout");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn output_is_capped_and_flagged() {
    let mut spec = sh("head -c 100000 /dev/zero | tr '\\0' 'a'; echo done >&2");
    spec.max_output_bytes = 1000;
    let outcome = run(spec, request()).await.unwrap();
    assert_eq!(outcome.stdout.len(), 1000);
    assert!(outcome.truncated);
    assert_eq!(outcome.stderr, "done\n");
    assert_eq!(outcome.exit_status, Some(0));
}

#[tokio::test]
async fn capped_output_is_never_over_the_cap_nor_cut_inside_a_character() {
    // 999 bytes of `a`, then `é` (2 bytes) across the cap: the half character is dropped.
    let mut spec = sh("head -c 999 /dev/zero | tr '\\0' 'a'; printf '\\303\\251tail'");
    spec.max_output_bytes = 1000;
    let outcome = run(spec, request()).await.unwrap();
    assert_eq!(outcome.stdout, "a".repeat(999));
    assert!(outcome.truncated);
    // Bytes that are not UTF-8 grow threefold as U+FFFD: still held to the cap.
    let mut spec = sh("head -c 3000 /dev/zero | tr '\\0' '\\377'");
    spec.max_output_bytes = 1000;
    let outcome = run(spec, request()).await.unwrap();
    assert!(outcome.stdout.len() <= 1000, "{}", outcome.stdout.len());
    assert!(outcome.stdout.chars().all(|c| c == '\u{FFFD}'));
    assert!(outcome.truncated);
}

#[tokio::test]
async fn a_process_left_in_the_background_does_not_hold_the_call_or_outlive_it() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!(
        "sleep 30 & echo $! > '{}'; echo '{{\"ok\": 1}}'",
        pid_file.display()
    );
    let started = Instant::now();
    let outcome = run(sh(&script), request()).await.unwrap();
    // The shell exited at once; the background sleep held stdout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(outcome.exit_status, Some(0));
    assert_eq!(outcome.json, Some(json!({ "ok": 1 })));
    // And it went with the call: gone, or a zombie waiting for init to reap it.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(&stat).ok().and_then(|text| {
            text.rsplit(") ")
                .next()
                .and_then(|rest| rest.chars().next())
        });
        if matches!(state, None | Some('Z')) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sleep {pid} still runs: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn output_a_process_substitution_is_still_copying_at_the_exit_is_kept() {
    // bash does not wait for `>(…)`: the shell exits while the copy is still writing.
    let script = "exec > >(sleep 0.05; cat); echo '{\"ok\": true}'";
    let outcome = run(ProcessSpec::new("bash", ["-c", script]), request())
        .await
        .unwrap();
    assert_eq!(outcome.json, Some(json!({ "ok": true })), "{outcome:?}");
}

#[tokio::test]
async fn a_missing_program_or_folder_is_named_by_the_check_and_does_not_stop_the_pool() {
    use tetrarch::session::{PoolContext, PoolDef, ProcessFactory};
    let dir = tempfile::tempdir().unwrap();
    let context = PoolContext {
        base_dir: dir.path().to_path_buf(),
        ..PoolContext::default()
    };
    std::fs::write(dir.path().join("not-executable"), "#!/bin/sh\n").unwrap();
    let check = |program: &str, cwd: &str| {
        let mut spec = ProcessSpec::new(program, Vec::<String>::new());
        spec.cwd = Some(dir.path().join(cwd));
        ProcessFactory::new(spec).check()
    };
    for (program, cwd, expected) in [
        (
            "/nonexistent/tool-xyz",
            ".",
            "/nonexistent/tool-xyz is not an executable file",
        ),
        (
            "no-such-tool-xyz",
            ".",
            "no such program on the PATH the child gets",
        ),
        (
            "./not-executable",
            ".",
            "not-executable is not an executable file",
        ),
        ("sh", "no-such-dir", "no-such-dir does not exist"),
    ] {
        let err = check(program, cwd).unwrap_err().to_string();
        assert!(err.contains(expected), "{program} in {cwd}: {err}");
    }
    check("sh", ".").unwrap();
    check("/bin/sh", ".").unwrap();
    // A pool whose program an earlier task will build still starts (with a warning); its call
    // fails while the program is missing, and works once it is there.
    let def: PoolDef = toml::from_str("kind = \"process\"\ncommand = [\"./bin/tool\"]\n").unwrap();
    let pool = def.start("built", &context).await.unwrap();
    let err = pool
        .acquire()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::Spawn { .. }), "{err}");
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    let tool = dir.path().join("bin/tool");
    std::fs::write(&tool, "#!/bin/sh\necho built\n").unwrap();
    let mut mode = std::fs::metadata(&tool).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o755);
    std::fs::set_permissions(&tool, mode).unwrap();
    let outcome = pool.acquire().await.unwrap().call(request()).await.unwrap();
    assert_eq!(outcome.stdout, "built\n");
    // Settings that cannot work are still refused.
    for (text, expected) in [
        (
            "kind = \"process\"\ncommand = [\"\"]\n",
            "starts with an empty program name",
        ),
        (
            "kind = \"native\"\nenv = { A = \"1\" }\n",
            "`env` and `env_allowlist` are for process and mcp pools only",
        ),
        (
            "kind = \"native\"\ncwd = \"/tmp\"\n",
            "`cwd` is for process, mcp and scorer pools only",
        ),
        (
            "kind = \"process\"\ncommand = [\"sh\"]\nenv = { \"A=B\" = \"x\" }\n",
            "`env` names \"A=B\": a variable's name cannot hold `=`",
        ),
        (
            "kind = \"mcp\"\ncommand = [\"server\"]\nenv_allowlist = [\"PATH\", \"\"]\n",
            "`env_allowlist` names \"\": a variable's name cannot be empty",
        ),
        (
            "kind = \"process\"\ncommand = [\"sh\"]\nstart_timeout = \"5m\"\n",
            "`start_timeout` is for mcp pools only",
        ),
    ] {
        let def: PoolDef = toml::from_str(text).unwrap();
        let err = def.start("named", &context).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{text}: {err}");
    }
    // With no folder anywhere (a default context), children run in ours.
    let def: PoolDef = toml::from_str("kind = \"process\"\ncommand = [\"pwd\"]\n").unwrap();
    let pool = def.start("named", &PoolContext::default()).await.unwrap();
    let outcome = pool.acquire().await.unwrap().call(request()).await.unwrap();
    let ours = std::env::current_dir().unwrap();
    assert_eq!(outcome.stdout.trim(), ours.display().to_string());
}

#[tokio::test]
async fn garbage_output_is_kept_lossily() {
    let outcome = run(sh(r"printf '\377\376{not json'"), request())
        .await
        .unwrap();
    assert_eq!(outcome.stdout, "\u{FFFD}\u{FFFD}{not json");
    assert!(outcome.json.is_none());
}

#[tokio::test]
async fn signal_death_is_a_crash_naming_the_signal_and_quoting_stderr() {
    let err = run(sh("kill -9 $$"), request()).await.unwrap_err();
    match err {
        SessionError::Crashed { reason, .. } => {
            assert_eq!(reason, "killed by SIGKILL (signal 9)");
        }
        other => panic!("expected Crashed, got {other}"),
    }
    // What it said last is why, as with a non-zero exit.
    let script = "echo one >&2; echo 'cannot map the atlas' >&2; kill -SEGV $$";
    let err = run(sh(script), request()).await.unwrap_err();
    match err {
        SessionError::Crashed { reason, .. } => assert!(
            reason.starts_with("killed by SIGSEGV (signal 11)")
                && reason.ends_with("; its stderr ends: one | cannot map the atlas"),
            "{reason}"
        ),
        other => panic!("expected Crashed, got {other}"),
    }
}

#[tokio::test]
async fn a_child_that_exits_in_time_is_not_failed_by_the_wait_for_its_pipes() {
    // A detached process keeps the pipes open, so they are read on for a moment after the
    // exit; that moment is not part of the call's timeout.
    // The child exits 500 ms in, inside the 600 ms timeout only if counted without the 200 ms
    // read after its exit. A loaded machine can start the shell late enough to leave the child
    // itself past the timeout: such a try is made again (a timeout that counted the read would
    // fail every try).
    let mut tries = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "setsid sleep 30 & echo $! > '{}'; sleep 0.5; echo '{{\"ok\": 1}}'",
            pid_file.display()
        );
        let request = request().with_timeout(Duration::from_millis(600));
        let result = run(sh(&script), request).await;
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
        match result {
            Err(e @ SessionError::Timeout { .. }) => tries.push(e.to_string()),
            other => {
                let outcome = other.unwrap();
                assert_eq!(outcome.json, Some(json!({ "ok": 1 })));
                break;
            }
        }
    }
    assert!(tries.len() < 3, "every try timed out: {tries:?}");
    // A child still running at its timeout is stopped there.
    let started = Instant::now();
    let request = self::request().with_timeout(Duration::from_millis(300));
    let err = run(sh("sleep 5"), request).await.unwrap_err();
    assert!(matches!(err, SessionError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_nul_byte_in_an_argument_or_variable_is_refused_naming_it() {
    let spec = ProcessSpec::new("echo", Vec::<String>::new());
    let request = ToolRequest::new("shell", json!({ "argv": ["ok", "a\u{0}b"] }));
    let err = run(spec.clone(), request).await.unwrap_err();
    assert!(
        matches!(err, SessionError::InvalidArguments { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("`argv[1]`: holds a NUL byte"),
        "{err}"
    );
    let request = ToolRequest::new("shell", json!({ "env": { "MODE": "a\u{0}" } }));
    let err = run(spec, request).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("`env` \"MODE\": its value holds a NUL byte"),
        "{err}"
    );
}

#[tokio::test]
async fn a_script_whose_interpreter_is_missing_names_the_interpreter() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tool.sh");
    std::fs::write(&script, "#!/no/such/python9 -u\nprint(1)\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = script.display().to_string();
    let err = run(ProcessSpec::new(program.clone(), ["x"]), request())
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::Spawn { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "{program} starts with `#!/no/such/python9 -u`, and its interpreter \
             /no/such/python9 does not exist"
        )),
        "{err}"
    );
    // Saved with Windows line endings, `/bin/sh` is looked for as `/bin/sh\r`.
    std::fs::write(&script, "#!/bin/sh\r\necho hi\r\n").unwrap();
    let err = run(ProcessSpec::new(program.clone(), ["x"]), request())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("starts with `#!/bin/sh` followed by a carriage return"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_program_is_a_spawn_error_naming_it() {
    let err = run(ProcessSpec::new("/no/such/tool", ["x"]), request())
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::Spawn { .. }));
    assert!(err.to_string().contains("/no/such/tool"));
}

#[tokio::test]
async fn a_missing_working_directory_is_named_not_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    for (cwd, problem) in [
        (dir.path().join("gone"), "does not exist"),
        (file, "is not a folder"),
    ] {
        let mut spec = sh("echo hi");
        spec.cwd = Some(cwd.clone());
        let err = run(spec, request()).await.unwrap_err().to_string();
        assert!(
            err.contains(&cwd.display().to_string()) && err.contains(problem),
            "{err}"
        );
    }
}

/// An argument over the system's limit (a large `{{context}}` rendered into argv, say) fails
/// the call with an error that says so and where large text goes instead.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_argument_over_the_systems_limit_says_what_to_do() {
    let big = "x".repeat(200 * 1024);
    let error = run(ProcessSpec::new("echo", [big.as_str()]), request())
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, SessionError::Spawn { .. }), "{text}");
    assert!(text.contains("over the system's limit"), "{text}");
    assert!(text.contains("stdin = \"{{context}}\""), "{text}");
}
