//! The `volume-render` example (`examples/asset-loop/volume_render.rs`) and the
//! `examples/asset-loop/plan.toml` plan that drives it.
//!
//! The CLI tests use the debug build of the example that `cargo test` makes. The plan test renders
//! at the plan's full size several times, which the unoptimised build is too slow for, so it uses
//! the release build (`cargo build --release --example volume-render`): without it the test says
//! it is skipped, unless `CI=true`, where it fails.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use tetrarch::plan::{Gate, Plan, ScoreBound, ScoreMetric, TemplateContext, render};
use tetrarch::scoring::{Device, Metric, RgbImage, Scorer, ScorerConfig};

fn plan_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/asset-loop")
}

/// `target/<profile>/examples/volume-render` for `profile`, if built.
fn renderer(profile: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/TEST → target/<profile-of-choice>/examples/volume-render
    let target = exe.parent()?.parent()?.parent()?;
    let path = target.join(profile).join("examples").join("volume-render");
    if path.exists() {
        return Some(path);
    }
    let reason = format!(
        "{} is not built (`cargo build{} --example volume-render`)",
        path.display(),
        if profile == "release" {
            " --release"
        } else {
            ""
        }
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {reason}"
    );
    eprintln!("skipped: {reason}");
    None
}

fn run(bin: &Path, cwd: &Path, args: &[String]) -> (i32, Value, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn render_writes_the_png_and_moves_toward_the_target_by_attempt() {
    let Some(bin) = renderer("debug") else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "render",
        "--width",
        "40",
        "--height",
        "24",
        "--density",
        "1.0",
        "--light-color",
        "0.5,0.5,0.5",
        "--target-density",
        "2.0",
        "--target-light-color",
        "1.5,1.0,0.5",
    ];
    let mut previous: Option<Vec<u8>> = None;
    for (attempt, blend) in [(1, 0.0), (2, 0.6), (3, 0.84)] {
        let mut args = strings(&base);
        args.extend(strings(&[
            "--out",
            &format!("renders/a{attempt}.png"),
            &format!("--attempt={attempt}"),
            "--feedback=flip 0.1234 > max 0.05",
        ]));
        let (code, json, stderr) = run(&bin, dir.path(), &args);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(json["path"], format!("renders/a{attempt}.png"));
        assert_eq!(json["attempt"], attempt);
        assert!(
            (json["blend"].as_f64().unwrap() - blend).abs() < 1e-4,
            "{json}"
        );
        let density = json["params"]["density"].as_f64().unwrap();
        assert!((density - (1.0 + blend)).abs() < 1e-3, "{json}");
        let red = json["params"]["light_color"][0].as_f64().unwrap();
        assert!((red - (0.5 + blend)).abs() < 1e-3, "{json}");
        assert_eq!(json["previous_flip"], 0.1234);
        assert_eq!(json["max_flip"], 0.05);
        let image = image::open(dir.path().join(format!("renders/a{attempt}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!((image.width(), image.height()), (40, 24));
        let pixels = image.into_raw();
        assert_ne!(
            previous.as_ref(),
            Some(&pixels),
            "attempt {attempt} changed nothing"
        );
        previous = Some(pixels);
    }
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    let Some(bin) = renderer("debug") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(
        &bin,
        dir.path(),
        &strings(&["render", "--out", "x.png", "--light-color", "1,2"]),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("1,2"), "{stderr}");
    let (code, _, stderr) = run(
        &bin,
        dir.path(),
        &strings(&["render", "--out", "x.png", "--width", "0"]),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("--width"), "{stderr}");
    let (code, _, stderr) = run(
        &bin,
        dir.path(),
        &strings(&["sheet", "--out", "s.png", "--candidate", "missing.png=0.1"]),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("missing.png"), "{stderr}");
    // Every look value is checked on its own flag (NaN rendered a black image with exit 0; a
    // bad `--target-density` was blamed on `--density`).
    for (flag, value) in [
        ("--light-azimuth", "nan"),
        ("--coverage", "1.5"),
        ("--target-density", "nan"),
        ("--target-density", "-5"),
    ] {
        let (code, _, stderr) = run(
            &bin,
            dir.path(),
            &strings(&["render", "--out", "x.png", &format!("{flag}={value}")]),
        );
        assert_eq!(code, 2, "{flag}={value}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(value),
            "{flag}={value}: {stderr}"
        );
    }
    std::fs::write(dir.path().join("a.png"), b"").unwrap();
    let (code, _, stderr) = run(
        &bin,
        dir.path(),
        &strings(&["sheet", "--out", "s.png", "--candidate", "a.png=NaN"]),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("a.png=NaN"), "{stderr}");
}

#[test]
fn sheet_frames_the_lowest_score() {
    let Some(bin) = renderer("debug") else { return };
    let dir = tempfile::tempdir().unwrap();
    for (name, density) in [("a.png", "1.0"), ("b.png", "2.0")] {
        let args = strings(&[
            "render",
            "--out",
            name,
            "--width",
            "20",
            "--height",
            "16",
            "--density",
            density,
        ]);
        assert_eq!(run(&bin, dir.path(), &args).0, 0);
    }
    let (code, json, stderr) = run(
        &bin,
        dir.path(),
        &strings(&[
            "sheet",
            "--out",
            "out/sheet.png",
            "--candidate",
            "a.png=0.07",
            "--candidate",
            "b.png=0.031",
        ]),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["best"], "b.png");
    assert_eq!(json["best_score"], 0.031);
    let sheet = image::open(dir.path().join("out/sheet.png"))
        .unwrap()
        .to_rgb8();
    // Two cells of 20+2*6 by 16+2*6; the second (best) has the gold frame.
    assert_eq!((sheet.width(), sheet.height()), (64, 28));
    assert_eq!(sheet.get_pixel(0, 0).0, [24, 24, 24]);
    assert_eq!(sheet.get_pixel(32, 0).0, [240, 190, 40]);
}

/// The plan without `[pools]` when the plan parser does not accept that table yet.
fn asset_plan() -> Plan {
    let text = std::fs::read_to_string(plan_dir().join("plan.toml")).unwrap();
    match Plan::from_toml(&text, "examples/asset-loop/plan.toml") {
        Ok(plan) => plan,
        Err(e) if e.to_string().contains("unknown field `pools`") => {
            let mut table: toml::Table = toml::from_str(&text).unwrap();
            assert!(table.remove("pools").is_some());
            Plan::from_toml(&toml::to_string(&table).unwrap(), "plan.toml (tasks)").unwrap()
        }
        Err(e) => panic!("{e}"),
    }
}

fn flip_gate(plan: &Plan, id: &str) -> (String, f64) {
    let task = plan.task(id).unwrap();
    task.gates
        .iter()
        .find_map(|g| match g {
            Gate::Score {
                metric: ScoreMetric::Flip,
                reference,
                bound: ScoreBound::Max(max),
                ..
            } => Some((reference.clone(), *max)),
            _ => None,
        })
        .unwrap()
}

#[test]
fn the_asset_loop_plan_is_valid() {
    let plan = asset_plan();
    let levels = plan.dag().levels();
    assert_eq!(levels.len(), 3, "{levels:?}");
    assert_eq!(levels[0].len(), 3, "three renders in parallel: {levels:?}");
    for id in ["render-dusk", "render-cold", "render-ember"] {
        assert!(plan.task(id).unwrap().max_attempts >= 3);
        let (reference, max) = flip_gate(&plan, id);
        assert!(plan_dir().join(reference).exists());
        assert!(max > 0.0 && max < 0.2);
    }
}

/// Runs the plan's render tasks as the runtime would (argv rendered with `{{attempt}}` and
/// `{{feedback}}`, the renderer run in the plan's folder, FLIP against the reference), and checks
/// the thresholds really give fail-then-pass: dusk passes on attempt 2, cold on 3, ember on 4.
/// Then the contact sheet picks the best of the accepted renders.
#[test]
fn the_renders_fail_first_and_pass_later() {
    let Some(bin) = renderer("release") else {
        return;
    };
    let plan = asset_plan();
    let dir = plan_dir();
    let scorer = Scorer::new(ScorerConfig {
        device: Device::Cpu,
        ..ScorerConfig::default()
    })
    .unwrap();
    let run_id = format!("test-{}", std::process::id());
    let mut accepted = Vec::new();
    for (id, passes_on) in [("render-dusk", 2), ("render-cold", 3), ("render-ember", 4)] {
        let task = plan.task(id).unwrap();
        let (reference, max) = flip_gate(&plan, id);
        let reference = RgbImage::open(&dir.join(reference)).unwrap();
        let mut feedback = String::new();
        let mut history = Vec::new();
        for attempt in 1..=task.max_attempts {
            let ctx = TemplateContext {
                context: String::new(),
                attempt,
                feedback: feedback.clone(),
                run_id: run_id.as_str().into(),
                plan_name: plan.name.as_str().into(),
                ..TemplateContext::default()
            };
            let args = render(&task.args, &ctx).unwrap();
            let argv: Vec<String> = args["argv"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect();
            let (code, json, stderr) = run(&bin, &dir, &argv);
            assert_eq!(code, 0, "{id} attempt {attempt}: {stderr}");
            let path = json["path"].as_str().unwrap().to_owned();
            let test = RgbImage::open(&dir.join(&path)).unwrap();
            let flip = scorer
                .score(Metric::Flip, &reference, &test, false)
                .unwrap()
                .value;
            history.push(flip);
            if flip <= max {
                accepted.push((path, flip));
                break;
            }
            feedback = format!("flip {flip:.4} > max {max}");
        }
        assert_eq!(
            history.len(),
            passes_on,
            "{id}: FLIP per attempt {history:?} against max {max}"
        );
        assert!(
            history.windows(2).all(|w| w[1] < w[0]),
            "{id}: each retry should be closer: {history:?}"
        );
    }
    let mut argv = strings(&["sheet", "--out", &format!("out/{run_id}/sheet.png")]);
    for (path, flip) in &accepted {
        argv.push("--candidate".to_owned());
        argv.push(format!("{path}={flip}"));
    }
    let (code, json, stderr) = run(&bin, &dir, &argv);
    assert_eq!(code, 0, "{stderr}");
    let best = accepted.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    assert_eq!(json["best"], json!(best.0));
    std::fs::remove_dir_all(dir.join("out").join(&run_id)).unwrap();
}
