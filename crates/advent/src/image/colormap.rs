//! Colour maps for visualisations: matplotlib's `jet` for scalar maps (entropy, confidence)
//! and palette lookup for label maps.
//!
//! [`jet`] reproduces `matplotlib.cm.jet(v, bytes=True)` exactly: matplotlib builds a
//! 256-entry table from the `jet` segment data (piecewise-linear red, green and blue
//! curves), samples it at `i / 255`, and for a float `v` looks up entry
//! `trunc(v * 256)` (with `v == 1` mapped to 255, values below 0 to entry 0, above 1 to
//! entry 255, NaN to transparent black); `bytes=True` converts the table with
//! `trunc(value * 255)`.

use image::RgbImage;
use std::sync::LazyLock;

/// One channel of a matplotlib segment map: `(x, y_left, y_right)` break points.
type Segments = &'static [(f64, f64, f64)];

/// matplotlib's `_jet_data` (`matplotlib/_cm.py`).
const JET_RED: Segments = &[(0.0, 0.0, 0.0), (0.35, 0.0, 0.0), (0.66, 1.0, 1.0), (0.89, 1.0, 1.0), (1.0, 0.5, 0.5)];
const JET_GREEN: Segments =
    &[(0.0, 0.0, 0.0), (0.125, 0.0, 0.0), (0.375, 1.0, 1.0), (0.64, 1.0, 1.0), (0.91, 0.0, 0.0), (1.0, 0.0, 0.0)];
const JET_BLUE: Segments = &[(0.0, 0.5, 0.5), (0.11, 1.0, 1.0), (0.34, 1.0, 1.0), (0.65, 0.0, 0.0), (1.0, 0.0, 0.0)];

/// Entries in matplotlib's default colour tables.
const N: usize = 256;

/// matplotlib's `_create_lookup_table(256, segments)` followed by the `bytes=True`
/// conversion, with the same floating-point operations in the same order.
fn lookup_table(seg: Segments) -> [u8; N] {
    let last = (N - 1) as f64;
    let xs: Vec<f64> = seg.iter().map(|s| s.0 * last).collect();
    // np.linspace(0, 1, N): i * (1 / (N - 1)), the last one exactly 1.
    let step = 1.0 / last;
    let mut lut = [0f64; N];
    lut[0] = seg[0].2;
    lut[N - 1] = seg[seg.len() - 1].1;
    for (i, v) in lut.iter_mut().enumerate().take(N - 1).skip(1) {
        let xi = last * (i as f64 * step);
        // np.searchsorted(xs, xi, side="left"): the first break point >= xi.
        let k = xs.partition_point(|&x| x < xi);
        let distance = (xi - xs[k - 1]) / (xs[k] - xs[k - 1]);
        *v = distance * (seg[k].1 - seg[k - 1].2) + seg[k - 1].2;
    }
    lut.map(|v| (v.clamp(0.0, 1.0) * 255.0) as u8)
}

static JET: LazyLock<[[u8; 3]; N]> = LazyLock::new(|| {
    let (r, g, b) = (lookup_table(JET_RED), lookup_table(JET_GREEN), lookup_table(JET_BLUE));
    std::array::from_fn(|i| [r[i], g[i], b[i]])
});

/// matplotlib's `jet` colour for `v` (meant to lie in `[0, 1]`; values outside are clamped
/// to the end colours), as 8-bit RGB; NaN gives black.
pub fn jet(v: f32) -> [u8; 3] {
    if v.is_nan() {
        return [0, 0, 0];
    }
    // Exact: multiplying by a power of two.
    let x = f64::from(v) * N as f64;
    let i = if x < 0.0 {
        0
    } else if x >= (N - 1) as f64 {
        N - 1
    } else {
        x as usize
    };
    JET[i]
}

/// Colours a `w` x `h` map of values in `[0, 1]` (row-major, `values.len() == w * h`)
/// with [`jet`].
///
/// # Panics
///
/// If `values.len() != w * h`.
pub fn heatmap(values: &[f32], w: u32, h: u32) -> RgbImage {
    assert_eq!(values.len(), w as usize * h as usize, "value buffer does not match its size");
    let data = values.iter().flat_map(|&v| jet(v)).collect();
    RgbImage::from_raw(w, h, data).expect("buffer size matches")
}

/// Colours a `w` x `h` label map (row-major class ids, `labels.len() == w * h`) with
/// `palette[id]`; ids without an entry (such as the ignore label 255) become black.
///
/// # Panics
///
/// If `labels.len() != w * h`.
pub fn colorize(labels: &[u8], w: u32, h: u32, palette: &[[u8; 3]]) -> RgbImage {
    assert_eq!(labels.len(), w as usize * h as usize, "label buffer does not match its size");
    let data = labels.iter().flat_map(|&id| palette.get(id as usize).copied().unwrap_or([0; 3])).collect();
    RgbImage::from_raw(w, h, data).expect("buffer size matches")
}

/// `colours` laid over `image` (the same size): `(1 − alpha)·image + alpha·colours` per
/// channel, rounded to the nearest byte.
///
/// # Panics
///
/// If the sizes differ, or `alpha` is outside `[0, 1]`.
pub fn blend(image: &RgbImage, colours: &RgbImage, alpha: f32) -> RgbImage {
    assert_eq!(image.dimensions(), colours.dimensions(), "blended images differ in size");
    assert!((0.0..=1.0).contains(&alpha), "blend weight {alpha} outside [0, 1]");
    let data = image
        .as_raw()
        .iter()
        .zip(colours.as_raw())
        .map(|(&a, &b)| ((1.0 - alpha) * f32::from(a) + alpha * f32::from(b)).round() as u8)
        .collect();
    RgbImage::from_raw(image.width(), image.height(), data).expect("buffer size matches")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_and_specials() {
        assert_eq!(jet(0.0), [0, 0, 127]);
        assert_eq!(jet(1.0), [127, 0, 0]);
        assert_eq!(jet(-3.0), jet(0.0));
        assert_eq!(jet(7.0), jet(1.0));
        assert_eq!(jet(f32::INFINITY), jet(1.0));
        assert_eq!(jet(f32::NEG_INFINITY), jet(0.0));
        assert_eq!(jet(f32::NAN), [0, 0, 0]);
    }

    #[test]
    fn colorize_blackens_unknown_ids() {
        let img = colorize(&[0, 1, 255, 2], 2, 2, &[[1, 2, 3], [4, 5, 6]]);
        assert_eq!(img.as_raw(), &[1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn heatmap_layout() {
        let img = heatmap(&[0.0, 1.0], 2, 1);
        assert_eq!(img.get_pixel(0, 0).0, jet(0.0));
        assert_eq!(img.get_pixel(1, 0).0, jet(1.0));
    }

    #[test]
    fn blend_weighs_each_channel_by_hand() {
        let image = RgbImage::from_raw(2, 1, vec![100, 50, 0, 255, 255, 255]).unwrap();
        let colours = RgbImage::from_raw(2, 1, vec![128, 64, 128, 0, 0, 0]).unwrap();
        // 0.5·100 + 0.5·128 = 114; 0.5·50 + 0.5·64 = 57; 0.5·0 + 0.5·128 = 64; 127.5 rounds to 128.
        assert_eq!(blend(&image, &colours, 0.5).into_raw(), [114, 57, 64, 128, 128, 128]);
        // 0.75·100 + 0.25·128 = 107; 0.75·50 + 0.25·64 = 53.5 -> 54; 0.75·255 = 191.25 -> 191.
        assert_eq!(blend(&image, &colours, 0.25).into_raw(), [107, 54, 32, 191, 191, 191]);
        assert_eq!(blend(&image, &colours, 0.0), image);
        assert_eq!(blend(&image, &colours, 1.0), colours);
    }
}
