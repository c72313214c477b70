//! SSD's multibox loss as ssd.pytorch's `MultiBoxLoss` computes it: smooth-L1 on the encoded
//! offsets of the positive default boxes, softmax cross-entropy on the positives and on the
//! hardest negatives (3 per positive), both summed and divided by the number of positives.
//!
//! Hard negative mining ranks each image's negatives by their cross-entropy against the
//! background (positives ranked last) and keeps the `negpos_ratio · positives` first, at
//! most `P − 1`, as the reference does; ties are broken by box index (a stable sort: the
//! reference's `sort` leaves them to the kernel). A batch without any positive gives zero
//! losses where the reference divides by zero (NaN).
//!
//! The selections are masks over all boxes, not compactions (the reference's
//! `masked_select`): a compaction's size is data, which on a CUDA device the host must read
//! back, waiting for the network's forward pass before it can queue the rest of the step.
//! The sums are those of the selected boxes; only the order of the additions differs.

use anyhow::{ensure, Result};
use tch::{Kind, Reduction, Tensor};

/// The class target of the boxes that take no part in the confidence loss.
const IGNORED: i64 = -100;

/// The two terms, each already divided by the number of positive boxes in the batch.
#[derive(Debug)]
pub struct MultiboxLoss {
    /// Smooth-L1 on the positives' offsets (`loss_l`).
    pub loc: Tensor,
    /// Cross-entropy on positives and mined negatives (`loss_c`).
    pub conf: Tensor,
}

/// `loc` `[N, P, 4]` and `conf` `[N, P, C]` from the network; `loc_targets` `[N, P, 4]`
/// encoded offsets and `labels` `[N, P]` (int64, 0 = background) from the matching.
pub fn multibox_loss(
    loc: &Tensor,
    conf: &Tensor,
    loc_targets: &Tensor,
    labels: &Tensor,
    negpos_ratio: i64,
) -> Result<MultiboxLoss> {
    let (n, p) = (labels.size()[0], labels.size()[1]);
    ensure!(loc.size() == [n, p, 4] && loc_targets.size() == [n, p, 4], "box offsets must be [{n}, {p}, 4]");
    let c = *conf.size().last().unwrap_or(&0);
    ensure!(conf.size() == [n, p, c] && c >= 2, "class scores must be [{n}, {p}, C >= 2], got {:?}", conf.size());
    let positive = labels.f_gt(0)?;
    let num_pos = positive.f_sum_dim_intlist([1i64].as_slice(), true, Kind::Int64)?;

    let loss_l = loc
        .f_smooth_l1_loss(loc_targets, Reduction::None, 1.0)?
        .f_masked_fill(&positive.f_logical_not()?.f_unsqueeze(2)?, 0.0)?
        .f_sum(Kind::Float)?;

    // Mining: each box's cross-entropy against its label, positives set to 0 so they rank
    // last among the candidates; no gradient flows through the ranking.
    let negatives = tch::no_grad(|| -> Result<Tensor> {
        let flat = conf.f_reshape([-1, c])?;
        let ce = flat
            .f_logsumexp([1i64].as_slice(), false)?
            .f_sub(&flat.f_gather(1, &labels.f_reshape([-1, 1])?, false)?.f_squeeze_dim(1)?)?
            .f_reshape([n, p])?
            .f_masked_fill(&positive, 0.0)?;
        let (_, order) = ce.f_sort_stable(true, 1, true)?;
        let (_, rank) = order.f_sort_stable(true, 1, false)?;
        let num_neg = num_pos.f_mul_scalar(negpos_ratio)?.f_clamp_max(p - 1)?;
        Ok(rank.f_lt_tensor(&num_neg)?)
    })?;
    // Boxes neither positive nor mined take the ignored label: no term, no gradient.
    let chosen = positive.f_logical_or(&negatives)?;
    let targets = labels.f_masked_fill(&chosen.f_logical_not()?, IGNORED)?.f_reshape([-1])?;
    let loss_c =
        conf.f_reshape([-1, c])?.f_cross_entropy_loss::<Tensor>(&targets, None, Reduction::Sum, IGNORED, 0.0)?;

    let total = num_pos.f_sum(Kind::Float)?.f_clamp_min(1.0)?;
    Ok(MultiboxLoss { loc: loss_l.f_div(&total)?, conf: loss_c.f_div(&total)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).reshape(shape)
    }

    /// Image 1: box 0 positive (class 1), boxes 1-3 negative; image 2: all negative.
    fn batch() -> (Tensor, Tensor, Tensor, Tensor) {
        let conf = t(
            &[
                0.0, 0.0, // ce(label 1) = ln 2
                0.0, 2.0, // ce(bg) = ln(1 + e²) = 2.126928
                0.0, -1.0, // ce(bg) = ln(1 + e⁻¹) = 0.313262
                0.0, 1.0, // ce(bg) = ln(1 + e) = 1.313262
                0.0, 5.0, 0.0, 5.0, 0.0, 5.0, 0.0, 5.0, // image 2: no positive, so no negative mined
            ],
            &[2, 4, 2],
        );
        let mut loc = vec![9.0f32; 32];
        loc[..4].copy_from_slice(&[0.5, -0.5, 2.0, 0.0]);
        let loc = t(&loc, &[2, 4, 4]);
        let loc_t = Tensor::zeros([2, 4, 4], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[1i64, 0, 0, 0, 0, 0, 0, 0]).reshape([2, 4]);
        (loc, conf, loc_t, labels)
    }

    #[test]
    fn hand_computed_losses_with_hard_negative_mining() {
        let (loc, conf, loc_t, labels) = batch();
        // smooth-L1 of (0.5, -0.5, 2, 0): 0.125 + 0.125 + 1.5 + 0 = 1.75, over 1 positive.
        // ratio 1: the hardest negative is box 1: ln 2 + 2.126928 = 2.820075.
        let l = multibox_loss(&loc, &conf, &loc_t, &labels, 1).unwrap();
        assert!((l.loc.double_value(&[]) - 1.75).abs() < 1e-6);
        assert!((l.conf.double_value(&[]) - 2.820075).abs() < 1e-5, "{}", l.conf.double_value(&[]));
        // ratio 2: boxes 1 and 3: + 1.313262 = 4.133337.
        let l = multibox_loss(&loc, &conf, &loc_t, &labels, 2).unwrap();
        assert!((l.conf.double_value(&[]) - 4.133337).abs() < 1e-5);
        // ratio 3 (the reference's): all three negatives (capped at P - 1 = 3): + 0.313262.
        let l = multibox_loss(&loc, &conf, &loc_t, &labels, 3).unwrap();
        assert!((l.conf.double_value(&[]) - 4.446599).abs() < 1e-5);
    }

    #[test]
    fn gradients_reach_only_positives_and_mined_negatives() {
        let (loc, conf, loc_t, labels) = batch();
        let conf = conf.set_requires_grad(true);
        let l = multibox_loss(&loc, &conf, &loc_t, &labels, 1).unwrap();
        l.conf.backward();
        let g = conf.grad().abs().sum_dim_intlist([2i64].as_slice(), false, Kind::Float);
        let g = Vec::<f32>::try_from(g.flatten(0, -1)).unwrap();
        assert!(g[0] > 0.0 && g[1] > 0.0, "{g:?}");
        assert!(g[2..].iter().all(|&v| v == 0.0), "{g:?}");
    }

    #[test]
    fn a_batch_without_positives_is_zero_not_nan() {
        let (loc, conf, loc_t, _) = batch();
        let labels = Tensor::zeros([2, 4], (Kind::Int64, Device::Cpu));
        let l = multibox_loss(&loc, &conf, &loc_t, &labels, 3).unwrap();
        assert_eq!(l.loc.double_value(&[]), 0.0);
        assert_eq!(l.conf.double_value(&[]), 0.0);
    }
}
