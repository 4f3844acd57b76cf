//! The `scorer` session kind: metrics as tools, bad images as failed outcomes, pooling.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tetrarch::scoring::{Backend, Device, Metric, RgbImage, Scorer, ScorerConfig};
use tetrarch::session::{
    Pool, PoolConfig, ScorerFactory, ScorerSession, ScorerSpec, Session, SessionError, ToolRequest,
};

/// Writes a `width × height` PNG whose pixels come from `f`.
fn png(
    dir: &Path,
    name: &str,
    width: u32,
    height: u32,
    f: impl Fn(u32, u32) -> [u8; 3],
) -> PathBuf {
    let path = dir.join(name);
    image::RgbImage::from_fn(width, height, |x, y| image::Rgb(f(x, y)))
        .save(&path)
        .unwrap();
    path
}

fn gradient(x: u32, y: u32) -> [u8; 3] {
    [
        (x * 4 % 256) as u8,
        (y * 4 % 256) as u8,
        ((x + y) % 256) as u8,
    ]
}

fn darker(x: u32, y: u32) -> [u8; 3] {
    gradient(x, y).map(|v| v / 2 + 10)
}

/// A reference and a test image (a darker copy) in a temp dir.
fn pair() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let reference = png(dir.path(), "ref.png", 64, 48, gradient);
    let test = png(dir.path(), "test.png", 64, 48, darker);
    (dir, reference, test)
}

async fn cpu_session(base: Option<&Path>) -> ScorerSession {
    let spec = ScorerSpec {
        base_dir: base.map(Path::to_path_buf),
        warmup_size: Some((32, 32)),
        ..ScorerSpec::new(Device::Cpu)
    };
    ScorerSession::start(&spec).await.unwrap()
}

fn call(metric: &str, args: serde_json::Value) -> ToolRequest {
    ToolRequest::new(metric, args).with_timeout(Duration::from_secs(60))
}

fn expected(metric: Metric, reference: &Path, test: &Path) -> tetrarch::scoring::Score {
    let scorer = Scorer::new(ScorerConfig {
        device: Device::Cpu,
        ..ScorerConfig::default()
    })
    .unwrap();
    let r = RgbImage::open(reference).unwrap();
    let t = RgbImage::open(test).unwrap();
    scorer.score(metric, &r, &t, false).unwrap()
}

#[tokio::test]
async fn flip_answers_the_scorers_value_and_statistics() {
    let (dir, reference, test) = pair();
    let mut session = cpu_session(Some(dir.path())).await;
    assert_eq!(session.backend(), Backend::Cpu);
    let outcome = session
        .call(call(
            "flip",
            json!({"reference": "ref.png", "test": "test.png"}),
        ))
        .await
        .unwrap();
    assert_eq!(outcome.exit_status, Some(0), "{outcome:?}");
    let want = expected(Metric::Flip, &reference, &test);
    let stats = want.flip.unwrap();
    let json = outcome.json.unwrap();
    assert!(want.value > 0.01, "the pair should differ: {}", want.value);
    assert_eq!(json["metric"], "flip");
    assert_eq!(json["device"], "cpu");
    assert_eq!(json["value"].as_f64().unwrap(), want.value);
    assert_eq!(json["mean"].as_f64().unwrap(), stats.mean);
    assert_eq!(json["median"].as_f64().unwrap(), stats.weighted_median);
    assert_eq!(json["q1"].as_f64().unwrap(), stats.weighted_q1);
    assert_eq!(json["q3"].as_f64().unwrap(), stats.weighted_q3);
    assert_eq!(json["max"].as_f64().unwrap(), stats.max);
    assert_eq!(json["reference"], "ref.png");
    assert_eq!(
        outcome.stdout,
        format!("flip {:.6} on cpu: ref.png vs test.png\n", want.value)
    );
    assert!(outcome.stderr.is_empty());
}

#[tokio::test]
async fn every_metric_matches_the_scorer() {
    let (dir, reference, test) = pair();
    // Absolute paths work without a base folder.
    let mut session = cpu_session(None).await;
    let args = json!({"reference": reference, "test": test});
    for (tool, metric) in [
        ("hdr-flip", Metric::HdrFlip),
        ("ssim", Metric::Ssim),
        ("psnr", Metric::Psnr),
    ] {
        let outcome = session.call(call(tool, args.clone())).await.unwrap();
        assert_eq!(outcome.exit_status, Some(0), "{tool}: {outcome:?}");
        let json = outcome.json.unwrap();
        let want = expected(metric, &reference, &test);
        assert_eq!(json["metric"], tool);
        assert_eq!(json["value"].as_f64().unwrap(), want.value, "{tool}");
        if let Some(p) = want.psnr {
            assert_eq!(json["mse"].as_f64().unwrap(), p.mse);
        }
    }
    // MS-SSIM needs a larger image (5 scales).
    let big_ref = png(dir.path(), "big_ref.png", 192, 192, gradient);
    let big_test = png(dir.path(), "big_test.png", 192, 192, darker);
    let outcome = session
        .call(call(
            "msssim",
            json!({"reference": big_ref, "test": big_test}),
        ))
        .await
        .unwrap();
    let want = expected(Metric::Msssim, &big_ref, &big_test);
    assert_eq!(outcome.json.unwrap()["value"].as_f64().unwrap(), want.value);
}

#[tokio::test]
async fn identical_images_score_perfectly() {
    let (dir, reference, _) = pair();
    let mut session = cpu_session(Some(dir.path())).await;
    let args = json!({"reference": reference, "test": reference});
    let flip = session.call(call("flip", args.clone())).await.unwrap();
    assert_eq!(flip.json.unwrap()["value"].as_f64().unwrap(), 0.0);
    let ssim = session.call(call("ssim", args.clone())).await.unwrap();
    assert!((ssim.json.unwrap()["value"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    // Infinite PSNR: the largest finite number in JSON, `inf` on stdout.
    let psnr = session.call(call("psnr", args)).await.unwrap();
    assert!(psnr.stdout.starts_with("psnr inf"), "{}", psnr.stdout);
    assert_eq!(psnr.json.unwrap()["value"].as_f64().unwrap(), f64::MAX);
}

#[tokio::test]
async fn writes_the_error_map_when_asked() {
    let (dir, _, _) = pair();
    let mut session = cpu_session(Some(dir.path())).await;
    let outcome = session
        .call(call(
            "flip",
            json!({"reference": "ref.png", "test": "test.png", "map": "maps/err.png"}),
        ))
        .await
        .unwrap();
    assert_eq!(outcome.exit_status, Some(0), "{outcome:?}");
    assert_eq!(outcome.json.unwrap()["map"], "maps/err.png");
    let map = image::open(dir.path().join("maps/err.png")).unwrap();
    assert_eq!((map.width(), map.height()), (64, 48));

    let err = session
        .call(call(
            "ssim",
            json!({"reference": "ref.png", "test": "test.png", "map": "m.png"}),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SessionError::InvalidArguments { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn bad_images_fail_the_call_naming_the_file_and_the_session_stays_usable() {
    let (dir, _, _) = pair();
    let mut session = cpu_session(Some(dir.path())).await;
    let bytes = std::fs::read(dir.path().join("test.png")).unwrap();
    std::fs::write(dir.path().join("cut.png"), &bytes[..bytes.len() / 2]).unwrap();
    png(dir.path(), "small.png", 32, 48, gradient);
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    std::fs::create_dir(dir.path().join("folder.png")).unwrap();
    // A FIFO nobody writes to blocked the job (and its slot) for ever.
    let fifo = std::process::Command::new("mkfifo")
        .arg(dir.path().join("fifo.png"))
        .status()
        .unwrap();
    assert!(fifo.success());

    for (test, words) in [
        ("missing.png", vec!["missing.png", "cannot read"]),
        ("cut.png", vec!["cut.png"]),
        ("small.png", vec!["small.png", "32"]),
        ("notes.txt", vec!["notes.txt"]),
        ("folder.png", vec!["folder.png", "not a regular file"]),
        ("fifo.png", vec!["fifo.png", "not a regular file"]),
    ] {
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            session.call(call("flip", json!({"reference": "ref.png", "test": test}))),
        )
        .await
        .unwrap_or_else(|_| panic!("{test}: the call did not return"))
        .unwrap();
        assert_eq!(outcome.exit_status, Some(1), "{test}: {outcome:?}");
        assert!(outcome.json.is_none());
        for word in words {
            assert!(outcome.stderr.contains(word), "{test}: {}", outcome.stderr);
        }
    }
    session.health_check().await.unwrap();
    assert!(session.is_open());
    let ok = session
        .call(call(
            "flip",
            json!({"reference": "ref.png", "test": "test.png"}),
        ))
        .await
        .unwrap();
    assert_eq!(ok.exit_status, Some(0));
}

#[tokio::test]
async fn unknown_metrics_and_bad_arguments_are_session_errors() {
    let mut session = cpu_session(None).await;
    let err = session
        .call(call(
            "lpips",
            json!({"reference": "a.png", "test": "b.png"}),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::UnknownTool { .. }), "{err}");
    assert!(err.to_string().contains("lpips"));
    assert!(!err.breaks_session());

    let err = session
        .call(call("flip", json!({"reference": "a.png"})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing `test`"), "{err}");
    let err = session
        .call(call("flip", json!({"reference": 3, "test": "b.png"})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`reference`"), "{err}");
}

#[tokio::test]
async fn a_bad_ppd_is_refused() {
    let spec = ScorerSpec {
        ppd: 0.0,
        ..ScorerSpec::new(Device::Cpu)
    };
    let err = ScorerSession::start(&spec).await.unwrap_err();
    assert!(matches!(err, SessionError::InvalidConfig { .. }), "{err}");
    // Far too large: refused before any filter is built.
    let spec = ScorerSpec {
        ppd: 1e12,
        ..ScorerSpec::new(Device::Cpu)
    };
    let err = ScorerSession::start(&spec).await.unwrap_err();
    assert!(err.to_string().contains("at most 1000"), "{err}");
}

#[tokio::test]
async fn cuda_is_used_when_present_and_refused_clearly_when_not() {
    let result = ScorerSession::start(&ScorerSpec::new(Device::Cuda)).await;
    match tetrarch::scoring::cuda_unavailable_reason() {
        Some(reason) => {
            let err = result.unwrap_err();
            assert!(matches!(err, SessionError::InvalidConfig { .. }), "{err}");
            assert!(err.to_string().contains("CUDA"), "{err} ({reason})");
        }
        None => assert_eq!(result.unwrap().backend(), Backend::Cuda),
    }
    // Auto never fails for want of CUDA.
    let auto = ScorerSession::start(&ScorerSpec {
        warmup_size: None,
        ..ScorerSpec::default()
    })
    .await
    .unwrap();
    let expected = if tetrarch::scoring::cuda_unavailable_reason().is_some() {
        Backend::Cpu
    } else {
        Backend::Cuda
    };
    assert_eq!(auto.backend(), expected);
}

#[tokio::test]
async fn pooled_scorers_are_started_before_the_first_call_and_run_in_parallel() {
    let (dir, reference, test) = pair();
    let spec = ScorerSpec {
        base_dir: Some(dir.path().to_path_buf()),
        warmup_size: Some((64, 48)),
        ..ScorerSpec::new(Device::Cpu)
    };
    let config = PoolConfig {
        min_idle: 2,
        max_size: 2,
        ..PoolConfig::new("scorer")
    };
    let pool = Pool::start(config, ScorerFactory::new(spec)).await.unwrap();
    let stats = pool.stats();
    assert_eq!((stats.created, stats.idle), (2, 2));
    let want = expected(Metric::Flip, &reference, &test).value;
    let run = |pool: Pool| async move {
        let mut session = pool.acquire().await.unwrap();
        session
            .call(call(
                "flip",
                json!({"reference": "ref.png", "test": "test.png"}),
            ))
            .await
            .unwrap()
    };
    let (a, b) = tokio::join!(run(pool.clone()), run(pool.clone()));
    for outcome in [a, b] {
        assert_eq!(outcome.json.unwrap()["value"].as_f64().unwrap(), want);
    }
    assert_eq!(pool.stats().created, 2, "no session was replaced");
}

#[tokio::test]
async fn a_job_whose_call_timed_out_holds_its_slot_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    // Big enough that FLIP takes a while; the small pair takes next to nothing.
    let (w, h) = (960, 720);
    png(dir.path(), "big-ref.png", w, h, gradient);
    png(dir.path(), "big-test.png", w, h, darker);
    png(dir.path(), "ref.png", 64, 48, gradient);
    png(dir.path(), "test.png", 64, 48, darker);
    let factory = ScorerFactory::new(ScorerSpec {
        base_dir: Some(dir.path().to_path_buf()),
        warmup_size: None,
        max_jobs: 1,
        ..ScorerSpec::new(Device::Cpu)
    });
    use tetrarch::session::SessionFactory;
    let (mut first, mut second) = (
        factory.create().await.unwrap(),
        factory.create().await.unwrap(),
    );
    let big = json!({ "reference": "big-ref.png", "test": "big-test.png" });
    let small = json!({ "reference": "ref.png", "test": "test.png" });
    let impatient = ToolRequest::new("flip", big).with_timeout(Duration::from_millis(1));
    let err = first.call(impatient).await.unwrap_err();
    assert!(matches!(err, SessionError::Timeout { .. }), "{err}");
    // The big job still runs and holds the only slot: another session's call waits for it.
    let waiting = ToolRequest::new("flip", small.clone()).with_timeout(Duration::from_millis(100));
    let err = second.call(waiting).await.unwrap_err();
    assert!(matches!(err, SessionError::Timeout { .. }), "{err}");
    // Once it ends, the slot is free again.
    let outcome = second.call(call("flip", small)).await.unwrap();
    assert_eq!(outcome.exit_status, Some(0), "{}", outcome.stderr);
}

/// A scorer's timed-out call does not cost its session: the pool keeps it rather than start
/// another, which would build its scorer and score its warm-up images again.
#[tokio::test]
async fn a_pooled_scorer_whose_call_timed_out_is_kept_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    png(dir.path(), "big-ref.png", 960, 720, gradient);
    png(dir.path(), "big-test.png", 960, 720, darker);
    let spec = ScorerSpec {
        base_dir: Some(dir.path().to_path_buf()),
        warmup_size: None,
        ..ScorerSpec::new(Device::Cpu)
    };
    let config = PoolConfig {
        min_idle: 1,
        max_size: 1,
        ..PoolConfig::new("scorer")
    };
    let pool = Pool::start(config, ScorerFactory::new(spec)).await.unwrap();
    let big = json!({ "reference": "big-ref.png", "test": "big-test.png" });
    let mut session = pool.acquire().await.unwrap();
    let impatient = ToolRequest::new("flip", big.clone()).with_timeout(Duration::from_millis(1));
    let err = session.call(impatient).await.unwrap_err();
    assert!(matches!(err, SessionError::Timeout { .. }), "{err}");
    drop(session);
    let mut again = pool.acquire().await.unwrap();
    let outcome = again.call(call("flip", big)).await.unwrap();
    assert_eq!(outcome.exit_status, Some(0), "{}", outcome.stderr);
    drop(again);
    let stats = pool.stats();
    assert_eq!((stats.created, stats.discarded), (1, 0), "{stats:?}");
}
