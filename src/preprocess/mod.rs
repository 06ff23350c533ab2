//! Preprocessing: from a file on disk to the 28x28 input the model expects.
//!
//! Two stages, each in its own module:
//!
//! - [`decode`] reads the file within the configured limits, decodes it (JPEG
//!   at a reduced size in the DCT domain where that is free), applies the
//!   EXIF orientation and flattens transparency onto white.
//! - [`fmnist`] converts the photo the way Fashion-MNIST itself was made
//!   (trim to the object, longest edge to 28, sharpen, pad, negate, gray),
//!   with [`segment`] separating the object from floors and beds and
//!   [`garment`] separating a worn garment from the person wearing it.
//!
//! Every failure is an [`ImageError`] with a stable code, so a bad file ends
//! as a `failed` row that says what is wrong, and never stops the daemon.

pub mod decode;
pub mod fmnist;
pub mod garment;
pub mod segment;

use std::path::Path;

pub use decode::{Decoded, Limits};
pub use fmnist::{
    Converted, FMNIST_V1, FMNIST_V2, FMNIST_V3, FMNIST_V4, FMNIST_V5, INPUT_EDGE, INPUT_PIXELS,
    Recipe,
};

/// Preprocessing identifiers this build implements. A model manifest must
/// name one of them.
pub const KNOWN_PREPROCESSING: &[&str] = &[FMNIST_V1, FMNIST_V2, FMNIST_V3, FMNIST_V4, FMNIST_V5];

/// Why an image could not be turned into model input. `code()` is stored in
/// the catalogue and is stable across releases.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the file is empty")]
    EmptyFile,
    #[error("the file is {size} bytes, over the limit of {limit} (limits.max_image_bytes)")]
    FileTooLarge { size: u64, limit: u64 },
    #[error("the file disappeared before it could be read")]
    Vanished,
    #[error("cannot read the file: {0}")]
    Unreadable(#[source] std::io::Error),
    #[error("not a JPEG, PNG or WebP image (it starts with {0})")]
    NotAnImage(String),
    #[error(
        "the header claims {width}x{height} pixels, over the limit of {limit} \
         (limits.max_pixels); nothing was decoded"
    )]
    TooManyPixels { width: u64, height: u64, limit: u64 },
    #[error("{width}x{height} pixels is too small to classify (limits.min_edge_px is {min})")]
    TooSmall { width: u32, height: u32, min: u32 },
    #[error("the {format} data ends early: {detail}")]
    Truncated { format: &'static str, detail: String },
    #[error("the {format} data is corrupt: {detail}")]
    Corrupt { format: &'static str, detail: String },
    #[error("unsupported {format}: {detail}")]
    Unsupported { format: &'static str, detail: String },
}

impl ImageError {
    /// The stable error code stored in `images.error_code`.
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::EmptyFile => "empty_file",
            ImageError::FileTooLarge { .. } => "file_too_large",
            ImageError::Vanished => "file_vanished",
            ImageError::Unreadable(_) => "unreadable_file",
            ImageError::NotAnImage(_) => "not_an_image",
            ImageError::TooManyPixels { .. } => "too_many_pixels",
            ImageError::TooSmall { .. } => "image_too_small",
            ImageError::Truncated { .. } => "truncated_image",
            ImageError::Corrupt { .. } => "corrupt_image",
            ImageError::Unsupported { .. } => "unsupported_image",
        }
    }
}

/// A photo turned into model input, with what was learnt on the way.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The photo's size as stored (before any reduced-size decode), after
    /// EXIF orientation.
    pub width: u32,
    pub height: u32,
    pub converted: Converted,
}

/// Reads and hashes a file within the limits. Kept apart from decoding so
/// the pipeline can look the hash up before spending time on pixels.
pub fn read_file(path: &Path, limits: &Limits) -> Result<Vec<u8>, ImageError> {
    decode::read_file(path, limits)
}

/// Decodes bytes and converts them to Fashion-MNIST form.
pub fn prepare(bytes: &[u8], limits: &Limits, recipe: &Recipe) -> Result<Prepared, ImageError> {
    let decoded = decode::decode(bytes, limits)?;
    let converted = fmnist::convert(&decoded.rgb, recipe);
    Ok(Prepared { width: decoded.width, height: decoded.height, converted })
}
