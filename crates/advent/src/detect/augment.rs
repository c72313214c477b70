//! Training-time augmentation of detection frames: ssd.pytorch's `SSDAugmentation`
//! (`utils/augmentations.py`) — photometric distortion, zoom out ("expand"), random crop,
//! mirror, resize — or the mirror alone ([`Augment`]).
//!
//! The reference's steps on a frame of `w x h` pixels, each "with probability 1/2" a seeded
//! coin here:
//! 1. **Photometric distortion**: brightness `+ U(-32, 32)`; then either contrast
//!    `x U(0.5, 1.5)` before the HSV steps or after them (a coin); saturation `x U(0.5, 1.5)`
//!    and hue `+ U(-18°, 18°)` in OpenCV's float HSV; a random permutation of the channels.
//!    No clipping anywhere, as the reference (its images are float32 from here on).
//! 2. **Expand**: the frame placed at `(⌊U(0, (r-1)w)⌋, ⌊U(0, (r-1)h)⌋)` on a canvas of
//!    `⌊rw⌋ x ⌊rh⌋` filled with the mean, `r ~ U(1, 4)`.
//! 3. **Random crop**: a mode drawn from {whole frame, min IoU 0.1, 0.3, 0.7, 0.9, any};
//!    up to 50 windows of `U(0.3, 1)` of each side with aspect `h/w` in `[0.5, 2]`, corners
//!    truncated to integers; a window is taken when an object overlaps it enough and at least
//!    one object's center lies strictly inside; those objects are kept, clipped to it. No
//!    window in 50: another mode.
//! 4. **Mirror** left-right.
//! 5. Resize to `size x size` and subtract the mean.
//!
//! Deviations, each for a reason:
//! * The IoU test. ssd.pytorch skips a window when `overlap.min() < min_iou and max_iou <
//!   overlap.max()`, which never holds (`max_iou` is always infinite): its crops ignore the
//!   IoU modes. We follow the SSD authors' Caffe code (`SatisfySampleConstraint`): a window
//!   is taken when *some* object's IoU with it is at least the mode's minimum. (Requiring
//!   every object, the reference's evident intent, is nearly never met by a Cityscapes frame
//!   with dozens of small objects.) A frame with no object takes any window.
//! * The order of resampling. Nothing is materialised at the canvas's size (up to 16x the
//!   frame's pixels): the part of the frame inside the window is cut out in frame pixels (an
//!   integer rectangle, since the reference's offsets and window corners are integers),
//!   resized straight to its place in the `size x size` output with the bicubic resize of
//!   [`super::data::prepare`] (ssd.pytorch: `cv2.resize`, bilinear), and distorted there.
//!   Brightness, contrast and the channel swap commute with resizing; saturation and hue do
//!   up to the interpolation of a non-linear map. The image's place in the output is rounded
//!   to whole output pixels (boxes are exact): at most half a pixel of 300.
//! * Random numbers come from splitmix64 seeded by `(seed, epoch, position)` of the frame in
//!   the data order, so that a resumed run augments exactly as the uninterrupted one.

use super::cityscapes::FrameBoxes;
use super::data::{DetSample, SSD_MEAN_BGR};
use crate::dataset::synthetic::Rng;
use crate::image::RgbImage;
use anyhow::{bail, Result};
use tch::Tensor;

/// Augmentation of a training set (`source.augment`, `target.augment`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Augment {
    /// Every frame as evaluation prepares it.
    None,
    /// Mirrored left-right with probability 1/2.
    Flip,
    /// ssd.pytorch's `SSDAugmentation` (see the module documentation).
    Ssd,
}

impl Augment {
    /// `key` names the setting in errors.
    pub fn parse(key: &str, value: &str) -> Result<Self> {
        Ok(match value {
            "none" => Augment::None,
            "flip" => Augment::Flip,
            "ssd" => Augment::Ssd,
            other => bail!("{key}: unknown `{other}` (ssd, flip, none)"),
        })
    }
}

/// Photometric parameters drawn for one frame; `None`: that step left out.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Distortion {
    pub brightness: Option<f32>,
    /// Contrast before the HSV steps (`true`) or after them.
    pub contrast_first: bool,
    pub contrast: Option<f32>,
    pub saturation: Option<f32>,
    pub hue: Option<f32>,
    /// Output channel `i` is input channel `swap[i]`.
    pub swap: Option<[usize; 3]>,
}

/// ssd.pytorch's `RandomLightingNoise.perms` (the identity included).
const PERMUTATIONS: [[usize; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];

impl Distortion {
    /// The reference's draws, in its order.
    pub(crate) fn draw(rng: &mut Rng) -> Self {
        let mut d = Distortion::default();
        if coin(rng) {
            d.brightness = Some(range(rng, -32.0, 32.0) as f32);
        }
        d.contrast_first = coin(rng);
        if coin(rng) {
            d.contrast = Some(range(rng, 0.5, 1.5) as f32);
        }
        if coin(rng) {
            d.saturation = Some(range(rng, 0.5, 1.5) as f32);
        }
        if coin(rng) {
            d.hue = Some(range(rng, -18.0, 18.0) as f32);
        }
        if coin(rng) {
            d.swap = Some(PERMUTATIONS[rng.int(0, 6) as usize]);
        }
        d
    }

    /// One pixel (any channel order that the permutation refers to; HSV takes it as RGB).
    /// The HSV round trip is made even with no saturation or hue change, as the reference's.
    pub fn apply(&self, p: [f32; 3]) -> [f32; 3] {
        let scale = |p: [f32; 3], f: Option<f32>| f.map_or(p, |f| p.map(|v| v * f));
        let mut p = self.brightness.map_or(p, |b| p.map(|v| v + b));
        if self.contrast_first {
            p = scale(p, self.contrast);
        }
        let [mut h, mut s, v] = rgb_to_hsv(p);
        if let Some(f) = self.saturation {
            s *= f;
        }
        if let Some(dh) = self.hue {
            h += dh;
            if h > 360.0 {
                h -= 360.0;
            } else if h < 0.0 {
                h += 360.0;
            }
        }
        p = hsv_to_rgb([h, s, v]);
        if !self.contrast_first {
            p = scale(p, self.contrast);
        }
        self.swap.map_or(p, |w| [p[w[0]], p[w[1]], p[w[2]]])
    }
}

/// OpenCV's float `RGB2HSV`: hue in degrees `[0, 360)`, saturation `diff / |max|`, value
/// the maximum (`FLT_EPSILON` guards as OpenCV's).
pub fn rgb_to_hsv([r, g, b]: [f32; 3]) -> [f32; 3] {
    let v = r.max(g).max(b);
    let diff = v - r.min(g).min(b);
    let s = diff / (v.abs() + f32::EPSILON);
    let k = 60.0 / (diff + f32::EPSILON);
    let mut h = if v == r {
        (g - b) * k
    } else if v == g {
        (b - r) * k + 120.0
    } else {
        (r - g) * k + 240.0
    };
    if h < 0.0 {
        h += 360.0;
    }
    [h, s, v]
}

/// OpenCV's float `HSV2RGB`, the inverse of [`rgb_to_hsv`] (any hue, wrapped; no clamping
/// of saturation).
pub fn hsv_to_rgb([h, s, v]: [f32; 3]) -> [f32; 3] {
    if s == 0.0 {
        return [v; 3];
    }
    let mut h = h / 60.0;
    while h < 0.0 {
        h += 6.0;
    }
    while h >= 6.0 {
        h -= 6.0;
    }
    let mut sector = h.floor() as usize;
    h -= sector as f32;
    if sector >= 6 {
        (sector, h) = (0, 0.0);
    }
    let tab = [v, v * (1.0 - s), v * (1.0 - s * h), v * (1.0 - s * (1.0 - h))];
    // OpenCV's `sector_data`, as (b, g, r) indices into `tab`.
    const SECTORS: [[usize; 3]; 6] = [[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]];
    let [b, g, r] = SECTORS[sector];
    [tab[r], tab[g], tab[b]]
}

/// A crop window in canvas pixels, `[x0, y0, x1, y1]` (integers, `x1` exclusive), the
/// objects it keeps (indices) and the mode that drew it (its minimum IoU; `None`: the whole
/// canvas).
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub rect: [i64; 4],
    pub kept: Vec<usize>,
    pub min_iou: Option<f32>,
}

/// The crop modes' IoU bounds; the first mode (`None`) keeps the whole canvas.
const CROP_MODES: [Option<(f32, f32)>; 6] = [
    None,
    Some((0.1, f32::INFINITY)),
    Some((0.3, f32::INFINITY)),
    Some((0.7, f32::INFINITY)),
    Some((0.9, f32::INFINITY)),
    Some((f32::NEG_INFINITY, f32::INFINITY)),
];

/// Rounds of mode draws before giving up and keeping the whole canvas (the reference loops
/// for ever; each round keeps the whole canvas with probability 1/6 already).
const MAX_ROUNDS: usize = 1000;

/// The reference's `RandomSampleCrop` on a `width x height` canvas holding `boxes` (corner
/// form, canvas pixels), with the IoU test of the SSD authors' code (see the module docs).
pub(crate) fn sample_window(width: u32, height: u32, boxes: &[[f32; 4]], rng: &mut Rng) -> Window {
    let whole =
        || Window { rect: [0, 0, width as i64, height as i64], kept: (0..boxes.len()).collect(), min_iou: None };
    let (w, h) = (width as f64, height as f64);
    for _ in 0..MAX_ROUNDS {
        let Some((min_iou, max_iou)) = CROP_MODES[rng.int(0, 6) as usize] else {
            return whole();
        };
        for _ in 0..50 {
            let (cw, ch) = (range(rng, 0.3 * w, w), range(rng, 0.3 * h, h));
            if ch / cw < 0.5 || ch / cw > 2.0 {
                continue;
            }
            let (left, top) = (range(rng, 0.0, w - cw), range(rng, 0.0, h - ch));
            let rect = [left as i64, top as i64, (left + cw) as i64, (top + ch) as i64];
            if rect[2] <= rect[0] || rect[3] <= rect[1] {
                continue;
            }
            let r = rect.map(|v| v as f32);
            if boxes.is_empty() {
                return Window { rect, kept: Vec::new(), min_iou: Some(min_iou) };
            }
            let overlapping = boxes.iter().any(|&b| {
                let o = super::boxes::iou(b, r);
                o >= min_iou && o <= max_iou
            });
            if !overlapping {
                continue;
            }
            let kept: Vec<usize> = (0..boxes.len())
                .filter(|&i| {
                    let b = boxes[i];
                    let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
                    r[0] < cx && r[1] < cy && r[2] > cx && r[3] > cy
                })
                .collect();
            if !kept.is_empty() {
                return Window { rect, kept, min_iou: Some(min_iou) };
            }
        }
    }
    whole()
}

/// The geometric draws for one frame of `width x height` pixels: where the frame sits on
/// the expanded canvas, the canvas's size, the window and the mirror.
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    pub offset: (i64, i64),
    pub canvas: (u32, u32),
    pub window: Window,
    pub mirror: bool,
}

impl Geometry {
    /// Expand, crop and mirror, drawn as the reference draws them; `boxes` in frame pixels.
    pub(crate) fn draw(width: u32, height: u32, boxes: &[[f32; 4]], rng: &mut Rng) -> Self {
        let (w, h) = (width as f64, height as f64);
        let (offset, canvas) = if coin(rng) {
            let ratio = range(rng, 1.0, 4.0);
            let left = range(rng, 0.0, w * ratio - w);
            let top = range(rng, 0.0, h * ratio - h);
            ((left as i64, top as i64), ((w * ratio) as u32, (h * ratio) as u32))
        } else {
            ((0, 0), (width, height))
        };
        let (dx, dy) = (offset.0 as f32, offset.1 as f32);
        let moved: Vec<[f32; 4]> = boxes.iter().map(|b| [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy]).collect();
        let window = sample_window(canvas.0, canvas.1, &moved, rng);
        Geometry { offset, canvas, window, mirror: coin(rng) }
    }

    /// The kept boxes, relative to the window (and mirrored with it), from `boxes` in frame
    /// pixels: clipped to the window as the reference clips them.
    pub fn boxes(&self, boxes: &[[f32; 4]]) -> Vec<[f32; 4]> {
        let [x0, y0, x1, y1] = self.window.rect.map(|v| v as f32);
        let (dx, dy) = (self.offset.0 as f32, self.offset.1 as f32);
        let (w, h) = (x1 - x0, y1 - y0);
        self.window
            .kept
            .iter()
            .map(|&i| {
                let b = boxes[i];
                let r = [
                    ((b[0] + dx).max(x0) - x0) / w,
                    ((b[1] + dy).max(y0) - y0) / h,
                    ((b[2] + dx).min(x1) - x0) / w,
                    ((b[3] + dy).min(y1) - y0) / h,
                ];
                if self.mirror {
                    [1.0 - r[2], r[1], 1.0 - r[0], r[3]]
                } else {
                    r
                }
            })
            .collect()
    }
}

/// One frame through `SSDAugmentation`: `image` and `frame` (its boxes) as read, `size` the
/// network's input side, `seed` that of its random numbers (splitmix64). The result is a
/// training sample as [`super::data::prepare`] makes them (RGB, mean subtracted); `frame` is
/// kept as read.
pub fn ssd_augment(image: &RgbImage, frame: FrameBoxes, name: String, size: u32, seed: u64) -> Result<DetSample> {
    let rng = &mut Rng::new(seed);
    let (w, h) = image.dimensions();
    let (relative, labels) = frame.targets();
    let pixels: Vec<[f32; 4]> =
        relative.iter().map(|b| [b[0] * w as f32, b[1] * h as f32, b[2] * w as f32, b[3] * h as f32]).collect();
    let distortion = Distortion::draw(rng);
    let geometry = Geometry::draw(w, h, &pixels, rng);
    let image = render(image, &geometry, &distortion, size)?;
    let boxes = geometry.boxes(&pixels);
    let labels = geometry.window.kept.iter().map(|&i| labels[i]).collect();
    Ok(DetSample { image, boxes, labels, frame, name })
}

/// The `size x size` network input of a frame under `geometry` and `distortion`: `[3, size,
/// size]` float32, RGB minus the mean, the canvas's mean fill at 0.
pub fn render(image: &RgbImage, geometry: &Geometry, distortion: &Distortion, size: u32) -> Result<Tensor> {
    let (w, h) = image.dimensions();
    let s = size as usize;
    let mut out = vec![0f32; 3 * s * s];
    let [r0, r1, r2, r3] = geometry.window.rect;
    let (ox, oy) = geometry.offset;
    // The frame's pixels inside the window, in canvas pixels.
    let (ix0, iy0, ix1, iy1) = (ox.max(r0), oy.max(r1), (ox + w as i64).min(r2), (oy + h as i64).min(r3));
    // Their place in the output.
    let to_out = |v: i64, lo: i64, hi: i64| {
        (((v - lo) as f64 * size as f64 / (hi - lo) as f64).round() as i64).clamp(0, s as i64)
    };
    let (dx0, dx1) = (to_out(ix0, r0, r2), to_out(ix1, r0, r2));
    let (dy0, dy1) = (to_out(iy0, r1, r3), to_out(iy1, r1, r3));
    if ix0 < ix1 && iy0 < iy1 && dx0 < dx1 && dy0 < dy1 {
        let part = ::image::imageops::crop_imm(
            image,
            (ix0 - ox) as u32,
            (iy0 - oy) as u32,
            (ix1 - ix0) as u32,
            (iy1 - iy0) as u32,
        )
        .to_image();
        let resized = crate::image::resize::resize_bicubic(&part, (dx1 - dx0) as u32, (dy1 - dy0) as u32);
        // RGB minus the BGR mean reversed.
        let mean = [SSD_MEAN_BGR[2] as f32, SSD_MEAN_BGR[1] as f32, SSD_MEAN_BGR[0] as f32];
        for (x, y, px) in resized.enumerate_pixels() {
            let p = distortion.apply(px.0.map(f32::from));
            let (ux, uy) = (dx0 as usize + x as usize, dy0 as usize + y as usize);
            let ux = if geometry.mirror { s - 1 - ux } else { ux };
            for c in 0..3 {
                out[c * s * s + uy * s + ux] = p[c] - mean[c];
            }
        }
    }
    Ok(Tensor::f_from_slice(&out)?.f_reshape([3, size as i64, size as i64])?)
}

/// The reference's `random.randint(2)`: true means "apply the step".
fn coin(rng: &mut Rng) -> bool {
    rng.next_u64() >> 63 == 1
}

/// Uniform in `[lo, hi)` with 53 bits.
fn range(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::boxes::iou;

    fn close(a: [f32; 3], b: [f32; 3], tol: f32) -> bool {
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn hsv_matches_hand_values() {
        // By hand from the definitions: pure colours at hue 0, 120, 240 with saturation 1;
        // grey has saturation 0; (200, 100, 50): v 200, diff 150, s 0.75, h 60 * 50/150 = 20.
        assert!(close(rgb_to_hsv([255.0, 0.0, 0.0]), [0.0, 1.0, 255.0], 1e-4));
        assert!(close(rgb_to_hsv([0.0, 255.0, 0.0]), [120.0, 1.0, 255.0], 1e-4));
        assert!(close(rgb_to_hsv([0.0, 0.0, 255.0]), [240.0, 1.0, 255.0], 1e-4));
        assert!(close(rgb_to_hsv([100.0, 100.0, 100.0]), [0.0, 0.0, 100.0], 1e-4));
        assert!(close(rgb_to_hsv([200.0, 100.0, 50.0]), [20.0, 0.75, 200.0], 1e-3));
        // Magenta-ish (200, 50, 100): v = r, h = 60 * (50 - 100) / 150 + 360 = 340.
        assert!(close(rgb_to_hsv([200.0, 50.0, 100.0]), [340.0, 0.75, 200.0], 1e-3));
        // Back again, and hue turns: red + 120° is green, + 240° (or - 120°) blue.
        assert!(close(hsv_to_rgb([20.0, 0.75, 200.0]), [200.0, 100.0, 50.0], 1e-3));
        assert!(close(hsv_to_rgb([120.0, 1.0, 255.0]), [0.0, 255.0, 0.0], 1e-3));
        assert!(close(hsv_to_rgb([-120.0, 1.0, 255.0]), [0.0, 0.0, 255.0], 1e-3));
        // Half the saturation of red: (255, 127.5, 127.5).
        assert!(close(hsv_to_rgb([0.0, 0.5, 255.0]), [255.0, 127.5, 127.5], 1e-3));
        let mut rng = Rng::new(5);
        for _ in 0..1000 {
            let p = [0, 1, 2].map(|_| rng.range(0.0, 255.0));
            assert!(close(hsv_to_rgb(rgb_to_hsv(p)), p, 2e-3), "{p:?}");
        }
    }

    #[test]
    fn distortion_steps_by_hand() {
        let p = [100.0, 50.0, 20.0];
        // Brightness then contrast: (100 + 10) * 2.
        let d = Distortion { brightness: Some(10.0), contrast_first: true, contrast: Some(2.0), ..Default::default() };
        assert!(close(d.apply(p), [220.0, 120.0, 60.0], 1e-3));
        // Contrast after the HSV steps, with a hue turn of 0: the same.
        let d = Distortion { contrast_first: false, hue: Some(0.0), ..d };
        assert!(close(d.apply(p), [220.0, 120.0, 60.0], 1e-3));
        // The channel swap [2, 0, 1] takes (r, g, b) to (b, r, g); no clipping of the
        // negative brightness shift.
        let d = Distortion { brightness: Some(-30.0), swap: Some([2, 0, 1]), ..Default::default() };
        assert!(close(d.apply(p), [-10.0, 70.0, 20.0], 1e-3));
        // Saturation x 0 makes grey at the maximum.
        let d = Distortion { saturation: Some(0.0), ..Default::default() };
        assert!(close(d.apply(p), [100.0; 3], 1e-3));
        // Every step is drawn about half the time.
        let mut rng = Rng::new(3);
        let draws: Vec<Distortion> = (0..400).map(|_| Distortion::draw(&mut rng)).collect();
        for n in [
            draws.iter().filter(|d| d.brightness.is_some()).count(),
            draws.iter().filter(|d| d.contrast_first).count(),
            draws.iter().filter(|d| d.hue.is_some()).count(),
            draws.iter().filter(|d| d.swap.is_some()).count(),
        ] {
            assert!((150..=250).contains(&n), "{n} of 400");
        }
        assert!(draws.iter().filter_map(|d| d.hue).all(|h| (-18.0..18.0).contains(&h)));
        assert!(draws.iter().filter_map(|d| d.contrast).all(|c| (0.5..1.5).contains(&c)));
    }

    #[test]
    fn windows_obey_the_sampling_rules() {
        let boxes = [[100.0, 100.0, 300.0, 250.0], [700.0, 300.0, 760.0, 420.0], [10.0, 400.0, 30.0, 440.0]];
        let (w, h) = (1000u32, 500u32);
        let mut rng = Rng::new(11);
        let mut whole = 0;
        for _ in 0..500 {
            let win = sample_window(w, h, &boxes, &mut rng);
            let [x0, y0, x1, y1] = win.rect;
            if win.rect == [0, 0, 1000, 500] {
                whole += 1;
                assert_eq!(win.kept, [0, 1, 2]);
                continue;
            }
            let (cw, ch) = ((x1 - x0) as f64, (y1 - y0) as f64);
            // At least 0.3 of each side (less one pixel of truncation), inside the canvas,
            // aspect within [0.5, 2] (up to the truncation).
            assert!(cw >= 299.0 && ch >= 149.0 && x0 >= 0 && y0 >= 0 && x1 <= 1000 && y1 <= 500, "{:?}", win.rect);
            assert!(ch / cw >= 0.49 && ch / cw <= 2.02, "{:?}", win.rect);
            // Kept: exactly the objects whose center lies strictly inside, at least one.
            let r = win.rect.map(|v| v as f32);
            let inside: Vec<usize> = (0..3)
                .filter(|&i| {
                    let (cx, cy) = ((boxes[i][0] + boxes[i][2]) / 2.0, (boxes[i][1] + boxes[i][3]) / 2.0);
                    r[0] < cx && cx < r[2] && r[1] < cy && cy < r[3]
                })
                .collect();
            assert_eq!(win.kept, inside);
            assert!(!inside.is_empty());
        }
        // Mode "whole frame" is 1 of 6 draws, more of the outcomes since modes that find no
        // window in 50 tries draw again (here 0.7 and 0.9 never can: the largest object,
        // 30000 px², is under 0.7 of the smallest window, 45000 px²); the "any" and 0.1
        // modes take windows: under half the outcomes are whole.
        assert!((60..=250).contains(&whole), "{whole} of 500");
        // The mode's minimum IoU holds for some object; with a large object every mode
        // can be met (a 500x300 object in a 600x400 canvas), and is.
        let large = [[50.0, 50.0, 550.0, 350.0], [10.0, 10.0, 40.0, 40.0]];
        let mut modes = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let win = sample_window(600, 400, &large, &mut rng);
            let Some(m) = win.min_iou else { continue };
            let best = large.iter().map(|&b| iou(b, win.rect.map(|v| v as f32))).fold(0.0, f32::max);
            assert!(best >= m, "window {:?} of mode {m}: best IoU {best}", win.rect);
            modes.insert((m * 10.0) as i32);
        }
        assert_eq!(modes.into_iter().collect::<Vec<_>>(), [i32::MIN, 1, 3, 7, 9]);
        // A frame with no objects takes any window.
        let win = sample_window(w, h, &[], &mut rng);
        assert!(win.kept.is_empty());
    }

    /// A black frame with white rectangles as its objects.
    fn frame_with_boxes(w: u32, h: u32, rects: &[[u32; 4]]) -> (RgbImage, FrameBoxes) {
        let mut img = RgbImage::new(w, h);
        let mut ids = vec![0u16; (w * h) as usize];
        for (k, r) in rects.iter().enumerate() {
            for y in r[1]..=r[3] {
                for x in r[0]..=r[2] {
                    img.put_pixel(x, y, ::image::Rgb([255, 255, 255]));
                    // Car instances (Cityscapes id 26).
                    ids[(y * w + x) as usize] = 26000 + k as u16;
                }
            }
        }
        let frame = super::super::cityscapes::boxes_from_instance_ids(&ids, w, h, &Default::default());
        (img, frame)
    }

    #[test]
    fn boxes_follow_the_pixels() {
        // Without photometric changes, each kept box must frame its white pixels in the
        // output: expansion, crop, mirror and resize move image and boxes alike. Checked by
        // the extent of white (> half bright) output pixels against the box in pixels.
        let (img, frame) = frame_with_boxes(400, 200, &[[40, 30, 139, 109], [260, 120, 339, 179]]);
        let mut seen_expand = false;
        let mut seen_crop = false;
        let mut checked = 0;
        for seed in 0..40 {
            let mut rng = Rng::new(seed);
            let (rel, _) = frame.targets();
            let px: Vec<[f32; 4]> =
                rel.iter().map(|b| [b[0] * 400.0, b[1] * 200.0, b[2] * 400.0, b[3] * 200.0]).collect();
            let g = Geometry::draw(400, 200, &px, &mut rng);
            seen_expand |= g.canvas != (400, 200);
            seen_crop |= g.window.rect != [0, 0, g.canvas.0 as i64, g.canvas.1 as i64];
            let t = render(&img, &g, &Distortion::default(), 300).unwrap();
            let boxes = g.boxes(&px);
            // Red channel minus its mean: white is 255 - 123.
            let red = Vec::<f32>::try_from(t.get(0).flatten(0, -1)).unwrap();
            let white = |x: usize, y: usize| red[y * 300 + x] > 0.0;
            for b in &boxes {
                let p = b.map(|v| v * 300.0);
                // Inside the box (one pixel in from each side): white; just outside: not,
                // unless it's the window's edge or the other object.
                let (x0, y0, x1, y1) =
                    (p[0].ceil() as usize + 1, p[1].ceil() as usize + 1, p[2] as usize - 2, p[3] as usize - 2);
                if x1 <= x0 || y1 <= y0 {
                    continue;
                }
                checked += 1;
                for (x, y) in [(x0, y0), (x1, y0), (x0, y1), (x1, y1), ((x0 + x1) / 2, (y0 + y1) / 2)] {
                    assert!(white(x, y), "seed {seed}: ({x}, {y}) inside {p:?} is not white; {g:?}");
                }
                // Two pixels beside the box at its middle row: black or mean fill (the other
                // object shares no rows with it).
                let row = (y0 + y1) / 2;
                for x in [p[0] as i64 - 2, p[2] as i64 + 2] {
                    if (0..300).contains(&x) {
                        assert!(!white(x as usize, row), "seed {seed}: ({x}, {row}) beside {p:?} is white");
                    }
                }
            }
        }
        assert!(seen_expand && seen_crop);
        // Most of the 40 frames' boxes are big enough to check (at least one per frame).
        assert!(checked >= 40, "only {checked} boxes checked");
    }

    #[test]
    fn the_same_draws_give_the_same_sample() {
        let (img, frame) = frame_with_boxes(256, 128, &[[20, 30, 80, 90]]);
        let a = ssd_augment(&img, frame.clone(), "a".into(), 300, 8).unwrap();
        let b = ssd_augment(&img, frame.clone(), "a".into(), 300, 8).unwrap();
        assert!(a.image.equal(&b.image));
        assert_eq!(a.boxes, b.boxes);
        assert_eq!(a.image.size(), [3, 300, 300]);
        assert!(a.boxes.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
        // Some other seed draws something else.
        let differs = (0..10).any(|s| {
            let c = ssd_augment(&img, frame.clone(), "a".into(), 300, 100 + s).unwrap();
            !c.image.equal(&a.image)
        });
        assert!(differs);
    }
}
