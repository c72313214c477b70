//! Putting a checkpoint's tensors into a network: key translation for the usual
//! initialisations, architecture detection, and a strict check that reports every missing,
//! unexpected or mis-shaped key at once.

use super::{Arch, AsppSum, ModelConfig};
use crate::weights::{natural_cmp, StateDict};
use anyhow::{bail, Result};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use tch::nn::VarStore;
use tch::Tensor;

/// What a checkpoint file holds, judged from its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsKind {
    /// A whole model saved with `state_dict()` (released ADVENT checkpoints, ours).
    Model,
    /// `DeepLab_resnet_pretrained_imagenet.pth` (and AdaptSegNet's
    /// `DeepLab_resnet_pretrained_init-*.pth`): keys prefixed `Scale.`. As the reference
    /// loader does, the prefix is stripped and the init's `layer5` is skipped; both
    /// classifiers keep their fresh initialisation.
    DeepLabInit,
    /// A torchvision-layout VGG-16 (`features.N`, `classifier.{0,3,6}`), e.g. the Caffe
    /// conversion AdaptSegNet starts from: conv1_1..conv5_3 are loaded (indices after pool4
    /// shift down by one, pool4 being removed), fc6/fc7 and the classifier keep their
    /// initialisation, the fully connected layers are skipped.
    Vgg16ImageNet,
}

/// Options of [`load_into`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Load what matches and report the rest instead of failing.
    pub allow_partial: bool,
}

/// What a load did.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub kind: Option<WeightsKind>,
    /// Parameters and buffers copied from the file.
    pub loaded: usize,
    /// Network keys the file did not provide (beyond those its kind leaves at their
    /// initialisation, which are listed in `kept_init`).
    pub missing: Vec<String>,
    /// File keys the network has no place for.
    pub unexpected: Vec<String>,
    /// `(key, shape in file, shape in network)`.
    pub mismatched: Vec<(String, Vec<i64>, Vec<i64>)>,
    /// Keys dropped on purpose by the translation of an initialisation file.
    pub dropped: Vec<String>,
    /// Network keys that keep their initialisation because the file's kind has none.
    pub kept_init: Vec<String>,
}

impl LoadReport {
    fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// One item per kind of problem: `missing in file (2): a, b`.
    fn problems(&self) -> Vec<String> {
        let mismatched: Vec<String> =
            self.mismatched.iter().map(|(k, f, n)| format!("{k} (file {f:?}, network {n:?})")).collect();
        [("missing in file", &self.missing), ("unexpected in file", &self.unexpected), ("wrong shape", &mismatched)]
            .into_iter()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(what, keys)| format!("{what} ({}): {}", keys.len(), abbreviate(keys)))
            .collect()
    }

    /// One indented line per kind of problem, for `--allow-partial` notices.
    pub fn describe_problems(&self) -> String {
        self.problems().iter().map(|p| format!("\n  {p}")).collect()
    }
}

fn abbreviate(keys: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = keys.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > SHOWN {
        let _ = write!(s, ", … and {} more", keys.len() - SHOWN);
    }
    s
}

/// `num_batches_tracked` is absent from files written before PyTorch 0.4.1; PyTorch itself
/// accepts their absence, and so do we.
fn is_optional_buffer(key: &str) -> bool {
    key.ends_with(".num_batches_tracked")
}

/// Classifies a file and rewrites its keys to the network's names.
fn translate(dict: &StateDict) -> (WeightsKind, StateDict, Vec<String>) {
    let scaled = !dict.is_empty() && dict.names().all(|k| k.starts_with("Scale."));
    if scaled {
        let mut out = StateDict::new();
        let mut dropped = Vec::new();
        for (k, t) in dict.iter() {
            let key = &k["Scale.".len()..];
            if key.split('.').next() == Some("layer5") {
                dropped.push(k.to_string());
            } else {
                out.insert(key, t.shallow_clone());
            }
        }
        return (WeightsKind::DeepLabInit, out, dropped);
    }
    let vgg_imagenet = dict.contains("features.28.weight") && dict.contains("classifier.0.weight");
    if vgg_imagenet {
        let mut out = StateDict::new();
        let mut dropped = Vec::new();
        for (k, t) in dict.iter() {
            let mut parts = k.splitn(3, '.');
            match (parts.next(), parts.next().and_then(|i| i.parse::<i64>().ok()), parts.next()) {
                (Some("features"), Some(i), Some(rest)) if i != 23 && i < 30 => {
                    let j = if i > 23 { i - 1 } else { i };
                    out.insert(format!("features.{j}.{rest}"), t.shallow_clone());
                }
                _ => dropped.push(k.to_string()),
            }
        }
        return (WeightsKind::Vgg16ImageNet, out, dropped);
    }
    let mut out = StateDict::new();
    for (k, t) in dict.iter() {
        out.insert(k, t.shallow_clone());
    }
    (WeightsKind::Model, out, Vec::new())
}

/// Network keys that an initialisation file of `kind` leaves untouched.
fn keeps_init(kind: WeightsKind, key: &str) -> bool {
    let first = key.split('.').next().unwrap_or("");
    match kind {
        WeightsKind::Model => false,
        WeightsKind::DeepLabInit => first == "layer5" || first == "layer6",
        WeightsKind::Vgg16ImageNet => {
            first == "classifier" || key.starts_with("features.29.") || key.starts_with("features.31.")
        }
    }
}

/// Copies a checkpoint's tensors into `vs`, translating the keys of the known
/// initialisation files, converting dtypes to the network's and checking shapes.
///
/// Without `allow_partial`, any missing, unexpected or mis-shaped key is an error that lists
/// them all and leaves `vs` unchanged; so is, always, a NaN or infinite value in a tensor
/// loaded (the error names the first such tensor).
pub fn load_into(vs: &VarStore, dict: StateDict, options: LoadOptions) -> Result<LoadReport> {
    let (kind, dict, dropped) = translate(&dict);
    let mut report = LoadReport { kind: Some(kind), dropped, ..Default::default() };
    let vars: HashMap<String, Tensor> = vs.variables();
    let mut plan: Vec<(&str, Tensor, Tensor)> = Vec::new();
    for (key, src) in dict.iter() {
        match vars.get(key) {
            None => report.unexpected.push(key.to_string()),
            Some(dst) if dst.size() != src.size() => report.mismatched.push((key.to_string(), src.size(), dst.size())),
            Some(dst) => plan.push((key, dst.shallow_clone(), src.shallow_clone())),
        }
    }
    let present: BTreeSet<&str> = dict.names().collect();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by(|a, b| natural_cmp(a, b));
    for key in names {
        if present.contains(key.as_str()) || is_optional_buffer(key) {
            continue;
        }
        if keeps_init(kind, key) {
            report.kept_init.push(key.clone());
        } else {
            report.missing.push(key.clone());
        }
    }
    if !report.is_complete() && !options.allow_partial {
        bail!("the checkpoint does not fit the network: {}", report.problems().join("; "));
    }
    // A NaN or infinity would otherwise only show later, as garbage predictions or a NaN loss.
    for (key, _, src) in &plan {
        if src.is_floating_point() && src.f_isfinite()?.f_all()?.int64_value(&[]) == 0 {
            bail!("tensor `{key}` holds NaN or infinite values");
        }
    }
    tch::no_grad(|| -> Result<()> {
        for (_, mut dst, src) in plan {
            let src = src.f_to_kind(dst.kind())?.f_to_device(dst.device())?;
            dst.f_copy_(&src)?;
        }
        Ok(())
    })?;
    report.loaded = dict.len() - report.unexpected.len() - report.mismatched.len();
    Ok(report)
}

/// Reads architecture, class count and levels from a checkpoint's keys (after the
/// translation of initialisation files).
pub(crate) fn detect_config(dict: &StateDict) -> Result<ModelConfig> {
    let (kind, dict, _) = translate(dict);
    let classes_of = |key: &str| dict.get(key).map(|t| t.size()).filter(|s| s.len() == 4).map(|s| s[0]);
    let is_vgg = dict.contains("features.0.weight");
    let arch = if is_vgg {
        Arch::DeepLabV2Vgg16
    } else if dict.contains("layer4.0.conv1.weight") {
        let blocks = dict
            .names()
            .filter_map(|k| k.strip_prefix("layer3.")?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |m| m + 1);
        let width = dict.get("conv1.weight").map(|t| t.size()[0]);
        let fits = |a: &&Arch| a.resnet_layout().is_some_and(|(b, w)| b[2] == blocks && Some(w) == width);
        match Arch::ALL.iter().find(fits) {
            Some(a) => *a,
            None => bail!(
                "a ResNet with {blocks} blocks in layer3 and stem width {width:?} is none of \
                 ResNet-101 (23, 64), ResNet-50 (6, 64), tiny (1, 16)"
            ),
        }
    } else if dict.contains("conf.0.weight") && dict.contains("L2Norm.weight") {
        bail!(
            "the keys are an SSD detector's, not a DeepLab-V2 network's \
             (`advent detect eval` and `advent detect predict` take it)"
        )
    } else {
        bail!(
            "the keys are not those of a DeepLab-V2 network (no `layer4.*` nor `features.*`; first keys: {})",
            abbreviate(&dict.names().take(5).map(String::from).collect::<Vec<_>>())
        )
    };
    let main_key = if is_vgg { "classifier.conv2d_list.0.weight" } else { "layer6.conv2d_list.0.weight" };
    let num_classes = match classes_of(main_key) {
        Some(c) => c,
        None if kind != WeightsKind::Model => {
            bail!("an initialisation file has no classifier: give the class count (--num-classes)")
        }
        None => bail!("no `{main_key}` in the checkpoint: cannot tell the number of classes"),
    };
    Ok(ModelConfig {
        arch,
        num_classes,
        multi_level: dict.contains("layer5.conv2d_list.0.weight"),
        aspp_sum: AsppSum::AllFour,
    })
}

/// What a user may impose on the network built for a checkpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelOverrides {
    pub arch: Option<Arch>,
    pub num_classes: Option<i64>,
    pub aspp_sum: AsppSum,
}

/// The network for a checkpoint: its detected configuration, with the overrides applied.
/// An override that contradicts the file is caught later by [`load_into`]'s shape check.
pub(crate) fn resolve_config(dict: &StateDict, overrides: &ModelOverrides) -> Result<ModelConfig> {
    let detected = detect_config(dict);
    let config = match (overrides.arch, detected) {
        (None, Ok(c)) => ModelConfig { num_classes: overrides.num_classes.unwrap_or(c.num_classes), ..c },
        (None, Err(e)) => match (overrides.num_classes, e.to_string().contains("--num-classes")) {
            (Some(n), true) => {
                let (_, dict, _) = translate(dict);
                let arch = if dict.contains("features.0.weight") {
                    Arch::DeepLabV2Vgg16
                } else if dict.contains("layer3.22.conv1.weight") {
                    Arch::DeepLabV2ResNet101
                } else if dict.contains("layer3.5.conv1.weight") {
                    Arch::DeepLabV2ResNet50
                } else {
                    Arch::DeepLabV2Tiny
                };
                ModelConfig {
                    arch,
                    num_classes: n,
                    multi_level: arch != Arch::DeepLabV2Vgg16,
                    aspp_sum: AsppSum::AllFour,
                }
            }
            _ => return Err(e),
        },
        (Some(arch), detected) => {
            let num_classes = match (overrides.num_classes, &detected) {
                (Some(n), _) => n,
                (None, Ok(c)) => c.num_classes,
                (None, Err(_)) => bail!("cannot tell the number of classes from the checkpoint: give --num-classes"),
            };
            let multi_level = match &detected {
                Ok(c) => c.multi_level,
                Err(_) => arch != Arch::DeepLabV2Vgg16,
            };
            ModelConfig { arch, num_classes, multi_level, aspp_sum: AsppSum::AllFour }
        }
    };
    Ok(ModelConfig { aspp_sum: overrides.aspp_sum, ..config })
}
