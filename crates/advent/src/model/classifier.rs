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
    /// Each branch's output channels zero-padded to this many, the sum narrowed back (see
    /// [`Conv2d::forward_padded_out`]); `None`: as they are.
    pub padded_out: Option<i64>,
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
        Classifier { branches, sum, padded_out: None }
    }

    /// `[N, C_in, h, w]` features → `[N, num_classes, h, w]` logits.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let used = match self.sum {
            AsppSum::AllFour => 4,
            AsppSum::FirstTwo => 2,
        };
        let classes = self.branches[0].weight.size()[0];
        let pad = self.padded_out.filter(|&c| c > classes);
        let branch = |conv: &Conv2d| match pad {
            Some(c) => conv.forward_padded_out(x, c),
            None => conv.forward(x),
        };
        let mut out = branch(&self.branches[0])?;
        for conv in &self.branches[1..used] {
            out = out.f_add(&branch(conv)?)?;
        }
        if pad.is_none() {
            return Ok(out);
        }
        let out = out.f_narrow(1, 0, classes)?;
        match super::is_channels_last(x) {
            true => super::channels_last(&out),
            false => Ok(out.f_contiguous()?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::{Device, Kind};

    /// `padded_out` changes the layout of the work, not its result: logits, input gradient
    /// and every branch's weight and bias gradients as without it, NCHW and channels-last,
    /// in the input's layout. Tolerance: 1e-6 of each tensor's size (the same sums; the
    /// added channels are computed apart and dropped).
    #[test]
    fn padded_output_channels_give_the_same_logits_and_gradients() {
        tch::manual_seed(5);
        for channels_last in [false, true] {
            let vs = VarStore::new(Device::Cpu);
            let mut head = Classifier::new(vs.root(), 32, 19, AsppSum::AllFour);
            let mut x = Tensor::randn([1, 32, 29, 37], (Kind::Float, Device::Cpu));
            if channels_last {
                crate::model::to_channels_last(&vs).unwrap();
                x = crate::model::channels_last(&x).unwrap();
            }
            let mut results = Vec::new();
            for pad in [None, Some(24)] {
                head.padded_out = pad;
                for (_, mut v) in vs.variables() {
                    v.zero_grad();
                }
                let xi = x.detach().set_requires_grad(true);
                let y = head.forward(&xi).unwrap();
                assert_eq!(y.size(), [1, 19, 29, 37]);
                assert_eq!(crate::model::is_channels_last(&y), channels_last, "the input's layout");
                let upstream = Tensor::ones_like(&y).cumsum(3, Kind::Float);
                (&y * upstream).sum(Kind::Float).backward();
                let mut grads: Vec<(String, Tensor)> =
                    vs.variables().into_iter().map(|(k, v)| (k, v.grad().copy())).collect();
                grads.sort_by(|a, b| a.0.cmp(&b.0));
                results.push((y.detach(), xi.grad(), grads));
            }
            let gap = crate::model::relative_gap;
            let (a, b) = (&results[0], &results[1]);
            assert!(gap(&a.0, &b.0) <= 1e-6, "channels_last {channels_last}: logits differ");
            assert!(gap(&a.1, &b.1) <= 1e-6, "channels_last {channels_last}: input gradients differ");
            assert_eq!(a.2.len(), 8);
            for ((key, ga), (_, gb)) in a.2.iter().zip(&b.2) {
                let g = gap(ga, gb);
                assert!(g <= 1e-6, "channels_last {channels_last}: {key} gradient differs by {g:e}");
            }
        }
    }
}
