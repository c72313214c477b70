//! Test helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// The crate's folder: where it was built, or, for a test binary carried to another
/// machine and run from the repository root, `crates/advent` under the current directory.
fn crate_dir() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built.is_dir() {
        built
    } else {
        std::env::current_dir().unwrap().join("crates/advent")
    }
}

/// `crates/advent/tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    crate_dir().join("tests/fixtures").join(rel)
}

/// `../shared/data` beside the checkout, if present.
pub fn shared_data() -> Option<PathBuf> {
    let p = crate_dir().join("../../../shared/data");
    p.is_dir().then_some(p)
}

/// Reads a safetensors fixture into (name → tensor).
pub fn read_fixture(rel: &str) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(rel)).unwrap().into_iter().collect()
}

/// FNV-1a 64 of a string: the seed of a key's values.
fn fnv1a64(text: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h
}

/// `n` values in `[lo, hi)`: splitmix64 seeded by FNV-1a(key), 24-bit uniforms, as f32.
/// The same numbers as `uniform` in tools/fixtures/reference_nets.py.
pub fn uniform(key: &str, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    let seed = fnv1a64(key);
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            let u = (z >> 40) as f64 * 2f64.powi(-24);
            (lo + (hi - lo) * u) as f32
        })
        .collect()
}

/// The value rule of `deterministic_value` in reference_nets.py.
pub fn deterministic_value(key: &str, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    if key.ends_with("num_batches_tracked") {
        return Tensor::zeros(shape, (Kind::Int64, tch::Device::Cpu));
    }
    let (lo, hi) = if key.ends_with("running_mean") {
        (-0.1, 0.1)
    } else if key.ends_with("running_var") {
        (0.5, 1.5)
    } else if shape.len() == 4 {
        let b = (3.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt();
        (-b, b)
    } else if key.ends_with("weight") {
        (0.5, 1.5)
    } else {
        (-0.1, 0.1)
    };
    Tensor::from_slice(&uniform(key, n as usize, lo, hi)).view(shape)
}

/// Overwrites every variable of `vs` with its deterministic value.
pub fn fill_deterministic(vs: &VarStore) {
    tch::no_grad(|| {
        for (key, mut t) in vs.variables() {
            let v = deterministic_value(&key, &t.size()).to_kind(t.kind()).to_device(t.device());
            t.copy_(&v);
        }
    });
}

/// A BGR, mean-subtracted-like input in [-120, 120), as `image()` in make_model_fixtures.py.
pub fn input_image(h: i64, w: i64) -> Tensor {
    let key = format!("input-{h}x{w}");
    Tensor::from_slice(&uniform(&key, (3 * h * w) as usize, -120.0, 120.0)).view([1, 3, h, w])
}

/// max |a − b| / max(1, max |b|): the error relative to the reference's scale.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    let diff = (&a - &b).abs().max().double_value(&[]);
    diff / b.abs().max().double_value(&[]).max(1.0)
}

/// The training fixtures' inputs (tools/fixtures/make_train_fixtures.py): a 64x96 source
/// image, its labels (ids 19-20 ignored) and a 48x80 target image, on the CPU.
pub fn training_inputs() -> (Tensor, Tensor, Tensor) {
    let (h, w) = (64i64, 96i64);
    let xs = Tensor::from_slice(&uniform("train-source-image", (3 * h * w) as usize, -120.0, 120.0)).view([1, 3, h, w]);
    let raw = Tensor::from_slice(&uniform("train-source-label", (h * w) as usize, 0.0, 21.0)).view([1, h, w]);
    let ys = raw.floor().to_kind(Kind::Int64);
    let ys = ys.where_self(&ys.lt(19), &Tensor::from(255i64));
    let xt =
        Tensor::from_slice(&uniform("train-target-image", (3 * 48 * 80) as usize, -120.0, 120.0)).view([1, 3, 48, 80]);
    (xs, ys, xt)
}

/// A trainer with the fixture script's rates and schedule, `settings` (more `[train]` lines:
/// method, precision, λs, ...), and the fixtures' deterministic weights.
pub fn fixture_trainer(settings: &str, device: tch::Device) -> advent::train::Trainer {
    let text =
        format!("[train]\n{settings}\nlearning_rate = 1e-3\nlearning_rate_d = 1e-3\nmax_iters = 10\nearly_stop = 10\n");
    let config = advent::config::Config::parse(&text, &[]).unwrap();
    let t = advent::train::Trainer::new(&config, device).unwrap();
    fill_deterministic(&t.model.vs);
    for d in [&t.d_main, &t.d_aux].into_iter().flatten() {
        fill_deterministic(&d.vs);
    }
    t
}
