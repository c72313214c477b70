//! Resampling that reproduces Pillow's `Image.resize` bit for bit on 8-bit data.
//!
//! Written from a reading of Pillow's `libImaging/Resample.c` (convolution filters) and
//! `libImaging/Geometry.c` (`NEAREST`, which Pillow runs as an affine transform), checked
//! against Pillow 13.0.0 by the fixtures in `tests/fixtures/image/` (and the pass order
//! below against Pillow 12.3.0 by hand).
//!
//! # Bicubic (`Image.BICUBIC`)
//!
//! Separable, two passes, each rounding to 8 bits. Normally horizontal first (only over
//! the source rows the vertical pass will read), then vertical; but when the width grows
//! while the height shrinks, vertical first. That exception is new in Pillow 13.0 (PR
//! #9549, for speed); Pillow 12 and earlier always go horizontal first, so for such sizes
//! they give slightly different pixels. ADVENT's resizes (1914x1052 -> 1280x720,
//! 2048x1024 -> 1024x512) shrink both axes and are the same in every version. A pass
//! whose dimension does not change is skipped, as in Pillow (with a scale of exactly 1 the
//! kernel would be the identity anyway).
//!
//! For an axis of `in` pixels resampled to `out` pixels, with `scale = in / out`:
//! * `filterscale = max(scale, 1)`: downscaling widens the kernel (antialiasing),
//!   upscaling does not; `support = 2 * filterscale` input pixels either side;
//! * output pixel `i` is centred on `c = (i + 0.5) * scale` in input coordinates and
//!   reads input pixels `trunc(c - support + 0.5) .. trunc(c + support + 0.5)`, clamped to
//!   the image (no padding: the kernel is renormalised at the borders);
//! * the weight of input pixel `j` is `bicubic((j - c + 0.5) / filterscale)` with the
//!   Keys kernel, `a = -0.5`; weights are divided by their sum, then turned into signed
//!   fixed point with 22 fractional bits, rounding half away from zero;
//! * each pass accumulates `sum(w * pixel)` in 32-bit integers starting from `1 << 21`
//!   (so the final shift rounds), then shifts right by 22 and clamps to `0..=255`. The
//!   intermediate image is therefore 8-bit, as in Pillow.
//!
//! Pillow's `resize()` with its default `reducing_gap=None` does no `reduce()` (box
//! pre-shrink) step, so none is done here either.
//!
//! # Nearest (`Image.NEAREST`)
//!
//! Output pixel `(x, y)` takes source pixel `(floor((x + 0.5) * in_w / out_w), ...)`, but
//! Pillow computes that position in two different ways depending on the image mode, and the
//! two can disagree by one pixel where the exact position is a whole number:
//! * 8- and 32-bit modes (`L`, `P`, `I`, `F`, …) go through `ImagingScaleAffine`, which
//!   starts at `scale / 2` and *accumulates* `+= scale` in `f64` per pixel;
//! * 16-bit modes (`I;16`, `I;16B`, …) go through the generic transform, which *multiplies*
//!   `scale * (x + 0.5)`.
//!
//! [`resize_nearest`] picks the rule from the sample size: 2-byte samples follow `I;16`,
//! every other size follows the 8/32-bit path.

use image::RgbImage;
use rayon::prelude::*;

/// Fractional bits of Pillow's fixed-point weights for 8-bit images: 32 bits minus 8 for
/// the sample minus 2 of headroom (the kernel has negative lobes, sums can overshoot).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// The accumulator's start value, half a unit, so that the final shift rounds.
const HALF: i32 = 1 << (PRECISION_BITS - 1);
/// Half-width of the bicubic kernel, in (unscaled) pixels.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Keys' cubic convolution kernel with `a = -0.5`, evaluated in the same operation order
/// as Pillow (so that every rounding is the same).
fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point resampling weights for one axis.
struct Coefficients {
    /// Weights per output pixel, `taps` slots each (only the first `len[i]` are used).
    weights: Vec<i32>,
    /// First input pixel read by each output pixel.
    start: Vec<usize>,
    /// Number of input pixels read by each output pixel.
    len: Vec<usize>,
    /// Slots per output pixel in `weights`.
    taps: usize,
}

impl Coefficients {
    /// The weights of output pixel `i` (one per input pixel `start[i] ..`).
    #[inline]
    fn of(&self, i: usize) -> (usize, &[i32]) {
        let base = i * self.taps;
        (self.start[i], &self.weights[base..base + self.len[i]])
    }
}

/// Computes the bicubic weights taking an axis of `in_size` pixels to `out_size` pixels
/// (the whole axis: Pillow's default box `(0, in_size)`).
fn bicubic_coefficients(in_size: usize, out_size: usize) -> Coefficients {
    // Pillow keeps the box in `float`; the whole-image box is exact in f32 below 2^24.
    let box_len = in_size as f32 - 0.0f32;
    let scale = f64::from(box_len) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = BICUBIC_SUPPORT * filterscale;
    let taps = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;

    let mut weights = vec![0i32; out_size * taps];
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut k = vec![0f64; taps];
    for (i, slot) in weights.chunks_exact_mut(taps).enumerate() {
        let center = (i as f64 + 0.5) * scale;
        // `as` truncates toward zero, like C's (int) cast.
        let lo = ((center - support + 0.5) as i64).max(0);
        let hi = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (hi - lo).max(0) as usize;
        let mut sum = 0.0;
        for (j, kj) in k[..n].iter_mut().enumerate() {
            let w = bicubic_kernel(((j as i64 + lo) as f64 - center + 0.5) * inv_filterscale);
            *kj = w;
            sum += w;
        }
        if sum != 0.0 {
            for kj in &mut k[..n] {
                *kj /= sum;
            }
        }
        for (s, &kj) in slot.iter_mut().zip(&k[..n]) {
            let fixed = kj * f64::from(1u32 << PRECISION_BITS);
            *s = if kj < 0.0 { (-0.5 + fixed) as i32 } else { (0.5 + fixed) as i32 };
        }
        start.push(lo as usize);
        len.push(n);
    }
    Coefficients { weights, start, len, taps }
}

/// Pillow's `clip8`: drop the fractional bits, clamp to a byte.
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `out[i] = clip8(HALF + Σ_k w[k] · src[(start + k) · stride + i])` for `i < out.len()`
/// (`acc`: scratch, at least as long): the inner loop of both passes, one tap's run of
/// contiguous bytes at a time. Compiled twice: with AVX2 (eight 32-bit products per
/// instruction), used when the CPU has it, and for the build's baseline (x86-64's SSE2 has
/// no 32-bit vector product, so that loop runs a few times slower). The same integer sums
/// either way.
fn resample_run(out: &mut [u8], acc: &mut [i32], src: &[u8], start: usize, stride: usize, w: &[i32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { resample_run_avx2(out, acc, src, start, stride, w) };
    }
    resample_run_baseline(out, acc, src, start, stride, w);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn resample_run_avx2(out: &mut [u8], acc: &mut [i32], src: &[u8], start: usize, stride: usize, w: &[i32]) {
    resample_run_baseline(out, acc, src, start, stride, w);
}

#[inline(always)]
fn resample_run_baseline(out: &mut [u8], acc: &mut [i32], src: &[u8], start: usize, stride: usize, w: &[i32]) {
    let acc = &mut acc[..out.len()];
    acc.fill(HALF);
    for (k, &wk) in w.iter().enumerate() {
        let run = &src[(start + k) * stride..][..acc.len()];
        for (a, &p) in acc.iter_mut().zip(run) {
            *a += i32::from(p) * wk;
        }
    }
    for (o, &a) in out.iter_mut().zip(acc.iter()) {
        *o = clip8(a);
    }
}

/// Rows the horizontal pass resamples together. Along a row the taps of one output pixel
/// are a few scattered `C`-byte pixels, too short a loop for vector instructions; so the
/// pass first interleaves `ROW_BLOCK` rows (the block's pixel `x` is their `x`-th pixels
/// side by side, `ROW_BLOCK · C` bytes), and each tap then adds one contiguous run of that
/// length, as in the vertical pass. Integer sums, so the order changes no bit.
const ROW_BLOCK: usize = 32;

/// Horizontal pass over interleaved rows of `C` bytes per pixel: resamples rows
/// `first_row .. first_row + out.len() / (out_width * C)` of `src` (`src_width` pixels
/// wide) into `out` (`out_width` pixels wide).
fn horizontal_pass<const C: usize>(
    src: &[u8],
    src_width: usize,
    first_row: usize,
    coeffs: &Coefficients,
    out: &mut [u8],
    out_width: usize,
) {
    let in_stride = src_width * C;
    let out_stride = out_width * C;
    out.par_chunks_mut(out_stride * ROW_BLOCK).enumerate().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(block, acc, resampled): &mut (Vec<u8>, Vec<i32>, Vec<u8>), (b, rows_out)| {
            let rows = rows_out.len() / out_stride;
            let lanes = rows * C;
            block.resize(src_width * lanes, 0);
            acc.resize(lanes, 0);
            resampled.resize(out_width * lanes, 0);
            let first = first_row + b * ROW_BLOCK;
            for r in 0..rows {
                let row_in = &src[(first + r) * in_stride..][..in_stride];
                for (px, lane) in row_in.chunks_exact(C).zip(block.chunks_exact_mut(lanes)) {
                    lane[r * C..][..C].copy_from_slice(px);
                }
            }
            for (xx, out_lanes) in resampled.chunks_exact_mut(lanes).enumerate() {
                let (start, w) = coeffs.of(xx);
                resample_run(out_lanes, acc, block, start, lanes, w);
            }
            for (r, row_out) in rows_out.chunks_exact_mut(out_stride).enumerate() {
                for (px, lane) in row_out.chunks_exact_mut(C).zip(resampled.chunks_exact(lanes)) {
                    px.copy_from_slice(&lane[r * C..][..C]);
                }
            }
        },
    );
}

/// Vertical pass: each output row is a weighted sum of whole rows of `src` (`row_len`
/// bytes each), so the inner loop runs along contiguous memory.
fn vertical_pass(src: &[u8], row_len: usize, coeffs: &Coefficients, out: &mut [u8]) {
    out.par_chunks_mut(row_len).enumerate().for_each_init(
        || vec![0i32; row_len],
        |acc, (yy, row_out)| {
            let (start, w) = coeffs.of(yy);
            resample_run(row_out, acc, src, start, row_len, w);
        },
    );
}

/// Resizes interleaved 8-bit pixels (`C` channels) like Pillow's bicubic resampling.
fn resize_bicubic_u8<const C: usize>(
    src: &[u8],
    width: usize,
    height: usize,
    new_width: usize,
    new_height: usize,
) -> Vec<u8> {
    assert_eq!(src.len(), width * height * C, "pixel buffer does not match its size");
    assert!(width > 0 && height > 0, "cannot resize an empty image");
    assert!(new_width > 0 && new_height > 0, "cannot resize to an empty image");
    let need_h = new_width != width;
    let need_v = new_height != height;
    if !need_h && !need_v {
        return src.to_vec();
    }
    let vert = need_v.then(|| bicubic_coefficients(height, new_height));
    if need_h && need_v && new_width > width && new_height < height {
        // Pillow 13 runs the vertical pass first when only the height shrinks.
        let mut temp = vec![0u8; width * new_height * C];
        vertical_pass(src, width * C, vert.as_ref().unwrap(), &mut temp);
        let horiz = bicubic_coefficients(width, new_width);
        let mut out = vec![0u8; new_width * new_height * C];
        horizontal_pass::<C>(&temp, width, 0, &horiz, &mut out, new_width);
        return out;
    }
    if !need_h {
        let mut out = vec![0u8; new_width * new_height * C];
        vertical_pass(src, width * C, vert.as_ref().unwrap(), &mut out);
        return out;
    }
    let horiz = bicubic_coefficients(width, new_width);
    // Only the source rows that the vertical pass reads get a horizontal pass.
    let (first, last) = match &vert {
        Some(v) => {
            let n = new_height - 1;
            (v.start[0], v.start[n] + v.len[n])
        }
        None => (0, height),
    };
    let mut temp = vec![0u8; new_width * (last - first) * C];
    horizontal_pass::<C>(src, width, first, &horiz, &mut temp, new_width);
    let Some(mut vert) = vert else { return temp };
    for s in &mut vert.start {
        *s -= first;
    }
    let mut out = vec![0u8; new_width * new_height * C];
    vertical_pass(&temp, new_width * C, &vert, &mut out);
    out
}

/// Pillow's `Image.resize((width, height), Image.BICUBIC)` on an RGB image, bit-exact.
///
/// `width`/`height` are the output size in pixels. Uses the rayon thread pool that is
/// current when called (rows are split between threads; results do not depend on it).
///
/// # Panics
///
/// If the input or the requested size is empty (Pillow raises `ValueError` for the latter).
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let data = resize_bicubic_u8::<3>(img.as_raw(), w as usize, h as usize, width as usize, height as usize);
    RgbImage::from_raw(width, height, data).expect("buffer size matches")
}

/// Source index of each output pixel along one axis for Pillow's `NEAREST`.
///
/// `accumulate` selects the 8/32-bit rule (running sum) over the 16-bit one (product);
/// see the module documentation.
fn nearest_indices(in_size: usize, out_size: usize, accumulate: bool) -> Vec<usize> {
    let scale = f64::from(in_size as f32 - 0.0f32) / out_size as f64;
    // Pillow's COORD(): -1 for negative, truncation otherwise. Out-of-range positions
    // would be left black by Pillow; they need sizes beyond 2^26 to occur, so a clamp
    // stands in for that here.
    let coord = |v: f64| -> usize {
        if v < 0.0 {
            0
        } else {
            (v as usize).min(in_size - 1)
        }
    };
    if accumulate {
        let mut pos = 0.0 + scale * 0.5;
        (0..out_size)
            .map(|_| {
                let i = coord(pos);
                pos += scale;
                i
            })
            .collect()
    } else {
        (0..out_size).map(|i| coord(scale * (i as f64 + 0.5) + 0.0)).collect()
    }
}

/// Pillow's `Image.resize((new_width, new_height), Image.NEAREST)` on a single-channel
/// image, bit-exact.
///
/// `data` is row-major, `width * height` samples. `u8` samples behave as Pillow's `L`/`P`
/// modes, `u16` as `I;16`; 4-byte samples (`i32`, `f32`) as `I`/`F` (see the module
/// documentation for why the sample size matters). Returns `new_width * new_height`
/// samples, row-major.
///
/// # Panics
///
/// If `data.len() != width * height`, or either size is empty.
pub fn resize_nearest<T: Copy + Send + Sync>(
    data: &[T],
    width: u32,
    height: u32,
    new_width: u32,
    new_height: u32,
) -> Vec<T> {
    let (w, h) = (width as usize, height as usize);
    let (nw, nh) = (new_width as usize, new_height as usize);
    assert_eq!(data.len(), w * h, "sample buffer does not match its size");
    assert!(w > 0 && h > 0, "cannot resize an empty image");
    assert!(nw > 0 && nh > 0, "cannot resize to an empty image");
    if (w, h) == (nw, nh) {
        return data.to_vec();
    }
    let accumulate = std::mem::size_of::<T>() != 2;
    let xs = nearest_indices(w, nw, accumulate);
    let ys = nearest_indices(h, nh, accumulate);
    let mut out = Vec::with_capacity(nw * nh);
    out.par_extend(ys.par_iter().flat_map_iter(|&y| {
        let row = &data[y * w..][..w];
        xs.iter().map(move |&x| row[x])
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_values() {
        assert_eq!(bicubic_kernel(0.0), 1.0);
        assert_eq!(bicubic_kernel(1.0), 0.0);
        assert_eq!(bicubic_kernel(-1.0), 0.0);
        assert_eq!(bicubic_kernel(2.0), 0.0);
        assert_eq!(bicubic_kernel(0.5), 0.5625);
        assert_eq!(bicubic_kernel(1.5), -0.0625);
    }

    #[test]
    fn fixed_point_weights_sum_to_one_within_rounding() {
        for (i, o) in [(67, 31), (41, 97), (2048, 1280), (5, 1), (1, 7)] {
            let c = bicubic_coefficients(i, o);
            for x in 0..o {
                let (_, w) = c.of(x);
                let s: i32 = w.iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= w.len() as i32, "{i}->{o} @{x}: {s}");
            }
        }
    }

    #[test]
    fn same_size_is_a_copy_and_constant_images_stay_constant() {
        let img = RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 7]));
        assert_eq!(resize_bicubic(&img, 9, 7), img);
        let flat = RgbImage::from_pixel(13, 11, image::Rgb([200, 3, 99]));
        for (w, h) in [(5, 4), (31, 2), (1, 1), (13, 40)] {
            let r = resize_bicubic(&flat, w, h);
            assert!(r.pixels().all(|p| p.0 == [200, 3, 99]), "{w}x{h}");
        }
    }

    /// The horizontal pass one output pixel at a time, as Pillow's loop runs: the blocked
    /// pass must give the same bytes (at ADVENT's sizes, with row counts that leave a
    /// partial block, from a first row inside the image, in 1 and 3 channels). The Pillow
    /// fixtures (tests/image.rs) check both passes at small sizes.
    #[test]
    fn blocked_horizontal_pass_is_pillows_loop() {
        fn per_pixel<const C: usize>(src: &[u8], w: usize, first: usize, c: &Coefficients, out: &mut [u8], ow: usize) {
            for (r, row_out) in out.chunks_exact_mut(ow * C).enumerate() {
                let row_in = &src[(first + r) * w * C..][..w * C];
                for (xx, px) in row_out.chunks_exact_mut(C).enumerate() {
                    let (start, wt) = c.of(xx);
                    let mut acc = [HALF; C];
                    for (k, &wk) in wt.iter().enumerate() {
                        for ch in 0..C {
                            acc[ch] += i32::from(row_in[(start + k) * C + ch]) * wk;
                        }
                    }
                    for ch in 0..C {
                        px[ch] = clip8(acc[ch]);
                    }
                }
            }
        }
        fn check<const C: usize>(w: usize, h: usize, ow: usize, first: usize, rows: usize) {
            let mut state = 12345u32;
            let src: Vec<u8> = (0..w * h * C)
                .map(|_| {
                    state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                    (state >> 24) as u8
                })
                .collect();
            let c = bicubic_coefficients(w, ow);
            let (mut ours, mut theirs) = (vec![0u8; ow * rows * C], vec![0u8; ow * rows * C]);
            horizontal_pass::<C>(&src, w, first, &c, &mut ours, ow);
            per_pixel::<C>(&src, w, first, &c, &mut theirs, ow);
            let differ = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{C} channels, {w} -> {ow}, rows {first}..{}", first + rows);
        }
        check::<3>(1914, 1052, 1280, 3, 1045);
        check::<3>(2048, 1024, 1024, 0, 1024);
        check::<3>(640, 40, 1000, 7, 21);
        check::<1>(300, 37, 77, 1, 35);
    }

    /// The baseline build of the inner loop (what a CPU without AVX2 runs) gives the bytes
    /// of the dispatched one (this machine's), and both the sums by hand.
    #[test]
    fn both_builds_of_the_inner_loop_agree() {
        let src: Vec<u8> = (0..40u32 * 53).map(|i| (i * 97 % 251) as u8).collect();
        let w = [-70_000, 1_300_000, 3_200_000, -236_304];
        let (mut a, mut b) = (vec![0u8; 53], vec![0u8; 53]);
        let mut acc = vec![0i32; 60];
        resample_run(&mut a, &mut acc, &src, 5, 53, &w);
        resample_run_baseline(&mut b, &mut acc, &src, 5, 53, &w);
        assert_eq!(a, b);
        for (i, &got) in a.iter().enumerate() {
            let sum: i64 = w.iter().enumerate().map(|(k, &wk)| i64::from(src[(5 + k) * 53 + i]) * i64::from(wk)).sum();
            let want = ((sum + i64::from(HALF)) >> PRECISION_BITS).clamp(0, 255) as u8;
            assert_eq!(got, want, "byte {i}");
        }
    }

    #[test]
    fn nearest_integer_factors() {
        let data: Vec<u8> = (0..12).collect(); // 4x3
        assert_eq!(resize_nearest(&data, 4, 3, 2, 1), vec![5, 7]);
        let up = resize_nearest(&data, 4, 3, 8, 6);
        assert_eq!(&up[..8], &[0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(&up[8..16], &[0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(&up[40..], &[8, 8, 9, 9, 10, 10, 11, 11]);
    }

    #[test]
    fn nearest_rules_differ_where_pillow_differs() {
        // 2 -> 7: the exact position of output pixel 3 is 1.0; the running sum lands
        // just below it, the product on it.
        assert_eq!(nearest_indices(2, 7, true)[3], 0);
        assert_eq!(nearest_indices(2, 7, false)[3], 1);
        // 2 -> 49, pixel 24: the other way round.
        assert_eq!(nearest_indices(2, 49, true)[24], 1);
        assert_eq!(nearest_indices(2, 49, false)[24], 0);
    }
}
