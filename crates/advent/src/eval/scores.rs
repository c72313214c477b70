//! The result of an evaluation, as JSON and as the paper prints it.

use super::confusion::{mean_of, ConfusionMatrix};
use crate::classes::{self, EvalSubset};
use anyhow::{Context, Result};
use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::Path;

/// What `advent eval` and `advent score` report (`--json`):
///
/// ```json
/// {"miou": 43.75, "iou": {"road": 89.9, ..., "train": null}, "classes": ["road", ...],
///  "confusion": [[...], ...]}
/// ```
///
/// Percentages are unrounded (the reference prints `round(mIoU · 100, 2)`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Scores {
    /// Mean IoU in percent over `classes`, skipping classes without any pixel (`nanmean`);
    /// NaN (`null` in JSON) when no class has any.
    #[serde(deserialize_with = "nan_from_null")]
    pub miou: f64,
    /// IoU in percent of every class of the network, in train-id order, by cityscapesScripts
    /// name; `null` where the class has no pixel in ground truth or prediction.
    pub iou: IndexMap<String, Option<f64>>,
    /// The classes `miou` averages over (SYNTHIA's mIoU* leaves out wall, fence and pole).
    pub classes: Vec<String>,
    /// The confusion matrix over every class of the network: rows ground truth, columns
    /// prediction, in pixels.
    pub confusion: Vec<Vec<u64>>,
    /// Per ground-truth class, pixels predicted as an ignored label id (only `advent score
    /// --label-ids`; counted as missed, as cityscapesScripts does). Absent when all zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unassigned: Option<Vec<u64>>,
}

fn nan_from_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The names of a network's classes: cityscapesScripts' for 19 and 16 classes, `class N`
/// otherwise.
pub fn class_names(num_classes: usize) -> Vec<String> {
    match classes::class_names(num_classes) {
        Some(names) => names.into_iter().map(String::from).collect(),
        None => (0..num_classes).map(|i| format!("class {i}")).collect(),
    }
}

/// The paper's column headings (SPEC §8: road, sidewalk, ..., veg, terrain, ..., mbike, bike).
fn abbreviation(name: &str) -> &str {
    match name {
        "sidewalk" => "side.",
        "building" => "build.",
        "traffic light" => "light",
        "traffic sign" => "sign",
        "vegetation" => "veg",
        "terrain" => "terr.",
        "person" => "pers.",
        "motorcycle" => "mbike",
        "bicycle" => "bike",
        other => other,
    }
}

impl Scores {
    /// Scores of a confusion matrix: IoU of each class (`class_names`, one per matrix class),
    /// mIoU over `subset` (class indices; empty means all).
    ///
    /// # Panics
    ///
    /// `class_names` not of the matrix's class count, or a subset index out of range.
    pub fn from_confusion(cm: &ConfusionMatrix, class_names: &[&str], subset: &[usize]) -> Scores {
        let n = cm.num_classes();
        assert_eq!(class_names.len(), n, "one class name per confusion-matrix class");
        let all: Vec<usize> = (0..n).collect();
        let subset = if subset.is_empty() { &all[..] } else { subset };
        assert!(subset.iter().all(|&c| c < n), "subset class out of range");
        let iou = cm.iou();
        let unassigned = cm.unassigned();
        Scores {
            miou: mean_of(&iou, subset).map_or(f64::NAN, |m| 100.0 * m),
            iou: class_names.iter().zip(&iou).map(|(name, v)| (name.to_string(), v.map(|v| 100.0 * v))).collect(),
            classes: subset.iter().map(|&c| class_names[c].to_string()).collect(),
            confusion: cm.rows(),
            unassigned: unassigned.iter().any(|&u| u > 0).then(|| unassigned.to_vec()),
        }
    }

    /// The score's name in the paper: `mIoU`, or `mIoU*` for SYNTHIA's 13 of 16 classes.
    pub fn score_name(&self) -> &'static str {
        let star = classes::eval_classes(16, EvalSubset::MiouStar13).expect("16 classes have mIoU*");
        if self.iou.len() == 16 && self.classes.len() == star.len() {
            EvalSubset::MiouStar13.name()
        } else {
            EvalSubset::All.name()
        }
    }

    /// SYNTHIA's pair for a 16-class result: (mIoU over 16, mIoU* over 13), in percent.
    fn synthia_pair(&self) -> Option<(f64, f64)> {
        if self.iou.len() != 16 {
            return None;
        }
        let values: Vec<Option<f64>> = self.iou.values().copied().collect();
        let all: Vec<usize> = (0..16).collect();
        let star = classes::eval_classes(16, EvalSubset::MiouStar13)?;
        Some((mean_of(&values, &all).unwrap_or(f64::NAN), mean_of(&values, &star).unwrap_or(f64::NAN)))
    }

    /// The paper's layout (SPEC §8): the classes in train-id order, IoU with one decimal,
    /// then the mean last (for 16 classes both mIoU and mIoU*, as the SYNTHIA table).
    /// Classes without pixels show `-`; classes outside the averaged set are marked `*`.
    pub fn table(&self) -> String {
        let (heads, values) = self.table_cells();
        Scores::format_rows(&[("", heads), ("", values)])
    }

    /// [`Scores::table`]'s headings and values.
    pub(crate) fn table_cells(&self) -> (Vec<String>, Vec<String>) {
        let mut heads: Vec<String> = Vec::new();
        let mut values: Vec<String> = Vec::new();
        for (name, v) in &self.iou {
            let outside = !self.classes.iter().any(|c| c == name);
            heads.push(format!("{}{}", abbreviation(name), if outside { "*" } else { "" }));
            values.push(v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}")));
        }
        let one = |v: f64| if v.is_nan() { "-".to_string() } else { format!("{v:.1}") };
        match self.synthia_pair() {
            Some((all, star)) => {
                heads.extend(["mIoU".to_string(), "mIoU*".to_string()]);
                values.extend([one(all), one(star)]);
            }
            None => {
                heads.push(self.score_name().to_string());
                values.push(one(self.miou));
            }
        }
        (heads, values)
    }

    /// Rows of cells in right-aligned columns, each row after its label (no label column when
    /// every label is empty).
    pub(crate) fn format_rows(rows: &[(&str, Vec<String>)]) -> String {
        let columns = rows.iter().map(|(_, cells)| cells.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| rows.iter().filter_map(|(_, cells)| cells.get(i)).map(String::len).max().unwrap_or(0))
            .collect();
        let label_width = rows.iter().map(|(label, _)| label.chars().count()).max().unwrap_or(0);
        let mut text = String::new();
        for (label, cells) in rows {
            let cells = cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join(" ");
            if label_width > 0 {
                text += &format!("{label:<label_width$} ");
            }
            text += &cells;
            text.push('\n');
        }
        text
    }

    /// Writes the scores as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).context("serialising scores")?;
        crate::fs::write_bytes_atomic(path, &json)
    }

    /// Reads scores written by [`Scores::write_json`].
    pub fn read_json(path: &Path) -> Result<Scores> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("reading scores {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_round_trip() {
        // 3 classes; see confusion::tests::three_classes_by_hand for the values.
        let mut m = ConfusionMatrix::new(3);
        m.add(&[0, 0, 0, 1, 1, 2, 2, 2], &[0, 0, 1, 1, 2, 2, 2, 0]).unwrap();
        let s = Scores::from_confusion(&m, &["a", "b", "c"], &[0, 2]);
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["miou"], 50.0);
        assert_eq!(v["iou"]["a"], 50.0);
        assert!((v["iou"]["b"].as_f64().unwrap() - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(v["classes"], serde_json::json!(["a", "c"]));
        assert_eq!(v["confusion"], serde_json::json!([[2, 1, 0], [0, 1, 1], [1, 0, 2]]));
        assert!(v.get("unassigned").is_none());
        let keys: Vec<&String> = v["iou"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["a", "b", "c"]);
        let back: Scores = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        // Percentages read back bit for bit (serde_json's `float_roundtrip`), so that a cached
        // result equals a fresh one.
        let x = 0.37667410714285715f64;
        assert_eq!(serde_json::from_str::<f64>(&serde_json::to_string(&x).unwrap()).unwrap(), x);
    }

    #[test]
    fn no_pixels_at_all_is_null_and_reads_back() {
        let s = Scores::from_confusion(&ConfusionMatrix::new(2), &["a", "b"], &[]);
        assert!(s.miou.is_nan());
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""miou":null"#) && text.contains(r#""a":null"#), "{text}");
        let back: Scores = serde_json::from_str(&text).unwrap();
        assert!(back.miou.is_nan());
    }

    #[test]
    fn table_in_the_papers_layout() {
        // Build a 19-class matrix whose IoUs are the paper's AdvEnt row, to a tenth.
        let advent = [
            89.9, 36.5, 81.6, 29.2, 25.2, 28.5, 32.3, 22.4, 83.9, 34.0, 77.1, 57.4, 27.9, 83.7, 29.4, 39.1, 1.5, 28.4,
            23.3,
        ];
        let mut m = ConfusionMatrix::new(19);
        for (c, iou) in advent.iter().enumerate() {
            // 1000 pixels of class c, tp = 10·IoU of them right, the rest predicted as no
            // class (unassigned), so that no column has false positives: IoU = tp / 1000.
            let tp = (iou * 10.0f64).round() as usize;
            let gt = vec![c as u8; 1000];
            let mut pred = vec![255u8; 1000];
            pred[..tp].fill(c as u8);
            m.add_label_id_prediction(&gt, &pred).unwrap();
        }
        let names = class_names(19);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = Scores::from_confusion(&m, &names, &[]);
        let table = s.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        let heads: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(heads[..3], ["road", "side.", "build."]);
        assert_eq!(heads[17..], ["mbike", "bike", "mIoU"]);
        let values: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(values[0], "89.9");
        assert_eq!(values[16], "1.5");
        // SPEC §8.1: the row's mean is 43.75 → 43.8.
        assert_eq!(values[19], "43.8");
    }

    #[test]
    fn sixteen_classes_show_miou_and_miou_star() {
        // 16 classes, every class right except wall (3), fence (4), pole (5) all wrong.
        let mut m = ConfusionMatrix::new(16);
        for c in 0..16u8 {
            let pred = if (3..=5).contains(&c) { 0 } else { c };
            m.add(&[c; 10], &[pred; 10]).unwrap();
        }
        // road: tp 10, row 10, col 40 → 25 %; wall/fence/pole: 0; the other 12: 100 %.
        // mIoU (16) = (25 + 12·100) / 16 = 76.5625; mIoU* (13) = (25 + 1200) / 13 = 94.23.
        let names = class_names(16);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let star = classes::eval_classes(16, EvalSubset::MiouStar13).unwrap();
        let s = Scores::from_confusion(&m, &names, &star);
        assert!((s.miou - 1225.0 / 13.0).abs() < 1e-9);
        assert_eq!(s.score_name(), "mIoU*");
        let table = s.table();
        let heads: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(heads[3..6], ["wall*", "fence*", "pole*"]);
        assert_eq!(heads[16..], ["mIoU", "mIoU*"]);
        let values: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(values[16..], ["76.6", "94.2"]);
    }
}
