//! Every constant the metrics use, shared by the CPU path and the CUDA kernels.
//!
//! The kernels get these through [`cuda_defines`], a `#define` header prepended to each `.cu`
//! source before NVRTC compiles it, so the two paths cannot drift apart.

use std::fmt::Write as _;

/// FLIP's colour-difference exponent (q_c).
pub const FLIP_GQC: f32 = 0.7;
/// FLIP's colour-difference breakpoint as a share of the largest difference (p_c).
pub const FLIP_GPC: f32 = 0.4;
/// FLIP's remapped value at the breakpoint (p_t).
pub const FLIP_GPT: f32 = 0.95;
/// FLIP's feature-detector width in degrees (w).
pub const FLIP_GW: f32 = 0.082;
/// FLIP's feature-difference exponent (q_f).
pub const FLIP_GQF: f32 = 0.5;
/// Default pixels per degree: a 0.7 m wide 3840-pixel monitor seen from 0.7 m.
pub const FLIP_DEFAULT_PPD: f32 = 3840.0 * std::f32::consts::PI / 180.0;
/// Largest pixels per degree accepted. FLIP's filters grow with it (radius ≈ 0.14 × ppd taps),
/// and past this no real viewing needs them (1000 is that monitor seen from 10 m); an unbounded
/// value would ask for filters too large to allocate.
pub const FLIP_MAX_PPD: f32 = 1000.0;
/// Smallest pixels per degree accepted. Below about 1.7 the feature detector's Gaussian is so
/// narrow that its outer taps underflow to zero in single precision: the edge filter's weights
/// become 0/0 and edges silently stop counting (scores were identical from 0.01 to 1.69). At 2 the
/// taps are ordinary floats, and no real view is coarser (2 pixels per degree is a 64-pixel
/// thumbnail spanning 32 degrees).
pub const FLIP_MIN_PPD: f32 = 2.0;
/// The most pixels an image to score may have (2^25: 8K UHD, 7680×4320, fits). Scoring holds
/// several float planes per image, so a larger one would need many gigabytes; it is refused
/// from the file's header, before it is decoded.
pub const MAX_PIXELS: usize = 1 << 25;
/// Contrast-sensitivity Gaussian amplitudes (first term) for Y, Cx, Cz.
pub const FLIP_CSF_A1: [f32; 3] = [1.0, 1.0, 34.1];
/// Contrast-sensitivity Gaussian scales (first term) for Y, Cx, Cz.
pub const FLIP_CSF_B1: [f32; 3] = [0.0047, 0.0053, 0.04];
/// Contrast-sensitivity Gaussian amplitudes (second term; only Cz has one).
pub const FLIP_CSF_A2: [f32; 3] = [0.0, 0.0, 13.5];
/// Contrast-sensitivity Gaussian scales (second term).
pub const FLIP_CSF_B2: [f32; 3] = [1e-5, 1e-5, 0.025];
/// Buckets of the histogram behind FLIP's weighted median and quartiles. flip-evaluator's tool
/// prints them exactly (from the sorted errors); FLIP's own histogram (100 buckets) is off from
/// those by up to 1e-3. 8192 buckets (32 KiB of shared memory per block on CUDA) bring the
/// histogram within 2e-4 of the printed values while the pooling stays a histogram on the device.
pub const FLIP_HISTOGRAM_BUCKETS: usize = 8192;
/// D65 reference white in XYZ.
pub const D65_WHITE: [f32; 3] = [0.950_428_5, 1.0, 1.088_900_4];
/// Linear sRGB (D65) to XYZ, row-major.
pub const RGB_TO_XYZ: [f32; 9] = [
    10_135_552.0 / 24_577_794.0,
    8_788_810.0 / 24_577_794.0,
    4_435_075.0 / 24_577_794.0,
    2_613_072.0 / 12_288_897.0,
    8_788_810.0 / 12_288_897.0,
    887_015.0 / 12_288_897.0,
    1_425_312.0 / 73_733_382.0,
    8_788_810.0 / 73_733_382.0,
    70_074_185.0 / 73_733_382.0,
];
/// XYZ to linear sRGB (D65), row-major.
pub const XYZ_TO_RGB: [f32; 9] = [
    3.241_003_3,
    -1.537_398_9,
    -0.498_615_87,
    -0.969_224_33,
    1.875_930_1,
    0.041_554_224,
    0.055_639_423,
    -0.204_011_2,
    1.057_148_9,
];
/// Rec. 709 luminance weights of linear RGB.
pub const LUMINANCE: [f32; 3] = [0.2126, 0.7152, 0.0722];
/// ACES filmic curve `(c0 x² + c1 x + c2) / (c3 x² + c4 x + c5)`, with a 0.6 pre-exposure folded in.
pub const ACES: [f32; 6] = [
    0.6 * 0.6 * 2.51,
    0.6 * 0.03,
    0.0,
    0.6 * 0.6 * 2.43,
    0.6 * 0.59,
    0.14,
];
/// Tone-mapped value whose input defines the brightest HDR-FLIP exposure target.
pub const HDR_TONEMAP_TARGET: f32 = 0.85;
/// The largest magnitude of exposed value HDR-FLIP tone-maps (either sign): the ACES curve is
/// clamped to 1 from about 12 on and below about -0.4, so capping there changes no result, and
/// it keeps `x * x` finite for any finite pixel (at about ±2e19 it overflowed to inf, inf / inf
/// is NaN, and the NaN made a bad pixel's whole neighbourhood score as a perfect match).
pub const HDR_EXPOSED_MAX: f32 = 1.0e4;
/// SSIM's Gaussian window standard deviation.
pub const SSIM_SIGMA: f32 = 1.5;
/// SSIM's window radius (11×11 window).
pub const SSIM_RADIUS: usize = 5;
/// SSIM's luminance stabiliser factor.
pub const SSIM_K1: f32 = 0.01;
/// SSIM's contrast stabiliser factor.
pub const SSIM_K2: f32 = 0.03;
/// MS-SSIM scale weights, finest first (Wang, Simoncelli, Bovik 2003).
pub const MSSSIM_WEIGHTS: [f32; 5] = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333];
/// Threads per block along x used by the CUDA kernels' tiles.
pub const CUDA_TILE_X: u32 = 32;
/// Threads per block along y used by the CUDA kernels' tiles.
pub const CUDA_TILE_Y: u32 = 8;
/// Largest filter radius the CUDA kernels reserve shared memory for.
pub const CUDA_MAX_RADIUS: usize = 24;
/// Length of one filter's taps in the launcher's tap buffer (each centred at `CUDA_MAX_RADIUS`).
pub const TAP_STRIDE: usize = 2 * CUDA_MAX_RADIUS + 1;
/// Filter sets in that buffer and planes the FLIP row pass writes per image (Y, Cx, two Cz
/// parts, and the feature detector's Gaussian, edge and point filters).
pub const ROW_PLANES: usize = 7;
/// Output rows per thread in the FLIP column pass (`flip_cols`' launch grid divides by it).
pub const COL_ROWS: u32 = 4;

/// The `#define` header that gives the kernels the constants above.
pub fn cuda_defines() -> String {
    let mut out = String::from("// Generated from src/scoring/constants.rs; do not edit.\n");
    let scalars: [(&str, f32); 15] = [
        ("FLIP_GQC", FLIP_GQC),
        ("FLIP_GPC", FLIP_GPC),
        ("FLIP_GPT", FLIP_GPT),
        ("FLIP_GW", FLIP_GW),
        ("FLIP_GQF", FLIP_GQF),
        ("HDR_TONEMAP_TARGET", HDR_TONEMAP_TARGET),
        ("HDR_EXPOSED_MAX", HDR_EXPOSED_MAX),
        ("SSIM_K1", SSIM_K1),
        ("SSIM_K2", SSIM_K2),
        ("SSIM_SIGMA", SSIM_SIGMA),
        ("D65_X", D65_WHITE[0]),
        ("D65_Y", D65_WHITE[1]),
        ("D65_Z", D65_WHITE[2]),
        ("FLIP_CMAX", crate::scoring::flip::max_colour_distance()),
        (
            "FLIP_PCCMAX",
            FLIP_GPC * crate::scoring::flip::max_colour_distance(),
        ),
    ];
    for (name, value) in scalars {
        let _ = writeln!(out, "#define {name} {}", float_literal(value));
    }
    for (name, values) in [
        ("RGB_TO_XYZ", &RGB_TO_XYZ[..]),
        ("XYZ_TO_RGB", &XYZ_TO_RGB[..]),
        ("LUMINANCE", &LUMINANCE[..]),
        ("ACES", &ACES[..]),
    ] {
        for (i, v) in values.iter().enumerate() {
            let _ = writeln!(out, "#define {name}_{i} {}", float_literal(*v));
        }
    }
    let ints: [(&str, usize); 8] = [
        ("FLIP_HISTOGRAM_BUCKETS", FLIP_HISTOGRAM_BUCKETS),
        ("SSIM_RADIUS", SSIM_RADIUS),
        ("TILE_X", CUDA_TILE_X as usize),
        ("TILE_Y", CUDA_TILE_Y as usize),
        ("MAX_RADIUS", CUDA_MAX_RADIUS),
        ("TAP_STRIDE", TAP_STRIDE),
        ("ROW_PLANES", ROW_PLANES),
        ("COL_ROWS", COL_ROWS as usize),
    ];
    for (name, value) in ints {
        let _ = writeln!(out, "#define {name} {value}");
    }
    out
}

/// A C float literal that parses back to exactly `value` (Rust's `{:?}` is the shortest round-trip form).
fn float_literal(value: f32) -> String {
    let text = format!("{value:?}");
    if text.contains(['.', 'e']) {
        format!("{text}f")
    } else {
        format!("{text}.0f")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines_round_trip_every_constant() {
        let header = cuda_defines();
        let lookup = |name: &str| -> f32 {
            let line = header
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("{name} missing"));
            let literal = line
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .trim_end_matches('f');
            literal
                .parse()
                .unwrap_or_else(|_| panic!("{name}: bad literal {literal}"))
        };
        assert_eq!(lookup("FLIP_GQC"), FLIP_GQC);
        assert_eq!(lookup("SSIM_K2"), SSIM_K2);
        assert_eq!(lookup("RGB_TO_XYZ_4"), RGB_TO_XYZ[4]);
        assert_eq!(lookup("XYZ_TO_RGB_8"), XYZ_TO_RGB[8]);
        assert_eq!(lookup("ACES_5"), ACES[5]);
        assert_eq!(lookup("D65_Z"), D65_WHITE[2]);
    }
}
