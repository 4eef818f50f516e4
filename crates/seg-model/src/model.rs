//! A U-Net with its variables: deterministic initialisation, checkpoints, loading weights by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::unet::UNet;

pub use ct_io::layout::{CHECKPOINT_INFO_FILE as INFO_FILE, WEIGHTS_FILE};
pub const FORMAT_VERSION: u32 = 1;

/// The sidecar of a checkpoint: what the weights are and what they were trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub format_version: u32,
    pub model: ModelConfig,
    /// Trainable parameters.
    pub parameters: usize,
    /// The `[preprocess]` settings the model was trained with (prediction must match them).
    pub preprocess: Option<serde_json::Value>,
    /// Anything else the writer wants to keep (training state, provenance).
    #[serde(default)]
    pub extra: serde_json::Value,
}

pub struct Model {
    pub unet: UNet,
    varmap: VarMap,
    device: Device,
}

/// Batch-norm statistics are variables but not trained.
fn is_running_stat(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

impl Model {
    /// A new model with PyTorch's default initialisation (kaiming-uniform with a = sqrt(5) for
    /// weights, U(±1/sqrt(fan_in)) for biases), drawn from `config.init_seed` per parameter name,
    /// so the same seed gives the same weights on every machine.
    pub fn new(config: &ModelConfig, device: &Device) -> anyhow::Result<Model> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let unet = UNet::new(config, vb).context("building the U-Net")?;
        let model = Model {
            unet,
            varmap,
            device: device.clone(),
        };
        let vars = model.named_vars();
        let shapes: HashMap<&str, Vec<usize>> = vars
            .iter()
            .map(|(n, v)| (n.as_str(), v.dims().to_vec()))
            .collect();
        for (name, var) in &vars {
            let Some(prefix) = name
                .strip_suffix(".weight")
                .or_else(|| name.strip_suffix(".bias"))
            else {
                continue;
            };
            let Some(weight) = shapes.get(format!("{prefix}.weight").as_str()) else {
                continue;
            };
            if weight.len() != 4 {
                continue; // batch norm: candle's constants (1, 0) are PyTorch's too
            }
            let fan_in = weight[1] * weight[2] * weight[3];
            let bound = 1.0 / (fan_in as f32).sqrt();
            let mut rng = ChaCha8Rng::seed_from_u64(ct_io::seed::derive(
                config.init_seed,
                &[name_hash(name)],
            ));
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            var.set(&Tensor::from_vec(values, var.dims(), device)?)?;
        }
        if let Some(p) = config.initial_probability {
            let head = format!("layer{}.bias", 2 * config.depth);
            let (_, bias) = vars
                .iter()
                .find(|(n, _)| *n == head)
                .context("the U-Net has an output layer")?;
            let logit = (p / (1.0 - p)).ln() as f32;
            bias.set(&Tensor::full(logit, bias.dims(), device)?)?;
        }
        Ok(model)
    }

    pub fn config(&self) -> &ModelConfig {
        self.unet.config()
    }

    /// Every variable, sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// The trained variables, sorted by name.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.named_vars()
            .into_iter()
            .filter(|(n, _)| !is_running_stat(n))
            .collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.trainable_vars()
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// Sets every variable from `tensors` by name; each must be present with the right shape, and
    /// no other tensor may be there.
    pub fn assign(
        &self,
        mut tensors: HashMap<String, Tensor>,
        source: &Path,
    ) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        for (name, var) in self.named_vars() {
            match tensors.remove(&name) {
                None => missing.push(name),
                Some(t) => {
                    ensure!(
                        t.dims() == var.dims(),
                        "{}: tensor {name} has shape {:?}, the model needs {:?}",
                        source.display(),
                        t.dims(),
                        var.dims()
                    );
                    var.set(&t.to_dtype(DType::F32)?.to_device(&self.device)?)?;
                }
            }
        }
        if !missing.is_empty() {
            bail!(
                "{}: missing tensors {}",
                source.display(),
                missing.join(", ")
            );
        }
        if !tensors.is_empty() {
            let mut extra: Vec<String> = tensors.into_keys().collect();
            extra.sort();
            bail!(
                "{}: tensors the model does not have: {} (is the config right?)",
                source.display(),
                extra.join(", ")
            );
        }
        Ok(())
    }

    /// Writes `dir/model.safetensors` and `dir/checkpoint.json`. The folder is built beside `dir`
    /// and swapped in, so `dir` is always a complete checkpoint (or, for an instant, absent with
    /// the previous one kept as `dir.previous`, which [`Model::load`] falls back to).
    pub fn save(
        &self,
        dir: &Path,
        preprocess: Option<serde_json::Value>,
        extra: serde_json::Value,
    ) -> anyhow::Result<CheckpointInfo> {
        self.save_with(dir, preprocess, extra, &[])
    }

    /// [`Model::save`] with more safetensors files in the same folder (e.g. optimiser state),
    /// written and swapped in together with the weights.
    pub fn save_with(
        &self,
        dir: &Path,
        preprocess: Option<serde_json::Value>,
        extra: serde_json::Value,
        files: &[(&str, &HashMap<String, Tensor>)],
    ) -> anyhow::Result<CheckpointInfo> {
        let info = CheckpointInfo {
            format_version: FORMAT_VERSION,
            model: self.config().clone(),
            parameters: self.parameter_count(),
            preprocess,
            extra,
        };
        let tmp = ct_io::atomic::temporary_path(dir);
        std::fs::create_dir_all(&tmp).with_context(|| format!("{}", tmp.display()))?;
        let result = (|| -> anyhow::Result<()> {
            let tensors: HashMap<String, Tensor> = self
                .named_vars()
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().clone()))
                .collect();
            candle_core::safetensors::save(&tensors, tmp.join(WEIGHTS_FILE))
                .with_context(|| format!("{}: cannot write weights", tmp.display()))?;
            for (name, tensors) in files {
                candle_core::safetensors::save(*tensors, tmp.join(name))
                    .with_context(|| format!("{}: cannot write {name}", tmp.display()))?;
            }
            ct_io::atomic::write_json(&tmp.join(INFO_FILE), &info)?;
            replace_dir(&tmp, dir)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result?;
        Ok(info)
    }

    /// Loads a checkpoint folder written by [`Model::save`].
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<(Model, CheckpointInfo)> {
        let (model, info, _) = Model::load_from(dir, device)?;
        Ok((model, info))
    }

    /// [`Model::load`], also returning the folder actually read (the checkpoint, or its
    /// `.previous` copy after an interrupted save), where files saved beside the weights are.
    pub fn load_from(
        dir: &Path,
        device: &Device,
    ) -> anyhow::Result<(Model, CheckpointInfo, PathBuf)> {
        let dir = existing_checkpoint(dir)?;
        let info_path = dir.join(INFO_FILE);
        let text = std::fs::read_to_string(&info_path).with_context(|| {
            format!(
                "{}: cannot read the checkpoint's sidecar",
                info_path.display()
            )
        })?;
        let info: CheckpointInfo = serde_json::from_str(&text)
            .with_context(|| format!("{}: malformed checkpoint sidecar", info_path.display()))?;
        ensure!(
            info.format_version == FORMAT_VERSION,
            "{}: checkpoint format {} but this build reads {FORMAT_VERSION}",
            info_path.display(),
            info.format_version
        );
        let weights = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&weights, device)
            .with_context(|| format!("{}: cannot read the weights", weights.display()))?;
        let model = Model::new(&info.model, device)?;
        model.assign(tensors, &weights)?;
        Ok((model, info, dir))
    }
}

/// FNV-1a of a parameter name: a stable per-parameter seed component.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn previous(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".previous");
    dir.with_file_name(name)
}

/// Moves the finished folder `tmp` to `dir`, replacing what was there. At every instant `dir` or
/// `dir.previous` is a complete checkpoint: after a crash mid-swap (`dir` absent), the previous
/// copy is kept until the new folder is in place.
fn replace_dir(tmp: &Path, dir: &Path) -> anyhow::Result<()> {
    let old = previous(dir);
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        std::fs::rename(dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    std::fs::rename(tmp, dir).with_context(|| format!("renaming into {}", dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}

fn existing_checkpoint(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.join(INFO_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    let old = previous(dir);
    if old.join(INFO_FILE).is_file() {
        tracing::warn!(
            "{}: absent, using {} (a save was interrupted)",
            dir.display(),
            old.display()
        );
        return Ok(old);
    }
    bail!(
        "{}: no checkpoint here (expected {INFO_FILE} and {WEIGHTS_FILE})",
        dir.display()
    )
}
