//! FLIP (Andersson et al., HPG 2020) and HDR-FLIP (Eurographics 2021) on the CPU.
//!
//! Written from the papers: opponent colour space YCxCz, contrast-sensitivity filters
//! (the blue–yellow channel as a sum of two Gaussians, separated into two passes), HyAB
//! colour difference on Hunt-adjusted L*a*b*, edge and point detectors on luminance, and
//! `error = cdiff^(1 - fdiff)`. The per-pixel maths here is mirrored in `kernels/flip.cu`.

use rayon::prelude::*;

use super::ScoreError;
use super::constants::*;
use super::filter::{Border, horizontal, vertical};
use super::image::{Plane, RgbImage, Transfer, check_pair};

/// The 1-D filters FLIP needs at one viewing distance.
#[derive(Debug, Clone, PartialEq)]
pub struct FlipFilters {
    /// Achromatic (Y) contrast sensitivity.
    pub y: Vec<f32>,
    /// Red–green (Cx) contrast sensitivity.
    pub cx: Vec<f32>,
    /// Blue–yellow (Cz), first Gaussian (square-rooted amplitude, for separation).
    pub cz1: Vec<f32>,
    /// Blue–yellow (Cz), second Gaussian.
    pub cz2: Vec<f32>,
    /// Feature Gaussian.
    pub gauss: Vec<f32>,
    /// Feature first derivative (edges).
    pub edge: Vec<f32>,
    /// Feature second derivative (points).
    pub point: Vec<f32>,
}

/// Checks a pixels-per-degree value: from [`FLIP_MIN_PPD`] to [`FLIP_MAX_PPD`].
///
/// # Errors
/// [`ScoreError::InvalidPpd`].
pub fn check_ppd(ppd: f32) -> Result<(), ScoreError> {
    // NaN fails both comparisons.
    if (FLIP_MIN_PPD..=FLIP_MAX_PPD).contains(&ppd) {
        Ok(())
    } else {
        Err(ScoreError::InvalidPpd {
            ppd,
            min: FLIP_MIN_PPD,
            max: FLIP_MAX_PPD,
        })
    }
}

impl FlipFilters {
    /// Filters for `ppd` pixels per degree.
    ///
    /// # Errors
    /// [`ScoreError::InvalidPpd`] (see [`check_ppd`]).
    pub fn new(ppd: f32) -> Result<Self, ScoreError> {
        check_ppd(ppd)?;
        let pi = std::f32::consts::PI;
        let max_b = FLIP_CSF_B1
            .iter()
            .chain(&FLIP_CSF_B2)
            .fold(0.0f32, |a, &b| a.max(b));
        let radius = (3.0 * (max_b / (2.0 * pi * pi)).sqrt() * ppd).ceil() as isize;
        let gauss_csf = |x2: f32, a: f32, b: f32| a * (pi / b).sqrt() * (-pi * pi * x2 / b).exp();
        let gauss_sqrt =
            |x2: f32, a: f32, b: f32| (a * (pi / b).sqrt()).sqrt() * (-pi * pi * x2 / b).exp();
        let (mut y, mut cx, mut cz1, mut cz2) = (vec![], vec![], vec![], vec![]);
        for i in -radius..=radius {
            let x = i as f32 / ppd;
            let x2 = x * x;
            y.push(gauss_csf(x2, FLIP_CSF_A1[0], FLIP_CSF_B1[0]));
            cx.push(gauss_csf(x2, FLIP_CSF_A1[1], FLIP_CSF_B1[1]));
            cz1.push(gauss_sqrt(x2, FLIP_CSF_A1[2], FLIP_CSF_B1[2]));
            cz2.push(gauss_sqrt(x2, FLIP_CSF_A2[2], FLIP_CSF_B2[2]));
        }
        let normalise = |v: &mut Vec<f32>, by: f32| v.iter_mut().for_each(|t| *t /= by);
        let sy: f32 = y.iter().sum();
        let scx: f32 = cx.iter().sum();
        // The 2-D Cz kernel is cz1⊗cz1 + cz2⊗cz2; dividing each 1-D part by the root of the
        // sum of squared sums makes that 2-D kernel sum to one.
        let scz = (cz1.iter().sum::<f32>().powi(2) + cz2.iter().sum::<f32>().powi(2)).sqrt();
        normalise(&mut y, sy);
        normalise(&mut cx, scx);
        normalise(&mut cz1, scz);
        normalise(&mut cz2, scz);

        let sd = 0.5 * FLIP_GW * ppd;
        let fr = (3.0 * sd).ceil() as isize;
        let (mut gauss, mut edge, mut point) = (vec![], vec![], vec![]);
        for i in -fr..=fr {
            let x = i as f32;
            let g = (-(x * x) / (2.0 * sd * sd)).exp();
            gauss.push(g);
            edge.push(-x * g);
            point.push((x * x / (sd * sd) - 1.0) * g);
        }
        let sg: f32 = gauss.iter().sum();
        normalise(&mut gauss, sg);
        // Derivative filters: positive weights sum to 1, negative weights to -1.
        for taps in [&mut edge, &mut point] {
            let pos: f32 = taps.iter().filter(|t| **t > 0.0).sum();
            let neg: f32 = -taps.iter().filter(|t| **t <= 0.0).sum::<f32>();
            taps.iter_mut()
                .for_each(|t| *t /= if *t > 0.0 { pos } else { neg });
        }
        // A defence behind `check_ppd`'s bounds: taps that underflowed or overflowed would
        // make the score NaN or silently drop a term.
        let taps = [&y, &cx, &cz1, &cz2, &gauss, &edge, &point];
        if taps.iter().any(|t| t.iter().any(|w| !w.is_finite())) {
            return Err(ScoreError::InvalidPpd {
                ppd,
                min: FLIP_MIN_PPD,
                max: FLIP_MAX_PPD,
            });
        }
        Ok(Self {
            y,
            cx,
            cz1,
            cz2,
            gauss,
            edge,
            point,
        })
    }
}

/// sRGB decoding of one value.
pub fn srgb_to_linear(v: f32) -> f32 {
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

/// [`srgb_to_linear`] of the 256 values an 8-bit image yields; those inputs (the common case)
/// are looked up instead of calling `powf`, with identical results.
fn srgb_8bit_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|i| srgb_to_linear(i as f32 / 255.0)))
}

fn srgb_to_linear_fast(v: f32, table: &[f32; 256]) -> f32 {
    let q = v * 255.0;
    let i = q as usize;
    if i < 256 && i as f32 == q && i as f32 / 255.0 == v {
        table[i]
    } else {
        srgb_to_linear(v)
    }
}

fn mat3(m: &[f32; 9], v: [f32; 3]) -> [f32; 3] {
    [
        m[0] * v[0] + m[1] * v[1] + m[2] * v[2],
        m[3] * v[0] + m[4] * v[1] + m[5] * v[2],
        m[6] * v[0] + m[7] * v[1] + m[8] * v[2],
    ]
}

/// Linear RGB to YCxCz.
pub fn linear_rgb_to_ycxcz(rgb: [f32; 3]) -> [f32; 3] {
    let xyz = mat3(&RGB_TO_XYZ, rgb);
    let (x, y, z) = (
        xyz[0] / D65_WHITE[0],
        xyz[1] / D65_WHITE[1],
        xyz[2] / D65_WHITE[2],
    );
    [116.0 * y - 16.0, 500.0 * (x - y), 200.0 * (y - z)]
}

fn ycxcz_to_linear_rgb(c: [f32; 3]) -> [f32; 3] {
    let y = (c[0] + 16.0) / 116.0;
    let xyz = [
        (y + c[1] / 500.0) * D65_WHITE[0],
        y * D65_WHITE[1],
        (y - c[2] / 200.0) * D65_WHITE[2],
    ];
    mat3(&XYZ_TO_RGB, xyz)
}

fn lab_f(t: f32) -> f32 {
    const DELTA: f32 = 6.0 / 29.0;
    if t > DELTA * DELTA * DELTA {
        t.cbrt()
    } else {
        t / (3.0 * DELTA * DELTA) + 4.0 / 29.0
    }
}

/// Linear RGB to Hunt-adjusted L*a*b* (a and b scaled by 0.01 L).
pub fn linear_rgb_to_hunt_lab(rgb: [f32; 3]) -> [f32; 3] {
    let xyz = mat3(&RGB_TO_XYZ, rgb);
    let fx = lab_f(xyz[0] / D65_WHITE[0]);
    let fy = lab_f(xyz[1] / D65_WHITE[1]);
    let fz = lab_f(xyz[2] / D65_WHITE[2]);
    let l = 116.0 * fy - 16.0;
    [
        l,
        0.01 * l * 500.0 * (fx - fy),
        0.01 * l * 200.0 * (fy - fz),
    ]
}

fn hyab(a: [f32; 3], b: [f32; 3]) -> f32 {
    (a[0] - b[0]).abs() + ((a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// The largest colour difference (green against blue), raised to q_c.
pub fn max_colour_distance() -> f32 {
    hyab(
        linear_rgb_to_hunt_lab([0.0, 1.0, 0.0]),
        linear_rgb_to_hunt_lab([0.0, 0.0, 1.0]),
    )
    .powf(FLIP_GQC)
}

/// Colour difference of two filtered YCxCz pixels, remapped to [0, 1].
pub fn colour_difference(reference: [f32; 3], test: [f32; 3], cmax: f32) -> f32 {
    let clamp = |c: [f32; 3]| c.map(|v| v.clamp(0.0, 1.0));
    let r = linear_rgb_to_hunt_lab(clamp(ycxcz_to_linear_rgb(reference)));
    let t = linear_rgb_to_hunt_lab(clamp(ycxcz_to_linear_rgb(test)));
    let d = hyab(r, t).powf(FLIP_GQC);
    let pccmax = FLIP_GPC * cmax;
    if d < pccmax {
        d * FLIP_GPT / pccmax
    } else {
        FLIP_GPT + (d - pccmax) / (cmax - pccmax) * (1.0 - FLIP_GPT)
    }
}

/// Pooled statistics of a FLIP error map.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FlipStats {
    /// Mean error (the FLIP value).
    pub mean: f64,
    /// Weighted median from the error histogram.
    pub weighted_median: f64,
    /// First weighted quartile.
    pub weighted_q1: f64,
    /// Third weighted quartile.
    pub weighted_q3: f64,
    /// Smallest error.
    pub min: f64,
    /// Largest error.
    pub max: f64,
}

/// A FLIP error map and its statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct FlipOutput {
    /// Per-pixel error in [0, 1].
    pub map: Plane,
    /// Pooled values.
    pub stats: FlipStats,
}

/// The FLIP histogram: `FLIP_HISTOGRAM_BUCKETS` equal buckets over [0, 1].
pub fn histogram_bucket(v: f32) -> usize {
    ((v * FLIP_HISTOGRAM_BUCKETS as f32) as usize).min(FLIP_HISTOGRAM_BUCKETS - 1)
}

/// The `p`-th weighted percentile of a FLIP histogram: each bucket's count is weighted by its
/// centre value, and the result is interpolated linearly inside the bucket where the
/// cumulative weight passes `p` of the total.
pub fn weighted_percentile(counts: &[u64], p: f64) -> f64 {
    let step = 1.0 / counts.len() as f64;
    let weight = |i: usize| counts[i] as f64 * (i as f64 + 0.5) * step;
    let total: f64 = (0..counts.len()).map(weight).sum();
    let target = p * total;
    let mut below = 0.0;
    for i in 0..counts.len() {
        let w = weight(i);
        if below + w > target {
            return (i as f64 + (target - below) / w) * step;
        }
        below += w;
    }
    1.0
}

/// Pools an error map: mean (f64 sum), weighted median and quartiles from the histogram.
pub fn pool(map: &Plane) -> FlipStats {
    // One histogram per rayon split (fold), not per chunk: the buckets are many.
    let (sum, min, max, counts) = map
        .data
        .par_chunks(1 << 16)
        .fold(
            || {
                (
                    0.0f64,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    vec![0u64; FLIP_HISTOGRAM_BUCKETS],
                )
            },
            |(mut sum, mut min, mut max, mut counts), chunk| {
                for &v in chunk {
                    sum += f64::from(v);
                    min = min.min(v);
                    max = max.max(v);
                    counts[histogram_bucket(v)] += 1;
                }
                (sum, min, max, counts)
            },
        )
        .reduce(
            || {
                (
                    0.0,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    vec![0u64; FLIP_HISTOGRAM_BUCKETS],
                )
            },
            |a, b| {
                let counts = a.3.iter().zip(&b.3).map(|(x, y)| x + y).collect();
                (a.0 + b.0, a.1.min(b.1), a.2.max(b.2), counts)
            },
        );
    FlipStats::pooled(
        sum / map.data.len() as f64,
        &counts,
        f64::from(min),
        f64::from(max),
    )
}

impl FlipStats {
    /// The statistics from the mean, the histogram and the extremes (the same on both paths).
    /// The weighted percentiles come from the histogram, which places them inside a bucket;
    /// they are held to the errors' range: identical images (every error 0) have a median of
    /// 0, not the first bucket's midpoint.
    pub fn pooled(mean: f64, counts: &[u64], min: f64, max: f64) -> FlipStats {
        let within = |p: f64| weighted_percentile(counts, p).clamp(min.min(max), max.max(min));
        FlipStats {
            mean,
            weighted_median: within(0.5),
            weighted_q1: within(0.25),
            weighted_q3: within(0.75),
            min,
            max,
        }
    }
}

/// Linear RGB planes (clamped to [0, 1]) of an LDR image.
fn ldr_linear(image: &RgbImage) -> [Plane; 3] {
    let table = srgb_8bit_table();
    image.channels().clone().map(|mut p| {
        let srgb = image.transfer() == Transfer::Srgb;
        p.data.par_iter_mut().for_each(|v| {
            let c = v.clamp(0.0, 1.0);
            *v = if srgb {
                srgb_to_linear_fast(c, table)
            } else {
                c
            };
        });
        p
    })
}

fn to_ycxcz(rgb: &[Plane; 3]) -> [Plane; 3] {
    let (w, h) = (rgb[0].width, rgb[0].height);
    let mut out = [Plane::zeros(w, h), Plane::zeros(w, h), Plane::zeros(w, h)];
    let [oy, ox, oz] = &mut out;
    oy.data
        .par_iter_mut()
        .zip(ox.data.par_iter_mut())
        .zip(oz.data.par_iter_mut())
        .enumerate()
        .for_each(|(i, ((y, x), z))| {
            let c = linear_rgb_to_ycxcz([rgb[0].data[i], rgb[1].data[i], rgb[2].data[i]]);
            (*y, *x, *z) = (c[0], c[1], c[2]);
        });
    out
}

/// Spatially filtered YCxCz planes.
fn csf_filter(ycxcz: &[Plane; 3], f: &FlipFilters) -> [Plane; 3] {
    let b = Border::Clamp;
    let y = vertical(&horizontal(&ycxcz[0], &f.y, b), &f.y, b);
    let cx = vertical(&horizontal(&ycxcz[1], &f.cx, b), &f.cx, b);
    let mut cz = vertical(&horizontal(&ycxcz[2], &f.cz1, b), &f.cz1, b);
    let cz2 = vertical(&horizontal(&ycxcz[2], &f.cz2, b), &f.cz2, b);
    cz.data
        .par_iter_mut()
        .zip(&cz2.data)
        .for_each(|(a, b)| *a += b);
    [y, cx, cz]
}

/// Edge and point responses (x and y each) of the normalised luminance.
fn features(y: &Plane, f: &FlipFilters) -> [Plane; 4] {
    let b = Border::Clamp;
    let mut gray = y.clone();
    gray.data
        .par_iter_mut()
        .for_each(|v| *v = (*v + 16.0) / 116.0);
    let dx = vertical(&horizontal(&gray, &f.edge, b), &f.gauss, b);
    let ddx = vertical(&horizontal(&gray, &f.point, b), &f.gauss, b);
    let smooth = horizontal(&gray, &f.gauss, b);
    let dy = vertical(&smooth, &f.edge, b);
    let ddy = vertical(&smooth, &f.point, b);
    [dx, dy, ddx, ddy]
}

/// FLIP error map of two linear-RGB images in [0, 1].
fn ldr_flip_linear(reference: &[Plane; 3], test: &[Plane; 3], filters: &FlipFilters) -> Plane {
    let cmax = max_colour_distance();
    let (ry, ty) = (to_ycxcz(reference), to_ycxcz(test));
    let (rf, tf) = rayon::join(|| csf_filter(&ry, filters), || csf_filter(&ty, filters));
    let (rfeat, tfeat) = rayon::join(|| features(&ry[0], filters), || features(&ty[0], filters));
    let (w, h) = (reference[0].width, reference[0].height);
    let mut map = Plane::zeros(w, h);
    let gqf = FLIP_GQF;
    map.data.par_iter_mut().enumerate().for_each(|(i, out)| {
        let px = |p: &[Plane; 3]| [p[0].data[i], p[1].data[i], p[2].data[i]];
        let cdiff = colour_difference(px(&rf), px(&tf), cmax);
        let norm = |f: &[Plane; 4]| {
            let (dx, dy, ddx, ddy) = (f[0].data[i], f[1].data[i], f[2].data[i], f[3].data[i]);
            ((dx * dx + dy * dy).sqrt(), (ddx * ddx + ddy * ddy).sqrt())
        };
        let (re, rp) = norm(&rfeat);
        let (te, tp) = norm(&tfeat);
        let fd = std::f32::consts::FRAC_1_SQRT_2 * (re - te).abs().max((rp - tp).abs());
        // q_f is 0.5: a square root is exact and far cheaper than powf.
        let fdiff = if gqf == 0.5 { fd.sqrt() } else { fd.powf(gqf) };
        *out = cdiff.powf(1.0 - fdiff);
    });
    map
}

/// LDR-FLIP of two images (sRGB images are decoded; values are clamped to [0, 1]).
///
/// # Errors
/// [`ScoreError::SizeMismatch`], [`ScoreError::InvalidPpd`].
pub fn flip(reference: &RgbImage, test: &RgbImage, ppd: f32) -> Result<FlipOutput, ScoreError> {
    check_pair(reference, test)?;
    let filters = FlipFilters::new(ppd)?;
    let map = ldr_flip_linear(&ldr_linear(reference), &ldr_linear(test), &filters);
    let stats = pool(&map);
    Ok(FlipOutput { map, stats })
}

/// The exposure range HDR-FLIP sweeps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Exposures {
    /// First exposure (stops).
    pub start: f32,
    /// Last exposure (stops).
    pub stop: f32,
    /// How many exposures.
    pub count: usize,
}

/// Linear planes of an image for HDR use (sRGB images are clamped and decoded).
pub fn hdr_linear(image: &RgbImage) -> [Plane; 3] {
    image.channels().clone().map(|mut p| {
        if image.transfer() == Transfer::Srgb {
            let table = srgb_8bit_table();
            p.data
                .par_iter_mut()
                .for_each(|v| *v = srgb_to_linear_fast(v.clamp(0.0, 1.0), table));
        }
        p
    })
}

/// Chooses HDR-FLIP's exposures from the reference: from the one that maps its brightest
/// luminance to the tone curve's 0.85 point, to the one that does so for its median.
///
/// # Errors
/// [`ScoreError::ExposureRange`] when the reference has no positive luminance at its maximum or median.
pub fn exposures(label: &str, rgb: &[Plane; 3]) -> Result<Exposures, ScoreError> {
    let mut lum: Vec<f32> = (0..rgb[0].data.len())
        .into_par_iter()
        .map(|i| {
            LUMINANCE[0] * rgb[0].data[i]
                + LUMINANCE[1] * rgb[1].data[i]
                + LUMINANCE[2] * rgb[2].data[i]
        })
        .collect();
    let y_max = lum
        .par_iter()
        .cloned()
        .reduce(|| f32::NEG_INFINITY, f32::max);
    let mid = lum.len() / 2;
    let (_, median, _) = lum.select_nth_unstable_by(mid, f32::total_cmp);
    let y_median = *median;
    // Largest root of (c0 - t c3) x² + (c1 - t c4) x + (c2 - t c5) = 0.
    let t = HDR_TONEMAP_TARGET;
    let (a, b, c) = (
        ACES[0] - t * ACES[3],
        ACES[1] - t * ACES[4],
        ACES[2] - t * ACES[5],
    );
    let x_max = if a == 0.0 {
        -c / b
    } else {
        let mid = -0.5 * b / a;
        mid + (mid * mid - c / a).sqrt()
    };
    if !(y_max > 0.0 && y_median > 0.0) {
        return Err(ScoreError::ExposureRange {
            image: label.to_owned(),
            detail: format!(
                "maximum luminance {y_max} and median luminance {y_median} must both be positive"
            ),
        });
    }
    let start = (x_max / y_max).log2();
    let stop = (x_max / y_median).log2();
    if !(start.is_finite() && stop.is_finite()) {
        // A denormal median (below about 6e-39) overflows `x_max / median`: the range would be
        // endless (an infinite count of exposures), not merely wide.
        return Err(ScoreError::ExposureRange {
            image: label.to_owned(),
            detail: format!(
                "maximum luminance {y_max} and median luminance {y_median} give no finite \
                 exposure range (the median is too close to 0)"
            ),
        });
    }
    let count = (stop - start).ceil().max(2.0) as usize;
    Ok(Exposures { start, stop, count })
}

/// Exposes, tone-maps (ACES) and clamps linear planes.
pub fn tone_map(rgb: &[Plane; 3], exposure: f32) -> [Plane; 3] {
    let scale = exposure.exp2();
    rgb.clone().map(|mut p| {
        p.data.par_iter_mut().for_each(|v| {
            let x = (*v * scale).clamp(-HDR_EXPOSED_MAX, HDR_EXPOSED_MAX);
            let mapped = (ACES[0] * x * x + ACES[1] * x + ACES[2])
                / (ACES[3] * x * x + ACES[4] * x + ACES[5]);
            *v = mapped.clamp(0.0, 1.0);
        });
        p
    })
}

/// HDR-FLIP: LDR-FLIP on each tone-mapped exposure, keeping each pixel's largest error.
///
/// # Errors
/// [`ScoreError::SizeMismatch`], [`ScoreError::ExposureRange`], [`ScoreError::InvalidPpd`].
pub fn hdr_flip(
    reference: &RgbImage,
    test: &RgbImage,
    ppd: f32,
) -> Result<(FlipOutput, Exposures), ScoreError> {
    check_pair(reference, test)?;
    let filters = FlipFilters::new(ppd)?;
    let (r, t) = (hdr_linear(reference), hdr_linear(test));
    let exp = exposures(reference.label(), &r)?;
    let step = (exp.stop - exp.start) / (exp.count - 1) as f32;
    let mut map = Plane::zeros(reference.width(), reference.height());
    for i in 0..exp.count {
        let e = exp.start + i as f32 * step;
        let m = ldr_flip_linear(&tone_map(&r, e), &tone_map(&t, e), &filters);
        map.data
            .par_iter_mut()
            .zip(&m.data)
            .for_each(|(a, b)| *a = a.max(*b));
    }
    let stats = pool(&map);
    Ok((FlipOutput { map, stats }, exp))
}

/// Six anchors of a magma-like ramp (black, purple, magenta, red, orange, pale yellow).
const MAGMA_ANCHORS: [[f32; 3]; 6] = [
    [0.000, 0.000, 0.016],
    [0.231, 0.059, 0.439],
    [0.549, 0.161, 0.506],
    [0.871, 0.286, 0.408],
    [0.996, 0.624, 0.427],
    [0.988, 0.992, 0.749],
];

/// The colour of an error value on the magma-like ramp (8-bit sRGB).
pub fn magma(v: f32) -> [u8; 3] {
    let t = v.clamp(0.0, 1.0) * (MAGMA_ANCHORS.len() - 1) as f32;
    let i = (t as usize).min(MAGMA_ANCHORS.len() - 2);
    let f = t - i as f32;
    let (a, b) = (MAGMA_ANCHORS[i], MAGMA_ANCHORS[i + 1]);
    [0, 1, 2].map(|c| ((a[c] + (b[c] - a[c]) * f) * 255.0).round() as u8)
}

/// Writes an error map as a colour-mapped PNG.
///
/// # Errors
/// [`ScoreError::WriteMap`].
pub fn write_error_map(map: &Plane, path: &std::path::Path) -> Result<(), ScoreError> {
    let mut rgb = Vec::with_capacity(map.data.len() * 3);
    for &v in &map.data {
        rgb.extend_from_slice(&magma(v));
    }
    let fail = |message: String| ScoreError::WriteMap {
        path: path.to_owned(),
        message,
    };
    let (w, h) = (u32::try_from(map.width), u32::try_from(map.height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(fail("image too large".into()));
    };
    let img = image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| fail("buffer size".into()))?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn filters_have_expected_sizes_and_sums() {
        let f = FlipFilters::new(FLIP_DEFAULT_PPD).unwrap();
        assert_eq!(f.y.len(), 21);
        assert_eq!(f.gauss.len(), 19);
        assert!((f.y.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let s1: f32 = f.cz1.iter().sum();
        let s2: f32 = f.cz2.iter().sum();
        assert!((s1 * s1 + s2 * s2 - 1.0).abs() < 1e-5);
        let pos: f32 = f.edge.iter().filter(|v| **v > 0.0).sum();
        assert!((pos - 1.0).abs() < 1e-5);
    }

    #[test]
    fn identical_images_pool_to_zero_everywhere() {
        let map = Plane {
            width: 4,
            height: 2,
            data: vec![0.0; 8],
        };
        let stats = pool(&map);
        assert_eq!(
            [
                stats.mean,
                stats.weighted_median,
                stats.weighted_q1,
                stats.weighted_q3,
                stats.max
            ],
            [0.0; 5]
        );
    }

    #[test]
    fn weighted_percentile_of_one_bucket_interpolates_inside_it() {
        let mut counts = vec![0u64; 100];
        counts[40] = 10;
        let m = weighted_percentile(&counts, 0.5);
        assert!((m - 0.405).abs() < 1e-9, "{m}");
    }

    #[test]
    fn magma_ends() {
        assert_eq!(magma(0.0), [0, 0, 4]);
        assert_eq!(magma(1.0), [252, 253, 191]);
    }
}
