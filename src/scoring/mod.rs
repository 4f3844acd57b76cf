//! Image-difference metrics for rendered images: FLIP, HDR-FLIP, SSIM, MS-SSIM, PSNR.
//!
//! Owns the CPU implementations (rayon, planar floats), the CUDA kernels in `kernels/*.cu`
//! with their NVRTC compilation, kernel cache and launcher, and the [`Scorer`] that picks a
//! device. The metrics are written here from their papers because no maintained Rust crate
//! implements FLIP, and the CUDA path must compute the same sums as the CPU path.

mod constants;
mod cuda;
mod error;
mod filter;
mod flip;
mod image;
mod kernels;
mod scorer;
mod ssim;

pub use constants::*;
pub use cuda::{CUDA_MAX_HEIGHT, cuda_unavailable_reason, grid_limit_reason};
pub use error::ScoreError;
pub use filter::Border;
pub use flip::{
    Exposures, FlipFilters, FlipOutput, FlipStats, check_ppd, exposures, flip, hdr_flip,
    hdr_linear, magma, pool, tone_map, weighted_percentile, write_error_map,
};
pub(crate) use image::check_pixels;
pub use image::{Plane, RgbImage, Transfer};
pub use kernels::{
    CompiledKernel, DirKernelCache, FunctionResources, KERNEL_SOURCES, KernelCache, KernelCacheKey,
    KernelSource, MemoryKernelCache, StoreKernelCache, compile, cubin_cached, nvrtc_version,
    parse_ptxas_log,
};
pub use scorer::{Backend, Device, Metric, Score, Scorer, ScorerConfig, check_size};
pub use ssim::{MSSSIM_MIN_SIDE, PsnrStats, gaussian_window, ms_ssim, psnr, ssim};
