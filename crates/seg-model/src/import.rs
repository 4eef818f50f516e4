//! Weights of the reference PyTorch U-Net → our checkpoint. Reads a `.safetensors` state_dict, a
//! PyTorch `.pt`/`.pth` state_dict, or a PyTorch Lightning `.ckpt` (its `state_dict`, names
//! prefixed `model.`); the network's shape is read off the tensors.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};

use crate::config::{ModelConfig, Upsampling};
use crate::model::{CheckpointInfo, Model};

/// Reads the tensors of a PyTorch or safetensors weights file, names without `model.`.
pub fn read_torch_weights(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let tensors: Vec<(String, Tensor)> = match extension {
        "safetensors" => candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("{}: not a readable safetensors file", path.display()))?
            .into_iter()
            .collect(),
        "pt" | "pth" | "bin" | "ckpt" => {
            // A bare state_dict, or a dict holding one under "state_dict" (Lightning checkpoints).
            let bare = candle_core::pickle::read_all(path).unwrap_or_default();
            if bare.iter().any(|(n, _)| n.ends_with(".weight")) {
                bare
            } else {
                candle_core::pickle::read_all_with_key(path, Some("state_dict")).with_context(
                    || format!("{}: not a readable PyTorch checkpoint", path.display()),
                )?
            }
        }
        _ => bail!(
            "{}: unknown weights format (expected .safetensors, .pt, .pth or .ckpt)",
            path.display()
        ),
    };
    if tensors.is_empty() {
        bail!("{}: no tensors found", path.display());
    }
    Ok(tensors
        .into_iter()
        .map(|(name, t)| {
            (
                name.strip_prefix("model.")
                    .map(str::to_string)
                    .unwrap_or(name),
                t,
            )
        })
        .collect())
}

/// The reference network's `[model]` as its weights imply: width and input channels from
/// `layer1.step.0.weight`, depth from the head `layer{2 depth}`.
pub fn infer_config(
    tensors: &HashMap<String, Tensor>,
    source: &Path,
) -> anyhow::Result<ModelConfig> {
    let first = tensors.get("layer1.step.0.weight").with_context(|| {
        format!(
            "{}: no layer1.step.0.weight: not the reference U-Net's weights",
            source.display()
        )
    })?;
    let (width, in_channels, _, _) = first.dims4()?;
    let head_layer = (2..=14)
        .rev()
        .find(|n| {
            tensors
                .get(&format!("layer{n}.weight"))
                .is_some_and(|t| t.dims().first() == Some(&1))
        })
        .with_context(|| format!("{}: no 1x1 head layer (layerN.weight)", source.display()))?;
    Ok(ModelConfig {
        in_channels,
        width,
        depth: head_layer / 2,
        upsampling: Upsampling::Bilinear,
        batch_norm: tensors.keys().any(|n| n.contains("running_mean")),
        init_seed: 0,
        initial_probability: None,
    })
}

/// Converts `weights` into a checkpoint folder `out`.
pub fn import_torch(weights: &Path, out: &Path) -> anyhow::Result<CheckpointInfo> {
    let tensors = read_torch_weights(weights)?;
    let config = infer_config(&tensors, weights)?;
    let model = Model::new(&config, &Device::Cpu)?;
    model.assign(tensors, weights)?;
    model.save(
        out,
        None,
        serde_json::json!({ "imported_from": weights.display().to_string() }),
    )
}
