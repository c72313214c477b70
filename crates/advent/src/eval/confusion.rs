//! The dataset-level confusion matrix and per-class IoU (SPEC §6; the reference's
//! `fast_hist` and `per_class_iu` in `advent/utils/func.py`).

use anyhow::{bail, ensure, Result};

/// Train id of pixels a prediction leaves without a class of the evaluated set: only label-id
/// predictions have them (an ignored Cityscapes label id, read with `--label-ids`).
pub const UNASSIGNED: u8 = 255;

/// Dataset-level confusion matrix, rows = ground truth, columns = prediction (SPEC §6,
/// `func.py` `fast_hist`), accumulated over every image of a set (not averaged per image).
///
/// Besides the `C × C` counts it keeps, per ground-truth class, the pixels predicted as no
/// class at all ([`ConfusionMatrix::add_label_id_prediction`]): they count as missed for their
/// class, as cityscapesScripts counts predictions of ignored label ids, and are zero for
/// every network output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    /// Row-major `C × C`: `counts[gt * C + pred]`.
    counts: Vec<u64>,
    /// Per ground-truth class: pixels predicted as no class.
    unassigned: Vec<u64>,
}

/// One image's `(ground truth, prediction)` byte pairs, counted before any mapping or check:
/// one branch-free pass over the pixels (about a millisecond for a 2048×1024 frame), after
/// which mapping ids and checking values cost 256 × 256 steps, not a pass per pixel.
pub struct PairCounts(Vec<u32>, u64);

impl Default for PairCounts {
    fn default() -> Self {
        Self::new()
    }
}

/// The identity map of byte values (predictions that are train ids already).
pub(crate) const IDENTITY: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

impl PairCounts {
    /// Counts the pairs of two row-major maps of the same length.
    ///
    /// # Errors
    ///
    /// Slices of different lengths, or of more than `u32::MAX` pixels.
    pub fn of(ground_truth: &[u8], prediction: &[u8]) -> Result<Self> {
        let mut counts = PairCounts::new();
        counts.add(ground_truth, prediction)?;
        Ok(counts)
    }

    /// No pixels yet: count an image piece by piece (row by row) with [`PairCounts::add`].
    pub fn new() -> Self {
        PairCounts(vec![0; 1 << 16], 0)
    }

    /// Counts more pixels of the same image (e.g. the next row of both maps).
    ///
    /// # Errors
    ///
    /// Slices of different lengths, or more than `u32::MAX` pixels in all.
    pub fn add(&mut self, ground_truth: &[u8], prediction: &[u8]) -> Result<()> {
        ensure!(
            ground_truth.len() == prediction.len(),
            "ground truth and prediction differ in size ({} and {} pixels)",
            ground_truth.len(),
            prediction.len()
        );
        self.1 += ground_truth.len() as u64;
        ensure!(self.1 <= u64::from(u32::MAX), "an image of more than {} pixels is too large", u32::MAX);
        let h = &mut self.0;
        for (&g, &p) in ground_truth.iter().zip(prediction) {
            h[usize::from(g) << 8 | usize::from(p)] += 1;
        }
        Ok(())
    }

    fn get(&self, gt: usize, pred: usize) -> u64 {
        u64::from(self.0[gt << 8 | pred])
    }

    /// Pixels per ground-truth value (`[value]`).
    pub fn ground_truth_values(&self) -> Vec<u64> {
        (0..256).map(|g| (0..256).map(|p| self.get(g, p)).sum()).collect()
    }

    /// Pixels per prediction value (`[value]`).
    pub fn prediction_values(&self) -> Vec<u64> {
        (0..256).map(|p| (0..256).map(|g| self.get(g, p)).sum()).collect()
    }
}

impl ConfusionMatrix {
    /// An empty matrix for `num_classes` classes (1 to 255; 255 marks ignored pixels).
    pub fn new(num_classes: usize) -> Self {
        assert!((1..=255).contains(&num_classes), "a confusion matrix needs 1 to 255 classes, got {num_classes}");
        ConfusionMatrix { num_classes, counts: vec![0; num_classes * num_classes], unassigned: vec![0; num_classes] }
    }

    /// Rebuilds a matrix from its rows (ground truth) of counts, as stored in
    /// [`super::Scores::confusion`].
    ///
    /// # Errors
    ///
    /// Rows that do not form a square matrix of 1 to 255 classes.
    pub fn from_rows(rows: &[Vec<u64>]) -> Result<Self> {
        let n = rows.len();
        ensure!((1..=255).contains(&n), "a confusion matrix needs 1 to 255 classes, got {n} rows");
        ensure!(rows.iter().all(|r| r.len() == n), "the confusion matrix is not square ({n} rows)");
        let mut m = ConfusionMatrix::new(n);
        m.counts = rows.concat();
        Ok(m)
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Pixels of ground-truth class `gt` predicted as `pred`.
    pub fn get(&self, gt: usize, pred: usize) -> u64 {
        self.counts[gt * self.num_classes + pred]
    }

    /// The `C × C` counts, one row per ground-truth class.
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts.chunks(self.num_classes).map(<[u64]>::to_vec).collect()
    }

    /// Per ground-truth class, the pixels predicted as no class (label-id predictions only).
    pub fn unassigned(&self) -> &[u64] {
        &self.unassigned
    }

    /// Pixels counted (ground truth in `0..C`).
    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.unassigned.iter().sum::<u64>()
    }

    /// Adds one image of train ids (row-major, the same length): pixels whose ground truth is
    /// `>= num_classes` (255: ignored) are skipped, as in the reference (`label < n`).
    ///
    /// # Errors
    ///
    /// Slices of different lengths, or a prediction id `>= num_classes` on any pixel (the
    /// reference would silently count it in the next row); nothing is added then.
    pub fn add(&mut self, ground_truth: &[u8], prediction: &[u8]) -> Result<()> {
        self.add_checked(ground_truth, prediction, false)
    }

    /// Like [`ConfusionMatrix::add`], for predictions that were label ids mapped to train ids:
    /// [`UNASSIGNED`] (255, an id the protocol ignores) is allowed and counts as missed for
    /// the pixel's ground-truth class, as cityscapesScripts counts it.
    ///
    /// # Errors
    ///
    /// Slices of different lengths, or a prediction id in `num_classes..255`.
    pub fn add_label_id_prediction(&mut self, ground_truth: &[u8], prediction: &[u8]) -> Result<()> {
        self.add_checked(ground_truth, prediction, true)
    }

    fn add_checked(&mut self, ground_truth: &[u8], prediction: &[u8], allow_unassigned: bool) -> Result<()> {
        let counts = PairCounts::of(ground_truth, prediction)?;
        self.add_counts(&counts, &IDENTITY, &IDENTITY, allow_unassigned)
    }

    /// Adds an image's pair counts with both values mapped to train ids through tables
    /// (e.g. Cityscapes label id → train id): pixels whose ground truth maps to
    /// `>= num_classes` are skipped; with `allow_unassigned`, a prediction mapped to
    /// [`UNASSIGNED`] counts as missed for its ground-truth class.
    ///
    /// # Errors
    ///
    /// A prediction value that maps outside the classes on any pixel (listing the raw
    /// values); nothing is added then.
    pub fn add_counts(
        &mut self,
        counts: &PairCounts,
        gt_map: &[u8; 256],
        pred_map: &[u8; 256],
        allow_unassigned: bool,
    ) -> Result<()> {
        let n = self.num_classes;
        let valid = |p: usize| {
            let m = pred_map[p];
            usize::from(m) < n || (allow_unassigned && m == UNASSIGNED)
        };
        let bad: Vec<(usize, u64)> = (0..256)
            .filter(|&p| !valid(p))
            .map(|p| (p, (0..256).map(|g| counts.get(g, p)).sum::<u64>()))
            .filter(|&(_, c)| c > 0)
            .collect();
        if !bad.is_empty() {
            let list: Vec<String> = bad.iter().take(8).map(|(v, c)| format!("{v} ({c} px)")).collect();
            bail!(
                "prediction values outside the {n} classes (0..={}): {}{}",
                n - 1,
                list.join(", "),
                if bad.len() > 8 { ", ..." } else { "" }
            );
        }
        for (g, &gt) in gt_map.iter().enumerate() {
            let gt = usize::from(gt);
            if gt >= n {
                continue;
            }
            for (p, &pred) in pred_map.iter().enumerate() {
                let c = counts.get(g, p);
                if c == 0 {
                    continue;
                }
                match pred {
                    UNASSIGNED => self.unassigned[gt] += c,
                    pred => self.counts[gt * n + usize::from(pred)] += c,
                }
            }
        }
        Ok(())
    }

    /// Adds another matrix's counts (of the same class count).
    pub fn merge(&mut self, other: &ConfusionMatrix) {
        assert_eq!(self.num_classes, other.num_classes, "merging confusion matrices of different class counts");
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        for (a, b) in self.unassigned.iter_mut().zip(&other.unassigned) {
            *a += b;
        }
    }

    /// IoU per class in `[0, 1]`: `diag / (row sum + column sum − diag)` (`per_class_iu`;
    /// unassigned pixels count in the row). `None` for classes with no pixel in ground truth
    /// or prediction (NaN in the reference, skipped by `nanmean`).
    pub fn iou(&self) -> Vec<Option<f64>> {
        let n = self.num_classes;
        (0..n)
            .map(|c| {
                let tp = self.get(c, c);
                let row: u64 = (0..n).map(|p| self.get(c, p)).sum::<u64>() + self.unassigned[c];
                let col: u64 = (0..n).map(|g| self.get(g, c)).sum();
                let union = row + col - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// Mean IoU in `[0, 1]` over `classes`, skipping classes without pixels (`nanmean`);
    /// `None` when none of them has any.
    pub fn mean_iou(&self, classes: &[usize]) -> Option<f64> {
        mean_of(&self.iou(), classes)
    }
}

/// `nanmean` of `values[i]` for `i` in `classes`.
pub(crate) fn mean_of(values: &[Option<f64>], classes: &[usize]) -> Option<f64> {
    let present: Vec<f64> = classes.iter().filter_map(|&c| values.get(c).copied().flatten()).collect();
    (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn three_classes_by_hand() {
        // 3 classes, 10 pixels; 255 = ignored.
        //   gt:   0 0 0 1 1 2 2 2 255 255
        //   pred: 0 0 1 1 2 2 2 0   2   1
        // Pairs counted (ignored pixels skipped): (0,0)x2 (0,1) (1,1) (1,2) (2,2)x2 (2,0)
        //        pred 0 1 2
        //   gt 0   [2 1 0]   row 3
        //   gt 1   [0 1 1]   row 2
        //   gt 2   [1 0 2]   row 3
        //   col     3 2 3
        // IoU_0 = 2 / (3 + 3 - 2) = 1/2;  IoU_1 = 1 / (2 + 2 - 1) = 1/3;
        // IoU_2 = 2 / (3 + 3 - 2) = 1/2;  mIoU = (1/2 + 1/3 + 1/2) / 3 = 4/9.
        let gt = [0, 0, 0, 1, 1, 2, 2, 2, 255, 255];
        let pred = [0, 0, 1, 1, 2, 2, 2, 0, 2, 1];
        let mut m = ConfusionMatrix::new(3);
        m.add(&gt, &pred).unwrap();
        assert_eq!(m.rows(), vec![vec![2, 1, 0], vec![0, 1, 1], vec![1, 0, 2]]);
        assert_eq!(m.total(), 8);
        let iou = m.iou();
        assert!(close(iou[0], 0.5) && close(iou[1], 1.0 / 3.0) && close(iou[2], 0.5), "{iou:?}");
        assert!(close(m.mean_iou(&[0, 1, 2]), 4.0 / 9.0));
        // The subset {0, 2}: (1/2 + 1/2) / 2.
        assert!(close(m.mean_iou(&[0, 2]), 0.5));
    }

    #[test]
    fn absent_classes_are_skipped_and_false_positives_count() {
        // 4 classes. gt: 0 0 1 1; pred: 0 0 1 2.
        //   class 0: tp 2, row 2, col 2 → 1
        //   class 1: tp 1, row 2, col 1 → 1/2
        //   class 2: tp 0, row 0, col 1 → 0   (predicted only: a false positive, IoU 0)
        //   class 3: row 0, col 0 → None       (NaN in the reference, skipped)
        // mIoU over all four = nanmean(1, 1/2, 0) = 1/2.
        let mut m = ConfusionMatrix::new(4);
        m.add(&[0, 0, 1, 1], &[0, 0, 1, 2]).unwrap();
        let iou = m.iou();
        assert!(close(iou[0], 1.0) && close(iou[1], 0.5) && close(iou[2], 0.0), "{iou:?}");
        assert_eq!(iou[3], None);
        assert!(close(m.mean_iou(&[0, 1, 2, 3]), 0.5));
        assert_eq!(m.mean_iou(&[3]), None);
    }

    #[test]
    fn images_accumulate_into_one_matrix_not_a_mean_of_images() {
        // Image A: gt 0 0 0 0, pred 0 0 0 0 → per-image IoU_0 = 1.
        // Image B: gt 0,       pred 1       → per-image IoU_0 = 0.
        // Dataset level: tp 4, row 5, col 4 → IoU_0 = 4/5 (a per-image mean would give 1/2).
        let mut a = ConfusionMatrix::new(2);
        a.add(&[0; 4], &[0; 4]).unwrap();
        let mut b = ConfusionMatrix::new(2);
        b.add(&[0], &[1]).unwrap();
        let mut both = ConfusionMatrix::new(2);
        both.add(&[0; 4], &[0; 4]).unwrap();
        both.add(&[0], &[1]).unwrap();
        a.merge(&b);
        assert_eq!(a, both);
        assert!(close(a.iou()[0], 0.8));
        // Class 1: tp 0, row 0, col 1 → 0.
        assert!(close(a.iou()[1], 0.0));
    }

    #[test]
    fn predictions_outside_the_classes_are_errors_and_add_nothing() {
        let mut m = ConfusionMatrix::new(3);
        let err = m.add(&[0, 1, 255], &[0, 7, 255]).unwrap_err().to_string();
        assert!(err.contains("7 (1 px), 255 (1 px)"), "{err}");
        assert_eq!(m.total(), 0);
        let err = m.add(&[0, 1], &[0]).unwrap_err().to_string();
        assert!(err.contains("differ in size"), "{err}");
    }

    #[test]
    fn unassigned_label_id_predictions_count_as_missed() {
        // gt 0 0 1 255; pred 0 255 1 255 (255: an ignored label id was predicted).
        // class 0: tp 1, row 1 + 1 unassigned = 2, col 1 → 1/2; class 1: 1/1.
        let mut m = ConfusionMatrix::new(2);
        m.add_label_id_prediction(&[0, 0, 1, 255], &[0, 255, 1, 255]).unwrap();
        assert_eq!(m.unassigned(), &[1, 0]);
        assert_eq!(m.total(), 3);
        assert!(close(m.iou()[0], 0.5) && close(m.iou()[1], 1.0));
        assert!(m.add_label_id_prediction(&[0], &[2]).is_err());
    }

    #[test]
    fn rows_round_trip() {
        let mut m = ConfusionMatrix::new(2);
        m.add(&[0, 1, 1], &[1, 1, 0]).unwrap();
        assert_eq!(ConfusionMatrix::from_rows(&m.rows()).unwrap(), m);
        assert!(ConfusionMatrix::from_rows(&[vec![1, 2]]).is_err());
    }
}
