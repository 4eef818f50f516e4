//! 2x2 max pooling and bilinear x2 upsampling (PyTorch's `align_corners=False`) as CPU kernels
//! over NCHW planes, with their exact gradients; planes run in parallel. Candle composes these
//! from many whole-tensor ops (each a fresh allocation and a pass over memory); here each is one.

use rayon::prelude::*;

use crate::conv::Real;

/// `[planes, h, w]` → `[planes, h/2, w/2]` (h, w even): the maximum of each 2x2 window.
pub fn max_pool<T: Real>(x: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    let mut y = vec![T::default(); planes * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(y, x)| {
            for (r, out) in y.chunks_exact_mut(ow).enumerate() {
                let (top, bottom) = (&x[2 * r * w..][..w], &x[(2 * r + 1) * w..][..w]);
                for (c, o) in out.iter_mut().enumerate() {
                    *o = max(
                        max(top[2 * c], top[2 * c + 1]),
                        max(bottom[2 * c], bottom[2 * c + 1]),
                    );
                }
            }
        });
    y
}

fn max<T: Real>(a: T, b: T) -> T {
    if b > a { b } else { a }
}

/// The gradient of [`max_pool`]: each window's output gradient goes to its maximum (the first in
/// reading order on ties, as PyTorch). Every element is written once, the others with zero.
pub fn max_pool_grad<T: Real>(x: &[T], grad: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    debug_assert_eq!(grad.len(), planes * oh * ow);
    let mut gx = vec![T::default(); planes * h * w];
    gx.par_chunks_mut(2 * w)
        .zip(x.par_chunks(2 * w).zip(grad.par_chunks(ow)))
        .for_each(|(gx, (x, g))| {
            let (x_top, x_bottom) = x.split_at(w);
            let (top, bottom) = gx.split_at_mut(w);
            for ((((t, b), xt), xb), &g) in top
                .chunks_exact_mut(2)
                .zip(bottom.chunks_exact_mut(2))
                .zip(x_top.chunks_exact(2))
                .zip(x_bottom.chunks_exact(2))
                .zip(g)
            {
                let mut best = xt[0];
                let mut at = 0;
                for (k, v) in [(1, xt[1]), (2, xb[0]), (3, xb[1])] {
                    if v > best {
                        best = v;
                        at = k;
                    }
                }
                let pick = |k: usize| if at == k { g } else { T::default() };
                t[0] = pick(0);
                t[1] = pick(1);
                b[0] = pick(2);
                b[1] = pick(3);
            }
        });
    gx
}

/// For output index `o` of an axis doubled from `n`: the source index, its neighbour on that
/// side (the edge repeating), with weights 3/4 and 1/4.
fn taps(o: usize, n: usize) -> (usize, usize) {
    let i = o / 2;
    let j = if o.is_multiple_of(2) {
        i.saturating_sub(1)
    } else {
        (i + 1).min(n - 1)
    };
    (i, j)
}

/// `[planes, h, w]` → `[planes, 2h, 2w]`, bilinear with half-pixel centres: each input row is
/// doubled along its length once, then each output row is the blend of two doubled rows.
pub fn upsample<T: Real>(x: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (near, far) = (T::from_f64(0.75), T::from_f64(0.25));
    let (oh, ow) = (2 * h, 2 * w);
    let mut y = vec![T::default(); planes * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each_init(Vec::new, |doubled, (y, x)| {
            doubled.clear();
            doubled.resize(h * ow, T::default());
            for (row, out) in x.chunks_exact(w).zip(doubled.chunks_exact_mut(ow)) {
                double_row(row, out);
            }
            for (r, out) in y.chunks_exact_mut(ow).enumerate() {
                let (i, i2) = taps(r, h);
                let (a, b) = (&doubled[i * ow..][..ow], &doubled[i2 * ow..][..ow]);
                for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                    *o = near * a + far * b;
                }
            }
        });
    y
}

/// `out[2j] = ¾ v[j] + ¼ v[j-1]`, `out[2j+1] = ¾ v[j] + ¼ v[j+1]`, the edges repeating.
fn double_row<T: Real>(v: &[T], out: &mut [T]) {
    let (near, far) = (T::from_f64(0.75), T::from_f64(0.25));
    let n = v.len();
    let left = std::iter::once(&v[0]).chain(&v[..n - 1]);
    let right = v[1..].iter().chain(std::iter::once(&v[n - 1]));
    for (((pair, &c), &l), &r) in out.chunks_exact_mut(2).zip(v).zip(left).zip(right) {
        pair[0] = near * c + far * l;
        pair[1] = near * c + far * r;
    }
}

/// The gradient of [`upsample`], one axis at a time: an input row (or column) j receives ¾ of
/// outputs 2j and 2j+1 and ¼ of outputs 2j-1 and 2j+2 (at the edges, ¼ of the edge output again).
pub fn upsample_grad<T: Real>(grad: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (oh, ow) = (2 * h, 2 * w);
    let mut gx = vec![T::default(); planes * h * w];
    gx.par_chunks_mut(h * w)
        .zip(grad.par_chunks(oh * ow))
        .for_each_init(Vec::new, |scratch, (gx, g)| {
            scratch.clear();
            scratch.resize(2 * ow + 4, T::default());
            let (padded, halves) = scratch.split_at_mut(ow + 2);
            let (even, odd) = halves.split_at_mut(w + 1);
            let row = |k: usize| &g[k * ow..][..ow];
            for (i, out) in gx.chunks_exact_mut(w).enumerate() {
                // The rows' gradient, padded by repeating its ends, is then halved along its
                // length the same way.
                let (before, after) = (row((2 * i).max(1) - 1), row((2 * i + 2).min(oh - 1)));
                let inner = &mut padded[1..=ow];
                for ((((p, &a), &b), &c), &d) in inner
                    .iter_mut()
                    .zip(row(2 * i))
                    .zip(row(2 * i + 1))
                    .zip(before)
                    .zip(after)
                {
                    *p = quarters(a, b, c, d);
                }
                (padded[0], padded[ow + 1]) = (padded[1], padded[ow]);
                for ((pair, e), o) in padded.chunks_exact(2).zip(&mut *even).zip(&mut *odd) {
                    (*e, *o) = (pair[0], pair[1]);
                }
                for (j, out) in out.iter_mut().enumerate() {
                    *out = quarters(odd[j], even[j + 1], even[j], odd[j + 1]);
                }
            }
        });
    gx
}

/// ¾ (a + b) + ¼ (c + d).
#[inline(always)]
fn quarters<T: Real>(a: T, b: T, c: T, d: T) -> T {
    T::from_f64(0.75) * (a + b) + T::from_f64(0.25) * (c + d)
}
