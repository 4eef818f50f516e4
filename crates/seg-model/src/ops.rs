//! Differentiable building blocks whose candle 0.11 versions are wrong or lack a backward pass,
//! written from ops whose gradients are exact.
//!
//! - `max_pool2d` in candle scales the gradient by (maxima in the window) / 4: here 2x2 pooling is
//!   a reshape and two `max` reductions, whose backward routes the gradient to the maximum.
//! - `upsample_bilinear2d` has no backward: here bilinear x2 (align_corners = false) is shifts and
//!   weighted sums, interleaved by a reshape.
//! - `binary_cross_entropy_with_logit` takes the log of a sigmoid (inf for logits of ±50): here the
//!   stable form max(x, 0) − x·t + log(1 + exp(−|x|)).

use candle_core::{Result, Tensor};

/// 2x2 max pooling with stride 2 of `[B, C, H, W]` (H and W even).
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("max_pool2x2 needs even height and width, got {h}x{w}");
    }
    x.contiguous()?
        .reshape((b, c, h / 2, 2, w / 2, 2))?
        .max(5)?
        .max(3)
}

/// Bilinear x2 upsampling of `[B, C, H, W]`, as PyTorch's `Upsample(scale_factor=2,
/// mode="bilinear", align_corners=False)`.
pub fn upsample_bilinear2x(x: &Tensor) -> Result<Tensor> {
    upsample_axis(&upsample_axis(x, 2)?, 3)
}

/// Doubles axis `dim`: output 2i takes 3/4 of x[i] and 1/4 of x[i-1], output 2i+1 3/4 of x[i]
/// and 1/4 of x[i+1], the edges repeating.
fn upsample_axis(x: &Tensor, dim: usize) -> Result<Tensor> {
    let n = x.dim(dim)?;
    let (prev, next) = if n > 1 {
        (
            Tensor::cat(&[x.narrow(dim, 0, 1)?, x.narrow(dim, 0, n - 1)?], dim)?,
            Tensor::cat(&[x.narrow(dim, 1, n - 1)?, x.narrow(dim, n - 1, 1)?], dim)?,
        )
    } else {
        (x.clone(), x.clone())
    };
    let centre = x.affine(0.75, 0.0)?;
    let even = (&centre + prev.affine(0.25, 0.0)?)?;
    let odd = (&centre + next.affine(0.25, 0.0)?)?;
    let mut shape = x.dims().to_vec();
    shape[dim] *= 2;
    Tensor::stack(&[even, odd], dim + 1)?.reshape(shape)
}

/// Mean binary cross-entropy of `logits` against `targets` (0/1), numerically stable for any
/// logit: mean(max(x, 0) − x·t + log(1 + exp(−|x|))).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let positive = logits.relu()?;
    let cross = (logits * targets)?;
    let softplus = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    ((positive - cross)? + softplus)?.mean_all()
}

/// A 3x3 convolution, stride 1, padding 1, of `x` `[B, Cin, H, W]` with `weight` `[Cout, Cin, 3, 3]`,
/// whose input gradient is a convolution with the flipped, transposed kernel. Candle computes that
/// gradient with its transposed convolution, a plain loop 2-4x slower on CPU; the values are the
/// same. CPU only (elsewhere use candle's conv2d).
pub fn conv3x3(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let plain = |t: &Tensor| -> Result<Tensor> {
        if t.is_contiguous() && t.layout().start_offset() == 0 {
            Ok(t.clone())
        } else {
            t.force_contiguous()
        }
    };
    plain(x)?.apply_op2(&plain(weight)?, Conv3x3)
}

struct Conv3x3;

/// A tensor over a copy of a CPU storage laid out contiguously from offset 0.
fn cpu_tensor(storage: &candle_core::CpuStorage, layout: &candle_core::Layout) -> Tensor {
    Tensor::from_storage(
        candle_core::Storage::Cpu(storage.clone()),
        layout.shape().clone(),
        candle_core::op::BackpropOp::none(),
        false,
    )
}

impl candle_core::CustomOp2 for Conv3x3 {
    fn name(&self) -> &'static str {
        "conv3x3"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let y = cpu_tensor(s1, l1).conv2d(&cpu_tensor(s2, l2), 1, 1, 1, 1)?;
        let (storage, _) = y.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(cpu) => Ok((cpu.clone(), y.shape().clone())),
            _ => candle_core::bail!("conv3x3: expected a CPU result"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let reversed = Tensor::new(&[2u32, 1, 0], x.device())?;
        let flipped = weight
            .index_select(&reversed, 2)?
            .index_select(&reversed, 3)?
            .transpose(0, 1)?
            .contiguous()?;
        let grad_x = grad.conv2d(&flipped, 1, 1, 1, 1)?;
        let grad_weight = x
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?, 1, 1, 1, 1)?
            .transpose(0, 1)?;
        Ok((Some(grad_x), Some(grad_weight)))
    }
}
