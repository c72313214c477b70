//! SSD's test-time post-processing: greedy non-maximum suppression and the per-class
//! selection of detections.
//!
//! [`nms`] is ssd.pytorch's `nms` (`layers/box_utils.py`): the `top_k` highest-scoring
//! candidates are visited in decreasing score; each one kept suppresses the remaining ones
//! whose IoU with it is greater than the threshold (`IoU.le(overlap)` survives). [`detect`] is
//! its `Detect` layer (`layers/functions/detection.py`) for one image: decode every prior's
//! offsets, then for each object class keep the scores strictly above `conf_thresh`, run
//! NMS, and keep at most `top_k` detections of that class. SSD300's values are
//! `Detect(num_classes, 0, top_k = 200, conf_thresh = 0.01, nms_thresh = 0.45)` (`ssd.py`).
//!
//! Where we differ: on equal scores the reference's order is whatever `torch.sort` gives;
//! here the lower index comes first. The reference's final step, meant to keep the `top_k`
//! best detections over all classes, has no effect (it fills a copy made by boolean
//! indexing), so no limit over classes is applied here either. Decoded boxes are not clipped
//! to the image, as in the reference.

use super::boxes::{decode, iou};

/// Defaults of ssd.pytorch's SSD300 test-time `Detect` layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectConfig {
    /// Scores must be greater than this to be candidates (0.01).
    pub conf_thresh: f32,
    /// A candidate is suppressed if its IoU with a kept box exceeds this (0.45).
    pub nms_thresh: f32,
    /// Candidates considered, and detections kept, per class (200).
    pub top_k: usize,
    /// Variances of the box encoding (`[0.1, 0.2]`, as the priors').
    pub variances: [f32; 2],
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self { conf_thresh: 0.01, nms_thresh: 0.45, top_k: 200, variances: [0.1, 0.2] }
    }
}

/// One detected object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Object class, 1..=C.
    pub class: usize,
    /// The class's softmax probability at the prior that produced it.
    pub score: f32,
    /// Corner form `[xmin, ymin, xmax, ymax]`, relative to the network input (0..1, not
    /// clipped).
    pub bbox: [f32; 4],
}

/// Greedy non-maximum suppression over `boxes` (corner form) with their `scores`.
///
/// Only the `top_k` highest scores are candidates. Returns the indices of the kept boxes in
/// decreasing score (equal scores: lower index first; NaN scores are ordered by
/// [`f32::total_cmp`]). A box is suppressed when its IoU with an already kept box is greater
/// than `overlap`.
///
/// # Panics
///
/// If `boxes` and `scores` differ in length.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], overlap: f32, top_k: usize) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "one score per box");
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    // Stable sort: equal scores keep their index order.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.truncate(top_k);
    let mut keep = Vec::new();
    let mut suppressed = vec![false; order.len()];
    for i in 0..order.len() {
        if suppressed[i] {
            continue;
        }
        let kept = boxes[order[i]];
        keep.push(order[i]);
        for j in i + 1..order.len() {
            if !suppressed[j] && iou(kept, boxes[order[j]]) > overlap {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// Detections of one image from SSD's raw outputs.
///
/// * `loc`: predicted offsets, one per prior (`[num_priors, 4]`, see
///   [`super::boxes::encode`]);
/// * `conf`: class probabilities (softmax over background and the C classes), row-major
///   `[num_priors, C + 1]`, class 0 the background;
/// * `priors`: default boxes, center form (`[num_priors, 4]`).
///
/// Returns the detections grouped by class (1..=C in order), each class's in decreasing
/// score, at most `top_k` per class.
///
/// # Panics
///
/// If `loc` and `priors` differ in length, or `conf` is not `num_priors` rows of the same
/// length.
pub fn detect(loc: &[[f32; 4]], conf: &[f32], priors: &[[f32; 4]], cfg: &DetectConfig) -> Vec<Detection> {
    let num_priors = priors.len();
    assert_eq!(loc.len(), num_priors, "one offset per prior");
    if num_priors == 0 {
        return Vec::new();
    }
    assert_eq!(conf.len() % num_priors, 0, "conf must be [num_priors, num_classes]");
    let num_classes = conf.len() / num_priors;
    let decoded: Vec<[f32; 4]> = loc.iter().zip(priors).map(|(&l, &p)| decode(l, p, cfg.variances)).collect();
    let mut out = Vec::new();
    for class in 1..num_classes {
        let candidates: Vec<usize> =
            (0..num_priors).filter(|&p| conf[p * num_classes + class] > cfg.conf_thresh).collect();
        if candidates.is_empty() {
            continue;
        }
        let boxes: Vec<[f32; 4]> = candidates.iter().map(|&p| decoded[p]).collect();
        let scores: Vec<f32> = candidates.iter().map(|&p| conf[p * num_classes + class]).collect();
        let kept = nms(&boxes, &scores, cfg.nms_thresh, cfg.top_k);
        out.extend(kept.into_iter().map(|i| Detection { class, score: scores[i], bbox: boxes[i] }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::boxes::center_size;

    #[test]
    fn overlapping_boxes_are_suppressed() {
        let boxes = [
            [0.0, 0.0, 1.0, 1.0], // 0
            [0.0, 0.0, 1.0, 0.9], // 1: IoU with 0 = 0.9
            [2.0, 2.0, 3.0, 3.0], // 2: disjoint from all
            [0.5, 0.0, 1.5, 1.0], // 3: IoU with 0 = 0.5 / 1.5 = 0.333; with 1 = 0.45 / 1.45 = 0.31
            [0.0, 0.0, 1.0, 0.5], // 4: IoU with 0 = 0.5; with 1 = 0.5 / 0.9 = 0.556
        ];
        let scores = [0.9, 0.95, 0.3, 0.8, 0.7];
        // Order by score: 1 (0.95), 0 (0.9), 3 (0.8), 4 (0.7), 2 (0.3).
        // Keep 1; it suppresses 0 (0.9 > 0.45) and 4 (0.556 > 0.45), not 3 (0.31).
        // Keep 3; it does not touch 2. Keep 2.
        assert_eq!(nms(&boxes, &scores, 0.45, 200), vec![1, 3, 2]);
        // At threshold 0.95 nothing overlaps enough: every box, in score order.
        assert_eq!(nms(&boxes, &scores, 0.95, 200), vec![1, 0, 3, 4, 2]);
        // top_k = 2: only 1 and 0 are candidates, and 0 is suppressed.
        assert_eq!(nms(&boxes, &scores, 0.45, 2), vec![1]);
        // IoU exactly at the threshold survives (suppression needs IoU > threshold):
        // box 4 against 0 is exactly 0.5.
        assert_eq!(nms(&[boxes[0], boxes[4]], &[0.9, 0.7], 0.5, 200), vec![0, 1]);
        assert!(nms(&[], &[], 0.45, 200).is_empty());
    }

    #[test]
    fn ties_keep_the_lower_index() {
        // Three identical boxes of equal score: the first is kept, the others suppressed.
        let b = [0.1, 0.1, 0.4, 0.4];
        assert_eq!(nms(&[b, b, b], &[0.5, 0.5, 0.5], 0.45, 200), vec![0]);
        // Disjoint boxes of equal score: index order.
        let boxes = [[0.6, 0.6, 0.7, 0.7], [0.0, 0.0, 0.1, 0.1], [0.3, 0.3, 0.4, 0.4]];
        assert_eq!(nms(&boxes, &[0.2, 0.5, 0.2], 0.45, 200), vec![1, 0, 2]);
    }

    #[test]
    fn detect_per_class() {
        // Four priors given in corner form; zero offsets decode to the priors themselves.
        let corners = [
            [0.0, 0.0, 0.4, 0.4], // 0
            [0.0, 0.0, 0.4, 0.3], // 1: IoU with 0 = 0.12 / 0.16 = 0.75
            [0.6, 0.6, 1.0, 1.0], // 2
            [0.5, 0.0, 0.9, 0.4], // 3
        ];
        let priors: Vec<[f32; 4]> = corners.iter().map(|&c| center_size(c)).collect();
        let loc = [[0.0f32; 4]; 4];
        // Columns: background, class 1, class 2.
        #[rustfmt::skip]
        let conf = [
            0.2, 0.7, 0.1,    // prior 0
            0.1, 0.8, 0.1,    // prior 1
            0.5, 0.005, 0.495, // prior 2: class 1 below conf_thresh 0.01
            0.9, 0.01, 0.09,  // prior 3: class 1 equal to 0.01, not above it
        ];
        let dets = detect(&loc, &conf, &priors, &DetectConfig::default());
        // Class 1 candidates: priors 0 (0.7) and 1 (0.8); 1 is kept and suppresses 0 (0.75).
        // Class 2 candidates: priors 0, 1, 2, 3 with 0.1, 0.1, 0.495, 0.09: 2 first; then 0
        // (tie with 1, lower index) suppresses 1; 3 is disjoint from 0 (x 0.5 > 0.4) and kept.
        let got: Vec<(usize, f32)> = dets.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, vec![(1, 0.8), (2, 0.495), (2, 0.1), (2, 0.09)]);
        let close = |a: [f32; 4], b: [f32; 4]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(dets[0].bbox, corners[1]), "{:?}", dets[0].bbox);
        assert!(close(dets[1].bbox, corners[2]), "{:?}", dets[1].bbox);
        assert!(close(dets[2].bbox, corners[0]), "{:?}", dets[2].bbox);
        assert!(close(dets[3].bbox, corners[3]), "{:?}", dets[3].bbox);

        // top_k = 1 keeps one detection per class.
        let cfg = DetectConfig { top_k: 1, ..DetectConfig::default() };
        let got: Vec<(usize, f32)> = detect(&loc, &conf, &priors, &cfg).iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, vec![(1, 0.8), (2, 0.495)]);

        // Offsets are decoded: prior 2 (center 0.8, 0.8, size 0.4) with loc [1, 0, 0, 0] moves
        // its center by 1 · 0.1 · 0.4 = 0.04 to the right: [0.64, 0.6, 1.04, 1.0].
        let mut loc2 = loc;
        loc2[2] = [1.0, 0.0, 0.0, 0.0];
        let d = detect(&loc2, &conf, &priors, &DetectConfig::default());
        assert!(close(d[1].bbox, [0.64, 0.6, 1.04, 1.0]), "{:?}", d[1].bbox);
    }
}
