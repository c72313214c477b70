//! DeepLab-V2's classifier: atrous spatial pyramid pooling (ASPP) as the reference has it,
//! four parallel dilated 3x3 convolutions whose outputs are summed (SPEC §1.1).

use super::layers::{Conv2d, ConvInit, ConvSpec};
use anyhow::Result;
use tch::nn::Path;
use tch::Tensor;

/// Dilation (and padding) of the four branches.
pub const ASPP_DILATIONS: [i64; 4] = [6, 12, 18, 24];

/// Which ASPP branches the classifier adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsppSum {
    /// All four branches, as ADVENT does.
    #[default]
    AllFour,
    /// Only the d=6 and d=12 branches: AdaptSegNet's `return` inside the loop of
    /// `Classifier_Module.forward`, kept only to reproduce that code's models. The d=18 and
    /// d=24 convolutions still exist (and load) but take no part in the output.
    FirstTwo,
}

/// `ClassifierModule(inplanes, [6, 12, 18, 24], [6, 12, 18, 24], num_classes)`; parameters
/// `conv2d_list.{0..3}.{weight,bias}`.
#[derive(Debug)]
pub struct Classifier {
    branches: Vec<Conv2d>,
    sum: AsppSum,
}

impl Classifier {
    pub fn new(p: Path, in_channels: i64, num_classes: i64, sum: AsppSum) -> Self {
        let list = p.sub("conv2d_list");
        let branches = ASPP_DILATIONS
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let spec = ConvSpec::new(in_channels, num_classes, 3).dilated(d);
                Conv2d::new(list.sub(i), spec, ConvInit::NormalWithDefaultBias { std: 0.01 })
            })
            .collect();
        Classifier { branches, sum }
    }

    /// `[N, C_in, h, w]` features → `[N, num_classes, h, w]` logits.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let used = match self.sum {
            AsppSum::AllFour => 4,
            AsppSum::FirstTwo => 2,
        };
        let mut out = self.branches[0].forward(x)?;
        for branch in &self.branches[1..used] {
            out = out.f_add(&branch.forward(x)?)?;
        }
        Ok(out)
    }
}
