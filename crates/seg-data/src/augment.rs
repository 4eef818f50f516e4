//! Joint augmentation: one random affine (rotation, isotropic scale, translation) and an elastic
//! deformation, composed into a single resampling that warps the image bilinearly and the mask by
//! nearest neighbour, filling with air outside the source.

use ndarray::{Array2, Array3, Axis};
use rand::Rng;

use crate::config::DataConfig;
use crate::dataset::Sample;

/// A sampled augmentation, mapping each output pixel to the source position it takes its value
/// from.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    /// Output → source linear part, row major over (row, column).
    pub linear: [[f32; 2]; 2],
    /// Source position of the output centre, minus the image centre (pixels).
    pub shift: [f32; 2],
    /// Elastic displacement added to each output position before the affine, `[H, W]` each
    /// (rows, columns).
    pub displacement: Option<(Array2<f32>, Array2<f32>)>,
    pub flip_lr: bool,
    /// Intensity: value x gain + bias.
    pub gain: f32,
    pub bias: f32,
}

impl Transform {
    pub fn identity() -> Transform {
        Transform {
            linear: [[1.0, 0.0], [0.0, 1.0]],
            shift: [0.0, 0.0],
            displacement: None,
            flip_lr: false,
            gain: 1.0,
            bias: 0.0,
        }
    }

    /// Draws a transform for a `size` x `size` image.
    pub fn sample(config: &DataConfig, size: usize, rng: &mut impl Rng) -> Transform {
        let uniform = |rng: &mut dyn rand::RngCore, [lo, hi]: [f32; 2]| {
            if hi > lo {
                rng.random_range(lo..=hi)
            } else {
                lo
            }
        };
        let angle = uniform(rng, [-config.rotation_deg, config.rotation_deg]).to_radians();
        let scale = uniform(rng, config.scale);
        let t = config.translation * size as f32;
        let translation = [uniform(rng, [-t, t]), uniform(rng, [-t, t])];
        // Forward: source → output is rotate by `angle`, scale, then translate. Inverse below.
        let (sin, cos) = angle.sin_cos();
        let linear = [[cos / scale, sin / scale], [-sin / scale, cos / scale]];
        let shift = [
            -(linear[0][0] * translation[0] + linear[0][1] * translation[1]),
            -(linear[1][0] * translation[0] + linear[1][1] * translation[1]),
        ];
        let alpha = uniform(rng, config.elastic_alpha);
        let sigma = uniform(rng, config.elastic_sigma);
        let displacement = (alpha > 0.0).then(|| {
            (
                elastic_field(size, alpha, sigma, rng),
                elastic_field(size, alpha, sigma, rng),
            )
        });
        let flip_lr = config.flip_lr && rng.random_bool(0.5);
        let j = config.intensity_jitter;
        let (gain, bias) = if j > 0.0 {
            (1.0 + rng.random_range(-j..=j), rng.random_range(-j..=j))
        } else {
            (1.0, 0.0)
        };
        Transform {
            linear,
            shift,
            displacement,
            flip_lr,
            gain,
            bias,
        }
    }

    /// Source position (row, column) of output pixel (r, c) in an image of `size` x `size`.
    fn source(&self, r: usize, c: usize, size: usize) -> (f32, f32) {
        let centre = (size as f32 - 1.0) / 2.0;
        let (mut y, mut x) = (r as f32, c as f32);
        if let Some((dy, dx)) = &self.displacement {
            y += dy[[r, c]];
            x += dx[[r, c]];
        }
        let (y, x) = (y - centre, x - centre);
        let sy = self.linear[0][0] * y + self.linear[0][1] * x + self.shift[0] + centre;
        let sx = self.linear[1][0] * y + self.linear[1][1] * x + self.shift[1] + centre;
        let sx = if self.flip_lr { 2.0 * centre - sx } else { sx };
        (sy, sx)
    }

    /// Warps a sample: every channel bilinearly (air outside), the mask by nearest neighbour
    /// (background outside).
    pub fn apply(&self, sample: &Sample, air: f32) -> Sample {
        let (channels, h, w) = sample.image.dim();
        assert_eq!(h, w, "square slices");
        let size = h;
        let mut image = Array3::<f32>::from_elem((channels, size, size), air);
        let mut mask = Array2::<u8>::zeros((size, size));
        let limit = size as f32 - 0.5;
        for r in 0..size {
            for c in 0..size {
                let (sy, sx) = self.source(r, c, size);
                if !(-0.5..limit).contains(&sy) || !(-0.5..limit).contains(&sx) {
                    continue;
                }
                mask[[r, c]] = sample.mask[[
                    (sy.round() as usize).min(size - 1),
                    (sx.round() as usize).min(size - 1),
                ]];
                let y = sy.clamp(0.0, size as f32 - 1.0);
                let x = sx.clamp(0.0, size as f32 - 1.0);
                let (y0, x0) = (y.floor() as usize, x.floor() as usize);
                let (y1, x1) = ((y0 + 1).min(size - 1), (x0 + 1).min(size - 1));
                let (wy, wx) = (y - y0 as f32, x - x0 as f32);
                for (k, plane) in sample.image.axis_iter(Axis(0)).enumerate() {
                    let top = plane[[y0, x0]] * (1.0 - wx) + plane[[y0, x1]] * wx;
                    let bottom = plane[[y1, x0]] * (1.0 - wx) + plane[[y1, x1]] * wx;
                    image[[k, r, c]] = top * (1.0 - wy) + bottom * wy;
                }
            }
        }
        if self.gain != 1.0 || self.bias != 0.0 {
            image.mapv_inplace(|v| v * self.gain + self.bias);
        }
        Sample { image, mask }
    }
}

/// A displacement field as imgaug's ElasticTransformation draws it: uniform noise in [−1, 1],
/// smoothed by a Gaussian of `sigma` pixels (reflecting at the borders), times `alpha`.
fn elastic_field(size: usize, alpha: f32, sigma: f32, rng: &mut impl Rng) -> Array2<f32> {
    let noise = Array2::from_shape_simple_fn((size, size), || rng.random_range(-1.0f32..=1.0));
    let kernel = gaussian_kernel(sigma);
    let rows = blur_axis(&noise, &kernel, Axis(1));
    let mut field = blur_axis(&rows, &kernel, Axis(0));
    field.mapv_inplace(|v| v * alpha);
    field
}

fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|v| *v /= sum);
    kernel
}

/// 1D convolution along `axis` with reflection at the borders (scipy's "reflect").
fn blur_axis(input: &Array2<f32>, kernel: &[f32], axis: Axis) -> Array2<f32> {
    let radius = kernel.len() / 2;
    let mut out = Array2::<f32>::zeros(input.raw_dim());
    let mut padded = Vec::new();
    for (lane_in, mut lane_out) in input.lanes(axis).into_iter().zip(out.lanes_mut(axis)) {
        let n = lane_in.len() as isize;
        let reflect = |i: isize| -> usize {
            let period = 2 * n;
            let i = i.rem_euclid(period);
            (if i >= n { period - 1 - i } else { i }) as usize
        };
        padded.clear();
        padded.extend((-(radius as isize)..n + radius as isize).map(|i| lane_in[reflect(i)]));
        for (i, o) in lane_out.iter_mut().enumerate() {
            *o = padded[i..i + kernel.len()]
                .iter()
                .zip(kernel)
                .map(|(v, k)| v * k)
                .sum();
        }
    }
    out
}
