//! DeepLab-V2 on ResNet-101 (and ResNet-50), the reference's `ResNetMulti` (SPEC §1.1).
//!
//! Differences from torchvision's ResNet that change numbers: the stride sits on each
//! bottleneck's first 1x1 convolution; the stem's max-pool uses ceil mode; layer3 and layer4
//! keep stride 1 and dilate every block by 2 and 4; the first block of every layer has a
//! projection shortcut. Output stride 8.

use super::classifier::{AsppSum, Classifier};
use super::layers::{Conv2d, ConvInit, ConvSpec, FoldedConv, FrozenBatchNorm2d, Then};
use super::Heads;
use anyhow::Result;
use tch::nn::Path;
use tch::{Kind, Tensor};

/// Backbone convolutions start at N(0, 0.01) (`m.weight.data.normal_(0, 0.01)`).
const CONV_INIT: ConvInit = ConvInit::Normal { std: 0.01 };
const EXPANSION: i64 = 4;

/// The residual unit of ResNet-50/101, Caffe-style (stride on `conv1`).
#[derive(Debug)]
struct Bottleneck {
    conv1: Conv2d,
    bn1: FrozenBatchNorm2d,
    conv2: Conv2d,
    bn2: FrozenBatchNorm2d,
    conv3: Conv2d,
    bn3: FrozenBatchNorm2d,
    downsample: Option<(Conv2d, FrozenBatchNorm2d)>,
}

impl Bottleneck {
    fn new(p: Path, in_ch: i64, planes: i64, stride: i64, dilation: i64, project: bool) -> Self {
        let out_ch = planes * EXPANSION;
        let downsample = project.then(|| {
            let d = p.sub("downsample");
            let spec = ConvSpec::new(in_ch, out_ch, 1).stride(stride);
            (Conv2d::new(d.sub("0"), spec, CONV_INIT), FrozenBatchNorm2d::new(d.sub("1"), out_ch))
        });
        Bottleneck {
            conv1: Conv2d::new(p.sub("conv1"), ConvSpec::new(in_ch, planes, 1).stride(stride), CONV_INIT),
            bn1: FrozenBatchNorm2d::new(p.sub("bn1"), planes),
            conv2: Conv2d::new(p.sub("conv2"), ConvSpec::new(planes, planes, 3).dilated(dilation), CONV_INIT),
            bn2: FrozenBatchNorm2d::new(p.sub("bn2"), planes),
            conv3: Conv2d::new(p.sub("conv3"), ConvSpec::new(planes, out_ch, 1), CONV_INIT),
            bn3: FrozenBatchNorm2d::new(p.sub("bn3"), out_ch),
            downsample,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let out = self.bn1.forward_t(&self.conv1.forward(x)?, train)?.f_relu()?;
        let out = self.bn2.forward_t(&self.conv2.forward(&out)?, train)?.f_relu()?;
        let out = self.bn3.forward_t(&self.conv3.forward(&out)?, train)?;
        let residual = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.shallow_clone(),
        };
        Ok(out.f_add(&residual)?.f_relu()?)
    }
}

/// A [`Bottleneck`] with its batch norms folded ([`FoldedConv`]).
#[derive(Debug)]
struct FoldedBottleneck {
    conv1: FoldedConv,
    conv2: FoldedConv,
    conv3: FoldedConv,
    downsample: Option<FoldedConv>,
}

impl FoldedBottleneck {
    fn new(b: &Bottleneck, kind: Kind) -> Result<Self> {
        Ok(FoldedBottleneck {
            conv1: FoldedConv::new(&b.conv1, &b.bn1, kind)?,
            conv2: FoldedConv::new(&b.conv2, &b.bn2, kind)?,
            conv3: FoldedConv::new(&b.conv3, &b.bn3, kind)?,
            downsample: b.downsample.as_ref().map(|(c, bn)| FoldedConv::new(c, bn, kind)).transpose()?,
        })
    }

    fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        let out = self.conv1.forward(x, Then::Relu, fused)?;
        let out = self.conv2.forward(&out, Then::Relu, fused)?;
        let residual = match &self.downsample {
            Some(conv) => conv.forward(x, Then::Nothing, fused)?,
            None => x.shallow_clone(),
        };
        self.conv3.forward(&out, Then::AddRelu(&residual), fused)
    }
}

#[derive(Debug)]
struct Layer {
    blocks: Vec<Bottleneck>,
}

impl Layer {
    /// `_make_layer(block, planes, n, stride, dilation)`: the projection shortcut exists
    /// whenever the stride or width changes or the layer is dilated, i.e. in the first block
    /// of every layer of DeepLab-V2.
    fn new(p: Path, in_ch: i64, planes: i64, n: usize, stride: i64, dilation: i64) -> Self {
        let project = stride != 1 || in_ch != planes * EXPANSION || dilation == 2 || dilation == 4;
        let mut blocks = vec![Bottleneck::new(p.sub("0"), in_ch, planes, stride, dilation, project)];
        for i in 1..n {
            blocks.push(Bottleneck::new(p.sub(i), planes * EXPANSION, planes, 1, dilation, false));
        }
        Layer { blocks }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for block in &self.blocks {
            x = block.forward_t(&x, train)?;
        }
        Ok(x)
    }
}

/// `ResNetMulti`: parameters `conv1`, `bn1`, `layer1`..`layer4`, `layer5` (aux classifier on
/// layer3, only when multi-level) and `layer6` (main classifier on layer4).
#[derive(Debug)]
pub struct DeepLabResNet {
    conv1: Conv2d,
    bn1: FrozenBatchNorm2d,
    layers: [Layer; 4],
    aux: Option<Classifier>,
    main: Classifier,
}

impl DeepLabResNet {
    /// `blocks`: bottlenecks per layer, `[3, 4, 23, 3]` for ResNet-101, `[3, 4, 6, 3]` for 50.
    /// `width`: channels of the stem and inside layer1's bottlenecks, 64 in ResNets; the
    /// layers work at 1, 2, 4 and 8 times it inside their bottlenecks, 4 times that outside.
    pub fn new(p: &Path, blocks: [usize; 4], width: i64, num_classes: i64, multi_level: bool, sum: AsppSum) -> Self {
        let (w, e) = (width, EXPANSION);
        let stem = ConvSpec::new(3, w, 7).stride(2).padding(3);
        let layers = [
            Layer::new(p.sub("layer1"), w, w, blocks[0], 1, 1),
            Layer::new(p.sub("layer2"), w * e, 2 * w, blocks[1], 2, 1),
            Layer::new(p.sub("layer3"), 2 * w * e, 4 * w, blocks[2], 1, 2),
            Layer::new(p.sub("layer4"), 4 * w * e, 8 * w, blocks[3], 1, 4),
        ];
        DeepLabResNet {
            conv1: Conv2d::new(p.sub("conv1"), stem, CONV_INIT),
            bn1: FrozenBatchNorm2d::new(p.sub("bn1"), w),
            layers,
            aux: multi_level.then(|| Classifier::new(p.sub("layer5"), 4 * w * e, num_classes, sum)),
            main: Classifier::new(p.sub("layer6"), 8 * w * e, num_classes, sum),
        }
    }

    /// `[N, 3, H, W]` → logits at output stride 8, `[N, C, h, w]` with
    /// h = ⌈(⌈H/2⌉ − 1)/2⌉ + 1 rounded as PyTorch's ceil-mode pool, then halved by layer2.
    /// `with_aux`: run the aux classifier (when the network has one).
    pub fn forward_t(&self, x: &Tensor, train: bool, with_aux: bool) -> Result<Heads> {
        let x = self.bn1.forward_t(&self.conv1.forward(x)?, train)?.f_relu()?;
        let x = x.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], true)?;
        let x = self.layers[0].forward_t(&x, train)?;
        let x = self.layers[1].forward_t(&x, train)?;
        let x3 = self.layers[2].forward_t(&x, train)?;
        let aux = match (&self.aux, with_aux) {
            (Some(head), true) => Some(head.forward(&x3)?),
            _ => None,
        };
        let x4 = self.layers[3].forward_t(&x3, train)?;
        Ok(Heads { aux, main: self.main.forward(&x4)? })
    }

    /// The classifiers' output channels zero-padded to `channels` ([`Classifier::padded_out`]).
    pub fn set_classifier_padding(&mut self, channels: Option<i64>) {
        for head in self.aux.iter_mut().chain([&mut self.main]) {
            head.padded_out = channels;
        }
    }

    /// The backbone with every batch norm folded into the convolution before it, for
    /// evaluation (a snapshot of the current parameters; the classifiers have no batch norm
    /// and are used as they are). `kind`: the activations' type, float32, or bfloat16 under
    /// bf16 autocast.
    pub fn fold(&self, kind: Kind, fused: bool) -> Result<FoldedResNet> {
        let mut layers = Vec::with_capacity(4);
        for layer in &self.layers {
            layers.push(layer.blocks.iter().map(|b| FoldedBottleneck::new(b, kind)).collect::<Result<_>>()?);
        }
        Ok(FoldedResNet { stem: FoldedConv::new(&self.conv1, &self.bn1, kind)?, layers, kind, fused })
    }

    /// [`DeepLabResNet::forward_t`] in evaluation mode through `folded` (from
    /// [`DeepLabResNet::fold`]): the same function, other roundings.
    pub fn forward_folded(&self, folded: &FoldedResNet, x: &Tensor, with_aux: bool) -> Result<Heads> {
        let fused = folded.fused;
        let x = folded.stem.forward(&x.f_to_kind(folded.kind)?, Then::Relu, fused)?;
        let mut x = x.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], true)?;
        let mut aux = None;
        for (i, layer) in folded.layers.iter().enumerate() {
            for block in layer {
                x = block.forward(&x, fused)?;
            }
            if i == 2 && with_aux {
                aux = self.aux.as_ref().map(|head| head.forward(&x)).transpose()?;
            }
        }
        Ok(Heads { aux, main: self.main.forward(&x)? })
    }
}

/// [`DeepLabResNet`]'s backbone with its batch norms folded ([`DeepLabResNet::fold`]).
#[derive(Debug)]
pub struct FoldedResNet {
    stem: FoldedConv,
    layers: Vec<Vec<FoldedBottleneck>>,
    kind: Kind,
    fused: bool,
}
