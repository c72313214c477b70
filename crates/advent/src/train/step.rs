//! One training iteration, as the reference does it (SPEC §4.2–4.3): the methods differ
//! only in the target-side losses they add and in the discriminators they own.

use super::optim::{poly_lr, Adam, Group, Param, Sgd};
use crate::config::{Config, Method};
use crate::loss::{
    bce_loss, class_ratio_prior_loss, cross_entropy_2d, entropy_loss_ranked, self_information, upsample_with,
};
use crate::model::{Arch, Discriminator, LoadOptions, SegModel};
use crate::weights::StateDict;
use anyhow::{Context, Result};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Domain labels of the discriminators (the reference's convention).
pub const SOURCE_LABEL: f64 = 0.0;
pub const TARGET_LABEL: f64 = 1.0;

/// Named scalar losses of one iteration, in logging order, detached, on the device.
pub type Losses = Vec<(&'static str, Tensor)>;

/// A discriminator with its parameters and optimiser; its VarStore holds exactly the
/// reference's keys (`0.weight` … `8.bias`), so it saves as `model_*_D_main.pth` does.
pub struct DomainDiscriminator {
    pub vs: VarStore,
    pub net: Discriminator,
    pub opt: Adam,
}

impl DomainDiscriminator {
    fn new(num_classes: i64, width: i64, betas: (f64, f64), device: Device, channels_last: bool) -> Result<Self> {
        // Drawn on the CPU, then moved: a seed gives the same discriminator on every device.
        let mut vs = VarStore::new(Device::Cpu);
        let mut net = Discriminator::new(&vs.root(), num_classes, width);
        if device != Device::Cpu {
            vs.set_device(device);
            net.set_device(device);
        }
        if channels_last {
            crate::model::to_channels_last(&vs)?;
        }
        let params =
            named_trainables(&vs).into_iter().map(|(name, tensor)| Param { name, tensor, visits: 1 }).collect();
        let opt = Adam::new(params, betas)?;
        Ok(DomainDiscriminator { vs, net, opt })
    }

    fn set_trainable(&self, on: bool) {
        for p in &self.opt.params {
            let _ = p.tensor.set_requires_grad(on);
        }
    }
}

/// Trainable variables of a store, in natural key order (deterministic).
fn named_trainables(vs: &VarStore) -> Vec<(String, Tensor)> {
    StateDict::from_var_store(vs)
        .iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(k, t)| (k.to_string(), t.shallow_clone()))
        .collect()
}

/// What the discriminator update needs from the segmentation update, detached: the source
/// logits at the network's output size (upsampled again when needed: the same kernel on the
/// same values gives the same map, and not holding the 2 x 70 MB of upsampled GTA5 logits
/// through the source backward pass lowers the step's peak memory below the reference's,
/// which holds them) and the target probabilities.
pub struct Detached {
    source_main: Tensor,
    source_aux: Option<Tensor>,
    source_size: (i64, i64),
    target_prob_main: Tensor,
    target_prob_aux: Option<Tensor>,
}

/// Eager iterations of a process before `train.cuda_graph` captures the step: cuDNN's
/// autotuner has chosen its kernels, the allocator has settled, and SGD's momentum buffers
/// exist (its first step differs from the others).
pub const GRAPH_WARMUP: usize = 3;

/// The training step captured as one CUDA graph: it reads its inputs and learning rates from
/// tensors of its own, into which each iteration copies, and leaves its losses in `values`.
struct StepGraph {
    graph: crate::native::CudaGraph,
    source_images: Tensor,
    source_labels: Tensor,
    target_images: Option<Tensor>,
    lr: Tensor,
    lr_d: Tensor,
    names: Vec<&'static str>,
    values: Tensor,
    /// The gradients the graph writes, held so that their memory stays theirs.
    _grads: Vec<Tensor>,
}

/// Where the gradients of a CUDA graph of the step (`train.cuda_graph`) live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphGrads {
    /// Allocated before the capture (by the eager warm-up) and zeroed in place by one
    /// multi-tensor kernel at the start of every replay: alive between iterations, 0.19 GiB
    /// above the freed gradients' peak for DeepLab-V2 (7.16 against 6.97 GiB on an H200).
    Held,
    /// Freed before the capture, so that the capture's backward passes allocate them in the
    /// graph's own memory pool when the eager step would, and every replay writes them afresh
    /// (PyTorch's recipe for capturing a whole network): no zeroing kernel. The default:
    /// on an H200 the AdvEnt step peaks at 6.97 GiB (the reference 7.06, the eager step 6.95)
    /// and takes 79.5 ms against the held gradients' 80.0 (BENCHMARKS.md); its update is the
    /// eager step's (`cuda_graph_training_matches_eager`).
    #[default]
    Freed,
}

impl std::str::FromStr for GraphGrads {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "held" => Ok(GraphGrads::Held),
            "freed" => Ok(GraphGrads::Freed),
            _ => anyhow::bail!("unknown place of the gradients `{s}` (expected held or freed)"),
        }
    }
}

/// One iteration's inputs (see [`Trainer::step`]).
#[derive(Clone, Copy)]
struct Batch<'a> {
    source_images: &'a Tensor,
    source_labels: &'a Tensor,
    target_images: Option<&'a Tensor>,
}

/// The learning rates of one step (segmentation network, discriminators): numbers for the
/// eager step, float32 scalars on the device for the graph's.
#[derive(Clone, Copy)]
enum Rates<'a> {
    Values(f64, f64),
    Tensors(&'a Tensor, &'a Tensor),
}

/// The networks and optimisers of a run.
pub struct Trainer {
    pub config: Config,
    pub method: Method,
    pub model: SegModel,
    pub sgd: Sgd,
    /// On the main head's output (adversarial methods).
    pub d_main: Option<DomainDiscriminator>,
    /// On the aux head's output (adversarial methods, multi-level).
    pub d_aux: Option<DomainDiscriminator>,
    /// The class-ratio prior's thresholds `cp_mu · p_s` (`[C]` on the device), when a CP
    /// weight is above 0.
    cp_threshold: Option<Tensor>,
    /// `train.cuda_graph`: the captured step, once [`GRAPH_WARMUP`] eager steps have run.
    graph: Option<StepGraph>,
    /// `train.cuda_graph`: how the captured step holds its gradients.
    pub graph_grads: GraphGrads,
    eager_steps: usize,
}

impl Trainer {
    /// Builds the networks (seeded by `train.seed`), loads `model.init` if given, and sets up
    /// the optimisers.
    pub fn new(config: &Config, device: Device) -> Result<Self> {
        let t = &config.train;
        if t.cuda_graph {
            anyhow::ensure!(device.is_cuda(), "train.cuda_graph needs --device cuda");
            anyhow::ensure!(
                crate::native::cuda_graphs_supported(),
                "train.cuda_graph: this build of advent has no CUDA graph support (no CUDA headers when it was built)"
            );
        }
        tch::manual_seed(t.seed as i64);
        let model_config = config.model_config()?;
        let mut model = SegModel::new(model_config, device)?;
        if !config.model.init.is_empty() {
            let path = std::path::Path::new(&config.model.init);
            let dict = crate::weights::load(path).context("model.init")?;
            crate::model::load_into(&model.vs, dict, LoadOptions::default())
                .with_context(|| format!("model.init: loading {}", path.display()))?;
        }
        if t.channels_last {
            model.use_channels_last()?;
        }
        let sgd = Sgd::new(seg_groups(&model, config), t.momentum, t.weight_decay);
        let betas = (t.adam_betas[0], t.adam_betas[1]);
        let adversarial = config.train.method.adversarial();
        let discriminator = || {
            DomainDiscriminator::new(model_config.num_classes, t.discriminator_width, betas, device, t.channels_last)
        };
        let d_main = adversarial.then(discriminator).transpose()?;
        let d_aux = (adversarial && model_config.multi_level).then(discriminator).transpose()?;
        let cp_threshold = if config.train.method.uses_target() && (t.lambda_cp_main > 0.0 || t.lambda_cp_aux > 0.0) {
            let shares = crate::dataset::check::class_shares(
                std::path::Path::new(&t.class_prior),
                model_config.num_classes as usize,
            )
            .context("train.class_prior")?;
            let threshold: Vec<f32> = shares.iter().map(|p| (t.cp_mu * p) as f32).collect();
            Some(Tensor::f_from_slice(&threshold)?.f_to_device(device)?)
        } else {
            None
        };
        Ok(Trainer {
            cp_threshold,
            config: config.clone(),
            method: t.method,
            model,
            sgd,
            d_main,
            d_aux,
            graph: None,
            graph_grads: GraphGrads::default(),
            eager_steps: 0,
        })
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// Learning rates of iteration `iter`: (segmentation base rate, discriminator rate).
    pub fn learning_rates(&self, iter: u64) -> (f64, f64) {
        let t = &self.config.train;
        (poly_lr(t.learning_rate, iter, t.max_iters, t.power), poly_lr(t.learning_rate_d, iter, t.max_iters, t.power))
    }

    /// One iteration: gradients of every loss, then the optimiser steps.
    ///
    /// `source_images` `[N, 3, Hs, Ws]`, `source_labels` `[N, Hs, Ws]` (int64, 255 ignored),
    /// `target_images` `[N, 3, Ht, Wt]` (unused by source-only), all on the CPU or the device.
    pub fn step(
        &mut self,
        iter: u64,
        source_images: &Tensor,
        source_labels: &Tensor,
        target_images: Option<&Tensor>,
    ) -> Result<Losses> {
        let batch = Batch { source_images, source_labels, target_images };
        if self.config.train.cuda_graph {
            if self.graph.is_none() && self.eager_steps >= GRAPH_WARMUP {
                self.graph = Some(self.capture(batch).context("train.cuda_graph: capturing the training step")?);
            }
            if self.graph.is_some() {
                return self.replay(iter, batch);
            }
        }
        self.eager_steps += 1;
        let (lr, lr_d) = self.learning_rates(iter);
        self.zero_grad()?;
        let losses = self.losses_and_gradients(batch)?;
        self.optimiser_steps(Rates::Values(lr, lr_d))?;
        Ok(losses)
    }

    /// SGD on the segmentation network, then Adam on each discriminator.
    fn optimiser_steps(&mut self, rates: Rates<'_>) -> Result<()> {
        match rates {
            Rates::Values(lr, _) => self.sgd.step(lr)?,
            Rates::Tensors(lr, _) => self.sgd.step_with_tensor(lr)?,
        }
        for d in [&mut self.d_aux, &mut self.d_main].into_iter().flatten() {
            match rates {
                Rates::Values(_, lr_d) => d.opt.step(lr_d)?,
                Rates::Tensors(_, lr_d) => d.opt.step_with_tensor(lr_d)?,
            }
        }
        Ok(())
    }

    /// Every loss of the iteration back-propagated (into gradients that start empty or at
    /// zero); the losses as float32 scalars.
    fn losses_and_gradients(&mut self, batch: Batch<'_>) -> Result<Losses> {
        let Batch { source_images, source_labels, target_images } = batch;
        let mut losses = {
            let _autocast = crate::device::autocast(self.device(), self.config.train.precision)?;
            let (mut losses, detached) = self.segmentation_backward(source_images, source_labels, target_images)?;
            if let Some(detached) = detached {
                losses.extend(self.discriminator_backward(&detached)?);
            }
            losses
        };
        for (_, l) in &mut losses {
            *l = l.f_to_kind(Kind::Float)?;
        }
        Ok(losses)
    }

    /// What a CUDA graph of the step records (`train.cuda_graph`), and what it does when run
    /// eagerly on any device: one iteration whose learning rates are read from float32 scalar
    /// tensors on the device (`lr` the segmentation network's base rate, `lr_d` the
    /// discriminators'), and whose Adam step counts advance on the device. With
    /// [`GraphGrads::Held`] it first zeroes the gradients in place (they keep their memory);
    /// with [`GraphGrads::Freed`] it expects none (a replay writes them where the capture
    /// allocated them; run eagerly, call [`Trainer::zero_grad`] before it). Call
    /// [`Trainer::prepare_graph_body`] first and [`Trainer::count_graph_step`] after each
    /// iteration actually run. The arithmetic is [`Trainer::step`]'s (tested).
    pub fn graph_body(
        &mut self,
        source_images: &Tensor,
        source_labels: &Tensor,
        target_images: Option<&Tensor>,
        lr: &Tensor,
        lr_d: &Tensor,
    ) -> Result<Losses> {
        if self.graph_grads == GraphGrads::Held {
            self.sgd.zero_grad_in_place()?;
            for d in [&mut self.d_main, &mut self.d_aux].into_iter().flatten() {
                d.opt.zero_grad_in_place()?;
            }
        }
        let losses = self.losses_and_gradients(Batch { source_images, source_labels, target_images })?;
        self.optimiser_steps(Rates::Tensors(lr, lr_d))?;
        Ok(losses)
    }

    /// Whether `train.cuda_graph` has captured the step (after [`GRAPH_WARMUP`] eager steps).
    pub fn graph_captured(&self) -> bool {
        self.graph.is_some()
    }

    /// Puts the discriminators' Adam step counts on the device (see [`Trainer::graph_body`]).
    pub fn prepare_graph_body(&mut self) -> Result<()> {
        for d in [&mut self.d_main, &mut self.d_aux].into_iter().flatten() {
            d.opt.hold_steps_on_device()?;
        }
        Ok(())
    }

    /// Counts one iteration of [`Trainer::graph_body`] in the host-side Adam step counts
    /// (which checkpoints save).
    pub fn count_graph_step(&mut self) {
        for d in [&mut self.d_main, &mut self.d_aux].into_iter().flatten() {
            d.opt.count_step();
        }
    }

    /// Records [`Trainer::graph_body`] as a CUDA graph reading its own copies of the inputs.
    fn capture(&mut self, batch: Batch<'_>) -> Result<StepGraph> {
        let Batch { source_images, source_labels, target_images } = batch;
        let device = self.device();
        let own = |t: &Tensor| -> Result<Tensor> { Ok(t.f_to_device(device)?.f_detach_copy()?) };
        let (xs, ys) = (own(source_images)?, own(source_labels)?);
        let xt = target_images.filter(|_| self.method.uses_target()).map(own).transpose()?;
        let lr = Tensor::f_zeros([], (Kind::Float, device))?;
        let lr_d = Tensor::f_zeros([], (Kind::Float, device))?;
        self.prepare_graph_body()?;
        if self.graph_grads == GraphGrads::Freed {
            self.zero_grad()?;
        }
        let (graph, (names, values)) = crate::native::CudaGraph::capture(device, || {
            let losses = self.graph_body(&xs, &ys, xt.as_ref(), &lr, &lr_d)?;
            let names: Vec<&'static str> = losses.iter().map(|(n, _)| *n).collect();
            let values = Tensor::f_stack(&losses.iter().map(|(_, l)| l).collect::<Vec<_>>(), 0)?;
            Ok((names, values))
        })?;
        let mut grads = Vec::new();
        let discriminators = [&self.d_main, &self.d_aux].into_iter().flatten().flat_map(|d| d.opt.params.iter());
        for p in self.sgd.groups.iter().flat_map(|g| g.params.iter()).chain(discriminators) {
            let g = p.tensor.grad();
            if g.defined() {
                grads.push(g);
            }
        }
        Ok(StepGraph {
            graph,
            source_images: xs,
            source_labels: ys,
            target_images: xt,
            lr,
            lr_d,
            names,
            values,
            _grads: grads,
        })
    }

    /// One iteration by the captured graph: the batch and the rates copied in, one replay,
    /// the losses copied out (the next replay overwrites the graph's own).
    fn replay(&mut self, iter: u64, batch: Batch<'_>) -> Result<Losses> {
        let Batch { source_images, source_labels, target_images } = batch;
        let (lr, lr_d) = self.learning_rates(iter);
        let g = self.graph.as_mut().expect("replay follows capture");
        let target = target_images.filter(|_| g.target_images.is_some());
        anyhow::ensure!(
            target.is_some() == g.target_images.is_some(),
            "train.cuda_graph: iteration {iter} has no target batch, the captured step has one"
        );
        let pairs = [
            ("source images", Some(&mut g.source_images), Some(source_images)),
            ("source labels", Some(&mut g.source_labels), Some(source_labels)),
            ("target images", g.target_images.as_mut(), target),
        ];
        for (what, slot, new) in pairs {
            let (Some(slot), Some(new)) = (slot, new) else { continue };
            anyhow::ensure!(
                slot.size() == new.size() && slot.kind() == new.kind(),
                "train.cuda_graph: iteration {iter}'s {what} are {:?} {:?}, the captured step's {:?} {:?} \
                 (every batch must have the same size)",
                new.size(),
                new.kind(),
                slot.size(),
                slot.kind()
            );
            // Queued behind the previous replay; from page-locked memory (the training
            // loaders' on CUDA) the host goes on at once.
            crate::native::copy_async(slot, new)?;
        }
        let _ = g.lr.f_fill_(lr)?;
        let _ = g.lr_d.f_fill_(lr_d)?;
        g.graph.replay()?;
        let values = g.values.f_detach_copy()?;
        let losses =
            g.names.iter().enumerate().map(|(i, n)| Ok((*n, values.f_select(0, i as i64)?))).collect::<Result<_>>()?;
        self.count_graph_step();
        Ok(losses)
    }

    /// Every gradient set to none (PyTorch's `zero_grad()`), freeing its memory.
    pub fn zero_grad(&mut self) -> Result<()> {
        self.sgd.zero_grad()?;
        for d in [&mut self.d_main, &mut self.d_aux].into_iter().flatten() {
            d.opt.zero_grad()?;
        }
        Ok(())
    }

    /// Steps 2–4 of SPEC §4.2: the discriminators frozen, the supervised source loss and the
    /// target loss of the method (adversarial and/or entropy) back-propagated into the
    /// segmentation network. Returns the losses and, for adversarial methods, what the
    /// discriminator update needs.
    pub fn segmentation_backward(
        &mut self,
        source_images: &Tensor,
        source_labels: &Tensor,
        target_images: Option<&Tensor>,
    ) -> Result<(Losses, Option<Detached>)> {
        let t = &self.config.train;
        let device = self.device();
        for d in [&self.d_main, &self.d_aux].into_iter().flatten() {
            d.set_trainable(false);
        }
        let mut losses: Losses = Vec::new();

        // Supervised source loss.
        let x = crate::native::to_device_async(source_images, device)?;
        let y = crate::native::to_device_async(source_labels, device)?;
        let (h, w) = (x.size()[2], x.size()[3]);
        let heads = self.model.forward_t(&x, true)?;
        let main = upsample_with(&heads.main, h, w, t.upsampling)?;
        let loss_main = cross_entropy_2d(&main, &y)?;
        let mut loss = loss_main.f_mul_scalar(t.lambda_seg_main)?;
        losses.push(("loss_seg_src_main", loss_main.detach()));
        let aux = match &heads.aux {
            Some(a) => {
                let aux = upsample_with(a, h, w, t.upsampling)?;
                let loss_aux = cross_entropy_2d(&aux, &y)?;
                loss = loss.f_add(&loss_aux.f_mul_scalar(t.lambda_seg_aux)?)?;
                losses.push(("loss_seg_src_aux", loss_aux.detach()));
                Some(aux)
            }
            None => None,
        };
        let (source_main, source_aux) = (heads.main.detach(), heads.aux.as_ref().map(Tensor::detach));
        let source_size = (h, w);
        drop((main, aux, heads));
        loss.f_backward()?;

        let Some(target_images) = target_images.filter(|_| self.method.uses_target()) else {
            return Ok((losses, None));
        };
        // Target loss: fool the discriminators (into "source") and/or minimise entropy.
        let x = crate::native::to_device_async(target_images, device)?;
        let (h, w) = (x.size()[2], x.size()[3]);
        let heads = self.model.forward_t(&x, true)?;
        let prob_main = upsample_with(&heads.main, h, w, t.upsampling)?.f_softmax(1, Kind::Float)?;
        let prob_aux = match &heads.aux {
            Some(a) => Some(upsample_with(a, h, w, t.upsampling)?.f_softmax(1, Kind::Float)?),
            None => None,
        };
        let mut loss = Tensor::f_zeros([], (Kind::Float, device))?;
        if self.method.adversarial() {
            let d = self.d_main.as_ref().expect("adversarial methods own d_main");
            let adv = bce_loss(&d.net.forward(&self_information(&prob_main)?)?, SOURCE_LABEL)?;
            loss = loss.f_add(&adv.f_mul_scalar(t.lambda_adv_main)?)?;
            losses.push(("loss_adv_trg_main", adv.detach()));
            if let (Some(d), Some(p)) = (&self.d_aux, &prob_aux) {
                let adv = bce_loss(&d.net.forward(&self_information(p)?)?, SOURCE_LABEL)?;
                loss = loss.f_add(&adv.f_mul_scalar(t.lambda_adv_aux)?)?;
                losses.push(("loss_adv_trg_aux", adv.detach()));
            }
        }
        if self.method.entropy() {
            let ent = entropy_loss_ranked(&prob_main, t.entropy_ranking)?;
            loss = loss.f_add(&ent.f_mul_scalar(t.lambda_ent_main)?)?;
            losses.push(("loss_ent_main", ent.detach()));
            if let Some(p) = &prob_aux {
                let ent = entropy_loss_ranked(p, t.entropy_ranking)?;
                loss = loss.f_add(&ent.f_mul_scalar(t.lambda_ent_aux)?)?;
                losses.push(("loss_ent_aux", ent.detach()));
            }
        }
        if let Some(threshold) = &self.cp_threshold {
            for (name, prob, weight) in [
                ("loss_cp_main", Some(&prob_main), t.lambda_cp_main),
                ("loss_cp_aux", prob_aux.as_ref(), t.lambda_cp_aux),
            ] {
                let Some(prob) = prob.filter(|_| weight > 0.0) else { continue };
                let cp = class_ratio_prior_loss(prob, threshold)?;
                loss = loss.f_add(&cp.f_mul_scalar(weight)?)?;
                losses.push((name, cp.detach()));
            }
        }
        loss.f_backward()?;
        let detached = self.method.adversarial().then(|| Detached {
            source_main,
            source_aux,
            source_size,
            target_prob_main: prob_main.detach(),
            target_prob_aux: prob_aux.as_ref().map(Tensor::detach),
        });
        Ok((losses, detached))
    }

    /// Steps 5–7 of SPEC §4.2: the discriminators trained on the detached maps of both
    /// domains (source 0, target 1, each loss halved). The segmentation network gets no
    /// gradient: its outputs are detached. Returns the target halves, which the reference
    /// logs as `loss_d_main` / `loss_d_aux`.
    pub fn discriminator_backward(&mut self, detached: &Detached) -> Result<Losses> {
        let mut losses: Losses = Vec::new();
        for d in [&self.d_main, &self.d_aux].into_iter().flatten() {
            d.set_trainable(true);
        }
        let pairs = [
            (&self.d_aux, detached.source_aux.as_ref(), detached.target_prob_aux.as_ref(), "loss_d_aux"),
            (&self.d_main, Some(&detached.source_main), Some(&detached.target_prob_main), "loss_d_main"),
        ];
        let mut target_halves = Vec::new();
        for (d, source_logits, target_prob, name) in pairs {
            let (Some(d), Some(source_logits), Some(target_prob)) = (d, source_logits, target_prob) else { continue };
            let (h, w) = detached.source_size;
            let how = self.config.train.upsampling;
            let source_prob = upsample_with(source_logits, h, w, how)?.f_softmax(1, Kind::Float)?;
            let l = bce_loss(&d.net.forward(&self_information(&source_prob)?)?, SOURCE_LABEL)?.f_div_scalar(2.0)?;
            l.f_backward()?;
            target_halves.push((d, target_prob, name));
        }
        for (d, target_prob, name) in target_halves {
            let l = bce_loss(&d.net.forward(&self_information(target_prob)?)?, TARGET_LABEL)?.f_div_scalar(2.0)?;
            l.f_backward()?;
            losses.push((name, l.detach()));
        }
        // Log order: main before aux, as the other losses.
        losses.sort_by_key(|(n, _)| *n != "loss_d_main");
        Ok(losses)
    }
}

/// SGD groups of the segmentation network (SPEC §1.3): the backbone at the base rate, the
/// classifiers (`layer5`, `layer6`) at `head_lr_factor` times it; VGG-16 in one group at the
/// base rate. Under `reference_duplicate_params` each backbone parameter is visited once per
/// module that contains it (the reference's generator yields it once per ancestor).
fn seg_groups(model: &SegModel, config: &Config) -> Vec<Group> {
    let t = &config.train;
    let is_head = |k: &str| k.starts_with("layer5.") || k.starts_with("layer6.");
    let resnet = model.config.arch != Arch::DeepLabV2Vgg16;
    let mut backbone = Vec::new();
    let mut heads = Vec::new();
    for (name, tensor) in named_trainables(&model.vs) {
        let head = resnet && is_head(&name);
        let visits = if t.reference_duplicate_params && resnet && !head { name.split('.').count() - 1 } else { 1 };
        let p = Param { name, tensor, visits };
        if head {
            heads.push(p)
        } else {
            backbone.push(p)
        }
    }
    let mut groups = vec![Group { lr_factor: 1.0, params: backbone }];
    if !heads.is_empty() {
        groups.push(Group { lr_factor: t.head_lr_factor, params: heads });
    }
    groups
}
