//! IntraDA's entropy ranking (Pan et al., CVPR 2020, the step after ADVENT; [IDA]
//! `entropy_rank/entropy.py`, SPEC Appendix A): a network adapted with ADVENT scores every
//! target training image by the entropy of its prediction; the most confident share
//! (λ = 0.67) is the easy split, the rest the hard split; the easy images' predictions are
//! kept as pseudo-labels. The intra-domain stage then adapts from the easy split, labelled
//! by them ([`crate::dataset::pseudo`]), to the hard one with the same ADVENT training.
//!
//! As the reference computes it, per image: the main head's logits (evaluation mode) are
//! upsampled bilinearly (`align_corners=True`) to the input size, the score is the mean of
//! `prob_2_entropy(softmax(·))` over classes and pixels (the normalised entropy divided by
//! C), optionally times `(11 − r) / 11 + 0.5` with `r` the number of rare classes
//! ([`RARE_CLASSES_19`]) in the prediction; images are sorted by score, ascending, and the
//! first `int(n · λ)` are easy. The pseudo-label is the argmax at the input size.

use crate::dataset::label::IGNORE;
use crate::dataset::layout::fitted_size;
use crate::dataset::loader::sequential;
use crate::dataset::{Dataset, FileDataset, Fit};
use crate::device::Precision;
use crate::image::{self, colormap};
use crate::model::SegModel;
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// IntraDA's rare classes, as 19-class train ids: wall, fence, pole, traffic light, traffic
/// sign, terrain, rider, truck, bus, train, motorcycle (`entropy.py`'s `rare_class`).
pub const RARE_CLASSES_19: [u8; 11] = [3, 4, 5, 6, 7, 9, 12, 14, 15, 16, 17];

/// IntraDA's default share of easy images (`--lambda1`).
pub const DEFAULT_LAMBDA: f64 = 0.67;

/// How to rank.
#[derive(Debug, Clone)]
pub struct RankOptions {
    /// Share of the images in the easy split, in (0, 1).
    pub lambda: f64,
    /// Multiply each score by the rare-class normaliser (`--normalize`; 19 classes only).
    pub normalize: bool,
    /// Threads loading images ahead of the network.
    pub workers: usize,
    pub precision: Precision,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// One ranked image.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// Its name as list files give it (relative to the image folder).
    pub name: String,
    /// Mean of the weighted self-information over classes and pixels.
    pub entropy: f64,
    /// The rare-class normaliser (1 without `normalize`).
    pub normalizer: f64,
}

impl Ranked {
    /// What the images are sorted by: `entropy · normalizer`.
    pub fn score(&self) -> f64 {
        self.entropy * self.normalizer
    }
}

/// The images by score, ascending; the first `easy` form the easy split.
#[derive(Debug, Clone)]
pub struct Ranking {
    pub ranked: Vec<Ranked>,
    pub easy: usize,
}

/// `int(n · λ)`, as the reference splits.
pub fn easy_count(n: usize, lambda: f64) -> usize {
    (n as f64 * lambda) as usize
}

/// IntraDA's normaliser for a prediction holding `rare` of the rare classes.
pub fn normalizer(rare: usize) -> f64 {
    (11.0 - rare as f64) / 11.0 + 0.5
}

/// One image's score and prediction: `[3, H, W]` input → (mean weighted self-information
/// over the top-left `region` (width × height) that holds the image, argmax train ids
/// `H · W` row-major, [`IGNORE`] outside the region).
fn score_image(model: &SegModel, image: &Tensor, region: (u32, u32), precision: Precision) -> Result<(f64, Vec<u8>)> {
    tch::no_grad(|| {
        let size = image.size();
        ensure!(size.len() == 3 && size[0] == 3, "an input of shape {size:?}, expected [3, H, W]");
        let x = image.f_unsqueeze(0)?.f_to_device(model.device())?;
        let main = {
            let _autocast = crate::device::autocast(model.device(), precision)?;
            model.forward_main(&x)?
        };
        let logits = crate::loss::upsample(&main.f_to_kind(Kind::Float)?, size[1], size[2])?;
        let prob = logits.f_softmax(1, Kind::Float)?;
        let (w, h) = (i64::from(region.0), i64::from(region.1));
        let information = crate::loss::self_information(&prob)?.f_narrow(2, 0, h)?.f_narrow(3, 0, w)?;
        let entropy = information.f_mean(Kind::Double)?.f_double_value(&[])?;
        let ids = logits.f_argmax(1, false)?.f_to_kind(Kind::Uint8)?.f_flatten(0, -1)?;
        let mut ids = Vec::<u8>::try_from(ids)?;
        if (w, h) != (size[2], size[1]) {
            for (y, row) in ids.chunks_exact_mut(size[2] as usize).enumerate() {
                let from = if (y as i64) < h { w as usize } else { 0 };
                row[from..].fill(IGNORE);
            }
        }
        Ok((entropy, ids))
    })
}

/// The top-left part of a `size` input that holds the image `path`: all of it, or, for a
/// dataset whose images are fitted and padded (Mapillary), the fitted size.
fn image_region(fit: Fit, path: &Path, size: (u32, u32)) -> Result<(u32, u32)> {
    match fit {
        Fit::Stretch => Ok(size),
        Fit::Pad => {
            let dims = ::image::image_dimensions(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(if dims == size { size } else { fitted_size(dims, size) })
        }
    }
}

/// Ranks the images of `dataset` (read without labels, at the network's input size) with
/// `model` and writes, into the new folder `out`: `easy_split.txt` and `hard_split.txt`
/// (the reference's list format, in ranking order), `scores.csv`, and
/// `pseudo_labels/<stem>.png` (train ids at the input size) with `<stem>_color.png` for every
/// image. Everything is written into a hidden folder beside `out`, renamed to `out` at the
/// end ([`crate::fs::staged_output`]): a failed run leaves nothing behind.
///
/// # Errors
///
/// `out` exists and is not empty; a λ outside (0, 1); `normalize` with another class count
/// than 19; two images of the same file name (their pseudo-labels would collide); a failing
/// image (named); a failed write.
pub fn rank(model: &SegModel, dataset: Arc<FileDataset>, options: &RankOptions, out: &Path) -> Result<Ranking> {
    ensure!(options.lambda > 0.0 && options.lambda < 1.0, "the easy share λ must be in (0, 1), not {}", options.lambda);
    let num_classes = model.config.num_classes as usize;
    ensure!(
        !options.normalize || num_classes == 19,
        "the rare-class normaliser is defined for the 19 Cityscapes classes; this network has {num_classes}"
    );
    if out.exists() {
        let empty = std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
        ensure!(empty, "{} exists and is not an empty folder: choose a new one", out.display());
    }
    let mut stems = HashSet::new();
    for item in dataset.items() {
        let file = crate::dataset::pseudo::label_file(Path::new(""), &item.name);
        if !stems.insert(file.clone()) {
            bail!("two images would have the pseudo-label {}: {} and another", file.display(), item.name);
        }
    }
    crate::fs::staged_output(out, |dir: &Path| -> Result<Ranking> {
        let labels_dir = dir.join("pseudo_labels");
        std::fs::create_dir_all(&labels_dir).with_context(|| format!("creating {}", labels_dir.display()))?;
        let ranked = score_all(model, &dataset, options, &labels_dir)?;
        write_lists(dir, ranked, options.lambda)
    })
}

/// Scores every image of `dataset` and writes its pseudo-label (and colours) into
/// `labels_dir`; in the dataset's order.
fn score_all(
    model: &SegModel,
    dataset: &Arc<FileDataset>,
    options: &RankOptions,
    labels_dir: &Path,
) -> Result<Vec<Ranked>> {
    let palette = crate::classes::palette(model.config.num_classes as usize);
    let bar = crate::eval::images_bar(dataset.len(), options.progress);
    let mut ranked = Vec::with_capacity(dataset.len());
    let loader: Arc<dyn Dataset> = dataset.clone();
    for item in sequential(loader, options.workers, 2 * options.workers.max(1)) {
        let (index, sample) = item?;
        let name = dataset.items()[index].name.clone();
        let (h, w) = (sample.image.size()[1] as u32, sample.image.size()[2] as u32);
        let region = image_region(dataset.layout().fit(), &dataset.items()[index].image, (w, h))?;
        let (entropy, ids) =
            score_image(model, &sample.image, region, options.precision).with_context(|| name.clone())?;
        let normalizer = match options.normalize {
            true => {
                let mut present = [false; 256];
                ids.iter().for_each(|&c| present[usize::from(c)] = true);
                normalizer(RARE_CLASSES_19.iter().filter(|&&c| present[usize::from(c)]).count())
            }
            false => 1.0,
        };
        let file = crate::dataset::pseudo::label_file(labels_dir, &name);
        image::write_png_gray8(&file, w, h, &ids)?;
        let color =
            file.with_file_name(format!("{}_color.png", file.file_stem().expect("a file name").to_string_lossy()));
        image::write_png_rgb(&color, &colormap::colorize(&ids, w, h, &palette))?;
        ranked.push(Ranked { name, entropy, normalizer });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(ranked)
}

/// Sorts `ranked` by score and writes the splits and `scores.csv` into `dir`.
fn write_lists(dir: &Path, mut ranked: Vec<Ranked>, lambda: f64) -> Result<Ranking> {
    // Python's sort is stable; ties keep the dataset's order.
    ranked.sort_by(|a, b| a.score().total_cmp(&b.score()));
    let ranking = Ranking { easy: easy_count(ranked.len(), lambda), ranked };
    let list = |part: &[Ranked]| part.iter().map(|r| format!("{}\n", r.name)).collect::<String>();
    let (easy, hard) = ranking.ranked.split_at(ranking.easy);
    crate::fs::write_bytes_atomic(&dir.join("easy_split.txt"), list(easy).as_bytes())?;
    crate::fs::write_bytes_atomic(&dir.join("hard_split.txt"), list(hard).as_bytes())?;
    let mut csv = String::from("rank,name,entropy,normalizer,score,split\n");
    for (i, r) in ranking.ranked.iter().enumerate() {
        let split = if i < ranking.easy { "easy" } else { "hard" };
        csv += &format!("{},{},{:e},{},{:e},{split}\n", i + 1, r.name, r.entropy, r.normalizer, r.score());
    }
    crate::fs::write_bytes_atomic(&dir.join("scores.csv"), csv.as_bytes())?;
    Ok(ranking)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_normaliser_follow_intrada() {
        // Python: int(2975 * 0.67) = 1993; int(3 * 0.67) = 2; int(10 * 0.67) = 6.
        assert_eq!(easy_count(2975, 0.67), 1993);
        assert_eq!(easy_count(3, 0.67), 2);
        assert_eq!(easy_count(10, 0.67), 6);
        // (11 - 0) / 11 + 0.5 = 1.5; (11 - 11) / 11 + 0.5 = 0.5; (11 - 3) / 11 + 0.5.
        assert_eq!(normalizer(0), 1.5);
        assert_eq!(normalizer(11), 0.5);
        assert!((normalizer(3) - (8.0 / 11.0 + 0.5)).abs() < 1e-15);
    }
}
