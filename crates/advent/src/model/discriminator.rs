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
    /// The first convolution's input zero-padded to this many channels (see
    /// [`Conv2d::forward_padded`]); `None`: as it comes.
    pub padded_input: Option<i64>,
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
        Discriminator { convs, slope, padded_input: None }
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
            x = match (i, self.padded_input) {
                (0, Some(channels)) => conv.forward_padded(&x, channels)?,
                _ => conv.forward(&x)?,
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::{Device, Kind};

    /// `padded_input` changes the layout of the work, not its result: output, input gradient
    /// and first-layer weight gradient as without it, NCHW and channels-last. Tolerance: 1e-6
    /// of each tensor's size (the same sums, with zero terms added).
    #[test]
    fn a_padded_input_gives_the_same_output_and_gradients() {
        tch::manual_seed(4);
        for channels_last in [false, true] {
            let vs = VarStore::new(Device::Cpu);
            let mut d = Discriminator::new(&vs.root(), 19, 8);
            if channels_last {
                crate::model::to_channels_last(&vs).unwrap();
            }
            let mut x = Tensor::rand([1, 19, 64, 96], (Kind::Float, Device::Cpu));
            if channels_last {
                x = crate::model::channels_last(&x).unwrap();
            }
            let mut results = Vec::new();
            for pad in [None, Some(24)] {
                d.padded_input = pad;
                for (_, mut v) in vs.variables() {
                    v.zero_grad();
                }
                let xi = x.detach().set_requires_grad(true);
                let y = d.forward(&xi).unwrap();
                let upstream = Tensor::ones_like(&y).cumsum(3, Kind::Float);
                (&y * upstream).sum(Kind::Float).backward();
                results.push((y.detach(), xi.grad(), vs.variables()["0.weight"].grad().copy()));
            }
            let gap = crate::model::relative_gap;
            let (a, b) = (&results[0], &results[1]);
            for (what, g) in
                [("output", gap(&a.0, &b.0)), ("input gradient", gap(&a.1, &b.1)), ("weight gradient", gap(&a.2, &b.2))]
            {
                assert!(g <= 1e-6, "channels_last {channels_last}: {what} differs by {g:e}");
            }
        }
    }
}
