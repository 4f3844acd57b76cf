//! The one error type of the scoring module.

use std::path::PathBuf;

/// Why an image could not be scored.
///
/// Every variant that concerns an input names it: `image` is the file path when the image came
/// from a file, or the caller's label (`reference`, `test`) when it was built in memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScoreError {
    /// The file could not be opened or read.
    #[error("{}: cannot read the file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not in a format this build reads (PNG, JPEG and OpenEXR are).
    #[error("{}: unsupported image format: {message}", path.display())]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// The file is damaged or truncated.
    #[error("{}: cannot decode the image: {message}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// The image's pixel layout is not one the metrics are defined on.
    #[error("{image}: unsupported pixel format: {detail}")]
    UnsupportedPixelFormat {
        /// The image.
        image: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The image has no pixels.
    #[error("{image}: the image is empty ({width}x{height})")]
    EmptyImage {
        /// The image.
        image: String,
        /// Its width.
        width: usize,
        /// Its height.
        height: usize,
    },
    /// The pixel buffer does not hold width × height pixels.
    #[error("{image}: {len} samples per channel given for a {width}x{height} image")]
    BufferSize {
        /// The image.
        image: String,
        /// Declared width.
        width: usize,
        /// Declared height.
        height: usize,
        /// Samples given.
        len: usize,
    },
    /// A pixel holds NaN or an infinity.
    #[error("{image}: pixel ({x}, {y}) holds a non-finite value ({value})")]
    NonFinite {
        /// The image.
        image: String,
        /// Column.
        x: usize,
        /// Row.
        y: usize,
        /// The value found.
        value: f32,
    },
    /// The image has more pixels than scoring takes ([`super::MAX_PIXELS`]).
    #[error("{image}: {width}x{height} is over the {max_pixels}-pixel limit for scoring")]
    TooLarge {
        /// The image.
        image: String,
        /// Its width.
        width: usize,
        /// Its height.
        height: usize,
        /// The limit.
        max_pixels: usize,
    },
    /// Reference and test differ in size.
    #[error(
        "size mismatch: {reference} is {}x{}, {test} is {}x{}",
        reference_size.0, reference_size.1, test_size.0, test_size.1
    )]
    SizeMismatch {
        /// Reference image.
        reference: String,
        /// Its width and height.
        reference_size: (usize, usize),
        /// Test image.
        test: String,
        /// Its width and height.
        test_size: (usize, usize),
    },
    /// The image is too small for the metric's window.
    #[error(
        "{image}: {width}x{height} is too small for {metric} (each side needs at least {min_side} pixels)"
    )]
    TooSmall {
        /// The image.
        image: String,
        /// The metric.
        metric: &'static str,
        /// Width.
        width: usize,
        /// Height.
        height: usize,
        /// Smallest side the metric accepts.
        min_side: usize,
    },
    /// HDR-FLIP cannot derive an exposure range from the reference.
    #[error("{image}: cannot choose HDR-FLIP exposures: {detail}")]
    ExposureRange {
        /// The reference image.
        image: String,
        /// Why.
        detail: String,
    },
    /// The pixels-per-degree setting is not a number FLIP can use.
    #[error("pixels per degree must be a number from {min} to at most {max}, got {ppd}")]
    InvalidPpd {
        /// The value given.
        ppd: f32,
        /// The smallest accepted ([`super::FLIP_MIN_PPD`]).
        min: f32,
        /// The largest accepted ([`super::FLIP_MAX_PPD`]).
        max: f32,
    },
    /// The CUDA device was asked for and cannot be used.
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),
    /// A CUDA call failed while scoring.
    #[error("CUDA failure in {stage}: {message}")]
    Cuda {
        /// Which step failed.
        stage: &'static str,
        /// The driver's message.
        message: String,
    },
    /// NVRTC rejected a kernel source.
    #[error("kernel {kernel} failed to compile for {arch}:\n{log}")]
    KernelCompile {
        /// The kernel file.
        kernel: &'static str,
        /// The target architecture.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// Writing the error map failed.
    #[error("{}: cannot write the error map: {message}", path.display())]
    WriteMap {
        /// The output file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The metric's value is not a number: its single-precision arithmetic overflowed on the
    /// images' values (finite pixels near 3e38 in an EXR).
    #[error(
        "{metric} of {test} against {reference} is {value}: the images' values overflow single precision"
    )]
    NotFinite {
        /// The metric's name.
        metric: &'static str,
        /// The value it came to (NaN or an infinity).
        value: f64,
        /// The reference image.
        reference: String,
        /// The test image.
        test: String,
    },
    /// SSIM and MS-SSIM score values in [0, 1] (their stabilising constants assume that range).
    #[error(
        "{metric} scores values from 0 to 1, but {image} holds {value}: tone-map it first, or use hdr-flip"
    )]
    OutOfRange {
        /// The metric's name.
        metric: &'static str,
        /// The image.
        image: String,
        /// The first value outside the range.
        value: f32,
    },
    /// SSIM, MS-SSIM and PSNR compare stored values, so both images must be encoded alike.
    #[error(
        "{metric} compares stored values, but {reference} is {reference_encoding} and {test} is {test_encoding}: convert one of them, or use flip (which decodes each image by its encoding)"
    )]
    MixedEncodings {
        /// The metric's name.
        metric: &'static str,
        /// The reference image.
        reference: String,
        /// Its encoding.
        reference_encoding: super::Transfer,
        /// The test image.
        test: String,
        /// Its encoding.
        test_encoding: super::Transfer,
    },
    /// A thread pool could not be built.
    #[error("cannot build a thread pool: {0}")]
    ThreadPool(String),
}
