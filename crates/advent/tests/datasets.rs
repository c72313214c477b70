//! The dataset readers on miniature trees of each official layout, written by the tests
//! themselves, and on the real Cityscapes frames in `../shared/data` (skipped with a note
//! when absent).
//!
//! Expected train ids come from tables written out here as literals (SPEC §5.3, §5.4), not
//! from the code under test; expected image values from the pixels written.

use advent::dataset::check::{Check, ProblemKind};
use advent::dataset::loader::{sequential, Loader, LoaderConfig, OrderState};
use advent::dataset::{self, DatasetSpec, LabelSize, OpenOptions, SynthiaLabels};
use advent::image::IMG_MEAN_BGR;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Cityscapes label id → 19-class train id (SPEC §5.3), written out.
#[rustfmt::skip]
const CS19: [u8; 34] = [
    255, 255, 255, 255, 255, 255, 255, // 0-6
    0, 1,                              // 7 road, 8 sidewalk
    255, 255,                          // 9, 10
    2, 3, 4,                           // 11 building, 12 wall, 13 fence
    255, 255, 255,                     // 14-16
    5,                                 // 17 pole
    255,                               // 18
    6, 7, 8, 9, 10, 11, 12, 13, 14, 15, // 19-28
    255, 255,                          // 29, 30
    16, 17, 18,                        // 31 train, 32 motorcycle, 33 bicycle
];

/// Cityscapes label id → 16-class train id (SPEC §5.4: 22, 27, 31 ignored).
#[rustfmt::skip]
const CS16: [u8; 34] = [
    255, 255, 255, 255, 255, 255, 255,
    0, 1,
    255, 255,
    2, 3, 4,
    255, 255, 255,
    5,
    255,
    6, 7, 8, 255, 9, 10, 11, 12, 255, 13, // 19-28: terrain (22) and truck (27) ignored
    255, 255,
    255, 14, 15,                       // train (31) ignored
];

/// SYNTHIA class id → 16-class train id ([DADA] synthia.py, SPEC §5.4).
#[rustfmt::skip]
const SYN16: [u8; 23] = [
    255, 9, 2, 0, 1, 4, 8, 5, 12, 7, 10, 15, 14, 255, 255, 6, 255, 11, 255, 13, 255, 3, 255,
];

// ---------------------------------------------------------------------------------------
// Writing miniature datasets.

fn write_png(
    path: &Path,
    (w, h): (u32, u32),
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<Vec<u8>>,
) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut e = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    e.set_color(color);
    e.set_depth(depth);
    if let Some(p) = palette {
        e.set_palette(p);
    }
    e.write_header().unwrap().write_image_data(data).unwrap();
}

/// An RGB image whose pixel (x, y) is `f(x, y, seed)`.
fn rgb_pixels(w: u32, h: u32, seed: u8) -> Vec<u8> {
    (0..h)
        .flat_map(|y| {
            (0..w).flat_map(move |x| {
                [
                    (x as u8).wrapping_mul(31).wrapping_add(seed),
                    (y as u8).wrapping_mul(17).wrapping_add(seed),
                    (x as u8 ^ y as u8).wrapping_add(seed.wrapping_mul(3)),
                ]
            })
        })
        .collect()
}

fn write_rgb(path: &Path, w: u32, h: u32, seed: u8) -> Vec<u8> {
    let px = rgb_pixels(w, h, seed);
    write_png(path, (w, h), png::ColorType::Rgb, png::BitDepth::Eight, &px, None);
    px
}

fn write_gray8(path: &Path, w: u32, h: u32, ids: &[u8]) {
    write_png(path, (w, h), png::ColorType::Grayscale, png::BitDepth::Eight, ids, None);
}

/// A palette PNG, as GTA5 stores labels: indices are the ids; the palette's colours are
/// deliberately unrelated to them.
fn write_palette8(path: &Path, w: u32, h: u32, ids: &[u8]) {
    let palette: Vec<u8> = (0..=255u8).flat_map(|i| [i.wrapping_mul(3), 255 - i, 77]).collect();
    write_png(path, (w, h), png::ColorType::Indexed, png::BitDepth::Eight, ids, Some(palette));
}

/// A raw SYNTHIA label: 16-bit RGB, class in channel 0, an instance id (up to 976) in 1.
fn write_synthia_raw(path: &Path, w: u32, h: u32, classes: &[u16]) {
    let data: Vec<u8> = classes
        .iter()
        .enumerate()
        .flat_map(|(i, &c)| [c, 976 - (i as u16 % 7), 40000])
        .flat_map(u16::to_be_bytes)
        .collect();
    write_png(path, (w, h), png::ColorType::Rgb, png::BitDepth::Sixteen, &data, None);
}

fn spec(kind: &str, root: &Path, split: &str, size: (u32, u32), num_classes: usize) -> DatasetSpec {
    DatasetSpec {
        kind: kind.into(),
        root: root.to_path_buf(),
        split: split.into(),
        list: None,
        size,
        labels: true,
        num_classes,
        foggy_beta: 0.02,
        synthetic_seed: 0,
        synthetic_len: 0,
        synthetic_domain: Default::default(),
        synthetic_shift: 1.0,
        pseudo_labels: None,
    }
}

fn label_vec(t: &Tensor) -> Vec<i64> {
    assert_eq!(t.kind(), Kind::Int64);
    Vec::try_from(t.flatten(0, -1)).unwrap()
}

fn image_vec(t: &Tensor) -> Vec<f32> {
    assert_eq!(t.kind(), Kind::Float);
    Vec::try_from(t.flatten(0, -1)).unwrap()
}

/// `[3, H, W]` BGR minus the mean, computed from RGB bytes.
fn expected_input(rgb: &[u8]) -> Vec<f32> {
    let mean = IMG_MEAN_BGR.map(|m| m as f32);
    let mut out = Vec::new();
    for (c, m) in [2, 1, 0].into_iter().zip(mean) {
        out.extend(rgb.chunks_exact(3).map(|p| f32::from(p[c]) - m));
    }
    out
}

fn mapped(ids: &[u8], table: &[u8]) -> Vec<i64> {
    ids.iter().map(|&i| i64::from(table[usize::from(i)])).collect()
}

/// Every other pixel (odd columns and rows): Pillow's NEAREST for an exact halving.
fn halve<T: Copy>(v: &[T], w: usize, h: usize) -> Vec<T> {
    (0..h / 2).flat_map(|y| (0..w / 2).map(move |x| v[(2 * y + 1) * w + 2 * x + 1])).collect()
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// Ids 0..=33 and beyond spread over a w×h map.
fn cityscapes_ids(w: u32, h: u32, shift: u32) -> Vec<u8> {
    (0..w * h).map(|i| ((i * 7 + shift) % 34) as u8).collect()
}

// ---------------------------------------------------------------------------------------
// GTA5

#[test]
fn gta5_reads_palette_indices_and_preprocesses_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, h) = (8, 6);
    let mut pixels = Vec::new();
    let mut ids = Vec::new();
    for (i, name) in ["00002.png", "00001.png", "00010.png"].iter().enumerate() {
        pixels.push(write_rgb(&root.join("images").join(name), w, h, i as u8 * 40));
        ids.push(cityscapes_ids(w, h, i as u32));
        write_palette8(&root.join("labels").join(name), w, h, &ids[i]);
    }
    std::fs::write(root.join("images/notes.txt"), "not an image").unwrap();

    // Native size: no resize; ids straight through the table.
    let ds = dataset::open(&spec("gta5", root, "all", (w, h), 19)).unwrap();
    assert_eq!(ds.len(), 3);
    let names: Vec<String> = (0..3).map(|i| ds.get(i).unwrap().name).collect();
    assert_eq!(names, ["00001", "00002", "00010"]);
    let s = ds.get(0).unwrap(); // 00001.png, written second
    assert_eq!(s.image.size(), vec![3, h as i64, w as i64]);
    assert_eq!(image_vec(&s.image), expected_input(&pixels[1]));
    let label = s.label.unwrap();
    assert_eq!(label.size(), vec![h as i64, w as i64]);
    assert_eq!(label_vec(&label), mapped(&ids[1], &CS19));

    // Half size: labels by nearest (odd pixels), 16 classes.
    let ds = dataset::open(&spec("gta5", root, "all", (w / 2, h / 2), 16)).unwrap();
    let s = ds.get(1).unwrap(); // 00002.png
    assert_eq!(s.image.size(), vec![3, 3, 4]);
    let want = halve(&mapped(&ids[0], &CS16), w as usize, h as usize);
    assert_eq!(label_vec(&s.label.unwrap()), want);

    // A list file restricts and orders; a listed file that is missing is named.
    let list = root.join("list.txt");
    std::fs::write(&list, "00010.png\n\n00002.png\n").unwrap();
    let mut sp = spec("gta5", root, "all", (w, h), 19);
    sp.list = Some(list.clone());
    let ds = dataset::open(&sp).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.get(0).unwrap().name, "00010");
    assert_eq!(ds.get(1).unwrap().name, "00002");
    std::fs::write(&list, "00001.png\n00003.png\n").unwrap();
    let msg = err_text(dataset::open(&sp));
    assert!(msg.contains(&root.join("images/00003.png").display().to_string()), "{msg}");
}

// ---------------------------------------------------------------------------------------
// SYNTHIA

#[test]
fn synthia_raw_16_bit_and_parsed_labels() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, h) = (6, 4);
    let px = write_rgb(&root.join("RGB/0000000.png"), w, h, 9);
    let raw: Vec<u16> = (0..w * h).map(|i| (i % 23) as u16).collect();
    write_synthia_raw(&root.join("GT/LABELS/0000000.png"), w, h, &raw);
    let want_raw: Vec<i64> = raw.iter().map(|&c| i64::from(SYN16[usize::from(c)])).collect();

    // Only the raw labels are there: they are read, class from channel 0.
    let ds = dataset::open(&spec("synthia", root, "all", (w, h), 16)).unwrap();
    let s = ds.get(0).unwrap();
    assert_eq!(s.name, "0000000");
    assert_eq!(image_vec(&s.image), expected_input(&px));
    assert_eq!(label_vec(&s.label.unwrap()), want_raw);

    // parsed_LABELS present: preferred, unless raw labels are asked for.
    let parsed: Vec<u8> = (0..w * h).map(|i| ((i * 5 + 1) % 23) as u8).collect();
    write_gray8(&root.join("parsed_LABELS/0000000.png"), w, h, &parsed);
    let ds = dataset::open(&spec("synthia", root, "all", (w, h), 16)).unwrap();
    assert_eq!(label_vec(&ds.get(0).unwrap().label.unwrap()), mapped(&parsed, &SYN16));
    let options = OpenOptions { synthia_labels: SynthiaLabels::Raw, ..Default::default() };
    let ds = dataset::open_with(&spec("synthia", root, "all", (w, h), 16), &options).unwrap();
    assert_eq!(label_vec(&ds.get(0).unwrap().label.unwrap()), want_raw);

    // Half size from the 16-bit labels; native label size on request.
    let ds = dataset::open_with(&spec("synthia", root, "all", (3, 2), 16), &options).unwrap();
    let want: Vec<i64> = halve(&want_raw, w as usize, h as usize);
    assert_eq!(label_vec(&ds.get(0).unwrap().label.unwrap()), want);
    let native = OpenOptions { label_size: LabelSize::Native, ..options };
    let ds = dataset::open_with(&spec("synthia", root, "all", (3, 2), 16), &native).unwrap();
    let s = ds.get(0).unwrap();
    assert_eq!(s.image.size(), vec![3, 2, 3]);
    assert_eq!(s.label.unwrap().size(), vec![4, 6]);

    // A class id SYNTHIA does not have is an error naming the file.
    let mut bad = raw.clone();
    bad[5] = 976;
    write_synthia_raw(&root.join("GT/LABELS/0000000.png"), w, h, &bad);
    let ds = dataset::open_with(&spec("synthia", root, "all", (w, h), 16), &options).unwrap();
    let msg = err_text(ds.get(0));
    assert!(msg.contains("GT/LABELS/0000000.png") && msg.contains("976"), "{msg}");
}

/// SYNTHIA class id → DADA's 7 classes (`dada/dataset/synthia.py`, `num_classes == 7`:
/// {1: 4, 2: 1, 3: 0, 4: 0, 5: 1, 6: 3, 7: 2, 8: 6, 9: 2, 10: 5, 11: 6, 15: 2, 22: 0}).
#[rustfmt::skip]
const SYN7: [u8; 23] = [
    255, 4, 1, 0, 0, 1, 3, 2, 6, 2, 5, 6, 255, 255, 255, 2, 255, 255, 255, 255, 255, 255, 0,
];

#[test]
fn synthia_seven_classes_are_dadas_table() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, h) = (23, 2);
    write_rgb(&root.join("RGB/0000000.png"), w, h, 1);
    let ids: Vec<u8> = (0..w * h).map(|i| (i % 23) as u8).collect();
    write_gray8(&root.join("parsed_LABELS/0000000.png"), w, h, &ids);
    let ds = dataset::open(&spec("synthia", root, "all", (w, h), 7)).unwrap();
    assert_eq!(label_vec(&ds.get(0).unwrap().label.unwrap()), mapped(&ids, &SYN7));
    // GTA5 and Cityscapes have no 7-class table; unlabelled, Cityscapes is a 7-class target.
    let msg = err_text(dataset::open(&spec("gta5", root, "all", (w, h), 7)));
    assert!(msg.contains("Cityscapes label ids: no table for 7 classes"), "{msg}");
    let msg = err_text(dataset::open(&spec("synthia", root, "all", (w, h), 8)));
    assert!(msg.contains("8 classes") && msg.contains("or 7 (SYNTHIA → Mapillary)"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// Mapillary Vistas

/// Mapillary v1.x class index → DADA's 7 classes (`MAPILLARY_2_CITYSCAPES` over the label
/// order of `mapillary_list/info.json`, `other` → 255), written out.
#[rustfmt::skip]
const MAP7: [u8; 66] = [
    255, 255,                          // 0 bird, 1 ground animal
    1, 1, 1, 1, 1,                     // 2 curb .. 6 wall
    0, 0, 0, 0, 0, 0, 0, 0, 0,         // 7 bike lane .. 15 sidewalk
    1, 1, 1,                           // 16 bridge, 17 building, 18 tunnel
    5, 5, 5, 5,                        // 19 person .. 22 other rider
    0, 0,                              // 23, 24 lane markings
    255, 255, 4, 255, 0, 3, 255,       // 25 mountain, sand, sky, snow, terrain, vegetation, water
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, // 32 banner .. 42 phone booth
    2, 2, 2, 2, 2, 2, 2, 2,            // 43 pothole .. 50 traffic sign (front)
    255,                               // 51 trash can
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,   // 52 bicycle .. 62 wheeled slow
    255, 255, 255,                     // 63 car mount, 64 ego vehicle, 65 unlabeled
];

/// Mapillary's `<split>/images/<x>.jpg` and `<split>/labels/<x>.png`. The image is written
/// as PNG bytes under the `.jpg` name (decoders, PIL's too, go by the content), so that its
/// pixels are exact.
fn mapillary_item(root: &Path, split: &str, stem: &str, (w, h): (u32, u32), seed: u8) -> (Vec<u8>, Vec<u8>) {
    let px = write_rgb(&root.join(split).join("images").join(format!("{stem}.jpg")), w, h, seed);
    let ids: Vec<u8> = (0..w * h).map(|i| ((i * 5 + u32::from(seed)) % 66) as u8).collect();
    write_palette8(&root.join(split).join("labels").join(format!("{stem}.png")), w, h, &ids);
    (px, ids)
}

/// Row-major `v` (`w` wide) at the top left of a `to` canvas filled with `fill`.
fn padded<T: Copy>(v: &[T], w: usize, to: (usize, usize), fill: T) -> Vec<T> {
    let mut out = vec![fill; to.0 * to.1];
    for (y, row) in v.chunks_exact(w).enumerate() {
        out[y * to.0..y * to.0 + w].copy_from_slice(row);
    }
    out
}

/// The padding of a `[3, H, W]` input: black pixels, i.e. minus the BGR mean.
fn padded_input(rgb: &[u8], (w, h): (usize, usize), to: (usize, usize)) -> Vec<f32> {
    let mean = IMG_MEAN_BGR.map(|m| m as f32);
    let planes = expected_input(rgb);
    planes.chunks_exact(w * h).zip(mean).flat_map(|(plane, m)| padded(plane, w, to, -m)).collect()
}

/// DADA's `resize_with_pad` and `pad_with_fixed_AS`: images fitted into the input size and
/// padded at the bottom or right (black; labels ignored), labels at native size padded to
/// the input's aspect ratio; sizes as DADA's float64 arithmetic truncates them.
#[test]
fn mapillary_fits_pads_and_maps_dadas_seven_classes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Wide (2:1) and tall (2:3) images into 8x6 (4:3): the first fills the width (8x4), the
    // second the height (4x6); neither needs resizing, so every value is known exactly.
    let (wide_px, wide_ids) = mapillary_item(root, "training", "a", (8, 4), 3);
    let (tall_px, tall_ids) = mapillary_item(root, "training", "b", (4, 6), 9);
    // `train` finds the official `training` folder.
    let ds = dataset::open(&spec("mapillary", root, "train", (8, 6), 7)).unwrap();
    assert_eq!(ds.len(), 2);
    let a = ds.get(0).unwrap();
    assert_eq!(a.name, "a");
    assert_eq!(image_vec(&a.image), padded_input(&wide_px, (8, 4), (8, 6)));
    assert_eq!(label_vec(&a.label.unwrap()), padded(&mapped(&wide_ids, &MAP7), 8, (8, 6), 255));
    let b = ds.get(1).unwrap();
    assert_eq!(image_vec(&b.image), padded_input(&tall_px, (4, 6), (8, 6)));
    assert_eq!(label_vec(&b.label.unwrap()), padded(&mapped(&tall_ids, &MAP7), 4, (8, 6), 255));

    // Evaluation: labels at native size, padded to 4:3 (8x4 → 8x6: 8 / (8/6) = 6; 4x6 →
    // 8x6: (8/6) * 6 = 8), not resized.
    let native = OpenOptions { label_size: LabelSize::Native, ..Default::default() };
    let ds = dataset::open_with(&spec("mapillary", root, "training", (16, 12), 7), &native).unwrap();
    let a = ds.get(0).unwrap();
    assert_eq!(a.image.size(), vec![3, 12, 16]);
    assert_eq!(label_vec(&a.label.unwrap()), padded(&mapped(&wide_ids, &MAP7), 8, (8, 6), 255));
    let b = ds.get(1).unwrap();
    assert_eq!(label_vec(&b.label.unwrap()), padded(&mapped(&tall_ids, &MAP7), 4, (8, 6), 255));

    // A resized one: 16x8 into 8x6 is 8x4 (Pillow's nearest takes every other pixel), then
    // padded; the image's padding rows are black.
    let (_, big_ids) = mapillary_item(root, "validation", "c", (16, 8), 5);
    let ds = dataset::open(&spec("mapillary", root, "val", (8, 6), 7)).unwrap();
    let c = ds.get(0).unwrap();
    let want = padded(&mapped(&halve(&big_ids, 16, 8), &MAP7), 8, (8, 6), 255);
    assert_eq!(label_vec(&c.label.unwrap()), want);
    let image = image_vec(&c.image);
    let mean = IMG_MEAN_BGR.map(|m| m as f32);
    for (plane, m) in image.chunks_exact(48).zip(mean) {
        assert!(plane[32..].iter().all(|&v| v == -m), "rows 4 and 5 are padding");
        assert!(plane[..32].iter().any(|&v| v != -m));
    }

    // Mapillary has only the 7-class table; an index beyond its 66 classes names the file.
    let msg = err_text(dataset::open(&spec("mapillary", root, "val", (8, 6), 19)));
    assert!(msg.contains("Mapillary class indices: no table for 19 classes"), "{msg}");
    write_palette8(&root.join("validation/labels/c.png"), 2, 1, &[13, 66]);
    let ds = dataset::open(&spec("mapillary", root, "val", (8, 6), 7)).unwrap();
    let msg = err_text(ds.get(0));
    assert!(msg.contains("validation/labels/c.png") && msg.contains("66 (1 px)"), "{msg}");
    // A split that is not there names its folder.
    let msg = err_text(dataset::open(&spec("mapillary", root, "testing", (8, 6), 7)));
    assert!(msg.contains("testing/images"), "{msg}");
    // The v2.0 download: the v1.2 labels (66 classes) in <split>/v1.2/labels.
    let v2 = root.join("v2");
    std::fs::create_dir_all(v2.join("validation/v2.0/labels")).unwrap();
    let (_, ids) = mapillary_item(&v2, "validation", "d", (8, 6), 7);
    std::fs::create_dir(v2.join("validation/v1.2")).unwrap();
    std::fs::rename(v2.join("validation/labels"), v2.join("validation/v1.2/labels")).unwrap();
    let ds = dataset::open(&spec("mapillary", &v2, "val", (8, 6), 7)).unwrap();
    assert_eq!(label_vec(&ds.get(0).unwrap().label.unwrap()), mapped(&ids, &MAP7));
}

#[test]
fn mapillary_sizes_truncate_as_dada_does() {
    use advent::dataset::layout::{fitted_size, padded_size};
    // Python: (1024, int(1080 * (1024 / 1920))) = (1024, 576); 4032x3024 is 4:3 already:
    // int(4032 * (768 / 3024)) = 1024; a 4:3 target from 1920x1080 pads to
    // int(1920 / (1024 / 768)) = 1440; 24x32 pads to int((32 / 24) * 32) = 42 wide.
    assert_eq!(fitted_size((1920, 1080), (1024, 768)), (1024, 576));
    assert_eq!(fitted_size((4032, 3024), (1024, 768)), (1024, 768));
    assert_eq!(fitted_size((3024, 4032), (1024, 768)), (576, 768));
    assert_eq!(padded_size((1920, 1080), (1024, 768)), (1920, 1440));
    assert_eq!(padded_size((24, 32), (32, 24)), (42, 32));
    assert_eq!(padded_size((4032, 3024), (1024, 768)), (4032, 3024));
    // A sliver never becomes empty.
    assert_eq!(fitted_size((10_000, 1), (1024, 768)), (1024, 1));
}

// ---------------------------------------------------------------------------------------
// Cityscapes and Foggy Cityscapes

/// `leftImg8bit/<split>/<city>/<city>_000000_00000k_leftImg8bit.png` with labels, plus the
/// other gtFine files that must be ignored. Returns (name, rgb, ids) in sorted order.
fn cityscapes_tree(root: &Path, split: &str, w: u32, h: u32) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for (k, (city, frame)) in [("zurich", 3), ("aachen", 19), ("aachen", 7)].iter().enumerate() {
        let stem = format!("{city}_000000_{frame:06}");
        let rel = format!("{city}/{stem}_leftImg8bit.png");
        let px = write_rgb(&root.join("leftImg8bit").join(split).join(&rel), w, h, k as u8 * 50);
        let ids = cityscapes_ids(w, h, k as u32 * 3);
        let gt = root.join("gtFine").join(split).join(city);
        write_gray8(&gt.join(format!("{stem}_gtFine_labelIds.png")), w, h, &ids);
        write_gray8(&gt.join(format!("{stem}_gtFine_instanceIds.png")), w, h, &[0; 48]);
        write_rgb(&gt.join(format!("{stem}_gtFine_color.png")), w, h, 1);
        out.push((rel, px, ids));
    }
    std::fs::write(root.join("leftImg8bit").join(split).join(".DS_Store"), "x").unwrap();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn cityscapes_layout_19_and_16_classes_and_target_without_labels() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, h) = (8, 6);
    let items = cityscapes_tree(root, "val", w, h);
    let ds = dataset::open(&spec("cityscapes", root, "val", (w, h), 19)).unwrap();
    assert_eq!(ds.len(), 3);
    for (i, (rel, px, ids)) in items.iter().enumerate() {
        let s = ds.get(i).unwrap();
        assert_eq!(s.name, Path::new(rel).file_stem().unwrap().to_str().unwrap());
        assert_eq!(image_vec(&s.image), expected_input(px));
        assert_eq!(label_vec(&s.label.unwrap()), mapped(ids, &CS19));
    }
    assert_eq!(ds.get(0).unwrap().name, "aachen_000000_000007_leftImg8bit");
    let ds = dataset::open(&spec("cityscapes", root, "val", (w, h), 16)).unwrap();
    assert_eq!(label_vec(&ds.get(2).unwrap().label.unwrap()), mapped(&items[2].2, &CS16));

    // The reference's list format, relative to leftImg8bit/<split>.
    let list = root.join("val.txt");
    std::fs::write(&list, "zurich/zurich_000000_000003_leftImg8bit.png\n").unwrap();
    let mut sp = spec("cityscapes", root, "val", (w, h), 19);
    sp.list = Some(list);
    let ds = dataset::open(&sp).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.get(0).unwrap().name, "zurich_000000_000003_leftImg8bit");

    // As a target: no labels needed (none on disk for train).
    cityscapes_tree(root, "train", w, h);
    std::fs::remove_dir_all(root.join("gtFine/train")).unwrap();
    let mut sp = spec("cityscapes", root, "train", (w / 2, h / 2), 19);
    let msg = err_text(dataset::open(&sp));
    assert!(msg.contains("without a label file") && msg.contains("gtFine/train/aachen"), "{msg}");
    sp.labels = false;
    let ds = dataset::open(&sp).unwrap();
    let s = ds.get(1).unwrap();
    assert!(s.label.is_none());
    assert_eq!(s.image.size(), vec![3, 3, 4]);
    // Unknown split: the folder named.
    let msg = err_text(dataset::open(&spec("cityscapes", root, "test", (w, h), 19)));
    assert!(msg.contains("leftImg8bit/test"), "{msg}");
}

/// `images`: a folder of one's own, unlabelled (an extension: the reference has only its
/// four datasets). Every .png/.jpg/.jpeg below the root, any case, subfolders included, in
/// name order; hidden and other files skipped; a target only.
#[test]
fn a_folder_of_images_is_an_unlabelled_target() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, h) = (8, 6);
    let a = write_rgb(&root.join("a.png"), w, h, 1);
    let b = write_rgb(&root.join("sub/deeper/b.PNG"), w, h, 2);
    let jpg = image::RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]));
    std::fs::create_dir_all(root.join("sub")).unwrap();
    jpg.save(root.join("sub/c.jpeg")).unwrap();
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    write_rgb(&root.join(".hidden.png"), w, h, 3);
    write_rgb(&root.join(".cache/d.png"), w, h, 4);

    let mut sp = spec("images", root, "ignored", (w, h), 19);
    sp.labels = false;
    let ds = dataset::open(&sp).unwrap();
    assert_eq!(ds.len(), 3);
    let names: Vec<String> = (0..3).map(|i| ds.get(i).unwrap().name).collect();
    assert_eq!(names, ["a", "c", "b"]); // by path: a.png, sub/c.jpeg, sub/deeper/b.PNG
    let s = ds.get(0).unwrap();
    assert!(s.label.is_none());
    assert_eq!(image_vec(&s.image), expected_input(&a));
    assert_eq!(image_vec(&ds.get(2).unwrap().image), expected_input(&b));
    let c = image_vec(&ds.get(1).unwrap().image);
    // A uniform JPEG stays near uniform (JPEG rounds): BGR minus the mean, by hand.
    let n = (w * h) as usize;
    for (ch, want) in [30.0 - 104.00698793, 20.0 - 116.66876762, 10.0 - 122.67891434].into_iter().enumerate() {
        assert!(c[ch * n..(ch + 1) * n].iter().all(|v| (v - want as f32).abs() <= 2.0), "channel {ch}");
    }

    // Resized like every dataset, and restricted by a list relative to the root.
    let list = root.join("list.txt");
    std::fs::write(&list, "sub/deeper/b.PNG\na.png\n").unwrap();
    sp.list = Some(list);
    sp.size = (w / 2, h / 2);
    let ds = dataset::open(&sp).unwrap();
    assert_eq!((ds.len(), ds.get(0).unwrap().name.as_str()), (2, "b"));
    assert_eq!(ds.get(1).unwrap().image.size(), vec![3, 3, 4]);

    // Never with labels: a source, or an evaluation set.
    sp.labels = true;
    let msg = err_text(dataset::open(&sp));
    assert!(msg.contains("images") && msg.contains("no labels") && msg.contains("target"), "{msg}");
    // An empty folder is named.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut sp = spec("images", &empty, "", (w, h), 19);
    sp.labels = false;
    let msg = err_text(dataset::open(&sp));
    assert!(msg.contains("no images") && msg.contains("empty"), "{msg}");
    // `advent data check` reads the images, no labels.
    let check = Check::new(
        dataset::layout(&spec("images", root, "", (w, h), 19), SynthiaLabels::Auto).unwrap(),
        None,
        19,
        true,
    )
    .unwrap();
    let report = check.run(&|| {});
    assert_eq!((report.images, report.labels_checked, report.problems.len()), (3, false, 0));
}

#[test]
fn foggy_cityscapes_picks_beta_and_reads_gtfine() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, h) = (4, 4);
    let mut by_beta = Vec::new();
    for (k, beta) in ["0.005", "0.01", "0.02"].iter().enumerate() {
        let p =
            root.join(format!("leftImg8bit_foggy/val/lindau/lindau_000001_000019_leftImg8bit_foggy_beta_{beta}.png"));
        by_beta.push(write_rgb(&p, w, h, 60 * k as u8));
    }
    let ids = cityscapes_ids(w, h, 5);
    write_gray8(&root.join("gtFine/val/lindau/lindau_000001_000019_gtFine_labelIds.png"), w, h, &ids);
    for (k, beta) in [0.005, 0.01, 0.02].into_iter().enumerate() {
        let mut sp = spec("foggy-cityscapes", root, "val", (w, h), 19);
        sp.foggy_beta = beta;
        let ds = dataset::open(&sp).unwrap();
        assert_eq!(ds.len(), 1);
        let s = ds.get(0).unwrap();
        assert_eq!(image_vec(&s.image), expected_input(&by_beta[k]), "beta {beta}");
        assert_eq!(label_vec(&s.label.unwrap()), mapped(&ids, &CS19));
    }
    // A Cityscapes list (clear names) stands for the foggy files.
    let list = root.join("val.txt");
    std::fs::write(&list, "lindau/lindau_000001_000019_leftImg8bit.png\n").unwrap();
    let mut sp = spec("foggy-cityscapes", root, "val", (w, h), 19);
    sp.foggy_beta = 0.01;
    sp.list = Some(list);
    let s = dataset::open(&sp).unwrap().get(0).unwrap();
    assert_eq!(s.name, "lindau_000001_000019_leftImg8bit_foggy_beta_0.01");
    assert_eq!(image_vec(&s.image), expected_input(&by_beta[1]));
}

// ---------------------------------------------------------------------------------------
// Broken files: the loader's errors and `data check`'s problems name them.

#[test]
fn problems_are_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, h) = (8, 6);
    let img = |n: &str| root.join("images").join(n);
    let lab = |n: &str| root.join("labels").join(n);
    let good_ids = cityscapes_ids(w, h, 0);
    // 00001: good.
    write_rgb(&img("00001.png"), w, h, 0);
    write_palette8(&lab("00001.png"), w, h, &good_ids);
    // 00002: corrupt image (a PNG signature, then garbage).
    let mut corrupt = b"\x89PNG\r\n\x1a\n".to_vec();
    corrupt.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    std::fs::write(img("00002.png"), corrupt).unwrap();
    write_palette8(&lab("00002.png"), w, h, &good_ids);
    // 00003: truncated image; its label is truncated too.
    write_rgb(&img("00003.png"), 64, 48, 3);
    let bytes = std::fs::read(img("00003.png")).unwrap();
    std::fs::write(img("00003.png"), &bytes[..bytes.len() / 2]).unwrap();
    write_palette8(&lab("00003.png"), 64, 48, &vec![7; 64 * 48]);
    let bytes = std::fs::read(lab("00003.png")).unwrap();
    std::fs::write(lab("00003.png"), &bytes[..bytes.len() - 30]).unwrap();
    // 00004: label of the wrong size.
    write_rgb(&img("00004.png"), w, h, 4);
    write_palette8(&lab("00004.png"), w + 1, h, &vec![7; ((w + 1) * h) as usize]);
    // 00005: image without label.
    write_rgb(&img("00005.png"), w, h, 5);
    // 00006: unknown label ids (34, 200).
    write_rgb(&img("00006.png"), w, h, 6);
    let mut unknown = good_ids.clone();
    unknown[3] = 34;
    unknown[4] = 200;
    unknown[5] = 200;
    write_palette8(&lab("00006.png"), w, h, &unknown);
    // 00007: wrong bit depth (16-bit greyscale).
    write_rgb(&img("00007.png"), w, h, 7);
    write_png(
        &lab("00007.png"),
        (w, h),
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &vec![0; (w * h * 2) as usize],
        None,
    );

    let layout = || dataset::layout_of("gta5", root, "all", 0.02, SynthiaLabels::Auto).unwrap();
    let check = Check::new(layout(), None, 19, true).unwrap();
    assert_eq!(check.len(), 7);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let report = check.run(&|| {
        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    assert_eq!(done.into_inner(), 7);
    let found: Vec<(PathBuf, ProblemKind)> = report.problems.iter().map(|p| (p.path.clone(), p.kind)).collect();
    for p in &report.problems {
        eprintln!("{p}");
    }
    assert_eq!(
        found,
        vec![
            (img("00002.png"), ProblemKind::UnreadableImage),
            (img("00003.png"), ProblemKind::UnreadableImage),
            (lab("00003.png"), ProblemKind::UnreadableLabel),
            (lab("00004.png"), ProblemKind::SizeMismatch),
            (lab("00005.png"), ProblemKind::MissingLabel),
            (lab("00006.png"), ProblemKind::UnknownIds),
            (lab("00007.png"), ProblemKind::WrongBitDepth),
        ]
    );
    let unknown_detail = &report.problems[5].detail;
    assert!(unknown_detail.contains("34 (1 px), 200 (2 px)"), "{unknown_detail}");
    assert!(report.problems[6].detail.contains("16-bit greyscale"));
    assert_eq!(report.images, 7);
    assert_eq!(report.labels_read, 4); // 00001, 00002, 00004, 00006
    assert_eq!(report.image_sizes.get("8x6"), Some(&5));
    assert_eq!(report.unknown_pixels, 3);
    // Pixels per class: labels 00001 and 00002 (good ids), 00004 (all road), 00006.
    let mut want = [0u64; 19];
    let mut ignored = 0;
    for ids in [&good_ids, &good_ids, &vec![7; ((w + 1) * h) as usize], &unknown] {
        for &id in ids.iter() {
            match CS19.get(usize::from(id)) {
                Some(255) => ignored += 1,
                Some(&t) => want[usize::from(t)] += 1,
                None => {}
            }
        }
    }
    let got: Vec<u64> = report.class_pixels.iter().map(|c| c.pixels).collect();
    assert_eq!(got, want);
    assert_eq!(report.ignored_pixels, ignored);
    assert_eq!(report.class_pixels[6].name, "traffic light");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["problems"][4]["kind"], "missing-label");

    // Loading the same files: each error names its file.
    std::fs::remove_file(img("00005.png")).unwrap(); // else opening fails on it
    let ds = dataset::open(&spec("gta5", root, "all", (w, h), 19)).unwrap();
    assert!(ds.get(0).is_ok());
    assert!(ds.get(3).is_ok(), "different sizes load, as in the reference");
    for (i, file) in [(1, img("00002.png")), (2, img("00003.png")), (4, lab("00006.png")), (5, lab("00007.png"))] {
        let msg = err_text(ds.get(i));
        assert!(msg.contains(&file.display().to_string()), "{msg}");
    }
    // A list naming a missing file: a problem for `check`.
    let list = root.join("list.txt");
    std::fs::write(&list, "00001.png\n00009.png\n").unwrap();
    let report = Check::new(layout(), Some(&list), 19, true).unwrap().run(&|| {});
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert_eq!(report.problems[0].path, img("00009.png"));
    assert_eq!(report.problems[0].kind, ProblemKind::MissingImage);
    assert_eq!(report.problems[1].kind, ProblemKind::MissingLabel);
}

#[test]
fn loader_over_a_real_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let items = cityscapes_tree(root, "val", 8, 6);
    let ds = dataset::open(&spec("cityscapes", root, "val", (4, 3), 19)).unwrap();
    let cfg = LoaderConfig { batch_size: 2, shuffle: true, seed: 1, workers: 2, prefetch: 4, pin_memory: false };
    let mut l = Loader::new(ds.clone(), cfg, OrderState::default()).unwrap();
    let b = l.next_batch().unwrap();
    assert_eq!(b.images.size(), vec![2, 3, 3, 4]);
    assert_eq!(b.labels.unwrap().size(), vec![2, 3, 4]);
    let seq: Vec<String> = sequential(ds, 2, 2).map(|r| r.unwrap().1.name).collect();
    let want: Vec<String> =
        items.iter().map(|(rel, _, _)| Path::new(rel).file_stem().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(seq, want);
}

// ---------------------------------------------------------------------------------------
// The real Cityscapes frames.

fn shared_data() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cityscapes-mini");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("note: {} absent, real-frame checks skipped", p.display());
        None
    }
}

#[test]
fn real_val_frame_train_ids_derived_by_hand() {
    let Some(root) = shared_data() else { return };
    let label_file = root.join("gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png");
    // Decoded by the `image` crate, mapped with the literal table above.
    let ids = ::image::open(&label_file).unwrap();
    let ids = ids.as_luma8().expect("labelIds are 8-bit greyscale");
    assert_eq!(ids.dimensions(), (256, 128));
    for (n, table) in [(19, &CS19), (16, &CS16)] {
        let mut want = vec![0u64; n];
        let mut ignored = 0;
        for &id in ids.as_raw() {
            assert!(usize::from(id) < 34, "label id {id}");
            match table[usize::from(id)] {
                255 => ignored += 1,
                t => want[usize::from(t)] += 1,
            }
        }
        eprintln!("{n} classes: {want:?}, ignored {ignored}");
        assert!(want.iter().filter(|&&c| c > 0).count() >= 5, "a street scene");

        let sp = spec("cityscapes", &root, "val", (256, 128), n);
        let ds = dataset::open(&sp).unwrap();
        assert_eq!(ds.len(), 1);
        let s = ds.get(0).unwrap();
        assert_eq!(s.name, "frankfurt_000000_000294_leftImg8bit");
        let label = s.label.unwrap();
        let got: Vec<i64> = Vec::try_from(label.flatten(0, -1).bincount::<Tensor>(None, 256)).unwrap();
        assert_eq!(got[..n].iter().map(|&c| c as u64).collect::<Vec<_>>(), want);
        assert_eq!(got[255] as u64, ignored);
        assert_eq!(got[n..255].iter().sum::<i64>(), 0);

        let layout = dataset::layout(&sp, SynthiaLabels::Auto).unwrap();
        let report = Check::new(layout, None, n, true).unwrap().run(&|| {});
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let counts: Vec<u64> = report.class_pixels.iter().map(|c| c.pixels).collect();
        assert_eq!(counts, want);
        assert_eq!(report.ignored_pixels, ignored);
        assert_eq!(report.image_sizes.get("256x128"), Some(&1));
    }
    // Evaluation: labels at native size while the image is resized.
    let options = OpenOptions { label_size: LabelSize::Native, ..Default::default() };
    let ds = dataset::open_with(&spec("cityscapes", &root, "val", (128, 64), 19), &options).unwrap();
    let s = ds.get(0).unwrap();
    assert_eq!(s.image.size(), vec![3, 64, 128]);
    assert_eq!(s.label.unwrap().size(), vec![128, 256]);
}

#[test]
fn real_train_frames_as_target() {
    let Some(root) = shared_data() else { return };
    let mut sp = spec("cityscapes", &root, "train", (1024, 512), 19);
    // gtFine/train is not there: with labels the set does not open, without it does.
    let msg = err_text(dataset::open(&sp));
    assert!(msg.contains("4 image(s) without a label file"), "{msg}");
    sp.labels = false;
    let ds: Arc<dyn dataset::Dataset> = dataset::open(&sp).unwrap();
    let names: Vec<String> = sequential(ds.clone(), 2, 2).map(|r| r.unwrap().1.name).collect();
    assert_eq!(
        names,
        [
            "aachen_000001_000019_leftImg8bit",
            "cologne_000088_000019_leftImg8bit",
            "dusseldorf_000020_000019_leftImg8bit",
            "hamburg_000000_046078_leftImg8bit",
        ]
    );
    let cfg = LoaderConfig { batch_size: 2, shuffle: true, seed: 0, workers: 2, prefetch: 2, pin_memory: false };
    let b = Loader::new(ds, cfg, OrderState::default()).unwrap().next_batch().unwrap();
    assert_eq!(b.images.size(), vec![2, 3, 512, 1024]);
    assert!(b.labels.is_none());
    // BGR minus mean: values within [-mean, 255 - mean] per channel.
    let min = f64::try_from(b.images.min()).unwrap();
    let max = f64::try_from(b.images.max()).unwrap();
    assert!(min >= -IMG_MEAN_BGR[2] - 1e-3 && max <= 255.0 - IMG_MEAN_BGR[0] + 1e-3);

    let layout = dataset::layout(&sp, SynthiaLabels::Auto).unwrap();
    let report = Check::new(layout, None, 19, false).unwrap().run(&|| {});
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.image_sizes.get("2048x1024"), Some(&4));
}

// ---------------------------------------------------------------------------------------
// Speed.

/// Loading speed of GTA5-sized frames through the loader (see tools/bench/gta5_loading.py
/// for the frames and the PIL+numpy side):
/// `ADVENT_BENCH_GTA5=DIR cargo test --release -p advent --test datasets -- --ignored --nocapture bench`
#[test]
#[ignore = "timing, run by hand"]
fn bench_gta5_loading() {
    let root = PathBuf::from(std::env::var("ADVENT_BENCH_GTA5").expect("set ADVENT_BENCH_GTA5"));
    let n: usize = std::env::var("ADVENT_BENCH_N").map_or(40, |v| v.parse().unwrap());
    let ds = dataset::open(&spec("gta5", &root, "all", (1280, 720), 19)).unwrap();
    for workers in [0, 1, 2] {
        let cfg = LoaderConfig { batch_size: 1, shuffle: true, seed: 0, workers, prefetch: 4, pin_memory: false };
        let mut l = Loader::new(ds.clone(), cfg, OrderState::default()).unwrap();
        l.next_batch().unwrap(); // warm-up
        let t = std::time::Instant::now();
        for _ in 0..n {
            let b = l.next_batch().unwrap();
            assert_eq!(b.images.size(), vec![1, 3, 720, 1280]);
            assert_eq!(b.labels.unwrap().size(), vec![1, 720, 1280]);
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "GTA5 1914x1052 PNG -> 1280x720 tensors (image + label), {workers} worker(s): {:.1} images/s ({:.1} ms/image)",
            n as f64 / s,
            s * 1e3 / n as f64
        );
    }
}

/// Pseudo-labels (IntraDA's easy split): a dataset's images with train-id labels from a
/// folder, `<stem>.png`, kept as they are for any class count (no 19 → 16 reduction), 255
/// ignored, other ids an error naming the file; a folder of one's own images becomes a source.
#[test]
fn pseudo_labels_are_train_ids_from_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cs");
    let (w, h) = (8, 6);
    let items = cityscapes_tree(&root, "train", w, h);
    let labels = dir.path().join("pseudo");
    let mut written = Vec::new();
    for (k, (rel, _, _)) in items.iter().enumerate() {
        let ids: Vec<u8> = (0..w * h).map(|i| if i % 7 == 0 { 255 } else { ((i + k as u32) % 16) as u8 }).collect();
        let stem = Path::new(rel).file_stem().unwrap().to_str().unwrap();
        write_gray8(&labels.join(format!("{stem}.png")), w, h, &ids);
        written.push(ids);
    }
    let mut sp = spec("cityscapes", &root, "train", (w, h), 16);
    sp.pseudo_labels = Some(labels.clone());
    let ds = dataset::open(&sp).unwrap();
    for (i, ids) in written.iter().enumerate() {
        let want: Vec<i64> = ids.iter().map(|&v| i64::from(v)).collect();
        assert_eq!(label_vec(&ds.get(i).unwrap().label.unwrap()), want);
    }
    // 7 classes: ids 7..=15 are not train ids of 7 classes.
    sp.num_classes = 7;
    let msg = err_text(dataset::open(&sp).unwrap().get(0));
    assert!(msg.contains("pseudo/aachen_000000_000007_leftImg8bit.png") && msg.contains("0..=6 or 255"), "{msg}");
    // A missing pseudo-label is named when the dataset opens.
    std::fs::remove_file(labels.join("zurich_000000_000003_leftImg8bit.png")).unwrap();
    sp.num_classes = 16;
    let msg = err_text(dataset::open(&sp));
    assert!(
        msg.contains("without a label file") && msg.contains("pseudo/zurich_000000_000003_leftImg8bit.png"),
        "{msg}"
    );
    // A folder of images with pseudo-labels.
    let own = dir.path().join("own");
    let px = write_rgb(&own.join("day1/frame_01.png"), w, h, 4);
    let mut sp = spec("images", &own, "", (w, h), 16);
    sp.pseudo_labels = Some(labels.clone());
    write_gray8(&labels.join("frame_01.png"), w, h, &written[0]);
    let s = dataset::open(&sp).unwrap().get(0).unwrap();
    assert_eq!(image_vec(&s.image), expected_input(&px));
    assert_eq!(label_vec(&s.label.unwrap()), written[0].iter().map(|&v| i64::from(v)).collect::<Vec<_>>());
}
