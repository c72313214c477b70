//! Class tables: names (cityscapesScripts spelling), Cityscapes label ids and colours; the
//! 16 classes of SYNTHIA → Cityscapes and the 7 of SYNTHIA → Mapillary.

/// One semantic class of the Cityscapes 19-class protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// cityscapesScripts' name ("traffic light", "motorcycle").
    pub name: &'static str,
    /// Cityscapes `labelId` that maps to this class.
    pub label_id: u8,
    /// Colour in the Cityscapes palette (RGB).
    pub color: [u8; 3],
}

const fn class(name: &'static str, label_id: u8, color: [u8; 3]) -> Class {
    Class { name, label_id, color }
}

/// The 19 evaluation classes, in train-id order (SPEC §5.3).
pub const CITYSCAPES_19: [Class; 19] = [
    class("road", 7, [128, 64, 128]),
    class("sidewalk", 8, [244, 35, 232]),
    class("building", 11, [70, 70, 70]),
    class("wall", 12, [102, 102, 156]),
    class("fence", 13, [190, 153, 153]),
    class("pole", 17, [153, 153, 153]),
    class("traffic light", 19, [250, 170, 30]),
    class("traffic sign", 20, [220, 220, 0]),
    class("vegetation", 21, [107, 142, 35]),
    class("terrain", 22, [152, 251, 152]),
    class("sky", 23, [70, 130, 180]),
    class("person", 24, [220, 20, 60]),
    class("rider", 25, [255, 0, 0]),
    class("car", 26, [0, 0, 142]),
    class("truck", 27, [0, 0, 70]),
    class("bus", 28, [0, 60, 100]),
    class("train", 31, [0, 80, 100]),
    class("motorcycle", 32, [0, 0, 230]),
    class("bicycle", 33, [119, 11, 32]),
];

/// The 16 classes of SYNTHIA → Cityscapes, as 19-class train ids (terrain, truck and train
/// dropped; SPEC §5.4).
pub const SYNTHIA_16_OF_19: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18];

/// The 19-class train ids left out of SYNTHIA's mIoU* (13 classes): wall, fence, pole
/// (SPEC §5.4; the paper reports mIoU over 16 classes and mIoU* over the other 13).
pub const MIOU_STAR_DROPPED_OF_19: [usize; 3] = [3, 4, 5];

/// The 7 classes of SYNTHIA → Mapillary Vistas (DADA, Vu et al. ICCV 2019: `COMMON_7CLASSES`
/// of `dada/dataset/mapillary.py`), Cityscapes' categories: name and colour (DADA's
/// `palette_7`, the Cityscapes colour of each category's main class), in train-id order.
pub const COMMON_7: [(&str, [u8; 3]); 7] = [
    ("flat", [128, 64, 128]),
    ("construction", [70, 70, 70]),
    ("object", [153, 153, 153]),
    ("nature", [107, 142, 35]),
    ("sky", [70, 130, 180]),
    ("human", [220, 20, 60]),
    ("vehicle", [0, 0, 142]),
];

/// Class names of a network's output ids, for 19 or 16 classes (cityscapesScripts spelling)
/// or 7 (DADA's); `None` for other counts.
pub fn class_names(num_classes: usize) -> Option<Vec<&'static str>> {
    match num_classes {
        19 => Some(CITYSCAPES_19.iter().map(|c| c.name).collect()),
        16 => Some(SYNTHIA_16_OF_19.iter().map(|&i| CITYSCAPES_19[i].name).collect()),
        7 => Some(COMMON_7.iter().map(|c| c.0).collect()),
        _ => None,
    }
}

/// A set of classes whose IoUs are averaged into one score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSubset {
    /// Every class of the protocol: mIoU over 19 (Cityscapes) or 16 (SYNTHIA).
    All,
    /// SYNTHIA's mIoU*: the 16 classes minus wall, fence and pole.
    MiouStar13,
}

impl EvalSubset {
    /// The score's name in the paper's tables.
    pub fn name(self) -> &'static str {
        match self {
            EvalSubset::All => "mIoU",
            EvalSubset::MiouStar13 => "mIoU*",
        }
    }
}

/// The subsets reported for a class set: `[All]` for 19 classes, `[All, MiouStar13]` for 16.
pub fn eval_subsets(num_classes: usize) -> Vec<EvalSubset> {
    if num_classes == SYNTHIA_16_OF_19.len() {
        vec![EvalSubset::All, EvalSubset::MiouStar13]
    } else {
        vec![EvalSubset::All]
    }
}

/// The output ids (`0..num_classes`) a subset averages over; `None` where the subset does not
/// apply (mIoU* needs the 16-class set).
pub fn eval_classes(num_classes: usize, subset: EvalSubset) -> Option<Vec<usize>> {
    match subset {
        EvalSubset::All => Some((0..num_classes).collect()),
        EvalSubset::MiouStar13 if num_classes == SYNTHIA_16_OF_19.len() => Some(
            SYNTHIA_16_OF_19
                .iter()
                .enumerate()
                .filter(|(_, c19)| !MIOU_STAR_DROPPED_OF_19.contains(c19))
                .map(|(i, _)| i)
                .collect(),
        ),
        EvalSubset::MiouStar13 => None,
    }
}

/// Colours for a network's output ids: Cityscapes' for 19 classes, the same colours of the
/// 16 SYNTHIA classes for 16, [`COMMON_7`]'s for 7, and for any other count the 19 colours
/// followed by a deterministic spread of further colours.
pub fn palette(num_classes: usize) -> Vec<[u8; 3]> {
    if num_classes == SYNTHIA_16_OF_19.len() {
        return SYNTHIA_16_OF_19.iter().map(|&i| CITYSCAPES_19[i].color).collect();
    }
    if num_classes == COMMON_7.len() {
        return COMMON_7.iter().map(|c| c.1).collect();
    }
    (0..num_classes)
        .map(|i| match CITYSCAPES_19.get(i) {
            Some(c) => c.color,
            None => {
                // Golden-ratio hue steps give distinct colours for any extra class.
                let h = (i as f64 * 0.618_033_988_75).fract();
                hsv_to_rgb(h, 0.65, 0.95)
            }
        })
        .collect()
}

fn hsv_to_rgb(h: f64, s: f64, v: f64) -> [u8; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    let (r, g, b) = match i as i64 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [(r * 255.0).round() as u8, (g * 255.0).round() as u8, (b * 255.0).round() as u8]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthia_palette_skips_terrain_truck_train() {
        let p = palette(16);
        assert_eq!(p.len(), 16);
        assert_eq!(p[9], [70, 130, 180]); // sky
        assert_eq!(p[13], [0, 60, 100]); // bus
        assert!(!p.contains(&[152, 251, 152]) && !p.contains(&[0, 0, 70]) && !p.contains(&[0, 80, 100]));
    }

    #[test]
    fn evaluation_subsets() {
        assert_eq!(eval_classes(19, EvalSubset::All).unwrap(), (0..19).collect::<Vec<_>>());
        assert_eq!(eval_classes(19, EvalSubset::MiouStar13), None);
        let star = eval_classes(16, EvalSubset::MiouStar13).unwrap();
        assert_eq!(star, vec![0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        let names = class_names(16).unwrap();
        let star_names: Vec<_> = star.iter().map(|&i| names[i]).collect();
        assert!(!star_names.contains(&"wall") && !star_names.contains(&"pole"));
        assert_eq!(names[6], "traffic light");
        assert_eq!(names[14], "motorcycle");
        assert_eq!(eval_subsets(16), vec![EvalSubset::All, EvalSubset::MiouStar13]);
        assert_eq!(eval_subsets(19), vec![EvalSubset::All]);
        assert!(class_names(8).is_none());
        assert_eq!(class_names(7).unwrap(), ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]);
        assert_eq!(eval_subsets(7), vec![EvalSubset::All]);
    }

    #[test]
    fn seven_class_palette_is_dadas() {
        // dada/utils/viz_segmask.py, palette_7, typed from there.
        let dada = [128, 64, 128, 70, 70, 70, 153, 153, 153, 107, 142, 35, 70, 130, 180, 220, 20, 60, 0, 0, 142];
        assert_eq!(palette(7).concat(), dada);
    }

    #[test]
    fn extra_classes_get_distinct_colours() {
        let p = palette(40);
        let distinct: std::collections::HashSet<_> = p.iter().collect();
        assert_eq!(distinct.len(), 40);
    }
}
