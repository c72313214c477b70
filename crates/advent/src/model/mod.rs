//! Networks of ADVENT: DeepLab-V2 segmentation networks and the discriminator.
//!
//! Every module is built on a [`tch::nn::Path`], so parameter names are the module path and
//! equal the reference state-dict keys (`layer3.4.conv2.weight`, `layer6.conv2d_list.0.bias`,
//! `features.29.weight`, `4.bias`): loading a PyTorch checkpoint is a lookup.

mod classifier;
mod discriminator;
pub(crate) mod layers;
mod load;
mod resnet;
mod vgg;

pub use classifier::{AsppSum, ASPP_DILATIONS};
pub use discriminator::{Discriminator, MIN_INPUT_SIDE as DISCRIMINATOR_MIN_INPUT_SIDE};
pub use layers::{Conv2d, ConvInit, ConvSpec, FrozenBatchNorm2d};
pub use load::{load_into, LoadOptions, LoadReport, ModelOverrides, WeightsKind};

use anyhow::{bail, ensure, Context, Result};
use std::fmt;
use std::str::FromStr;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::weights::StateDict;

/// The two outputs of a segmentation network, logits at output stride 8, not upsampled.
#[derive(Debug)]
pub struct Heads {
    /// `[N, C, h, w]` from the classifier on layer3 (`layer5`); `None` when single-level.
    pub aux: Option<Tensor>,
    /// `[N, C, h, w]` from the classifier on layer4 (`layer6`, or VGG's `classifier`).
    pub main: Tensor,
}

/// Segmentation architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// DeepLab-V2 on ResNet-101, the paper's main network.
    DeepLabV2ResNet101,
    /// DeepLab-V2 on ResNet-50: the same network with `[3, 4, 6, 3]` blocks.
    DeepLabV2ResNet50,
    /// DeepLab-V2 on VGG-16 (AdaptSegNet's `DeeplabVGG`), single-level.
    DeepLabV2Vgg16,
    /// Not in the paper: the DeepLab-V2 head on a reduced ResNet (one bottleneck per layer,
    /// a quarter of the widths), for the CPU demo and tests.
    DeepLabV2Tiny,
}

impl Arch {
    pub const ALL: [Arch; 4] =
        [Arch::DeepLabV2ResNet101, Arch::DeepLabV2ResNet50, Arch::DeepLabV2Vgg16, Arch::DeepLabV2Tiny];

    pub fn name(self) -> &'static str {
        match self {
            Arch::DeepLabV2ResNet101 => "deeplabv2-r101",
            Arch::DeepLabV2ResNet50 => "deeplabv2-r50",
            Arch::DeepLabV2Vgg16 => "deeplabv2-vgg16",
            Arch::DeepLabV2Tiny => "deeplabv2-tiny",
        }
    }

    /// Bottlenecks per ResNet layer and the stem width; `None` for VGG.
    pub fn resnet_layout(self) -> Option<([usize; 4], i64)> {
        match self {
            Arch::DeepLabV2ResNet101 => Some(([3, 4, 23, 3], 64)),
            Arch::DeepLabV2ResNet50 => Some(([3, 4, 6, 3], 64)),
            Arch::DeepLabV2Tiny => Some(([1, 1, 1, 1], 16)),
            Arch::DeepLabV2Vgg16 => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match Arch::ALL.iter().find(|a| a.name() == s) {
            Some(a) => Ok(*a),
            None => {
                let names: Vec<_> = Arch::ALL.iter().map(|a| a.name()).collect();
                bail!("unknown architecture `{s}` (expected one of: {})", names.join(", "))
            }
        }
    }
}

/// Everything that fixes a segmentation network's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub num_classes: i64,
    /// Aux classifier on layer3 (ResNet only); the reference trains with it (`MULTI_LEVEL`).
    pub multi_level: bool,
    pub aspp_sum: AsppSum,
}

impl ModelConfig {
    /// The paper's network: DeepLab-V2 ResNet-101, multi-level, 19 classes.
    pub fn deeplabv2_r101(num_classes: i64) -> Self {
        ModelConfig { arch: Arch::DeepLabV2ResNet101, num_classes, multi_level: true, aspp_sum: AsppSum::AllFour }
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.num_classes >= 2, "num_classes must be at least 2, got {}", self.num_classes);
        ensure!(
            !(self.multi_level && self.arch == Arch::DeepLabV2Vgg16),
            "deeplabv2-vgg16 is single-level: it has no aux classifier"
        );
        Ok(())
    }

    /// Reads the architecture, class count and levels from a model checkpoint's keys.
    pub fn detect(dict: &StateDict) -> Result<Self> {
        load::detect_config(dict)
    }
}

/// Evaluation with the batch norms folded into the convolutions before them
/// ([`SegModel::fold_batch_norms`]). Not in the reference, which runs its batch norms as
/// modules: the same function in other roundings (tested against it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BnFold {
    /// Convolution, batch norm and ReLU as separate operations, as in training.
    #[default]
    Off,
    /// Each batch norm folded into the convolution's weight and bias; ReLU and residual
    /// addition in place.
    On,
    /// Folded, and on CUDA the bias, residual addition and ReLU fused into cuDNN's
    /// convolution (one kernel call each).
    Fused,
}

impl BnFold {
    pub const NAMES: &'static str = "off, on, fused";

    pub fn name(self) -> &'static str {
        match self {
            BnFold::Off => "off",
            BnFold::On => "on",
            BnFold::Fused => "fused",
        }
    }
}

impl fmt::Display for BnFold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BnFold {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(BnFold::Off),
            "on" => Ok(BnFold::On),
            "fused" => Ok(BnFold::Fused),
            _ => bail!("unknown batch-norm folding `{s}` (expected one of: {})", BnFold::NAMES),
        }
    }
}

enum Network {
    ResNet(Box<resnet::DeepLabResNet>),
    Vgg(Box<vgg::DeepLabVgg>),
}

/// A segmentation network with its parameters.
pub struct SegModel {
    pub vs: VarStore,
    pub config: ModelConfig,
    net: Network,
    /// Weights and inputs in the channels-last (NHWC) memory layout; see [`channels_last`].
    channels_last: bool,
    /// [`SegModel::fold_batch_norms`]: the mode, and the folded backbone (ResNets only).
    fold: BnFold,
    folded: Option<Box<resnet::FoldedResNet>>,
}

impl SegModel {
    /// Builds the network with the reference's initialisation (SPEC §1.1), drawn from
    /// libtorch's generator (seed it with `tch::manual_seed`).
    ///
    /// The parameters are drawn on the CPU and then moved, so that a seed gives the same
    /// network on every device.
    pub fn new(config: ModelConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let mut vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let net = match config.arch.resnet_layout() {
            Some((blocks, width)) => Network::ResNet(Box::new(resnet::DeepLabResNet::new(
                &root,
                blocks,
                width,
                config.num_classes,
                config.multi_level,
                config.aspp_sum,
            ))),
            None => Network::Vgg(Box::new(vgg::DeepLabVgg::new(&root, config.num_classes, config.aspp_sum))),
        };
        if device != Device::Cpu {
            vs.set_device(device);
        }
        Ok(SegModel { vs, config, net, channels_last: false, fold: BnFold::Off, folded: None })
    }

    /// Stores the convolution weights channels-last and feeds the network its inputs so
    /// (the same values in another memory order; see [`channels_last`]). Irreversible for
    /// this model; checkpoints are written in the usual layout all the same.
    pub fn use_channels_last(&mut self) -> Result<()> {
        ensure!(self.folded.is_none(), "convert a model to channels-last before folding its batch norms");
        to_channels_last(&self.vs)?;
        self.channels_last = true;
        Ok(())
    }

    pub fn is_channels_last(&self) -> bool {
        self.channels_last
    }

    /// From now on, evaluation-mode forward passes run with every batch norm folded into
    /// the convolution before it ([`BnFold`]), from a snapshot of the current parameters:
    /// for a model that only evaluates (loaded, then converted to channels-last if wanted).
    /// Training-mode passes are refused afterwards. `precision` fixes the folded weights'
    /// type (bfloat16 under CUDA bf16 autocast, else float32). VGG has no batch norm and
    /// runs as it is. The folded backbone is a second copy of its weights.
    ///
    /// # Errors
    ///
    /// `Fused` on a model that is not on a CUDA device (cuDNN's fused kernels).
    pub fn fold_batch_norms(&mut self, fold: BnFold, precision: crate::device::Precision) -> Result<()> {
        ensure!(
            fold != BnFold::Fused || self.device().is_cuda(),
            "batch-norm folding `fused` needs a CUDA device (cuDNN's fused convolutions); `on` works everywhere"
        );
        let kind = match precision == crate::device::Precision::Bf16 && self.device().is_cuda() {
            true => tch::Kind::BFloat16,
            false => tch::Kind::Float,
        };
        self.folded = match (&self.net, fold) {
            (Network::ResNet(net), BnFold::On | BnFold::Fused) => {
                Some(Box::new(net.fold(kind, fold == BnFold::Fused)?))
            }
            _ => None,
        };
        self.fold = fold;
        Ok(())
    }

    /// The classifiers' output channels (the classes) zero-padded to `channels` in every
    /// branch's convolution and the sum narrowed back: the same logits and gradients, for a
    /// channel count cuDNN's tensor-core kernels take whole (`advent bench --aspp-pad`).
    /// `None`: as they are.
    pub fn set_classifier_padding(&mut self, channels: Option<i64>) {
        match &mut self.net {
            Network::ResNet(net) => net.set_classifier_padding(channels),
            Network::Vgg(net) => net.set_classifier_padding(channels),
        }
    }

    /// The batch-norm folding in force ([`SegModel::fold_batch_norms`]).
    pub fn bn_fold(&self) -> BnFold {
        self.fold
    }

    /// `[N, 3, H, W]` (BGR, mean subtracted) → logits of both heads at output stride 8.
    ///
    /// `train` selects batch statistics in every BatchNorm (and updates their running
    /// statistics); otherwise the running statistics are used.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Heads> {
        self.forward_heads(x, train, true)
    }

    /// The main head's logits of an evaluation-mode pass, without running the aux classifier
    /// (evaluation and prediction use the main head only, SPEC §6).
    pub fn forward_main(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_heads(x, false, false)?.main)
    }

    fn forward_heads(&self, x: &Tensor, train: bool, with_aux: bool) -> Result<Heads> {
        let size = x.size();
        ensure!(size.len() == 4 && size[1] == 3, "network input must be [N, 3, H, W], got {size:?}");
        ensure!(size[2] >= 1 && size[3] >= 1, "network input is empty: {size:?}");
        let nhwc;
        let x = if self.channels_last {
            nhwc = channels_last(x)?;
            &nhwc
        } else {
            x
        };
        ensure!(
            !(train && self.fold != BnFold::Off),
            "this model's batch norms are folded for evaluation: it cannot run a training-mode pass"
        );
        match (&self.net, &self.folded) {
            (Network::ResNet(net), Some(folded)) => net.forward_folded(folded, x, with_aux),
            (Network::ResNet(net), None) => net.forward_t(x, train, with_aux),
            (Network::Vgg(net), _) => net.forward(x),
        }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Builds the network a checkpoint file describes (or `overrides` impose) and loads it.
    pub fn from_checkpoint(
        path: &std::path::Path,
        overrides: &ModelOverrides,
        options: LoadOptions,
        device: Device,
    ) -> Result<(Self, LoadReport)> {
        let dict = crate::weights::load(path)?;
        let context = || format!("loading {}", path.display());
        let config = load::resolve_config(&dict, overrides).with_context(context)?;
        let model = SegModel::new(config, device)?;
        let report = load_into(&model.vs, dict, options).with_context(context)?;
        Ok((model, report))
    }

    /// The current parameters and buffers, keyed as the reference's `state_dict()`.
    pub fn state_dict(&self) -> StateDict {
        StateDict::from_var_store(&self.vs)
    }
}

/// Spatial size of the logits for an `h x w` input: ResNet's stem convolution (7x7/2,
/// padding 3), ceil-mode max-pool (3x3/2, padding 1: ⌈(n − 1)/2⌉ + 1 = ⌊n/2⌋ + 1) and
/// layer2's stride 2; VGG's three floor-mode 2x2 pools.
pub fn output_size(arch: Arch, h: i64, w: i64) -> (i64, i64) {
    let side = |n: i64| match arch {
        Arch::DeepLabV2Vgg16 => n / 8,
        _ => {
            let stem = (n - 1) / 2 + 1;
            let pool = stem / 2 + 1;
            (pool - 1) / 2 + 1
        }
    };
    (side(h), side(w))
}

/// The same 4-D tensor with channels-last strides (PyTorch's `memory_format=channels_last`:
/// logically `[N, C, H, W]`, stored `[N, H, W, C]`). cuDNN's tensor-core convolutions work
/// in this layout; given NCHW tensors they transpose on the way in and out. Other tensors
/// are returned as they are.
pub fn channels_last(x: &Tensor) -> Result<Tensor> {
    if x.dim() != 4 {
        return Ok(x.shallow_clone());
    }
    Ok(x.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?)
}

/// Whether a 4-D tensor is stored channels-last.
pub fn is_channels_last(x: &Tensor) -> bool {
    let (size, stride) = (x.size(), x.stride());
    size.len() == 4 && stride[1] == 1 && stride[3] == size[1] && stride[2] == size[1] * size[3]
}

/// Converts every 4-D variable of `vs` (the convolution weights) to channels-last, in place:
/// modules holding them see the new layout.
pub fn to_channels_last(vs: &VarStore) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for (_, mut var) in vs.variables() {
            if var.dim() == 4 {
                let nhwc = channels_last(&var)?;
                var.f_set_data(&nhwc)?;
            }
        }
        Ok(())
    })
}

/// max |a − b| / max |a|, for tests of layouts and paddings that must not change a result.
#[cfg(test)]
pub(crate) fn relative_gap(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[]) / a.abs().max().double_value(&[])
}
