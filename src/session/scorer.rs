//! The `scorer` kind: image comparison ([`crate::scoring`]) as a pooled tool, so a plan can call a
//! metric like any other tool and the Reviewer's score gates can share warm scorers.
//!
//! Tool names are metrics: `flip`, `hdr-flip`, `ssim`, `msssim` (or `ms-ssim`), `psnr`. Arguments:
//! `{ "reference": PATH, "test": PATH, "map": PATH? }` (relative paths are resolved against
//! [`ScorerSpec::base_dir`]; `map` writes FLIP's colour-mapped error map as a PNG and is only
//! accepted by `flip` and `hdr-flip`). A successful call answers exit status 0, a one-line stdout
//! (`flip 0.081234 on cpu: ref.png vs test.png`) and JSON `{ metric, value, device, reference,
//! test }`, plus `mean`, `median`, `q1`, `q3`, `min`, `max` for the FLIP metrics, `mse` for PSNR
//! and `map` when one was written. JSON has no infinity, so the PSNR of identical images is
//! `f64::MAX` in `value` (stdout says `inf`).
//!
//! Bad images (missing, truncated, not an image, different sizes, too small for the metric) are
//! the caller's data, not a broken session: exit status 1 with the scorer's message, which names
//! the file and the problem, on stderr. An unknown metric is [`SessionError::UnknownTool`],
//! arguments of the wrong shape [`SessionError::InvalidArguments`]; a CUDA failure during a call is
//! [`SessionError::Crashed`] and the pool replaces the session.
//!
//! Pre-warming: [`ScorerFactory::create`] builds the [`Scorer`] (on CUDA that compiles the kernels,
//! or loads them from the kernel cache — [`ScorerSpec::with_store`] keeps them in the store across
//! runs) and then scores a synthetic pair of [`ScorerSpec::warmup_size`] with every metric, which
//! starts rayon's thread pool, faults in the code and, at the size of the real images, lets the
//! allocator settle, so the first real call costs what the tenth does.
//!
//! Scoring is CPU-bound (seconds for large images on the CPU path), so each call runs on tokio's
//! blocking pool. A call that times out returns [`SessionError::Timeout`] at once; the computation
//! itself cannot be interrupted and finishes in the background.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use super::{BoxFuture, Session, SessionError, SessionFactory, ToolOutcome, ToolRequest};
use crate::scoring::{
    Backend, Device, FLIP_DEFAULT_PPD, KernelCache, Metric, RgbImage, ScoreError, Scorer,
    ScorerConfig, StoreKernelCache, Transfer, write_error_map,
};

/// How to build scorer sessions.
#[derive(Clone)]
pub struct ScorerSpec {
    /// Where to compute: CUDA when usable (`Auto`), the CPU, or CUDA or an error.
    pub device: Device,
    /// FLIP's pixels per degree.
    pub ppd: f32,
    /// Where compiled CUDA kernels are cached (in memory, per session, when `None`).
    pub kernel_cache: Option<Arc<dyn KernelCache>>,
    /// Relative image paths are resolved against this folder (ours when `None`).
    pub base_dir: Option<PathBuf>,
    /// The width and height of the synthetic pair scored at start-up; `None` skips the warm-up.
    /// Set it to the size of the images the pool will score for the flattest first call.
    pub warmup_size: Option<(usize, usize)>,
    /// The most scoring jobs running at once over all the sessions of one [`ScorerFactory`]
    /// (a pool sets its `max_size`). A job whose call timed out still counts until it ends (a
    /// computation cannot be stopped midway), so retries of slow calls wait rather than pile up.
    pub max_jobs: usize,
}

impl std::fmt::Debug for ScorerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScorerSpec")
            .field("device", &self.device)
            .field("ppd", &self.ppd)
            .field("kernel_cache", &self.kernel_cache.is_some())
            .field("base_dir", &self.base_dir)
            .field("warmup_size", &self.warmup_size)
            .field("max_jobs", &self.max_jobs)
            .finish()
    }
}

impl Default for ScorerSpec {
    /// `Auto` device, FLIP's default 67.02 pixels per degree, no kernel cache, paths relative to
    /// our working directory, a 256×256 warm-up pair, 4 jobs at once.
    fn default() -> Self {
        Self {
            device: Device::Auto,
            ppd: FLIP_DEFAULT_PPD,
            kernel_cache: None,
            base_dir: None,
            warmup_size: Some((256, 256)),
            max_jobs: 4,
        }
    }
}

impl ScorerSpec {
    /// The default spec on `device`.
    pub fn new(device: Device) -> Self {
        Self {
            device,
            ..Self::default()
        }
    }

    /// The same spec caching compiled kernels in `store` (only consulted on CUDA).
    pub fn with_store(mut self, store: crate::store::Store) -> Self {
        self.kernel_cache = Some(Arc::new(StoreKernelCache::new(store)));
        self
    }
}

/// One warm [`Scorer`] taking metric calls.
#[derive(Debug)]
pub struct ScorerSession {
    scorer: Arc<Scorer>,
    base_dir: Option<PathBuf>,
    /// Shared by the sessions of one factory: see [`ScorerSpec::max_jobs`].
    jobs: Arc<tokio::sync::Semaphore>,
}

impl ScorerSession {
    /// Builds the scorer of `spec` and warms it (see the module doc).
    ///
    /// # Errors
    /// [`SessionError::InvalidConfig`] for a bad `ppd` or a device that cannot be used
    /// (`Device::Cuda` without CUDA, kernels that do not compile), naming the reason.
    pub async fn start(spec: &ScorerSpec) -> Result<Self, SessionError> {
        let jobs = job_slots(spec.max_jobs);
        Self::start_sharing(spec, jobs).await
    }

    /// [`ScorerSession::start`] with the job slots shared by a factory's sessions.
    async fn start_sharing(
        spec: &ScorerSpec,
        jobs: Arc<tokio::sync::Semaphore>,
    ) -> Result<Self, SessionError> {
        if let Err(e) = crate::scoring::check_ppd(spec.ppd) {
            return Err(SessionError::InvalidConfig {
                detail: format!("scorer: {e}"),
            });
        }
        let config = ScorerConfig {
            device: spec.device,
            ppd: spec.ppd,
            kernel_cache: spec.kernel_cache.clone(),
        };
        let warmup = spec.warmup_size;
        let scorer = tokio::task::spawn_blocking(move || {
            let scorer = Scorer::new(config).map_err(|e| SessionError::InvalidConfig {
                detail: format!("scorer: {e}"),
            })?;
            if let Some((width, height)) = warmup {
                warm(&scorer, width, height)?;
            }
            Ok::<_, SessionError>(scorer)
        })
        .await
        .map_err(|e| SessionError::Crashed {
            tool: "scorer start".to_owned(),
            reason: e.to_string(),
        })??;
        Ok(Self {
            scorer: Arc::new(scorer),
            base_dir: spec.base_dir.clone(),
            jobs,
        })
    }

    /// Where this session computes.
    pub fn backend(&self) -> Backend {
        self.scorer.backend()
    }

    fn resolve(&self, path: &str) -> PathBuf {
        match &self.base_dir {
            Some(base) if Path::new(path).is_relative() => base.join(path),
            _ => PathBuf::from(path),
        }
    }

    async fn score(&self, request: ToolRequest) -> Result<ToolOutcome, SessionError> {
        let started = Instant::now();
        let metric = parse_metric(&request.tool)?;
        if let Some(detail) = unknown_arg(&request.args) {
            return Err(SessionError::InvalidArguments {
                tool: request.tool,
                detail,
            });
        }
        let reference = required_path(&request, "reference")?;
        let test = required_path(&request, "test")?;
        let map = optional_path(&request, "map")?;
        if map.is_some() && !matches!(metric, Metric::Flip | Metric::HdrFlip) {
            return Err(SessionError::InvalidArguments {
                tool: request.tool,
                detail: MAP_ONLY_FLIP.to_owned(),
            });
        }
        let job = Job {
            metric,
            reference_label: reference.clone(),
            test_label: test.clone(),
            reference: self.resolve(&reference),
            test: self.resolve(&test),
            map: map.as_deref().map(|m| (m.to_owned(), self.resolve(m))),
        };
        let scorer = Arc::clone(&self.scorer);
        let jobs = Arc::clone(&self.jobs);
        // The slot is the job's, held until it ends even when this call gives up on it.
        let task = async move {
            let slot = jobs.acquire_owned().await;
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                job.run(&scorer)
            })
            .await
        };
        let result = match tokio::time::timeout(request.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => {
                return Err(SessionError::Crashed {
                    tool: request.tool,
                    reason: join.to_string(),
                });
            }
            Err(_) => {
                return Err(SessionError::Timeout {
                    tool: request.tool,
                    after: request.timeout,
                });
            }
        };
        let (exit_status, stdout, stderr, json) = match result {
            Ok((line, json)) => (0, format!("{line}\n"), String::new(), Some(json)),
            Err(e @ ScoreError::Cuda { .. }) => {
                return Err(SessionError::Crashed {
                    tool: request.tool,
                    reason: e.to_string(),
                });
            }
            Err(e) => (1, String::new(), format!("{e}\n"), None),
        };
        Ok(ToolOutcome {
            exit_status: Some(exit_status),
            stdout,
            stderr,
            json,
            truncated: false,
            duration: started.elapsed(),
        })
    }
}

/// The string argument `name`, or `None` when absent or null.
fn optional_path(request: &ToolRequest, name: &str) -> Result<Option<String>, SessionError> {
    match request.args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(SessionError::InvalidArguments {
            tool: request.tool.clone(),
            detail: format!("`{name}` must be a non-empty path string, got {other}"),
        }),
    }
}

/// The string argument `name`, which must be there.
fn required_path(request: &ToolRequest, name: &str) -> Result<String, SessionError> {
    optional_path(request, name)?.ok_or_else(|| SessionError::InvalidArguments {
        tool: request.tool.clone(),
        detail: format!("missing `{name}` (an image path)"),
    })
}

/// The arguments a scorer call reads.
const SCORER_ARGS: [&str; 3] = ["reference", "test", "map"];

/// A key in `args` the scorer does not read (a typo would otherwise surface as a missing
/// argument, or, for `map`, as no map written), or args that are not a table.
fn unknown_arg(args: &Value) -> Option<String> {
    match args {
        Value::Object(map) => map
            .keys()
            .find(|key| !SCORER_ARGS.contains(&key.as_str()))
            .map(|key| {
                format!(
                    "unknown argument `{key}` (a scorer call reads {})",
                    SCORER_ARGS.join(", ")
                )
            }),
        Value::Null => None,
        other => Some(format!(
            "a scorer call's args are a table of {}, not {other}",
            SCORER_ARGS.join(", ")
        )),
    }
}

/// What the scorer would refuse in a call of `tool` with `args` as a plan writes them (before
/// templates are filled): args that are not a table, an unknown key, a missing `reference` or
/// `test`, a value that is not a path string, or a `map` asked of a metric that draws none.
/// `None` when it would run; an unknown tool is the catalogue's to report.
pub(crate) fn plan_args_problem(tool: &str, args: &Value) -> Option<String> {
    // A whole-string reference is rendered at the call (it may give a table); any other
    // string renders to a string, which the scorer refuses.
    if matches!(args, Value::String(text) if crate::plan::template::may_render_typed(text)) {
        return None;
    }
    if let Some(problem) = unknown_arg(args) {
        return Some(problem);
    }
    let request = ToolRequest::new(tool, args.clone());
    let checked = required_path(&request, "reference")
        .and_then(|_| required_path(&request, "test"))
        .and_then(|_| optional_path(&request, "map"));
    let draws_map = matches!(
        parse_metric(tool),
        Ok(Metric::Flip | Metric::HdrFlip) | Err(_)
    );
    match checked {
        Err(SessionError::InvalidArguments { detail, .. }) => Some(detail),
        Err(other) => Some(other.to_string()),
        Ok(Some(_)) if !draws_map => Some(MAP_ONLY_FLIP.to_owned()),
        Ok(_) => None,
    }
}

/// Why `map` is refused for a metric other than FLIP's.
const MAP_ONLY_FLIP: &str = "`map` is only produced by flip and hdr-flip";

/// The scorer's tool names: one per metric, and `ms-ssim` for `msssim` (a scorer pool has no
/// others).
pub const SCORER_TOOLS: [&str; 6] = ["flip", "hdr-flip", "ssim", "msssim", "ms-ssim", "psnr"];

/// The metric a tool name asks for.
fn parse_metric(tool: &str) -> Result<Metric, SessionError> {
    Ok(match tool {
        "flip" => Metric::Flip,
        "hdr-flip" => Metric::HdrFlip,
        "ssim" => Metric::Ssim,
        "msssim" | "ms-ssim" => Metric::Msssim,
        "psnr" => Metric::Psnr,
        _ => {
            return Err(SessionError::UnknownTool {
                tool: format!("{tool} (the scorer's tools are flip, hdr-flip, ssim, msssim, psnr)"),
            });
        }
    })
}

/// One comparison, run on the blocking pool.
struct Job {
    metric: Metric,
    reference_label: String,
    test_label: String,
    reference: PathBuf,
    test: PathBuf,
    map: Option<(String, PathBuf)>,
}

impl Job {
    fn run(self, scorer: &Scorer) -> Result<(String, Value), ScoreError> {
        // The paths come from plans and tasks' outputs: a FIFO or a device would block this
        // job (and hold its slot) for as long as nothing writes to it.
        for path in [&self.reference, &self.test] {
            let metadata = std::fs::metadata(path).map_err(|source| ScoreError::Read {
                path: path.clone(),
                source,
            })?;
            if !metadata.is_file() {
                return Err(ScoreError::Read {
                    path: path.clone(),
                    source: std::io::Error::other("not a regular file"),
                });
            }
        }
        let reference = RgbImage::open(&self.reference)?;
        let test = RgbImage::open(&self.test)?;
        let score = scorer.score(self.metric, &reference, &test, self.map.is_some())?;
        let name = self.metric.name();
        let device = match score.backend {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        };
        let mut json = json!({
            "metric": name,
            // JSON has no infinity: identical images' PSNR is reported as the largest finite
            // number, so numeric bounds (`min = 40`) still compare as they should.
            "value": if score.value.is_finite() { score.value } else { f64::MAX.copysign(score.value) },
            "device": device,
            "reference": self.reference_label,
            "test": self.test_label,
        });
        if let Some(stats) = &score.flip {
            json["mean"] = stats.mean.into();
            json["median"] = stats.weighted_median.into();
            json["q1"] = stats.weighted_q1.into();
            json["q3"] = stats.weighted_q3.into();
            json["min"] = stats.min.into();
            json["max"] = stats.max.into();
        }
        if let Some(psnr) = &score.psnr {
            json["mse"] = psnr.mse.into();
        }
        if let (Some((label, path)), Some(error_map)) = (&self.map, &score.error_map) {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| ScoreError::WriteMap {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            }
            write_error_map(error_map, path)?;
            json["map"] = label.clone().into();
        }
        let line = format!(
            "{name} {:.6} on {device}: {} vs {}",
            score.value, self.reference_label, self.test_label
        );
        Ok((line, json))
    }
}

/// Scores a synthetic `width × height` pair (a smooth gradient against a slightly shifted one)
/// with every metric the size allows, so every code path the session will use has run once.
fn warm(scorer: &Scorer, width: usize, height: usize) -> Result<(), SessionError> {
    let (width, height) = (width.max(1), height.max(1));
    let failed = |e: ScoreError| SessionError::InvalidConfig {
        detail: format!("scorer warm-up failed: {e}"),
    };
    crate::scoring::check_pixels("warm-up pair", width, height).map_err(failed)?;
    let pixel = |x: usize, y: usize, shift: f32| {
        let u = x as f32 / width as f32;
        let v = y as f32 / height as f32;
        [u, v, (0.5 * (u + v) + shift).fract()]
    };
    let build = |label: &str, shift: f32| {
        let mut rgb = Vec::with_capacity(3 * width * height);
        for y in 0..height {
            for x in 0..width {
                rgb.extend_from_slice(&pixel(x, y, shift));
            }
        }
        RgbImage::from_interleaved(label, width, height, Transfer::Srgb, &rgb)
    };
    let reference = build("warm-up reference", 0.0).map_err(failed)?;
    let test = build("warm-up test", 0.05).map_err(failed)?;
    for metric in [
        Metric::Flip,
        Metric::HdrFlip,
        Metric::Ssim,
        Metric::Msssim,
        Metric::Psnr,
    ] {
        match scorer.score(metric, &reference, &test, false) {
            Ok(_) => {}
            // A warm-up pair too small (or too flat) for a metric skips that metric.
            Err(ScoreError::TooSmall { .. } | ScoreError::ExposureRange { .. }) => {}
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(())
}

impl Session for ScorerSession {
    fn call(&mut self, request: ToolRequest) -> BoxFuture<'_, Result<ToolOutcome, SessionError>> {
        Box::pin(self.score(request))
    }

    fn health_check(&mut self) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async { Ok(()) })
    }

    /// A timed-out job goes on in its job slot and leaves nothing in the session.
    fn timeout_breaks_it(&self) -> bool {
        false
    }

    fn tools(&mut self) -> BoxFuture<'_, Result<Option<Vec<String>>, SessionError>> {
        Box::pin(async { Ok(Some(SCORER_TOOLS.map(str::to_owned).to_vec())) })
    }
}

/// The job slots of [`ScorerSpec::max_jobs`] (at least one, at most what a semaphore counts).
fn job_slots(max_jobs: usize) -> Arc<tokio::sync::Semaphore> {
    let permits = max_jobs.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    Arc::new(tokio::sync::Semaphore::new(permits))
}

/// Starts [`ScorerSession`]s of one [`ScorerSpec`] for a pool.
#[derive(Debug, Clone)]
pub struct ScorerFactory {
    spec: Arc<ScorerSpec>,
    jobs: Arc<tokio::sync::Semaphore>,
}

impl ScorerFactory {
    /// A factory for sessions of `spec`.
    pub fn new(spec: ScorerSpec) -> Self {
        Self {
            jobs: job_slots(spec.max_jobs),
            spec: Arc::new(spec),
        }
    }
}

impl SessionFactory for ScorerFactory {
    fn create(&self) -> BoxFuture<'_, Result<Box<dyn Session>, SessionError>> {
        Box::pin(async move {
            let session = ScorerSession::start_sharing(&self.spec, Arc::clone(&self.jobs)).await?;
            Ok(Box::new(session) as Box<dyn Session>)
        })
    }
}
