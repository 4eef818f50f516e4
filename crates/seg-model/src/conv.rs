//! The U-Net's 3x3 convolutions (stride 1, padding 1) on CPU as matrix products, without candle's
//! scalar im2col: each image is zero-padded once, and a shift of the 3x3 window is then a constant
//! offset into the padded planes. With outputs computed on the padded width (two columns per row
//! that are thrown away), every shifted input is an ordinary strided matrix for the `gemm` crate
//! (the one candle itself uses).
//!
//! Few input channels: the 9 shifted copies are stacked (9 row copies per channel, no gather) and
//! multiplied once, K = 9·Cin. Many: 9 products of K = Cin accumulate into the output, no copies.
//! Images run in parallel (each product on one thread) when the batch can keep every core busy;
//! otherwise each product is parallel.

use std::any::Any;
use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

/// The element types the kernels run in: f32 for the network, f64 for gradient checks.
pub trait Real:
    Copy
    + Default
    + PartialOrd
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
    + 'static
{
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    const ONE: f32 = 1.0;
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
}

impl Real for f64 {
    const ONE: f64 = 1.0;
    fn from_f64(v: f64) -> f64 {
        v
    }
}

/// A strided matrix: element (r, c) is at `ptr + r·rows + c·cols`.
pub(crate) struct Matrix<P> {
    ptr: P,
    rows: isize,
    cols: isize,
}

pub(crate) fn strided<P>(ptr: P, rows: usize, cols: usize) -> Matrix<P> {
    Matrix {
        ptr,
        rows: rows as isize,
        cols: cols as isize,
    }
}

/// `dst` (m x n) = (`dst` if `accumulate`) + `lhs` (m x k) · `rhs` (k x n), `[m, n, k]` = `size`.
///
/// # Safety
/// Every element the three strided matrices address must lie inside its allocation, and `dst`
/// must not overlap `lhs` or `rhs`.
pub(crate) unsafe fn product<T: Real>(
    [m, n, k]: [usize; 3],
    dst: Matrix<*mut T>,
    accumulate: bool,
    lhs: Matrix<*const T>,
    rhs: Matrix<*const T>,
    parallelism: Parallelism,
) {
    let alpha = if accumulate { T::ONE } else { T::default() };
    // SAFETY: the caller's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cols,
            dst.rows,
            accumulate,
            lhs.ptr,
            lhs.cols,
            lhs.rows,
            rhs.ptr,
            rhs.cols,
            rhs.rows,
            alpha,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Input channels from which the 9 shifted products beat one product over stacked copies.
const STACK_BELOW: usize = 32;

/// Shape of an NCHW batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Dims {
    pub(crate) fn image(&self) -> usize {
        self.channels * self.height * self.width
    }
    fn padded_plane(&self) -> usize {
        (self.height + 2) * (self.width + 2)
    }
    /// Output pixels per channel on the padded width.
    fn padded_rows(&self) -> usize {
        self.height * (self.width + 2)
    }
    /// Offset of the window shift (kh, kw) in a padded plane.
    fn shift(&self, k: usize) -> usize {
        (k / 3) * (self.width + 2) + k % 3
    }
}

thread_local! {
    /// Per-thread scratch (padded input, stacked shifts, padded output) of one element type, kept
    /// between calls: fresh memory costs a page fault per 4 KiB, a large share of a small
    /// convolution.
    static SCRATCH: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

pub(crate) type Buffers<T> = [Vec<T>; 4];

/// Runs `f` with this thread's scratch buffers for `T`.
pub(crate) fn with_scratch<T: Real, R>(f: impl FnOnce(&mut Buffers<T>) -> R) -> R {
    SCRATCH.with_borrow_mut(|all| {
        let at = match all.iter().position(|b| b.is::<Buffers<T>>()) {
            Some(at) => at,
            None => {
                all.push(Box::new(Buffers::<T>::default()));
                all.len() - 1
            }
        };
        f(all[at].downcast_mut::<Buffers<T>>().expect("checked type"))
    })
}

fn parallelism(batch: usize) -> (bool, Parallelism) {
    let threads = rayon::current_num_threads();
    if batch >= threads {
        (true, Parallelism::None)
    } else {
        (false, Parallelism::Rayon(threads))
    }
}

/// A convolution's input batch `[B, C, H, W]`: one tensor, or two whose channels are read one
/// after the other as if concatenated (a decoder level's upsampled map and its skip connection,
/// never copied into one tensor).
#[derive(Clone, Copy)]
pub enum Input<'a, T> {
    One(&'a [T]),
    Two(&'a [T], &'a [T]),
}

impl<'a, T> Input<'a, T> {
    fn len(self) -> usize {
        match self {
            Input::One(x) => x.len(),
            Input::Two(a, b) => a.len() + b.len(),
        }
    }

    /// The channel planes of image `image`, in channel order.
    pub(crate) fn planes(self, d: &Dims, image: usize) -> impl Iterator<Item = &'a [T]> + Clone {
        let (batch, plane) = (d.batch, d.height * d.width);
        let (first, second): (&[T], &[T]) = match self {
            Input::One(x) => (x, &[]),
            Input::Two(a, b) => (a, b),
        };
        [first, second].into_iter().flat_map(move |part| {
            let size = part.len() / batch;
            part[image * size..(image + 1) * size].chunks_exact(plane)
        })
    }
}

/// Copies an image's channel planes into `padded` with a zero border, plus two trailing zeros
/// that the last shifted view may touch.
fn pad_image<'a, T: Real>(planes: impl Iterator<Item = &'a [T]>, d: &Dims, padded: &mut Vec<T>) {
    let plane = d.padded_plane();
    padded.clear();
    padded.resize(d.channels * plane + 2, T::default());
    let w2 = d.width + 2;
    for (c, src) in planes.enumerate() {
        for (r, row) in src.chunks_exact(d.width).enumerate() {
            let at = c * plane + (r + 1) * w2 + 1;
            padded[at..at + d.width].copy_from_slice(row);
        }
    }
}

/// Stacks the 9 shifted views of a padded image: row ci·9 + k holds shift k of channel ci.
fn stack_shifts<T: Real>(padded: &[T], d: &Dims, stacked: &mut Vec<T>) {
    let (plane, n) = (d.padded_plane(), d.padded_rows());
    stacked.clear();
    stacked.reserve(d.channels * 9 * n);
    for c in 0..d.channels {
        for k in 0..9 {
            let at = c * plane + d.shift(k);
            stacked.extend_from_slice(&padded[at..at + n]);
        }
    }
}

/// y = conv3x3(x, weight) (+ bias) (then ReLU): x `[B, Cin, H, W]`, weight `[Cout, Cin, 3, 3]`,
/// returns `[B, Cout, H, W]`. Many channels: by [`crate::winograd`].
pub fn forward<T: Real>(
    x: Input<T>,
    d: Dims,
    weight: &[T],
    out_channels: usize,
    bias: Option<&[T]>,
    relu: bool,
) -> Vec<T> {
    if crate::winograd::pays(&d, out_channels) {
        crate::winograd::forward(x, d, weight, out_channels, bias, relu)
    } else {
        shifted_forward(x, d, weight, out_channels, bias, relu)
    }
}

/// [`forward`] as matrix products over the shifted views of the padded input.
pub(crate) fn shifted_forward<T: Real>(
    x: Input<T>,
    d: Dims,
    weight: &[T],
    out_channels: usize,
    bias: Option<&[T]>,
    relu: bool,
) -> Vec<T> {
    assert_eq!(x.len(), d.batch * d.image());
    assert_eq!(weight.len(), out_channels * d.channels * 9);
    let out_image = out_channels * d.height * d.width;
    let mut y = vec![T::default(); d.batch * out_image];
    let (per_image, inner) = parallelism(d.batch);
    let run = |(image, y): (usize, &mut [T])| {
        with_scratch(|[padded, stacked, out, _]: &mut Buffers<T>| {
            pad_image(x.planes(&d, image), &d, padded);
            forward_image(&d, weight, out_channels, padded, stacked, out, inner);
            copy_out(out, y, &d, bias, relu);
        })
    };
    let pairs = y.chunks_exact_mut(out_image).enumerate();
    if per_image {
        pairs.par_bridge().for_each(run);
    } else {
        pairs.for_each(run);
    }
    y
}

/// One image's output on the padded width, from its padded input.
fn forward_image<T: Real>(
    d: &Dims,
    weight: &[T],
    out_channels: usize,
    padded: &[T],
    stacked: &mut Vec<T>,
    out: &mut Vec<T>,
    parallelism: Parallelism,
) {
    let (plane, n, cin) = (d.padded_plane(), d.padded_rows(), d.channels);
    out.clear();
    out.resize(out_channels * n, T::default());
    // SAFETY (both branches): every matrix lies inside its buffer: `out` is Cout x n; the weight
    // Cout x 9·Cin; a shifted view reaches at most (Cin - 1)·plane + shift(8) + n - 1
    // = Cin·plane + 1 < padded.len(); `stacked` is 9·Cin x n.
    if cin < STACK_BELOW {
        stack_shifts(padded, d, stacked);
        unsafe {
            product(
                [out_channels, n, 9 * cin],
                strided(out.as_mut_ptr(), n, 1),
                false,
                strided(weight.as_ptr(), 9 * cin, 1),
                strided(stacked.as_ptr(), n, 1),
                parallelism,
            );
        }
    } else {
        for k in 0..9 {
            unsafe {
                product(
                    [out_channels, n, cin],
                    strided(out.as_mut_ptr(), n, 1),
                    k > 0,
                    strided(weight.as_ptr().add(k), 9 * cin, 9),
                    strided(padded.as_ptr().add(d.shift(k)), plane, 1),
                    parallelism,
                );
            }
        }
    }
}

/// Drops the two padding columns of each output row, adding the bias and applying ReLU.
fn copy_out<T: Real>(out: &[T], y: &mut [T], d: &Dims, bias: Option<&[T]>, relu: bool) {
    let w2 = d.width + 2;
    for (c, (src, dst)) in out
        .chunks_exact(d.padded_rows())
        .zip(y.chunks_exact_mut(d.height * d.width))
        .enumerate()
    {
        let b = bias.map_or(T::default(), |b| b[c]);
        for (s, t) in src.chunks_exact(w2).zip(dst.chunks_exact_mut(d.width)) {
            for (&v, o) in s[..d.width].iter().zip(t) {
                let v = v + b;
                *o = if !relu || v > T::default() {
                    v
                } else {
                    T::default()
                };
            }
        }
    }
}

/// The weight gradient `[Cout, Cin, 3, 3]` of conv3x3 from the input x `[B, Cin, H, W]` and the
/// output gradient `[B, Cout, H, W]`.
pub fn weight_grad<T: Real>(x: Input<T>, d: Dims, grad: &[T], out_channels: usize) -> Vec<T> {
    assert_eq!(x.len(), d.batch * d.image());
    let out_image = out_channels * d.height * d.width;
    assert_eq!(grad.len(), d.batch * out_image);
    let size = out_channels * d.channels * 9;
    let (per_image, inner) = parallelism(d.batch);
    // One partial gradient per image, summed in image order: the result does not depend on how
    // many threads there are or which ran what (resumed training must be bit-exact).
    let partial = |(image, g): (usize, &[T])| {
        let mut acc = vec![T::default(); size];
        let x = x.planes(&d, image);
        with_scratch(|buffers: &mut Buffers<T>| {
            if crate::winograd::pays_for_weight_grad(&d, out_channels) {
                crate::winograd::weight_grad_image(x, g, &d, out_channels, &mut acc, buffers, inner)
            } else {
                shifted_weight_grad_image(x, g, &d, out_channels, &mut acc, buffers, inner)
            }
        });
        acc
    };
    let pairs: Vec<(usize, &[T])> = grad.chunks_exact(out_image).enumerate().collect();
    let partials: Vec<Vec<T>> = if per_image {
        pairs.into_par_iter().map(partial).collect()
    } else {
        pairs.into_iter().map(partial).collect()
    };
    sum_in_order(partials, size)
}

/// Per-image partial results of `size` values added up in image order: the same result on any
/// thread count (resumed training must be bit-exact).
pub(crate) fn sum_in_order<T: Real>(partials: Vec<Vec<T>>, size: usize) -> Vec<T> {
    let mut partials = partials.into_iter();
    let mut total = partials.next().unwrap_or_else(|| vec![T::default(); size]);
    for part in partials {
        total.iter_mut().zip(&part).for_each(|(a, b)| *a += *b);
    }
    total
}

/// Adds to `acc` the weight gradient of one image, as matrix products over the shifted views of
/// the padded input.
pub(crate) fn shifted_weight_grad_image<'a, T: Real>(
    x: impl Iterator<Item = &'a [T]>,
    grad: &[T],
    d: &Dims,
    out_channels: usize,
    acc: &mut [T],
    [padded, stacked, grad_padded, _]: &mut Buffers<T>,
    parallelism: Parallelism,
) {
    let (plane, n, cin) = (d.padded_plane(), d.padded_rows(), d.channels);
    pad_image(x, d, padded);
    // The output gradient on the padded width, zero in the two extra columns, so that the
    // products see nothing from the wrapped-around pixels there.
    grad_padded.clear();
    grad_padded.resize(out_channels * n, T::default());
    let w2 = d.width + 2;
    for (src, dst) in grad
        .chunks_exact(d.width)
        .zip(grad_padded.chunks_exact_mut(w2))
    {
        dst[..d.width].copy_from_slice(src);
    }
    // SAFETY: as in `forward_image`; `acc` is Cout x 9·Cin.
    if cin < STACK_BELOW {
        stack_shifts(padded, d, stacked);
        unsafe {
            product(
                [out_channels, 9 * cin, n],
                strided(acc.as_mut_ptr(), 9 * cin, 1),
                true,
                strided(grad_padded.as_ptr(), n, 1),
                strided(stacked.as_ptr(), 1, n),
                parallelism,
            );
        }
    } else {
        for k in 0..9 {
            unsafe {
                product(
                    [out_channels, cin, n],
                    strided(acc.as_mut_ptr().add(k), 9 * cin, 9),
                    true,
                    strided(grad_padded.as_ptr(), n, 1),
                    strided(padded.as_ptr().add(d.shift(k)), 1, plane),
                    parallelism,
                );
            }
        }
    }
}

/// The output gradient before a fused ReLU (zero where the output `y` is not positive) and the
/// bias gradient (its sum per channel) of a `[B, C, H, W]` output, in one pass that writes each
/// value once.
pub fn relu_grad<T: Real>(grad: &[T], y: &[T], d: Dims) -> (Vec<T>, Vec<T>) {
    assert_eq!(grad.len(), d.batch * d.image());
    assert_eq!(y.len(), grad.len());
    let plane = d.height * d.width;
    let mut pre = Vec::with_capacity(grad.len());
    let sums = pre.spare_capacity_mut()[..grad.len()]
        .par_chunks_mut(plane)
        .zip(grad.par_chunks(plane).zip(y.par_chunks(plane)))
        .map(|(out, (g, y))| {
            let mut sum = T::default();
            for ((o, &g), &y) in out.iter_mut().zip(g).zip(y) {
                let v = if y > T::default() { g } else { T::default() };
                o.write(v);
                sum += v;
            }
            sum
        })
        .collect();
    // SAFETY: the planes cover all `grad.len()` elements, and each was written above.
    unsafe { pre.set_len(grad.len()) };
    (pre, per_channel(sums, d.channels))
}

/// The bias gradient of a `[B, C, H, W]` output: the output gradient summed per channel.
pub fn bias_grad<T: Real>(grad: &[T], d: Dims) -> Vec<T> {
    assert_eq!(grad.len(), d.batch * d.image());
    let sums = grad
        .par_chunks(d.height * d.width)
        .map(|g| g.iter().fold(T::default(), |sum, &g| sum + g))
        .collect();
    per_channel(sums, d.channels)
}

/// Per-plane sums added up per channel, in image order (the same result on any thread count).
pub(crate) fn per_channel<T: Real>(plane_sums: Vec<T>, channels: usize) -> Vec<T> {
    let mut total = vec![T::default(); channels];
    for (n, sum) in plane_sums.into_iter().enumerate() {
        total[n % channels] += sum;
    }
    total
}

/// The kernel that turns an output gradient into the input gradient: `weight` `[Cout, Cin, 3, 3]`
/// transposed to `[Cin, Cout, 3, 3]` and rotated by 180°.
pub fn flipped_transposed<T: Real>(
    weight: &[T],
    out_channels: usize,
    in_channels: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); weight.len()];
    for co in 0..out_channels {
        for ci in 0..in_channels {
            for k in 0..9 {
                out[(ci * out_channels + co) * 9 + (8 - k)] =
                    weight[(co * in_channels + ci) * 9 + k];
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The definition, in f64.
    fn direct(x: &[f32], d: Dims, w: &[f32], cout: usize) -> Vec<f64> {
        let (h, wd) = (d.height as isize, d.width as isize);
        let mut y = vec![0f64; d.batch * cout * d.height * d.width];
        for b in 0..d.batch {
            for co in 0..cout {
                for r in 0..h {
                    for c in 0..wd {
                        let mut s = 0f64;
                        for ci in 0..d.channels {
                            for k in 0..9isize {
                                let (rr, cc) = (r + k / 3 - 1, c + k % 3 - 1);
                                if rr < 0 || cc < 0 || rr >= h || cc >= wd {
                                    continue;
                                }
                                let xv = x[((b * d.channels + ci) * d.height + rr as usize)
                                    * d.width
                                    + cc as usize];
                                s += f64::from(xv)
                                    * f64::from(w[(co * d.channels + ci) * 9 + k as usize]);
                            }
                        }
                        y[((b * cout + co) * d.height + r as usize) * d.width + c as usize] = s;
                    }
                }
            }
        }
        y
    }

    /// Deterministic values in [-1, 1).
    pub(crate) fn values<T: Real>(n: usize, seed: u32) -> Vec<T> {
        (0..n)
            .map(|i| {
                let k = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000;
                T::from_f64(f64::from(k) / 500.0 - 1.0)
            })
            .collect()
    }

    #[test]
    fn forward_and_both_gradients_match_the_definition_on_both_paths() {
        for (batch, cin, cout, h, w) in [(3, 2, 5, 7, 6), (1, 40, 3, 5, 9), (4, 33, 2, 4, 4)] {
            let d = Dims {
                batch,
                channels: cin,
                height: h,
                width: w,
            };
            let x = values(batch * cin * h * w, 1);
            let weight = values(cout * cin * 9, 2);
            let bias = values(cout, 3);
            let y = forward(Input::One(&x), d, &weight, cout, Some(&bias), false);
            let reference = direct(&x, d, &weight, cout);
            for (i, (a, b)) in y.iter().zip(&reference).enumerate() {
                let with_bias = b + f64::from(bias[(i / (h * w)) % cout]);
                assert!(
                    (f64::from(*a) - with_bias).abs() < 1e-4,
                    "forward {i}: {a} vs {with_bias}"
                );
            }
            let relu = forward(Input::One(&x), d, &weight, cout, Some(&bias), true);
            assert!(relu.iter().zip(&y).all(|(r, v)| *r == v.max(0.0)));

            // Gradients of L = Σ g·y: dL/dx is the flipped-kernel convolution of g, and dL/dw[j]
            // is Σ g·conv(x, e_j).
            let g = values(batch * cout * h * w, 4);
            let gd = Dims {
                channels: cout,
                ..d
            };
            let grad_x = forward(
                Input::One(&g),
                gd,
                &flipped_transposed(&weight, cout, cin),
                cin,
                None,
                false,
            );
            for probe in [0, x.len() / 2, x.len() - 1] {
                let mut e = vec![0f32; x.len()];
                e[probe] = 1.0;
                let expected: f64 = direct(&e, d, &weight, cout)
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| a * f64::from(*b))
                    .sum();
                assert!(
                    (f64::from(grad_x[probe]) - expected).abs() < 1e-4,
                    "grad x {probe}"
                );
            }
            let grad_w = weight_grad(Input::One(&x), d, &g, cout);
            for probe in [0, weight.len() / 3, weight.len() - 1] {
                let mut e = vec![0f32; weight.len()];
                e[probe] = 1.0;
                let expected: f64 = direct(&x, d, &e, cout)
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| a * f64::from(*b))
                    .sum();
                assert!(
                    (f64::from(grad_w[probe]) - expected).abs() < 1e-3,
                    "grad w {probe}: {} vs {expected}",
                    grad_w[probe]
                );
            }
        }
    }

    #[test]
    fn two_inputs_are_read_as_their_concatenation() {
        // Few channels (shifted products) and many of a large image (Winograd), with parts of
        // unequal size.
        for (batch, first, second, cout, h, w) in [(2, 1, 2, 3, 4, 6), (2, 7, 12, 16, 64, 64)] {
            let (a, b) = (
                values(batch * first * h * w, 5),
                values(batch * second * h * w, 6),
            );
            let joined: Vec<f32> = a
                .chunks_exact(first * h * w)
                .zip(b.chunks_exact(second * h * w))
                .flat_map(|(a, b)| a.iter().chain(b).copied())
                .collect();
            let d = Dims {
                batch,
                channels: first + second,
                height: h,
                width: w,
            };
            let weight = values(cout * d.channels * 9, 7);
            let y = forward(Input::Two(&a, &b), d, &weight, cout, None, true);
            assert_eq!(
                y,
                forward(Input::One(&joined), d, &weight, cout, None, true)
            );
            let g = values(batch * cout * h * w, 8);
            assert_eq!(
                weight_grad(Input::Two(&a, &b), d, &g, cout),
                weight_grad(Input::One(&joined), d, &g, cout)
            );
        }
    }
}
