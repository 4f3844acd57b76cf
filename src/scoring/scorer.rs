//! [`Scorer`]: one entry point over the CPU and CUDA paths.

use std::sync::Arc;

use super::ScoreError;
use super::constants::{CUDA_MAX_RADIUS, FLIP_DEFAULT_PPD, SSIM_RADIUS};
use super::cuda::{CudaScorer, cuda_unavailable_reason, grid_limit_reason};
use super::flip::{self, Exposures, FlipStats};
use super::image::{Plane, RgbImage, check_pair};
use super::kernels::{KernelCache, MemoryKernelCache};
use super::ssim::{self, MSSSIM_MIN_SIDE, PsnrStats};

/// Which metric to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// LDR-FLIP (lower is better, 0–1).
    Flip,
    /// HDR-FLIP (lower is better, 0–1).
    HdrFlip,
    /// SSIM (higher is better, ≤ 1).
    Ssim,
    /// MS-SSIM (higher is better, ≤ 1).
    Msssim,
    /// PSNR in dB (higher is better).
    Psnr,
}

impl Metric {
    /// Its name as the CLI and plans spell it (`flip`, `hdr-flip`, `ssim`, `msssim`, `psnr`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Flip => "flip",
            Metric::HdrFlip => "hdr-flip",
            Metric::Ssim => "ssim",
            Metric::Msssim => "msssim",
            Metric::Psnr => "psnr",
        }
    }
}

/// Where to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Device {
    /// CUDA when a driver, a device and NVRTC are present and the kernels compile; else the CPU.
    #[default]
    Auto,
    /// The CPU (rayon across all cores of the current pool).
    Cpu,
    /// CUDA, or an error.
    Cuda,
}

/// The device a scorer ended up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The CPU path.
    Cpu,
    /// The CUDA path.
    Cuda,
}

impl std::fmt::Display for Backend {
    /// `cpu` or `cuda`, as in JSON.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        })
    }
}

/// How to build a [`Scorer`].
#[derive(Clone)]
pub struct ScorerConfig {
    /// Device choice.
    pub device: Device,
    /// FLIP's pixels per degree.
    pub ppd: f32,
    /// Where compiled kernels are kept (in memory when `None`).
    pub kernel_cache: Option<Arc<dyn KernelCache>>,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            device: Device::Auto,
            ppd: FLIP_DEFAULT_PPD,
            kernel_cache: None,
        }
    }
}

/// One comparison's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Score {
    /// The metric.
    pub metric: Metric,
    /// Its value (FLIP mean, SSIM, MS-SSIM, or PSNR in dB).
    pub value: f64,
    /// Where it was computed.
    pub backend: Backend,
    /// FLIP's pooled statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flip: Option<FlipStats>,
    /// HDR-FLIP's exposure range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposures: Option<Exposures>,
    /// MSE alongside PSNR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psnr: Option<PsnrStats>,
    /// FLIP's per-pixel error map, when asked for.
    #[serde(skip)]
    pub error_map: Option<Plane>,
}

/// Computes metrics on the chosen device.
#[derive(Debug)]
pub struct Scorer {
    cuda: Option<CudaScorer>,
    ppd: f32,
    /// Why [`Device::Auto`] fell back to the CPU.
    cpu_reason: Option<String>,
}

impl Scorer {
    /// Builds a scorer. With [`Device::Auto`] a CUDA failure falls back to the CPU, logging why.
    ///
    /// # Errors
    /// [`ScoreError::InvalidPpd`]; with [`Device::Cuda`]: [`ScoreError::CudaUnavailable`],
    /// [`ScoreError::KernelCompile`], [`ScoreError::Cuda`].
    pub fn new(config: ScorerConfig) -> Result<Self, ScoreError> {
        let ppd = config.ppd;
        flip::check_ppd(ppd)?;
        let mut cpu_reason = None;
        let cuda = match config.device {
            Device::Cpu => None,
            Device::Cuda | Device::Auto => {
                let cache: Arc<dyn KernelCache> = config
                    .kernel_cache
                    .clone()
                    .unwrap_or_else(|| Arc::new(MemoryKernelCache::default()));
                let filters = flip::FlipFilters::new(ppd)?;
                let radius = filters.y.len().max(filters.gauss.len()) / 2;
                let attempt = match cuda_unavailable_reason() {
                    Some(reason) => Err(ScoreError::CudaUnavailable(reason)),
                    // The kernels' shared tiles hold filters up to CUDA_MAX_RADIUS.
                    None if radius > CUDA_MAX_RADIUS => Err(ScoreError::CudaUnavailable(format!(
                        "{ppd} pixels per degree needs FLIP filter radius {radius}; the kernels hold up to {CUDA_MAX_RADIUS}"
                    ))),
                    None => CudaScorer::new(cache.as_ref()),
                };
                match (attempt, config.device) {
                    (Ok(c), _) => Some(c),
                    (Err(e), Device::Auto) => {
                        tracing::info!(reason = %e, "scoring on the CPU");
                        cpu_reason = Some(e.to_string());
                        None
                    }
                    (Err(e), _) => return Err(e),
                }
            }
        };
        Ok(Self {
            cuda,
            ppd,
            cpu_reason,
        })
    }

    /// Why [`Device::Auto`] chose the CPU (no driver, no device, no NVRTC, kernels that do not
    /// compile...); `None` on CUDA or when the CPU was asked for.
    pub fn cpu_reason(&self) -> Option<&str> {
        self.cpu_reason.as_deref()
    }

    /// Where this scorer computes.
    pub fn backend(&self) -> Backend {
        if self.cuda.is_some() {
            Backend::Cuda
        } else {
            Backend::Cpu
        }
    }

    /// The CUDA architecture in use (e.g. `sm_90`), if on CUDA.
    pub fn cuda_arch(&self) -> Option<&str> {
        self.cuda.as_ref().map(CudaScorer::arch)
    }

    /// Scores one pair; `want_map` keeps FLIP's error map.
    ///
    /// # Errors
    /// Input errors ([`ScoreError::SizeMismatch`], [`ScoreError::TooSmall`], [`ScoreError::ExposureRange`]) on either path,
    /// [`ScoreError::Cuda`] on the CUDA path.
    pub fn score(
        &self,
        metric: Metric,
        reference: &RgbImage,
        test: &RgbImage,
        want_map: bool,
    ) -> Result<Score, ScoreError> {
        self.score_batch(metric, &[(reference, test)], want_map)
            .pop()
            .unwrap_or_else(|| {
                Err(ScoreError::Cuda {
                    stage: "batch",
                    message: "no result for the pair".into(),
                })
            })
    }

    /// Scores many pairs; on CUDA they are spread over streams so copies overlap compute.
    /// Each pair gets its own result, so one bad pair does not fail the others.
    pub fn score_batch(
        &self,
        metric: Metric,
        pairs: &[(&RgbImage, &RgbImage)],
        want_map: bool,
    ) -> Vec<Result<Score, ScoreError>> {
        let checked: Vec<Result<(), ScoreError>> =
            pairs.iter().map(|(r, t)| validate(metric, r, t)).collect();
        let Some(cuda) = &self.cuda else {
            return pairs
                .iter()
                .zip(checked)
                .map(|((r, t), ok)| {
                    ok.and_then(|()| self.score_cpu(metric, r, t, want_map))
                        .and_then(|s| finite(s, r, t))
                })
                .collect();
        };
        // A pair the kernels cannot launch over (taller than a grid holds) goes to the CPU
        // path, which takes any size the pixel limit allows: same numbers, slower.
        let on_cuda: Vec<bool> = pairs
            .iter()
            .zip(&checked)
            .map(|((r, _), c)| {
                c.is_ok()
                    && match grid_limit_reason(r.width(), r.height()) {
                        None => true,
                        Some(reason) => {
                            tracing::info!(image = r.label(), %reason, "scoring on the CPU");
                            false
                        }
                    }
            })
            .collect();
        let good: Vec<(&RgbImage, &RgbImage)> = pairs
            .iter()
            .zip(&on_cuda)
            .filter(|(_, cuda)| **cuda)
            .map(|(p, _)| *p)
            .collect();
        let computed: Result<Vec<Score>, ScoreError> = match metric {
            _ if good.is_empty() => Ok(Vec::new()),
            Metric::Flip | Metric::HdrFlip => cuda
                .flip_batch(&good, self.ppd, metric == Metric::HdrFlip, want_map)
                .map(|v| {
                    v.into_iter()
                        .map(|(out, exposures)| Score {
                            metric,
                            value: out.stats.mean,
                            backend: Backend::Cuda,
                            flip: Some(out.stats),
                            exposures,
                            psnr: None,
                            error_map: want_map.then_some(out.map),
                        })
                        .collect()
                }),
            Metric::Ssim | Metric::Msssim => {
                cuda.ssim_batch(&good, metric == Metric::Msssim).map(|v| {
                    v.into_iter()
                        .map(|value| plain(metric, value, Backend::Cuda))
                        .collect()
                })
            }
            Metric::Psnr => cuda.psnr_batch(&good).map(|v| {
                v.into_iter()
                    .map(|p| Score {
                        psnr: Some(p),
                        ..plain(metric, p.psnr_db, Backend::Cuda)
                    })
                    .collect()
            }),
        };
        let mut computed = match computed {
            Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>().into_iter(),
            Err(e) => {
                let message = e.to_string();
                let stage = match e {
                    ScoreError::Cuda { stage, .. } => stage,
                    _ => "batch",
                };
                (0..good.len())
                    .map(|_| {
                        Err(ScoreError::Cuda {
                            stage,
                            message: message.clone(),
                        })
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
            }
        };
        checked
            .into_iter()
            .zip(pairs)
            .zip(on_cuda)
            .map(|((c, (r, t)), cuda)| match c {
                Ok(()) if !cuda => self
                    .score_cpu(metric, r, t, want_map)
                    .and_then(|s| finite(s, r, t)),
                Ok(()) => computed
                    .next()
                    .unwrap_or_else(|| {
                        Err(ScoreError::Cuda {
                            stage: "batch",
                            message: "missing result".into(),
                        })
                    })
                    .and_then(|s| finite(s, r, t)),
                Err(e) => Err(e),
            })
            .collect()
    }

    fn score_cpu(
        &self,
        metric: Metric,
        r: &RgbImage,
        t: &RgbImage,
        want_map: bool,
    ) -> Result<Score, ScoreError> {
        Ok(match metric {
            Metric::Flip => {
                let out = flip::flip(r, t, self.ppd)?;
                Score {
                    flip: Some(out.stats),
                    error_map: want_map.then_some(out.map),
                    ..plain(metric, out.stats.mean, Backend::Cpu)
                }
            }
            Metric::HdrFlip => {
                let (out, exposures) = flip::hdr_flip(r, t, self.ppd)?;
                Score {
                    flip: Some(out.stats),
                    exposures: Some(exposures),
                    error_map: want_map.then_some(out.map),
                    ..plain(metric, out.stats.mean, Backend::Cpu)
                }
            }
            Metric::Ssim => plain(metric, ssim::ssim(r, t)?, Backend::Cpu),
            Metric::Msssim => plain(metric, ssim::ms_ssim(r, t)?, Backend::Cpu),
            Metric::Psnr => {
                let p = ssim::psnr(r, t)?;
                Score {
                    psnr: Some(p),
                    ..plain(metric, p.psnr_db, Backend::Cpu)
                }
            }
        })
    }
}

/// A score whose value is not a number (single precision overflowed on extreme pixel values)
/// is an error, not a result a gate could compare; identical images' PSNR (+inf) is the one
/// infinite value that means something.
fn finite(score: Score, reference: &RgbImage, test: &RgbImage) -> Result<Score, ScoreError> {
    let psnr_of_identical = score.metric == Metric::Psnr && score.value == f64::INFINITY;
    if score.value.is_finite() || psnr_of_identical {
        return Ok(score);
    }
    Err(ScoreError::NotFinite {
        metric: score.metric.name(),
        value: score.value,
        reference: reference.label().to_owned(),
        test: test.label().to_owned(),
    })
}

fn plain(metric: Metric, value: f64, backend: Backend) -> Score {
    Score {
        metric,
        value,
        backend,
        flip: None,
        exposures: None,
        psnr: None,
        error_map: None,
    }
}

/// Whether `image` is large enough for `metric`'s window (SSIM's 11 pixels, MS-SSIM's five
/// scales); a pair's images have one size, so this is the reference's check for any test image.
///
/// # Errors
/// [`ScoreError::TooSmall`], naming the image and the smallest side the metric takes.
pub fn check_size(metric: Metric, image: &RgbImage) -> Result<(), ScoreError> {
    let min_side = match metric {
        Metric::Ssim => 2 * SSIM_RADIUS + 1,
        Metric::Msssim => MSSSIM_MIN_SIDE,
        _ => 1,
    };
    if image.width() < min_side || image.height() < min_side {
        return Err(ScoreError::TooSmall {
            image: image.label().to_owned(),
            metric: if metric == Metric::Ssim {
                "SSIM"
            } else {
                "MS-SSIM"
            },
            width: image.width(),
            height: image.height(),
            min_side,
        });
    }
    Ok(())
}

/// The input checks both paths share, so both report bad input the same way.
fn validate(metric: Metric, reference: &RgbImage, test: &RgbImage) -> Result<(), ScoreError> {
    check_pair(reference, test)?;
    check_size(metric, reference)?;
    if metric == Metric::HdrFlip {
        flip::exposures(reference.label(), &flip::hdr_linear(reference))?;
    }
    // FLIP decodes each image by its own encoding; SSIM, MS-SSIM and PSNR compare stored
    // values, which means nothing between linear light and sRGB-encoded values.
    let compares_values = matches!(metric, Metric::Ssim | Metric::Msssim | Metric::Psnr);
    if compares_values && reference.transfer() != test.transfer() {
        return Err(ScoreError::MixedEncodings {
            metric: metric.name(),
            reference: reference.label().to_owned(),
            reference_encoding: reference.transfer(),
            test: test.label().to_owned(),
            test_encoding: test.transfer(),
        });
    }
    // SSIM's constants assume values in [0, 1]; linear HDR values far above it gave scores in
    // the millions (and a gate `min = 0.95` passed an anti-correlated image).
    if matches!(metric, Metric::Ssim | Metric::Msssim) {
        reference.check_unit_range(metric.name())?;
        test.check_unit_range(metric.name())?;
    }
    Ok(())
}
