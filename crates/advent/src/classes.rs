//! Class tables: names (cityscapesScripts spelling), Cityscapes label ids and colours.

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
    Class {
        name,
        label_id,
        color,
    }
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

/// Colours for a network's output ids: Cityscapes' for 19 classes, the same colours of the
/// 16 SYNTHIA classes for 16, and for any other count the 19 colours followed by a
/// deterministic spread of further colours.
pub fn palette(num_classes: usize) -> Vec<[u8; 3]> {
    if num_classes == SYNTHIA_16_OF_19.len() {
        return SYNTHIA_16_OF_19
            .iter()
            .map(|&i| CITYSCAPES_19[i].color)
            .collect();
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
    [
        (r * 255.0).round() as u8,
        (g * 255.0).round() as u8,
        (b * 255.0).round() as u8,
    ]
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
        assert!(
            !p.contains(&[152, 251, 152]) && !p.contains(&[0, 0, 70]) && !p.contains(&[0, 80, 100])
        );
    }

    #[test]
    fn extra_classes_get_distinct_colours() {
        let p = palette(40);
        let distinct: std::collections::HashSet<_> = p.iter().collect();
        assert_eq!(distinct.len(), 40);
    }
}
