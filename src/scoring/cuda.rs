//! The CUDA path: loads the NVRTC-compiled kernels and runs batches of image pairs.
//!
//! Each pair goes to one of a few streams in turn; its pixels are staged in that stream's
//! pinned host buffer so the upload of one pair overlaps the kernels of the previous one.
//! Only pooled values (and the error map when asked for) come back to the host.
#![allow(unsafe_code)] // Kernel launches through cudarc are unsafe: argument types are checked by hand against kernels/*.cu.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PinnedHostSlice,
    PushKernelArg,
};

use super::ScoreError;
use super::constants::*;
use super::flip::{self, Exposures, FlipFilters, FlipOutput, FlipStats};
use super::image::{Plane, RgbImage, Transfer};
use super::kernels::{KERNEL_SOURCES, KernelCache, cubin_cached};
use super::ssim::{MSSSIM_MIN_SIDE, PsnrStats, gaussian_window};

const STREAMS: usize = 2;
const LINEAR_BLOCK: u32 = 256;

fn cuda_err(stage: &'static str) -> impl Fn(DriverError) -> ScoreError {
    move |e| ScoreError::Cuda {
        stage,
        message: e.to_string(),
    }
}

/// Why CUDA cannot be used on this machine, if it cannot: no driver library, no device.
pub fn cuda_unavailable_reason() -> Option<String> {
    // SAFETY: only probes whether the driver library can be opened; no preconditions.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("the CUDA driver library (libcuda.so) is not installed".into());
    }
    if let Err(e) = super::kernels::nvrtc_version() {
        return Some(e);
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => None,
        Ok(_) => Some("no CUDA device present".into()),
        Err(e) => Some(format!("cuInit/cuDeviceGetCount failed: {e}")),
    }
}

struct Functions {
    flip_prepare: CudaFunction,
    flip_rows: CudaFunction,
    flip_cols: CudaFunction,
    flip_combine: CudaFunction,
    flip_pool: CudaFunction,
    ssim_rows: CudaFunction,
    ssim_cols_reduce: CudaFunction,
    downsample2: CudaFunction,
    sq_diff_sum: CudaFunction,
}

/// Device-side state: context, streams with their pinned staging buffers, kernels.
pub struct CudaScorer {
    ctx: Arc<CudaContext>,
    streams: Vec<Arc<CudaStream>>,
    staging: std::sync::Mutex<Vec<Option<PinnedHostSlice<f32>>>>,
    functions: Functions,
    arch: String,
}

impl std::fmt::Debug for CudaScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaScorer")
            .field("arch", &self.arch)
            .finish_non_exhaustive()
    }
}

/// The most blocks a launch may have in its y dimension (CUDA's limit on every device).
const MAX_GRID_Y: usize = 65_535;

/// The tallest image the kernels take: the row passes launch one block row per
/// `CUDA_TILE_Y` image rows, and a grid's y dimension stops at 65,535 blocks.
pub const CUDA_MAX_HEIGHT: usize = MAX_GRID_Y * CUDA_TILE_Y as usize;

/// Why a `width`×`height` image cannot be scored by the kernels, if it cannot (it is scored
/// on the CPU instead). The grid's x dimension (up to 2^31 − 1 blocks) holds any width the
/// pixel limit allows, so only the height can be out of reach.
pub fn grid_limit_reason(width: usize, height: usize) -> Option<String> {
    (height > CUDA_MAX_HEIGHT).then(|| {
        format!(
            "{width}x{height} is taller than the {CUDA_MAX_HEIGHT} rows a CUDA launch grid holds"
        )
    })
}

fn grid_2d(w: usize, h: usize, rows_per_block: u32, z: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            (w as u32).div_ceil(CUDA_TILE_X),
            (h as u32).div_ceil(CUDA_TILE_Y * rows_per_block),
            z,
        ),
        block_dim: (CUDA_TILE_X, CUDA_TILE_Y, 1),
        shared_mem_bytes: 0,
    }
}

fn grid_1d(n: usize, y: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(LINEAR_BLOCK), y, 1),
        block_dim: (LINEAR_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn flip_taps(ppd: f32) -> Result<(Vec<f32>, i32, i32), ScoreError> {
    let f = FlipFilters::new(ppd)?;
    let (r_csf, r_feat) = (f.y.len() / 2, f.gauss.len() / 2);
    if r_csf > CUDA_MAX_RADIUS || r_feat > CUDA_MAX_RADIUS {
        return Err(ScoreError::CudaUnavailable(format!(
            "{ppd} pixels per degree needs filter radius {} (kernels hold up to {CUDA_MAX_RADIUS})",
            r_csf.max(r_feat)
        )));
    }
    let mut taps = vec![0.0f32; ROW_PLANES * TAP_STRIDE];
    for (set, t) in [&f.y, &f.cx, &f.cz1, &f.cz2, &f.gauss, &f.edge, &f.point]
        .into_iter()
        .enumerate()
    {
        let r = t.len() / 2;
        for (k, v) in t.iter().enumerate() {
            taps[set * TAP_STRIDE + CUDA_MAX_RADIUS - r + k] = *v;
        }
    }
    Ok((taps, r_csf as i32, r_feat as i32))
}

impl CudaScorer {
    /// Opens device 0 and loads the kernels (compiled for its architecture, through `cache`).
    ///
    /// # Errors
    /// [`ScoreError::CudaUnavailable`], [`ScoreError::KernelCompile`], [`ScoreError::Cuda`].
    pub fn new(cache: &dyn KernelCache) -> Result<Self, ScoreError> {
        if let Some(reason) = cuda_unavailable_reason() {
            return Err(ScoreError::CudaUnavailable(reason));
        }
        let ctx = CudaContext::new(0).map_err(cuda_err("open device 0"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(cuda_err("compute capability"))?;
        let arch = format!("sm_{major}{minor}");
        let mut modules = Vec::new();
        for source in &KERNEL_SOURCES {
            let cubin = cubin_cached(source, &arch, cache)?;
            modules.push(
                ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
                    .map_err(cuda_err("load module"))?,
            );
        }
        let f = |m: usize, name: &str| {
            modules[m]
                .load_function(name)
                .map_err(cuda_err("load function"))
        };
        let functions = Functions {
            flip_prepare: f(0, "flip_prepare")?,
            flip_rows: f(0, "flip_rows")?,
            flip_cols: f(0, "flip_cols")?,
            flip_combine: f(0, "flip_combine")?,
            flip_pool: f(0, "flip_pool")?,
            ssim_rows: f(1, "ssim_rows")?,
            ssim_cols_reduce: f(1, "ssim_cols_reduce")?,
            downsample2: f(1, "downsample2")?,
            sq_diff_sum: f(2, "sq_diff_sum")?,
        };
        let streams = (0..STREAMS)
            .map(|_| ctx.new_stream())
            .collect::<Result<Vec<_>, _>>()
            .map_err(cuda_err("create stream"))?;
        let staging = std::sync::Mutex::new((0..STREAMS).map(|_| None).collect());
        tracing::info!(arch, "CUDA scorer ready");
        Ok(Self {
            ctx,
            streams,
            staging,
            functions,
            arch,
        })
    }

    /// The device architecture, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// A copy of `values` on each stream.
    fn upload_per_stream(&self, values: &[f32]) -> Result<Vec<CudaSlice<f32>>, ScoreError> {
        self.streams
            .iter()
            .map(|st| st.clone_htod(values).map_err(cuda_err("upload constants")))
            .collect()
    }

    /// Copies a pair's six planes into stream `s`'s pinned buffer, then to a device buffer.
    fn upload(
        &self,
        s: usize,
        reference: &RgbImage,
        test: &RgbImage,
    ) -> Result<CudaSlice<f32>, ScoreError> {
        let n = reference.width() * reference.height();
        let stream = &self.streams[s];
        let mut staging = self.staging.lock().map_err(|_| ScoreError::Cuda {
            stage: "staging",
            message: "poisoned lock".into(),
        })?;
        if staging[s].as_ref().is_none_or(|p| p.len() != 6 * n) {
            // SAFETY: a fresh pinned allocation of 6n f32; it is fully written below before any copy reads it.
            staging[s] = Some(
                unsafe { self.ctx.alloc_pinned::<f32>(6 * n) }.map_err(cuda_err("pinned alloc"))?,
            );
        }
        let Some(pinned) = staging[s].as_mut() else {
            return Err(ScoreError::Cuda {
                stage: "staging",
                message: "no pinned buffer".into(),
            });
        };
        // as_mut_slice waits for the buffer's last copy (its event), not for the whole stream,
        // so this pair's staging overlaps the previous pair's kernels.
        let host = pinned.as_mut_slice().map_err(cuda_err("pinned map"))?;
        for (i, plane) in reference
            .channels()
            .iter()
            .chain(test.channels())
            .enumerate()
        {
            host[i * n..(i + 1) * n].copy_from_slice(&plane.data);
        }
        let mut dev = stream
            .alloc_zeros::<f32>(6 * n)
            .map_err(cuda_err("alloc"))?;
        // Copying from the pinned buffer itself (not a slice of it) keeps the copy asynchronous.
        stream
            .memcpy_htod(&*pinned, &mut dev)
            .map_err(cuda_err("upload"))?;
        Ok(dev)
    }

    /// FLIP (or HDR-FLIP) for each pair; maps are returned when `want_map`.
    ///
    /// # Errors
    /// [`ScoreError::Cuda`] and the input errors of the CPU path.
    pub fn flip_batch(
        &self,
        pairs: &[(&RgbImage, &RgbImage)],
        ppd: f32,
        hdr: bool,
        want_map: bool,
    ) -> Result<Vec<(FlipOutput, Option<Exposures>)>, ScoreError> {
        let (taps, r_csf, r_feat) = flip_taps(ppd)?;
        // One upload per stream per batch: a copy from a plain Vec waits for its stream.
        let stream_taps = self.upload_per_stream(&taps)?;
        let mut pending = Vec::new();
        for (index, (reference, test)) in pairs.iter().enumerate() {
            let s = index % STREAMS;
            let stream = &self.streams[s];
            let (w, h) = (reference.width(), reference.height());
            let n = w * h;
            let exposures = if hdr {
                Some(flip::exposures(
                    reference.label(),
                    &flip::hdr_linear(reference),
                )?)
            } else {
                None
            };
            let input = self.upload(s, reference, test)?;
            let d_taps = &stream_taps[s];
            let mut ycxcz = stream
                .alloc_zeros::<f32>(6 * n)
                .map_err(cuda_err("alloc"))?;
            let mut rows = stream
                .alloc_zeros::<f32>(2 * ROW_PLANES * n)
                .map_err(cuda_err("alloc"))?;
            let mut cols = stream
                .alloc_zeros::<f32>(2 * ROW_PLANES * n)
                .map_err(cuda_err("alloc"))?;
            let mut map = stream.alloc_zeros::<f32>(n).map_err(cuda_err("alloc"))?;
            let (wi, hi, ni) = (w as i32, h as i32, n as i32);
            let scales: Vec<f32> = match exposures {
                Some(e) => {
                    let step = (e.stop - e.start) / (e.count - 1) as f32;
                    (0..e.count)
                        .map(|i| (e.start + i as f32 * step).exp2())
                        .collect()
                }
                None => vec![1.0],
            };
            let srgb_mask = i32::from(reference.transfer() == Transfer::Srgb)
                | (i32::from(test.transfer() == Transfer::Srgb) << 1);
            let keep_max = i32::from(hdr);
            for scale in scales {
                let mut b = stream.launch_builder(&self.functions.flip_prepare);
                b.arg(&input)
                    .arg(&mut ycxcz)
                    .arg(&ni)
                    .arg(&srgb_mask)
                    .arg(&keep_max)
                    .arg(&scale);
                // SAFETY: flip_prepare(const float*, float*, int, int, int, float); input and ycxcz hold 2 images × 3 planes × n.
                unsafe { b.launch(grid_1d(n, 2)) }.map_err(cuda_err("flip_prepare"))?;
                let mut b = stream.launch_builder(&self.functions.flip_rows);
                b.arg(&ycxcz)
                    .arg(&mut rows)
                    .arg(d_taps)
                    .arg(&wi)
                    .arg(&hi)
                    .arg(&r_csf)
                    .arg(&r_feat);
                // SAFETY: flip_rows(const float*, float*, const float*, int, int, int, int); rows holds 2 × 7 planes; taps 7 × TAP_STRIDE.
                unsafe { b.launch(grid_2d(w, h, 1, 2)) }.map_err(cuda_err("flip_rows"))?;
                let mut b = stream.launch_builder(&self.functions.flip_cols);
                b.arg(&rows)
                    .arg(&mut cols)
                    .arg(d_taps)
                    .arg(&wi)
                    .arg(&hi)
                    .arg(&r_csf)
                    .arg(&r_feat);
                // SAFETY: flip_cols has flip_rows' signature; cols holds 2 × 7 planes.
                unsafe { b.launch(grid_2d(w, h, COL_ROWS, 2)) }.map_err(cuda_err("flip_cols"))?;
                let mut b = stream.launch_builder(&self.functions.flip_combine);
                b.arg(&cols).arg(&mut map).arg(&ni).arg(&keep_max);
                // SAFETY: flip_combine(const float*, float*, int, int); one pair (grid y = 1), map holds n.
                unsafe { b.launch(grid_1d(n, 1)) }.map_err(cuda_err("flip_combine"))?;
            }
            let mut sums = stream.alloc_zeros::<f64>(1).map_err(cuda_err("alloc"))?;
            let mut minmax = stream.alloc_zeros::<u32>(2).map_err(cuda_err("alloc"))?;
            let mut hist = stream
                .alloc_zeros::<u32>(FLIP_HISTOGRAM_BUCKETS)
                .map_err(cuda_err("alloc"))?;
            let mut b = stream.launch_builder(&self.functions.flip_pool);
            b.arg(&map)
                .arg(&ni)
                .arg(&mut sums)
                .arg(&mut minmax)
                .arg(&mut hist);
            let blocks = (n as u32).div_ceil(LINEAR_BLOCK).min(1024);
            let cfg = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (LINEAR_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: flip_pool(const float*, int, double*, unsigned*, unsigned*); one pair: 1 sum, 2 minmax, FLIP_HISTOGRAM_BUCKETS buckets.
            unsafe { b.launch(cfg) }.map_err(cuda_err("flip_pool"))?;
            pending.push((s, n, w, h, exposures, map, sums, minmax, hist));
        }
        let mut out = Vec::new();
        for (s, n, w, h, exposures, map, sums, minmax, hist) in pending {
            let stream = &self.streams[s];
            let sums = stream.clone_dtoh(&sums).map_err(cuda_err("download"))?;
            let minmax = stream.clone_dtoh(&minmax).map_err(cuda_err("download"))?;
            let hist: Vec<u64> = stream
                .clone_dtoh(&hist)
                .map_err(cuda_err("download"))?
                .into_iter()
                .map(u64::from)
                .collect();
            let map = if want_map {
                Plane {
                    width: w,
                    height: h,
                    data: stream.clone_dtoh(&map).map_err(cuda_err("download"))?,
                }
            } else {
                Plane {
                    width: w,
                    height: h,
                    data: Vec::new(),
                }
            };
            let stats = FlipStats::pooled(
                sums[0] / n as f64,
                &hist,
                f64::from(f32::from_bits(u32::MAX - minmax[0])),
                f64::from(f32::from_bits(minmax[1])),
            );
            out.push((FlipOutput { map, stats }, exposures));
        }
        Ok(out)
    }

    /// Mean SSIM and CS per channel at one scale for planes already on the device.
    fn ssim_scale(
        &self,
        stream: &Arc<CudaStream>,
        planes: &CudaSlice<f32>,
        w: usize,
        h: usize,
        taps: &CudaSlice<f32>,
    ) -> Result<CudaSlice<f64>, ScoreError> {
        let n = w * h;
        let mut rows = stream
            .alloc_zeros::<f32>(15 * n)
            .map_err(cuda_err("alloc"))?;
        let mut sums = stream.alloc_zeros::<f64>(6).map_err(cuda_err("alloc"))?;
        let (xs, ys) = (planes.slice(..3 * n), planes.slice(3 * n..6 * n));
        let (wi, hi) = (w as i32, h as i32);
        let mut b = stream.launch_builder(&self.functions.ssim_rows);
        b.arg(&xs)
            .arg(&ys)
            .arg(&mut rows)
            .arg(taps)
            .arg(&wi)
            .arg(&hi);
        // SAFETY: ssim_rows(const float*, const float*, float*, const float*, int, int); 3 channel pairs (grid z), rows 3 × 5 planes.
        unsafe { b.launch(grid_2d(w, h, 1, 3)) }.map_err(cuda_err("ssim_rows"))?;
        let mut b = stream.launch_builder(&self.functions.ssim_cols_reduce);
        b.arg(&rows).arg(taps).arg(&wi).arg(&hi).arg(&mut sums);
        // SAFETY: ssim_cols_reduce(const float*, const float*, int, int, double*); sums holds 2 per channel.
        unsafe { b.launch(grid_2d(w, h, 1, 3)) }.map_err(cuda_err("ssim_cols_reduce"))?;
        Ok(sums)
    }

    /// SSIM (`multi_scale = false`) or MS-SSIM for each pair.
    ///
    /// # Errors
    /// [`ScoreError::Cuda`].
    pub fn ssim_batch(
        &self,
        pairs: &[(&RgbImage, &RgbImage)],
        multi_scale: bool,
    ) -> Result<Vec<f64>, ScoreError> {
        let stream_taps = self.upload_per_stream(&gaussian_window())?;
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for (index, (reference, test)) in pairs.iter().enumerate() {
            let s = index % STREAMS;
            let stream = &self.streams[s];
            let taps = &stream_taps[s];
            let (mut w, mut h) = (reference.width(), reference.height());
            let mut planes = self.upload(s, reference, test)?;
            let scales = if multi_scale { MSSSIM_WEIGHTS.len() } else { 1 };
            let mut per_scale = Vec::new();
            for scale in 0..scales {
                per_scale.push((self.ssim_scale(stream, &planes, w, h, taps)?, w, h));
                if scale + 1 < scales {
                    let (ow, oh) = (w / 2, h / 2);
                    let mut next = stream
                        .alloc_zeros::<f32>(6 * ow * oh)
                        .map_err(cuda_err("alloc"))?;
                    let (wi, hi) = (w as i32, h as i32);
                    let mut b = stream.launch_builder(&self.functions.downsample2);
                    b.arg(&planes).arg(&mut next).arg(&wi).arg(&hi);
                    let cfg = LaunchConfig {
                        grid_dim: (
                            (ow as u32).div_ceil(CUDA_TILE_X),
                            (oh as u32).div_ceil(CUDA_TILE_Y),
                            6,
                        ),
                        block_dim: (CUDA_TILE_X, CUDA_TILE_Y, 1),
                        shared_mem_bytes: 0,
                    };
                    // SAFETY: downsample2(const float*, float*, int, int); 6 planes (grid z) of w×h into ow×oh.
                    unsafe { b.launch(cfg) }.map_err(cuda_err("downsample2"))?;
                    (planes, w, h) = (next, ow, oh);
                }
            }
            pending.push((s, per_scale));
        }
        for (s, per_scale) in pending {
            let stream = &self.streams[s];
            let mut channel_values = [1.0f64; 3];
            let scales = per_scale.len();
            for (scale, (sums, w, h)) in per_scale.into_iter().enumerate() {
                let sums = stream.clone_dtoh(&sums).map_err(cuda_err("download"))?;
                let count = ((w - 2 * SSIM_RADIUS) * (h - 2 * SSIM_RADIUS)) as f64;
                for (c, v) in channel_values.iter_mut().enumerate() {
                    let (ssim, cs) = (sums[2 * c] / count, sums[2 * c + 1] / count);
                    if scales == 1 {
                        *v = ssim;
                    } else {
                        let last = scale + 1 == scales;
                        *v *= (if last { ssim } else { cs })
                            .max(0.0)
                            .powf(f64::from(MSSSIM_WEIGHTS[scale]));
                    }
                }
            }
            out.push(channel_values.iter().sum::<f64>() / 3.0);
        }
        debug_assert!(
            !multi_scale
                || pairs
                    .iter()
                    .all(|(r, _)| r.width().min(r.height()) >= MSSSIM_MIN_SIDE)
        );
        Ok(out)
    }

    /// MSE and PSNR for each pair.
    ///
    /// # Errors
    /// [`ScoreError::Cuda`].
    pub fn psnr_batch(
        &self,
        pairs: &[(&RgbImage, &RgbImage)],
    ) -> Result<Vec<PsnrStats>, ScoreError> {
        let mut pending = Vec::new();
        for (index, (reference, test)) in pairs.iter().enumerate() {
            let s = index % STREAMS;
            let stream = &self.streams[s];
            let samples = 3 * reference.width() * reference.height();
            let planes = self.upload(s, reference, test)?;
            let mut sums = stream.alloc_zeros::<f64>(1).map_err(cuda_err("alloc"))?;
            let (a, b_) = (planes.slice(..samples), planes.slice(samples..2 * samples));
            let count = samples as i64;
            let mut b = stream.launch_builder(&self.functions.sq_diff_sum);
            b.arg(&a).arg(&b_).arg(&count).arg(&mut sums);
            let blocks = (samples as u32).div_ceil(LINEAR_BLOCK).min(1024);
            let cfg = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (LINEAR_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: sq_diff_sum(const float*, const float*, long long, double*); both views hold `samples` floats.
            unsafe { b.launch(cfg) }.map_err(cuda_err("sq_diff_sum"))?;
            pending.push((s, samples, sums));
        }
        let mut out = Vec::new();
        for (s, samples, sums) in pending {
            let sums = self.streams[s]
                .clone_dtoh(&sums)
                .map_err(cuda_err("download"))?;
            let mse = sums[0] / samples as f64;
            out.push(PsnrStats {
                mse,
                psnr_db: 10.0 * (1.0 / mse).log10(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_limit_is_on_the_height_alone() {
        assert_eq!(CUDA_MAX_HEIGHT, 524_280);
        assert_eq!(grid_limit_reason(64, CUDA_MAX_HEIGHT), None);
        // The widest image the pixel limit allows fits the grid's x dimension.
        assert_eq!(grid_limit_reason(MAX_PIXELS, 1), None);
        let reason = grid_limit_reason(64, CUDA_MAX_HEIGHT + 1).unwrap_or_default();
        assert!(reason.contains("64x524281"), "{reason}");
    }
}
