//! Differentiable building blocks whose candle 0.11 versions are wrong or lack a backward pass,
//! written from ops whose gradients are exact.
//!
//! - `max_pool2d` in candle scales the gradient by (maxima in the window) / 4: here the whole
//!   gradient goes to the maximum.
//! - `upsample_bilinear2d` has no backward: here bilinear x2 (align_corners = false) has one.
//!
//! On CPU both are single kernels ([`crate::resample`]); on other devices they are composed from
//! candle ops with exact gradients.
//! - `binary_cross_entropy_with_logit` takes the log of a sigmoid (inf for logits of ±50): here the
//!   stable form max(x, 0) − x·t + log(1 + exp(−|x|)).
//! - `conv2d` on CPU gathers im2col element by element and computes the input gradient with a
//!   plain-loop transposed convolution: here 3x3 convolutions are [`crate::conv`]'s matrix
//!   products, bias and ReLU folded in, and the 1x1 head is [`crate::pointwise`]'s channel mix.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::{conv, pointwise, resample};

/// 2x2 max pooling with stride 2 of `[B, C, H, W]` (H and W even). On CPU one kernel each way
/// ([`crate::resample`]); elsewhere a reshape and two `max` reductions, whose backward routes the
/// gradient to the maximum.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("max_pool2x2 needs even height and width, got {h}x{w}");
    }
    if x.device().is_cpu() {
        return plain(x)?.apply_op1(MaxPool2x2);
    }
    x.contiguous()?
        .reshape((b, c, h / 2, 2, w / 2, 2))?
        .max(5)?
        .max(3)
}

/// Bilinear x2 upsampling of `[B, C, H, W]`, as PyTorch's `Upsample(scale_factor=2,
/// mode="bilinear", align_corners=False)`. On CPU one kernel each way; elsewhere shifts and
/// weighted sums, interleaved by a reshape.
pub fn upsample_bilinear2x(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        return plain(x)?.apply_op1(UpsampleBilinear2x);
    }
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

struct MaxPool2x2;
struct UpsampleBilinear2x;

/// Runs `f32_op` or `f64_op` on a contiguous CPU storage, by its dtype.
fn by_dtype(
    storage: &CpuStorage,
    layout: &Layout,
    f32_op: impl FnOnce(&[f32]) -> Vec<f32>,
    f64_op: impl FnOnce(&[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    Ok(match storage {
        CpuStorage::F32(_) => CpuStorage::F32(f32_op(values(storage, layout)?)),
        CpuStorage::F64(_) => CpuStorage::F64(f64_op(values(storage, layout)?)),
        _ => candle_core::bail!("f32 or f64 tensors only"),
    })
}

/// A tensor of `shape` from `f32_op` or `f64_op` applied to the CPU values of `inputs`.
pub(crate) fn from_values(
    inputs: &[&Tensor],
    shape: &Shape,
    f32_op: impl FnOnce(&[&[f32]]) -> Vec<f32>,
    f64_op: impl FnOnce(&[&[f64]]) -> Vec<f64>,
) -> Result<Tensor> {
    let mut out = outputs(
        inputs,
        std::slice::from_ref(shape),
        |v| vec![f32_op(v)],
        |v| vec![f64_op(v)],
    )?;
    Ok(out.remove(0))
}

/// Tensors of `shapes`, one per vector `f32_op` or `f64_op` returns from the CPU values of
/// `inputs` (a kernel that computes several results in one pass).
pub(crate) fn outputs(
    inputs: &[&Tensor],
    shapes: &[Shape],
    f32_op: impl FnOnce(&[&[f32]]) -> Vec<Vec<f32>>,
    f64_op: impl FnOnce(&[&[f64]]) -> Vec<Vec<f64>>,
) -> Result<Vec<Tensor>> {
    let inputs: Vec<Tensor> = inputs.iter().map(|t| plain(t)).collect::<Result<_>>()?;
    let guards: Vec<_> = inputs.iter().map(|t| t.storage_and_layout()).collect();
    let cpu = guards
        .iter()
        .map(|(storage, layout)| match &**storage {
            candle_core::Storage::Cpu(cpu) => Ok((cpu, *layout)),
            _ => candle_core::bail!("expected CPU tensors"),
        })
        .collect::<Result<Vec<_>>>()?;
    let device = inputs[0].device();
    fn tensors<T: candle_core::WithDType>(
        cpu: &[(&CpuStorage, &Layout)],
        shapes: &[Shape],
        device: &candle_core::Device,
        op: impl FnOnce(&[&[T]]) -> Vec<Vec<T>>,
    ) -> Result<Vec<Tensor>> {
        let all: Vec<&[T]> = cpu
            .iter()
            .map(|(s, l)| values(s, l))
            .collect::<Result<_>>()?;
        op(&all)
            .into_iter()
            .zip(shapes)
            .map(|(v, shape)| Tensor::from_vec(v, shape, device))
            .collect()
    }
    match cpu[0].0 {
        CpuStorage::F32(_) => tensors(&cpu, shapes, device, f32_op),
        CpuStorage::F64(_) => tensors(&cpu, shapes, device, f64_op),
        _ => candle_core::bail!("f32 or f64 tensors only"),
    }
}

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "max_pool2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let out = by_dtype(
            storage,
            layout,
            |x| resample::max_pool(x, b * c, h, w),
            |x| resample::max_pool(x, b * c, h, w),
        )?;
        Ok((out, Shape::from((b, c, h / 2, w / 2))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = x.dims4()?;
        let gx = from_values(
            &[x, grad],
            x.shape(),
            |v| resample::max_pool_grad(v[0], v[1], b * c, h, w),
            |v| resample::max_pool_grad(v[0], v[1], b * c, h, w),
        )?;
        Ok(Some(gx))
    }
}

impl CustomOp1 for UpsampleBilinear2x {
    fn name(&self) -> &'static str {
        "upsample_bilinear2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let out = by_dtype(
            storage,
            layout,
            |x| resample::upsample(x, b * c, h, w),
            |x| resample::upsample(x, b * c, h, w),
        )?;
        Ok((out, Shape::from((b, c, 2 * h, 2 * w))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = x.dims4()?;
        let gx = from_values(
            &[grad],
            x.shape(),
            |v| resample::upsample_grad(v[0], b * c, h, w),
            |v| resample::upsample_grad(v[0], b * c, h, w),
        )?;
        Ok(Some(gx))
    }
}

/// Mean binary cross-entropy of `logits` against `targets` (0/1), numerically stable for any
/// logit: mean(max(x, 0) − x·t + log(1 + exp(−|x|))).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let positive = logits.relu()?;
    let cross = (logits * targets)?;
    let softplus = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    ((positive - cross)? + softplus)?.mean_all()
}

/// A 3x3 convolution, stride 1, padding 1, of `x` `[B, Cin, H, W]` with `weight`
/// `[Cout, Cin, 3, 3]`, plus `bias` `[Cout]` if given, then ReLU if `relu`: one pass on CPU
/// through [`crate::conv`] (forward and both gradients as matrix products; the bias and ReLU
/// folded into the copy out of the product). CPU only (elsewhere [`conv3x3_composed`]).
pub fn conv3x3(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    let op = Conv3x3::new(weight, bias, relu)?;
    plain(x)?.apply_op2(&Conv3x3::params(weight, bias)?, op)
}

/// [`conv3x3`] of the channel concatenation [`up`, `skip`] (a decoder level's input) without
/// making it: the kernels read the channels of both, and the backward pass gives each its own
/// gradient. Saves a copy of the level's widest tensor, kept until the backward pass, and the
/// split of its gradient. CPU only.
pub fn conv3x3_concat(
    up: &Tensor,
    skip: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let op = Conv3x3::new(weight, bias, relu)?;
    plain(up)?.apply_op3(&plain(skip)?, &Conv3x3::params(weight, bias)?, op)
}

/// A 1x1 convolution of `x` `[B, Cin, H, W]` with `weight` `[Cout, Cin, 1, 1]` plus `bias`
/// `[Cout]` (the U-Net's head): on CPU one op each way through [`crate::pointwise`], elsewhere
/// candle's conv2d.
pub fn conv1x1(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (out_channels, in_channels, kh, kw) = weight.dims4()?;
    let (_, channels, _, _) = x.dims4()?;
    if (kh, kw) != (1, 1) || bias.dims() != [out_channels] || channels != in_channels {
        candle_core::bail!(
            "conv1x1: input {:?}, weight {:?} and bias {:?} are not [B, Cin, H, W], [Cout, Cin, 1, 1] and [Cout]",
            x.shape(),
            weight.shape(),
            bias.shape()
        );
    }
    if !x.device().is_cpu() {
        return x.conv2d(weight, 0, 1, 1, 1)?.broadcast_add(&bias.reshape((
            1,
            out_channels,
            1,
            1,
        ))?);
    }
    plain(x)?.apply_op3(&plain(weight)?, &plain(bias)?, Conv1x1)
}

struct Conv1x1;

impl CustomOp3 for Conv1x1 {
    fn name(&self) -> &'static str {
        "conv1x1"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        weight: &CpuStorage,
        lw: &Layout,
        bias: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, _, height, width) = lx.shape().dims4()?;
        let out_channels = lb.shape().elem_count();
        fn typed<T: candle_core::WithDType + conv::Real>(
            [x, weight, bias]: [(&CpuStorage, &Layout); 3],
            plane: usize,
        ) -> Result<CpuStorage> {
            let y = pointwise::forward(
                values::<T>(x.0, x.1)?,
                values::<T>(weight.0, weight.1)?,
                values::<T>(bias.0, bias.1)?,
                plane,
            );
            Ok(T::to_cpu_storage_owned(y))
        }
        let args = [(x, lx), (weight, lw), (bias, lb)];
        let storage = match x {
            CpuStorage::F32(_) => typed::<f32>(args, height * width)?,
            CpuStorage::F64(_) => typed::<f64>(args, height * width)?,
            _ => candle_core::bail!("conv1x1: f32 or f64 tensors only"),
        };
        Ok((storage, Shape::from((batch, out_channels, height, width))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (batch, channels, height, width) = x.dims4()?;
        let out_channels = bias.elem_count();
        let plane = height * width;
        let grad_x = if x.track_op() {
            Some(from_values(
                &[grad, weight],
                x.shape(),
                |v| pointwise::input_grad(v[0], v[1], out_channels, plane),
                |v| pointwise::input_grad(v[0], v[1], out_channels, plane),
            )?)
        } else {
            None
        };
        let grad_weight = from_values(
            &[x, grad],
            weight.shape(),
            |v| pointwise::weight_grad(v[0], v[1], channels, plane),
            |v| pointwise::weight_grad(v[0], v[1], channels, plane),
        )?;
        let out_dims = conv::Dims {
            batch,
            channels: out_channels,
            height,
            width,
        };
        let grad_bias = from_values(
            &[grad],
            bias.shape(),
            |v| conv::bias_grad(v[0], out_dims),
            |v| conv::bias_grad(v[0], out_dims),
        )?;
        Ok((grad_x, Some(grad_weight), Some(grad_bias)))
    }
}

/// [`conv3x3`] for devices other than the CPU. candle's conv2d (cuDNN when built with it) gives the
/// output but records no backward step; a zero-valued companion op ([`ConvGradients`]) carries
/// both gradients, each computed as one more forward convolution. candle's own backward would
/// take the input gradient through a naive transposed-convolution kernel.
pub fn conv3x3_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let output = x.detach().conv2d(&weight.detach(), 1, 1, 1, 1)?;
    let mut y = (output + x.apply_op2(weight, ConvGradients)?)?;
    if let Some(bias) = bias {
        y = y.broadcast_add(&bias.reshape((1, (), 1, 1))?)?;
    }
    if relu { y.relu() } else { Ok(y) }
}

/// Zeros the shape of a 3x3 convolution's output, whose backward pass is that convolution's:
/// input gradient = the output gradient convolved with the kernel flipped and transposed; weight
/// gradient = the input (batch as channels) convolved with the output gradient.
struct ConvGradients;

impl ConvGradients {
    /// The forward pass on any backend: zeros of the output's shape on `x`'s device.
    fn zeros<S>(x: &S, lx: &Layout, lw: &Layout) -> Result<(S, Shape)>
    where
        S: candle_core::backend::BackendStorage,
        S::Device: candle_core::backend::BackendDevice<Storage = S>,
    {
        use candle_core::backend::BackendDevice;
        let (batch, _, height, width) = lx.shape().dims4()?;
        let (out_channels, _, _, _) = lw.shape().dims4()?;
        let shape = Shape::from((batch, out_channels, height, width));
        Ok((x.device().zeros_impl(&shape, x.dtype())?, shape))
    }
}

impl CustomOp2 for ConvGradients {
    fn name(&self) -> &'static str {
        "conv3x3-gradients"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        _: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::zeros(x, lx, lw)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        _: &candle_core::CudaStorage,
        lw: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Self::zeros(x, lx, lw)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, weight, grad) = (x.detach(), weight.detach(), grad.detach());
        let reversed = Tensor::new(&[2u32, 1, 0], weight.device())?;
        let flipped = weight
            .transpose(0, 1)?
            .contiguous()?
            .index_select(&reversed, 2)?
            .index_select(&reversed, 3)?;
        let grad_x = grad.conv2d(&flipped, 1, 1, 1, 1)?;
        let grad_weight = x
            .transpose(0, 1)?
            .contiguous()?
            .conv2d(&grad.transpose(0, 1)?.contiguous()?, 1, 1, 1, 1)?
            .transpose(0, 1)?
            .contiguous()?;
        Ok((Some(grad_x), Some(grad_weight)))
    }
}

/// `t` itself when its storage is already contiguous from offset 0, else a contiguous copy.
pub(crate) fn plain(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        Ok(t.clone())
    } else {
        t.force_contiguous()
    }
}

/// The values of a CPU storage under a contiguous layout.
pub(crate) fn values<'a, T: candle_core::WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [T]> {
    let all = T::cpu_storage_as_slice(storage)?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("conv3x3: expected a contiguous tensor");
    };
    Ok(&all[start..end])
}

/// The CPU convolution as one candle op over its input(s) and one parameter vector: the weight
/// flattened, then the bias if any (candle's custom ops take at most three tensors; the
/// concatenation's gradient reaches the weight and bias through `cat`).
struct Conv3x3 {
    relu: bool,
    bias: bool,
    out_channels: usize,
    in_channels: usize,
}

/// The gradient of the input whose channels take `rows` of the flipped, transposed kernel: the
/// output gradient (`out_dims`) convolved with them.
fn input_grad<T: conv::Real>(
    grad: &[T],
    flipped: &[T],
    out_dims: conv::Dims,
    rows: std::ops::Range<usize>,
    channels: usize,
) -> Vec<T> {
    conv::forward(
        conv::Input::One(grad),
        out_dims,
        &flipped[rows],
        channels,
        None,
        false,
    )
}

/// An input of one or two parts.
fn input_of<'a, T>(parts: &[&'a [T]]) -> conv::Input<'a, T> {
    match parts {
        [x] => conv::Input::One(x),
        [up, skip] => conv::Input::Two(up, skip),
        _ => unreachable!("conv3x3 takes one or two inputs"),
    }
}

impl Conv3x3 {
    fn new(weight: &Tensor, bias: Option<&Tensor>, relu: bool) -> Result<Conv3x3> {
        let (out_channels, in_channels, kh, kw) = weight.dims4()?;
        if (kh, kw) != (3, 3) || bias.is_some_and(|b| b.dims() != [out_channels]) {
            candle_core::bail!(
                "conv3x3: weight {:?} and bias {:?} are not [Cout, Cin, 3, 3] and [Cout]",
                weight.shape(),
                bias.map(|b| b.shape())
            );
        }
        Ok(Conv3x3 {
            relu,
            bias: bias.is_some(),
            out_channels,
            in_channels,
        })
    }

    /// The op's parameter vector: the weight flattened, then the bias if any.
    fn params(weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let weight = weight.flatten_all()?;
        match bias {
            Some(bias) => Tensor::cat(&[&weight, bias], 0),
            None => Ok(weight),
        }
    }

    fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * 9
    }

    fn dims(&self, parts: &[&Shape]) -> Result<conv::Dims> {
        let (batch, _, height, width) = parts[0].dims4()?;
        let mut channels = 0;
        for shape in parts {
            let (b, c, h, w) = shape.dims4()?;
            if (b, h, w) != (batch, height, width) {
                candle_core::bail!("conv3x3: inputs {:?} do not match in batch and size", parts);
            }
            channels += c;
        }
        if channels != self.in_channels {
            candle_core::bail!(
                "conv3x3: the input has {channels} channels, the weight takes {}",
                self.in_channels
            );
        }
        Ok(conv::Dims {
            batch,
            channels,
            height,
            width,
        })
    }

    fn run(
        &self,
        parts: &[(&CpuStorage, &Layout)],
        params: (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let shapes: Vec<&Shape> = parts.iter().map(|(_, l)| l.shape()).collect();
        let dims = self.dims(&shapes)?;
        let expected = self.weight_len() + if self.bias { self.out_channels } else { 0 };
        if params.1.shape().elem_count() != expected {
            candle_core::bail!("conv3x3: {expected} parameters expected");
        }
        fn typed<T: candle_core::WithDType + conv::Real>(
            op: &Conv3x3,
            dims: conv::Dims,
            parts: &[(&CpuStorage, &Layout)],
            params: (&CpuStorage, &Layout),
        ) -> Result<CpuStorage> {
            let inputs: Vec<&[T]> = parts
                .iter()
                .map(|(s, l)| values::<T>(s, l))
                .collect::<Result<_>>()?;
            let (weight, bias) = values::<T>(params.0, params.1)?.split_at(op.weight_len());
            let y = conv::forward(
                input_of(&inputs),
                dims,
                weight,
                op.out_channels,
                op.bias.then_some(bias),
                op.relu,
            );
            Ok(T::to_cpu_storage_owned(y))
        }
        let storage = match parts[0].0 {
            CpuStorage::F32(_) => typed::<f32>(self, dims, parts, params)?,
            CpuStorage::F64(_) => typed::<f64>(self, dims, parts, params)?,
            _ => candle_core::bail!("conv3x3: f32 or f64 tensors only"),
        };
        Ok((
            storage,
            Shape::from((dims.batch, self.out_channels, dims.height, dims.width)),
        ))
    }

    /// The gradient of each input that needs one (not of the network's input), and of the
    /// parameter vector.
    fn gradients(
        &self,
        parts: &[&Tensor],
        params: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Vec<Option<Tensor>>, Tensor)> {
        let shapes: Vec<&Shape> = parts.iter().map(|t| t.shape()).collect();
        let dims = self.dims(&shapes)?;
        let (cout, cin) = (self.out_channels, self.in_channels);
        let out_dims = conv::Dims {
            channels: cout,
            ..dims
        };
        // The output gradient through the ReLU, with the bias gradient in the same pass.
        let (grad, bias_grad) = if self.relu {
            let shapes = [grad.shape().clone(), Shape::from(cout)];
            let mut through = outputs(
                &[grad, y],
                &shapes,
                |v| {
                    let (pre, bias) = conv::relu_grad(v[0], v[1], out_dims);
                    vec![pre, bias]
                },
                |v| {
                    let (pre, bias) = conv::relu_grad(v[0], v[1], out_dims);
                    vec![pre, bias]
                },
            )?;
            let bias_grad = through.pop().expect("two outputs");
            (through.pop().expect("two outputs"), bias_grad)
        } else {
            let bias_grad = from_values(
                &[grad],
                &Shape::from(cout),
                |v| conv::bias_grad(v[0], out_dims),
                |v| conv::bias_grad(v[0], out_dims),
            )?;
            (plain(grad)?, bias_grad)
        };
        let mut inputs = parts.to_vec();
        inputs.push(&grad);
        let n = parts.len();
        let grad_weight = from_values(
            &inputs,
            &Shape::from(self.weight_len()),
            |v| conv::weight_grad(input_of(&v[..n]), dims, v[n], cout),
            |v| conv::weight_grad(input_of(&v[..n]), dims, v[n], cout),
        )?;
        let params_grad = if self.bias {
            Tensor::cat(&[grad_weight, bias_grad], 0)?
        } else {
            grad_weight
        };
        // Each input's gradient: the output gradient convolved with its rows of the flipped,
        // transposed kernel `[Cin, Cout, 3, 3]`.
        let weight_len = self.weight_len();
        let flipped = from_values(
            &[params],
            &Shape::from((cin, cout, 3, 3)),
            |v| conv::flipped_transposed(&v[0][..weight_len], cout, cin),
            |v| conv::flipped_transposed(&v[0][..weight_len], cout, cin),
        )?;
        let mut input_grads = Vec::with_capacity(parts.len());
        let mut first = 0;
        for part in parts {
            let channels = part.dim(1)?;
            let rows = first * cout * 9..(first + channels) * cout * 9;
            first += channels;
            // The network's input needs none.
            if !part.track_op() {
                input_grads.push(None);
                continue;
            }
            // v: the output gradient, the flipped kernel.
            input_grads.push(Some(from_values(
                &[&grad, &flipped],
                part.shape(),
                |v| input_grad(v[0], v[1], out_dims, rows.clone(), channels),
                |v| input_grad(v[0], v[1], out_dims, rows.clone(), channels),
            )?));
        }
        Ok((input_grads, params_grad))
    }
}

impl CustomOp2 for Conv3x3 {
    fn name(&self) -> &'static str {
        "conv3x3"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        params: &CpuStorage,
        lp: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(&[(x, lx)], (params, lp))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (mut input_grads, params_grad) = self.gradients(&[x], params, y, grad)?;
        Ok((input_grads.remove(0), Some(params_grad)))
    }
}

impl CustomOp3 for Conv3x3 {
    fn name(&self) -> &'static str {
        "conv3x3_concat"
    }

    fn cpu_fwd(
        &self,
        up: &CpuStorage,
        lu: &Layout,
        skip: &CpuStorage,
        ls: &Layout,
        params: &CpuStorage,
        lp: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(&[(up, lu), (skip, ls)], (params, lp))
    }

    fn bwd(
        &self,
        up: &Tensor,
        skip: &Tensor,
        params: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (input_grads, params_grad) = self.gradients(&[up, skip], params, y, grad)?;
        let [up_grad, skip_grad]: [Option<Tensor>; 2] =
            input_grads.try_into().expect("two inputs, two gradients");
        Ok((up_grad, skip_grad, Some(params_grad)))
    }
}
