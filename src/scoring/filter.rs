//! Separable convolution on planes, parallel over rows.
//!
//! Hand-written rather than taken from an image crate: the metrics need exact control of the
//! border rule (FLIP clamps, SSIM mirrors like SciPy's `reflect`) and of the float order, so the
//! CPU path and the CUDA kernels compute the same sums. The inner loops keep 16 outputs in
//! registers across all taps so they vectorise; on x86-64 CPUs with AVX2 and FMA a copy
//! compiled for those features is chosen at run time.
#![allow(unsafe_code)] // Calling the AVX2/FMA copies of the loops is unsafe; each call is guarded by feature detection.

use rayon::prelude::*;

use super::image::Plane;

/// What a filter reads past the image edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Repeat the edge sample (`a a | a b c`).
    Clamp,
    /// Mirror including the edge sample (`b a | a b c`), SciPy's `reflect`.
    Reflect,
}

impl Border {
    /// Maps a possibly out-of-range index into `0..n`.
    pub fn index(self, i: isize, n: usize) -> usize {
        let n_i = n as isize;
        match self {
            Border::Clamp => i.clamp(0, n_i - 1) as usize,
            Border::Reflect => {
                let period = 2 * n_i;
                let m = i.rem_euclid(period);
                (if m >= n_i { period - 1 - m } else { m }) as usize
            }
        }
    }
}

/// Copies `row` into `padded` (length `row.len() + 2 * radius`) with `radius` border samples
/// on each side; only the border goes through [`Border::index`] (its modulo is costly).
pub fn pad_row(row: &[f32], radius: usize, border: Border, padded: &mut [f32]) {
    let w = row.len();
    padded[radius..radius + w].copy_from_slice(row);
    for i in 0..radius {
        padded[i] = row[border.index(i as isize - radius as isize, w)];
        padded[radius + w + i] = row[border.index((w + i) as isize, w)];
    }
}

const LANES: usize = 16;

#[inline(always)]
fn madd<const FMA: bool>(acc: f32, t: f32, s: f32) -> f32 {
    if FMA { t.mul_add(s, acc) } else { acc + t * s }
}

/// `dst[x] = Σ_k taps[k] · src[x + k]`; `src` holds `dst.len() + taps.len() - 1` samples.
#[inline(always)]
fn conv_row_impl<const FMA: bool>(src: &[f32], taps: &[f32], dst: &mut [f32]) {
    let n = dst.len();
    let full = n / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        let mut acc = [0.0f32; LANES];
        for (k, &t) in taps.iter().enumerate() {
            let s = &src[base + k..base + k + LANES];
            for l in 0..LANES {
                acc[l] = madd::<FMA>(acc[l], t, s[l]);
            }
        }
        dst[base..base + LANES].copy_from_slice(&acc);
    }
    for x in full..n {
        dst[x] = taps
            .iter()
            .enumerate()
            .fold(0.0, |a, (k, &t)| madd::<FMA>(a, t, src[x + k]));
    }
}

/// `dst[x] = Σ_k taps[k] · rows[k][x]`.
#[inline(always)]
fn conv_cols_impl<const FMA: bool>(rows: &[&[f32]], taps: &[f32], dst: &mut [f32]) {
    let n = dst.len();
    let full = n / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        let mut acc = [0.0f32; LANES];
        for (row, &t) in rows.iter().zip(taps) {
            let s = &row[base..base + LANES];
            for l in 0..LANES {
                acc[l] = madd::<FMA>(acc[l], t, s[l]);
            }
        }
        dst[base..base + LANES].copy_from_slice(&acc);
    }
    for x in full..n {
        dst[x] = rows
            .iter()
            .zip(taps)
            .fold(0.0, |a, (row, &t)| madd::<FMA>(a, t, row[x]));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn conv_row_avx2(src: &[f32], taps: &[f32], dst: &mut [f32]) {
    conv_row_impl::<true>(src, taps, dst);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn conv_cols_avx2(rows: &[&[f32]], taps: &[f32], dst: &mut [f32]) {
    conv_cols_impl::<true>(rows, taps, dst);
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Row convolution of an already padded row (see [`conv_row_impl`]).
pub fn conv_row(src: &[f32], taps: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: conv_row_avx2 only requires AVX2 and FMA, which the CPU was just found to have.
        unsafe { conv_row_avx2(src, taps, dst) };
        return;
    }
    conv_row_impl::<false>(src, taps, dst);
}

/// Column convolution: one source row per tap.
pub fn conv_cols(rows: &[&[f32]], taps: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: conv_cols_avx2 only requires AVX2 and FMA, which the CPU was just found to have.
        unsafe { conv_cols_avx2(rows, taps, dst) };
        return;
    }
    conv_cols_impl::<false>(rows, taps, dst);
}

/// The rows a column filter reads for output row `y`.
pub fn tap_rows(
    data: &[f32],
    stride: usize,
    width: usize,
    y: usize,
    height: usize,
    radius: usize,
    border: Border,
) -> Vec<&[f32]> {
    (0..2 * radius + 1)
        .map(|k| {
            let sy = border.index(y as isize + k as isize - radius as isize, height);
            &data[sy * stride..sy * stride + width]
        })
        .collect()
}

/// Convolves each row with `taps` (odd length, centred).
pub fn horizontal(src: &Plane, taps: &[f32], border: Border) -> Plane {
    let radius = taps.len() / 2;
    let (w, h) = (src.width, src.height);
    let mut out = Plane::zeros(w, h);
    out.data.par_chunks_mut(w).enumerate().for_each_init(
        || vec![0.0f32; w + 2 * radius],
        |padded, (y, row_out)| {
            pad_row(&src.data[y * w..(y + 1) * w], radius, border, padded);
            conv_row(padded, taps, row_out);
        },
    );
    out
}

/// Convolves each column with `taps` (odd length, centred).
pub fn vertical(src: &Plane, taps: &[f32], border: Border) -> Plane {
    let radius = taps.len() / 2;
    let (w, h) = (src.width, src.height);
    let mut out = Plane::zeros(w, h);
    out.data
        .par_chunks_mut(w)
        .enumerate()
        .for_each(|(y, row_out)| {
            conv_cols(
                &tap_rows(&src.data, w, w, y, h, radius, border),
                taps,
                row_out,
            );
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn separable(src: &Plane, taps: &[f32], border: Border) -> Plane {
        vertical(&horizontal(src, taps, border), taps, border)
    }

    #[test]
    fn reflect_matches_scipy_rule() {
        let idx: Vec<usize> = (-3..7).map(|i| Border::Reflect.index(i, 4)).collect();
        assert_eq!(idx, vec![2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
        let idx: Vec<usize> = (-2..6).map(|i| Border::Clamp.index(i, 4)).collect();
        assert_eq!(idx, vec![0, 0, 0, 1, 2, 3, 3, 3]);
    }

    #[test]
    fn box_filter_of_constant_is_constant_and_impulse_spreads() {
        let mut p = Plane::zeros(7, 5);
        p.data.iter_mut().for_each(|v| *v = 2.0);
        let out = separable(&p, &[0.25, 0.5, 0.25], Border::Clamp);
        assert!(out.data.iter().all(|v| (v - 2.0).abs() < 1e-6));
        let mut imp = Plane::zeros(5, 5);
        imp.data[12] = 1.0;
        let out = separable(&imp, &[0.25, 0.5, 0.25], Border::Reflect);
        assert!((out.data[12] - 0.25).abs() < 1e-6);
        assert!((out.data[6] - 0.0625).abs() < 1e-6);
        assert!((out.data.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn vector_and_scalar_loops_agree_with_a_direct_sum() {
        let w = 37; // two full 16-lane blocks and a tail
        let src: Vec<f32> = (0..w + 4).map(|i| (i as f32 * 0.37).sin()).collect();
        let taps = [0.1, 0.2, 0.4, 0.2, 0.1];
        let mut fast = vec![0.0; w];
        conv_row(&src, &taps, &mut fast);
        let mut plain = vec![0.0; w];
        conv_row_impl::<false>(&src, &taps, &mut plain);
        for x in 0..w {
            let direct: f32 = (0..5).map(|k| taps[k] * src[x + k]).sum();
            assert!((fast[x] - direct).abs() < 1e-6 && (plain[x] - direct).abs() < 1e-6);
        }
    }
}
