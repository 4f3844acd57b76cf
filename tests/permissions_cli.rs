//! The `tetrarch perms` commands, run as a user would (built binary).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/permissions/settings.json"
);

fn tetrarch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh directory under the target dir (tests run offline, no temp crate).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("perms-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn check_prints_verdict_and_rule() {
    let out = tetrarch(&[
        "perms",
        "check",
        FIXTURE,
        "Bash",
        "git status && rm -rf build",
        "--cwd",
        "/proj",
        "--home",
        "/home/u",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out).trim(), "deny\tdeny[0] Bash(rm -rf *)");
    let out = tetrarch(&[
        "perms",
        "check",
        FIXTURE,
        "Bash",
        "git status",
        "--cwd",
        "/proj",
        "--home",
        "/home/u",
    ]);
    assert!(
        stdout(&out).starts_with("allow\tallow["),
        "{}",
        stdout(&out)
    );
    let out = tetrarch(&[
        "perms",
        "check",
        FIXTURE,
        "Bash",
        "make install",
        "--cwd",
        "/proj",
        "--home",
        "/home/u",
    ]);
    assert_eq!(stdout(&out).trim(), "ask\t(no rule matched)");
    let out = tetrarch(&[
        "perms",
        "check",
        FIXTURE,
        "Read",
        "/proj/secrets/k.pem",
        "--cwd",
        "/proj",
        "--home",
        "/home/u",
    ]);
    assert!(stdout(&out).starts_with("deny\tdeny["), "{}", stdout(&out));
    // INPUT may be the tool's whole JSON input.
    let out = tetrarch(&[
        "perms",
        "check",
        FIXTURE,
        "Bash",
        r#"{"command": "git status"}"#,
        "--cwd",
        "/proj",
        "--home",
        "/home/u",
    ]);
    assert!(stdout(&out).starts_with("allow\t"), "{}", stdout(&out));
}

#[test]
fn bad_settings_fail_with_the_rule_named() {
    let dir = scratch("bad");
    let bad = dir.join("settings.json");
    std::fs::write(
        &bad,
        r#"{"permissions": {"allow": ["Bash(ls)"], "deny": ["Bash(rm"]}}"#,
    )
    .unwrap();
    let out = tetrarch(&["perms", "check", bad.to_str().unwrap(), "Bash", "ls"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("deny[0] `Bash(rm`") && err.contains("unbalanced"),
        "{err}"
    );
    std::fs::write(&bad, "not json").unwrap();
    let out = tetrarch(&["perms", "consolidate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
}

#[test]
fn consolidate_then_diff() {
    let dir = scratch("flow");
    let (new, report) = (dir.join("new.json"), dir.join("report.md"));
    let out = tetrarch(&[
        "perms",
        "consolidate",
        FIXTURE,
        "--out",
        new.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("rules: "));
    let report_text = std::fs::read_to_string(&report).unwrap();
    assert!(
        report_text.contains("rewritten as `Bash(git status *)`"),
        "{report_text}"
    );
    assert!(!report_text.contains("Newly allowed"));

    let corpus = dir.join("corpus.jsonl");
    std::fs::write(
        &corpus,
        [
            r#"{"tool": "Bash", "input": {"command": "git log --oneline -3"}}"#,
            r#"{"tool": "Bash", "input": "cmake --build build --target tools"}"#,
            r#"{"tool": "Bash", "input": "cargo build && rm -rf /"}"#,
            r#"{"tool": "Read", "input": {"file_path": "shaders/new.frag"}}"#,
            r#"{"tool": "WebFetch", "input": {"url": "https://api.github.com/repos"}}"#,
            r#"{"tool": "mcp__github__list_issues", "input": {}}"#,
            "",
        ]
        .join("\n"),
    )
    .unwrap();
    let diff = |new: &Path| {
        tetrarch(&[
            "perms",
            "diff",
            FIXTURE,
            new.to_str().unwrap(),
            "--corpus",
            corpus.to_str().unwrap(),
            "--cwd",
            "/proj",
            "--home",
            "/home/u",
        ])
    };
    let same = diff(&new);
    assert_eq!(same.status.code(), Some(0), "{}", stdout(&same));
    assert!(stdout(&same).contains("6 calls replayed, 0 decisions differ"));

    let widened = dir.join("widened.json");
    let out = tetrarch(&[
        "perms",
        "consolidate",
        FIXTURE,
        "--widen",
        "--out",
        widened.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let default_report = std::fs::read_to_string(dir.join("widened.report.md")).unwrap();
    assert!(
        default_report.contains("Newly allowed") && default_report.contains("`Bash(cmake *)`"),
        "{default_report}"
    );
    let changed = diff(&widened);
    assert_eq!(changed.status.code(), Some(1), "{}", stdout(&changed));
    // `cmake --build build --target tools` was asked before, allowed after.
    assert!(
        stdout(&changed).contains("line 2: Bash"),
        "{}",
        stdout(&changed)
    );
    assert!(
        stdout(&changed).contains("new: allow"),
        "{}",
        stdout(&changed)
    );

    std::fs::write(&corpus, "{\"tool\": 3}\n").unwrap();
    assert_eq!(diff(&new).status.code(), Some(2));
}

#[test]
fn consolidate_refuses_a_rule_that_loading_refuses() {
    let dir = scratch("uncompilable");
    let bad = dir.join("settings.json");
    // Parses as a rule, but the glob does not compile; `Read(src/**)` "covers" it.
    std::fs::write(
        &bad,
        r#"{"permissions": {"allow": ["Read(src/**)", "Read(src/[)"]}}"#,
    )
    .unwrap();
    let out_file = dir.join("out.json");
    for widen in [false, true] {
        let mut args = vec![
            "perms",
            "consolidate",
            bad.to_str().unwrap(),
            "--out",
            out_file.to_str().unwrap(),
        ];
        if widen {
            args.push("--widen");
        }
        let out = tetrarch(&args);
        assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("allow[1] `Read(src/[)`") && err.contains("invalid path pattern"),
            "{err}"
        );
        assert!(
            !out_file.exists(),
            "nothing is written for a file that does not load"
        );
    }
    // `check` (loading) fails with the same rule named.
    let out = tetrarch(&["perms", "check", bad.to_str().unwrap(), "Read", "src/a"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow[1] `Read(src/[)`"));
}

/// `consolidate` writes beside its input, never over it, and writes its two files together or
/// not at all; a broken rule's error names the file it is in (`diff` reads two).
#[test]
fn consolidate_never_overwrites_its_input_nor_writes_half() {
    let dir = scratch("overwrite");
    let settings = dir.join("settings.json");
    std::fs::copy(FIXTURE, &settings).unwrap();
    let original = std::fs::read(&settings).unwrap();
    let s = settings.to_str().unwrap();
    let other = dir.join("other.json");
    let o = other.to_str().unwrap();
    for (args, refused) in [
        (vec!["--out", s], "--out"),
        (vec!["--report", s], "--report"),
        (vec!["--out", o, "--report", o], "--report"),
    ] {
        let out = tetrarch(&[&["perms", "consolidate", s][..], &args].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stdout(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(refused) && err.contains("refusing to overwrite it"),
            "{args:?}: {err}"
        );
        assert_eq!(std::fs::read(&settings).unwrap(), original);
        assert!(!other.exists());
    }

    let missing = dir.join("missing").join("report.md");
    let out = tetrarch(&[
        "perms",
        "consolidate",
        s,
        "--out",
        o,
        "--report",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("report.md"));
    assert!(!other.exists(), "the settings file without its report");
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["settings.json"]);

    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"permissions": {"deny": ["Read(src/[)"]}}"#).unwrap();
    let corpus = dir.join("corpus.jsonl");
    std::fs::write(&corpus, "{\"tool\": \"Bash\", \"input\": \"ls\"}\n").unwrap();
    let out = tetrarch(&[
        "perms",
        "diff",
        s,
        bad.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("settings file {}: rule deny[0]", bad.display())),
        "{err}"
    );
}
