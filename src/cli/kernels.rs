//! `tetrarch kernels check`: compiles every CUDA kernel through NVRTC and reports resources.

use std::io::Write as _;
use std::process::ExitCode;

use tetrarch::scoring::{KERNEL_SOURCES, compile, nvrtc_version};

/// Kernel commands.
#[derive(Debug, clap::Subcommand)]
pub enum KernelsCommand {
    /// Compile every kernel to PTX and a cubin per architecture; print registers, spills and
    /// shared memory per function. Fails on a compile error or any spill.
    Check {
        /// Target architectures, comma-separated: real ones (`sm_90`, `sm_90a`), each of which
        /// gets a cubin; one named twice is compiled once.
        #[arg(long, value_delimiter = ',', default_value = "sm_80,sm_90", value_parser = real_arch)]
        arch: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// A real GPU architecture (`sm_` and its number, with an optional letter: `sm_90a`). A virtual
/// one (`compute_90`) has no cubin, so no register report.
fn real_arch(text: &str) -> Result<String, String> {
    let digits = text.strip_prefix("sm_").map(|rest| {
        rest.strip_suffix(|c: char| c.is_ascii_lowercase())
            .unwrap_or(rest)
    });
    match digits {
        Some(d) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => Ok(text.to_owned()),
        _ if text.is_empty() => Err("an empty architecture (two commas in a row?)".to_owned()),
        _ if text.starts_with("compute_") => Err(format!(
            "{text:?} is a virtual architecture, which has no cubin to report on: name a real \
             one (sm_{})",
            &text["compute_".len()..]
        )),
        _ => Err(format!("{text:?} is not a GPU architecture such as sm_90")),
    }
}

/// Runs a kernels command.
///
/// # Errors
/// NVRTC missing.
pub fn run(cmd: KernelsCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let KernelsCommand::Check { mut arch, json } = cmd;
    let mut seen = std::collections::HashSet::new();
    arch.retain(|a| seen.insert(a.clone()));
    let version = nvrtc_version().map_err(|e| anyhow::anyhow!("NVRTC unavailable: {e}"))?;
    let mut failed = false;
    let mut report = Vec::new();
    if !json {
        writeln!(out, "NVRTC {}.{}", version.0, version.1)?;
        writeln!(
            out,
            "{:<8} {:<10} {:<18} {:>5} {:>12} {:>11} {:>10} {:>6}",
            "arch", "file", "function", "regs", "spill st/ld", "smem bytes", "stack", "PTX kB"
        )?;
    }
    for a in &arch {
        for source in &KERNEL_SOURCES {
            match compile(source, a) {
                Ok(k) => {
                    for name in source.functions {
                        if !k.functions.iter().any(|f| f.function == *name) {
                            stderr_line!(
                                "{a} {}: entry point {name} missing from the ptxas report",
                                source.name
                            );
                            failed = true;
                        }
                    }
                    for f in &k.functions {
                        let spill = f.spill_stores > 0 || f.spill_loads > 0;
                        failed |= spill;
                        if !json {
                            writeln!(
                                out,
                                "{:<8} {:<10} {:<18} {:>5} {:>12} {:>11} {:>10} {:>6.1}{}",
                                a,
                                source.name,
                                f.function,
                                f.registers,
                                format!("{}/{}", f.spill_stores, f.spill_loads),
                                f.shared_bytes,
                                f.stack_bytes,
                                k.ptx.len() as f64 / 1024.0,
                                if spill { "  SPILL" } else { "" }
                            )?;
                        }
                    }
                    report.push(serde_json::json!({
                        "arch": a, "kernel": source.name, "ptx_bytes": k.ptx.len(),
                        "cubin_bytes": k.cubin.len(), "functions": k.functions,
                    }));
                }
                Err(e) => {
                    stderr_line!("{e}");
                    failed = true;
                    report.push(serde_json::json!({"arch": a, "kernel": source.name, "error": e.to_string()}));
                }
            }
        }
    }
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(
                &serde_json::json!({"nvrtc": version, "kernels": report, "ok": !failed})
            )?
        )?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
