//! Ground-truth boxes of the Cityscapes detection setting (Cityscapes → Foggy Cityscapes,
//! whose frames share Cityscapes' `gtFine` annotations), read from the instance maps
//! `gtFine/<split>/<city>/<x>_gtFine_instanceIds.png`.
//!
//! An instance map is a 16-bit greyscale PNG. For classes with instances a pixel holds
//! `label_id * 1000 + instance index` (the index counts from 0); pixels of other classes, and
//! "group" regions of instance classes (a crowd of people, a row of parked cars annotated as
//! one polygon), hold the plain label id (< 1000) (cityscapesScripts
//! `preparation/json2instanceImg.py`).
//!
//! The 8 classes are those of the detection-adaptation literature (Chen et al., *Domain
//! Adaptive Faster R-CNN*, CVPR 2018): person, rider, car, truck, bus, train, motorcycle,
//! bicycle, numbered 1..=8 in that order (class 0 is the background). As Chen et al., who take
//! "the tightest rectangles of the instance masks" as boxes, every instance of these classes
//! gives one box:
//!
//! * **objects**: the tight bounding box of the pixels of each instance value `>= 1000` whose
//!   label is one of the 8, in pixel coordinates `[xmin, ymin, xmax, ymax]` with inclusive
//!   maxima (the last column and row inside), ordered by instance value (so by class, then
//!   instance index). Every instance is kept unless [`BoxOptions::min_size`] is set (default 0);
//! * **ignored regions**: each 8-connected region of a group value (< 1000) of the 8 classes
//!   (its own box: a group value covers every group polygon of its class, and one box over
//!   all of them would cover half the frame), and the instances that `min_size` drops. In
//!   evaluation they are "difficult" ground truths ([`FrameBoxes::ground_truth`]): not
//!   positives, and detections on them are neither right nor wrong. Two group polygons of a
//!   class that touch form one region.
//!
//! Instances of the other instance classes (caravan 29, trailer 30) are not objects of the
//! setting and are left out, as are values that are not Cityscapes ids.

use super::map::GroundTruth;
use crate::classes::CITYSCAPES_19;
use crate::dataset::label::{read_label, LabelEncoding, Samples};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Cityscapes label ids of the detection classes 1..=8 (`LABEL_IDS[c - 1]` is class `c`):
/// person, rider, car, truck, bus, train, motorcycle, bicycle.
pub const LABEL_IDS: [u16; 8] = [24, 25, 26, 27, 28, 31, 32, 33];

/// Number of object classes (8; the network has one more, the background).
pub const NUM_CLASSES: usize = LABEL_IDS.len();

/// Suffix of the instance maps.
pub const INSTANCE_SUFFIX: &str = "_gtFine_instanceIds.png";

/// Detection class (1..=8) of a Cityscapes label id, if it is one of the 8.
pub fn class_of_label_id(label_id: u16) -> Option<usize> {
    LABEL_IDS.iter().position(|&l| l == label_id).map(|i| i + 1)
}

/// cityscapesScripts' name of a detection class (1..=8): "person", …, "bicycle".
pub fn class_name(class: usize) -> Option<&'static str> {
    let label = *LABEL_IDS.get(class.checked_sub(1)?)?;
    CITYSCAPES_19.iter().find(|c| u16::from(c.label_id) == label).map(|c| c.name)
}

/// The instance map of an image `<city>/<x><suffix>` of `split` (e.g. `suffix` =
/// `_leftImg8bit.png` for Cityscapes, `_leftImg8bit_foggy_beta_0.02.png` for Foggy
/// Cityscapes): `<root>/gtFine/<split>/<city>/<x>_gtFine_instanceIds.png`.
pub fn instance_ids_path(root: &Path, split: &str, name: &str, suffix: &str) -> PathBuf {
    let stem = name.strip_suffix(suffix).unwrap_or_else(|| name.rsplit_once('.').map_or(name, |(s, _)| s));
    root.join("gtFine").join(split).join(format!("{stem}{INSTANCE_SUFFIX}"))
}

/// Which boxes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BoxOptions {
    /// Instances whose box is narrower or lower than this, in pixels (`xmax - xmin + 1`),
    /// become ignored regions instead of objects. 0 (the default) keeps every instance.
    pub min_size: u32,
}

/// One object: an instance of one of the 8 classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceBox {
    /// Detection class, 1..=8.
    pub class: usize,
    /// The instance's value in the map, `label_id * 1000 + index`.
    pub instance_id: u16,
    /// Tight box in pixels, `[xmin, ymin, xmax, ymax]`, maxima inclusive.
    pub bbox: [u32; 4],
    /// Pixels of the instance.
    pub pixels: u32,
}

/// Why a region is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// A group region (crowd) of the class: a connected region of a value < 1000.
    Group,
    /// An instance smaller than [`BoxOptions::min_size`].
    Small,
}

/// A region not to be scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IgnoreRegion {
    /// Detection class, 1..=8.
    pub class: usize,
    pub reason: IgnoreReason,
    /// Tight box in pixels, `[xmin, ymin, xmax, ymax]`, maxima inclusive.
    pub bbox: [u32; 4],
    /// Pixels of the region.
    pub pixels: u32,
}

/// The boxes of one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameBoxes {
    /// Size of the map in pixels.
    pub width: u32,
    pub height: u32,
    /// Objects, by instance value.
    pub objects: Vec<InstanceBox>,
    /// Group regions (by class, then by their first pixel in row-major order), then the
    /// instances dropped by `min_size` (by instance value).
    pub ignored: Vec<IgnoreRegion>,
}

impl FrameBoxes {
    /// A `width x height` frame without objects or ignored regions.
    pub fn empty(width: u32, height: u32) -> Self {
        FrameBoxes { width, height, objects: Vec::new(), ignored: Vec::new() }
    }

    /// The frame's ground truth for [`super::map::evaluate`], in pixels with inclusive maxima
    /// ([`super::map::BoxConvention::PixelInclusive`]): objects as positives, ignored regions
    /// as "difficult".
    pub fn ground_truth(&self) -> Vec<GroundTruth> {
        let px = |b: [u32; 4]| b.map(|v| v as f32);
        let objects = self.objects.iter().map(|o| GroundTruth { class: o.class, bbox: px(o.bbox), difficult: false });
        let ignored = self.ignored.iter().map(|r| GroundTruth { class: r.class, bbox: px(r.bbox), difficult: true });
        objects.chain(ignored).collect()
    }

    /// Training targets: the objects' boxes relative to the frame (covering their pixels, see
    /// [`super::boxes::to_relative`]) and their classes 1..=8.
    pub fn targets(&self) -> (Vec<[f32; 4]>, Vec<i64>) {
        self.objects
            .iter()
            .map(|o| (super::boxes::to_relative(o.bbox.map(|v| v as f32), self.width, self.height), o.class as i64))
            .unzip()
    }
}

/// Grows a box to hold pixel `(x, y)`.
fn extend(b: &mut [u32; 4], x: u32, y: u32) {
    b[0] = b[0].min(x);
    b[1] = b[1].min(y);
    b[2] = b[2].max(x);
    b[3] = b[3].max(y);
}

const EMPTY: [u32; 4] = [u32::MAX, u32::MAX, 0, 0];

/// The boxes of an instance map held as row-major values (`width * height` of them).
///
/// # Panics
///
/// If `ids.len() != width * height`.
pub fn boxes_from_instance_ids(ids: &[u16], width: u32, height: u32, opts: &BoxOptions) -> FrameBoxes {
    let (w, h) = (width as usize, height as usize);
    assert_eq!(ids.len(), w * h, "instance map of {width}x{height} pixels");

    // Instances: one box per value >= 1000 of the 8 classes; values index the table directly.
    let mut boxes: Vec<Option<([u32; 4], u32)>> = vec![None; 1 << 16];
    for (i, &v) in ids.iter().enumerate() {
        if v >= 1000 && class_of_label_id(v / 1000).is_some() {
            let (x, y) = ((i % w) as u32, (i / w) as u32);
            let e = boxes[v as usize].get_or_insert((EMPTY, 0));
            extend(&mut e.0, x, y);
            e.1 += 1;
        }
    }
    let mut objects = Vec::new();
    let mut small = Vec::new();
    for (v, e) in boxes.iter().enumerate() {
        let Some((bbox, pixels)) = *e else { continue };
        let class = class_of_label_id(v as u16 / 1000).expect("only the 8 classes are collected");
        let (bw, bh) = (bbox[2] - bbox[0] + 1, bbox[3] - bbox[1] + 1);
        if bw < opts.min_size || bh < opts.min_size {
            small.push(IgnoreRegion { class, reason: IgnoreReason::Small, bbox, pixels });
        } else {
            objects.push(InstanceBox { class, instance_id: v as u16, bbox, pixels });
        }
    }

    // Group regions: 8-connected components of each group value of the 8 classes, found in
    // row-major order of their first pixel, then sorted by class (stable).
    let mut groups = Vec::new();
    let mut seen = vec![false; ids.len()];
    let mut stack = Vec::new();
    for start in 0..ids.len() {
        let v = ids[start];
        if seen[start] || v >= 1000 {
            continue;
        }
        let Some(class) = class_of_label_id(v) else { continue };
        let (mut bbox, mut pixels) = (EMPTY, 0u32);
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            extend(&mut bbox, x as u32, y as u32);
            pixels += 1;
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let n = ny * w + nx;
                    if !seen[n] && ids[n] == v {
                        seen[n] = true;
                        stack.push(n);
                    }
                }
            }
        }
        groups.push(IgnoreRegion { class, reason: IgnoreReason::Group, bbox, pixels });
    }
    groups.sort_by_key(|g| g.class);
    groups.extend(small);
    FrameBoxes { width, height, objects, ignored: groups }
}

/// Reads an instance map (`*_gtFine_instanceIds.png`, 16-bit greyscale) and returns its
/// boxes.
///
/// # Errors
///
/// An unreadable file, or one that is not a 16-bit PNG; the message names the file.
pub fn read_instance_boxes(path: &Path, opts: &BoxOptions) -> Result<FrameBoxes> {
    let label = read_label(path, LabelEncoding::Channel0Of16)
        .with_context(|| format!("reading Cityscapes instance map {} (16-bit greyscale)", path.display()))?;
    let Samples::U16(ids) = &label.samples else {
        bail!("reading Cityscapes instance map {}: not a 16-bit PNG", path.display());
    };
    if let Some(i) = ids.iter().position(|&v| !is_instance_value(v)) {
        let w = label.width as usize;
        bail!(
            "Cityscapes instance map {}: value {} at pixel (x {}, y {}) is neither a label id (0-33) nor \
             label id x 1000 + instance index",
            path.display(),
            ids[i],
            i % w,
            i / w
        );
    }
    Ok(boxes_from_instance_ids(ids, label.width, label.height, opts))
}

/// A value an instance map may hold: a Cityscapes label id (0–33), or an instance's
/// `label_id * 1000 + index`.
fn is_instance_value(v: u16) -> bool {
    let label = if v >= 1000 { v / 1000 } else { v };
    label <= 33
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_table() {
        assert_eq!(NUM_CLASSES, 8);
        assert_eq!(class_of_label_id(24), Some(1));
        assert_eq!(class_of_label_id(31), Some(6));
        assert_eq!(class_of_label_id(33), Some(8));
        assert_eq!(class_of_label_id(29), None); // caravan
        assert_eq!(class_of_label_id(7), None);
        let names: Vec<_> = (0..=9).map(class_name).collect();
        assert_eq!(
            names,
            [None, Some("person"), Some("rider"), Some("car"), Some("truck"), Some("bus")]
                .into_iter()
                .chain([Some("train"), Some("motorcycle"), Some("bicycle"), None])
                .collect::<Vec<_>>()
        );
        let p = instance_ids_path(
            Path::new("/d"),
            "val",
            "frankfurt/frankfurt_000000_000294_leftImg8bit_foggy_beta_0.02.png",
            "_leftImg8bit_foggy_beta_0.02.png",
        );
        assert_eq!(p, Path::new("/d/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_instanceIds.png"));
    }

    #[test]
    fn values_outside_cityscapes_label_ids_are_refused() {
        // By hand: label ids 0..=33 alone or times 1000 plus an instance index.
        for ok in [0, 7, 33, 24000, 26012, 33999] {
            assert!(is_instance_value(ok), "{ok}");
        }
        for bad in [34, 255, 999, 34000, 60001, u16::MAX] {
            assert!(!is_instance_value(bad), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x_gtFine_instanceIds.png");
        let mut values = [7u16; 4 * 3];
        values[5] = 60001;
        let mut encoder = png::Encoder::new(std::fs::File::create(&path).unwrap(), 4, 3);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Sixteen);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        encoder.write_header().unwrap().write_image_data(&bytes).unwrap();
        let err = format!("{:#}", read_instance_boxes(&path, &BoxOptions::default()).unwrap_err());
        assert!(err.contains("x_gtFine_instanceIds.png") && err.contains("value 60001 at pixel (x 1, y 1)"), "{err}");
    }

    #[test]
    fn synthetic_instance_map() {
        // 8 x 5 map (x across, y down):
        //   y0: 7     7     26000 26000 7     24    7     24
        //   y1: 7     7     26000 26000 7     7     24    7
        //   y2: 26001 7     29000 7     7     7     7     7
        //   y3: 7     7     7     7     24000 24000 26    7
        //   y4: 26    26    7     7     24000 33000 7     26
        // car 26000: x 2..=3, y 0..=1, 4 px. car 26001: (0, 2), 1 px.
        // person 24000: x 4..=5, y 3..=4, 3 px. bicycle 33000: (5, 4), 1 px.
        // caravan 29000: not one of the 8, left out.
        // Groups: person 24 at (5,0), (7,0), (6,1): 8-connected, one region x 5..=7, y 0..=1,
        // 3 px. Car 26 at (6,3), (0,4), (1,4), (7,4): (6,3)-(7,4) are diagonal neighbours →
        // one region x 6..=7, y 3..=4, 2 px; (0,4)-(1,4) another, x 0..=1, y 4, 2 px.
        #[rustfmt::skip]
        let ids: [u16; 40] = [
            7, 7, 26000, 26000, 7, 24, 7, 24,
            7, 7, 26000, 26000, 7, 7, 24, 7,
            26001, 7, 29000, 7, 7, 7, 7, 7,
            7, 7, 7, 7, 24000, 24000, 26, 7,
            26, 26, 7, 7, 24000, 33000, 7, 26,
        ];
        let f = boxes_from_instance_ids(&ids, 8, 5, &BoxOptions::default());
        assert_eq!((f.width, f.height), (8, 5));
        let objects: Vec<_> = f.objects.iter().map(|o| (o.class, o.instance_id, o.bbox, o.pixels)).collect();
        assert_eq!(
            objects,
            vec![
                (1, 24000, [4, 3, 5, 4], 3),
                (3, 26000, [2, 0, 3, 1], 4),
                (3, 26001, [0, 2, 0, 2], 1),
                (8, 33000, [5, 4, 5, 4], 1),
            ]
        );
        let ignored: Vec<_> = f.ignored.iter().map(|r| (r.class, r.reason, r.bbox, r.pixels)).collect();
        // Car groups in order of their first pixel: (6,3) comes before (0,4) row-major.
        assert_eq!(
            ignored,
            vec![
                (1, IgnoreReason::Group, [5, 0, 7, 1], 3),
                (3, IgnoreReason::Group, [6, 3, 7, 4], 2),
                (3, IgnoreReason::Group, [0, 4, 1, 4], 2),
            ]
        );

        // min_size 2: the 1-pixel car 26001 and bicycle 33000 become ignored; person (2x2)
        // and car 26000 (2x2) stay.
        let f2 = boxes_from_instance_ids(&ids, 8, 5, &BoxOptions { min_size: 2 });
        let kept: Vec<_> = f2.objects.iter().map(|o| o.instance_id).collect();
        assert_eq!(kept, vec![24000, 26000]);
        let small: Vec<_> =
            f2.ignored.iter().filter(|r| r.reason == IgnoreReason::Small).map(|r| (r.class, r.bbox)).collect();
        assert_eq!(small, vec![(3, [0, 2, 0, 2]), (8, [5, 4, 5, 4])]);

        // Ground truth for evaluation: 4 positives then 3 difficult regions.
        let gt = f.ground_truth();
        assert_eq!(gt.len(), 7);
        assert_eq!((gt[0].class, gt[0].bbox, gt[0].difficult), (1, [4., 3., 5., 4.], false));
        assert_eq!((gt[4].class, gt[4].bbox, gt[4].difficult), (1, [5., 0., 7., 1.], true));
        // Training targets: person pixels x 4..=5, y 3..=4 in 8 x 5 → [4/8, 3/5, 6/8, 5/5].
        let (boxes, labels) = f.targets();
        assert_eq!(labels, vec![1, 3, 3, 8]);
        assert_eq!(boxes[0], [0.5, 0.6, 0.75, 1.0]);
    }

    #[test]
    fn real_frame() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "../../../shared/data/cityscapes-mini/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_instanceIds.png",
        );
        if !path.exists() {
            eprintln!("skipped: {} is not there", path.display());
            return;
        }
        let f = read_instance_boxes(&path, &BoxOptions::default()).unwrap();
        // Derived independently with PIL + numpy (project venv), for each value v >= 1000
        // with v // 1000 in the 8 label ids:
        //   a = np.array(Image.open(path)); ys, xs = np.nonzero(a == v)
        //   (v, xs.min(), ys.min(), xs.max(), ys.max(), len(xs))
        // The map is 256 x 128 (mode I;16); it has no group value of the 8 classes (its values
        // below 1000 are 1, 2, 3, 4, 7, 8, 11, 13, 17, 20, 21, 23).
        assert_eq!((f.width, f.height), (256, 128));
        let got: Vec<_> = f.objects.iter().map(|o| (o.instance_id, o.class, o.bbox, o.pixels)).collect();
        assert_eq!(
            got,
            vec![
                (24000, 1, [119, 51, 120, 55], 6),
                (24001, 1, [145, 47, 149, 58], 42),
                (24002, 1, [150, 47, 152, 57], 27),
                (24003, 1, [153, 47, 156, 58], 32),
                (26000, 3, [126, 51, 127, 53], 6),
                (26001, 3, [128, 46, 145, 62], 224),
                (26002, 3, [156, 38, 220, 71], 1572),
            ]
        );
        assert!(f.ignored.is_empty());
        // An 8-bit file is refused with the file named.
        let labels = path.with_file_name("frankfurt_000000_000294_gtFine_labelIds.png");
        let err = format!("{:#}", read_instance_boxes(&labels, &BoxOptions::default()).unwrap_err());
        assert!(err.contains("frankfurt_000000_000294_gtFine_labelIds.png") && err.contains("8-bit"), "{err}");
    }
}
