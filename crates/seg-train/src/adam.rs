//! Adam over candle variables, with moments we own so they go into checkpoints and a resumed run
//! continues exactly (candle's AdamW keeps them private and defaults to weight decay 0.01).

use std::collections::HashMap;

use anyhow::{Context, ensure};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

#[derive(Debug, Clone, Copy)]
pub struct AdamParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty added to the gradient (PyTorch Adam's `weight_decay`); 0 in the reference.
    pub weight_decay: f64,
}

pub struct Adam {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    params: AdamParams,
    /// Updates made so far.
    pub steps: u64,
}

impl Adam {
    pub fn new(vars: Vec<(String, Var)>, params: AdamParams) -> anyhow::Result<Adam> {
        let zeros = |v: &Var| v.zeros_like();
        let m = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        Ok(Adam {
            vars,
            m,
            v,
            params,
            steps: 0,
        })
    }

    /// One update with learning rate `lr`; gradients are first scaled so that their global norm
    /// is at most `clip` (when `clip` > 0). Returns the global norm before clipping.
    pub fn step(&mut self, grads: &GradStore, lr: f64, clip: f64) -> anyhow::Result<f64> {
        let mut norm_sq = 0.0;
        let gradients: Vec<Option<Tensor>> = self
            .vars
            .iter()
            // Detached: a gradient remembers the graph it came from, and moments built on it
            // would keep every past step's graph alive.
            .map(|(_, var)| grads.get(var).map(Tensor::detach))
            .collect();
        for g in gradients.iter().flatten() {
            norm_sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
        let norm = norm_sq.sqrt();
        let scale = if clip > 0.0 && norm > clip {
            clip / norm
        } else {
            1.0
        };
        self.steps += 1;
        let p = self.params;
        let t = self.steps as i32;
        let (correction1, correction2) = (1.0 - p.beta1.powi(t), 1.0 - p.beta2.powi(t));
        for (i, ((_, var), g)) in self.vars.iter().zip(gradients).enumerate() {
            let Some(mut g) = g else { continue };
            let value = var.as_tensor().detach();
            if scale != 1.0 {
                g = g.affine(scale, 0.0)?;
            }
            if p.weight_decay > 0.0 {
                g = (g + value.affine(p.weight_decay, 0.0)?)?;
            }
            self.m[i] = (self.m[i].affine(p.beta1, 0.0)? + g.affine(1.0 - p.beta1, 0.0)?)?;
            self.v[i] = (self.v[i].affine(p.beta2, 0.0)? + g.sqr()?.affine(1.0 - p.beta2, 0.0)?)?;
            let m_hat = self.m[i].affine(1.0 / correction1, 0.0)?;
            let denominator = self.v[i]
                .affine(1.0 / correction2, 0.0)?
                .sqrt()?
                .affine(1.0, p.eps)?;
            let update = (m_hat / denominator)?.affine(lr, 0.0)?;
            var.set(&(value - update)?)?;
        }
        Ok(norm)
    }

    /// The moments, named `m.<variable>` and `v.<variable>`.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by [`Adam::state`] and the update count.
    pub fn restore(
        &mut self,
        mut state: HashMap<String, Tensor>,
        steps: u64,
    ) -> anyhow::Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let t = state
                    .remove(&format!("{kind}.{name}"))
                    .with_context(|| format!("optimiser state has no {kind}.{name}"))?;
                ensure!(
                    t.dims() == var.dims(),
                    "optimiser state {kind}.{name} has the wrong shape"
                );
                *slot = t.to_device(var.device())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}
