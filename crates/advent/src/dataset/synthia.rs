//! SYNTHIA-RAND-CITYSCAPES (Ros et al., 2016), SPEC §5.4: images `<root>/RGB/<name>`
//! (`0000000.png` … `0009399.png`), labels either the pre-parsed 8-bit
//! `<root>/parsed_LABELS/<name>` published with DADA (what the ADVENT family reads) or the
//! raw `<root>/GT/LABELS/<name>` of the download, 16-bit PNGs with the class id in the first
//! channel and the instance id in the second. SYNTHIA has no splits; `split` is ignored.
//!
//! The protocol is 16 classes (the SYNTHIA table below through the 16-of-19 reduction, i.e.
//! [DADA] `synthia.py`'s `id_to_trainid`); 19 is accepted too, with terrain, truck and train
//! (ids 16, 18, 20), which SYNTHIA scarcely has. For SYNTHIA → Mapillary, DADA's own 7-class
//! table.

use super::label::{IdTable, LabelEncoding, IGNORE};
use super::layout::Layout;
use std::path::PathBuf;

/// SYNTHIA class ids 0..=22 → 19-class Cityscapes train ids (ignored: void (0),
/// parking-slot (13), road-work (14), lanemarking (22)), and → DADA's 7 classes.
pub const LABEL_IDS: IdTable =
    IdTable { name: "SYNTHIA class ids", to_train19: Some(&TRAIN19), to_train7: Some(&TRAIN7), train_ids: false };

#[rustfmt::skip]
const TRAIN19: [u8; 23] = [
    IGNORE, // 0 void
    10,     // 1 sky
    2,      // 2 building
    0,      // 3 road
    1,      // 4 sidewalk
    4,      // 5 fence
    8,      // 6 vegetation
    5,      // 7 pole
    13,     // 8 car
    7,      // 9 traffic sign
    11,     // 10 pedestrian → person
    18,     // 11 bicycle
    17,     // 12 motorcycle
    IGNORE, // 13 parking-slot
    IGNORE, // 14 road-work
    6,      // 15 traffic light
    9,      // 16 terrain
    12,     // 17 rider
    14,     // 18 truck
    15,     // 19 bus
    16,     // 20 train
    3,      // 21 wall
    IGNORE, // 22 lanemarking
];

/// SYNTHIA class ids → the 7 classes of SYNTHIA → Mapillary ([`crate::classes::COMMON_7`]):
/// DADA's `id_to_trainid` for `num_classes == 7` (`dada/dataset/synthia.py`) as it is. It is
/// not the 19 classes' reduction: wall, rider, motorcycle, terrain, truck, bus and train are
/// ignored, lane markings count as flat.
#[rustfmt::skip]
const TRAIN7: [u8; 23] = [
    IGNORE, // 0 void
    4,      // 1 sky → sky
    1,      // 2 building → construction
    0,      // 3 road → flat
    0,      // 4 sidewalk → flat
    1,      // 5 fence → construction
    3,      // 6 vegetation → nature
    2,      // 7 pole → object
    6,      // 8 car → vehicle
    2,      // 9 traffic sign → object
    5,      // 10 pedestrian → human
    6,      // 11 bicycle → vehicle
    IGNORE, // 12 motorcycle
    IGNORE, // 13 parking-slot
    IGNORE, // 14 road-work
    2,      // 15 traffic light → object
    IGNORE, // 16 terrain
    IGNORE, // 17 rider
    IGNORE, // 18 truck
    IGNORE, // 19 bus
    IGNORE, // 20 train
    IGNORE, // 21 wall
    0,      // 22 lanemarking → flat
];

/// Which SYNTHIA label files to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynthiaLabels {
    /// `parsed_LABELS` when that folder exists, else the raw `GT/LABELS`.
    #[default]
    Auto,
    /// The pre-parsed 8-bit `parsed_LABELS`.
    Parsed,
    /// The raw 16-bit `GT/LABELS` (class in channel 0).
    Raw,
}

pub struct Synthia {
    pub root: PathBuf,
    /// `Auto` is resolved by [`Synthia::new`].
    labels: SynthiaLabels,
}

impl Synthia {
    pub fn new(root: PathBuf, labels: SynthiaLabels) -> Synthia {
        let labels = match labels {
            SynthiaLabels::Auto if root.join("parsed_LABELS").is_dir() => SynthiaLabels::Parsed,
            SynthiaLabels::Auto => SynthiaLabels::Raw,
            chosen => chosen,
        };
        Synthia { root, labels }
    }

    /// The label set read: `Parsed` or `Raw`.
    pub fn labels(&self) -> SynthiaLabels {
        self.labels
    }
}

impl Layout for Synthia {
    fn name(&self) -> &'static str {
        "SYNTHIA"
    }
    fn image_dir(&self) -> PathBuf {
        self.root.join("RGB")
    }
    fn is_image(&self, name: &str) -> bool {
        name.ends_with(".png")
    }
    fn label_path(&self, name: &str) -> PathBuf {
        match self.labels {
            SynthiaLabels::Raw => self.root.join("GT").join("LABELS").join(name),
            _ => self.root.join("parsed_LABELS").join(name),
        }
    }
    fn label_encoding(&self) -> LabelEncoding {
        match self.labels {
            SynthiaLabels::Raw => LabelEncoding::Channel0Of16,
            _ => LabelEncoding::Ids8,
        }
    }
    fn ids(&self) -> IdTable {
        LABEL_IDS
    }
}
