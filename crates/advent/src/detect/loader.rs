//! Training batches of a detection set: the endless, seeded, resumable order of the
//! segmentation loader ([`crate::dataset::loader::Endless`]), each frame augmented on the
//! loader's worker threads ([`Augment`]: ssd.pytorch's `SSDAugmentation`, a mirror, or
//! nothing) with random numbers seeded by its place in the order, so that a resumed run sees
//! the same frames, and (for a source set) its boxes matched to the default boxes there too.

use super::augment::{ssd_augment, Augment};
use super::cityscapes::FrameBoxes;
use super::data::{DetDataset, DetSample};
use super::matching::{match_priors, MATCH_THRESHOLD};
use super::priors::PriorConfig;
use crate::dataset::loader::{Endless, LoaderConfig, OrderState, Placed, PlacedLoadFn};
use crate::dataset::synthetic::Rng;
use crate::native::stack_for;
use anyhow::{ensure, Result};
use std::sync::Arc;
use tch::{Device, Tensor};

/// A training batch, on the CPU (in page-locked memory when the loader's `pin_memory` is on).
#[derive(Debug)]
pub struct DetBatch {
    /// `[N, 3, S, S]` float32, RGB minus ssd.pytorch's mean.
    pub images: Tensor,
    /// The frames' boxes matched to the default boxes (a loader made with `match_boxes`).
    pub targets: Option<BoxTargets>,
    pub names: Vec<String>,
}

/// Boxes matched to the default boxes: a frame's, or a batch's (one more leading dimension).
#[derive(Debug)]
pub struct BoxTargets {
    /// Encoded offsets `[(N,) P, 4]`.
    pub loc: Tensor,
    /// Labels `[(N,) P]` (int64, 0: background).
    pub labels: Tensor,
}

/// `s`'s boxes matched to `priors` (threshold 0.5) as ssd.pytorch's `match` does.
pub fn match_boxes(s: &DetSample, priors: &[[f32; 4]], variance: [f32; 2]) -> Result<BoxTargets> {
    let (loc, labels) = match_priors(&s.boxes, &s.labels, priors, MATCH_THRESHOLD, variance);
    Ok(BoxTargets {
        loc: Tensor::from_slice(loc.as_flattened()).f_reshape([-1, 4])?,
        labels: Tensor::from_slice(&labels),
    })
}

/// Frames' matched boxes as a batch, on the host for a copy to `device` (stacked straight
/// into page-locked memory for a CUDA device, [`stack_for`]).
pub fn stack_targets(frames: &[&BoxTargets], device: Device) -> Result<BoxTargets> {
    let loc: Vec<&Tensor> = frames.iter().map(|t| &t.loc).collect();
    let labels: Vec<&Tensor> = frames.iter().map(|t| &t.labels).collect();
    Ok(BoxTargets { loc: stack_for(&loc, device)?, labels: stack_for(&labels, device)? })
}

/// A frame as the loader's threads deliver it, with its matched boxes if asked for.
struct Loaded {
    sample: DetSample,
    matched: Option<BoxTargets>,
}

/// Endless batches of a detection set.
pub struct DetLoader {
    items: Endless<Loaded>,
    batch_size: usize,
    /// Where the batches go: on a CUDA device they are made in page-locked memory.
    device: Device,
}

impl DetLoader {
    /// Batches of `config.batch_size` from `start`, each frame augmented by `augment` with
    /// random numbers drawn from `(config.seed, epoch, position)` and, if `match_boxes`, its
    /// boxes matched to SSD-300's default boxes. Without `match_boxes` the frames are
    /// unlabelled (an adaptation target): any boxes the set holds are dropped before the
    /// augmentation, whose crops then never depend on them.
    pub fn new(
        dataset: Arc<dyn DetDataset>,
        config: LoaderConfig,
        start: OrderState,
        augment: Augment,
        match_boxes: bool,
    ) -> Result<Self> {
        ensure!(config.batch_size > 0, "batch size must be at least 1");
        let len = dataset.len();
        let seed = config.seed;
        let priors = PriorConfig::ssd300();
        let (default_boxes, variance) = (priors.priors(), priors.variance);
        let get: PlacedLoadFn<Loaded> = Arc::new(move |p: Placed| {
            let sample = match augment {
                Augment::None => dataset.get(p.index)?,
                Augment::Flip => {
                    let sample = dataset.get(p.index)?;
                    if coin(seed, p.at) {
                        flipped(sample)?
                    } else {
                        sample
                    }
                }
                Augment::Ssd => {
                    let mut raw = dataset.raw(p.index)?;
                    if !match_boxes {
                        // Unlabelled frames: the random crops must not depend on boxes.
                        raw.frame = FrameBoxes::empty(raw.frame.width, raw.frame.height);
                    }
                    ssd_augment(&raw.image, raw.frame, raw.name, dataset.size(), frame_seed(seed, p.at))?
                }
            };
            let matched = match_boxes.then(|| self::match_boxes(&sample, &default_boxes, variance)).transpose()?;
            Ok(Loaded { sample, matched })
        });
        Ok(DetLoader {
            items: Endless::placed(len, get, &config, start)?,
            batch_size: config.batch_size,
            device: if config.pin_memory { Device::Cuda(0) } else { Device::Cpu },
        })
    }

    pub fn next_batch(&mut self) -> Result<DetBatch> {
        let frames: Vec<Loaded> =
            self.items.next_items(self.batch_size)?.into_iter().map(|(_, _, loaded)| loaded).collect();
        let names = frames.iter().map(|f| f.sample.name.clone()).collect();
        let images = stack_for(&frames.iter().map(|f| &f.sample.image).collect::<Vec<_>>(), self.device)?;
        let targets = match frames.iter().map(|f| f.matched.as_ref()).collect::<Option<Vec<_>>>() {
            Some(matched) => Some(stack_targets(&matched, self.device)?),
            None => None,
        };
        Ok(DetBatch { images, targets, names })
    }

    pub fn state(&self) -> OrderState {
        self.items.state()
    }
}

/// The seed of the frame at `at` in the order's random numbers: a splitmix64 mix of the
/// seed, the epoch and the position (as the loader's epoch orders are seeded).
fn frame_seed(seed: u64, at: OrderState) -> u64 {
    let first = |x: u64| Rng::new(x).next_u64();
    first(first(seed) ^ at.epoch) ^ at.position
}

/// The mirror's coin: the lowest bit of the frame's first random number.
fn coin(seed: u64, at: OrderState) -> bool {
    Rng::new(frame_seed(seed, at)).next_u64() & 1 == 1
}

/// The frame mirrored left-right: the image's columns reversed, each box `[x0, y0, x1, y1]`
/// (relative) becoming `[1 − x1, y0, 1 − x0, y1]`.
pub fn flipped(mut s: DetSample) -> Result<DetSample> {
    s.image = s.image.f_flip([2])?;
    for b in &mut s.boxes {
        *b = [1.0 - b[2], b[1], 1.0 - b[0], b[3]];
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::synthetic::Domain;
    use crate::detect::data::{RawFrame, SyntheticDetection};

    #[test]
    fn flipping_mirrors_image_and_boxes() {
        let set = SyntheticDetection::scenes(3, Domain::Source, 1);
        let s = set.get(0).unwrap();
        assert!(!s.boxes.is_empty());
        let (image, boxes) = (s.image.copy(), s.boxes.clone());
        let f = flipped(s).unwrap();
        // Column 0 of the flipped image is the last column of the original (by hand: the
        // definition of a mirror), and the boxes by [1 − x1, y0, 1 − x0, y1].
        assert!(f.image.select(2, 0).equal(&image.select(2, 299)));
        for (a, b) in boxes.iter().zip(&f.boxes) {
            assert!((b[0] - (1.0 - a[2])).abs() < 1e-7 && (b[2] - (1.0 - a[0])).abs() < 1e-7);
            assert_eq!((a[1], a[3]), (b[1], b[3]));
        }
    }

    #[test]
    fn batches_resume_where_they_stopped() {
        let set: Arc<dyn DetDataset> = Arc::new(SyntheticDetection::scenes(4, Domain::Source, 3));
        let config = LoaderConfig { batch_size: 2, shuffle: true, seed: 9, workers: 1, prefetch: 2, pin_memory: false };
        for augment in [Augment::Flip, Augment::Ssd] {
            let mut a = DetLoader::new(set.clone(), config, OrderState::default(), augment, true).unwrap();
            let first = a.next_batch().unwrap();
            assert_eq!(first.images.size(), [2, 3, 300, 300]);
            let t = first.targets.unwrap();
            assert_eq!((t.loc.size(), t.labels.size()), (vec![2, 8732, 4], vec![2, 8732]));
            let state = a.state();
            let second = a.next_batch().unwrap();
            let mut b = DetLoader::new(set.clone(), config, state, augment, true).unwrap();
            let resumed = b.next_batch().unwrap();
            assert_eq!(second.names, resumed.names);
            let (t2, tr) = (second.targets.unwrap(), resumed.targets.unwrap());
            assert!(second.images.equal(&resumed.images) && t2.loc.equal(&tr.loc), "{augment:?}");
            assert!(t2.labels.equal(&tr.labels));
        }
        // Over many frames the coin comes up both ways.
        let heads = (0..64).filter(|&p| coin(9, OrderState { epoch: 0, position: p })).count();
        assert!((16..=48).contains(&heads), "{heads} of 64");
    }

    #[test]
    fn the_loader_threads_match_each_frame_to_the_default_boxes() {
        let set: Arc<dyn DetDataset> = Arc::new(SyntheticDetection::scenes(6, Domain::Source, 3));
        let config =
            LoaderConfig { batch_size: 3, shuffle: false, seed: 1, workers: 2, prefetch: 3, pin_memory: false };
        let batch = DetLoader::new(set.clone(), config, OrderState::default(), Augment::None, true)
            .unwrap()
            .next_batch()
            .unwrap();
        let t = batch.targets.unwrap();
        let prior_config = PriorConfig::ssd300();
        let priors = prior_config.priors();
        for i in 0..3 {
            // Independently: the frame's boxes through ssd.pytorch's match (matching.rs).
            let s = set.get(i).unwrap();
            let (loc, labels) = match_priors(&s.boxes, &s.labels, &priors, 0.5, prior_config.variance);
            assert!(labels.iter().any(|&l| l > 0), "frame {i} has objects");
            let got_labels = Vec::<i64>::try_from(t.labels.get(i as i64)).unwrap();
            let got_loc = Vec::<f32>::try_from(t.loc.get(i as i64).flatten(0, -1)).unwrap();
            assert_eq!(got_labels, labels, "frame {i}");
            assert_eq!(got_loc, loc.as_flattened(), "frame {i}");
        }
    }

    #[test]
    fn ssd_augmentation_changes_frames_and_none_leaves_them() {
        let set: Arc<dyn DetDataset> = Arc::new(SyntheticDetection::scenes(4, Domain::Source, 4));
        let config =
            LoaderConfig { batch_size: 4, shuffle: false, seed: 2, workers: 0, prefetch: 1, pin_memory: false };
        let batch = |augment| {
            DetLoader::new(set.clone(), config, OrderState::default(), augment, false).unwrap().next_batch().unwrap()
        };
        let plain = batch(Augment::None);
        for i in 0..4 {
            assert!(plain.images.get(i).equal(&set.get(i as usize).unwrap().image));
        }
        assert!(plain.targets.is_none(), "boxes matched though not asked for");
        let ssd = batch(Augment::Ssd);
        let changed = (0..4).filter(|&i| !ssd.images.get(i).equal(&plain.images.get(i))).count();
        // A frame comes out as evaluation prepares it only when none of its seven coins
        // draws a step and the crop keeps the whole frame (about 1 in 6 x 2^6).
        assert!(changed >= 3, "{changed} of 4 frames changed");
    }

    /// A set's frames with their boxes taken away.
    struct Unlabelled(SyntheticDetection);

    impl DetDataset for Unlabelled {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn size(&self) -> u32 {
            self.0.size()
        }
        fn raw(&self, index: usize) -> Result<RawFrame> {
            let raw = self.0.raw(index)?;
            Ok(RawFrame { frame: FrameBoxes::empty(raw.frame.width, raw.frame.height), ..raw })
        }
    }

    #[test]
    fn a_target_loader_crops_without_looking_at_boxes() {
        // The target's frames are unlabelled: with ssd.pytorch's augmentation (whose crops are
        // drawn until one overlaps a box) a target loader must give the same batch whether the
        // set has boxes or not.
        let config =
            LoaderConfig { batch_size: 8, shuffle: false, seed: 5, workers: 0, prefetch: 1, pin_memory: false };
        let scenes = || SyntheticDetection::scenes(7, Domain::Target, 8);
        let batch = |set: Arc<dyn DetDataset>, match_boxes| {
            DetLoader::new(set, config, OrderState::default(), Augment::Ssd, match_boxes).unwrap().next_batch().unwrap()
        };
        let labelled = batch(Arc::new(scenes()), false);
        let unlabelled = batch(Arc::new(Unlabelled(scenes())), false);
        assert!(labelled.images.equal(&unlabelled.images));
        // The check can fail: a source loader's crops do follow the boxes.
        let source = batch(Arc::new(scenes()), true);
        assert!(!source.images.equal(&unlabelled.images), "the boxes never changed a crop");
    }
}
