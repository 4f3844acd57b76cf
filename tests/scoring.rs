//! CPU metrics against values from NVIDIA flip-evaluator 1.7 and scikit-image
//! (committed in tests/fixtures/scoring/expected.json by regenerate.py there).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use tetrarch::scoring::{self, FLIP_DEFAULT_PPD, RgbImage};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scoring")
        .join(name)
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn read_map(name: &str) -> Vec<f32> {
    std::fs::read(fixture(name))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn pair(case: &serde_json::Value) -> (RgbImage, RgbImage) {
    let r = RgbImage::open(&fixture(case["reference"].as_str().unwrap())).unwrap();
    let t = RgbImage::open(&fixture(case["test"].as_str().unwrap())).unwrap();
    (r, t)
}

/// The largest per-pixel difference between our FLIP map and flip-evaluator's for a case.
fn largest_difference(ours: &[f32], case: &serde_json::Value) -> f32 {
    let theirs = read_map(case["flip_map"].as_str().unwrap());
    assert_eq!(ours.len(), theirs.len(), "map sizes differ");
    ours.iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
}

#[test]
fn flip_matches_flip_evaluator() {
    for (name, case) in expected()["ldr"].as_object().unwrap() {
        let (r, t) = pair(case);
        let out = scoring::flip(&r, &t, FLIP_DEFAULT_PPD).unwrap();
        let want = case["flip_mean"].as_f64().unwrap();
        assert!(
            (out.stats.mean - want).abs() < 5e-4,
            "{name}: FLIP mean {} vs flip-evaluator {want}",
            out.stats.mean
        );
        let worst = largest_difference(&out.map.data, case);
        assert!(
            worst < 2e-3,
            "{name}: per-pixel FLIP differs by up to {worst}"
        );
        let s = out.stats;
        assert!(
            s.weighted_q1 <= s.weighted_median && s.weighted_median <= s.weighted_q3,
            "{name}: {s:?}"
        );
        assert!(s.min <= s.mean && s.mean <= s.max);
    }
}

/// Our pooled statistics against the ones flip-evaluator's tool prints for the same files.
fn assert_pooled_like_the_flip_tool(
    name: &str,
    ours: scoring::FlipStats,
    case: &serde_json::Value,
) {
    let theirs = &case["flip_cli_pooled"];
    for (key, value, tolerance) in [
        // The tool prints 6 decimals; the weighted statistics come from our 8192-bucket
        // histogram, the tool's from the sorted errors.
        ("mean", ours.mean, 5e-4),
        ("weighted_median", ours.weighted_median, 2.5e-4),
        ("weighted_q1", ours.weighted_q1, 2.5e-4),
        ("weighted_q3", ours.weighted_q3, 2.5e-4),
        ("min", ours.min, 2e-6),
        ("max", ours.max, 2e-6),
    ] {
        let want = theirs[key].as_f64().unwrap();
        assert!(
            (value - want).abs() < tolerance,
            "{name}: {key} {value} vs the flip tool's {want}"
        );
    }
}

#[test]
fn pooled_flip_statistics_match_what_the_flip_tool_prints() {
    for (name, case) in expected()["ldr"].as_object().unwrap() {
        let (r, t) = pair(case);
        let out = scoring::flip(&r, &t, FLIP_DEFAULT_PPD).unwrap();
        assert_pooled_like_the_flip_tool(name, out.stats, case);
    }
    let case = &expected()["hdr"]["pair"];
    let (r, t) = pair(case);
    let (out, _) = scoring::hdr_flip(&r, &t, FLIP_DEFAULT_PPD).unwrap();
    assert_pooled_like_the_flip_tool("hdr", out.stats, case);
}

#[test]
fn ssim_and_psnr_match_scikit_image() {
    for (name, case) in expected()["ldr"].as_object().unwrap() {
        let (r, t) = pair(case);
        let ssim = scoring::ssim(&r, &t).unwrap();
        let want = case["ssim"].as_f64().unwrap();
        assert!(
            (ssim - want).abs() < 1e-4,
            "{name}: SSIM {ssim} vs scikit-image {want}"
        );
        let p = scoring::psnr(&r, &t).unwrap();
        let want = case["psnr_db"].as_f64().unwrap();
        assert!(
            (p.psnr_db - want).abs() < 0.01,
            "{name}: PSNR {} vs {want}",
            p.psnr_db
        );
    }
}

#[test]
fn hdr_flip_matches_flip_evaluator() {
    let case = &expected()["hdr"]["pair"];
    let (r, t) = pair(case);
    assert_eq!(r.transfer(), scoring::Transfer::Linear);
    let (out, exp) = scoring::hdr_flip(&r, &t, FLIP_DEFAULT_PPD).unwrap();
    assert!((f64::from(exp.start) - case["start_exposure"].as_f64().unwrap()).abs() < 1e-4);
    assert!((f64::from(exp.stop) - case["stop_exposure"].as_f64().unwrap()).abs() < 1e-4);
    assert_eq!(exp.count as u64, case["num_exposures"].as_u64().unwrap());
    let want = case["flip_mean"].as_f64().unwrap();
    assert!(
        (out.stats.mean - want).abs() < 5e-4,
        "HDR-FLIP mean {} vs flip-evaluator {want}",
        out.stats.mean
    );
    let worst = largest_difference(&out.map.data, case);
    assert!(worst < 2e-3, "per-pixel HDR-FLIP differs by up to {worst}");
}

#[test]
fn identical_images_score_perfectly() {
    let case = &expected()["ldr"]["noise"];
    let (r, _) = pair(case);
    assert_eq!(
        scoring::flip(&r, &r, FLIP_DEFAULT_PPD).unwrap().stats.mean,
        0.0
    );
    assert!((scoring::ssim(&r, &r).unwrap() - 1.0).abs() < 1e-6);
    let p = scoring::psnr(&r, &r).unwrap();
    assert_eq!(p.mse, 0.0);
    assert!(p.psnr_db.is_infinite());
}

fn synthetic(label: &str, w: usize, h: usize, noise: f32) -> RgbImage {
    let mut state = 0x2545_f491_u32;
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let n = (state as f32 / u32::MAX as f32 - 0.5) * noise;
                let v = 0.5 + 0.3 * ((x as f32 / 9.0 + c as f32).sin() * (y as f32 / 13.0).cos());
                rgb.push((v + n).clamp(0.0, 1.0));
            }
        }
    }
    RgbImage::from_interleaved(label, w, h, scoring::Transfer::Srgb, &rgb).unwrap()
}

#[test]
fn ms_ssim_is_one_for_equal_images_and_falls_with_noise() {
    let r = synthetic("reference", 200, 180, 0.0);
    assert!((scoring::ms_ssim(&r, &r).unwrap() - 1.0).abs() < 1e-6);
    let slight = scoring::ms_ssim(&r, &synthetic("test", 200, 180, 0.05)).unwrap();
    let heavy = scoring::ms_ssim(&r, &synthetic("test", 200, 180, 0.4)).unwrap();
    assert!(
        slight < 1.0 && heavy < slight && heavy > 0.0,
        "{slight} {heavy}"
    );
    let small = synthetic("small", 120, 180, 0.0);
    let err = scoring::ms_ssim(&small, &small).unwrap_err().to_string();
    assert!(err.contains("small") && err.contains("176"), "{err}");
}

#[test]
fn ms_ssim_scores_at_its_smallest_size_and_refuses_one_pixel_less() {
    // At 176 the coarsest scale is 11 pixels: one full window, a real score.
    let side = scoring::MSSSIM_MIN_SIDE;
    assert_eq!(side, 176);
    let r = synthetic("reference", side, side, 0.0);
    let t = synthetic("test", side, side, 0.1);
    let value = scoring::ms_ssim(&r, &t).unwrap();
    assert!(value.is_finite() && value > 0.0 && value < 1.0, "{value}");
    assert!((scoring::ms_ssim(&r, &r).unwrap() - 1.0).abs() < 1e-6);
    // At 175 the coarsest scale would be 10 pixels: refused, not scored as 0.
    for (w, h) in [(side - 1, side), (side, side - 1)] {
        let small = synthetic("narrow", w, h, 0.0);
        let err = scoring::ms_ssim(&small, &small).unwrap_err().to_string();
        assert!(err.contains("narrow") && err.contains("176"), "{err}");
    }
}

#[test]
fn error_map_png_is_written() {
    let case = &expected()["ldr"]["shift"];
    let (r, t) = pair(case);
    let out = scoring::flip(&r, &t, FLIP_DEFAULT_PPD).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.png");
    scoring::write_error_map(&out.map, &path).unwrap();
    let back = image::open(&path).unwrap().to_rgb8();
    assert_eq!((back.width(), back.height()), (96, 64));
    let worst = out.map.data.iter().cloned().fold(0.0f32, f32::max);
    let i = out.map.data.iter().position(|v| *v == worst).unwrap();
    let px = back.get_pixel((i % 96) as u32, (i / 96) as u32).0;
    assert_eq!(px, scoring::magma(worst));
}
