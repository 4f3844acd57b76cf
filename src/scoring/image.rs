//! Planar float images and loading them from PNG, JPEG and OpenEXR files.

use std::path::Path;

use super::{MAX_PIXELS, ScoreError};

/// How an image's values relate to light.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transfer {
    /// Display-encoded sRGB in [0, 1] (PNG, JPEG).
    Srgb,
    /// Linear light, possibly above 1 (OpenEXR).
    Linear,
}

impl std::fmt::Display for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transfer::Srgb => "sRGB-encoded",
            Transfer::Linear => "linear light",
        })
    }
}

/// One channel of `width × height` floats, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width * height` samples, row by row.
    pub data: Vec<f32>,
}

impl Plane {
    /// A plane of zeros.
    pub fn zeros(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0.0; width * height],
        }
    }
}

/// An RGB image stored as three planes (planar layout keeps the filters vectorisable and
/// matches what the kernels read).
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    label: String,
    transfer: Transfer,
    channels: [Plane; 3],
}

impl RgbImage {
    /// Builds an image from interleaved RGB samples (`3 * width * height` values).
    ///
    /// `label` names the image in errors.
    ///
    /// # Errors
    /// [`ScoreError::EmptyImage`], [`ScoreError::BufferSize`], or [`ScoreError::NonFinite`]
    /// when a sample is NaN or infinite.
    pub fn from_interleaved(
        label: impl Into<String>,
        width: usize,
        height: usize,
        transfer: Transfer,
        rgb: &[f32],
    ) -> Result<Self, ScoreError> {
        let label = label.into();
        if width == 0 || height == 0 {
            return Err(ScoreError::EmptyImage {
                image: label,
                width,
                height,
            });
        }
        // Checked before the product is taken: a size whose samples overflow `usize` could
        // otherwise wrap to the buffer's length.
        check_pixels(&label, width, height)?;
        if rgb.len() != 3 * width * height {
            return Err(ScoreError::BufferSize {
                image: label,
                width,
                height,
                len: rgb.len() / 3,
            });
        }
        if let Some(i) = rgb.iter().position(|v| !v.is_finite()) {
            let pixel = i / 3;
            return Err(ScoreError::NonFinite {
                image: label,
                x: pixel % width,
                y: pixel / width,
                value: rgb[i],
            });
        }
        let mut channels = [
            Plane::zeros(width, height),
            Plane::zeros(width, height),
            Plane::zeros(width, height),
        ];
        for (c, plane) in channels.iter_mut().enumerate() {
            for (dst, src) in plane.data.iter_mut().zip(rgb.chunks_exact(3)) {
                *dst = src[c];
            }
        }
        Ok(Self {
            label,
            transfer,
            channels,
        })
    }

    /// Reads a PNG, JPEG or OpenEXR file. Integer formats become sRGB values in [0, 1];
    /// float formats (EXR) are taken as linear light.
    ///
    /// # Errors
    /// A [`ScoreError`] naming the file: unreadable, unsupported format, truncated or damaged,
    /// empty, an alpha channel that is not opaque, or non-finite samples.
    pub fn open(path: &Path) -> Result<Self, ScoreError> {
        let bytes = read_capped(path).map_err(|source| ScoreError::Read {
            path: path.to_owned(),
            source,
        })?;
        let format = image::guess_format(&bytes).map_err(|e| ScoreError::UnsupportedFormat {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        // The header's size first: a small file can declare an image that scoring would need
        // many gigabytes for.
        let failed = |e: image::ImageError| match e {
            image::ImageError::Unsupported(u) => ScoreError::UnsupportedFormat {
                path: path.to_owned(),
                message: u.to_string(),
            },
            other => ScoreError::Decode {
                path: path.to_owned(),
                message: other.to_string(),
            },
        };
        let mut header = image::ImageReader::with_format(std::io::Cursor::new(&bytes), format);
        // The decoder's own limits would refuse a huge size with a vaguer "Memory limit
        // exceeded"; reading the size allocates nothing.
        header.no_limits();
        let (width, height) = header.into_dimensions().map_err(failed)?;
        check_pixels(&path.display().to_string(), width as usize, height as usize)?;
        let decoded = image::load_from_memory_with_format(&bytes, format).map_err(failed)?;
        Self::from_dynamic(path.display().to_string(), &decoded)
    }

    /// Converts a decoded image.
    ///
    /// # Errors
    /// As [`RgbImage::open`], less the file errors.
    pub fn from_dynamic(label: String, decoded: &image::DynamicImage) -> Result<Self, ScoreError> {
        use image::DynamicImage as D;
        let (width, height) = (decoded.width() as usize, decoded.height() as usize);
        if width == 0 || height == 0 {
            return Err(ScoreError::EmptyImage {
                image: label,
                width,
                height,
            });
        }
        check_pixels(&label, width, height)?;
        let transfer = match decoded {
            D::ImageRgb32F(_) | D::ImageRgba32F(_) => Transfer::Linear,
            D::ImageLuma8(_)
            | D::ImageLumaA8(_)
            | D::ImageRgb8(_)
            | D::ImageRgba8(_)
            | D::ImageLuma16(_)
            | D::ImageLumaA16(_)
            | D::ImageRgb16(_)
            | D::ImageRgba16(_) => Transfer::Srgb,
            other => {
                return Err(ScoreError::UnsupportedPixelFormat {
                    image: label,
                    detail: format!("{:?}", other.color()),
                });
            }
        };
        if decoded.color().has_alpha() {
            let rgba = decoded.to_rgba32f();
            if let Some((x, y, _)) = rgba.enumerate_pixels().find(|(_, _, p)| p.0[3] != 1.0) {
                return Err(ScoreError::UnsupportedPixelFormat {
                    image: label,
                    detail: format!(
                        "alpha channel is not opaque (first at pixel ({x}, {y})); composite it first"
                    ),
                });
            }
        }
        // Gray is widened to RGB in its own depth first: the crate's gray-to-float conversion
        // lands a float step away from `v / 255`, so a gray PNG did not score as identical to
        // the same pixels stored as RGB (PSNR 150 dB, SSIM above 1).
        let rgb = match decoded {
            D::ImageLuma8(_) | D::ImageLumaA8(_) => D::ImageRgb8(decoded.to_rgb8()).to_rgb32f(),
            D::ImageLuma16(_) | D::ImageLumaA16(_) => D::ImageRgb16(decoded.to_rgb16()).to_rgb32f(),
            _ => decoded.to_rgb32f(),
        };
        Self::from_interleaved(label, width, height, transfer, rgb.as_raw())
    }

    /// The name used in errors.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Columns.
    pub fn width(&self) -> usize {
        self.channels[0].width
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.channels[0].height
    }

    /// How the values relate to light.
    pub fn transfer(&self) -> Transfer {
        self.transfer
    }

    /// The red, green and blue planes.
    pub fn channels(&self) -> &[Plane; 3] {
        &self.channels
    }

    /// [`ScoreError::OutOfRange`] naming `metric` when a value lies outside 0–1, the range
    /// SSIM and MS-SSIM score (their constants assume it).
    pub fn check_unit_range(&self, metric: &'static str) -> Result<(), ScoreError> {
        let outside = self
            .channels
            .iter()
            .flat_map(|plane| plane.data.iter())
            .find(|v| !(0.0..=1.0).contains(*v));
        match outside {
            Some(&value) => Err(ScoreError::OutOfRange {
                metric,
                image: self.label.clone(),
                value,
            }),
            None => Ok(()),
        }
    }
}

/// Checks that two images can be compared.
pub(crate) fn check_pair(reference: &RgbImage, test: &RgbImage) -> Result<(), ScoreError> {
    if (reference.width(), reference.height()) != (test.width(), test.height()) {
        return Err(ScoreError::SizeMismatch {
            reference: reference.label.clone(),
            reference_size: (reference.width(), reference.height()),
            test: test.label.clone(),
            test_size: (test.width(), test.height()),
        });
    }
    Ok(())
}

/// The largest image file read: an uncompressed float EXR of [`MAX_PIXELS`] RGBA pixels is
/// 512 MiB, and a path such as `/dev/zero` must fail rather than fill the memory.
const MAX_IMAGE_FILE: u64 = 1 << 30;

/// Reads a file of at most [`MAX_IMAGE_FILE`] bytes.
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    // A regular file says its size: one over the limit is refused before reading it. A pipe
    // or device (`/dev/zero`) can only be read up to the limit.
    if metadata.is_file() && metadata.len() > MAX_IMAGE_FILE {
        return Err(std::io::Error::other(format!(
            "the file is over the {} MiB limit for images",
            MAX_IMAGE_FILE >> 20
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_IMAGE_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_IMAGE_FILE {
        return Err(std::io::Error::other(format!(
            "the file is over the {} MiB limit for images",
            MAX_IMAGE_FILE >> 20
        )));
    }
    Ok(bytes)
}

/// Refuses an image of more than [`MAX_PIXELS`] pixels.
pub(crate) fn check_pixels(image: &str, width: usize, height: usize) -> Result<(), ScoreError> {
    if width.saturating_mul(height) > MAX_PIXELS {
        return Err(ScoreError::TooLarge {
            image: image.to_owned(),
            width,
            height,
            max_pixels: MAX_PIXELS,
        });
    }
    Ok(())
}
