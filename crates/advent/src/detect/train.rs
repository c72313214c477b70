//! One detection training iteration: source-only, MinEnt or AdvEnt on SSD-300, with the
//! segmentation method's step order (SPEC §4.2; see `crate::train`):
//!
//! 1. the multibox loss on a labelled source batch, back-propagated;
//! 2. MinEnt: `λ_ent ·` the mean normalised entropy of the target anchors' class
//!    distributions, back-propagated;
//! 3. AdvEnt: the discriminators frozen, `λ_adv · Σ_scales BCE(D_k(I_k(target)), source)`,
//!    back-propagated into the detector only;
//! 4. AdvEnt: the discriminators trained on the detached self-information maps of both
//!    domains (source 0, target 1, each half of the loss halved), one Adam step each;
//! 5. one SGD step of the detector.
//!
//! Discriminators (our choice; the paper publishes none for detection): one per prediction
//! scale, fully convolutional like the segmentation one but with 3x3 convolutions and
//! padding 1, so that the 3x3 and 1x1 maps fit: `C_in → w` (stride 2 on the maps of side
//! 10 or more), LeakyReLU(0.2), `w → 2w`, LeakyReLU(0.2), `2w → 1` patch logits.

use super::adapt::{entropy_loss, object_entropy_loss, self_information_map};
use super::loss::multibox_loss;
use super::ssd::{Ssd, BOXES_PER_CELL};
use crate::loss::bce_loss;
use crate::model::layers::{Conv2d, ConvInit, ConvSpec};
use crate::train::optim::{poly_lr, Adam, Group, Param, Sgd};
use crate::train::{SOURCE_LABEL, TARGET_LABEL};
use crate::weights::StateDict;
use anyhow::{bail, Result};
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// Which target-side loss the detector trains with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetMethod {
    SourceOnly,
    MinEnt,
    AdvEnt,
}

impl DetMethod {
    /// As configs and logs spell it: `source_only`, `minent`, `advent`.
    pub fn name(self) -> &'static str {
        match self {
            DetMethod::SourceOnly => "source_only",
            DetMethod::MinEnt => "minent",
            DetMethod::AdvEnt => "advent",
        }
    }
}

/// Settings of the detection step, defaults from ssd.pytorch (SGD 1e-3, momentum 0.9,
/// weight decay 5e-4, 3:1 mining) and from the segmentation method (discriminators, λs,
/// poly decay).
#[derive(Debug, Clone)]
pub struct DetTrainConfig {
    pub method: DetMethod,
    pub learning_rate: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub negpos_ratio: i64,
    pub lambda_ent: f64,
    /// MinEnt over the object classes only ([`object_entropy_loss`]) instead of every class.
    pub entropy_objects: bool,
    pub lambda_adv: f64,
    pub learning_rate_d: f64,
    pub betas_d: (f64, f64),
    pub discriminator_width: i64,
    pub max_iters: u64,
    pub power: f64,
    /// Iterations over which the detector's rate ramps up linearly ([`detector_lr`]); 0: none.
    pub warmup_iters: u64,
    /// The largest total gradient norm of the detector's step (0: no clipping).
    pub clip_grad_norm: f64,
    /// The detector's width ([`Ssd::with_width`]): 64 for SSD-300.
    pub width: i64,
}

impl Default for DetTrainConfig {
    fn default() -> Self {
        DetTrainConfig {
            method: DetMethod::SourceOnly,
            learning_rate: 1e-3,
            momentum: 0.9,
            weight_decay: 5e-4,
            negpos_ratio: 3,
            lambda_ent: 0.001,
            entropy_objects: false,
            lambda_adv: 0.001,
            learning_rate_d: 1e-4,
            betas_d: (0.9, 0.99),
            discriminator_width: 64,
            max_iters: 120_000,
            power: 0.9,
            warmup_iters: 0,
            clip_grad_norm: 0.0,
            width: super::ssd::FULL_WIDTH,
        }
    }
}

/// The discriminator of one prediction scale.
struct ScaleDiscriminator {
    convs: [Conv2d; 3],
}

impl ScaleDiscriminator {
    fn new(p: &tch::nn::Path, channels: i64, side: i64, width: i64) -> Self {
        let stride = if side >= 10 { 2 } else { 1 };
        let spec = |c_in, c_out, s| ConvSpec::new(c_in, c_out, 3).stride(s).padding(1);
        ScaleDiscriminator {
            convs: [
                Conv2d::new(p.sub(0), spec(channels, width, stride), ConvInit::TorchDefault),
                Conv2d::new(p.sub(2), spec(width, 2 * width, 1), ConvInit::TorchDefault),
                Conv2d::new(p.sub(4), spec(2 * width, 1, 1), ConvInit::TorchDefault),
            ],
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // LeakyReLU(0.2) as max(x, 0.2x) (tch's leaky_relu has no slope argument).
        let leaky = |x: Tensor| -> Result<Tensor> { Ok(x.f_maximum(&x.f_mul_scalar(0.2)?)?) };
        let x = leaky(self.convs[0].forward(x)?)?;
        let x = leaky(self.convs[1].forward(&x)?)?;
        self.convs[2].forward(&x)
    }
}

/// The per-scale discriminators with their Adam optimiser.
pub struct Discriminators {
    pub vs: VarStore,
    nets: Vec<ScaleDiscriminator>,
    pub opt: Adam,
}

/// The detector and, for AdvEnt, the discriminators, with their optimisers.
pub struct DetTrainer {
    pub config: DetTrainConfig,
    pub ssd: Ssd,
    pub sgd: Sgd,
    pub discriminators: Option<Discriminators>,
}

fn params(vs: &VarStore) -> Vec<Param> {
    StateDict::from_var_store(vs)
        .iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(k, t)| Param { name: k.to_string(), tensor: t.shallow_clone(), visits: 1 })
        .collect()
}

impl DetTrainer {
    /// A freshly initialised SSD-300 for `num_classes` (background included), on `device`.
    pub fn new(config: DetTrainConfig, num_classes: i64, device: Device) -> Result<Self> {
        let ssd = Ssd::with_width(num_classes, config.width, device)?;
        let sgd =
            Sgd::new(vec![Group { lr_factor: 1.0, params: params(&ssd.vs) }], config.momentum, config.weight_decay);
        let discriminators = match config.method {
            DetMethod::AdvEnt => {
                let mut vs = VarStore::new(Device::Cpu);
                let nets = BOXES_PER_CELL
                    .iter()
                    .zip([38, 19, 10, 5, 3, 1])
                    .enumerate()
                    .map(|(k, (&boxes, side))| {
                        ScaleDiscriminator::new(
                            &vs.root().sub(k),
                            boxes * num_classes,
                            side,
                            config.discriminator_width,
                        )
                    })
                    .collect();
                if device != Device::Cpu {
                    vs.set_device(device);
                }
                let opt = Adam::new(params(&vs), config.betas_d)?;
                Some(Discriminators { vs, nets, opt })
            }
            _ => None,
        };
        Ok(DetTrainer { config, ssd, sgd, discriminators })
    }

    /// One iteration `iter` on a source batch (`[N, 3, 300, 300]` with matched targets
    /// `loc_targets` `[N, P, 4]`, `labels` `[N, P]`) and, for MinEnt and AdvEnt, a target
    /// batch. Returns the named, detached losses.
    pub fn step(
        &mut self,
        iter: u64,
        source: &Tensor,
        loc_targets: &Tensor,
        labels: &Tensor,
        target: Option<&Tensor>,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        let c = &self.config;
        let mut losses = Vec::new();
        self.sgd.zero_grad()?;
        let src = self.ssd.forward(source)?;
        let l = multibox_loss(&src.loc, &src.conf, loc_targets, labels, c.negpos_ratio)?;
        l.loc.f_add(&l.conf)?.backward();
        losses.push(("loss_loc_src", l.loc.detach()));
        losses.push(("loss_conf_src", l.conf.detach()));
        let source_maps = src.conf_maps;

        if c.method != DetMethod::SourceOnly {
            let Some(target) = target else { bail!("{:?} needs a target batch", c.method) };
            let trg = self.ssd.forward(target)?;
            let classes = self.ssd.num_classes;
            match &mut self.discriminators {
                None => {
                    let ent =
                        if c.entropy_objects { object_entropy_loss(&trg.conf)? } else { entropy_loss(&trg.conf)? };
                    ent.f_mul_scalar(c.lambda_ent)?.backward();
                    losses.push(("loss_ent_trg", ent.detach()));
                }
                Some(d) => {
                    // 3. Fool the frozen discriminators: target maps labelled "source".
                    set_trainable(&d.opt, false);
                    let trg_info: Vec<Tensor> =
                        trg.conf_maps.iter().map(|m| self_information_map(m, classes)).collect::<Result<_>>()?;
                    let mut adv = Tensor::f_zeros([], (tch::Kind::Float, self.ssd.vs.device()))?;
                    for (net, info) in d.nets.iter().zip(&trg_info) {
                        adv = adv.f_add(&bce_loss(&net.forward(info)?, SOURCE_LABEL)?)?;
                    }
                    adv.f_mul_scalar(c.lambda_adv)?.backward();
                    losses.push(("loss_adv_trg", adv.detach()));
                    // 4. Train the discriminators on the detached maps of both domains.
                    set_trainable(&d.opt, true);
                    d.opt.zero_grad()?;
                    let mut loss_d = Tensor::f_zeros([], (tch::Kind::Float, self.ssd.vs.device()))?;
                    for (k, net) in d.nets.iter().enumerate() {
                        let s = self_information_map(&source_maps[k].detach(), classes)?;
                        let t = trg_info[k].detach();
                        let half = bce_loss(&net.forward(&s)?, SOURCE_LABEL)?
                            .f_add(&bce_loss(&net.forward(&t)?, TARGET_LABEL)?)?
                            .f_div_scalar(2.0)?;
                        loss_d = loss_d.f_add(&half)?;
                    }
                    loss_d.backward();
                    d.opt.step(poly_lr(c.learning_rate_d, iter, c.max_iters, c.power))?;
                    losses.push(("loss_d", loss_d.detach()));
                }
            }
        }
        if c.clip_grad_norm > 0.0 {
            let params: Vec<&Tensor> =
                self.sgd.groups.iter().flat_map(|g| g.params.iter().map(|p| &p.tensor)).collect();
            let norm = crate::train::optim::clip_grad_norm(&params, c.clip_grad_norm)?;
            losses.push(("grad_norm", norm));
        }
        self.sgd.step(detector_lr(c, iter))?;
        Ok(losses)
    }
}

/// The detector's learning rate at `iter`: the poly decay, times `(iter + 1) / warmup_iters`
/// during the first `warmup_iters` iterations (a linear warm-up; ssd.pytorch has none).
pub fn detector_lr(c: &DetTrainConfig, iter: u64) -> f64 {
    let ramp = if iter < c.warmup_iters { (iter + 1) as f64 / c.warmup_iters as f64 } else { 1.0 };
    poly_lr(c.learning_rate, iter, c.max_iters, c.power) * ramp
}

fn set_trainable(opt: &Adam, on: bool) {
    for p in &opt.params {
        let _ = p.tensor.set_requires_grad(on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::synthetic::Domain;
    use crate::detect::{matching, priors::PriorConfig};
    use tch::Kind;

    #[test]
    fn warm_up_ramps_the_detector_rate() {
        // By hand: rate 1e-3, poly 0.9 over 100 iterations, warm-up 4: iteration 0 gets a
        // quarter of 1e-3, iteration 1 half of 1e-3 · (1 − 1/100)^0.9, iteration 4 the
        // poly rate alone; no warm-up is the poly rate.
        let c = DetTrainConfig { max_iters: 100, warmup_iters: 4, ..Default::default() };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(detector_lr(&c, 0), 0.25e-3));
        assert!(close(detector_lr(&c, 1), 0.5e-3 * 0.99f64.powf(0.9)));
        assert!(close(detector_lr(&c, 4), 1e-3 * 0.96f64.powf(0.9)));
        let plain = DetTrainConfig { warmup_iters: 0, ..c };
        assert!(close(detector_lr(&plain, 0), 1e-3));
    }

    fn batch(seed: i64) -> (Tensor, Tensor, Tensor, Tensor) {
        tch::manual_seed(seed);
        let config = PriorConfig::default();
        let (loc, labels) = matching::match_priors(
            &[[0.1, 0.4, 0.45, 0.7], [0.2, 0.2, 0.3, 0.3]],
            &[2, 1],
            &config.priors(),
            matching::MATCH_THRESHOLD,
            config.variance,
        );
        let source = Tensor::randn([1, 3, 300, 300], (Kind::Float, Device::Cpu)) * 50.0;
        let target = Tensor::randn([1, 3, 300, 300], (Kind::Float, Device::Cpu)) * 50.0 + 20.0;
        let loc = Tensor::from_slice(loc.as_flattened()).reshape([1, -1, 4]);
        (source, loc, Tensor::from_slice(&labels).reshape([1, -1]), target)
    }

    fn snapshot(vs: &VarStore) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, t)| (k, t.detach().copy())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn changed(before: &[(String, Tensor)], vs: &VarStore) -> usize {
        let now = vs.variables();
        before.iter().filter(|(k, t)| !now[k].equal(t)).count()
    }

    #[test]
    fn advent_step_trains_both_and_logs_the_losses() {
        let (source, loc, labels, target) = batch(5);
        let config = DetTrainConfig { method: DetMethod::AdvEnt, discriminator_width: 8, ..Default::default() };
        let mut t = DetTrainer::new(config, 3, Device::Cpu).unwrap();
        let (ssd0, d0) = (snapshot(&t.ssd.vs), snapshot(&t.discriminators.as_ref().unwrap().vs));
        let losses = t.step(0, &source, &loc, &labels, Some(&target)).unwrap();
        let names: Vec<&str> = losses.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["loss_loc_src", "loss_conf_src", "loss_adv_trg", "loss_d"]);
        for (name, v) in &losses {
            assert!(v.double_value(&[]).is_finite() && v.double_value(&[]) > 0.0, "{name}");
        }
        // Six discriminators, each loss near ln 2 at the start: the sum near 6 ln 2.
        let d = losses[3].1.double_value(&[]);
        assert!((d - 6.0 * 2f64.ln()).abs() < 1.0, "{d}");
        // Every detector parameter steps, but for the zero-initialised biases of the loc heads
        // of scales holding no matched box (no gradient, and weight decay of 0 is 0).
        let now = t.ssd.vs.variables();
        let still: Vec<&str> = ssd0.iter().filter(|(k, v)| now[k].equal(v)).map(|(k, _)| k.as_str()).collect();
        assert!(still.iter().all(|k| k.starts_with("loc.") && k.ends_with(".bias")), "{still:?}");
        assert!(still.len() < 6, "{still:?}");
        let dvs = &t.discriminators.as_ref().unwrap().vs;
        assert_eq!(changed(&d0, dvs), d0.len(), "every discriminator parameter steps");
    }

    #[test]
    fn the_adversarial_term_reaches_the_detector_but_not_the_discriminators() {
        // λ_adv = 0 against λ_adv = 1 from the same start: the detector's gradient differs,
        // the discriminators' update does not (they are trained on detached maps only).
        let (source, loc, labels, target) = batch(6);
        let trainer = |lambda_adv: f64| {
            let config =
                DetTrainConfig { method: DetMethod::AdvEnt, discriminator_width: 8, lambda_adv, ..Default::default() };
            DetTrainer::new(config, 3, Device::Cpu).unwrap()
        };
        let (mut a, mut b) = (trainer(0.0), trainer(1.0));
        // One start for both, whatever other tests draw from libtorch's process-wide
        // generator while they are built (tests run in parallel threads).
        b.ssd.vs.copy(&a.ssd.vs).unwrap();
        b.discriminators.as_mut().unwrap().vs.copy(&a.discriminators.as_ref().unwrap().vs).unwrap();
        let run = |t: &mut DetTrainer| {
            t.step(0, &source, &loc, &labels, Some(&target)).unwrap();
            (snapshot(&t.ssd.vs), snapshot(&t.discriminators.as_ref().unwrap().vs))
        };
        let (ssd_a, d_a) = run(&mut a);
        let (ssd_b, d_b) = run(&mut b);
        assert!(ssd_a.iter().zip(&ssd_b).any(|(a, b)| !a.1.equal(&b.1)), "λ_adv changed nothing in the detector");
        assert!(d_a.iter().zip(&d_b).all(|(a, b)| a.1.equal(&b.1)), "the adversarial term leaked into D");
    }

    /// Source-only SSD-300 on two built-in scenes for 15 iterations: the multibox loss falls.
    /// About a minute on two cores: `scripts/test -- --ignored detector_learns`.
    #[test]
    #[ignore = "slow on the CPU (SSD-300 at 300x300)"]
    fn detector_learns_the_built_in_scenes() {
        use crate::detect::data::{DetDataset, SyntheticDetection};
        use crate::detect::loader::{match_boxes, stack_targets};
        let set = SyntheticDetection::scenes(1, Domain::Source, 2);
        let samples: Vec<_> = (0..2).map(|i| set.get(i).unwrap()).collect();
        let (config, cpu) = (PriorConfig::default(), Device::Cpu);
        let matched: Vec<_> =
            samples.iter().map(|s| match_boxes(s, &config.priors(), config.variance).unwrap()).collect();
        let images = Tensor::stack(&samples.iter().map(|s| &s.image).collect::<Vec<_>>(), 0);
        let targets = stack_targets(&matched.iter().collect::<Vec<_>>(), cpu).unwrap();
        let (loc, labels) = (targets.loc, targets.labels);
        tch::manual_seed(0);
        let mut t = DetTrainer::new(DetTrainConfig { max_iters: 1000, ..Default::default() }, 9, Device::Cpu).unwrap();
        let total = |l: &[(&str, Tensor)]| l[0].1.double_value(&[]) + l[1].1.double_value(&[]);
        let first = total(&t.step(0, &images, &loc, &labels, None).unwrap());
        let mut last = first;
        for i in 1..15 {
            last = total(&t.step(i, &images, &loc, &labels, None).unwrap());
        }
        assert!(last < 0.7 * first, "multibox loss {first} -> {last}");
    }

    #[test]
    fn minent_and_source_only_steps() {
        let (source, loc, labels, target) = batch(7);
        let config = DetTrainConfig { method: DetMethod::MinEnt, ..Default::default() };
        let mut t = DetTrainer::new(config, 3, Device::Cpu).unwrap();
        let losses = t.step(0, &source, &loc, &labels, Some(&target)).unwrap();
        assert_eq!(losses[2].0, "loss_ent_trg");
        let ent = losses[2].1.double_value(&[]);
        assert!((0.0..=1.0).contains(&ent), "{ent}");
        assert!(t.step(1, &source, &loc, &labels, None).is_err(), "MinEnt without a target batch");
        let mut t = DetTrainer::new(DetTrainConfig::default(), 3, Device::Cpu).unwrap();
        assert_eq!(t.step(0, &source, &loc, &labels, None).unwrap().len(), 2);
    }
}
