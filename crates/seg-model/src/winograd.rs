//! Winograd F(2x2, 3x3) for the 3x3 convolutions with many channels: each 2x2 block of output
//! pixels ("tile") costs 16 multiplications per channel pair instead of 36, so the matrix products
//! shrink 2.25x for the price of transforming the input (4x4 windows) and the output. The
//! products are 16 independent `[Cout, Cin] x [Cin, tiles]` ones, one per position of the 4x4
//! transformed window (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Work runs in blocks of whole tile rows sized to stay in cache, each block transformed,
//! multiplied and transformed back on one thread; blocks of every image run in parallel and
//! each writes only its own output rows.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::conv::{Buffers, Dims, Input, Real, product, strided, with_scratch};

/// Tiles per block (whole tile rows, at least one): wider products multiply faster, but the
/// transformed input and output of a block should stay in the core's cache. 64 to 512 measured
/// within noise of each other on the U-Net's layers.
const BLOCK_TILES: usize = 128;

/// Positions of the transformed 4x4 window.
const POSITIONS: usize = 16;

/// Elements from one channel of a `[C][16][tiles]` block to the next: 16 rows of `tiles` and 16
/// unused. Without them a block of 128 tiles puts its channels 8 KiB apart, so the rows a product
/// reads for one column all fall in the same L1 cache set and evict each other: measured on the
/// products alone, 1.3–2x slower at 16–48 channels.
fn channel_stride(tiles: usize) -> usize {
    POSITIONS * tiles + 16
}

/// The kernel in the Winograd domain: `[16][Cout][Cin]`, position p = 4i + j holding
/// (G g Gᵀ)[i][j] of every 3x3 kernel g, G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]].
fn transform_weight<T: Real>(weight: &[T], out_channels: usize, in_channels: usize) -> Vec<T> {
    let half = T::from_f64(0.5);
    let pairs = out_channels * in_channels;
    let mut u = vec![T::default(); POSITIONS * pairs];
    let g3 = |a: T, b: T, c: T| [a, (a + b + c) * half, (a - b + c) * half, c];
    for (pair, g) in weight.chunks_exact(9).enumerate() {
        // Rows of G g, then G applied along each of them.
        let columns: [[T; 4]; 3] = [0, 1, 2].map(|c| g3(g[c], g[3 + c], g[6 + c]));
        for i in 0..4 {
            let row = g3(columns[0][i], columns[1][i], columns[2][i]);
            for (j, v) in row.into_iter().enumerate() {
                u[(4 * i + j) * pairs + pair] = v;
            }
        }
    }
    u
}

/// Whether F(2x2, 3x3) pays for a convolution's forward pass. The transforms cost per channel
/// what the products save per channel pair, and small images give short products: measured per
/// layer shape (batch 8, the products of few channels on our own kernel), it pays from 16
/// channels on both sides, 16² images and 32K input values per image (0.85x the matrix-product
/// time at 32 channels of 32², 0.75–0.8x at 128–192 channels of 16² and 32–96 of 32²), is about
/// even at 16K (16 to 32 channels of 32², 64 of 16²: 0.9–1.2x from run to run) and loses on 8²
/// images (1.15–1.7x).
pub fn pays(d: &Dims, out_channels: usize) -> bool {
    even_and_wide(d, out_channels)
        && d.height * d.width >= 1 << 8
        && d.channels * d.height * d.width >= 1 << 15
}

/// Whether F(2x2, 3x3) pays for a weight gradient: from 16 channels on both sides and 32²
/// images (its products run over the tiles of one image: 0.85x the matrix-product time at 32
/// channels of 32², but 1.2–2.3x on 16² and 8² images at any width).
pub fn pays_for_weight_grad(d: &Dims, out_channels: usize) -> bool {
    even_and_wide(d, out_channels) && d.height * d.width >= 1 << 10
}

/// Even height and width (whole 2x2 tiles) and 16 channels or more on both sides.
fn even_and_wide(d: &Dims, out_channels: usize) -> bool {
    d.height.is_multiple_of(2)
        && d.width.is_multiple_of(2)
        && d.channels >= 16
        && out_channels >= 16
}

/// A raw output pointer that blocks running in parallel share; each writes disjoint elements.
#[derive(Clone, Copy)]
struct Output<T>(*mut T);

// SAFETY: only used to write elements that no other block writes (see `forward`).
unsafe impl<T: Send> Send for Output<T> {}
unsafe impl<T: Send> Sync for Output<T> {}

impl<T> Output<T> {
    fn offset(self, offset: usize) -> Output<T> {
        Output(self.0.wrapping_add(offset))
    }

    /// # Safety
    /// `0..len` must lie inside the output, and no one else may touch it meanwhile.
    unsafe fn slice<'a>(self, len: usize) -> &'a mut [T] {
        // SAFETY: the caller's.
        unsafe { std::slice::from_raw_parts_mut(self.0, len) }
    }
}

/// An image's tiles in blocks of whole tile rows.
struct Blocks {
    tile_rows: usize,
    tiles_per_row: usize,
    rows_per_block: usize,
}

impl Blocks {
    fn new(d: &Dims) -> Blocks {
        assert!(
            d.height.is_multiple_of(2) && d.width.is_multiple_of(2),
            "even sizes only"
        );
        let (tile_rows, tiles_per_row) = (d.height / 2, d.width / 2);
        Blocks {
            tile_rows,
            tiles_per_row,
            rows_per_block: (BLOCK_TILES / tiles_per_row).clamp(1, tile_rows),
        }
    }

    fn count(&self) -> usize {
        self.tile_rows.div_ceil(self.rows_per_block)
    }

    /// The first tile row of block `k`, its tile rows, its tiles.
    fn block(&self, k: usize) -> (usize, usize, usize) {
        let first = k * self.rows_per_block;
        let rows = self.rows_per_block.min(self.tile_rows - first);
        (first, rows, rows * self.tiles_per_row)
    }
}

/// y = conv3x3(x, weight) (+ bias) (then ReLU) as [`crate::conv::forward`], for even height and
/// width.
pub(crate) fn forward<T: Real>(
    x: Input<T>,
    d: Dims,
    weight: &[T],
    out_channels: usize,
    bias: Option<&[T]>,
    relu: bool,
) -> Vec<T> {
    let u = transform_weight(weight, out_channels, d.channels);
    let blocks = Blocks::new(&d);
    let out_image = out_channels * d.height * d.width;
    let mut y = vec![T::default(); d.batch * out_image];
    let out = Output(y.as_mut_ptr());
    (0..d.batch * blocks.count())
        .into_par_iter()
        .for_each(|item| {
            let (image, block) = (item / blocks.count(), item % blocks.count());
            let (first, rows, tiles) = blocks.block(block);
            let x = x.planes(&d, image);
            with_scratch(|[v, m, scratch, _]: &mut Buffers<T>| {
                wide(
                    #[inline(always)]
                    || transform_input(x, &d, first, rows, v, scratch),
                );
                let stride = channel_stride(tiles);
                let m = grown(m, out_channels * stride);
                let (pairs, cin) = (out_channels * d.channels, d.channels);
                for p in 0..POSITIONS {
                    // SAFETY: U_p is Cout x Cin inside `u`; V_p (rows a channel stride apart) is
                    // Cin x tiles inside `v`; M_p is Cout x tiles inside `m`, which overlaps
                    // neither.
                    unsafe {
                        position_product(
                            [out_channels, tiles, cin],
                            m.as_mut_ptr().add(p * tiles),
                            u.as_ptr().add(p * pairs),
                            v.as_ptr().add(p * tiles),
                            stride,
                        );
                    }
                }
                let image_out = out.offset(image * out_image);
                wide(
                    #[inline(always)]
                    || transform_output(m, &d, first, rows, bias, relu, image_out, scratch),
                );
            });
        });
    y
}

/// Channel pairs up to which a position's product runs on [`avx2::product`]: its U_p (16 KiB in
/// f32) then stays in L1 while every column block of V_p passes. Measured on the products alone
/// (one thread, 128 tiles): 1.1–1.5x the `gemm` crate's speed from 16x16 to 64x64 channels (it
/// packs both operands on every call, a large share of so short a product), 0.86x at 64x192.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const SMALL_PRODUCT: usize = 64 * 64;

/// M_p (`[Cout, tiles]`, rows `stride` apart) = U_p (`[Cout, Cin]`) · V_p (`[Cin, tiles]`, rows
/// `stride` apart): f32 products of few channels by [`avx2::product`] where the CPU has AVX2 and
/// FMA, the rest by the `gemm` crate.
///
/// # Safety
/// The three matrices must lie inside their buffers, M_p overlapping neither of the others.
unsafe fn position_product<T: Real>(
    [out_channels, tiles, cin]: [usize; 3],
    m: *mut T,
    u: *const T,
    v: *const T,
    stride: usize,
) {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && out_channels * cin <= SMALL_PRODUCT
        && avx2_fma()
    {
        done = tiles - tiles % avx2::COLUMNS;
        // SAFETY: T is f32; the caller's bounds, and the CPU has the features.
        unsafe {
            avx2::product(
                [out_channels, done, cin],
                m.cast(),
                u.cast(),
                v.cast(),
                stride,
            )
        };
    }
    if done < tiles {
        // SAFETY: the caller's.
        unsafe {
            product(
                [out_channels, tiles - done, cin],
                strided(m.add(done), stride, 1),
                false,
                strided(u, cin, 1),
                strided(v.add(done), stride, 1),
                Parallelism::None,
            );
        }
    }
}

/// The Winograd products of few channels in AVX2 + FMA, reading both operands where they lie:
/// V_p's rows are contiguous tiles, so a block of 16 columns is two loads per input channel, each
/// multiplied by a broadcast weight for 6 output channels at once (12 accumulators).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };

    /// Columns per block: two registers of 8.
    pub(super) const COLUMNS: usize = 16;

    /// As [`super::position_product`] for `tiles` a multiple of [`COLUMNS`].
    ///
    /// # Safety
    /// As [`super::position_product`]; the CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn product(
        [out_channels, tiles, cin]: [usize; 3],
        m: *mut f32,
        u: *const f32,
        v: *const f32,
        stride: usize,
    ) {
        for column in (0..tiles).step_by(COLUMNS) {
            let mut row = 0;
            while row < out_channels {
                let rows = (out_channels - row).min(6);
                // SAFETY: rows `row..row + rows` of U_p and M_p, columns `column..column + 16`
                // of V_p and M_p: inside the caller's matrices.
                unsafe {
                    let (u, v, m) = (
                        u.add(row * cin),
                        v.add(column),
                        m.add(row * stride + column),
                    );
                    match rows {
                        6 => block::<6>(u, v, m, cin, stride),
                        5 => block::<5>(u, v, m, cin, stride),
                        4 => block::<4>(u, v, m, cin, stride),
                        3 => block::<3>(u, v, m, cin, stride),
                        2 => block::<2>(u, v, m, cin, stride),
                        _ => block::<1>(u, v, m, cin, stride),
                    }
                }
                row += rows;
            }
        }
    }

    /// `R` rows by 16 columns of M_p, summed over the input channels in order.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const R: usize>(
        u: *const f32,
        v: *const f32,
        m: *mut f32,
        cin: usize,
        stride: usize,
    ) {
        let mut acc: [[__m256; 2]; R] = [[_mm256_setzero_ps(); 2]; R];
        for ci in 0..cin {
            // SAFETY: the caller's bounds.
            unsafe {
                let (v0, v1) = (
                    _mm256_loadu_ps(v.add(ci * stride)),
                    _mm256_loadu_ps(v.add(ci * stride + 8)),
                );
                for (r, acc) in acc.iter_mut().enumerate() {
                    let weight = _mm256_broadcast_ss(&*u.add(r * cin + ci));
                    acc[0] = _mm256_fmadd_ps(weight, v0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(weight, v1, acc[1]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: the caller's bounds.
            unsafe {
                _mm256_storeu_ps(m.add(r * stride), acc[0]);
                _mm256_storeu_ps(m.add(r * stride + 8), acc[1]);
            }
        }
    }
}

/// Adds to `acc` `[Cout, Cin, 3, 3]` the weight gradient of one image: x `[Cin, H, W]`, `grad`
/// `[Cout, H, W]`. The gradient of the Winograd form: with M = U ⊙ V and Y = Aᵀ M A, dU =
/// Σ_tiles (A dY Aᵀ) ⊙ V — 16 products `[Cout, tiles] x [tiles, Cin]` — and dg = Gᵀ dU G.
pub(crate) fn weight_grad_image<'a, T: Real>(
    x: impl Iterator<Item = &'a [T]> + Clone,
    grad: &[T],
    d: &Dims,
    out_channels: usize,
    acc: &mut [T],
    [v, g, scratch, du]: &mut Buffers<T>,
    parallelism: Parallelism,
) {
    let blocks = Blocks::new(d);
    let (cin, pairs) = (d.channels, out_channels * d.channels);
    let du = grown(du, POSITIONS * pairs);
    for block in 0..blocks.count() {
        let (first, rows, tiles) = blocks.block(block);
        wide(
            #[inline(always)]
            || transform_input(x.clone(), d, first, rows, v, scratch),
        );
        wide(
            #[inline(always)]
            || transform_grad(grad, d, out_channels, first, rows, g, scratch),
        );
        let stride = channel_stride(tiles);
        for p in 0..POSITIONS {
            // SAFETY: dU_p is Cout x Cin inside `du`; the gradient's G_p (rows a channel stride
            // apart) is Cout x tiles inside `g`; V_p, read transposed, is tiles x Cin inside `v`.
            unsafe {
                product(
                    [out_channels, cin, tiles],
                    strided(du.as_mut_ptr().add(p * pairs), cin, 1),
                    block > 0,
                    strided(g.as_ptr().add(p * tiles), stride, 1),
                    strided(v.as_ptr().add(p * tiles), 1, stride),
                    parallelism,
                );
            }
        }
    }
    // Gᵀ = [[1, ½, ½, 0], [0, ½, -½, 0], [0, ½, ½, 1]] on both sides of each 4x4 dU.
    let half = T::from_f64(0.5);
    let gt4 = |a: T, b: T, c: T, e: T| [a + (b + c) * half, (b - c) * half, (b + c) * half + e];
    for (pair, out) in acc.chunks_exact_mut(9).enumerate() {
        let m = |p: usize| du[p * pairs + pair];
        let rows: [[T; 3]; 4] = [0, 1, 2, 3].map(|j| gt4(m(j), m(4 + j), m(8 + j), m(12 + j)));
        for r in 0..3 {
            let kernel_row = gt4(rows[0][r], rows[1][r], rows[2][r], rows[3][r]);
            for (c, value) in kernel_row.into_iter().enumerate() {
                out[3 * r + c] += value;
            }
        }
    }
}

/// `buffer`'s first `n` elements, grown if needed but not cleared: every user writes them all.
fn grown<T: Real>(buffer: &mut Vec<T>, n: usize) -> &mut [T] {
    if buffer.len() < n {
        buffer.resize(n, T::default());
    }
    &mut buffer[..n]
}

/// Whether this CPU has AVX2 and FMA (the transforms' wide code and the products' kernel).
#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Runs `f` compiled for AVX2 and FMA when the CPU has them: the transforms' loops are then
/// 8 lanes wide, not the 4 of the x86-64 baseline the crate is built for.
#[inline(always)]
fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has the features.
        return unsafe { avx2(f) };
    }
    f()
}

/// `out[t] = f(a[t], b[t])`: one loop the compiler vectorises.
#[inline(always)]
fn lanes<T: Real>(out: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = f(a, b);
    }
}

/// Splits `row` (even length) into its even and odd elements.
#[inline(always)]
fn deinterleave<T: Real>(row: &[T], even: &mut [T], odd: &mut [T]) {
    for ((pair, e), o) in row.chunks_exact(2).zip(even).zip(odd) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// The 16 rows of length `tiles` of one channel in a `[C][16][tiles]` block, each from tile
/// row `tile_row` on (`per_row` tiles), by window row: `[i][j]` is position 4i + j.
#[inline(always)]
fn positions<T>(
    channel: &mut [T],
    tiles: usize,
    tile_row: usize,
    per_row: usize,
) -> [[&mut [T]; 4]; 4] {
    let mut rows = channel
        .chunks_exact_mut(tiles)
        .map(|row| &mut row[tile_row * per_row..][..per_row]);
    std::array::from_fn(|_| std::array::from_fn(|_| rows.next().expect("16 rows")))
}

/// `g` = `[Cout][16][tiles]`: A dY Aᵀ of the 2x2 output gradient of every tile in tile rows
/// `first..first + rows`, A = [[1, 0], [1, 1], [1, -1], [0, -1]].
#[inline(always)]
fn transform_grad<T: Real>(
    grad: &[T],
    d: &Dims,
    out_channels: usize,
    first: usize,
    rows: usize,
    g: &mut Vec<T>,
    scratch: &mut Vec<T>,
) {
    let (w, half) = (d.width, d.width / 2);
    let tiles = rows * half;
    let g = grown(g, out_channels * channel_stride(tiles));
    scratch.clear();
    scratch.resize(6 * half, T::default());
    let (corners, sums) = scratch.split_at_mut(4 * half);
    let (a, rest) = corners.split_at_mut(half);
    let (b, rest) = rest.split_at_mut(half);
    let (c, e) = rest.split_at_mut(half);
    let (u, v) = sums.split_at_mut(half);
    for (plane, channel) in grad
        .chunks_exact(d.height * w)
        .zip(g.chunks_exact_mut(channel_stride(tiles)))
    {
        for tr in 0..rows {
            let r = 2 * (first + tr);
            deinterleave(&plane[r * w..][..w], a, b);
            deinterleave(&plane[(r + 1) * w..][..w], c, e);
            // Rows of A dY: (a, b), (a + c, b + e), (a - c, b - e), (-c, -e); then each row
            // (u, v) gives (u, u + v, u - v, -v).
            let rows = positions(channel, tiles, tr, half);
            for (i, [p0, p1, p2, p3]) in rows.into_iter().enumerate() {
                match i {
                    0 => {
                        u.copy_from_slice(a);
                        v.copy_from_slice(b);
                    }
                    1 => {
                        lanes(u, a, c, |a, c| a + c);
                        lanes(v, b, e, |b, e| b + e);
                    }
                    2 => {
                        lanes(u, a, c, |a, c| a - c);
                        lanes(v, b, e, |b, e| b - e);
                    }
                    _ => {
                        lanes(u, c, c, |c, _| T::default() - c);
                        lanes(v, e, e, |e, _| T::default() - e);
                    }
                }
                p0.copy_from_slice(u);
                lanes(p1, u, v, |u, v| u + v);
                lanes(p2, u, v, |u, v| u - v);
                lanes(p3, v, v, |v, _| T::default() - v);
            }
        }
    }
}

/// `v` = `[Cin][16][tiles]`: Bᵀ d B of the 4x4 input window of every tile in tile rows
/// `first..first + rows`, Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
/// Window rows and columns outside the image are the zero padding.
#[inline(always)]
fn transform_input<'a, T: Real>(
    planes: impl Iterator<Item = &'a [T]>,
    d: &Dims,
    first: usize,
    rows: usize,
    v: &mut Vec<T>,
    scratch: &mut Vec<T>,
) {
    let (h, w, cin) = (d.height, d.width, d.channels);
    let half = w / 2;
    let tiles = rows * half;
    let v = grown(v, cin * channel_stride(tiles));
    // One row of Bᵀ d, its even and odd padded columns (half + 1 each), and a row of zeros.
    scratch.clear();
    scratch.resize(2 * (half + 1) + 2 * w, T::default());
    let (columns, rest) = scratch.split_at_mut(2 * (half + 1));
    let (combined, zeros) = rest.split_at_mut(w);
    let (even, odd) = columns.split_at_mut(half + 1);
    for (plane, channel) in planes.zip(v.chunks_exact_mut(channel_stride(tiles))) {
        let row = |r: isize| -> &[T] {
            if r < 0 || r >= h as isize {
                zeros
            } else {
                &plane[r as usize * w..(r as usize + 1) * w]
            }
        };
        for tr in 0..rows {
            let top = 2 * (first + tr) as isize - 1;
            let [d0, d1, d2, d3] = [0, 1, 2, 3].map(|k| row(top + k));
            let rows = positions(channel, tiles, tr, half);
            for (i, [p0, p1, p2, p3]) in rows.into_iter().enumerate() {
                match i {
                    0 => lanes(combined, d0, d2, |a, b| a - b),
                    1 => lanes(combined, d1, d2, |a, b| a + b),
                    2 => lanes(combined, d2, d1, |a, b| a - b),
                    _ => lanes(combined, d1, d3, |a, b| a - b),
                }
                // Padded column 2j + 1 is image column 2j, padded 2j is image column 2j - 1.
                deinterleave(combined, &mut odd[..half], &mut even[1..]);
                let (e0, e1) = (&even[..half], &even[1..]);
                let (od0, od1) = (&odd[..half], &odd[1..]);
                lanes(p0, e0, e1, |a, b| a - b);
                lanes(p1, od0, e1, |a, b| a + b);
                lanes(p2, e1, od0, |a, b| a - b);
                lanes(p3, od0, od1, |a, b| a - b);
            }
        }
    }
}

/// Writes output tile rows `first..first + rows` of the image at `y` from `m` =
/// `[Cout][16][tiles]`: Aᵀ m A per tile, Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]], plus the bias,
/// then ReLU.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn transform_output<T: Real>(
    m: &[T],
    d: &Dims,
    first: usize,
    rows: usize,
    bias: Option<&[T]>,
    relu: bool,
    y: Output<T>,
    scratch: &mut Vec<T>,
) {
    let (w, half) = (d.width, d.width / 2);
    let tiles = rows * half;
    scratch.clear();
    scratch.resize(10 * half, T::default());
    let (sums, pixels) = scratch.split_at_mut(8 * half);
    let (left, right) = pixels.split_at_mut(half);
    for (co, channel) in m.chunks_exact(channel_stride(tiles)).enumerate() {
        let b = bias.map_or(T::default(), |b| b[co]);
        let finish = |v: T| {
            let v = v + b;
            if !relu || v > T::default() {
                v
            } else {
                T::default()
            }
        };
        // SAFETY: output rows [2·first, 2·(first + rows)) of channel `co` of this image: inside
        // the output, and written by this block alone (blocks own disjoint tile rows).
        let block_rows = unsafe {
            y.offset((co * d.height + 2 * first) * w)
                .slice(2 * rows * w)
        };
        for tr in 0..rows {
            let at = |p: usize| &channel[p * tiles + tr * half..][..half];
            // Aᵀ along the window's columns: sums of its rows 0 and 1 for columns j = 0..4.
            let (top, bottom) = sums.split_at_mut(4 * half);
            for j in 0..4 {
                let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                let (s, e) = (
                    &mut top[j * half..][..half],
                    &mut bottom[j * half..][..half],
                );
                for t in 0..half {
                    (s[t], e[t]) = a_transposed(m0[t], m1[t], m2[t], m3[t]);
                }
            }
            // Then along each row: output pixels 2t and 2t + 1.
            for (k, row_sums) in [&*top, &*bottom].into_iter().enumerate() {
                let [c0, c1, c2, c3] = [0, 1, 2, 3].map(|j| &row_sums[j * half..][..half]);
                for t in 0..half {
                    (left[t], right[t]) = a_transposed(c0[t], c1[t], c2[t], c3[t]);
                }
                let out = &mut block_rows[(2 * tr + k) * w..][..w];
                for ((pair, &l), &r) in out.chunks_exact_mut(2).zip(&*left).zip(&*right) {
                    pair[0] = finish(l);
                    pair[1] = finish(r);
                }
            }
        }
    }
}

/// Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] applied to four values along one axis of the window.
#[inline(always)]
fn a_transposed<T: Real>(m0: T, m1: T, m2: T, m3: T) -> (T, T) {
    (m0 + m1 + m2, m1 - m2 - m3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::tests::values;

    #[test]
    fn f32_products_of_few_channels_agree_with_f64() {
        // 17 output channels: blocks of 6, 6 and 5 rows; 18 tiles per row: blocks of 90 tiles,
        // 80 of them in 16-column blocks and 10 left to the gemm crate; then whole blocks.
        for (batch, cin, cout, h, w) in [(2, 16, 17, 10, 36), (1, 20, 16, 32, 32)] {
            let d = Dims {
                batch,
                channels: cin,
                height: h,
                width: w,
            };
            assert!(cin * cout <= SMALL_PRODUCT);
            let x: Vec<f64> = values(batch * cin * h * w, 1);
            let weight: Vec<f64> = values(cout * cin * 9, 2);
            let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let single = forward(Input::One(&f32s(&x)), d, &f32s(&weight), cout, None, false);
            let double = forward(Input::One(&x), d, &weight, cout, None, false);
            for (i, (a, b)) in single.iter().zip(&double).enumerate() {
                assert!(
                    (f64::from(*a) - b).abs() < 1e-4,
                    "{d:?} output {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn forward_and_weight_gradient_match_the_matrix_product_convolution() {
        // Several images, blocks of one and of several tile rows, a last block that is short,
        // non-square images, bias with and without ReLU.
        for (batch, cin, cout, h, w) in [(3, 2, 3, 6, 8), (2, 5, 4, 16, 40), (1, 3, 2, 2, 300)] {
            let d = Dims {
                batch,
                channels: cin,
                height: h,
                width: w,
            };
            let x: Vec<f64> = values(batch * cin * h * w, 1);
            let weight = values(cout * cin * 9, 2);
            let bias = values(cout, 3);
            for (bias, relu) in [(None, false), (Some(&bias[..]), true)] {
                let fast = forward(Input::One(&x), d, &weight, cout, bias, relu);
                let plain =
                    crate::conv::shifted_forward(Input::One(&x), d, &weight, cout, bias, relu);
                for (i, (a, b)) in fast.iter().zip(&plain).enumerate() {
                    assert!((a - b).abs() < 1e-12, "{d:?} output {i}: {a} vs {b}");
                }
            }
            let grad = values(batch * cout * h * w, 4);
            let (mut fast, mut plain) = (vec![0f64; cout * cin * 9], vec![0f64; cout * cin * 9]);
            for (x, g) in x
                .chunks_exact(cin * h * w)
                .zip(grad.chunks_exact(cout * h * w))
            {
                with_scratch(|buffers| {
                    let planes = x.chunks_exact(h * w);
                    weight_grad_image(
                        planes.clone(),
                        g,
                        &d,
                        cout,
                        &mut fast,
                        buffers,
                        Parallelism::None,
                    );
                    crate::conv::shifted_weight_grad_image(
                        planes,
                        g,
                        &d,
                        cout,
                        &mut plain,
                        buffers,
                        Parallelism::None,
                    );
                });
            }
            for (i, (a, b)) in fast.iter().zip(&plain).enumerate() {
                assert!(
                    (a - b).abs() < 1e-10,
                    "{d:?} weight gradient {i}: {a} vs {b}"
                );
            }
        }
    }
}
