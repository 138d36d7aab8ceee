//! The 1x1 ("pointwise") convolutions of EfficientNet-Lite0 on the CPU, as our own GEMM:
//! `out[Cout, P] = W[Cout, Cin] * X[Cin, P]` for one image's channels-first activations (`P`
//! pixels), with the epilogue (bias, then ReLU6 or the residual add) fused into the store.
//!
//! Owns: the weight packing (once, at load: panels of [`MR`] output channels, `[Cin][MR]` each),
//! the per-call packing of pixel columns (`[Cin][48]` blocks), the register-blocked micro-kernel
//! (pulp picks AVX-512, AVX2 + FMA or plain code at run time; no `unsafe` here) and the split of
//! one image over the current rayon pool (by pixel columns, or by output channels when there are
//! few columns).
//! Must never: allocate per pixel, touch a Burn tensor, or change results beyond float rounding
//! (checked against a naive loop below, on every SIMD level this CPU has).

use std::cell::{Cell, RefCell};

use pulp::{Simd, WithSimd};

use crate::cpu_kernels::Dispatch;
use rayon::prelude::*;

/// Output channels per packed weight panel (every channel count of the network is a multiple).
const MR: usize = 8;
/// Vectors of pixels per column block in the main kernel (3 x 16 = 48 pixels with AVX-512).
const NV: usize = 3;
/// Multiply-adds a rayon task should have at least, so splitting stays cheap.
const TASK_MACS_MIN: usize = 1 << 18;
/// Column splits fall on multiples of this many floats (64 bytes: two tasks never write the
/// same cache line of a row that starts on one).
const LANES_SPLIT: usize = 16;
/// Vectors of [`LANES_SPLIT`] pixels a task of a column split needs at least.
/// (One 48-pixel block with AVX-512: a 14x14 layer's 196 pixels go to four tasks.)
const COLUMN_VECTORS_MIN: usize = 3;

/// What the store does with `acc = W * X` of output channel `c`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    /// `acc + bias[c]`.
    Bias,
    /// `relu6(acc + bias[c])`.
    BiasRelu6,
    /// `acc + bias[c] + residual[c, p]` (`residual` is `[Cout, P]`).
    BiasResidual(&'a [f32]),
}

/// A 1x1 convolution (stride 1, no padding) with its bias, weights packed for [`Self::forward`].
#[derive(Debug, Clone)]
pub(crate) struct Pointwise {
    channels_in: usize,
    channels_out: usize,
    /// `ceil(Cout / MR)` panels of `Cin * MR` floats: `packed[(panel * Cin + ci) * MR + r]` is
    /// `W[panel * MR + r, ci]`, zero past `Cout`.
    packed: Vec<f32>,
    bias: Vec<f32>,
}

thread_local! {
    /// Each thread's buffer for one input column (the last columns of a GEMM).
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's packed input column blocks, reused across calls.
    static PACKED: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

impl Pointwise {
    /// From weights `[Cout, Cin]` (Burn's `[Cout, Cin, 1, 1]`, row-major) and `Cout` biases.
    pub(crate) fn new(weight: &[f32], bias: Vec<f32>) -> Self {
        let channels_out = bias.len();
        let channels_in = weight.len() / channels_out.max(1);
        debug_assert_eq!(channels_in * channels_out, weight.len());
        let panels = channels_out.div_ceil(MR);
        let mut packed = vec![0.0f32; panels * channels_in * MR];
        for (co, row) in weight.chunks_exact(channels_in.max(1)).enumerate() {
            let (panel, r) = (co / MR, co % MR);
            for (ci, &w) in row.iter().enumerate() {
                packed[(panel * channels_in + ci) * MR + r] = w;
            }
        }
        Self {
            channels_in,
            channels_out,
            packed,
            bias,
        }
    }

    /// Input channels.
    pub(crate) fn channels_in(&self) -> usize {
        self.channels_in
    }

    /// Output channels.
    pub(crate) fn channels_out(&self) -> usize {
        self.channels_out
    }

    /// `epilogue(W * input)` for one image: `input` is `[Cin, pixels]`; returns `[Cout, pixels]`.
    /// The output channels are split over the current rayon pool when there is enough work.
    #[cfg(test)]
    pub(crate) fn forward(&self, input: &[f32], pixels: usize, epilogue: Epilogue) -> Vec<f32> {
        self.forward_on(pulp::Arch::new(), input, pixels, epilogue)
    }

    #[cfg(test)]
    fn forward_on(
        &self,
        arch: impl Dispatch,
        input: &[f32],
        pixels: usize,
        epilogue: Epilogue,
    ) -> Vec<f32> {
        let mut output = vec![0.0f32; self.channels_out * pixels];
        self.forward_into(arch, input, pixels, epilogue, &mut output);
        output
    }

    /// [`Self::forward`] into `output` (`[Cout, pixels]`, every value overwritten), on the SIMD
    /// level `arch` (`pulp::Arch::new()` picks the best this CPU has).
    ///
    /// On a pool of several threads the work is split one of two ways. Wide images (at least
    /// [`COLUMN_VECTORS_MIN`] vectors of pixels per task, two tasks per thread) are split by pixel columns: each
    /// task packs only its own columns and computes every output channel for them, so packing
    /// runs in parallel and no task waits for it; the split points are multiples of 64 bytes.
    /// Narrow ones (the 7x7 layers, the classifier) are split by output channels after one
    /// shared packing of the (few) columns.
    pub(crate) fn forward_into(
        &self,
        arch: impl Dispatch,
        input: &[f32],
        pixels: usize,
        epilogue: Epilogue,
        output: &mut [f32],
    ) {
        let (cin, cout) = (self.channels_in(), self.channels_out);
        debug_assert_eq!(input.len(), cin * pixels);
        debug_assert_eq!(output.len(), cout * pixels);
        if let Epilogue::BiasResidual(residual) = epilogue {
            debug_assert_eq!(residual.len(), cout * pixels);
        }
        if pixels == 0 || cout == 0 {
            return;
        }
        let threads = rayon::current_num_threads();
        let tasks_by_work = (cin * cout * pixels / TASK_MACS_MIN).max(1);
        let lanes = arch.run(Lanes);
        let vectors = pixels / LANES_SPLIT;
        // Two tasks per thread: a worker that wakes late still finds one to take (with one
        // per thread, the caller runs both when the other worker is slow to start).
        let tasks_max = if threads > 1 { 2 * threads } else { 1 };
        let column_tasks = tasks_max
            .min(tasks_by_work)
            .min(vectors / COLUMN_VECTORS_MIN);
        if column_tasks > 1 {
            self.forward_by_columns(arch, input, pixels, epilogue, output, column_tasks, lanes);
            return;
        }
        let panels = cout.div_ceil(MR);
        let tasks = tasks_max.min(tasks_by_work).clamp(1, panels);
        let task_channels = panels.div_ceil(tasks) * MR;
        // The input's column blocks, packed once for all tasks (`[block][Cin][width]`, so a
        // micro-kernel reads one contiguous run); the last columns (fewer than a vector) stay
        // where they are. This thread's buffer is taken for the call (a call that rayon runs
        // on this thread meanwhile finds none and allocates its own).
        let mut packed = PACKED.take();
        let packed_end = pack_columns(input, pixels, cin, 0, pixels, lanes, &mut packed);
        let mut rows: Vec<&mut [f32]> = output.chunks_exact_mut(pixels).collect();
        rows.par_chunks_mut(task_channels)
            .enumerate()
            .for_each(|(task, rows)| {
                COLUMNS.with_borrow_mut(|columns| {
                    arch.run(Task {
                        net: self,
                        input,
                        packed: &packed,
                        pixels,
                        first_column: 0,
                        packed_end,
                        end_column: pixels,
                        first_channel: task * task_channels,
                        epilogue,
                        rows,
                        columns,
                    })
                });
            });
        PACKED.set(packed);
    }

    /// [`Self::forward_into`] split by pixel columns into `tasks` ranges of whole
    /// [`LANES_SPLIT`]-float vectors (the last range also takes the columns past the last
    /// vector); each task packs its own columns.
    #[allow(clippy::too_many_arguments)]
    fn forward_by_columns(
        &self,
        arch: impl Dispatch,
        input: &[f32],
        pixels: usize,
        epilogue: Epilogue,
        output: &mut [f32],
        tasks: usize,
        lanes: usize,
    ) {
        let cin = self.channels_in;
        let vectors = pixels / LANES_SPLIT;
        debug_assert!(tasks >= 1 && tasks <= vectors);
        let bounds: Vec<usize> = (0..=tasks)
            .map(|k| {
                if k == tasks {
                    pixels
                } else {
                    k * vectors / tasks * LANES_SPLIT
                }
            })
            .collect();
        // Each task's pieces of every output row.
        let mut pieces: Vec<Vec<&mut [f32]>> = (0..tasks)
            .map(|_| Vec::with_capacity(self.channels_out))
            .collect();
        for row in output.chunks_exact_mut(pixels) {
            let mut rest = row;
            for (task, range) in bounds.windows(2).enumerate() {
                let (piece, tail) = rest.split_at_mut(range[1] - range[0]);
                pieces[task].push(piece);
                rest = tail;
            }
        }
        pieces.par_iter_mut().enumerate().for_each(|(task, rows)| {
            let (first_column, end_column) = (bounds[task], bounds[task + 1]);
            let mut packed = PACKED.take();
            let packed_end = pack_columns(
                input,
                pixels,
                cin,
                first_column,
                end_column,
                lanes,
                &mut packed,
            );
            COLUMNS.with_borrow_mut(|columns| {
                arch.run(Task {
                    net: self,
                    input,
                    packed: &packed,
                    pixels,
                    first_column,
                    packed_end,
                    end_column,
                    first_channel: 0,
                    epilogue,
                    rows,
                    columns,
                })
            });
            PACKED.set(packed);
        });
    }
}

/// Pack columns `first .. end` of `input` (`[Cin, pixels]`) into `packed` as blocks
/// (`[block][Cin][width]`, widths by [`block_width`]) of whole vectors; returns where the
/// packed columns end (the columns from there to `end`, fewer than a vector, stay unpacked).
fn pack_columns(
    input: &[f32],
    pixels: usize,
    cin: usize,
    first: usize,
    end: usize,
    lanes: usize,
    packed: &mut Vec<f32>,
) -> usize {
    debug_assert!(first <= end && end <= pixels);
    let packed_end = first + (end - first) / lanes * lanes;
    packed.clear();
    let mut start = first;
    while start < packed_end {
        let width = block_width(packed_end - start, lanes);
        for ci in 0..cin {
            packed.extend_from_slice(&input[ci * pixels + start..][..width]);
        }
        start += width;
    }
    debug_assert_eq!(packed.len(), cin * (packed_end - first));
    packed_end
}

/// The width of the column block at `left` packed columns from the end of a range: [`NV`]
/// vectors while that many are left, then single vectors.
fn block_width(left: usize, lanes: usize) -> usize {
    if left >= NV * lanes {
        NV * lanes
    } else {
        lanes
    }
}

/// The SIMD level's vector width in `f32`s.
struct Lanes;

impl WithSimd for Lanes {
    type Output = usize;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> usize {
        S::F32_LANES
    }
}

/// Output channels `first_channel ..` (one per row of `rows`) times pixel columns
/// `first_column .. end_column` (every row's length) of one forward.
struct Task<'a, 'r> {
    net: &'a Pointwise,
    input: &'a [f32],
    /// Columns `first_column .. packed_end` of `input`, packed by [`pack_columns`].
    packed: &'a [f32],
    pixels: usize,
    first_column: usize,
    packed_end: usize,
    end_column: usize,
    first_channel: usize,
    epilogue: Epilogue<'a>,
    /// The task's part of each of its output rows; `first_channel` a multiple of `MR`.
    rows: &'a mut [&'r mut [f32]],
    columns: &'a mut Vec<f32>,
}

impl WithSimd for Task<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Task {
            net,
            input,
            packed,
            pixels,
            first_column,
            packed_end,
            end_column,
            first_channel,
            epilogue,
            rows,
            columns,
        } = self;
        let lanes = S::F32_LANES;
        let cin = net.channels_in;
        debug_assert_eq!(first_channel % MR, 0);
        debug_assert!(rows.iter().all(|r| r.len() == end_column - first_column));
        let channels = rows.len();
        let first_panel = first_channel / MR;
        // Panel by panel (8 output rows written front to back), all column blocks each.
        for panel in 0..channels.div_ceil(MR) {
            let weights =
                &net.packed[(first_panel + panel) * cin * MR..(first_panel + panel + 1) * cin * MR];
            let mut start = first_column;
            while start < packed_end {
                let width = block_width(packed_end - start, lanes);
                let at = cin * (start - first_column);
                let x = &packed[at..at + cin * width];
                let block = Block {
                    net,
                    pixels,
                    start,
                    first_column,
                    width,
                    channel: first_channel + panel * MR,
                    local_row: panel * MR,
                    epilogue,
                };
                if width == NV * lanes {
                    if lanes >= 16 {
                        let acc = micro::<S, MR, NV>(simd, x, width, weights, 0);
                        block.store(simd, &acc, rows);
                    } else {
                        // 16 vector registers: half a panel at a time.
                        const HALF: usize = MR / 2;
                        let acc = micro::<S, HALF, NV>(simd, x, width, weights, 0);
                        block.store(simd, &acc, rows);
                        let acc = micro::<S, HALF, NV>(simd, x, width, weights, HALF);
                        block.at_row(HALF).store(simd, &acc, rows);
                    }
                } else {
                    let acc = micro::<S, MR, 1>(simd, x, width, weights, 0);
                    block.store(simd, &acc, rows);
                }
                start += width;
            }
        }
        if packed_end < end_column {
            column_tail(
                net,
                input,
                pixels,
                (first_column, packed_end, end_column),
                first_channel,
                epilogue,
                rows,
                columns,
            );
        }
    }
}

/// `acc[r][v] = sum over ci of weights[ci * MR + row + r] * x[ci * stride + v * lanes ..]`:
/// `R` rows of a packed weight panel against `V` vectors of pixel columns.
#[inline(always)]
fn micro<S: Simd, const R: usize, const V: usize>(
    simd: S,
    x: &[f32],
    stride: usize,
    weights: &[f32],
    row: usize,
) -> [[S::f32s; V]; R] {
    let width = V * S::F32_LANES;
    let mut acc = [[simd.splat_f32s(0.0); V]; R];
    debug_assert!(row + R <= MR);
    for (ci, w) in weights.chunks_exact(MR).enumerate() {
        let (xs, _) = S::as_simd_f32s(&x[ci * stride..ci * stride + width]);
        let xs: [S::f32s; V] = std::array::from_fn(|v| xs[v]);
        let w = &w[row..row + R];
        for (acc, &w) in acc.iter_mut().zip(w) {
            let w = simd.splat_f32s(w);
            for (a, &x) in acc.iter_mut().zip(&xs) {
                *a = simd.mul_add_f32s(w, x, *a);
            }
        }
    }
    acc
}

/// Where one micro-kernel result goes: output channels `channel ..` (rows `local_row ..` of the
/// task's `out`), pixels `start .. start + width`.
#[derive(Clone, Copy)]
struct Block<'a> {
    net: &'a Pointwise,
    pixels: usize,
    start: usize,
    /// The column where the task's rows start.
    first_column: usize,
    width: usize,
    channel: usize,
    local_row: usize,
    epilogue: Epilogue<'a>,
}

impl Block<'_> {
    fn at_row(self, offset: usize) -> Self {
        Self {
            channel: self.channel + offset,
            local_row: self.local_row + offset,
            ..self
        }
    }

    /// Apply the epilogue to `acc` and store the real channels and columns.
    #[inline(always)]
    fn store<S: Simd, const R: usize, const V: usize>(
        &self,
        simd: S,
        acc: &[[S::f32s; V]; R],
        rows: &mut [&mut [f32]],
    ) {
        let lanes = S::F32_LANES;
        let (zero, six) = (simd.splat_f32s(0.0), simd.splat_f32s(6.0));
        for (r, acc) in acc.iter().enumerate() {
            let channel = self.channel + r;
            if channel >= self.net.channels_out {
                break;
            }
            let bias = self.net.bias[channel];
            let at = self.start - self.first_column;
            let Some(row) = rows
                .get_mut(self.local_row + r)
                .and_then(|row| row.get_mut(at..at + self.width))
            else {
                break;
            };
            let residual = match self.epilogue {
                Epilogue::BiasResidual(residual) => {
                    let at = channel * self.pixels + self.start;
                    residual.get(at..at + self.width)
                }
                _ => None,
            };
            debug_assert_eq!(self.width, V * lanes);
            let b = simd.splat_f32s(bias);
            let (row, _) = S::as_mut_simd_f32s(row);
            let residual = residual.map(|r| S::as_simd_f32s(r).0);
            for (v, (o, &a)) in row.iter_mut().zip(acc).enumerate() {
                let mut value = simd.add_f32s(a, b);
                match (self.epilogue, residual) {
                    (Epilogue::BiasRelu6, _) => {
                        value = simd.min_f32s(simd.max_f32s(value, zero), six);
                    }
                    (Epilogue::BiasResidual(_), Some(res)) => {
                        value = simd.add_f32s(value, res[v]);
                    }
                    _ => {}
                }
                *o = value;
            }
        }
    }
}

/// Columns `packed_end .. end_column` (fewer than a vector, never packed), one at a time: each
/// column's `Cin` values against a weight panel's `MR` output channels at once (the packed panel
/// holds them side by side, so this loop vectorizes over output channels). `rows` start at
/// column `first_column`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn column_tail(
    net: &Pointwise,
    input: &[f32],
    pixels: usize,
    (first_column, packed_end, end_column): (usize, usize, usize),
    first_channel: usize,
    epilogue: Epilogue,
    rows: &mut [&mut [f32]],
    column: &mut Vec<f32>,
) {
    let cin = net.channels_in;
    let channels = rows.len();
    let first_panel = first_channel / MR;
    let mut first = packed_end;
    while first < end_column {
        // Up to TAIL_GROUP columns at once (independent multiply-add chains, interleaved as
        // `column[ci * group + j]`); each column's sum runs in the same order whatever the group.
        let group = (end_column - first).min(TAIL_GROUP);
        column.clear();
        column.extend(
            (0..cin).flat_map(|ci| (0..group).map(move |j| input[ci * pixels + first + j])),
        );
        for panel in 0..channels.div_ceil(MR) {
            let weights =
                &net.packed[(first_panel + panel) * cin * MR..(first_panel + panel + 1) * cin * MR];
            let mut acc = [[0.0f32; MR]; TAIL_GROUP];
            match group {
                1 => acc[..1].copy_from_slice(&tail_sums::<1>(weights, column)),
                2 => acc[..2].copy_from_slice(&tail_sums::<2>(weights, column)),
                3 => acc[..3].copy_from_slice(&tail_sums::<3>(weights, column)),
                _ => acc = tail_sums::<TAIL_GROUP>(weights, column),
            }
            for (j, acc) in acc.iter().take(group).enumerate() {
                let p = first + j;
                for (r, &a) in acc.iter().enumerate() {
                    let (local, channel) = (panel * MR + r, first_channel + panel * MR + r);
                    if local >= channels {
                        break;
                    }
                    let value = a + net.bias[channel];
                    rows[local][p - first_column] = match epilogue {
                        Epilogue::Bias => value,
                        Epilogue::BiasRelu6 => value.clamp(0.0, 6.0),
                        Epilogue::BiasResidual(residual) => value + residual[channel * pixels + p],
                    };
                }
            }
        }
        first += group;
    }
}

/// Tail columns [`column_tail`] takes at once.
const TAIL_GROUP: usize = 4;

/// `acc[j][r] = sum over ci of weights[ci * MR + r] * column[ci * G + j]`, `ci` in order.
#[inline(always)]
fn tail_sums<const G: usize>(weights: &[f32], column: &[f32]) -> [[f32; MR]; G] {
    let mut acc = [[0.0f32; MR]; G];
    for (w, x) in weights.chunks_exact(MR).zip(column.chunks_exact(G)) {
        for (acc, &x) in acc.iter_mut().zip(x) {
            for (a, &w) in acc.iter_mut().zip(w) {
                *a = w.mul_add(x, *a);
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "x86_64")]
    use crate::cpu_kernels::Avx2;
    use crate::cpu_kernels::Plain;
    use crate::cpu_kernels::tests::values;

    fn naive(
        weight: &[f32],
        bias: &[f32],
        input: &[f32],
        pixels: usize,
        epilogue: Epilogue,
    ) -> Vec<f32> {
        let cout = bias.len();
        let cin = weight.len() / cout;
        let mut out = vec![0.0; cout * pixels];
        for co in 0..cout {
            for p in 0..pixels {
                let mut acc = 0.0f64;
                for ci in 0..cin {
                    acc += weight[co * cin + ci] as f64 * input[ci * pixels + p] as f64;
                }
                let v = acc as f32 + bias[co];
                out[co * pixels + p] = match epilogue {
                    Epilogue::Bias => v,
                    Epilogue::BiasRelu6 => v.clamp(0.0, 6.0),
                    Epilogue::BiasResidual(r) => v + r[co * pixels + p],
                };
            }
        }
        out
    }

    /// (weight scaled down by `scale`, bias, input, residual) of a `cin -> cout` layer over
    /// `pixels`, from `seed`.
    fn case(
        cin: usize,
        cout: usize,
        pixels: usize,
        seed: u32,
        scale: f32,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let weight = values(cin * cout, seed).iter().map(|v| v / scale).collect();
        let bias = values(cout, seed + 1);
        let input = values(cin * pixels, seed + 2);
        let residual = values(cout * pixels, seed + 3);
        (weight, bias, input, residual)
    }

    #[test]
    fn pointwise_matches_the_naive_loop_on_every_simd_level() {
        // (Cin, Cout, pixels): the network's kinds of shapes, tails of every width, tiny ones.
        let shapes = [
            (16, 96, 300),
            (96, 24, 49),
            (192, 1152, 49),
            (40, 240, 196),
            (24, 8, 17),
            (8, 16, 1),
            (3, 5, 64),
            (1, 1, 3),
            (1152, 16, 16),
            (5, 9, 18),
            (7, 13, 30),
        ];
        for (seed, &(cin, cout, pixels)) in shapes.iter().enumerate() {
            let (weight, bias, input, residual) = case(cin, cout, pixels, seed as u32, 16.0);
            let conv = Pointwise::new(&weight, bias.clone());
            assert_eq!((conv.channels_in(), conv.channels_out()), (cin, cout));
            for epilogue in [
                Epilogue::Bias,
                Epilogue::BiasRelu6,
                Epilogue::BiasResidual(&residual),
            ] {
                let want = naive(&weight, &bias, &input, pixels, epilogue);
                let mut runs = vec![
                    ("arch", conv.forward(&input, pixels, epilogue)),
                    ("plain", conv.forward_on(Plain, &input, pixels, epilogue)),
                ];
                #[cfg(target_arch = "x86_64")]
                if let Some(v3) = pulp::x86::V3::try_new() {
                    runs.push(("avx2", conv.forward_on(Avx2(v3), &input, pixels, epilogue)));
                }
                for (level, got) in runs {
                    assert_eq!(got.len(), want.len());
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let tolerance = 1e-4 * (1.0 + w.abs()) * (cin as f32).sqrt();
                        assert!(
                            (g - w).abs() <= tolerance,
                            "{level} {cin}->{cout} x{pixels} {epilogue:?}: value {i} is {g}, want {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_split_over_threads_gives_the_same_bits() {
        // (Cin, Cout, pixels): column splits (with and without a tail past the last vector, on
        // the network's sizes), channel splits (7x7, the classifier's single pixel).
        let shapes = [
            (24, 144, 3136),
            (144, 24, 784),
            (480, 80, 196),
            (80, 480, 196),
            (40, 96, 200),
            (1152, 192, 49),
            (1280, 1000, 1),
        ];
        for (seed, &(cin, cout, pixels)) in shapes.iter().enumerate() {
            let (weight, bias, input, residual) = case(cin, cout, pixels, seed as u32 + 50, 64.0);
            let conv = Pointwise::new(&weight, bias.clone());
            for epilogue in [Epilogue::BiasRelu6, Epilogue::BiasResidual(&residual)] {
                let want = naive(&weight, &bias, &input, pixels, epilogue);
                let mut first: Option<Vec<f32>> = None;
                for threads in [1, 2, 3, 4] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("pool");
                    let got = pool.install(|| conv.forward(&input, pixels, epilogue));
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let tolerance = 1e-4 * (1.0 + w.abs()) * (cin as f32).sqrt();
                        assert!(
                            (g - w).abs() <= tolerance,
                            "{threads} threads {cin}->{cout} x{pixels}: value {i} is {g}, want {w}"
                        );
                    }
                    match &first {
                        None => first = Some(got),
                        Some(first) => assert!(
                            first
                                .iter()
                                .zip(&got)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{threads} threads {cin}->{cout} x{pixels}: other bits than 1 thread"
                        ),
                    }
                }
            }
        }
    }

    /// Every 1x1 convolution of EfficientNet-Lite0 as (Cin, Cout, pixels).
    const NETWORK: [(usize, usize, usize); 32] = [
        (32, 16, 12544),
        (16, 96, 12544),
        (96, 24, 3136),
        (24, 144, 3136),
        (144, 24, 3136),
        (24, 144, 3136),
        (144, 40, 784),
        (40, 240, 784),
        (240, 40, 784),
        (40, 240, 784),
        (240, 80, 196),
        (80, 480, 196),
        (480, 80, 196),
        (80, 480, 196),
        (480, 80, 196),
        (80, 480, 196),
        (480, 112, 196),
        (112, 672, 196),
        (672, 112, 196),
        (112, 672, 196),
        (672, 112, 196),
        (112, 672, 196),
        (672, 192, 49),
        (192, 1152, 49),
        (1152, 192, 49),
        (192, 1152, 49),
        (1152, 192, 49),
        (192, 1152, 49),
        (1152, 192, 49),
        (192, 1152, 49),
        (1152, 320, 49),
        (320, 1280, 49),
    ];

    /// Time of all the network's 1x1 convolutions on one thread, per SIMD level:
    /// `cargo test --release -p idunno-models --lib cpu_gemm::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn speed_of_the_networks_pointwise_convolutions() {
        let convs: Vec<(Pointwise, Vec<f32>, usize)> = NETWORK
            .iter()
            .enumerate()
            .map(|(i, &(cin, cout, p))| {
                let w: Vec<f32> = values(cin * cout, i as u32)
                    .iter()
                    .map(|v| v / 64.0)
                    .collect();
                (Pointwise::new(&w, values(cout, 7)), values(cin * p, 9), p)
            })
            .collect();
        let macs: usize = NETWORK.iter().map(|&(a, b, p)| a * b * p).sum();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        type Conv<'a> = dyn Fn(&Pointwise, &[f32], usize) -> Vec<f32> + 'a;
        let time = |name: &str, run: &Conv<'_>| {
            let mut best = f64::MAX;
            let mut small = 0.0;
            for _ in 0..20 {
                let start = std::time::Instant::now();
                for (conv, x, p) in &convs {
                    std::hint::black_box(run(conv, x, *p));
                }
                best = best.min(start.elapsed().as_secs_f64());
            }
            for _ in 0..20 {
                let start = std::time::Instant::now();
                for (conv, x, p) in convs.iter().filter(|c| c.2 == 49) {
                    std::hint::black_box(run(conv, x, *p));
                }
                let t = start.elapsed().as_secs_f64();
                if small == 0.0 || t < small {
                    small = t;
                }
            }
            println!(
                "{name}: {:.2} ms per image ({:.1} GMAC/s), of which 7x7: {:.2} ms",
                best * 1e3,
                macs as f64 / best / 1e9,
                small * 1e3
            );
        };
        pool.install(|| {
            time("arch", &|c, x, p| c.forward(x, p, Epilogue::BiasRelu6));
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = pulp::x86::V3::try_new() {
                time("avx2", &|c, x, p| {
                    c.forward_on(Avx2(v3), x, p, Epilogue::BiasRelu6)
                });
            }
        });
    }
}
