//! Parity of the prediction pipeline with the reference code on a full ResNet-101
//! checkpoint, in both PyTorch file formats. The files are large, so they are made on
//! demand by tools/parity/make_r101_checkpoint.py (PyTorch) and the test is ignored by
//! default:
//!
//! ```text
//! .venv/bin/python tools/parity/make_r101_checkpoint.py scratch/parity
//! ADVENT_PARITY_DIR=scratch/parity scripts/test --test official_checkpoint -- --ignored
//! ```
//!
//! Tolerance: max |ours − reference| ≤ 1e-4 for probabilities and for normalised entropy.

use advent::model::{LoadOptions, ModelOverrides, SegModel, WeightsKind};
use advent::predict::{predict, PredictOptions};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

#[test]
#[ignore = "needs ADVENT_PARITY_DIR made by tools/parity/make_r101_checkpoint.py"]
fn r101_checkpoint_predicts_like_the_reference_in_both_formats() {
    let dir = PathBuf::from(std::env::var("ADVENT_PARITY_DIR").expect("set ADVENT_PARITY_DIR"));
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    for file in ["model_zip.pth", "model_legacy.pth"] {
        let (model, report) =
            SegModel::from_checkpoint(&dir.join(file), &ModelOverrides::default(), LoadOptions::default(), Device::Cpu)
                .unwrap();
        assert_eq!(report.kind, Some(WeightsKind::Model));
        assert_eq!(model.config.arch.name(), "deeplabv2-r101");
        for case in cases.as_array().unwrap() {
            let size = |k: &str| {
                let v = case[k].as_array().unwrap();
                Some((v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32))
            };
            let img = advent::image::read_rgb(std::path::Path::new(case["image"].as_str().unwrap())).unwrap();
            let options = PredictOptions {
                input_size: size("input_size"),
                output_size: size("output_size"),
                ..Default::default()
            };
            let t = std::time::Instant::now();
            let p = predict(&model, &img, &options).unwrap();
            let name = case["name"].as_str().unwrap();
            let want_prob = Tensor::read_npy(dir.join(format!("ref_{name}_prob.npy"))).unwrap();
            let want_ent = Tensor::read_npy(dir.join(format!("ref_{name}_entropy.npy"))).unwrap();
            let prob = p.prob.as_ref().expect("predict keeps the probabilities");
            let dp = max_abs_diff(prob, &want_prob);
            let de = max_abs_diff(&p.entropy, &want_ent);
            let argmax_agree = prob
                .argmax(0, false)
                .eq_tensor(&want_prob.argmax(0, false))
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[]);
            println!(
                "{file} {name}: max |Δprob| {dp:.2e}, max |Δentropy| {de:.2e}, argmax agreement {:.6}, {:.2} s",
                argmax_agree,
                t.elapsed().as_secs_f64()
            );
            assert!(dp <= TOL && de <= TOL, "{file} {name}: Δprob {dp:e}, Δentropy {de:e} exceed {TOL:e}");
        }
    }
}
