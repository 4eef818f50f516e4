//! `seg-data`: the training data stage. Serves the slices of one split of ct-preprocess's
//! dataset as candle batches: the CT slice (and optionally its neighbours, 2.5D) and its mask,
//! augmented jointly for training (random affine + elastic deformation, air outside), drawn by a
//! weighted sampler that oversamples tumour slices, and prepared on worker threads ahead of the
//! trainer. Deterministic: a seed and an epoch fix the slices, their order and their augmentation,
//! whatever the number of threads.

pub mod augment;
pub mod config;
pub mod dataset;
pub mod loader;
pub mod sampler;

pub use config::DataConfig;
pub use dataset::{Sample, SliceDataset};
pub use loader::{Batch, Batches, Loader};
pub use sampler::WeightedSampler;

/// The seed of one draw: (seed, epoch, position), independent of the thread that makes it.
pub fn mix(seed: u64, epoch: u64, position: u64) -> u64 {
    ct_io::seed::derive(seed, &[epoch, position])
}
