//! `[train]`: how the U-Net is trained. The defaults are the reference's: Adam 1e-4 without
//! weight decay, BCE with logits, batch 8, 30 epochs.

use ct_io::config::{Invalid, Section};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Binary cross-entropy with logits (the reference: it beat Dice loss).
    Bce,
    /// Soft Dice over the batch.
    Dice,
    /// The sum of both.
    BceDice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// lr x (1 + cos(pi x progress)) / 2
    Cosine,
    /// lr x (1 − progress)^0.9 (nnU-Net's)
    Poly,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The run folder: `work_dir/runs/<run>/`.
    pub run: String,
    /// For a K-fold dataset: the fold this training holds out, trained into `runs/<run>/fold_<k>/`
    /// (`seg-train --fold k`). Unset for a single split.
    pub fold: Option<usize>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub loss: Loss,
    pub schedule: Schedule,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
    /// Validate and checkpoint an exponential moving average of the weights, updated after
    /// every step with this decay (0 = off, the reference; 0.999 averages about the last 1000
    /// steps).
    pub ema_decay: f64,
    /// Validate every this many epochs (and always after the last).
    pub validate_every: usize,
    /// Probability above which a pixel is tumour, for the validation Dice.
    pub threshold: f64,
    /// `cpu`, `cuda:N` or `auto`.
    pub device: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            run: "default".into(),
            fold: None,
            epochs: 30,
            batch_size: 8,
            lr: 1e-4,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            loss: Loss::Bce,
            schedule: Schedule::Constant,
            grad_clip: 0.0,
            ema_decay: 0.0,
            validate_every: 1,
            threshold: 0.5,
            device: "cpu".into(),
        }
    }
}

impl Section for TrainConfig {
    const NAME: &'static str = "train";
    fn validate(&self) -> Result<(), Invalid> {
        ct_io::layout::check_run_name(&self.run)?;
        if !(1..=100_000).contains(&self.epochs) {
            return Err(Invalid::new("epochs", "must be 1..=100000"));
        }
        if !(1..=4096).contains(&self.batch_size) {
            return Err(Invalid::new("batch_size", "must be 1..=4096"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 10.0) {
            return Err(Invalid::new(
                "lr",
                "must be a positive learning rate below 10",
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Invalid::new("weight_decay", "must be ≥ 0"));
        }
        for (key, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Invalid::new(key, "must be in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Invalid::new("eps", "must be > 0"));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(Invalid::new("grad_clip", "must be ≥ 0 (0 = off)"));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(Invalid::new("ema_decay", "must be in [0, 1) (0 = off)"));
        }
        if self.validate_every == 0 {
            return Err(Invalid::new("validate_every", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.threshold) || self.threshold == 0.0 {
            return Err(Invalid::new("threshold", "must be in (0, 1)"));
        }
        if seg_model::parse_device(&self.device).is_err() && !self.device.starts_with("cuda") {
            return Err(Invalid::new("device", "must be cpu, cuda:N or auto"));
        }
        Ok(())
    }
}
