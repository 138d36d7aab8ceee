//! Image decoding and the ImageNet-style preprocessing shared by the image models.
//!
//! Owns: bytes -> RGB pixels (PNG and JPEG only; grey, grey+alpha, palette and RGBA converted to
//! RGB by dropping alpha, as Pillow's `convert("RGB")` does), hard limits checked on the header
//! before any pixel buffer is allocated, a resampler that reproduces Pillow's bicubic `resize`
//! (same filter, support, fixed-point coefficients and rounding, horizontal pass first), centre
//! crop, and the conversion to a channels-first `f32` array.
//! Must never: panic on any input bytes, touch the file system, or allocate a pixel buffer for an
//! image whose header breaks the limits.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::InputError;

/// Largest input accepted, in bytes, before decoding.
pub const INPUT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Longest image side accepted, in pixels.
pub const IMAGE_SIDE_MAX: u32 = 16_384;
/// Largest image accepted, in pixels (width x height).
pub const IMAGE_PIXELS_MAX: u64 = 40_000_000;
/// Memory the decoder may allocate for one image, in bytes.
const DECODER_ALLOC_BYTES_MAX: u64 = 512 * 1024 * 1024;

/// Decode PNG or JPEG bytes into 8-bit RGB, checking the limits on the header first.
///
/// A panic inside a third-party decoder is caught and becomes this input's error, so one
/// poisonous file cannot take a worker down (and with it, on retry, every worker).
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, InputError> {
    std::panic::catch_unwind(|| decode_rgb_unguarded(bytes))
        .unwrap_or_else(|_| Err(InputError::Decode("the image decoder panicked".into())))
}

fn decode_rgb_unguarded(bytes: &[u8]) -> Result<RgbImage, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    if bytes.len() > INPUT_BYTES_MAX {
        return Err(InputError::TooManyBytes {
            bytes: bytes.len(),
            limit_bytes: INPUT_BYTES_MAX,
        });
    }
    let format = image::guess_format(bytes).map_err(|_| InputError::UnknownFormat)?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(InputError::UnknownFormat);
    }
    // Header only, so that oversized images get our own error; nothing is allocated for the
    // pixels yet.
    let mut header = ImageReader::with_format(Cursor::new(bytes), format);
    header.no_limits();
    let (width, height) = header
        .into_dimensions()
        .map_err(|e| InputError::Decode(e.to_string()))?;
    check_dimensions(width, height)?;
    let image = reader(bytes, format)
        .decode()
        .map_err(|e| InputError::Decode(e.to_string()))?;
    debug_assert_eq!((image.width(), image.height()), (width, height));
    Ok(image.to_rgb8())
}

fn reader(bytes: &[u8], format: ImageFormat) -> ImageReader<Cursor<&[u8]>> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(IMAGE_SIDE_MAX);
    limits.max_image_height = Some(IMAGE_SIDE_MAX);
    limits.max_alloc = Some(DECODER_ALLOC_BYTES_MAX);
    reader.limits(limits);
    reader
}

/// Reject zero-sized and oversized images from their declared dimensions.
pub fn check_dimensions(width: u32, height: u32) -> Result<(), InputError> {
    if width == 0 || height == 0 {
        return Err(InputError::ZeroSize { width, height });
    }
    let pixels = u64::from(width) * u64::from(height);
    if width > IMAGE_SIDE_MAX || height > IMAGE_SIDE_MAX || pixels > IMAGE_PIXELS_MAX {
        return Err(InputError::TooLarge {
            width,
            height,
            side_max: IMAGE_SIDE_MAX,
            pixels_max: IMAGE_PIXELS_MAX,
        });
    }
    Ok(())
}

/// The size of an image whose shorter side is resized to `short_side` pixels (the other side
/// rounded half-to-even, as Python's `round` does).
pub fn shorter_side_size(width: u32, height: u32, short_side: u32) -> (u32, u32) {
    debug_assert!(width > 0 && height > 0);
    let scale = f64::from(short_side) / f64::from(width.min(height));
    let new_width = (f64::from(width) * scale).round_ties_even().max(1.0);
    let new_height = (f64::from(height) * scale).round_ties_even().max(1.0);
    (
        new_width.min(f64::from(u32::MAX)) as u32,
        new_height.min(f64::from(u32::MAX)) as u32,
    )
}

/// Resize the shorter side to `short_side` with Pillow's bicubic filter and take the centred
/// `crop` x `crop` square (offsets floored). Only the pixels inside the crop are computed, so a
/// very long thin image costs no more than a square one; the result is the same as resizing
/// the whole image first.
pub fn resize_shorter_side_and_centre_crop(
    image: &RgbImage,
    short_side: u32,
    crop: u32,
) -> RgbImage {
    let (width, height) = image.dimensions();
    let (new_width, new_height) = shorter_side_size(width, height, short_side);
    let crop_width = crop.min(new_width);
    let crop_height = crop.min(new_height);
    let window = Window {
        left: (new_width - crop_width) / 2,
        top: (new_height - crop_height) / 2,
        width: crop_width,
        height: crop_height,
    };
    resize_bicubic_window(image, new_width, new_height, window)
}

/// Channels-first `f32` values `(pixel - mean) / scale`.
pub fn to_chw(image: &RgbImage, mean: f32, scale: f32) -> Vec<f32> {
    let (width, height) = image.dimensions();
    let plane = (width as usize) * (height as usize);
    let mut values = vec![0.0f32; 3 * plane];
    for (index, pixel) in image.pixels().enumerate() {
        for channel in 0..3 {
            values[channel * plane + index] = (f32::from(pixel[channel]) - mean) / scale;
        }
    }
    values
}

// ---- Pillow-compatible bicubic resampling (libImaging/Resample.c) ----

const PRECISION_BITS: u32 = 32 - 8 - 2;
const BICUBIC_SUPPORT: f64 = 2.0;

fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The first input index and the fixed-point weights of one output position.
fn coefficients(in_size: u32, out_size: u32, out: u32) -> (usize, Vec<i64>) {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filter_scale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filter_scale;
    let centre = (f64::from(out) + 0.5) * scale;
    // C truncation toward zero, then clamped, as in Pillow.
    let min = ((centre - support + 0.5) as i64).max(0) as usize;
    let max = ((centre + support + 0.5) as i64).min(i64::from(in_size)) as usize;
    let count = max.saturating_sub(min);
    let raw: Vec<f64> = (0..count)
        .map(|i| bicubic_filter(((i + min) as f64 - centre + 0.5) / filter_scale))
        .collect();
    let total: f64 = raw.iter().sum();
    let fixed = raw
        .iter()
        .map(|w| {
            let w = if total != 0.0 { w / total } else { *w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            if scaled < 0.0 {
                (scaled - 0.5) as i64
            } else {
                (scaled + 0.5) as i64
            }
        })
        .collect();
    (min, fixed)
}

fn clip8(accumulator: i64) -> u8 {
    (accumulator >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A rectangle of the resized image: left, top, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First column.
    pub left: u32,
    /// First row.
    pub top: u32,
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

/// Bicubic resize to `new_width` x `new_height` with Pillow's exact arithmetic (8 bits per
/// channel, horizontal pass first, a pass skipped when its size does not change), computing
/// only the pixels inside `window` of the resized image.
pub fn resize_bicubic_window(
    image: &RgbImage,
    new_width: u32,
    new_height: u32,
    window: Window,
) -> RgbImage {
    let (width, height) = image.dimensions();
    assert!(
        window.left + window.width <= new_width && window.top + window.height <= new_height,
        "resize window outside the resized image"
    );
    // Horizontal pass: the window's columns, every input row.
    let horizontal = if new_width != width {
        let mut out = RgbImage::new(window.width, height);
        for x in 0..window.width {
            let (start, weights) = coefficients(width, new_width, window.left + x);
            for y in 0..height {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (i, w) in weights.iter().enumerate() {
                    let p = image.get_pixel((start + i) as u32, y);
                    for (a, &v) in acc.iter_mut().zip(&p.0) {
                        *a += i64::from(v) * w;
                    }
                }
                out.put_pixel(x, y, image::Rgb(acc.map(clip8)));
            }
        }
        out
    } else {
        image::imageops::crop_imm(image, window.left, 0, window.width, height).to_image()
    };
    // Vertical pass: the window's rows.
    if new_height == height {
        return image::imageops::crop_imm(&horizontal, 0, window.top, window.width, window.height)
            .to_image();
    }
    let mut out = RgbImage::new(window.width, window.height);
    for y in 0..window.height {
        let (start, weights) = coefficients(height, new_height, window.top + y);
        for x in 0..window.width {
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (i, w) in weights.iter().enumerate() {
                let p = horizontal.get_pixel(x, (start + i) as u32);
                for (a, &v) in acc.iter_mut().zip(&p.0) {
                    *a += i64::from(v) * w;
                }
            }
            out.put_pixel(x, y, image::Rgb(acc.map(clip8)));
        }
    }
    out
}

/// Bicubic resize of the whole image (Pillow's `resize(size, BICUBIC)`).
pub fn resize_bicubic(image: &RgbImage, new_width: u32, new_height: u32) -> RgbImage {
    let window = Window {
        left: 0,
        top: 0,
        width: new_width,
        height: new_height,
    };
    resize_bicubic_window(image, new_width, new_height, window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_coefficients_sum_to_one_in_fixed_point() {
        for (from, to) in [(451u32, 385u32), (300, 256), (10, 40), (256, 256)] {
            for out in 0..to {
                let (_, w) = coefficients(from, to, out);
                let sum: i64 = w.iter().sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                    "{sum}"
                );
            }
        }
    }

    #[test]
    fn window_equals_resize_then_crop() {
        let image = RgbImage::from_fn(97, 61, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x ^ y) % 256) as u8,
            ])
        });
        let full = resize_bicubic(&image, 150, 94);
        let window = Window {
            left: 20,
            top: 5,
            width: 80,
            height: 80,
        };
        let part = resize_bicubic_window(&image, 150, 94, window);
        let cropped = image::imageops::crop_imm(&full, 20, 5, 80, 80).to_image();
        assert_eq!(part, cropped);
        // A long thin image is cheap: only the crop is computed.
        let thin = RgbImage::from_pixel(16_000, 2, image::Rgb([1, 2, 3]));
        let out = resize_shorter_side_and_centre_crop(&thin, 256, 224);
        assert_eq!(out.dimensions(), (224, 224));
    }

    #[test]
    fn resize_keeps_a_flat_image_flat() {
        let image = RgbImage::from_pixel(37, 23, image::Rgb([10, 200, 99]));
        let out = resize_bicubic(&image, 300, 256);
        assert_eq!(out.dimensions(), (300, 256));
        assert!(out.pixels().all(|p| p.0 == [10, 200, 99]));
    }

    #[test]
    fn shorter_side_rounds_half_to_even_like_python() {
        assert_eq!(shorter_side_size(451, 300, 256), (385, 256));
        assert_eq!(shorter_side_size(1000, 872, 256), (294, 256));
        assert_eq!(shorter_side_size(427, 640, 256), (256, 384));
    }

    #[test]
    fn limits_reject_before_decoding() {
        assert_eq!(
            check_dimensions(0, 5),
            Err(InputError::ZeroSize {
                width: 0,
                height: 5
            })
        );
        assert!(matches!(
            check_dimensions(20_000, 20_000),
            Err(InputError::TooLarge { .. })
        ));
        assert!(check_dimensions(4000, 3000).is_ok());
        assert_eq!(decode_rgb(b""), Err(InputError::Empty));
        assert_eq!(decode_rgb(b"hello, world"), Err(InputError::UnknownFormat));
    }
}
