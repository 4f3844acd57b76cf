//! The CUDA path against the CPU path on the fixtures: runs when a CUDA device is present,
//! reports itself skipped otherwise.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use tetrarch::scoring::{
    Backend, CUDA_MAX_HEIGHT, Device, Metric, RgbImage, Scorer, ScorerConfig, Transfer,
    cuda_unavailable_reason,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scoring")
        .join(name)
}

fn cuda_or_skip(test: &str) -> Option<(Scorer, Scorer)> {
    if let Some(reason) = cuda_unavailable_reason() {
        eprintln!("skipped {test}: {reason}");
        return None;
    }
    let cuda = Scorer::new(ScorerConfig {
        device: Device::Cuda,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(cuda.backend(), Backend::Cuda);
    let cpu = Scorer::new(ScorerConfig {
        device: Device::Cpu,
        ..Default::default()
    })
    .unwrap();
    Some((cuda, cpu))
}

fn big(label: &str, w: usize, h: usize, seed: u32) -> RgbImage {
    let mut state = seed;
    let rgb: Vec<f32> = (0..w * h * 3)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let (x, y) = ((i / 3) % w, (i / 3) / w);
            (0.5 + 0.4 * ((x as f32 / 17.0).sin() * (y as f32 / 11.0).cos())
                + 0.05 * (state as f32 / u32::MAX as f32 - 0.5))
                .clamp(0.0, 1.0)
        })
        .collect();
    RgbImage::from_interleaved(label, w, h, Transfer::Srgb, &rgb).unwrap()
}

#[test]
fn cuda_matches_cpu_on_every_metric() {
    let Some((cuda, cpu)) = cuda_or_skip("cuda_matches_cpu_on_every_metric") else {
        return;
    };
    let r = RgbImage::open(&fixture("ref.png")).unwrap();
    let tests: Vec<RgbImage> = ["test_noise.png", "test_blur.png", "test_shift.png"]
        .iter()
        .map(|n| RgbImage::open(&fixture(n)).unwrap())
        .collect();
    let pairs: Vec<(&RgbImage, &RgbImage)> = tests.iter().map(|t| (&r, t)).collect();
    for metric in [Metric::Flip, Metric::Ssim, Metric::Psnr] {
        let g = cuda.score_batch(metric, &pairs, true);
        let c = cpu.score_batch(metric, &pairs, true);
        assert_eq!((g.len(), c.len()), (pairs.len(), pairs.len()), "{metric:?}");
        for (g, c) in g.iter().zip(&c) {
            let (g, c) = (g.as_ref().unwrap(), c.as_ref().unwrap());
            let tol = if metric == Metric::Psnr { 1e-3 } else { 1e-4 };
            assert!(
                (g.value - c.value).abs() < tol,
                "{metric:?}: cuda {} cpu {}",
                g.value,
                c.value
            );
            // Both give a map where one was asked for (FLIP's), or neither does.
            assert_eq!(
                g.error_map.is_some(),
                c.error_map.is_some(),
                "{metric:?}: a map from one path only"
            );
            if let (Some(gm), Some(cm)) = (&g.error_map, &c.error_map) {
                let worst = gm
                    .data
                    .iter()
                    .zip(&cm.data)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst < 1e-3, "FLIP map differs by {worst}");
            }
        }
    }
    let hr = RgbImage::open(&fixture("hdr_ref.exr")).unwrap();
    let ht = RgbImage::open(&fixture("hdr_test.exr")).unwrap();
    let g = cuda.score(Metric::HdrFlip, &hr, &ht, false).unwrap();
    let c = cpu.score(Metric::HdrFlip, &hr, &ht, false).unwrap();
    assert!(
        (g.value - c.value).abs() < 1e-4,
        "HDR-FLIP cuda {} cpu {}",
        g.value,
        c.value
    );
    let (a, b) = (big("a", 320, 200, 7), big("b", 320, 200, 99));
    let g = cuda.score(Metric::Msssim, &a, &b, false).unwrap();
    let c = cpu.score(Metric::Msssim, &a, &b, false).unwrap();
    assert!(
        (g.value - c.value).abs() < 1e-4,
        "MS-SSIM cuda {} cpu {}",
        g.value,
        c.value
    );
}

#[test]
fn an_image_taller_than_a_launch_grid_is_scored_on_the_cpu_beside_cuda_pairs() {
    let Some((cuda, cpu)) = cuda_or_skip("an_image_taller_than_a_launch_grid_is_scored_on_the_cpu")
    else {
        return;
    };
    let (tall_a, tall_b) = (
        big("tall_a", 12, CUDA_MAX_HEIGHT + 1, 3),
        big("tall_b", 12, CUDA_MAX_HEIGHT + 1, 5),
    );
    let (a, b) = (big("a", 64, 48, 7), big("b", 64, 48, 9));
    for metric in [Metric::Psnr, Metric::Ssim] {
        let scored = cuda.score_batch(metric, &[(&tall_a, &tall_b), (&a, &b)], false);
        let tall = scored[0].as_ref().unwrap();
        let small = scored[1].as_ref().unwrap();
        assert_eq!(tall.backend, Backend::Cpu, "{metric:?}");
        assert_eq!(small.backend, Backend::Cuda, "{metric:?}");
        let expected = cpu.score(metric, &tall_a, &tall_b, false).unwrap();
        assert_eq!(tall.value, expected.value, "{metric:?}");
    }
}
