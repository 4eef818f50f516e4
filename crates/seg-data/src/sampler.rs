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
        let tumour = has_tumour.iter().filter(|t| **t).count();
        let empty = has_tumour.len() - tumour;
        let tumour_weight = if fraction > 0.0 && tumour > 0 && empty > 0 {
            fraction / (1.0 - fraction) * empty as f64 / tumour as f64
        } else {
            1.0
        };
        let weights = has_tumour
            .iter()
            .map(|&t| if t { tumour_weight } else { 1.0 })
            .collect();
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
