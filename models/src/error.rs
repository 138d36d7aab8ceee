//! Error types of the model zoo.
//!
//! Owns: [`InputError`] (one input could not be turned into a tensor; the rest of its batch still
//! runs) and [`ModelError`] (a model could not be built, loaded or run as a whole).
//! Must never: carry tensors or other heavy values; errors are cheap to clone and print, because a
//! worker copies them into per-input result records.

use serde::Serialize;

/// Why one input could not be decoded or preprocessed. Per input: it never affects the model or
/// the other inputs of the same batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum InputError {
    /// The input has no bytes at all.
    #[error("empty input (0 bytes)")]
    Empty,
    /// The input is larger than the model accepts, before any decoding.
    #[error("input is {bytes} bytes; the limit is {limit_bytes} bytes")]
    TooManyBytes {
        /// Size of the input.
        bytes: usize,
        /// The limit it broke.
        limit_bytes: usize,
    },
    /// The bytes are not in any image format this crate decodes (PNG, JPEG).
    #[error("not a PNG or JPEG image")]
    UnknownFormat,
    /// The image header declares dimensions over the limits; nothing was allocated for it.
    #[error(
        "image is {width}x{height} pixels; the limit is {side_max} pixels a side and \
         {pixels_max} pixels in all"
    )]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Longest side accepted.
        side_max: u32,
        /// Largest pixel count accepted.
        pixels_max: u64,
    },
    /// The image header declares a zero width or height.
    #[error("image has zero size ({width}x{height})")]
    ZeroSize {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// The decoder rejected the data (truncated file, bad checksum, unsupported variant, ...).
    #[error("cannot decode image: {0}")]
    Decode(String),
    /// The input could not be read (missing file, permissions, I/O error).
    #[error("cannot read input: {0}")]
    Read(String),
    /// The input is not a digits sample (64 values 0..16, or an image).
    #[error("not a digits input: {0}")]
    Digits(String),
}

/// A failure of a model as a whole (not of one input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// No model of that name is registered.
    #[error("unknown model `{name}`; known models: {}", known.join(", "))]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The names the registry knows.
        known: Vec<String>,
    },
    /// Weights could not be read, parsed or applied to the model.
    #[error("weights for {model}: {reason}")]
    Weights {
        /// The model whose weights failed.
        model: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A batch element does not have the shape this model takes (it was preprocessed for
    /// another model).
    #[error("{model} takes inputs of shape {expected:?}; batch element {index} has {actual:?}")]
    InputShape {
        /// The model.
        model: &'static str,
        /// Its input shape (channels, height, width).
        expected: [usize; 3],
        /// The shape found.
        actual: [usize; 3],
        /// Position of the element in the batch.
        index: usize,
    },
    /// The backend failed to run or read back a tensor.
    #[error("backend: {0}")]
    Backend(String),
    /// A bundled or given data set could not be parsed.
    #[error("data set: {0}")]
    Dataset(String),
    /// The model cannot be trained.
    #[error("{0} is not trainable; it loads pretrained weights")]
    NotTrainable(&'static str),
}
