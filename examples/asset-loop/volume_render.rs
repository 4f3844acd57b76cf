//! `volume-render`: a small CPU ray marcher for a procedural smoke/plasma volume, the "asset" of
//! the `examples/asset-loop/` plan.
//!
//! `volume-render render --out OUT.png [parameters] [--attempt N --feedback TEXT --target-* ...]`
//! renders and prints `{"path", "params", "attempt", "blend", "feedback"}` on stdout.
//! `volume-render sheet --out SHEET.png --candidate PATH=SCORE ...` lays the candidates side by
//! side, frames the one with the lowest score, and prints `{"path", "best", "best_score", ...}`.
//!
//! The volume: fractal value noise (four octaves, hashed lattice, `--seed`) sampled at
//! `--frequency` into a 64³ grid, thresholded by `--coverage` and scaled by `--density`, inside a
//! soft sphere. Light transmittance toward `--light-azimuth`/`--light-elevation` is precomputed
//! per voxel; each pixel marches an orthographic ray through the cube, accumulating single
//! scattering (`--light-color` × transmittance) plus a little ambient light over a dark gradient.
//!
//! What "refinement" means here, honestly: the renderer does not look at the reference image and
//! does not search. A plan gives it a starting parameter set and a target set (`--target-*`, the
//! look the art director asked for, from which `reference.png` was rendered). Attempt `N` renders
//! the parameters blended from start to target by `blend = 1 - 0.4^(N-1)`: 0, 0.6, 0.84, 0.94…
//! (attempt 1 renders the start as given). The schedule depends on the attempt number alone, so
//! each retry is closer than the last; the reviewer's feedback is parsed only to report the
//! previous FLIP value and its bound (`previous_flip`, `max_flip`, read from text like
//! `flip 0.081 > max 0.05`) in the output. The seed is not blended: a different seed is a
//! different volume.
//!
//! Every look parameter, the start's and the target's alike, must be a finite number in the range
//! `--help` gives; anything else exits 2 with a message naming the flag and the value given. A
//! candidate's score must be finite, and a size 1 to 8192; those too exit 2, naming what is wrong.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rayon::prelude::*;
use serde_json::json;

/// Voxels per side of the precomputed density grid.
const GRID: usize = 64;

#[derive(Debug, Parser)]
#[command(about = "Render a procedural smoke volume, or a contact sheet of renders")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render one image.
    Render(RenderArgs),
    /// Lay candidates side by side and frame the best (lowest score).
    Sheet(SheetArgs),
}

#[derive(Debug, Clone, Copy, Args)]
struct Look {
    /// Extinction scale of the smoke (0–100).
    #[arg(long, value_parser = parse_density, default_value_t = 2.0)]
    density: f32,
    /// Noise frequency (features per cube side, 0–64).
    #[arg(long, value_parser = parse_frequency, default_value_t = 3.0)]
    frequency: f32,
    /// Noise level below which there is no smoke (0–1).
    #[arg(long, value_parser = parse_coverage, default_value_t = 0.45)]
    coverage: f32,
    /// Light azimuth in degrees (-360 to 360).
    #[arg(long, value_parser = parse_azimuth, default_value_t = 40.0)]
    light_azimuth: f32,
    /// Light elevation in degrees (-90 to 90).
    #[arg(long, value_parser = parse_elevation, default_value_t = 35.0)]
    light_elevation: f32,
    /// Light colour as R,G,B (linear, each 0–10; the looks use around 0–2).
    #[arg(long, value_parser = parse_rgb, default_value = "1.6,1.3,1.0")]
    light_color: Rgb,
}

/// The target look, all optional: fields left out stay at the starting value. Each is checked
/// against its starting flag's range, so a bad target is reported under its own name rather than
/// as the blend it would produce.
#[derive(Debug, Clone, Copy, Args)]
struct Target {
    /// Target density (0–100).
    #[arg(long, value_parser = parse_density)]
    target_density: Option<f32>,
    /// Target frequency (0–64).
    #[arg(long, value_parser = parse_frequency)]
    target_frequency: Option<f32>,
    /// Target coverage (0–1).
    #[arg(long, value_parser = parse_coverage)]
    target_coverage: Option<f32>,
    /// Target light azimuth in degrees (-360 to 360).
    #[arg(long, value_parser = parse_azimuth)]
    target_light_azimuth: Option<f32>,
    /// Target light elevation in degrees (-90 to 90).
    #[arg(long, value_parser = parse_elevation)]
    target_light_elevation: Option<f32>,
    /// Target light colour.
    #[arg(long, value_parser = parse_rgb)]
    target_light_color: Option<Rgb>,
}

#[derive(Debug, Args)]
struct RenderArgs {
    /// Where to write the PNG (parent folders are created).
    #[arg(long)]
    out: PathBuf,
    /// Image width in pixels.
    #[arg(long, default_value_t = 256)]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 256)]
    height: u32,
    /// Noise seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[command(flatten)]
    look: Look,
    #[command(flatten)]
    target: Target,
    /// The attempt number (1-based); attempts after the first move toward the target.
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    /// The reviewer's feedback on the previous attempt.
    #[arg(long, default_value = "")]
    feedback: String,
}

#[derive(Debug, Args)]
struct SheetArgs {
    /// Where to write the contact sheet.
    #[arg(long)]
    out: PathBuf,
    /// A candidate as PATH=SCORE (lower is better); repeat for each.
    #[arg(long = "candidate", required = true)]
    candidates: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Rgb([f32; 3]);

/// The largest light colour component: far above the looks' 0–2, low enough that the shading
/// stays finite (an infinite colour turns the tone curve's `x / (1 + x)` into NaN, a black pixel).
const MAX_LIGHT_COLOR: f32 = 10.0;

fn parse_rgb(text: &str) -> Result<Rgb, String> {
    let parts: Vec<f32> = text
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{text:?} is not R,G,B numbers: {e}"))?;
    match parts.as_slice() {
        [r, g, b] if parts.iter().all(|v| (0.0..=MAX_LIGHT_COLOR).contains(v)) => {
            Ok(Rgb([*r, *g, *b]))
        }
        _ => Err(format!(
            "{text:?}: expected three numbers R,G,B, each from 0 to {MAX_LIGHT_COLOR}"
        )),
    }
}

/// `text` as a number from `min` to `max`. The ranges keep the ray march finite: a NaN or an
/// infinity in any parameter renders a black image rather than failing.
fn parse_in_range(text: &str, min: f32, max: f32) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        // `contains` is false for NaN, and parsing maps anything past f32's range to infinity.
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err(format!("expected a number from {min} to {max}")),
    }
}

fn parse_density(text: &str) -> Result<f32, String> {
    parse_in_range(text, 0.0, 100.0)
}

/// Above 64 features per side the noise is finer than the 64³ grid it is sampled into.
fn parse_frequency(text: &str) -> Result<f32, String> {
    parse_in_range(text, 0.0, 64.0)
}

fn parse_coverage(text: &str) -> Result<f32, String> {
    parse_in_range(text, 0.0, 1.0)
}

fn parse_azimuth(text: &str) -> Result<f32, String> {
    parse_in_range(text, -360.0, 360.0)
}

fn parse_elevation(text: &str) -> Result<f32, String> {
    parse_in_range(text, -90.0, 90.0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => render_command(&args),
        Command::Sheet(args) => sheet_command(&args),
    };
    match result {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("volume-render: {message}");
            ExitCode::from(2)
        }
    }
}

/// The previous attempt's FLIP value and bound, from feedback such as `flip 0.081 > max 0.05`.
fn flip_in_feedback(feedback: &str) -> Option<(f64, f64)> {
    let pattern =
        regex::Regex::new(r"(?i)flip\D*?([0-9]*\.?[0-9]+)\D+?max\D*?([0-9]*\.?[0-9]+)").ok()?;
    let captures = pattern.captures(feedback)?;
    let value = captures.get(1)?.as_str().parse().ok()?;
    let max = captures.get(2)?.as_str().parse().ok()?;
    Some((value, max))
}

/// How far from start to target attempt `attempt` goes: `1 - 0.4^(attempt - 1)`.
fn blend_for(attempt: u32) -> f32 {
    1.0 - 0.4f32.powi(attempt.saturating_sub(1).min(30) as i32)
}

fn lerp(a: f32, b: Option<f32>, t: f32) -> f32 {
    b.map_or(a, |b| a + (b - a) * t)
}

fn blended(start: Look, target: Target, t: f32) -> Look {
    Look {
        density: lerp(start.density, target.target_density, t),
        frequency: lerp(start.frequency, target.target_frequency, t),
        coverage: lerp(start.coverage, target.target_coverage, t),
        light_azimuth: lerp(start.light_azimuth, target.target_light_azimuth, t),
        light_elevation: lerp(start.light_elevation, target.target_light_elevation, t),
        light_color: Rgb(std::array::from_fn(|i| {
            lerp(
                start.light_color.0[i],
                target.target_light_color.map(|c| c.0[i]),
                t,
            )
        })),
    }
}

fn render_command(args: &RenderArgs) -> Result<serde_json::Value, String> {
    if args.width == 0 || args.height == 0 || args.width > 8192 || args.height > 8192 {
        return Err(format!(
            "--width and --height must be 1 to 8192, got {}x{}",
            args.width, args.height
        ));
    }
    if args.attempt == 0 {
        return Err("--attempt counts from 1".to_owned());
    }
    let blend = blend_for(args.attempt);
    let previous = flip_in_feedback(&args.feedback);
    // The start and the target were each checked against their flag's range when parsed, and a
    // blend (0 <= blend < 1) between two values in a range stays in it.
    let look = blended(args.look, args.target, blend);
    let pixels = render(&look, args.seed, args.width, args.height);
    save(&args.out, args.width, args.height, pixels)?;
    Ok(json!({
        "path": args.out.display().to_string(),
        "params": {
            "seed": args.seed,
            "width": args.width,
            "height": args.height,
            "density": round(look.density),
            "frequency": round(look.frequency),
            "coverage": round(look.coverage),
            "light_azimuth": round(look.light_azimuth),
            "light_elevation": round(look.light_elevation),
            "light_color": look.light_color.0.map(round),
        },
        "attempt": args.attempt,
        "blend": round(blend),
        "feedback": args.feedback,
        "previous_flip": previous.map(|(value, _)| value),
        "max_flip": previous.map(|(_, max)| max),
    }))
}

/// Four decimals, so the JSON shows `0.45` rather than the f32's `0.44999998807907104`.
fn round(value: f32) -> f64 {
    (f64::from(value) * 1e4).round() / 1e4
}

fn save(path: &Path, width: u32, height: u32, pixels: Vec<u8>) -> Result<(), String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let image = image::RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| "internal: pixel buffer of the wrong size".to_owned())?;
    image
        .save(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A lattice hash in [0, 1).
fn hash(x: i32, y: i32, z: i32, seed: u64) -> f32 {
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    for v in [x, y, z] {
        h ^= v as u32 as u64;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
    }
    (h >> 40) as f32 / (1u64 << 24) as f32
}

fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// Trilinear value noise in [0, 1).
fn value_noise(p: [f32; 3], seed: u64) -> f32 {
    let cell = p.map(|v| v.floor());
    let f = [p[0] - cell[0], p[1] - cell[1], p[2] - cell[2]].map(smooth);
    let (x, y, z) = (cell[0] as i32, cell[1] as i32, cell[2] as i32);
    let mut sum = 0.0;
    for corner in 0..8 {
        let (dx, dy, dz) = (corner & 1, (corner >> 1) & 1, (corner >> 2) & 1);
        let weight = (if dx == 1 { f[0] } else { 1.0 - f[0] })
            * (if dy == 1 { f[1] } else { 1.0 - f[1] })
            * (if dz == 1 { f[2] } else { 1.0 - f[2] });
        sum += weight * hash(x + dx, y + dy, z + dz, seed);
    }
    sum
}

/// Four octaves of value noise, normalised to [0, 1).
fn fbm(p: [f32; 3], seed: u64) -> f32 {
    let (mut sum, mut amplitude, mut scale, mut total) = (0.0, 0.5, 1.0, 0.0);
    for octave in 0..4u64 {
        sum += amplitude * value_noise(p.map(|v| v * scale), seed.wrapping_add(octave));
        total += amplitude;
        amplitude *= 0.5;
        scale *= 2.03;
    }
    sum / total
}

/// Density and light transmittance on a GRID³ lattice over [-1, 1]³.
struct Volume {
    density: Vec<f32>,
    light: Vec<f32>,
}

fn index(x: usize, y: usize, z: usize) -> usize {
    (z * GRID + y) * GRID + x
}

fn to_world(i: usize) -> f32 {
    i as f32 / (GRID - 1) as f32 * 2.0 - 1.0
}

impl Volume {
    fn build(look: &Look, seed: u64, light_dir: [f32; 3]) -> Self {
        let density: Vec<f32> = (0..GRID * GRID * GRID)
            .into_par_iter()
            .map(|i| {
                let (x, y, z) = (i % GRID, (i / GRID) % GRID, i / (GRID * GRID));
                let p = [to_world(x), to_world(y), to_world(z)];
                let radius = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
                let falloff = smooth(((0.95 - radius) / 0.5).clamp(0.0, 1.0));
                let n = fbm(p.map(|v| v * look.frequency + 10.0), seed);
                ((n - look.coverage) / (1.0 - look.coverage).max(1e-3)).max(0.0)
                    * look.density
                    * falloff
                    * 3.0
            })
            .collect();
        let mut volume = Self {
            density,
            light: Vec::new(),
        };
        // Transmittance toward the light: 16 steps of 1.5 voxels each.
        let step = 3.0 / (GRID - 1) as f32;
        let light: Vec<f32> = (0..GRID * GRID * GRID)
            .into_par_iter()
            .map(|i| {
                let (x, y, z) = (i % GRID, (i / GRID) % GRID, i / (GRID * GRID));
                let mut p = [to_world(x), to_world(y), to_world(z)];
                let mut optical = 0.0;
                for _ in 0..16 {
                    for (c, d) in p.iter_mut().zip(light_dir) {
                        *c += d * step;
                    }
                    optical += volume.sample_density(p) * step;
                }
                (-optical).exp()
            })
            .collect();
        volume.light = light;
        volume
    }

    fn sample(&self, field: &[f32], p: [f32; 3]) -> f32 {
        let g = p.map(|v| (v + 1.0) * 0.5 * (GRID - 1) as f32);
        if g.iter().any(|v| *v < 0.0 || *v > (GRID - 1) as f32) {
            return 0.0;
        }
        let i = g.map(|v| (v as usize).min(GRID - 2));
        let f = [g[0] - i[0] as f32, g[1] - i[1] as f32, g[2] - i[2] as f32];
        let mut sum = 0.0;
        for corner in 0..8 {
            let (dx, dy, dz) = (corner & 1, (corner >> 1) & 1, (corner >> 2) & 1);
            let weight = (if dx == 1 { f[0] } else { 1.0 - f[0] })
                * (if dy == 1 { f[1] } else { 1.0 - f[1] })
                * (if dz == 1 { f[2] } else { 1.0 - f[2] });
            if let Some(v) = field.get(index(i[0] + dx, i[1] + dy, i[2] + dz)) {
                sum += weight * v;
            }
        }
        sum
    }

    fn sample_density(&self, p: [f32; 3]) -> f32 {
        self.sample(&self.density, p)
    }
}

fn light_direction(look: &Look) -> [f32; 3] {
    let (az, el) = (
        look.light_azimuth.to_radians(),
        look.light_elevation.to_radians(),
    );
    [el.cos() * az.sin(), el.sin(), el.cos() * az.cos()]
}

/// Renders sRGB8 pixels, row-major.
fn render(look: &Look, seed: u64, width: u32, height: u32) -> Vec<u8> {
    let light_dir = light_direction(look);
    let volume = Volume::build(look, seed, light_dir);
    let (w, h) = (width as usize, height as usize);
    let steps = 64;
    let dt = 2.0 / steps as f32;
    let ambient = [0.04, 0.05, 0.09];
    (0..h)
        .into_par_iter()
        .flat_map_iter(|py| {
            let volume = &volume;
            (0..w).flat_map(move |px| {
                // Orthographic view down -z, the cube filling the frame.
                let x = (px as f32 + 0.5) / w as f32 * 2.0 - 1.0;
                let y = 1.0 - (py as f32 + 0.5) / h as f32 * 2.0;
                let mut transmittance = 1.0f32;
                let mut colour = [0.0f32; 3];
                for s in 0..steps {
                    let p = [x, y, 1.0 - (s as f32 + 0.5) * dt];
                    let sigma = volume.sample_density(p);
                    if sigma <= 0.0 {
                        continue;
                    }
                    let lit = volume.sample(&volume.light, p);
                    let absorbed = 1.0 - (-sigma * dt).exp();
                    for c in 0..3 {
                        colour[c] += transmittance
                            * absorbed
                            * (look.light_color.0[c] * lit + ambient[c] * 2.0);
                    }
                    transmittance *= 1.0 - absorbed;
                    if transmittance < 1e-3 {
                        break;
                    }
                }
                let background = [
                    0.02 + 0.03 * (1.0 - y),
                    0.02 + 0.04 * (1.0 - y),
                    0.06 + 0.08 * (1.0 - y),
                ];
                (0..3).map(move |c| {
                    let linear = colour[c] + transmittance * background[c];
                    to_srgb8(linear / (1.0 + linear) * 1.3)
                })
            })
        })
        .collect()
}

fn to_srgb8(linear: f32) -> u8 {
    let v = linear.clamp(0.0, 1.0);
    let encoded = if v <= 0.003_130_8 {
        12.92 * v
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    };
    (encoded * 255.0 + 0.5) as u8
}

fn sheet_command(args: &SheetArgs) -> Result<serde_json::Value, String> {
    let mut candidates = Vec::new();
    for candidate in &args.candidates {
        let (path, score_text) = candidate
            .rsplit_once('=')
            .ok_or_else(|| format!("candidate {candidate:?} is not PATH=SCORE"))?;
        let score: f64 = score_text.trim().parse().map_err(|e| {
            format!("candidate {candidate:?}: score {score_text:?} is not a number: {e}")
        })?;
        // total_cmp sorts -NaN and -inf first, so either would be framed as the best.
        if !score.is_finite() {
            return Err(format!(
                "candidate {candidate:?}: score {score_text:?} is not a finite number"
            ));
        }
        let image = image::open(path)
            .map_err(|e| format!("cannot read candidate {path}: {e}"))?
            .to_rgb8();
        candidates.push((path.to_owned(), score, image));
    }
    let best = candidates
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
        .map(|(i, _)| i)
        .ok_or_else(|| "no candidates".to_owned())?;
    let border = 6u32;
    let cell_w = candidates.iter().map(|c| c.2.width()).max().unwrap_or(1) + 2 * border;
    let cell_h = candidates.iter().map(|c| c.2.height()).max().unwrap_or(1) + 2 * border;
    let mut sheet = image::RgbImage::from_pixel(
        cell_w * candidates.len() as u32,
        cell_h,
        image::Rgb([24, 24, 24]),
    );
    for (i, (_, _, image)) in candidates.iter().enumerate() {
        let x0 = i as u32 * cell_w;
        if i == best {
            for y in 0..cell_h {
                for x in x0..x0 + cell_w {
                    sheet.put_pixel(x, y, image::Rgb([240, 190, 40]));
                }
            }
        }
        image::imageops::replace(&mut sheet, image, i64::from(x0 + border), i64::from(border));
    }
    save(&args.out, sheet.width(), sheet.height(), sheet.into_raw())?;
    let (best_path, best_score, _) = &candidates[best];
    Ok(json!({
        "path": args.out.display().to_string(),
        "best": best_path,
        "best_score": best_score,
        "candidates": candidates.iter().map(|(p, s, _)| json!({"path": p, "score": s})).collect::<Vec<_>>(),
    }))
}
