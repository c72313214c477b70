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

/// The check of `multibox_objective_matches_ssd_pytorch` (tests/detection.rs, where its
/// fixture and tolerances are described) with the network's outputs, the targets and the loss
/// on `device`; the default boxes and the matching are host code.
pub fn check_multibox_objective(device: tch::Device) {
    use advent::detect::{loss, matching, priors::PriorConfig};
    use tch::Device;

    let want = read_fixture("detection/multibox.safetensors");
    let floats = |key: &str| Vec::<f32>::try_from(want[key].flatten(0, -1)).unwrap();
    let worst = |ours: &[f32], theirs: &[f32], what: &str| {
        assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
        ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
    };
    let close = |ours: &[f32], theirs: &[f32], what: &str| {
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        let off = worst(ours, theirs, what);
        assert!(off <= 1e-5 * scale, "{what}: off by {off:e} (scale {scale:e})");
    };
    let config = PriorConfig::ssd300();
    let priors = config.priors();
    let off = worst(priors.as_flattened(), &floats("priors"), "default boxes");
    assert!(off <= 1e-7, "default boxes off by {off:e}");

    let (n, p, c) = (2i64, priors.len() as i64, 9i64);
    let (mut loc_t, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let truths: Vec<[f32; 4]> = floats(&format!("truths{i}")).chunks(4).map(|b| [b[0], b[1], b[2], b[3]]).collect();
        // The reference's annotations are 0-based and its match adds 1; ours takes 1..=C.
        let classes: Vec<i64> =
            Vec::<i64>::try_from(&want[&format!("labels{i}")]).unwrap().iter().map(|l| l + 1).collect();
        let (l, t) = matching::match_priors(&truths, &classes, &priors, matching::MATCH_THRESHOLD, config.variance);
        loc_t.extend(l);
        labels.extend(t);
    }
    let reference_labels: Vec<i64> =
        Vec::<u8>::try_from(want["conf_t"].flatten(0, -1)).unwrap().into_iter().map(i64::from).collect();
    assert_eq!(labels.len(), reference_labels.len());
    let wrong: Vec<usize> = (0..labels.len()).filter(|&k| labels[k] != reference_labels[k]).collect();
    assert!(wrong.is_empty(), "class targets differ at {} boxes, first {:?}", wrong.len(), wrong.first());
    let positives: Vec<f32> = loc_t.iter().zip(&labels).filter(|(_, &l)| l > 0).flat_map(|(b, _)| *b).collect();
    close(&positives, &floats("loc_t_pos"), "location targets of the positives");

    let on_device = |v: &[f32], shape: [i64; 3]| Tensor::from_slice(v).reshape(shape).to_device(device);
    let loc = on_device(&uniform("multibox-loc", (n * p * 4) as usize, -2.0, 2.0), [n, p, 4]).set_requires_grad(true);
    let conf = on_device(&uniform("multibox-conf", (n * p * c) as usize, -4.0, 4.0), [n, p, c]).set_requires_grad(true);
    let loc_targets = on_device(loc_t.as_flattened(), [n, p, 4]);
    let label_tensor = Tensor::from_slice(&labels).reshape([n, p]);
    let labels_on_device = label_tensor.to_device(device);
    let l = loss::multibox_loss(&loc, &conf, &loc_targets, &labels_on_device, 3).unwrap();
    close(&[l.loc.double_value(&[]) as f32], &floats("loss_l"), "loss_l");
    close(&[l.conf.double_value(&[]) as f32], &floats("loss_c"), "loss_c");
    (&l.loc + &l.conf).backward();

    // The boxes the class loss reads: those whose class scores got a gradient.
    let conf_grad = conf.grad().to_device(Device::Cpu);
    let loc_grad = loc.grad().to_device(Device::Cpu);
    let chosen = conf_grad.abs().amax([2i64].as_slice(), false).gt(0.0);
    let reference_chosen = want["chosen"].to_kind(Kind::Bool).reshape([n, p]);
    assert!(chosen.equal(&reference_chosen), "positives and mined negatives differ");
    let rows = |g: &Tensor, mask: &Tensor, width: i64| -> Vec<f32> {
        Vec::<f32>::try_from(g.masked_select(&mask.unsqueeze(2).expand([n, p, width], false))).unwrap()
    };
    close(&rows(&conf_grad, &chosen, c), &floats("grad_conf_chosen"), "class-score gradients");
    let positive = label_tensor.gt(0);
    close(&rows(&loc_grad, &positive, 4), &floats("grad_loc_pos"), "location gradients");
    let elsewhere = loc_grad.masked_select(&positive.logical_not().unsqueeze(2).expand([n, p, 4], false));
    assert_eq!(elsewhere.abs().max().double_value(&[]), 0.0, "location gradient outside the positives");
}
