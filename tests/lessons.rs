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
        assert_eq!(lessons.suggest_fix("database is locked (code 517)"), None);
        lessons
            .record(failure(
                "lock",
                "database is locked (code 6)",
                "close the other writer",
                true,
            ))
            .await
            .unwrap();
    }
    let store = Store::open(dir.path().join("s.redb"), StoreConfig::default()).unwrap();
    let lessons = Lessons::new(store, Namespace::Global);
    assert_eq!(lessons.list(10).len(), 2);
    let suggestion = lessons.suggest_fix("database is locked (code 99)").unwrap();
    assert_eq!(suggestion.fix, "close the other writer");
    assert_eq!(suggestion.success_rate, 1.0);
}

#[test]
fn the_cli_records_and_suggests() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tetrarch"))
            .arg("--store")
            .arg(&store)
            .args(args)
            .output()
            .unwrap()
    };
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
    let out = run(&["lessons", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}
