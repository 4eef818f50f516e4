//! Batch normalisation over NCHW batches (per channel, over batch and pixels), with the ReLU that
//! follows it in the U-Net folded in: on CPU a statistics pass, one normalising pass and one
//! backward pass as custom ops, where candle's BatchNorm takes a dozen whole-tensor ops each way.
//! Same variables, initial values, momentum and running-variance rule (unbiased) as PyTorch's
//! `BatchNorm2d` and candle's, so checkpoints and imported weights are unchanged.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use crate::conv::{Real, per_channel};
use crate::ops::{outputs, plain, values};

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// Per-channel mean and biased variance of `[B, C, H·W]` values.
pub fn channel_stats<T: Real + Into<f64>>(
    x: &[T],
    batch: usize,
    channels: usize,
    plane: usize,
) -> Vec<(f64, f64)> {
    let (sums, squares): (Vec<f64>, Vec<f64>) =
        x.par_chunks(plane).map(|x| lane_sums(x, x)).unzip();
    let n = (batch * plane) as f64;
    per_channel(sums, channels)
        .into_iter()
        .zip(per_channel(squares, channels))
        .map(|(sum, squares)| {
            let mean = sum / n;
            (mean, (squares / n - mean * mean).max(0.0))
        })
        .collect()
}

/// (Σ v, Σ v·x) over a plane, in f64 and eight interleaved partial sums (so the loop
/// vectorises), added up in a fixed order.
fn lane_sums<T: Real + Into<f64>>(v: &[T], x: &[T]) -> (f64, f64) {
    let (mut sums, mut products) = ([0f64; 8], [0f64; 8]);
    let (v8, x8) = (v.chunks_exact(8), x.chunks_exact(8));
    let (mut sum, mut product) = (0f64, 0f64);
    for (&v, &x) in v8.remainder().iter().zip(x8.remainder()) {
        sum += v.into();
        product += v.into() * x.into();
    }
    for (v, x) in v8.zip(x8) {
        for k in 0..8 {
            sums[k] += v[k].into();
            products[k] += v[k].into() * x[k].into();
        }
    }
    for k in 0..8 {
        sum += sums[k];
        product += products[k];
    }
    (sum, product)
}

/// y = γ (x − mean) · inv_std + β, then ReLU if asked, per channel.
struct Normalise {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    relu: bool,
    /// Whether `mean` and `inv_std` are this batch's own statistics (training), so that the
    /// gradient flows through them too.
    batch_stats: bool,
}

impl Normalise {
    fn forward<T: Real>(
        &self,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        dims: (usize, usize, usize),
    ) -> Vec<T> {
        let (_, channels, plane) = dims;
        let mut y = vec![T::default(); x.len()];
        y.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .enumerate()
            .for_each(|(n, (y, x))| {
                let c = n % channels;
                let scale = T::from_f64(self.inv_std[c]) * gamma[c];
                let shift = beta[c] + T::from_f64(-self.mean[c] * self.inv_std[c]) * gamma[c];
                for (y, &x) in y.iter_mut().zip(x) {
                    let v = x * scale + shift;
                    *y = if !self.relu || v > T::default() {
                        v
                    } else {
                        T::default()
                    };
                }
            });
        y
    }

    /// Gradients of x, γ and β from the output gradient (`y` masks the ReLU). With g the
    /// gradient through the ReLU and x̂ = (x − mean)·inv_std: dβ = Σ g, dγ = Σ g·x̂, and with
    /// batch statistics dx = γ·inv_std·(g − Σg/n − x̂·Σg·x̂/n), per element a·g + b·x + c.
    fn backward<T: Real + Into<f64>>(
        &self,
        x: &[T],
        y: &[T],
        grad: &[T],
        gamma: &[T],
        dims: (usize, usize, usize),
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (batch, channels, plane) = dims;
        let relu = self.relu;
        // gx first holds g, the gradient through the ReLU; Σ g and Σ g·x per plane.
        let mut gx = vec![T::default(); x.len()];
        let (g_sums, gx_sums): (Vec<f64>, Vec<f64>) = gx
            .par_chunks_mut(plane)
            .zip(grad.par_chunks(plane).zip(y.par_chunks(plane)))
            .zip(x.par_chunks(plane))
            .map(|((out, (g, y)), x)| {
                if relu {
                    for ((o, &g), &y) in out.iter_mut().zip(g).zip(y) {
                        *o = if y > T::default() { g } else { T::default() };
                    }
                } else {
                    out.copy_from_slice(g);
                }
                lane_sums(out, x)
            })
            .unzip();
        let n = (batch * plane) as f64;
        // Per channel: Σ g, Σ g·x̂, and the coefficients of dx.
        let channel: Vec<(f64, f64, [T; 3])> = per_channel(g_sums, channels)
            .into_iter()
            .zip(per_channel(gx_sums, channels))
            .enumerate()
            .map(|(c, (g_sum, gx_sum))| {
                let (mean, inv_std) = (self.mean[c], self.inv_std[c]);
                let xhat_sum = inv_std * (gx_sum - mean * g_sum);
                let a = gamma[c].into() * inv_std;
                let (b, c0) = if self.batch_stats {
                    let b = -a * inv_std * xhat_sum / n;
                    (b, -a * g_sum / n - b * mean)
                } else {
                    (0.0, 0.0)
                };
                (g_sum, xhat_sum, [a, b, c0].map(T::from_f64))
            })
            .collect();
        gx.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .enumerate()
            .for_each(|(k, (out, x))| {
                let [a, b, c0] = channel[k % channels].2;
                for (o, &x) in out.iter_mut().zip(x) {
                    *o = a * *o + b * x + c0;
                }
            });
        let ggamma = channel.iter().map(|c| T::from_f64(c.1)).collect();
        let gbeta = channel.iter().map(|c| T::from_f64(c.0)).collect();
        (gx, ggamma, gbeta)
    }
}

fn dims_of(shape: &Shape) -> Result<(usize, usize, usize)> {
    let (b, c, h, w) = shape.dims4()?;
    Ok((b, c, h * w))
}

impl CustomOp3 for Normalise {
    fn name(&self) -> &'static str {
        "batch_norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = dims_of(l1.shape())?;
        let storage = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward::<f32>(
                values(s1, l1)?,
                values(s2, l2)?,
                values(s3, l3)?,
                dims,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward::<f64>(
                values(s1, l1)?,
                values(s2, l2)?,
                values(s3, l3)?,
                dims,
            )),
            _ => candle_core::bail!("batch norm: f32 or f64 tensors only"),
        };
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = dims_of(x.shape())?;
        let channels = Shape::from(dims.1);
        let shapes = [x.shape().clone(), channels.clone(), channels];
        let mut grads = outputs(
            &[x, y, grad, gamma],
            &shapes,
            |v| {
                let (gx, gg, gb) = self.backward(v[0], v[1], v[2], v[3], dims);
                vec![gx, gg, gb]
            },
            |v| {
                let (gx, gg, gb) = self.backward(v[0], v[1], v[2], v[3], dims);
                vec![gx, gg, gb]
            },
        )?
        .into_iter();
        let (gx, ggamma, gbeta) = (
            grads.next().expect("three outputs"),
            grads.next().expect("three outputs"),
            grads.next().expect("three outputs"),
        );
        Ok((Some(gx), Some(ggamma), Some(gbeta)))
    }
}

/// PyTorch's `BatchNorm2d` (affine, momentum 0.1, eps 1e-5), optionally followed by ReLU.
pub struct BatchNorm {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
}

fn var(vb: &VarBuilder, n: usize, name: &str, init: f64) -> Result<Var> {
    let t = vb.get_with_hints(n, name, Init::Const(init))?;
    Var::from_tensor(&t)
}

impl BatchNorm {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<BatchNorm> {
        Ok(BatchNorm {
            weight: var(&vb, channels, "weight", 1.0)?,
            bias: var(&vb, channels, "bias", 0.0)?,
            running_mean: var(&vb, channels, "running_mean", 0.0)?,
            running_var: var(&vb, channels, "running_var", 1.0)?,
        })
    }

    /// Normalises `x` `[B, C, H, W]` with the batch's statistics (`train`, updating the running
    /// ones) or the running ones, then applies ReLU if `relu`.
    pub fn forward_t(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if !x.device().is_cpu() {
            return self.forward_composed(x, train, relu);
        }
        let x = plain(x)?;
        let (batch, channels, plane) = dims_of(x.shape())?;
        let (mean, inv_std) = if train {
            let stats = from_cpu_stats(&x, batch, channels, plane)?;
            let n = (batch * plane) as f64;
            let mean: Vec<f64> = stats.iter().map(|s| s.0).collect();
            let var: Vec<f64> = stats.iter().map(|s| s.1).collect();
            let unbiased: Vec<f64> = var.iter().map(|v| v * n / (n - 1.0).max(1.0)).collect();
            self.update_running(&mean, &unbiased)?;
            (mean, var.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect())
        } else {
            let mean: Vec<f64> = self
                .running_mean
                .as_tensor()
                .to_dtype(candle_core::DType::F64)?
                .to_vec1()?;
            let var: Vec<f64> = self
                .running_var
                .as_tensor()
                .to_dtype(candle_core::DType::F64)?
                .to_vec1()?;
            (mean, var.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect())
        };
        let op = Normalise {
            mean,
            inv_std,
            relu,
            batch_stats: train,
        };
        x.apply_op3(
            &plain(self.weight.as_tensor())?,
            &plain(self.bias.as_tensor())?,
            op,
        )
    }

    fn update_running(&self, mean: &[f64], unbiased_var: &[f64]) -> Result<()> {
        let device = self.running_mean.device();
        let dtype = self.running_mean.dtype();
        let blend = |var: &Var, batch: &[f64]| -> Result<()> {
            let batch = Tensor::new(batch, device)?.to_dtype(dtype)?;
            var.set(&((var.as_tensor() * (1.0 - MOMENTUM))? + (batch * MOMENTUM)?)?)
        };
        blend(&self.running_mean, mean)?;
        blend(&self.running_var, unbiased_var)
    }

    /// The same computation from candle ops, for devices without the CPU kernels.
    fn forward_composed(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let (_, channels, _, _) = x.dims4()?;
        let shape = (1, channels, 1, 1);
        let (mean, var) = if train {
            let mean = x.mean_keepdim((0, 2, 3))?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
            let n = (x.elem_count() / channels) as f64;
            self.running_mean.set(
                &((self.running_mean.as_tensor() * (1.0 - MOMENTUM))?
                    + (mean.flatten_all()?.detach() * MOMENTUM)?)?,
            )?;
            self.running_var.set(
                &((self.running_var.as_tensor() * (1.0 - MOMENTUM))?
                    + (var.flatten_all()?.detach() * (MOMENTUM * n / (n - 1.0).max(1.0)))?)?,
            )?;
            (mean, var)
        } else {
            (
                self.running_mean.as_tensor().reshape(shape)?,
                self.running_var.as_tensor().reshape(shape)?,
            )
        };
        let y = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + EPS)?.sqrt()?)?
            .broadcast_mul(&self.weight.as_tensor().reshape(shape)?)?
            .broadcast_add(&self.bias.as_tensor().reshape(shape)?)?;
        if relu { y.relu() } else { Ok(y) }
    }
}

fn from_cpu_stats(
    x: &Tensor,
    batch: usize,
    channels: usize,
    plane: usize,
) -> Result<Vec<(f64, f64)>> {
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("batch norm: expected a CPU tensor");
    };
    Ok(match cpu {
        CpuStorage::F32(_) => channel_stats(values::<f32>(cpu, layout)?, batch, channels, plane),
        CpuStorage::F64(_) => channel_stats(values::<f64>(cpu, layout)?, batch, channels, plane),
        _ => candle_core::bail!("batch norm: f32 or f64 tensors only"),
    })
}
