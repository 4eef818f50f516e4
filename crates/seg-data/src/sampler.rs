//! Which slices an epoch trains on: drawn with replacement, each with probability proportional to
//! its weight, as PyTorch's `WeightedRandomSampler(weights, num_samples, replacement=True)`.

use anyhow::ensure;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
pub struct WeightedSampler {
    weights: Vec<f64>,
    cumulative: Vec<f64>,
    samples: usize,
}

impl WeightedSampler {
    pub fn new(weights: Vec<f64>, samples: usize) -> anyhow::Result<WeightedSampler> {
        ensure!(!weights.is_empty(), "no slices to sample from");
        ensure!(
            weights.iter().all(|w| w.is_finite() && *w >= 0.0),
            "sampling weights must be finite and non-negative"
        );
        let cumulative: Vec<f64> = weights
            .iter()
            .scan(0.0, |sum, w| {
                *sum += w;
                Some(*sum)
            })
            .collect();
        ensure!(
            *cumulative.last().expect("non-empty") > 0.0,
            "sampling weights sum to zero"
        );
        Ok(WeightedSampler {
            weights,
            cumulative,
            samples,
        })
    }

    /// Weights that make tumour slices about `fraction` of the draws. At 0.5 this is the
    /// reference's weighting: each tumour slice weighs #empty / #tumour, each empty slice 1.
    /// With `fraction` 0, or no tumour (or no empty) slice, every slice weighs the same.
    pub fn for_tumour_fraction(
        has_tumour: &[bool],
        fraction: f64,
        samples: usize,
    ) -> anyhow::Result<WeightedSampler> {
        let shares: Vec<f64> = has_tumour.iter().map(|&t| f64::from(u8::from(t))).collect();
        WeightedSampler::for_tumour_shares(&shares, fraction, samples)
    }

    /// As [`WeightedSampler::for_tumour_fraction`], the tumour slices' part of the draws shared
    /// among them in proportion to `shares` (0: a slice without tumour).
    pub fn for_tumour_shares(
        shares: &[f64],
        fraction: f64,
        samples: usize,
    ) -> anyhow::Result<WeightedSampler> {
        ensure!(
            shares.iter().all(|w| w.is_finite() && *w >= 0.0),
            "tumour shares must be finite and non-negative"
        );
        let tumour: f64 = shares.iter().sum();
        let empty = shares.iter().filter(|s| **s == 0.0).count();
        let weights = if fraction > 0.0 && tumour > 0.0 && empty > 0 {
            let tumour_part = fraction / (1.0 - fraction) * empty as f64;
            shares
                .iter()
                .map(|&s| {
                    if s > 0.0 {
                        tumour_part * s / tumour
                    } else {
                        1.0
                    }
                })
                .collect()
        } else {
            vec![1.0; shares.len()]
        };
        WeightedSampler::new(weights, samples)
    }

    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Draws per epoch.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The draws of one epoch: the same for the same seed and epoch.
    pub fn epoch(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(crate::mix(seed, epoch, u64::MAX));
        let total = *self.cumulative.last().expect("non-empty");
        (0..self.samples)
            .map(|_| {
                let u = rng.random::<f64>() * total;
                self.cumulative
                    .partition_point(|&c| c <= u)
                    .min(self.weights.len() - 1)
            })
            .collect()
    }
}

/// Each slice's tumour share when a lesion, taken as a run of consecutive tumour slices of one
/// case, should weigh `length^(1 - balance)` in all: at 0 every tumour slice weighs the same (a
/// 40 mm mass then draws ten times a 4 mm nodule's samples), at 1 every lesion does. `slices`
/// holds `(case, slice, has tumour)` in case-then-slice order; slices without tumour get 0.
pub fn lesion_shares(slices: &[(usize, usize, bool)], balance: f64) -> Vec<f64> {
    let mut shares = vec![0.0; slices.len()];
    let mut start = 0;
    while start < slices.len() {
        let (case, slice, tumour) = slices[start];
        if !tumour {
            start += 1;
            continue;
        }
        let length = slices[start..]
            .iter()
            .zip(slice..)
            .take_while(|((c, s, t), expected)| *c == case && *s == *expected && *t)
            .count();
        let share = (length as f64).powf(-balance);
        shares[start..start + length].fill(share);
        start += length;
    }
    shares
}
