//! SSD's default boxes ("priors"), as ssd.pytorch's `PriorBox` (`layers/functions/prior_box.py`)
//! with its SSD300 configuration (`data/config.py`, `voc`).
//!
//! For each source feature map `k` of size `f × f` and each cell `(i, j)` in row-major order
//! (`i` the row), with `f_k = min_dim / steps[k]` (a real number: 37.5 for the 38 × 38 map,
//! as in the reference) and the cell center `cx = (j + 0.5) / f_k`, `cy = (i + 0.5) / f_k`,
//! the boxes in center form `[cx, cy, w, h]`, relative to the image, are, in this order:
//!
//! 1. `s_k = min_sizes[k] / min_dim`, square: `[cx, cy, s_k, s_k]`;
//! 2. `s_k' = sqrt(s_k * max_sizes[k] / min_dim)`, square: `[cx, cy, s_k', s_k']`;
//! 3. for each aspect ratio `ar` of map `k`: `[cx, cy, s_k·√ar, s_k/√ar]`, then
//!    `[cx, cy, s_k/√ar, s_k·√ar]`.
//!
//! With `clip`, every coordinate (centers and sizes alike, as the reference clamps the
//! center-form tensor) is clamped to `[0, 1]`. Values are computed in `f64`, as Python does,
//! and stored as `f32`, as `torch.Tensor(mean)` does.

use anyhow::{bail, Result};

/// The default-box layout of an SSD: one entry per source feature map.
///
/// Field names are those of ssd.pytorch's config dicts; [`Default`] is its SSD300 (`voc`)
/// configuration, which gives 8732 priors.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorConfig {
    /// Input image side in pixels (`min_dim`, 300).
    pub min_dim: f64,
    /// Side of each source feature map, in cells (`[38, 19, 10, 5, 3, 1]`).
    pub feature_maps: Vec<usize>,
    /// Pixel stride of each map's cells (`[8, 16, 32, 64, 100, 300]`).
    pub steps: Vec<f64>,
    /// Smallest box side of each map, in pixels (`[30, 60, 111, 162, 213, 264]`).
    pub min_sizes: Vec<f64>,
    /// Side whose geometric mean with `min_sizes[k]` gives map `k`'s second square box, in
    /// pixels (`[60, 111, 162, 213, 264, 315]`).
    pub max_sizes: Vec<f64>,
    /// Extra aspect ratios of each map; each adds two boxes per cell (`[[2], [2, 3], [2, 3],
    /// [2, 3], [2], [2]]`).
    pub aspect_ratios: Vec<Vec<f64>>,
    /// Variances of the box encoding, center then size (`[0.1, 0.2]`): see
    /// [`super::boxes::encode`].
    pub variance: [f32; 2],
    /// Clamp the priors to `[0, 1]` (`true`).
    pub clip: bool,
}

impl Default for PriorConfig {
    fn default() -> Self {
        Self::ssd300()
    }
}

impl PriorConfig {
    /// ssd.pytorch's SSD300 configuration (`data/config.py`, `voc`; the SSD paper's Table 1
    /// setting for 300 × 300 inputs).
    pub fn ssd300() -> Self {
        Self {
            min_dim: 300.0,
            feature_maps: vec![38, 19, 10, 5, 3, 1],
            steps: vec![8.0, 16.0, 32.0, 64.0, 100.0, 300.0],
            min_sizes: vec![30.0, 60.0, 111.0, 162.0, 213.0, 264.0],
            max_sizes: vec![60.0, 111.0, 162.0, 213.0, 264.0, 315.0],
            aspect_ratios: vec![vec![2.0], vec![2.0, 3.0], vec![2.0, 3.0], vec![2.0, 3.0], vec![2.0], vec![2.0]],
            variance: [0.1, 0.2],
            clip: true,
        }
    }

    /// Checks that every per-map list has one entry per feature map and that the sizes and
    /// variances are positive (the reference refuses variances `<= 0`).
    pub fn check(&self) -> Result<()> {
        let n = self.feature_maps.len();
        if n == 0 {
            bail!("prior config: no feature maps");
        }
        for (name, len) in [
            ("steps", self.steps.len()),
            ("min_sizes", self.min_sizes.len()),
            ("max_sizes", self.max_sizes.len()),
            ("aspect_ratios", self.aspect_ratios.len()),
        ] {
            if len != n {
                bail!("prior config: {name} has {len} entries for {n} feature maps");
            }
        }
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if !positive(self.min_dim)
            || !self.steps.iter().chain(&self.min_sizes).chain(&self.max_sizes).all(|&v| positive(v))
            || !self.aspect_ratios.iter().flatten().all(|&v| positive(v))
        {
            bail!("prior config: min_dim, steps, sizes and aspect ratios must be positive");
        }
        if !self.variance.iter().all(|&v| v > 0.0 && v.is_finite()) {
            bail!("prior config: variances must be greater than 0, not {:?}", self.variance);
        }
        Ok(())
    }

    /// Default boxes per cell of each map (`2 + 2 · aspect ratios`: `[4, 6, 6, 6, 4, 4]` for
    /// SSD300), the number of box predictions per location of the matching head.
    pub fn boxes_per_cell(&self) -> Vec<usize> {
        self.aspect_ratios.iter().map(|a| 2 + 2 * a.len()).collect()
    }

    /// Number of priors contributed by each map (`f² · boxes per cell`), in output order.
    pub fn priors_per_map(&self) -> Vec<usize> {
        self.feature_maps.iter().zip(self.boxes_per_cell()).map(|(&f, b)| f * f * b).collect()
    }

    /// Total number of priors (8732 for SSD300).
    pub fn num_priors(&self) -> usize {
        self.priors_per_map().iter().sum()
    }

    /// The default boxes in center form `[cx, cy, w, h]`, relative to the image, in the
    /// reference's order (see the module documentation): `num_priors()` boxes.
    ///
    /// # Panics
    ///
    /// If the per-map lists are shorter than `feature_maps` (see [`PriorConfig::check`]).
    pub fn priors(&self) -> Vec<[f32; 4]> {
        let mut out = Vec::with_capacity(self.num_priors());
        for (k, &f) in self.feature_maps.iter().enumerate() {
            let f_k = self.min_dim / self.steps[k];
            let s_k = self.min_sizes[k] / self.min_dim;
            let s_k_prime = (s_k * (self.max_sizes[k] / self.min_dim)).sqrt();
            for i in 0..f {
                for j in 0..f {
                    let cx = (j as f64 + 0.5) / f_k;
                    let cy = (i as f64 + 0.5) / f_k;
                    out.push([cx, cy, s_k, s_k]);
                    out.push([cx, cy, s_k_prime, s_k_prime]);
                    for &ar in &self.aspect_ratios[k] {
                        let r = ar.sqrt();
                        out.push([cx, cy, s_k * r, s_k / r]);
                        out.push([cx, cy, s_k / r, s_k * r]);
                    }
                }
            }
        }
        out.into_iter().map(|b| b.map(|v| if self.clip { v.clamp(0.0, 1.0) as f32 } else { v as f32 })).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f32; 4], b: [f64; 4]) -> bool {
        a.iter().zip(b).all(|(&x, y)| (x as f64 - y).abs() < 1e-6)
    }

    #[test]
    fn ssd300_has_8732_priors_in_the_reference_order() {
        let cfg = PriorConfig::default();
        cfg.check().unwrap();
        assert_eq!(cfg.boxes_per_cell(), vec![4, 6, 6, 6, 4, 4]);
        // 38·38·4 = 5776, 19·19·6 = 2166, 10·10·6 = 600, 5·5·6 = 150, 3·3·4 = 36, 1·1·4 = 4.
        assert_eq!(cfg.priors_per_map(), vec![5776, 2166, 600, 150, 36, 4]);
        let p = cfg.priors();
        assert_eq!(p.len(), 8732);
        assert_eq!(cfg.num_priors(), 8732);

        // First cell of the 38x38 map: f_k = 300 / 8 = 37.5, cx = cy = 0.5 / 37.5 = 0.0133333;
        // s_k = 30 / 300 = 0.1; s_k' = sqrt(0.1 · 60 / 300) = sqrt(0.02) = 0.1414214;
        // ar 2: 0.1 · √2 = 0.1414214 and 0.1 / √2 = 0.0707107.
        let c = 0.5 / 37.5;
        assert!(close(p[0], [c, c, 0.1, 0.1]), "{:?}", p[0]);
        assert!(close(p[1], [c, c, 0.1414214, 0.1414214]), "{:?}", p[1]);
        assert!(close(p[2], [c, c, 0.1414214, 0.0707107]), "{:?}", p[2]);
        assert!(close(p[3], [c, c, 0.0707107, 0.1414214]), "{:?}", p[3]);
        // Second cell is j = 1 (same row): cx = 1.5 / 37.5 = 0.04, cy unchanged.
        assert!(close(p[4], [0.04, c, 0.1, 0.1]), "{:?}", p[4]);
        // Cell (i = 1, j = 0) starts at 38 · 4 = 152: cx = 0.0133333, cy = 0.04.
        assert!(close(p[152], [c, 0.04, 0.1, 0.1]), "{:?}", p[152]);
        // Last cell of the 38x38 map (index 5772): cx = cy = 37.5 / 37.5 = 1.
        assert!(close(p[5772], [1.0, 1.0, 0.1, 0.1]), "{:?}", p[5772]);

        // First box of the 19x19 map (index 5776): f_k = 300 / 16 = 18.75, cx = 0.5 / 18.75 =
        // 0.0266667; s_k = 60 / 300 = 0.2; then s_k' = sqrt(0.2 · 0.37) = 0.2720294;
        // ar 2: 0.2828427, 0.1414214; ar 3: 0.2 · √3 = 0.3464102, 0.2 / √3 = 0.1154701.
        let c = 0.5 / 18.75;
        assert!(close(p[5776], [c, c, 0.2, 0.2]), "{:?}", p[5776]);
        assert!(close(p[5777], [c, c, 0.2720294, 0.2720294]), "{:?}", p[5777]);
        assert!(close(p[5778], [c, c, 0.2828427, 0.1414214]), "{:?}", p[5778]);
        assert!(close(p[5780], [c, c, 0.3464102, 0.1154701]), "{:?}", p[5780]);
        assert!(close(p[5781], [c, c, 0.1154701, 0.3464102]), "{:?}", p[5781]);

        // The 1x1 map (last 4): cx = cy = 0.5; s_k = 264 / 300 = 0.88;
        // s_k' = sqrt(0.88 · 1.05) = sqrt(0.924) = 0.9612492;
        // ar 2: 0.88 · √2 = 1.2445079 → clipped to 1; 0.88 / √2 = 0.6222540.
        assert!(close(p[8728], [0.5, 0.5, 0.88, 0.88]), "{:?}", p[8728]);
        assert!(close(p[8729], [0.5, 0.5, 0.9612492, 0.9612492]), "{:?}", p[8729]);
        assert!(close(p[8730], [0.5, 0.5, 1.0, 0.6222540]), "{:?}", p[8730]);
        assert!(close(p[8731], [0.5, 0.5, 0.6222540, 1.0]), "{:?}", p[8731]);
        // The 3x3 map's last cell (index 8724): f_k = 3, cx = cy = 2.5 / 3 = 0.8333333,
        // s_k = 213 / 300 = 0.71.
        assert!(close(p[8724], [2.5 / 3.0, 2.5 / 3.0, 0.71, 0.71]), "{:?}", p[8724]);

        // Clipping: everything lies in [0, 1].
        assert!(p.iter().flatten().all(|&v| (0.0..=1.0).contains(&v)));
    }

    #[test]
    fn unclipped_and_other_layouts() {
        // One 2x2 map at 100 px, step 50 (f_k = 2), min 40, max 90, ratio 4, no clipping:
        // s_k = 0.4, s_k' = sqrt(0.4 · 0.9) = 0.6, ar 4: 0.4 · 2 = 0.8 and 0.4 / 2 = 0.2.
        let cfg = PriorConfig {
            min_dim: 100.0,
            feature_maps: vec![2],
            steps: vec![50.0],
            min_sizes: vec![40.0],
            max_sizes: vec![90.0],
            aspect_ratios: vec![vec![4.0]],
            variance: [0.1, 0.2],
            clip: false,
        };
        cfg.check().unwrap();
        let p = cfg.priors();
        assert_eq!(p.len(), 16);
        assert!(close(p[0], [0.25, 0.25, 0.4, 0.4]));
        assert!(close(p[1], [0.25, 0.25, 0.6, 0.6]));
        assert!(close(p[2], [0.25, 0.25, 0.8, 0.2]));
        assert!(close(p[3], [0.25, 0.25, 0.2, 0.8]));
        // Cell (1, 1), the last: cx = cy = 1.5 / 2 = 0.75.
        assert!(close(p[12], [0.75, 0.75, 0.4, 0.4]));

        let mut bad = cfg.clone();
        bad.max_sizes.push(1.0);
        assert!(bad.check().is_err());
        let mut bad = cfg;
        bad.variance = [0.0, 0.2];
        assert!(bad.check().is_err());
    }
}
