//! The parity fixtures on a CUDA device (ignored: CI has no GPU). Run on a GPU machine with
//! `cuda-* --ignored --nocapture`; each check prints its measured error.
//!
//! libtorch runs convolutions in TF32 on Ampere and later GPUs by default (as PyTorch does),
//! so the tolerances here are TF32's: relative 2e-2 of the output's scale for a forward pass
//! through ResNet-101 and for the losses of the first two training iterations (10-bit
//! mantissas, about 1e-3 per layer, accumulated over 100 layers).

mod common;

use advent::config::Config;
use advent::model::{ModelConfig, SegModel};
use advent::train::Trainer;
use common::*;
use tch::{Device, Kind, Tensor};

const TF32_TOL: f64 = 2e-2;

fn cuda() -> Option<Device> {
    match advent::device::parse("cuda") {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn resnet101_forward_on_cuda_matches_reference() {
    let Some(device) = cuda() else { return };
    let want = read_fixture("model/r101_multi.safetensors");
    let model = SegModel::new(ModelConfig::deeplabv2_r101(19), device).unwrap();
    fill_deterministic(&model.vs);
    let x = input_image(65, 97).to_device(device);
    for (train, tag) in [(false, "eval"), (true, "train")] {
        let heads = tch::no_grad(|| model.forward_t(&x, train)).unwrap();
        for (name, t) in [("main", &heads.main), ("aux", heads.aux.as_ref().unwrap())] {
            let err = rel_err(&t.to_device(Device::Cpu), &want[&format!("{tag}.{name}")]);
            println!("cuda forward {tag}.{name}: relative error {err:.2e}");
            assert!(err < TF32_TOL, "{tag}.{name}: {err:e}");
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn training_steps_on_cuda_match_reference() {
    let Some(device) = cuda() else { return };
    let want = read_fixture("train/steps.safetensors");
    let (h, w) = (64i64, 96i64);
    let xs = Tensor::from_slice(&uniform("train-source-image", (3 * h * w) as usize, -120.0, 120.0)).view([1, 3, h, w]);
    let raw = Tensor::from_slice(&uniform("train-source-label", (h * w) as usize, 0.0, 21.0)).view([1, h, w]);
    let ys = raw.floor().to_kind(Kind::Int64);
    let ys = ys.where_self(&ys.lt(19), &Tensor::from(255i64));
    let xt =
        Tensor::from_slice(&uniform("train-target-image", (3 * 48 * 80) as usize, -120.0, 120.0)).view([1, 3, 48, 80]);
    for method in ["source_only", "minent", "advent", "advent_minent"] {
        let text = format!(
            "[train]\nmethod = \"{method}\"\nlearning_rate = 1e-3\nlearning_rate_d = 1e-3\nmax_iters = 10\nearly_stop = 10\n\
             lambda_adv_main = 0.1\nlambda_adv_aux = 0.02\nlambda_ent_main = 0.1\nlambda_ent_aux = 0.02\n"
        );
        let mut t = Trainer::new(&Config::parse(&text, &[]).unwrap(), device).unwrap();
        fill_deterministic(&t.model.vs);
        for d in [&t.d_main, &t.d_aux].into_iter().flatten() {
            fill_deterministic(&d.vs);
        }
        let mut worst: f64 = 0.0;
        for i in 0..2u64 {
            for (name, v) in t.step(i, &xs, &ys, Some(&xt)).unwrap() {
                let r = want[&format!("{method}.iter{i}.{name}")].double_value(&[0]);
                let rel = (v.double_value(&[]) - r).abs() / r.abs().max(1e-3);
                worst = worst.max(rel);
                assert!(rel < TF32_TOL, "{method} iteration {i} {name}: {} vs {r} ({rel:e})", v.double_value(&[]));
            }
        }
        println!("cuda training step {method}: worst relative loss error over 2 iterations {worst:.2e}");
    }
}
