//! The two layers every network here is made of: a 2-D convolution and a batch norm with
//! frozen affine parameters. Parameter names are PyTorch's (`weight`, `bias`,
//! `running_mean`, ...), so a module path is a state-dict key prefix.

use anyhow::Result;
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// Geometry of a square 2-D convolution.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub in_channels: i64,
    pub out_channels: i64,
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
    pub dilation: i64,
}

impl ConvSpec {
    pub fn new(in_channels: i64, out_channels: i64, kernel: i64) -> Self {
        ConvSpec { in_channels, out_channels, kernel, stride: 1, padding: 0, dilation: 1 }
    }
    pub fn stride(self, stride: i64) -> Self {
        ConvSpec { stride, ..self }
    }
    pub fn padding(self, padding: i64) -> Self {
        ConvSpec { padding, ..self }
    }
    /// Dilation `d` with padding `d`, the "same" padding of a dilated 3x3 convolution.
    pub fn dilated(self, d: i64) -> Self {
        ConvSpec { dilation: d, padding: d, ..self }
    }
    /// `C_in · k · k`, the fan-in of PyTorch's default initialisation.
    pub fn fan_in(&self) -> i64 {
        self.in_channels * self.kernel * self.kernel
    }
}

/// How a convolution's parameters start before any checkpoint is loaded.
#[derive(Debug, Clone, Copy)]
pub enum ConvInit {
    /// Weights N(0, std), no bias: DeepLab-V2's backbone convolutions.
    Normal { std: f64 },
    /// Weights N(0, std), bias U(±1/√fan_in): DeepLab-V2's classifier (PyTorch's default bias).
    NormalWithDefaultBias { std: f64 },
    /// PyTorch's default `nn.Conv2d` initialisation, weights and bias U(±1/√fan_in).
    TorchDefault,
    /// torchvision's VGG: weights N(0, √(2/fan_out)), bias 0.
    KaimingFanOut,
    /// ssd.pytorch's new layers: weights U(±√(6/(fan_in + fan_out))) (Xavier), bias 0.
    XavierUniform,
}

/// `nn.Conv2d` with square kernels and one group.
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    spec: ConvSpec,
}

impl Conv2d {
    pub fn new(p: Path, spec: ConvSpec, init: ConvInit) -> Self {
        let shape = [spec.out_channels, spec.in_channels, spec.kernel, spec.kernel];
        let bound = 1.0 / (spec.fan_in() as f64).sqrt();
        let uniform = Init::Uniform { lo: -bound, up: bound };
        let (w_init, b_init) = match init {
            ConvInit::Normal { std } => (Init::Randn { mean: 0.0, stdev: std }, None),
            ConvInit::NormalWithDefaultBias { std } => (Init::Randn { mean: 0.0, stdev: std }, Some(uniform)),
            ConvInit::TorchDefault => (uniform, Some(uniform)),
            ConvInit::KaimingFanOut => {
                let fan_out = spec.out_channels * spec.kernel * spec.kernel;
                let std = (2.0 / fan_out as f64).sqrt();
                (Init::Randn { mean: 0.0, stdev: std }, Some(Init::Const(0.0)))
            }
            ConvInit::XavierUniform => {
                let fan_out = spec.out_channels * spec.kernel * spec.kernel;
                let bound = (6.0 / (spec.fan_in() + fan_out) as f64).sqrt();
                (Init::Uniform { lo: -bound, up: bound }, Some(Init::Const(0.0)))
            }
        };
        let weight = p.var("weight", &shape, w_init);
        let bias = b_init.map(|i| p.var("bias", &[spec.out_channels], i));
        Conv2d { weight, bias, spec }
    }

    /// `[N, C_in, H, W]` → `[N, C_out, H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, &self.weight)
    }

    /// [`Conv2d::forward`] with the input channels zero-padded to `channels`, in the input
    /// and the weight alike: the same output and gradients (the added channels are zero on
    /// both sides), for a channel count that cuDNN's tensor-core kernels take whole
    /// (the discriminators' 19-channel input; `advent bench --d-pad`). Both keep their
    /// memory layout.
    pub fn forward_padded(&self, x: &Tensor, channels: i64) -> Result<Tensor> {
        let extra = channels - self.spec.in_channels;
        if extra <= 0 {
            return self.forward(x);
        }
        let pad = |t: &Tensor| -> Result<Tensor> {
            let padded = t.f_constant_pad_nd([0, 0, 0, 0, 0, extra])?;
            match super::is_channels_last(t) {
                true => super::channels_last(&padded),
                false => Ok(padded),
            }
        };
        self.apply(&pad(x)?, &pad(&self.weight)?)
    }

    /// [`Conv2d::forward`] with the output channels zero-padded to `channels`: the weight
    /// and bias get zero rows, so the first `out_channels` outputs (and every gradient) are
    /// those of [`Conv2d::forward`] and the rest are zero. For a channel count cuDNN's
    /// tensor-core kernels take whole (the classifiers' 19 classes; `advent bench
    /// --aspp-pad`); the caller narrows the result.
    pub fn forward_padded_out(&self, x: &Tensor, channels: i64) -> Result<Tensor> {
        let extra = channels - self.spec.out_channels;
        if extra <= 0 {
            return self.forward(x);
        }
        let weight = self.weight.f_constant_pad_nd([0, 0, 0, 0, 0, 0, 0, extra])?;
        let weight = match super::is_channels_last(&self.weight) {
            true => super::channels_last(&weight)?,
            false => weight,
        };
        let bias = self.bias.as_ref().map(|b| b.f_constant_pad_nd([0, extra])).transpose()?;
        let padded = Conv2d { weight, bias, spec: ConvSpec { out_channels: channels, ..self.spec } };
        padded.forward(x)
    }

    /// The convolution of `x` with `weight`, through TF32 rounding when emulated.
    fn apply(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        if crate::device::tf32_emulation() && x.kind() == Kind::Float {
            let (x, w) = (crate::native::tf32_operand(x)?, crate::native::tf32_operand(weight)?);
            return crate::native::tf32_output(&self.conv(&x, &w)?);
        }
        self.conv(x, weight)
    }

    fn conv(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let s = &self.spec;
        Ok(x.f_conv2d(
            weight,
            self.bias.as_ref(),
            [s.stride, s.stride],
            [s.padding, s.padding],
            [s.dilation, s.dilation],
            1,
        )?)
    }
}

/// `nn.BatchNorm2d(affine=True)` whose affine parameters never train (DeepLab-V2, SPEC §1.2).
///
/// In training mode it normalises with the batch's statistics and updates the running
/// statistics (momentum 0.1, unbiased variance); in evaluation mode it uses the running
/// statistics. γ and β are loaded from checkpoints but receive no gradient.
#[derive(Debug)]
pub struct FrozenBatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    num_batches_tracked: Tensor,
}

/// PyTorch's `nn.BatchNorm2d` defaults, which the reference keeps.
pub(crate) const BN_MOMENTUM: f64 = 0.1;
pub(crate) const BN_EPS: f64 = 1e-5;

impl FrozenBatchNorm2d {
    pub fn new(p: Path, channels: i64) -> Self {
        let counter = Tensor::zeros([], (Kind::Int64, p.device()));
        FrozenBatchNorm2d {
            weight: p.ones_no_train("weight", &[channels]),
            bias: p.zeros_no_train("bias", &[channels]),
            running_mean: p.zeros_no_train("running_mean", &[channels]),
            running_var: p.ones_no_train("running_var", &[channels]),
            num_batches_tracked: p.add("num_batches_tracked", counter, false),
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = x.f_batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )?;
        if train {
            let mut n = self.num_batches_tracked.shallow_clone();
            tch::no_grad(|| n.f_add_scalar_(1)).map(drop)?;
        }
        Ok(y)
    }
}

/// What follows a [`FoldedConv`] in the network.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Then<'a> {
    Nothing,
    Relu,
    /// The residual added, then the ReLU: the end of a bottleneck.
    AddRelu(&'a Tensor),
}

/// A convolution with the evaluation-mode batch norm after it folded in, for evaluation
/// only: `bn(conv(x)) = conv(x, W·s) + (β − μ·s)` with `s = γ / √(σ² + ε)` per output
/// channel (the running statistics; PyTorch's `fuse_conv_bn_eval`). The folded parameters
/// are computed in float64 from the module's current ones and stored in `kind`, in the
/// weight's memory layout.
#[derive(Debug)]
pub(crate) struct FoldedConv {
    /// The folded weight and bias, as a convolution.
    conv: Conv2d,
    /// cuDNN found no fused kernel for this convolution once: it runs unfused from then on.
    unfusable: std::sync::atomic::AtomicBool,
}

impl FoldedConv {
    pub fn new(conv: &Conv2d, bn: &FrozenBatchNorm2d, kind: Kind) -> Result<Self> {
        tch::no_grad(|| -> Result<Self> {
            let f64_ = |t: &Tensor| t.f_to_kind(Kind::Double);
            let scale = f64_(&bn.weight)?.f_mul(&f64_(&bn.running_var)?.f_add_scalar(BN_EPS)?.f_rsqrt()?)?;
            let weight = f64_(&conv.weight)?.f_mul(&scale.f_view([-1, 1, 1, 1])?)?.f_to_kind(kind)?;
            let weight = match super::is_channels_last(&conv.weight) {
                true => super::channels_last(&weight)?,
                false => weight.f_contiguous()?,
            };
            let conv_bias = match &conv.bias {
                Some(b) => f64_(b)?,
                None => Tensor::f_zeros_like(&scale)?,
            };
            let bias = conv_bias.f_sub(&f64_(&bn.running_mean)?)?.f_mul(&scale)?.f_add(&f64_(&bn.bias)?)?;
            let unfusable = std::sync::atomic::AtomicBool::new(false);
            let folded = Conv2d { weight, bias: Some(bias.f_to_kind(kind)?), spec: conv.spec };
            Ok(FoldedConv { conv: folded, unfusable })
        })
    }

    /// The convolution, its bias and what follows. `fused` (CUDA only): in one cuDNN call
    /// each (`cudnn_convolution_relu`, `cudnn_convolution_add_relu`, the kernels of PyTorch's
    /// `torch.jit.optimize_for_inference`); otherwise the bias rides with the convolution
    /// and the ReLU and the addition work in place on its output. A convolution for which
    /// cuDNN has no fused kernel (libtorch reports it as an error before any work is queued)
    /// says so once on stderr and runs unfused.
    pub fn forward(&self, x: &Tensor, then: Then, fused: bool) -> Result<Tensor> {
        use std::sync::atomic::Ordering;
        let s = &self.conv.spec;
        if fused && x.device().is_cuda() && !self.unfusable.load(Ordering::Relaxed) {
            let (stride, padding, dilation) = ([s.stride, s.stride], [s.padding, s.padding], [s.dilation, s.dilation]);
            let (w, b) = (&self.conv.weight, self.conv.bias.as_ref());
            let y = match then {
                Then::Nothing => return self.conv.forward(x),
                Then::Relu => x.f_cudnn_convolution_relu(w, b, stride, padding, dilation, 1),
                Then::AddRelu(z) => x.f_cudnn_convolution_add_relu(w, z, 1.0, b, stride, padding, dilation, 1),
            };
            match y {
                Ok(y) => return Ok(y),
                Err(e) => {
                    self.unfusable.store(true, Ordering::Relaxed);
                    let first = e.to_string().lines().next().unwrap_or_default().to_string();
                    eprintln!("warning: cuDNN fused no kernel for the convolution {s:?} ({first}); it runs unfused");
                }
            }
        }
        let mut y = self.conv.forward(x)?;
        match then {
            Then::Nothing => {}
            Then::Relu => drop(y.f_relu_()?),
            Then::AddRelu(z) => drop(y.f_add_(z)?.f_relu_()?),
        }
        Ok(y)
    }
}
