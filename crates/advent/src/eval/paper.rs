//! The paper's published results (SPEC §8: ADVENT's Tables 1 and 2, as copied in later papers
//! and reproduction reports), to print beside one's own: `advent eval --paper KEY` adds the
//! published row and the difference per class under the table.

use super::scores::Scores;
use anyhow::{bail, ensure, Result};

/// One published result on Cityscapes val.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperRow {
    /// `<source>-<backbone>/<method>`, as `--paper` takes it.
    pub key: &'static str,
    /// What the row is, for the line under the table.
    pub label: &'static str,
    /// IoU per class in percent, in train-id order (19 classes for GTA5, SYNTHIA's 16);
    /// `None` where only the mean is published.
    pub iou: Option<&'static [f64]>,
    /// The published mIoU (SYNTHIA: over its 16 classes).
    pub miou: f64,
    /// SYNTHIA's mIoU* (13 classes: wall, fence and pole left out).
    pub miou_star: Option<f64>,
    /// The network's class count: 19 (GTA5) or 16 (SYNTHIA).
    pub num_classes: usize,
}

const GTA5: &str = "GTA5 → Cityscapes";
const SYNTHIA: &str = "SYNTHIA → Cityscapes";

const fn gta5(key: &'static str, label: &'static str, iou: Option<&'static [f64]>, miou: f64) -> PaperRow {
    PaperRow { key, label, iou, miou, miou_star: None, num_classes: 19 }
}

const fn synthia(key: &'static str, label: &'static str, iou: Option<&'static [f64]>, pair: (f64, f64)) -> PaperRow {
    PaperRow { key, label, iou, miou: pair.0, miou_star: Some(pair.1), num_classes: 16 }
}

/// SPEC §8.1-8.3, in its order. Classes: road, sidewalk, building, wall, fence, pole, light,
/// sign, vegetation, terrain, sky, person, rider, car, truck, bus, train, motorcycle, bicycle
/// (SYNTHIA's 16: without terrain, truck and train).
pub const ROWS: [PaperRow; 14] = [
    gta5(
        "gta5-r101/source-only",
        "source only (AdaptSegNet's ResNet-101 baseline), GTA5 → Cityscapes",
        Some(&[
            75.8, 16.8, 77.2, 12.5, 21.0, 25.5, 30.1, 20.1, 81.3, 24.6, 70.3, 53.8, 26.4, 49.9, 17.2, 25.9, 6.5, 25.3,
            36.0,
        ]),
        36.6,
    ),
    gta5(
        "gta5-r101/adaptsegnet",
        "AdaptSegNet (multi-level), ResNet-101, GTA5 → Cityscapes",
        Some(&[
            86.5, 36.0, 79.9, 23.4, 23.3, 23.9, 35.2, 14.8, 83.4, 33.3, 75.6, 58.5, 27.6, 73.7, 32.5, 35.4, 3.9, 30.1,
            28.1,
        ]),
        42.4,
    ),
    gta5(
        "gta5-r101/minent",
        "MinEnt, ResNet-101, GTA5 → Cityscapes (ADVENT Table 1)",
        Some(&[
            84.4, 18.7, 80.6, 23.8, 23.2, 28.4, 36.9, 23.4, 83.2, 25.2, 79.4, 59.0, 29.9, 78.5, 33.7, 29.6, 1.7, 29.9,
            33.6,
        ]),
        42.3,
    ),
    gta5(
        "gta5-r101/minent-er",
        "MinEnt + ER, ResNet-101, GTA5 → Cityscapes (ADVENT Table 1)",
        Some(&[
            84.2, 25.2, 77.0, 17.0, 23.3, 24.2, 33.3, 26.4, 80.7, 32.1, 78.7, 57.5, 30.0, 77.0, 37.9, 44.3, 1.8, 31.4,
            36.9,
        ]),
        43.1,
    ),
    gta5(
        "gta5-r101/advent",
        "AdvEnt, ResNet-101, GTA5 → Cityscapes (ADVENT Table 1)",
        Some(&[
            89.9, 36.5, 81.6, 29.2, 25.2, 28.5, 32.3, 22.4, 83.9, 34.0, 77.1, 57.4, 27.9, 83.7, 29.4, 39.1, 1.5, 28.4,
            23.3,
        ]),
        43.8,
    ),
    gta5(
        "gta5-r101/advent+minent",
        "AdvEnt + MinEnt (ensemble of AdvEnt and MinEnt+ER), ResNet-101, GTA5 → Cityscapes (ADVENT Table 1)",
        Some(&[
            89.4, 33.1, 81.0, 26.6, 26.8, 27.2, 33.5, 24.7, 83.9, 36.7, 78.8, 58.7, 30.5, 84.8, 38.5, 44.5, 1.7, 31.6,
            32.4,
        ]),
        45.5,
    ),
    gta5(
        "gta5-vgg16/adaptsegnet",
        "AdaptSegNet (single-level), VGG-16, GTA5 → Cityscapes",
        Some(&[
            87.3, 29.8, 78.6, 21.1, 18.2, 22.5, 21.5, 11.0, 79.7, 29.6, 71.3, 46.8, 6.5, 80.1, 23.0, 26.9, 0.0, 10.6,
            0.3,
        ]),
        35.0,
    ),
    gta5("gta5-vgg16/minent", "MinEnt, VGG-16, GTA5 → Cityscapes (ADVENT Table 1; per class not verified)", None, 32.8),
    gta5(
        "gta5-vgg16/advent",
        "AdvEnt, VGG-16, GTA5 → Cityscapes (ADVENT Table 1)",
        Some(&[
            86.9, 28.7, 78.7, 28.5, 25.2, 17.1, 20.3, 10.9, 80.0, 26.4, 70.2, 47.1, 8.4, 81.5, 26.0, 17.2, 18.9, 11.7,
            1.6,
        ]),
        36.1,
    ),
    synthia(
        "synthia-vgg16/advent-cp",
        "AdvEnt + CP, VGG-16, SYNTHIA → Cityscapes (ADVENT Table 2)",
        Some(&[67.9, 29.4, 71.9, 6.3, 0.3, 19.9, 0.6, 2.6, 74.9, 74.9, 35.4, 9.6, 67.8, 21.4, 4.1, 15.5]),
        (31.4, 36.6),
    ),
    synthia("synthia-r101/minent", "MinEnt, ResNet-101, SYNTHIA → Cityscapes (ADVENT Table 2)", None, (38.1, 44.2)),
    synthia("synthia-r101/advent", "AdvEnt, ResNet-101, SYNTHIA → Cityscapes (ADVENT Table 2)", None, (40.8, 47.6)),
    synthia(
        "synthia-r101/advent+minent",
        "AdvEnt + MinEnt (ensemble), ResNet-101, SYNTHIA → Cityscapes (ADVENT Table 2)",
        Some(&[85.6, 42.2, 79.7, 8.7, 0.4, 25.9, 5.4, 8.1, 80.4, 84.1, 57.9, 23.8, 73.3, 36.4, 14.2, 33.0]),
        (41.2, 48.0),
    ),
    synthia("synthia-vgg16/minent", "MinEnt, VGG-16, SYNTHIA → Cityscapes (ADVENT Table 2)", None, (27.5, 32.5)),
];

/// The row of `key`; an unknown key is an error listing them all.
pub fn row(key: &str) -> Result<&'static PaperRow> {
    match ROWS.iter().find(|r| r.key == key) {
        Some(r) => Ok(r),
        None => {
            let keys: Vec<&str> = ROWS.iter().map(|r| r.key).collect();
            bail!("--paper {key}: no such published result; one of {}", keys.join(", "))
        }
    }
}

/// The domain shift of a row, for grouping (`GTA5 → Cityscapes`).
pub fn shift(row: &PaperRow) -> &'static str {
    if row.num_classes == 16 {
        SYNTHIA
    } else {
        GTA5
    }
}

/// `paper`'s row (if any) must be of the network's classes: checked before evaluating.
pub fn check(paper: Option<&PaperRow>, num_classes: usize) -> Result<()> {
    if let Some(p) = paper {
        ensure!(
            p.num_classes == num_classes,
            "--paper {}: a published result over {} classes ({}), but this evaluation is over {num_classes}",
            p.key,
            p.num_classes,
            shift(p)
        );
    }
    Ok(())
}

impl Scores {
    /// [`Scores::table`], with `paper`'s row and the difference under it when given (its
    /// classes checked by [`check`] beforehand).
    pub fn table_with(&self, paper: Option<&PaperRow>) -> String {
        match paper {
            Some(p) => self.table_beside(p).unwrap_or_else(|e| format!("{}{e:#}\n", self.table())),
            None => self.table(),
        }
    }

    /// [`Scores::table`] with the paper's row under it and the difference (this − paper) per
    /// class and for the means, then what the row is. The network must have the row's classes.
    pub fn table_beside(&self, paper: &PaperRow) -> Result<String> {
        ensure!(
            self.iou.len() == paper.num_classes,
            "--paper {}: a published result over {} classes ({}), but these scores are over {}",
            paper.key,
            paper.num_classes,
            shift(paper),
            self.iou.len()
        );
        let (heads, ours) = self.table_cells();
        let one = |v: f64| format!("{v:.1}");
        let mut published: Vec<Option<f64>> = match paper.iou {
            Some(iou) => iou.iter().map(|&v| Some(v)).collect(),
            None => vec![None; paper.num_classes],
        };
        // SYNTHIA's tables, as ours for 16 classes, give mIoU and mIoU*.
        published.push(Some(paper.miou));
        if paper.num_classes == 16 {
            published.push(paper.miou_star);
        }
        let theirs: Vec<String> = published.iter().map(|v| v.map_or_else(|| "-".into(), one)).collect();
        let difference: Vec<String> = ours
            .iter()
            .zip(&published)
            .map(|(o, p)| match (o.parse::<f64>(), p) {
                (Ok(o), Some(p)) => format!("{:+.1}", o - p),
                _ => "-".into(),
            })
            .collect();
        let rows = [("", heads), ("this", ours), ("paper", theirs), ("difference", difference)];
        let mut text = Scores::format_rows(&rows);
        text += &format!("paper: {} (SPEC §8)\n", paper.label);
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes::{self, EvalSubset};

    /// Every published row is consistent with itself: its classes average to its mean (to the
    /// rounding of one decimal per class), SYNTHIA's 13 of them to its mIoU*.
    #[test]
    fn published_means_are_the_means_of_the_published_classes() {
        let star = classes::eval_classes(16, EvalSubset::MiouStar13).unwrap();
        for r in ROWS {
            let Some(iou) = r.iou else { continue };
            assert_eq!(iou.len(), r.num_classes, "{}", r.key);
            let mean = iou.iter().sum::<f64>() / iou.len() as f64;
            assert!((mean - r.miou).abs() <= 0.06, "{}: classes average {mean:.3}, published {}", r.key, r.miou);
            if let Some(published) = r.miou_star {
                let mean = star.iter().map(|&c| iou[c]).sum::<f64>() / star.len() as f64;
                assert!((mean - published).abs() <= 0.06, "{}: mIoU* {mean:.3}, published {published}", r.key);
            }
        }
        let keys: std::collections::HashSet<&str> = ROWS.iter().map(|r| r.key).collect();
        assert_eq!(keys.len(), ROWS.len(), "keys are unique");
    }

    #[test]
    fn unknown_keys_list_the_known_ones() {
        assert_eq!(row("gta5-r101/advent").unwrap().miou, 43.8);
        let e = row("gta5-r101/adventt").unwrap_err().to_string();
        assert!(e.contains("gta5-r101/adventt") && e.contains("gta5-r101/minent-er"), "{e}");
    }
}
