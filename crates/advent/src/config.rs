//! Training configuration: TOML files over one tree of defaults (`configs/defaults.toml`).
//!
//! As in the reference's config system, a file may only override: a key that is not among
//! the defaults, or a value of another type, is an error that names the key.

use crate::dataset::{synthetic::Domain, DatasetSpec};
use crate::model::{Arch, AsppSum, ModelConfig};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// Every default, with where it comes from.
pub const DEFAULTS: &str = include_str!("../../../configs/defaults.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
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
    pub arch: String,
    pub num_classes: i64,
    pub multi_level: bool,
    pub init: String,
    pub aspp_two_branches: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSection {
    pub dataset: String,
    pub root: String,
    pub split: String,
    pub list: String,
    pub size: [u32; 2],
    pub batch_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foggy_beta: Option<f64>,
    /// `[source]` only: a folder of train-id labels read instead of the dataset's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudo_labels: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSection {
    pub seed: u64,
    pub len: usize,
    pub shift: f32,
}

/// The adaptation methods; they differ only in the target-side losses and the models they own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// Source cross-entropy only (the "without adaptation" baseline).
    #[serde(rename = "source_only")]
    SourceOnly,
    /// Entropy minimisation on the target (SPEC §4.3).
    #[serde(rename = "minent")]
    MinEnt,
    /// Adversarial entropy minimisation with discriminators on self-information (SPEC §4.2).
    #[serde(rename = "advent")]
    AdvEnt,
    /// AdvEnt with the MinEnt term added to the segmentation network's target loss (an
    /// extension; not the paper's ensemble).
    #[serde(rename = "advent_minent")]
    AdvEntMinEnt,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::SourceOnly => "source_only",
            Method::MinEnt => "minent",
            Method::AdvEnt => "advent",
            Method::AdvEntMinEnt => "advent_minent",
        }
    }
    pub fn adversarial(self) -> bool {
        matches!(self, Method::AdvEnt | Method::AdvEntMinEnt)
    }
    pub fn entropy(self) -> bool {
        matches!(self, Method::MinEnt | Method::AdvEntMinEnt)
    }
    pub fn uses_target(self) -> bool {
        self != Method::SourceOnly
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub method: Method,
    pub max_iters: u64,
    pub early_stop: u64,
    pub learning_rate: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub power: f64,
    pub head_lr_factor: f64,
    pub reference_duplicate_params: bool,
    pub learning_rate_d: f64,
    pub adam_betas: [f64; 2],
    pub discriminator_width: i64,
    pub lambda_seg_main: f64,
    pub lambda_seg_aux: f64,
    pub lambda_adv_main: f64,
    pub lambda_adv_aux: f64,
    pub lambda_ent_main: f64,
    pub lambda_ent_aux: f64,
    pub entropy_ranking: f64,
    pub lambda_cp_main: f64,
    pub lambda_cp_aux: f64,
    pub cp_mu: f64,
    pub class_prior: String,
    pub save_every: u64,
    pub keep_checkpoints: usize,
    pub seed: u64,
    pub workers: usize,
    pub prefetch: usize,
    pub precision: crate::device::Precision,
    pub cudnn_benchmark: bool,
    pub cudnn_benchmark_limit: u32,
    pub deterministic: bool,
    pub channels_last: bool,
    pub cuda_graph: bool,
    pub upsampling: crate::loss::Upsampling,
    pub tensorboard: bool,
    pub viz_every: u64,
    pub log_every: u64,
}

impl Config {
    /// The defaults alone.
    pub fn defaults() -> Self {
        Self::from_table(defaults_table(), "defaults").expect("configs/defaults.toml is valid")
    }

    /// Reads `path` over the defaults, then applies `--set key=value` overrides. The name
    /// defaults to the file's stem.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let mut config = Self::parse(&text, overrides).with_context(|| format!("config {}", path.display()))?;
        if config.name.is_empty() {
            config.name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        }
        Ok(config)
    }

    /// Parses TOML text over the defaults, then applies overrides.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Self> {
        let config: Config = parse_over(DEFAULTS, text, overrides)?;
        config.validate()?;
        Ok(config)
    }

    fn from_table(table: Table, what: &str) -> Result<Self> {
        let config: Config = from_table(table, what)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that values make sense together; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        self.model.arch.parse::<Arch>().context("model.arch")?;
        ensure!(
            (2..=255).contains(&self.model.num_classes),
            "model.num_classes must be in 2..=255 (255 marks ignored pixels), got {}",
            self.model.num_classes
        );
        self.model_config().context("model")?;
        check_schedule(t.max_iters, t.early_stop, t.save_every, t.log_every)?;
        ensure!(t.viz_every >= 1, "train.viz_every must be at least 1");
        check_workers(t.workers)?;
        check_optimisers(
            t.discriminator_width,
            t.momentum,
            t.adam_betas,
            &[
                ("learning_rate", t.learning_rate),
                ("learning_rate_d", t.learning_rate_d),
                ("weight_decay", t.weight_decay),
                ("power", t.power),
                ("head_lr_factor", t.head_lr_factor),
                ("lambda_seg_main", t.lambda_seg_main),
                ("lambda_seg_aux", t.lambda_seg_aux),
                ("lambda_adv_main", t.lambda_adv_main),
                ("lambda_adv_aux", t.lambda_adv_aux),
                ("lambda_ent_main", t.lambda_ent_main),
                ("lambda_ent_aux", t.lambda_ent_aux),
                ("lambda_cp_main", t.lambda_cp_main),
                ("lambda_cp_aux", t.lambda_cp_aux),
            ],
        )?;
        if t.lambda_cp_main > 0.0 || t.lambda_cp_aux > 0.0 {
            ensure!(
                !t.class_prior.is_empty(),
                "train.lambda_cp_main/lambda_cp_aux > 0 needs train.class_prior: the source's pixels per class, the \
                 JSON report of `advent data check --dataset <source> --root <root> --json FILE`"
            );
            ensure!(
                t.lambda_cp_aux == 0.0 || self.model.multi_level,
                "train.lambda_cp_aux > 0 needs the aux head (model.multi_level = true)"
            );
        }
        ensure!(t.cp_mu > 0.0 && t.cp_mu <= 1.0, "train.cp_mu must be in (0, 1], got {}", t.cp_mu);
        ensure!(
            t.entropy_ranking > 0.0 && t.entropy_ranking <= 1.0,
            "train.entropy_ranking must be in (0, 1] (the share of each image's pixels the entropy losses \
             average over), got {}",
            t.entropy_ranking
        );
        if t.cuda_graph {
            ensure!(
                !t.reference_duplicate_params,
                "train.cuda_graph needs train.reference_duplicate_params = false (the duplicated \
                 visits take the per-parameter optimiser path, which a graph cannot follow)"
            );
            ensure!(t.momentum > 0.0, "train.cuda_graph needs train.momentum > 0 (the fused SGD kernel)");
        }
        ensure!(
            !(t.upsampling == crate::loss::Upsampling::Matmul && t.precision == crate::device::Precision::Bf16),
            "train.upsampling = \"matmul\" needs train.precision = \"fp32\" or \"tf32\" (bf16 logits take the kernel)"
        );
        let pseudo_labels = self.source.pseudo_labels.as_deref().is_some_and(|p| !p.is_empty());
        ensure!(
            self.source.dataset != "images" || pseudo_labels,
            "source.dataset = \"images\": a folder of images has no labels; it can only be target.dataset \
             (or the source with source.pseudo_labels)"
        );
        ensure!(
            !(pseudo_labels && crate::dataset::is_synthetic(&self.source.dataset)),
            "source.pseudo_labels: the built-in generator draws its own labels"
        );
        for (name, d) in [("source", &self.source), ("target", &self.target)] {
            ensure!(
                crate::dataset::FILE_KINDS.contains(&d.dataset.as_str()) || crate::dataset::is_synthetic(&d.dataset),
                "{name}.dataset: unknown dataset `{}` (known: {}, synthetic, synthetic-source, synthetic-target)",
                d.dataset,
                crate::dataset::FILE_KINDS.join(", ")
            );
            ensure!(
                d.size[0] >= 32 && d.size[1] >= 32,
                "{name}.size must be at least [32, 32] (the discriminator's stride), got {:?}",
                d.size
            );
            ensure!(d.batch_size >= 1, "{name}.batch_size must be at least 1");
        }
        ensure!(self.synthetic.len >= 1, "synthetic.len must be at least 1");
        Ok(())
    }

    pub fn model_config(&self) -> Result<ModelConfig> {
        let config = ModelConfig {
            arch: self.model.arch.parse::<Arch>()?,
            num_classes: self.model.num_classes,
            multi_level: self.model.multi_level,
            aspp_sum: if self.model.aspp_two_branches { AsppSum::FirstTwo } else { AsppSum::AllFour },
        };
        config.validate()?;
        Ok(config)
    }

    /// The dataset of one domain.
    pub fn dataset_spec(&self, source: bool) -> DatasetSpec {
        let d = if source { &self.source } else { &self.target };
        DatasetSpec {
            kind: d.dataset.clone(),
            root: PathBuf::from(&d.root),
            split: d.split.clone(),
            list: (!d.list.is_empty()).then(|| PathBuf::from(&d.list)),
            size: (d.size[0], d.size[1]),
            labels: source,
            num_classes: self.model.num_classes as usize,
            foggy_beta: d.foggy_beta.unwrap_or(0.02),
            pseudo_labels: d.pseudo_labels.as_deref().filter(|p| !p.is_empty()).map(PathBuf::from),
            synthetic_seed: self.synthetic.seed,
            synthetic_len: self.synthetic.len,
            synthetic_domain: if source { Domain::Source } else { Domain::Target },
            synthetic_shift: self.synthetic.shift,
        }
    }

    /// The resolved configuration as TOML (saved into the run folder).
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// The same configuration without `model.init` (a resumed run's weights come from its
    /// checkpoint).
    pub fn without_init(&self) -> Self {
        let mut config = self.clone();
        config.model.init.clear();
        config
    }
}

/// The `[train]` iteration counts of a training configuration (segmentation or detection).
pub(crate) fn check_schedule(max_iters: u64, early_stop: u64, save_every: u64, log_every: u64) -> Result<()> {
    ensure!(max_iters >= 1, "train.max_iters must be at least 1");
    ensure!(
        early_stop >= 1 && early_stop <= max_iters,
        "train.early_stop must be in 1..=train.max_iters ({max_iters})"
    );
    ensure!(save_every >= 1, "train.save_every must be at least 1");
    ensure!(log_every >= 1, "train.log_every must be at least 1");
    Ok(())
}

/// The `[train]` optimiser settings: rates and weights finite and non-negative, momentum and
/// The most loader threads `train.workers` takes.
pub const MAX_WORKERS: usize = 256;

/// `train.workers` within 0 (loading on the training thread) to [`MAX_WORKERS`].
pub(crate) fn check_workers(workers: usize) -> Result<()> {
    ensure!(workers <= MAX_WORKERS, "train.workers must be at most {MAX_WORKERS}, got {workers}");
    Ok(())
}

/// Adam's betas in [0, 1), a discriminator at least one channel wide.
pub(crate) fn check_optimisers(width: i64, momentum: f64, betas: [f64; 2], rates: &[(&str, f64)]) -> Result<()> {
    ensure!(width >= 1, "train.discriminator_width must be at least 1");
    for (key, v) in rates {
        ensure!(v.is_finite() && *v >= 0.0, "train.{key} must be a finite non-negative number, got {v}");
    }
    ensure!((0.0..1.0).contains(&momentum), "train.momentum must be in [0, 1), got {momentum}");
    for (i, b) in betas.iter().enumerate() {
        ensure!((0.0..1.0).contains(b), "train.adam_betas[{i}] must be in [0, 1), got {b}");
    }
    Ok(())
}

fn defaults_table() -> Table {
    toml::from_str(DEFAULTS).expect("configs/defaults.toml parses")
}

/// A configuration of type `T`: TOML `text` over the `defaults` tree (a key the defaults do
/// not have, or a value of another type, is an error naming the key), then the `--set
/// key=value` overrides. The configurations of other commands (detection) use it too.
pub fn parse_over<T: serde::de::DeserializeOwned>(defaults: &str, text: &str, overrides: &[String]) -> Result<T> {
    let user: Table = toml::from_str(text)
        .map_err(|e| anyhow::anyhow!("{}", e.message().trim()).context(describe_toml_error(&e, text)))?;
    let mut merged: Table = toml::from_str(defaults).context("the built-in defaults do not parse")?;
    merge(&mut merged, user, "")?;
    for o in overrides {
        apply_override(&mut merged, o)?;
    }
    from_table(merged, "config")
}

fn from_table<T: serde::de::DeserializeOwned>(table: Table, what: &str) -> Result<T> {
    serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        let inner = e.inner().to_string();
        let inner = inner.lines().next().unwrap_or_default().to_string();
        anyhow::anyhow!("{what}: `{}`: {inner}", e.path())
    })
}

fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("TOML syntax error at line {line}")
        }
        None => "TOML syntax error".to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Merges `user` into `base`, which holds every known key: unknown keys and type changes
/// are errors naming the dotted key. Integers are accepted where numbers are expected.
fn merge(base: &mut Table, user: Table, prefix: &str) -> Result<()> {
    for (key, value) in user {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let Some(slot) = base.get_mut(&key) else {
            let known: Vec<&str> = base.keys().map(String::as_str).collect();
            bail!("unknown key `{path}` (known here: {})", known.join(", "));
        };
        *slot = checked(slot, value, &path)?;
    }
    Ok(())
}

fn checked(default: &mut Value, value: Value, path: &str) -> Result<Value> {
    Ok(match (default, value) {
        (Value::Table(base), Value::Table(user)) => {
            merge(base, user, path)?;
            Value::Table(base.clone())
        }
        (Value::Float(_), Value::Integer(i)) => Value::Float(i as f64),
        (Value::Array(d), Value::Array(items)) => {
            if let Some(first) = d.first() {
                ensure!(items.len() == d.len(), "`{path}` must have {} elements, got {}", d.len(), items.len());
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let mut proto = first.clone();
                    out.push(checked(&mut proto, item, &format!("{path}[{i}]"))?);
                }
                Value::Array(out)
            } else {
                Value::Array(items)
            }
        }
        (d, v) if std::mem::discriminant(&*d) == std::mem::discriminant(&v) => v,
        (d, v) => bail!("`{path}` must be {}, got {}", type_name(d), type_name(&v)),
    })
}

/// `section.key=value`; the value is TOML (`200`, `2.5e-4`, `[512, 256]`, `"x"`), or taken as
/// a string when it is not valid TOML (`source.root=/data/GTA5`).
fn apply_override(table: &mut Table, text: &str) -> Result<()> {
    let (key, raw) = text.split_once('=').with_context(|| format!("--set `{text}`: expected key=value"))?;
    let key = key.trim();
    let value = match toml::from_str::<Table>(&format!("v = {}", raw.trim())) {
        Ok(mut t) => t.remove("v").expect("parsed"),
        Err(_) => Value::String(raw.trim().to_string()),
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().filter(|s| !s.is_empty()).with_context(|| format!("--set `{text}`: empty key"))?;
    let mut nested = Table::new();
    nested.insert(last.to_string(), value);
    for part in parts.into_iter().rev() {
        let mut outer = Table::new();
        outer.insert(part.to_string(), Value::Table(nested));
        nested = outer;
    }
    merge(table, nested, "").with_context(|| format!("--set {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text, &[]).unwrap_err())
    }

    #[test]
    fn defaults_are_the_reference_values() {
        let c = Config::defaults();
        // SPEC §4.1.
        assert_eq!(c.train.method, Method::AdvEnt);
        assert_eq!((c.train.max_iters, c.train.early_stop), (250_000, 120_000));
        assert_eq!((c.train.learning_rate, c.train.learning_rate_d), (2.5e-4, 1e-4));
        assert_eq!((c.train.momentum, c.train.weight_decay, c.train.power), (0.9, 5e-4, 0.9));
        assert_eq!(c.train.adam_betas, [0.9, 0.99]);
        assert_eq!((c.train.lambda_seg_main, c.train.lambda_seg_aux), (1.0, 0.1));
        assert_eq!((c.train.lambda_adv_main, c.train.lambda_adv_aux), (0.001, 0.0002));
        assert_eq!((c.train.lambda_ent_main, c.train.lambda_ent_aux), (0.001, 0.0002));
        assert_eq!((c.source.size, c.target.size), ([1280, 720], [1024, 512]));
        assert_eq!((c.train.save_every, c.train.seed), (2000, 1234));
        assert!(!c.train.reference_duplicate_params);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err("[train]\nlr = 0.1\n");
        assert!(e.contains("unknown key `train.lr`"), "{e}");
        let e = err("[trian]\nmethod = \"advent\"\n");
        assert!(e.contains("unknown key `trian`"), "{e}");
    }

    #[test]
    fn wrong_types_are_named() {
        let e = err("[train]\nlearning_rate = \"fast\"\n");
        assert!(e.contains("`train.learning_rate` must be a number, got a string"), "{e}");
        let e = err("[source]\nsize = [1280]\n");
        assert!(e.contains("`source.size` must have 2 elements"), "{e}");
        let e = err("[source]\nsize = [-5, 720]\n");
        assert!(e.contains("source.size"), "{e}");
        let e = err("[train]\nmethod = \"maxent\"\n");
        assert!(e.contains("train.method") && e.contains("maxent"), "{e}");
        let e = err("[train]\nmax_iters = 1.5\n");
        assert!(e.contains("`train.max_iters` must be an integer, got a number"), "{e}");
    }

    #[test]
    fn integers_are_numbers_and_values_are_checked_together() {
        let c = Config::parse("[train]\nlearning_rate = 1\n", &[]).unwrap();
        assert_eq!(c.train.learning_rate, 1.0);
        let e = err("[train]\nmax_iters = 10\nearly_stop = 20\n");
        assert!(e.contains("train.early_stop"), "{e}");
        let e = err("[train]\nlearning_rate = -1.0\n");
        assert!(e.contains("train.learning_rate"), "{e}");
        let e = err("[model]\narch = \"resnet\"\n");
        assert!(e.contains("unknown architecture `resnet`"), "{e}");
    }

    #[test]
    fn upsampling_by_products_needs_float32_logits() {
        assert_eq!(Config::defaults().train.upsampling, crate::loss::Upsampling::Kernel, "the reference's kernel");
        let c = Config::parse("[train]\nupsampling = \"matmul\"\n", &[]).unwrap();
        assert_eq!(c.train.upsampling, crate::loss::Upsampling::Matmul);
        let e = err("[train]\nupsampling = \"matmul\"\nprecision = \"bf16\"\n");
        assert!(e.contains("train.upsampling = \"matmul\" needs train.precision"), "{e}");
        let e = err("[train]\nupsampling = \"nearest\"\n");
        assert!(e.contains("upsampling"), "{e}");
    }

    #[test]
    fn datasets_are_checked_by_name_and_a_folder_of_images_is_a_target_only() {
        let e = err("[target]\ndataset = \"kitti\"\n");
        assert!(e.contains("target.dataset: unknown dataset `kitti`"), "{e}");
        let e = err("[source]\ndataset = \"images\"\n");
        assert!(e.contains("source.dataset = \"images\"") && e.contains("no labels"), "{e}");
        let c = Config::parse("[target]\ndataset = \"images\"\nroot = \"frames\"\n", &[]).unwrap();
        let spec = c.dataset_spec(false);
        assert_eq!((spec.kind.as_str(), spec.labels), ("images", false));
    }

    #[test]
    fn entropy_ranking_is_a_share() {
        assert_eq!(Config::defaults().train.entropy_ranking, 1.0, "every pixel, as the reference code");
        let c = Config::parse("[train]\nmethod = \"minent\"\nentropy_ranking = 0.3\n", &[]).unwrap();
        assert_eq!(c.train.entropy_ranking, 0.3);
        for bad in ["0.0", "1.5", "-0.3"] {
            let e = err(&format!("[train]\nmethod = \"minent\"\nentropy_ranking = {bad}\n"));
            assert!(e.contains("train.entropy_ranking must be in (0, 1]"), "{e}");
        }
        // As the lambda_ent_* weights, it is accepted by the methods without an entropy loss
        // (`advent demo --set` gives every run the same settings), where it does nothing.
        assert!(Config::parse("[train]\nmethod = \"advent\"\nentropy_ranking = 0.3\n", &[]).is_ok());
    }

    #[test]
    fn the_class_ratio_prior_needs_a_prior_file() {
        let c = Config::defaults();
        assert_eq!((c.train.lambda_cp_main, c.train.lambda_cp_aux, c.train.cp_mu), (0.0, 0.0, 0.5));
        let e = err("[train]\nlambda_cp_main = 0.1\n");
        assert!(e.contains("needs train.class_prior") && e.contains("advent data check"), "{e}");
        // Source-only has no target loss: the weights do nothing there (no error, as above).
        let c =
            Config::parse("[train]\nmethod = \"source_only\"\nlambda_cp_aux = 0.1\nclass_prior = \"p.json\"\n", &[]);
        assert!(c.is_ok());
        let e = err("[train]\nlambda_cp_main = 0.1\nclass_prior = \"p.json\"\ncp_mu = 0.0\n");
        assert!(e.contains("train.cp_mu must be in (0, 1]"), "{e}");
        let e = err("[model]\nmulti_level = false\n[train]\nlambda_cp_aux = 0.1\nclass_prior = \"p.json\"\n");
        assert!(e.contains("train.lambda_cp_aux > 0 needs the aux head"), "{e}");
        let e = err("[train]\nlambda_cp_main = -1.0\n");
        assert!(e.contains("train.lambda_cp_main must be a finite non-negative number"), "{e}");
        assert!(Config::parse("[train]\nlambda_cp_main = 0.1\nclass_prior = \"p.json\"\n", &[]).is_ok());
    }

    #[test]
    fn a_cuda_graph_refuses_what_it_cannot_follow() {
        assert!(!Config::defaults().train.cuda_graph, "off by default");
        let e = err("[train]\ncuda_graph = true\nreference_duplicate_params = true\n");
        assert!(e.contains("train.cuda_graph needs train.reference_duplicate_params = false"), "{e}");
        let e = err("[train]\ncuda_graph = true\nmomentum = 0.0\n");
        assert!(e.contains("train.cuda_graph needs train.momentum > 0"), "{e}");
        let c = Config::parse("[train]\ncuda_graph = true\n", &[]).unwrap();
        let e = crate::train::Trainer::new(&c, tch::Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("train.cuda_graph needs --device cuda"), "{e}");
    }

    #[test]
    fn overrides_apply_over_the_file() {
        let c = Config::parse(
            "[train]\nmax_iters = 100\n",
            &[
                "train.max_iters=200".into(),
                "train.early_stop=150".into(),
                "source.root=/data/GTA 5".into(),
                "target.size=[512, 256]".into(),
            ],
        )
        .unwrap();
        assert_eq!((c.train.max_iters, c.train.early_stop), (200, 150));
        assert_eq!(c.source.root, "/data/GTA 5");
        assert_eq!(c.target.size, [512, 256]);
        let e = format!("{:#}", Config::parse("", &["train.nope=1".into()]).unwrap_err());
        assert!(e.contains("unknown key `train.nope`"), "{e}");
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let e = err("[train]\nmax_iters = = 3\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn resolved_config_round_trips() {
        let c = Config::defaults();
        let again = Config::parse(&c.to_toml().unwrap(), &[]).unwrap();
        assert_eq!(c, again);
    }
}

#[cfg(test)]
mod shipped {
    use super::Config;
    use crate::detect::config::DetConfig;
    use std::path::Path;

    /// Every configuration under configs/ parses with its command's rules.
    #[test]
    fn shipped_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for (dir, detection) in [(root.clone(), false), (root.join("detection"), true)] {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|e| e != "toml") {
                    continue;
                }
                if detection {
                    DetConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                } else {
                    Config::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                }
                seen += 1;
            }
        }
        assert!(seen >= 13, "{seen} configs");
    }
}
