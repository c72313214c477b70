//! The quantities of ADVENT (SPEC §3), on probabilities `P = softmax(upsampled logits)`.
//! All logarithms are base 2 and every entropy is normalised by `log2(C)`, so it lies in
//! `[0, 1]`.

use anyhow::Result;
use tch::{Kind, Reduction, Tensor};

/// Added inside the logarithm, as the reference does, so that `0 · log 0` is `0`.
const LOG_EPS: f64 = 1e-30;
/// Label of the ignored pixels in segmentation maps.
pub const IGNORE_LABEL: i64 = 255;

/// Weighted self-information `I = −P · log2(P + 1e-30) / log2(C)` (`prob_2_entropy`).
///
/// `[N, C, H, W]` probabilities → `[N, C, H, W]`; its sum over C is the normalised entropy.
/// This is what the discriminators see.
pub fn self_information(prob: &Tensor) -> Result<Tensor> {
    let c = prob.size()[1] as f64;
    Ok(prob.f_mul(&prob.f_add_scalar(LOG_EPS)?.f_log2()?)?.f_mul_scalar(-1.0 / c.log2())?)
}

/// Normalised entropy per pixel: `[N, C, H, W]` probabilities → `[N, H, W]` in `[0, 1]`.
pub fn entropy_map(prob: &Tensor) -> Result<Tensor> {
    Ok(self_information(prob)?.f_sum_dim_intlist(1, false, Kind::Float)?)
}

/// MinEnt's loss (`entropy_loss`): the mean over the N·H·W pixels of the normalised entropy.
/// A scalar.
pub fn entropy_loss(prob: &Tensor) -> Result<Tensor> {
    let s = prob.size();
    let pixels = (s[0] * s[2] * s[3]) as f64;
    Ok(self_information(prob)?.f_sum(Kind::Float)?.f_div_scalar(pixels)?)
}

/// MinEnt+ER's loss: [`entropy_loss`] with only the `share` of each image's pixels of
/// highest entropy left in (`ceil(share · H·W)` of them, at least one): their normalised
/// entropies summed and divided by all N·H·W pixels, so that each selected pixel weighs
/// what it weighs in MinEnt's loss and `λ_ent` keeps its meaning. The gradient reaches the
/// selected pixels only. `share = 1` is [`entropy_loss`] itself (the reference code; the
/// paper's entropy ranking uses 0.3). A scalar.
pub fn entropy_loss_ranked(prob: &Tensor, share: f64) -> Result<Tensor> {
    if share >= 1.0 {
        return entropy_loss(prob);
    }
    let s = prob.size();
    let pixels = s[2] * s[3];
    let k = ((share * pixels as f64).ceil() as i64).clamp(1, pixels);
    let per_pixel = entropy_map(prob)?.f_reshape([s[0], pixels])?;
    let (top, _) = per_pixel.f_topk(k, 1, true, false)?;
    Ok(top.f_sum(Kind::Float)?.f_div_scalar((s[0] * pixels) as f64)?)
}

/// The paper's class-ratio prior loss (CP): `Σ_c max(0, threshold_c − mean_{h,w} P_c)` per
/// image, averaged over the N images, with `threshold = μ · p_s` (`[C]`, the source's class
/// shares scaled). It pushes up the classes a prediction gives too little of. A scalar.
pub fn class_ratio_prior_loss(prob: &Tensor, threshold: &Tensor) -> Result<Tensor> {
    let shares = prob.f_mean_dim(&[2i64, 3][..], false, Kind::Float)?;
    let short = threshold.f_view([1, -1])?.f_sub(&shares)?.f_relu()?;
    Ok(short.f_sum_dim_intlist(1, false, Kind::Float)?.f_mean(Kind::Float)?)
}

/// `BCEWithLogits(mean)` of discriminator outputs against a constant domain label
/// (source 0, target 1). A scalar.
pub fn bce_loss(logits: &Tensor, label: f64) -> Result<Tensor> {
    let target = logits.f_full_like(label)?;
    Ok(logits.f_binary_cross_entropy_with_logits::<Tensor>(&target, None, None, Reduction::Mean)?)
}

/// Segmentation cross-entropy (`loss_calc`): `[N, C, H, W]` logits, `[N, H, W]` int64
/// labels; the mean over pixels whose label is in `[0, C)`, pixels labelled 255 ignored;
/// 0 when no pixel is labelled (the reference returns `zeros(1)` then). No host round-trip.
pub fn cross_entropy_2d(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let sum = logits.f_cross_entropy_loss::<Tensor>(labels, None, Reduction::Sum, IGNORE_LABEL, 0.0)?;
    let valid = labels.f_ne(IGNORE_LABEL)?.f_logical_and(&labels.f_ge(0)?)?;
    let count = valid.f_sum(Kind::Float)?.f_clamp_min(1.0)?;
    Ok(sum.f_div(&count)?)
}

/// Bilinear upsampling of logits with `align_corners=True` (`nn.Upsample` of the reference)
/// to `height x width`.
pub fn upsample(logits: &Tensor, height: i64, width: i64) -> Result<Tensor> {
    Ok(logits.f_upsample_bilinear2d([height, width], true, None, None)?)
}

/// How training upsamples logits to the input size (`train.upsampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upsampling {
    /// libtorch's bilinear kernel, as the reference (`nn.Upsample`); on CUDA its backward
    /// pass scatters every output gradient into four inputs with atomic adds.
    #[default]
    Kernel,
    /// The same interpolation as two products with interpolation matrices, `A_h · x · A_wᵀ`
    /// (float32; [`upsample_by_products`]), whose backward pass is two products too, without
    /// atomics (bit-repeatable training on CUDA is expected with it and
    /// `train.deterministic`; a CUDA test checks). For float32 logits (fp32 and tf32).
    Matmul,
}

impl std::str::FromStr for Upsampling {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kernel" => Ok(Upsampling::Kernel),
            "matmul" => Ok(Upsampling::Matmul),
            _ => anyhow::bail!("unknown upsampling `{s}` (expected kernel or matmul)"),
        }
    }
}

/// [`upsample`] or [`upsample_by_products`]; logits that are not float32 (bf16 autocast)
/// always take the kernel.
pub fn upsample_with(logits: &Tensor, height: i64, width: i64, how: Upsampling) -> Result<Tensor> {
    match how {
        Upsampling::Matmul if logits.kind() == Kind::Float => upsample_by_products(logits, height, width),
        _ => upsample(logits, height, width),
    }
}

/// [`upsample`] as `A_h · x · A_wᵀ` with `[out, in]` interpolation matrices of two non-zeros
/// per row, computed with PyTorch's float32 arithmetic for `align_corners=True` (scale
/// `(in − 1) / (out − 1)` in float32, source position `scale · i`, weights `1 − λ` and `λ`):
/// the same values as the kernel up to the rounding of a two-term sum. Channels-last logits
/// give channels-last output, as the kernel does. The products must run in float32 (libtorch
/// leaves TF32 off for matrix products, PyTorch's default, see [`crate::device::set_precision`]).
pub fn upsample_by_products(logits: &Tensor, height: i64, width: i64) -> Result<Tensor> {
    let size = logits.size();
    anyhow::ensure!(size.len() == 4, "upsampling takes [N, C, H, W] logits, got {size:?}");
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    let device = logits.device();
    let a_h = interpolation_matrix(h, height, device)?;
    let a_w = interpolation_matrix(w, width, device)?;
    let nhwc = logits.f_permute([0, 2, 3, 1])?;
    if !logits.is_contiguous() && nhwc.is_contiguous() {
        // Width: one product with every (n, y, c) a column, [w, N·h·C] → [W, N·h·C], then
        // [N, h, W·C]. (`a_w · nhwc` as a broadcast product would copy `a_w` N·h times into a
        // batch, 74 MB at the source's 90 rows and 160 → 1280 columns, and keep the copy for
        // the backward pass: measured on an H200 as 0.13 GiB more at the step's peak.)
        let columns = nhwc.f_permute([2, 0, 1, 3])?.f_reshape([w, n * h * c])?;
        let t = a_w.f_mm(&columns)?.f_view([width, n, h, c])?.f_permute([1, 2, 0, 3])?.f_reshape([n, h, width * c])?;
        // Height: [N, h, W·C] → [N, H, W·C] (`a_h` broadcast: N copies of [H, h], small),
        // viewed back as NCHW.
        let out = a_h.f_matmul(&t)?;
        return Ok(out.f_view([n, height, width, c])?.f_permute([0, 3, 1, 2])?);
    }
    // [N, C, h, w] → [N, C, h, W] → [N, C, H, W].
    let t = logits.f_matmul(&a_w.f_tr()?)?;
    Ok(a_h.f_matmul(&t)?)
}

thread_local! {
    /// Interpolation matrices by (in, out, device): built once (on the device, by a few
    /// kernels), then reused, so that no step copies them in (nor captures their building).
    static MATRICES: std::cell::RefCell<std::collections::HashMap<(i64, i64, tch::Device), Tensor>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// `[n_out, n_in]`: row `i` holds `1 − λ` at `j` and `λ` at `min(j + 1, n_in − 1)`, where
/// `s = i · scale` in float32, `j = ⌊s⌋`, `λ = s − j` (PyTorch's `area_pixel_compute_scale`
/// and `area_pixel_compute_source_index` for `align_corners=True`).
pub fn interpolation_matrix(n_in: i64, n_out: i64, device: tch::Device) -> Result<Tensor> {
    anyhow::ensure!(n_in >= 1 && n_out >= 1, "interpolation from {n_in} to {n_out} points");
    if let Some(m) = MATRICES.with(|m| m.borrow().get(&(n_in, n_out, device)).map(Tensor::shallow_clone)) {
        return Ok(m);
    }
    let scale = if n_out > 1 { (n_in - 1) as f32 / (n_out - 1) as f32 } else { 0.0 };
    let m = tch::no_grad(|| -> Result<Tensor> {
        let options = (Kind::Float, device);
        let source = Tensor::f_arange(n_out, options)?.f_mul_scalar(f64::from(scale))?;
        let j0 = source.f_to_kind(Kind::Int64)?;
        let lambda = source.f_sub(&j0.f_to_kind(Kind::Float)?)?;
        let j1 = j0.f_add_scalar(1)?.f_clamp_max(n_in - 1)?;
        let w0 = lambda.f_neg()?.f_add_scalar(1.0)?;
        let mut m = Tensor::f_zeros([n_out, n_in], options)?;
        let _ = m.f_scatter_add_(1, &j0.f_unsqueeze(1)?, &w0.f_unsqueeze(1)?)?;
        let _ = m.f_scatter_add_(1, &j1.f_unsqueeze(1)?, &lambda.f_unsqueeze(1)?)?;
        Ok(m)
    })?;
    MATRICES.with(|c| c.borrow_mut().insert((n_in, n_out, device), m.shallow_clone()));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn entropy_of_uniform_and_certain_pixels() {
        // Pixel 0 uniform over 4 classes (entropy 1), pixel 1 certain (entropy 0).
        let p = Tensor::from_slice(&[0.25f32, 1.0, 0.25, 0.0, 0.25, 0.0, 0.25, 0.0]).view([1, 4, 1, 2]);
        let e = entropy_map(&p).unwrap();
        assert!(close(e.double_value(&[0, 0, 0]), 1.0));
        assert!(close(e.double_value(&[0, 0, 1]), 0.0));
        assert!(close(entropy_loss(&p).unwrap().double_value(&[]), 0.5));
        // Self-information of one uniform class: −0.25·log2(0.25)/log2(4) = 0.25.
        assert!(close(self_information(&p).unwrap().double_value(&[0, 2, 0, 0]), 0.25));
    }

    #[test]
    fn entropy_by_hand_for_three_classes() {
        // H(0.5, 0.3, 0.2) = 1.4854752972 bits; / log2(3) = 0.9372305632.
        let p = Tensor::from_slice(&[0.5f32, 0.3, 0.2]).view([1, 3, 1, 1]);
        let e = entropy_map(&p).unwrap().double_value(&[0, 0, 0]);
        assert!((e - 0.9372305632).abs() < 1e-6, "{e}");
    }

    #[test]
    fn entropy_ranking_averages_the_most_uncertain_pixels_by_hand() {
        // Two classes, four pixels with P(class 0) = 0.5, 0.9, 0.99, 0.7: binary entropies
        // 1, 0.468996, 0.080793, 0.881291 (log2(2) = 1 normalises nothing).
        let p0 = Tensor::from_slice(&[0.5f32, 0.9, 0.99, 0.7]).view([1, 1, 2, 2]);
        let prob = Tensor::cat(&[&p0, &(1.0 - &p0)], 1);
        let h = |p: f64| -p * p.log2() - (1.0 - p) * (1.0 - p).log2();
        let all = entropy_loss_ranked(&prob, 1.0).unwrap().double_value(&[]);
        assert!(close(all, (h(0.5) + h(0.9) + h(0.99) + h(0.7)) / 4.0), "{all}");
        // The two most uncertain pixels' entropies over all four pixels.
        let half = entropy_loss_ranked(&prob, 0.5).unwrap().double_value(&[]);
        assert!(close(half, (1.0 + h(0.7)) / 4.0), "{half}");
        // 0.3 of 4 pixels: ceil(1.2) = 2 pixels; a tiny share keeps one.
        assert!(close(entropy_loss_ranked(&prob, 0.3).unwrap().double_value(&[]), half));
        assert!(close(entropy_loss_ranked(&prob, 1e-6).unwrap().double_value(&[]), 0.25));
        // Ranked per image, not over the batch: of two images (P = 0.5, 0.7 and 0.99, 0.95)
        // each keeps its own most uncertain pixel, (1 + h(0.95)) / 4; over the batch it
        // would be (1 + h(0.7)) / 4.
        let p0 = Tensor::from_slice(&[0.5f32, 0.7, 0.99, 0.95]).view([2, 1, 1, 2]);
        let two = Tensor::cat(&[&p0, &(1.0 - &p0)], 1);
        let per_image = entropy_loss_ranked(&two, 0.5).unwrap().double_value(&[]);
        assert!(close(per_image, (1.0 + h(0.95)) / 4.0), "{per_image}");
        // The gradient reaches the selected pixels only: P(class 0) = 0.6, 0.9, 0.99, 0.7
        // (logits ln(p / (1 − p)) against 0), entropies 0.971, 0.469, 0.081, 0.881: the
        // first and the last.
        let logits = Tensor::from_slice(&[0.405465f32, 2.197225, 4.59512, 0.847298, 0.0, 0.0, 0.0, 0.0])
            .view([1, 2, 2, 2])
            .set_requires_grad(true);
        entropy_loss_ranked(&logits.softmax(1, Kind::Float), 0.5).unwrap().backward();
        let g: Vec<f32> =
            Vec::try_from(logits.grad().abs().sum_dim_intlist(1, false, Kind::Float).flatten(0, -1)).unwrap();
        assert!(g[0] > 0.0 && g[3] > 0.0 && g[1] == 0.0 && g[2] == 0.0, "{g:?}");
    }

    #[test]
    fn class_ratio_prior_by_hand() {
        // One image, two classes, two pixels: P(class 0) = 0.2 and 0.4, so the shares are
        // 0.3 and 0.7. Thresholds μ·p_s = 0.4 and 0.1: class 0 is 0.1 short, class 1 over.
        let p0 = Tensor::from_slice(&[0.2f32, 0.4]).view([1, 1, 1, 2]);
        let prob = Tensor::cat(&[&p0, &(1.0 - &p0)], 1).set_requires_grad(true);
        let threshold = Tensor::from_slice(&[0.4f32, 0.1]);
        let l = class_ratio_prior_loss(&prob, &threshold).unwrap();
        assert!(close(l.double_value(&[]), 0.1), "{l}");
        // Its gradient: −1/(H·W) on the short class's probabilities, 0 on the other's.
        l.backward();
        let g: Vec<f32> = Vec::try_from(prob.grad().flatten(0, -1)).unwrap();
        assert_eq!(g, [-0.5, -0.5, 0.0, 0.0]);
        // Two images: the mean of their losses (the second 0.4 − 0.1 = 0.3 short on class 0).
        let p1 = Tensor::from_slice(&[0.2f32, 0.4, 0.1, 0.1]).view([2, 1, 1, 2]);
        let prob = Tensor::cat(&[&p1, &(1.0 - &p1)], 1);
        assert!(close(class_ratio_prior_loss(&prob, &threshold).unwrap().double_value(&[]), 0.2));
    }

    #[test]
    fn bce_against_hand_values() {
        // BCE(x, 0) = log(1 + e^x): log 2 and log(1 + e) = 1.3132617 for x = 0, 1.
        let ln2 = std::f64::consts::LN_2;
        let y = Tensor::from_slice(&[0.0f32, 1.0]).view([1, 1, 1, 2]);
        let l = bce_loss(&y, 0.0).unwrap().double_value(&[]);
        assert!((l - (ln2 + 1.3132617) / 2.0).abs() < 1e-6, "{l}");
        let l = bce_loss(&y, 1.0).unwrap().double_value(&[]);
        // BCE(x, 1) = log(1 + e^-x): log 2 and 0.3132617.
        assert!((l - (ln2 + 0.3132617) / 2.0).abs() < 1e-6, "{l}");
    }

    #[test]
    fn cross_entropy_ignores_255_and_is_zero_without_labels() {
        // Two classes, logits (0, 0) everywhere: CE = ln 2 per labelled pixel.
        let logits = Tensor::zeros([1, 2, 1, 3], (Kind::Float, tch::Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 255, 1]).view([1, 1, 3]);
        let l = cross_entropy_2d(&logits, &labels).unwrap().double_value(&[]);
        assert!((l - std::f64::consts::LN_2).abs() < 1e-6, "{l}");
        let none = Tensor::from_slice(&[255i64, 255, 255]).view([1, 1, 3]);
        assert_eq!(cross_entropy_2d(&logits, &none).unwrap().double_value(&[]), 0.0);
    }

    #[test]
    fn upsampling_keeps_corners() {
        // align_corners=True maps corners to corners: 2x2 → 3x3 puts the mean in the middle.
        let x = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 3.0]).view([1, 1, 2, 2]);
        let y = upsample(&x, 3, 3).unwrap();
        assert!(close(y.double_value(&[0, 0, 2, 2]), 3.0));
        assert!(close(y.double_value(&[0, 0, 1, 1]), 1.5));
        assert!(close(y.double_value(&[0, 0, 0, 1]), 0.5));
    }

    #[test]
    fn interpolation_matrices_by_hand() {
        // 2 → 5 points: positions 0, 1/4, 1/2, 3/4, 1 of the input.
        let m = interpolation_matrix(2, 5, tch::Device::Cpu).unwrap();
        let want = [[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.0, 1.0]];
        for (i, row) in want.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert_eq!(m.double_value(&[i as i64, j as i64]), *v, "row {i} column {j}");
            }
        }
        // One output point takes the first input (scale 0), one input point is copied.
        let m = interpolation_matrix(3, 1, tch::Device::Cpu).unwrap();
        assert_eq!(Vec::<f32>::try_from(m.flatten(0, -1)).unwrap(), vec![1.0, 0.0, 0.0]);
        let m = interpolation_matrix(1, 4, tch::Device::Cpu).unwrap();
        assert_eq!(Vec::<f32>::try_from(m.flatten(0, -1)).unwrap(), vec![1.0; 4]);
    }

    /// `train.upsampling = "matmul"` against libtorch's bilinear kernel (the reference's):
    /// values and gradients, NCHW and channels-last, down to one row or column, and GTA5's
    /// 90x160 → 720x1280. Tolerance: 1e-5 of the largest value (float32 rounding of two-term
    /// sums; of the gradient's sums of up to ~80 terms).
    #[test]
    fn upsampling_by_products_is_the_kernel() {
        tch::manual_seed(3);
        let cases = [
            ([2, 5, 7, 9], (23, 31)),
            ([1, 3, 1, 6], (4, 11)),
            ([1, 4, 5, 1], (9, 3)),
            ([1, 19, 90, 160], (720, 1280)),
        ];
        for (shape, (h, w)) in cases {
            for channels_last in [false, true] {
                let mut x = Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)) * 4.0;
                if channels_last {
                    x = crate::model::channels_last(&x).unwrap();
                }
                let g = Tensor::randn([shape[0], shape[1], h, w], (Kind::Float, tch::Device::Cpu));
                let mut grads = Vec::new();
                let mut outs = Vec::new();
                for how in [Upsampling::Kernel, Upsampling::Matmul] {
                    let xi = x.detach().set_requires_grad(true);
                    let y = upsample_with(&xi, h, w, how).unwrap();
                    assert_eq!(y.size(), vec![shape[0], shape[1], h, w]);
                    (&y * &g).sum(Kind::Float).backward();
                    grads.push(xi.grad());
                    outs.push(y.detach());
                }
                if channels_last {
                    assert!(outs[1].permute([0, 2, 3, 1]).is_contiguous(), "channels-last in, channels-last out");
                }
                let gap = |a: &Tensor, b: &Tensor| {
                    (a - b).abs().max().double_value(&[]) / a.abs().max().double_value(&[]).max(1e-12)
                };
                let (dv, dg) = (gap(&outs[0], &outs[1]), gap(&grads[0], &grads[1]));
                assert!(
                    dv <= 1e-5 && dg <= 1e-5,
                    "{shape:?} → {h}x{w} cl {channels_last}: values {dv:e}, gradients {dg:e}"
                );
            }
        }
        assert!(upsample_by_products(&Tensor::zeros([3, 4, 5], (Kind::Float, tch::Device::Cpu)), 8, 8).is_err());
    }
}
