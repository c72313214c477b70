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
    momentum: f64,
    weight_decay: f64,
    /// Momentum buffers, by group then parameter; `None` before the first step.
    buffers: Vec<Vec<Option<Tensor>>>,
}

impl Sgd {
    pub fn new(groups: Vec<Group>, momentum: f64, weight_decay: f64) -> Self {
        let buffers = groups.iter().map(|g| g.params.iter().map(|_| None).collect()).collect();
        Sgd { groups, momentum, weight_decay, buffers }
    }

    pub fn zero_grad(&mut self) {
        for g in &mut self.groups {
            for p in &mut g.params {
                p.tensor.zero_grad();
            }
        }
    }

    /// One step at base learning rate `lr` (each group at `lr · lr_factor`).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let (m, wd) = (self.momentum, self.weight_decay);
        tch::no_grad(|| -> Result<()> {
            for (g, bufs) in self.groups.iter_mut().zip(&mut self.buffers) {
                let lr = lr * g.lr_factor;
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

/// `torch.optim.Adam(betas, eps=1e-8)`, no weight decay (current PyTorch's arithmetic).
pub struct Adam {
    pub params: Vec<Param>,
    betas: (f64, f64),
    eps: f64,
    steps: i64,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
}

impl Adam {
    pub fn new(params: Vec<Param>, betas: (f64, f64)) -> Result<Self> {
        let zeros = |p: &Param| p.tensor.f_zeros_like();
        let exp_avg = params.iter().map(zeros).collect::<Result<_, _>>()?;
        let exp_avg_sq = params.iter().map(zeros).collect::<Result<_, _>>()?;
        Ok(Adam { params, betas, eps: 1e-8, steps: 0, exp_avg, exp_avg_sq })
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.steps += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.steps as i32);
        let bc2 = 1.0 - b2.powi(self.steps as i32);
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

/// A saved state tensor, checked against its parameter and moved to its device.
fn restore(saved: &Tensor, like: &Tensor, key: &str) -> Result<Tensor> {
    ensure!(saved.size() == like.size(), "`{key}` has shape {:?}, its parameter {:?}", saved.size(), like.size());
    Ok(saved.f_to_kind(like.kind())?.f_to_device(like.device())?.f_contiguous()?)
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
    fn poly_schedule_by_hand() {
        assert_eq!(poly_lr(2.5e-4, 0, 250_000, 0.9), 2.5e-4);
        // SPEC §4.1: the final rate at 120000 of 250000 is 1.388e-4 (seg), 5.55e-5 (D).
        assert!((poly_lr(2.5e-4, 120_000, 250_000, 0.9) - 1.388e-4).abs() < 1e-7);
        assert!((poly_lr(1e-4, 120_000, 250_000, 0.9) - 5.55e-5).abs() < 1e-7);
    }

    #[test]
    fn sgd_two_steps_by_hand() {
        // w = 1, g = 2, wd = 0.5, m = 0.9, lr = 0.1.
        // step 1: d = 2 + 0.5 = 2.5; buf = 2.5; w = 1 − 0.25 = 0.75.
        let p = param(&[1.0], &[2.0], 1);
        let mut sgd = Sgd::new(vec![Group { lr_factor: 1.0, params: vec![p] }], 0.9, 0.5);
        sgd.step(0.1).unwrap();
        let w = &sgd.groups[0].params[0].tensor;
        assert!((w.double_value(&[0]) - 0.75).abs() < 1e-7);
        // step 2 with the same gradient 2: d = 2 + 0.375 = 2.375; buf = 2.25 + 2.375 = 4.625;
        // w = 0.75 − 0.4625 = 0.2875.
        sgd.step(0.1).unwrap();
        let w = &sgd.groups[0].params[0].tensor;
        assert!((w.double_value(&[0]) - 0.2875).abs() < 1e-6, "{}", w.double_value(&[0]));
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
        // First Adam step moves each weight by lr·sign(g) (up to eps): m̂ = g, v̂ = g².
        let p = param(&[1.0, -1.0], &[3.0, -0.5], 1);
        let mut adam = Adam::new(vec![p], (0.9, 0.99)).unwrap();
        adam.step(0.01).unwrap();
        let w = &adam.params[0].tensor;
        assert!((w.double_value(&[0]) - 0.99).abs() < 1e-6);
        assert!((w.double_value(&[1]) + 0.99).abs() < 1e-6);
        // Second step with the same gradient: still lr·sign(g).
        adam.step(0.01).unwrap();
        assert!((adam.params[0].tensor.double_value(&[0]) - 0.98).abs() < 1e-6);
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
