//! The first two training iterations of every method against the reference training step
//! in PyTorch (tools/fixtures/make_train_fixtures.py) on the same ResNet-101 weights and
//! images; and the gradient isolation of SPEC §3 (discriminators frozen during the
//! segmentation update, segmentation outputs detached for the discriminator update).
//!
//! Tolerance: relative 1e-4 on each loss of the first iteration (float32 CPU kernels in
//! both). The second iteration's losses depend on every gradient and optimiser update of the
//! first, and this fixture (random weights, logits in the thousands, BatchNorm in training
//! mode) amplifies rounding: the reference itself, run on an AMD EPYC (the committed
//! fixture) and on an Intel Xeon with AVX-512, gives first-iteration losses within 7e-6 of
//! each other but second-iteration losses up to 2.9e-2 apart (`make_train_fixtures.py` on
//! both; ours matches each machine's reference within 1e-5 on its own machine). So the
//! second iteration is held to 5e-2 only: enough to catch a missing update or a wrong
//! learning rate (iteration 0 to 1 moves the losses by 10 % to 90 %).
//!
//! The first update itself (`updates.safetensors`: w1 − w0 of ten parameters, sliced) is
//! checked tightly where rounding allows. `make_train_fixtures.py --sensitivity` measures,
//! per parameter, how far float64 arithmetic moves the reference's update (rounding that no
//! fixture pins down) and how far dropping one loss term moves it (what the test must see).
//! Norm-relative tolerances, per part of the network (see [`UpdateTol`]):
//! - heads (layer5, layer6; after the last BatchNorm): rounding ≤ 1.0e-4; tolerance 3e-4.
//!   Dropping any single loss term moves them by ≥ 9.7e-4 (AdvEnt's main adversarial term
//!   on layer6; the auxiliary ones 1.2e-3 to 1.0 on layer5), weight decay 4e-3 and 5.9e-4 on
//!   their biases: each is caught, MinEnt's and AdvEnt's 1 % terms included.
//! - discriminators (their last convolution; Adam): rounding ≤ 3.9e-4; tolerance 2e-3.
//!   Adam's first step is about ± its rate on every element, so a swapped domain label
//!   (sign flipped: error 2), a missing update (1) or a rate off by 2x (1) shows; a scale
//!   of the loss (the reference's halving) cancels in that step and does not.
//! - backbone (conv1, layer4.2.conv3; 1x rate): the gradient crosses 100 BatchNorm layers
//!   in training mode, whose backward subtracts batch means: float64 moves the update by
//!   4.0e-2. Tolerance 0.1: catches a missing segmentation loss (measured 0.98 and 1.0) or
//!   the heads' 10x rate (error 9), not a term of a few percent (those the heads catch).
//!
//! Dropping AdvEnt's main adversarial term from our side (λ = 0) fails the test, on layer6
//! (1.0e-3), as the study predicts.
mod common;

use advent::config::{Config, Method};
use advent::train::{GraphGrads, Trainer};
use common::*;
use std::collections::HashMap;
use tch::{Device, Tensor};

const TOL: f64 = 1e-4;
/// The second iteration, on any CPU (see the module's notes).
const TOL_SECOND: f64 = 5e-2;

/// Norm-relative tolerances on the first update (see the module's notes).
struct UpdateTol;

impl UpdateTol {
    const HEADS: f64 = 3e-4;
    const DISCRIMINATORS: f64 = 2e-3;
    const BACKBONE: f64 = 0.1;

    fn of(name: &str) -> f64 {
        if name.starts_with("layer5.") || name.starts_with("layer6.") {
            Self::HEADS
        } else if name.starts_with("d_") {
            Self::DISCRIMINATORS
        } else {
            Self::BACKBONE
        }
    }
}

/// The parameter a fixture key names (`d_main.8.weight`: the main discriminator's `8.weight`).
fn parameter(t: &Trainer, name: &str) -> Tensor {
    let (vs, key) = match name.split_once('.') {
        Some(("d_main", key)) => (&t.d_main.as_ref().unwrap().vs, key),
        Some(("d_aux", key)) => (&t.d_aux.as_ref().unwrap().vs, key),
        _ => (&t.model.vs, name),
    };
    vs.variables().get(key).unwrap_or_else(|| panic!("no parameter {name}")).detach().copy()
}

/// `||ours − reference|| / ||reference||` of one first-update slice: the reference's
/// `[rows, cols, ...]` is the leading part of ours.
fn update_error(ours: &Tensor, reference: &Tensor) -> f64 {
    let mut ours = ours.shallow_clone();
    for (dim, &n) in reference.size().iter().enumerate().take(2) {
        ours = ours.narrow(dim as i64, 0, n);
    }
    let (ours, reference) = (ours.to_kind(tch::Kind::Double), reference.to_kind(tch::Kind::Double));
    (&ours - &reference).norm().double_value(&[]) / reference.norm().double_value(&[])
}

/// The fixture script's settings.
fn fixture_config(method: &str, duplicates: bool) -> Config {
    let text = format!(
        r#"
        [model]
        num_classes = 19
        [train]
        method = "{method}"
        learning_rate = 1e-3
        learning_rate_d = 1e-3
        max_iters = 10
        early_stop = 10
        lambda_adv_main = 0.1
        lambda_adv_aux = 0.02
        lambda_ent_main = 0.1
        lambda_ent_aux = 0.02
        reference_duplicate_params = {duplicates}
        "#
    );
    Config::parse(&text, &[]).unwrap()
}

fn trainer(method: &str, duplicates: bool) -> Trainer {
    let t = Trainer::new(&fixture_config(method, duplicates), Device::Cpu).unwrap();
    fill_deterministic(&t.model.vs);
    for d in [&t.d_main, &t.d_aux].into_iter().flatten() {
        fill_deterministic(&d.vs);
    }
    t
}

fn check_method(method: &str, duplicates: bool, want: &HashMap<String, Tensor>, updates: &HashMap<String, Tensor>) {
    let mut t = trainer(method, duplicates);
    let (xs, ys, xt) = training_inputs();
    let tag = if duplicates { format!("{method}_dup") } else { method.to_string() };
    let prefix = format!("{tag}.update0.");
    let mut watched: Vec<(&str, &Tensor, Tensor)> = updates
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|name| (name, v)))
        .map(|(name, v)| (name, v, parameter(&t, name)))
        .collect();
    watched.sort_by_key(|w| w.0);
    let expected_count = if method.starts_with("advent") { 10 } else { 6 };
    assert_eq!(watched.len(), expected_count, "{tag}: first-update fixtures");
    for i in 0..2u64 {
        let losses = t.step(i, &xs, &ys, Some(&xt)).unwrap();
        if i == 0 {
            for (name, reference, before) in &watched {
                let err = update_error(&(parameter(&t, name) - before), reference);
                let tol = UpdateTol::of(name);
                println!("{tag} first update of {name}: {err:.1e} (tolerance {tol:e})");
                assert!(err < tol, "{tag}: first update of {name} is {err:e} from the reference's");
            }
        }
        let prefix = format!("{tag}.iter{i}.");
        let expected: Vec<&String> = want.keys().filter(|k| k.starts_with(&prefix)).collect();
        assert_eq!(
            losses.len(),
            expected.len(),
            "{tag} iteration {i}: logged {:?}",
            losses.iter().map(|l| l.0).collect::<Vec<_>>()
        );
        for (name, value) in &losses {
            let r =
                want.get(&format!("{prefix}{name}")).unwrap_or_else(|| panic!("{prefix}{name} not in the reference"));
            let (ours, theirs) = (value.double_value(&[]), r.double_value(&[0]));
            let rel = (ours - theirs).abs() / theirs.abs().max(1e-3);
            let tol = if i == 0 { TOL } else { TOL_SECOND };
            assert!(rel < tol, "{prefix}{name}: ours {ours}, reference {theirs} (relative {rel:e})");
        }
    }
}

#[test]
fn every_method_matches_the_reference_step() {
    let want = read_fixture("train/steps.safetensors");
    let updates = read_fixture("train/updates.safetensors");
    for method in ["source_only", "minent", "advent", "advent_minent"] {
        check_method(method, false, &want, &updates);
    }
}

#[test]
fn duplicated_parameters_follow_pytorch_041() {
    let want = read_fixture("train/steps.safetensors");
    let updates = read_fixture("train/updates.safetensors");
    check_method("source_only", true, &want, &updates);
}

#[test]
fn learning_rates_follow_the_poly_schedule() {
    let mut c = Config::defaults();
    c.train.method = Method::SourceOnly;
    c.model.arch = "deeplabv2-r50".into();
    let t = Trainer::new(&c, Device::Cpu).unwrap();
    // By hand: base · (1 − i/250000)^0.9.
    let (lr0, lrd0) = t.learning_rates(0);
    assert_eq!((lr0, lrd0), (2.5e-4, 1e-4));
    let (lr1, _) = t.learning_rates(1);
    assert!((lr1 - 2.5e-4 * (1.0f64 - 1.0 / 250_000.0).powf(0.9)).abs() < 1e-15);
    let (lr_end, lrd_end) = t.learning_rates(120_000);
    // 0.52^0.9 = exp(0.9 · ln 0.52) = 0.555141 (SPEC §4.1 rounds to 1.388e-4 and 5.55e-5).
    assert!((lr_end - 1.387852e-4).abs() < 1e-9, "{lr_end}");
    assert!((lrd_end - 5.551406e-5).abs() < 1e-10, "{lrd_end}");
    // Heads at 10x, backbone at 1x.
    let factors: Vec<f64> = t.sgd.groups.iter().map(|g| g.lr_factor).collect();
    assert_eq!(factors, [1.0, 10.0]);
    assert!(t.sgd.groups[1].params.iter().all(|p| p.name.starts_with("layer5.") || p.name.starts_with("layer6.")));
    assert!(t.sgd.groups[0].params.iter().all(|p| !p.name.contains("bn") && !p.name.contains("downsample.1")));
}

fn grads(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(k, t)| {
            let g = t.grad();
            (k, if g.defined() { g.copy() } else { Tensor::zeros_like(&t) })
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn gradients_stay_on_their_side() {
    let mut c = fixture_config("advent", false);
    c.model.arch = "deeplabv2-r50".into();
    c.model.num_classes = 5;
    let mut t = Trainer::new(&c, Device::Cpu).unwrap();
    let (xs, ys, xt) = training_inputs();
    let ys = ys.clamp_max(4).where_self(&ys.ne(255), &Tensor::from(255i64));
    t.zero_grad().unwrap();
    let (_, detached) = t.segmentation_backward(&xs, &ys, Some(&xt)).unwrap();
    // The discriminators received nothing from the segmentation update.
    for d in [&t.d_main, &t.d_aux].into_iter().flatten() {
        for p in &d.opt.params {
            let g = p.tensor.grad();
            assert!(!g.defined() || g.abs().max().double_value(&[]) == 0.0, "{} got a gradient", p.name);
        }
    }
    let seg_before = grads(&t.model.vs);
    assert!(seg_before.iter().any(|(_, g)| g.abs().max().double_value(&[]) > 0.0));
    t.discriminator_backward(&detached.unwrap()).unwrap();
    // The segmentation network received nothing from the discriminator update...
    for ((k, a), (_, b)) in seg_before.iter().zip(grads(&t.model.vs)) {
        assert!(a.equal(&b), "{k} changed during the discriminator update");
    }
    // ...and the discriminators did learn from it.
    for d in [&t.d_main, &t.d_aux].into_iter().flatten() {
        assert!(d.opt.params.iter().all(|p| p.tensor.grad().abs().max().double_value(&[]) > 0.0));
    }
}

/// bfloat16 autocast (`train.precision = "bf16"`, here on the CPU): the first iteration's
/// losses stay within 1e-2 of the float32 reference (8-bit mantissas, 4e-3 per rounding, in every convolution;
/// losses, softmax and entropies in float32), and the step runs the reference's iteration.
#[test]
fn bf16_autocast_step_stays_near_the_reference() {
    let want = read_fixture("train/steps.safetensors");
    let mut config = fixture_config("advent", false);
    config.train.precision = advent::device::Precision::Bf16;
    let mut t = Trainer::new(&config, Device::Cpu).unwrap();
    fill_deterministic(&t.model.vs);
    for d in [&t.d_main, &t.d_aux].into_iter().flatten() {
        fill_deterministic(&d.vs);
    }
    let (xs, ys, xt) = training_inputs();
    let losses = t.step(0, &xs, &ys, Some(&xt)).unwrap();
    assert_eq!(losses.len(), 6);
    let mut largest: f64 = 0.0;
    for (name, value) in &losses {
        assert_eq!(value.kind(), tch::Kind::Float, "{name} is logged in float32");
        let r = want[&format!("advent.iter0.{name}")].double_value(&[0]);
        let rel = (value.double_value(&[]) - r).abs() / r.abs();
        println!("bf16 {name}: {} vs {r} ({rel:.1e})", value.double_value(&[]));
        assert!(rel < 1e-2, "{name}: relative {rel:e}");
        largest = largest.max(rel);
    }
    // And autocast was on: float32 agrees to 1e-5 (see every_method_matches_the_reference_step).
    assert!(largest > 1e-4, "no loss moved: was bf16 autocast active?");
    // The weights stay float32: autocast casts copies.
    assert_eq!(t.model.vs.variables()["layer1.0.conv1.weight"].kind(), tch::Kind::Float);
}

/// The speed options change the arithmetic's order, not the method: with channels-last
/// weights and inputs (`train.channels_last`), with the per-parameter optimiser instead
/// of the fused kernels (the default, used by every test above), and with the upsampling
/// done by products (`train.upsampling = "matmul"`, NCHW and channels-last), AdvEnt's first
/// two iterations still give the reference's losses. Tolerance: 1e-4 relative on the first
/// iteration (other convolution kernels: oneDNN's NHWC ones); [`TOL_SECOND`] on the second,
/// which inherits the fixture's ill-conditioning (one CPU thread instead of two moves it by
/// 4e-2 on the fixture's machine; channels-last reached 2.0e-2 on an AVX-512 Xeon).
#[test]
fn speed_options_keep_the_reference_losses() {
    let want = read_fixture("train/steps.safetensors");
    use advent::loss::Upsampling::{Kernel, Matmul};
    for (channels_last, fused, upsampling) in
        [(true, true, Kernel), (false, false, Kernel), (false, true, Matmul), (true, true, Matmul)]
    {
        let mut config = fixture_config("advent", false);
        config.train.channels_last = channels_last;
        config.train.upsampling = upsampling;
        let mut t = Trainer::new(&config, Device::Cpu).unwrap();
        fill_deterministic(&t.model.vs);
        for d in [&t.d_main, &t.d_aux].into_iter().flatten() {
            fill_deterministic(&d.vs);
        }
        t.sgd.fused = fused;
        for d in [&mut t.d_main, &mut t.d_aux].into_iter().flatten() {
            d.opt.fused = fused;
        }
        let (xs, ys, xt) = training_inputs();
        for i in 0..2u64 {
            for (name, value) in t.step(i, &xs, &ys, Some(&xt)).unwrap() {
                let r = want[&format!("advent.iter{i}.{name}")].double_value(&[0]);
                let rel = (value.double_value(&[]) - r).abs() / r.abs().max(1e-3);
                let tol = if i == 0 { TOL } else { TOL_SECOND };
                let case = format!("channels_last {channels_last} fused {fused} {upsampling:?}");
                println!("{case} iteration {i} {name}: {rel:.1e}");
                assert!(rel < tol, "{case} iteration {i} {name}: {rel:e}");
            }
        }
        let w = &t.model.vs.variables()["layer3.0.conv2.weight"];
        assert_eq!(advent::model::is_channels_last(w), channels_last, "the weights kept their layout");
        if channels_last {
            // A checkpoint is written in the usual layout and loads into a plain network.
            let dict = t.model.state_dict();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.pth");
            advent::weights::save(&dict, &path).unwrap();
            let back = advent::weights::load(&path).unwrap();
            assert!(back.get("layer3.0.conv2.weight").unwrap().is_contiguous());
            assert!(back.get("layer3.0.conv2.weight").unwrap().equal(&w.detach()));
        }
    }
}

/// `train.cuda_graph` replays [`Trainer::graph_body`]: learning rates read from float32
/// tensors on the device, Adam's step count advanced there, and gradients either zeroed in
/// place ([`GraphGrads::Held`]) or absent when the body starts ([`GraphGrads::Freed`]: a
/// replay writes them afresh; run eagerly, they are freed before each iteration, as the
/// capture finds them). Run eagerly on the CPU, the body must be the eager step in both
/// variants: AdvEnt + MinEnt (every loss, both discriminators) on the tiny network, one eager
/// iteration then four of the body, against five eager iterations from the same start. The rates are chosen exact in float32
/// (powers of two, a linear decay in eighths), since the body passes them through float32
/// tensors instead of f64 arguments: a rounded rate moves the weights by 1e-7, which this
/// fixture (BatchNorm in training mode on random images) amplifies to 1e-2 in three
/// iterations. With exact rates the arithmetic is the same: tolerance relative 1e-6.
#[test]
fn the_graph_body_is_the_eager_step() {
    graph_body_against_eager(GraphGrads::Held);
    graph_body_against_eager(GraphGrads::Freed);
}

fn graph_body_against_eager(grads: GraphGrads) {
    let text = r#"
        [model]
        arch = "deeplabv2-tiny"
        num_classes = 5
        [train]
        method = "advent_minent"
        learning_rate = 0.0078125
        learning_rate_d = 0.0009765625
        power = 1.0
        max_iters = 8
        early_stop = 8
        discriminator_width = 8
        lambda_ent_main = 0.1
        lambda_ent_aux = 0.02
        "#;
    let config = Config::parse(text, &[]).unwrap();
    tch::manual_seed(11);
    let xs = Tensor::randn([2, 3, 64, 96], (tch::Kind::Float, Device::Cpu)) * 50.0;
    let labels = Tensor::randint(6, [2, 64, 96], (tch::Kind::Int64, Device::Cpu));
    let ys = labels.where_self(&labels.lt(5), &Tensor::from(255i64));
    let xt = Tensor::randn([2, 3, 48, 80], (tch::Kind::Float, Device::Cpu)) * 50.0;
    let (mut eager, mut body) =
        (Trainer::new(&config, Device::Cpu).unwrap(), Trainer::new(&config, Device::Cpu).unwrap());
    body.graph_grads = grads;
    // The same starting weights whatever other tests draw from the process-wide generator
    // while these two are built (tests run in parallel threads).
    body.model.vs.copy(&eager.model.vs).unwrap();
    for (from, to) in [(&eager.d_main, &mut body.d_main), (&eager.d_aux, &mut body.d_aux)] {
        to.as_mut().unwrap().vs.copy(&from.as_ref().unwrap().vs).unwrap();
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1e-3);
    let mut checked = 0;
    for i in 0..5u64 {
        let want = eager.step(i, &xs, &ys, Some(&xt)).unwrap();
        let got = if i == 0 {
            let losses = body.step(i, &xs, &ys, Some(&xt)).unwrap();
            body.prepare_graph_body().unwrap();
            losses
        } else {
            let (lr, lr_d) = body.learning_rates(i);
            let (lr, lr_d) = (Tensor::from(lr as f32), Tensor::from(lr_d as f32));
            if grads == GraphGrads::Freed {
                body.zero_grad().unwrap();
            }
            let losses = body.graph_body(&xs, &ys, Some(&xt), &lr, &lr_d).unwrap();
            body.count_graph_step();
            losses
        };
        assert_eq!(want.len(), 8, "every loss of AdvEnt + MinEnt");
        for ((name, w), (other, g)) in want.iter().zip(&got) {
            assert_eq!(name, other);
            let (w, g) = (w.double_value(&[]), g.double_value(&[]));
            assert!(close(w, g), "{grads:?}: iteration {i} {name}: eager {w}, graph body {g}");
            checked += 1;
        }
    }
    let pairs =
        [(&eager.model.vs, &body.model.vs), (&eager.d_main.as_ref().unwrap().vs, &body.d_main.as_ref().unwrap().vs)];
    for (a, b) in pairs {
        let b = b.variables();
        for (name, w) in a.variables() {
            let diff = (&w - &b[&name]).abs().max().double_value(&[]);
            let scale = w.abs().max().double_value(&[]).max(1e-3);
            assert!(diff <= 1e-6 * scale, "{grads:?}: {name}: weights differ by {diff:e} (scale {scale:e})");
            checked += 1;
        }
    }
    assert_eq!(eager.d_main.as_ref().unwrap().opt.steps(), body.d_main.as_ref().unwrap().opt.steps());
    assert!(checked > 40, "{checked} checks");
}
