//! Training targets of SSD: which prior is responsible for which ground-truth box.
//!
//! [`match_priors`] is ssd.pytorch's `match` (`layers/box_utils.py`) for one image:
//!
//! 1. the IoU of every truth with every prior (the priors turned to corner form);
//! 2. each prior takes the truth it overlaps most;
//! 3. each truth's best prior is forced to that truth (its overlap set to 2, so it stays a
//!    positive whatever the threshold), truths taken in order so that when two truths share
//!    a best prior the later one wins, as the reference's loop does;
//! 4. priors whose best overlap is below the threshold (0.5 in SSD) become background;
//! 5. every prior's location target is its truth encoded against it ([`encode`]).
//!
//! Where we differ, only at the edges: the reference takes 0-based labels and adds 1 (here the
//! labels are already 1..=C); it fails on an image without truths (here every prior is
//! background with zero location targets); on exact ties in an argmax it takes whatever index
//! `torch.max` returns (here always the first).

use super::boxes::{encode, jaccard_matrix, point_form};

/// SSD's IoU threshold for a positive prior (ssd.pytorch's `MultiBoxLoss(overlap_thresh=0.5)`).
pub const MATCH_THRESHOLD: f32 = 0.5;

/// Matches one image's ground truth to the priors.
///
/// * `truths`: ground-truth boxes, corner form, relative to the image;
/// * `labels`: their classes, 1..=C (one per truth);
/// * `priors`: default boxes, center form ([`super::priors::PriorConfig::priors`]);
/// * `threshold`: IoU below which a prior is background ([`MATCH_THRESHOLD`]);
/// * `variances`: of the box encoding (`[0.1, 0.2]`).
///
/// Returns, per prior, the encoded location target (`[g_cx, g_cy, g_w, g_h]`) and the class
/// target (0 = background). As in the reference, background priors still carry the encoding
/// of the truth they overlap most (the loss only reads positives' targets); with no truths
/// every target is background and the location targets are zero.
///
/// # Panics
///
/// If `labels.len() != truths.len()`.
pub fn match_priors(
    truths: &[[f32; 4]],
    labels: &[i64],
    priors: &[[f32; 4]],
    threshold: f32,
    variances: [f32; 2],
) -> (Vec<[f32; 4]>, Vec<i64>) {
    assert_eq!(truths.len(), labels.len(), "one label per ground-truth box");
    let num_priors = priors.len();
    if truths.is_empty() || num_priors == 0 {
        return (vec![[0.0; 4]; num_priors], vec![0; num_priors]);
    }
    let corners: Vec<[f32; 4]> = priors.iter().map(|&p| point_form(p)).collect();
    // overlaps[t * num_priors + p]
    let overlaps = jaccard_matrix(truths, &corners);

    // Best prior of each truth (the first of equal overlaps).
    let best_prior: Vec<usize> = overlaps
        .chunks_exact(num_priors)
        .map(|row| {
            let mut best = 0;
            for (p, &o) in row.iter().enumerate() {
                if o > row[best] {
                    best = p;
                }
            }
            best
        })
        .collect();

    // Best truth of each prior (the first of equal overlaps).
    let mut best_truth = vec![0usize; num_priors];
    let mut best_overlap = vec![f32::NEG_INFINITY; num_priors];
    for t in 0..truths.len() {
        for p in 0..num_priors {
            let o = overlaps[t * num_priors + p];
            if o > best_overlap[p] {
                best_overlap[p] = o;
                best_truth[p] = t;
            }
        }
    }

    // Every truth keeps its best prior; a later truth wins a shared one.
    for &p in &best_prior {
        best_overlap[p] = 2.0;
    }
    for (t, &p) in best_prior.iter().enumerate() {
        best_truth[p] = t;
    }

    let mut loc = Vec::with_capacity(num_priors);
    let mut conf = Vec::with_capacity(num_priors);
    for p in 0..num_priors {
        let t = best_truth[p];
        loc.push(encode(truths[t], priors[p], variances));
        conf.push(if best_overlap[p] < threshold { 0 } else { labels[t] });
    }
    (loc, conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::boxes::center_size;

    const VAR: [f32; 2] = [0.1, 0.2];

    /// Priors given in corner form for readability, turned to center form.
    fn priors(corners: &[[f32; 4]]) -> Vec<[f32; 4]> {
        corners.iter().map(|&c| center_size(c)).collect()
    }

    #[test]
    fn thresholds_and_forced_best_priors() {
        let p = priors(&[
            [0.0, 0.0, 0.2, 0.2], // 0
            [0.0, 0.0, 0.4, 0.4], // 1
            [0.5, 0.5, 0.7, 0.7], // 2
            [0.5, 0.5, 0.9, 0.9], // 3
            [0.8, 0.0, 1.0, 0.2], // 4
        ]);
        // Truth A = [0, 0, 0.3, 0.3] (class 3): area 0.09.
        //   prior 0: inter 0.04, union 0.09 + 0.04 - 0.04 = 0.09 → 0.444
        //   prior 1: inter 0.09, union 0.16 → 0.5625
        // Truth B = [0.55, 0.55, 0.9, 0.9] (class 5): area 0.35² = 0.1225.
        //   prior 2: inter 0.15² = 0.0225, union 0.04 + 0.1225 - 0.0225 = 0.14 → 0.1607
        //   prior 3: inter 0.1225, union 0.16 → 0.765625
        // Truth C = [0.85, 0.05, 0.95, 0.15] (class 1): area 0.01; prior 4: 0.01 / 0.04 = 0.25.
        let truths = [[0.0, 0.0, 0.3, 0.3], [0.55, 0.55, 0.9, 0.9], [0.85, 0.05, 0.95, 0.15]];
        let (loc, conf) = match_priors(&truths, &[3, 5, 1], &p, 0.5, VAR);
        // Prior 0 (0.444 < 0.5) is background; prior 1 ≥ 0.5 → A; prior 2 (0.16) background;
        // prior 3 → B; prior 4 only reaches 0.25 but is C's best prior, so it is forced to C.
        assert_eq!(conf, vec![0, 3, 0, 5, 1]);
        // Location targets: A against prior 1 (center 0.2, 0.2, size 0.4):
        // g_c = (0.15 - 0.2) / (0.1 · 0.4) = -1.25, g_wh = ln(0.3 / 0.4) / 0.2 = -1.4384104.
        let want = [-1.25, -1.25, -1.4384104, -1.4384104];
        assert!(loc[1].iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{:?}", loc[1]);
        // C against prior 4 (center 0.9, 0.1, size 0.2): g_c = 0, g_wh = ln(0.1 / 0.2) / 0.2
        // = -3.4657359.
        let want = [0.0, 0.0, -3.465_736, -3.465_736];
        assert!(loc[4].iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{:?}", loc[4]);
        // Background priors still hold the encoding of their best truth (prior 0 → A, whose
        // center 0.15 against 0.1, size 0.2: g_c = 0.05 / 0.02 = 2.5, g_wh = ln(1.5) / 0.2).
        let want = [2.5, 2.5, 2.0273255, 2.0273255];
        assert!(loc[0].iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{:?}", loc[0]);
    }

    #[test]
    fn a_later_truth_wins_a_shared_best_prior() {
        let p = priors(&[
            [0.0, 0.0, 0.4, 0.4], // 0
            [0.6, 0.6, 1.0, 1.0], // 1
        ]);
        // Truth A = [0, 0, 0.2, 0.4] (class 1): with prior 0, 0.08 / 0.16 = 0.5.
        // Truth B = [0.2, 0, 0.4, 0.4] (class 2): with prior 0, 0.08 / 0.16 = 0.5.
        // Neither touches prior 1. Both have prior 0 as best prior; the loop assigns A then B,
        // so B holds it. Prior 0's own best truth would be A (first of equal overlaps).
        // Prior 1 has overlap 0 with both: background, encoding the first truth, A.
        let truths = [[0.0, 0.0, 0.2, 0.4], [0.2, 0.0, 0.4, 0.4]];
        let (loc, conf) = match_priors(&truths, &[1, 2], &p, 0.5, VAR);
        assert_eq!(conf, vec![2, 0]);
        // B against prior 0 (center 0.2, 0.2, size 0.4): g_cx = (0.3 - 0.2) / 0.04 = 2.5,
        // g_cy = 0, g_w = ln(0.5) / 0.2 = -3.4657359, g_h = 0.
        let want = [2.5, 0.0, -3.465_736, 0.0];
        assert!(loc[0].iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{:?}", loc[0]);
        // A against prior 1 (center 0.8, 0.8, size 0.4): g_cx = (0.1 - 0.8) / 0.04 = -17.5,
        // g_cy = (0.2 - 0.8) / 0.04 = -15.
        assert!((loc[1][0] + 17.5).abs() < 1e-4 && (loc[1][1] + 15.0).abs() < 1e-4, "{:?}", loc[1]);
    }

    #[test]
    fn a_forced_prior_overrides_a_better_truth() {
        let p = priors(&[[0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.5, 0.5]]);
        // Truth A = [0, 0, 0.45, 0.45] (class 4), area 0.2025: prior 0 IoU 0.16 / 0.2025 =
        // 0.790, prior 1 IoU 0.2025 / 0.25 = 0.81, so its best prior is 1.
        // Truth B = [0.3, 0.3, 0.4, 0.4] (class 7), area 0.01: prior 0 IoU 0.01 / 0.16 = 0.0625,
        // prior 1 IoU 0.01 / 0.25 = 0.04, so its best prior is 0.
        // Prior 0 overlaps A most (0.790) but is B's best prior: it goes to B.
        let truths = [[0.0, 0.0, 0.45, 0.45], [0.3, 0.3, 0.4, 0.4]];
        let (_, conf) = match_priors(&truths, &[4, 7], &p, 0.5, VAR);
        assert_eq!(conf, vec![7, 4]);

        // Truth A = [0, 0, 0.4, 0.4] (class 4) fits prior 0 exactly (IoU 1; prior 1: 0.64).
        // Truth C = [0, 0, 0.3, 0.3] (class 2): prior 0 0.09 / 0.16 = 0.5625, prior 1 0.09 /
        // 0.25 = 0.36. Both have prior 0 as best prior; C is later and takes it, and A keeps
        // only prior 1, whose best truth it is (0.64 ≥ 0.5).
        let truths = [[0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.3, 0.3]];
        let (_, conf) = match_priors(&truths, &[4, 2], &p, 0.5, VAR);
        assert_eq!(conf, vec![2, 4]);
        // With a threshold of 0.7 prior 1 (0.64) turns background: A is lost entirely, the
        // reference's known quirk.
        let (_, conf) = match_priors(&truths, &[4, 2], &p, 0.7, VAR);
        assert_eq!(conf, vec![2, 0]);
    }

    #[test]
    fn no_truths_is_all_background() {
        let p = priors(&[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4]]);
        let (loc, conf) = match_priors(&[], &[], &p, 0.5, VAR);
        assert_eq!(conf, vec![0, 0, 0]);
        assert_eq!(loc, vec![[0.0; 4]; 3]);
        let (loc, conf) = match_priors(&[[0.0, 0.0, 0.5, 0.5]], &[1], &[], 0.5, VAR);
        assert!(loc.is_empty() && conf.is_empty());
    }
}
