//! The fully-convolutional discriminator of ADVENT (SPEC §2, `get_fc_discriminator`).

use super::layers::{Conv2d, ConvInit, ConvSpec};
use anyhow::{ensure, Result};
use tch::nn::Path;
use tch::Tensor;

/// Slope of the leaky ReLUs.
const LEAKY_SLOPE: f64 = 0.2;
/// Five 4x4 stride-2 convolutions: an input side must be at least this long.
pub const MIN_INPUT_SIDE: i64 = 32;

/// `nn.Sequential(Conv(C,64), LReLU, Conv(64,128), LReLU, Conv(128,256), LReLU,
/// Conv(256,512), LReLU, Conv(512,1))`, every conv 4x4, stride 2, padding 1, with bias;
/// state-dict keys `{0,2,4,6,8}.{weight,bias}`. No normalisation, no sigmoid.
#[derive(Debug)]
pub struct Discriminator {
    convs: Vec<Conv2d>,
    slope: Tensor,
}

impl Discriminator {
    /// `ndf` is 64 in the reference.
    pub fn new(p: &Path, num_classes: i64, ndf: i64) -> Self {
        let widths = [num_classes, ndf, ndf * 2, ndf * 4, ndf * 8, 1];
        let convs = (0..5)
            .map(|i| {
                let spec = ConvSpec::new(widths[i], widths[i + 1], 4).stride(2).padding(1);
                Conv2d::new(p.sub(2 * i), spec, ConvInit::TorchDefault)
            })
            .collect();
        let slope = Tensor::from_slice(&[LEAKY_SLOPE as f32]).to_device(p.device());
        Discriminator { convs, slope }
    }

    /// `[N, C, H, W]` (weighted self-information at full input resolution) →
    /// `[N, 1, H/32, W/32]` patch logits (source = 0, target = 1).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        ensure!(
            size.len() == 4 && size[2] >= MIN_INPUT_SIDE && size[3] >= MIN_INPUT_SIDE,
            "discriminator input must be [N, C, H, W] with H, W >= {MIN_INPUT_SIDE}, got {size:?}"
        );
        let mut x = x.shallow_clone();
        for (i, conv) in self.convs.iter().enumerate() {
            x = conv.forward(&x)?;
            if i + 1 < self.convs.len() {
                // PReLU with a constant slope is LeakyReLU(0.2) (same value and gradient);
                // tch exposes no slope argument for leaky_relu.
                x = x.f_prelu(&self.slope.to_kind(x.kind()))?;
            }
        }
        Ok(x)
    }

    /// Follows its VarStore to `device` (after `VarStore::set_device`).
    pub fn set_device(&mut self, device: tch::Device) {
        self.slope = self.slope.to_device(device);
    }
}
