//! The CUDA kernel sources, their compilation through NVRTC, and the compiled-kernel cache.
//!
//! Kernels are compiled when a scorer starts, never at build time, so building needs no CUDA.
//! Each source is the generated constants header, `kernels/common.cuh`, then the kernel file.
#![allow(unsafe_code)] // NVRTC is a C API; cudarc's safe wrapper hides the program log and the cubin, which `kernels check` needs.

use std::collections::HashMap;
use std::ffi::{CString, c_char};
use std::path::PathBuf;
use std::sync::Mutex;

use cudarc::nvrtc::{result, sys};
use sha2::{Digest, Sha256};

use super::ScoreError;
use super::constants::cuda_defines;

/// One `.cu` file.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File name under `kernels/`.
    pub name: &'static str,
    /// Its text.
    pub text: &'static str,
    /// The `extern "C"` entry points it defines.
    pub functions: &'static [&'static str],
}

const COMMON: &str = include_str!("../../kernels/common.cuh");

/// Every kernel file the scorer loads.
pub const KERNEL_SOURCES: [KernelSource; 3] = [
    KernelSource {
        name: "flip.cu",
        text: include_str!("../../kernels/flip.cu"),
        functions: &[
            "flip_prepare",
            "flip_rows",
            "flip_cols",
            "flip_combine",
            "flip_pool",
        ],
    },
    KernelSource {
        name: "ssim.cu",
        text: include_str!("../../kernels/ssim.cu"),
        functions: &["ssim_rows", "ssim_cols_reduce", "downsample2"],
    },
    KernelSource {
        name: "psnr.cu",
        text: include_str!("../../kernels/psnr.cu"),
        functions: &["sq_diff_sum"],
    },
];

impl KernelSource {
    /// The complete source NVRTC compiles.
    pub fn full_text(&self) -> String {
        format!("{}\n{COMMON}\n{}", cuda_defines(), self.text)
    }
}

/// What identifies a compiled kernel: its source, the GPU architecture and the compiler.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelCacheKey {
    /// Kernel file name.
    pub kernel: String,
    /// SHA-256 of the full source, hex.
    pub source_sha256: String,
    /// Target, e.g. `sm_90`.
    pub arch: String,
    /// NVRTC version (major, minor).
    pub nvrtc_version: (i32, i32),
}

impl KernelCacheKey {
    /// The key for `source` compiled for `arch` by NVRTC `version`.
    pub fn new(source: &KernelSource, arch: &str, nvrtc_version: (i32, i32)) -> Self {
        let digest = Sha256::digest(source.full_text().as_bytes());
        let source_sha256 = digest.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            kernel: source.name.to_owned(),
            source_sha256,
            arch: arch.to_owned(),
            nvrtc_version,
        }
    }

    /// A file-name-safe rendering of the key.
    pub fn file_stem(&self) -> String {
        let (ma, mi) = self.nvrtc_version;
        format!(
            "{}-{}-{}-nvrtc{ma}.{mi}",
            self.kernel.replace('.', "_"),
            &self.source_sha256[..16],
            self.arch
        )
    }
}

/// Where compiled kernels (cubins) are kept between runs.
pub trait KernelCache: Send + Sync {
    /// The stored cubin for `key`, if any.
    fn load(&self, key: &KernelCacheKey) -> Option<Vec<u8>>;
    /// Stores a cubin. Failures are the cache's to log; compilation goes on without it.
    fn save(&self, key: &KernelCacheKey, bytes: &[u8]);
}

/// Compiled kernels kept in the tetrarch store, so a restart loads them instead of compiling.
///
/// Best effort: a failed read is a miss and a failed write is logged; saving does not wait for
/// the commit.
#[derive(Clone, Debug)]
pub struct StoreKernelCache {
    store: crate::store::Store,
}

impl StoreKernelCache {
    /// A cache in `store`.
    pub fn new(store: crate::store::Store) -> Self {
        StoreKernelCache { store }
    }

    fn key(key: &KernelCacheKey) -> Option<u128> {
        let fields = (
            &key.kernel,
            &key.source_sha256,
            &key.arch,
            key.nvrtc_version,
        );
        crate::store::CacheKey::new("compiled_kernel", &fields)
            .map(|k| k.as_u128())
            .ok()
    }
}

impl KernelCache for StoreKernelCache {
    fn load(&self, key: &KernelCacheKey) -> Option<Vec<u8>> {
        match self.store.cache_entry(Self::key(key)?) {
            Ok(found) => found.map(|(_, bytes)| bytes),
            Err(e) => {
                tracing::warn!(kernel = %key.kernel, error = %e, "kernel cache read failed; compiling");
                None
            }
        }
    }

    fn save(&self, key: &KernelCacheKey, bytes: &[u8]) {
        let Some(k) = Self::key(key) else { return };
        let category = crate::store::CacheCategory::CompiledKernel;
        if let Err(e) = self.store.put_cache_entry_detached(k, category, bytes) {
            tracing::warn!(kernel = %key.kernel, error = %e, "kernel cache write failed");
        }
    }
}

/// A cache in memory (tests, one-shot runs).
#[derive(Debug, Default)]
pub struct MemoryKernelCache {
    entries: Mutex<HashMap<KernelCacheKey, Vec<u8>>>,
}

impl MemoryKernelCache {
    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KernelCache for MemoryKernelCache {
    fn load(&self, key: &KernelCacheKey) -> Option<Vec<u8>> {
        self.entries.lock().ok()?.get(key).cloned()
    }

    fn save(&self, key: &KernelCacheKey, bytes: &[u8]) {
        if let Ok(mut m) = self.entries.lock() {
            m.insert(key.clone(), bytes.to_vec());
        }
    }
}

/// A cache of one file per key in a directory.
#[derive(Debug, Clone)]
pub struct DirKernelCache {
    dir: PathBuf,
}

impl DirKernelCache {
    /// A cache in `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, key: &KernelCacheKey) -> PathBuf {
        self.dir.join(format!("{}.cubin", key.file_stem()))
    }
}

impl KernelCache for DirKernelCache {
    fn load(&self, key: &KernelCacheKey) -> Option<Vec<u8>> {
        std::fs::read(self.path(key)).ok()
    }

    fn save(&self, key: &KernelCacheKey, bytes: &[u8]) {
        let path = self.path(key);
        // Write then rename so a crash never leaves a half-written cubin under the final name.
        let tmp = path.with_extension("cubin.tmp");
        let result = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot save compiled kernel");
        }
    }
}

/// The NVRTC version, or why NVRTC cannot be used.
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    // SAFETY: is_culib_present only tries to dlopen the library names and drops the handle;
    // it has no preconditions.
    if !unsafe { sys::is_culib_present() } {
        return Err(
            "the NVRTC library (libnvrtc.so.12) is not on the loader path (LD_LIBRARY_PATH)".into(),
        );
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above), so cudarc's lazy loader finds the symbol;
    // both out-pointers point at live locals.
    let status = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed: {status:?}"));
    }
    Ok((major, minor))
}

/// Resource use of one kernel function, from ptxas' verbose log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FunctionResources {
    /// Entry point.
    pub function: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes spilled to local memory by stores.
    pub spill_stores: u32,
    /// Bytes reloaded from spills.
    pub spill_loads: u32,
    /// Static shared memory per block, bytes.
    pub shared_bytes: u32,
    /// Stack frame, bytes.
    pub stack_bytes: u32,
}

/// A kernel file compiled for one architecture.
#[derive(Debug, Clone)]
pub struct CompiledKernel {
    /// File name.
    pub kernel: &'static str,
    /// Target architecture.
    pub arch: String,
    /// The PTX.
    pub ptx: String,
    /// The cubin for `arch`.
    pub cubin: Vec<u8>,
    /// Per-function resources.
    pub functions: Vec<FunctionResources>,
    /// NVRTC's full log.
    pub log: String,
}

fn number_before(text: &str, suffix: &str) -> Option<u32> {
    let idx = text.find(suffix)?;
    text[..idx].split_whitespace().last()?.parse().ok()
}

/// Reads ptxas' `-v` output (as NVRTC reports it) into per-function resources.
pub fn parse_ptxas_log(log: &str) -> Vec<FunctionResources> {
    let mut out: Vec<FunctionResources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_owned();
            out.push(FunctionResources {
                function: name,
                registers: 0,
                spill_stores: 0,
                spill_loads: 0,
                shared_bytes: 0,
                stack_bytes: 0,
            });
        } else if let Some(f) = out.last_mut() {
            if line.contains("bytes stack frame") {
                f.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                f.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                f.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                f.registers = number_before(line, "registers").unwrap_or(0);
                f.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles `source` for `arch` (e.g. `sm_90`) to PTX and a cubin, with ptxas' resource report.
///
/// # Errors
/// [`ScoreError::CudaUnavailable`] without NVRTC, [`ScoreError::KernelCompile`] with the log.
pub fn compile(source: &KernelSource, arch: &str) -> Result<CompiledKernel, ScoreError> {
    nvrtc_version().map_err(ScoreError::CudaUnavailable)?;
    let fail = |log: String| ScoreError::KernelCompile {
        kernel: source.name,
        arch: arch.to_owned(),
        log,
    };
    let text =
        CString::new(source.full_text()).map_err(|_| fail("source contains a NUL byte".into()))?;
    let name = CString::new(source.name).map_err(|_| fail("name contains a NUL byte".into()))?;
    let program = result::create_program(&text, Some(&name)).map_err(|e| fail(format!("{e:?}")))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--ptxas-options=-v".to_owned(),
        "--std=c++17".to_owned(),
    ];
    // SAFETY: `program` was just created and is destroyed exactly once below; the options are
    // owned strings that outlive the call.
    let compiled = unsafe { result::compile_program(program, &options) };
    // SAFETY: `program` is a live program handle.
    let log = unsafe { result::get_program_log(program) }
        .map(|l| c_chars_to_string(&l))
        .unwrap_or_default();
    let outcome = compiled
        .map_err(|e| fail(format!("{e:?}\n{log}")))
        .and_then(|()| {
            // SAFETY: compilation succeeded, so the program holds PTX.
            let ptx =
                unsafe { result::get_ptx(program) }.map_err(|e| fail(format!("get PTX: {e:?}")))?;
            let mut size = 0usize;
            // SAFETY: live program handle, `size` is a live out-pointer.
            let status = unsafe { sys::nvrtcGetCUBINSize(program, &mut size) };
            if status != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(fail(format!(
                    "nvrtcGetCUBINSize: {status:?} (is {arch} a real architecture?)"
                )));
            }
            let mut cubin = vec![0u8; size];
            // SAFETY: `cubin` has exactly the size NVRTC reported for this program.
            let status = unsafe { sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast()) };
            if status != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(fail(format!("nvrtcGetCUBIN: {status:?}")));
            }
            Ok((c_chars_to_string(&ptx), cubin))
        });
    // SAFETY: destroyed once; no use of `program` follows.
    if let Err(e) = unsafe { result::destroy_program(program) } {
        tracing::warn!(kernel = source.name, error = ?e, "nvrtcDestroyProgram failed");
    }
    let (ptx, cubin) = outcome?;
    Ok(CompiledKernel {
        kernel: source.name,
        arch: arch.to_owned(),
        ptx,
        cubin,
        functions: parse_ptxas_log(&log),
        log,
    })
}

/// The cubin for `source` on `arch`, from `cache` when present, else compiled and saved.
///
/// # Errors
/// As [`compile`].
pub fn cubin_cached(
    source: &KernelSource,
    arch: &str,
    cache: &dyn KernelCache,
) -> Result<Vec<u8>, ScoreError> {
    let version = nvrtc_version().map_err(ScoreError::CudaUnavailable)?;
    let key = KernelCacheKey::new(source, arch, version);
    if let Some(bytes) = cache.load(&key) {
        tracing::debug!(kernel = source.name, arch, "kernel loaded from cache");
        return Ok(bytes);
    }
    let compiled = compile(source, arch)?;
    cache.save(&key, &compiled.cubin);
    Ok(compiled.cubin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_log_is_parsed() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'ssim_rows' for 'sm_90'\n\
ptxas info    : Function properties for ssim_rows\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 40 registers, 2440 bytes smem, 400 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'downsample2' for 'sm_90'\n\
ptxas info    : Function properties for downsample2\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 12 registers, 384 bytes cmem[0]\n";
        let f = parse_ptxas_log(log);
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[0],
            FunctionResources {
                function: "ssim_rows".into(),
                registers: 40,
                spill_stores: 4,
                spill_loads: 12,
                shared_bytes: 2440,
                stack_bytes: 8
            }
        );
        assert_eq!(
            (f[1].registers, f[1].shared_bytes, f[1].spill_stores),
            (12, 0, 0)
        );
    }

    #[test]
    fn cache_keys_differ_by_arch_and_dir_cache_round_trips() {
        let a = KernelCacheKey::new(&KERNEL_SOURCES[0], "sm_80", (12, 9));
        let b = KernelCacheKey::new(&KERNEL_SOURCES[0], "sm_90", (12, 9));
        assert_ne!(a.file_stem(), b.file_stem());
        assert_eq!(a.source_sha256.len(), 64);
        let dir = std::env::temp_dir().join(format!("tetrarch-kcache-{}", std::process::id()));
        let cache = DirKernelCache::new(&dir);
        assert!(cache.load(&a).is_none());
        cache.save(&a, b"cubin bytes");
        assert_eq!(cache.load(&a).as_deref(), Some(&b"cubin bytes"[..]));
        assert!(cache.load(&b).is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
