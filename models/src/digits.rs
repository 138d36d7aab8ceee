//! digits-cnn: a small CNN for the bundled 8x8 handwritten digits, trained here in seconds.
//!
//! Owns: the bundled data set (`data/digits.csv.gz`, UCI optical digits via scikit-learn: 1797
//! rows of 64 pixel values `0..=16` and a label), the seeded 80/20 split, the network, the
//! training loop (autodiff + Adam, no `burn-train`), held-out accuracy, the digits input format
//! and the [`Model`] implementation.
//! Must never: use Burn's global RNG (other threads may draw from or reseed it): initial weights
//! and shuffling come from the caller's seed, so the same seed gives the same model.

use std::io::Read;
use std::time::{Duration, Instant};

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::classify::{Prediction, prediction_from_logits};
use crate::error::{InputError, ModelError};
use crate::rng::SplitMix64;
use crate::{
    InputKind, Model, Preprocessed, batch_tensor, check_batch, image_input, logits_rows, weights,
};

/// Registry name.
pub const NAME: &str = "digits-cnn";
/// Side of a digit image, in pixels.
pub const SIDE: usize = 8;
/// Pixels per digit.
pub const PIXELS: usize = SIDE * SIDE;
/// Largest pixel value in the data set.
pub const PIXEL_MAX: f32 = 16.0;
/// Number of classes (digits 0..9).
pub const CLASSES: usize = 10;
/// Largest text input accepted, in bytes.
const TEXT_INPUT_BYTES_MAX: usize = 4096;

const DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// The digits data set: `pixels[i]` (64 values `0..=16`) has label `labels[i]`.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Row-major 8x8 pixel values per sample.
    pub pixels: Vec<[f32; PIXELS]>,
    /// Digit per sample.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// The bundled data set (1797 samples).
    pub fn bundled() -> Result<Self, ModelError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
            .read_to_string(&mut text)
            .map_err(|e| ModelError::Dataset(format!("digits.csv.gz: {e}")))?;
        Self::parse_csv(&text)
    }

    /// Parse rows of 64 pixel values and a label.
    pub fn parse_csv(text: &str) -> Result<Self, ModelError> {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for (line_index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row = parse_row(line)
                .map_err(|e| ModelError::Dataset(format!("line {}: {e}", line_index + 1)))?;
            let (values, label) = match row {
                (values, Some(label)) => (values, label),
                (_, None) => {
                    return Err(ModelError::Dataset(format!(
                        "line {}: no label",
                        line_index + 1
                    )));
                }
            };
            pixels.push(values);
            labels.push(label);
        }
        if pixels.is_empty() {
            return Err(ModelError::Dataset("no rows".into()));
        }
        Ok(Self { pixels, labels })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Split into (train, test) with a seeded shuffle; `test_percent` of the samples (rounded
    /// down) are held out.
    pub fn split(&self, seed: u64, test_percent: usize) -> (Dataset, Dataset) {
        assert!(test_percent < 100, "test_percent must be below 100");
        let mut order: Vec<usize> = (0..self.len()).collect();
        SplitMix64::new(seed).shuffle(&mut order);
        let test_count = self.len() * test_percent / 100;
        let pick = |indices: &[usize]| Dataset {
            pixels: indices.iter().map(|&i| self.pixels[i]).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        };
        (pick(&order[test_count..]), pick(&order[..test_count]))
    }
}

/// Parse 64 values `0..=16` and an optional 65th, the label `0..=9`.
fn parse_row(line: &str) -> Result<([f32; PIXELS], Option<u8>), String> {
    let fields: Vec<&str> = line
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|f| !f.is_empty())
        .collect();
    if fields.len() != PIXELS && fields.len() != PIXELS + 1 {
        return Err(format!(
            "expected {PIXELS} pixel values (and optionally a label), found {} fields",
            fields.len()
        ));
    }
    let mut values = [0.0f32; PIXELS];
    for (slot, field) in values.iter_mut().zip(&fields) {
        let value: f32 = field
            .parse()
            .map_err(|_| format!("`{field}` is not a number"))?;
        if !(0.0..=PIXEL_MAX).contains(&value) {
            return Err(format!("pixel value {value} is outside 0..=16"));
        }
        *slot = value;
    }
    let label = match fields.get(PIXELS) {
        None => None,
        Some(field) => match field.parse::<u8>() {
            Ok(label) if usize::from(label) < CLASSES => Some(label),
            _ => return Err(format!("label `{field}` is not a digit 0..9")),
        },
    };
    Ok((values, label))
}

/// Turn a digits input into 64 values `0..=16`: text (see [`InputKind::Digits8x8`]) or an image,
/// which is made grey, shrunk to 8x8 and inverted when its background is light (the data set has
/// bright ink on a dark background).
pub fn decode_digit(bytes: &[u8]) -> Result<[f32; PIXELS], InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    if image::guess_format(bytes).is_ok() {
        let rgb = image_input::decode_rgb(bytes)?;
        let grey = image::DynamicImage::ImageRgb8(rgb).to_luma8();
        let small = image::imageops::resize(
            &grey,
            SIDE as u32,
            SIDE as u32,
            image::imageops::FilterType::Triangle,
        );
        let mean = small.pixels().map(|p| f32::from(p[0])).sum::<f32>() / PIXELS as f32;
        let mut values = [0.0f32; PIXELS];
        for (slot, pixel) in values.iter_mut().zip(small.pixels()) {
            let v = f32::from(pixel[0]) / 255.0;
            let ink = if mean > 127.0 { 1.0 - v } else { v };
            *slot = ink * PIXEL_MAX;
        }
        return Ok(values);
    }
    if bytes.len() > TEXT_INPUT_BYTES_MAX {
        return Err(InputError::TooManyBytes {
            bytes: bytes.len(),
            limit_bytes: TEXT_INPUT_BYTES_MAX,
        });
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| InputError::Digits("neither text nor a PNG/JPEG image".into()))?;
    parse_row(text.trim())
        .map(|(values, _label)| values)
        .map_err(InputError::Digits)
}

/// The network: two 3x3 convolutions (16 and 32 channels), 2x2 max-pool, 512 -> 64 -> 10.
#[derive(Module, Debug)]
pub struct DigitsNet {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
}

const CONV1_CHANNELS: usize = 16;
const CONV2_CHANNELS: usize = 32;
const HIDDEN: usize = 64;
const FLAT: usize = CONV2_CHANNELS * (SIDE / 2) * (SIDE / 2);

/// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (PyTorch's default) from our own RNG.
fn uniform_param<const D: usize>(
    shape: [usize; D],
    fan_in: usize,
    rng: &mut SplitMix64,
    device: &Device,
) -> Param<Tensor<D>> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let count = shape.iter().product::<usize>();
    let values: Vec<f32> = (0..count).map(|_| rng.uniform(-bound, bound)).collect();
    Param::from_data(TensorData::new(values, shape), device)
}

fn seeded_conv(channels: [usize; 2], rng: &mut SplitMix64, device: &Device) -> Conv2d {
    let mut conv = Conv2dConfig::new(channels, [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .with_initializer(Initializer::Zeros)
        .init(device);
    let fan_in = channels[0] * 9;
    conv.weight = uniform_param([channels[1], channels[0], 3, 3], fan_in, rng, device);
    conv.bias = Some(uniform_param([channels[1]], fan_in, rng, device));
    conv
}

fn seeded_linear(features: [usize; 2], rng: &mut SplitMix64, device: &Device) -> Linear {
    let mut linear = LinearConfig::new(features[0], features[1])
        .with_initializer(Initializer::Zeros)
        .init(device);
    linear.weight = uniform_param(features, features[0], rng, device);
    linear.bias = Some(uniform_param([features[1]], features[0], rng, device));
    linear
}

impl DigitsNet {
    /// A fresh network with weights drawn from `seed`.
    pub fn new(seed: u64, device: &Device) -> Self {
        let mut rng = SplitMix64::new(seed);
        Self {
            conv1: seeded_conv([1, CONV1_CHANNELS], &mut rng, device),
            conv2: seeded_conv([CONV1_CHANNELS, CONV2_CHANNELS], &mut rng, device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: seeded_linear([FLAT, HIDDEN], &mut rng, device),
            fc2: seeded_linear([HIDDEN, CLASSES], &mut rng, device),
        }
    }

    /// Logits `[N, 10]` for inputs `[N, 1, 8, 8]` scaled to `0..=1`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.conv1.forward(x));
        let x = relu(self.conv2.forward(x));
        let x = self.pool.forward(x);
        let [batch, _, _, _] = x.dims();
        let x = relu(self.fc1.forward(x.reshape([batch, FLAT])));
        self.fc2.forward(x)
    }
}

/// Training settings. The defaults reach about 98% held-out accuracy in a few seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Seeds the split, the initial weights and the shuffling.
    pub seed: u64,
    /// Passes over the training split.
    pub epochs: usize,
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Share of the data held out for testing, in percent.
    pub test_percent: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            epochs: 15,
            batch_size: 32,
            learning_rate: 3e-3,
            test_percent: 20,
        }
    }
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Samples trained on.
    pub train_samples: usize,
    /// Samples held out.
    pub test_samples: usize,
    /// Share of held-out samples classified correctly, `0..=1`.
    pub test_accuracy: f64,
    /// Mean cross-entropy over the last epoch.
    pub final_loss: f64,
    /// Wall time of the training loop (without the evaluation).
    pub train_time: Duration,
}

fn to_preprocessed(pixels: &[f32; PIXELS]) -> Preprocessed {
    Preprocessed::new(
        [1, SIDE, SIDE],
        pixels.iter().map(|v| v / PIXEL_MAX).collect(),
    )
}

/// The digits CNN behind the [`Model`] interface.
#[derive(Debug)]
pub struct DigitsCnn {
    net: DigitsNet,
    device: Device,
    labels: Vec<String>,
}

impl DigitsCnn {
    /// Train on the bundled data set: `device` is the plain device to run on; training uses its
    /// autodiff twin.
    pub fn train(config: &TrainConfig, device: &Device) -> Result<(Self, TrainReport), ModelError> {
        let data = Dataset::bundled()?;
        let (train, test) = data.split(config.seed, config.test_percent);
        Self::train_on(config, &train, &test, device)
    }

    /// Train on `train`, report accuracy on `test`.
    pub fn train_on(
        config: &TrainConfig,
        train: &Dataset,
        test: &Dataset,
        device: &Device,
    ) -> Result<(Self, TrainReport), ModelError> {
        if train.is_empty() || config.batch_size == 0 {
            return Err(ModelError::Dataset(
                "training needs samples and a batch size above zero".into(),
            ));
        }
        let start = Instant::now();
        let autodiff = device.clone().autodiff();
        let mut net = DigitsNet::new(config.seed, &autodiff);
        let mut optimizer = AdamConfig::new().init();
        let loss_fn = CrossEntropyLossConfig::new().init(&autodiff);
        let mut rng = SplitMix64::new(config.seed ^ 0x5EED_5EED);
        let mut order: Vec<usize> = (0..train.len()).collect();
        let inputs: Vec<Preprocessed> = train.pixels.iter().map(to_preprocessed).collect();
        let mut final_loss = f64::NAN;
        for _epoch in 0..config.epochs {
            rng.shuffle(&mut order);
            let mut loss_sum = 0.0;
            let mut steps = 0usize;
            for chunk in order.chunks(config.batch_size) {
                let batch: Vec<Preprocessed> = chunk.iter().map(|&i| inputs[i].clone()).collect();
                let x = batch_tensor(&batch, [1, SIDE, SIDE], &autodiff);
                let targets: Vec<i64> = chunk.iter().map(|&i| i64::from(train.labels[i])).collect();
                let y =
                    Tensor::<1, Int>::from_data(TensorData::new(targets, [chunk.len()]), &autodiff);
                let loss = loss_fn.forward(net.forward(x), y);
                if steps.is_multiple_of(8) {
                    loss_sum += f64::from(loss.clone().into_scalar::<f32>());
                }
                let grads = GradientsParams::from_grads(loss.backward(), &net);
                net = optimizer.step(config.learning_rate, net, grads);
                steps += 1;
            }
            final_loss = loss_sum / steps.div_ceil(8) as f64;
        }
        let train_time = start.elapsed();
        let model = Self::with_net(net.valid(), device);
        let test_accuracy = model.accuracy(test)?;
        let report = TrainReport {
            train_samples: train.len(),
            test_samples: test.len(),
            test_accuracy,
            final_loss,
            train_time,
        };
        Ok((model, report))
    }

    /// Load weights produced by [`Model::weights_to_bytes`].
    pub fn from_weights_bytes(bytes: &[u8], device: &Device) -> Result<Self, ModelError> {
        let net = weights::from_bytes(NAME, &DigitsNet::new(0, device), bytes)?;
        Ok(Self::with_net(net, device))
    }

    fn with_net(net: DigitsNet, device: &Device) -> Self {
        Self {
            net,
            device: device.clone(),
            labels: (0..CLASSES).map(|d| d.to_string()).collect(),
        }
    }

    /// Share of `data` classified correctly.
    pub fn accuracy(&self, data: &Dataset) -> Result<f64, ModelError> {
        if data.is_empty() {
            return Ok(f64::NAN);
        }
        let inputs: Vec<Preprocessed> = data.pixels.iter().map(to_preprocessed).collect();
        let mut correct = 0usize;
        for (chunk, labels) in inputs.chunks(256).zip(data.labels.chunks(256)) {
            for (logits, &label) in self.forward_batch(chunk)?.iter().zip(labels) {
                let best = prediction_from_logits(logits, &self.labels).class_id;
                correct += usize::from(best == usize::from(label));
            }
        }
        Ok(correct as f64 / data.len() as f64)
    }
}

/// One digit file's bytes as the network's input.
fn preprocess_digit(bytes: &[u8]) -> Result<Preprocessed, InputError> {
    decode_digit(bytes).map(|pixels| to_preprocessed(&pixels))
}

impl Model for DigitsCnn {
    fn name(&self) -> &'static str {
        NAME
    }

    fn input_kind(&self) -> InputKind {
        InputKind::Digits8x8
    }

    fn input_shape(&self) -> [usize; 3] {
        [1, SIDE, SIDE]
    }

    fn is_trainable(&self) -> bool {
        true
    }

    fn preprocessor(&self) -> crate::Preprocessor {
        preprocess_digit
    }

    fn forward_batch(&self, batch: &[Preprocessed]) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        check_batch(NAME, self.input_shape(), batch)?;
        let x = batch_tensor(batch, self.input_shape(), &self.device);
        logits_rows(self.net.forward(x))
    }

    fn postprocess(&self, logits: &[f32]) -> Prediction {
        prediction_from_logits(logits, &self.labels)
    }

    fn weights_to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        weights::to_bytes(NAME, &self.net)
    }

    fn load_weights_from_bytes(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        self.net = weights::from_bytes(NAME, &self.net, bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_data_set_parses() {
        let data = Dataset::bundled().expect("bundled data");
        assert_eq!(data.len(), 1797);
        assert!(data.labels.iter().all(|&l| l < 10));
        let (train, test) = data.split(1, 20);
        assert_eq!(test.len(), 359);
        assert_eq!(train.len() + test.len(), data.len());
    }

    #[test]
    fn digit_text_inputs() {
        let row = vec!["3"; 64].join(",");
        assert_eq!(decode_digit(row.as_bytes()).map(|v| v[0]), Ok(3.0));
        let with_label = format!("{row},7\n");
        assert!(decode_digit(with_label.as_bytes()).is_ok());
        assert!(matches!(decode_digit(b"1,2,3"), Err(InputError::Digits(_))));
        let too_big = vec!["17"; 64].join(" ");
        assert!(matches!(
            decode_digit(too_big.as_bytes()),
            Err(InputError::Digits(_))
        ));
        assert!(matches!(
            decode_digit(&[0xff, 0xfe, 0x00]),
            Err(InputError::Digits(_))
        ));
        assert_eq!(decode_digit(b""), Err(InputError::Empty));
    }
}
