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
/// reading order on ties, as PyTorch).
pub fn max_pool_grad<T: Real>(x: &[T], grad: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    debug_assert_eq!(grad.len(), planes * oh * ow);
    let mut gx = vec![T::default(); planes * h * w];
    gx.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w).zip(grad.par_chunks(oh * ow)))
        .for_each(|(gx, (x, g))| {
            for r in 0..oh {
                for c in 0..ow {
                    let window = [
                        2 * r * w + 2 * c,
                        2 * r * w + 2 * c + 1,
                        (2 * r + 1) * w + 2 * c,
                        (2 * r + 1) * w + 2 * c + 1,
                    ];
                    let mut best = window[0];
                    for &i in &window[1..] {
                        if x[i] > x[best] {
                            best = i;
                        }
                    }
                    gx[best] = g[r * ow + c];
                }
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

/// `[planes, h, w]` → `[planes, 2h, 2w]`, bilinear with half-pixel centres.
pub fn upsample<T: Real>(x: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (near, far) = (T::from_f64(0.75), T::from_f64(0.25));
    let (oh, ow) = (2 * h, 2 * w);
    let mut y = vec![T::default(); planes * oh * ow];
    let columns: Vec<(usize, usize)> = (0..ow).map(|c| taps(c, w)).collect();
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(y, x)| {
            for (r, out) in y.chunks_exact_mut(ow).enumerate() {
                let (i, i2) = taps(r, h);
                let (a, b) = (&x[i * w..][..w], &x[i2 * w..][..w]);
                for (o, &(j, j2)) in out.iter_mut().zip(&columns) {
                    let row = near * a[j] + far * a[j2];
                    let other = near * b[j] + far * b[j2];
                    *o = near * row + far * other;
                }
            }
        });
    y
}

/// The gradient of [`upsample`]: each output gradient flows back to its four taps.
pub fn upsample_grad<T: Real>(grad: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (near, far) = (T::from_f64(0.75), T::from_f64(0.25));
    let (oh, ow) = (2 * h, 2 * w);
    let mut gx = vec![T::default(); planes * h * w];
    let columns: Vec<(usize, usize)> = (0..ow).map(|c| taps(c, w)).collect();
    gx.par_chunks_mut(h * w)
        .zip(grad.par_chunks(oh * ow))
        .for_each(|(gx, g)| {
            for (r, row) in g.chunks_exact(ow).enumerate() {
                let (i, i2) = taps(r, h);
                for (&v, &(j, j2)) in row.iter().zip(&columns) {
                    let (a, b) = (near * v, far * v);
                    gx[i * w + j] += near * a;
                    gx[i * w + j2] += far * a;
                    gx[i2 * w + j] += near * b;
                    gx[i2 * w + j2] += far * b;
                }
            }
        });
    gx
}
