//! TensorBoard event files: scalars and images that `tensorboard --logdir` shows.
//!
//! An event file is a sequence of TFRecords (length, masked CRC-32C of the length, a
//! serialized `Event` protobuf, masked CRC-32C of it). The few protobuf fields needed are
//! encoded here by hand: `Event { wall_time = 1 (double), step = 2 (int64), file_version = 3,
//! summary = 5, session_log = 7 }`, `SessionLog { status = 1 (START = 1) }`, `Summary { value = 1 }`, `Summary.Value { tag = 1, simple_value = 2
//! (float), image = 4 }`, `Summary.Image { height = 1, width = 2, colorspace = 3,
//! encoded_image_string = 4 }`.

use crate::image::RgbImage;
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Appends events to `<dir>/events.out.tfevents.<seconds>.advent.<pid>`.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl EventWriter {
    /// A new event file in `dir` (created if needed), starting with the file-version event.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let wall = now();
        let path = dir.join(format!("events.out.tfevents.{}.advent.{}", wall as u64, std::process::id()));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut w = EventWriter { path, out: BufWriter::new(file) };
        w.write_event(&event(wall, 0, Payload::FileVersion("brain.Event:2")))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> Result<()> {
        self.write_event(&event(now(), step, Payload::Scalar(tag, value)))
    }

    /// An RGB image (encoded as PNG).
    pub fn add_image(&mut self, tag: &str, image: &RgbImage, step: i64) -> Result<()> {
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), ::image::ImageFormat::Png)
            .context("encoding a TensorBoard image")?;
        let (w, h) = image.dimensions();
        self.write_event(&event(now(), step, Payload::Image { tag, width: w, height: h, png: &png }))
    }

    /// Marks a restart at `step` (a resumed run): TensorBoard then drops the events of
    /// steps `>= step` written before it, by the run that was interrupted, so that the
    /// curves show each step once.
    pub fn session_start(&mut self, step: i64) -> Result<()> {
        self.write_event(&event(now(), step, Payload::SessionStart))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("writing {}", self.path.display()))
    }

    fn write_event(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(&record(data)).with_context(|| format!("writing {}", self.path.display()))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

enum Payload<'a> {
    FileVersion(&'a str),
    SessionStart,
    Scalar(&'a str, f32),
    Image { tag: &'a str, width: u32, height: u32, png: &'a [u8] },
}

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint(((field as u64) << 3) | wire as u64, out);
}

fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

fn varint_field(field: u32, v: u64, out: &mut Vec<u8>) {
    key(field, 0, out);
    varint(v, out);
}

fn event(wall_time: f64, step: i64, payload: Payload) -> Vec<u8> {
    let mut e = Vec::new();
    key(1, 1, &mut e);
    e.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        varint_field(2, step as u64, &mut e);
    }
    let value = match payload {
        Payload::FileVersion(v) => {
            bytes_field(3, v.as_bytes(), &mut e);
            return e;
        }
        Payload::SessionStart => {
            bytes_field(7, &[0x08, 0x01], &mut e); // SessionLog { status: START }
            return e;
        }
        Payload::Scalar(tag, v) => {
            let mut value = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut value);
            key(2, 5, &mut value);
            value.extend_from_slice(&v.to_le_bytes());
            value
        }
        Payload::Image { tag, width, height, png } => {
            let mut image = Vec::new();
            varint_field(1, height as u64, &mut image);
            varint_field(2, width as u64, &mut image);
            varint_field(3, 3, &mut image); // RGB
            bytes_field(4, png, &mut image);
            let mut value = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut value);
            bytes_field(4, &image, &mut value);
            value
        }
    };
    let mut summary = Vec::new();
    bytes_field(1, &value, &mut summary);
    bytes_field(5, &summary, &mut e);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_start_is_a_session_log_with_status_start() {
        // Hand-encoded: field 1 (fixed64) wall time, field 2 (varint) step 300 = ac 02,
        // field 7 (length-delimited, 2 bytes) holding field 1 (varint) = 1. Checked with
        // TensorBoard 2.21: its EventAccumulator reads it as `session_log { status: START }`
        // and drops the earlier file's events from that step on.
        let e = event(1.5, 300, Payload::SessionStart);
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 0xac, 0x02, 0x3a, 0x02, 0x08, 0x01]);
        assert_eq!(e, want);
    }

    #[test]
    fn crc32c_check_value() {
        // The CRC-32C check value of "123456789" (RFC 3720).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn records_equal_tensorboards_own() {
        // tools/fixtures/make_tensorboard_fixtures.py wrote these events with TensorBoard's
        // protobufs and framing.
        let want = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tensorboard/reference.tfevents"))
            .unwrap();
        let mut ours = record(&event(1.5, 0, Payload::FileVersion("brain.Event:2")));
        for (step, (tag, value)) in
            [("loss_seg_src_main", 2.5f32), ("lr", 0.00025), ("loss_d_main", -0.125)].iter().enumerate()
        {
            ours.extend(record(&event(2.0 + step as f64, step as i64 * 10, Payload::Scalar(tag, *value))));
        }
        let png: Vec<u8> = (0..16).collect();
        ours.extend(record(&event(
            9.25,
            7,
            Payload::Image { tag: "target/prediction", width: 2, height: 1, png: &png },
        )));
        assert_eq!(ours, want);
    }

    #[test]
    fn writer_creates_a_file_tensorboard_recognises() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.add_scalar("loss", 1.0, 3).unwrap();
        w.add_image("img", &RgbImage::new(4, 2), 3).unwrap();
        w.flush().unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let bytes = std::fs::read(w.path()).unwrap();
        // Three records, each framed: walk them by their lengths.
        let (mut at, mut n) = (0usize, 0);
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked_crc(&bytes[at..at + 8]));
            let data = &bytes[at + 12..at + 12 + len];
            assert_eq!(u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()), masked_crc(data));
            at += 16 + len;
            n += 1;
        }
        assert_eq!((at, n), (bytes.len(), 3));
    }
}
