//! Mapillary Vistas (Neuhold et al., 2017) as DADA's target domain (SYNTHIA → Mapillary, 7
//! classes; [DADA] `dada/dataset/mapillary.py`): images `<root>/<split>/images/<x>.jpg`,
//! labels `<root>/<split>/labels/<x>.png`, 8-bit palette PNGs holding the 66 class indices
//! of the v1.x label set (`config.json`, DADA's `mapillary_list/info.json`).
//!
//! Mapillary's images come in every size and aspect ratio, so they are not stretched to the
//! configured size like the other datasets' but fitted into it and padded ([`Fit::Pad`]),
//! as DADA's `resize_with_pad` does; evaluation pads each label to the input's aspect ratio
//! instead of resizing it (`pad_with_fixed_AS`, `scale_label=False`) and compares at that size.
//!
//! The split is the folder name: `training` and `validation` as downloaded; DADA's lists
//! call them `train` and `validation`, and `train`, `val` and `test` find the official
//! folders when there is no folder of that name. The v2.0 download keeps the v1.2 labels
//! (the same 66 classes) in `<split>/v1.2/labels/`: they are read when there is no
//! `<split>/labels/` (its `v2.0/labels/` hold another class set).

use super::label::{IdTable, LabelEncoding, IGNORE};
use super::layout::{Fit, Layout};
use std::path::PathBuf;

/// Mapillary v1.x class indices 0..=65 → the 7 classes of
/// [`COMMON_7`](crate::classes::COMMON_7) through DADA's `MAPILLARY_2_CITYSCAPES`
/// (classes it calls `other` are ignored, 65 `unlabeled` among them).
pub const LABEL_IDS: IdTable =
    IdTable { name: "Mapillary class indices", to_train19: None, to_train7: Some(&TRAIN7), train_ids: false };

const FLAT: u8 = 0;
const CONSTRUCTION: u8 = 1;
const OBJECT: u8 = 2;
const NATURE: u8 = 3;
const SKY: u8 = 4;
const HUMAN: u8 = 5;
const VEHICLE: u8 = 6;

#[rustfmt::skip]
const TRAIN7: [u8; 66] = [
    IGNORE,       // 0 bird
    IGNORE,       // 1 ground animal
    CONSTRUCTION, // 2 curb
    CONSTRUCTION, // 3 fence
    CONSTRUCTION, // 4 guard rail
    CONSTRUCTION, // 5 barrier
    CONSTRUCTION, // 6 wall
    FLAT,         // 7 bike lane
    FLAT,         // 8 crosswalk - plain
    FLAT,         // 9 curb cut
    FLAT,         // 10 parking
    FLAT,         // 11 pedestrian area
    FLAT,         // 12 rail track
    FLAT,         // 13 road
    FLAT,         // 14 service lane
    FLAT,         // 15 sidewalk
    CONSTRUCTION, // 16 bridge
    CONSTRUCTION, // 17 building
    CONSTRUCTION, // 18 tunnel
    HUMAN,        // 19 person
    HUMAN,        // 20 bicyclist
    HUMAN,        // 21 motorcyclist
    HUMAN,        // 22 other rider
    FLAT,         // 23 lane marking - crosswalk
    FLAT,         // 24 lane marking - general
    IGNORE,       // 25 mountain
    IGNORE,       // 26 sand
    SKY,          // 27 sky
    IGNORE,       // 28 snow
    FLAT,         // 29 terrain (DADA's choice: flat, not nature)
    NATURE,       // 30 vegetation
    IGNORE,       // 31 water
    IGNORE,       // 32 banner
    IGNORE,       // 33 bench
    IGNORE,       // 34 bike rack
    IGNORE,       // 35 billboard
    IGNORE,       // 36 catch basin
    IGNORE,       // 37 cctv camera
    IGNORE,       // 38 fire hydrant
    IGNORE,       // 39 junction box
    IGNORE,       // 40 mailbox
    IGNORE,       // 41 manhole
    IGNORE,       // 42 phone booth
    OBJECT,       // 43 pothole
    OBJECT,       // 44 street light
    OBJECT,       // 45 pole
    OBJECT,       // 46 traffic sign frame
    OBJECT,       // 47 utility pole
    OBJECT,       // 48 traffic light
    OBJECT,       // 49 traffic sign (back)
    OBJECT,       // 50 traffic sign (front)
    IGNORE,       // 51 trash can
    VEHICLE,      // 52 bicycle
    VEHICLE,      // 53 boat
    VEHICLE,      // 54 bus
    VEHICLE,      // 55 car
    VEHICLE,      // 56 caravan
    VEHICLE,      // 57 motorcycle
    VEHICLE,      // 58 on rails
    VEHICLE,      // 59 other vehicle
    VEHICLE,      // 60 trailer
    VEHICLE,      // 61 truck
    VEHICLE,      // 62 wheeled slow
    IGNORE,       // 63 car mount
    IGNORE,       // 64 ego vehicle
    IGNORE,       // 65 unlabeled
];

pub struct Mapillary {
    /// `<root>/<split>`, the split resolved (see the module's notes).
    dir: PathBuf,
    /// `<dir>/labels`, or `<dir>/v1.2/labels` of the v2.0 download.
    labels: PathBuf,
}

impl Mapillary {
    pub fn new(root: PathBuf, split: &str) -> Mapillary {
        let official = match split {
            "train" => "training",
            "val" => "validation",
            "test" => "testing",
            other => other,
        };
        let dir = match root.join(split) {
            named if named.is_dir() || !root.join(official).is_dir() => named,
            _ => root.join(official),
        };
        let labels = match dir.join("v1.2").join("labels") {
            v12 if v12.is_dir() && !dir.join("labels").is_dir() => v12,
            _ => dir.join("labels"),
        };
        Mapillary { dir, labels }
    }
}

impl Layout for Mapillary {
    fn name(&self) -> &'static str {
        "Mapillary"
    }
    fn image_dir(&self) -> PathBuf {
        self.dir.join("images")
    }
    fn is_image(&self, name: &str) -> bool {
        name.ends_with(".jpg")
    }
    fn label_path(&self, name: &str) -> PathBuf {
        let stem = name.strip_suffix(".jpg").unwrap_or(name);
        self.labels.join(format!("{stem}.png"))
    }
    fn label_encoding(&self) -> LabelEncoding {
        LabelEncoding::Ids8
    }
    fn ids(&self) -> IdTable {
        LABEL_IDS
    }
    fn fit(&self) -> Fit {
        Fit::Pad
    }
}
