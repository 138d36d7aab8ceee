//! idunno-models: the Burn model zoo that workers run.
//!
//! Owns: model definitions (the digits CNN, EfficientNet-Lite0), weight loading and weight
//! (de)serialization as bytes, pre- and post-processing, the digits training loop, the registry of
//! models by name, and the local `predict` entry point. A worker drives every model through the
//! [`Model`] trait without knowing which one it is:
//!
//! ```text
//! let model = registry::load("efficientnet-lite0", &device)?;   // or registry::from_weights
//! let inputs = bytes.iter().map(|b| model.preprocess(b));        // per-input Result
//! let results = model.run_batch(&ok_inputs)?;                    // Vec<Prediction>
//! ```
//!
//! or in one call, with per-input errors kept apart from the batch: [`predict_batch`].
//!
//! Must never: depend on the cluster crates (core, runtime), do network I/O, or panic on input
//! bytes. Files are read only where a path is handed in (pretrained weights, `predict::run`).
//! Burn runs on the device the caller picks (CPU `Device::flex()` by default, see
//! [`default_device`]; a GPU through the optional `wgpu` feature, picked by name with
//! [`device::parse`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod classify;
mod cpu_gemm;
mod cpu_kernels;
pub mod device;
pub mod digits;
pub mod efficientnet;
pub mod error;
pub mod image_input;
pub mod predict;
pub mod registry;
mod rng;
mod weights;

pub use burn::tensor::Device;
use burn::tensor::{Tensor, TensorData};
pub use classify::{ClassScore, Prediction};
pub use device::DeviceError;
pub use error::{InputError, ModelError};

/// What kind of bytes a model takes as one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InputKind {
    /// A PNG or JPEG photograph of any size (resized and cropped by the model).
    Image,
    /// An 8x8 handwritten digit: 64 comma- or space-separated values `0..=16` (an optional 65th
    /// value, the label, is ignored), or a PNG/JPEG image that is turned grey and shrunk to 8x8.
    Digits8x8,
}

/// One input after decoding and preprocessing: channels-first `f32` values, ready to be batched.
/// Plain data (no tensor), so it can be built on any thread and sent to the one that runs the
/// model.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    shape: [usize; 3],
    values: Vec<f32>,
}

impl Preprocessed {
    /// Wrap values of the given (channels, height, width) shape.
    ///
    /// # Panics
    /// If `values.len()` is not the product of `shape` (a bug in the caller).
    pub fn new(shape: [usize; 3], values: Vec<f32>) -> Self {
        assert_eq!(
            values.len(),
            shape.iter().product::<usize>(),
            "Preprocessed: values do not fill the shape"
        );
        Self { shape, values }
    }

    /// (channels, height, width).
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The values, channels first.
    pub fn values(&self) -> &[f32] {
        &self.values
    }
}

/// A model a worker can drive without knowing which model it is.
pub trait Model: Send {
    /// The registry name, e.g. `"digits-cnn"`.
    fn name(&self) -> &'static str;

    /// What one input is.
    fn input_kind(&self) -> InputKind;

    /// The (channels, height, width) of one preprocessed input.
    fn input_shape(&self) -> [usize; 3];

    /// Whether [`registry::train`] can fit this model from data (else it loads pretrained
    /// weights).
    fn is_trainable(&self) -> bool;

    /// Decode and preprocess one input. Errors are per input and change nothing.
    fn preprocess(&self, bytes: &[u8]) -> Result<Preprocessed, InputError>;

    /// Run the network on a batch; one logits vector per input, in order.
    fn forward_batch(&self, batch: &[Preprocessed]) -> Result<Vec<Vec<f32>>, ModelError>;

    /// Turn one input's logits into its result record.
    fn postprocess(&self, logits: &[f32]) -> Prediction;

    /// Run a batch and post-process it: one prediction per input, in order.
    fn run_batch(&self, batch: &[Preprocessed]) -> Result<Vec<Prediction>, ModelError> {
        let logits = self.forward_batch(batch)?;
        debug_assert_eq!(logits.len(), batch.len());
        Ok(logits.iter().map(|l| self.postprocess(l)).collect())
    }

    /// The weights as self-contained bytes (Burn's burnpack format), e.g. to store them in the
    /// replicated file system.
    fn weights_to_bytes(&self) -> Result<Vec<u8>, ModelError>;

    /// Replace the weights with ones from [`Model::weights_to_bytes`]. On error the model is
    /// unchanged.
    fn load_weights_from_bytes(&mut self, bytes: &[u8]) -> Result<(), ModelError>;
}

/// Preprocess every input, run the ones that decoded as one batch, and return one result per
/// input in order: a prediction, or that input's own error. A model failure fails the whole call.
pub fn predict_batch(
    model: &dyn Model,
    inputs: &[&[u8]],
) -> Result<Vec<Result<Prediction, InputError>>, ModelError> {
    let prepared: Vec<Result<Preprocessed, InputError>> =
        inputs.iter().map(|bytes| model.preprocess(bytes)).collect();
    let batch: Vec<Preprocessed> = prepared
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let predictions = if batch.is_empty() {
        Vec::new()
    } else {
        model.run_batch(&batch)?
    };
    if predictions.len() != batch.len() {
        return Err(ModelError::Backend(format!(
            "{} returned {} results for a batch of {}",
            model.name(),
            predictions.len(),
            batch.len()
        )));
    }
    let mut predictions = predictions.into_iter();
    let results: Vec<Result<Prediction, InputError>> = prepared
        .into_iter()
        .filter_map(|p| match p {
            Ok(_) => predictions.next().map(Ok),
            Err(e) => Some(Err(e)),
        })
        .collect();
    debug_assert_eq!(results.len(), inputs.len());
    Ok(results)
}

/// The device models run on unless the caller picks another: Burn's pure-Rust CPU backend
/// (Flex), multi-threaded through rayon (`RAYON_NUM_THREADS` caps the threads). Always the CPU,
/// also in builds with a GPU feature; [`device::parse`] gives the others.
pub fn default_device() -> Device {
    Device::flex()
}

/// Stack a batch into one `[N, C, H, W]` tensor.
pub(crate) fn batch_tensor(
    batch: &[Preprocessed],
    shape: [usize; 3],
    device: &Device,
) -> Tensor<4> {
    let mut values = Vec::with_capacity(batch.len() * shape.iter().product::<usize>());
    for item in batch {
        values.extend_from_slice(item.values());
    }
    let data = TensorData::new(values, [batch.len(), shape[0], shape[1], shape[2]]);
    Tensor::from_data(data, device)
}

/// Read `[N, classes]` logits back as one vector per input.
pub(crate) fn logits_rows(logits: Tensor<2>) -> Result<Vec<Vec<f32>>, ModelError> {
    let [_, classes] = logits.dims();
    let data = logits
        .try_into_data()
        .map_err(|e| ModelError::Backend(format!("{e:?}")))?;
    let values = data
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Backend(format!("{e:?}")))?;
    Ok(values.chunks(classes).map(<[f32]>::to_vec).collect())
}

/// Check that every batch element has `expected` shape.
pub(crate) fn check_batch(
    model: &'static str,
    expected: [usize; 3],
    batch: &[Preprocessed],
) -> Result<(), ModelError> {
    for (index, item) in batch.iter().enumerate() {
        if item.shape != expected {
            return Err(ModelError::InputShape {
                model,
                expected,
                actual: item.shape,
                index,
            });
        }
    }
    Ok(())
}
