//! Detection evaluation: the network's outputs turned into boxes (softmax, decoding, per-class
//! NMS, as ssd.pytorch's `Detect`) in the pixel frame of the original image, and VOC mAP at
//! IoU 0.5 over a set ([`super::map`]).

use super::data::{DetDataset, DetSample};
use super::map::{evaluate, GroundTruth, MapConfig, MapResult};
use super::nms::{detect, DetectConfig, Detection};
use super::ssd::Ssd;
use crate::dataset::loader::{in_order, LoadFn};
use crate::native::{page_locked, to_device_async, HostCopy};
use anyhow::{ensure, Context, Result};
use indicatif::ProgressBar;
use std::path::Path;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// One image's detections from its outputs `loc` `[P, 4]` and class logits `conf` `[P, C]`,
/// boxes in pixels (inclusive maxima) of a `width x height` image.
pub fn detections(
    loc: &Tensor,
    conf: &Tensor,
    priors: &[[f32; 4]],
    cfg: &DetectConfig,
    width: u32,
    height: u32,
) -> Result<Vec<Detection>> {
    Outputs::start(loc, conf, priors.len())?.finish(priors, cfg, width, height)
}

/// An image's box offsets and class probabilities on their way to the host: on CUDA the
/// copies are queued behind the network's pass and the host goes on until it needs them.
struct Outputs {
    loc: HostCopy,
    probs: HostCopy,
}

impl Outputs {
    fn start(loc: &Tensor, conf: &Tensor, priors: usize) -> Result<Self> {
        let p = priors as i64;
        ensure!(loc.size() == [p, 4], "box offsets must be [{p}, 4], got {:?}", loc.size());
        ensure!(conf.dim() == 2 && conf.size()[0] == p, "class scores must be [{p}, C], got {:?}", conf.size());
        let probs = conf.f_softmax(-1, Kind::Float)?;
        Ok(Outputs { loc: HostCopy::start(&loc.f_to_kind(Kind::Float)?)?, probs: HostCopy::start(&probs)? })
    }

    /// Decoding and per-class NMS on the host, once the copies are done.
    fn finish(self, priors: &[[f32; 4]], cfg: &DetectConfig, width: u32, height: u32) -> Result<Vec<Detection>> {
        let loc = Vec::<f32>::try_from(self.loc.wait()?.f_flatten(0, -1)?)?;
        let loc: Vec<[f32; 4]> = loc.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
        let probs = Vec::<f32>::try_from(self.probs.wait()?.f_flatten(0, -1)?)?;
        let mut dets = detect(&loc, &probs, priors, cfg);
        for d in &mut dets {
            d.bbox = super::boxes::to_pixels(d.bbox, width, height);
        }
        Ok(dets)
    }
}

/// Each frame's detections and ground truth, in a set's order.
pub type PerFrame = (Vec<Vec<Detection>>, Vec<Vec<GroundTruth>>);

/// Every frame's detections (boxes in its pixels) and ground truth, in the set's order: the
/// frames read and prepared ahead by `workers` threads (0: on this thread), the network run
/// on one image at a time (so that a frame's detections do not depend on the others'). On
/// CUDA the frames come in page-locked memory, each pass and its outputs' copies are queued
/// without waiting, and the host decodes a frame's boxes while the device runs the next one.
pub fn detect_set(
    ssd: &Ssd,
    set: Arc<dyn DetDataset>,
    priors: &[[f32; 4]],
    cfg: &DetectConfig,
    workers: usize,
    bar: &ProgressBar,
) -> Result<PerFrame> {
    let len = set.len();
    let device = ssd.vs.device();
    let get: LoadFn<DetSample> = Arc::new(move |i| {
        let mut s = set.get(i)?;
        if device.is_cuda() {
            s.image = page_locked(&s.image).context("copying a frame into page-locked memory")?;
        }
        Ok(s)
    });
    let (mut all_dets, mut all_truth) = (Vec::with_capacity(len), Vec::with_capacity(len));
    let mut finish = |pending: Option<(Outputs, u32, u32)>| -> Result<()> {
        if let Some((outputs, w, h)) = pending {
            all_dets.push(outputs.finish(priors, cfg, w, h)?);
            bar.inc(1);
        }
        Ok(())
    };
    let mut pending = None;
    for item in in_order(len, get, workers, 2 * workers.max(1)) {
        let (_, s) = item?;
        let out = tch::no_grad(|| ssd.forward(&to_device_async(&s.image.f_unsqueeze(0)?, device)?))
            .with_context(|| format!("detecting in {}", s.name))?;
        let outputs = Outputs::start(&out.loc.f_squeeze_dim(0)?, &out.conf.f_squeeze_dim(0)?, priors.len())?;
        all_truth.push(s.frame.ground_truth());
        finish(pending.replace((outputs, s.frame.width, s.frame.height)))?;
    }
    finish(pending)?;
    Ok((all_dets, all_truth))
}

/// VOC mAP of `ssd` on every frame of `set` ([`detect_set`]).
pub fn evaluate_set(
    ssd: &Ssd,
    set: Arc<dyn DetDataset>,
    priors: &[[f32; 4]],
    cfg: &DetectConfig,
    map: &MapConfig,
    workers: usize,
    progress: bool,
) -> Result<MapResult> {
    let bar = if progress { ProgressBar::new(set.len() as u64) } else { ProgressBar::hidden() };
    let (all_dets, all_truth) = detect_set(ssd, set, priors, cfg, workers, &bar)?;
    bar.finish_and_clear();
    Ok(evaluate(&all_dets, &all_truth, (ssd.num_classes - 1) as usize, map))
}

/// A detector's VOC scores on a set, in percent: what `advent detect eval --json` writes and
/// `--sweep` caches per checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MapScores {
    /// Mean all-point AP over the classes with objects (`None`: no class has any).
    pub map: Option<f64>,
    /// Mean VOC2007 11-point AP over them.
    pub map_11: Option<f64>,
    /// All-point AP of every class, in class order (person, rider, car, ...); `None` where a
    /// class has no objects.
    pub ap: indexmap::IndexMap<String, Option<f64>>,
    /// 11-point AP of every class.
    pub ap_11: indexmap::IndexMap<String, Option<f64>>,
    /// Objects of every class (ignored regions not counted).
    pub objects: indexmap::IndexMap<String, usize>,
    /// Frames evaluated.
    pub frames: usize,
}

impl MapScores {
    /// `result`'s figures in percent, each class by its Cityscapes name.
    pub fn new(result: &MapResult, frames: usize) -> Self {
        let pct = |v: Option<f64>| v.map(|v| 100.0 * v);
        let name = |c: usize| super::cityscapes::class_name(c).unwrap_or("?").to_string();
        MapScores {
            map: pct(result.map),
            map_11: pct(result.map_11),
            ap: result.per_class.iter().map(|c| (name(c.class), pct(c.ap))).collect(),
            ap_11: result.per_class.iter().map(|c| (name(c.class), pct(c.ap_11))).collect(),
            objects: result.per_class.iter().map(|c| (name(c.class), c.num_positives)).collect(),
            frames,
        }
    }

    /// The scores as a table: a row per class (AP, 11-point AP, objects), then the means.
    pub fn table(&self) -> String {
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let mut out = format!("{:<12} {:>7} {:>7} {:>9}\n", "class", "AP", "AP(11)", "objects");
        for (name, ap) in &self.ap {
            let ap_11 = self.ap_11.get(name).copied().flatten();
            let objects = self.objects.get(name).copied().unwrap_or(0);
            out.push_str(&format!("{name:<12} {:>7} {:>7} {objects:>9}\n", pct(*ap), pct(ap_11)));
        }
        out.push_str(&format!(
            "{:<12} {:>7} {:>7}   ({} frame{})\n",
            "mAP",
            pct(self.map),
            pct(self.map_11),
            self.frames,
            if self.frames == 1 { "" } else { "s" }
        ));
        out
    }
}

/// The cache folder name of `advent detect eval --sweep` (as [`crate::eval::sweep::cache_key`]
/// for segmentation): `det-<dataset>[-<β>]-<split>`, with `-list-<stem>` and `-min<N>`
/// appended where a list file or a minimum object size is given. E.g.
/// `det-foggy-cityscapes-0.02-val`, `det-cityscapes-val-list-val-min8`.
pub fn cache_key(dataset: &str, foggy_beta: Option<f64>, split: &str, list: Option<&Path>, min_size: u32) -> String {
    let mut key = format!("det-{dataset}");
    if let Some(beta) = foggy_beta {
        key.push_str(&format!("-{beta}"));
    }
    key.push_str(&format!("-{split}"));
    if let Some(stem) = list.and_then(Path::file_stem) {
        key.push_str(&format!("-list-{}", stem.to_string_lossy()));
    }
    if min_size > 0 {
        key.push_str(&format!("-min{min_size}"));
    }
    key
}

impl crate::eval::sweep::Swept for MapScores {
    const HEADLINE: &'static str = "map";

    fn headline(&self) -> f64 {
        self.map.unwrap_or(f64::NAN)
    }

    fn columns(&self) -> Vec<(String, Option<f64>)> {
        self.ap.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::boxes::{encode, to_relative};
    use crate::detect::map::GroundTruth;
    use crate::detect::matching::{match_priors, MATCH_THRESHOLD};
    use crate::detect::priors::PriorConfig;
    use tch::Device;

    #[test]
    fn map_scores_in_percent_and_as_sweep_rows() {
        use crate::detect::map::ClassAp;
        use crate::eval::sweep::{csv_text, SweepEntry, Swept};
        let class = |class, ap: Option<f64>, n| ClassAp {
            class,
            num_positives: n,
            num_detections: 0,
            true_positives: 0,
            ap_11: ap.map(|a| a / 2.0),
            ap,
        };
        // Classes 1 (person) and 3 (car) have objects; the mean of 0.5 and 0.25 is 0.375.
        let mut per_class: Vec<ClassAp> = (1..=8).map(|c| class(c, None, 0)).collect();
        per_class[0] = class(1, Some(0.5), 2);
        per_class[2] = class(3, Some(0.25), 5);
        let r = MapResult { per_class, map: Some(0.375), map_11: Some(0.1875) };
        let s = MapScores::new(&r, 4);
        assert_eq!((s.map, s.map_11, s.frames), (Some(37.5), Some(18.75), 4));
        assert_eq!(
            s.ap.keys().collect::<Vec<_>>(),
            ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
        );
        assert_eq!((s.ap["car"], s.ap_11["person"], s.objects["car"]), (Some(25.0), Some(25.0), 5));
        let table = s.table();
        assert!(table.contains("person") && table.contains("37.5") && table.contains("(4 frames)"), "{table}");
        assert!(MapScores::new(&r, 1).table().ends_with("(1 frame)\n"));
        assert_eq!(cache_key("foggy-cityscapes", Some(0.02), "val", None, 0), "det-foggy-cityscapes-0.02-val");
        assert_eq!(
            cache_key("cityscapes", None, "val", Some(Path::new("lists/val.txt")), 8),
            "det-cityscapes-val-list-val-min8"
        );
        let csv = csv_text(&[SweepEntry { iteration: 7, scores: s.clone(), cached: false }]);
        assert_eq!(
            csv,
            "iteration,map,person,rider,car,truck,bus,train,motorcycle,bicycle\n7,37.5000,50.0000,,25.0000,,,,,\n"
        );
        // No objects at all: no mAP, ranked below any.
        let none = MapScores::new(&MapResult { per_class: vec![], map: None, map_11: None }, 1);
        assert!(none.headline().is_nan());
    }

    #[test]
    fn outputs_that_encode_the_truth_exactly_score_ap_1() {
        // Two objects in a 600x300 image, pixel boxes with inclusive maxima.
        let (w, h) = (600u32, 300u32);
        let truth = [(2usize, [60.0f32, 90.0, 209.0, 179.0]), (1, [400.0, 30.0, 439.0, 149.0])];
        let config = PriorConfig::default();
        let priors = config.priors();
        let rel: Vec<[f32; 4]> = truth.iter().map(|(_, b)| to_relative(*b, w, h)).collect();
        let labels: Vec<i64> = truth.iter().map(|(c, _)| *c as i64).collect();
        let (_, matched) = match_priors(&rel, &labels, &priors, MATCH_THRESHOLD, config.variance);
        // Every matched prior predicts its object's exact box with a confident class; every
        // other prior is confidently background.
        let mut loc = vec![[0.0f32; 4]; priors.len()];
        let mut conf = vec![0.0f32; priors.len() * 3];
        for (i, &label) in matched.iter().enumerate() {
            conf[i * 3 + label as usize] = 10.0;
            if label > 0 {
                let (_, b) = truth.iter().find(|(c, _)| *c as i64 == label).unwrap();
                loc[i] = encode(to_relative(*b, w, h), priors[i], config.variance);
            }
        }
        let loc = Tensor::from_slice(loc.as_flattened()).reshape([-1, 4]);
        let conf = Tensor::from_slice(&conf).reshape([-1, 3]);
        let dets = detections(&loc, &conf, &priors, &DetectConfig::default(), w, h).unwrap();
        // NMS leaves one box per object (the matched priors' boxes are identical), in pixels.
        let confident: Vec<&Detection> = dets.iter().filter(|d| d.score > 0.5).collect();
        assert_eq!(confident.len(), 2, "{confident:?}");
        for d in &confident {
            let (_, b) = truth.iter().find(|(c, _)| *c == d.class).unwrap();
            for k in 0..4 {
                assert!((d.bbox[k] - b[k]).abs() < 0.05, "{:?} vs {b:?}", d.bbox);
            }
        }
        let gt: Vec<GroundTruth> =
            truth.iter().map(|&(class, bbox)| GroundTruth { class, bbox, difficult: false }).collect();
        let result = evaluate(&[dets], &[gt], 2, &MapConfig::default());
        assert_eq!(result.map, Some(1.0));
        assert_eq!(result.map_11, Some(1.0));
    }

    #[test]
    fn frames_read_ahead_keep_their_order_and_their_detections() {
        use crate::dataset::synthetic::Domain;
        use crate::detect::data::SyntheticDetection;
        let set = Arc::new(SyntheticDetection::scenes(5, Domain::Target, 6));
        tch::manual_seed(3);
        let ssd = Ssd::with_width(9, 8, Device::Cpu).unwrap();
        let (priors, cfg, bar) = (PriorConfig::default().priors(), DetectConfig::default(), ProgressBar::hidden());
        // Each frame alone, in order, without the loader (the independent computation).
        let (mut alone, mut truth) = (Vec::new(), Vec::new());
        for i in 0..set.len() {
            let s = set.get(i).unwrap();
            let out = tch::no_grad(|| ssd.forward(&s.image.unsqueeze(0))).unwrap();
            let (w, h) = (s.frame.width, s.frame.height);
            alone.push(detections(&out.loc.squeeze_dim(0), &out.conf.squeeze_dim(0), &priors, &cfg, w, h).unwrap());
            truth.push(s.frame.ground_truth());
        }
        // The frames differ, so a frame scored with another's detections or truth would show.
        assert!(alone.windows(2).all(|p| p[0] != p[1]), "two consecutive frames gave the same detections");
        assert!(truth.windows(2).any(|p| p[0] != p[1]));
        for workers in [0, 3] {
            let (dets, gt) = detect_set(&ssd, set.clone(), &priors, &cfg, workers, &bar).unwrap();
            assert!(dets == alone && gt == truth, "{workers} workers");
        }
    }

    #[test]
    fn an_untrained_network_on_the_real_frame() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cityscapes-mini");
        if !root.join("gtFine/val").is_dir() {
            return;
        }
        let set =
            crate::detect::data::DetectionSet::open("cityscapes", &root, "val", 0.02, None, 300, Default::default())
                .unwrap();
        tch::manual_seed(0);
        let ssd = Ssd::new(9, Device::Cpu).unwrap();
        let priors = PriorConfig::default().priors();
        let r = evaluate_set(&ssd, Arc::new(set), &priors, &DetectConfig::default(), &MapConfig::default(), 1, false)
            .unwrap();
        // The frame's 7 objects are counted as positives; an untrained network finds few.
        assert_eq!(r.per_class.iter().map(|c| c.num_positives).sum::<usize>(), 7);
        let map = r.map.unwrap();
        assert!((0.0..=1.0).contains(&map) && map < 0.5, "{map}");
    }
}
