//! Label files as stored by the datasets, and their id → train-id tables.
//!
//! A label file is read as the reference reads it, `Image.open(f)` with the mode kept: the
//! sample values themselves, never colours. That matters for GTA5, whose labels are palette
//! PNGs holding Cityscapes label ids as palette indices (the `image` crate would expand
//! them to colours; the `png` crate is used here instead), and for SYNTHIA's raw
//! `GT/LABELS`, 16-bit multi-channel PNGs with the class in the first channel (which PIL
//! cannot read at all; the third-party loaders use `imageio` with FreeImage and take channel
//! 0).

use crate::classes::{COMMON_7, SYNTHIA_16_OF_19};
// A label header claiming more than this is refused before anything is allocated; the
// datasets' largest labels (SYNTHIA's 1280x760 16-bit RGBA) take 7.8 MB.
use crate::image::MAX_DECODED_BYTES;
use anyhow::{bail, Context, Result};
use std::io::Cursor;
use std::path::Path;

/// Train id of ignored pixels.
pub const IGNORE: u8 = 255;

/// How a dataset stores its label files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelEncoding {
    /// 8-bit single-channel ids: greyscale (PIL mode `L`) or palette indices (mode `P`, at
    /// any palette bit depth). Cityscapes `labelIds`, GTA5 `labels`, SYNTHIA `parsed_LABELS`.
    Ids8,
    /// 16-bit PNG whose first channel holds the class id (the others, if any, the instance):
    /// SYNTHIA's raw `GT/LABELS`.
    Channel0Of16,
}

/// Decoded label samples, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Samples {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

/// A label map as stored: raw dataset ids, before any mapping or resizing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLabel {
    /// Size in pixels.
    pub width: u32,
    pub height: u32,
    /// `width * height` raw ids, row-major.
    pub samples: Samples,
}

impl RawLabel {
    /// Count of each raw id (`counts[id]`), over ids `0..=max id present`.
    pub fn id_counts(&self) -> Vec<u64> {
        fn count<T: Copy + Into<usize>>(s: &[T], len: usize) -> Vec<u64> {
            let mut c = vec![0u64; len];
            for &v in s {
                c[v.into()] += 1;
            }
            c
        }
        let mut c = match &self.samples {
            Samples::U8(s) => count(s, 256),
            Samples::U16(s) => count(s, 65536),
        };
        let last = c.iter().rposition(|&n| n > 0).map_or(0, |i| i + 1);
        c.truncate(last);
        c
    }
}

/// Why a label file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// Not a PNG, or corrupt or truncated data.
    #[error("{0}")]
    Unreadable(String),
    /// A readable PNG of the wrong bit depth or channel layout.
    #[error("wrong bit depth or layout: {found} PNG, expected {expected}")]
    WrongFormat { found: String, expected: &'static str },
}

/// A PNG's layout in words ("8-bit palette"), for messages.
fn describe(color: png::ColorType, depth: png::BitDepth) -> String {
    let kind = match color {
        png::ColorType::Grayscale => "greyscale",
        png::ColorType::Rgb => "RGB",
        png::ColorType::Indexed => "palette",
        png::ColorType::GrayscaleAlpha => "greyscale+alpha",
        png::ColorType::Rgba => "RGBA",
    };
    format!("{}-bit {kind}", depth as u8)
}

/// Reads a label PNG in `encoding`, keeping the stored ids.
///
/// # Errors
///
/// An unreadable, corrupt or truncated file, or one whose layout is not `encoding`'s
/// (e.g. a 16-bit file where 8-bit label ids are expected: "wrong bit depth"); the message
/// names the file.
pub fn read_label(path: &Path, encoding: LabelEncoding) -> Result<RawLabel> {
    read_ids(path, encoding, "label")
}

/// [`read_label`] for a file of ids that the messages call `what` ("prediction").
pub fn read_ids(path: &Path, encoding: LabelEncoding, what: &str) -> Result<RawLabel> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))?;
    decode_label(&bytes, encoding).with_context(|| format!("decoding {what} {}", path.display()))
}

/// Decodes a label PNG held in memory (see [`read_label`]).
pub fn decode_label(bytes: &[u8], encoding: LabelEncoding) -> Result<RawLabel, LabelError> {
    if bytes.is_empty() {
        return Err(LabelError::Unreadable("the file is empty".into()));
    }
    crate::image::check_png_palette(bytes).map_err(|e| LabelError::Unreadable(e.to_string()))?;
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| LabelError::Unreadable(format!("not a readable PNG: {e}")))?;
    let info = reader.info();
    let (width, height, color, depth) = (info.width, info.height, info.color_type, info.bit_depth);
    use png::{BitDepth as D, ColorType as C};
    let wrong = |expected: &'static str| Err(LabelError::WrongFormat { found: describe(color, depth), expected });
    match (encoding, color, depth) {
        (LabelEncoding::Ids8, C::Indexed, _) | (LabelEncoding::Ids8, C::Grayscale, D::Eight) => {}
        (LabelEncoding::Ids8, _, _) => {
            return wrong("8-bit label ids (greyscale or palette)");
        }
        (LabelEncoding::Channel0Of16, C::Indexed, _)
        | (LabelEncoding::Channel0Of16, _, D::Eight)
        | (LabelEncoding::Channel0Of16, _, D::One | D::Two | D::Four) => {
            return wrong("a 16-bit PNG (SYNTHIA GT/LABELS, Cityscapes instanceIds; values in channel 0)");
        }
        (LabelEncoding::Channel0Of16, _, D::Sixteen) => {}
    }
    let size = reader
        .output_buffer_size()
        .filter(|&n| n <= MAX_DECODED_BYTES)
        .ok_or_else(|| LabelError::Unreadable(format!("image too large ({width}x{height})")))?;
    let mut buf = vec![0u8; size];
    let frame = crate::image::catch_decoder_panic(|| reader.next_frame(&mut buf))
        .ok_or_else(|| LabelError::Unreadable("corrupt PNG data (the decoder failed on it)".into()))?
        .map_err(|e| LabelError::Unreadable(format!("corrupt or truncated PNG data: {e}")))?;
    let (w, h) = (width as usize, height as usize);
    let line = frame.line_size;
    let samples = match depth {
        D::Sixteen => {
            let channels = color.samples();
            let mut out = Vec::with_capacity(w * h);
            for row in buf.chunks_exact(line).take(h) {
                out.extend(row.chunks_exact(2 * channels).take(w).map(|p| u16::from_be_bytes([p[0], p[1]])));
            }
            Samples::U16(out)
        }
        D::Eight if line == w => {
            // One sample per pixel and no row padding: the decoded rows are the samples.
            buf.truncate(w * h);
            Samples::U8(buf)
        }
        D::Eight => {
            let mut out = Vec::with_capacity(w * h);
            for row in buf.chunks_exact(line).take(h) {
                out.extend_from_slice(&row[..w]);
            }
            Samples::U8(out)
        }
        D::One | D::Two | D::Four => {
            // Packed palette indices, most significant bits first (PIL unpacks them to `P`).
            let bits = depth as usize;
            let mask = (1u8 << bits) - 1;
            let mut out = Vec::with_capacity(w * h);
            for row in buf.chunks_exact(line).take(h) {
                out.extend((0..w).map(|x| {
                    let bit = x * bits;
                    (row[bit / 8] >> (8 - bits - bit % 8)) & mask
                }));
            }
            Samples::U8(out)
        }
    };
    Ok(RawLabel { width, height, samples })
}

/// The class sets a network is trained on: Cityscapes' 19, the 16 of SYNTHIA → Cityscapes,
/// or the 7 of SYNTHIA → Mapillary.
pub fn check_num_classes(num_classes: usize) -> Result<()> {
    if ![19, SYNTHIA_16_OF_19.len(), COMMON_7.len()].contains(&num_classes) {
        bail!(
            "{num_classes} classes: the datasets have train ids for 19 (Cityscapes), 16 (SYNTHIA → Cityscapes) \
             or 7 (SYNTHIA → Mapillary) classes"
        );
    }
    Ok(())
}

/// A dataset's id → train-id tables.
///
/// The 19 Cityscapes classes are stated once; the 16-class set (SYNTHIA protocol) is derived
/// from them through [`SYNTHIA_16_OF_19`] (terrain, truck and train become ignored). The
/// 7-class set of SYNTHIA → Mapillary ([`COMMON_7`]) has its own table, because DADA's
/// tables are not a reduction of the 19 classes (its SYNTHIA table drops wall, rider,
/// motorcycle and others, and keeps lane markings as `flat`).
#[derive(Debug, Clone, Copy)]
pub struct IdTable {
    /// What the ids are, for messages ("Cityscapes label ids").
    pub name: &'static str,
    /// `to_train19[id]`: the 19-class train id of raw id `id`, [`IGNORE`] for ids the
    /// dataset defines but the protocol ignores; `None` for a dataset without 19-class
    /// labels (Mapillary). Ids `>= known()` are not ids of this dataset at all: reading one
    /// is an error.
    pub to_train19: Option<&'static [u8]>,
    /// `to_train7[id]`: the [`COMMON_7`] train id of raw id `id`, or [`IGNORE`]; `None` for a
    /// dataset DADA's 7-class protocol does not use. As long as `to_train19` when both exist.
    pub to_train7: Option<&'static [u8]>,
    /// The ids are train ids already, of whatever class count the network has (pseudo-labels,
    /// [`TRAIN_IDS`]): kept as they are, 255 ignored, anything else an error. The tables are
    /// `None` then.
    pub train_ids: bool,
}

/// Labels that hold train ids (pseudo-labels): no mapping.
pub const TRAIN_IDS: IdTable = IdTable { name: "train ids", to_train19: None, to_train7: None, train_ids: true };

impl IdTable {
    /// Number of ids the dataset defines (`0..known()`).
    pub fn known(&self) -> usize {
        match self.train_ids {
            true => 256,
            false => self.to_train19.or(self.to_train7).map_or(0, <[u8]>::len),
        }
    }

    /// The lookup table for `num_classes` (19, 16 or 7): train id of each known raw id.
    ///
    /// # Errors
    ///
    /// Another class count, or a class set this dataset has no table for.
    pub fn lookup(&self, num_classes: usize) -> Result<Vec<u8>> {
        check_num_classes(num_classes)?;
        if self.train_ids {
            return Ok((0..=255u8).map(|id| if usize::from(id) < num_classes { id } else { IGNORE }).collect());
        }
        if num_classes == COMMON_7.len() {
            return self.to_train7.map(<[u8]>::to_vec).with_context(|| {
                format!("{}: no table for 7 classes (that protocol is SYNTHIA → Mapillary)", self.name)
            });
        }
        let to_train19 = self
            .to_train19
            .with_context(|| format!("{}: no table for {num_classes} classes (only for 7)", self.name))?;
        Ok(to_train19
            .iter()
            .map(|&t| {
                if num_classes == 19 || t == IGNORE {
                    t
                } else {
                    SYNTHIA_16_OF_19.iter().position(|&c| c == usize::from(t)).map_or(IGNORE, |p| p as u8)
                }
            })
            .collect())
    }

    /// The ids in `label` that this table does not know, for labels mapped to
    /// `num_classes`, with their pixel counts: ids beyond the table, or, for train ids
    /// ([`IdTable::train_ids`]), ids of no class other than 255.
    pub fn unknown_ids(&self, label: &RawLabel, num_classes: usize) -> Vec<(u32, u64)> {
        let known = if self.train_ids { num_classes } else { self.known() };
        let unknown = |v: usize| v >= known && !(self.train_ids && v == usize::from(IGNORE));
        let out_of_range = match &label.samples {
            Samples::U8(s) => s.iter().any(|&v| unknown(usize::from(v))),
            Samples::U16(s) => s.iter().any(|&v| unknown(usize::from(v))),
        };
        if !out_of_range {
            return Vec::new();
        }
        label
            .id_counts()
            .into_iter()
            .enumerate()
            .filter(|&(id, n)| n > 0 && unknown(id))
            .map(|(id, n)| (id as u32, n))
            .collect()
    }

    /// Fails if `label`, mapped to `num_classes`, holds ids this table does not know, saying
    /// which and how many.
    pub fn validate(&self, label: &RawLabel, num_classes: usize) -> Result<()> {
        let unknown = self.unknown_ids(label, num_classes);
        if unknown.is_empty() {
            return Ok(());
        }
        let mut list: Vec<String> = unknown.iter().take(8).map(|(id, n)| format!("{id} ({n} px)")).collect();
        if unknown.len() > 8 {
            list.push("...".into());
        }
        match self.train_ids {
            true => bail!(
                "train ids of {num_classes} classes are 0..={} or 255 (ignored), found {}",
                num_classes - 1,
                list.join(", ")
            ),
            false => bail!("ids outside the {} table (0..={}): {}", self.name, self.known() - 1, list.join(", ")),
        }
    }
}

/// Maps ids through `lookup` (from [`IdTable::lookup`]); ids beyond it become [`IGNORE`]
/// (callers validate first).
pub fn map_ids(samples: &Samples, lookup: &[u8]) -> Vec<u8> {
    fn map<T: Copy + Into<usize>>(s: &[T], lookup: &[u8]) -> Vec<u8> {
        s.iter().map(|&v| lookup.get(v.into()).copied().unwrap_or(IGNORE)).collect()
    }
    match samples {
        Samples::U8(s) => {
            // A full 256-entry table keeps the hot loop branch-free.
            let mut full = [IGNORE; 256];
            full[..lookup.len().min(256)].copy_from_slice(&lookup[..lookup.len().min(256)]);
            s.iter().map(|&v| full[usize::from(v)]).collect()
        }
        Samples::U16(s) => map(s, lookup),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(color);
        e.set_depth(depth);
        if color == png::ColorType::Indexed {
            e.set_palette(vec![7u8; 3 * (1 << (depth as u8))]);
        }
        e.write_header().unwrap().write_image_data(data).unwrap();
        out
    }

    #[test]
    fn packed_palette_indices_are_unpacked() {
        // 4-bit palette, 3x2: rows [1, 2, 15] and [0, 9, 3], each row padded to whole bytes.
        let data = [0x12, 0xF0, 0x09, 0x30];
        let png = encode(3, 2, png::ColorType::Indexed, png::BitDepth::Four, &data);
        let l = decode_label(&png, LabelEncoding::Ids8).unwrap();
        assert_eq!(l.samples, Samples::U8(vec![1, 2, 15, 0, 9, 3]));
        // 2-bit: 5 pixels [3, 0, 1, 2, 3] → 0b11_00_01_10, 0b11_000000.
        let png = encode(5, 1, png::ColorType::Indexed, png::BitDepth::Two, &[0xC6, 0xC0]);
        let l = decode_label(&png, LabelEncoding::Ids8).unwrap();
        assert_eq!(l.samples, Samples::U8(vec![3, 0, 1, 2, 3]));
    }

    #[test]
    fn channel_zero_of_16_bit_rgba() {
        // 2x1 RGBA16: pixel 0 = (3, 977, 5, 65535), pixel 1 = (21, 0, 0, 0).
        let px: [u16; 8] = [3, 977, 5, 65535, 21, 0, 0, 0];
        let data: Vec<u8> = px.iter().flat_map(|v| v.to_be_bytes()).collect();
        let png = encode(2, 1, png::ColorType::Rgba, png::BitDepth::Sixteen, &data);
        let l = decode_label(&png, LabelEncoding::Channel0Of16).unwrap();
        assert_eq!(l.samples, Samples::U16(vec![3, 21]));
        let err = decode_label(&png, LabelEncoding::Ids8).unwrap_err();
        assert!(format!("{err:#}").contains("wrong bit depth"), "{err:#}");
        let png8 = encode(2, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[1, 2]);
        let err = decode_label(&png8, LabelEncoding::Channel0Of16).unwrap_err();
        assert!(format!("{err:#}").contains("8-bit greyscale"), "{err:#}");
    }

    #[test]
    fn sixteen_classes_derive_from_nineteen() {
        let t = IdTable {
            name: "test ids",
            to_train19: Some(&[IGNORE, 0, 9, 10, 14, 16, 18, 3]),
            to_train7: None,
            train_ids: false,
        };
        assert_eq!(t.lookup(19).unwrap(), vec![255, 0, 9, 10, 14, 16, 18, 3]);
        // terrain (9), truck (14), train (16) dropped; sky 10 → 9, bicycle 18 → 15.
        assert_eq!(t.lookup(16).unwrap(), vec![255, 0, 255, 9, 255, 255, 15, 3]);
        let err = format!("{:#}", t.lookup(7).unwrap_err());
        assert!(err.contains("test ids: no table for 7 classes"), "{err}");
        assert!(format!("{:#}", t.lookup(8).unwrap_err()).contains("19 (Cityscapes)"));
        let l = RawLabel { width: 3, height: 1, samples: Samples::U8(vec![7, 8, 200]) };
        assert_eq!(t.unknown_ids(&l, 19), vec![(8, 1), (200, 1)]);
        let msg = format!("{:#}", t.validate(&l, 19).unwrap_err());
        assert!(msg.contains("8 (1 px), 200 (1 px)"), "{msg}");
        assert_eq!(map_ids(&l.samples, &t.lookup(19).unwrap()), vec![3, 255, 255]);
    }

    #[test]
    fn train_ids_are_kept_for_any_class_count() {
        // 16 classes: ids stay as they are (no 19 → 16 reduction), 255 stays ignored.
        let l = RawLabel { width: 4, height: 1, samples: Samples::U8(vec![0, 15, 255, 9]) };
        assert_eq!(map_ids(&l.samples, &TRAIN_IDS.lookup(16).unwrap()), vec![0, 15, 255, 9]);
        assert!(TRAIN_IDS.validate(&l, 16).is_ok());
        let msg = format!("{:#}", TRAIN_IDS.validate(&l, 7).unwrap_err());
        assert!(msg.contains("0..=6 or 255") && msg.contains("9 (1 px), 15 (1 px)"), "{msg}");
    }
}
