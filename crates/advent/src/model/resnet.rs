//! DeepLab-V2 on ResNet-101 (and ResNet-50), the reference's `ResNetMulti` (SPEC §1.1).
//!
//! Differences from torchvision's ResNet that change numbers: the stride sits on each
//! bottleneck's first 1x1 convolution; the stem's max-pool uses ceil mode; layer3 and layer4
//! keep stride 1 and dilate every block by 2 and 4; the first block of every layer has a
//! projection shortcut. Output stride 8.

use super::classifier::{AsppSum, Classifier};
use super::layers::{Conv2d, ConvInit, ConvSpec, FrozenBatchNorm2d};
use super::Heads;
use anyhow::Result;
use tch::nn::Path;
use tch::Tensor;

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
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Heads> {
        let x = self.bn1.forward_t(&self.conv1.forward(x)?, train)?.f_relu()?;
        let x = x.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], true)?;
        let x = self.layers[0].forward_t(&x, train)?;
        let x = self.layers[1].forward_t(&x, train)?;
        let x3 = self.layers[2].forward_t(&x, train)?;
        let aux = match &self.aux {
            Some(head) => Some(head.forward(&x3)?),
            None => None,
        };
        let x4 = self.layers[3].forward_t(&x3, train)?;
        Ok(Heads { aux, main: self.main.forward(&x4)? })
    }
}
