//! Bad input gives a clear error naming the file and the problem, on every available path.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use tetrarch::scoring::{Device, Metric, RgbImage, ScoreError, Scorer, ScorerConfig, Transfer};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scoring")
        .join(name)
}

/// The CPU scorer, plus the CUDA one when this machine has a device.
fn scorers() -> Vec<Scorer> {
    let mut out = vec![
        Scorer::new(ScorerConfig {
            device: Device::Cpu,
            ..Default::default()
        })
        .unwrap(),
    ];
    match Scorer::new(ScorerConfig {
        device: Device::Cuda,
        ..Default::default()
    }) {
        Ok(s) => out.push(s),
        Err(e) => eprintln!("CUDA path skipped: {e}"),
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn different_sizes_name_both_images() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.png");
    image::RgbImage::new(48, 32).save(&small).unwrap();
    let r = RgbImage::open(&fixture("ref.png")).unwrap();
    let t = RgbImage::open(&small).unwrap();
    for scorer in scorers() {
        for metric in [
            Metric::Flip,
            Metric::HdrFlip,
            Metric::Ssim,
            Metric::Msssim,
            Metric::Psnr,
        ] {
            let err = scorer.score(metric, &r, &t, false).unwrap_err();
            assert!(matches!(err, ScoreError::SizeMismatch { .. }), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains("ref.png")
                    && msg.contains("small.png")
                    && msg.contains("96x64")
                    && msg.contains("48x32"),
                "{msg}"
            );
        }
    }
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let err = RgbImage::open(Path::new("/nonexistent/dir/missing.png")).unwrap_err();
    assert!(matches!(err, ScoreError::Read { .. }));
    assert!(err.to_string().contains("missing.png"), "{err}");
}

#[test]
fn truncated_png_is_a_decode_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("ref.png")).unwrap();
    let path = write(dir.path(), "cut.png", &bytes[..bytes.len() / 3]);
    let err = RgbImage::open(&path).unwrap_err();
    assert!(matches!(err, ScoreError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("cut.png"), "{err}");
    let bytes = std::fs::read(fixture("hdr_ref.exr")).unwrap();
    let path = write(dir.path(), "cut.exr", &bytes[..bytes.len() / 2]);
    let err = RgbImage::open(&path).unwrap_err();
    assert!(matches!(err, ScoreError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("cut.exr"), "{err}");
}

#[test]
fn zero_sized_images_are_refused() {
    let err = RgbImage::from_interleaved("empty", 0, 10, Transfer::Srgb, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            ScoreError::EmptyImage {
                width: 0,
                height: 10,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("empty"));
    // A PNG whose header declares 0×0 pixels.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "zero.png", &png_header(0, 0));
    let err = RgbImage::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            ScoreError::Decode { .. } | ScoreError::EmptyImage { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("zero.png"), "{err}");
}

/// A PNG's signature, header (8-bit RGB of `width × height`) and an empty data chunk: what a
/// decoder reads to learn the size, and no pixels.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    for chunk in [ihdr, b"IDAT".to_vec()] {
        png.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

#[test]
fn an_image_over_the_pixel_limit_is_refused_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    // 10000×10000 (1e8 pixels, over 2^25): the file is 33 bytes, the image would need gigabytes.
    // 1e9×1e9 is over the decoder's own memory limit too, which used to answer first ("Memory
    // limit exceeded").
    for (width, height) in [(10_000, 10_000), (1_000_000_000, 1_000_000_000)] {
        let path = write(dir.path(), "huge.png", &png_header(width, height));
        let err = RgbImage::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                ScoreError::TooLarge {
                    width: w,
                    height: h,
                    max_pixels: tetrarch::scoring::MAX_PIXELS,
                    ..
                } if (w, h) == (width as usize, height as usize)
            ),
            "{err}"
        );
        assert!(err.to_string().contains("huge.png"), "{err}");
    }
    // Pixels handed over in memory are held to the same limit; a size whose sample count
    // overflows used to wrap to the buffer's length (or panic in a debug build).
    let wraps = usize::MAX / 3 + 1;
    let err =
        RgbImage::from_interleaved("in memory", wraps, 3, Transfer::Srgb, &[0.5; 3]).unwrap_err();
    assert!(
        matches!(err, ScoreError::TooLarge { width, height: 3, .. } if width == wraps),
        "{err}"
    );
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn nan_and_infinite_hdr_values_are_refused_with_their_pixel() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bad) in [("nan.exr", f32::NAN), ("inf.exr", f32::INFINITY)] {
        let mut img = image::Rgb32FImage::from_pixel(16, 8, image::Rgb([0.5, 1.5, 2.0]));
        img.put_pixel(5, 3, image::Rgb([0.1, bad, 0.2]));
        let path = dir.path().join(name);
        img.save(&path).unwrap();
        let err = RgbImage::open(&path).unwrap_err();
        assert!(
            matches!(err, ScoreError::NonFinite { x: 5, y: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(name), "{err}");
    }
    let err = RgbImage::from_interleaved(
        "buffer",
        1,
        1,
        Transfer::Linear,
        &[0.0, f32::NEG_INFINITY, 0.0],
    )
    .unwrap_err();
    assert!(matches!(err, ScoreError::NonFinite { .. }), "{err}");
}

#[test]
fn unsupported_formats_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // A BMP header: a real image format this build does not read.
    let path = write(
        dir.path(),
        "picture.bmp",
        b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0\x01\0\0\0\x01\0\0\0\x01\0\x18\0",
    );
    let err = RgbImage::open(&path).unwrap_err();
    assert!(matches!(err, ScoreError::UnsupportedFormat { .. }), "{err}");
    assert!(err.to_string().contains("picture.bmp"), "{err}");
    let path = write(dir.path(), "notes.txt", b"not an image at all");
    let err = RgbImage::open(&path).unwrap_err();
    assert!(matches!(err, ScoreError::UnsupportedFormat { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
}

#[test]
fn translucent_alpha_is_an_unsupported_pixel_format() {
    let dir = tempfile::tempdir().unwrap();
    let mut img = image::RgbaImage::from_pixel(12, 12, image::Rgba([10, 20, 30, 255]));
    img.put_pixel(2, 7, image::Rgba([10, 20, 30, 128]));
    let path = dir.path().join("alpha.png");
    img.save(&path).unwrap();
    let err = RgbImage::open(&path).unwrap_err();
    assert!(
        matches!(err, ScoreError::UnsupportedPixelFormat { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("alpha.png") && msg.contains("(2, 7)"), "{msg}");
    // Opaque alpha is fine.
    img.put_pixel(2, 7, image::Rgba([10, 20, 30, 255]));
    img.save(&path).unwrap();
    assert!(RgbImage::open(&path).is_ok());
}

#[test]
fn too_small_and_unexposable_inputs_are_refused_on_every_path() {
    let tiny = RgbImage::from_interleaved("tiny", 8, 8, Transfer::Srgb, &[0.5; 8 * 8 * 3]).unwrap();
    let black =
        RgbImage::from_interleaved("black.exr", 16, 16, Transfer::Linear, &[0.0; 16 * 16 * 3])
            .unwrap();
    for scorer in scorers() {
        let err = scorer.score(Metric::Ssim, &tiny, &tiny, false).unwrap_err();
        assert!(
            matches!(err, ScoreError::TooSmall { min_side: 11, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("tiny"));
        let err = scorer
            .score(Metric::HdrFlip, &black, &black, false)
            .unwrap_err();
        assert!(matches!(err, ScoreError::ExposureRange { .. }), "{err}");
        assert!(err.to_string().contains("black.exr"), "{err}");
        // A denormal median luminance made the exposure count endless: HDR-FLIP never returned.
        let denormal: Vec<f32> = (0..16 * 16 * 3)
            .map(|i| if (i / 3) % 16 < 12 { 1e-39 } else { 1.0 })
            .collect();
        let faint =
            RgbImage::from_interleaved("faint.exr", 16, 16, Transfer::Linear, &denormal).unwrap();
        let err = scorer
            .score(Metric::HdrFlip, &faint, &faint, false)
            .unwrap_err();
        assert!(matches!(err, ScoreError::ExposureRange { .. }), "{err}");
        assert!(err.to_string().contains("faint.exr"), "{err}");
    }
}

#[test]
fn a_bad_pair_in_a_batch_does_not_fail_the_others() {
    let r = RgbImage::open(&fixture("ref.png")).unwrap();
    let t = RgbImage::open(&fixture("test_noise.png")).unwrap();
    let odd = RgbImage::from_interleaved("odd", 4, 4, Transfer::Srgb, &[0.0; 48]).unwrap();
    for scorer in scorers() {
        let results = scorer.score_batch(Metric::Psnr, &[(&r, &t), (&r, &odd), (&t, &t)], false);
        assert!(
            results[0]
                .as_ref()
                .is_ok_and(|s| (s.value - 28.1425).abs() < 0.01)
        );
        assert!(matches!(results[1], Err(ScoreError::SizeMismatch { .. })));
        assert!(results[2].as_ref().is_ok_and(|s| s.value.is_infinite()));
    }
}

fn linear(label: &str, w: usize, h: usize, value: impl Fn(usize) -> f32) -> RgbImage {
    let rgb: Vec<f32> = (0..w * h * 3).map(|i| value(i / 3)).collect();
    RgbImage::from_interleaved(label, w, h, Transfer::Linear, &rgb).unwrap()
}

#[test]
fn an_extreme_hdr_pixel_is_an_error_not_a_perfect_match() {
    // A dark HDR image, and the same with one pixel at 1e13: the tone curve's `x * x`
    // overflowed, the NaN spread over the pixel's neighbourhood and the per-exposure maximum
    // dropped it, so HDR-FLIP came out 0.0 (a perfect match).
    let dark = |i: usize| 1e-7 * (1.0 + (i % 7) as f32);
    let reference = linear("dark.exr", 32, 32, dark);
    let test = linear("bright-pixel.exr", 32, 32, |i| {
        if i == 500 { 1e13 } else { dark(i) }
    });
    for scorer in scorers() {
        let score = scorer
            .score(Metric::HdrFlip, &reference, &test, true)
            .unwrap();
        let map = score.error_map.unwrap();
        assert!(score.value > 0.0, "{:?}: {}", scorer.backend(), score.value);
        assert!(map.data.iter().all(|v| v.is_finite()));
        let largest = map.data.iter().copied().fold(0.0f32, f32::max);
        assert!(
            map.data[500] > 0.0 && map.data[500] == largest,
            "the bright pixel itself: {} (largest {largest})",
            map.data[500]
        );
    }
}

#[test]
fn an_extreme_negative_hdr_pixel_is_scored_like_its_positive_twin() {
    // The exposed value was capped from above only: at -1e13 × the exposure scale `x * x`
    // overflowed, the CPU's NaN failed the score as not finite (CUDA's clamp made it black).
    // The tone curve is above 1 for every x below about -0.4, so it maps to white.
    let dark = |i: usize| 1e-7 * (1.0 + (i % 7) as f32);
    let reference = linear("dark.exr", 32, 32, dark);
    let test = linear("negative-pixel.exr", 32, 32, |i| {
        if i == 500 { -1e13 } else { dark(i) }
    });
    let bright = linear("bright-pixel.exr", 32, 32, |i| {
        if i == 500 { 1e13 } else { dark(i) }
    });
    for scorer in scorers() {
        let negative = scorer
            .score(Metric::HdrFlip, &reference, &test, true)
            .unwrap();
        let positive = scorer
            .score(Metric::HdrFlip, &reference, &bright, true)
            .unwrap();
        assert!(
            negative.value > 0.0,
            "{:?}: {}",
            scorer.backend(),
            negative.value
        );
        assert_eq!(negative.value, positive.value, "{:?}", scorer.backend());
    }
}

#[test]
fn a_metric_that_overflows_is_an_error_naming_both_images() {
    // Finite values near f32::MAX: SSIM's squares overflow to inf, and inf - inf is NaN.
    let reference = linear("gradient.exr", 32, 32, |i| (i % 32) as f32 / 32.0);
    let test = linear("huge.exr", 32, 32, |i| if i % 2 == 0 { 3e38 } else { 0.0 });
    for scorer in scorers() {
        // Refused before it could overflow: SSIM scores values from 0 to 1.
        let error = scorer
            .score(Metric::Ssim, &reference, &test, false)
            .unwrap_err();
        assert!(
            matches!(error, ScoreError::OutOfRange { metric: "ssim", .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("huge.exr"), "{error}");
        // PSNR takes any finite values: its result is a number or an error naming both.
        match scorer.score(Metric::Psnr, &reference, &test, false) {
            Ok(score) => assert!(!score.value.is_nan(), "{}", score.value),
            Err(error) => {
                let text = error.to_string();
                assert!(
                    text.contains("huge.exr") && text.contains("gradient.exr"),
                    "{text}"
                );
            }
        }
        // Identical images' PSNR stays +inf: the one infinite value that means something.
        let psnr = scorer
            .score(Metric::Psnr, &reference, &reference, false)
            .unwrap();
        assert_eq!(psnr.value, f64::INFINITY);
    }
}

#[test]
fn a_viewing_distance_too_coarse_for_the_edge_detector_is_refused() {
    // Below about 1.7 pixels per degree the feature filter's taps underflowed and edges silently
    // stopped counting (scores were the same from 0.01 to 1.69).
    for ppd in [0.01, 1.0, 1.69, 1.99] {
        let error = Scorer::new(ScorerConfig {
            device: Device::Cpu,
            ppd,
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(error, ScoreError::InvalidPpd { min, .. } if min == 2.0),
            "{ppd}: {error:?}"
        );
    }
    let a = linear("a.exr", 16, 16, |i| (i % 16) as f32 / 16.0);
    let b = linear("b.exr", 16, 16, |i| ((i + 3) % 16) as f32 / 16.0);
    for ppd in [2.0f32, 2.5, 4.0] {
        let scorer = Scorer::new(ScorerConfig {
            device: Device::Cpu,
            ppd,
            ..Default::default()
        })
        .unwrap();
        let value = scorer.score(Metric::Flip, &a, &b, false).unwrap().value;
        assert!(value.is_finite() && value > 0.0, "{ppd}: {value}");
    }
}

#[test]
fn value_metrics_refuse_a_linear_image_against_an_srgb_one() {
    // The same picture, stored linear (EXR) and sRGB-encoded (PNG): PSNR came out 13.6 dB and
    // SSIM 0.64 between them. FLIP decodes each by its encoding and still takes the pair.
    let srgb = RgbImage::from_interleaved(
        "a.png",
        32,
        32,
        Transfer::Srgb,
        &(0..32 * 32 * 3)
            .map(|i| (i % 32) as f32 / 32.0)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let linear = linear("a.exr", 32, 32, |i| (i % 32) as f32 / 32.0);
    for scorer in scorers() {
        for metric in [Metric::Psnr, Metric::Ssim] {
            let error = scorer.score(metric, &srgb, &linear, false).unwrap_err();
            assert!(
                matches!(error, ScoreError::MixedEncodings { .. }),
                "{error:?}"
            );
            let text = error.to_string();
            assert!(
                text.contains("a.png is sRGB-encoded") && text.contains("a.exr is linear light"),
                "{text}"
            );
        }
        assert!(scorer.score(Metric::Flip, &srgb, &linear, false).is_ok());
    }
}

#[test]
fn a_gray_image_scores_as_identical_to_the_same_pixels_stored_as_rgb() {
    let (width, height) = (32u32, 32u32);
    let gray =
        image::GrayImage::from_fn(width, height, |x, y| image::Luma([(x * 7 + y * 3) as u8]));
    let rgb = image::RgbImage::from_fn(width, height, |x, y| {
        let v = (x * 7 + y * 3) as u8;
        image::Rgb([v, v, v])
    });
    let gray16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(width, height, |x, y| {
        image::Luma([u16::from((x * 7 + y * 3) as u8) * 257])
    });
    let load = |name: &str, decoded: image::DynamicImage| {
        RgbImage::from_dynamic(name.to_owned(), &decoded).unwrap()
    };
    let rgb = load("rgb.png", image::DynamicImage::ImageRgb8(rgb));
    for gray in [
        load("gray.png", image::DynamicImage::ImageLuma8(gray)),
        load("gray16.png", image::DynamicImage::ImageLuma16(gray16)),
    ] {
        assert_eq!(gray.channels(), rgb.channels(), "{}", gray.label());
        for scorer in scorers() {
            let psnr = scorer.score(Metric::Psnr, &rgb, &gray, false).unwrap();
            assert!(psnr.value.is_infinite(), "{}: {}", gray.label(), psnr.value);
            let ssim = scorer.score(Metric::Ssim, &rgb, &gray, false).unwrap();
            assert_eq!(ssim.value, 1.0, "{}", gray.label());
        }
    }
}

#[test]
fn ssim_refuses_values_outside_zero_to_one() {
    // 1e6 ± noise, anti-correlated: SSIM came out as 18029641.
    let (width, height) = (32usize, 32usize);
    let noise = |i: usize| ((i * 7919) % 13) as f32 - 6.0;
    let bright: Vec<f32> = (0..width * height * 3)
        .map(|i| 1e6 + 10.0 * noise(i))
        .collect();
    let mirrored: Vec<f32> = (0..width * height * 3)
        .map(|i| 1e6 - 10.0 * noise(i))
        .collect();
    let reference =
        RgbImage::from_interleaved("bright.exr", width, height, Transfer::Linear, &bright).unwrap();
    let test = RgbImage::from_interleaved("mirror.exr", width, height, Transfer::Linear, &mirrored)
        .unwrap();
    for scorer in scorers() {
        let err = scorer
            .score(Metric::Ssim, &reference, &test, false)
            .unwrap_err();
        assert!(matches!(err, ScoreError::OutOfRange { .. }), "{err}");
        assert!(err.to_string().contains("bright.exr"), "{err}");
    }
}
