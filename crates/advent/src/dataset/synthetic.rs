//! A generator of street scenes in two domains sharing the Cityscapes label space: a clean,
//! flat-shaded "synthetic" source and a "real" target with other colours, texture, noise,
//! haze and blur. Deterministic from (seed, index, domain); nothing is downloaded.

use super::{DatasetSpec, Sample};
use crate::image::{to_input_tensor, RgbImage, IMG_MEAN_BGR};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Appearance of the generated images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    /// Flat colours, sharp edges: a game engine.
    #[default]
    Source,
    /// Shifted colours, texture, sensor noise, haze and blur: a camera.
    Target,
}

/// Train ids (Cityscapes) of the classes drawn.
mod id {
    pub const ROAD: u8 = 0;
    pub const SIDEWALK: u8 = 1;
    pub const BUILDING: u8 = 2;
    pub const POLE: u8 = 5;
    pub const VEGETATION: u8 = 8;
    pub const SKY: u8 = 10;
    pub const PERSON: u8 = 11;
    pub const CAR: u8 = 13;
}

/// Flat base colours of the game-like source (RGB). The target sees the same scene through a
/// camera: [`Camera`] changes the colours globally and adds texture, noise, haze and blur,
/// so that class and colour stay related, as between a game and a street.
fn base_color(class: u8) -> [f32; 3] {
    match class {
        id::ROAD => [110., 60., 120.],
        id::SIDEWALK => [230., 60., 210.],
        id::BUILDING => [90., 90., 90.],
        id::POLE => [220., 220., 40.],
        id::VEGETATION => [60., 170., 40.],
        id::SKY => [80., 150., 240.],
        id::PERSON => [230., 30., 50.],
        id::CAR => [20., 20., 200.],
        _ => [0., 0., 0.],
    }
}

/// The "real" domain's image formation, drawn per image; `strength` scales every effect
/// (0: the source's appearance, 1: the default shift).
struct Camera {
    saturation: f32,
    cast: [f32; 3],
    exposure: f32,
    gamma: f32,
    texture: f32,
    noise: f32,
    haze: f32,
    phase: f32,
}

impl Camera {
    fn draw(rng: &mut Rng, strength: f32) -> Self {
        let lerp = |a: f32, b: f32| a + (b - a) * strength;
        Camera {
            saturation: lerp(1.0, rng.range(0.35, 0.65)),
            cast: [lerp(1.0, rng.range(1.05, 1.25)), lerp(1.0, rng.range(0.95, 1.05)), lerp(1.0, rng.range(0.7, 0.9))],
            exposure: lerp(1.0, rng.range(0.65, 0.95)),
            gamma: lerp(1.0, rng.range(0.75, 1.0)),
            texture: lerp(0.0, rng.range(6.0, 14.0)),
            noise: lerp(0.0, 9.0),
            haze: lerp(0.0, rng.range(0.2, 0.5)),
            phase: rng.range(0.0, 6.3),
        }
    }

    fn apply(&self, c: [f32; 3], x: i64, y: i64, h: f32, noise: &mut Rng) -> [f32; 3] {
        let grey = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        let texture = self.texture * (((x * 7 + y * 3) as f32 * 0.9 + self.phase).sin() * ((y * 5) as f32 * 0.7).cos());
        let haze = self.haze * (1.0 - y as f32 / h).clamp(0.0, 1.0);
        let mut out = [0.0; 3];
        for ch in 0..3 {
            let v = (grey + (c[ch] - grey) * self.saturation) * self.cast[ch] * self.exposure;
            let v = 255.0 * (v.clamp(0.0, 255.0) / 255.0).powf(self.gamma);
            let v = v + texture + self.noise * noise.normal();
            out[ch] = v * (1.0 - haze) + 200.0 * haze;
        }
        out
    }
}

/// splitmix64: small, fast, and the same on every platform.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub(crate) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }
    /// Uniform integer in [lo, hi).
    pub(crate) fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo).max(1) as u64) as i64
    }
    /// Approximately standard normal (sum of uniforms).
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 1.732 - 3.464
    }
}

/// Label map, instance map and per-pixel colour canvas.
struct Canvas {
    w: i64,
    h: i64,
    label: Vec<u8>,
    color: Vec<[f32; 3]>,
    /// Cityscapes-style instance ids (`label_id · 1000 + index`) of cars and people, 0
    /// elsewhere; shapes drawn later cover earlier ones, as in the label map.
    instance: Vec<u16>,
    /// The instance id the next shapes are drawn with.
    pen: u16,
}

impl Canvas {
    fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, class: u8, color: [f32; 3]) {
        for y in y0.max(0)..y1.min(self.h) {
            for x in x0.max(0)..x1.min(self.w) {
                let i = (y * self.w + x) as usize;
                self.label[i] = class;
                self.color[i] = color;
                self.instance[i] = self.pen;
            }
        }
    }

    fn fill_ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, class: u8, color: [f32; 3]) {
        let (x0, x1) = ((cx - rx).floor() as i64, (cx + rx).ceil() as i64);
        let (y0, y1) = ((cy - ry).floor() as i64, (cy + ry).ceil() as i64);
        for y in y0.max(0)..y1.min(self.h) {
            for x in x0.max(0)..x1.min(self.w) {
                let (dx, dy) = ((x as f32 + 0.5 - cx) / rx, (y as f32 + 0.5 - cy) / ry);
                if dx * dx + dy * dy <= 1.0 {
                    let i = (y * self.w + x) as usize;
                    self.label[i] = class;
                    self.color[i] = color;
                    self.instance[i] = self.pen;
                }
            }
        }
    }
}

fn jitter(rng: &mut Rng, c: [f32; 3], amount: f32) -> [f32; 3] {
    let s = rng.range(-amount, amount);
    [c[0] + s, c[1] + s, c[2] + s]
}

/// Draws scene `index`: returns the RGB image and the train-id label map (`w·h` bytes).
/// `shift` scales the target's camera effects (1 = the default domain shift).
pub fn generate(seed: u64, index: u64, domain: Domain, shift: f32, w: u32, h: u32) -> (RgbImage, Vec<u8>) {
    let (img, label, _) = generate_with_instances(seed, index, domain, shift, w, h);
    (img, label)
}

/// [`generate`], with the instance map of the cars and people in Cityscapes' encoding
/// (`26000 + k` for the k-th car drawn, `24000 + k` for the k-th person, 0 elsewhere), from
/// which `detect::cityscapes::boxes_from_instance_ids` takes their boxes.
pub fn generate_with_instances(
    seed: u64,
    index: u64,
    domain: Domain,
    shift: f32,
    w: u32,
    h: u32,
) -> (RgbImage, Vec<u8>, Vec<u16>) {
    let layout_seed = seed ^ index.wrapping_mul(0xD1B54A32D192ED03) ^ (domain as u64).wrapping_mul(0xA24BAED4963EE407);
    let mut rng = Rng::new(layout_seed);
    let (wi, hi) = (w as i64, h as i64);
    let (wf, hf) = (w as f32, h as f32);
    let n = (w * h) as usize;
    let mut c =
        Canvas { w: wi, h: hi, label: vec![id::SKY; n], color: vec![[0.0; 3]; n], instance: vec![0; n], pen: 0 };
    let color = |rng: &mut Rng, class: u8| jitter(rng, base_color(class), 12.0);

    let sky = color(&mut rng, id::SKY);
    c.fill_rect(0, 0, wi, hi, id::SKY, sky);
    let horizon = (hf * rng.range(0.38, 0.52)) as i64;
    // Buildings along the horizon, of varied heights.
    let mut x = 0;
    while x < wi {
        let bw = rng.int(wi / 10, wi / 4);
        let top = (horizon as f32 - hf * rng.range(0.1, 0.35)) as i64;
        let col = color(&mut rng, id::BUILDING);
        c.fill_rect(x, top, x + bw, horizon + 1, id::BUILDING, col);
        x += bw + rng.int(0, wi / 16);
    }
    // Trees in front of some buildings.
    for _ in 0..rng.int(1, 4) {
        let (cx, cy) = (rng.range(0.0, wf), horizon as f32 - hf * rng.range(0.05, 0.15));
        let col = color(&mut rng, id::VEGETATION);
        c.fill_ellipse(cx, cy, wf * rng.range(0.05, 0.1), hf * rng.range(0.06, 0.12), id::VEGETATION, col);
    }
    // Road below the horizon, sidewalks on both sides widening towards the camera.
    let road = color(&mut rng, id::ROAD);
    let walk = color(&mut rng, id::SIDEWALK);
    for y in horizon..hi {
        let t = (y - horizon) as f32 / (hi - horizon).max(1) as f32;
        let half = wf * (0.08 + 0.45 * t);
        let mid = wf / 2.0;
        for x in 0..wi {
            let d = (x as f32 + 0.5 - mid).abs();
            let (class, col) = if d < half { (id::ROAD, road) } else { (id::SIDEWALK, walk) };
            let i = (y * wi + x) as usize;
            c.label[i] = class;
            c.color[i] = col;
        }
    }
    // Poles on the sidewalks.
    for _ in 0..rng.int(1, 4) {
        let px = rng.int(0, wi);
        let col = color(&mut rng, id::POLE);
        let pw = (wi / 80).max(1);
        c.fill_rect(
            px,
            (horizon as f32 - hf * 0.3) as i64,
            px + pw,
            (horizon as f32 + hf * 0.25) as i64,
            id::POLE,
            col,
        );
    }
    // Cars on the road, larger when nearer.
    for k in 0..rng.int(1, 4) {
        c.pen = CAR_LABEL_ID * 1000 + k as u16;
        let t = rng.range(0.15, 0.9);
        let y = horizon + (t * (hi - horizon) as f32) as i64;
        let cw = (wf * (0.06 + 0.2 * t)) as i64;
        let ch = (cw as f32 * rng.range(0.45, 0.6)) as i64;
        let cx = (wf / 2.0 + rng.range(-0.3, 0.3) * wf * (0.1 + 0.4 * t)) as i64;
        let col = color(&mut rng, id::CAR);
        c.fill_rect(cx - cw / 2, y - ch, cx + cw / 2, y, id::CAR, col);
    }
    // People on the sidewalks.
    for k in 0..rng.int(0, 4) {
        c.pen = PERSON_LABEL_ID * 1000 + k as u16;
        let t = rng.range(0.2, 0.9);
        let y = horizon + (t * (hi - horizon) as f32) as i64;
        let ph = (hf * (0.08 + 0.25 * t)) as i64;
        let pw = (ph / 3).max(1);
        let side = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
        let px = (wf / 2.0 + side * wf * (0.1 + 0.5 * t)) as i64;
        let col = color(&mut rng, id::PERSON);
        c.fill_rect(px - pw / 2, y - ph, px + pw / 2, y, id::PERSON, col);
    }

    c.pen = 0;

    let mut img = RgbImage::new(w, h);
    let mut noise = Rng::new(layout_seed ^ 0x5851F42D4C957F2D);
    let camera = (domain == Domain::Target).then(|| Camera::draw(&mut rng, shift));
    for y in 0..hi {
        for x in 0..wi {
            let i = (y * wi + x) as usize;
            let px = match &camera {
                Some(cam) => cam.apply(c.color[i], x, y, hf, &mut noise),
                None => c.color[i],
            };
            img.put_pixel(x as u32, y as u32, ::image::Rgb(px.map(|v| v.round().clamp(0.0, 255.0) as u8)));
        }
    }
    if camera.is_some() && shift > 0.0 {
        img = box_blur(&img);
    }
    (img, c.label, c.instance)
}

/// Cityscapes label ids of the two object classes the scenes hold.
const CAR_LABEL_ID: u16 = 26;
const PERSON_LABEL_ID: u16 = 24;

/// 3x3 box blur (camera softness).
fn box_blur(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let mut acc = [0u32; 3];
        let mut n = 0;
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                let (xx, yy) = (x as i64 + dx, y as i64 + dy);
                if xx >= 0 && yy >= 0 && xx < w as i64 && yy < h as i64 {
                    let p = img.get_pixel(xx as u32, yy as u32).0;
                    for ch in 0..3 {
                        acc[ch] += p[ch] as u32;
                    }
                    n += 1;
                }
            }
        }
        ::image::Rgb(acc.map(|v| ((v + n / 2) / n) as u8))
    })
}

/// The generator as a [`super::Dataset`].
pub struct SyntheticScenes {
    seed: u64,
    len: usize,
    size: (u32, u32),
    domain: Domain,
    shift: f32,
    labels: bool,
}

impl SyntheticScenes {
    pub fn new(spec: &DatasetSpec) -> Result<Self> {
        ensure!(spec.synthetic_len > 0, "synthetic dataset: synthetic_len must be positive");
        ensure!(spec.size.0 >= 8 && spec.size.1 >= 8, "synthetic dataset: size must be at least 8x8");
        Ok(SyntheticScenes {
            seed: spec.synthetic_seed,
            len: spec.synthetic_len,
            size: spec.size,
            domain: match spec.kind.as_str() {
                "synthetic-source" => Domain::Source,
                "synthetic-target" => Domain::Target,
                _ => spec.synthetic_domain,
            },
            shift: spec.synthetic_shift,
            labels: spec.labels,
        })
    }
}

impl super::Dataset for SyntheticScenes {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Result<Sample> {
        ensure!(index < self.len, "synthetic item {index} out of range ({} items)", self.len);
        let (w, h) = self.size;
        let (img, label) = generate(self.seed, index as u64, self.domain, self.shift, w, h);
        let image = to_input_tensor(&img, IMG_MEAN_BGR).f_squeeze_dim(0)?;
        let label = if self.labels {
            Some(Tensor::from_slice(&label).f_view([h as i64, w as i64])?.f_to_kind(tch::Kind::Int64)?)
        } else {
            None
        };
        Ok(Sample { image, label, name: format!("synthetic-{index}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_cover_exactly_the_cars_and_people_of_the_label_map() {
        let mut cars = 0;
        for i in 0..20 {
            for domain in [Domain::Source, Domain::Target] {
                let (img, label, inst) = generate_with_instances(4, i, domain, 1.0, 128, 64);
                let (img2, label2) = generate(4, i, domain, 1.0, 128, 64);
                assert!(img == img2 && label == label2, "the instances change the scene");
                for (&l, &v) in label.iter().zip(&inst) {
                    match l {
                        id::CAR => assert_eq!(v / 1000, 26, "car pixel with instance {v}"),
                        id::PERSON => assert_eq!(v / 1000, 24, "person pixel with instance {v}"),
                        _ => assert_eq!(v, 0, "class {l} pixel with instance {v}"),
                    }
                }
                let mut ids: Vec<u16> = inst.iter().copied().filter(|&v| v / 1000 == 26).collect();
                ids.sort();
                ids.dedup();
                assert!(ids.len() <= 3, "at most 3 cars are drawn: {ids:?}");
                cars += ids.len();
            }
        }
        assert!(cars >= 40, "every scene draws at least one car, rarely hidden: {cars}");
    }

    #[test]
    fn deterministic_and_domain_dependent() {
        let (a, la) = generate(3, 5, Domain::Source, 1.0, 64, 32);
        let (b, lb) = generate(3, 5, Domain::Source, 1.0, 64, 32);
        assert_eq!(a, b);
        assert_eq!(la, lb);
        let (t, _) = generate(3, 5, Domain::Target, 1.0, 64, 32);
        assert_ne!(a, t);
        let (c, _) = generate(3, 6, Domain::Source, 1.0, 64, 32);
        assert_ne!(a, c);
    }

    #[test]
    fn draws_the_street_classes() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..20 {
            seen.extend(generate(1, i, Domain::Source, 1.0, 128, 64).1);
        }
        for class in [id::ROAD, id::SIDEWALK, id::BUILDING, id::VEGETATION, id::SKY, id::CAR, id::PERSON, id::POLE] {
            assert!(seen.contains(&class), "class {class} never drawn");
        }
    }
}
#[cfg(test)]
mod speed {
    #[test]
    #[ignore]
    fn generation_speed() {
        for domain in [super::Domain::Source, super::Domain::Target] {
            let t = std::time::Instant::now();
            for i in 0..50 {
                super::generate(0, i, domain, 1.0, 128, 64);
            }
            println!("{domain:?}: {:.2} ms per image", t.elapsed().as_secs_f64() * 1e3 / 50.0);
        }
    }
}
