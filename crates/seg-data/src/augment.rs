//! Joint augmentation: one random affine (rotation, isotropic scale, translation) and an elastic
//! deformation, composed into a single resampling that warps the image bilinearly and the mask by
//! nearest neighbour, filling with air outside the source. Then, on the image alone, the
//! appearance of other scanners in the manner of domain randomisation (SynthSeg): contrast
//! (gamma), thicker slices (neighbouring channels mixed in), a coarser resolution, blur and noise.

use ct_preprocess::slices::resize_bilinear;
use ndarray::{Array2, Array3, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
    pub flip_ap: bool,
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
            flip_ap: false,
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
        let flip_ap = config.flip_ap && rng.random_bool(0.5);
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
            flip_ap,
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
        let sy = if self.flip_ap { 2.0 * centre - sy } else { sy };
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

/// A sampled change of appearance: what another scanner, protocol or reconstruction kernel would
/// make of the same anatomy. Applied in this order: slice thickness, resolution, blur, gamma,
/// noise.
#[derive(Debug, Clone, PartialEq)]
pub struct Appearance {
    /// Exponent applied to the image rescaled to [0, 1] by its own range (1 = none).
    pub gamma: f32,
    /// Weight of each neighbouring channel mixed into a channel, as a thicker slice would average
    /// them (0 = none).
    pub slice_blend: f32,
    /// The image is shrunk by this factor and enlarged back (1 = none).
    pub low_resolution: f32,
    /// Gaussian blur in pixels (0 = none).
    pub blur_sigma: f32,
    /// Standard deviation of added Gaussian noise, in the image's units (0 = none).
    pub noise_sd: f32,
    /// Seed of the noise.
    pub noise_seed: u64,
}

impl Appearance {
    /// The scanner's own appearance: changes nothing.
    pub fn none() -> Appearance {
        Appearance {
            gamma: 1.0,
            slice_blend: 0.0,
            low_resolution: 1.0,
            blur_sigma: 0.0,
            noise_sd: 0.0,
            noise_seed: 0,
        }
    }

    /// Draws an appearance from `[data]`'s ranges.
    pub fn sample(config: &DataConfig, rng: &mut impl Rng) -> Appearance {
        let mut uniform = |[lo, hi]: [f32; 2]| {
            if hi > lo {
                rng.random_range(lo..=hi)
            } else {
                lo
            }
        };
        let gamma = uniform(config.gamma);
        let slice_blend = uniform(config.slice_blend);
        let low_resolution = uniform(config.low_resolution);
        let blur_sigma = uniform(config.blur_sigma);
        let noise_sd = uniform(config.noise_sd);
        // Drawn only when used, so that a config without noise keeps its random stream.
        let noise_seed = if noise_sd > 0.0 { rng.random() } else { 0 };
        Appearance {
            gamma,
            slice_blend,
            low_resolution,
            blur_sigma,
            noise_sd,
            noise_seed,
        }
    }

    /// Changes the image of `sample` (the mask stays: the anatomy is the same).
    pub fn apply(&self, sample: &mut Sample) {
        let (channels, h, w) = sample.image.dim();
        if self.slice_blend > 0.0 && channels >= 3 {
            let original = sample.image.clone();
            let b = self.slice_blend;
            for c in 0..channels {
                // An end channel stands in for its missing neighbour.
                let below = original.index_axis(Axis(0), c.saturating_sub(1));
                let above = original.index_axis(Axis(0), (c + 1).min(channels - 1));
                let centre = original.index_axis(Axis(0), c);
                let mut out = sample.image.index_axis_mut(Axis(0), c);
                ndarray::Zip::from(&mut out)
                    .and(&centre)
                    .and(&below)
                    .and(&above)
                    .for_each(|o, &m, &l, &u| *o = (1.0 - b) * m + 0.5 * b * (l + u));
            }
        }
        if self.low_resolution > 1.0 {
            let coarse = [h, w].map(|n| ((n as f32 / self.low_resolution).round() as usize).max(2));
            // Smoothed first: the antialiasing filter a scanner's coarser grid would have.
            let kernel = gaussian_kernel(self.low_resolution / 2.0);
            for mut plane in sample.image.axis_iter_mut(Axis(0)) {
                let smooth = blur_2d(&plane.to_owned(), &kernel);
                let small =
                    resize_bilinear(smooth.as_slice().expect("standard layout"), [h, w], coarse);
                let back = resize_bilinear(&small, coarse, [h, w]);
                plane.iter_mut().zip(back).for_each(|(o, v)| *o = v);
            }
        }
        if self.blur_sigma > 0.0 {
            let kernel = gaussian_kernel(self.blur_sigma);
            for mut plane in sample.image.axis_iter_mut(Axis(0)) {
                let blurred = blur_2d(&plane.to_owned(), &kernel);
                plane.assign(&blurred);
            }
        }
        if self.gamma != 1.0 {
            let (lo, hi) = sample
                .image
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            if hi > lo {
                let range = hi - lo;
                sample.image.mapv_inplace(|v| {
                    lo + range * ((v - lo) / range).clamp(0.0, 1.0).powf(self.gamma)
                });
            }
        }
        if self.noise_sd > 0.0 {
            let mut rng = ChaCha8Rng::seed_from_u64(self.noise_seed);
            for v in sample.image.iter_mut() {
                // Box–Muller: a standard normal from two uniforms.
                let u: f32 = 1.0 - rng.random::<f32>();
                let t: f32 = rng.random();
                *v += self.noise_sd * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * t).cos();
            }
        }
    }
}

/// A displacement field as imgaug's ElasticTransformation draws it: uniform noise in [−1, 1],
/// smoothed by a Gaussian of `sigma` pixels (reflecting at the borders), times `alpha`.
fn elastic_field(size: usize, alpha: f32, sigma: f32, rng: &mut impl Rng) -> Array2<f32> {
    let noise = Array2::from_shape_simple_fn((size, size), || rng.random_range(-1.0f32..=1.0));
    let mut field = blur_2d(&noise, &gaussian_kernel(sigma));
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

/// `kernel` within each row, then within each column: a separable 2D blur.
fn blur_2d(image: &Array2<f32>, kernel: &[f32]) -> Array2<f32> {
    blur_axis(&blur_axis(image, kernel, Axis(1)), kernel, Axis(0))
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
