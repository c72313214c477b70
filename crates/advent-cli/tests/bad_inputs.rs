//! The bad-input corpus: every command of the `advent` binary given broken files (corrupt,
//! truncated and empty images, text named `.png`, labels of another size or bit depth or with
//! ids outside the dataset's table, missing labels, empty folders, list files naming missing
//! files), broken configs and `--set` overrides, and broken checkpoints (truncated, of
//! another network, of the wrong shapes, with NaN values). Each must fail with exit status 1
//! and one `error:` line naming the offending file or key, never panic, and leave every
//! existing output as it was.
//!
//! The whole corpus goes through the readers' main users (`predict` for pictures and
//! checkpoints, `data check` and `score` for label files); the other commands get a few of
//! each kind, which reach the same readers.

mod common;

use common::{
    advent, assert_clean_failure, assert_success, s, snapshot, stderr, stdout, tiny_config, tiny_config_with,
};

use advent::model::{Arch, AsppSum, Discriminator, ModelConfig, SegModel};
use advent::weights::{self, StateDict};
use image::{DynamicImage, GrayImage, ImageBuffer, ImageFormat, Luma, RgbImage};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

const W: u32 = 64;
const H: u32 = 32;

// ---------------------------------------------------------------------------------------
// Running cases

/// One bad input given to a command: what it is, the arguments, the texts the single error
/// line must contain, and what must come through unchanged.
struct Case {
    what: String,
    args: Vec<String>,
    needles: Vec<String>,
    /// Folders whose files must all be left as they were, none added.
    keep: Vec<PathBuf>,
    /// Files that must be left as they were (others may be written beside them).
    keep_files: Vec<PathBuf>,
    /// Texts required on stdout (`data check` lists its problems there).
    listed: Vec<String>,
}

fn case<A: AsRef<str>>(what: impl Into<String>, args: &[A], needle: impl Into<String>) -> Case {
    Case {
        what: what.into(),
        args: args.iter().map(|a| a.as_ref().to_string()).collect(),
        needles: vec![needle.into()],
        keep: Vec::new(),
        keep_files: Vec::new(),
        listed: Vec::new(),
    }
}

impl Case {
    /// The error line must contain this too.
    fn and(mut self, needle: impl Into<String>) -> Self {
        self.needles.push(needle.into());
        self
    }

    fn and_all(self, needles: &[String]) -> Self {
        needles.iter().fold(self, |c, n| c.and(n.as_str()))
    }

    /// Every file under `dir` must be left as it was, and none added.
    fn keep(mut self, dir: &Path) -> Self {
        self.keep.push(dir.to_path_buf());
        self
    }

    /// Every file under `dir` that exists now must be left as it was.
    fn keep_existing(mut self, dir: &Path) -> Self {
        self.keep_files.extend(snapshot(dir).into_iter().map(|(p, _)| p));
        self
    }

    /// Stdout must contain `text`.
    fn listing(mut self, text: impl Into<String>) -> Self {
        self.listed.push(text.into());
        self
    }
}

/// `base` followed by `extra`, as owned arguments.
fn args(base: &[&str], extra: &[&str]) -> Vec<String> {
    base.iter().chain(extra).map(|a| a.to_string()).collect()
}

fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// Runs every case, then fails listing each case that did not fail cleanly.
fn run_all(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        let before: Vec<_> = c.keep.iter().map(|d| snapshot(d)).collect();
        for (dir, files) in c.keep.iter().zip(&before) {
            assert!(!files.is_empty(), "{}: nothing to keep under {}", c.what, dir.display());
        }
        let kept: Vec<Vec<u8>> = c.keep_files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        let began = std::time::Instant::now();
        let o = advent(&c.args.iter().map(String::as_str).collect::<Vec<_>>());
        // Shown with --nocapture, to read the messages.
        let error = stderr(&o).lines().find(|l| l.starts_with("error: ")).unwrap_or("(none)").to_string();
        println!("{} ({:.2} s): {error}", c.what, began.elapsed().as_secs_f64());
        for needle in &c.needles {
            if let Err(e) = std::panic::catch_unwind(|| assert_clean_failure(&o, needle)) {
                failures.push(format!("{}: {}", c.what, panic_text(e)));
                break;
            }
        }
        for text in &c.listed {
            if !stdout(&o).contains(text.as_str()) {
                failures.push(format!("{}: `{text}` not listed on stdout: {}", c.what, stdout(&o)));
            }
        }
        for (file, bytes) in c.keep_files.iter().zip(kept) {
            if std::fs::read(file).ok() != Some(bytes) {
                failures.push(format!("{}: {} changed", c.what, file.display()));
            }
        }
        for (dir, files) in c.keep.iter().zip(before) {
            let after = snapshot(dir);
            if after != files {
                let changed: Vec<String> = files
                    .iter()
                    .filter(|f| !after.contains(f))
                    .chain(after.iter().filter(|f| !files.iter().any(|g| g.0 == f.0)))
                    .map(|(p, _)| p.display().to_string())
                    .collect();
                failures.push(format!("{}: files under {} changed: {}", c.what, dir.display(), changed.join(", ")));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n---\n"));
}

// ---------------------------------------------------------------------------------------
// The corpus

/// A bad file: what it is, its bytes, and a word its error must contain ("" for none).
struct Bad {
    what: &'static str,
    bytes: Vec<u8>,
    detail: &'static str,
}

fn bad(what: &'static str, bytes: Vec<u8>, detail: &'static str) -> Bad {
    Bad { what, bytes, detail }
}

/// The entries of `corpus` called `names`.
fn pick(corpus: Vec<Bad>, names: &[&str]) -> Vec<Bad> {
    let picked: Vec<Bad> = corpus.into_iter().filter(|b| names.contains(&b.what)).collect();
    assert_eq!(picked.len(), names.len(), "{names:?}");
    picked
}

fn encode(img: impl Into<DynamicImage>, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.into().write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn picture(format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_fn(W, H, |x, y| image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 3) as u8]));
    encode(img, format)
}

/// 8-bit ids, `left` on the left half and `right` on the other, `odd` in the top-left pixel.
fn ids_png(w: u32, h: u32, (left, right): (u8, u8), odd: u8) -> Vec<u8> {
    let img = GrayImage::from_fn(w, h, |x, y| {
        Luma([if (x, y) == (0, 0) {
            odd
        } else if x < w / 2 {
            left
        } else {
            right
        }])
    });
    encode(img, ImageFormat::Png)
}

/// Cityscapes label ids: road (7) and car (26).
fn label_png(w: u32, h: u32, odd: u8) -> Vec<u8> {
    ids_png(w, h, (7, 26), odd)
}

/// Train ids: road (0) and car (13).
fn prediction_png(w: u32, h: u32, odd: u8) -> Vec<u8> {
    ids_png(w, h, (0, 13), odd)
}

fn garbage(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7919) % 251) as u8 ^ 0x5a).collect()
}

/// `valid` with garbage after its first `keep` bytes (its signature).
fn corrupt(valid: &[u8], keep: usize) -> Vec<u8> {
    [&valid[..keep], &garbage(400)[..]].concat()
}

fn truncated(valid: &[u8]) -> Vec<u8> {
    valid[..valid.len() / 2].to_vec()
}

const TEXT: &[u8] = b"a text file, not a picture\n";

/// Pictures that cannot be read, by file name.
fn bad_pictures() -> Vec<Bad> {
    let (png, jpg) = (picture(ImageFormat::Png), picture(ImageFormat::Jpeg));
    vec![
        bad("corrupt.png", corrupt(&png, 8), "PNG"),
        bad("truncated.png", truncated(&png), "PNG"),
        bad("corrupt.jpg", corrupt(&jpg, 4), "JPEG"),
        bad("truncated.jpg", truncated(&jpg), "JPEG"),
        bad("cut_late.jpg", jpg[..jpg.len() * 9 / 10].to_vec(), "truncated JPEG"),
        bad("bitmap.png", [&b"BM"[..], &[0; 60]].concat(), "Bmp image"),
        bad("empty.png", Vec::new(), "empty"),
        bad("text.png", TEXT.to_vec(), "not an image"),
    ]
}

/// Id maps (labels, predictions) that cannot be read as 8-bit ids, made from a valid one.
fn bad_id_maps(valid: &[u8]) -> Vec<Bad> {
    let wide: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(W, H, |x, _| Luma([if x < W / 2 { 7 } else { 26 }]));
    vec![
        bad("corrupt", corrupt(valid, 8), ""),
        bad("truncated", truncated(valid), ""),
        bad("empty", Vec::new(), "empty"),
        bad("text", TEXT.to_vec(), "PNG"),
        bad("RGB picture", picture(ImageFormat::Png), "8-bit RGB"),
        bad("16-bit", encode(DynamicImage::ImageLuma16(wide), ImageFormat::Png), "16-bit"),
    ]
}

/// Cityscapes label-id files a dataset cannot use: the unreadable ones and ids outside the
/// table (200).
fn bad_labels() -> Vec<Bad> {
    let mut out = bad_id_maps(&label_png(W, H, 7));
    out.push(bad("unknown id 200", label_png(W, H, 200), "200"));
    out
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn tiny_model(seed: i64) -> SegModel {
    tch::manual_seed(seed);
    let config =
        ModelConfig { arch: Arch::DeepLabV2Tiny, num_classes: 19, multi_level: true, aspp_sum: AsppSum::AllFour };
    SegModel::new(config, Device::Cpu).unwrap()
}

/// `dict` with the tensor `key` replaced through `f`.
fn edited(dict: &StateDict, key: &str, f: impl Fn(&Tensor) -> Tensor) -> StateDict {
    assert!(dict.contains(key), "{key}");
    let mut out = StateDict::new();
    for (k, t) in dict.iter() {
        out.insert(k, if k == key { f(t) } else { t.copy() });
    }
    out
}

/// A checkpoint that must not load, and what its error must name.
struct BadCheckpoint {
    what: &'static str,
    file: PathBuf,
    needles: Vec<String>,
}

/// Checkpoints that cannot be loaded into the tiny network, written under `dir` beside a
/// good `tiny.pth`.
fn bad_checkpoints(dir: &Path) -> Vec<BadCheckpoint> {
    std::fs::create_dir_all(dir).unwrap();
    let good = tiny_model(3).state_dict();
    let path = |name: &str| dir.join(name);
    weights::save(&good, &path("tiny.pth")).unwrap();
    weights::save(&good, &path("tiny.safetensors")).unwrap();
    write(&path("truncated.pth"), &truncated(&std::fs::read(path("tiny.pth")).unwrap()));
    write(&path("truncated.safetensors"), &truncated(&std::fs::read(path("tiny.safetensors")).unwrap()));
    write(&path("empty.pth"), b"");
    write(&path("text.pth"), b"not a checkpoint\n");
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _discriminator = Discriminator::new(&vs.root(), 19, 64);
    weights::save(&StateDict::from_var_store(&vs), &path("d_main.pth")).unwrap();
    let nan = edited(&good, "layer3.0.conv2.weight", |t| {
        let t = t.copy();
        let _ = t.flatten(0, -1).get(5).fill_(f64::NAN);
        t
    });
    weights::save(&nan, &path("nan.pth")).unwrap();
    let inf = edited(&good, "layer6.conv2d_list.1.bias", |t| t.full_like(f64::INFINITY));
    weights::save(&inf, &path("inf.safetensors")).unwrap();
    let shape = edited(&good, "layer2.0.conv1.weight", |t| {
        let mut size = t.size();
        size[0] += 1;
        Tensor::zeros(&size, (t.kind(), Device::Cpu))
    });
    weights::save(&shape, &path("wrong_shape.pth")).unwrap();

    let entry = |what, file: &str, key: Option<&str>| BadCheckpoint {
        what,
        file: path(file),
        needles: std::iter::once(s(&path(file)).to_string()).chain(key.map(String::from)).collect(),
    };
    vec![
        entry("truncated .pth", "truncated.pth", None),
        entry("truncated .safetensors", "truncated.safetensors", None),
        entry("zero-byte", "empty.pth", None),
        entry("text", "text.pth", None),
        entry("discriminator", "d_main.pth", None),
        entry("NaN", "nan.pth", Some("layer3.0.conv2.weight")),
        entry("infinite", "inf.safetensors", Some("layer6.conv2d_list.1.bias")),
        entry("wrong-shape", "wrong_shape.pth", Some("layer2.0.conv1.weight")),
    ]
}

fn pick_checkpoints(corpus: Vec<BadCheckpoint>, names: &[&str]) -> Vec<BadCheckpoint> {
    let picked: Vec<BadCheckpoint> = corpus.into_iter().filter(|c| names.contains(&c.what)).collect();
    assert_eq!(picked.len(), names.len(), "{names:?}");
    picked
}

/// A DeepLab-V2 VGG-16 checkpoint: another network than the tiny ResNet.
fn vgg_checkpoint(path: &Path) {
    tch::manual_seed(5);
    let config =
        ModelConfig { arch: Arch::DeepLabV2Vgg16, num_classes: 19, multi_level: false, aspp_sum: AsppSum::AllFour };
    weights::save(&SegModel::new(config, Device::Cpu).unwrap().state_dict(), path).unwrap();
}

/// `../shared/data/cityscapes-mini`, when this machine has it (read, never copied into the
/// repository).
fn cityscapes_mini() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cityscapes-mini");
    root.join("gtFine/val").is_dir().then_some(root)
}

const MINI_FRAME: &str = "frankfurt_000000_000294";

/// A file of the Cityscapes-mini frame, e.g. `gtFine/val/frankfurt/{}_gtFine_labelIds.png`.
fn mini_file(mini: &Path, pattern: &str) -> Vec<u8> {
    std::fs::read(mini.join(pattern.replace("{}", MINI_FRAME))).unwrap()
}

// ---------------------------------------------------------------------------------------
// predict

#[test]
fn predict_refuses_bad_images_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let checkpoints = bad_checkpoints(&d.join("ckpt"));
    let tiny = d.join("ckpt/tiny.pth");
    let good = d.join("in/good.png");
    write(&good, &picture(ImageFormat::Png));
    // Earlier predictions of every input, which no failed run may replace.
    let out = d.join("out");
    let stems = bad_pictures().iter().map(|b| b.what.split('.').next().unwrap()).chain(["good"]).collect::<Vec<_>>();
    for stem in stems {
        for suffix in ["trainids.png", "color.png", "entropy.png"] {
            write(&out.join(format!("{stem}_{suffix}")), b"an earlier result");
        }
    }
    let predict = |ckpt: &Path, input: &Path, extra: &[&str]| {
        args(&["predict", "--checkpoint", s(ckpt), "--input", s(input), "--output", s(&out)], extra)
    };

    let mut cases = Vec::new();
    for b in bad_pictures() {
        let input = d.join("in").join(b.what);
        write(&input, &b.bytes);
        cases.push(
            case(format!("predict {}", b.what), &predict(&tiny, &input, &[]), s(&input)).and(b.detail).keep(&out),
        );
    }
    if let Some(mini) = cityscapes_mini() {
        let input = d.join("in/frankfurt_truncated.png");
        write(&input, &truncated(&mini_file(&mini, "leftImg8bit/val/frankfurt/{}_leftImg8bit.png")));
        cases.push(case("predict a truncated Cityscapes frame", &predict(&tiny, &input, &[]), s(&input)).keep(&out));
    }
    // A folder with a bad image beside a good one: the good one is written, the bad one named
    // and its earlier outputs left alone.
    let (mixed, mixed_out) = (d.join("mixed"), d.join("mixed_out"));
    write(&mixed.join("a_good.png"), &picture(ImageFormat::Png));
    write(&mixed.join("b_bad.png"), &truncated(&picture(ImageFormat::Png)));
    write(&mixed_out.join("b_bad_trainids.png"), b"an earlier result");
    let folder = args(&["predict", "--checkpoint", s(&tiny), "--input", s(&mixed), "--output", s(&mixed_out)], &[]);
    cases.push(
        case("predict a folder with a truncated image", &folder, s(&mixed.join("b_bad.png"))).keep_existing(&mixed_out),
    );
    let empty = d.join("empty_folder");
    std::fs::create_dir_all(&empty).unwrap();
    cases.push(case("predict an empty folder", &predict(&tiny, &empty, &[]), s(&empty)).keep(&out));
    let o = advent(&["predict", "--checkpoint", s(&tiny), "--input", s(&empty), "--output", s(&out)]);
    assert!(!stderr(&o).contains("--recursive"), "no images below either: {}", stderr(&o));
    let nested = d.join("nested");
    write(&nested.join("city/a.png"), &picture(ImageFormat::Png));
    let what = "predict a folder whose images are in sub-folders";
    cases.push(case(what, &predict(&tiny, &nested, &[]), s(&nested)).and("add --recursive").keep(&out));
    let missing = d.join("in/missing.png");
    cases.push(case("predict a missing image", &predict(&tiny, &missing, &[]), s(&missing)).keep(&out));
    let fused = predict(&tiny, &good, &["--fold-bn", "fused"]);
    cases.push(case("predict, fused batch norms on the CPU", &fused, "--fold-bn fused").keep(&out));
    let file_out = out.join("good_trainids.png");
    let into_file = args(&["predict", "--checkpoint", s(&tiny), "--input", s(&good), "--output", s(&file_out)], &[]);
    cases.push(case("predict into a regular file", &into_file, s(&file_out)).keep(&out));

    for c in &checkpoints {
        let what = format!("predict with a {} checkpoint", c.what);
        cases.push(case(what, &predict(&c.file, &good, &[]), &c.needles[0]).and_all(&c.needles[1..]).keep(&out));
    }
    let classes = predict(&tiny, &good, &["--num-classes", "100000000"]);
    cases.push(case("predict, 10^8 classes", &classes, "--num-classes").keep(&out));
    let huge = predict(&tiny, &good, &["--output-size", "200000x200000"]);
    cases.push(case("predict, an output larger than memory", &huge, "at most 16384").keep(&out));
    let other_classes = predict(&tiny, &good, &["--num-classes", "7"]);
    cases.push(
        case("predict, --num-classes not the checkpoint's", &other_classes, "layer6.conv2d_list.0.weight").keep(&out),
    );
    run_all(cases);
}

// ---------------------------------------------------------------------------------------
// eval and score

const FRAMES: [&str; 2] = ["zurich_000000_000001", "zurich_000000_000002"];

/// A Cityscapes root with two 64x32 val frames; returns the second's image and label, where
/// the cases put their bad files (so that the first frame has been evaluated by then).
fn cityscapes(root: &Path) -> (PathBuf, PathBuf) {
    let image = |f: &str| root.join(format!("leftImg8bit/val/zurich/{f}_leftImg8bit.png"));
    let label = |f: &str| root.join(format!("gtFine/val/zurich/{f}_gtFine_labelIds.png"));
    for f in FRAMES {
        write(&image(f), &picture(ImageFormat::Png));
        write(&label(f), &label_png(W, H, 7));
    }
    (image(FRAMES[1]), label(FRAMES[1]))
}

/// Earlier outputs of eval and score under `dir`: `scores.json` and `preds/`.
fn earlier_outputs(dir: &Path) -> (PathBuf, PathBuf) {
    let (json, preds) = (dir.join("scores.json"), dir.join("preds"));
    write(&json, b"{\"miou\": 12.5}");
    for f in FRAMES {
        write(&preds.join(format!("{f}_leftImg8bit_trainids.png")), b"an earlier result");
        write(&preds.join(format!("{f}_leftImg8bit_color.png")), b"an earlier result");
    }
    (json, preds)
}

#[test]
fn eval_refuses_bad_frames_labels_lists_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let checkpoints = bad_checkpoints(&d.join("ckpt"));
    let tiny = d.join("ckpt/tiny.pth");
    let out = d.join("out");
    let (json, preds) = earlier_outputs(&out);
    let eval = |ckpt: &Path, root: &Path, extra: &[&str]| {
        let base = ["eval", "--checkpoint", s(ckpt), "--dataset", "cityscapes", "--root", s(root)];
        let io = ["--input-size", "64x32", "--output-size", "native", "--workers", "1"];
        let outputs = ["--json", s(&json), "--save-predictions", s(&preds)];
        args(&[&base[..], &io, &outputs].concat(), extra)
    };
    let mut n = 0;
    let mut root = || {
        n += 1;
        let root = d.join(format!("root{n}"));
        let files = cityscapes(&root);
        (root, files)
    };

    let mut cases = Vec::new();
    for b in pick(bad_pictures(), &["corrupt.png", "truncated.jpg"]) {
        let (root, (image, _)) = root();
        write(&image, &b.bytes);
        cases.push(case(format!("eval, image {}", b.what), &eval(&tiny, &root, &[]), s(&image)).and(b.detail));
        let batched = eval(&tiny, &root, &["--batch", "3"]);
        cases.push(case(format!("eval --batch 3, image {}", b.what), &batched, s(&image)).and(b.detail));
    }
    for b in pick(bad_labels(), &["16-bit", "unknown id 200"]) {
        let (root, (_, label)) = root();
        write(&label, &b.bytes);
        cases.push(case(format!("eval, label {}", b.what), &eval(&tiny, &root, &[]), s(&label)).and(b.detail));
    }
    let (root_missing, (_, label)) = root();
    std::fs::remove_file(&label).unwrap();
    cases.push(case("eval, missing label", &eval(&tiny, &root_missing, &[]), s(&label)));
    let empty = d.join("empty");
    std::fs::create_dir_all(empty.join("leftImg8bit/val")).unwrap();
    std::fs::create_dir_all(empty.join("gtFine/val")).unwrap();
    cases.push(case("eval, empty folders", &eval(&tiny, &empty, &[]), "no images found"));
    let nowhere = d.join("nowhere");
    cases.push(case("eval, missing root", &eval(&tiny, &nowhere, &[]), s(&nowhere)));
    cases.push(case("eval, batch of 0", &eval(&tiny, &nowhere, &["--batch", "0"]), "--batch"));
    cases.push(case("eval, 65535 loader threads", &eval(&tiny, &nowhere, &["--workers", "65535"]), "--workers"));
    let plain = |dataset: &str, extra: &[&str]| {
        args(&["eval", "--checkpoint", s(&tiny), "--dataset", dataset, "--root", s(&nowhere)], extra)
    };
    let huge = plain("cityscapes", &["--input-size", "200000x200000"]);
    cases.push(case("eval, an input larger than memory", &huge, "at most 16384"));
    let foggy = plain("foggy-cityscapes", &["--beta", "0.03"]);
    cases.push(case("eval, an unreleased fog density", &foggy, "beta"));
    let two = |weights: [&str; 2]| {
        let (a, b) = (format!("--weight={}", weights[0]), format!("--weight={}", weights[1]));
        eval(&tiny, &nowhere, &["--checkpoint", s(&tiny), &a, &b])
    };
    cases.push(case("eval, a NaN ensemble weight", &two(["NaN", "1"]), "--weight NaN"));
    cases.push(case("eval, a negative ensemble weight", &two(["-1", "2"]), "--weight -1"));
    cases.push(case("eval, ensemble weights all 0", &two(["0", "0"]), "at least one weight"));
    let (good_root, _) = root();
    let list = d.join("val.txt");
    write(
        &list,
        format!("zurich/{}_leftImg8bit.png\nzurich/zurich_000000_000009_leftImg8bit.png\n", FRAMES[0]).as_bytes(),
    );
    let listed = eval(&tiny, &good_root, &["--list", s(&list)]);
    cases.push(case("eval, list naming a missing file", &listed, "zurich_000000_000009_leftImg8bit.png"));
    for c in pick_checkpoints(checkpoints, &["discriminator", "NaN"]) {
        let what = format!("eval, {} checkpoint", c.what);
        cases.push(case(what, &eval(&c.file, &good_root, &[]), &c.needles[0]).and_all(&c.needles[1..]));
    }
    let no_run = d.join("no_run");
    let sweep = args(&["eval", "--sweep", s(&no_run), "--dataset", "cityscapes", "--root", s(&good_root)], &[]);
    cases.push(case("eval --sweep of a missing run", &sweep, s(&no_run)));
    let poll = args(&["eval", "--sweep", s(&no_run), "--dataset", "cityscapes", "--root", s(&good_root)], &[]);
    let poll = args(&poll.iter().map(String::as_str).collect::<Vec<_>>(), &["--wait", "--poll", "1e20"]);
    cases.push(case("eval --sweep --wait, a poll of 1e20 s", &poll, "--poll"));
    run_all(cases.into_iter().map(|c| c.keep(&out)).collect());
}

#[test]
fn score_refuses_bad_predictions_and_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out");
    let (json, _) = earlier_outputs(&out);
    // Returns the ground-truth root, the prediction folder, and the second frame's label and
    // prediction.
    let mut n = 0;
    let mut setup = || {
        n += 1;
        let root = d.join(format!("set{n}"));
        let (_, label) = cityscapes(&root.join("gt"));
        let pred = |f: &str| root.join(format!("pred/{f}_leftImg8bit_trainids.png"));
        for f in FRAMES {
            write(&pred(f), &prediction_png(W, H, 0));
        }
        (root.join("gt"), root.join("pred"), label, pred(FRAMES[1]))
    };
    let score = |gt: &Path, pred: &Path| args(&["score", "--gt", s(gt), "--pred", s(pred), "--json", s(&json)], &[]);

    let mut cases = Vec::new();
    let mut bad_predictions = pick(bad_id_maps(&prediction_png(W, H, 0)), &["truncated", "text", "16-bit"]);
    bad_predictions.push(bad("value 200", prediction_png(W, H, 200), "200"));
    bad_predictions.push(bad("of another size", prediction_png(W / 2, H / 2, 0), "32x16"));
    for b in bad_predictions {
        let (gt, preds, _, pred) = setup();
        write(&pred, &b.bytes);
        // The file is called what it is (not a "label").
        let named = format!("prediction {}", s(&pred));
        cases.push(case(format!("score, prediction {}", b.what), &score(&gt, &preds), named).and(b.detail));
    }
    for b in pick(bad_labels(), &["corrupt", "unknown id 200"]) {
        let (gt, preds, label, _) = setup();
        write(&label, &b.bytes);
        let named = format!("ground truth {}", s(&label));
        cases.push(case(format!("score, ground truth {}", b.what), &score(&gt, &preds), named).and(b.detail));
    }
    let (_, preds, _, _) = setup();
    let empty = d.join("empty");
    std::fs::create_dir_all(empty.join("gtFine/val")).unwrap();
    cases.push(case("score, empty ground-truth folder", &score(&empty, &preds), s(&empty.join("gtFine/val"))));
    let nowhere = d.join("nowhere");
    cases.push(case("score, missing ground truth", &score(&nowhere, &preds), s(&nowhere)));
    if let Some(mini) = cityscapes_mini() {
        // A real frame's labels against a prediction of another size, and its 16-bit instance
        // ids where the label ids belong.
        for (what, file, needle) in [
            ("of another size than a real label", "labelIds", "64x32"),
            ("against real instance ids", "instanceIds", "16-bit"),
        ] {
            let root = d.join(format!("real-{file}"));
            let label = root.join(format!("gtFine/val/frankfurt/{MINI_FRAME}_gtFine_labelIds.png"));
            write(&label, &mini_file(&mini, &format!("gtFine/val/frankfurt/{{}}_gtFine_{file}.png")));
            write(&root.join(format!("pred/{MINI_FRAME}_leftImg8bit_trainids.png")), &prediction_png(W, H, 0));
            cases.push(
                case(format!("score, prediction {what}"), &score(&root, &root.join("pred")), needle).and(s(&label)),
            );
        }
    }
    run_all(cases.into_iter().map(|c| c.keep(&out)).collect());
}

// ---------------------------------------------------------------------------------------
// data check

/// A GTA5 root with two good 64x32 frames, `00001.png` and `00002.png`.
fn gta5(root: &Path) -> (PathBuf, PathBuf) {
    for name in ["00001.png", "00002.png"] {
        write(&root.join("images").join(name), &picture(ImageFormat::Png));
        write(&root.join("labels").join(name), &label_png(W, H, 7));
    }
    (root.join("images/00002.png"), root.join("labels/00002.png"))
}

#[test]
fn data_check_names_every_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out");
    let json = out.join("report.json");
    write(&json, b"{\"an\": \"earlier report\"}");
    let check = |root: &Path, extra: &[&str]| args(&["data", "check", "--dataset", "gta5", "--root", s(root)], extra);

    // One dataset holding the whole corpus, each bad file in a frame of its own: `data check`
    // reads everything and lists every problem with its file.
    let root = d.join("gta");
    gta5(&root);
    let mut names = vec!["00001.png".to_string(), "00002.png".to_string()];
    let mut next = || {
        let name = format!("{:05}.png", names.len() + 1);
        write(&root.join("images").join(&name), &picture(ImageFormat::Png));
        write(&root.join("labels").join(&name), &label_png(W, H, 7));
        names.push(name.clone());
        (root.join("images").join(&name), root.join("labels").join(&name))
    };
    let mut listed = Vec::new();
    for b in bad_pictures() {
        let (image, _) = next();
        write(&image, &b.bytes);
        listed.push(format!("{}: ", s(&image)));
    }
    let mut other_labels = bad_labels();
    other_labels.push(bad("of another size", label_png(W / 2, H / 2, 7), "32x16"));
    for b in other_labels {
        let (_, label) = next();
        write(&label, &b.bytes);
        listed.extend([format!("{}: ", s(&label)), b.detail.to_string()]);
    }
    let (_, label) = next();
    std::fs::remove_file(&label).unwrap();
    listed.push(format!("{}: ", s(&label)));
    // Named by the list file, not on disk.
    let (image, _) = next();
    std::fs::remove_file(&image).unwrap();
    listed.push(format!("{}: ", s(&image)));
    let list = d.join("all.txt");
    write(&list, names.join("\n").as_bytes());
    let problems = format!("{} problem(s) found", names.len() - 2);
    let mut all = case("data check, the whole corpus", &check(&root, &["--list", s(&list)]), problems);
    for text in listed {
        all = all.listing(text);
    }

    let mut cases = vec![all];
    let empty = d.join("empty");
    std::fs::create_dir_all(empty.join("images")).unwrap();
    std::fs::create_dir_all(empty.join("labels")).unwrap();
    let with_json = |root: &Path, extra: &[&str]| check(root, &[&["--json", s(&json)], extra].concat());
    cases.push(case("data check, empty folders", &with_json(&empty, &[]), "no images found").keep(&out));
    let nowhere = d.join("nowhere");
    cases.push(case("data check, missing root", &with_json(&nowhere, &[]), s(&nowhere)).keep(&out));
    let none = d.join("none.txt");
    cases.push(case("data check, missing list", &with_json(&root, &["--list", s(&none)]), s(&none)).keep(&out));
    if let Some(mini) = cityscapes_mini() {
        let root = d.join("real");
        write(
            &root.join(format!("leftImg8bit/val/frankfurt/{MINI_FRAME}_leftImg8bit.png")),
            &mini_file(&mini, "leftImg8bit/val/frankfurt/{}_leftImg8bit.png"),
        );
        let label = root.join(format!("gtFine/val/frankfurt/{MINI_FRAME}_gtFine_labelIds.png"));
        write(&label, &mini_file(&mini, "gtFine/val/frankfurt/{}_gtFine_instanceIds.png"));
        let real = args(&["data", "check", "--dataset", "cityscapes", "--root", s(&root), "--split", "val"], &[]);
        cases.push(case("data check, real instance ids as label ids", &real, "1 problem(s) found").listing(s(&label)));
    }
    run_all(cases);
}

// ---------------------------------------------------------------------------------------
// train, report

/// Source-only training of the tiny network on a GTA5-layout `root` (64x32).
fn gta5_config(root: &Path) -> PathBuf {
    let path = root.join("gta5.toml");
    let text = format!(
        r#"
        [model]
        arch = "deeplabv2-tiny"
        [source]
        dataset = "gta5"
        root = "{}"
        size = [64, 32]
        [target]
        dataset = "synthetic"
        size = [64, 32]
        [train]
        method = "source_only"
        max_iters = 50
        early_stop = 3
        save_every = 3
        workers = 1
        tensorboard = false
        "#,
        s(root)
    );
    write(&path, text.as_bytes());
    path
}

#[test]
fn train_refuses_bad_data_configs_and_initialisations() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let runs = d.join("runs");
    write(&runs.join("earlier/metrics.jsonl"), b"{\"iter\": 0}\n");
    let train = |config: &Path, run: &str, extra: &[&str]| {
        args(&["train", "--config", s(config), "--run-dir", s(&runs.join(run))], extra)
    };
    let mut n = 0;
    let mut source = || {
        n += 1;
        let root = d.join(format!("gta{n}"));
        let files = gta5(&root);
        (gta5_config(&root), format!("run{n}"), files)
    };

    // Bad source files: training stops at the batch that holds them, naming the file. The
    // new run's folder has been made by then; earlier runs are left alone.
    let mut data = Vec::new();
    for b in pick(bad_pictures(), &["truncated.png", "empty.png"]) {
        let (config, run, (image, _)) = source();
        write(&image, &b.bytes);
        data.push(case(format!("train, source image {}", b.what), &train(&config, &run, &[]), s(&image)));
    }
    for b in pick(bad_labels(), &["corrupt", "unknown id 200"]) {
        let (config, run, (_, label)) = source();
        write(&label, &b.bytes);
        data.push(case(format!("train, label {}", b.what), &train(&config, &run, &[]), s(&label)).and(b.detail));
    }
    let mut cases: Vec<Case> = data.into_iter().map(|c| c.keep_existing(&runs)).collect();

    // Everything else is refused before the run folder is made.
    let mut early = Vec::new();
    let (config, run, (_, label)) = source();
    std::fs::remove_file(&label).unwrap();
    early.push(case("train, missing label", &train(&config, &run, &[]), s(&label)));
    let empty = d.join("empty");
    std::fs::create_dir_all(empty.join("images")).unwrap();
    std::fs::create_dir_all(empty.join("labels")).unwrap();
    early.push(case("train, empty source folders", &train(&gta5_config(&empty), "empty", &[]), "no images found"));
    let (config, run, _) = source();
    let list = d.join("all.txt");
    write(&list, b"00001.png\n00009.png\n");
    let listed = train(&config, &run, &["--set", &format!("source.list={}", s(&list))]);
    early.push(case("train, list naming a missing file", &listed, "00009.png"));

    let good = tiny_config(d, "source_only");
    for (what, set, needle) in [
        ("unknown key", "train.learning_rat=0.1", "train.learning_rat"),
        ("wrong type", "train.max_iters=\"many\"", "train.max_iters"),
        ("negative size", "target.size=[-64, 32]", "target.size"),
        ("negative class count", "model.num_classes=-3", "model.num_classes"),
        ("no value", "train.seed", "train.seed"),
    ] {
        early.push(case(format!("train --set, {what}"), &train(&good, "set", &["--set", set]), needle));
    }
    let typed = d.join("typed.toml");
    write(&typed, b"[model]\narch = \"deeplabv2-tiny\"\nnum_classes = \"nineteen\"\n");
    early.push(case("train, config of a wrong type", &train(&typed, "typed", &[]), "model.num_classes"));
    let syntax = d.join("syntax.toml");
    write(&syntax, b"[train]\nmax_iters = = 3\n");
    early.push(case("train, config syntax error", &train(&syntax, "syntax", &[]), "line 2"));

    // Initialisations that do not fit the configured network.
    let checkpoints = bad_checkpoints(&d.join("ckpt"));
    for c in pick_checkpoints(checkpoints, &["truncated .pth", "discriminator", "NaN"]) {
        let init = train(&good, "init", &["--set", &format!("model.init={}", s(&c.file))]);
        early.push(case(format!("train, {} model.init", c.what), &init, &c.needles[0]).and_all(&c.needles[1..]));
    }
    let vgg = d.join("ckpt/vgg16.pth");
    vgg_checkpoint(&vgg);
    let init = train(&good, "vgg", &["--set", &format!("model.init={}", s(&vgg))]);
    early.push(case("train, VGG-16 model.init for the tiny ResNet", &init, s(&vgg)).and("features.0.weight"));
    cases.extend(early.into_iter().map(|c| c.keep(&runs)));
    run_all(cases);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn resume_and_report_leave_a_run_alone_on_bad_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = tiny_config(d, "source_only");
    let run = d.join("run");
    let short = ["--set", "train.early_stop=2", "--set", "train.save_every=2", "--set", "train.tensorboard=false"];
    assert_success(&advent(
        &args(&["train", "--config", s(&config), "--run-dir", s(&run)], &short)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));
    assert_success(&advent(&["report", s(&run), "--samples", "1"]));
    let ckpt = "checkpoints/iter_000002";
    let model = |run: &Path| run.join(ckpt).join("model.pth");
    let nan = d.join("nan.pth");
    let dict = weights::load(&model(&run)).unwrap();
    weights::save(&edited(&dict, "layer4.0.conv3.weight", |t| t.copy().fill_(f64::NAN)), &nan).unwrap();

    // Each case breaks a copy of the run (with its report.html), which must come through
    // unchanged: metrics, checkpoints, report.
    let mut n = 0;
    let mut copy = |f: &dyn Fn(&Path)| {
        n += 1;
        let copy = d.join(format!("run{n}"));
        copy_dir(&run, &copy);
        f(&copy);
        copy
    };
    // The run ended at its early_stop (2): resuming goes on to 4.
    let resume =
        |run: &Path, extra: &[&str]| args(&["train", "--resume", s(run), "--set", "train.early_stop=4"], extra);
    let report = |run: &Path| args(&["report", s(run), "--samples", "1"], &[]);
    let truncate = |path: &Path| write(path, &truncated(&std::fs::read(path).unwrap()));

    let mut cases = Vec::new();
    let broken = copy(&|r| truncate(&model(r)));
    cases.push(case("resume, truncated model.pth", &resume(&broken, &[]), s(&model(&broken))).keep(&broken));
    cases.push(case("report, truncated model.pth", &report(&broken), s(&model(&broken))).keep(&broken));
    let broken = copy(&|r| {
        std::fs::copy(&nan, model(r)).unwrap();
    });
    let what = "resume, NaN in model.pth";
    cases.push(case(what, &resume(&broken, &[]), s(&model(&broken))).and("layer4.0.conv3.weight").keep(&broken));
    let what = "report, NaN in model.pth";
    cases.push(case(what, &report(&broken), s(&model(&broken))).and("layer4.0.conv3.weight").keep(&broken));
    let broken = copy(&|r| truncate(&r.join(ckpt).join("optimizer.safetensors")));
    let what = "resume, truncated optimizer state";
    cases.push(case(what, &resume(&broken, &[]), s(&broken.join(ckpt).join("optimizer.safetensors"))).keep(&broken));
    let broken = copy(&|r| {
        let state = std::fs::read_to_string(r.join(ckpt).join("state.json")).unwrap();
        assert!(state.contains("\"iteration\": 2,"), "{state}");
        write(&r.join(ckpt).join("state.json"), state.replace("\"iteration\": 2,", "\"iteration\": 1,").as_bytes());
    });
    let what = "resume, state.json of another iteration";
    cases.push(case(what, &resume(&broken, &[]), "iteration 1 in the checkpoint folder of iteration 2").keep(&broken));
    let broken = copy(&|_| {});
    let finished = args(&["train", "--resume", s(&broken), "--set", "train.early_stop=1"], &[]);
    cases.push(case("resume, a finished run", &finished, "nothing to train").keep(&broken));
    let broken = copy(&|r| write(&r.join(ckpt).join("state.json"), b"{\"iteration\": "));
    let what = "resume, truncated state.json";
    cases.push(case(what, &resume(&broken, &[]), s(&broken.join(ckpt).join("state.json"))).keep(&broken));
    let broken = copy(&|_| {});
    for (what, set, needle) in [
        ("resume --set, unknown key", "train.bogus=1", "train.bogus"),
        ("resume --set, another network", "model.arch=\"deeplabv2-r50\"", "layer1.1"),
    ] {
        cases.push(case(what, &resume(&broken, &["--set", set]), needle).keep(&broken));
    }
    let broken = copy(&|r| {
        let text = std::fs::read_to_string(r.join("config.toml")).unwrap();
        write(&r.join("config.toml"), text.replace("[train]", "[train]\nlearning_rat = 0.1").as_bytes());
    });
    cases.push(case("resume, unknown key in config.toml", &resume(&broken, &[]), "train.learning_rat").keep(&broken));
    cases.push(case("report, unknown key in config.toml", &report(&broken), "train.learning_rat").keep(&broken));
    // Half a row at the end is what a kill leaves: the report shows the rows before it.
    let torn = copy(&|r| {
        let mut text = std::fs::read(r.join("metrics.jsonl")).unwrap();
        text.extend_from_slice(b"{\"iter\": 3, \"loss_seg");
        write(&r.join("metrics.jsonl"), &text);
    });
    assert_success(&advent(&["report", s(&torn), "--samples", "1"]));
    // A damaged line before others is refused by the report and by a resume (which would
    // otherwise drop that iteration's losses without a word).
    let broken = copy(&|r| {
        let text = std::fs::read_to_string(r.join("metrics.jsonl")).unwrap();
        let (first, rest) = text.split_once('\n').unwrap();
        write(&r.join("metrics.jsonl"), format!("{first}\n{{\"iter\": 1, \"loss_se\n{rest}").as_bytes());
    });
    let metrics = broken.join("metrics.jsonl");
    cases.push(case("report, damaged metrics.jsonl", &report(&broken), s(&metrics)).and("line 2").keep(&broken));
    cases.push(case("resume, damaged metrics.jsonl", &resume(&broken, &[]), s(&metrics)).and("line 2").keep(&broken));
    // The run's target an image folder: one that is not on this machine leaves the samples
    // out (said on stderr); an image of it that does not decode is an error.
    let retarget = |r: &Path, root: &Path| {
        let text = std::fs::read_to_string(r.join("config.toml")).unwrap();
        let from = "[target]\ndataset = \"synthetic\"\nroot = \"data/Cityscapes\"";
        assert!(text.contains(from), "{text}");
        let to = format!("[target]\ndataset = \"images\"\nroot = {:?}", s(root));
        write(&r.join("config.toml"), text.replace(from, &to).as_bytes());
    };
    let images = d.join("target-images");
    write(&images.join("a.png"), &truncated(&picture(ImageFormat::Png)));
    let broken = copy(&|r| retarget(r, &images));
    let what = "report, truncated target image";
    cases.push(case(what, &report(&broken), s(&images.join("a.png"))).keep(&broken));
    let absent = copy(&|r| retarget(r, &d.join("not-here")));
    let o = advent(&["report", s(&absent), "--samples", "1"]);
    assert_success(&o);
    assert!(
        stderr(&o).contains("note: no sample images in the report") && stderr(&o).contains("not-here"),
        "{}",
        stderr(&o)
    );
    let nowhere = d.join("nowhere");
    cases.push(case("resume, missing run", &resume(&nowhere, &[]), s(&nowhere)));
    cases.push(case("report, missing run", &report(&nowhere), s(&nowhere)));
    run_all(cases);
}

/// A segmentation run or checkpoint given to a detection command, or the other way round,
/// is refused with the commands that take it (they failed on an unknown config key, a class
/// count, or keys "not recognised").
#[test]
fn each_task_refuses_the_other_tasks_runs_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (seg, det) = (d.join("seg"), d.join("det"));
    let config = tiny_config_with(d, "source_only", &[("early_stop", "1"), ("save_every", "1")]);
    assert_success(&advent(&["train", "--config", s(&config), "--run-dir", s(&seg)]));
    let det_config = d.join("det.toml");
    write(
        &det_config,
        b"[model]\nwidth = 8\n[source]\ndataset = \"synthetic\"\nbatch_size = 1\n[target]\ndataset = \"synthetic\"\n\
          batch_size = 1\n[synthetic]\nlen = 2\n[train]\nmethod = \"source_only\"\nearly_stop = 1\nsave_every = 1\n\
          workers = 1\n",
    );
    assert_success(&advent(&["detect", "train", "--config", s(&det_config), "--run-dir", s(&det)]));
    let seg_model = seg.join("checkpoints/iter_000001/model.pth");
    let det_model = det.join("checkpoints/iter_000001/model.pth");
    let o = advent(&["checkpoint", "info", s(&det_model)]);
    assert_success(&o);
    let info = stdout(&o);
    assert!(info.contains("network: SSD-300 detector on VGG-16 at width 8, 9 classes"), "{info}");

    let images = d.join("images");
    write(&images.join("a.png"), &picture(ImageFormat::Png));
    let out = d.join("out");
    let mini = d.join("mini");
    cityscapes(&mini);
    let detection = "a detection run (made by `advent detect train`)";
    let segmentation = "a segmentation run (made by `advent train`)";
    let ssd = "the keys are an SSD detector's";
    let deeplab = "its keys are a DeepLab-V2 segmentation network's";
    let cases = vec![
        case("train --resume, a detection run", &["train", "--resume", s(&det)], detection).keep(&det),
        case(
            "eval --sweep, a detection run",
            &["eval", "--sweep", s(&det), "--dataset", "cityscapes", "--root", s(&mini), "--split", "val"],
            detection,
        )
        .keep(&det),
        case("detect train --resume, a segmentation run", &["detect", "train", "--resume", s(&seg)], segmentation)
            .keep(&seg),
        case(
            "detect eval --sweep, a segmentation run",
            &["detect", "eval", "--sweep", s(&seg), "--dataset", "cityscapes", "--root", s(&mini), "--split", "val"],
            segmentation,
        )
        .keep(&seg),
        case(
            "predict, an SSD checkpoint",
            &["predict", "--checkpoint", s(&det_model), "--input", s(&images), "--output", s(&out)],
            ssd,
        ),
        case(
            "eval, an SSD checkpoint",
            &["eval", "--checkpoint", s(&det_model), "--dataset", "cityscapes", "--root", s(&mini), "--split", "val"],
            ssd,
        ),
        case(
            "detect predict, a DeepLab checkpoint",
            &["detect", "predict", "--checkpoint", s(&seg_model), "--input", s(&images), "--output", s(&out)],
            deeplab,
        ),
        case(
            "detect eval, a DeepLab checkpoint",
            &[
                "detect",
                "eval",
                "--checkpoint",
                s(&seg_model),
                "--dataset",
                "cityscapes",
                "--root",
                s(&mini),
                "--split",
                "val",
            ],
            deeplab,
        ),
    ];
    run_all(cases);
}

#[test]
fn a_diverging_run_stops_before_writing_a_checkpoint_it_could_not_resume() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "advent");
    let run = dir.path().join("run");
    // A learning rate of 1e30 turns the weights infinite in the first update, before any
    // loss is NaN (iteration 0's losses are computed from the initial weights).
    let o = advent(&[
        "train",
        "--config",
        s(&config),
        "--run-dir",
        s(&run),
        "--set",
        "train.learning_rate=1e30",
        "--set",
        "train.save_every=1",
    ]);
    assert_clean_failure(&o, "holds NaN or infinite values");
    assert!(stderr(&o).contains("iteration 1:"), "{}", stderr(&o));
    let written: Vec<_> = std::fs::read_dir(run.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(written.is_empty(), "checkpoints written: {written:?}");
}

// ---------------------------------------------------------------------------------------
// demo, checkpoint, bench

#[test]
fn demo_refuses_bad_arguments_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let earlier = d.join("demo");
    write(&earlier.join("results.json"), b"{\"methods\": {}}");
    write(&earlier.join("report.html"), b"<html></html>");
    std::fs::create_dir_all(earlier.join("runs")).unwrap();
    let file = d.join("notes.txt");
    write(&file, b"not a folder");
    let demo = |out: &Path, extra: &[&str]| args(&["demo", "--quick", "--out", s(out)], extra);
    let cases = vec![
        case("demo --set, unknown key", &demo(&earlier, &["--set", "train.lambda_ent=0.1"]), "train.lambda_ent"),
        case(
            "demo --set, wrong type",
            &demo(&earlier, &["--set", "train.lambda_adv_main=\"high\""]),
            "train.lambda_adv_main",
        ),
        case("demo, no seeds", &demo(&earlier, &["--seeds", "0"]), "--seeds"),
        case("demo, unknown device", &demo(&earlier, &["--device", "tpu"]), "tpu"),
        case("demo, --out a regular file", &demo(&file, &[]), s(&file)),
        case("demo, --out a folder of other files", &demo(d, &[]), s(d)),
        // A demo's output is not a run; its report stays as it was.
        case("report of a demo's output", &["report", s(&earlier)], "a demo's output, not a training run"),
        case("report of a folder that is no run", &["report", s(&d.join("demo/runs"))], "is not a training run"),
        case("report of a missing folder", &["report", s(&d.join("nowhere"))], "no such run folder"),
    ];
    run_all(cases.into_iter().map(|c| c.keep(d)).collect());
    // Refused before the first run is announced, for either task.
    for task in ["segmentation", "detection"] {
        let o = advent(&["demo", "--quick", "--task", task, "--out", s(&d.join(task)), "--set", "train.bogus=1"]);
        assert_clean_failure(&o, "train.bogus");
        assert!(!stderr(&o).contains("demo: "), "{task}: announced a run first: {}", stderr(&o));
    }
}

#[test]
fn checkpoint_and_bench_refuse_bad_files_and_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let checkpoints = bad_checkpoints(&d.join("ckpt"));
    let tiny = d.join("ckpt/tiny.pth");
    let out = d.join("out");
    let earlier = out.join("model.safetensors");
    write(&earlier, b"an earlier conversion");
    let mut cases = Vec::new();
    for c in pick_checkpoints(checkpoints, &["truncated .pth", "truncated .safetensors", "zero-byte", "text"]) {
        cases.push(case(format!("checkpoint info, {}", c.what), &["checkpoint", "info", s(&c.file)], &c.needles[0]));
        if ["truncated .pth", "text"].contains(&c.what) {
            let convert = ["checkpoint", "convert", s(&c.file), s(&earlier)];
            cases.push(case(format!("checkpoint convert, {}", c.what), &convert, &c.needles[0]).keep(&out));
        }
    }
    let txt = out.join("model.txt");
    let convert = ["checkpoint", "convert", s(&tiny), s(&txt)];
    cases.push(case("checkpoint convert to an unknown extension", &convert, s(&txt)).keep(&out));
    let deep = d.join("no/such/folder/model.pth");
    cases.push(case(
        "checkpoint convert into a missing folder",
        &["checkpoint", "convert", s(&tiny), s(&deep)],
        s(&deep),
    ));
    cases.push(case("bench, unknown network", &["bench", "--arch", "resnet", "--what", "eval"], "resnet"));
    cases.push(case("bench, unknown step", &["bench", "--arch", "deeplabv2-tiny", "--what", "maxent"], "maxent"));
    cases.push(case("bench, zero size", &["bench", "--eval-size", "0x512"], "0x512"));
    let tiny_step = ["bench", "--arch", "deeplabv2-tiny", "--what", "advent"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> { tiny_step.iter().chain(extra).copied().collect() };
    cases.push(case("bench, unknown gradient place", &with(&["--graph-grads", "kept"]), "--graph-grads"));
    cases.push(case("bench, unknown upsampling", &with(&["--upsampling", "nearest"]), "--upsampling"));
    cases.push(case("bench, products in bf16", &with(&["--upsampling", "matmul", "--precision", "bf16"]), "bf16"));
    cases.push(case("bench, padding below the classes", &with(&["--d-pad", "8"]), "--d-pad"));
    cases.push(case("bench, classifier padding below the classes", &with(&["--aspp-pad", "8"]), "--aspp-pad"));
    cases.push(case("bench, a batch for the training step", &with(&["--batch", "2"]), "--what eval only"));
    let tiny_eval = ["bench", "--arch", "deeplabv2-tiny", "--what", "eval", "--eval-size", "64x32"];
    let eval_with = |extra: &[&'static str]| -> Vec<&'static str> { tiny_eval.iter().chain(extra).copied().collect() };
    cases.push(case("bench, unknown batch-norm folding", &eval_with(&["--fold-bn", "yes"]), "--fold-bn"));
    cases.push(case("bench, fused folding on the CPU", &eval_with(&["--fold-bn", "fused"]), "needs a CUDA device"));
    cases.push(case("bench, no threads", &eval_with(&["--threads", "0"]), "--threads"));
    cases.push(case("bench, no timed iterations", &eval_with(&["--iters", "0"]), "--iters"));
    cases.push(case("bench, endless warm-up", &eval_with(&["--warmup", "18446744073709551615"]), "--warmup"));
    // libtorch's own error, without its C++ backtrace (checked for every case).
    cases.push(case("bench, a batch larger than memory", &eval_with(&["--batch", "100000000"]), "allocate"));
    run_all(cases);
}
