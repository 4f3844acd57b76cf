//! The `tetrarch score` and `tetrarch kernels check` commands as a user runs them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scoring")
        .join(name)
}

fn tetrarch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn score_prints_json_with_pooled_flip_and_writes_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("err.png");
    let (r, t) = (fixture("ref.png"), fixture("test_noise.png"));
    let out = tetrarch(&[
        "score",
        r.to_str().unwrap(),
        t.to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
        "--map",
        map.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metric"], "flip");
    assert!((v["value"].as_f64().unwrap() - 0.08372).abs() < 5e-4, "{v}");
    assert!(v["flip"]["weighted_median"].as_f64().unwrap() > 0.0);
    assert_eq!(image::image_dimensions(&map).unwrap(), (96, 64));
}

#[test]
fn score_text_output_for_ssim_and_psnr() {
    let (r, t) = (fixture("ref.png"), fixture("test_blur.png"));
    let out = tetrarch(&[
        "score",
        r.to_str().unwrap(),
        t.to_str().unwrap(),
        "--metric",
        "ssim",
        "--device",
        "cpu",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("SSIM 0.406"),
        "{text}"
    );
    let out = tetrarch(&[
        "score",
        r.to_str().unwrap(),
        t.to_str().unwrap(),
        "--metric",
        "psnr",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("PSNR 16.00"),
        "{text}"
    );
}

#[test]
fn bad_input_exits_2_naming_the_file() {
    let r = fixture("ref.png");
    let out = tetrarch(&["score", r.to_str().unwrap(), "/nonexistent/test.png"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/test.png"));
    let out = tetrarch(&[
        "score",
        r.to_str().unwrap(),
        r.to_str().unwrap(),
        "--metric",
        "ssim",
        "--map",
        "x.png",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--map needs"));
    // The map never replaces an input, and is named as the PNG it is.
    let dir = tempfile::tempdir().unwrap();
    let (reference, test) = (dir.path().join("ref.png"), dir.path().join("test.png"));
    std::fs::copy(&r, &reference).unwrap();
    std::fs::copy(fixture("test_noise.png"), &test).unwrap();
    let before = std::fs::read(&test).unwrap();
    for (map, says) in [
        (&reference, "is the reference image"),
        (&test, "is the test image"),
        (&dir.path().join("map.jpg"), "name it .png"),
    ] {
        let out = tetrarch(&[
            "score",
            reference.to_str().unwrap(),
            test.to_str().unwrap(),
            "--map",
            map.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
    assert_eq!(std::fs::read(&test).unwrap(), before);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    // A pixels-per-degree that would need filters too large to allocate is refused, not tried.
    // So is one so small that the filters' terms underflow (the score was NaN).
    for ppd in ["1e12", "0", "-3", "NaN", "1e-20"] {
        let flag = format!("--ppd={ppd}");
        let out = tetrarch(&["score", r.to_str().unwrap(), r.to_str().unwrap(), &flag]);
        assert_eq!(out.status.code(), Some(2), "--ppd {ppd}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--ppd") && stderr.contains("at most 1000"),
            "--ppd {ppd}: {stderr}"
        );
    }
}

#[test]
fn kernels_check_reports_every_function_or_names_missing_nvrtc() {
    let out = tetrarch(&["kernels", "check", "--arch", "sm_80", "--json"]);
    if tetrarch::scoring::nvrtc_version().is_err() {
        // CI installs NVRTC (`.ci/run`), so there the check must really compile.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but NVRTC is unavailable"
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("NVRTC unavailable"));
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    let names: Vec<&str> = v["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|k| {
            k["functions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["function"].as_str().unwrap())
        })
        .collect();
    for name in [
        "flip_rows",
        "flip_cols",
        "flip_pool",
        "ssim_cols_reduce",
        "sq_diff_sum",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
}

/// `tetrarch score REF TEST --metric METRIC --device cpu --json`, which must succeed.
fn score_json(reference: &Path, test: &Path, metric: &str) -> serde_json::Value {
    let out = tetrarch(&[
        "score",
        reference.to_str().unwrap(),
        test.to_str().unwrap(),
        "--metric",
        metric,
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn hdr_flip_reads_openexr_and_matches_flip_evaluator() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let case = &expected["hdr"]["pair"];
    let (r, t) = (fixture("hdr_ref.exr"), fixture("hdr_test.exr"));
    let v = score_json(&r, &t, "hdr-flip");
    assert_eq!(v["metric"], "hdr-flip");
    let want = case["flip_mean"].as_f64().unwrap();
    assert!((v["value"].as_f64().unwrap() - want).abs() < 5e-4, "{v}");
}

/// A 200×200 pair (large enough for MS-SSIM), the test a darker copy, as PNG and as JPEG.
fn jpeg_and_png_pair(dir: &Path) -> [PathBuf; 3] {
    let reference = image::RgbImage::from_fn(200, 200, |x, y| {
        image::Rgb([(x + y) as u8, (2 * x) as u8, (3 * y % 256) as u8])
    });
    let test = image::RgbImage::from_fn(200, 200, |x, y| {
        let p = reference.get_pixel(x, y).0;
        image::Rgb([p[0] / 2 + 40, p[1] / 2 + 40, p[2] / 2 + 40])
    });
    let paths = [
        dir.join("ref.png"),
        dir.join("ref.jpg"),
        dir.join("test.png"),
    ];
    reference.save(&paths[0]).unwrap();
    reference.save(&paths[1]).unwrap();
    test.save(&paths[2]).unwrap();
    paths
}

#[test]
fn jpeg_input_scores_close_to_its_png_source_and_msssim_prints() {
    let dir = tempfile::tempdir().unwrap();
    let [png, jpg, test] = jpeg_and_png_pair(dir.path());
    let score = |reference: &Path, metric: &str| {
        score_json(reference, &test, metric)["value"]
            .as_f64()
            .unwrap()
    };
    let (from_png, from_jpg) = (score(&png, "ssim"), score(&jpg, "ssim"));
    // JPEG is lossy: close to the PNG's score, not equal to it.
    assert!(
        from_png < 0.99 && (from_png - from_jpg).abs() < 0.05,
        "{from_png} {from_jpg}"
    );
    let msssim = score(&png, "msssim");
    assert!(msssim > 0.0 && msssim < 1.0, "{msssim}");
}

#[test]
fn device_cuda_without_cuda_is_a_clear_error_and_auto_falls_back() {
    if tetrarch::scoring::cuda_unavailable_reason().is_none() {
        eprintln!("skipped: CUDA is present here; the refusal cannot be shown");
        return;
    }
    let (r, t) = (fixture("ref.png"), fixture("test_noise.png"));
    let out = tetrarch(&[
        "score",
        r.to_str().unwrap(),
        t.to_str().unwrap(),
        "--device",
        "cuda",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CUDA"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // --device auto scores on the CPU and logs why (RUST_LOG shows the INFO line).
    let out = Command::new(env!("CARGO_BIN_EXE_tetrarch"))
        .args([
            "score",
            r.to_str().unwrap(),
            t.to_str().unwrap(),
            "--device",
            "auto",
            "--json",
        ])
        .env("RUST_LOG", "tetrarch=info")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "cpu", "{v}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scoring on the CPU"), "{stderr}");
    // The reason is in the output too, without any logging.
    assert!(
        v["cpu_reason"]
            .as_str()
            .unwrap()
            .contains("CUDA unavailable"),
        "{v}"
    );
    let out = tetrarch(&["score", r.to_str().unwrap(), t.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("computed on cpu (CUDA unavailable: "),
        "{stdout}"
    );
}

/// An architecture list with an empty entry, a virtual architecture or a misspelling is a usage
/// error naming it, before NVRTC is looked for.
#[test]
fn kernels_check_refuses_architectures_it_cannot_report_on() {
    for (arch, says) in [
        ("sm_80,,sm_90", "an empty architecture"),
        ("compute_80", "is a virtual architecture"),
        ("sm90", "is not a GPU architecture"),
    ] {
        let out = tetrarch(&["kernels", "check", "--arch", arch]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{arch}: {stderr}");
        assert!(stderr.contains(says), "{arch}: {stderr}");
    }
}
