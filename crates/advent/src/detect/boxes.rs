//! Box geometry of SSD: areas, Jaccard overlap (IoU), the corner ↔ center conversions, and the
//! offset encoding that the localisation head regresses.
//!
//! Everything follows `layers/box_utils.py` of amdegroot/ssd.pytorch (`point_form`,
//! `center_size`, `intersect`, `jaccard`, `encode`, `decode`), one box at a time instead of
//! whole tensors, in `f32` as the reference's tensors are. Boxes are continuous: a box's area
//! is `(xmax - xmin) * (ymax - ymin)` with no `+ 1` (the pixel-inclusive convention of
//! VOC evaluation lives in [`super::map`]).
//!
//! Two forms of box appear:
//! * corner form `[xmin, ymin, xmax, ymax]` (the reference's "point form"): ground truth and
//!   detections;
//! * center form `[cx, cy, w, h]` (the reference's "center-size form"): the default boxes
//!   (priors) of [`super::priors`].

/// Area of a corner-form box; a box whose `xmax < xmin` or `ymax < ymin` has area 0.
///
/// (The reference does not clamp: it only ever takes areas of well-formed boxes.)
pub fn area(b: [f32; 4]) -> f32 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

/// Area of the intersection of two corner-form boxes (the reference's `intersect`): 0 when
/// they do not overlap.
pub fn intersection(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h
}

/// Jaccard overlap (intersection over union) of two corner-form boxes, as the reference's
/// `jaccard`: `inter / (area(a) + area(b) - inter)`.
///
/// 0 for disjoint boxes, and 0 (not NaN as in the reference) when the union is empty, i.e.
/// both boxes are degenerate.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let inter = intersection(a, b);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// IoU of every box of `a` with every box of `b` (both corner form), flat and row-major:
/// the overlap of `a[i]` and `b[j]` is at `i * b.len() + j` (the reference's `[A, B]`
/// `jaccard` matrix).
pub fn jaccard_matrix(a: &[[f32; 4]], b: &[[f32; 4]]) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.len() * b.len());
    for &x in a {
        out.extend(b.iter().map(|&y| iou(x, y)));
    }
    out
}

/// Center form `[cx, cy, w, h]` → corner form `[xmin, ymin, xmax, ymax]` (the reference's
/// `point_form`).
pub fn point_form(c: [f32; 4]) -> [f32; 4] {
    [c[0] - c[2] / 2.0, c[1] - c[3] / 2.0, c[0] + c[2] / 2.0, c[1] + c[3] / 2.0]
}

/// Corner form `[xmin, ymin, xmax, ymax]` → center form `[cx, cy, w, h]` (the reference's
/// `center_size`).
pub fn center_size(b: [f32; 4]) -> [f32; 4] {
    [(b[2] + b[0]) / 2.0, (b[3] + b[1]) / 2.0, b[2] - b[0], b[3] - b[1]]
}

/// The regression target of a ground-truth box for a prior, as the reference's `encode`:
///
/// ```text
/// g_cx = ((xmin + xmax) / 2 - p_cx) / (variances[0] * p_w)      (likewise g_cy with y, p_h)
/// g_w  = ln((xmax - xmin) / p_w) / variances[1]                  (likewise g_h)
/// ```
///
/// `matched` is corner form, `prior` center form, both relative to the image; SSD's
/// variances are `[0.1, 0.2]` ([`super::priors::PriorConfig::variance`]). A degenerate
/// `matched` box (zero width or height) gives `-inf`, as in the reference.
pub fn encode(matched: [f32; 4], prior: [f32; 4], variances: [f32; 2]) -> [f32; 4] {
    let cx = ((matched[0] + matched[2]) / 2.0 - prior[0]) / (variances[0] * prior[2]);
    let cy = ((matched[1] + matched[3]) / 2.0 - prior[1]) / (variances[0] * prior[3]);
    let w = ((matched[2] - matched[0]) / prior[2]).ln() / variances[1];
    let h = ((matched[3] - matched[1]) / prior[3]).ln() / variances[1];
    [cx, cy, w, h]
}

/// The box a predicted offset `loc` stands for, as the reference's `decode` (the inverse of
/// [`encode`]): center `p_c + loc_c * variances[0] * p_wh`, size `p_wh * exp(loc_wh *
/// variances[1])`, returned in corner form, relative to the image and not clipped.
pub fn decode(loc: [f32; 4], prior: [f32; 4], variances: [f32; 2]) -> [f32; 4] {
    let cx = prior[0] + loc[0] * variances[0] * prior[2];
    let cy = prior[1] + loc[1] * variances[0] * prior[3];
    let w = prior[2] * (loc[2] * variances[1]).exp();
    let h = prior[3] * (loc[3] * variances[1]).exp();
    // The reference's order of operations: xmin = cx - w / 2, then xmax = xmin + w.
    let (x0, y0) = (cx - w / 2.0, cy - h / 2.0);
    [x0, y0, x0 + w, y0 + h]
}

/// A box in pixel coordinates with inclusive maxima (`xmax` the last pixel column inside it,
/// as VOC annotations and [`super::cityscapes`] give boxes) → relative corner form covering
/// the same pixels: `[xmin / w, ymin / h, (xmax + 1) / w, (ymax + 1) / h]`.
///
/// ssd.pytorch divides the inclusive maxima themselves (`xmax / w`), which makes a box one
/// pixel wide degenerate (zero width, an infinite [`encode`] target); Cityscapes has such
/// instances, so we take the pixels' extent. [`to_pixels`] is the inverse.
pub fn to_relative(px: [f32; 4], width: u32, height: u32) -> [f32; 4] {
    let (w, h) = (width as f32, height as f32);
    [px[0] / w, px[1] / h, (px[2] + 1.0) / w, (px[3] + 1.0) / h]
}

/// A relative corner-form box (e.g. a detection) → pixel coordinates with inclusive maxima
/// in an image of `width × height` pixels, the frame of VOC evaluation ([`super::map`]):
/// `[xmin · w, ymin · h, xmax · w - 1, ymax · h - 1]`, the inverse of [`to_relative`]. Not
/// rounded and not clipped.
pub fn to_pixels(rel: [f32; 4], width: u32, height: u32) -> [f32; 4] {
    let (w, h) = (width as f32, height as f32);
    [rel[0] * w, rel[1] * h, rel[2] * w - 1.0, rel[3] * h - 1.0]
}

#[cfg(test)]
mod tests {
    use super::*;

    const VAR: [f32; 2] = [0.1, 0.2];

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn areas_and_overlaps() {
        // 0.4 x 0.5 = 0.2; an inverted box has no area.
        assert!((area([0.1, 0.2, 0.5, 0.7]) - 0.2).abs() < 1e-7);
        assert_eq!(area([0.5, 0.2, 0.1, 0.7]), 0.0);
        // [0,0,2,2] and [1,1,3,3]: intersection 1x1 = 1, union 4 + 4 - 1 = 7.
        assert!((iou([0., 0., 2., 2.], [1., 1., 3., 3.]) - 1.0 / 7.0).abs() < 1e-7);
        // Nested: [0,0,4,4] ⊃ [1,1,3,3]: 4 / 16.
        assert!((iou([0., 0., 4., 4.], [1., 1., 3., 3.]) - 0.25).abs() < 1e-7);
        assert_eq!(iou([0., 0., 1., 1.], [0., 0., 1., 1.]), 1.0);
        // Disjoint, touching (a shared edge has no area), degenerate.
        assert_eq!(iou([0., 0., 1., 1.], [2., 2., 3., 3.]), 0.0);
        assert_eq!(iou([0., 0., 1., 1.], [1., 0., 2., 1.]), 0.0);
        assert_eq!(iou([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]), 0.0);
        assert_eq!(iou([0.5, 0.5, 0.5, 0.9], [0., 0., 1., 1.]), 0.0);
    }

    #[test]
    fn jaccard_matrix_is_row_major() {
        let a = [[0., 0., 2., 2.], [0., 0., 4., 4.]];
        let b = [[1., 1., 3., 3.], [5., 5., 6., 6.], [0., 0., 2., 2.]];
        let m = jaccard_matrix(&a, &b);
        // Row 0: 1/7, 0, 1; row 1: [0,0,4,4] with [1,1,3,3] = 4/16, 0, [0,0,2,2] = 4/16.
        assert!(close(&m, &[1.0 / 7.0, 0.0, 1.0, 0.25, 0.0, 0.25], 1e-7), "{m:?}");
        assert!(jaccard_matrix(&[], &b).is_empty());
    }

    #[test]
    fn corner_center_round_trip() {
        // [0.1, 0.2, 0.5, 0.8]: center (0.3, 0.5), size 0.4 x 0.6.
        let c = center_size([0.1, 0.2, 0.5, 0.8]);
        assert!(close(&c, &[0.3, 0.5, 0.4, 0.6], 1e-7), "{c:?}");
        assert!(close(&point_form(c), &[0.1, 0.2, 0.5, 0.8], 1e-7));
    }

    #[test]
    fn pixel_and_relative_frames() {
        // In a 2048x1024 frame, pixels 1024..=1535 x 0..=255: [1024 / 2048, 0, 1536 / 2048,
        // 256 / 1024] = [0.5, 0, 0.75, 0.25].
        let r = to_relative([1024., 0., 1535., 255.], 2048, 1024);
        assert_eq!(r, [0.5, 0.0, 0.75, 0.25]);
        assert_eq!(to_pixels(r, 2048, 1024), [1024., 0., 1535., 255.]);
        // A single pixel (7, 3) in a 10x10 image keeps a size: [0.7, 0.3, 0.8, 0.4].
        let r = to_relative([7., 3., 7., 3.], 10, 10);
        assert!(close(&r, &[0.7, 0.3, 0.8, 0.4], 1e-7), "{r:?}");
        assert!(close(&to_pixels(r, 10, 10), &[7., 3., 7., 3.], 1e-5));
    }

    #[test]
    fn encode_by_hand() {
        // Prior center (0.5, 0.5), size 0.2 x 0.4; truth [0.42, 0.3, 0.62, 0.9]:
        // center (0.52, 0.6), size 0.2 x 0.6.
        // g_cx = (0.52 - 0.5) / (0.1 * 0.2) = 0.02 / 0.02 = 1
        // g_cy = (0.6 - 0.5) / (0.1 * 0.4) = 0.1 / 0.04 = 2.5
        // g_w  = ln(0.2 / 0.2) / 0.2 = 0
        // g_h  = ln(0.6 / 0.4) / 0.2 = ln(1.5) / 0.2 = 0.4054651 / 0.2 = 2.0273255
        let prior = [0.5, 0.5, 0.2, 0.4];
        let g = encode([0.42, 0.3, 0.62, 0.9], prior, VAR);
        assert!(close(&g, &[1.0, 2.5, 0.0, 2.0273255], 1e-5), "{g:?}");
        let back = decode(g, prior, VAR);
        assert!(close(&back, &[0.42, 0.3, 0.62, 0.9], 1e-6), "{back:?}");
        // Zero offsets decode to the prior itself.
        assert!(close(&decode([0.0; 4], prior, VAR), &point_form(prior), 1e-7));
    }

    #[test]
    fn encode_decode_round_trip() {
        let priors = [[0.013333, 0.013333, 0.1, 0.1], [0.5, 0.5, 1.0, 0.622254], [0.9, 0.1, 0.07, 0.14]];
        let truths = [[0.0, 0.0, 0.05, 0.2], [0.3, 0.25, 0.95, 0.6], [0.7, 0.01, 0.99, 0.3]];
        for p in priors {
            for t in truths {
                let back = decode(encode(t, p, VAR), p, VAR);
                assert!(close(&back, &t, 1e-5), "{t:?} via {p:?} → {back:?}");
            }
        }
        // And the other way: decode then encode gives the offsets back.
        let loc = [0.3, -1.2, 0.5, -0.7];
        let again = encode(decode(loc, priors[1], VAR), priors[1], VAR);
        assert!(close(&again, &loc, 1e-5), "{again:?}");
    }
}
