//! Image decoding, resizing and encoding, matching the reference's PIL preprocessing.
//!
//! The reference ADVENT code prepares a network input with
//! `Image.open(f).convert('RGB').resize((W, H), Image.BICUBIC)`, then float32, RGB→BGR,
//! minus the BGR mean, HWC→CHW, without scaling to `[0, 1]`; labels with
//! `Image.open(f).resize((W, H), Image.NEAREST)`. [`read_rgb`], [`resize_bicubic`],
//! [`resize_nearest`] and [`to_input_tensor`] reproduce those steps; the resizes are
//! bit-exact with Pillow (see [`resize`] for how).
//!
//! Layouts: images are row-major; [`RgbImage`] holds interleaved `R, G, B` bytes,
//! single-channel maps are `width * height` samples, row-major. Sizes are in pixels.

pub mod colormap;
pub mod resize;

pub use ::image::RgbImage;
pub use resize::{resize_bicubic, resize_nearest};

use crate::fs::write_atomic;
use ::image::codecs::png::PngEncoder;
use ::image::{DynamicImage, ExtendedColorType, ImageEncoder, ImageFormat, ImageReader};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::io::Cursor;
use std::path::Path;

/// The reference's per-channel mean (SPEC: `IMG_MEAN`), in BGR order, in 0–255 units.
pub const IMG_MEAN_BGR: [f64; 3] = [104.00698793, 116.66876762, 122.67891434];

/// Reads a PNG or JPEG file as 8-bit RGB, with PIL's `Image.open(f).convert('RGB')`
/// semantics. The format is recognised from the content, not the file name.
///
/// | PNG content | PIL mode | RGB result (here and in PIL) |
/// |---|---|---|
/// | grey 1/2/4/8-bit | `1`/`L` | value scaled to 8 bits (`1` → 255, 2-bit ×85, 4-bit ×17), replicated |
/// | grey 16-bit | `I;16` | value saturated at 255 (PIL's `I;16`→`RGB` clips, it does not shift), replicated |
/// | grey + alpha 8-bit | `LA` | alpha dropped, grey replicated |
/// | grey + alpha 16-bit | `RGBA` (read as `LA;16B`) | high byte of the grey, replicated; alpha dropped |
/// | RGB / RGBA 16-bit | `RGB`/`RGBA` | high byte of each sample (PIL reads them as `RGB;16B`); alpha dropped |
/// | RGBA 8-bit | `RGBA` | alpha dropped (not composited) |
/// | palette 1/2/4/8-bit | `P` | palette colours; transparency ignored |
/// | any with a `tRNS` chunk | (same) | transparency ignored |
///
/// Every row above is checked against Pillow by the fixtures in `tests/fixtures/image/`.
/// JPEG (greyscale, YCbCr or RGB) is decoded by libjpeg-turbo's decoder, as PIL decodes it
/// (mozjpeg's copy, with libjpeg's defaults: the accurate integer IDCT, fancy chroma
/// upsampling): the same bytes as PIL (the fixtures: 4:2:0, 4:4:4 and greyscale). That
/// matters for Mapillary, whose images are JPEGs. CMYK and YCCK JPEGs, which PIL converts
/// with its own arithmetic, are decoded by the `image` crate (zune-jpeg). As with
/// `Image.open`, EXIF orientation is not applied.
///
/// # Errors
///
/// A missing or unreadable file, an empty file, content that is not a PNG or JPEG, or a
/// corrupt or truncated image; the message names the file.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
    decode_rgb(&bytes).with_context(|| format!("decoding image {}", path.display()))
}

/// PNG colour type (IHDR byte 25) and bit depth (byte 24), if `bytes` is a PNG.
fn png_header(bytes: &[u8]) -> Option<(u8, u8)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    (bytes.len() > 25 && bytes.starts_with(SIGNATURE) && &bytes[12..16] == b"IHDR").then(|| (bytes[25], bytes[24]))
}

thread_local! {
    static DECODER_PANICS_ARE_QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a third-party decoder on untrusted bytes, turning a panic inside it into `None`
/// without a panic message. Fuzzing found such panics in the `png` (0.18.1) and `zune-jpeg`
/// (0.5.15, an IDCT slice `unwrap` on some malformed JPEGs) decoders the `image` crate
/// uses; a corrupt file must be an error that names it, like any other. Panics elsewhere,
/// including other threads', are reported by the panic hook as before.
pub(crate) fn catch_decoder_panic<T>(decode: impl FnOnce() -> T) -> Option<T> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !DECODER_PANICS_ARE_QUIET.with(std::cell::Cell::get) {
                previous(info)
            }
        }));
    });
    let was = DECODER_PANICS_ARE_QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode));
    DECODER_PANICS_ARE_QUIET.with(|q| q.set(was));
    result.ok()
}

/// Checks the palette chunks of a PNG before a decoder sees them. The `png` crate (0.18.1)
/// panics on a `PLTE` chunk whose length is not a multiple of 3 and on a `tRNS` chunk with
/// more entries than the palette (image-rs/image-png#694, #671; found here by fuzzing):
/// such files are refused as corrupt instead. Anything else is left to the decoder.
pub fn check_png_palette(bytes: &[u8]) -> Result<()> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !bytes.starts_with(SIGNATURE) {
        return Ok(());
    }
    let mut palette_entries = None;
    let mut at = SIGNATURE.len();
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        match &header[4..8] {
            b"PLTE" => {
                if !len.is_multiple_of(3) || len > 768 {
                    bail!("corrupt PNG: a palette (PLTE) of {len} bytes, not 3 per entry up to 256 entries");
                }
                palette_entries = Some(len / 3);
            }
            b"tRNS" => {
                if let Some(entries) = palette_entries.filter(|&n| len > n) {
                    bail!("corrupt PNG: {len} transparency (tRNS) entries for a palette of {entries}");
                }
            }
            b"IDAT" | b"IEND" => break,
            _ => {}
        }
        at = at.saturating_add(12).saturating_add(len);
    }
    Ok(())
}

/// Checks that a JPEG's data runs to its end-of-image marker. The decoders (libjpeg with a
/// warning, zune-jpeg) fill the rest of a truncated image with grey and report no error, as
/// PIL does only with `LOAD_TRUNCATED_IMAGES`; here a truncated file is an error, as PIL's
/// default. The markers are walked from the start: segments by their length (so an EXIF
/// thumbnail's own markers are skipped), entropy-coded scans to the next marker (in which 0xFF
/// is always followed by 0x00 or a restart marker); the file must reach the end-of-image
/// marker (bytes after it are allowed, as some cameras append data there). Anything else is
/// left to the decoder.
pub fn check_jpeg_complete(bytes: &[u8]) -> Result<()> {
    const SOI: [u8; 2] = [0xFF, 0xD8];
    if !bytes.starts_with(&SOI) {
        return Ok(());
    }
    let truncated = || anyhow!("truncated JPEG: the data ends before its end-of-image marker ({} bytes)", bytes.len());
    let mut at = SOI.len();
    loop {
        // Bytes before a marker are skipped, as libjpeg does (with a warning) and so PIL.
        at += bytes[at.min(bytes.len())..].iter().position(|&b| b == 0xFF).ok_or_else(truncated)?;
        while bytes.get(at) == Some(&0xFF) {
            at += 1; // a marker and its fill bytes
        }
        let marker = *bytes.get(at).ok_or_else(truncated)?;
        at += 1;
        match marker {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let length = bytes.get(at..at + 2).ok_or_else(truncated)?;
        at += usize::from(u16::from_be_bytes([length[0], length[1]]));
        if at > bytes.len() {
            return Err(truncated());
        }
        if marker == 0xDA {
            // The scan's data, up to the next marker.
            loop {
                let ff = bytes[at..].iter().position(|&b| b == 0xFF).ok_or_else(truncated)?;
                let next = *bytes.get(at + ff + 1).ok_or_else(truncated)?;
                if next == 0x00 || (0xD0..=0xD7).contains(&next) {
                    at += ff + 2;
                } else {
                    at += ff;
                    break;
                }
            }
        }
    }
}

/// Decodes a PNG or JPEG held in memory, as [`read_rgb`] does.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    if bytes.is_empty() {
        bail!("the file is empty");
    }
    check_png_palette(bytes)?;
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let Some(format) = reader.format() else {
        bail!("not an image (neither PNG nor JPEG)");
    };
    let format = match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => {
            check_jpeg_complete(bytes)?;
            if let Some(decoded) = decode_jpeg_as_libjpeg(bytes) {
                return decoded;
            }
            "JPEG"
        }
        other => bail!("a {other:?} image: advent reads PNG and JPEG"),
    };
    let img = catch_decoder_panic(|| reader.decode())
        .ok_or_else(|| anyhow!("corrupt {format} data (the decoder failed on it)"))?
        .map_err(|e| anyhow!("corrupt or truncated {format} data: {e}"))?;
    // 16-bit grey with a tRNS chunk is decoded with an alpha channel; PIL keeps it `I;16`.
    let grey16 = png_header(bytes) == Some((0, 16));
    let saturate = |v: u16| v.min(255) as u8;
    let high = |v: u16| (v >> 8) as u8;
    Ok(match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageRgba8(i) => map_pixels(&i, |p: &[u8]| [p[0], p[1], p[2]]),
        DynamicImage::ImageLuma8(i) => map_pixels(&i, |p: &[u8]| [p[0]; 3]),
        DynamicImage::ImageLumaA8(i) => map_pixels(&i, |p: &[u8]| [p[0]; 3]),
        DynamicImage::ImageLuma16(i) => map_pixels(&i, |p: &[u16]| [saturate(p[0]); 3]),
        DynamicImage::ImageLumaA16(i) if grey16 => map_pixels(&i, |p: &[u16]| [saturate(p[0]); 3]),
        DynamicImage::ImageLumaA16(i) => map_pixels(&i, |p: &[u16]| [high(p[0]); 3]),
        DynamicImage::ImageRgb16(i) => map_pixels(&i, |p: &[u16]| [high(p[0]), high(p[1]), high(p[2])]),
        DynamicImage::ImageRgba16(i) => map_pixels(&i, |p: &[u16]| [high(p[0]), high(p[1]), high(p[2])]),
        other => other.to_rgb8(),
    })
}

/// The most memory a decoded image or label may take, as the `image` crate bounds its
/// decoders (512 MiB): a header claiming more is refused before anything is allocated.
pub(crate) const MAX_DECODED_BYTES: usize = 512 << 20;

/// Decodes a greyscale, YCbCr or RGB JPEG with libjpeg-turbo's decoder, as PIL does; `None`
/// for another colour space (CMYK, YCCK), left to the `image` crate. libjpeg's fatal errors
/// unwind out of its C code (mozjpeg's `unwinding`) and become errors here; its warnings
/// (corrupt data it can decode past) are silent, as in PIL.
fn decode_jpeg_as_libjpeg(bytes: &[u8]) -> Option<Result<RgbImage>> {
    use mozjpeg::{ColorSpace, Decompress};
    let decode = || -> Result<Option<RgbImage>> {
        let header = Decompress::new_mem(bytes)?;
        if !matches!(header.color_space(), ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB) {
            return Ok(None);
        }
        let (width, height) = header.size();
        let size = width.checked_mul(height).and_then(|n| n.checked_mul(3)).filter(|&n| n <= MAX_DECODED_BYTES);
        ensure!(size.is_some(), "image too large ({width}x{height})");
        let mut started = header.rgb()?;
        let pixels: Vec<u8> = started.read_scanlines()?;
        let image = RgbImage::from_raw(width as u32, height as u32, pixels);
        Ok(Some(image.context("corrupt JPEG data (fewer pixels than its size)")?))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(Ok(Some(image))) => Some(Ok(image)),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => Some(Err(anyhow!("corrupt or truncated JPEG data: {e:#}"))),
        Err(payload) => {
            let message = payload.downcast_ref::<String>().map_or("the decoder failed on it", String::as_str);
            Some(Err(anyhow!("corrupt JPEG data ({})", message.trim_start_matches("libjpeg fatal error: "))))
        }
    }
}

/// Builds an RGB image from each pixel's samples of `img`.
fn map_pixels<P, F>(img: &::image::ImageBuffer<P, Vec<P::Subpixel>>, f: F) -> RgbImage
where
    P: ::image::Pixel,
    F: Fn(&[P::Subpixel]) -> [u8; 3],
{
    let (w, h) = img.dimensions();
    let data = img.as_raw().chunks_exact(P::CHANNEL_COUNT as usize).flat_map(f).collect();
    RgbImage::from_raw(w, h, data).expect("buffer size matches")
}

/// The network input for `img`: a `[1, 3, H, W]` float32 tensor on the CPU, channels in
/// BGR order, each value `pixel - mean_bgr[c]` in 0–255 units (no scaling).
///
/// As in the reference (a float32 mean subtracted from float32 pixels) the mean is rounded
/// to f32 first and the subtraction is done in f32.
pub fn to_input_tensor(img: &RgbImage, mean_bgr: [f64; 3]) -> tch::Tensor {
    let (w, h) = img.dimensions();
    let plane = w as usize * h as usize;
    let mean = mean_bgr.map(|m| m as f32);
    let mut data = vec![0f32; 3 * plane];
    let (b, rest) = data.split_at_mut(plane);
    let (g, r) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        b[i] = f32::from(px[2]) - mean[0];
        g[i] = f32::from(px[1]) - mean[1];
        r[i] = f32::from(px[0]) - mean[2];
    }
    tch::Tensor::from_slice(&data).view([1, 3, i64::from(h), i64::from(w)])
}

/// The inverse of [`to_input_tensor`] for display: `[3, H, W]` or `[1, 3, H, W]` BGR minus
/// `mean_bgr` → RGB, rounded and clamped to 0–255.
pub fn from_input_tensor(t: &tch::Tensor, mean_bgr: [f64; 3]) -> Result<RgbImage> {
    let t = if t.dim() == 4 { t.f_get(0)? } else { t.shallow_clone() };
    let size = t.size();
    anyhow::ensure!(size.len() == 3 && size[0] == 3, "expected a [3, H, W] image tensor, got {size:?}");
    let (h, w) = (size[1] as u32, size[2] as u32);
    let data = Vec::<f32>::try_from(
        t.f_to_kind(tch::Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_contiguous()?.f_flatten(0, -1)?,
    )?;
    let plane = (w * h) as usize;
    let byte = |v: f32, m: f64| (v as f64 + m).round().clamp(0.0, 255.0) as u8;
    Ok(RgbImage::from_fn(w, h, |x, y| {
        let i = (y * w + x) as usize;
        ::image::Rgb([
            byte(data[2 * plane + i], mean_bgr[2]),
            byte(data[plane + i], mean_bgr[1]),
            byte(data[i], mean_bgr[0]),
        ])
    }))
}

/// Writes an 8-bit greyscale PNG (`data`: `width * height` bytes, row-major), atomically.
///
/// # Errors
///
/// A buffer of the wrong length, or a failed write; the message names the file.
pub fn write_png_gray8(path: &Path, width: u32, height: u32, data: &[u8]) -> Result<()> {
    write_png(path, width, height, data, ExtendedColorType::L8)
}

/// Writes an 8-bit RGB PNG, atomically.
///
/// # Errors
///
/// A failed write; the message names the file.
pub fn write_png_rgb(path: &Path, img: &RgbImage) -> Result<()> {
    write_png(path, img.width(), img.height(), img.as_raw(), ExtendedColorType::Rgb8)
}

fn write_png(path: &Path, width: u32, height: u32, data: &[u8], color: ExtendedColorType) -> Result<()> {
    let expected = width as usize * height as usize * usize::from(color.channel_count());
    if data.len() != expected {
        bail!(
            "writing {}: {} bytes given for a {width}x{height} {color:?} image ({expected} needed)",
            path.display(),
            data.len()
        );
    }
    write_atomic(path, |out| {
        PngEncoder::new(out).write_image(data, width, height, color)?;
        Ok(())
    })
}

#[cfg(test)]
mod round_trip_tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(width, height, |x, y| {
            ::image::Rgb([((x * 13) ^ (y * 7)) as u8, (y * 31) as u8, x as u8])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img).write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    /// libjpeg's fatal errors unwind out of its C code into errors, and damage it decodes past
    /// gives an image: any byte of a JPEG changed gives one or the other, never a crash; a
    /// header claiming a huge image is refused before anything is allocated.
    #[test]
    fn a_jpeg_damaged_anywhere_is_an_image_or_an_error() {
        let full = jpeg(40, 24);
        let (mut images, mut errors) = (0, 0);
        for at in 2..full.len() - 2 {
            for flip in [0x01, 0x80, 0xFF] {
                let mut damaged = full.clone();
                damaged[at] ^= flip;
                match decode_rgb(&damaged) {
                    Ok(img) => {
                        assert!(img.width() > 0 && img.height() > 0);
                        images += 1;
                    }
                    Err(e) => {
                        assert!(format!("{e:#}").contains("JPEG"), "byte {at} ^ {flip:#x}: {e:#}");
                        errors += 1;
                    }
                }
            }
        }
        assert!(images > 0 && errors > 0, "{images} images, {errors} errors");
        // The frame header (SOF0) of a 40x24 image, its height and width set to 65000x65000
        // (12.7 GB of pixels; libjpeg itself refuses sides above 65500).
        let sof = full.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline frame header");
        let mut huge = full.clone();
        huge[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
        let err = format!("{:#}", decode_rgb(&huge).unwrap_err());
        assert!(err.contains("image too large (65000x65000)"), "{err}");
    }

    #[test]
    fn a_jpeg_cut_anywhere_is_refused() {
        let full = jpeg(96, 64);
        assert_eq!(full[full.len() - 2..], [0xFF, 0xD9], "the encoder ends with the end-of-image marker");
        assert_eq!(decode_rgb(&full).unwrap().dimensions(), (96, 64));
        // The decoder alone takes a file cut in its scan (what the check is for).
        let cut = &full[..full.len() * 3 / 4];
        assert!(catch_decoder_panic(|| ImageReader::with_format(Cursor::new(cut), ImageFormat::Jpeg).decode())
            .unwrap()
            .is_ok());
        for n in 1..full.len() {
            let err = decode_rgb(&full[..n]).map(|_| ()).unwrap_err().to_string();
            // The first bytes are not enough to tell a JPEG.
            assert!(n < 4 || err.contains("truncated"), "cut at {n} of {}: {err}", full.len());
        }
        // Bytes after the end are allowed; so is an application segment whose payload holds
        // the bytes of markers (an EXIF thumbnail), which are skipped by its length.
        let mut trailing = full.clone();
        trailing.extend_from_slice(b"camera trailer");
        assert!(decode_rgb(&trailing).is_ok());
        let mut with_app = full[..2].to_vec();
        with_app.extend_from_slice(&[0xFF, 0xE1, 0x00, 0x08, 0xFF, 0xD8, 0xFF, 0xD9, 0xFF, 0xDA]);
        with_app.extend_from_slice(&full[2..]);
        assert!(check_jpeg_complete(&with_app).is_ok());
        assert!(check_jpeg_complete(&with_app[..with_app.len() - 2]).is_err());
    }

    #[test]
    fn input_tensor_round_trips() {
        let img = RgbImage::from_fn(3, 2, |x, y| ::image::Rgb([x as u8 * 80, y as u8 * 200, 7]));
        let back = from_input_tensor(&to_input_tensor(&img, IMG_MEAN_BGR), IMG_MEAN_BGR).unwrap();
        assert_eq!(back, img);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_tensor_is_bgr_minus_mean() {
        // 2x2: (0,0) red, (1,0) green, (0,1) blue, (1,1) grey 100.
        let img = RgbImage::from_raw(2, 2, vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 100, 100, 100]).unwrap();
        let t = to_input_tensor(&img, [10.0, 20.0, 30.0]);
        assert_eq!(t.size(), vec![1, 3, 2, 2]);
        assert_eq!(t.kind(), tch::Kind::Float);
        let v: Vec<f32> = Vec::try_from(t.flatten(0, -1)).unwrap();
        #[rustfmt::skip]
        let expected = [
            -10.0, -10.0, 245.0, 90.0, // B plane
            -20.0, 235.0, -20.0, 80.0, // G plane
            225.0, -30.0, -30.0, 70.0, // R plane
        ];
        assert_eq!(v, expected);
    }

    #[test]
    fn input_tensor_rounds_the_mean_to_f32_first() {
        let img = RgbImage::from_raw(1, 1, vec![1, 2, 3]).unwrap();
        let v: Vec<f32> = Vec::try_from(to_input_tensor(&img, IMG_MEAN_BGR).flatten(0, -1)).unwrap();
        let m = IMG_MEAN_BGR.map(|m| m as f32);
        assert_eq!(v, vec![3.0 - m[0], 2.0 - m[1], 1.0 - m[2]]);
        assert_eq!(v[0], -101.00699);
    }

    #[test]
    fn png_round_trip_and_length_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        write_png_gray8(&p, 3, 2, &[0, 1, 2, 3, 4, 255]).unwrap();
        let g = ::image::open(&p).unwrap().into_luma8();
        assert_eq!(g.as_raw(), &[0, 1, 2, 3, 4, 255]);
        let err = write_png_gray8(&dir.path().join("bad.png"), 3, 2, &[0; 5]).unwrap_err();
        assert!(format!("{err:#}").contains("bad.png"));
        assert!(!dir.path().join("bad.png").exists());

        let img = RgbImage::from_fn(4, 3, |x, y| ::image::Rgb([x as u8, y as u8, 9]));
        let p = dir.path().join("c.png");
        write_png_rgb(&p, &img).unwrap();
        assert_eq!(read_rgb(&p).unwrap(), img);
    }
}
