//! The optimisers of the reference, written out so that their state can be saved and
//! resumed: SGD with momentum and weight decay for the segmentation network (with per-group
//! learning rates), Adam for the discriminators; and the poly learning-rate schedule.

use crate::weights::StateDict;
use anyhow::{ensure, Context, Result};
use tch::Tensor;

/// `base · (1 − iter/max_iters)^power` (`lr_poly` of the reference).
pub fn poly_lr(base: f64, iter: u64, max_iters: u64, power: f64) -> f64 {
    base * (1.0 - iter as f64 / max_iters as f64).max(0.0).powf(power)
}

/// `torch.nn.utils.clip_grad_norm_`: the gradients of `params` (those defined) scaled by
/// `min(1, max_norm / (total + 1e-6))`, `total` their joint L2 norm; returns `total` (a
/// 0-dimensional tensor on their device: no host round-trip).
pub fn clip_grad_norm(params: &[&Tensor], max_norm: f64) -> Result<Tensor> {
    let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).filter(Tensor::defined).collect();
    let Some(first) = grads.first() else { return Ok(Tensor::from(0.0f32)) };
    let norms =
        grads.iter().map(|g| g.f_to_kind(tch::Kind::Float)?.f_norm()).collect::<Result<Vec<_>, tch::TchError>>()?;
    let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
    let scale = total.f_add_scalar(1e-6)?.f_reciprocal()?.f_mul_scalar(max_norm)?.f_clamp_max(1.0)?;
    let scale = scale.f_to_kind(first.kind())?;
    tch::no_grad(|| -> Result<()> {
        for g in &grads {
            let _ = g.shallow_clone().f_mul_(&scale)?;
        }
        Ok(())
    })?;
    Ok(total)
}

/// A trainable tensor with its name (for saved state) and how many times the reference's
/// optimiser visits it per step (1, except under `reference_duplicate_params`).
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub visits: usize,
}

/// Parameters sharing a learning-rate factor.
pub struct Group {
    pub lr_factor: f64,
    pub params: Vec<Param>,
}

/// `torch.optim.SGD(momentum, weight_decay)` without dampening or Nesterov.
///
/// One visit per parameter is current PyTorch's step: `d = g + wd·w; buf = m·buf + d`
/// (`buf = d` at the first step); `w −= lr·buf`. With `visits = k > 1` the parameter is
/// stepped k times in a row as PyTorch 0.4.1 did for a parameter listed k times, adding
/// `wd·w` to the gradient in place at every visit (SPEC §1.3).
pub struct Sgd {
    pub groups: Vec<Group>,
    /// One multi-tensor kernel per group (libtorch's `_fused_sgd_`, the arithmetic of
    /// PyTorch's SGD) instead of six small kernels per parameter; parameters visited more
    /// than once take the per-parameter path. On by default.
    pub fused: bool,
    momentum: f64,
    weight_decay: f64,
    /// Momentum buffers, by group then parameter; `None` before the first step.
    buffers: Vec<Vec<Option<Tensor>>>,
}

impl Sgd {
    pub fn new(groups: Vec<Group>, momentum: f64, weight_decay: f64) -> Self {
        let buffers = groups.iter().map(|g| g.params.iter().map(|_| None).collect()).collect();
        Sgd { groups, fused: true, momentum, weight_decay, buffers }
    }

    /// Gradients back to none (PyTorch's default `set_to_none=True`, the reference's):
    /// their memory is free until the next backward pass, which matters at the peak.
    pub fn zero_grad(&mut self) -> Result<()> {
        let all: Vec<&Tensor> = self.groups.iter().flat_map(|g| g.params.iter().map(|p| &p.tensor)).collect();
        crate::native::clear_grads(&all)
    }

    /// Gradients set to zero in place, keeping their memory (what a CUDA graph of the step
    /// does instead of [`Sgd::zero_grad`]).
    pub fn zero_grad_in_place(&mut self) -> Result<()> {
        let all: Vec<&Tensor> = self.groups.iter().flat_map(|g| g.params.iter().map(|p| &p.tensor)).collect();
        crate::native::zero_grads(&all)
    }

    /// Whether [`Sgd::step_with_tensor`] can run: the fused kernel on every group.
    fn takes_tensor_rate(&self) -> bool {
        self.fused && self.momentum != 0.0 && self.groups.iter().all(|g| g.params.iter().all(|p| p.visits == 1))
    }

    /// [`Sgd::step`] with the base rate read from a float32 scalar tensor on the device when
    /// the kernels run (each group's rate is computed on the device too), so that a CUDA
    /// graph of the step follows the schedule. Needs the fused path and a first step already
    /// taken (momentum buffers exist).
    pub fn step_with_tensor(&mut self, lr: &Tensor) -> Result<()> {
        ensure!(
            self.takes_tensor_rate(),
            "a learning rate held on the device needs the fused SGD kernel (momentum > 0, \
             train.reference_duplicate_params = false)"
        );
        let (m, wd) = (self.momentum, self.weight_decay);
        tch::no_grad(|| -> Result<()> {
            for (g, bufs) in self.groups.iter_mut().zip(&mut self.buffers) {
                let missing = g.params.iter().zip(bufs.iter()).find(|(p, b)| b.is_none() && p.tensor.grad().defined());
                if let Some((p, _)) = missing {
                    anyhow::bail!("SGD with a rate on the device: `{}` has no momentum buffer yet", p.name);
                }
                let scaled;
                let rate = if g.lr_factor == 1.0 {
                    lr
                } else {
                    scaled = lr.f_mul_scalar(g.lr_factor)?;
                    &scaled
                };
                fused_sgd_group(&g.params, bufs, m, wd, crate::native::Rate::Tensor(rate))?;
            }
            Ok(())
        })
    }

    /// One step at base learning rate `lr` (each group at `lr · lr_factor`).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let (m, wd) = (self.momentum, self.weight_decay);
        tch::no_grad(|| -> Result<()> {
            for (g, bufs) in self.groups.iter_mut().zip(&mut self.buffers) {
                let lr = lr * g.lr_factor;
                // (The fused kernel wants no buffers without momentum: that case takes the
                // per-parameter path.)
                if self.fused && m != 0.0 && g.params.iter().all(|p| p.visits == 1) {
                    fused_sgd_group(&g.params, bufs, m, wd, crate::native::Rate::Value(lr))?;
                    continue;
                }
                for (p, buf) in g.params.iter_mut().zip(bufs.iter_mut()) {
                    let mut grad = p.tensor.grad();
                    if !grad.defined() {
                        continue;
                    }
                    for _ in 0..p.visits {
                        let d = if p.visits > 1 {
                            // In place, as 0.4.1: the decay compounds over the visits.
                            let _ = grad.f_add_(&p.tensor.f_mul_scalar(wd)?)?;
                            grad.shallow_clone()
                        } else if wd != 0.0 {
                            grad.f_add(&p.tensor.f_mul_scalar(wd)?)?
                        } else {
                            grad.shallow_clone()
                        };
                        let b = match buf {
                            Some(b) => {
                                let _ = b.f_mul_scalar_(m)?.f_add_(&d)?;
                                b.shallow_clone()
                            }
                            None => {
                                let b = d.f_detach_copy()?;
                                *buf = Some(b.shallow_clone());
                                b
                            }
                        };
                        let _ = p.tensor.f_sub_(&b.f_mul_scalar(lr)?)?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Momentum buffers keyed `<param>.momentum_buffer`.
    pub fn state_dict(&self, prefix: &str) -> StateDict {
        let mut d = StateDict::new();
        for (g, bufs) in self.groups.iter().zip(&self.buffers) {
            for (p, b) in g.params.iter().zip(bufs) {
                if let Some(b) = b {
                    d.insert(format!("{prefix}{}.momentum_buffer", p.name), b.shallow_clone());
                }
            }
        }
        d
    }

    pub fn load_state_dict(&mut self, dict: &StateDict, prefix: &str) -> Result<()> {
        for (g, bufs) in self.groups.iter().zip(&mut self.buffers) {
            for (p, b) in g.params.iter().zip(bufs.iter_mut()) {
                let key = format!("{prefix}{}.momentum_buffer", p.name);
                *b = match dict.get(&key) {
                    Some(t) => Some(restore(t, &p.tensor, &key)?),
                    None => None,
                };
            }
        }
        Ok(())
    }
}

/// One group's SGD step with the fused kernel: one call for the parameters whose buffers
/// start at this step, one for the others; parameters without a gradient are skipped.
fn fused_sgd_group(
    params: &[Param],
    bufs: &mut [Option<Tensor>],
    momentum: f64,
    wd: f64,
    lr: crate::native::Rate<'_>,
) -> Result<()> {
    let mut first: (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>) = Default::default();
    let mut later: (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>) = Default::default();
    for (p, buf) in params.iter().zip(bufs.iter_mut()) {
        let grad = p.tensor.grad();
        if !grad.defined() {
            continue;
        }
        let list = if buf.is_some() { &mut later } else { &mut first };
        let b = match buf {
            Some(b) => b.shallow_clone(),
            None => {
                let b = p.tensor.f_zeros_like()?;
                *buf = Some(b.shallow_clone());
                b
            }
        };
        list.0.push(p.tensor.shallow_clone());
        list.1.push(grad);
        list.2.push(b);
    }
    for ((ps, gs, bs), is_first) in [(first, true), (later, false)] {
        fn refs(v: &[Tensor]) -> Vec<&Tensor> {
            v.iter().collect()
        }
        crate::native::fused_sgd(&refs(&ps), &refs(&gs), &refs(&bs), wd, momentum, lr, is_first)?;
    }
    Ok(())
}

/// `torch.optim.Adam(betas, eps=1e-8)`, no weight decay (current PyTorch's arithmetic).
pub struct Adam {
    pub params: Vec<Param>,
    /// All parameters in one kernel (libtorch's `_fused_adam_`); on by default.
    pub fused: bool,
    betas: (f64, f64),
    eps: f64,
    steps: i64,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// The step count on the parameters' device, one float per parameter, for
    /// [`Adam::step_with_tensor`]; kept equal to `steps` by every step.
    device_steps: Option<Tensor>,
}

impl Adam {
    pub fn new(params: Vec<Param>, betas: (f64, f64)) -> Result<Self> {
        let zeros = |p: &Param| p.tensor.f_zeros_like();
        let exp_avg = params.iter().map(zeros).collect::<Result<_, _>>()?;
        let exp_avg_sq = params.iter().map(zeros).collect::<Result<_, _>>()?;
        Ok(Adam { params, fused: true, betas, eps: 1e-8, steps: 0, exp_avg, exp_avg_sq, device_steps: None })
    }

    /// As [`Sgd::zero_grad`].
    pub fn zero_grad(&mut self) -> Result<()> {
        crate::native::clear_grads(&self.params.iter().map(|p| &p.tensor).collect::<Vec<_>>())
    }

    /// As [`Sgd::zero_grad_in_place`].
    pub fn zero_grad_in_place(&mut self) -> Result<()> {
        crate::native::zero_grads(&self.params.iter().map(|p| &p.tensor).collect::<Vec<_>>())
    }

    /// Steps taken (PyTorch's `state['step']`).
    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Puts the step count on the parameters' device, for [`Adam::step_with_tensor`]; call it
    /// before capturing a CUDA graph (the copy must not be part of the graph).
    pub fn hold_steps_on_device(&mut self) -> Result<()> {
        let Some(first) = self.params.first() else { return Ok(()) };
        let n = self.params.len() as i64;
        self.device_steps = Some(Tensor::f_full([n], self.steps as f64, (tch::Kind::Float, first.tensor.device()))?);
        Ok(())
    }

    /// [`Adam::step`] with the rate read from a float32 scalar tensor on the device and the
    /// step count advanced on the device (see [`Adam::hold_steps_on_device`]), so that a CUDA
    /// graph of the step follows both. The count kept on the host does not move: call
    /// [`Adam::count_step`] once per step actually run.
    pub fn step_with_tensor(&mut self, lr: &Tensor) -> Result<()> {
        ensure!(self.fused, "a learning rate held on the device needs the fused Adam kernel");
        if self.params.is_empty() {
            return Ok(());
        }
        let mut counts =
            self.device_steps.as_ref().context("Adam: the step count is not on the device")?.shallow_clone();
        let _ = counts.f_add_scalar_(1.0)?;
        self.fused_kernel(&counts, crate::native::Rate::Tensor(lr))
    }

    /// Counts one step run through [`Adam::step_with_tensor`] (from a graph's replay).
    pub fn count_step(&mut self) {
        self.steps += 1;
    }

    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.steps += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.steps as i32);
        let bc2 = 1.0 - b2.powi(self.steps as i32);
        if self.fused {
            return self.fused_step(lr);
        }
        tch::no_grad(|| -> Result<()> {
            for ((p, m), v) in self.params.iter_mut().zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq) {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let _ = m.f_lerp_(&g, 1.0 - b1)?;
                let _ = v.f_mul_scalar_(b2)?.f_addcmul_(&g, &g.f_mul_scalar(1.0 - b2)?)?;
                let denom = v.f_sqrt()?.f_div_scalar(bc2.sqrt())?.f_add_scalar(self.eps)?;
                let _ = p.tensor.f_sub_(&m.f_div(&denom)?.f_mul_scalar(lr / bc1)?)?;
            }
            Ok(())
        })
    }

    /// [`Adam::step`] in one kernel; `self.steps` already counts this step.
    fn fused_step(&mut self, lr: f64) -> Result<()> {
        let Some(first) = self.params.first() else { return Ok(()) };
        // The kernel reads a float step count per parameter.
        let counts = match &self.device_steps {
            Some(c) => c.shallow_clone().f_fill_(self.steps as f64)?,
            None => Tensor::f_full(
                [self.params.len() as i64],
                self.steps as f64,
                (tch::Kind::Float, first.tensor.device()),
            )?,
        };
        self.fused_kernel(&counts, crate::native::Rate::Value(lr))
    }

    /// The fused kernel on the parameters that have a gradient; `counts[i]` is parameter i's
    /// step number.
    fn fused_kernel(&self, counts: &Tensor, lr: crate::native::Rate<'_>) -> Result<()> {
        let mut lists: (Vec<&Tensor>, Vec<Tensor>, Vec<&Tensor>, Vec<&Tensor>) = Default::default();
        let mut steps = Vec::new();
        for (i, ((p, m), v)) in self.params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq).enumerate() {
            let g = p.tensor.grad();
            if g.defined() {
                lists.0.push(&p.tensor);
                lists.1.push(g);
                lists.2.push(m);
                lists.3.push(v);
                steps.push(counts.f_select(0, i as i64)?);
            }
        }
        if lists.0.is_empty() {
            return Ok(());
        }
        let grads = lists.1.iter().collect::<Vec<_>>();
        let state = crate::native::AdamState {
            exp_avg: &lists.2,
            exp_avg_sq: &lists.3,
            steps: &steps.iter().collect::<Vec<_>>(),
        };
        crate::native::fused_adam(&lists.0, &grads, state, lr, self.betas, self.eps)
    }

    /// `<param>.exp_avg`, `<param>.exp_avg_sq` and `step`, under `prefix`.
    pub fn state_dict(&self, prefix: &str) -> StateDict {
        let mut d = StateDict::new();
        d.insert(format!("{prefix}step"), Tensor::from(self.steps));
        for ((p, m), v) in self.params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            d.insert(format!("{prefix}{}.exp_avg", p.name), m.shallow_clone());
            d.insert(format!("{prefix}{}.exp_avg_sq", p.name), v.shallow_clone());
        }
        d
    }

    pub fn load_state_dict(&mut self, dict: &StateDict, prefix: &str) -> Result<()> {
        let step_key = format!("{prefix}step");
        self.steps = dict.get(&step_key).with_context(|| format!("missing `{step_key}`"))?.f_int64_value(&[])?;
        self.device_steps = None;
        for ((p, m), v) in self.params.iter().zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq) {
            for (suffix, slot) in [("exp_avg", m), ("exp_avg_sq", v)] {
                let key = format!("{prefix}{}.{suffix}", p.name);
                let t = dict.get(&key).with_context(|| format!("missing `{key}`"))?;
                *slot = restore(t, &p.tensor, &key)?;
            }
        }
        Ok(())
    }
}

/// A saved state tensor, checked against its parameter and moved to its device and memory
/// layout (the fused kernels want a parameter's state laid out as the parameter).
fn restore(saved: &Tensor, like: &Tensor, key: &str) -> Result<Tensor> {
    ensure!(saved.size() == like.size(), "`{key}` has shape {:?}, its parameter {:?}", saved.size(), like.size());
    let t = saved.f_to_kind(like.kind())?.f_to_device(like.device())?.f_contiguous()?;
    if crate::model::is_channels_last(like) {
        return crate::model::channels_last(&t);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn param(values: &[f32], grad: &[f32], visits: usize) -> Param {
        let t = Tensor::from_slice(values).set_requires_grad(true);
        let loss = (&t * Tensor::from_slice(grad)).sum(Kind::Float);
        loss.backward();
        Param { name: "w".into(), tensor: t, visits }
    }

    #[test]
    fn clipping_scales_to_the_norm_by_hand() {
        // Gradients (3, 4) and (0): total norm 5; clipped to 1 they become (0.6, 0.8).
        let a = param(&[1.0, 1.0], &[3.0, 4.0], 1);
        let b = param(&[1.0], &[0.0], 1);
        let total = clip_grad_norm(&[&a.tensor, &b.tensor], 1.0).unwrap();
        assert!((total.double_value(&[]) - 5.0).abs() < 1e-6);
        let g = a.tensor.grad();
        assert!((g.double_value(&[0]) - 0.6).abs() < 1e-6 && (g.double_value(&[1]) - 0.8).abs() < 1e-6);
        // Under the limit nothing changes (scale 1, not 10/5).
        let c = param(&[1.0, 1.0], &[3.0, 4.0], 1);
        let total = clip_grad_norm(&[&c.tensor], 10.0).unwrap();
        assert!((total.double_value(&[]) - 5.0).abs() < 1e-6);
        assert_eq!(c.tensor.grad().double_value(&[1]), 4.0);
    }

    #[test]
    fn poly_schedule_by_hand() {
        assert_eq!(poly_lr(2.5e-4, 0, 250_000, 0.9), 2.5e-4);
        // SPEC §4.1: the final rate at 120000 of 250000 is 1.388e-4 (seg), 5.55e-5 (D).
        assert!((poly_lr(2.5e-4, 120_000, 250_000, 0.9) - 1.388e-4).abs() < 1e-7);
        assert!((poly_lr(1e-4, 120_000, 250_000, 0.9) - 5.55e-5).abs() < 1e-7);
    }

    #[test]
    fn sgd_two_steps_by_hand() {
        for fused in [true, false] {
            // w = 1, g = 2, wd = 0.5, m = 0.9, lr = 0.1.
            // step 1: d = 2 + 0.5 = 2.5; buf = 2.5; w = 1 − 0.25 = 0.75.
            let p = param(&[1.0], &[2.0], 1);
            let mut sgd = Sgd::new(vec![Group { lr_factor: 1.0, params: vec![p] }], 0.9, 0.5);
            sgd.fused = fused;
            sgd.step(0.1).unwrap();
            let w = &sgd.groups[0].params[0].tensor;
            assert!((w.double_value(&[0]) - 0.75).abs() < 1e-7);
            // step 2 with the same gradient 2: d = 2 + 0.375 = 2.375; buf = 2.25 + 2.375 = 4.625;
            // w = 0.75 − 0.4625 = 0.2875.
            sgd.step(0.1).unwrap();
            let w = &sgd.groups[0].params[0].tensor;
            assert!((w.double_value(&[0]) - 0.2875).abs() < 1e-6, "fused {fused}: {}", w.double_value(&[0]));
        }
    }

    /// Random parameters (one without a gradient), three steps with new gradients, a save
    /// and restore in the middle: the fused kernels give the per-parameter arithmetic.
    #[test]
    fn fused_steps_equal_the_per_parameter_steps() {
        tch::manual_seed(3);
        let shapes: [&[i64]; 4] = [&[8, 3, 3, 3], &[8], &[5, 8, 1, 1], &[7]];
        let init: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect();
        let grads: Vec<Vec<Tensor>> =
            (0..3).map(|_| shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect()).collect();
        let params = || -> Vec<Param> {
            init.iter()
                .enumerate()
                .map(|(i, t)| Param { name: format!("p{i}"), tensor: t.copy().set_requires_grad(true), visits: 1 })
                .collect()
        };
        let set_grads = |ps: &[Param], offset: usize, step: usize| {
            for (i, p) in ps.iter().enumerate().map(|(i, p)| (i + offset, p)) {
                let mut g = p.tensor.grad();
                if i == 3 {
                    continue; // never receives a gradient
                }
                if g.defined() {
                    g.copy_(&grads[step][i]);
                } else {
                    (&p.tensor * &grads[step][i]).sum(Kind::Float).backward();
                }
            }
        };
        let mut results = Vec::new();
        for fused in [true, false] {
            let mut ps = params();
            let heads = ps.split_off(2);
            let mut sgd = Sgd::new(
                vec![Group { lr_factor: 1.0, params: ps }, Group { lr_factor: 10.0, params: heads }],
                0.9,
                5e-4,
            );
            let mut adam = Adam::new(params(), (0.9, 0.99)).unwrap();
            sgd.fused = fused;
            adam.fused = fused;
            for step in 0..3 {
                if step == 2 {
                    // Resume from saved state into fresh optimisers over the same tensors.
                    let (sd, ad) = (sgd.state_dict("s."), adam.state_dict("a."));
                    let groups = std::mem::take(&mut sgd.groups);
                    sgd = Sgd::new(groups, 0.9, 5e-4);
                    sgd.fused = fused;
                    sgd.load_state_dict(&sd, "s.").unwrap();
                    let ps = std::mem::take(&mut adam.params);
                    adam = Adam::new(ps, (0.9, 0.99)).unwrap();
                    adam.fused = fused;
                    adam.load_state_dict(&ad, "a.").unwrap();
                }
                set_grads(&sgd.groups[0].params, 0, step);
                set_grads(&sgd.groups[1].params, 2, step);
                set_grads(&adam.params, 0, step);
                sgd.step(0.01).unwrap();
                adam.step(1e-3).unwrap();
            }
            let weights: Vec<Tensor> = sgd
                .groups
                .iter()
                .flat_map(|g| g.params.iter())
                .chain(&adam.params)
                .map(|p| p.tensor.detach().copy())
                .collect();
            results.push(weights);
        }
        for (i, (f, u)) in results[0].iter().zip(&results[1]).enumerate() {
            let diff = (f - u).abs().max().double_value(&[]);
            // float32 arithmetic in another order: a few ulps of values of order 1.
            assert!(diff < 1e-6, "parameter {i}: fused and per-parameter differ by {diff}");
        }
        // The parameter without a gradient did not move; the others did.
        assert!(results[0][3].equal(&init[3]) && results[0][7].equal(&init[3]));
        assert!(!results[0][0].equal(&init[0]) && !results[0][4].equal(&init[0]));
    }

    #[test]
    fn sgd_duplicate_visits_compound_as_pytorch_041() {
        // Two visits, w = 1, g = 2, wd = 0.5, m = 0.9, lr = 0.1, first step:
        // visit 1: g = 2.5 (in place); buf = 2.5; w = 0.75.
        // visit 2: g = 2.5 + 0.375 = 2.875; buf = 2.25 + 2.875 = 5.125; w = 0.75 − 0.5125 = 0.2375.
        let p = param(&[1.0], &[2.0], 2);
        let mut sgd = Sgd::new(vec![Group { lr_factor: 1.0, params: vec![p] }], 0.9, 0.5);
        sgd.step(0.1).unwrap();
        let w = sgd.groups[0].params[0].tensor.double_value(&[0]);
        assert!((w - 0.2375).abs() < 1e-6, "{w}");
    }

    #[test]
    fn group_factor_scales_the_rate() {
        let p = param(&[0.0], &[1.0], 1);
        let mut sgd = Sgd::new(vec![Group { lr_factor: 10.0, params: vec![p] }], 0.0, 0.0);
        sgd.step(0.01).unwrap();
        assert!((sgd.groups[0].params[0].tensor.double_value(&[0]) + 0.1).abs() < 1e-7);
    }

    #[test]
    fn adam_first_step_by_hand() {
        for fused in [true, false] {
            // First Adam step moves each weight by lr·sign(g) (up to eps): m̂ = g, v̂ = g².
            let p = param(&[1.0, -1.0], &[3.0, -0.5], 1);
            let mut adam = Adam::new(vec![p], (0.9, 0.99)).unwrap();
            adam.fused = fused;
            adam.step(0.01).unwrap();
            let w = &adam.params[0].tensor;
            assert!((w.double_value(&[0]) - 0.99).abs() < 1e-6);
            assert!((w.double_value(&[1]) + 0.99).abs() < 1e-6);
            // Second step with the same gradient: still lr·sign(g).
            adam.step(0.01).unwrap();
            assert!((adam.params[0].tensor.double_value(&[0]) - 0.98).abs() < 1e-6, "fused {fused}");
        }
    }

    #[test]
    fn state_round_trips() {
        let p = param(&[1.0, 2.0], &[0.5, 0.25], 1);
        let mut adam = Adam::new(vec![p], (0.9, 0.99)).unwrap();
        adam.step(0.1).unwrap();
        let saved = adam.state_dict("d.");
        let q = Param { name: "w".into(), tensor: Tensor::zeros([2], (Kind::Float, Device::Cpu)), visits: 1 };
        let mut other = Adam::new(vec![q], (0.9, 0.99)).unwrap();
        other.load_state_dict(&saved, "d.").unwrap();
        assert_eq!(other.steps, 1);
        assert!(other.exp_avg[0].equal(&adam.exp_avg[0]));
        let bad = Param { name: "w".into(), tensor: Tensor::zeros([3], (Kind::Float, Device::Cpu)), visits: 1 };
        let mut wrong = Adam::new(vec![bad], (0.9, 0.99)).unwrap();
        assert!(wrong.load_state_dict(&saved, "d.").is_err());
    }
}
