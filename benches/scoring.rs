//! `cargo bench --bench scoring`: every CPU metric on a 1920×1080 pair at 1 thread and all
//! threads, beside scikit-image SSIM and NVIDIA flip-evaluator FLIP timed on the same pair and
//! thread count (compute only: timed inside Python around the call).
//!
//! Peers run from the Python virtual environment at `TETRARCH_BENCH_VENV`, or by default from
//! `.venv-ref` in the crate, which the bench creates when it is missing (once: `python3 -m venv`,
//! then pip installs the versions the fixtures were made with, [`PEER_PACKAGES`]). A venv named by
//! `TETRARCH_BENCH_VENV` is used as it is, never installed into. When there is no Python, no
//! network for pip, or the packages do not import, the peers are reported as skipped, with why.
//! `TETRARCH_BENCH_REPS` sets repetitions (default 3; the median is reported);
//! `TETRARCH_BENCH_ONLY=flip,ssim` limits the metrics; `TETRARCH_BENCH_PEERS=off` skips the peers.
//! Then, when a CUDA driver, a device and NVRTC are present, the CUDA path: every metric on one
//! pair and per pair in a batch of 8, beside the CPU value (targets on an H100: LDR-FLIP ≤ 2 ms,
//! SSIM ≤ 0.5 ms per pair); skipped with the reason otherwise.
//! Writes `target/bench/scoring.json` (under `CARGO_TARGET_DIR` when set).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use tetrarch::scoring::{
    self, Device, FLIP_DEFAULT_PPD, Metric, RgbImage, Scorer, ScorerConfig, Transfer,
};

/// The peers, pinned: flip-evaluator 1.7 made the fixtures' expected values, scikit-image 0.26 is
/// the version the SSIM tolerance was checked against.
const PEER_PACKAGES: &[&str] = &["flip-evaluator==1.7", "scikit-image==0.26.0", "numpy"];

const W: usize = 1920;
const H: usize = 1080;

/// A deterministic render-like pair: gradients, hard-edged shapes, texture; the test adds noise,
/// a shifted block and a colour cast.
fn pair() -> (Vec<f32>, Vec<f32>) {
    let mut state = 0x9e37_79b9u32;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as f32 / u32::MAX as f32
    };
    let mut r = vec![0.0f32; W * H * 3];
    let mut t = vec![0.0f32; W * H * 3];
    for y in 0..H {
        for x in 0..W {
            let (fx, fy) = (x as f32 / W as f32, y as f32 / H as f32);
            let mut c = [
                fx,
                fy,
                0.5 + 0.4 * ((x as f32 / 23.0).sin() * (y as f32 / 17.0).cos()),
            ];
            if (x / 160 + y / 120) % 5 == 0 {
                c = [0.9, 0.25, 0.1];
            }
            if ((x as f32 - 1300.0).powi(2) + (y as f32 - 500.0).powi(2)).sqrt() < 220.0 {
                c = [0.1, 0.3, 0.85];
            }
            let i = 3 * (y * W + x);
            for k in 0..3 {
                let v = (c[k] + 0.05 * (rnd() - 0.5)).clamp(0.0, 1.0);
                r[i + k] = v;
                let shifted = if (600..900).contains(&x) && (300..500).contains(&y) {
                    c[(k + 1) % 3]
                } else {
                    v
                };
                t[i + k] = (shifted * if k == 0 { 0.95 } else { 1.0 } + 0.04 * (rnd() - 0.5))
                    .clamp(0.0, 1.0);
            }
        }
    }
    (r, t)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    median(
        (0..reps)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

const PEER_SCRIPT: &str = r#"
import json, sys, time
import numpy as np
w, h, reps, ref_path, test_path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
ref = np.fromfile(ref_path, dtype="<f4").reshape(h, w, 3)
test = np.fromfile(test_path, dtype="<f4").reshape(h, w, 3)
out = {}
try:
    from skimage.metrics import structural_similarity
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        v = structural_similarity(ref, test, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=2)
        times.append(time.perf_counter() - t0)
    out["ssim"] = {"seconds": sorted(times)[len(times) // 2], "value": float(v)}
except ImportError as e:
    out["ssim"] = {"skipped": str(e)}
try:
    import flip_evaluator as flip
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _, v, _ = flip.evaluate(ref, test, "LDR", applyMagma=False)
        times.append(time.perf_counter() - t0)
    out["flip"] = {"seconds": sorted(times)[len(times) // 2], "value": float(v)}
    hr, ht = np.float32(16) * ref * ref * ref, np.float32(16) * test * test * test
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _, v, _ = flip.evaluate(hr, ht, "HDR", applyMagma=False)
        times.append(time.perf_counter() - t0)
    out["hdr-flip"] = {"seconds": sorted(times)[len(times) // 2], "value": float(v)}
except ImportError as e:
    out["flip"] = {"skipped": str(e)}
print(json.dumps(out))
"#;

/// `python` when it imports both peers; `Err` names it (and `context`) otherwise.
fn with_peers(python: PathBuf, context: &str) -> Result<PathBuf, String> {
    let imports = Command::new(&python)
        .args(["-c", "import flip_evaluator, skimage"])
        .output()
        .is_ok_and(|o| o.status.success());
    if imports {
        Ok(python)
    } else {
        Err(format!(
            "{} ({context}) does not import flip_evaluator and skimage",
            python.display()
        ))
    }
}

/// A Python that has the peers: `TETRARCH_BENCH_VENV`'s as it is, else `.venv-ref`, created and
/// installed into when it lacks them. `Err` says why there is none.
fn peer_python() -> Result<PathBuf, String> {
    if let Some(venv) = std::env::var_os("TETRARCH_BENCH_VENV").map(PathBuf::from) {
        return with_peers(venv.join("bin/python"), "TETRARCH_BENCH_VENV");
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-ref");
    let python = venv.join("bin/python");
    if let Ok(python) = with_peers(python.clone(), "before installing") {
        return Ok(python);
    }
    println!(
        "creating the peers' environment at {} ({})",
        venv.display(),
        PEER_PACKAGES.join(" ")
    );
    let run = |command: &mut Command, what: &str| -> Result<(), String> {
        match command.output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("{what} did not start: {e}")),
        }
    };
    if !python.exists() {
        run(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv",
        )?;
    }
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--retries", "1", "--timeout", "30"])
            .args(PEER_PACKAGES),
        "pip install",
    )?;
    with_peers(python, "after installing")
}

fn peers(
    python: &std::path::Path,
    threads: usize,
    reps: usize,
    dir: &std::path::Path,
    r: &[f32],
    t: &[f32],
) -> serde_json::Value {
    let write = |name: &str, data: &[f32]| {
        let path = dir.join(name);
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let (rp, tp) = (write("ref.f32", r), write("test.f32", t));
    let script = dir.join("peers.py");
    std::fs::write(&script, PEER_SCRIPT).unwrap();
    let n = threads.to_string();
    let out = Command::new(python)
        .arg(&script)
        .args([W.to_string(), H.to_string(), reps.to_string()])
        .arg(&rp)
        .arg(&tp)
        .envs([
            ("OMP_NUM_THREADS", &n),
            ("OPENBLAS_NUM_THREADS", &n),
            ("MKL_NUM_THREADS", &n),
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or_else(
            |e| serde_json::json!({"skipped": format!("unreadable peer output: {e}")}),
        ),
        Ok(o) => {
            serde_json::json!({"skipped": String::from_utf8_lossy(&o.stderr).trim().to_string()})
        }
        Err(e) => serde_json::json!({"skipped": e.to_string()}),
    }
}

/// The CUDA path, when a driver, a device and NVRTC are present: each metric on one pair (upload,
/// compute, download: what a gate pays) and per pair in a batch of 8 (copies overlapped with
/// compute on streams), with the CPU's value beside it. Skipped, with the reason, otherwise.
fn cuda_rows(
    reps: usize,
    r: &RgbImage,
    t: &RgbImage,
    hr: &RgbImage,
    ht: &RgbImage,
) -> serde_json::Value {
    let config = ScorerConfig {
        device: Device::Cuda,
        ..ScorerConfig::default()
    };
    let (cuda, cpu) = match (
        Scorer::new(config),
        Scorer::new(ScorerConfig {
            device: Device::Cpu,
            ..ScorerConfig::default()
        }),
    ) {
        (Ok(cuda), Ok(cpu)) => (cuda, cpu),
        (Err(e), _) | (_, Err(e)) => {
            println!("CUDA: skipped ({e})");
            return serde_json::json!({ "skipped": e.to_string() });
        }
    };
    println!(
        "CUDA ({}), {W}x{H}, median of {}",
        cuda.cuda_arch().unwrap_or("?"),
        reps.max(20)
    );
    println!(
        "{:<9} {:>12} {:>16} {:>12}  value (cuda / cpu)",
        "metric", "1 pair (ms)", "batch of 8 (ms/pair)", "cpu (ms)"
    );
    let mut rows = Vec::new();
    for (metric, name, (a, b)) in [
        (Metric::Flip, "flip", (r, t)),
        (Metric::HdrFlip, "hdr-flip", (hr, ht)),
        (Metric::Ssim, "ssim", (r, t)),
        (Metric::Msssim, "msssim", (r, t)),
        (Metric::Psnr, "psnr", (r, t)),
    ] {
        // First call outside the timing: buffers for this size are allocated once.
        let value = match cuda.score(metric, a, b, false) {
            Ok(score) => score.value,
            Err(e) => {
                println!("{name:<9} failed: {e}");
                rows.push(serde_json::json!({ "metric": name, "error": e.to_string() }));
                continue;
            }
        };
        let batch: Vec<(&RgbImage, &RgbImage)> = (0..8).map(|_| (a, b)).collect();
        // A batch that fails returns at once: timed unchecked, it would pass for a fast one.
        if let Some(Err(e)) = cuda
            .score_batch(metric, &batch, false)
            .into_iter()
            .find(Result::is_err)
        {
            println!("{name:<9} batch failed: {e}");
            rows.push(serde_json::json!({ "metric": name, "error": format!("batch: {e}") }));
            continue;
        }
        let one = time(reps.max(20), || {
            let _ = std::hint::black_box(cuda.score(metric, a, b, false));
        });
        let per_pair = time(reps.max(5), || {
            let _ = std::hint::black_box(cuda.score_batch(metric, &batch, false));
        }) / 8.0;
        let started = Instant::now();
        let cpu_value = cpu.score(metric, a, b, false).map(|s| s.value).ok();
        let cpu_secs = started.elapsed().as_secs_f64();
        println!(
            "{:<9} {:>12.3} {:>16.3} {:>12.1}  {:.6} / {}",
            name,
            one * 1e3,
            per_pair * 1e3,
            cpu_secs * 1e3,
            value,
            cpu_value.map_or("-".into(), |v| format!("{v:.6}"))
        );
        rows.push(serde_json::json!({
            "metric": name, "one_pair_seconds": one, "batch8_seconds_per_pair": per_pair,
            "cpu_seconds": cpu_secs, "value": value, "cpu_value": cpu_value,
        }));
    }
    serde_json::json!({ "arch": cuda.cuda_arch(), "results": rows })
}

fn main() {
    let reps: usize = std::env::var("TETRARCH_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (r_raw, t_raw) = pair();
    let r = RgbImage::from_interleaved("reference", W, H, Transfer::Srgb, &r_raw).unwrap();
    let t = RgbImage::from_interleaved("test", W, H, Transfer::Srgb, &t_raw).unwrap();
    let hdr = |v: &[f32]| v.iter().map(|x| 16.0 * x * x * x).collect::<Vec<f32>>();
    let hr =
        RgbImage::from_interleaved("hdr reference", W, H, Transfer::Linear, &hdr(&r_raw)).unwrap();
    let ht = RgbImage::from_interleaved("hdr test", W, H, Transfer::Linear, &hdr(&t_raw)).unwrap();
    let target =
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
            .join("bench");
    std::fs::create_dir_all(&target).unwrap();
    let all = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut thread_counts = vec![1];
    if all > 1 {
        thread_counts.push(all);
    }
    println!("scoring benchmark, {W}x{H}, median of {reps}");
    println!(
        "{:<8} {:<9} {:>11} {:>11} {:>9}  value (ours / peer)",
        "threads", "metric", "ours (ms)", "peer (ms)", "speed-up"
    );
    let python = if std::env::var("TETRARCH_BENCH_PEERS").as_deref() == Ok("off") {
        Err("TETRARCH_BENCH_PEERS=off".to_owned())
    } else {
        peer_python()
    };
    if let Err(why) = &python {
        println!("peers skipped: {why}");
    }
    let mut rows = Vec::new();
    for &threads in &thread_counts {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let ours = |name: &str, f: &mut (dyn FnMut() -> f64 + Send)| {
            let mut value = 0.0;
            let secs = pool.install(|| time(reps, || value = f()));
            (name.to_owned(), secs, value)
        };
        let only = std::env::var("TETRARCH_BENCH_ONLY").ok();
        let wanted = |name: &str| {
            only.as_deref()
                .is_none_or(|list| list.split(',').any(|m| m == name))
        };
        let skip =
            |name: &str, f: &mut (dyn FnMut() -> f64 + Send)| wanted(name).then(|| ours(name, f));
        let results: Vec<_> = [
            skip("flip", &mut || {
                scoring::flip(&r, &t, FLIP_DEFAULT_PPD).unwrap().stats.mean
            }),
            skip("hdr-flip", &mut || {
                scoring::hdr_flip(&hr, &ht, FLIP_DEFAULT_PPD)
                    .unwrap()
                    .0
                    .stats
                    .mean
            }),
            skip("ssim", &mut || scoring::ssim(&r, &t).unwrap()),
            skip("msssim", &mut || scoring::ms_ssim(&r, &t).unwrap()),
            skip("psnr", &mut || scoring::psnr(&r, &t).unwrap().psnr_db),
        ]
        .into_iter()
        .flatten()
        .collect();
        let peer = match &python {
            Ok(python) => peers(python, threads, reps.min(3), &target, &r_raw, &t_raw),
            Err(why) => serde_json::json!({ "skipped": why }),
        };
        for (name, secs, value) in results {
            let p = &peer[name.as_str()];
            let peer_secs = p["seconds"].as_f64();
            let speedup = peer_secs.map(|s| s / secs);
            println!(
                "{:<8} {:<9} {:>11.1} {:>11} {:>9}  {:.6}{}",
                threads,
                name,
                secs * 1e3,
                peer_secs.map_or("-".into(), |s| format!("{:.1}", s * 1e3)),
                speedup.map_or("-".into(), |s| format!("{s:.2}x")),
                value,
                p["value"]
                    .as_f64()
                    .map_or(String::new(), |v| format!(" / {v:.6}")),
            );
            rows.push(serde_json::json!({
                "threads": threads, "metric": name, "seconds": secs, "value": value,
                "peer": if p.is_null() { serde_json::Value::Null } else { p.clone() },
                "speedup_vs_peer": speedup,
            }));
        }
        if let Some(reason) = peer["skipped"].as_str() {
            println!("  peers skipped: {reason}");
        }
    }
    let cuda = cuda_rows(reps, &r, &t, &hr, &ht);
    let targets = serde_json::json!({
        "ssim_vs_scikit_image": 5.0, "flip_vs_flip_evaluator": 3.0,
        "cuda_flip_ms_h100": 2.0, "cuda_ssim_ms_h100": 0.5,
    });
    let report = serde_json::json!({"width": W, "height": H, "reps": reps, "targets": targets, "results": rows, "cuda": cuda});
    let path = target.join("scoring.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
