//! `advent detect train` configuration: TOML over `configs/detection/defaults.toml`, with
//! the strict rules of the segmentation configuration (unknown keys and wrong types are
//! errors naming the key).

use super::augment::Augment;
use super::train::{DetMethod, DetTrainConfig};
use crate::device::Precision;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Every default of the detection configuration.
pub const DEFAULTS: &str = include_str!("../../../../configs/detection/defaults.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetConfig {
    pub name: String,
    pub model: ModelSection,
    pub source: DomainSection,
    pub target: DomainSection,
    pub synthetic: SyntheticSection,
    pub train: TrainSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub num_classes: i64,
    pub width: i64,
    pub init: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSection {
    pub dataset: String,
    pub root: String,
    pub split: String,
    pub list: String,
    pub beta: f64,
    pub batch_size: usize,
    pub augment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSection {
    pub seed: u64,
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub method: String,
    pub max_iters: u64,
    pub early_stop: u64,
    pub learning_rate: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub power: f64,
    pub warmup_iters: u64,
    pub clip_grad_norm: f64,
    pub negpos_ratio: i64,
    pub lambda_ent: f64,
    pub entropy: String,
    pub lambda_adv: f64,
    pub learning_rate_d: f64,
    pub adam_betas: [f64; 2],
    pub discriminator_width: i64,
    pub save_every: u64,
    pub keep_checkpoints: usize,
    pub seed: u64,
    pub workers: usize,
    pub prefetch: usize,
    pub precision: Precision,
    pub tensorboard: bool,
    pub log_every: u64,
}

impl DetConfig {
    pub fn defaults() -> Self {
        Self::parse("", &[]).expect("configs/detection/defaults.toml is valid")
    }

    /// Reads `path` over the defaults, then applies `--set key=value` overrides; the name
    /// defaults to the file's stem.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let mut config = Self::parse(&text, overrides).with_context(|| format!("config {}", path.display()))?;
        if config.name.is_empty() {
            config.name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        }
        Ok(config)
    }

    pub fn parse(text: &str, overrides: &[String]) -> Result<Self> {
        let config: DetConfig = crate::config::parse_over(DEFAULTS, text, overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// The augmentation of the source (`true`) or target training set.
    pub fn augment(&self, source: bool) -> Result<Augment> {
        let (name, d) = if source { ("source", &self.source) } else { ("target", &self.target) };
        Augment::parse(&format!("{name}.augment"), &d.augment)
    }

    pub fn method(&self) -> Result<DetMethod> {
        Ok(match self.train.method.as_str() {
            "source_only" => DetMethod::SourceOnly,
            "minent" => DetMethod::MinEnt,
            "advent" => DetMethod::AdvEnt,
            other => bail!("train.method: unknown `{other}` (source_only, minent, advent)"),
        })
    }

    /// Checks values together; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        self.method()?;
        let classes = super::cityscapes::NUM_CLASSES as i64 + 1;
        ensure!(
            self.model.num_classes == classes,
            "model.num_classes must be {classes}: the background and the {} object classes of every detection \
             set (Cityscapes' person, rider, car, truck, bus, train, motorcycle, bicycle), got {}",
            classes - 1,
            self.model.num_classes
        );
        ensure!(
            t.clip_grad_norm.is_finite() && t.clip_grad_norm >= 0.0,
            "train.clip_grad_norm must be 0 (off) or a positive norm, got {}",
            t.clip_grad_norm
        );
        crate::config::check_workers(t.workers)?;
        ensure!((1..=64).contains(&self.model.width), "model.width must be in 1..=64, got {}", self.model.width);
        crate::config::check_schedule(t.max_iters, t.early_stop, t.save_every, t.log_every)?;
        ensure!(t.entropy == "all" || t.entropy == "objects", "train.entropy: unknown `{}` (all, objects)", t.entropy);
        ensure!(t.negpos_ratio >= 1, "train.negpos_ratio must be at least 1");
        crate::config::check_optimisers(
            t.discriminator_width,
            t.momentum,
            t.adam_betas,
            &[
                ("learning_rate", t.learning_rate),
                ("learning_rate_d", t.learning_rate_d),
                ("weight_decay", t.weight_decay),
                ("power", t.power),
                ("lambda_ent", t.lambda_ent),
                ("lambda_adv", t.lambda_adv),
            ],
        )?;
        ensure!(
            t.precision != Precision::Bf16,
            "train.precision: bf16 is not supported for detection yet (tf32, fp32)"
        );
        for (name, d) in [("source", &self.source), ("target", &self.target)] {
            ensure!(d.batch_size >= 1, "{name}.batch_size must be at least 1");
            Augment::parse(&format!("{name}.augment"), &d.augment)?;
            ensure!(
                ["cityscapes", "foggy-cityscapes", "synthetic"].contains(&d.dataset.as_str()),
                "{name}.dataset: unknown `{}` (cityscapes, foggy-cityscapes, synthetic)",
                d.dataset
            );
        }
        ensure!(self.synthetic.len >= 1, "synthetic.len must be at least 1");
        Ok(())
    }

    /// The training step's settings.
    pub fn step_config(&self) -> Result<DetTrainConfig> {
        let t = &self.train;
        Ok(DetTrainConfig {
            method: self.method()?,
            learning_rate: t.learning_rate,
            momentum: t.momentum,
            weight_decay: t.weight_decay,
            negpos_ratio: t.negpos_ratio,
            lambda_ent: t.lambda_ent,
            entropy_objects: t.entropy == "objects",
            lambda_adv: t.lambda_adv,
            learning_rate_d: t.learning_rate_d,
            betas_d: (t.adam_betas[0], t.adam_betas[1]),
            discriminator_width: t.discriminator_width,
            max_iters: t.max_iters,
            power: t.power,
            warmup_iters: t.warmup_iters,
            clip_grad_norm: t.clip_grad_norm,
            width: self.model.width,
        })
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_errors_name_the_key() {
        let d = DetConfig::defaults();
        assert_eq!(d.train.learning_rate, 1e-3);
        assert_eq!(d.source.batch_size, 32);
        let e = format!("{:#}", DetConfig::parse("[train]\nlerning_rate = 1.0\n", &[]).unwrap_err());
        assert!(e.contains("lerning_rate"), "{e}");
        let e = format!("{:#}", DetConfig::parse("[train]\nmax_iters = \"ten\"\n", &[]).unwrap_err());
        assert!(e.contains("train.max_iters"), "{e}");
        let e = format!("{:#}", DetConfig::parse("", &["train.method=minnet".into()]).unwrap_err());
        assert!(e.contains("train.method"), "{e}");
        let e = format!("{:#}", DetConfig::parse("[source]\ndataset = \"gta5\"\n", &[]).unwrap_err());
        assert!(e.contains("source.dataset"), "{e}");
        let e = format!("{:#}", DetConfig::parse("", &["target.augment=crop".into()]).unwrap_err());
        assert!(e.contains("target.augment") && e.contains("ssd, flip, none"), "{e}");
        assert_eq!((d.augment(true).unwrap(), d.augment(false).unwrap()), (Augment::Ssd, Augment::Flip));
    }
}
