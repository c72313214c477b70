//! DeepLab-V2 on VGG-16, as AdaptSegNet's `DeeplabVGG` defines it (SPEC §1.4): VGG-16's
//! convolutions with pool4 and pool5 removed, conv5 dilated by 2, fc6/fc7 as dilated 3x3
//! convolutions, and the ASPP classifier. Output stride 8, single level.

use super::classifier::{AsppSum, Classifier};
use super::layers::{Conv2d, ConvInit, ConvSpec};
use super::Heads;
use anyhow::Result;
use tch::nn::Path;
use tch::Tensor;

/// One step of `features` (an `nn.Sequential`; the index is the state-dict key).
#[derive(Debug)]
enum Step {
    /// Conv then ReLU; the ReLU takes the next index.
    ConvRelu(Conv2d),
    /// 2x2 max-pool, stride 2, floor mode.
    Pool,
}

#[derive(Debug)]
pub struct DeepLabVgg {
    features: Vec<Step>,
    classifier: Classifier,
}

/// (index in `features`, in, out, dilation) of each convolution after pool4/pool5 were
/// removed: conv1_1..conv5_3, then fc6 and fc7.
const CONVS: [(i64, i64, i64, i64); 15] = [
    (0, 3, 64, 1),
    (2, 64, 64, 1),
    (5, 64, 128, 1),
    (7, 128, 128, 1),
    (10, 128, 256, 1),
    (12, 256, 256, 1),
    (14, 256, 256, 1),
    (17, 256, 512, 1),
    (19, 512, 512, 1),
    (21, 512, 512, 1),
    (23, 512, 512, 2),
    (25, 512, 512, 2),
    (27, 512, 512, 2),
    (29, 512, 1024, 4),
    (31, 1024, 1024, 4),
];
/// Indices of the three pools kept (pool1..pool3).
const POOLS: [i64; 3] = [4, 9, 16];
/// fc6 and fc7 are new layers with PyTorch's default initialisation.
const FIRST_FC: i64 = 29;

impl DeepLabVgg {
    pub fn new(p: &Path, num_classes: i64, sum: AsppSum) -> Self {
        let f = p.sub("features");
        let mut features = Vec::new();
        let mut pools = POOLS.iter().peekable();
        for &(idx, c_in, c_out, d) in &CONVS {
            if pools.next_if(|&&q| q < idx).is_some() {
                features.push(Step::Pool);
            }
            let init = if idx >= FIRST_FC { ConvInit::TorchDefault } else { ConvInit::KaimingFanOut };
            let spec = ConvSpec::new(c_in, c_out, 3).dilated(d);
            features.push(Step::ConvRelu(Conv2d::new(f.sub(idx), spec, init)));
        }
        DeepLabVgg { features, classifier: Classifier::new(p.sub("classifier"), 1024, num_classes, sum) }
    }

    /// `[N, 3, H, W]` → `Heads { aux: None, main: [N, C, ⌊⌊⌊H/2⌋/2⌋/2⌋, ...] }`.
    pub fn forward(&self, x: &Tensor) -> Result<Heads> {
        let mut x = x.shallow_clone();
        for step in &self.features {
            x = match step {
                Step::ConvRelu(conv) => conv.forward(&x)?.f_relu()?,
                Step::Pool => x.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?,
            };
        }
        Ok(Heads { aux: None, main: self.classifier.forward(&x)? })
    }

    /// The classifier's output channels zero-padded to `channels` ([`Classifier::padded_out`]).
    pub fn set_classifier_padding(&mut self, channels: Option<i64>) {
        self.classifier.padded_out = channels;
    }
}
