//! Hand-written CPU kernels for the layers of EfficientNet-Lite0 where Burn's Flex backend is slow:
//! the stem, the depthwise convolution with its bias and ReLU6 fused (and optionally the bias +
//! ReLU6 of the layer before it fused into its input), and the global average pool. The 1x1
//! convolutions are [`crate::cpu_gemm`]'s. They work on one image's channels-first (`[C, H, W]`)
//! `f32` values.
//!
//! Owns: the arithmetic of these kernels, TensorFlow "SAME" padding, and the SIMD dispatch (pulp
//! picks AVX-512 or AVX2 + FMA at run time where the CPU has it, else plain code; no `unsafe`
//! here).
//! Must never: allocate per pixel, touch a Burn tensor (the caller converts), or change results
//! beyond float rounding: every kernel is checked against a naive loop in the tests below.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

/// The ReLU6 every convolution of the network ends with.
#[inline(always)]
fn relu6(x: f32) -> f32 {
    x.clamp(0.0, 6.0)
}

/// TensorFlow "SAME" padding along one axis of `size` pixels: (output size, padding before). The
/// odd pixel of the total padding goes after (bottom/right), as Burn's `PaddingConfig2d::Same`.
pub(crate) fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    debug_assert!(size > 0 && kernel > 0 && stride > 0);
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (out, total / 2)
}

/// A SIMD level to run a kernel on: pulp's run-time choice ([`Arch`]), or a fixed one (tests and
/// measurements compare the levels this CPU has).
pub(crate) trait Dispatch: Copy + Send + Sync {
    /// Run `op` at this level.
    fn run<Op: WithSimd>(self, op: Op) -> Op::Output;
}

impl Dispatch for Arch {
    fn run<Op: WithSimd>(self, op: Op) -> Op::Output {
        self.dispatch(op)
    }
}

/// The plain (one lane, no SIMD) code path, on every CPU.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plain;

#[cfg(test)]
impl Dispatch for Plain {
    fn run<Op: WithSimd>(self, op: Op) -> Op::Output {
        <pulp::Scalar as Simd>::vectorize(pulp::Scalar::new(), op)
    }
}

/// AVX2 + FMA, on an x86-64 CPU that has them.
#[cfg(all(test, target_arch = "x86_64"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2(pub pulp::x86::V3);

#[cfg(all(test, target_arch = "x86_64"))]
impl Dispatch for Avx2 {
    fn run<Op: WithSimd>(self, op: Op) -> Op::Output {
        <pulp::x86::V3 as Simd>::vectorize(self.0, op)
    }
}

/// A depthwise convolution (one `k x k` filter per channel, stride 1 or 2, SAME padding) with its
/// bias and ReLU6. Weights as Burn stores them: `[C, 1, k, k]`, row-major.
#[derive(Debug, Clone)]
pub(crate) struct Depthwise {
    /// Filter side `k`.
    pub kernel: usize,
    /// Stride (the same along both axes).
    pub stride: usize,
    /// `C * k * k` filter taps.
    pub weight: Vec<f32>,
    /// `C` output biases (the folded batch norm's shift).
    pub bias: Vec<f32>,
}

/// Where one channel's padded input lives while it is convolved. The padded plane is split into
/// `stride * stride` phase planes (row `i`, column `j` of phase `(pr, pc)` is padded pixel
/// `(stride * i + pr, stride * j + pc)`), so that every filter tap reads one contiguous run of
/// a phase plane for a whole row-major block of outputs, whatever the stride. The output is
/// computed `row_len` wide (`ow` real columns and `reach` throwaway ones), then compacted.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    out_h: usize,
    out_w: usize,
    pad_top: usize,
    pad_left: usize,
    /// Phase-plane row length (`out_w + reach`).
    row_len: usize,
    /// Floats per phase plane (`(out_h + reach) * row_len + reach`: the last tap of the last
    /// throwaway column reads `reach` floats past the last row).
    plane_len: usize,
    /// Outputs computed per channel: `out_h * row_len` rounded up to a multiple of
    /// [`LANES_MAX`], so the SIMD loop never needs a scalar tail. The extra outputs read up to
    /// `wide_len - out_h * row_len` floats past the phase planes ([`Self::slack`]) and are
    /// thrown away.
    wide_len: usize,
}

/// The widest SIMD vector in `f32`s (AVX-512); every narrower one divides it.
const LANES_MAX: usize = 16;

impl Geometry {
    fn new(height: usize, width: usize, kernel: usize, stride: usize) -> Self {
        let (out_h, pad_top) = same_padding(height, kernel, stride);
        let (out_w, pad_left) = same_padding(width, kernel, stride);
        // Extra phase-plane rows/columns a filter reaches past its output pixel.
        let reach = (kernel - 1) / stride;
        let row_len = out_w + reach;
        Geometry {
            out_h,
            out_w,
            pad_top,
            pad_left,
            row_len,
            plane_len: (out_h + reach) * row_len + reach,
            wide_len: (out_h * row_len).next_multiple_of(LANES_MAX),
        }
    }

    /// Zeros a phase-plane buffer needs past its last plane (see [`Self::wide_len`]).
    fn slack(&self) -> usize {
        self.wide_len - self.out_h * self.row_len
    }

    /// Tap `t` (row-major in a `kernel x kernel` filter) reads phase plane
    /// `(ky % s, kx % s)` at this offset from the output's flat (`row_len`-wide) index.
    fn tap_offsets(&self, kernel: usize, stride: usize) -> Vec<usize> {
        let s = stride;
        (0..kernel * kernel)
            .map(|t| {
                let (ky, kx) = (t / kernel, t % kernel);
                ((ky % s) * s + kx % s) * self.plane_len + (ky / s) * self.row_len + kx / s
            })
            .collect()
    }

    /// `wide` (`out_h` rows of `row_len`) -> `out` (`out_h` rows of `out_w`), with ReLU6.
    #[inline(always)]
    fn compact_relu6(&self, wide: &[f32], out: &mut [f32]) {
        for (row, wide_row) in out
            .chunks_exact_mut(self.out_w)
            .zip(wide.chunks(self.row_len))
        {
            for (o, &v) in row.iter_mut().zip(wide_row) {
                *o = relu6(v);
            }
        }
    }
}

impl Depthwise {
    /// The output for one image: `input` is `[C, H, W]`; with `input_bias`, it is the previous
    /// layer's output *before* its bias and ReLU6, which are applied here on the fly: the
    /// convolution reads `relu6(input + input_bias[c])`. Returns `[C, H', W']` values and that
    /// shape.
    #[cfg(test)]
    pub(crate) fn forward(
        &self,
        input: &[f32],
        shape: [usize; 3],
        input_bias: Option<&[f32]>,
    ) -> (Vec<f32>, [usize; 3]) {
        self.forward_on(Arch::new(), input, shape, input_bias)
    }

    /// [`Self::forward`] on the SIMD level `arch`.
    #[cfg(test)]
    pub(crate) fn forward_on(
        &self,
        arch: impl Dispatch,
        input: &[f32],
        shape: [usize; 3],
        input_bias: Option<&[f32]>,
    ) -> (Vec<f32>, [usize; 3]) {
        let out_shape = self.output_shape(shape);
        let mut output = vec![0.0f32; out_shape.iter().product()];
        self.forward_into(arch, input, shape, input_bias, &mut output);
        (output, out_shape)
    }

    /// The output shape for an input of `shape` (`[C, H, W]`).
    pub(crate) fn output_shape(&self, [channels, height, width]: [usize; 3]) -> [usize; 3] {
        let (out_h, _) = same_padding(height, self.kernel, self.stride);
        let (out_w, _) = same_padding(width, self.kernel, self.stride);
        [channels, out_h, out_w]
    }

    /// [`Self::forward`] into `output` (every value overwritten; its length must be that of
    /// [`Self::output_shape`]), on the SIMD level `arch`.
    pub(crate) fn forward_into(
        &self,
        arch: impl Dispatch,
        input: &[f32],
        shape: [usize; 3],
        input_bias: Option<&[f32]>,
        output: &mut [f32],
    ) {
        let [channels, height, width] = shape;
        let k = self.kernel;
        let s = self.stride;
        debug_assert_eq!(input.len(), channels * height * width);
        debug_assert!(input_bias.is_none_or(|b| b.len() == channels));
        debug_assert_eq!(self.bias.len(), channels);
        debug_assert_eq!(self.weight.len(), channels * k * k);
        debug_assert!(s == 1 || s == 2);
        let g = Geometry::new(height, width, k, s);
        let out_plane = g.out_h * g.out_w;
        debug_assert_eq!(output.len(), channels * out_plane);
        let tap_base = g.tap_offsets(k, s);
        output
            .par_chunks_mut(out_plane.max(1))
            .enumerate()
            .with_min_len(8)
            .for_each_init(
                || {
                    (
                        vec![0.0f32; s * s * g.plane_len + g.slack()],
                        vec![0.0f32; g.wide_len],
                        vec![(0.0f32, 0usize); k * k],
                    )
                },
                |(planes, wide, taps), (c, out)| {
                    for (tap, (&w, &base)) in taps.iter_mut().zip(
                        self.weight[c * k * k..(c + 1) * k * k]
                            .iter()
                            .zip(&tap_base),
                    ) {
                        *tap = (w, base);
                    }
                    arch.run(DepthwiseChannel {
                        input: &input[c * height * width..(c + 1) * height * width],
                        height,
                        width,
                        act: input_bias.map(|b| b[c]),
                        stride: s,
                        geometry: &g,
                        planes,
                        wide,
                        taps,
                        bias: self.bias[c],
                        out,
                    });
                },
            );
    }
}

/// One channel of [`Depthwise::forward`]: fill the phase planes, convolve, compact with ReLU6;
/// all three inside one SIMD dispatch, so the compiler vectorizes the copies too.
struct DepthwiseChannel<'a> {
    input: &'a [f32],
    height: usize,
    width: usize,
    act: Option<f32>,
    stride: usize,
    geometry: &'a Geometry,
    planes: &'a mut [f32],
    wide: &'a mut [f32],
    taps: &'a [(f32, usize)],
    bias: f32,
    out: &'a mut [f32],
}

impl WithSimd for DepthwiseChannel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let g = self.geometry;
        fill_phase_planes(
            self.planes,
            self.input,
            self.height,
            self.width,
            self.act,
            self.stride,
            g,
        );
        PlaneConv {
            planes: self.planes,
            taps: self.taps,
            bias: self.bias,
            out: self.wide,
        }
        .with_simd(simd);
        g.compact_relu6(self.wide, self.out);
    }
}

/// A full convolution over few input channels (the stem: 3 -> 32, 3x3, stride 2, SAME) with
/// its bias and ReLU6, on the same phase planes as [`Depthwise`]: each output channel sums
/// `C_in * k * k` taps. Weights as Burn stores them: `[C_out, C_in, k, k]`, row-major.
#[derive(Debug, Clone)]
pub(crate) struct SmallConv {
    /// Filter side `k`.
    pub kernel: usize,
    /// Stride (the same along both axes).
    pub stride: usize,
    /// `C_in`.
    pub channels_in: usize,
    /// `C_out * C_in * k * k` filter taps.
    pub weight: Vec<f32>,
    /// `C_out` output biases.
    pub bias: Vec<f32>,
}

impl SmallConv {
    /// `relu6(conv(input) + bias)` for one `[C_in, H, W]` image: `[C_out, H', W']` and its shape.
    #[cfg(test)]
    pub(crate) fn forward(&self, input: &[f32], shape: [usize; 3]) -> (Vec<f32>, [usize; 3]) {
        let out_shape = self.output_shape(shape);
        let mut output = vec![0.0f32; out_shape.iter().product()];
        self.forward_into(input, shape, &mut output);
        (output, out_shape)
    }

    /// The output shape for an input of `shape` (`[C_in, H, W]`).
    pub(crate) fn output_shape(&self, [_, height, width]: [usize; 3]) -> [usize; 3] {
        let (out_h, _) = same_padding(height, self.kernel, self.stride);
        let (out_w, _) = same_padding(width, self.kernel, self.stride);
        [self.bias.len(), out_h, out_w]
    }

    /// [`Self::forward`] into `output` (every value overwritten; its length must be that of
    /// [`Self::output_shape`]).
    pub(crate) fn forward_into(&self, input: &[f32], shape: [usize; 3], output: &mut [f32]) {
        let [channels_in, height, width] = shape;
        let (k, s) = (self.kernel, self.stride);
        let channels_out = self.bias.len();
        debug_assert_eq!(channels_in, self.channels_in);
        debug_assert_eq!(input.len(), channels_in * height * width);
        debug_assert_eq!(self.weight.len(), channels_out * channels_in * k * k);
        let g = Geometry::new(height, width, k, s);
        let per_channel = s * s * g.plane_len;
        // This thread's plane buffer (kept between calls: no allocation, no page faults), the
        // input channels filled in parallel; the slack past them stays zero.
        let mut planes = STEM_PLANES.take();
        planes.resize(channels_in * per_channel + g.slack(), 0.0);
        let (filled, slack) = planes.split_at_mut(channels_in * per_channel);
        slack.fill(0.0);
        filled
            .par_chunks_mut(per_channel.max(1))
            .enumerate()
            .for_each(|(c, planes)| {
                let plane_in = &input[c * height * width..(c + 1) * height * width];
                fill_phase_planes(planes, plane_in, height, width, None, s, &g);
            });
        let tap_base: Vec<usize> = (0..channels_in)
            .flat_map(|c| {
                g.tap_offsets(k, s)
                    .into_iter()
                    .map(move |t| c * per_channel + t)
            })
            .collect();
        let out_plane = g.out_h * g.out_w;
        debug_assert_eq!(output.len(), channels_out * out_plane);
        let arch = Arch::new();
        let taps_per_channel = channels_in * k * k;
        output
            .par_chunks_mut(out_plane.max(1))
            .enumerate()
            .for_each_init(
                || {
                    (
                        vec![0.0f32; g.wide_len],
                        vec![(0.0f32, 0usize); taps_per_channel],
                    )
                },
                |(wide, taps), (c, out)| {
                    let weights = &self.weight[c * taps_per_channel..(c + 1) * taps_per_channel];
                    for (tap, (&w, &base)) in taps.iter_mut().zip(weights.iter().zip(&tap_base)) {
                        *tap = (w, base);
                    }
                    arch.dispatch(PlaneConv {
                        planes: &planes,
                        taps,
                        bias: self.bias[c],
                        out: wide,
                    });
                    g.compact_relu6(wide, out);
                },
            );
        STEM_PLANES.set(planes);
    }
}

thread_local! {
    /// Each thread's phase planes for [`SmallConv::forward_into`], reused across calls.
    static STEM_PLANES: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Write one channel, zero-padded, into its `s * s` phase planes: `relu6(x + bias)` with an
/// activation bias, else `x` as is.
#[inline(always)]
fn fill_phase_planes(
    planes: &mut [f32],
    input: &[f32],
    height: usize,
    width: usize,
    act: Option<f32>,
    s: usize,
    g: &Geometry,
) {
    match act {
        Some(bias) => {
            fill_phase_planes_with(planes, input, height, width, s, g, |x| relu6(x + bias))
        }
        None => fill_phase_planes_with(planes, input, height, width, s, g, |x| x),
    }
}

#[inline(always)]
fn fill_phase_planes_with(
    planes: &mut [f32],
    input: &[f32],
    height: usize,
    width: usize,
    s: usize,
    g: &Geometry,
    f: impl Fn(f32) -> f32,
) {
    planes.fill(0.0);
    let plane_rows = g.plane_len / g.row_len;
    if s == 2 {
        // Input pixel (y, x) is padded pixel (y + pad_top, x + pad_left): phase plane
        // ((y + pad_top) % 2, (x + pad_left) % 2), row (y + pad_top) / 2, column
        // (x + pad_left) / 2. Even input columns all land in one column phase, odd ones in the
        // other, at consecutive columns: a row is split in one pass.
        let q = g.pad_left % 2;
        let even_at = (g.pad_left - q) / 2;
        let odd_at = (g.pad_left + q) / 2;
        for (y, src) in input.chunks_exact(width).take(height).enumerate() {
            let (pr, i) = ((y + g.pad_top) % 2, (y + g.pad_top) / 2);
            if i >= plane_rows {
                break;
            }
            // Phase planes (pr, 0) and (pr, 1), this row of each.
            let (first, second) = planes[2 * pr * g.plane_len..].split_at_mut(g.plane_len);
            let row0 = &mut first[i * g.row_len..(i + 1) * g.row_len];
            let row1 = &mut second[i * g.row_len..(i + 1) * g.row_len];
            let (even_row, odd_row) = if q == 0 { (row0, row1) } else { (row1, row0) };
            let even_row = &mut even_row[even_at.min(g.row_len)..];
            let odd_row = &mut odd_row[odd_at.min(g.row_len)..];
            let pairs = src.chunks_exact(2);
            if let (Some(&last), Some(d)) = (pairs.remainder().first(), even_row.get_mut(width / 2))
            {
                *d = f(last);
            }
            for ((pair, e), o) in pairs.zip(even_row.iter_mut()).zip(odd_row.iter_mut()) {
                *e = f(pair[0]);
                *o = f(pair[1]);
            }
        }
        return;
    }
    for (phase, plane) in planes.chunks_exact_mut(g.plane_len).enumerate() {
        let (pr, pc) = (phase / s, phase % s);
        for (i, row) in plane.chunks_exact_mut(g.row_len).enumerate() {
            // Padded row `s * i + pr` is input row `s * i + pr - pad_top`.
            let Some(y) = (s * i + pr).checked_sub(g.pad_top) else {
                continue;
            };
            if y >= height {
                break;
            }
            let src = &input[y * width..(y + 1) * width];
            if s == 1 {
                // Columns pad_left .. pad_left + width hold the row; the rest stays zero.
                let end = (g.pad_left + width).min(row.len());
                for (d, &x) in row[g.pad_left..end].iter_mut().zip(src) {
                    *d = f(x);
                }
            } else {
                for (j, d) in row.iter_mut().enumerate() {
                    if let Some(x) = (s * j + pc).checked_sub(g.pad_left)
                        && x < width
                    {
                        *d = f(src[x]);
                    }
                }
            }
        }
    }
}

/// `out[j] = bias + sum over taps of w * planes[base + j]`, for every `j` of `out`.
struct PlaneConv<'a> {
    planes: &'a [f32],
    taps: &'a [(f32, usize)],
    bias: f32,
    out: &'a mut [f32],
}

impl WithSimd for PlaneConv<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let Self {
            planes,
            taps,
            bias,
            out,
        } = self;
        // Four vector accumulators stay in registers across all taps of a block.
        let lanes = S::F32_LANES;
        let step = 4 * lanes;
        let bias_v = simd.splat_f32s(bias);
        let mut j = 0;
        while j + step <= out.len() {
            let (mut a0, mut a1, mut a2, mut a3) = (bias_v, bias_v, bias_v, bias_v);
            for &(w, base) in taps {
                let w = simd.splat_f32s(w);
                let (v, _) = S::as_simd_f32s(&planes[base + j..base + j + step]);
                a0 = simd.mul_add_f32s(w, v[0], a0);
                a1 = simd.mul_add_f32s(w, v[1], a1);
                a2 = simd.mul_add_f32s(w, v[2], a2);
                a3 = simd.mul_add_f32s(w, v[3], a3);
            }
            let (o, _) = S::as_mut_simd_f32s(&mut out[j..j + step]);
            o[0] = a0;
            o[1] = a1;
            o[2] = a2;
            o[3] = a3;
            j += step;
        }
        while j + lanes <= out.len() {
            let mut a = bias_v;
            for &(w, base) in taps {
                let (v, _) = S::as_simd_f32s(&planes[base + j..base + j + lanes]);
                a = simd.mul_add_f32s(simd.splat_f32s(w), v[0], a);
            }
            let (o, _) = S::as_mut_simd_f32s(&mut out[j..j + lanes]);
            o[0] = a;
            j += lanes;
        }
        for (jj, o) in out.iter_mut().enumerate().skip(j) {
            *o = taps
                .iter()
                .fold(bias, |acc, &(w, base)| w.mul_add(planes[base + jj], acc));
        }
    }
}

/// Mean over each channel's pixels (the global average pool). `x` is `[channels, plane]`;
/// returns `channels` values.
pub(crate) fn channel_means(x: &[f32], channels: usize) -> Vec<f32> {
    let plane = x.len() / channels.max(1);
    debug_assert_eq!(plane * channels, x.len());
    x.chunks_exact(plane.max(1))
        .map(|row| row.iter().sum::<f32>() / plane as f32)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Naive depthwise convolution with explicit SAME padding, the kernel's specification.
    fn naive(
        dw: &Depthwise,
        input: &[f32],
        [c, h, w]: [usize; 3],
        input_bias: &[f32],
    ) -> (Vec<f32>, [usize; 3]) {
        let (k, s) = (dw.kernel, dw.stride);
        let (oh, pt) = same_padding(h, k, s);
        let (ow, pl) = same_padding(w, k, s);
        let mut out = vec![0.0; c * oh * ow];
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = dw.bias[ch] as f64;
                    for ky in 0..k {
                        for kx in 0..k {
                            let y = (oy * s + ky) as isize - pt as isize;
                            let x = (ox * s + kx) as isize - pl as isize;
                            if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                                continue;
                            }
                            let v = input[ch * h * w + y as usize * w + x as usize];
                            acc += (dw.weight[ch * k * k + ky * k + kx] as f64)
                                * relu6(v + input_bias[ch]) as f64;
                        }
                    }
                    out[ch * oh * ow + oy * ow + ox] = relu6(acc as f32);
                }
            }
        }
        (out, [c, oh, ow])
    }

    /// Deterministic pseudo-random values in about [-4, 8] (also cpu_gemm's tests).
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 12_000) as f32 / 1000.0 - 4.0
            })
            .collect()
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (112, 0));
        assert_eq!(same_padding(112, 3, 2), (56, 0));
        assert_eq!(same_padding(56, 5, 2), (28, 1));
        assert_eq!(same_padding(14, 5, 1), (14, 2));
        assert_eq!(same_padding(7, 3, 1), (7, 1));
        assert_eq!(same_padding(1, 5, 2), (1, 2));
    }

    #[test]
    fn depthwise_matches_the_naive_loop_for_every_shape_in_the_network() {
        let shapes = [
            // (channels, side, kernel, stride): the network's own, odd sides and tiny planes.
            (3, 112, 3, 1),
            (5, 112, 3, 2),
            (4, 56, 5, 2),
            (6, 28, 5, 1),
            (7, 14, 3, 2),
            (9, 14, 5, 1),
            (17, 7, 5, 1),
            (3, 7, 3, 1),
            (2, 9, 5, 2),
            (2, 2, 5, 1),
            (1, 1, 3, 2),
        ];
        for (seed, &(c, side, k, s)) in shapes.iter().enumerate() {
            let dw = Depthwise {
                kernel: k,
                stride: s,
                weight: values(c * k * k, seed as u32 + 100)
                    .iter()
                    .map(|v| v / 8.0)
                    .collect(),
                bias: values(c, seed as u32 + 200),
            };
            let input = values(c * side * side, seed as u32);
            let input_bias = values(c, seed as u32 + 300);
            let (got, got_shape) = dw.forward(&input, [c, side, side], Some(&input_bias));
            let (want, want_shape) = naive(&dw, &input, [c, side, side], &input_bias);
            assert_eq!(got_shape, want_shape, "shape for {c}x{side} k{k} s{s}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4,
                    "{c}x{side} k{k} s{s}: value {i} is {g}, want {w}"
                );
            }
        }
    }

    #[test]
    fn small_conv_matches_the_naive_loop() {
        for (seed, &(cin, cout, side, k, s)) in [
            (3, 32, 224, 3, 2),
            (3, 5, 9, 3, 2),
            (2, 3, 7, 5, 1),
            (1, 2, 1, 3, 2),
        ]
        .iter()
        .enumerate()
        {
            let seed = seed as u32;
            let conv = SmallConv {
                kernel: k,
                stride: s,
                channels_in: cin,
                weight: values(cout * cin * k * k, seed + 10)
                    .iter()
                    .map(|v| v / 8.0)
                    .collect(),
                bias: values(cout, seed + 20),
            };
            let input = values(cin * side * side, seed + 30);
            let (got, shape) = conv.forward(&input, [cin, side, side]);
            let (oh, pt) = same_padding(side, k, s);
            assert_eq!(shape, [cout, oh, oh]);
            for co in 0..cout {
                for oy in 0..oh {
                    for ox in 0..oh {
                        let mut acc = conv.bias[co] as f64;
                        for ci in 0..cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let y = (oy * s + ky) as isize - pt as isize;
                                    let x = (ox * s + kx) as isize - pt as isize;
                                    if y < 0 || x < 0 || y >= side as isize || x >= side as isize {
                                        continue;
                                    }
                                    let v = input[(ci * side + y as usize) * side + x as usize];
                                    let w = conv.weight[((co * cin + ci) * k + ky) * k + kx];
                                    acc += w as f64 * v as f64;
                                }
                            }
                        }
                        let want = relu6(acc as f32);
                        let g = got[(co * oh + oy) * oh + ox];
                        assert!((g - want).abs() <= 1e-4, "{co},{oy},{ox}: {g} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn channel_means_pool_each_channel() {
        assert_eq!(channel_means(&[1.0, 2.0, 3.0, 9.0], 2), vec![1.5, 6.0]);
        assert_eq!(channel_means(&[], 0), Vec::<f32>::new());
    }

    /// Time of all the network's depthwise convolutions on one thread, per SIMD level:
    /// `cargo test --release -p idunno-models --lib cpu_kernels::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn speed_of_the_networks_depthwise_convolutions() {
        // (channels, input side, kernel, stride) of every depthwise layer.
        let layers = [
            (32, 112, 3, 1),
            (96, 112, 3, 2),
            (144, 56, 3, 1),
            (144, 56, 5, 2),
            (240, 28, 5, 1),
            (240, 28, 3, 2),
            (480, 14, 3, 1),
            (480, 14, 3, 1),
            (480, 14, 5, 1),
            (672, 14, 5, 1),
            (672, 14, 5, 1),
            (672, 14, 5, 2),
            (1152, 7, 5, 1),
            (1152, 7, 5, 1),
            (1152, 7, 5, 1),
            (1152, 7, 3, 1),
        ];
        let convs: Vec<(Depthwise, Vec<f32>, [usize; 3])> = layers
            .iter()
            .map(|&(c, side, k, s)| {
                let dw = Depthwise {
                    kernel: k,
                    stride: s,
                    weight: values(c * k * k, 1),
                    bias: values(c, 2),
                };
                (dw, values(c * side * side, 3), [c, side, side])
            })
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        fn time(name: &str, convs: &[(Depthwise, Vec<f32>, [usize; 3])], arch: impl Dispatch) {
            let mut per_layer = vec![f64::MAX; convs.len()];
            for _ in 0..20 {
                for ((dw, x, shape), best) in convs.iter().zip(&mut per_layer) {
                    let start = std::time::Instant::now();
                    std::hint::black_box(dw.forward_on(arch, x, *shape, None));
                    *best = best.min(start.elapsed().as_secs_f64());
                }
            }
            let total: f64 = per_layer.iter().sum();
            let layers: Vec<String> = per_layer
                .iter()
                .map(|t| format!("{:.0}", t * 1e6))
                .collect();
            println!(
                "{name}: {:.2} ms per image; per layer (us): {}",
                total * 1e3,
                layers.join(" ")
            );
        }
        pool.install(|| {
            time("arch", &convs, Arch::new());
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = pulp::x86::V3::try_new() {
                time("avx2", &convs, Avx2(v3));
            }
        });
    }
}
