//! The quantities of entropy-based adaptation for detection (SPEC §8.4: "entropy is computed
//! on the per-anchor class distribution, then MinEnt / AdvEnt are applied as in
//! segmentation"; the exact formulation was never published).
//!
//! Our formulation, the direct transposition of the segmentation method:
//! - each default box (anchor) has a class distribution `p = softmax(conf)` over the
//!   background and the C object classes;
//! - MinEnt minimises the mean over all anchors of the normalised entropy
//!   `−Σ_c p_c log p_c / log(C + 1)` (segmentation: the mean over pixels);
//! - AdvEnt feeds a discriminator the weighted self-information `−p_c log p_c` of every
//!   class of every anchor, kept as a map per prediction scale
//!   (`[N, boxes_k · (C + 1), H_k, W_k]`, the layout of the conf head's output), just as the
//!   segmentation discriminators see `[N, C, H, W]`.
//!
//! Box offsets take no part: the paper speaks of class distributions only.
//!
//! The alternative, behind `train.entropy = "objects"` (MinEnt only): the entropy of the
//! distribution over the object classes alone (background left out, renormalised), each
//! anchor weighted by its probability of being an object, that weight held constant. It
//! cannot be lowered by calling an anchor background. It is not the default because it
//! departs from the paper's words ("the per-anchor class distribution"), and the detection
//! demo gives no evidence for it: from the start where MinEnt fell furthest it ended inside
//! the spread of source-only runs with other data orders (README, "The detection demo").

use anyhow::Result;
use tch::{Kind, Tensor};

/// `−p log p` per class of `[..., C]` logits (softmax over the last dimension), 0 where
/// `p = 0`.
fn self_information(logits: &Tensor, dim: i64) -> Result<Tensor> {
    let log_p = logits.f_log_softmax(dim, Kind::Float)?;
    Ok(log_p.f_exp()?.f_mul(&log_p)?.f_neg()?)
}

/// MinEnt's loss: the mean normalised entropy of the anchors' class distributions, for
/// `conf` `[N, P, C + 1]` logits.
pub fn entropy_loss(conf: &Tensor) -> Result<Tensor> {
    let classes = *conf.size().last().expect("[N, P, C]");
    let entropy = self_information(conf, -1)?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?;
    Ok(entropy.f_mean(Kind::Float)?.f_div_scalar((classes as f64).ln())?)
}

/// MinEnt's loss over object classes (`train.entropy = "objects"`): the mean over anchors of
/// `(1 − p_bg) · H(q) / log C`, `q` the softmax over the C object logits, the weight
/// `1 − p_bg` detached (no gradient reaches the background logit).
pub fn object_entropy_loss(conf: &Tensor) -> Result<Tensor> {
    let classes = *conf.size().last().expect("[N, P, C + 1]");
    anyhow::ensure!(classes >= 3, "object entropy needs at least two object classes, got {}", classes - 1);
    let objects = classes - 1;
    let weight = conf.f_softmax(-1, Kind::Float)?.f_select(-1, 0)?.f_neg()?.f_add_scalar(1.0)?.f_detach()?;
    let h = self_information(&conf.f_narrow(-1, 1, objects)?, -1)?.f_sum_dim_intlist(
        [-1i64].as_slice(),
        false,
        Kind::Float,
    )?;
    Ok(h.f_mul(&weight)?.f_mean(Kind::Float)?.f_div_scalar((objects as f64).ln())?)
}

/// The discriminator's input for one scale: the self-information of every class of every
/// anchor, for a conf head output `[N, boxes · classes, H, W]`; same layout.
pub fn self_information_map(conf_map: &Tensor, classes: i64) -> Result<Tensor> {
    let s = conf_map.size();
    let per_box = conf_map.f_reshape([s[0], s[1] / classes, classes, s[2], s[3]])?;
    Ok(self_information(&per_box, 2)?.f_reshape(s.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_uniform_and_certain_anchors() {
        // Anchor 1 uniform over 4 classes: entropy log 4, normalised 1. Anchor 2 almost
        // certain: logits (50, 0, 0, 0), entropy ≈ 0. Mean: 0.5.
        let conf = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0, 50.0, 0.0, 0.0, 0.0]).reshape([1, 2, 4]);
        let loss = entropy_loss(&conf).unwrap().double_value(&[]);
        assert!((loss - 0.5).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn object_entropy_by_hand_and_no_push_to_background() {
        // Logits (ln 2, 0, 0): p = (½, ¼, ¼), weight 1 − ½ = ½; objects (0, 0): q uniform over
        // 2, normalised entropy 1 → loss ½.
        let conf = Tensor::from_slice(&[2f32.ln(), 0.0, 0.0]).reshape([1, 1, 3]).set_requires_grad(true);
        let loss = object_entropy_loss(&conf).unwrap();
        assert!((loss.double_value(&[]) - 0.5).abs() < 1e-6);
        // With unequal objects (ln 2, 1, 0): a gradient on the object logits, none on the
        // background's; the all-class entropy does push the background logit.
        let conf = Tensor::from_slice(&[2f32.ln(), 1.0, 0.0]).reshape([1, 1, 3]).set_requires_grad(true);
        object_entropy_loss(&conf).unwrap().backward();
        let g = Vec::<f32>::try_from(conf.grad().flatten(0, -1)).unwrap();
        assert_eq!(g[0], 0.0);
        assert!(g[1].abs() > 1e-3 && g[2].abs() > 1e-3, "{g:?}");
        let conf = Tensor::from_slice(&[2f32.ln(), 1.0, 0.0]).reshape([1, 1, 3]).set_requires_grad(true);
        entropy_loss(&conf).unwrap().backward();
        assert!(conf.grad().double_value(&[0, 0, 0]).abs() > 1e-3);
    }

    #[test]
    fn self_information_map_keeps_the_head_layout() {
        // Two boxes of 2 classes at one cell: box 0 logits (0, 0) → −½ ln ½ = 0.346574 each;
        // box 1 logits (ln 3, 0) → p = (¾, ¼): −¾ ln ¾ = 0.215762, −¼ ln ¼ = 0.346574.
        let map = Tensor::from_slice(&[0.0f32, 0.0, 3f32.ln(), 0.0]).reshape([1, 4, 1, 1]);
        let si = self_information_map(&map, 2).unwrap();
        assert_eq!(si.size(), [1, 4, 1, 1]);
        let v = Vec::<f32>::try_from(si.flatten(0, -1)).unwrap();
        for (got, want) in v.iter().zip([0.346574, 0.346574, 0.215762, 0.346574]) {
            assert!((got - want).abs() < 1e-5, "{v:?}");
        }
    }
}
