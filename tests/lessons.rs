//! Error→fix learning: recall on paraphrased errors, silence on unrelated ones.
#![allow(clippy::unwrap_used)]

use tetrarch::lessons::{Failure, Lessons};
use tetrarch::store::{Namespace, Store, StoreConfig};

fn failure(error_type: &str, message: &str, fix: &str, worked: bool) -> Failure {
    Failure {
        error_type: error_type.into(),
        message: message.into(),
        context: "render task".into(),
        fix: Some(fix.into()),
        worked: Some(worked),
    }
}

async fn seeded(dir: &tempfile::TempDir) -> Lessons {
    let store = Store::open(dir.path().join("s.redb"), StoreConfig::default()).unwrap();
    let lessons = Lessons::new(store, Namespace::project("render").unwrap());
    let history = [
        failure(
            "cuda_oom",
            "CUDA error: out of memory allocating 2147483648 bytes on device 0 at /home/ana/vol/src/raymarch.cu:88",
            "reduce --tile-size to 256",
            true,
        ),
        failure(
            "cuda_oom",
            "CUDA error: out of memory allocating 1073741824 bytes on device 1 at /srv/build/src/raymarch.cu:91",
            "reduce --tile-size to 256",
            true,
        ),
        failure(
            "cuda_oom",
            "CUDA error: out of memory allocating 536870912 bytes on device 0 at /tmp/x/raymarch.cu:12",
            "restart the driver",
            false,
        ),
        failure(
            "missing_file",
            "No such file or directory: /data/refs/plasma_ref.exr",
            "run the reference render first",
            true,
        ),
        failure(
            "shader_compile",
            "ptxas error: entry function 'flip_cols' uses too much shared data (0xc000 bytes, 0xc000 max)",
            "lower the tile height",
            true,
        ),
    ];
    for f in history {
        lessons.record(f).await.unwrap();
    }
    lessons
}

#[tokio::test]
async fn paraphrased_errors_get_the_fix_that_worked() {
    let dir = tempfile::tempdir().unwrap();
    let lessons = seeded(&dir).await;
    let suggestion = lessons
        .suggest_fix("CUDA error: out of memory allocating 4294967296 bytes on device 3 at /opt/job-77/src/raymarch.cu:140")
        .unwrap();
    assert_eq!(suggestion.fix, "reduce --tile-size to 256");
    assert_eq!(suggestion.attempts, 2);
    assert_eq!(suggestion.success_rate, 1.0);
    assert!(suggestion.similarity > 0.9, "{suggestion:?}");

    let suggestion = lessons
        .suggest_fix("No such file or directory: /mnt/other/refs/smoke_ref.exr")
        .unwrap();
    assert_eq!(suggestion.fix, "run the reference render first");
}

#[tokio::test]
async fn unrelated_errors_get_no_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let lessons = seeded(&dir).await;
    for message in [
        "permission denied: git push to origin main",
        "connection refused while fetching the asset index",
        "thread 'main' panicked at index out of bounds",
    ] {
        assert_eq!(lessons.suggest_fix(message), None, "{message}");
    }
}

#[tokio::test]
async fn a_fix_that_never_worked_is_not_suggested_and_lessons_persist() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path().join("s.redb"), StoreConfig::default()).unwrap();
        let lessons = Lessons::new(store, Namespace::Global);
        lessons
            .record(failure(
                "lock",
                "database is locked (code 5)",
                "wait and retry",
                false,
            ))
            .await
            .unwrap();
        // The fix never worked, so nothing is suggested (a code is part of the error: same code).
        assert_eq!(lessons.suggest_fix("database is locked (code 5)"), None);
        lessons
            .record(failure(
                "lock",
                "database is locked (code 5)",
                "close the other writer",
                true,
            ))
            .await
            .unwrap();
    }
    let store = Store::open(dir.path().join("s.redb"), StoreConfig::default()).unwrap();
    let lessons = Lessons::new(store, Namespace::Global);
    assert_eq!(lessons.list(10).len(), 2);
    let suggestion = lessons
        .suggest_fix("database is locked at 10:02 (code 5)")
        .unwrap();
    assert_eq!(suggestion.fix, "close the other writer");
    assert_eq!(suggestion.success_rate, 1.0);
}

/// Runs `tetrarch --store STORE ARGS…`.
fn tetrarch(store: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_cli_records_and_suggests() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    let run = |args: &[&str]| tetrarch(&store, args);
    let out = run(&[
        "lessons",
        "record",
        "--type",
        "timeout",
        "--message",
        "tool render_volume timed out after 30s on frame 12",
        "--fix",
        "raise timeout to 120s",
        "--worked",
        "true",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "lessons",
        "suggest",
        "tool render_volume timed out after 45s on frame 300",
        "--json",
    ]);
    assert!(out.status.success());
    let suggestion: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(suggestion["fix"], "raise timeout to 120s");
    let out = run(&["lessons", "suggest", "disk quota exceeded"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no known fix for a similar error"
    );
    // --json: `null` on stdout, and the same exit status as without it.
    let out = run(&["lessons", "suggest", "disk quota exceeded", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "null");
    let out = run(&["lessons", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

fn lessons_in(dir: &tempfile::TempDir) -> Lessons {
    let store = Store::open(dir.path().join("s.redb"), StoreConfig::default()).unwrap();
    Lessons::new(store, Namespace::Global)
}

async fn record_all(lessons: &Lessons, history: &[(&str, &str, bool)]) {
    for (message, fix, worked) in history {
        lessons
            .record(failure("shader", message, fix, *worked))
            .await
            .unwrap();
    }
}

const CLOSE: &str = "shader cache corrupted while loading pipeline state for pass bloom";
const LOOSE: &str = "shader cache corrupted while loading pipeline state";

#[tokio::test]
async fn the_most_similar_error_decides_not_the_best_fix_of_any_similar_error() {
    let dir = tempfile::tempdir().unwrap();
    let lessons = lessons_in(&dir);
    record_all(
        &lessons,
        &[
            // The closer error: its fix worked once in two tries; another never worked.
            (CLOSE, "clear the shader cache", true),
            (CLOSE, "clear the shader cache", false),
            (CLOSE, "restart the compositor", false),
            // A less similar error whose fix always worked.
            (LOOSE, "rebuild the pipeline", true),
            (LOOSE, "rebuild the pipeline", true),
            (LOOSE, "rebuild the pipeline", true),
        ],
    )
    .await;
    let query = "shader cache corrupted while loading pipeline state for pass glow";
    let to_close = tetrarch::lessons::similarity(
        &tetrarch::lessons::normalise_message(query),
        &tetrarch::lessons::normalise_message(CLOSE),
    );
    let to_loose = tetrarch::lessons::similarity(
        &tetrarch::lessons::normalise_message(query),
        &tetrarch::lessons::normalise_message(LOOSE),
    );
    assert!(
        to_close > to_loose && to_loose >= 0.6,
        "{to_close} {to_loose}"
    );

    let s = lessons.suggest_fix(query).unwrap();
    assert_eq!(s.fix, "clear the shader cache", "{s:?}");
    assert_eq!(s.similarity, to_close);
    assert_eq!(s.success_rate, 0.5);
    assert_eq!(s.attempts, 2);
    // The example is a lesson of that error where the fix worked.
    let example = lessons
        .list(10)
        .into_iter()
        .find(|l| l.id == s.example)
        .unwrap();
    assert_eq!(example.failure.message, CLOSE);
    assert_eq!(example.failure.worked, Some(true));

    // Asked about the other error, its own fix comes back.
    let s = lessons.suggest_fix(LOOSE).unwrap();
    assert_eq!(s.fix, "rebuild the pipeline");
    assert_eq!((s.similarity, s.success_rate, s.attempts), (1.0, 1.0, 3));
}

#[tokio::test]
async fn ties_in_similarity_go_to_the_error_tried_more_and_failed_fixes_are_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let lessons = lessons_in(&dir);
    record_all(
        &lessons,
        &[
            (
                "texture upload failed for atlas mips",
                "halve the atlas",
                true,
            ),
            (
                "texture upload failed for atlas tiles",
                "split the upload",
                true,
            ),
            (
                "texture upload failed for atlas tiles",
                "split the upload",
                true,
            ),
            (
                "texture upload failed for atlas tiles",
                "split the upload",
                false,
            ),
        ],
    )
    .await;
    // Both errors are 5/6 similar; the second has three attempts to the first's one.
    let s = lessons
        .suggest_fix("texture upload failed for atlas")
        .unwrap();
    assert_eq!(s.fix, "split the upload", "{s:?}");
    assert_eq!(s.attempts, 3);
    assert!((s.success_rate - 2.0 / 3.0).abs() < 1e-9);
    assert!((s.similarity - 5.0 / 6.0).abs() < 1e-9);

    // The closest error only ever had a fix that failed: it has nothing to offer, and the
    // next closest error's working fix is suggested.
    record_all(
        &lessons,
        &[("texture upload failed for atlas", "reboot", false)],
    )
    .await;
    let s = lessons
        .suggest_fix("texture upload failed for atlas")
        .unwrap();
    assert_eq!(s.fix, "split the upload", "{s:?}");
}

#[tokio::test]
async fn nothing_is_suggested_below_the_threshold_and_the_threshold_itself_counts() {
    let dir = tempfile::tempdir().unwrap();
    let lessons = lessons_in(&dir);
    record_all(&lessons, &[(CLOSE, "clear the shader cache", true)]).await;
    let query = "shader cache corrupted while loading pipeline state for pass glow";
    let score = tetrarch::lessons::similarity(
        &tetrarch::lessons::normalise_message(query),
        &tetrarch::lessons::normalise_message(CLOSE),
    );
    assert!(score > 0.6 && score < 1.0, "{score}");
    let at = lessons.clone().with_threshold(score).suggest_fix(query);
    assert_eq!(at.map(|s| s.similarity), Some(score));
    let above = lessons
        .clone()
        .with_threshold(score + 1e-9)
        .suggest_fix(query);
    assert_eq!(above, None);
    // The default threshold (0.6) keeps out an error sharing only a few words.
    assert_eq!(lessons.suggest_fix("shader cache full"), None);
}

#[tokio::test]
async fn a_megabyte_of_error_output_is_recorded_by_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let lessons = lessons_in(&dir);
    // One line of what matters, then a megabyte of noise (over the store's 1 MiB field limit
    // once escaped into the lesson's context; it was dropped with only a warning).
    let message = format!("{CLOSE}\n{}", "é".repeat(600_000));
    lessons
        .record(failure("shader", &message, "clear the shader cache", true))
        .await
        .unwrap();
    let recorded = lessons.list(10);
    assert_eq!(recorded.len(), 1);
    let kept = &recorded[0].failure.message;
    assert!(kept.len() <= tetrarch::lessons::MAX_MESSAGE_BYTES && kept.starts_with(CLOSE));
    let found = lessons.suggest_fix(CLOSE).unwrap();
    assert_eq!(found.fix, "clear the shader cache");
}

#[tokio::test]
async fn a_long_error_with_a_varied_tail_matches_its_own_lesson() {
    let dir = tempfile::tempdir().unwrap();
    let lessons = lessons_in(&dir);
    // Symbol names past the kept 16 KiB: with the whole query normalised, they were words the
    // lesson never had, and the error no longer reached the threshold against itself.
    let symbols: Vec<String> = (0..6000).map(|i| format!("sym_{i}_q")).collect();
    let message = format!("linker error: undefined references: {}", symbols.join(" "));
    assert!(message.len() > 3 * tetrarch::lessons::MAX_MESSAGE_BYTES);
    lessons
        .record(failure("link", &message, "link libfoo", true))
        .await
        .unwrap();
    let found = lessons.suggest_fix(&message).unwrap();
    assert_eq!(found.fix, "link libfoo");
    assert_eq!(found.similarity, 1.0);
}

#[tokio::test]
async fn failures_recorded_without_a_fix_do_not_hide_a_known_fix() {
    let dir = tempfile::tempdir().unwrap();
    let lessons = lessons_in(&dir);
    lessons
        .record(failure(
            "render",
            "render failed: texture atlas overflow in pass 3",
            "raise the atlas size",
            true,
        ))
        .await
        .unwrap();
    // What the Orchestrator records each time a task fails with no fix declared.
    for pass in 0..210 {
        let mut unfixed = failure(
            "render",
            &format!("render failed: texture atlas overflow in pass {pass}"),
            "",
            false,
        );
        unfixed.fix = None;
        unfixed.worked = None;
        lessons.record(unfixed).await.unwrap();
    }
    let found = lessons
        .suggest_fix("render failed: texture atlas overflow in pass 7")
        .unwrap();
    assert_eq!(found.fix, "raise the atlas size");
}

#[tokio::test]
async fn a_blank_fix_or_a_verdict_without_a_fix_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lessons = lessons_in(&dir);
    let blank = failure("shader", CLOSE, "  ", true);
    assert!(matches!(
        lessons.record(blank).await,
        Err(tetrarch::lessons::LessonError::EmptyFix)
    ));
    let mut no_fix = failure("shader", CLOSE, "x", true);
    no_fix.fix = None;
    assert!(matches!(
        lessons.record(no_fix).await,
        Err(tetrarch::lessons::LessonError::WorkedWithoutFix)
    ));
    // Nothing was stored, and a blank fix is never suggested.
    assert!(lessons.list(10).is_empty());
    assert_eq!(lessons.suggest_fix(CLOSE), None);
}

#[tokio::test]
async fn a_blank_error_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lessons = lessons_in(&dir);
    assert!(matches!(
        lessons.record(failure(" ", CLOSE, "x", true)).await,
        Err(tetrarch::lessons::LessonError::EmptyErrorType)
    ));
    assert!(lessons.list(10).is_empty());
}

#[tokio::test]
async fn a_fix_is_not_suggested_for_an_error_with_another_status_or_http_code() {
    let dir = tempfile::tempdir().unwrap();
    let lessons = lessons_in(&dir);
    record_all(
        &lessons,
        &[
            ("worker exited with status 137", "lower batch size", true),
            ("HTTP 404 Not Found", "check the asset URL", true),
        ],
    )
    .await;
    assert_eq!(lessons.suggest_fix("worker exited with status 2"), None);
    assert_eq!(lessons.suggest_fix("HTTP 500 Not Found"), None);
    // The same codes still find their fixes, whatever else varies.
    let oom = lessons
        .suggest_fix("worker exited with status 137")
        .unwrap();
    assert_eq!(
        (oom.fix.as_str(), oom.similarity),
        ("lower batch size", 1.0)
    );
    let missing = lessons.suggest_fix("http 404 not found").unwrap();
    assert_eq!(missing.fix, "check the asset URL");
}

#[test]
fn the_cli_refuses_a_blank_error_type_or_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    let run = |args: &[&str]| tetrarch(&store, args);
    let out = run(&[
        "lessons",
        "record",
        "--type",
        "",
        "--message",
        "worker exited with status 137",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-empty error type"));
    let out = run(&[
        "lessons",
        "record",
        "--type",
        "oom",
        "--message",
        "worker exited with status 137",
    ]);
    assert!(out.status.success());
    let out = run(&["lessons", "suggest", " "]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the error message is empty"));
}

/// A lesson recorded before codes were kept (its stored text says `exit code <num>`) still
/// matches the same error: it is normalised again from its message when read.
#[tokio::test]
async fn a_lesson_recorded_before_codes_were_kept_still_matches() {
    use tetrarch::store::{MemoryType, NewMemory};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.redb"), StoreConfig::default()).unwrap();
    let namespace = Namespace::project("render").unwrap();
    // Exactly what the earlier `Lessons::record` wrote.
    let mut old = NewMemory::new(namespace.clone(), "exit code <num>");
    old.memory_type = MemoryType::BugFix;
    old.summary = Some("rm -rf target && retry".into());
    old.keywords = vec!["process_error".into()];
    old.tags = vec!["lesson".into(), "lesson-fix".into()];
    old.context = Some(
        serde_json::json!({
            "error_type": "process_error", "message": "exit code 1", "context": "build",
            "fix": "rm -rf target && retry", "worked": true,
        })
        .to_string(),
    );
    store.store(old).await.unwrap();
    let lessons = Lessons::new(store, namespace);
    let found = lessons.suggest_fix("exit code 1").unwrap();
    assert_eq!(
        (found.fix.as_str(), found.similarity),
        ("rm -rf target && retry", 1.0)
    );
    assert_eq!(lessons.suggest_fix("exit code 2"), None);
}

/// A lesson the previous version recorded (tag `lesson-codes`) read a negative code as a
/// number (`code - <num>`): it is normalised again when read, so `-9`'s fix is not offered
/// for `-11`.
#[tokio::test]
async fn a_lesson_recorded_with_an_unsigned_code_is_normalised_again() {
    use tetrarch::store::{MemoryType, NewMemory};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.redb"), StoreConfig::default()).unwrap();
    let namespace = Namespace::project("render").unwrap();
    // Exactly what the previous `Lessons::record` wrote.
    let mut old = NewMemory::new(namespace.clone(), "worker process exited with code - <num>");
    old.memory_type = MemoryType::BugFix;
    old.summary = Some("raise the memory limit".into());
    old.keywords = vec!["crash".into()];
    old.tags = vec!["lesson".into(), "lesson-codes".into(), "lesson-fix".into()];
    old.context = Some(
        serde_json::json!({
            "error_type": "crash", "message": "worker process exited with code -9",
            "context": "render", "fix": "raise the memory limit", "worked": true,
        })
        .to_string(),
    );
    store.store(old).await.unwrap();
    let lessons = Lessons::new(store, namespace);
    let found = lessons
        .suggest_fix("worker process exited with code -9")
        .unwrap();
    assert_eq!(
        (found.fix.as_str(), found.similarity),
        ("raise the memory limit", 1.0)
    );
    assert_eq!(
        lessons.suggest_fix("worker process exited with code -11"),
        None
    );
    assert_eq!(
        lessons.suggest_fix("worker process exited with code 9"),
        None
    );
}

/// An error recorded more times than a search's first candidates (200) keeps its whole tally:
/// the fix that worked once, first, is still found behind 250 failed tries of another fix, and
/// each fix's count is complete.
#[tokio::test]
async fn a_frequent_error_keeps_its_whole_tally() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.redb"), StoreConfig::default()).unwrap();
    let lessons = Lessons::new(store, Namespace::project("render").unwrap());
    let oom = |job: usize| format!("worker ran out of memory on job {job}");
    lessons
        .record(failure("oom", &oom(1), "use swap", true))
        .await
        .unwrap();
    for job in 2..252 {
        let worked = job > 201; // 200 failures, then 50 successes
        lessons
            .record(failure("oom", &oom(job), "add ram", worked))
            .await
            .unwrap();
    }
    let found = lessons.suggest_fix(&oom(999)).unwrap();
    // "add ram": 50 of 250 (smoothed 51/252); "use swap": 1 of 1 (smoothed 2/3).
    assert_eq!(
        (found.fix.as_str(), found.attempts, found.success_rate),
        ("use swap", 1, 1.0)
    );
    let with_more_swap_failures = {
        for job in 252..262 {
            lessons
                .record(failure("oom", &oom(job), "use swap", false))
                .await
                .unwrap();
        }
        lessons.suggest_fix(&oom(999)).unwrap()
    };
    // "use swap": 1 of 11 (smoothed 2/13 = 0.154); "add ram": 50 of 250 (0.202).
    assert_eq!(
        (
            with_more_swap_failures.fix.as_str(),
            with_more_swap_failures.attempts
        ),
        ("add ram", 250)
    );
    assert!((with_more_swap_failures.success_rate - 0.2).abs() < 1e-9);
}

/// Messages that fold to the same words are one error with one tally: five successes of a fix
/// recorded for `Straße gesperrt` count when the same error was also recorded in capitals.
#[tokio::test]
async fn errors_that_fold_alike_share_their_tally() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.redb"), StoreConfig::default()).unwrap();
    let lessons = Lessons::new(store, Namespace::project("roads").unwrap());
    for _ in 0..5 {
        lessons
            .record(failure("road", "Straße gesperrt", "umleiten", true))
            .await
            .unwrap();
        lessons
            .record(failure("road", "STRASSE GESPERRT", "hupen", false))
            .await
            .unwrap();
    }
    lessons
        .record(failure("road", "STRASSE GESPERRT", "warten", true))
        .await
        .unwrap();
    let found = lessons.suggest_fix("Straße gesperrt").unwrap();
    assert_eq!((found.fix.as_str(), found.attempts), ("umleiten", 5));
}
