//! Every CUDA kernel compiles through NVRTC for sm_80 and sm_90 without spills, and compiled
//! kernels kept in the store are loaded after a restart instead of compiled again.
//!
//! Needs NVRTC on the loader path (see tests/fixtures/scoring/README or the crate docs):
//! skipped with the reason when it is missing, except with `CI=true`, where it must run.
#![allow(clippy::unwrap_used)]

use tetrarch::scoring::{
    KERNEL_SOURCES, KernelCache, KernelCacheKey, MemoryKernelCache, StoreKernelCache, compile,
    cubin_cached, nvrtc_version,
};
use tetrarch::store::{Store, StoreConfig};

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

#[tokio::test]
async fn the_store_kernel_cache_survives_a_restart_and_keys_by_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let sm90 = KernelCacheKey::new(&KERNEL_SOURCES[0], "sm_90", (12, 9));
    let sm80 = KernelCacheKey::new(&KERNEL_SOURCES[0], "sm_80", (12, 9));
    let newer_nvrtc = KernelCacheKey::new(&KERNEL_SOURCES[0], "sm_90", (12, 10));
    {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let cache = StoreKernelCache::new(store.clone());
        assert_eq!(cache.load(&sm90), None);
        cache.save(&sm90, b"\x7fELF sm_90 cubin");
        store.sync().await.unwrap();
        assert_eq!(
            cache.load(&sm90).as_deref(),
            Some(&b"\x7fELF sm_90 cubin"[..])
        );
    }
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let cache = StoreKernelCache::new(store.clone());
    assert_eq!(
        cache.load(&sm90).as_deref(),
        Some(&b"\x7fELF sm_90 cubin"[..])
    );
    // Another architecture or NVRTC version is another entry.
    assert_eq!(cache.load(&sm80), None);
    assert_eq!(cache.load(&newer_nvrtc), None);
    if !nvrtc_or_skip("the_store_kernel_cache_survives_a_restart_and_keys_by_architecture") {
        return;
    }
    // With NVRTC: the first start compiles and stores; after a restart the stored cubin is
    // returned without compiling (the stored bytes are swapped to tell the two apart).
    let real = KernelCacheKey::new(&KERNEL_SOURCES[1], "sm_90", nvrtc_version().unwrap());
    let compiled = cubin_cached(&KERNEL_SOURCES[1], "sm_90", &cache).unwrap();
    assert!(compiled.starts_with(b"\x7fELF"));
    store.sync().await.unwrap();
    drop((cache, store));
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let cache = StoreKernelCache::new(store.clone());
    assert_eq!(cache.load(&real), Some(compiled));
    cache.save(&real, b"stored");
    store.sync().await.unwrap();
    assert_eq!(
        cubin_cached(&KERNEL_SOURCES[1], "sm_90", &cache).unwrap(),
        b"stored"
    );
}
