//! EfficientNet-Lite0, the ImageNet-1k classifier, written in Burn with its pretrained weights.
//!
//! Owns: the network (stem, 16 MBConv blocks without squeeze-excitation, head, classifier; ReLU6,
//! batch-norm epsilon 1e-3, TensorFlow-style SAME padding, which Burn's `PaddingConfig2d::Same`
//! computes exactly: the odd pixel of a stride-2 convolution goes to the bottom/right), loading
//! the legacy PyTorch state dict (`weights/efficientnet-lite0.pth`, keys `_conv_stem`,
//! `_blocks.N._expand_conv`, ... with the leading underscores stripped), the preprocessing (RGB,
//! shorter side to 256 bicubic, centre crop 224, `(x - 127) / 128`) and the ImageNet labels.
//! Module layout follows tracel-ai/models' EfficientNet.
//! Must never: fetch anything over the network; weights come from a path or from bytes.

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::store::{ModuleSnapshot, PytorchStore};
use burn::tensor::activation::relu6;
use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use crate::classify::{Prediction, prediction_from_logits};
use crate::cpu_gemm::{Epilogue, Pointwise};
use crate::cpu_kernels::{Depthwise, SmallConv, channel_means};
use crate::error::{InputError, ModelError};
use crate::{
    InputKind, Model, Preprocessed, batch_tensor, check_batch, image_input, logits_rows, weights,
};

/// Registry name.
pub const NAME: &str = "efficientnet-lite0";
/// Input side after the centre crop, in pixels.
pub const INPUT_SIDE: usize = 224;
/// The shorter side is resized to this before cropping, in pixels.
pub const RESIZE_SIDE: u32 = 256;
/// Number of ImageNet classes.
pub const CLASSES: usize = 1000;
/// File name of the vendored PyTorch weights inside the weights directory.
pub const WEIGHTS_FILE: &str = "efficientnet-lite0.pth";
/// Environment variable naming a directory that holds [`WEIGHTS_FILE`] (for installed binaries
/// that do not run from the source tree).
pub const WEIGHTS_DIR_ENV: &str = "IDUNNO_MODELS_WEIGHTS_DIR";

/// Images per forward pass of the generic Burn path on the CPU (see
/// [`EfficientNetLite0::with_cpu_kernels`]): a batch is run in parts of this size. The
/// activations of one 224x224 image (up to 96x112x112 floats, 4.8 MB) already outrun the caches,
/// so larger passes only add memory traffic on a CPU (docs/benchmarks.md has the measurements);
/// one image per pass also makes an image's result independent of the batch it arrives in. The
/// CPU kernel path always runs one image per pass, the images of a batch in parallel on the
/// rayon pool.
pub const MICRO_BATCH: usize = 1;

/// Images per forward pass on a GPU device: a whole batch of this size goes in one pass (a GPU
/// needs many images in flight to fill its cores; a pass per image leaves it mostly idle).
pub const GPU_MICRO_BATCH: usize = 64;

const BATCH_NORM_EPSILON: f64 = 1e-3;
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

/// One MBConv block: (expand ratio, kernel size, stride, channels in, channels out).
const BLOCKS: [(usize, usize, usize, usize, usize); 16] = [
    (1, 3, 1, 32, 16),
    (6, 3, 2, 16, 24),
    (6, 3, 1, 24, 24),
    (6, 5, 2, 24, 40),
    (6, 5, 1, 40, 40),
    (6, 3, 2, 40, 80),
    (6, 3, 1, 80, 80),
    (6, 3, 1, 80, 80),
    (6, 5, 1, 80, 112),
    (6, 5, 1, 112, 112),
    (6, 5, 1, 112, 112),
    (6, 5, 2, 112, 192),
    (6, 5, 1, 192, 192),
    (6, 5, 1, 192, 192),
    (6, 5, 1, 192, 192),
    (6, 3, 1, 192, 320),
];

fn conv(
    channels: [usize; 2],
    kernel: usize,
    stride: usize,
    groups: usize,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new(channels, [kernel, kernel])
        .with_stride([stride, stride])
        .with_groups(groups)
        .with_padding(PaddingConfig2d::Same)
        .with_bias(false)
        .with_initializer(Initializer::Zeros)
        .init(device)
}

fn batch_norm(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(BATCH_NORM_EPSILON)
        .init(device)
}

/// Mobile inverted bottleneck: optional 1x1 expansion, depthwise convolution, 1x1 projection,
/// and an identity shortcut when the shape is kept.
#[derive(Module, Debug)]
pub struct MbConvBlock {
    expand_conv: Option<Conv2d>,
    bn0: Option<BatchNorm>,
    depthwise_conv: Conv2d,
    bn1: BatchNorm,
    project_conv: Conv2d,
    bn2: BatchNorm,
    residual: bool,
}

impl MbConvBlock {
    fn new(spec: (usize, usize, usize, usize, usize), device: &Device) -> Self {
        let (expand_ratio, kernel, stride, channels_in, channels_out) = spec;
        let hidden = channels_in * expand_ratio;
        let (expand_conv, bn0) = if expand_ratio == 1 {
            (None, None)
        } else {
            (
                Some(conv([channels_in, hidden], 1, 1, 1, device)),
                Some(batch_norm(hidden, device)),
            )
        };
        Self {
            expand_conv,
            bn0,
            depthwise_conv: conv([hidden, hidden], kernel, stride, hidden, device),
            bn1: batch_norm(hidden, device),
            project_conv: conv([hidden, channels_out], 1, 1, 1, device),
            bn2: batch_norm(channels_out, device),
            residual: stride == 1 && channels_in == channels_out,
        }
    }

    fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let mut x = input.clone();
        if let (Some(expand), Some(bn)) = (&self.expand_conv, &self.bn0) {
            x = relu6(bn.forward(expand.forward(x)));
        }
        x = relu6(self.bn1.forward(self.depthwise_conv.forward(x)));
        x = self.bn2.forward(self.project_conv.forward(x));
        if self.residual { x + input } else { x }
    }
}

/// The EfficientNet-Lite0 network: `[N, 3, 224, 224]` -> logits `[N, 1000]`.
#[derive(Module, Debug)]
pub struct EfficientNet {
    conv_stem: Conv2d,
    bn0: BatchNorm,
    blocks: Vec<MbConvBlock>,
    conv_head: Conv2d,
    bn1: BatchNorm,
    fc: Linear,
}

impl EfficientNet {
    /// The network with placeholder (zero) weights; load real ones before use.
    pub fn new(device: &Device) -> Self {
        let last = BLOCKS[BLOCKS.len() - 1].4;
        Self {
            conv_stem: conv([3, STEM_CHANNELS], 3, 2, 1, device),
            bn0: batch_norm(STEM_CHANNELS, device),
            blocks: BLOCKS
                .iter()
                .map(|&b| MbConvBlock::new(b, device))
                .collect(),
            conv_head: conv([last, HEAD_CHANNELS], 1, 1, 1, device),
            bn1: batch_norm(HEAD_CHANNELS, device),
            fc: LinearConfig::new(HEAD_CHANNELS, CLASSES)
                .with_initializer(Initializer::Zeros)
                .init(device),
        }
    }

    /// Logits for a batch of preprocessed images.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = relu6(self.bn0.forward(self.conv_stem.forward(images)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        x = relu6(self.bn1.forward(self.conv_head.forward(x)));
        let [batch, channels, _, _] = x.dims();
        let pooled = x.mean_dims(&[2, 3]).reshape([batch, channels]);
        self.fc.forward(pooled)
    }
}

/// A convolution with its batch norm folded in: `w' = w * s`, `b' = beta - mean * s` with
/// `s = gamma / sqrt(var + eps)` per output channel. Same function, one pass over the activations
/// instead of five (convolution, then subtract, divide, multiply, add).
fn fold(conv: &Conv2d, bn: &BatchNorm) -> Conv2d {
    let [channels_out, _, _, _] = conv.weight.dims();
    let scale = bn
        .gamma
        .val()
        .div(bn.running_var.value().add_scalar(bn.epsilon).sqrt());
    let shift = match &conv.bias {
        Some(bias) => bias.val().sub(bn.running_mean.value()),
        None => bn.running_mean.value().neg(),
    };
    let bias = bn.beta.val().add(shift.mul(scale.clone()));
    let weight = conv
        .weight
        .val()
        .mul(scale.reshape([channels_out, 1, 1, 1]));
    Conv2d {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
        stride: conv.stride,
        kernel_size: conv.kernel_size,
        dilation: conv.dilation,
        groups: conv.groups,
        padding: conv.padding.clone(),
    }
}

#[derive(Debug)]
struct FoldedBlock {
    expand: Option<Conv2d>,
    depthwise: Conv2d,
    project: Conv2d,
    residual: bool,
}

/// The inference form of [`EfficientNet`]: every batch norm folded into its convolution.
/// Built from the canonical network whenever weights are loaded; never serialized.
#[derive(Debug)]
struct FoldedNet {
    stem: Conv2d,
    blocks: Vec<FoldedBlock>,
    head: Conv2d,
    fc: Linear,
}

impl FoldedNet {
    fn new(net: &EfficientNet) -> Self {
        let blocks = net
            .blocks
            .iter()
            .map(|b| FoldedBlock {
                expand: match (&b.expand_conv, &b.bn0) {
                    (Some(conv), Some(bn)) => Some(fold(conv, bn)),
                    _ => None,
                },
                depthwise: fold(&b.depthwise_conv, &b.bn1),
                project: fold(&b.project_conv, &b.bn2),
                residual: b.residual,
            })
            .collect();
        Self {
            stem: fold(&net.conv_stem, &net.bn0),
            blocks,
            head: fold(&net.conv_head, &net.bn1),
            fc: net.fc.clone(),
        }
    }

    /// Logits; with `times`, each step is synchronised and timed by kind.
    fn forward(&self, images: Tensor<4>, mut times: Option<&mut LayerTimes>) -> Tensor<2> {
        let device = images.device();
        // Tensors are moved, never cloned, so the backend may reuse their buffers in place.
        macro_rules! step {
            ($kind:expr, $e:expr) => {{
                let start = times.is_some().then(std::time::Instant::now);
                let out = $e;
                if let (Some(t), Some(start)) = (times.as_deref_mut(), start) {
                    let _ = device.sync();
                    t.add($kind, start.elapsed());
                }
                out
            }};
        }
        let mut x = step!("stem conv 3x3/2", self.stem.forward(images));
        x = step!("ReLU6", relu6(x));
        for block in &self.blocks {
            let input = block.residual.then(|| x.clone());
            if let Some(expand) = &block.expand {
                x = step!("expand conv 1x1", expand.forward(x));
                x = step!("ReLU6", relu6(x));
            }
            x = step!("depthwise conv 3x3/5x5", block.depthwise.forward(x));
            x = step!("ReLU6", relu6(x));
            x = step!("project conv 1x1", block.project.forward(x));
            if let Some(input) = input {
                x = step!("residual add", x + input);
            }
        }
        x = step!("head conv 1x1", self.head.forward(x));
        x = step!("ReLU6", relu6(x));
        let [batch, channels, _, _] = x.dims();
        step!(
            "pool + fc",
            self.fc
                .forward(x.mean_dims(&[2, 3]).reshape([batch, channels]))
        )
    }
}

/// Burn tensor -> its `f32` values (no copy when the tensor is the only owner of its buffer,
/// as every activation here is).
fn tensor_values<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    tensor
        .try_into_data()
        .map_err(|e| ModelError::Backend(format!("{e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Backend(format!("{e:?}")))
}

/// A folded 1x1 convolution as a [`Pointwise`] GEMM (bias kept for its fused epilogue).
fn pointwise(conv: &Conv2d) -> Result<Pointwise, ModelError> {
    let [channels_out, _, kernel_h, kernel_w] = conv.weight.dims();
    debug_assert!(kernel_h == 1 && kernel_w == 1 && conv.groups == 1);
    let bias = match &conv.bias {
        Some(bias) => tensor_values(bias.val())?,
        None => vec![0.0; channels_out],
    };
    debug_assert_eq!(bias.len(), channels_out);
    Ok(Pointwise::new(&tensor_values(conv.weight.val())?, bias))
}

/// A conv's bias values (zeros when it has none).
fn bias_values(conv: &Conv2d) -> Result<Vec<f32>, ModelError> {
    let [channels_out, _, _, _] = conv.weight.dims();
    match &conv.bias {
        Some(bias) => tensor_values(bias.val()),
        None => Ok(vec![0.0; channels_out]),
    }
}

#[derive(Debug)]
struct CpuBlock {
    /// 1x1 expansion with its bias and ReLU6 fused into the GEMM's store.
    expand: Option<Pointwise>,
    depthwise: Depthwise,
    /// 1x1 projection with its bias and the residual fused into the GEMM's store.
    project: Pointwise,
    residual: bool,
}

/// The CPU form of [`FoldedNet`]: the same folded weights, one image per pass, run by
/// [`crate::cpu_kernels`] (stem, depthwise) and [`crate::cpu_gemm`] (the 1x1 convolutions as
/// GEMMs), every bias, ReLU6 and residual add fused into a kernel's store instead of a pass of
/// its own; only the classifier is still Burn's. Built only for the CPU device.
#[derive(Debug)]
struct CpuNet {
    stem: SmallConv,
    blocks: Vec<CpuBlock>,
    head: Pointwise,
    /// The classifier as a 1x1 convolution over one pixel.
    fc: Pointwise,
}

impl CpuNet {
    fn new(folded: &FoldedNet) -> Result<Self, ModelError> {
        let blocks = folded
            .blocks
            .iter()
            .map(|b| {
                let [channels, _, kernel, _] = b.depthwise.weight.dims();
                debug_assert_eq!(b.depthwise.groups, channels);
                Ok(CpuBlock {
                    expand: b.expand.as_ref().map(pointwise).transpose()?,
                    depthwise: Depthwise {
                        kernel,
                        stride: b.depthwise.stride[0],
                        weight: tensor_values(b.depthwise.weight.val())?,
                        bias: bias_values(&b.depthwise)?,
                    },
                    project: pointwise(&b.project)?,
                    residual: b.residual,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        let [_, channels_in, kernel, _] = folded.stem.weight.dims();
        Ok(Self {
            stem: SmallConv {
                kernel,
                stride: folded.stem.stride[0],
                channels_in,
                weight: tensor_values(folded.stem.weight.val())?,
                bias: bias_values(&folded.stem)?,
            },
            blocks,
            head: pointwise(&folded.head)?,
            fc: {
                // Burn's Linear weight is `[in, out]`; the GEMM wants `[out, in]`.
                let weight = tensor_values(folded.fc.weight.val().transpose())?;
                let bias = match &folded.fc.bias {
                    Some(bias) => tensor_values(bias.val())?,
                    None => vec![0.0; CLASSES],
                };
                Pointwise::new(&weight, bias)
            },
        })
    }

    /// Logits of one `[3, 224, 224]` image; with `times`, each step is timed by kind.
    fn forward(
        &self,
        image: &[f32],
        mut times: Option<&mut LayerTimes>,
    ) -> Result<Vec<f32>, ModelError> {
        // `step!(kind, side, expression)`: `side` is the layer's input height (the per-size
        // breakdown's key).
        macro_rules! step {
            ($kind:expr, $side:expr, $e:expr) => {{
                let start = times.is_some().then(std::time::Instant::now);
                let out = $e;
                if let (Some(t), Some(start)) = (times.as_deref_mut(), start) {
                    let elapsed = start.elapsed();
                    t.add($kind, elapsed);
                    t.add_sized($kind, $side, elapsed);
                }
                out
            }};
        }
        let arch = pulp::Arch::new();
        // This thread's buffers, taken out of the thread-local for the pass (a pass that rayon
        // starts on this thread while this one waits finds none and allocates its own).
        let mut work = WORKSPACE.take();
        let Workspace { x, hidden, spatial } = &mut work;
        let image_shape = [3, INPUT_SIDE, INPUT_SIDE];
        if image.len() != image_shape.iter().product::<usize>() {
            return Err(ModelError::Backend(format!(
                "efficientnet input of {} values, want 3x{INPUT_SIDE}x{INPUT_SIDE}",
                image.len()
            )));
        }
        let mut shape = self.stem.output_shape(image_shape);
        step!(
            "stem conv 3x3/2 + bias + ReLU6",
            INPUT_SIDE,
            self.stem.forward_into(image, image_shape, room(x, shape))
        );
        for block in &self.blocks {
            // `x` holds the block's input (the stem's output, activated, or the previous
            // projection's, with its bias and the residual added).
            let [channels, height, width] = shape;
            let pixels = height * width;
            let input = &x[..channels * pixels];
            let (dw_input, dw_shape) = match &block.expand {
                Some(expand) => {
                    let hidden_shape = [expand.channels_out(), height, width];
                    let out = room(hidden, hidden_shape);
                    step!(
                        "expand conv 1x1 + bias + ReLU6 (GEMM)",
                        height,
                        expand.forward_into(arch, input, pixels, Epilogue::BiasRelu6, out)
                    );
                    (&hidden[..hidden_shape.iter().product()], hidden_shape)
                }
                None => (input, shape),
            };
            let dw_out_shape = block.depthwise.output_shape(dw_shape);
            step!(
                "depthwise conv 3x3/5x5 + bias + ReLU6",
                height,
                block.depthwise.forward_into(
                    arch,
                    dw_input,
                    dw_shape,
                    None,
                    room(spatial, dw_out_shape)
                )
            );
            let [_, out_h, out_w] = dw_out_shape;
            let out_pixels = out_h * out_w;
            shape = [block.project.channels_out(), out_h, out_w];
            let epilogue = if block.residual {
                if shape != [channels, height, width] {
                    return Err(ModelError::Backend(format!(
                        "residual {:?} for a projection to {shape:?}",
                        [channels, height, width]
                    )));
                }
                Epilogue::BiasResidual(input)
            } else {
                Epilogue::Bias
            };
            // The projection goes to `hidden` (free again), which then becomes `x`.
            let out = room(hidden, shape);
            step!(
                "project conv 1x1 + bias + residual (GEMM)",
                out_h,
                block.project.forward_into(
                    arch,
                    &spatial[..dw_out_shape.iter().product()],
                    out_pixels,
                    epilogue,
                    out
                )
            );
            std::mem::swap(x, hidden);
        }
        let [channels, height, width] = shape;
        let pixels = height * width;
        let head_shape = [self.head.channels_out(), height, width];
        let out = room(hidden, head_shape);
        step!(
            "head conv 1x1 + bias + ReLU6 (GEMM)",
            height,
            self.head.forward_into(
                arch,
                &x[..channels * pixels],
                pixels,
                Epilogue::BiasRelu6,
                out
            )
        );
        let pooled = step!(
            "pool + fc",
            height,
            channel_means(
                &hidden[..head_shape.iter().product()],
                self.head.channels_out(),
            )
        );
        WORKSPACE.set(work);
        let mut logits = vec![0.0; self.fc.channels_out()];
        step!(
            "pool + fc",
            1,
            self.fc
                .forward_into(arch, &pooled, 1, Epilogue::Bias, &mut logits)
        );
        Ok(logits)
    }
}

/// One thread's activation buffers for [`CpuNet::forward`], kept between passes so that a pass
/// neither allocates nor zeroes its activations (every kernel overwrites all it writes).
#[derive(Debug, Default)]
struct Workspace {
    /// A block's input (and residual).
    x: Vec<f32>,
    /// The expansion's output, then the projection's.
    hidden: Vec<f32>,
    /// The depthwise convolution's output.
    spatial: Vec<f32>,
}

thread_local! {
    static WORKSPACE: std::cell::Cell<Workspace> = std::cell::Cell::new(Workspace::default());
}

/// The first `shape`-many values of `buffer`, growing it (never shrinking) as needed.
fn room(buffer: &mut Vec<f32>, shape: [usize; 3]) -> &mut [f32] {
    let len = shape.iter().product();
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// Time spent per kind of layer in one forward pass (each layer synchronised, so the sum is a bit
/// above a plain forward); for the benchmark's "where the time goes".
#[derive(Debug, Clone, Default)]
pub struct LayerTimes {
    /// (kind, total time), in first-seen order.
    pub kinds: Vec<(&'static str, std::time::Duration)>,
    /// ((kind, input side in pixels), total time), in first-seen order: the same time split by
    /// layer size (CPU kernel path only; empty for the generic network).
    pub sized: Vec<((&'static str, usize), std::time::Duration)>,
}

impl LayerTimes {
    fn add_sized(&mut self, kind: &'static str, side: usize, elapsed: std::time::Duration) {
        match self.sized.iter_mut().find(|(k, _)| *k == (kind, side)) {
            Some((_, total)) => *total += elapsed,
            None => self.sized.push(((kind, side), elapsed)),
        }
    }

    fn add(&mut self, kind: &'static str, elapsed: std::time::Duration) {
        match self.kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, total)) => *total += elapsed,
            None => self.kinds.push((kind, elapsed)),
        }
    }
}

/// The directory the pretrained weights are read from: `$IDUNNO_MODELS_WEIGHTS_DIR` if set, else
/// the `weights/` directory of this crate's source tree.
pub fn weights_dir() -> PathBuf {
    match std::env::var_os(WEIGHTS_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("weights"),
    }
}

/// The ImageNet class names, line i = class i (torchvision's list).
pub fn imagenet_labels() -> Vec<String> {
    include_str!("../weights/imagenet-classes.txt")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// EfficientNet-Lite0 behind the [`Model`] interface.
#[derive(Debug)]
pub struct EfficientNetLite0 {
    /// The canonical weights (what is loaded and serialized).
    net: EfficientNet,
    /// What runs: `net` with its batch norms folded into the convolutions.
    folded: FoldedNet,
    /// On the CPU device: `folded` for the CPU kernels, which run instead of it by default.
    cpu: Option<CpuNet>,
    /// Whether `cpu` runs (see [`EfficientNetLite0::with_cpu_kernels`]).
    use_cpu_kernels: bool,
    /// Images per forward pass inside [`Model::forward_batch`].
    micro_batch: usize,
    device: Device,
    labels: Vec<String>,
}

impl EfficientNetLite0 {
    /// Load the vendored pretrained weights from [`weights_dir`].
    pub fn pretrained(device: &Device) -> Result<Self, ModelError> {
        Self::from_pth(&weights_dir().join(WEIGHTS_FILE), device)
    }

    /// Load a (legacy or zip) PyTorch state dict of EfficientNet-Lite0.
    pub fn from_pth(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let weights_error = |reason: String| ModelError::Weights {
            model: NAME,
            reason: format!("{}: {reason}", path.display()),
        };
        if !path.is_file() {
            return Err(weights_error(format!(
                "no such file (set {WEIGHTS_DIR_ENV} to the directory holding {WEIGHTS_FILE})"
            )));
        }
        let mut net = EfficientNet::new(device);
        // `_blocks.0._bn1.weight` -> `blocks.0.bn1.weight`; the store maps batch-norm names and
        // transposes the Linear weight itself. `num_batches_tracked` is reported unused.
        let mut store = PytorchStore::from_file(path).with_key_remapping(r"(^|\.)_", "$1");
        let result = net
            .load_from(&mut store)
            .map_err(|e| weights_error(e.to_string()))?;
        if !result.errors.is_empty() || !result.missing.is_empty() {
            return Err(weights_error(result.to_string()));
        }
        debug_assert!(result.applied.len() > 200);
        Self::with_net(net, device)
    }

    /// Load weights produced by [`Model::weights_to_bytes`].
    pub fn from_weights_bytes(bytes: &[u8], device: &Device) -> Result<Self, ModelError> {
        let net = weights::from_bytes(NAME, &EfficientNet::new(device), bytes)?;
        Self::with_net(net, device)
    }

    /// Run batches `images` at a time internally (at least 1) on the generic Burn path; see
    /// [`MICRO_BATCH`] (the CPU's default) and [`GPU_MICRO_BATCH`] (any other device's). The CPU
    /// kernel path always runs one image per pass.
    pub fn with_micro_batch(mut self, images: usize) -> Self {
        self.micro_batch = images.max(1);
        self
    }

    /// On the CPU device, whether to run the hand-written CPU kernels (`true`, the default: one
    /// image per pass, the images of a batch in parallel on the current rayon pool; stem and
    /// depthwise convolutions in `cpu_kernels`, 1x1 convolutions and classifier as `cpu_gemm`
    /// GEMMs, every bias, ReLU6 and residual fused into a kernel) or the
    /// generic Burn network that every other device runs (`false`; for comparison). Same weights,
    /// same results up to float rounding. No effect on other devices.
    pub fn with_cpu_kernels(mut self, on: bool) -> Self {
        self.use_cpu_kernels = on;
        self
    }

    fn cpu_net(&self) -> Option<&CpuNet> {
        self.cpu.as_ref().filter(|_| self.use_cpu_kernels)
    }

    /// The network itself (for profiling).
    pub fn net(&self) -> &EfficientNet {
        &self.net
    }

    /// Time one forward pass of `batch` per kind of layer.
    pub fn profile(&self, batch: &[Preprocessed]) -> Result<LayerTimes, ModelError> {
        check_batch(NAME, self.input_shape(), batch)?;
        let mut times = LayerTimes::default();
        if let Some(cpu) = self.cpu_net() {
            for item in batch {
                cpu.forward(item.values(), Some(&mut times))?;
            }
            return Ok(times);
        }
        let input = batch_tensor(batch, self.input_shape(), &self.device);
        logits_rows(self.folded.forward(input, Some(&mut times)))?;
        Ok(times)
    }

    fn with_net(net: EfficientNet, device: &Device) -> Result<Self, ModelError> {
        let is_cpu = crate::device::is_cpu(device);
        let folded = FoldedNet::new(&net);
        Ok(Self {
            cpu: is_cpu.then(|| CpuNet::new(&folded)).transpose()?,
            use_cpu_kernels: true,
            folded,
            micro_batch: if is_cpu { MICRO_BATCH } else { GPU_MICRO_BATCH },
            net,
            device: device.clone(),
            labels: imagenet_labels(),
        })
    }
}

/// Decode and preprocess one image for EfficientNet-Lite0.
pub fn preprocess_image(bytes: &[u8]) -> Result<Preprocessed, InputError> {
    let rgb = image_input::decode_rgb(bytes)?;
    let cropped =
        image_input::resize_shorter_side_and_centre_crop(&rgb, RESIZE_SIDE, INPUT_SIDE as u32);
    debug_assert_eq!(cropped.dimensions(), (INPUT_SIDE as u32, INPUT_SIDE as u32));
    let values = image_input::to_chw(&cropped, 127.0, 128.0);
    Ok(Preprocessed::new([3, INPUT_SIDE, INPUT_SIDE], values))
}

impl Model for EfficientNetLite0 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn input_kind(&self) -> InputKind {
        InputKind::Image
    }

    fn input_shape(&self) -> [usize; 3] {
        [3, INPUT_SIDE, INPUT_SIDE]
    }

    fn is_trainable(&self) -> bool {
        false
    }

    fn preprocessor(&self) -> crate::Preprocessor {
        preprocess_image
    }

    fn forward_batch(&self, batch: &[Preprocessed]) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        check_batch(NAME, self.input_shape(), batch)?;
        if let Some(cpu) = self.cpu_net() {
            // One image per pass, the images in parallel: each result is independent of the
            // batch it came in.
            return batch
                .par_iter()
                .map(|item| cpu.forward(item.values(), None))
                .collect();
        }
        let mut rows = Vec::with_capacity(batch.len());
        for part in batch.chunks(self.micro_batch) {
            let input = batch_tensor(part, self.input_shape(), &self.device);
            rows.extend(logits_rows(self.folded.forward(input, None))?);
        }
        debug_assert_eq!(rows.len(), batch.len());
        Ok(rows)
    }

    fn postprocess(&self, logits: &[f32]) -> Prediction {
        prediction_from_logits(logits, &self.labels)
    }

    fn weights_to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        weights::to_bytes(NAME, &self.net)
    }

    fn load_weights_from_bytes(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        let net = weights::from_bytes(NAME, &self.net, bytes)?;
        let folded = FoldedNet::new(&net);
        self.cpu = self
            .cpu
            .is_some()
            .then(|| CpuNet::new(&folded))
            .transpose()?;
        self.folded = folded;
        self.net = net;
        Ok(())
    }
}
