//! Reading and decoding image files within limits.
//!
//! Sizes are checked before allocation: the file size before reading, the
//! header's pixel count before decoding. JPEG, by far the commonest product
//! photo format, is decoded with libjpeg-turbo at 1/2, 1/4 or 1/8 scale
//! when the photo is large: the model sees 28x28 pixels, so decoding a
//! 12-megapixel photo at full size would be wasted work. Other formats go
//! through the `image` crate.

use std::io::{Cursor, Read};
use std::path::Path;

use image::{
    DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage, metadata::Orientation,
};

use super::ImageError;

/// A decoded image is never made smaller than this on its longest edge:
/// enough room to find the object and average it down to 28 pixels.
pub const DECODE_MIN_LONG_EDGE: usize = 192;

/// Resource limits for one image.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_image_bytes: u64,
    pub max_pixels: u64,
    pub min_edge_px: u32,
}

/// A decoded, upright RGB image.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The image as stored, after orientation (not the reduced decode size).
    pub width: u32,
    pub height: u32,
    /// The pixels, possibly decoded at reduced scale.
    pub rgb: RgbImage,
}

/// Reads the whole file, refusing empty and oversized ones before reading.
pub fn read_file(path: &Path, limits: &Limits) -> Result<Vec<u8>, ImageError> {
    let file = std::fs::File::open(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    if size == 0 {
        return Err(ImageError::EmptyFile);
    }
    if size > limits.max_image_bytes {
        return Err(ImageError::FileTooLarge { size, limit: limits.max_image_bytes });
    }

    // Read at most one byte past the limit, in case the file grew since the
    // size was taken.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limits.max_image_bytes + 1).read_to_end(&mut bytes).map_err(io_error)?;
    if bytes.len() as u64 > limits.max_image_bytes {
        return Err(ImageError::FileTooLarge {
            size: bytes.len() as u64,
            limit: limits.max_image_bytes,
        });
    }
    if bytes.is_empty() {
        return Err(ImageError::EmptyFile);
    }
    Ok(bytes)
}

fn io_error(error: std::io::Error) -> ImageError {
    match error.kind() {
        std::io::ErrorKind::NotFound => ImageError::Vanished,
        _ => ImageError::Unreadable(error),
    }
}

/// Decodes an image, upright, with transparency flattened onto white.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Decoded, ImageError> {
    let format =
        image::guess_format(bytes).map_err(|_| ImageError::NotAnImage(leading_bytes(bytes)))?;
    let decoded = match format {
        ImageFormat::Jpeg => decode_jpeg(bytes, limits)?,
        ImageFormat::Png | ImageFormat::WebP => decode_other(bytes, format, limits)?,
        other => {
            return Err(ImageError::Unsupported {
                format: "image",
                detail: format!("{other:?} files are not tagged (JPEG, PNG and WebP are)"),
            });
        }
    };

    let short_edge = decoded.width.min(decoded.height);
    if short_edge < limits.min_edge_px {
        return Err(ImageError::TooSmall {
            width: decoded.width,
            height: decoded.height,
            min: limits.min_edge_px,
        });
    }
    Ok(decoded)
}

/// The first bytes as text where printable, else hex: enough for a person
/// to recognise a text file or an HTML error page saved as `.jpg`.
fn leading_bytes(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(8)];
    if head.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(head))
    } else {
        let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
        format!("bytes {}", hex.join(" "))
    }
}

fn check_pixels(width: u64, height: u64, limits: &Limits) -> Result<(), ImageError> {
    if width.saturating_mul(height) > limits.max_pixels {
        return Err(ImageError::TooManyPixels { width, height, limit: limits.max_pixels });
    }
    Ok(())
}

fn decode_jpeg(bytes: &[u8], limits: &Limits) -> Result<Decoded, ImageError> {
    let mut decompressor = turbojpeg::Decompressor::new().map_err(|e| jpeg_error(&e))?;
    let header = decompressor.read_header(bytes).map_err(|e| jpeg_error(&e))?;
    check_pixels(header.width as u64, header.height as u64, limits)?;

    // libjpeg-turbo cannot turn CMYK into RGB; the `image` crate can.
    if matches!(header.colorspace, turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK) {
        return decode_other(bytes, ImageFormat::Jpeg, limits);
    }

    let factor = if header.is_lossless {
        turbojpeg::ScalingFactor::ONE
    } else {
        scaling_for(header.width.max(header.height))
    };
    decompressor.set_scaling_factor(factor).map_err(|e| jpeg_error(&e))?;
    let scaled = header.scaled(factor);

    let mut image = turbojpeg::Image {
        pixels: vec![0u8; 3 * scaled.width * scaled.height],
        width: scaled.width,
        pitch: 3 * scaled.width,
        height: scaled.height,
        format: turbojpeg::PixelFormat::RGB,
    };
    if let Err(error) = decompressor.decompress(bytes, image.as_deref_mut()) {
        accept_benign_warning(error)?;
    }

    let rgb = RgbImage::from_raw(scaled.width as u32, scaled.height as u32, image.pixels)
        .expect("buffer sized from the scaled header");
    let mut upright = DynamicImage::ImageRgb8(rgb);
    let orientation = exif_orientation(bytes);
    upright.apply_orientation(orientation);

    let (width, height) = oriented_size(header.width as u32, header.height as u32, orientation);
    Ok(Decoded { width, height, rgb: upright.into_rgb8() })
}

/// The smallest DCT scale that keeps the longest edge at or above
/// [`DECODE_MIN_LONG_EDGE`].
pub fn scaling_for(long_edge: usize) -> turbojpeg::ScalingFactor {
    use turbojpeg::ScalingFactor as F;
    [F::ONE_EIGHTH, F::ONE_QUARTER, F::ONE_HALF]
        .into_iter()
        .find(|factor| factor.scale(long_edge) >= DECODE_MIN_LONG_EDGE)
        .unwrap_or(F::ONE)
}

/// libjpeg-turbo reports some recoverable oddities as errors after
/// decoding everything. Extra bytes between markers are common in camera
/// files and harmless; a premature end of data is not.
fn accept_benign_warning(error: turbojpeg::Error) -> Result<(), ImageError> {
    let message = error.to_string();
    if message.contains("extraneous bytes before marker") {
        return Ok(());
    }
    Err(jpeg_error(&error))
}

fn jpeg_error(error: &turbojpeg::Error) -> ImageError {
    let detail = error.to_string().replace("TurboJPEG error: ", "");
    if detail.contains("Premature end") || detail.contains("ended prematurely") {
        ImageError::Truncated { format: "JPEG", detail }
    } else if detail.contains("Unsupported") {
        ImageError::Unsupported { format: "JPEG", detail }
    } else {
        ImageError::Corrupt { format: "JPEG", detail }
    }
}

/// The EXIF orientation of a JPEG; upright when absent or unreadable (an
/// unreadable EXIF block does not make the pixels unusable).
fn exif_orientation(bytes: &[u8]) -> Orientation {
    let Ok(exif) = exif::Reader::new().read_from_container(&mut Cursor::new(bytes)) else {
        return Orientation::NoTransforms;
    };
    exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
        .and_then(|field| field.value.get_uint(0))
        .and_then(|value| u8::try_from(value).ok())
        .and_then(Orientation::from_exif)
        .unwrap_or(Orientation::NoTransforms)
}

fn oriented_size(width: u32, height: u32, orientation: Orientation) -> (u32, u32) {
    match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (height, width),
        _ => (width, height),
    }
}

fn decode_other(bytes: &[u8], format: ImageFormat, limits: &Limits) -> Result<Decoded, ImageError> {
    let name = format_name(format);
    let reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder = reader.into_decoder().map_err(|e| image_error(name, e))?;

    let (width, height) = decoder.dimensions();
    check_pixels(width as u64, height as u64, limits)?;
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(16));
    decoder.set_limits(image_limits).map_err(|e| image_error(name, e))?;

    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(name, e))?;
    image.apply_orientation(orientation);

    Ok(Decoded { width: image.width(), height: image.height(), rgb: flatten_onto_white(&image) })
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        _ => "image",
    }
}

fn image_error(format: &'static str, error: image::ImageError) -> ImageError {
    use image::ImageError as E;
    let detail = error.to_string();
    match error {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Truncated { format, detail }
        }
        E::Unsupported(_) => ImageError::Unsupported { format, detail },
        E::Limits(_) => ImageError::Unsupported { format, detail },
        _ if detail.contains("end of") || detail.contains("EOF") || detail.contains("eof") => {
            ImageError::Truncated { format, detail }
        }
        _ => ImageError::Corrupt { format, detail },
    }
}

/// Composites any alpha channel onto white, the background of a product
/// shot, so transparent cut-outs look like the studio photos Fashion-MNIST
/// came from. 16-bit images are reduced to 8 bits here.
pub fn flatten_onto_white(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (out, pixel) in rgb.pixels_mut().zip(rgba.pixels()) {
        let alpha = u32::from(pixel[3]);
        for channel in 0..3 {
            let value = u32::from(pixel[channel]);
            out[channel] = ((value * alpha + 255 * (255 - alpha) + 127) / 255) as u8;
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgba, RgbaImage};

    const LIMITS: Limits =
        Limits { max_image_bytes: 10 * 1024 * 1024, max_pixels: 50_000_000, min_edge_px: 8 };

    fn jpeg_of(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, _| image::Rgb([(x % 256) as u8, 100, 50]));
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
            .write_image(image.as_raw(), width, height, image::ExtendedColorType::Rgb8)
            .unwrap();
        bytes
    }

    #[test]
    fn large_jpegs_are_decoded_at_reduced_scale_but_report_their_true_size() {
        let decoded = decode(&jpeg_of(1600, 1200), &LIMITS).unwrap();
        assert_eq!((decoded.width, decoded.height), (1600, 1200));
        assert_eq!(decoded.rgb.dimensions(), (200, 150));
    }

    #[test]
    fn small_jpegs_are_decoded_at_full_size() {
        let decoded = decode(&jpeg_of(150, 100), &LIMITS).unwrap();
        assert_eq!(decoded.rgb.dimensions(), (150, 100));
    }

    #[test]
    fn a_truncated_jpeg_is_reported_as_truncated() {
        let bytes = jpeg_of(400, 300);
        let error = decode(&bytes[..bytes.len() / 2], &LIMITS).unwrap_err();
        assert_eq!(error.code(), "truncated_image", "{error}");
    }

    #[test]
    fn text_is_not_an_image_and_the_message_shows_its_start() {
        let error = decode(b"hello, this is text", &LIMITS).unwrap_err();
        assert_eq!(error.code(), "not_an_image");
        assert!(error.to_string().contains("hello, t"), "{error}");
    }

    #[test]
    fn a_huge_header_is_refused_before_decoding() {
        // A PNG whose header claims 100000 x 100000 pixels, with almost no data.
        let mut png = Vec::new();
        png.extend_from_slice(b"\x89PNG\r\n\x1a\n");
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(b"IHDR");
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        for chunk in [ihdr, b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01".to_vec(), b"IEND".to_vec()] {
            png.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
            png.extend_from_slice(&chunk);
            png.extend_from_slice(&crc32(&chunk).to_be_bytes());
        }
        let error = decode(&png, &LIMITS).unwrap_err();
        assert_eq!(error.code(), "too_many_pixels", "{error}");
    }

    #[test]
    fn transparency_is_flattened_onto_white() {
        let mut rgba = RgbaImage::from_pixel(20, 20, Rgba([0, 0, 0, 0]));
        rgba.put_pixel(5, 5, Rgba([0, 0, 0, 255]));
        rgba.put_pixel(6, 6, Rgba([0, 0, 0, 128]));
        let rgb = flatten_onto_white(&DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(5, 5).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(6, 6).0, [127, 127, 127]);
    }

    #[test]
    fn a_one_pixel_image_is_too_small() {
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(&[0, 0, 0], 1, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
        let error = decode(&bytes, &LIMITS).unwrap_err();
        assert_eq!(error.code(), "image_too_small");
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
}
