//! Detections of one image, as `advent detect predict` writes them: the frame prepared as in
//! training (300x300, ssd.pytorch's mean), SSD-300, softmax, decoding and per-class NMS
//! ([`super::eval::detections`]), boxes in the image's own pixels; and the boxes drawn.

use super::cityscapes::{class_name, LABEL_IDS};
use super::eval::detections;
use super::nms::{DetectConfig, Detection};
use super::ssd::Ssd;
use crate::image::RgbImage;
use anyhow::Result;

/// The detections of `img` (every class, scores above `cfg.conf_thresh`), best first.
pub fn detect_image(ssd: &Ssd, img: &RgbImage, priors: &[[f32; 4]], cfg: &DetectConfig) -> Result<Vec<Detection>> {
    let x = super::data::prepare(img, 300)?.f_unsqueeze(0)?.f_to_device(ssd.vs.device())?;
    let out = tch::no_grad(|| ssd.forward(&x))?;
    let mut dets =
        detections(&out.loc.f_squeeze_dim(0)?, &out.conf.f_squeeze_dim(0)?, priors, cfg, img.width(), img.height())?;
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(dets)
}

/// The Cityscapes palette colour of a detection class (1..=8), grey for others.
pub fn class_color(class: usize) -> [u8; 3] {
    let label = class.checked_sub(1).and_then(|i| LABEL_IDS.get(i)).copied();
    crate::classes::CITYSCAPES_19
        .iter()
        .find(|c| Some(u16::from(c.label_id)) == label)
        .map_or([128, 128, 128], |c| c.color)
}

/// Draws each detection's box (pixel corners, inclusive) as a `thickness`-pixel frame in its
/// class colour, clipped to the image; lower scores first, so that the best box is on top.
pub fn draw_boxes(img: &mut RgbImage, dets: &[Detection], thickness: u32) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut order: Vec<&Detection> = dets.iter().collect();
    order.sort_by(|a, b| a.score.total_cmp(&b.score));
    for d in order {
        let color = ::image::Rgb(class_color(d.class));
        let [x0, y0, x1, y1] = d.bbox.map(|v| v.round() as i64);
        let t = thickness as i64;
        for y in y0.max(0)..=y1.min(h - 1) {
            for x in x0.max(0)..=x1.min(w - 1) {
                let edge = x - x0 < t || x1 - x < t || y - y0 < t || y1 - y < t;
                if edge {
                    img.put_pixel(x as u32, y as u32, color);
                }
            }
        }
    }
}

/// JSON of detections: `[{"class": "car", "class_id": 3, "score": 0.97, "box": [x0, y0, x1, y1]}]`
/// (pixels, inclusive maxima).
pub fn to_json(dets: &[Detection]) -> serde_json::Value {
    serde_json::Value::Array(
        dets.iter()
            .map(|d| {
                serde_json::json!({
                    "class": class_name(d.class).unwrap_or("?"),
                    "class_id": d.class,
                    "score": d.score,
                    "box": d.bbox,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_drawn_as_frames_in_class_colours() {
        let mut img = RgbImage::new(20, 10);
        let car = Detection { class: 3, score: 0.9, bbox: [2.0, 1.0, 9.0, 6.0] };
        // A box reaching past the image is clipped, not an error.
        let person = Detection { class: 1, score: 0.5, bbox: [15.0, 5.0, 30.0, 20.0] };
        draw_boxes(&mut img, &[car, person], 1);
        let car_color = [0, 0, 142]; // Cityscapes' car
        assert_eq!(img.get_pixel(2, 1).0, car_color);
        assert_eq!(img.get_pixel(9, 6).0, car_color);
        assert_eq!(img.get_pixel(5, 1).0, car_color);
        assert_eq!(img.get_pixel(5, 3).0, [0, 0, 0], "the inside stays as it was");
        assert_eq!(img.get_pixel(15, 9).0, [220, 20, 60]); // person
        assert_eq!(class_color(99), [128, 128, 128]);
        let json = to_json(&[car]);
        assert_eq!(json[0]["class"], "car");
        assert_eq!(json[0]["box"][2], 9.0);
    }
}
