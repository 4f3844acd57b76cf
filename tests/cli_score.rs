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
}

#[test]
fn kernels_check_reports_every_function_or_names_missing_nvrtc() {
    let out = tetrarch(&["kernels", "check", "--arch", "sm_80", "--json"]);
    if tetrarch::scoring::nvrtc_version().is_err() {
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
