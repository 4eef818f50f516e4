//! Batches as candle tensors, prepared on worker threads ahead of the trainer.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use anyhow::Context;
use candle_core::{Device, Tensor};
use ct_preprocess::mask::Components;
use ndarray::{Array2, Axis, s};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::augment::{Appearance, Transform};
use crate::config::DataConfig;
use crate::dataset::{Sample, SliceDataset};
use crate::mix;
use crate::sampler::{WeightedSampler, lesion_shares};

/// A batch: `images` `[B, C, H, W]` f32, `masks` `[B, 1, H, W]` f32 (0 or 1), and the dataset
/// indices of its samples.
#[derive(Debug)]
pub struct Batch {
    pub images: Tensor,
    pub masks: Tensor,
    pub indices: Vec<usize>,
}

/// One planned sample: a dataset index and, for a training sample, the seed of its random
/// augmentation and patch (None: as stored).
type Planned = (usize, Option<u64>);

/// Produces batches on a background thread, `prefetch` ahead, each assembled by a pool of
/// `workers` threads. The content of every batch depends only on the plan, never on timing.
pub struct Loader {
    dataset: Arc<SliceDataset>,
    config: DataConfig,
    device: Device,
    pool: Arc<rayon::ThreadPool>,
}

impl Loader {
    pub fn new(
        dataset: Arc<SliceDataset>,
        config: &DataConfig,
        device: Device,
    ) -> anyhow::Result<Loader> {
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("loader-{i}"))
            .build()
            .context("cannot start loader threads")?;
        Ok(Loader {
            dataset,
            config: config.clone(),
            device,
            pool: Arc::new(pool),
        })
    }

    /// The training sampler of `[data]`: tumour oversampling over this dataset's slices, shared
    /// among lesions as `lesion_balance` says.
    pub fn sampler(&self) -> anyhow::Result<WeightedSampler> {
        let slices: Vec<(usize, usize, bool)> = self
            .dataset
            .items()
            .iter()
            .map(|i| (i.case, i.slice, i.tumour_voxels > 0))
            .collect();
        let samples = match self.config.samples_per_epoch {
            0 => self.dataset.len(),
            n => n,
        };
        let shares = lesion_shares(&slices, self.config.lesion_balance);
        WeightedSampler::for_tumour_shares(&shares, self.config.tumour_fraction, samples)
    }

    /// The training batches of `epoch`: sampled slices, augmented when `[data] augment` is on and
    /// cut to patches when `patch_size` is set. Full batches only (a last partial batch is dropped).
    pub fn train_epoch(&self, sampler: &WeightedSampler, epoch: u64, batch_size: usize) -> Batches {
        self.train_epoch_from(sampler, epoch, batch_size, 0)
    }

    /// The batches of `epoch` from batch `first` on: the same batches as [`Loader::train_epoch`]
    /// yields after its first `first`, without making those (a resumed epoch continues here).
    pub fn train_epoch_from(
        &self,
        sampler: &WeightedSampler,
        epoch: u64,
        batch_size: usize,
        first: usize,
    ) -> Batches {
        let seed = self.config.seed;
        let draws = sampler.epoch(seed, epoch);
        let plan: Vec<Vec<Planned>> = draws
            .chunks_exact(batch_size)
            .enumerate()
            .skip(first)
            .map(|(b, chunk)| {
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, &index)| {
                        let position = (b * batch_size + i) as u64;
                        (index, Some(mix(seed, epoch, position)))
                    })
                    .collect()
            })
            .collect();
        self.run(plan)
    }

    /// Every slice once, in order, as stored (for validation); the last batch may be smaller.
    pub fn in_order(&self, batch_size: usize) -> Batches {
        let indices: Vec<usize> = (0..self.dataset.len()).collect();
        let plan = indices
            .chunks(batch_size)
            .map(|chunk| chunk.iter().map(|&i| (i, None)).collect())
            .collect();
        self.run(plan)
    }

    fn run(&self, plan: Vec<Vec<Planned>>) -> Batches {
        let (sender, receiver) = sync_channel(self.config.prefetch);
        let dataset = Arc::clone(&self.dataset);
        let pool = Arc::clone(&self.pool);
        let config = self.config.clone();
        let device = self.device.clone();
        let producer = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || {
                for batch in plan {
                    let made = pool.install(|| make_batch(&dataset, &config, &device, &batch));
                    let failed = made.is_err();
                    if sender.send(made).is_err() || failed {
                        return; // the consumer is gone, or it has the error
                    }
                }
            })
            .expect("spawning the loader thread");
        Batches {
            receiver,
            producer: Some(producer),
        }
    }
}

/// Loads, augments and stacks one batch (samples in parallel on the current pool).
fn make_batch(
    dataset: &SliceDataset,
    config: &DataConfig,
    device: &Device,
    plan: &[Planned],
) -> anyhow::Result<Batch> {
    let samples: Vec<Sample> = plan
        .par_iter()
        .map(|&(index, seed)| prepare(dataset, config, index, seed))
        .collect::<anyhow::Result<_>>()?;
    let (b, c) = (samples.len(), dataset.channels());
    let s = samples.first().map_or(dataset.size(), |x| x.mask.dim().0);
    let mut images: Vec<f32> = Vec::with_capacity(b * c * s * s);
    let mut masks = Vec::with_capacity(b * s * s);
    for sample in &samples {
        images.extend(sample.image.iter());
        masks.extend(sample.mask.iter().map(|&m| f32::from(m)));
    }
    Ok(Batch {
        images: Tensor::from_vec(images, (b, c, s, s), device)?,
        masks: Tensor::from_vec(masks, (b, 1, s, s), device)?,
        indices: plan.iter().map(|p| p.0).collect(),
    })
}

/// One sample as the trainer sees it: with a `seed`, augmented (when `[data] augment` is on) by
/// the transform drawn from it, then cut to a patch (when `patch_size` is set).
pub fn prepare(
    dataset: &SliceDataset,
    config: &DataConfig,
    index: usize,
    seed: Option<u64>,
) -> anyhow::Result<Sample> {
    let mut sample = dataset.load(index)?;
    if let Some(seed) = seed {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        if config.augment {
            sample =
                Transform::sample(config, dataset.size(), &mut rng).apply(&sample, dataset.air());
            Appearance::sample(config, &mut rng).apply(&mut sample);
        }
        if config.patch_size > 0 {
            let by_lesion = config.lesion_balance > 0.0;
            sample = patch(&sample, config.patch_size, by_lesion, &mut rng);
        }
    }
    Ok(sample)
}

/// A `size` x `size` window of `sample`: around a tumour pixel (at a random place in the window)
/// when the sample has tumour, anywhere otherwise. The pixel is drawn uniformly from all tumour
/// pixels, or `by_lesion` from one of the slice's tumour components drawn uniformly, so that a
/// small nodule beside a large mass is centred as often as the mass.
fn patch(sample: &Sample, size: usize, by_lesion: bool, rng: &mut impl Rng) -> Sample {
    let (h, w) = sample.mask.dim();
    let size = size.min(h).min(w);
    let tumour: Vec<(usize, usize)> = if by_lesion {
        pixels_of_one_component(&sample.mask, rng)
    } else {
        sample
            .mask
            .indexed_iter()
            .filter(|(_, m)| **m != 0)
            .map(|(at, _)| at)
            .collect()
    };
    let (top, left) = match tumour.len() {
        0 => (
            rng.random_range(0..=h - size),
            rng.random_range(0..=w - size),
        ),
        n => {
            let (r, c) = tumour[rng.random_range(0..n)];
            (
                r.saturating_sub(rng.random_range(0..size)).min(h - size),
                c.saturating_sub(rng.random_range(0..size)).min(w - size),
            )
        }
    };
    Sample {
        image: sample
            .image
            .slice(s![.., top..top + size, left..left + size])
            .to_owned(),
        mask: sample
            .mask
            .slice(s![top..top + size, left..left + size])
            .to_owned(),
    }
}

/// The pixels of one connected tumour component of `mask` (8-connected), drawn uniformly; none
/// (and no draw) when the mask is empty.
fn pixels_of_one_component(mask: &Array2<u8>, rng: &mut impl Rng) -> Vec<(usize, usize)> {
    let components = Components::of(mask.view().insert_axis(Axis(2)));
    if components.count() == 0 {
        return Vec::new();
    }
    let chosen = rng.random_range(0..components.count()) as u32 + 1;
    let mut pixels = Vec::new();
    components.for_each_voxel(|[r, c, _], label| {
        if label == chosen {
            pixels.push((r, c));
        }
    });
    pixels
}

/// The batches of one pass, in plan order. Dropping it stops the background work.
pub struct Batches {
    receiver: Receiver<anyhow::Result<Batch>>,
    producer: Option<JoinHandle<()>>,
}

impl Iterator for Batches {
    type Item = anyhow::Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.receiver.recv().ok()
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // Unblock the producer (its next send fails), then wait for it.
        let (_, dead) = sync_channel(0);
        drop(std::mem::replace(&mut self.receiver, dead));
        if let Some(producer) = self.producer.take() {
            let _ = producer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    /// How often a 16-pixel tumour patch holds a 2x2 nodule beside a 20x20 mass.
    fn nodule_share(by_lesion: bool) -> f64 {
        let mut mask = Array2::<u8>::zeros((96, 96));
        mask.slice_mut(s![4..24, 4..24]).fill(1);
        mask.slice_mut(s![80..82, 80..82]).fill(1);
        // The image marks the nodule alone, so a patch shows whether it holds the nodule.
        let mut image = Array3::<f32>::zeros((1, 96, 96));
        image.slice_mut(s![.., 80..82, 80..82]).fill(1.0);
        let sample = Sample { image, mask };
        let trials = 4000;
        let hits = (0..trials)
            .filter(|&seed| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let cut = patch(&sample, 16, by_lesion, &mut rng);
                cut.image.sum() > 0.0
            })
            .count();
        hits as f64 / trials as f64
    }

    #[test]
    fn a_lesion_balanced_patch_centres_on_the_nodule_as_often_as_on_the_mass() {
        let pixel_uniform = nodule_share(false);
        assert!(pixel_uniform < 0.03, "by pixel: {pixel_uniform}");
        let lesion_uniform = nodule_share(true);
        assert!(
            (lesion_uniform - 0.5).abs() < 0.04,
            "by lesion: {lesion_uniform}"
        );
    }
}
