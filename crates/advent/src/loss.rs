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
}
