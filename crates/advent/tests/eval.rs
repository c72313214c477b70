//! Evaluation (SPEC §6): agreement with cityscapesScripts, ensembles, the whole path on a real
//! Cityscapes frame, snapshot sweeps and their cache, and the errors users meet.

mod common;

use advent::config::Config;
use advent::dataset::{self, Dataset, Sample};
use advent::eval::score::{score, ScoreOptions};
use advent::eval::sweep::{sweep, SweepOptions, SweepPlan, SweepResult};
use advent::eval::{self, evaluate, open_dataset, EvalOptions, EvalSet, Scores};
use advent::model::{Arch, AsppSum, ModelConfig, ModelOverrides, SegModel};
use advent::weights;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

// ---------------------------------------------------------------------------------------
// Helpers

fn tiny(num_classes: i64, seed: i64) -> SegModel {
    tch::manual_seed(seed);
    let config = ModelConfig { arch: Arch::DeepLabV2Tiny, num_classes, multi_level: true, aspp_sum: AsppSum::AllFour };
    SegModel::new(config, Device::Cpu).unwrap()
}

/// A network whose main logits are `logits` at every pixel: the main classifier's weights
/// zeroed, its first branch's bias set to `logits`, the other three branches' to zero (the
/// ASPP sums its four branches).
fn constant(logits: &[f32]) -> SegModel {
    let model = tiny(logits.len() as i64, 1);
    let vars = model.vs.variables();
    tch::no_grad(|| {
        for (name, t) in &vars {
            if let Some(rest) = name.strip_prefix("layer6.conv2d_list.") {
                let mut t = t.shallow_clone();
                if rest == "0.bias" {
                    t.copy_(&Tensor::from_slice(logits));
                } else {
                    let _ = t.zero_();
                }
            }
        }
    });
    model
}

/// `len` copies of one image and label, for tests that need exact control of the labels.
struct Fixed {
    width: u32,
    height: u32,
    label: Vec<u8>,
    len: usize,
}

impl Dataset for Fixed {
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, index: usize) -> anyhow::Result<Sample> {
        let (w, h) = (i64::from(self.width), i64::from(self.height));
        let image = Tensor::zeros([3, h, w], (Kind::Float, Device::Cpu));
        let label = Tensor::from_slice(&self.label).view([h, w]).to_kind(Kind::Int64);
        Ok(Sample { image, label: Some(label), name: format!("fixed-{index}") })
    }
}

/// The built-in synthetic target domain, with labels, as the demo evaluates it.
fn synthetic(len: usize) -> Arc<dyn Dataset> {
    let mut spec = Config::defaults().dataset_spec(false);
    spec.kind = "synthetic".into();
    spec.labels = true;
    spec.size = (64, 32);
    spec.synthetic_len = len;
    spec.num_classes = 19;
    dataset::open(&spec).unwrap()
}

fn cityscapes_mini() -> Option<PathBuf> {
    let root = common::shared_data()?.join("cityscapes-mini");
    root.join("gtFine/val").is_dir().then_some(root)
}

fn names_19() -> Vec<String> {
    eval::class_names(19)
}

// ---------------------------------------------------------------------------------------
// Agreement with cityscapesScripts (fixtures: tools/fixtures/make_eval_fixtures.py)

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(common::fixture("eval/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Cityscapes label id of each train id (SPEC §5.3).
const LABEL_OF: [usize; 19] = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33];

fn score_fixture(pred: &str, label_ids: bool) -> anyhow::Result<Scores> {
    let options = ScoreOptions {
        dataset: "cityscapes".into(),
        split: "val".into(),
        num_classes: 19,
        subset: Vec::new(),
        label_ids,
        gt_train_ids: false,
        threads: 0,
    };
    Ok(score(&common::fixture(&format!("eval/{pred}")), &common::fixture("eval"), &options, &|| ())?.scores)
}

fn assert_agrees_with_cityscapes_scripts(ours: &Scores, theirs: &serde_json::Value) {
    for (name, v) in &ours.iou {
        let t = &theirs["classScores"][name];
        match v {
            None => assert!(t.is_null(), "{name}: ours null, cityscapesScripts {t}"),
            Some(v) => {
                let t = t.as_f64().unwrap_or_else(|| panic!("{name}: cityscapesScripts has {t}"));
                assert!((v - 100.0 * t).abs() < 1e-9, "{name}: ours {v}, cityscapesScripts {}", 100.0 * t);
            }
        }
    }
    let avg = 100.0 * theirs["averageScoreClasses"].as_f64().unwrap();
    assert!((ours.miou - avg).abs() < 1e-9, "mIoU: ours {}, cityscapesScripts {avg}", ours.miou);
    // The matrices themselves: ours over train ids is theirs over the 19 label ids; what
    // theirs has in the columns of ignored label ids is our `unassigned`.
    let matrix: Vec<Vec<u64>> = serde_json::from_value(theirs["confMatrix"].clone()).unwrap();
    for (i, row) in ours.confusion.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            assert_eq!(v, matrix[LABEL_OF[i]][LABEL_OF[j]], "confusion [{i}][{j}]");
        }
        let elsewhere: u64 = (0..matrix.len()).filter(|c| !LABEL_OF.contains(c)).map(|c| matrix[LABEL_OF[i]][c]).sum();
        let ours_elsewhere = ours.unassigned.as_ref().map_or(0, |u| u[i]);
        assert_eq!(ours_elsewhere, elsewhere, "unassigned of class {i}");
    }
}

#[test]
fn train_id_predictions_score_as_cityscapes_scripts_scores_them() {
    let ours = score_fixture("pred_trainids", false).unwrap();
    assert_agrees_with_cityscapes_scripts(&ours, &expected()["pred_trainids"]);
    // The fixture predicts `bus` but never has it (IoU 0) and has no `train` at all (null).
    assert_eq!(ours.iou["bus"], Some(0.0));
    assert_eq!(ours.iou["train"], None);
    assert_eq!(ours.classes, names_19());
    assert!(ours.unassigned.is_none());
}

#[test]
fn label_id_predictions_with_ignored_ids_score_as_cityscapes_scripts_scores_them() {
    let ours = score_fixture("pred_labelids", true).unwrap();
    assert!(ours.unassigned.as_ref().is_some_and(|u| u.iter().sum::<u64>() > 0));
    assert_agrees_with_cityscapes_scripts(&ours, &expected()["pred_labelids"]);
}

#[test]
fn label_ids_read_as_train_ids_are_an_error_that_says_so() {
    let err = format!("{:#}", score_fixture("pred_labelids", false).unwrap_err());
    assert!(err.contains("--label-ids") && err.contains("_pred.png"), "{err}");
}

/// A copy of the train-id prediction fixtures to modify.
fn copy_predictions() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixture("eval/pred_trainids");
    let dst = dir.path().join("preds");
    for city in std::fs::read_dir(&src).unwrap() {
        let city = city.unwrap().path();
        let out = dst.join(city.file_name().unwrap());
        std::fs::create_dir_all(&out).unwrap();
        for f in std::fs::read_dir(&city).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, out.join(f.file_name().unwrap())).unwrap();
        }
    }
    (dir, dst)
}

fn score_dir(pred: &Path) -> anyhow::Result<Scores> {
    let options = ScoreOptions {
        dataset: "cityscapes".into(),
        split: "val".into(),
        num_classes: 19,
        subset: Vec::new(),
        label_ids: false,
        gt_train_ids: false,
        threads: 0,
    };
    Ok(score(pred, &common::fixture("eval"), &options, &|| ())?.scores)
}

#[test]
fn predict_pictures_beside_the_predictions_are_passed_over() {
    let (_dir, preds) = copy_predictions();
    // What `advent predict` writes beside each `_trainids.png`: RGB pictures.
    for key in ["frankfurt_000000_000294", "lindau_000012_000019"] {
        let city = key.split('_').next().unwrap();
        let rgb = image::RgbImage::new(64, 32);
        rgb.save(preds.join(city).join(format!("{key}_leftImg8bit_color.png"))).unwrap();
        rgb.save(preds.join(city).join(format!("{key}_leftImg8bit_entropy.png"))).unwrap();
    }
    std::fs::write(preds.join("notes.txt"), "not a prediction").unwrap();
    assert_eq!(score_dir(&preds).unwrap(), score_fixture("pred_trainids", false).unwrap());
}

#[test]
fn missing_frames_are_one_error_naming_them() {
    let (_dir, preds) = copy_predictions();
    std::fs::remove_file(preds.join("lindau/lindau_000012_000019_leftImg8bit_trainids.png")).unwrap();
    std::fs::remove_file(preds.join("munster/munster_000003_000019_leftImg8bit_trainids.png")).unwrap();
    let err = format!("{:#}", score_dir(&preds).unwrap_err());
    assert!(err.contains("2 of 6 ground-truth frames have no prediction"), "{err}");
    assert!(err.contains("lindau_000012_000019, munster_000003_000019"), "{err}");
    // Only a picture left for a frame: the message says pictures are not predictions.
    let rgb = image::RgbImage::new(64, 32);
    rgb.save(preds.join("lindau/lindau_000012_000019_leftImg8bit_color.png")).unwrap();
    let err = format!("{:#}", score_dir(&preds).unwrap_err());
    assert!(err.contains("_color.png and _entropy.png pictures are not predictions"), "{err}");
}

#[test]
fn several_predictions_for_a_frame_are_an_error() {
    let (_dir, preds) = copy_predictions();
    let a = preds.join("frankfurt/frankfurt_000000_000294_leftImg8bit_trainids.png");
    std::fs::copy(&a, preds.join("frankfurt_000000_000294_other.png")).unwrap();
    let err = format!("{:#}", score_dir(&preds).unwrap_err());
    assert!(err.contains("several predictions for frame frankfurt_000000_000294"), "{err}");
}

#[test]
fn a_prediction_of_the_wrong_size_or_format_names_the_file() {
    let (_dir, preds) = copy_predictions();
    let f = preds.join("munster/munster_000070_000019_leftImg8bit_trainids.png");
    image::GrayImage::new(32, 32).save(&f).unwrap();
    let err = format!("{:#}", score_dir(&preds).unwrap_err());
    assert!(err.contains("munster_000070_000019_leftImg8bit_trainids.png is 32x32"), "{err}");
    image::RgbImage::new(64, 32).save(&f).unwrap();
    let err = format!("{:#}", score_dir(&preds).unwrap_err());
    assert!(err.contains("munster_000070_000019_leftImg8bit_trainids.png") && err.contains("RGB"), "{err}");
}

fn write_gray(path: &Path, w: u32, values: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_raw(w, values.len() as u32 / w, values.to_vec()).unwrap().save(path).unwrap();
}

/// `advent score --dataset folder`: labels of one's own, matched by name and subfolder to
/// `advent predict --recursive`'s `_trainids.png` or a PNG of the same name. Scores by hand:
/// day1/a: road (id 7 → 0) at pixels 0, 1, 4, car (26 → 13) at 2, 3, 6, 7, pixel 5 ignored
/// (id 0); predicted road at 0, 4, 5, 6, car at 1, 2, 3, 7. Road: TP 2, FN 1 (pixel 1),
/// FP 1 (pixel 6): IoU 1/2; car: TP 3, FN 1, FP 1: IoU 3/5. b: sidewalk (8 → 1) both pixels,
/// predicted: IoU 1. mIoU = (1/2 + 1 + 3/5) / 3 = 70 %.
#[test]
fn labels_of_ones_own_are_scored_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (gt, pred) = (dir.path().join("labels"), dir.path().join("preds"));
    write_gray(&gt.join("day1/a.png"), 4, &[7, 7, 26, 26, 7, 0, 26, 26]);
    write_gray(&gt.join("b.png"), 2, &[8, 8]);
    write_gray(&pred.join("day1/a_trainids.png"), 4, &[0, 13, 13, 13, 0, 0, 0, 13]);
    write_gray(&pred.join("b.png"), 2, &[1, 1]);
    // What `advent predict` writes beside its train ids, and an image elsewhere: not read.
    image::RgbImage::new(4, 2).save(pred.join("day1/a_color.png")).unwrap();
    write_gray(&pred.join("a_trainids.png"), 1, &[200]);
    let options = ScoreOptions { dataset: "folder".into(), ..ScoreOptions::default() };
    let report = score(&pred, &gt, &options, &|| ()).unwrap();
    assert_eq!(report.frames, 2);
    let s = &report.scores;
    assert!((s.miou - 70.0).abs() < 1e-9, "{}", s.miou);
    assert!((s.iou["road"].unwrap() - 50.0).abs() < 1e-9 && (s.iou["car"].unwrap() - 60.0).abs() < 1e-9);
    assert_eq!(s.iou["building"], None);

    // The same labels as train ids (255 ignored) give the same scores.
    let gt_train = dir.path().join("labels_train");
    write_gray(&gt_train.join("day1/a.png"), 4, &[0, 0, 13, 13, 0, 255, 13, 13]);
    write_gray(&gt_train.join("b.png"), 2, &[1, 1]);
    let train_ids = ScoreOptions { gt_train_ids: true, ..options.clone() };
    assert_eq!(&score(&pred, &gt_train, &train_ids, &|| ()).unwrap().scores, s);
    // A value that is no train id nor 255 names the file; so does a label id above 33.
    write_gray(&gt_train.join("b.png"), 2, &[1, 40]);
    let e = format!("{:#}", score(&pred, &gt_train, &train_ids, &|| ()).unwrap_err());
    assert!(e.contains("labels_train/b.png") && e.contains("40 (1 px)"), "{e}");
    write_gray(&gt.join("b.png"), 2, &[8, 40]);
    let e = format!("{:#}", score(&pred, &gt, &options, &|| ()).unwrap_err());
    assert!(e.contains("labels/b.png") && e.contains("40 (1 px)"), "{e}");
    write_gray(&gt.join("b.png"), 2, &[8, 8]);

    // Labels named .PNG count; a folder inside the other is refused (a label would be its
    // own prediction).
    std::fs::rename(gt.join("b.png"), gt.join("b.PNG")).unwrap();
    std::fs::rename(pred.join("b.png"), pred.join("b.PNG")).unwrap();
    assert_eq!(&score(&pred, &gt, &options, &|| ()).unwrap().scores, s);
    std::fs::rename(gt.join("b.PNG"), gt.join("b.png")).unwrap();
    std::fs::rename(pred.join("b.PNG"), pred.join("b.png")).unwrap();
    for (p, g) in [(&gt, &gt), (&pred, &dir.path().to_path_buf())] {
        let e = format!("{:#}", score(p, g, &options, &|| ()).unwrap_err());
        assert!(e.contains("must be apart"), "{e}");
    }

    // Both candidates present, or none: errors naming them.
    write_gray(&pred.join("b_trainids.png"), 2, &[1, 1]);
    let e = format!("{:#}", score(&pred, &gt, &options, &|| ()).unwrap_err());
    assert!(e.contains("two predictions for") && e.contains("b_trainids.png"), "{e}");
    std::fs::remove_file(pred.join("b_trainids.png")).unwrap();
    std::fs::remove_file(pred.join("day1/a_trainids.png")).unwrap();
    let e = format!("{:#}", score(&pred, &gt, &options, &|| ()).unwrap_err());
    assert!(e.contains("1 of 2 ground-truth frames have no prediction") && e.contains("day1/a"), "{e}");
}

#[test]
fn unknown_datasets_are_clear_errors() {
    let options = ScoreOptions {
        dataset: "mapillary".into(),
        split: "val".into(),
        num_classes: 19,
        subset: Vec::new(),
        label_ids: false,
        gt_train_ids: false,
        threads: 0,
    };
    let err = score(&common::fixture("eval/pred_trainids"), &common::fixture("eval"), &options, &|| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown dataset `mapillary`") && err.contains("cityscapes, foggy-cityscapes, folder"),
        "{err}"
    );
    let set = EvalSet {
        kind: "gta6".into(),
        root: "nowhere".into(),
        split: "val".into(),
        list: None,
        num_classes: 19,
        input_size: (64, 32),
        foggy_beta: 0.02,
    };
    let err = open_dataset(&set).err().unwrap().to_string();
    assert!(err.contains("unknown evaluation dataset `gta6`"), "{err}");
}

#[test]
fn sixteen_and_thirteen_classes_map_the_ground_truth_to_the_synthia_protocol() {
    // The 19-class result read as 16 classes: terrain, truck and train become ignored in the
    // ground truth, so the prediction fixtures (19-class train ids) need label ids here.
    let options = |subset: Vec<usize>| ScoreOptions {
        dataset: "cityscapes".into(),
        split: "val".into(),
        num_classes: 16,
        subset,
        label_ids: true,
        gt_train_ids: false,
        threads: 1,
    };
    let dir = common::fixture("eval/pred_labelids");
    let root = common::fixture("eval");
    let s16 = score(&dir, &root, &options(Vec::new()), &|| ()).unwrap().scores;
    assert_eq!(s16.iou.len(), 16);
    assert!(!s16.iou.contains_key("terrain") && !s16.iou.contains_key("truck"));
    let star = advent::classes::eval_classes(16, advent::classes::EvalSubset::MiouStar13).unwrap();
    let s13 = score(&dir, &root, &options(star), &|| ()).unwrap().scores;
    assert_eq!(s13.classes.len(), 13);
    assert_eq!(s13.score_name(), "mIoU*");
    // mIoU* is the mean of the 13 classes' IoU of the same matrix.
    let mean: f64 = s13.classes.iter().map(|c| s16.iou[c].unwrap()).sum::<f64>() / 13.0;
    assert!((s13.miou - mean).abs() < 1e-9);
    assert_eq!(s13.confusion, s16.confusion);
}

// ---------------------------------------------------------------------------------------
// Ensembles

#[test]
fn ensemble_weights_decide_the_argmax() {
    // Everywhere, model A's logits are (2, 1, 0) and model B's (0, 3, 0).
    //   weights 0.8 / 0.2: (1.6, 1.4, 0) → class 0
    //   weights 0.5 / 0.5: (1.0, 2.0, 0) → class 1
    //   A alone: class 0; B alone: class 1.
    let a = constant(&[2.0, 1.0, 0.0]);
    let b = constant(&[0.0, 3.0, 0.0]);
    // 8x8 images whose left half is class 0 and right half class 1, two of them.
    let label: Vec<u8> = (0..64).map(|i| if i % 8 < 4 { 0 } else { 1 }).collect();
    let data: Arc<dyn Dataset> = Arc::new(Fixed { width: 8, height: 8, label, len: 2 });
    let run = |models: &[(&SegModel, f64)]| evaluate(models, data.clone(), &EvalOptions::default()).unwrap();
    // Predicting class 0 everywhere: 64 pixels right, 64 class-1 pixels wrong.
    let all_zero = vec![vec![64, 0, 0], vec![64, 0, 0], vec![0, 0, 0]];
    let all_one = vec![vec![0, 64, 0], vec![0, 64, 0], vec![0, 0, 0]];
    assert_eq!(run(&[(&a, 0.8), (&b, 0.2)]).confusion, all_zero);
    assert_eq!(run(&[(&a, 0.5), (&b, 0.5)]).confusion, all_one);
    assert_eq!(run(&[(&a, 1.0)]).confusion, all_zero);
    assert_eq!(run(&[(&b, 1.0)]).confusion, all_one);
    // IoU_0 = 64 / (64 + 128 − 64) = 1/2, IoU_1 = 0, class 2 never seen: mIoU = 25 %.
    let s = run(&[(&a, 1.0)]);
    assert_eq!(s.miou, 25.0);
    assert_eq!(s.iou["class 2"], None);
}

#[test]
fn ensembles_need_matching_classes() {
    let a = tiny(3, 1);
    let b = tiny(4, 2);
    let data: Arc<dyn Dataset> = Arc::new(Fixed { width: 8, height: 8, label: vec![0; 64], len: 1 });
    let err = evaluate(&[(&a, 0.5), (&b, 0.5)], data, &EvalOptions::default()).unwrap_err().to_string();
    assert!(err.contains("same classes: 3 and 4"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The whole path

#[test]
fn evaluates_the_synthetic_target_domain_as_the_demo_does() {
    let model = tiny(19, 3);
    let data = synthetic(3);
    let options = EvalOptions { input_size: Some((64, 32)), workers: 2, ..EvalOptions::default() };
    let s = evaluate(&[(&model, 1.0)], data.clone(), &options).unwrap();
    // Every synthetic pixel has a class: 3 · 64 · 32 pixels counted.
    assert_eq!(s.confusion.iter().flatten().sum::<u64>(), 3 * 64 * 32);
    assert_eq!(s.iou.len(), 19);
    // Twice the output size: labels resized with nearest neighbour, 4x the pixels.
    let options = EvalOptions { output_size: Some((128, 64)), ..options };
    let s2 = evaluate(&[(&model, 1.0)], data, &options).unwrap();
    assert_eq!(s2.confusion.iter().flatten().sum::<u64>(), 4 * 3 * 64 * 32);
    // A wrong input size is caught.
    let options = EvalOptions { input_size: Some((32, 16)), ..EvalOptions::default() };
    let err = evaluate(&[(&model, 1.0)], synthetic(1), &options).unwrap_err().to_string();
    assert!(err.contains("the image is 64x32, the input size is 32x16"), "{err}");
}

/// Valid (19-class) pixels of a Cityscapes label-id file, counted here without the crate.
fn valid_pixels(label_ids: &Path) -> u64 {
    let img = image::open(label_ids).unwrap().into_luma8();
    img.pixels().filter(|p| LABEL_OF.contains(&usize::from(p.0[0]))).count() as u64
}

#[test]
fn evaluates_a_real_cityscapes_val_frame_end_to_end() {
    let Some(root) = cityscapes_mini() else {
        eprintln!("skipped: ../shared/data/cityscapes-mini is not there");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("tiny.pth");
    weights::save(&tiny(19, 5).state_dict(), &checkpoint).unwrap();
    let (model, _) =
        SegModel::from_checkpoint(&checkpoint, &ModelOverrides::default(), Default::default(), Device::Cpu).unwrap();
    let set = EvalSet {
        kind: "cityscapes".into(),
        root: root.clone(),
        split: "val".into(),
        list: None,
        num_classes: 19,
        input_size: (128, 64),
        foggy_beta: 0.02,
    };
    let data = open_dataset(&set).unwrap();
    let preds = dir.path().join("preds");
    let options = EvalOptions {
        input_size: Some((128, 64)),
        output_size: Some((256, 128)),
        save_predictions: Some(preds.clone()),
        ..EvalOptions::default()
    };
    let s = evaluate(&[(&model, 1.0)], data.clone(), &options).unwrap();
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read({
            let p = dir.path().join("scores.json");
            s.write_json(&p).unwrap();
            p
        })
        .unwrap(),
    )
    .unwrap();
    assert!(json["miou"].is_number());
    let names: Vec<&str> = json["iou"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(names, names_19());
    assert_eq!(json["classes"].as_array().unwrap().len(), 19);
    let confusion = json["confusion"].as_array().unwrap();
    assert_eq!(confusion.len(), 19);
    assert!(confusion.iter().all(|r| r.as_array().unwrap().len() == 19));
    let gt = root.join("gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png");
    assert_eq!(s.confusion.iter().flatten().sum::<u64>(), valid_pixels(&gt));

    // The saved predictions are `advent predict`'s output for the same image and sizes ...
    let saved = preds.join("frankfurt_000000_000294_leftImg8bit_trainids.png");
    let saved = image::open(&saved).unwrap().into_luma8().into_raw();
    let img = advent::image::read_rgb(&root.join("leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"))
        .unwrap();
    let p = advent::predict::predict(
        &model,
        &img,
        &advent::predict::PredictOptions {
            input_size: Some((128, 64)),
            output_size: Some((256, 128)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(saved, p.train_ids);
    // ... and `advent score` on them gives the same result.
    let options = ScoreOptions {
        dataset: "cityscapes".into(),
        split: "val".into(),
        num_classes: 19,
        subset: Vec::new(),
        label_ids: false,
        gt_train_ids: false,
        threads: 0,
    };
    let scored = score(&preds, &root, &options, &|| ()).unwrap();
    assert_eq!(scored.frames, 1);
    assert_eq!(scored.scores, s);

    // The paper's output size (2048x1024): labels resized with nearest neighbour, 64x the
    // pixels of the 256x128 frame.
    let options = EvalOptions { output_size: Some((2048, 1024)), ..EvalOptions::default() };
    let big = evaluate(&[(&model, 1.0)], data, &options).unwrap();
    assert_eq!(big.confusion.iter().flatten().sum::<u64>(), 64 * valid_pixels(&gt));
}

// ---------------------------------------------------------------------------------------
// Sweeps

/// Writes `<run>/checkpoints/iter_NNNNNN/` as training does: complete before it appears.
fn write_checkpoint(run: &Path, iteration: u64, seed: i64) {
    let tmp = run.join(format!("checkpoints/.tmp-{iteration}"));
    std::fs::create_dir_all(&tmp).unwrap();
    weights::save(&tiny(19, seed).state_dict(), &tmp.join("model.pth")).unwrap();
    std::fs::write(tmp.join("state.json"), "{}").unwrap();
    let dir = run.join(format!("checkpoints/iter_{iteration:06}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, dir).unwrap();
}

fn fake_run(early_stop: u64, iterations: &[u64]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), format!("name = \"fake\"\n\n[train]\nearly_stop = {early_stop}\n"))
        .unwrap();
    for &i in iterations {
        write_checkpoint(dir.path(), i, i as i64);
    }
    dir
}

fn sweep_options(wait: bool) -> SweepOptions {
    SweepOptions {
        plan: SweepPlan {
            key: "synthetic-test".into(),
            wait,
            poll: Duration::from_millis(50),
            patience: Some(Duration::from_secs(60)),
        },
        eval: EvalOptions::default(),
        device: Device::Cpu,
        overrides: ModelOverrides::default(),
    }
}

fn run_sweep(run: &Path, options: &SweepOptions) -> anyhow::Result<(SweepResult, Vec<u64>)> {
    let mut reported = Vec::new();
    let r = sweep(run, synthetic(2), options, &mut |e, best| {
        assert!(best.scores.miou >= e.scores.miou || e.scores.miou.is_nan());
        reported.push(e.iteration);
    })?;
    Ok((r, reported))
}

#[test]
fn a_second_sweep_evaluates_nothing_again_and_a_new_checkpoint_only() {
    let run = fake_run(6, &[2, 4]);
    let options = sweep_options(false);
    let (first, reported) = run_sweep(run.path(), &options).unwrap();
    assert_eq!(reported, [2, 4]);
    assert_eq!(first.evaluated(), 2);
    assert!(!first.complete());
    assert!(run.path().join("eval/synthetic-test/iter_000004.json").is_file());

    let (second, _) = run_sweep(run.path(), &options).unwrap();
    assert_eq!(second.evaluated(), 0);
    let miou = |r: &SweepResult| r.entries.iter().map(|e| e.scores.miou).collect::<Vec<_>>();
    assert_eq!(miou(&second), miou(&first));

    write_checkpoint(run.path(), 6, 6);
    let (third, _) = run_sweep(run.path(), &options).unwrap();
    assert_eq!(third.evaluated(), 1);
    assert!(third.entries.iter().all(|e| e.cached == (e.iteration != 6)));
    assert!(third.complete());
    assert_eq!(third.last().unwrap().iteration, 6);
    let best = third.best().unwrap();
    assert!(third.entries.iter().all(|e| e.scores.miou <= best.scores.miou));

    // The CSV: a header and one row per checkpoint, in iteration order.
    let csv = std::fs::read_to_string(&third.csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("iteration,miou,road,sidewalk,building"));
    assert!(lines[1].starts_with("2,") && lines[3].starts_with("6,"));
    assert_eq!(lines[1].split(',').count(), 21);

    // A checkpoint re-created with other weights is evaluated again; one pruned by training
    // keeps its cached result.
    write_checkpoint(run.path(), 4, 44);
    std::fs::remove_dir_all(run.path().join("checkpoints/iter_000002")).unwrap();
    let (fourth, _) = run_sweep(run.path(), &options).unwrap();
    assert_eq!(
        fourth.entries.iter().map(|e| (e.iteration, e.cached)).collect::<Vec<_>>(),
        [(2, true), (4, false), (6, true)]
    );
}

#[test]
fn waiting_follows_a_run_until_its_last_iteration() {
    let run = fake_run(6, &[2]);
    let path = run.path().to_path_buf();
    let trainer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        write_checkpoint(&path, 4, 4);
        std::thread::sleep(Duration::from_millis(400));
        write_checkpoint(&path, 6, 6);
    });
    let (result, reported) = run_sweep(run.path(), &sweep_options(true)).unwrap();
    trainer.join().unwrap();
    assert_eq!(reported, [2, 4, 6]);
    assert!(result.complete());

    // Nothing more coming: waiting gives up after the patience.
    let stalled = fake_run(8, &[2]);
    let mut options = sweep_options(true);
    options.plan.patience = Some(Duration::from_millis(200));
    let err = run_sweep(stalled.path(), &options).unwrap_err().to_string();
    assert!(err.contains("no new checkpoint") && err.contains("iteration 8"), "{err}");
}

#[test]
fn a_checkpoint_that_does_not_load_is_named() {
    let run = fake_run(4, &[2]);
    let bad = run.path().join("checkpoints/iter_000004");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("model.pth"), b"not a checkpoint").unwrap();
    std::fs::write(bad.join("state.json"), "{}").unwrap();
    let err = format!("{:#}", run_sweep(run.path(), &sweep_options(false)).unwrap_err());
    assert!(err.contains("iter_000004/model.pth"), "{err}");
    // The good one was evaluated and cached before.
    assert!(run.path().join("eval/synthetic-test/iter_000002.json").is_file());
}

#[test]
fn a_failed_sweep_leaves_the_rows_after_the_failure_in_scores_csv() {
    let run = fake_run(8, &[2, 4, 6, 8]);
    let (first, _) = run_sweep(run.path(), &sweep_options(false)).unwrap();
    let before = std::fs::read_to_string(&first.csv).unwrap();
    assert_eq!(before.lines().count(), 5);
    // Iteration 4's network rewritten with bad bytes: the next sweep evaluates it again, and fails.
    std::fs::write(run.path().join("checkpoints/iter_000004/model.pth"), b"not a checkpoint").unwrap();
    let err = format!("{:#}", run_sweep(run.path(), &sweep_options(false)).unwrap_err());
    assert!(err.contains("iter_000004/model.pth"), "{err}");
    assert_eq!(std::fs::read_to_string(&first.csv).unwrap(), before, "scores.csv lost rows");
}

#[test]
fn an_empty_run_is_an_error() {
    let run = fake_run(4, &[]);
    let err = run_sweep(run.path(), &sweep_options(false)).unwrap_err().to_string();
    assert!(err.contains("no checkpoints in"), "{err}");
    let err = run_sweep(&run.path().join("nope"), &sweep_options(false)).unwrap_err().to_string();
    assert!(err.contains("no run folder"), "{err}");
}

/// Channels-last weights and inputs give the same predictions (here on the CPU, through
/// oneDNN's NHWC convolutions: the same confusion matrix up to a few pixels that sit on a
/// near-tie), and a model whose layout disagrees with the option is refused.
#[test]
fn channels_last_evaluation_agrees() {
    let data = synthetic(6);
    let plain = tiny(19, 7);
    let mut nhwc = tiny(19, 7);
    // The same weights (tests in parallel share libtorch's generator, so the seed alone does
    // not make them equal).
    let source = plain.vs.variables();
    tch::no_grad(|| {
        for (k, mut v) in nhwc.vs.variables() {
            v.copy_(&source[&k]);
        }
    });
    nhwc.use_channels_last().unwrap();
    let options = EvalOptions { workers: 0, ..Default::default() };
    let a = eval::confusion_matrix(&[(&plain, 1.0)], data.clone(), &options).unwrap();
    let b =
        eval::confusion_matrix(&[(&nhwc, 1.0)], data.clone(), &EvalOptions { channels_last: true, ..options.clone() })
            .unwrap();
    let (a, b): (Vec<u64>, Vec<u64>) = (a.rows().concat(), b.rows().concat());
    let total: u64 = a.iter().sum();
    let moved: u64 = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).sum::<u64>() / 2;
    assert!(moved * 10_000 <= total, "{moved} of {total} pixels changed class");
    let err = eval::confusion_matrix(&[(&plain, 1.0)], data, &EvalOptions { channels_last: true, ..options })
        .unwrap_err()
        .to_string();
    assert!(err.contains("not channels-last"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Batches and the scoring threads

/// Images of two sizes in an irregular order, with labels at the image's size (class
/// `(x + 2y + index) % 19`, one pixel in seven ignored); `fail_at` fails to load, `no_label_at`
/// comes without a label.
struct Mixed {
    len: usize,
    fail_at: Option<usize>,
    no_label_at: Option<usize>,
    /// Every image 64x32.
    uniform: bool,
}

impl Mixed {
    fn new(len: usize, fail_at: Option<usize>, no_label_at: Option<usize>) -> Self {
        Mixed { len, fail_at, no_label_at, uniform: false }
    }

    fn size(&self, index: usize) -> (i64, i64) {
        if index % 5 == 3 && !self.uniform {
            (32, 16)
        } else {
            (64, 32)
        }
    }
}

impl Dataset for Mixed {
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, index: usize) -> anyhow::Result<Sample> {
        anyhow::ensure!(Some(index) != self.fail_at, "item {index} is broken");
        let (w, h) = self.size(index);
        tch::manual_seed(index as i64);
        let image = Tensor::randn([3, h, w], (Kind::Float, Device::Cpu)) * 40.0;
        let label: Vec<u8> = (0..h * w)
            .map(|p| if p % 7 == 3 { 255 } else { ((p % w + 2 * (p / w) + index as i64) % 19) as u8 })
            .collect();
        let label =
            (Some(index) != self.no_label_at).then(|| Tensor::from_slice(&label).view([h, w]).to_kind(Kind::Int64));
        Ok(Sample { image, label, name: format!("mixed-{index}") })
    }
}

/// Pixels on which two folders of `_trainids.png` predictions differ, and the pixels in all.
fn differing_pixels(a: &Path, b: &Path) -> (u64, u64) {
    let mut names: Vec<_> = std::fs::read_dir(a).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    let (mut differ, mut total) = (0, 0);
    for name in names.iter().filter(|n| n.to_string_lossy().ends_with("_trainids.png")) {
        let x = image::open(a.join(name)).unwrap().into_luma8().into_raw();
        let y = image::open(b.join(name)).unwrap().into_luma8().into_raw();
        assert_eq!(x.len(), y.len(), "{name:?}");
        differ += x.iter().zip(&y).filter(|(p, q)| p != q).count() as u64;
        total += x.len() as u64;
    }
    (differ, total)
}

/// `--batch`: consecutive images of one size go through the network together. The
/// predictions are those of one image at a time, on every image, up to pixels on a near-tie
/// that the batched convolutions round differently (tolerance: 1 in 10,000); the set mixes
/// two image sizes in an irregular order (a batch ends where the size changes) and does not
/// divide into full batches.
#[test]
fn batches_give_the_predictions_of_one_image_at_a_time() {
    let model = tiny(19, 11);
    let mixed = Mixed::new(10, None, None);
    let sizes: Vec<(i64, i64)> = (0..10).map(|i| mixed.size(i)).collect();
    let data: Arc<dyn Dataset> = Arc::new(mixed);
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for batch in [1, 4] {
        let preds = dir.path().join(format!("batch{batch}"));
        let options =
            EvalOptions { save_predictions: Some(preds.clone()), workers: 2, batch, ..EvalOptions::default() };
        let cm = eval::confusion_matrix(&[(&model, 1.0)], data.clone(), &options).unwrap();
        results.push((cm.rows().concat(), preds));
    }
    let ((one, one_dir), (four, four_dir)) = (&results[0], &results[1]);
    // Every labelled pixel is counted once: 6 of 7 pixels of each image's label.
    let labelled: u64 = sizes.iter().map(|&(w, h)| (0..h * w).filter(|p| p % 7 != 3).count() as u64).sum();
    assert_eq!(one.iter().sum::<u64>(), labelled);
    assert_eq!(four.iter().sum::<u64>(), labelled);
    let files = |d: &Path| std::fs::read_dir(d).unwrap().count();
    assert_eq!(files(one_dir), 20, "a _trainids.png and a _color.png per image");
    assert_eq!(files(four_dir), 20);
    let (differ, total) = differing_pixels(one_dir, four_dir);
    assert_eq!(total, sizes.iter().map(|&(w, h)| (w * h) as u64).sum::<u64>());
    assert!(differ * 10_000 <= total, "{differ} of {total} predicted pixels differ");
    let moved: u64 = one.iter().zip(four).map(|(a, b)| a.abs_diff(*b)).sum::<u64>() / 2;
    assert!(moved * 10_000 <= labelled, "{moved} of {labelled} pixels changed class");
}

/// With batches and scoring threads, the error reported is the first failing image's in
/// the set's order, as one image at a time reports it, and the predictions folder keeps its
/// earlier files.
#[test]
fn batched_evaluation_reports_the_first_failing_image() {
    let model = tiny(19, 12);
    let dir = tempfile::tempdir().unwrap();
    let preds = dir.path().join("preds");
    std::fs::create_dir_all(&preds).unwrap();
    std::fs::write(preds.join("mixed-0_trainids.png"), b"earlier").unwrap();
    for batch in [1, 3] {
        let options = EvalOptions { save_predictions: Some(preds.clone()), batch, ..EvalOptions::default() };
        for (fail_at, no_label_at, expected) in [
            (Some(7), Some(4), "mixed-4: the dataset gives no label"),
            (Some(4), Some(7), "loading item 4"),
            (Some(0), None, "loading item 0"),
        ] {
            let data: Arc<dyn Dataset> = Arc::new(Mixed::new(9, fail_at, no_label_at));
            let err = eval::confusion_matrix(&[(&model, 1.0)], data, &options).unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains(expected), "batch {batch}: {err}");
            if fail_at == Some(4) {
                assert!(err.contains("item 4 is broken"), "{err}");
            }
        }
    }
    let left: Vec<_> = std::fs::read_dir(&preds).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["mixed-0_trainids.png"]);
    assert_eq!(std::fs::read(preds.join("mixed-0_trainids.png")).unwrap(), b"earlier");

    // A scoring thread's failure (image 2's prediction cannot be written: a folder holds
    // its name in the staging folder) comes before the loader's at image 6.
    let staging = preds.join(format!(".partial-{}", std::process::id()));
    for batch in [1, 3] {
        std::fs::create_dir_all(staging.join("mixed-2_trainids.png")).unwrap();
        let options = EvalOptions { save_predictions: Some(preds.clone()), batch, ..EvalOptions::default() };
        let data: Arc<dyn Dataset> = Arc::new(Mixed::new(9, Some(6), None));
        let err = format!("{:#}", eval::confusion_matrix(&[(&model, 1.0)], data, &options).unwrap_err());
        assert!(err.contains("mixed-2_trainids.png") && !err.contains("item 6"), "batch {batch}: {err}");
        assert!(!staging.exists(), "the staging folder is removed");
    }
}

/// A scoring thread that fails while the network is ahead of it (batches of 8 queued on the
/// tiny network, image 0's prediction file unwritable) ends the evaluation with that error:
/// the network's sends do not wait for scoring threads that have stopped.
#[test]
fn a_scoring_failure_ahead_of_the_network_ends_the_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let preds = dir.path().join("preds");
    let staging = preds.join(format!(".partial-{}", std::process::id()));
    std::fs::create_dir_all(staging.join("mixed-0_trainids.png")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let model = tiny(19, 13);
        let data: Arc<dyn Dataset> = Arc::new(Mixed { uniform: true, ..Mixed::new(64, None, None) });
        let options = EvalOptions { save_predictions: Some(preds), batch: 8, workers: 2, ..EvalOptions::default() };
        let _ = tx.send(eval::confusion_matrix(&[(&model, 1.0)], data, &options).map(|_| ()));
    });
    let result = rx.recv_timeout(Duration::from_secs(120)).expect("the evaluation did not end within 2 minutes");
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("mixed-0_trainids.png"), "{err}");
    assert!(!staging.exists(), "the staging folder is removed");
}
