//! An exponential moving average of the weights (Polyak averaging, as timm's `ModelEmaV2` keeps
//! it), which validation scores and the checkpoints hold instead of the weights of the last
//! batch: a small net on a few cases swings from epoch to epoch, and its average does less.

use std::collections::HashMap;

use anyhow::{Context, ensure};
use candle_core::{Tensor, Var};
use seg_model::Model;

/// The averaged values of every variable of a model (batch norm's running statistics too).
pub struct WeightAverage {
    vars: Vec<(String, Var)>,
    averaged: Vec<Tensor>,
    decay: f64,
    /// Updates made so far: the average starts short and lengthens to `decay`.
    updates: u64,
}

impl WeightAverage {
    /// An average that starts at the model's current values.
    pub fn new(model: &Model, decay: f64) -> anyhow::Result<WeightAverage> {
        let vars = model.named_vars();
        let averaged = vars
            .iter()
            .map(|(_, v)| v.as_tensor().detach().copy())
            .collect::<candle_core::Result<_>>()?;
        Ok(WeightAverage {
            vars,
            averaged,
            decay,
            updates: 0,
        })
    }

    /// Continues an average saved by [`WeightAverage::state`] after `updates` updates.
    pub fn restore(
        &mut self,
        mut state: HashMap<String, Tensor>,
        updates: u64,
    ) -> anyhow::Result<()> {
        for ((name, var), slot) in self.vars.iter().zip(&mut self.averaged) {
            let t = state
                .remove(name)
                .with_context(|| format!("the weight average has no {name}"))?;
            ensure!(
                t.dims() == var.dims(),
                "the weight average's {name} has the wrong shape"
            );
            *slot = t.to_device(var.device())?;
        }
        self.updates = updates;
        Ok(())
    }

    /// The averaged values by variable name.
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .zip(&self.averaged)
            .map(|((name, _), t)| (name.clone(), t.clone()))
            .collect()
    }

    /// The decay of the next update: (1 + n) / (10 + n) at first, so that early values (far
    /// from the trained ones) are soon forgotten, then `decay`.
    fn next_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// Folds the model's current values in (after each optimiser step).
    pub fn update(&mut self) -> anyhow::Result<()> {
        let d = self.next_decay();
        for ((_, var), slot) in self.vars.iter().zip(&mut self.averaged) {
            let value = var.as_tensor().detach();
            *slot = (slot.affine(d, 0.0)? + value.affine(1.0 - d, 0.0)?)?;
        }
        self.updates += 1;
        Ok(())
    }

    /// Runs `f` with the averaged values in the model's variables and puts the trained ones back
    /// afterwards (also when `f` fails); `f` gets the trained values by name, to save them for a
    /// resume.
    pub fn with_averaged<T>(
        &self,
        f: impl FnOnce(&HashMap<String, Tensor>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let trained = copies(&self.vars)?;
        for ((_, var), averaged) in self.vars.iter().zip(&self.averaged) {
            var.set(averaged)?;
        }
        let result = f(&trained);
        for (name, var) in &self.vars {
            var.set(&trained[name])?;
        }
        result
    }
}

/// The current value of each variable by name: copies, which later updates of the variables
/// leave as they are.
pub(crate) fn copies(vars: &[(String, Var)]) -> candle_core::Result<HashMap<String, Tensor>> {
    vars.iter()
        .map(|(name, var)| Ok((name.clone(), var.as_tensor().detach().copy()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use seg_model::ModelConfig;

    fn values(model: &Model) -> Vec<f32> {
        model
            .named_vars()
            .iter()
            .flat_map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    fn set_all(model: &Model, value: f32) {
        for (_, var) in model.named_vars() {
            var.set(&Tensor::full(value, var.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }

    fn tiny() -> Model {
        let config = ModelConfig {
            width: 2,
            depth: 2,
            ..ModelConfig::default()
        };
        Model::new(&config, &Device::Cpu).unwrap()
    }

    #[test]
    fn the_average_follows_the_weights_with_the_decay_and_leaves_them_as_trained() {
        let model = tiny();
        set_all(&model, 0.0);
        let mut average = WeightAverage::new(&model, 0.3).unwrap();
        // Decays min(0.3, (1 + n) / (10 + n)): 0.1, 2/11, 0.25, then 0.3 itself.
        for value in [1.0, 2.0, 3.0, 3.0] {
            set_all(&model, value);
            average.update().unwrap();
        }
        // 0.9 → 2/11 x 0.9 + 9/11 x 2 = 1.8 → 0.25 x 1.8 + 0.75 x 3 = 2.7 → 0.3 x 2.7 + 0.7 x 3
        let want = 2.91;
        let seen = average
            .with_averaged(|trained| {
                for t in trained.values() {
                    let v = t.flatten_all()?.to_vec1::<f32>()?;
                    assert!(v.iter().all(|&x| x == 3.0), "trained values {v:?}");
                }
                Ok(values(&model))
            })
            .unwrap();
        assert!(
            seen.iter().all(|v| (v - want).abs() < 1e-5),
            "{want} vs {:?}",
            &seen[..3]
        );
        // The trained values are back.
        assert!(values(&model).iter().all(|&v| v == 3.0));
        // The saved state continues the same average.
        let mut again = WeightAverage::new(&model, 0.3).unwrap();
        again.restore(average.state(), 4).unwrap();
        assert_eq!(again.with_averaged(|_| Ok(values(&model))).unwrap(), seen);
        assert_eq!(again.next_decay(), 0.3);
    }

    #[test]
    fn the_trained_weights_come_back_when_the_work_fails() {
        let model = tiny();
        set_all(&model, 1.0);
        let average = WeightAverage::new(&model, 0.9).unwrap();
        set_all(&model, 5.0);
        let err = average
            .with_averaged(|_| -> anyhow::Result<()> { anyhow::bail!("disk full") })
            .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert!(values(&model).iter().all(|&v| v == 5.0));
    }
}
