//! `tetrarch score`: compares a test image with a reference.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use std::sync::Arc;

use super::outputs::refuse_overwriting;
use tetrarch::scoring::{
    Device, FLIP_DEFAULT_PPD, KernelCache, Metric, RgbImage, Scorer, ScorerConfig,
    StoreKernelCache, cuda_unavailable_reason, write_error_map,
};
use tetrarch::store::StoreConfig;

/// Arguments of `tetrarch score`.
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// The reference image (PNG, JPEG or OpenEXR).
    pub reference: PathBuf,
    /// The image to judge against it.
    pub test: PathBuf,
    /// Which metric.
    #[arg(long, value_enum, default_value_t = Metric::Flip)]
    pub metric: Metric,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// FLIP's pixels per degree of visual angle.
    #[arg(long, default_value_t = FLIP_DEFAULT_PPD, allow_negative_numbers = true)]
    pub ppd: f32,
    /// Write FLIP's error map here as a colour-mapped PNG.
    #[arg(long, value_name = "OUT.png")]
    pub map: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Compiled kernels are cached in the store when CUDA can be used at all; without CUDA the store
/// is not opened. A store that cannot be opened only costs a compile.
fn kernel_cache(device: Device, store_path: Option<PathBuf>) -> Option<Arc<dyn KernelCache>> {
    if device == Device::Cpu || cuda_unavailable_reason().is_some() {
        return None;
    }
    let path = store_path?;
    match super::open_store(&path, StoreConfig::default()) {
        Ok(store) => Some(Arc::new(StoreKernelCache::new(store))),
        Err(e) => {
            tracing::warn!(error = %e, "kernel cache unavailable; kernels will be compiled");
            None
        }
    }
}

/// Runs `tetrarch score`.
///
/// # Errors
/// Unreadable or incompatible images, an unusable device, a map that cannot be written.
pub fn run(args: ScoreArgs, store_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if args.map.is_some() && !matches!(args.metric, Metric::Flip | Metric::HdrFlip) {
        anyhow::bail!("--map needs --metric flip or hdr-flip");
    }
    tetrarch::scoring::check_ppd(args.ppd).context("--ppd")?;
    if let Some(map) = &args.map {
        // The map is always a PNG: another extension would mislabel it.
        anyhow::ensure!(
            map.extension()
                .is_none_or(|extension| extension.eq_ignore_ascii_case("png")),
            "--map {}: the error map is a PNG; name it .png",
            map.display()
        );
        refuse_overwriting(
            "--map",
            map,
            &[
                (&args.reference, "the reference image"),
                (&args.test, "the test image"),
            ],
        )?;
    }
    let reference = RgbImage::open(&args.reference)?;
    let test = RgbImage::open(&args.test)?;
    let scorer = Scorer::new(ScorerConfig {
        device: args.device,
        ppd: args.ppd,
        kernel_cache: kernel_cache(args.device, store_path),
    })?;
    let score = scorer.score(args.metric, &reference, &test, args.map.is_some())?;
    if let (Some(path), Some(map)) = (&args.map, &score.error_map) {
        write_error_map(map, path)?;
    }
    if args.json {
        let mut value = serde_json::to_value(&score)?;
        value["reference"] = args.reference.display().to_string().into();
        value["test"] = args.test.display().to_string().into();
        if let Some(reason) = scorer.cpu_reason() {
            value["cpu_reason"] = reason.into();
        }
        writeln!(out, "{}", serde_json::to_string(&value)?)?;
    } else {
        let name = match args.metric {
            Metric::Flip => "FLIP",
            Metric::HdrFlip => "HDR-FLIP",
            Metric::Ssim => "SSIM",
            Metric::Msssim => "MS-SSIM",
            Metric::Psnr => "PSNR",
        };
        match (&score.flip, &score.psnr) {
            (Some(f), _) => {
                writeln!(out, "{name} {:.6}", score.value)?;
                writeln!(
                    out,
                    "  weighted median {:.6}  quartiles {:.6} / {:.6}  min {:.6}  max {:.6}",
                    f.weighted_median, f.weighted_q1, f.weighted_q3, f.min, f.max
                )?;
                if let Some(e) = &score.exposures {
                    writeln!(
                        out,
                        "  exposures {:.4} to {:.4} in {} steps",
                        e.start, e.stop, e.count
                    )?;
                }
            }
            (_, Some(p)) => writeln!(out, "{name} {:.4} dB (MSE {:.6e})", p.psnr_db, p.mse)?,
            _ => writeln!(out, "{name} {:.6}", score.value)?,
        }
        match scorer.cpu_reason() {
            Some(reason) => writeln!(out, "  computed on {} ({reason})", score.backend)?,
            None => writeln!(out, "  computed on {}", score.backend)?,
        }
    }
    Ok(ExitCode::SUCCESS)
}
