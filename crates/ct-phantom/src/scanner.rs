//! What the scanner adds to the anatomy: the blur of its point spread function in-plane and of
//! the slice profile along z (partial volume), and noise, white or with the blotchy grain of a
//! soft reconstruction kernel.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use ct_io::seed::splitmix64 as mix;

/// One case's scanner.
pub(crate) struct Scanner {
    /// In-plane blur (mm, Gaussian sigma).
    psf_mm: f64,
    /// Weight of each neighbouring slice in a slice (the slice profile's tails).
    slice_weight: f32,
    /// Noise standard deviation (HU).
    pub noise_sd: f32,
    /// Noise smoothed in-plane (a soft kernel) rather than white (a sharp one).
    grainy: bool,
}

impl Scanner {
    pub fn sample(rng: &mut ChaCha8Rng) -> Scanner {
        Scanner {
            psf_mm: rng.random_range(0.4..0.9),
            slice_weight: rng.random_range(0.1..0.3),
            noise_sd: rng.random_range(8.0..35.0),
            grainy: rng.random_bool(0.5),
        }
    }

    /// Blurs `hu` (x fastest, then y, then z) in place.
    pub fn blur(&self, hu: &mut [f32], shape: [usize; 3], spacing: [f64; 3]) {
        let in_plane = |s: f64| {
            let sigma = self.psf_mm / s;
            (-1.0 / (2.0 * sigma * sigma)).exp() as f32
        };
        let weights = [
            in_plane(spacing[0]),
            in_plane(spacing[1]),
            self.slice_weight,
        ];
        for (axis, w) in weights.into_iter().enumerate() {
            // [w, 1, w] normalised; along z the profile's tails are given directly.
            let (side, centre) = if axis == 2 {
                (w, 1.0 - 2.0 * w)
            } else {
                (w / (1.0 + 2.0 * w), 1.0 / (1.0 + 2.0 * w))
            };
            smooth_axis(hu, shape, axis, side, centre);
        }
    }

    /// The noise to add to each voxel (x fastest, then y, then z), a pure function of `seed`.
    pub fn noise(&self, shape: [usize; 3], seed: u64) -> Vec<f32> {
        let total = shape.iter().product::<usize>();
        let mut noise: Vec<f32> = (0..total)
            .into_par_iter()
            .map(|n| gaussian(mix(seed ^ n as u64)))
            .collect();
        let mut sd = 1.0;
        if self.grainy {
            smooth_axis(&mut noise, shape, 0, 0.25, 0.5);
            smooth_axis(&mut noise, shape, 1, 0.25, 0.5);
            // Each [1/4, 1/2, 1/4] pass scales white noise's sd by sqrt(3/8).
            sd = 3.0 / 8.0;
        }
        let scale = self.noise_sd / sd;
        noise.par_iter_mut().for_each(|v| *v *= scale);
        noise
    }
}

/// `v[i] = side * (v[i-1] + v[i+1]) + centre * v[i]` along `axis`, the ends repeated.
fn smooth_axis(values: &mut [f32], shape: [usize; 3], axis: usize, side: f32, centre: f32) {
    let [nx, ny, nz] = shape;
    let plane = nx * ny;
    let source = values.to_vec();
    values
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(k, out)| {
            let here = &source[k * plane..(k + 1) * plane];
            match axis {
                0 => {
                    for (row_out, row) in out.chunks_mut(nx).zip(here.chunks(nx)) {
                        for i in 0..nx {
                            let left = row[i.saturating_sub(1)];
                            let right = row[(i + 1).min(nx - 1)];
                            row_out[i] = side * (left + right) + centre * row[i];
                        }
                    }
                }
                1 => {
                    for j in 0..ny {
                        let up = &here[j.saturating_sub(1) * nx..][..nx];
                        let down = &here[(j + 1).min(ny - 1) * nx..][..nx];
                        let row = &here[j * nx..][..nx];
                        for i in 0..nx {
                            out[j * nx + i] = side * (up[i] + down[i]) + centre * row[i];
                        }
                    }
                }
                _ => {
                    let below = &source[k.saturating_sub(1) * plane..][..plane];
                    let above = &source[(k + 1).min(nz - 1) * plane..][..plane];
                    for n in 0..plane {
                        out[n] = side * (below[n] + above[n]) + centre * here[n];
                    }
                }
            }
        });
}

/// Approximately standard normal (sum of four uniforms), from one hash.
fn gaussian(hash: u64) -> f32 {
    let sum: u64 = (0..4).map(|s| (hash >> (16 * s)) & 0xFFFF).sum();
    let mean = 2.0 * 65535.0;
    let sd = (4.0f64 / 12.0).sqrt() * 65535.0;
    ((sum as f64 - mean) / sd) as f32
}
