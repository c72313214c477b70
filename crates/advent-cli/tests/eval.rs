//! End-to-end tests of `advent eval` and `advent score`: the JSON both write, ensembles,
//! sweeps and their cache, agreement with cityscapesScripts, and one clear error line with a
//! non-zero exit for bad inputs.

mod common;

use common::{advent, advent_with_file_limit, assert_clean_failure, assert_success, files_below, s, stderr, stdout};

use advent::model::{Arch, AsppSum, ModelConfig, SegModel};
use advent::weights;
use std::path::{Path, PathBuf};
use tch::Device;

/// `crates/advent/tests/fixtures/eval`: 6 Cityscapes-named 64x32 ground-truth frames, train-id
/// and label-id predictions, and cityscapesScripts' scores of them (expected.json).
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../advent/tests/fixtures/eval")
}

fn tiny_checkpoint(path: &Path, seed: i64) {
    tiny_checkpoint_of(path, seed, 19);
}

fn tiny_checkpoint_of(path: &Path, seed: i64, num_classes: i64) {
    tch::manual_seed(seed);
    let config = ModelConfig { arch: Arch::DeepLabV2Tiny, num_classes, multi_level: true, aspp_sum: AsppSum::AllFour };
    weights::save(&SegModel::new(config, Device::Cpu).unwrap().state_dict(), path).unwrap();
}

/// A Cityscapes root of the fixture frames: their ground truth, and an image for each.
fn cityscapes_root(dir: &Path) -> PathBuf {
    let root = dir.join("cityscapes");
    for city in std::fs::read_dir(fixtures().join("gtFine/val")).unwrap() {
        let city = city.unwrap().path();
        let name = city.file_name().unwrap();
        let (gt, images) = (root.join("gtFine/val").join(name), root.join("leftImg8bit/val").join(name));
        std::fs::create_dir_all(&gt).unwrap();
        std::fs::create_dir_all(&images).unwrap();
        for f in std::fs::read_dir(&city).unwrap() {
            let f = f.unwrap().path();
            let file = f.file_name().unwrap().to_str().unwrap();
            std::fs::copy(&f, gt.join(file)).unwrap();
            let stem = file.strip_suffix("_gtFine_labelIds.png").unwrap();
            let img = image::RgbImage::from_fn(64, 32, |x, y| image::Rgb([(x * 4) as u8, (y * 8) as u8, 90]));
            img.save(images.join(format!("{stem}_leftImg8bit.png"))).unwrap();
        }
    }
    root
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn cityscapes_mini() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cityscapes-mini");
    root.join("gtFine/val").is_dir().then_some(root)
}

#[test]
fn score_prints_the_papers_table_and_agrees_with_cityscapes_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("scores.json");
    let fx = fixtures();
    let o = advent(&["score", "--pred", s(&fx.join("pred_trainids")), "--gt", s(&fx), "--json", s(&json)]);
    assert_success(&o);
    let out = stdout(&o);
    let heads: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(heads[..3], ["road", "side.", "build."]);
    assert_eq!(heads.last(), Some(&"mIoU"));
    let expected = read_json(&fx.join("expected.json"));
    let average = 100.0 * expected["pred_trainids"]["averageScoreClasses"].as_f64().unwrap();
    assert!(out.contains(&format!("mIoU {average:.2} over 19 classes, 6 frames")), "{out}");
    let v = read_json(&json);
    assert!((v["miou"].as_f64().unwrap() - average).abs() < 1e-9);
    let road = 100.0 * expected["pred_trainids"]["classScores"]["road"].as_f64().unwrap();
    assert!((v["iou"]["road"].as_f64().unwrap() - road).abs() < 1e-9);
    assert!(v["iou"]["train"].is_null());
    // --paper as in advent eval: the published MinEnt row (SPEC §8.1) under the table.
    let o = advent(&["score", "--pred", s(&fx.join("pred_trainids")), "--gt", s(&fx), "--paper", "gta5-r101/minent"]);
    assert_success(&o);
    let paper = stdout(&o).lines().find(|l| l.starts_with("paper ")).map(String::from);
    let cells: Vec<String> = paper.unwrap_or_default().split_whitespace().skip(1).map(String::from).collect();
    assert_eq!(cells.first().map(String::as_str), Some("84.4"));
    assert_eq!(cells.last().map(String::as_str), Some("42.3"));
    let o =
        advent(&["score", "--pred", s(&fx.join("pred_trainids")), "--gt", s(&fx), "--paper", "synthia-r101/advent"]);
    assert_clean_failure(&o, "but this evaluation is over 19");

    // Label ids, with ignored ids predicted: --label-ids.
    let o = advent(&["score", "--pred", s(&fx.join("pred_labelids")), "--gt", s(&fx), "--label-ids", "--threads", "1"]);
    assert_success(&o);
    let average = 100.0 * expected["pred_labelids"]["averageScoreClasses"].as_f64().unwrap();
    assert!(stdout(&o).contains(&format!("mIoU {average:.2}")), "{}", stdout(&o));
    // ... and without it, an error that says so.
    let o = advent(&["score", "--pred", s(&fx.join("pred_labelids")), "--gt", s(&fx)]);
    assert_clean_failure(&o, "--label-ids");
}

#[test]
fn score_names_the_frames_without_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let preds = dir.path().join("preds");
    std::fs::create_dir_all(&preds).unwrap();
    let src = fixtures().join("pred_trainids/frankfurt/frankfurt_000000_000294_leftImg8bit_trainids.png");
    std::fs::copy(src, preds.join("frankfurt_000000_000294_leftImg8bit_trainids.png")).unwrap();
    let o = advent(&["score", "--pred", s(&preds), "--gt", s(&fixtures())]);
    assert_clean_failure(&o, "5 of 6 ground-truth frames have no prediction");
    assert!(stderr(&o).contains("frankfurt_000001_005898, lindau_000000_000019"), "{}", stderr(&o));
    let o = advent(&["score", "--pred", s(&preds), "--gt", s(&fixtures()), "--dataset", "gta5"]);
    assert_clean_failure(&o, "unknown dataset `gta5`");
}

#[test]
fn eval_and_score_write_the_same_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = cityscapes_root(dir.path());
    let ckpt = dir.path().join("tiny.pth");
    tiny_checkpoint(&ckpt, 1);
    let (json, preds) = (dir.path().join("eval.json"), dir.path().join("preds"));
    let o = advent(&[
        "eval",
        "--checkpoint",
        s(&ckpt),
        "--dataset",
        "cityscapes",
        "--root",
        s(&root),
        "--input-size",
        "64x32",
        "--output-size",
        "native",
        "--json",
        s(&json),
        "--save-predictions",
        s(&preds),
    ]);
    assert_success(&o);
    assert!(stdout(&o).contains("over 19 classes"), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("evaluated 6 images in ") && err.contains(" images/s)"), "{err}");
    let evaluated = read_json(&json);
    assert_eq!(evaluated["iou"].as_object().unwrap().len(), 19);
    assert_eq!(evaluated["classes"].as_array().unwrap().len(), 19);
    assert_eq!(evaluated["confusion"].as_array().unwrap().len(), 19);
    // advent predict's pictures sit beside the train ids; score passes over them.
    assert!(preds.join("lindau_000000_000019_leftImg8bit_color.png").is_file());
    let scored = dir.path().join("score.json");
    let o = advent(&["score", "--pred", s(&preds), "--gt", s(&root), "--json", s(&scored)]);
    assert_success(&o);
    assert_eq!(read_json(&scored), evaluated);
}

#[test]
fn ensembles_take_one_weight_per_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = cityscapes_root(dir.path());
    let (a, b) = (dir.path().join("a.pth"), dir.path().join("b.pth"));
    tiny_checkpoint(&a, 1);
    tiny_checkpoint(&b, 2);
    let base =
        ["eval", "--dataset", "cityscapes", "--root", s(&root), "--input-size", "64x32", "--output-size", "64x32"];
    let run = |extra: &[&str], json: &Path| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--json", s(json)]);
        advent(&args)
    };
    let (j_a, j_a0, j_ab, j_ab2) = (
        dir.path().join("a.json"),
        dir.path().join("a0.json"),
        dir.path().join("ab.json"),
        dir.path().join("ab2.json"),
    );
    assert_success(&run(&["--checkpoint", s(&a)], &j_a));
    // B at weight 0 changes nothing.
    assert_success(&run(&["--checkpoint", s(&a), "--checkpoint", s(&b), "--weight", "1", "--weight", "0"], &j_a0));
    assert_eq!(read_json(&j_a)["confusion"], read_json(&j_a0)["confusion"]);
    // Equal weights by default: the same as 0.5 / 0.5 (and as 1 / 1: a common scale).
    let o = run(&["--checkpoint", s(&a), "--checkpoint", s(&b)], &j_ab);
    assert_success(&o);
    assert!(stderr(&o).contains("(weight 0.5)"), "{}", stderr(&o));
    assert_success(&run(&["--checkpoint", s(&a), "--checkpoint", s(&b), "--weight", "1", "--weight", "1"], &j_ab2));
    assert_eq!(read_json(&j_ab)["confusion"], read_json(&j_ab2)["confusion"]);
    let o = run(&["--checkpoint", s(&a), "--checkpoint", s(&b), "--weight", "0.5"], &j_ab);
    assert_clean_failure(&o, "1 --weight for 2 --checkpoint");
}

/// `--paper`: the published row (ADVENT Table 1's AdvEnt, SPEC §8.1, typed here by hand) and
/// the difference of the printed values, under the table.
#[test]
fn eval_prints_the_papers_row_beside_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let root = cityscapes_root(dir.path());
    let ckpt = dir.path().join("tiny.pth");
    tiny_checkpoint(&ckpt, 1);
    let json = dir.path().join("eval.json");
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--checkpoint", s(&ckpt), "--dataset", "cityscapes", "--root", s(&root)];
        args.extend_from_slice(&["--input-size", "64x32", "--output-size", "native"]);
        args.extend_from_slice(extra);
        advent(&args)
    };
    let o = eval(&["--paper", "gta5-r101/advent", "--json", s(&json)]);
    assert_success(&o);
    let out = stdout(&o);
    let row = |label: &str| -> Vec<String> {
        let line = out.lines().find(|l| l.split_whitespace().next() == Some(label)).unwrap_or_else(|| panic!("{out}"));
        line.split_whitespace().skip(1).map(String::from).collect()
    };
    let published = [
        "89.9", "36.5", "81.6", "29.2", "25.2", "28.5", "32.3", "22.4", "83.9", "34.0", "77.1", "57.4", "27.9", "83.7",
        "29.4", "39.1", "1.5", "28.4", "23.3", "43.8",
    ];
    assert_eq!(row("paper"), published);
    let scores = read_json(&json);
    let ours: Vec<Option<f64>> =
        scores["iou"].as_object().unwrap().values().map(|v| v.as_f64()).chain([scores["miou"].as_f64()]).collect();
    let shown: Vec<String> = ours.iter().map(|v| v.map_or("-".into(), |v| format!("{v:.1}"))).collect();
    assert_eq!(row("this"), shown);
    let difference: Vec<String> = shown
        .iter()
        .zip(published)
        .map(|(o, p)| match o.parse::<f64>() {
            Ok(o) => format!("{:+.1}", o - p.parse::<f64>().unwrap()),
            Err(_) => "-".into(),
        })
        .collect();
    assert_eq!(row("difference"), difference);
    assert!(out.contains("paper: AdvEnt, ResNet-101, GTA5 → Cityscapes (ADVENT Table 1)"), "{out}");
    // A SYNTHIA row for a 19-class network is refused before evaluating; an unknown key lists them.
    let o = eval(&["--paper", "synthia-r101/advent"]);
    assert_clean_failure(&o, "over 16 classes (SYNTHIA → Cityscapes), but this evaluation is over 19");
    assert!(!stderr(&o).contains("evaluated"), "{}", stderr(&o));
    let o = eval(&["--paper", "gta5-r101/adventt"]);
    assert_clean_failure(&o, "gta5-r101/minent-er");
}

#[test]
fn eval_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = cityscapes_root(dir.path());
    let ckpt = dir.path().join("tiny.pth");
    tiny_checkpoint(&ckpt, 1);
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--root", s(&root), "--input-size", "64x32", "--output-size", "native"];
        args.extend_from_slice(extra);
        advent(&args)
    };
    let o = eval(&["--checkpoint", s(&ckpt), "--dataset", "gta5"]);
    assert_clean_failure(&o, "unknown evaluation dataset `gta5`");
    let o = eval(&["--checkpoint", s(&ckpt), "--dataset", "mapillary"]);
    assert_clean_failure(&o, "Mapillary class indices: no table for 19 classes");
    let bad = dir.path().join("bad.pth");
    std::fs::write(&bad, b"not a checkpoint").unwrap();
    let o = eval(&["--checkpoint", s(&bad), "--dataset", "cityscapes"]);
    assert_clean_failure(&o, "bad.pth");
    let o = eval(&["--checkpoint", s(&ckpt), "--dataset", "cityscapes", "--classes", "13"]);
    assert_clean_failure(&o, "needs a 16-class network");
    let o = eval(&["--checkpoint", s(&ckpt), "--dataset", "cityscapes", "--split", "test"]);
    assert_clean_failure(&o, "leftImg8bit/test");
}

#[test]
fn a_sweep_caches_its_results_and_reports_best_and_last() {
    let dir = tempfile::tempdir().unwrap();
    let root = cityscapes_root(dir.path());
    let run = dir.path().join("run");
    for (i, seed) in [(2u64, 2i64), (4, 4)] {
        let ckpt = run.join(format!("checkpoints/iter_{i:06}"));
        std::fs::create_dir_all(&ckpt).unwrap();
        tiny_checkpoint(&ckpt.join("model.pth"), seed);
        std::fs::write(ckpt.join("state.json"), "{}").unwrap();
    }
    std::fs::write(run.join("config.toml"), "[model]\nnum_classes = 19\n\n[train]\nearly_stop = 4\n").unwrap();
    let json = dir.path().join("sweep.json");
    let args = [
        "eval",
        "--sweep",
        s(&run),
        "--dataset",
        "cityscapes",
        "--root",
        s(&root),
        "--input-size",
        "64x32",
        "--output-size",
        "native",
        "--json",
        s(&json),
    ];
    let o = advent(&args);
    assert_success(&o);
    let out = stdout(&o);
    assert!(out.contains("best snapshot: iteration") && out.contains("last snapshot: iteration 4"), "{out}");
    assert!(out.contains("2 evaluated now, 0 from the cache"), "{out}");
    let cache = run.join("eval/cityscapes-val-19-in64x32-outnative");
    assert!(cache.join("iter_000002.json").is_file() && cache.join("scores.csv").is_file());
    let v = read_json(&json);
    assert_eq!(v["last"]["iteration"], 4);
    assert!(v["best"]["scores"]["miou"].is_number());

    let o = advent(&args);
    assert_success(&o);
    let out = stdout(&o);
    assert_eq!(out.matches("[cached]").count(), 2, "{out}");
    assert!(out.contains("0 evaluated now, 2 from the cache"), "{out}");
    // --wait on a finished run returns at once; --save-predictions does not go with --sweep.
    let mut waiting = args.to_vec();
    waiting.push("--wait");
    assert_success(&advent(&waiting));
    let o = advent(&[&args[..], &["--save-predictions", "x"]].concat());
    assert!(!o.status.success());
}

#[test]
fn eval_runs_on_the_real_val_frame() {
    let Some(root) = cityscapes_mini() else {
        eprintln!("skipped: ../shared/data/cityscapes-mini is not there");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("tiny.pth");
    tiny_checkpoint(&ckpt, 3);
    let json = dir.path().join("scores.json");
    let o = advent(&[
        "eval",
        "--checkpoint",
        s(&ckpt),
        "--dataset",
        "cityscapes",
        "--root",
        s(&root),
        "--input-size",
        "128x64",
        "--output-size",
        "256x128",
        "--json",
        s(&json),
    ]);
    assert_success(&o);
    assert!(stderr(&o).contains("on 1 images of cityscapes val"), "{}", stderr(&o));
    let v = read_json(&json);
    assert_eq!(v["iou"].as_object().unwrap().len(), 19);
    let total: u64 = v["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert!(total > 0 && total <= 256 * 128);

    // The batch norms folded into the convolutions: the same labels on all but rounding's
    // pixels (at most 0.1 %); `fused` needs CUDA and says so.
    let folded = dir.path().join("folded.json");
    let mut args = vec!["eval", "--checkpoint", s(&ckpt), "--dataset", "cityscapes", "--root", s(&root)];
    args.extend(["--input-size", "128x64", "--output-size", "256x128", "--fold-bn", "on", "--json", s(&folded)]);
    assert_success(&advent(&args));
    let cells = |v: &serde_json::Value| -> Vec<u64> {
        v["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let (plain, folded) = (cells(&v), cells(&read_json(&folded)));
    let moved: u64 = plain.iter().zip(&folded).map(|(a, b)| a.abs_diff(*b)).sum::<u64>() / 2;
    assert!(moved * 1000 <= total, "{moved} of {total} pixels moved with --fold-bn on");
    *args.iter_mut().find(|a| **a == "on").unwrap() = "fused";
    assert_clean_failure(&advent(&args), "--fold-bn fused needs --device cuda");
}

/// A full disk (files limited to 1 KB, as the faults tests do it: EFBIG in place of ENOSPC)
/// while the scoring threads write `advent eval`'s predictions, and while `advent predict`'s
/// writers write its outputs: one clear error naming the file, the earlier outputs as they
/// were, no temporary or staging file left behind.
#[test]
fn a_full_disk_stops_eval_and_predict_cleanly_and_keeps_earlier_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let root = cityscapes_root(dir.path());
    let ckpt = dir.path().join("tiny.pth");
    tiny_checkpoint(&ckpt, 3);
    let preds = dir.path().join("preds");
    std::fs::create_dir_all(&preds).unwrap();
    std::fs::write(preds.join("earlier_trainids.png"), b"an earlier prediction").unwrap();
    let (c, r, p) = (s(&ckpt), s(&root), s(&preds));
    let eval = ["eval", "--checkpoint", c, "--dataset", "cityscapes", "--root", r, "--input-size", "64x32"];
    let outputs = ["--output-size", "2048x1024", "--save-predictions", p, "--batch", "2"];
    let o = advent_with_file_limit(&[&eval[..], &outputs].concat(), 1024);
    assert_clean_failure(&o, "File too large");
    assert!(stderr(&o).contains("_trainids.png") || stderr(&o).contains("_color.png"), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(&preds).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["earlier_trainids.png"]);
    assert_eq!(std::fs::read(preds.join("earlier_trainids.png")).unwrap(), b"an earlier prediction");

    let out = dir.path().join("out");
    let images = root.join("leftImg8bit/val");
    // An earlier output of the first image, where this run writes it again.
    let first = files_below(&images).into_iter().min().unwrap();
    let rel = first.strip_prefix(&images).unwrap();
    let stem = rel.file_stem().unwrap().to_str().unwrap();
    let earlier = out.join(rel.parent().unwrap()).join(format!("{stem}_trainids.png"));
    std::fs::create_dir_all(earlier.parent().unwrap()).unwrap();
    std::fs::write(&earlier, b"an earlier prediction").unwrap();
    let (i, o_) = (s(&images), s(&out));
    let predict =
        ["predict", "--checkpoint", c, "--input", i, "--output", o_, "--recursive", "--output-size", "2048x1024"];
    let o = advent_with_file_limit(&predict, 1024);
    assert_clean_failure(&o, "6 of 6 images failed");
    assert!(stderr(&o).contains("File too large"), "{}", stderr(&o));
    let mut left: Vec<_> = files_below(&out);
    left.sort();
    assert_eq!(left, std::slice::from_ref(&earlier), "only the earlier file, nothing half-written");
    assert_eq!(std::fs::read(&earlier).unwrap(), b"an earlier prediction");
}

/// Mapillary class index → DADA's 7 classes (`MAPILLARY_2_CITYSCAPES`, `other` → 255),
/// written out.
#[rustfmt::skip]
const MAP7: [u8; 66] = [
    255, 255, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 5, 5, 5, 5, 0, 0, 255, 255, 4, 255, 0,
    3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 2, 2, 2, 2, 2, 2, 2, 2, 255, 6, 6, 6,
    6, 6, 6, 6, 6, 6, 6, 6, 255, 255, 255,
];

/// `advent eval --dataset mapillary` with DADA's protocol: images of any aspect ratio fitted
/// into the input and padded, logits compared at each label's size padded to the input's
/// aspect ratio. The confusion matrix is recounted here from the saved predictions and the
/// labels mapped by the table above (padding ignored).
#[test]
fn mapillary_is_evaluated_at_each_label_padded_to_the_input_aspect() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mapillary");
    // (stem, label size, padded size at 32x24: 48 / (32/24) = 36 high; (32/24) * 32 = 42 wide).
    let items = [("wide", (48u32, 24u32), (48u32, 36u32)), ("tall", (24, 32), (42, 32))];
    let mut labels = Vec::new();
    for (k, (stem, (w, h), _)) in items.iter().enumerate() {
        for sub in ["images", "labels"] {
            std::fs::create_dir_all(root.join("validation").join(sub)).unwrap();
        }
        let img = image::RgbImage::from_fn(*w, *h, |x, y| image::Rgb([(x * 5) as u8, (y * 7) as u8, 40 * k as u8]));
        img.save(root.join(format!("validation/images/{stem}.jpg"))).unwrap();
        let ids: Vec<u8> = (0..w * h).map(|i| ((i / 3 + 11 * k as u32) % 66) as u8).collect();
        let label = image::GrayImage::from_raw(*w, *h, ids.clone()).unwrap();
        label.save(root.join(format!("validation/labels/{stem}.png"))).unwrap();
        labels.push(ids);
    }
    let ckpt = dir.path().join("seven.pth");
    tiny_checkpoint_of(&ckpt, 3, 7);
    let (json, preds) = (dir.path().join("eval.json"), dir.path().join("preds"));
    let o = advent(&[
        "eval",
        "--checkpoint",
        s(&ckpt),
        "--dataset",
        "mapillary",
        "--root",
        s(&root),
        "--input-size",
        "32x24",
        "--json",
        s(&json),
        "--save-predictions",
        s(&preds),
    ]);
    assert_success(&o);
    let err = stderr(&o);
    assert!(err.contains("of mapillary validation (7 classes; input 32x24, output each label's size)"), "{err}");
    assert!(stdout(&o).contains("over 7 classes"), "{}", stdout(&o));
    let mut confusion = vec![vec![0u64; 7]; 7];
    for ((stem, (w, _), padded), ids) in items.iter().zip(&labels) {
        let pred = image::open(preds.join(format!("{stem}_trainids.png"))).unwrap().to_luma8();
        assert_eq!(pred.dimensions(), *padded, "{stem}");
        for (i, &id) in ids.iter().enumerate() {
            let (x, y) = (i as u32 % w, i as u32 / w);
            let gt = MAP7[usize::from(id)];
            if gt != 255 {
                confusion[usize::from(gt)][usize::from(pred.get_pixel(x, y)[0])] += 1;
            }
        }
    }
    let v = read_json(&json);
    assert_eq!(v["confusion"], serde_json::json!(confusion));
    assert_eq!(
        v["classes"],
        serde_json::json!(["flat", "construction", "object", "nature", "sky", "human", "vehicle"])
    );
}

/// A `w`x`h` picture of stripes and gradients that differ with `seed`.
fn patterned(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([((x * (seed + 1) * 9) ^ (y * 7)) as u8, (y * seed * 23) as u8, (x * seed * 5 + y * 3) as u8])
    })
}

/// The network of `ckpt` on the CPU, and the images of a dataset at `size`, without labels.
fn model_and_images(
    ckpt: &Path,
    kind: &str,
    root: &Path,
    split: &str,
    size: (u32, u32),
) -> (SegModel, advent::dataset::FileDataset) {
    let (model, _) = SegModel::from_checkpoint(ckpt, &Default::default(), Default::default(), Device::Cpu).unwrap();
    let mut spec = advent::config::Config::defaults().dataset_spec(false);
    (spec.kind, spec.root, spec.split, spec.size) = (kind.into(), root.to_path_buf(), split.into(), size);
    (model, advent::dataset::open_files(&spec, &Default::default()).unwrap())
}

/// IntraDA's score and pseudo-label of one `[3, H, W]` input, worked out in f64 from the
/// network's upsampled logits: the mean over classes and the top-left `region` (width ×
/// height) of `−p · log2(p + 1e-30) / log2(C)`, and the argmax (255 outside the region).
fn rank_by_hand(model: &SegModel, image: &tch::Tensor, region: (usize, usize)) -> (f64, Vec<u8>) {
    let (h, w) = (image.size()[1], image.size()[2]);
    let logits =
        tch::no_grad(|| advent::loss::upsample(&model.forward_main(&image.unsqueeze(0)).unwrap(), h, w).unwrap());
    let l: Vec<f32> = Vec::try_from(logits.flatten(0, -1)).unwrap();
    let (c, hw) = (model.config.num_classes as usize, (h * w) as usize);
    let (rw, rh) = (region.0.min(w as usize), region.1.min(h as usize));
    let (mut sum, mut argmax) = (0.0f64, vec![255u8; hw]);
    for p in (0..hw).filter(|p| p % (w as usize) < rw && p / (w as usize) < rh) {
        let z: Vec<f64> = (0..c).map(|k| f64::from(l[k * hw + p])).collect();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: f64 = z.iter().map(|v| (v - m).exp()).sum();
        argmax[p] = 0;
        for (k, v) in z.iter().enumerate() {
            let prob = (v - m).exp() / e;
            sum += -prob * (prob + 1e-30).log2() / (c as f64).log2();
            if *v > z[usize::from(argmax[p])] {
                argmax[p] = k as u8;
            }
        }
    }
    (sum / (c * rw * rh) as f64, argmax)
}

/// `advent rank` (IntraDA's entropy ranking) against the formula worked out here from the
/// network's logits: per image the mean over classes and pixels of
/// `−p · log2(p + 1e-30) / log2(19)`, times `(11 − rare) / 11 + 0.5` with `--normalize`;
/// ascending order; the first int(6 · 0.67) = 4 easy; pseudo-labels the argmax. Then the
/// intra-domain stage trains from its shipped config on the easy split's pseudo-labels.
#[test]
fn rank_splits_by_entropy_and_the_easy_split_trains_on_its_pseudo_labels() {
    let dir = tempfile::tempdir().unwrap();
    let root = cityscapes_root(dir.path());
    // Distinct images, so that the scores differ.
    let mut names = Vec::new();
    for (k, city) in ["frankfurt", "lindau", "munster"].iter().enumerate() {
        let folder = root.join("leftImg8bit/val").join(city);
        let mut files: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for (j, f) in files.iter().enumerate() {
            patterned(64, 32, (3 * k + j) as u32).save(f).unwrap();
            names.push(format!("{city}/{}", f.file_name().unwrap().to_str().unwrap()));
        }
    }
    let ckpt = dir.path().join("adapted.pth");
    tiny_checkpoint(&ckpt, 5);
    let out = dir.path().join("ranked");
    let rank = |extra: &[&str]| {
        let mut args = vec!["rank", "--checkpoint", s(&ckpt), "--root", s(&root), "--split", "val"];
        args.extend_from_slice(&["--input-size", "64x32", "--out", s(&out), "--normalize"]);
        args.extend_from_slice(extra);
        advent(&args)
    };
    let o = rank(&[]);
    assert_success(&o);
    assert!(stdout(&o).contains("easy: 4 images") && stdout(&o).contains("hard: 2 images"), "{}", stdout(&o));

    // The formula, by hand, from the logits.
    let (model, set) = model_and_images(&ckpt, "cityscapes", &root, "val", (64, 32));
    let rare = [3usize, 4, 5, 6, 7, 9, 12, 14, 15, 16, 17];
    let mut want = Vec::new();
    for (i, item) in set.items().iter().enumerate() {
        use advent::dataset::Dataset;
        let (entropy, argmax) = rank_by_hand(&model, &set.get(i).unwrap().image, (64, 32));
        let present = rare.iter().filter(|&&r| argmax.contains(&(r as u8))).count();
        let normalizer = (11.0 - present as f64) / 11.0 + 0.5;
        let stem = item.name.rsplit('/').next().unwrap().strip_suffix(".png").unwrap();
        let pseudo = image::open(out.join(format!("pseudo_labels/{stem}.png"))).unwrap().to_luma8();
        assert_eq!(pseudo.dimensions(), (64, 32));
        let differ = pseudo.as_raw().iter().zip(&argmax).filter(|(a, b)| a != b).count();
        assert!(differ <= 2, "{stem}: {differ} pseudo-label pixels differ from the argmax by hand");
        want.push((item.name.clone(), entropy, normalizer));
    }
    let csv = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 6);
    for (name, entropy, normalizer) in &want {
        let row = rows.iter().find(|r| r[1] == name).unwrap_or_else(|| panic!("{name} not ranked"));
        let got: f64 = row[2].parse().unwrap();
        assert!((got - entropy).abs() <= 1e-5 * entropy, "{name}: entropy {got}, by hand {entropy}");
        assert_eq!(row[3].parse::<f64>().unwrap(), *normalizer, "{name}");
    }
    want.sort_by(|a, b| (a.1 * a.2).total_cmp(&(b.1 * b.2)));
    let order: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    let wanted: Vec<&str> = want.iter().map(|w| w.0.as_str()).collect();
    assert_eq!(order, wanted, "ascending score");
    let easy: Vec<String> = wanted[..4].iter().map(|n| format!("{n}\n")).collect();
    assert_eq!(std::fs::read_to_string(out.join("easy_split.txt")).unwrap(), easy.concat());
    let hard: Vec<String> = wanted[4..].iter().map(|n| format!("{n}\n")).collect();
    assert_eq!(std::fs::read_to_string(out.join("hard_split.txt")).unwrap(), hard.concat());
    assert!(names.iter().all(|n| wanted.contains(&n.as_str())));

    // An existing folder is left alone.
    let before = common::snapshot(&out);
    assert_clean_failure(&rank(&[]), "exists and is not an empty folder");
    assert_eq!(common::snapshot(&out), before);
    assert_clean_failure(&rank(&["--dataset", "gta5"]), "rank a target domain");

    // IntraDA's intra-domain stage: easy (pseudo-labelled) → hard.
    let o = advent(&[
        "train",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/intrada_cityscapes_easy2hard.toml"),
        "--set",
        "model.arch=\"deeplabv2-tiny\"",
        "--set",
        "model.init=\"\"",
        "--set",
        &format!("source.root=\"{}\"", s(&root)),
        "--set",
        &format!("target.root=\"{}\"", s(&root)),
        "--set",
        "source.split=\"val\"",
        "--set",
        "target.split=\"val\"",
        "--set",
        &format!("source.list=\"{}\"", s(&out.join("easy_split.txt"))),
        "--set",
        &format!("target.list=\"{}\"", s(&out.join("hard_split.txt"))),
        "--set",
        &format!("source.pseudo_labels=\"{}\"", s(&out.join("pseudo_labels"))),
        "--set",
        "source.size=[64, 32]",
        "--set",
        "target.size=[64, 32]",
        "--set",
        "train.early_stop=2",
        "--run-dir",
        s(&dir.path().join("intra")),
    ]);
    assert_success(&o);
    let err = stderr(&o);
    assert!(err.contains("4 images at 64x32") && err.contains("2 images at 64x32"), "{err}");
    assert!(err.contains(&format!("pseudo-labels {}), 4 images", s(&out.join("pseudo_labels")))), "{err}");
}

/// `advent rank` on Mapillary, whose images are fitted into the input and padded (not in
/// IntraDA): each image is scored over the part that holds it, and its pseudo-label ignores
/// the padding (255); a wide 64x32 and a tall 24x48 image in a 64x48 input.
#[test]
fn rank_scores_mapillary_images_without_their_padding() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mapillary");
    std::fs::create_dir_all(root.join("training/images")).unwrap();
    for (stem, (w, h), s) in [("tall", (24u32, 48u32), 3u32), ("wide", (64, 32), 7)] {
        patterned(w, h, s).save(root.join(format!("training/images/{stem}.jpg"))).unwrap();
    }
    let ckpt = dir.path().join("seven.pth");
    tiny_checkpoint_of(&ckpt, 9, 7);
    let out = dir.path().join("ranked");
    let o = advent(&[
        "rank",
        "--checkpoint",
        s(&ckpt),
        "--dataset",
        "mapillary",
        "--root",
        s(&root),
        "--input-size",
        "64x48",
        "--lambda",
        "0.5",
        "--out",
        s(&out),
    ]);
    assert_success(&o);
    let (model, set) = model_and_images(&ckpt, "mapillary", &root, "training", (64, 48));
    let csv = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    for (i, (stem, region)) in [("tall", (24, 48)), ("wide", (64, 32))].into_iter().enumerate() {
        use advent::dataset::Dataset;
        let (entropy, argmax) = rank_by_hand(&model, &set.get(i).unwrap().image, region);
        let pseudo = image::open(out.join(format!("pseudo_labels/{stem}.png"))).unwrap().to_luma8();
        assert_eq!(pseudo.dimensions(), (64, 48));
        for (p, &got) in pseudo.as_raw().iter().enumerate() {
            let inside = p % 64 < region.0 && p / 64 < region.1;
            assert_eq!(got == 255, !inside, "{stem}: pixel {p}");
        }
        let differ = pseudo.as_raw().iter().zip(&argmax).filter(|(a, b)| a != b).count();
        assert!(differ <= 2, "{stem}: {differ} pseudo-label pixels differ from the argmax by hand");
        let row: Vec<&str> =
            csv.lines().find(|l| l.split(',').nth(1) == Some(&format!("{stem}.jpg"))).unwrap().split(',').collect();
        let got: f64 = row[2].parse().unwrap();
        assert!((got - entropy).abs() <= 1e-5 * entropy, "{stem}: entropy {got}, by hand {entropy}");
    }
}
