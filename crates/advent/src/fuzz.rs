//! Entry points for fuzzing the readers of untrusted files: checkpoints (`.pth` in both
//! PyTorch formats, through our pickle reader), images and label PNGs, and configs.
//!
//! `fuzz/` runs them under cargo-fuzz (libFuzzer); `tests/fuzz_corpus.rs` runs the kept
//! corpora through them in the ordinary test suite. Each returns normally for any input:
//! errors are fine, a panic or an abort is a bug. Where a reader succeeds, the result is
//! checked for consistency (sizes that match the data).

use crate::config::Config;
use crate::dataset::label::{self, LabelEncoding, Samples};

/// A checkpoint file's bytes.
pub fn pth(data: &[u8]) {
    if let Ok(dict) = crate::weights::pth::read(data) {
        for (name, t) in dict.iter() {
            assert!(!name.is_empty() || dict.len() == 1, "empty tensor name");
            let numel: i64 = t.size().iter().product();
            assert_eq!(numel as usize, t.numel(), "{name}: shape and element count disagree");
        }
    }
}

/// An image or a label file: the first byte chooses the reader (RGB image, 8-bit label ids,
/// 16-bit SYNTHIA labels), the rest is the file.
pub fn image(data: &[u8]) {
    let Some((&selector, file)) = data.split_first() else { return };
    match selector % 3 {
        0 => {
            if let Ok(img) = crate::image::decode_rgb(file) {
                let (w, h) = img.dimensions();
                assert_eq!(img.as_raw().len(), 3 * w as usize * h as usize);
            }
        }
        encoding => {
            let encoding = if encoding == 1 { LabelEncoding::Ids8 } else { LabelEncoding::Channel0Of16 };
            if let Ok(raw) = label::decode_label(file, encoding) {
                let len = match &raw.samples {
                    Samples::U8(s) => s.len(),
                    Samples::U16(s) => s.len(),
                };
                assert_eq!(len, raw.width as usize * raw.height as usize, "samples and size disagree");
                let counts = raw.id_counts();
                assert_eq!(counts.iter().sum::<u64>() as usize, len);
            }
        }
    }
}

/// A config: TOML text, then after a NUL byte any `--set key=value` overrides, one a line.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (toml, overrides) = text.split_once('\0').unwrap_or((text, ""));
    let overrides: Vec<String> = overrides.lines().map(String::from).collect();
    if let Ok(config) = Config::parse(toml, &overrides) {
        // What is accepted can be written back and read again to the same settings.
        let again = Config::parse(&config.to_toml().expect("a valid config serialises"), &[])
            .expect("a saved config reads back");
        assert_eq!(again.to_toml().unwrap(), config.to_toml().unwrap());
    }
}
