//! `[data]`: what the network sees and how training samples are drawn.

use ct_io::config::{Invalid, Section};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Neighbouring slices on each side used as extra input channels: C = 2 x context + 1
    /// (0, the reference: one slice).
    pub context: usize,
    /// Augment training samples (never validation ones).
    pub augment: bool,
    /// Rotation drawn uniformly from ±`rotation_deg`.
    pub rotation_deg: f32,
    /// Isotropic scale drawn uniformly from `[lo, hi]`.
    pub scale: [f32; 2],
    /// Translation drawn per axis uniformly from ±`translation` x the image size.
    pub translation: f32,
    /// Elastic deformation strength in pixels, drawn uniformly from `[lo, hi]` (0 = off).
    pub elastic_alpha: [f32; 2],
    /// Smoothness of the elastic displacement field in pixels, drawn from `[lo, hi]`.
    pub elastic_sigma: [f32; 2],
    /// Mirror left-right with probability 0.5.
    pub flip_lr: bool,
    /// Mirror front-back with probability 0.5. With `flip_lr`, the network sees the four mirror
    /// images that `[eval] tta = "flip"` averages (nnU-Net mirrors in training as in testing);
    /// a network that never saw them is misled by them.
    pub flip_ap: bool,
    /// Multiply intensities by 1 + u and add v, u, v drawn from ±`intensity_jitter` (0 = off).
    pub intensity_jitter: f32,
    /// Domain randomisation (training only, with `augment`), each drawn uniformly from `[lo, hi]`:
    /// a gamma on the image rescaled to [0, 1] by its own range (1 = off)...
    pub gamma: [f32; 2],
    /// ...the weight of each neighbouring slice mixed into a channel, as thicker slices would
    /// (0 = off; needs `context` ≥ 1)...
    pub slice_blend: [f32; 2],
    /// ...a factor the slice is shrunk by and enlarged back, a coarser scan (1 = off)...
    pub low_resolution: [f32; 2],
    /// ...a Gaussian blur in pixels, a softer reconstruction kernel (0 = off)...
    pub blur_sigma: [f32; 2],
    /// ...and the standard deviation of added Gaussian noise, in normalised units (0 = off).
    pub noise_sd: [f32; 2],
    /// Target fraction of tumour slices among sampled training slices (the reference: 0.5);
    /// 0 samples every slice with the same weight.
    pub tumour_fraction: f64,
    /// How far the tumour draws are shared out per lesion rather than per slice (0: per slice,
    /// the reference, so large tumours dominate; 1: every lesion, a run of tumour slices, draws
    /// as often); above 0 a tumour patch also centres on a lesion of its slice chosen uniformly.
    pub lesion_balance: f64,
    /// Training samples per epoch, drawn with replacement; 0 = the number of training slices.
    pub samples_per_epoch: usize,
    /// Train on square patches of this many pixels cut from the (augmented) slices, a tumour
    /// slice's patch always holding some of its tumour (nnU-Net's foreground oversampling); the
    /// network, fully convolutional, still validates and predicts on whole slices. 0 = whole
    /// slices (the reference).
    pub patch_size: usize,
    /// Threads preparing batches; 0 = one per core.
    pub workers: usize,
    /// Batches prepared ahead of the trainer.
    pub prefetch: usize,
    /// Seed of sampling and augmentation.
    pub seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            context: 0,
            augment: true,
            rotation_deg: 45.0,
            scale: [0.85, 1.15],
            translation: 0.15,
            elastic_alpha: [0.0, 40.0],
            elastic_sigma: [4.0, 8.0],
            flip_lr: false,
            flip_ap: false,
            intensity_jitter: 0.0,
            gamma: [1.0, 1.0],
            slice_blend: [0.0, 0.0],
            low_resolution: [1.0, 1.0],
            blur_sigma: [0.0, 0.0],
            noise_sd: [0.0, 0.0],
            tumour_fraction: 0.5,
            lesion_balance: 0.0,
            samples_per_epoch: 0,
            patch_size: 0,
            workers: 0,
            prefetch: 4,
            seed: 42,
        }
    }
}

fn range_ok(r: [f32; 2], min: f32) -> bool {
    r[0].is_finite() && r[1].is_finite() && min <= r[0] && r[0] <= r[1]
}

/// `[lo, hi]` with `min <= lo <= hi <= max`, or the key's error.
fn range_within(key: &'static str, r: [f32; 2], min: f32, max: f32) -> Result<(), Invalid> {
    if range_ok(r, min) && r[1] <= max {
        Ok(())
    } else {
        Err(Invalid::new(
            key,
            format!("must be [lo, hi] with {min} <= lo <= hi <= {max}"),
        ))
    }
}

impl Section for DataConfig {
    const NAME: &'static str = "data";
    fn validate(&self) -> Result<(), Invalid> {
        if self.context > 16 {
            return Err(Invalid::new("context", "must be 0..=16 slices"));
        }
        if !(0.0..=180.0).contains(&self.rotation_deg) {
            return Err(Invalid::new("rotation_deg", "must be 0..=180"));
        }
        if !range_ok(self.scale, 0.01) {
            return Err(Invalid::new("scale", "must be [lo, hi] with 0 < lo <= hi"));
        }
        if !(0.0..=1.0).contains(&self.translation) {
            return Err(Invalid::new(
                "translation",
                "must be 0..=1 (a fraction of the size)",
            ));
        }
        if !range_ok(self.elastic_alpha, 0.0) {
            return Err(Invalid::new(
                "elastic_alpha",
                "must be [lo, hi] with 0 <= lo <= hi",
            ));
        }
        if !range_ok(self.elastic_sigma, 0.1) || self.elastic_sigma[1] > 64.0 {
            return Err(Invalid::new(
                "elastic_sigma",
                "must be [lo, hi] with 0.1 <= lo <= hi <= 64",
            ));
        }
        if !(0.0..=1.0).contains(&self.intensity_jitter) {
            return Err(Invalid::new("intensity_jitter", "must be 0..=1"));
        }
        range_within("gamma", self.gamma, 0.1, 10.0)?;
        range_within("slice_blend", self.slice_blend, 0.0, 1.0)?;
        range_within("low_resolution", self.low_resolution, 1.0, 8.0)?;
        range_within("blur_sigma", self.blur_sigma, 0.0, 16.0)?;
        range_within("noise_sd", self.noise_sd, 0.0, 1.0)?;
        if !(0.0..1.0).contains(&self.tumour_fraction) {
            return Err(Invalid::new("tumour_fraction", "must be in [0, 1)"));
        }
        if !(0.0..=1.0).contains(&self.lesion_balance) {
            return Err(Invalid::new("lesion_balance", "must be in [0, 1]"));
        }
        if self.patch_size != 0 && !(8..=2048).contains(&self.patch_size) {
            return Err(Invalid::new(
                "patch_size",
                "must be 0 (whole slices) or 8..=2048 pixels",
            ));
        }
        if self.prefetch == 0 {
            return Err(Invalid::new("prefetch", "must be at least 1"));
        }
        Ok(())
    }
}
