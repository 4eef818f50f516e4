//! The U-Net. At the default `[model]` it is the reference network, parameter for parameter and
//! name for name (`layer1.step.0.weight` … `layer8.bias`), so PyTorch weights load unchanged.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, VarBuilder};

use crate::config::{ModelConfig, Upsampling};
use crate::norm::BatchNorm;
use crate::ops::{
    conv1x1, conv3x3, conv3x3_composed, conv3x3_concat, max_pool2x2, upsample_bilinear2x,
};

/// conv3x3 → (batch norm) → ReLU, twice. The convolutions are `step.0` and `step.2` as in the
/// reference's `nn.Sequential(conv, ReLU, conv, ReLU)`.
pub struct DoubleConv {
    conv1: Conv2d,
    norm1: Option<BatchNorm>,
    conv2: Conv2d,
    norm2: Option<BatchNorm>,
}

impl DoubleConv {
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        batch_norm: bool,
    ) -> Result<Self> {
        let padded = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let norm = |name: &str| -> Result<Option<BatchNorm>> {
            batch_norm
                .then(|| BatchNorm::new(out_channels, vb.pp(name)))
                .transpose()
        };
        Ok(DoubleConv {
            conv1: candle_nn::conv2d(in_channels, out_channels, 3, padded, vb.pp("step.0"))?,
            norm1: norm("norm.0")?,
            conv2: candle_nn::conv2d(out_channels, out_channels, 3, padded, vb.pp("step.2"))?,
            norm2: norm("norm.2")?,
        })
    }

    /// The block on `inputs` concatenated along the channels (one tensor, or a decoder level's
    /// upsampled map and skip connection).
    pub fn forward_t(&self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        let h = match &self.norm1 {
            None => conv(&self.conv1, inputs, true)?,
            Some(norm) => norm.forward_t(&conv(&self.conv1, inputs, false)?, train, true)?,
        };
        match &self.norm2 {
            None => conv(&self.conv2, &[&h], true),
            Some(norm) => norm.forward_t(&conv(&self.conv2, &[&h], false)?, train, true),
        }
    }
}

/// A 3x3 padded convolution with its bias, then ReLU if `relu`, of `inputs` concatenated along
/// the channels: on CPU one op ([`conv3x3`], [`conv3x3_concat`]: the concatenation is never
/// made, ReLU is fused), elsewhere [`conv3x3_composed`].
fn conv(layer: &Conv2d, inputs: &[&Tensor], relu: bool) -> Result<Tensor> {
    let (weight, bias) = (layer.weight(), layer.bias());
    match inputs {
        [x] if x.device().is_cpu() => conv3x3(x, weight, bias, relu),
        [up, skip] if up.device().is_cpu() => conv3x3_concat(up, skip, weight, bias, relu),
        _ => conv3x3_composed(&Tensor::cat(inputs, 1)?, weight, bias, relu),
    }
}

/// Encoder levels `layer1..=layer{depth}`, decoder levels `layer{depth+1}..=layer{2 depth - 1}`
/// (upsample, concatenate [upsampled, skip], DoubleConv), head `layer{2 depth}`: a 1x1 conv to
/// one logit per pixel.
pub struct UNet {
    config: ModelConfig,
    encoder: Vec<DoubleConv>,
    upsamplers: Vec<Option<ConvTranspose2d>>,
    decoder: Vec<DoubleConv>,
    head: Conv2d,
}

impl UNet {
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<UNet> {
        let depth = config.depth;
        let width = |level: usize| config.width << level;
        let mut encoder = Vec::with_capacity(depth);
        for level in 0..depth {
            let input = if level == 0 {
                config.in_channels
            } else {
                width(level - 1)
            };
            encoder.push(DoubleConv::new(
                vb.pp(format!("layer{}", level + 1)),
                input,
                width(level),
                config.batch_norm,
            )?);
        }
        let mut upsamplers = Vec::with_capacity(depth - 1);
        let mut decoder = Vec::with_capacity(depth - 1);
        for step in 0..depth - 1 {
            let level = depth - 2 - step; // the level this step arrives at
            let below = width(level + 1);
            upsamplers.push(match config.upsampling {
                Upsampling::Bilinear => None,
                Upsampling::Transposed => Some(candle_nn::conv_transpose2d(
                    below,
                    below,
                    2,
                    ConvTranspose2dConfig {
                        stride: 2,
                        ..Default::default()
                    },
                    vb.pp(format!("up{}", step + 1)),
                )?),
            });
            decoder.push(DoubleConv::new(
                vb.pp(format!("layer{}", depth + 1 + step)),
                below + width(level),
                width(level),
                config.batch_norm,
            )?);
        }
        let head = candle_nn::conv2d(
            config.width,
            1,
            1,
            Conv2dConfig::default(),
            vb.pp(format!("layer{}", 2 * depth)),
        )?;
        Ok(UNet {
            config: config.clone(),
            encoder,
            upsamplers,
            decoder,
            head,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Logits `[B, 1, H, W]` for input `[B, in_channels, H, W]`; H and W must be multiples of
    /// 2^(depth - 1). `train` switches batch norm to batch statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, channels, h, w) = x.dims4()?;
        let multiple = self.config.size_multiple();
        if channels != self.config.in_channels || h % multiple != 0 || w % multiple != 0 {
            candle_core::bail!(
                "U-Net input is {channels}x{h}x{w}; it needs {} channels and a size that is a multiple of {multiple}",
                self.config.in_channels
            );
        }
        let mut skips = Vec::with_capacity(self.config.depth - 1);
        let mut h = x.clone();
        for (level, block) in self.encoder.iter().enumerate() {
            h = block.forward_t(&[&h], train)?;
            if level + 1 < self.encoder.len() {
                skips.push(h.clone());
                h = max_pool2x2(&h)?;
            }
        }
        for (block, upsampler) in self.decoder.iter().zip(&self.upsamplers) {
            let up = match upsampler {
                None => upsample_bilinear2x(&h)?,
                Some(conv) => conv.forward(&h)?,
            };
            let skip = skips.pop().expect("one skip per decoder level");
            h = block.forward_t(&[&up, &skip], train)?;
        }
        match self.head.bias() {
            Some(bias) => conv1x1(&h, self.head.weight(), bias),
            None => self.head.forward(&h),
        }
    }
}

impl Module for UNet {
    /// Inference: batch norm (if any) uses its running statistics.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}
