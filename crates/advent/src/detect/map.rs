//! Detection accuracy: PASCAL VOC average precision at IoU 0.5, per class, and its mean (mAP).
//!
//! This is py-faster-rcnn's `voc_eval` / `voc_ap` (`lib/datasets/voc_eval.py`, copied into
//! ssd.pytorch's `eval.py`), with the images held in memory instead of result files:
//!
//! * a class's detections over all images are sorted by decreasing score;
//! * each is compared with the ground truths of its class in its image; the one of highest
//!   IoU (the first on ties, whether already matched or not) is its candidate. If that IoU
//!   is greater than the threshold (strictly: `ovmax > ovthresh`): a "difficult" candidate
//!   makes the detection count neither as true nor as false positive; an unmatched one is
//!   matched (true positive); an already matched one makes it a false positive (a duplicate).
//!   Otherwise it is a false positive. Note that a detection whose best ground truth is taken
//!   is a duplicate even if another, unmatched, ground truth also overlaps it enough: the
//!   VOC rule, not a "best unmatched" search;
//! * recall is `TP / positives` (difficult ground truths are not positives), precision
//!   `TP / max(TP + FP, ε)`, cumulated down the sorted list;
//! * AP is either the VOC2007 11-point interpolation (the mean over `t = 0, 0.1, …, 1` of
//!   the highest precision at recall `>= t`; `t` computed as numpy's `arange` gives it, so
//!   `0.30000000000000004`) or the VOC2010+ area under the monotone precision envelope.
//!
//! **Coordinates.** IoUs follow [`BoxConvention`]: [`BoxConvention::PixelInclusive`] (the
//! default) is voc_eval's: pixel coordinates of the original image, `xmax`/`ymax` the last
//! pixel inside the box, so a box spans `xmax - xmin + 1` pixels; that is how the Cityscapes
//! boxes of [`super::cityscapes`] are given, and how Chen et al.'s DA Faster R-CNN (the
//! paper's point of comparison) evaluate, with py-faster-rcnn's voc_eval. Detections of SSD
//! (relative boxes) are scaled by the image width and height into that frame, as ssd.pytorch's
//! `eval.py` does, with [`super::boxes::to_pixels`] (the inverse of the relative training
//! targets, so a detection equal to its target lands exactly on the ground truth). [`BoxConvention::Continuous`] takes areas without `+ 1` (ssd.pytorch's
//! own copy of voc_eval dropped the `+ 1`; it also shifts its detections by one pixel against
//! the ground truth, which we do not copy).
//!
//! **Where we differ from voc_eval**, only at its edges: detections of equal score keep the
//! order they are given in (images in order, then each image's detections), where numpy's
//! unstable `argsort` leaves it open; scores are used at full precision (ssd.pytorch writes
//! them with 3 decimals); a class with positives but no detections has AP 0 (voc_eval
//! returns -1); a class with no positives has no AP (`None`, voc_eval divides by zero) and
//! is left out of the mean.

use super::nms::Detection;

/// How box coordinates are read for IoU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoxConvention {
    /// Pixel coordinates with inclusive maxima: width `xmax - xmin + 1` (py-faster-rcnn's
    /// voc_eval, the PASCAL devkit).
    #[default]
    PixelInclusive,
    /// Continuous coordinates: width `xmax - xmin` (any unit, e.g. relative).
    Continuous,
}

impl BoxConvention {
    /// IoU of two corner-form boxes under this convention, in `f64` as voc_eval computes it.
    pub fn iou(self, a: [f32; 4], b: [f32; 4]) -> f64 {
        let one = match self {
            BoxConvention::PixelInclusive => 1.0,
            BoxConvention::Continuous => 0.0,
        };
        let a = a.map(f64::from);
        let b = b.map(f64::from);
        let iw = (a[2].min(b[2]) - a[0].max(b[0]) + one).max(0.0);
        let ih = (a[3].min(b[3]) - a[1].max(b[1]) + one).max(0.0);
        let inter = iw * ih;
        let union = (a[2] - a[0] + one) * (a[3] - a[1] + one) + (b[2] - b[0] + one) * (b[3] - b[1] + one) - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

/// One ground-truth object of an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundTruth {
    /// Object class, 1..=C.
    pub class: usize,
    /// Corner form `[xmin, ymin, xmax, ymax]`, in the frame of [`MapConfig::convention`]
    /// (by default pixels of the original image, maxima inclusive).
    pub bbox: [f32; 4],
    /// VOC's "difficult": not a positive, and detections matched to it are ignored. Used for
    /// regions that are not to be scored (e.g. Cityscapes crowd regions).
    pub difficult: bool,
}

/// Settings of the evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapConfig {
    /// A detection is correct if its IoU is greater than this (VOC: 0.5).
    pub iou_threshold: f64,
    /// How coordinates are read (default: pixels, maxima inclusive, as voc_eval).
    pub convention: BoxConvention,
}

impl Default for MapConfig {
    fn default() -> Self {
        Self { iou_threshold: 0.5, convention: BoxConvention::PixelInclusive }
    }
}

/// A class's precision/recall curve: one point per detection of the class, in decreasing
/// score (ignored detections included, as in voc_eval).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PrCurve {
    /// Non-difficult ground truths of the class over all images.
    pub num_positives: usize,
    /// Cumulated recall, `TP / num_positives`.
    pub recall: Vec<f64>,
    /// Cumulated precision, `TP / max(TP + FP, ε)`.
    pub precision: Vec<f64>,
}

/// The result of one class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassAp {
    /// Object class, 1..=C.
    pub class: usize,
    /// Non-difficult ground truths of the class.
    pub num_positives: usize,
    /// Detections of the class.
    pub num_detections: usize,
    /// True positives among them.
    pub true_positives: usize,
    /// VOC2007 11-point AP (0..1); `None` when the class has no positives.
    pub ap_11: Option<f64>,
    /// VOC2010+ all-point AP (0..1); `None` when the class has no positives.
    pub ap: Option<f64>,
}

/// Per-class APs and their means.
#[derive(Debug, Clone, PartialEq)]
pub struct MapResult {
    /// `per_class[c - 1]` is class `c`, for `c` in 1..=C.
    pub per_class: Vec<ClassAp>,
    /// Mean 11-point AP over the classes that have positives (`None` if none has).
    pub map_11: Option<f64>,
    /// Mean all-point AP over the classes that have positives (`None` if none has).
    pub map: Option<f64>,
}

/// The precision/recall curve of `class` (voc_eval's matching, see the module
/// documentation), with the number of true positives.
///
/// `detections[i]` and `ground_truth[i]` belong to image `i`; entries of other classes are
/// skipped.
///
/// # Panics
///
/// If `detections` and `ground_truth` differ in length.
pub fn pr_curve(
    detections: &[Vec<Detection>],
    ground_truth: &[Vec<GroundTruth>],
    class: usize,
    cfg: &MapConfig,
) -> (PrCurve, usize) {
    assert_eq!(detections.len(), ground_truth.len(), "detections and ground truth of the same images");
    let gts: Vec<Vec<&GroundTruth>> =
        ground_truth.iter().map(|g| g.iter().filter(|g| g.class == class).collect()).collect();
    let num_positives = gts.iter().flatten().filter(|g| !g.difficult).count();
    let mut matched: Vec<Vec<bool>> = gts.iter().map(|g| vec![false; g.len()]).collect();

    let mut dets: Vec<(usize, &Detection)> = detections
        .iter()
        .enumerate()
        .flat_map(|(i, d)| d.iter().filter(|d| d.class == class).map(move |d| (i, d)))
        .collect();
    // Stable: equal scores keep the given order.
    dets.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));

    let (mut tp, mut fp) = (0usize, 0usize);
    let mut recall = Vec::with_capacity(dets.len());
    let mut precision = Vec::with_capacity(dets.len());
    for (image, det) in dets {
        let mut best: Option<(usize, f64)> = None;
        for (j, g) in gts[image].iter().enumerate() {
            let o = cfg.convention.iou(det.bbox, g.bbox);
            if best.is_none_or(|(_, b)| o > b) {
                best = Some((j, o));
            }
        }
        match best {
            Some((j, o)) if o > cfg.iou_threshold => {
                if !gts[image][j].difficult {
                    if matched[image][j] {
                        fp += 1;
                    } else {
                        matched[image][j] = true;
                        tp += 1;
                    }
                }
            }
            _ => fp += 1,
        }
        recall.push(if num_positives > 0 { tp as f64 / num_positives as f64 } else { f64::NAN });
        precision.push(tp as f64 / ((tp + fp) as f64).max(f64::EPSILON));
    }
    (PrCurve { num_positives, recall, precision }, tp)
}

/// VOC2007 11-point AP of a curve (voc_ap with `use_07_metric=True`): the mean over
/// `t = 0, 0.1, …, 1` of the highest precision at a recall `>= t` (0 where there is none).
pub fn ap_11_point(recall: &[f64], precision: &[f64]) -> f64 {
    (0..=10)
        .map(|i| {
            // numpy's arange(0., 1.1, 0.1) yields i * 0.1 (0.30000000000000004 for i = 3).
            let t = i as f64 * 0.1;
            recall.iter().zip(precision).filter(|(&r, _)| r >= t).map(|(_, &p)| p).fold(0.0, f64::max)
        })
        .sum::<f64>()
        / 11.0
}

/// VOC2010+ AP of a curve (voc_ap with `use_07_metric=False`): the area under the precision
/// envelope (precision made non-increasing in recall), with the sentinels recall 0 → 1 and
/// precision 0 at both ends.
pub fn ap_all_point(recall: &[f64], precision: &[f64]) -> f64 {
    let mut mrec = Vec::with_capacity(recall.len() + 2);
    mrec.push(0.0);
    mrec.extend_from_slice(recall);
    mrec.push(1.0);
    let mut mpre = Vec::with_capacity(precision.len() + 2);
    mpre.push(0.0);
    mpre.extend_from_slice(precision);
    mpre.push(0.0);
    for i in (1..mpre.len()).rev() {
        mpre[i - 1] = mpre[i - 1].max(mpre[i]);
    }
    (0..mrec.len() - 1).filter(|&i| mrec[i + 1] != mrec[i]).map(|i| (mrec[i + 1] - mrec[i]) * mpre[i + 1]).sum()
}

/// Evaluates the detections of classes 1..=`num_classes` against the ground truth.
///
/// `detections[i]` and `ground_truth[i]` belong to image `i`, in the same frame (see
/// [`MapConfig::convention`]).
///
/// # Panics
///
/// If `detections` and `ground_truth` differ in length.
pub fn evaluate(
    detections: &[Vec<Detection>],
    ground_truth: &[Vec<GroundTruth>],
    num_classes: usize,
    cfg: &MapConfig,
) -> MapResult {
    let per_class: Vec<ClassAp> = (1..=num_classes)
        .map(|class| {
            let (curve, true_positives) = pr_curve(detections, ground_truth, class, cfg);
            let has_positives = curve.num_positives > 0;
            ClassAp {
                class,
                num_positives: curve.num_positives,
                num_detections: curve.recall.len(),
                true_positives,
                ap_11: has_positives.then(|| ap_11_point(&curve.recall, &curve.precision)),
                ap: has_positives.then(|| ap_all_point(&curve.recall, &curve.precision)),
            }
        })
        .collect();
    let mean = |f: fn(&ClassAp) -> Option<f64>| {
        let v: Vec<f64> = per_class.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let map_11 = mean(|c| c.ap_11);
    let map = mean(|c| c.ap);
    MapResult { per_class, map_11, map }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class: usize, score: f32, bbox: [f32; 4]) -> Detection {
        Detection { class, score, bbox }
    }

    fn gt(class: usize, bbox: [f32; 4], difficult: bool) -> GroundTruth {
        GroundTruth { class, bbox, difficult }
    }

    fn assert_close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn pixel_inclusive_and_continuous_iou() {
        let px = BoxConvention::PixelInclusive;
        let cont = BoxConvention::Continuous;
        // [0,0,9,9] is 10x10 = 100 px; [0,0,9,4] is 10x5 = 50 px, inside it: 50 / 100.
        assert_close(px.iou([0., 0., 9., 9.], [0., 0., 9., 4.]), 0.5);
        // Continuous: 9x9 = 81 and 9x4 = 36: 36 / 81.
        assert_close(cont.iou([0., 0., 9., 9.], [0., 0., 9., 4.]), 36.0 / 81.0);
        // A single pixel [3,3,3,3] is 1 px with +1, nothing without.
        assert_close(px.iou([3., 3., 3., 3.], [3., 3., 3., 3.]), 1.0);
        assert_close(cont.iou([3., 3., 3., 3.], [3., 3., 3., 3.]), 0.0);
        // Adjacent pixels do not overlap: [0,0,4,4] and [5,0,9,4].
        assert_close(px.iou([0., 0., 4., 4.], [5., 0., 9., 4.]), 0.0);
    }

    /// Class 1: 3 positives (g0, g1 in image 0; g2 in image 1) and one difficult box (image 1).
    fn scene() -> (Vec<Vec<Detection>>, Vec<Vec<GroundTruth>>) {
        let gts = vec![
            vec![gt(1, [0., 0., 9., 9.], false), gt(1, [20., 0., 29., 9.], false)],
            vec![gt(1, [0., 0., 9., 9.], false), gt(1, [50., 50., 59., 59.], true)],
        ];
        let dets = vec![
            vec![
                det(1, 0.9, [0., 0., 9., 9.]),   // a: g0, IoU 1 → TP
                det(1, 0.8, [1., 0., 10., 9.]),  // b: g0 again (90 / 110 = 0.818) → FP
                det(1, 0.5, [20., 0., 29., 9.]), // e: g1 → TP
            ],
            vec![
                det(1, 0.7, [50., 50., 59., 59.]),     // c: the difficult box → ignored
                det(1, 0.6, [100., 100., 109., 109.]), // d: nothing → FP
                det(1, 0.4, [0., 0., 9., 5.]),         // f: g2, 60 / 100 = 0.6 → TP
            ],
        ];
        (dets, gts)
    }

    #[test]
    fn hand_computed_curve_and_aps() {
        let (dets, gts) = scene();
        let (curve, tp) = pr_curve(&dets, &gts, 1, &MapConfig::default());
        // In score order a, b, c, d, e, f: TP, FP, -, FP, TP, TP.
        // cumulated TP 1 1 1 1 2 3, FP 0 1 1 2 2 2;
        // recall    = 1/3 1/3 1/3 1/3 2/3 1
        // precision = 1   1/2 1/2 1/3 1/2 3/5
        assert_eq!(curve.num_positives, 3);
        assert_eq!(tp, 3);
        let rec = [1. / 3., 1. / 3., 1. / 3., 1. / 3., 2. / 3., 1.];
        let prec = [1., 0.5, 0.5, 1. / 3., 0.5, 0.6];
        for (a, b) in curve.recall.iter().zip(rec).chain(curve.precision.iter().zip(prec)) {
            assert_close(*a, b);
        }
        // 11-point: t = 0, 0.1, 0.2, 0.3 → max precision at recall ≥ t = 1 (4 points);
        // t = 0.4 … 1.0 → recall 2/3 or 1, max(1/2, 3/5) = 0.6 (7 points):
        // (4 · 1 + 7 · 0.6) / 11 = 8.2 / 11 = 0.745454…
        assert_close(ap_11_point(&curve.recall, &curve.precision), 8.2 / 11.0);
        // All points: envelope of precision = 1 on (0, 1/3], 0.6 on (1/3, 1]:
        // 1/3 · 1 + 1/3 · 0.6 + 1/3 · 0.6 = 1/3 + 0.4 = 0.733333…
        assert_close(ap_all_point(&curve.recall, &curve.precision), 1. / 3. + 0.4);
    }

    #[test]
    fn means_skip_classes_without_positives() {
        let (mut dets, mut gts) = scene();
        // Class 2: detections but no ground truth → no AP. Class 3: a positive, no detection
        // → AP 0. Class 4: only a difficult box → no positives → no AP.
        dets[0].push(det(2, 0.99, [0., 0., 9., 9.]));
        gts[1].push(gt(3, [0., 0., 9., 9.], false));
        gts[0].push(gt(4, [0., 0., 9., 9.], true));
        let r = evaluate(&dets, &gts, 4, &MapConfig::default());
        assert_eq!(r.per_class.len(), 4);
        let c = &r.per_class[0];
        assert_eq!((c.class, c.num_positives, c.num_detections, c.true_positives), (1, 3, 6, 3));
        assert_close(c.ap_11.unwrap(), 8.2 / 11.0);
        assert_close(c.ap.unwrap(), 1. / 3. + 0.4);
        assert_eq!((r.per_class[1].ap, r.per_class[1].ap_11, r.per_class[1].num_detections), (None, None, 1));
        assert_eq!((r.per_class[2].ap, r.per_class[2].ap_11), (Some(0.0), Some(0.0)));
        assert_eq!((r.per_class[3].ap, r.per_class[3].num_positives), (None, 0));
        // Means over classes 1 and 3: (0.745454… + 0) / 2 and (0.733333… + 0) / 2.
        assert_close(r.map_11.unwrap(), 8.2 / 11.0 / 2.0);
        assert_close(r.map.unwrap(), (1. / 3. + 0.4) / 2.0);
        assert_eq!(evaluate(&[vec![]], &[vec![]], 2, &MapConfig::default()).map, None);
    }

    #[test]
    fn strict_threshold_difficult_and_duplicates() {
        let cfg = MapConfig::default();
        // IoU exactly 0.5 (50 / 100 px) is not a match: a single FP, AP 0.
        let gts = vec![vec![gt(1, [0., 0., 9., 9.], false)]];
        let dets = vec![vec![det(1, 0.9, [0., 0., 9., 4.])]];
        let r = evaluate(&dets, &gts, 1, &cfg);
        assert_eq!((r.per_class[0].true_positives, r.per_class[0].ap), (0, Some(0.0)));

        // The convention decides small boxes: truth [0,0,1,1], detection [0,0,1,2].
        // +1: 4 px in 6 px = 0.667 → TP, AP 1. Continuous: 1 in 2 = 0.5 → FP, AP 0.
        let gts = vec![vec![gt(1, [0., 0., 1., 1.], false)]];
        let dets = vec![vec![det(1, 0.9, [0., 0., 1., 2.])]];
        assert_eq!(evaluate(&dets, &gts, 1, &cfg).map, Some(1.0));
        let cont = MapConfig { convention: BoxConvention::Continuous, ..cfg };
        assert_eq!(evaluate(&dets, &gts, 1, &cont).map, Some(0.0));

        // A detection whose best ground truth is difficult is ignored even when it also
        // overlaps a positive enough: truth P = [0,0,9,9] (positive), D = [0,0,9,7]
        // (difficult); detection [0,0,9,6]: IoU with P = 70 / 100 = 0.7, with D = 70 / 80 =
        // 0.875 → D → ignored. Then a second detection [0,0,9,9] (IoU 1 with P) is a TP.
        // Curve: (-), TP → recall 0, 1; precision 0 (0 / ε), 1 → AP 1 for both variants
        // (11-point: precision 1 at recall 1 ≥ every t).
        let gts = vec![vec![gt(1, [0., 0., 9., 9.], false), gt(1, [0., 0., 9., 7.], true)]];
        let dets = vec![vec![det(1, 0.9, [0., 0., 9., 6.]), det(1, 0.8, [0., 0., 9., 9.])]];
        let (curve, tp) = pr_curve(&dets, &gts, 1, &cfg);
        assert_eq!((curve.recall, curve.precision, tp), (vec![0.0, 1.0], vec![0.0, 1.0], 1));
        let r = evaluate(&dets, &gts, 1, &cfg);
        assert_eq!((r.map, r.map_11), (Some(1.0), Some(1.0)));

        // A duplicate whose best truth is taken is a FP even if another truth overlaps it
        // enough (VOC rule). Truths A = [0,0,9,9], B = [0,0,9,8] (90 px); detections
        // [0,0,9,9] (0.9: A, IoU 1 → TP) then [0,0,9,9] again (0.8: best A (1 > 0.9), taken
        // → FP, although B, IoU 0.9, is free). Curve: recall 1/2 1/2, precision 1 1/2.
        // 11-point: t ≤ 0.5 → 1 (6 points), t > 0.5 → none → 0: 6 / 11.
        // All points: 1/2 · 1 = 0.5.
        let gts = vec![vec![gt(1, [0., 0., 9., 9.], false), gt(1, [0., 0., 9., 8.], false)]];
        let dets = vec![vec![det(1, 0.9, [0., 0., 9., 9.]), det(1, 0.8, [0., 0., 9., 9.])]];
        let r = evaluate(&dets, &gts, 1, &cfg);
        assert_eq!(r.per_class[0].true_positives, 1);
        assert_close(r.map_11.unwrap(), 6.0 / 11.0);
        assert_close(r.map.unwrap(), 0.5);
    }

    #[test]
    fn eleven_point_thresholds_follow_numpy() {
        // Recall exactly 0.3 (3/10) does not reach numpy's t = 0.30000000000000004: with
        // precision 1 up to recall 0.3 and nothing beyond, the points t = 0, 0.1, 0.2 count
        // and t = 0.3 does not: 3 / 11 (not 4 / 11).
        assert_close(ap_11_point(&[0.1, 0.2, 3.0 / 10.0], &[1.0, 1.0, 1.0]), 3.0 / 11.0);
        // And the all-point area is 0.3 · 1.
        assert_close(ap_all_point(&[0.1, 0.2, 3.0 / 10.0], &[1.0, 1.0, 1.0]), 0.3);
    }
}
