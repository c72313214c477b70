//! End-to-end tests of the `advent` binary: outputs of `predict`, `checkpoint`, and one
//! clear error line with a non-zero exit (never a panic) for bad inputs.

mod common;

use common::{advent, assert_clean_failure, assert_success, files_below, metrics, s, stderr, tiny_config, write_image};

use advent::model::{Arch, AsppSum, ModelConfig, SegModel};
use advent::weights::{self, StateDict};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const CLASSES: i64 = 5;

fn small_model() -> SegModel {
    tch::manual_seed(7);
    let config = ModelConfig {
        arch: Arch::DeepLabV2ResNet50,
        num_classes: CLASSES,
        multi_level: true,
        aspp_sum: AsppSum::AllFour,
    };
    SegModel::new(config, Device::Cpu).unwrap()
}

fn npy_shape(path: &Path) -> Vec<i64> {
    Tensor::read_npy(path).unwrap().size()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    checkpoint: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let checkpoint = root.join("model.pth");
    weights::save(&small_model().state_dict(), &checkpoint).unwrap();
    Setup { _dir: dir, root, checkpoint }
}

#[test]
fn predict_writes_every_output_at_the_requested_sizes() {
    let s = setup();
    let images = s.root.join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    write_image(&images.join("a.png"), 48, 40);
    write_image(&images.join("sub/b.png"), 40, 32);
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let out = s.root.join("out");
    let o = advent(&[
        "predict",
        "--checkpoint",
        s.checkpoint.to_str().unwrap(),
        "--input",
        images.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--recursive",
        "--input-size",
        "64x32",
        "--output-size",
        "50x30",
        "--save-prob",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for rel in ["a", "sub/b"] {
        let ids = image::open(out.join(format!("{rel}_trainids.png"))).unwrap();
        assert_eq!((ids.width(), ids.height()), (50, 30));
        assert!(ids.as_luma8().unwrap().pixels().all(|p| (p.0[0] as i64) < CLASSES));
        let color = image::open(out.join(format!("{rel}_color.png"))).unwrap();
        assert!(color.as_rgb8().is_some());
        assert!(out.join(format!("{rel}_entropy.png")).is_file());
        assert_eq!(npy_shape(&out.join(format!("{rel}_prob.npy"))), [CLASSES, 30, 50]);
        let prob = Tensor::read_npy(out.join(format!("{rel}_prob.npy"))).unwrap();
        let sums = prob.sum_dim_intlist(0, false, Kind::Float);
        assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-5);
        let entropy = Tensor::read_npy(out.join(format!("{rel}_entropy.npy"))).unwrap();
        assert_eq!(entropy.size(), [30, 50]);
        assert!(entropy.min().double_value(&[]) >= 0.0 && entropy.max().double_value(&[]) <= 1.0 + 1e-6);
    }
    assert!(!out.join("notes_trainids.png").exists());
}

/// `advent predict` on a folder runs readers, the network and writers as a pipeline: with 3
/// workers each image gets the outputs one worker gives it, byte for byte; two unreadable
/// images fail alone and are named in the folder's order.
#[test]
fn predict_pipeline_gives_each_image_its_outputs_and_names_failures_in_order() {
    let s = setup();
    let images = s.root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let names = ["a", "b", "c_bad", "d", "e", "f_bad", "g"];
    for (i, name) in names.iter().enumerate() {
        let path = images.join(format!("{name}.png"));
        if name.ends_with("_bad") {
            std::fs::write(&path, "not a picture").unwrap();
        } else {
            write_image(&path, 32 + 4 * i as u32, 32);
        }
    }
    let mut outputs = Vec::new();
    for workers in ["1", "3"] {
        let out = s.root.join(format!("out{workers}"));
        let (c, i, o) = (s.checkpoint.to_str().unwrap(), images.to_str().unwrap(), out.to_str().unwrap());
        let run = advent(&["predict", "--checkpoint", c, "--input", i, "--output", o, "--workers", workers]);
        let bad = |n: &str| images.join(format!("{n}.png")).display().to_string();
        assert_clean_failure(&run, &format!("2 of 7 images failed (listed above): {}, {}", bad("c_bad"), bad("f_bad")));
        outputs.push(out);
    }
    for name in names {
        for suffix in ["trainids.png", "color.png", "entropy.png"] {
            let file = format!("{name}_{suffix}");
            let (one, three) = (outputs[0].join(&file), outputs[1].join(&file));
            if name.ends_with("_bad") {
                assert!(!one.exists() && !three.exists(), "{file}");
            } else {
                assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&three).unwrap(), "{file}");
            }
        }
    }
}

/// Labels of one's own: `advent predict --recursive` on a folder of images, then `advent
/// score --dataset folder` against label PNGs of the same names (left half building, id 11
/// → train id 2; right half road, id 7 → 0; the top row ignored, id 0). The expected IoUs
/// are counted here from the labels and the prediction files.
#[test]
fn predictions_of_a_folder_score_against_labels_of_the_same_names() {
    let s = setup();
    let (images, labels, out) = (s.root.join("images"), s.root.join("labels"), s.root.join("out"));
    for dir in [&images, &labels] {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
    }
    let sizes = [("a", 48, 40), ("sub/b", 40, 32)];
    let train_id = |x: u32, y: u32, w: u32| match (y, x < w / 2) {
        (0, _) => 255,
        (_, true) => 2,
        (_, false) => 0,
    };
    for (name, w, h) in sizes {
        write_image(&images.join(format!("{name}.png")), w, h);
        let label_id = |x, y| match train_id(x, y, w) {
            255 => 0,
            2 => 11,
            _ => 7,
        };
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([label_id(x, y)]))
            .save(labels.join(format!("{name}.png")))
            .unwrap();
    }
    let (c, i, o) = (s.checkpoint.to_str().unwrap(), images.to_str().unwrap(), out.to_str().unwrap());
    assert_success(&advent(&["predict", "--checkpoint", c, "--input", i, "--output", o, "--recursive"]));
    // Per class: true positives, and pixels labelled or predicted as it (the union).
    let (mut tp, mut union) = ([0u64; 256], [0u64; 256]);
    for (name, w, _) in sizes {
        let pred = image::open(out.join(format!("{name}_trainids.png"))).unwrap().into_luma8();
        for (x, y, p) in pred.enumerate_pixels() {
            let (g, p) = (train_id(x, y, w), usize::from(p.0[0]));
            if g == 255 {
                continue;
            }
            if g == p {
                tp[g] += 1;
                union[g] += 1;
            } else {
                union[g] += 1;
                union[p] += 1;
            }
        }
    }
    let ious: Vec<f64> = (0..256).filter(|&k| union[k] > 0).map(|k| 100.0 * tp[k] as f64 / union[k] as f64).collect();
    let want = ious.iter().sum::<f64>() / ious.len() as f64;
    let json = s.root.join("scores.json");
    let (l, j) = (labels.to_str().unwrap(), json.to_str().unwrap());
    let run = advent(&["score", "--dataset", "folder", "--gt", l, "--pred", o, "--json", j]);
    assert_success(&run);
    assert!(String::from_utf8_lossy(&run.stdout).contains("2 frames of"), "{}", String::from_utf8_lossy(&run.stdout));
    let scores: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let building = 100.0 * tp[2] as f64 / union[2] as f64;
    assert!((scores["iou"]["building"].as_f64().unwrap() - building).abs() < 1e-9, "{}", scores["iou"]);
    assert!((scores["miou"].as_f64().unwrap() - want).abs() < 1e-9, "{} against {want}", scores["miou"]);
    let run = advent(&["score", "--gt-train-ids", "--gt", l, "--pred", o]);
    assert_clean_failure(&run, "--gt-train-ids is for --dataset folder");
}

#[test]
fn predict_defaults_to_the_image_size_and_detects_the_architecture() {
    let s = setup();
    let img = s.root.join("x.png");
    write_image(&img, 37, 29);
    let out = s.root.join("out");
    let o = advent(&[
        "predict",
        "--checkpoint",
        s.checkpoint.to_str().unwrap(),
        "--input",
        img.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids = image::open(out.join("x_trainids.png")).unwrap();
    assert_eq!((ids.width(), ids.height()), (37, 29));
    assert!(!out.join("x_prob.npy").exists());
    assert!(!out.join("x_overlay.png").exists());
}

#[test]
fn predict_overlays_the_colours_on_the_input() {
    let s = setup();
    let img = s.root.join("x.png");
    write_image(&img, 37, 29);
    let out = s.root.join("out");
    let (c, i, o) = (s.checkpoint.to_str().unwrap(), img.to_str().unwrap(), out.to_str().unwrap());
    assert_success(&advent(&["predict", "--checkpoint", c, "--input", i, "--output", o, "--overlay", "0.25"]));
    let input = image::open(&img).unwrap().into_rgb8();
    let colours = image::open(out.join("x_color.png")).unwrap().into_rgb8();
    let overlay = image::open(out.join("x_overlay.png")).unwrap().into_rgb8();
    assert_eq!(overlay.dimensions(), (37, 29));
    // By hand: three quarters of the image, a quarter of the colours, rounded.
    for ((a, b), got) in input.as_raw().iter().zip(colours.as_raw()).zip(overlay.as_raw()) {
        let want = (0.75 * f64::from(*a) + 0.25 * f64::from(*b)).round();
        assert!((f64::from(*got) - want).abs() <= 0.5, "{a} under {b}: {got}, want {want}");
    }
    assert_ne!(overlay, input);
    // `--overlay` alone weighs the colours 0.5; at another output size the image is resized.
    assert_success(&advent(&[
        "predict",
        "--checkpoint",
        c,
        "--input",
        i,
        "--output",
        o,
        "--overlay",
        "--output-size",
        "50x30",
    ]));
    assert_eq!(image::open(out.join("x_overlay.png")).unwrap().into_rgb8().dimensions(), (50, 30));
    for weight in ["1.5", "-0.1", "NaN", "half"] {
        let run = advent(&["predict", "--checkpoint", c, "--input", i, "--output", o, "--overlay", weight]);
        assert_eq!(run.status.code(), Some(1), "--overlay {weight}: {}", stderr(&run));
        assert!(stderr(&run).contains("--overlay"), "{}", stderr(&run));
    }
}

#[test]
fn truncated_checkpoint_is_one_clear_error_and_outputs_survive() {
    let s = setup();
    let bytes = std::fs::read(&s.checkpoint).unwrap();
    let cut = s.root.join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let img = s.root.join("x.png");
    write_image(&img, 32, 32);
    let out = s.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("x_trainids.png"), b"previous result").unwrap();
    let o = advent(&[
        "predict",
        "--checkpoint",
        cut.to_str().unwrap(),
        "--input",
        img.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "cut.pth");
    assert_eq!(std::fs::read(out.join("x_trainids.png")).unwrap(), b"previous result");
}

#[test]
fn wrong_shaped_key_is_named_and_partial_load_is_opt_in() {
    let s = setup();
    let mut dict = StateDict::new();
    for (k, t) in small_model().state_dict().iter() {
        let t = if k == "layer2.0.conv2.weight" {
            Tensor::zeros([128, 128, 1, 1], (Kind::Float, Device::Cpu))
        } else {
            t.shallow_clone()
        };
        if k != "layer1.0.bn1.running_var" {
            dict.insert(k, t);
        }
    }
    dict.insert("layer9.weight", Tensor::zeros([1], (Kind::Float, Device::Cpu)));
    let bad = s.root.join("bad.pth");
    weights::save(&dict, &bad).unwrap();
    let img = s.root.join("x.png");
    write_image(&img, 32, 32);
    let out = s.root.join("out");
    let args = [
        "predict",
        "--checkpoint",
        bad.to_str().unwrap(),
        "--input",
        img.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    let o = advent(&args);
    assert_clean_failure(&o, "layer2.0.conv2.weight");
    let err = stderr(&o);
    assert!(err.contains("layer1.0.bn1.running_var") && err.contains("layer9.weight"), "{err}");
    assert!(!out.join("x_trainids.png").exists());

    let mut partial = args.to_vec();
    partial.push("--allow-partial");
    let o = advent(&partial);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: partial load"), "{}", stderr(&o));
    assert!(out.join("x_trainids.png").is_file());
}

#[test]
fn non_image_input_names_the_file() {
    let s = setup();
    let fake = s.root.join("fake.png");
    std::fs::write(&fake, "this is text").unwrap();
    let o = advent(&[
        "predict",
        "--checkpoint",
        s.checkpoint.to_str().unwrap(),
        "--input",
        fake.to_str().unwrap(),
        "--output",
        s.root.join("o").to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "fake.png");
    let missing = s.root.join("missing.pth");
    let o = advent(&[
        "predict",
        "--checkpoint",
        missing.to_str().unwrap(),
        "--input",
        fake.to_str().unwrap(),
        "--output",
        s.root.join("o").to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "missing.pth");
}

#[test]
fn checkpoint_convert_round_trips_and_info_detects_the_network() {
    let s = setup();
    let st = s.root.join("model.safetensors");
    let back = s.root.join("back.pth");
    assert!(advent(&["checkpoint", "convert", s.checkpoint.to_str().unwrap(), st.to_str().unwrap()]).status.success());
    assert!(advent(&["checkpoint", "convert", st.to_str().unwrap(), back.to_str().unwrap()]).status.success());
    let a = weights::load(&s.checkpoint).unwrap();
    let b = weights::load(&back).unwrap();
    assert_eq!(a.len(), b.len());
    for (k, t) in a.iter() {
        assert!(t.equal(b.get(k).unwrap()), "{k} differs");
    }
    let o = advent(&["checkpoint", "info", back.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("deeplabv2-r50, 5 classes, multi-level"), "{text}");
}

#[test]
fn training_resumes_exactly_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "advent");
    // Both runs start from initial weights in a file (model.init), which is gone by the time
    // the interrupted run resumes: a resumed run takes every weight from its checkpoint.
    let init = dir.path().join("init.pth");
    tch::manual_seed(11);
    let tiny =
        ModelConfig { arch: Arch::DeepLabV2Tiny, num_classes: 19, multi_level: true, aspp_sum: AsppSum::AllFour };
    weights::save(&SegModel::new(tiny, Device::Cpu).unwrap().state_dict(), &init).unwrap();
    let init_set = format!("model.init=\"{}\"", init.display());
    let full = dir.path().join("full");
    let o = advent(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--run-dir",
        full.to_str().unwrap(),
        "--set",
        &init_set,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = metrics(&full);
    assert_eq!(reference.len(), 7);
    for name in [
        "loss_seg_src_main",
        "loss_seg_src_aux",
        "loss_adv_trg_main",
        "loss_adv_trg_aux",
        "loss_d_main",
        "loss_d_aux",
        "\"lr\"",
    ] {
        assert!(reference[0].contains(name), "{name} missing from {}", reference[0]);
    }
    for file in ["model.pth", "d_main.pth", "d_aux.pth", "optimizer.safetensors", "state.json"] {
        assert!(full.join("checkpoints/iter_000006").join(file).is_file(), "{file}");
    }

    let part = dir.path().join("part");
    let o = advent(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--run-dir",
        part.to_str().unwrap(),
        "--set",
        "train.early_stop=3",
        "--set",
        &init_set,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics(&part).len(), 4);
    std::fs::remove_file(&init).unwrap();
    let o = advent(&["train", "--resume", part.to_str().unwrap(), "--set", "train.early_stop=6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics(&part), reference, "losses after resuming differ from the uninterrupted run");

    // The checkpoint's network predicts.
    let img = dir.path().join("x.png");
    write_image(&img, 64, 32);
    let model = part.join("checkpoints/iter_000006/model.pth");
    let o = advent(&[
        "predict",
        "--checkpoint",
        model.to_str().unwrap(),
        "--input",
        img.to_str().unwrap(),
        "--output",
        dir.path().join("pred").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    // A second run into the same folder is refused.
    let o = advent(&["train", "--config", config.to_str().unwrap(), "--run-dir", part.to_str().unwrap()]);
    assert_clean_failure(&o, "already holds a run");
}

/// `--dry-run` checks what a run needs and prints its configuration and plan, writing nothing;
/// the plan's parameter counts are the PyTorch networks' (the reference's DeepLab-V2 R101 with
/// its frozen batch norms, `../shared/bench/torch_reference.py`; ssd.pytorch's SSD-300 for 9
/// classes, `tools/parity/ssd_reference.py`: `sum(p.numel() for p in m.parameters() if
/// p.requires_grad)`).
#[test]
fn a_dry_run_checks_and_plans_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "advent");
    let run = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut v = vec!["train", "--config", s(&config), "--run-dir", s(&run), "--set", "train.early_stop=3"];
        v.extend_from_slice(extra);
        advent(&v)
    };
    let dry = train(&["--dry-run"]);
    assert_success(&dry);
    assert!(!run.exists(), "a dry run made the run folder");
    let err = stderr(&dry);
    for line in [
        "training advent, deeplabv2-tiny (19 classes, multi-level, ",
        "  weights: a random initialisation (model.init is empty)\n",
        "  source: synthetic (the built-in generator), 5 images at 64x32, batch 1\n",
        "  target: synthetic (the built-in generator), 5 images at 64x32, batch 1\n",
        "  iterations 0 to 3 (poly decay over max_iters = 50); a checkpoint every 3 and at the last, in ",
        "dry run: everything checked; nothing trained or written",
    ] {
        assert!(err.contains(line), "`{line}` missing from: {err}");
    }
    // What would stop the run stops the dry run.
    let gone = train(&["--dry-run", "--set", "model.init=\"/gone/init.pth\""]);
    assert_clean_failure(&gone, "model.init");
    let init = dir.path().join("init.pth");
    let tiny =
        ModelConfig { arch: Arch::DeepLabV2Tiny, num_classes: 19, multi_level: true, aspp_sum: AsppSum::AllFour };
    weights::save(&SegModel::new(tiny, Device::Cpu).unwrap().state_dict(), &init).unwrap();
    let from = train(&["--dry-run", "--set", &format!("model.init=\"{}\"", init.display())]);
    assert_success(&from);
    assert!(stderr(&from).contains(&format!("  weights: initialised from {}\n", init.display())), "{}", stderr(&from));
    // The reference's switch, ADVENT_DRY_RUN=1, does the same.
    let env = std::process::Command::new(env!("CARGO_BIN_EXE_advent"))
        .args(["train", "--config", s(&config), "--run-dir", s(&run), "--set", "train.early_stop=3"])
        .env("ADVENT_DRY_RUN", "1")
        .output()
        .unwrap();
    assert_success(&env);
    assert_eq!(env.stdout, dry.stdout);
    assert!(!run.exists(), "ADVENT_DRY_RUN=1 made the run folder");
    // Its configuration is the one the run writes.
    let o = train(&[]);
    assert_success(&o);
    assert!(stderr(&o).contains("iterations 0 to 3"), "a run starts with its plan: {}", stderr(&o));
    assert_eq!(common::stdout(&dry), std::fs::read_to_string(run.join("config.toml")).unwrap());
    // A resumption's dry run loads the checkpoint and leaves the folder as it was.
    let before = common::snapshot(&run);
    let o = advent(&["train", "--resume", s(&run), "--set", "train.early_stop=6", "--dry-run"]);
    assert_success(&o);
    assert!(stderr(&o).contains("iterations 4 (resumed) to 6"), "{}", stderr(&o));
    assert!(stderr(&o).contains("  weights: the checkpoint of iteration 3\n"), "{}", stderr(&o));
    assert_eq!(common::snapshot(&run), before, "a dry run changed the run folder");

    let r101 = advent(&[
        "train",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/gta2cityscapes_advent.toml"),
        "--set",
        "model.init=\"\"",
        "--set",
        "source.dataset=\"synthetic\"",
        "--set",
        "target.dataset=\"synthetic\"",
        "--run-dir",
        s(&dir.path().join("r101")),
        "--dry-run",
    ]);
    assert_success(&r101);
    let err = stderr(&r101);
    assert!(err.contains("deeplabv2-r101 (19 classes, multi-level, 44,496,216 trainable parameters)"), "{err}");
    assert!(err.contains("64 images at 1280x720") && err.contains("64 images at 1024x512"), "{err}");
    assert!(err.contains("iterations 0 to 120000 (poly decay over max_iters = 250000); a checkpoint every 2000"));
    let ssd = advent(&[
        "detect",
        "train",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/detection/demo.toml"),
        "--set",
        "model.width=64",
        "--run-dir",
        s(&dir.path().join("ssd")),
        "--dry-run",
    ]);
    assert_success(&ssd);
    let err = stderr(&ssd);
    assert!(
        err.contains("SSD-300 of width 64 (9 classes with the background, 24,681,542 trainable parameters)"),
        "{err}"
    );
    assert!(!dir.path().join("r101").exists() && !dir.path().join("ssd").exists());
}

#[test]
fn every_method_trains_and_logs_its_losses() {
    let dir = tempfile::tempdir().unwrap();
    for (method, has, lacks) in [
        ("source_only", "loss_seg_src_aux", "loss_ent_main"),
        ("minent", "loss_ent_aux", "loss_adv_trg_main"),
        ("advent_minent", "loss_ent_main", "loss_xyz"),
    ] {
        let config = tiny_config(dir.path(), method);
        let run = dir.path().join(method);
        let o = advent(&[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
            "--set",
            "train.early_stop=1",
        ]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let m = metrics(&run);
        assert_eq!(m.len(), 2);
        assert!(m[1].contains(has) && !m[1].contains(lacks), "{method}: {}", m[1]);
        assert!(!run.join("checkpoints/iter_000001/d_main.pth").exists() || method == "advent_minent");
    }
}

/// `advent report A B --out FILE`: the runs side by side; evaluations from hand-written sweep
/// caches (`eval/<protocol>/scores.csv`, as `advent eval --sweep` writes them).
#[test]
fn report_compares_runs_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for (method, csv) in [("advent", "iteration,miou\n3,30.5\n6,29\n"), ("minent", "iteration,miou\n3,31.25\n6,33\n")] {
        let config = tiny_config(dir.path(), method);
        let run = dir.path().join(method);
        assert_success(&advent(&["train", "--config", s(&config), "--run-dir", s(&run)]));
        let cache = run.join("eval/cityscapes-val-19");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("scores.csv"), csv).unwrap();
        runs.push(run);
    }
    let out = dir.path().join("compare.html");
    let o = advent(&["report", s(&runs[0]), s(&runs[1]), "--out", s(&out)]);
    assert_success(&o);
    let html = std::fs::read_to_string(&out).unwrap();
    for needle in [
        "advent, deeplabv2-tiny",
        "minent, deeplabv2-tiny",
        // advent: best 30.50 at 3, last 29.00; minent: best and last 33.00 at 6, the best of all.
        "<td>30.50 (3)</td><td>29.00 (6)</td>",
        r#"<td class="best">33.00 (6)</td><td>33.00 (6)</td>"#,
        "Target mIoU (%), cityscapes-val-19",
        "Source segmentation loss: loss_seg_src_main",
        "Target entropy loss: loss_ent_main",
        "Learning rate: lr",
    ] {
        assert!(html.contains(needle), "`{needle}` missing from the comparison");
    }
    assert!(html.contains(&runs[0].display().to_string()) && html.contains(&runs[1].display().to_string()));
    // Refused, the page written before untouched: no --out, --out with one run, a missing run,
    // a detection run beside segmentation ones (its folder made from a dry run's config).
    let before = std::fs::read(&out).unwrap();
    let det = dir.path().join("det");
    std::fs::create_dir_all(&det).unwrap();
    let detection = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/detection/demo.toml");
    let dry = advent(&["detect", "train", "--config", detection, "--run-dir", s(&det.join("x")), "--dry-run"]);
    assert_success(&dry);
    std::fs::write(det.join("config.toml"), &dry.stdout).unwrap();
    let missing = dir.path().join("missing");
    for (args, needle) in [
        (vec!["report", s(&runs[0]), s(&runs[1])], "--out"),
        (vec!["report", s(&runs[0]), "--out", s(&out)], "--out is for a comparison"),
        (vec!["report", s(&runs[0]), s(&missing), "--out", s(&out)], "missing: no such run folder"),
        (vec!["report", s(&runs[0]), s(&det), "--out", s(&out)], "cannot be compared"),
    ] {
        assert_clean_failure(&advent(&args), needle);
        assert_eq!(std::fs::read(&out).unwrap(), before, "{args:?} changed the page");
    }
}

/// A target domain of one's own: `target.dataset = "images"` adapts to a folder of
/// unlabelled images (PNG and JPEG, subfolders); `advent report` shows them, `advent data
/// check` reads them; as a source it is refused, naming the key.
#[test]
fn a_folder_of_own_images_is_a_target_domain() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(frames.join("day1")).unwrap();
    write_image(&frames.join("day1/0001.png"), 80, 40);
    write_image(&frames.join("day1/0002.png"), 80, 40);
    image::RgbImage::from_fn(96, 48, |x, y| image::Rgb([x as u8, y as u8, 90])).save(frames.join("0003.jpg")).unwrap();
    let config = tiny_config(dir.path(), "advent");
    let run = dir.path().join("run");
    let target = ["--set", "target.dataset=\"images\"", "--set", &format!("target.root={:?}", s(&frames))];
    let mut args = vec!["train", "--config", s(&config), "--run-dir", s(&run), "--set", "train.early_stop=2"];
    args.extend(target);
    assert_success(&advent(&args));
    let m = metrics(&run);
    assert_eq!(m.len(), 3);
    assert!(m[2].contains("loss_adv_trg_main"), "{}", m[2]);
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("dataset = \"images\""), "{saved}");
    let o = advent(&["report", s(&run), "--samples", "3"]);
    assert_success(&o);
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(html.contains("target image") && !html.contains("No sample images"), "the report shows no frames");

    let o = advent(&["data", "check", "--dataset", "images", "--root", s(&frames)]);
    assert_success(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("images: 3 images") && out.contains("80x40 (2)") && !out.contains("labels read"), "{out}");
    std::fs::write(frames.join("day1/0004.png"), b"\x89PNG\r\n\x1a\ntruncated").unwrap();
    let o = advent(&["data", "check", "--dataset", "images", "--root", s(&frames)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("day1/0004.png"), "{}", String::from_utf8_lossy(&o.stdout));

    let r2 = dir.path().join("r2");
    let args = ["train", "--config", s(&config), "--run-dir", s(&r2), "--set", "source.dataset=\"images\""];
    assert_clean_failure(&advent(&args), "source.dataset = \"images\"");
    assert!(!r2.exists());
}

/// MinEnt+ER (`train.entropy_ranking`): at iteration 0 both runs see the same network and
/// target image; the 30 % most uncertain pixels hold at least 30 % of the entropy summed over
/// all of them and less than all of it, both divided by all the pixels; the rest of the run
/// trains (later losses differ).
#[test]
fn entropy_ranking_averages_the_most_uncertain_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "minent");
    let first_losses = |ranking: &str| {
        let run = dir.path().join(format!("er{ranking}"));
        let set = format!("train.entropy_ranking={ranking}");
        let args =
            ["train", "--config", s(&config), "--run-dir", s(&run), "--set", "train.early_stop=1", "--set", &set];
        assert_success(&advent(&args));
        let m = metrics(&run);
        let row = |i: usize| serde_json::from_str::<serde_json::Value>(&m[i]).unwrap();
        (row(0), row(1))
    };
    let ((all0, all1), (er0, er1)) = (first_losses("1.0"), first_losses("0.3"));
    for head in ["loss_ent_main", "loss_ent_aux"] {
        let (all, er) = (all0[head].as_f64().unwrap(), er0[head].as_f64().unwrap());
        assert!(er >= 0.3 * all && er < all, "{head}: ranked {er}, all pixels {all}");
    }
    assert_eq!(all0["loss_seg_src_main"], er0["loss_seg_src_main"], "the same network and images at iteration 0");
    assert_ne!(all1["loss_seg_src_main"], er1["loss_seg_src_main"], "other gradients, other weights");
}

/// The class-ratio prior: `advent data check --json` on a source's labels gives p_s (here
/// half road, half car), training adds `loss_cp_main` (with cp_mu 0.5 each class's
/// threshold is 0.25, so the loss lies in [0, 0.5]); a prior of another class count and a
/// missing file are refused, naming the key, before the run folder is made.
#[test]
fn the_class_ratio_prior_comes_from_a_data_check_report() {
    let dir = tempfile::tempdir().unwrap();
    let gta = dir.path().join("gta");
    std::fs::create_dir_all(gta.join("images")).unwrap();
    std::fs::create_dir_all(gta.join("labels")).unwrap();
    write_image(&gta.join("images/00001.png"), 8, 6);
    image::GrayImage::from_fn(8, 6, |x, _| image::Luma([if x < 4 { 7 } else { 26 }]))
        .save(gta.join("labels/00001.png"))
        .unwrap();
    let prior = dir.path().join("prior.json");
    assert_success(&advent(&["data", "check", "--dataset", "gta5", "--root", s(&gta), "--json", s(&prior)]));
    let config = tiny_config(dir.path(), "minent");
    let train = |run: &Path, extra: &[&str]| {
        let cp = format!("train.class_prior={:?}", s(&prior));
        let mut args = vec!["train", "--config", s(&config), "--run-dir", s(run), "--set", "train.early_stop=1"];
        args.extend(["--set", "train.lambda_cp_main=0.5", "--set", &cp]);
        args.extend(extra);
        advent(&args)
    };
    let run = dir.path().join("cp");
    assert_success(&train(&run, &[]));
    let m = metrics(&run);
    let row: serde_json::Value = serde_json::from_str(&m[0]).unwrap();
    let cp = row["loss_cp_main"].as_f64().unwrap();
    // An untrained network gives each of the 19 classes about 1/19 of an image, well under
    // the thresholds of 0.25: the loss is near 2 · (0.25 − 0.05).
    assert!(cp > 0.3 && cp <= 0.5, "{cp}");
    assert!(row.get("loss_cp_aux").is_none(), "aux weight 0: not computed");
    // The prior's gradient reaches the network: iteration 1 differs from a run without it.
    let plain = dir.path().join("plain");
    let args = ["train", "--config", s(&config), "--run-dir", s(&plain), "--set", "train.early_stop=1"];
    assert_success(&advent(&args));
    let seg = |m: &[String]| serde_json::from_str::<serde_json::Value>(&m[1]).unwrap()["loss_seg_src_main"].clone();
    assert_ne!(seg(&m), seg(&metrics(&plain)));

    let other = dir.path().join("other");
    assert_clean_failure(&train(&other, &["--set", "model.num_classes=16"]), "train.class_prior");
    assert!(!other.exists());
    std::fs::remove_file(&prior).unwrap();
    assert_clean_failure(&train(&other, &[]), "prior.json");
    assert!(!other.exists());
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[train]\nlearning_rat = 0.1\n").unwrap();
    let o = advent(&["train", "--config", bad.to_str().unwrap(), "--run-dir", dir.path().join("r").to_str().unwrap()]);
    assert_clean_failure(&o, "unknown key `train.learning_rat`");
    std::fs::write(&bad, "[source]\nsize = [-4, 32]\n").unwrap();
    let o = advent(&["train", "--config", bad.to_str().unwrap(), "--run-dir", dir.path().join("r").to_str().unwrap()]);
    assert_clean_failure(&o, "source.size");
    let o = advent(&["train", "--config", dir.path().join("missing.toml").to_str().unwrap()]);
    assert_clean_failure(&o, "missing.toml");
    assert!(!dir.path().join("r").exists());
}

/// `advent bench --what eval --batch N`: the time is per pass of N images, images/s counts
/// the images; the JSON line says the batch.
#[test]
fn bench_times_evaluation_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.jsonl");
    let (j, size) = (s(&json), "128x64");
    let o = advent(
        &["bench", "--arch", "deeplabv2-tiny", "--what", "eval", "--eval-size", size, "--batch", "3"]
            .into_iter()
            .chain(["--iters", "3", "--warmup", "1", "--json", j])
            .collect::<Vec<_>>(),
    );
    assert_success(&o);
    let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&json).unwrap().trim()).unwrap();
    assert_eq!(line["batch"], 3);
    assert_eq!(line["what"], "eval-64x128-upsampled-x2");
    let (median, per_s) = (line["median_ms"].as_f64().unwrap(), line["images_per_s"].as_f64().unwrap());
    // 3 images per median pass; both figures rounded to 0.1 from the same unrounded median m:
    // |3000/m - 3000/median| <= 3000 · 0.05 / (median · (median - 0.05)).
    assert!((per_s - 3000.0 / median).abs() <= 0.05 + 3000.0 * 0.05 / (median * (median - 0.05)), "{line}");
}

/// The bench's JSON names the CPU and the kernels libtorch dispatched to: figures from two
/// machines differ by those (README, "Reliability"). `ATEN_CPU_CAPABILITY`, libtorch's own
/// override, must show up in what is reported.
#[test]
fn bench_names_the_cpu_and_its_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.jsonl");
    let args = ["bench", "--arch", "deeplabv2-tiny", "--what", "eval", "--eval-size", "64x32"];
    let run = |capability: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_advent"));
        cmd.args(args).args(["--iters", "1", "--warmup", "0", "--json", s(&json)]);
        if let Some(c) = capability {
            cmd.env("ATEN_CPU_CAPABILITY", c);
        }
        let _ = std::fs::remove_file(&json);
        assert_success(&cmd.output().unwrap());
        let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&json).unwrap().trim()).unwrap();
        line["device"].as_str().unwrap().to_string()
    };
    let device = run(None);
    assert!(device.starts_with("cpu (") && device.ends_with(" threads)"), "{device}");
    if cfg!(target_arch = "x86_64") {
        let model = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let model = model.lines().find(|l| l.starts_with("model name")).unwrap().split_once(':').unwrap().1.trim();
        assert!(device.contains(&model.split_whitespace().collect::<Vec<_>>().join(" ")), "{device} vs {model}");
        assert!(
            ["kernels DEFAULT;", "kernels AVX2;", "kernels AVX512;"].iter().any(|k| device.contains(k)),
            "{device}"
        );
        assert!(run(Some("default")).contains("; kernels DEFAULT; "), "ATEN_CPU_CAPABILITY=default");
    }
}

#[test]
fn bench_detection_arguments_are_checked() {
    let o = advent(&["bench", "--task", "detection", "--what", "bogus", "--iters", "1", "--warmup", "0"]);
    assert_clean_failure(&o, "`bogus` for detection");
    let o = advent(&["bench", "--task", "tracking"]);
    assert_clean_failure(&o, "--task: unknown `tracking`");
    let o = advent(&["bench", "--task", "detection", "--batch", "0"]);
    assert_clean_failure(&o, "--batch");
}

#[test]
fn detect_eval_scores_an_ssd_checkpoint_on_the_real_frame() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cityscapes-mini");
    if !root.join("gtFine/val").is_dir() {
        return;
    }
    let s = setup();
    let ssd = s.root.join("ssd.pth");
    tch::manual_seed(2);
    weights::save(&advent::detect::ssd::Ssd::new(9, Device::Cpu).unwrap().state_dict(), &ssd).unwrap();
    let json = s.root.join("det.json");
    let args = |checkpoint: &Path| {
        let (c, r, j) = (checkpoint.to_str().unwrap(), root.to_str().unwrap(), json.to_str().unwrap());
        advent(&["detect", "eval", "--checkpoint", c, "--dataset", "cityscapes", "--root", r, "--json", j])
    };
    let o = args(&ssd);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("motorcycle") && out.contains("mAP"), "{out}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["ap"].as_object().unwrap().len(), 8);
    assert_eq!(v["frames"], 1);
    let map = v["map"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&map), "{map}");
    // A segmentation checkpoint is refused, naming the file; the JSON stays as it was.
    let before = std::fs::read(&json).unwrap();
    let o = args(&s.checkpoint);
    assert_clean_failure(&o, "not an SSD checkpoint");
    assert!(stderr(&o).contains("model.pth"));
    assert_eq!(std::fs::read(&json).unwrap(), before);
    // So is a detector of other classes (VOC's 21), whose classes advent cannot name.
    let voc = s.root.join("voc.pth");
    weights::save(&advent::detect::ssd::Ssd::with_width(21, 4, Device::Cpu).unwrap().state_dict(), &voc).unwrap();
    let o = args(&voc);
    assert_clean_failure(&o, "a detector of 21 classes");
    assert!(stderr(&o).contains("voc.pth"));
    assert_eq!(std::fs::read(&json).unwrap(), before);
}

/// `advent detect train` on the built-in scenes: the run folder of a segmentation run
/// (config.toml, metrics.jsonl, checkpoints with ssd.pytorch-keyed model.pth, d.pth,
/// optimizer.safetensors, state.json); a run resumed from its first checkpoint logs and saves
/// exactly what the uninterrupted run did; a bad config key and an unknown method are
/// refused, naming the key.
#[test]
fn detect_train_runs_and_resumes_identically() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("det.toml");
    std::fs::write(
        &config,
        "[source]\ndataset = \"synthetic\"\nbatch_size = 1\n[target]\ndataset = \"synthetic\"\nbatch_size = 1\n\
         [synthetic]\nlen = 4\n[train]\nmethod = \"advent\"\nmax_iters = 100\nearly_stop = 2\nsave_every = 1\n\
         keep_checkpoints = 0\nworkers = 1\ndiscriminator_width = 4\n",
    )
    .unwrap();
    let (full, resumed) = (dir.path().join("full"), dir.path().join("resumed"));
    let o = advent(&["detect", "train", "--config", s(&config), "--run-dir", s(&full)]);
    assert_success(&o);
    let ckpt = full.join("checkpoints/iter_000002");
    for f in ["model.pth", "d.pth", "optimizer.safetensors", "state.json"] {
        assert!(ckpt.join(f).is_file(), "{f} missing");
    }
    let model = advent::weights::load(&ckpt.join("model.pth")).unwrap();
    assert!(model.get("vgg.0.weight").is_some() && model.get("conf.5.bias").is_some());
    // The interrupted run: the same folder as it stood after iteration 1's checkpoint.
    copy_tree(&full, &resumed);
    std::fs::remove_dir_all(resumed.join("checkpoints/iter_000002")).unwrap();
    let metrics = std::fs::read_to_string(resumed.join("metrics.jsonl")).unwrap();
    std::fs::write(
        resumed.join("metrics.jsonl"),
        metrics.lines().take(2).map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    // Its weights come from the checkpoint: a model.init that has gone since is not read.
    let saved = std::fs::read_to_string(resumed.join("config.toml")).unwrap();
    assert!(saved.contains("init = \"\"\n"), "{saved}");
    let gone = saved.replace("init = \"\"\n", "init = \"/gone/vgg16_reducedfc.pth\"\n");
    std::fs::write(resumed.join("config.toml"), gone).unwrap();
    let o = advent(&["detect", "train", "--resume", s(&resumed)]);
    assert_success(&o);
    assert!(stderr(&o).contains("resuming from"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(full.join("metrics.jsonl")).unwrap(),
        std::fs::read_to_string(resumed.join("metrics.jsonl")).unwrap()
    );
    assert_eq!(
        std::fs::read(ckpt.join("d.pth")).unwrap(),
        std::fs::read(resumed.join("checkpoints/iter_000002/d.pth")).unwrap(),
        "d.pth differs after resuming"
    );
    // The detector too, bit for bit: the resumed run is another process, and MKL's products
    // repeat across processes only in its reproducible mode, which `advent` turns on
    // (device::repeatable_blas; without it, on an Intel Xeon with AVX-512 and 2 threads,
    // weights came out up to 1e-6 apart).
    assert_eq!(
        std::fs::read(ckpt.join("model.pth")).unwrap(),
        std::fs::read(resumed.join("checkpoints/iter_000002/model.pth")).unwrap(),
        "model.pth differs after resuming"
    );

    // Its report: the detection losses' charts, the last checkpoint's detections on the
    // first target scenes.
    let o = advent(&["report", s(&full), "--samples", "2"]);
    assert_success(&o);
    let html = std::fs::read_to_string(full.join("report.html")).unwrap();
    for part in [
        "Detection run",
        "advent with SSD-300",
        "Source localisation loss",
        "Source confidence loss",
        "Adversarial loss (fooling the discriminator)",
        "Discriminator loss",
        "Detections of the checkpoint of iteration 2",
        "swatch",
    ] {
        assert!(html.contains(part), "no `{part}` in the report");
    }
    assert!(!html.contains("Target entropy loss"), "AdvEnt logs no entropy loss");
    assert_eq!(html.matches("<img ").count(), 4, "two scenes, each with its detections");
    // The built-in scenes have boxes: each scene is drawn with its ground truth.
    assert!(html.contains("target image, ground truth"), "no ground-truth header");
    assert_eq!(html.matches(r#"alt="ground truth: "#).count(), 2, "the two scenes' ground truth");
    // Every box of the tiny detector drawn: at least as many as at the default 0.5.
    assert!(html.contains("(score ≥ 0.5)"), "the default threshold is detect predict's");
    let o = advent(&["report", s(&full), "--samples", "2", "--min-score", "0"]);
    assert_success(&o);
    let html = std::fs::read_to_string(full.join("report.html")).unwrap();
    assert!(html.contains("(score ≥ 0)") && !html.contains(">0 detections ≥ 0"), "boxes drawn at 0");
    assert_clean_failure(&advent(&["report", s(&full), "--min-score", "2"]), "--min-score");

    // detect eval --sweep on the real val frame: a row per checkpoint whose mAP is what
    // detect eval gives that checkpoint alone; a second sweep takes every row from the cache;
    // the report then charts them.
    let mini = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cityscapes-mini");
    if mini.join("gtFine/val").is_dir() {
        let sweep = |extra: &[&str]| {
            let mut a = vec!["detect", "eval", "--sweep", s(&full), "--dataset", "cityscapes", "--root", s(&mini)];
            a.extend_from_slice(extra);
            advent(&a)
        };
        let json = dir.path().join("sweep.json");
        let o = sweep(&["--json", s(&json)]);
        assert_success(&o);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(out.contains("best snapshot: iteration") && out.contains("last snapshot: iteration 2"), "{out}");
        let csv = std::fs::read_to_string(full.join("eval/det-cityscapes-val/scores.csv")).unwrap();
        let mut lines = csv.lines();
        assert_eq!(lines.next().unwrap(), "iteration,map,person,rider,car,truck,bus,train,motorcycle,bicycle");
        let rows: Vec<(u64, f64)> = lines
            .map(|l| {
                let mut c = l.split(',');
                (c.next().unwrap().parse().unwrap(), c.next().unwrap().parse().unwrap())
            })
            .collect();
        let iterations: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(iterations, [1, 2], "the checkpoints of iterations 1 and 2");
        let one = dir.path().join("one.json");
        for (iteration, map) in &rows {
            let model = full.join(format!("checkpoints/iter_{iteration:06}/model.pth"));
            let o = advent(&[
                "detect",
                "eval",
                "--checkpoint",
                s(&model),
                "--dataset",
                "cityscapes",
                "--root",
                s(&mini),
                "--json",
                s(&one),
            ]);
            assert_success(&o);
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&one).unwrap()).unwrap();
            assert!((v["map"].as_f64().unwrap() - map).abs() < 1e-4, "iteration {iteration}: {v} against {map}");
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(v["last"]["iteration"], 2);
        let best = rows.iter().map(|r| r.1).fold(f64::NEG_INFINITY, f64::max);
        assert!((v["best"]["scores"]["map"].as_f64().unwrap() - best).abs() < 1e-4, "{v}");
        let o = sweep(&[]);
        assert_success(&o);
        assert!(String::from_utf8_lossy(&o.stdout).contains("2 checkpoint(s): 0 evaluated now, 2 from the cache"));
        assert_success(&advent(&["report", s(&full), "--samples", "1"]));
        let html = std::fs::read_to_string(full.join("report.html")).unwrap();
        assert!(html.contains("Target mAP per checkpoint") && html.contains("det-cityscapes-val"));
    }

    let o =
        advent(&["detect", "train", "--config", s(&config), "--set", "train.lerning_rate=1", "--run-dir", s(&full)]);
    assert_clean_failure(&o, "lerning_rate");
    let o = advent(&["detect", "train", "--config", s(&config), "--set", "train.method=minnet"]);
    assert_clean_failure(&o, "train.method");
    // The detection sets have 8 classes and the background: another count is refused before
    // training (it failed inside libtorch at the first iteration).
    let o = advent(&["detect", "train", "--config", s(&config), "--set", "model.num_classes=3", "--run-dir", s(&full)]);
    assert_clean_failure(&o, "model.num_classes must be 9");
    let o = advent(&["detect", "train", "--config", s(&config), "--set", "train.clip_grad_norm=-1"]);
    assert_clean_failure(&o, "train.clip_grad_norm");
    let o = advent(&["detect", "train", "--config", s(&config), "--set", "train.workers=100000"]);
    assert_clean_failure(&o, "train.workers");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// `advent detect predict` on the Cityscapes frames of ../shared/data: per image a PNG of the
/// image's size with the boxes drawn and a JSON list of detections at or above --min-score,
/// clipped to the image; a bad threshold is refused.
#[test]
fn detect_predict_writes_boxes() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if !data.is_dir() {
        eprintln!("skipped: no ../shared/data");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ssd = dir.path().join("ssd.pth");
    tch::manual_seed(4);
    weights::save(&advent::detect::ssd::Ssd::new(9, Device::Cpu).unwrap().state_dict(), &ssd).unwrap();
    let input = data.join("cityscapes-mini/leftImg8bit/val");
    let out = dir.path().join("out");
    let o = advent(&[
        "detect",
        "predict",
        "--checkpoint",
        s(&ssd),
        "--input",
        s(&input),
        "--recursive",
        "--output",
        s(&out),
        "--min-score",
        "0.05",
    ]);
    assert_success(&o);
    let pngs: Vec<PathBuf> =
        files_below(&out).into_iter().filter(|p| p.to_string_lossy().ends_with("_boxes.png")).collect();
    assert_eq!(pngs.len(), 1);
    let img = advent::image::read_rgb(&pngs[0]).unwrap();
    let original = files_below(&input).into_iter().find(|p| p.to_string_lossy().ends_with(".png")).unwrap();
    let original = advent::image::read_rgb(&original).unwrap();
    let (w, h) = (original.width() as f64, original.height() as f64);
    assert_eq!((img.width(), img.height()), (original.width(), original.height()));
    let json = pngs[0].to_string_lossy().replace(".png", ".json");
    let dets: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    for d in dets.as_array().unwrap() {
        assert!(d["score"].as_f64().unwrap() >= 0.05);
        let b: Vec<f64> = d["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(b[0] >= 0.0 && b[2] <= w - 1.0 && b[1] >= 0.0 && b[3] <= h - 1.0 && b[0] <= b[2], "{b:?}");
    }
    let o = advent(&[
        "detect",
        "predict",
        "--checkpoint",
        s(&ssd),
        "--input",
        s(&input),
        "--output",
        s(&out),
        "--min-score",
        "2",
    ]);
    assert_clean_failure(&o, "--min-score");
}

#[test]
fn demo_task_arguments_are_checked() {
    let o = advent(&["demo", "--task", "tracking"]);
    assert_clean_failure(&o, "--task");
    let o = advent(&["demo", "--task", "detection", "--seeds", "0"]);
    assert_clean_failure(&o, "--seeds");
}

/// `advent predict --fold-bn on` (also channels-last): the batch norms folded into the
/// convolutions (a checkpoint with non-trivial running statistics) give the plain pass's
/// probabilities to 1e-5.
#[test]
fn predict_with_folded_batch_norms_gives_the_same_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model();
    tch::no_grad(|| {
        for (key, mut t) in model.vs.variables() {
            if key.ends_with("running_mean") {
                let _ = t.uniform_(-0.2, 0.2);
            } else if key.ends_with("running_var") {
                let _ = t.uniform_(0.5, 2.0);
            }
        }
    });
    let checkpoint = dir.path().join("model.pth");
    weights::save(&model.state_dict(), &checkpoint).unwrap();
    let img = dir.path().join("x.png");
    write_image(&img, 64, 48);
    let prob = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["predict", "--checkpoint", s(&checkpoint), "--input", s(&img), "--output", s(&out)];
        args.push("--save-prob");
        args.extend(extra);
        assert_success(&advent(&args));
        Tensor::read_npy(out.join("x_prob.npy")).unwrap()
    };
    let plain = prob("plain", &["--fold-bn", "off"]);
    for (name, extra) in
        [("folded", &["--fold-bn", "on"][..]), ("folded-nhwc", &["--fold-bn", "on", "--channels-last"])]
    {
        let diff = (&plain - prob(name, extra)).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "probabilities differ by {diff:e} with {extra:?}");
    }
}

/// DADA's SYNTHIA → Mapillary setting from its shipped config, on miniature trees: SYNTHIA's
/// parsed labels at 7 classes, Mapillary images of two aspect ratios fitted and padded, the
/// single-level network; two AdvEnt iterations and a checkpoint.
#[test]
fn synthia_to_mapillary_trains_from_its_shipped_config() {
    let dir = tempfile::tempdir().unwrap();
    let (synthia, mapillary) = (dir.path().join("SYNTHIA"), dir.path().join("Mapillary"));
    for sub in ["RGB", "parsed_LABELS"] {
        std::fs::create_dir_all(synthia.join(sub)).unwrap();
    }
    std::fs::create_dir_all(mapillary.join("training/images")).unwrap();
    for k in 0..3u32 {
        let name = format!("{k:07}.png");
        common::write_image(&synthia.join("RGB").join(&name), 64, 38);
        let ids = image::GrayImage::from_fn(64, 38, |x, y| image::Luma([((x / 8 + y / 8 + k) % 23) as u8]));
        ids.save(synthia.join("parsed_LABELS").join(&name)).unwrap();
    }
    common::write_image(&mapillary.join("training/images/wide.jpg"), 96, 40);
    common::write_image(&mapillary.join("training/images/tall.jpg"), 30, 50);
    let run = dir.path().join("run");
    let o = advent(&[
        "train",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/synthia2mapillary_advent.toml"),
        "--set",
        "model.arch=\"deeplabv2-tiny\"",
        "--set",
        "model.init=\"\"",
        "--set",
        &format!("source.root=\"{}\"", s(&synthia)),
        "--set",
        "source.size=[64, 38]",
        "--set",
        &format!("target.root=\"{}\"", s(&mapillary)),
        "--set",
        "target.size=[48, 36]",
        "--set",
        "train.early_stop=2",
        "--set",
        "train.save_every=2",
        "--run-dir",
        s(&run),
    ]);
    assert_success(&o);
    let err = stderr(&o);
    // Single-level (DADA's): the plan names no aux head, and no aux loss is logged.
    assert!(
        err.contains("deeplabv2-tiny (7 classes, 630,604 trainable parameters)") && !err.contains("multi-level"),
        "{err}"
    );
    assert!(err.contains("2 images at 48x36"), "{err}");
    let lines = common::metrics(&run);
    assert!(lines.iter().any(|l| l.contains("loss_adv_trg_main")) && !lines.iter().any(|l| l.contains("_aux")));
    assert!(run.join("checkpoints").read_dir().unwrap().next().is_some(), "no checkpoint");
}
