//! SSIM (Wang et al. 2004), MS-SSIM (Wang, Simoncelli, Bovik 2003) and PSNR on the CPU.
//!
//! SSIM follows the common Gaussian variant: an 11×11 window with σ = 1.5, mirrored borders,
//! population (co)variances, K1 = 0.01, K2 = 0.03, data range 1, the map averaged after
//! dropping the 5-pixel border the window cannot see whole, per channel, channels averaged.

use rayon::prelude::*;

use super::ScoreError;
use super::constants::*;
use super::filter::{Border, conv_cols, conv_row, pad_row};
use super::image::{Plane, RgbImage, check_pair};

/// The normalised 1-D Gaussian window.
pub fn gaussian_window() -> Vec<f32> {
    let r = SSIM_RADIUS as isize;
    let mut taps: Vec<f32> = (-r..=r)
        .map(|i| (-0.5 * (i * i) as f32 / (SSIM_SIGMA * SSIM_SIGMA)).exp())
        .collect();
    let sum: f32 = taps.iter().sum();
    taps.iter_mut().for_each(|t| *t /= sum);
    taps
}

/// Row-filters one row of a channel pair: the five quantities x, y, x², y², xy, side by side
/// in `out` (5 × width), through `padded` (5 × (width + 2r) scratch).
fn filter_products(x: &[f32], y: &[f32], window: &[f32], padded: &mut [f32], out: &mut [f32]) {
    let w = x.len();
    let r = window.len() / 2;
    let (px, rest) = padded.split_at_mut(w + 2 * r);
    let (py, rest) = rest.split_at_mut(w + 2 * r);
    let (pxx, rest) = rest.split_at_mut(w + 2 * r);
    let (pyy, pxy) = rest.split_at_mut(w + 2 * r);
    pad_row(x, r, Border::Reflect, px);
    pad_row(y, r, Border::Reflect, py);
    for i in 0..w + 2 * r {
        pxx[i] = px[i] * px[i];
        pyy[i] = py[i] * py[i];
        pxy[i] = px[i] * py[i];
    }
    for (q, src) in [&*px, &*py, &*pxx, &*pyy, &*pxy].into_iter().enumerate() {
        conv_row(src, window, &mut out[q * w..(q + 1) * w]);
    }
}

/// Mean SSIM and mean contrast–structure term of one channel pair.
///
/// Only the rows whose whole window lies inside the image are scored (the 5-pixel border is
/// dropped), so the column pass never reads past an edge. Output rows go in bands, one band per
/// task; a band keeps the `window.len()` row-filtered rows its next output row needs in a ring
/// (11 × 5 × width floats, which stays in the core's cache) and filters each input row once as
/// it enters, and the column pass turns each output row into SSIM terms at once. An image-sized
/// intermediate of filtered rows, which this replaced, went through main memory twice.
fn ssim_channel(x: &Plane, y: &Plane, window: &[f32]) -> (f64, f64) {
    let (w, h) = (x.width, x.height);
    let taps = window.len();
    let r = taps / 2;
    let stride = 5 * w;
    let c1 = (SSIM_K1 * 1.0) * (SSIM_K1 * 1.0);
    let c2 = (SSIM_K2 * 1.0) * (SSIM_K2 * 1.0);
    let pad = SSIM_RADIUS;
    let (first, end) = (pad, h - pad);
    // Enough bands for every thread to take several; each band filters 2r rows of halo.
    let band = (end - first)
        .div_ceil(4 * rayon::current_num_threads())
        .max(32);
    let bands = (end - first).div_ceil(band);
    let (sum_s, sum_cs) = (0..bands)
        .into_par_iter()
        .map_init(
            || {
                (
                    vec![0.0f32; taps * stride],
                    vec![0.0f32; 5 * (w + 2 * r)],
                    vec![0.0f32; stride],
                )
            },
            |(ring, padded, acc), b| {
                let y0 = first + b * band;
                let y1 = (y0 + band).min(end);
                let mut filter = |src: usize, ring: &mut [f32]| {
                    let slot = (src % taps) * stride;
                    filter_products(
                        &x.data[src * w..(src + 1) * w],
                        &y.data[src * w..(src + 1) * w],
                        window,
                        padded,
                        &mut ring[slot..slot + stride],
                    );
                };
                for src in y0 - r..y0 + r {
                    filter(src, ring);
                }
                let (mut s_sum, mut cs_sum) = (0.0f64, 0.0f64);
                for row in y0..y1 {
                    // The newest row takes the slot of the one no longer needed.
                    filter(row + r, ring);
                    let rows: Vec<&[f32]> = (row - r..=row + r)
                        .map(|src| &ring[(src % taps) * stride..][..stride])
                        .collect();
                    conv_cols(&rows, window, acc);
                    let (mx, rest) = acc.split_at(w);
                    let (my, rest) = rest.split_at(w);
                    let (mxx, rest) = rest.split_at(w);
                    let (myy, mxy) = rest.split_at(w);
                    for i in pad..w - pad {
                        let (ux, uy) = (mx[i], my[i]);
                        let vx = mxx[i] - ux * ux;
                        let vy = myy[i] - uy * uy;
                        let vxy = mxy[i] - ux * uy;
                        let cs = (2.0 * vxy + c2) / (vx + vy + c2);
                        let l = (2.0 * ux * uy + c1) / (ux * ux + uy * uy + c1);
                        s_sum += f64::from(l * cs);
                        cs_sum += f64::from(cs);
                    }
                }
                (s_sum, cs_sum)
            },
        )
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let n = ((w - 2 * pad) * (h - 2 * pad)) as f64;
    (sum_s / n, sum_cs / n)
}

fn check_min_side(
    image: &RgbImage,
    metric: &'static str,
    min_side: usize,
) -> Result<(), ScoreError> {
    if image.width() < min_side || image.height() < min_side {
        return Err(ScoreError::TooSmall {
            image: image.label().to_owned(),
            metric,
            width: image.width(),
            height: image.height(),
            min_side,
        });
    }
    Ok(())
}

/// Mean SSIM over the three channels.
///
/// # Errors
/// [`ScoreError::SizeMismatch`], [`ScoreError::TooSmall`] below 11 pixels a side.
pub fn ssim(reference: &RgbImage, test: &RgbImage) -> Result<f64, ScoreError> {
    check_pair(reference, test)?;
    check_min_side(reference, "SSIM", 2 * SSIM_RADIUS + 1)?;
    let window = gaussian_window();
    let per: Vec<f64> = (0..3)
        .into_par_iter()
        .map(|c| ssim_channel(&reference.channels()[c], &test.channels()[c], &window).0)
        .collect();
    Ok(per.iter().sum::<f64>() / 3.0)
}

/// 2×2 average pooling (a trailing odd row or column is dropped).
pub fn downsample(p: &Plane) -> Plane {
    let (w, h) = (p.width / 2, p.height / 2);
    let mut out = Plane::zeros(w, h);
    out.data
        .par_chunks_mut(w.max(1))
        .enumerate()
        .for_each(|(y, row)| {
            let (a, b) = (&p.data[2 * y * p.width..], &p.data[(2 * y + 1) * p.width..]);
            for (x, o) in row.iter_mut().enumerate() {
                *o = 0.25 * (a[2 * x] + a[2 * x + 1] + b[2 * x] + b[2 * x + 1]);
            }
        });
    out
}

/// Smallest side MS-SSIM accepts: after four halvings (each rounding down) the coarsest of the
/// 5 scales must still hold one full 11×11 window, i.e. 11 × 2⁴ = 176 pixels. (161, the bound
/// used before, halves to 10 at the coarsest scale: no window fits and the score was 0/0.)
pub const MSSSIM_MIN_SIDE: usize = (2 * SSIM_RADIUS + 1) * 16;

/// MS-SSIM over five scales, per channel, channels averaged. Negative contrast–structure
/// terms are clamped to zero before the weighted product, so the result stays real.
///
/// # Errors
/// [`ScoreError::SizeMismatch`], [`ScoreError::TooSmall`] below [`MSSSIM_MIN_SIDE`] (176)
/// pixels a side.
pub fn ms_ssim(reference: &RgbImage, test: &RgbImage) -> Result<f64, ScoreError> {
    check_pair(reference, test)?;
    check_min_side(reference, "MS-SSIM", MSSSIM_MIN_SIDE)?;
    let window = gaussian_window();
    let per: Vec<f64> = (0..3)
        .into_par_iter()
        .map(|c| {
            let (mut x, mut y) = (reference.channels()[c].clone(), test.channels()[c].clone());
            let mut value = 1.0f64;
            for (scale, &weight) in MSSSIM_WEIGHTS.iter().enumerate() {
                let (s, cs) = ssim_channel(&x, &y, &window);
                let last = scale + 1 == MSSSIM_WEIGHTS.len();
                value *= (if last { s } else { cs }).max(0.0).powf(f64::from(weight));
                if !last {
                    (x, y) = (downsample(&x), downsample(&y));
                }
            }
            value
        })
        .collect();
    Ok(per.iter().sum::<f64>() / 3.0)
}

/// Mean squared error and PSNR (data range 1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PsnrStats {
    /// Mean squared error over all samples of all channels.
    pub mse: f64,
    /// `10 log10(1 / mse)` in dB; infinite for identical images (null in JSON).
    pub psnr_db: f64,
}

/// MSE and PSNR over all channels.
///
/// # Errors
/// [`ScoreError::SizeMismatch`].
pub fn psnr(reference: &RgbImage, test: &RgbImage) -> Result<PsnrStats, ScoreError> {
    check_pair(reference, test)?;
    let sum: f64 = (0..3)
        .map(|c| {
            let (a, b) = (&reference.channels()[c].data, &test.channels()[c].data);
            a.par_chunks(8192)
                .zip(b.par_chunks(8192))
                .map(|(x, y)| {
                    x.iter()
                        .zip(y)
                        .map(|(p, q)| (f64::from(*p) - f64::from(*q)).powi(2))
                        .sum::<f64>()
                })
                .sum::<f64>()
        })
        .sum();
    let mse = sum / (3 * reference.width() * reference.height()) as f64;
    Ok(PsnrStats {
        mse,
        psnr_db: 10.0 * (1.0 / mse).log10(),
    })
}
