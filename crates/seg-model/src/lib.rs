//! `seg-model`: the model stage's library. The 2D U-Net on Candle — at its defaults exactly the
//! reference network — with the ops candle 0.11 gets wrong replaced by exact ones (max-pool
//! gradient, bilinear upsampling backward, stable BCE), deterministic initialisation, self-describing
//! checkpoints (safetensors + JSON sidecar), and import of weights trained with the reference
//! PyTorch project.

pub mod config;
pub mod conv;
pub mod device;
pub mod import;
pub mod memory;
pub mod model;
pub mod norm;
pub mod ops;
pub mod pointwise;
pub mod resample;
pub mod threads;
pub mod unet;
pub mod winograd;

pub use config::{ModelConfig, Upsampling};
pub use device::parse_device;
pub use model::{CheckpointInfo, Model};
pub use unet::UNet;
