//! SSD-300 on VGG-16 as `amdegroot/ssd.pytorch` builds it (`ssd.py`, the code the paper's
//! detection extension was built on, SPEC §8.4), with its parameter names, so that its
//! checkpoints and its ImageNet initialisation (`vgg16_reducedfc.pth`) load as they are.
//!
//! - `vgg.N`: VGG-16's convolutions at the indices of ssd.pytorch's `vgg` `ModuleList`
//!   (each followed by a ReLU that takes the next index), pool3 in ceil mode, then pool5 as
//!   a 3x3 stride-1 max-pool, `vgg.31` = fc6 reduced to a 3x3 convolution of dilation 6
//!   (1024 channels) and `vgg.33` = fc7 as a 1x1 convolution.
//! - `L2Norm.weight`: conv4_3's features are L2-normalised over channels and scaled per
//!   channel (initialised to 20).
//! - `extras.0..7`: alternately 1x1 and 3x3 convolutions, the 3x3 ones of `extras.1` and
//!   `extras.3` with stride 2 and padding 1, each followed by a ReLU; every second one is a
//!   source.
//! - `loc.k`, `conf.k`: a 3x3 convolution (padding 1) per source: 4 box offsets and
//!   `num_classes` scores per default box, with 4, 6, 6, 6, 4, 4 boxes per cell on the
//!   38, 19, 10, 5, 3, 1 maps of a 300x300 input: 8732 boxes.
//!
//! New layers start as ssd.pytorch's `weights_init`: Xavier-uniform weights, zero biases.

use crate::model::layers::{Conv2d, ConvInit, ConvSpec};
use crate::weights::StateDict;
use anyhow::{bail, ensure, Context, Result};
use tch::nn::{Init, Path, VarStore};
use tch::{Device, Kind, Tensor};

/// Default boxes per feature-map cell, one entry per source (ssd.pytorch's `mbox['300']`).
pub const BOXES_PER_CELL: [i64; 6] = [4, 6, 6, 6, 4, 4];

/// (index in `vgg`, in, out) of VGG-16's thirteen 3x3 convolutions, padding 1.
const VGG_CONVS: [(i64, i64, i64); 13] = [
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
    (24, 512, 512),
    (26, 512, 512),
    (28, 512, 512),
];
/// Max-pools after these `vgg` indices' ReLUs, `true` for ceil mode (pool3).
const VGG_POOLS: [(i64, bool); 4] = [(2, false), (7, false), (14, true), (21, false)];
/// conv4_3, whose normalised output is the first source.
const CONV4_3: i64 = 21;

/// (in, out, kernel, stride, padding) of the extra layers for SSD-300.
const EXTRAS: [(i64, i64, i64, i64, i64); 8] = [
    (1024, 256, 1, 1, 0),
    (256, 512, 3, 2, 1),
    (512, 128, 1, 1, 0),
    (128, 256, 3, 2, 1),
    (256, 128, 1, 1, 0),
    (128, 256, 3, 1, 0),
    (256, 128, 1, 1, 0),
    (128, 256, 3, 1, 0),
];

/// Channels of the six sources: conv4_3, fc7, and every second extra layer.
const SOURCE_CHANNELS: [i64; 6] = [512, 1024, 512, 256, 256, 256];

/// Width of the paper's SSD-300: channels of VGG-16's first convolution.
pub const FULL_WIDTH: i64 = 64;

/// The network's outputs for a batch.
#[derive(Debug)]
pub struct SsdOutput {
    /// `[N, P, 4]` encoded box offsets (see `detect::boxes`).
    pub loc: Tensor,
    /// `[N, P, num_classes]` class logits, background first.
    pub conf: Tensor,
    /// The class logits per source before flattening, `[N, boxes_k · num_classes, H_k, W_k]`
    /// (38, 19, 10, 5, 3, 1 for 300x300): the maps the adversarial adaptation looks at.
    pub conf_maps: Vec<Tensor>,
}

#[derive(Debug)]
pub struct Ssd {
    pub vs: VarStore,
    /// Object classes plus the background.
    pub num_classes: i64,
    vgg: Vec<(i64, Conv2d)>,
    fc6: Conv2d,
    fc7: Conv2d,
    l2norm: Tensor,
    extras: Vec<Conv2d>,
    loc: Vec<Conv2d>,
    conf: Vec<Conv2d>,
}

impl Ssd {
    /// SSD-300 for `num_classes` (background included, ssd.pytorch's convention), drawn on
    /// the CPU from libtorch's generator (seed it with `tch::manual_seed`) and then moved.
    pub fn new(num_classes: i64, device: Device) -> Result<Self> {
        Self::with_width(num_classes, FULL_WIDTH, device)
    }

    /// SSD-300 with every channel count scaled by `width / 64` (`width` = 64 is the paper's
    /// network; the demo's 8 has 1/64 of its arithmetic), the same layers, names, default
    /// boxes and outputs otherwise.
    pub fn with_width(num_classes: i64, width: i64, device: Device) -> Result<Self> {
        ensure!(num_classes >= 2, "SSD needs the background and at least one class, got {num_classes} classes");
        ensure!((1..=FULL_WIDTH).contains(&width), "SSD width must be in 1..=64, got {width}");
        let w = |c: i64| if c == 3 { 3 } else { (c * width / FULL_WIDTH).max(1) };
        let mut vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let v = root.sub("vgg");
        let conv = |p: Path, spec: ConvSpec, init: ConvInit| Conv2d::new(p, spec, init);
        let vgg = VGG_CONVS
            .iter()
            .map(|&(i, c_in, c_out)| {
                (i, conv(v.sub(i), ConvSpec::new(w(c_in), w(c_out), 3).padding(1), ConvInit::KaimingFanOut))
            })
            .collect();
        let fc6 = conv(v.sub(31), ConvSpec::new(w(512), w(1024), 3).dilated(6), ConvInit::XavierUniform);
        let fc7 = conv(v.sub(33), ConvSpec::new(w(1024), w(1024), 1), ConvInit::XavierUniform);
        let l2norm = root.sub("L2Norm").var("weight", &[w(512)], Init::Const(20.0));
        let e = root.sub("extras");
        let extras = EXTRAS
            .iter()
            .enumerate()
            .map(|(i, &(c_in, c_out, k, s, p))| {
                conv(e.sub(i), ConvSpec::new(w(c_in), w(c_out), k).stride(s).padding(p), ConvInit::XavierUniform)
            })
            .collect();
        let head = |name: &str, per_box: i64| -> Vec<Conv2d> {
            let h = root.sub(name);
            SOURCE_CHANNELS
                .iter()
                .zip(BOXES_PER_CELL)
                .enumerate()
                .map(|(k, (&c, n))| {
                    conv(h.sub(k), ConvSpec::new(w(c), n * per_box, 3).padding(1), ConvInit::XavierUniform)
                })
                .collect()
        };
        let (loc, conf) = (head("loc", 4), head("conf", num_classes));
        if device != Device::Cpu {
            vs.set_device(device);
        }
        Ok(Ssd { vs, num_classes, vgg, fc6, fc7, l2norm, extras, loc, conf })
    }

    /// `[N, 3, 300, 300]` (BGR, mean subtracted, as the segmentation networks take it) →
    /// box offsets and class logits of every default box.
    pub fn forward(&self, x: &Tensor) -> Result<SsdOutput> {
        let size = x.size();
        ensure!(size.len() == 4 && size[1] == 3, "SSD input must be [N, 3, H, W], got {size:?}");
        let mut x = x.shallow_clone();
        let mut sources = Vec::with_capacity(6);
        for (i, conv) in &self.vgg {
            x = conv.forward(&x)?.f_relu()?;
            if *i == CONV4_3 {
                sources.push(self.l2_normalize(&x)?);
            }
            if let Some(&(_, ceil)) = VGG_POOLS.iter().find(|(j, _)| j == i) {
                x = x.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], ceil)?;
            }
        }
        x = x.f_max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)?; // pool5
        x = self.fc6.forward(&x)?.f_relu()?;
        x = self.fc7.forward(&x)?.f_relu()?;
        sources.push(x.shallow_clone());
        for (k, conv) in self.extras.iter().enumerate() {
            x = conv.forward(&x)?.f_relu()?;
            if k % 2 == 1 {
                sources.push(x.shallow_clone());
            }
        }
        let n = size[0];
        let apply = |heads: &[Conv2d]| -> Result<Vec<Tensor>> {
            sources.iter().zip(heads).map(|(s, h)| h.forward(s)).collect()
        };
        let flatten = |maps: &[Tensor], per_box: i64| -> Result<Tensor> {
            let parts =
                maps.iter().map(|m| Ok(m.f_permute([0, 2, 3, 1])?.f_reshape([n, -1])?)).collect::<Result<Vec<_>>>()?;
            Ok(Tensor::f_cat(&parts, 1)?.f_reshape([n, -1, per_box])?)
        };
        let conf_maps = apply(&self.conf)?;
        Ok(SsdOutput { loc: flatten(&apply(&self.loc)?, 4)?, conf: flatten(&conf_maps, self.num_classes)?, conf_maps })
    }

    /// ssd.pytorch's `L2Norm`: `weight[c] · x / (‖x‖₂ over channels + 1e-10)`.
    fn l2_normalize(&self, x: &Tensor) -> Result<Tensor> {
        let norm = x.f_pow_tensor_scalar(2)?.f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?.f_sqrt()?;
        let scaled = x.f_div(&norm.f_add_scalar(1e-10)?)?;
        Ok(scaled.f_mul(&self.l2norm.f_reshape([1, -1, 1, 1])?)?)
    }

    /// The class count (background included) and VGG width of an SSD state dict, from
    /// `conf.0.weight` and `vgg.0.weight`; `None` if it has no `conf.0.weight`.
    pub fn shape_of(dict: &crate::weights::StateDict) -> Option<(i64, i64)> {
        let conf0 = dict.get("conf.0.weight").map(|t| t.size()).filter(|s| !s.is_empty())?;
        Some((conf0[0] / BOXES_PER_CELL[0], dict.get("vgg.0.weight").map_or(FULL_WIDTH, |t| t.size()[0])))
    }

    /// Builds the network a checkpoint (ours or ssd.pytorch's `state_dict()`) describes — the
    /// class count from `conf.0.weight` — and loads it: every key must be there with its
    /// shape, and no value NaN or infinite (the errors name the file and the keys).
    pub fn from_checkpoint(path: &std::path::Path, device: Device) -> Result<Self> {
        let dict = crate::weights::load(path)?;
        let context = || format!("loading {}", path.display());
        let Some((num_classes, width)) = Self::shape_of(&dict) else {
            let segmentation = ["layer4.0.conv1.weight", "layer6.conv2d_list.0.weight", "features.0.weight"];
            let hint = match segmentation.iter().any(|k| dict.contains(k)) {
                true => {
                    ": its keys are a DeepLab-V2 segmentation network's (`advent eval` and `advent predict` take it)"
                }
                false => "",
            };
            bail!("{}: not an SSD checkpoint (no `conf.0.weight`){hint}", path.display());
        };
        let ssd = Ssd::with_width(num_classes, width, device).with_context(context)?;
        crate::model::load_into(&ssd.vs, dict, crate::model::LoadOptions::default()).with_context(context)?;
        Ok(ssd)
    }

    /// Loads an ImageNet initialisation into the VGG part (see [`imagenet_key`]):
    /// ssd.pytorch's `vgg16_reducedfc.pth` (conv1_1–conv5_3, fc6, fc7) or a torchvision VGG-16
    /// (conv1_1–conv5_3; its fully connected layers are skipped). The rest keeps its
    /// initialisation. Every convolution of conv1_1–conv5_3 must be in the file with its shape.
    /// Returns the number of tensors loaded.
    pub fn load_imagenet(&self, path: &std::path::Path) -> Result<usize> {
        self.load_imagenet_dict(&crate::weights::load(path)?, path)
    }

    /// [`Ssd::load_imagenet`] of a state dict already read from `path` (named in errors).
    pub fn load_imagenet_dict(&self, dict: &StateDict, path: &std::path::Path) -> Result<usize> {
        let context = || format!("loading {}", path.display());
        let mut vgg = StateDict::new();
        for (k, t) in dict.iter() {
            let key = imagenet_key(k);
            if key.starts_with("vgg.") {
                vgg.insert(key, t.shallow_clone());
            }
        }
        let options = crate::model::LoadOptions { allow_partial: true };
        let report = crate::model::load_into(&self.vs, vgg, options).with_context(context)?;
        let missing: Vec<&String> = report
            .missing
            .iter()
            .filter(|k| VGG_CONVS.iter().any(|(i, _, _)| k.starts_with(&format!("vgg.{i}."))))
            .collect();
        ensure!(
            report.mismatched.is_empty() && report.unexpected.is_empty() && missing.is_empty(),
            "{}: not a VGG-16 ImageNet initialisation for SSD (missing {missing:?}, unexpected {:?}, wrong shape {:?})",
            path.display(),
            report.unexpected,
            report.mismatched.iter().map(|(k, _, _)| k).collect::<Vec<_>>()
        );
        Ok(report.loaded)
    }

    /// The parameters, keyed as ssd.pytorch's `state_dict()`.
    pub fn state_dict(&self) -> StateDict {
        StateDict::from_var_store(&self.vs)
    }
}

/// The keys of an ImageNet initialisation, renamed to ours: ssd.pytorch's
/// `vgg16_reducedfc.pth` holds the `vgg` list alone (`0.weight` ... `33.bias`, fc6/fc7 already
/// reduced); torchvision's `vgg16` (`features.N`) gives conv1_1–conv5_3, its fully connected
/// layers being of another shape (fc6/fc7 then keep their initialisation). Other keys are
/// returned unchanged.
pub fn imagenet_key(key: &str) -> String {
    let rest = key.strip_prefix("features.").unwrap_or(key);
    match rest.split_once('.') {
        Some((idx, _)) if idx.parse::<u32>().is_ok() => format!("vgg.{rest}"),
        _ => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssd300_gives_8732_boxes_and_reference_names() {
        tch::manual_seed(0);
        let net = Ssd::new(9, Device::Cpu).unwrap();
        // A batch of one 300x300 image: 38²·4 + 19²·6 + 10²·6 + 5²·6 + 3²·4 + 1·4 = 8732.
        let out = tch::no_grad(|| net.forward(&Tensor::zeros([1, 3, 300, 300], (Kind::Float, Device::Cpu)))).unwrap();
        assert_eq!(out.loc.size(), [1, 8732, 4]);
        assert_eq!(out.conf.size(), [1, 8732, 9]);
        let dict = net.state_dict();
        let names: Vec<&str> = dict.names().collect();
        // ssd.pytorch's keys (ssd.py: vgg / L2Norm / extras / loc / conf ModuleLists).
        for key in ["vgg.0.weight", "vgg.21.bias", "vgg.28.weight", "vgg.31.weight", "vgg.33.bias", "L2Norm.weight"] {
            assert!(names.contains(&key), "{key} missing");
        }
        assert_eq!(dict.get("vgg.31.weight").unwrap().size(), [1024, 512, 3, 3]);
        assert_eq!(dict.get("extras.7.weight").unwrap().size(), [256, 128, 3, 3]);
        assert_eq!(dict.get("loc.1.weight").unwrap().size(), [24, 1024, 3, 3]);
        assert_eq!(dict.get("conf.5.weight").unwrap().size(), [36, 256, 3, 3]);
        // 15 convolutions in vgg + 8 extras + 12 heads, weight and bias each, and L2Norm.
        assert_eq!(names.len(), 2 * (15 + 8 + 12) + 1);
    }

    #[test]
    fn l2norm_scales_unit_channel_vectors() {
        let net = Ssd::new(2, Device::Cpu).unwrap();
        // Channel vector (3, 4, 0, ...) at every pixel: norm 5, so (0.6, 0.8) · 20.
        let x = Tensor::zeros([1, 512, 2, 2], (Kind::Float, Device::Cpu));
        let _ = x.narrow(1, 0, 1).fill_(3.0);
        let _ = x.narrow(1, 1, 1).fill_(4.0);
        let y = tch::no_grad(|| net.l2_normalize(&x)).unwrap();
        assert!((y.double_value(&[0, 0, 1, 1]) - 12.0).abs() < 1e-5);
        assert!((y.double_value(&[0, 1, 0, 0]) - 16.0).abs() < 1e-5);
        assert_eq!(y.double_value(&[0, 2, 0, 0]), 0.0);
    }

    #[test]
    fn a_saved_network_loads_back_and_a_segmentation_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssd.pth");
        tch::manual_seed(4);
        let net = Ssd::new(3, Device::Cpu).unwrap();
        crate::weights::save(&net.state_dict(), &path).unwrap();
        let back = Ssd::from_checkpoint(&path, Device::Cpu).unwrap();
        assert_eq!(back.num_classes, 3);
        for (k, v) in net.state_dict().iter() {
            assert!(back.state_dict().get(k).unwrap().equal(v), "{k}");
        }
        let seg = dir.path().join("seg.pth");
        let config = crate::model::ModelConfig {
            arch: crate::model::Arch::DeepLabV2Tiny,
            ..crate::model::ModelConfig::deeplabv2_r101(19)
        };
        crate::weights::save(&crate::model::SegModel::new(config, Device::Cpu).unwrap().state_dict(), &seg).unwrap();
        let err = format!("{:#}", Ssd::from_checkpoint(&seg, Device::Cpu).unwrap_err());
        assert!(err.contains("not an SSD checkpoint") && err.contains("seg.pth"), "{err}");
    }

    #[test]
    fn imagenet_initialisations_load_into_the_vgg_part() {
        let dir = tempfile::tempdir().unwrap();
        tch::manual_seed(8);
        let donor = Ssd::new(9, Device::Cpu).unwrap();
        let donor_vgg: Vec<(String, Tensor)> = donor
            .state_dict()
            .iter()
            .filter_map(|(k, t)| Some((k.strip_prefix("vgg.")?.to_string(), t.shallow_clone())))
            .collect();
        // ssd.pytorch's vgg16_reducedfc.pth: the `vgg` list alone, bare indices, fc6/fc7 too.
        let mut reduced = StateDict::new();
        for (k, t) in &donor_vgg {
            reduced.insert(k.clone(), t.shallow_clone());
        }
        crate::weights::save(&reduced, &dir.path().join("reduced.pth")).unwrap();
        let net = Ssd::new(9, Device::Cpu).unwrap();
        assert_eq!(net.load_imagenet(&dir.path().join("reduced.pth")).unwrap(), 30);
        let (a, b) = (net.state_dict(), donor.state_dict());
        for key in ["vgg.0.weight", "vgg.28.bias", "vgg.31.weight", "vgg.33.bias"] {
            assert!(a.get(key).unwrap().equal(b.get(key).unwrap()), "{key}");
        }
        assert!(!a.get("conf.0.weight").unwrap().equal(b.get("conf.0.weight").unwrap()), "heads keep their init");
        // torchvision's layout: features.N for the convolutions, a classifier of another shape.
        let mut tv = StateDict::new();
        for (k, t) in donor_vgg.iter().filter(|(k, _)| !k.starts_with("31.") && !k.starts_with("33.")) {
            tv.insert(format!("features.{k}"), t.shallow_clone());
        }
        tv.insert("classifier.0.weight", Tensor::zeros([8, 4], (Kind::Float, Device::Cpu)));
        crate::weights::save(&tv, &dir.path().join("tv.pth")).unwrap();
        let net = Ssd::new(9, Device::Cpu).unwrap();
        assert_eq!(net.load_imagenet(&dir.path().join("tv.pth")).unwrap(), 26);
        // Without conv5_3 it is not an initialisation.
        tv.remove("features.28.weight");
        crate::weights::save(&tv, &dir.path().join("short.pth")).unwrap();
        let err = format!("{:#}", net.load_imagenet(&dir.path().join("short.pth")).unwrap_err());
        assert!(err.contains("vgg.28.weight") && err.contains("short.pth"), "{err}");
    }

    #[test]
    fn imagenet_keys_map_to_the_vgg_list() {
        assert_eq!(imagenet_key("0.weight"), "vgg.0.weight");
        assert_eq!(imagenet_key("33.bias"), "vgg.33.bias");
        assert_eq!(imagenet_key("features.28.weight"), "vgg.28.weight");
        assert_eq!(imagenet_key("classifier.0.weight"), "classifier.0.weight");
    }
}
