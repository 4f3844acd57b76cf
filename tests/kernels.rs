//! Every CUDA kernel compiles through NVRTC for sm_80 and sm_90 without spills.
//!
//! Needs NVRTC on the loader path (see tests/fixtures/scoring/README or the crate docs):
//! skipped with the reason when it is missing, except with `CI=true`, where it must run.
#![allow(clippy::unwrap_used)]

use tetrarch::scoring::{
    KERNEL_SOURCES, KernelCache, MemoryKernelCache, compile, cubin_cached, nvrtc_version,
};

fn nvrtc_or_skip(test: &str) -> bool {
    match nvrtc_version() {
        Ok(_) => true,
        Err(reason) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but NVRTC is unavailable: {reason}"
            );
            eprintln!("skipped {test}: {reason}");
            false
        }
    }
}

#[test]
fn every_kernel_compiles_without_spills() {
    if !nvrtc_or_skip("every_kernel_compiles_without_spills") {
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        for source in &KERNEL_SOURCES {
            let k = compile(source, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(k.ptx.contains(".entry"), "{}: no PTX entry", source.name);
            assert!(
                k.cubin.starts_with(b"\x7fELF"),
                "{}: cubin is not an ELF image",
                source.name
            );
            for name in source.functions {
                let f = k.functions.iter().find(|f| f.function == *name);
                let f = f.unwrap_or_else(|| {
                    panic!(
                        "{arch} {}: {name} missing from ptxas log:\n{}",
                        source.name, k.log
                    )
                });
                assert_eq!(
                    (f.spill_stores, f.spill_loads),
                    (0, 0),
                    "{arch} {name} spills"
                );
                assert!(
                    f.registers > 0 && f.registers <= 64,
                    "{arch} {name}: {} registers",
                    f.registers
                );
                assert!(
                    f.shared_bytes <= 48 * 1024,
                    "{arch} {name}: {} B shared",
                    f.shared_bytes
                );
            }
        }
    }
}

#[test]
fn compile_errors_carry_the_nvrtc_log() {
    if !nvrtc_or_skip("compile_errors_carry_the_nvrtc_log") {
        return;
    }
    let broken = tetrarch::scoring::KernelSource {
        name: "broken.cu",
        text: "extern \"C\" __global__ void k() { undefined_thing(); }",
        functions: &["k"],
    };
    let err = compile(&broken, "sm_80").unwrap_err().to_string();
    assert!(
        err.contains("broken.cu") && err.contains("undefined_thing"),
        "{err}"
    );
}

#[test]
fn second_start_loads_from_the_cache() {
    if !nvrtc_or_skip("second_start_loads_from_the_cache") {
        return;
    }
    let cache = MemoryKernelCache::default();
    let first = cubin_cached(&KERNEL_SOURCES[2], "sm_90", &cache).unwrap();
    assert_eq!(cache.len(), 1);
    let key = tetrarch::scoring::KernelCacheKey::new(
        &KERNEL_SOURCES[2],
        "sm_90",
        nvrtc_version().unwrap(),
    );
    // Replace the stored cubin: a cache hit must return the stored bytes without compiling.
    cache.save(&key, b"stored");
    assert_eq!(
        cubin_cached(&KERNEL_SOURCES[2], "sm_90", &cache).unwrap(),
        b"stored"
    );
    assert!(first.starts_with(b"\x7fELF"));
}
