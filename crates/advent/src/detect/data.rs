//! Detection sets: Cityscapes and Foggy Cityscapes ([`DetectionSet`]) and the built-in
//! scenes ([`SyntheticDetection`]), each frame's image prepared as ssd.pytorch's
//! `BaseTransform` prepares it and its boxes taken from an instance map
//! ([`super::cityscapes`]), behind one trait, [`DetDataset`].
//!
//! Images are found as the segmentation datasets find them (walking
//! `leftImg8bit[_foggy]/<split>/`, or a list file); the boxes of a foggy frame are those of its
//! clear frame. Preparation: resized to `size x size`, the mean (104, 117, 123) subtracted in
//! BGR order, then the channels put in RGB order, as ssd.pytorch's `VOCDetection.pull_item`
//! does (`img[:, :, (2, 1, 0)]` after `BaseTransform`). One deviation: the resize is our
//! PIL-exact bicubic one where ssd.pytorch calls `cv2.resize` (bilinear). No augmentation yet
//! (ssd.pytorch trains with `SSDAugmentation`: photometric distortion, expansion, random crops,
//! mirroring).

use super::cityscapes::{boxes_from_instance_ids, instance_ids_path, read_instance_boxes, BoxOptions, FrameBoxes};
use crate::dataset::cityscapes::{Cityscapes, IMAGE_SUFFIX};
use crate::dataset::foggy::FoggyCityscapes;
use crate::dataset::layout::{find_names, Layout};
use crate::dataset::synthetic::{generate_with_instances, Domain};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// ssd.pytorch's `MEANS`, in BGR order.
pub const SSD_MEAN_BGR: [f64; 3] = [104.0, 117.0, 123.0];

/// One prepared frame.
#[derive(Debug)]
pub struct DetSample {
    /// `[3, size, size]` float32, RGB, mean subtracted.
    pub image: Tensor,
    /// The training targets: relative corner boxes and their classes (1..=8).
    pub boxes: Vec<[f32; 4]>,
    pub labels: Vec<i64>,
    /// Everything read from the instance map (pixel boxes, ignored regions), for evaluation.
    pub frame: FrameBoxes,
    /// The image's name under the image folder (`<city>/<x>_leftImg8bit.png`).
    pub name: String,
}

/// One frame as read: its image at full size and its boxes.
#[derive(Debug)]
pub struct RawFrame {
    pub image: crate::image::RgbImage,
    pub frame: FrameBoxes,
    pub name: String,
}

impl RawFrame {
    /// The frame as evaluation (and training without augmentation) sees it.
    pub fn prepare(self, size: u32) -> Result<DetSample> {
        let image = prepare(&self.image, size).with_context(|| format!("preparing {}", self.name))?;
        let (boxes, labels) = self.frame.targets();
        Ok(DetSample { image, boxes, labels, frame: self.frame, name: self.name })
    }
}

/// A finite, indexable detection set.
pub trait DetDataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The network's input side (300 for SSD-300).
    fn size(&self) -> u32;
    /// Reads item `index` (< `len()`); errors name the file.
    fn raw(&self, index: usize) -> Result<RawFrame>;
    /// Loads and prepares item `index`.
    fn get(&self, index: usize) -> Result<DetSample> {
        self.raw(index)?.prepare(self.size())
    }
}

/// `[3, size, size]`: resized, the BGR mean subtracted, channels in RGB order.
pub fn prepare(img: &crate::image::RgbImage, size: u32) -> Result<Tensor> {
    let resized = crate::image::resize::resize_bicubic(img, size, size);
    Ok(crate::image::to_input_tensor(&resized, SSD_MEAN_BGR).f_squeeze_dim(0)?.f_flip([0])?)
}

/// Which frames, and how they are prepared.
pub struct DetectionSet {
    layout: Box<dyn Layout>,
    root: PathBuf,
    split: String,
    suffix: String,
    names: Vec<String>,
    size: u32,
    options: BoxOptions,
    /// Whether the frames' instance maps are read (an adaptation target's are not).
    boxes: bool,
}

impl DetectionSet {
    /// `dataset` is `cityscapes` or `foggy-cityscapes` (with `beta`, e.g. 0.02).
    pub fn open(
        dataset: &str,
        root: &Path,
        split: &str,
        beta: f64,
        list: Option<&Path>,
        size: u32,
        options: BoxOptions,
    ) -> Result<Self> {
        let (root_buf, split_buf) = (root.to_path_buf(), split.to_string());
        let (layout, suffix): (Box<dyn Layout>, String) = match dataset {
            "cityscapes" => (Box::new(Cityscapes { root: root_buf, split: split_buf }), IMAGE_SUFFIX.into()),
            "foggy-cityscapes" => (
                Box::new(FoggyCityscapes::new(root_buf, split_buf, beta)?),
                format!("_leftImg8bit_foggy_beta_{beta}.png"),
            ),
            other => bail!("detection dataset `{other}`: expected cityscapes or foggy-cityscapes"),
        };
        let names = find_names(layout.as_ref(), list)?;
        Ok(DetectionSet {
            layout,
            root: root.to_path_buf(),
            split: split.into(),
            suffix,
            names,
            size,
            options,
            boxes: true,
        })
    }

    /// The same frames without their boxes: the instance maps are not read (they need not
    /// exist) and every frame has none, as an unlabelled adaptation target.
    pub fn without_boxes(self) -> Self {
        DetectionSet { boxes: false, ..self }
    }

    /// The instance map of item `index`.
    pub fn instance_path(&self, index: usize) -> PathBuf {
        instance_ids_path(&self.root, &self.split, &self.names[index], &self.suffix)
    }
}

impl DetDataset for DetectionSet {
    fn len(&self) -> usize {
        self.names.len()
    }

    fn size(&self) -> u32 {
        self.size
    }

    fn raw(&self, index: usize) -> Result<RawFrame> {
        let name = self.names[index].clone();
        let path = self.layout.image_dir().join(&name);
        let img = crate::image::read_rgb(&path)?;
        let (w, h) = img.dimensions();
        if !self.boxes {
            return Ok(RawFrame { image: img, frame: FrameBoxes::empty(w, h), name });
        }
        let frame = read_instance_boxes(&self.instance_path(index), &self.options)?;
        if (w, h) != (frame.width, frame.height) {
            bail!(
                "{}: {w}x{h} image, but its instance map {} is {}x{}",
                path.display(),
                self.instance_path(index).display(),
                frame.width,
                frame.height
            );
        }
        Ok(RawFrame { image: img, frame, name })
    }
}

/// The built-in scenes ([`crate::dataset::synthetic`]) as a detection set: their cars and
/// people, boxed from the generator's instance map exactly as Cityscapes frames are.
pub struct SyntheticDetection {
    pub seed: u64,
    pub domain: Domain,
    /// The target's camera effects (1 = the default shift).
    pub shift: f32,
    pub len: usize,
    /// The scenes' size in pixels, before the resize to `size x size`.
    pub scene: (u32, u32),
    pub size: u32,
    pub options: BoxOptions,
}

impl SyntheticDetection {
    /// `len` scenes of `domain` at the demo's size (256x128, the default shift), prepared at
    /// 300x300, every object kept.
    pub fn scenes(seed: u64, domain: Domain, len: usize) -> Self {
        SyntheticDetection {
            seed,
            domain,
            shift: 1.0,
            len,
            scene: (256, 128),
            size: 300,
            options: BoxOptions::default(),
        }
    }
}

impl DetDataset for SyntheticDetection {
    fn len(&self) -> usize {
        self.len
    }

    fn size(&self) -> u32 {
        self.size
    }

    fn raw(&self, index: usize) -> Result<RawFrame> {
        let (w, h) = self.scene;
        let (image, _, instances) = generate_with_instances(self.seed, index as u64, self.domain, self.shift, w, h);
        let frame = boxes_from_instance_ids(&instances, w, h, &self.options);
        Ok(RawFrame { image, frame, name: format!("synthetic-{index}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn mini() -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cityscapes-mini");
        p.join("gtFine/val").is_dir().then_some(p)
    }

    #[test]
    fn the_real_val_frame_as_a_detection_sample() {
        let Some(root) = mini() else { return };
        let set = DetectionSet::open("cityscapes", &root, "val", 0.02, None, 300, BoxOptions::default()).unwrap();
        assert_eq!(set.len(), 1);
        let s = set.get(0).unwrap();
        assert_eq!(s.image.size(), [3, 300, 300]);
        // 7 instances of the 8 classes in this frame (cityscapes.rs derives them with PIL).
        assert_eq!((s.boxes.len(), s.labels.len()), (7, 7));
        assert!(s.boxes.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
        // RGB order, BGR mean: channel 0 is red minus 123. The top-left pixel, by hand from
        // the resized image's first pixel.
        let img = crate::image::read_rgb(
            &root.join("leftImg8bit/val/frankfurt").join("frankfurt_000000_000294_leftImg8bit.png"),
        )
        .unwrap();
        let px = crate::image::resize::resize_bicubic(&img, 300, 300).get_pixel(0, 0).0;
        let got = |c: i64| s.image.double_value(&[c, 0, 0]);
        assert_eq!(got(0), px[0] as f64 - 123.0);
        assert_eq!(got(1), px[1] as f64 - 117.0);
        assert_eq!(got(2), px[2] as f64 - 104.0);
        assert_eq!(s.image.kind(), Kind::Float);
    }

    #[test]
    fn synthetic_scenes_give_car_and_person_boxes() {
        let set = SyntheticDetection::scenes(2, Domain::Target, 10);
        let mut classes = std::collections::BTreeSet::new();
        for i in 0..set.len() {
            let s = set.get(i).unwrap();
            assert_eq!(s.image.size(), [3, 300, 300]);
            assert!(!s.boxes.is_empty(), "every scene holds a car");
            // Detection classes: person 1, car 3 (Cityscapes ids 24 and 26).
            classes.extend(s.labels.iter().copied());
            assert!(s.boxes.iter().all(|b| b[0] < b[2] && b[1] < b[3] && b.iter().all(|v| (0.0..=1.0).contains(v))));
        }
        assert_eq!(classes.into_iter().collect::<Vec<_>>(), [1, 3]);
    }

    const VAL_FRAME: &str = "frankfurt/frankfurt_000000_000294_leftImg8bit.png";

    /// A Cityscapes root holding the real val frame's image alone (no gtFine/).
    fn val_image_alone(root: &Path) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("leftImg8bit/val");
        std::fs::create_dir_all(images.join("frankfurt")).unwrap();
        std::fs::copy(root.join("leftImg8bit/val").join(VAL_FRAME), images.join(VAL_FRAME)).unwrap();
        dir
    }

    #[test]
    fn a_missing_instance_map_is_named() {
        let Some(root) = mini() else { return };
        let dir = val_image_alone(&root);
        let set = DetectionSet::open("cityscapes", dir.path(), "val", 0.02, None, 300, BoxOptions::default()).unwrap();
        let err = format!("{:#}", set.get(0).unwrap_err());
        assert!(err.contains("frankfurt_000000_000294_gtFine_instanceIds.png"), "{err}");
    }

    #[test]
    fn a_set_without_boxes_needs_no_instance_maps() {
        let Some(root) = mini() else { return };
        let dir = val_image_alone(&root);
        let set = DetectionSet::open("cityscapes", dir.path(), "val", 0.02, None, 300, BoxOptions::default())
            .unwrap()
            .without_boxes();
        let raw = set.raw(0).unwrap();
        assert!(raw.frame.objects.is_empty() && raw.frame.ignored.is_empty());
        // The same image as the labelled set reads, whose frame has objects.
        let labelled = DetectionSet::open("cityscapes", &root, "val", 0.02, None, 300, BoxOptions::default()).unwrap();
        let i = (0..labelled.len()).find(|&i| labelled.names[i] == VAL_FRAME).unwrap();
        let boxed = labelled.raw(i).unwrap();
        assert!(!boxed.frame.objects.is_empty(), "the val frame has objects");
        assert_eq!((raw.frame.width, raw.frame.height), (boxed.frame.width, boxed.frame.height));
        assert!(set.get(0).unwrap().image.equal(&labelled.get(i).unwrap().image));
    }
}
