//! The fuzzing corpora (`fuzz/corpus/<target>/`) and the inputs that once crashed a reader
//! (`fuzz/regressions/<target>/`), run through the same entry points as `cargo fuzz` does
//! (see fuzz/README.md): a short smoke run in the ordinary test suite. Every input must
//! return (an error is fine); a panic fails the test and names the file.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) {
            files.extend(entries.map(|e| e.unwrap().path()));
        }
    }
    files.sort();
    files
}

fn run_all(target: &str, min_inputs: usize, f: fn(&[u8])) {
    let files = inputs(target);
    assert!(files.len() >= min_inputs, "{target}: {} inputs, expected at least {min_inputs}", files.len());
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if std::panic::catch_unwind(|| f(&data)).is_err() {
            panic!("{target}: {} makes the reader panic", file.display());
        }
    }
}

#[test]
fn checkpoint_corpus() {
    run_all("pth", 6, advent::fuzz::pth);
}

#[test]
fn image_and_label_corpus() {
    run_all("image", 30, advent::fuzz::image);
}

#[test]
fn config_corpus() {
    run_all("config", 10, advent::fuzz::config);
}

#[test]
fn a_label_header_claiming_180_gb_is_refused_before_allocating() {
    let file = inputs("image").into_iter().find(|p| p.ends_with("label16-header-claims-180GB")).unwrap();
    let bytes = std::fs::read(file).unwrap();
    let err = advent::dataset::label::decode_label(&bytes[1..], advent::dataset::label::LabelEncoding::Channel0Of16)
        .unwrap_err();
    assert!(err.to_string().contains("image too large"), "{err}");
}

#[test]
fn palettes_that_crash_the_png_crate_are_refused_as_corrupt() {
    for (name, needle) in [("rgb-palette-of-49-bytes", "PLTE"), ("rgb-trns-longer-than-palette", "tRNS")] {
        let file = inputs("image").into_iter().find(|p| p.ends_with(name)).unwrap();
        let bytes = std::fs::read(file).unwrap();
        let err = format!("{:#}", advent::image::decode_rgb(&bytes[1..]).unwrap_err());
        assert!(err.contains("corrupt PNG") && err.contains(needle), "{name}: {err}");
        let err = advent::dataset::label::decode_label(&bytes[1..], advent::dataset::label::LabelEncoding::Ids8)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{name} as a label: {err}");
    }
}

/// A corrupt JPEG that made zune-jpeg panic (the `image` crate's decoder, which read JPEGs
/// before libjpeg-turbo's did): libjpeg decodes past the damage with a warning, as PIL does.
/// The 32 rows above the damage are PIL's very bytes (FNV-1a 64 of the first 32 rows of
/// `Image.open(f).convert('RGB').tobytes()`, Pillow 13.0.0); in the damaged rows below, 21 of
/// the image's 8241 bytes differ from PIL's (libjpeg-turbo versions fill damaged data
/// differently).
#[test]
fn a_jpeg_that_panicked_zune_jpeg_decodes_as_pil() {
    let file = inputs("image").into_iter().find(|p| p.ends_with("jpeg-zune-idct-panic")).unwrap();
    let bytes = std::fs::read(file).unwrap();
    let image = advent::image::decode_rgb(&bytes[1..]).unwrap();
    assert_eq!(image.dimensions(), (67, 41));
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in &image.as_raw()[..32 * 67 * 3] {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    assert_eq!(format!("{h:016x}"), "abee9a782b29ae25");
}
