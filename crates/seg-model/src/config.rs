//! `[model]`: the U-Net's shape. The defaults are the reference network.

use ct_io::config::{Invalid, Section};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upsampling {
    /// Bilinear x2, align_corners = false (the reference, PyTorch's default).
    Bilinear,
    /// A learned 2x2 transposed convolution, stride 2.
    Transposed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Input channels: 1, or 2k + 1 for 2.5D input with k neighbours each side.
    pub in_channels: usize,
    /// Channels of the first level; each level down doubles them (the reference: 64).
    pub width: usize,
    /// Levels, so depth - 1 max-pools (the reference: 4).
    pub depth: usize,
    pub upsampling: Upsampling,
    /// Batch norm after each convolution (off in the reference).
    pub batch_norm: bool,
    /// Seed of the initial weights (PyTorch's default initialisation scheme).
    pub init_seed: u64,
    /// Initial probability of tumour at every pixel: the output layer's bias starts at
    /// log(p / (1 − p)), so training does not first spend its steps pushing every pixel from 0.5
    /// down to the rare-foreground level. None: PyTorch's default initialisation (the reference).
    pub initial_probability: Option<f64>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            in_channels: 1,
            width: 64,
            depth: 4,
            upsampling: Upsampling::Bilinear,
            batch_norm: false,
            init_seed: 0,
            initial_probability: None,
        }
    }
}

impl ModelConfig {
    /// Input height and width must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        1 << (self.depth - 1)
    }
}

impl Section for ModelConfig {
    const NAME: &'static str = "model";
    fn validate(&self) -> Result<(), Invalid> {
        if !(1..=64).contains(&self.in_channels) {
            return Err(Invalid::new("in_channels", "must be 1..=64"));
        }
        if !(1..=1024).contains(&self.width) {
            return Err(Invalid::new("width", "must be 1..=1024"));
        }
        if !(2..=7).contains(&self.depth) {
            return Err(Invalid::new("depth", "must be 2..=7 levels"));
        }
        if let Some(p) = self.initial_probability
            && !(p > 0.0 && p < 1.0)
        {
            return Err(Invalid::new("initial_probability", "must be in (0, 1)"));
        }
        Ok(())
    }
}
