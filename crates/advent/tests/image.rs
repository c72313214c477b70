//! Image reading, resizing and colour maps against Pillow and matplotlib.
//!
//! References come from tools/fixtures/make_image_fixtures.py (Pillow 13.0.0, matplotlib
//! 3.11.2), never from this crate. Resizes must be bit-exact; the real Cityscapes frames
//! in `../shared/data` (skipped with a note when absent) are compared by FNV-1a 64 hash of
//! PIL's output bytes.

use advent::image::{colormap, read_rgb, resize_bicubic, resize_nearest, RgbImage};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/image").join(rel)
}

fn json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

fn shared_data() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if p.join("cityscapes-mini").is_dir() {
        Some(p)
    } else {
        eprintln!("note: {} absent, real-frame checks skipped", p.display());
        None
    }
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// A PIL-written reference, decoded by the `image` crate directly (not by our reader).
fn reference_rgb(path: &Path) -> RgbImage {
    match ::image::open(path).unwrap() {
        ::image::DynamicImage::ImageRgb8(i) => i,
        other => panic!("{}: expected 8-bit RGB, got {:?}", path.display(), other.color()),
    }
}

fn sizes(v: &Value) -> Vec<(u32, u32)> {
    v.as_array().unwrap().iter().map(|s| (s[0].as_u64().unwrap() as u32, s[1].as_u64().unwrap() as u32)).collect()
}

/// `(max |a - b|, number of differing elements)`.
fn difference<T: Copy + Into<i64>>(a: &[T], b: &[T]) -> (i64, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0, 0), |(m, n), (&x, &y)| {
        let d = (x.into() - y.into()).abs();
        (m.max(d), n + usize::from(d != 0))
    })
}

fn assert_same<T: Copy + Into<i64>>(what: &str, ours: &[T], pil: &[T]) {
    let (max, count) = difference(ours, pil);
    assert!(max == 0, "{what}: differs from PIL in {count} samples, max |diff| {max}");
}

#[test]
fn bicubic_matches_pillow() {
    let src = reference_rgb(&fixture("rgb_67x41.png"));
    let manifest = json("manifest.json");
    let all = sizes(&manifest["bicubic_sizes"]);
    assert!(all.len() >= 10);
    for (w, h) in all {
        let pil = reference_rgb(&fixture(&format!("bicubic_{w}x{h}.png")));
        let ours = resize_bicubic(&src, w, h);
        assert_eq!(ours.dimensions(), (w, h));
        assert_same(&format!("bicubic 67x41 -> {w}x{h}"), ours.as_raw(), pil.as_raw());
    }
}

#[test]
fn nearest_matches_pillow_for_8_and_16_bit_labels() {
    let manifest = json("manifest.json");
    let label8 = ::image::open(fixture("label8_38x22.png")).unwrap().into_luma8();
    let label16 = ::image::open(fixture("label16_38x22.png")).unwrap().into_luma16();
    let (w0, h0) = label8.dimensions();
    let all = sizes(&manifest["nearest_sizes"]);
    // Sizes where Pillow's 8-bit and 16-bit rules pick different pixels must be covered.
    assert!(!sizes(&manifest["nearest_rules_differ"]).is_empty());
    for (w, h) in all {
        let pil8 = ::image::open(fixture(&format!("nearest8_{w}x{h}.png"))).unwrap().into_luma8();
        let ours8 = resize_nearest(label8.as_raw(), w0, h0, w, h);
        assert_same(&format!("nearest u8 -> {w}x{h}"), &ours8, pil8.as_raw());
        let pil16 = ::image::open(fixture(&format!("nearest16_{w}x{h}.png"))).unwrap().into_luma16();
        let ours16 = resize_nearest(label16.as_raw(), w0, h0, w, h);
        assert_same(&format!("nearest u16 -> {w}x{h}"), &ours16, pil16.as_raw());
    }
}

#[test]
fn read_rgb_matches_pil_convert_rgb_for_every_png_kind() {
    let manifest = json("manifest.json");
    let modes = manifest["modes"].as_object().unwrap();
    assert!(modes.len() >= 20);
    for (name, info) in modes {
        let ours =
            read_rgb(&fixture(&format!("modes/{name}.png"))).unwrap_or_else(|e| panic!("{name} ({info}): {e:#}"));
        let pil = reference_rgb(&fixture(&format!("modes/{name}.rgb.png")));
        assert_eq!(ours.dimensions(), pil.dimensions(), "{name}");
        assert_same(&format!("{name} ({info})"), ours.as_raw(), pil.as_raw());
    }
}

/// JPEGs decode to PIL's bytes exactly (libjpeg-turbo's decoder, as PIL's): Mapillary's
/// images are JPEGs. The fixtures (make_image_fixtures.py, make_jpeg_fixtures.py) are
/// baseline and progressive, 4:2:0, 4:2:2 and 4:4:4 chroma, greyscale, restart intervals.
#[test]
fn read_rgb_decodes_jpegs_as_pil() {
    let mut names: Vec<String> = std::fs::read_dir(fixture("jpeg"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".jpg").map(String::from))
        .collect();
    names.sort();
    assert!(names.len() >= 9, "{names:?}");
    for name in names {
        let ours = read_rgb(&fixture(&format!("jpeg/{name}.jpg"))).unwrap();
        let pil = reference_rgb(&fixture(&format!("jpeg/{name}.rgb.png")));
        assert_eq!(ours.dimensions(), pil.dimensions(), "{name}");
        assert_same(&format!("jpeg {name}"), ours.as_raw(), pil.as_raw());
    }
}

#[test]
fn jet_matches_matplotlib() {
    let jet = json("jet.json");
    for (i, rgb) in jet["lut"].as_array().unwrap().iter().enumerate() {
        let want: Vec<u8> = rgb.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
        // Entry i is hit by v = i / 256 exactly.
        assert_eq!(colormap::jet(i as f32 / 256.0).to_vec(), want, "lut[{i}]");
    }
    let bits = jet["probes_f32_bits"].as_array().unwrap();
    let colours = jet["probes_rgb"].as_array().unwrap();
    assert_eq!(bits.len(), colours.len());
    for (b, rgb) in bits.iter().zip(colours) {
        let v = f32::from_bits(b.as_u64().unwrap() as u32);
        let want: Vec<u8> = rgb.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
        assert_eq!(colormap::jet(v).to_vec(), want, "jet({v:?})");
    }
    let values: Vec<f32> = bits.iter().map(|b| f32::from_bits(b.as_u64().unwrap() as u32)).collect();
    let img = colormap::heatmap(&values, values.len() as u32, 1);
    for (p, v) in img.pixels().zip(&values) {
        assert_eq!(p.0, colormap::jet(*v));
    }
}

#[test]
fn read_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("rgb_67x41.png")).unwrap();
    let cases: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("missing.png", None),
        ("empty.png", Some(Vec::new())),
        ("truncated.png", Some(good[..good.len() / 2].to_vec())),
        ("header_only.png", Some(good[..40].to_vec())),
        ("text.png", Some(b"this is not an image\n".to_vec())),
        ("fake.jpg", Some(b"\xff\xd8\xff\xe0 not really".to_vec())),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        if let Some(b) = bytes {
            std::fs::write(&path, b).unwrap();
        }
        let err = read_rgb(&path).expect_err(name);
        let msg = format!("{err:#}");
        assert!(msg.contains(&path.display().to_string()), "{name}: {msg}");
        eprintln!("{name}: {msg}");
    }
}

/// Where `make_image_fixtures.py --dump DIR` left PIL's raw outputs, if anywhere.
fn pil_dump() -> Option<PathBuf> {
    std::env::var_os("ADVENT_PIL_DUMP").map(PathBuf::from)
}

/// Compares by hash; on a mismatch (or always, with a dump of PIL's outputs) reports the
/// exact difference. Returns whether it matched.
fn check_hash(what: &str, ours: &[u8], want: &Value, dump_name: Option<String>) -> bool {
    let want = want.as_str().unwrap_or_else(|| panic!("{what}: no reference hash"));
    let ok = fnv1a64(ours) == want;
    let pil = dump_name.zip(pil_dump()).and_then(|(n, d)| std::fs::read(d.join(n)).ok());
    match pil {
        Some(pil) => {
            let (max, count) = difference(ours, &pil);
            eprintln!("{what}: max |diff| {max}, {count} differing bytes (hash match: {ok})");
        }
        None if !ok => eprintln!(
            "{what}: hash differs from PIL's; rerun with ADVENT_PIL_DUMP set (see \
             tools/fixtures/make_image_fixtures.py --dump) for the exact difference"
        ),
        None => {}
    }
    ok
}

#[test]
fn real_frames_match_pillow() {
    let Some(data) = shared_data() else { return };
    let refs = json("real_frames.json");
    let mut failures = Vec::new();
    for (rel, e) in refs["train_frames"].as_object().unwrap() {
        let img = read_rgb(&data.join(rel)).unwrap();
        let stem = Path::new(rel).file_stem().unwrap().to_string_lossy().into_owned();
        if !check_hash(&format!("{stem} decoded"), img.as_raw(), &e["decoded"], None) {
            failures.push(format!("{stem} decoded"));
        }
        for (w, h) in [(1024, 512), (1280, 720), (1914, 1052)] {
            let key = format!("bicubic_{w}x{h}");
            let ours = resize_bicubic(&img, w, h);
            if !check_hash(&format!("{stem} {key}"), ours.as_raw(), &e[&key], Some(format!("{stem}.{key}.rgb"))) {
                failures.push(format!("{stem} {key}"));
            }
            if (w, h) == (1914, 1052) {
                let key = "bicubic_1914x1052_then_1280x720";
                let twice = resize_bicubic(&ours, 1280, 720);
                if !check_hash(&format!("{stem} {key}"), twice.as_raw(), &e[key], Some(format!("{stem}.{key}.rgb"))) {
                    failures.push(format!("{stem} {key}"));
                }
            }
        }
    }
    for (rel, e) in refs["val"].as_object().unwrap() {
        let path = data.join(rel);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if rel.contains("leftImg8bit") {
            let img = read_rgb(&path).unwrap();
            let mut outputs = vec![("decoded".to_string(), img.clone())];
            for (w, h) in [(1024, 512), (97, 61)] {
                outputs.push((format!("bicubic_{w}x{h}"), resize_bicubic(&img, w, h)));
            }
            for (key, out) in outputs {
                if !check_hash(&format!("{name} {key}"), out.as_raw(), &e[&key], None) {
                    failures.push(format!("{name} {key}"));
                }
            }
            continue;
        }
        // Labels: PIL keeps the mode (L for label ids, I;16 for instance ids).
        let dynamic = ::image::open(&path).unwrap();
        let (w0, h0) = (dynamic.width(), dynamic.height());
        for (key, _) in e.as_object().unwrap().iter().filter(|(k, _)| k.starts_with("nearest_") || *k == "decoded") {
            let (w, h) = match key.strip_prefix("nearest_") {
                Some(s) => {
                    let (w, h) = s.split_once('x').unwrap();
                    (w.parse().unwrap(), h.parse().unwrap())
                }
                None => (w0, h0),
            };
            let bytes: Vec<u8> = match e["pil_mode"].as_str().unwrap() {
                "L" => resize_nearest(dynamic.as_luma8().unwrap().as_raw(), w0, h0, w, h),
                "I;16" => resize_nearest(dynamic.as_luma16().unwrap().as_raw(), w0, h0, w, h)
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                m => panic!("unexpected mode {m}"),
            };
            if !check_hash(&format!("{name} {key}"), &bytes, &e[key], None) {
                failures.push(format!("{name} {key}"));
            }
        }
    }
    assert!(failures.is_empty(), "differ from PIL: {failures:?}");
}

/// `cargo test --release -p advent --test image -- --ignored --nocapture bench`
#[test]
#[ignore = "timing, run by hand"]
fn bench_resize_bicubic_gta5_size() {
    let src = match shared_data() {
        Some(d) => {
            let p = d.join("cityscapes-mini/leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png");
            resize_bicubic(&read_rgb(&p).unwrap(), 1914, 1052)
        }
        None => RgbImage::from_fn(1914, 1052, |x, y| ::image::Rgb([(x * 7 + y) as u8, (x ^ y) as u8, (y * 3) as u8])),
    };
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let _ = resize_bicubic(&src, 1280, 720); // warm-up
            let n = 30;
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(resize_bicubic(std::hint::black_box(&src), 1280, 720));
            }
            let s = t.elapsed().as_secs_f64();
            println!(
                "resize_bicubic 1914x1052 -> 1280x720, {threads} thread(s): {:.2} ms/image, {:.1} images/s",
                s * 1e3 / n as f64,
                n as f64 / s
            );
        });
    }
}
