//! Evaluation as the reference does it (SPEC §6): per image, the main head's logits
//! upsampled bilinearly (`align_corners=True`) to the output size, summed over the models of
//! an ensemble with their weights, argmax; one confusion matrix over the whole set; IoU per
//! class, classes without pixels skipped in the mean.
//!
//! * [`confusion`]: the confusion matrix and IoU;
//! * [`scores`]: the JSON result and the paper's table;
//! * [`evaluate`] (here): networks on a dataset;
//! * [`sweep`]: every checkpoint of a training run, cached, optionally following the run;
//! * [`score`]: prediction PNGs of any model against Cityscapes ground truth.

pub mod confusion;
pub mod paper;
pub mod score;
pub mod scores;
pub mod sweep;

pub use confusion::ConfusionMatrix;
pub use scores::{class_names, Scores};

use crate::classes::{self, EvalSubset};
use crate::dataset::loader::sequential;
use crate::dataset::{self, Dataset, DatasetSpec, LabelSize, OpenOptions, Sample};
use crate::image::{self, colormap};
use crate::loss;
use crate::model::SegModel;
use crate::native::HostCopy;
use crate::queue::SharedReceiver;
use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// How [`evaluate`] runs.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The size (width × height) the dataset's images have after its resize; checked, since
    /// the dataset does the (PIL-exact) resizing when it is opened (see [`open_dataset`]).
    /// `None`: any size.
    pub input_size: Option<(u32, u32)>,
    /// Size the logits are upsampled to and the labels compared at (labels of another size
    /// are resized to it with PIL's nearest rule, as the reference's loader resizes them to
    /// `OUTPUT_SIZE_TARGET`). `None`: each label's own size (the reference's
    /// `fixed_test_size=False` path).
    pub output_size: Option<(u32, u32)>,
    /// Class indices the mIoU averages over; empty: all classes of the network.
    pub subset: Vec<usize>,
    /// Folder for each image's `<name>_trainids.png` and `<name>_color.png` (created); they
    /// are moved in when every image has been evaluated.
    pub save_predictions: Option<PathBuf>,
    /// Threads loading images ahead of the network (0: on the caller's thread).
    pub workers: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// CUDA arithmetic of the forward pass (bf16: autocast, the upsampling and argmax of
    /// float32 logits). The caller sets the TF32 switches ([`crate::device::set_precision`]).
    pub precision: crate::device::Precision,
    /// Convolution weights and inputs channels-last (the models are converted by
    /// [`confusion_matrix`]'s caller: [`SegModel::use_channels_last`]).
    pub channels_last: bool,
    /// CUDA: the forward pass, upsampling and argmax captured once as a CUDA graph and
    /// replayed for every image of the same size (recaptured when the size changes).
    pub cuda_graph: bool,
    /// The batch norms folded into the convolutions ([`crate::model::BnFold`]; the models
    /// are folded by [`confusion_matrix`]'s caller: [`SegModel::fold_batch_norms`]).
    pub fold_bn: crate::model::BnFold,
    /// Images per forward pass (consecutive images of one size; the reference evaluates one
    /// at a time). The same predictions up to the arithmetic's rounding; on a GPU a larger
    /// batch fills more of the chip at the cost of memory (BENCHMARKS.md).
    pub batch: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            input_size: None,
            output_size: None,
            subset: Vec::new(),
            save_predictions: None,
            workers: 2,
            progress: false,
            precision: crate::device::Precision::default(),
            channels_last: false,
            cuda_graph: false,
            fold_bn: crate::model::BnFold::Off,
            batch: 1,
        }
    }
}

/// The paper's protocol (SPEC §6): 1024×512 network input.
pub const PAPER_INPUT_SIZE: (u32, u32) = (1024, 512);
/// The paper's protocol (SPEC §6): logits upsampled to Cityscapes' 2048×1024.
pub const PAPER_OUTPUT_SIZE: (u32, u32) = (2048, 1024);

/// The datasets with ground truth to evaluate on.
pub const EVAL_DATASETS: [&str; 3] = ["cityscapes", "foggy-cityscapes", "mapillary"];

/// How a dataset is evaluated by default: its split, the network's input size, and the size
/// the logits are upsampled to (`None`: each label's own size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    pub split: &'static str,
    pub input_size: (u32, u32),
    pub output_size: Option<(u32, u32)>,
}

/// The protocol of an evaluation set (see [`EVAL_DATASETS`]): the paper's for Cityscapes and
/// Foggy Cityscapes (SPEC §6); DADA's for Mapillary (`validation`, images fitted into
/// 1024×768 and padded, logits upsampled to each label padded to 4:3, `TEST.INPUT_SIZE_TARGET`
/// of `configs_s2m/advent.yml` and `scale_label=False`).
pub fn protocol(kind: &str) -> Protocol {
    match kind {
        "mapillary" => Protocol { split: "validation", input_size: (1024, 768), output_size: None },
        _ => Protocol { split: "val", input_size: PAPER_INPUT_SIZE, output_size: Some(PAPER_OUTPUT_SIZE) },
    }
}

/// Where and how to read an evaluation set.
#[derive(Debug, Clone)]
pub struct EvalSet {
    /// One of [`EVAL_DATASETS`].
    pub kind: String,
    pub root: PathBuf,
    pub split: String,
    /// Optional list file in the reference's format.
    pub list: Option<PathBuf>,
    /// Class set the labels are mapped to: 19, 16 or 7.
    pub num_classes: usize,
    /// Network input size (width × height); images are resized to it.
    pub input_size: (u32, u32),
    /// Foggy Cityscapes' β.
    pub foggy_beta: f64,
}

/// Opens an evaluation set: images resized (bicubic, PIL-exact) to the input size, labels
/// at their native size.
///
/// # Errors
///
/// An unknown dataset kind; those of opening the dataset (missing folders, images without
/// label files, ...).
pub fn open_dataset(set: &EvalSet) -> Result<Arc<dyn Dataset>> {
    ensure!(
        EVAL_DATASETS.contains(&set.kind.as_str()),
        "unknown evaluation dataset `{}` (expected one of: {})",
        set.kind,
        EVAL_DATASETS.join(", ")
    );
    let spec = DatasetSpec {
        kind: set.kind.clone(),
        root: set.root.clone(),
        split: set.split.clone(),
        list: set.list.clone(),
        size: set.input_size,
        labels: true,
        num_classes: set.num_classes,
        foggy_beta: set.foggy_beta,
        // The generator's settings do not apply to file datasets.
        ..crate::config::Config::defaults().dataset_spec(false)
    };
    dataset::open_with(&spec, &OpenOptions { label_size: LabelSize::Native, ..OpenOptions::default() })
}

/// `--classes`: 19 or 16 (every class of the network), or 13 (SYNTHIA's mIoU*, a 16-class
/// network). Returns the class indices averaged.
///
/// # Errors
///
/// A count that does not fit the network's classes.
pub fn subset_for(classes: usize, num_classes: usize) -> Result<Vec<usize>> {
    match classes {
        13 => classes::eval_classes(num_classes, EvalSubset::MiouStar13).with_context(|| {
            format!("--classes 13 (SYNTHIA's mIoU*) needs a 16-class network; this one has {num_classes} classes")
        }),
        n if n == num_classes => Ok((0..n).collect()),
        n => {
            let star = if num_classes == 16 { ", or 13 for SYNTHIA's mIoU*" } else { "" };
            bail!("--classes {n} does not fit a network of {num_classes} classes (expected {num_classes}{star})")
        }
    }
}

/// Evaluates a weighted ensemble (one model = weight 1.0) on every item of a dataset whose
/// labels are at their native size: main head, bilinear (`align_corners=True`) upsampling of
/// the logits to the output size, weighted sum of the upsampled logits over the models,
/// argmax, one confusion matrix for the whole set (SPEC §6; the ensemble is the reference's
/// `Σ MODEL_WEIGHT[i] · logits`).
///
/// # Errors
///
/// No model, models of different class counts, a subset class out of range, an item that
/// fails to load or has no label, an image not of `input_size`; a failed prediction write.
pub fn evaluate(models: &[(&SegModel, f64)], dataset: Arc<dyn Dataset>, options: &EvalOptions) -> Result<Scores> {
    let cm = confusion_matrix(models, dataset, options)?;
    let names = class_names(cm.num_classes());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(Scores::from_confusion(&cm, &names, &options.subset))
}

/// The confusion matrix of [`evaluate`].
///
/// The work runs as a pipeline: loader threads read the images ahead; this thread stacks
/// them into batches of [`EvalOptions::batch`] and runs the networks; scoring threads turn
/// the labels into train-id bytes, count the confusion pairs and write the prediction
/// files, so that the network never waits for them (on the host they cost about 3.5 ms per
/// 2048x1024 image, and the two PNGs another 12 ms: `examples/host_costs.rs`). Each scoring
/// thread counts into its own matrix and the matrices are summed at the end: the same
/// counts in any order.
/// Of several failing images, the first in the set's order is reported.
pub fn confusion_matrix(
    models: &[(&SegModel, f64)],
    dataset: Arc<dyn Dataset>,
    options: &EvalOptions,
) -> Result<ConfusionMatrix> {
    ensure!(!models.is_empty(), "no model to evaluate");
    let num_classes = models[0].0.config.num_classes;
    if let Some((m, _)) = models.iter().find(|(m, _)| m.config.num_classes != num_classes) {
        bail!("the models of an ensemble must have the same classes: {num_classes} and {}", m.config.num_classes);
    }
    ensure!((1..=255).contains(&num_classes), "{num_classes} classes do not fit 8-bit train ids");
    let num_classes = num_classes as usize;
    if let Some(c) = options.subset.iter().find(|&&c| c >= num_classes) {
        bail!("class {c} of the evaluated subset is not one of the network's {num_classes} classes");
    }
    ensure!(options.batch >= 1, "the evaluation batch must hold at least 1 image");
    ensure!(!dataset.is_empty(), "the evaluation set is empty");
    if let Some((m, _)) = models.iter().find(|(m, _)| m.is_channels_last() != options.channels_last) {
        bail!(
            "channels_last is {} but a model is {}channels-last",
            options.channels_last,
            if m.is_channels_last() { "" } else { "not " }
        );
    }
    if let Some((m, _)) = models.iter().find(|(m, _)| m.bn_fold() != options.fold_bn) {
        bail!("fold_bn is `{}` but a model's batch-norm folding is `{}`", options.fold_bn, m.bn_fold());
    }
    let staging = options.save_predictions.as_deref().map(Staging::new).transpose()?;
    let bar = images_bar(dataset.len(), options.progress);
    let scoring = Scoring {
        num_classes,
        palette: classes::palette(num_classes),
        predictions: staging.as_ref().map(|s| s.tmp.clone()),
        bar: bar.clone(),
        first_failure: AtomicUsize::new(usize::MAX),
    };
    // Writing the two PNGs of an image takes longer than the network's pass on a GPU: more
    // threads then.
    let threads = match options.save_predictions {
        Some(_) => std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8),
        None => 2,
    };
    let capacity = options.batch.min(dataset.len());
    let mut feeder = Feeder {
        models,
        options,
        graphed: if options.cuda_graph { Some(Graphed::new(models)?) } else { None },
        capacity,
        in_flight: None,
    };
    let (tx, rx) = crate::queue::channel::<Scored>(threads + capacity);
    let (fed, scored) = std::thread::scope(|scope| {
        let scoring = &scoring;
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                scope.spawn(move || scoring.run(&rx))
            })
            .collect();
        drop(rx);
        let fed = feeder.run(dataset, &tx, &scoring.first_failure);
        drop(tx);
        let scored: Vec<_> =
            workers.into_iter().map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect();
        (fed, scored)
    });
    bar.finish_and_clear();
    let mut cm = ConfusionMatrix::new(num_classes);
    let mut first: Option<(usize, anyhow::Error)> = fed.err();
    for part in scored {
        match part {
            Ok(part) => cm.merge(&part),
            Err((index, e)) => {
                if first.as_ref().is_none_or(|(i, _)| index < *i) {
                    first = Some((index, e));
                }
            }
        }
    }
    if let Some((_, e)) = first {
        return Err(e);
    }
    if let Some(staging) = staging {
        staging.commit()?;
    }
    Ok(cm)
}

/// An error of the evaluation, with the index of the image it concerns (the first one
/// in the set's order is reported).
type IndexedError = (usize, anyhow::Error);

/// One image's prediction on its way to a scoring thread.
struct Scored {
    index: usize,
    name: String,
    /// `[H, W]` train ids at the label's size.
    label: Tensor,
    /// Row-major train ids at `size`.
    prediction: Vec<u8>,
    /// Output width × height.
    size: (u32, u32),
}

/// An image of the set, checked, waiting for its batch.
struct Pending {
    index: usize,
    name: String,
    image: Tensor,
    label: Tensor,
    size: (u32, u32),
}

/// The network's side of [`confusion_matrix`]: batches of images through the models.
struct Feeder<'a> {
    models: &'a [(&'a SegModel, f64)],
    options: &'a EvalOptions,
    graphed: Option<Graphed>,
    /// Images per batch.
    capacity: usize,
    /// The batch whose prediction was launched last and not yet brought back.
    in_flight: Option<InFlight>,
}

/// A launched batch: its images and its train ids on their way to the host (on a GPU,
/// possibly still being computed).
struct InFlight {
    batch: Vec<Pending>,
    ids: HostCopy,
}

impl Feeder<'_> {
    /// Runs every item of the set and sends the predictions on; stops early when a scoring
    /// thread failed (`first_failure` set) or all of them are gone.
    fn run(
        &mut self,
        dataset: Arc<dyn Dataset>,
        tx: &SyncSender<Scored>,
        first_failure: &AtomicUsize,
    ) -> Result<(), IndexedError> {
        let prefetch = (2 * self.options.workers.max(1)).max(self.capacity);
        let mut batch: Vec<Pending> = Vec::with_capacity(self.capacity);
        for (index, item) in sequential(dataset, self.options.workers, prefetch).enumerate() {
            if first_failure.load(Ordering::Relaxed) != usize::MAX {
                return Ok(());
            }
            let pending = match item.and_then(|(_, sample)| self.check(index, sample)) {
                Ok(p) => p,
                Err(e) => {
                    // The images before this one are scored first: an error of theirs comes first.
                    self.flush(&mut batch, tx)?;
                    self.land(tx)?;
                    return Err((index, e));
                }
            };
            if batch.first().is_some_and(|b| (b.image.size(), b.size) != (pending.image.size(), pending.size)) {
                self.flush(&mut batch, tx)?;
            }
            batch.push(pending);
            if batch.len() == self.capacity {
                self.flush(&mut batch, tx)?;
            }
        }
        self.flush(&mut batch, tx)?;
        self.land(tx)
    }

    /// The checks of one item, before its batch.
    fn check(&self, index: usize, sample: Sample) -> Result<Pending> {
        let name = sample.name;
        let label = sample.label.with_context(|| format!("{name}: the dataset gives no label"))?;
        let (lh, lw) = match label.size()[..] {
            [h, w] => (h as u32, w as u32),
            ref s => bail!("{name}: label of shape {s:?}, expected [H, W]"),
        };
        let image_size = sample.image.size();
        if let (Some((w, h)), [_, ih, iw]) = (self.options.input_size, &image_size[..]) {
            ensure!(
                (i64::from(w), i64::from(h)) == (*iw, *ih),
                "{name}: the image is {iw}x{ih}, the input size is {w}x{h} (open the dataset at that size)"
            );
        }
        let size = self.options.output_size.unwrap_or((lw, lh));
        ensure!(size.0 >= 1 && size.1 >= 1, "{name}: the output size must be positive, not {}x{}", size.0, size.1);
        Ok(Pending { index, name, image: sample.image, label, size })
    }

    /// Launches the batch's prediction and empties it, then brings back the batch launched
    /// before; that one's images go to the scoring threads while the device works on this
    /// one. On a GPU the host never waits for the device with nothing queued: the batch is
    /// stacked into page-locked memory while the device computes the one before, copied in
    /// and launched without waiting, its train ids' copy back queued behind it; only then
    /// does the host wait, for the previous batch's copy back (stream order keeps that copy
    /// ahead of this launch, which a CUDA graph writes into the same output).
    fn flush(&mut self, batch: &mut Vec<Pending>, tx: &SyncSender<Scored>) -> Result<(), IndexedError> {
        let batch = std::mem::take(batch);
        let Some(first) = batch.first() else { return Ok(()) };
        let (index, size) = (first.index, first.size);
        let what = describe(&batch);
        let images: Vec<&Tensor> = batch.iter().map(|p| &p.image).collect();
        let x = match crate::native::stack_for(&images, self.models[0].0.device()) {
            Ok(x) => x,
            Err(e) => {
                // The batch in flight holds earlier images: theirs are scored first.
                self.land(tx)?;
                return Err((index, e.context(format!("predicting {what}"))));
            }
        };
        let launched =
            self.launch(&x, size).and_then(|ids| HostCopy::start(&ids)).with_context(|| format!("predicting {what}"));
        // The earlier images are sent even when this launch failed: an error of theirs comes
        // first.
        self.land(tx)?;
        let ids = launched.map_err(|e| (index, e))?;
        self.in_flight = Some(InFlight { batch, ids });
        Ok(())
    }

    /// Brings back the batch in flight, if any, and sends its images to the scoring threads
    /// (unless they have all stopped: one failed, and reports it).
    fn land(&mut self, tx: &SyncSender<Scored>) -> Result<(), IndexedError> {
        if let Some(landed) = self.bring_back()? {
            send(landed, tx);
        }
        Ok(())
    }

    /// The batch in flight with its train ids on the host.
    fn bring_back(&mut self) -> Result<Option<Landed>, IndexedError> {
        let Some(InFlight { batch, ids }) = self.in_flight.take() else { return Ok(None) };
        match ids.wait().and_then(|ids| host_bytes(&ids)) {
            Ok(host) => Ok(Some((batch, host))),
            Err(e) => Err((batch[0].index, e.context(format!("predicting {}", describe(&batch))))),
        }
    }

    /// Starts the prediction of the images `x` (`[n, 3, H, W]`): their train ids at `size` as
    /// a `[n, height, width]` uint8 tensor on the device.
    fn launch(&mut self, x: &Tensor, (width, height): (u32, u32)) -> Result<Tensor> {
        match &mut self.graphed {
            Some(g) => g.predict(self.models, x, self.capacity, width, height, self.options.precision),
            None => ids_on_device(self.models, x, width, height, self.options.precision),
        }
    }
}

/// A batch brought back: its images and their train ids, `len · height · width` bytes.
type Landed = (Vec<Pending>, Vec<u8>);

/// `name`, or `name and the N images after it in its batch`.
fn describe(batch: &[Pending]) -> String {
    match batch.len() {
        0 | 1 => batch.first().map_or_else(String::new, |p| p.name.clone()),
        n => format!("{} and the {} images after it in its batch", batch[0].name, n - 1),
    }
}

/// Sends a landed batch's images to the scoring threads; false when they have all stopped
/// (one failed, and reports it).
fn send((batch, ids): Landed, tx: &SyncSender<Scored>) -> bool {
    let Some(&Pending { size: (width, height), .. }) = batch.first() else { return true };
    let per_image = width as usize * height as usize;
    for (p, prediction) in batch.into_iter().zip(ids.chunks_exact(per_image)) {
        let scored =
            Scored { index: p.index, name: p.name, label: p.label, prediction: prediction.to_vec(), size: p.size };
        if tx.send(scored).is_err() {
            return false;
        }
    }
    true
}

/// The scoring side of [`confusion_matrix`], shared by its threads.
struct Scoring {
    num_classes: usize,
    palette: Vec<[u8; 3]>,
    /// Where the prediction PNGs go (the staging folder), if anywhere.
    predictions: Option<PathBuf>,
    bar: ProgressBar,
    /// The lowest index of an image whose scoring failed (`usize::MAX`: none), so that the
    /// network stops early and the other threads skip the images after it (an earlier
    /// image's failure is still found and reported first).
    first_failure: AtomicUsize,
}

impl Scoring {
    /// Scores images from `rx` until it closes or one fails; returns this thread's matrix.
    fn run(&self, rx: &SharedReceiver<Scored>) -> Result<ConfusionMatrix, IndexedError> {
        let mut cm = ConfusionMatrix::new(self.num_classes);
        while let Some(scored) = rx.recv() {
            let index = scored.index;
            if index > self.first_failure.load(Ordering::Relaxed) {
                continue;
            }
            if let Err(e) = self.score(&mut cm, scored) {
                self.first_failure.fetch_min(index, Ordering::Relaxed);
                return Err((index, e));
            }
            self.bar.inc(1);
        }
        Ok(cm)
    }

    fn score(&self, cm: &mut ConfusionMatrix, s: Scored) -> Result<()> {
        let name = &s.name;
        let (w_out, h_out) = s.size;
        let (lh, lw) = (s.label.size()[0] as u32, s.label.size()[1] as u32);
        let truth = host_bytes(&s.label)?;
        let truth =
            if (lw, lh) == (w_out, h_out) { truth } else { image::resize_nearest(&truth, lw, lh, w_out, h_out) };
        cm.add(&truth, &s.prediction).with_context(|| format!("scoring {name}"))?;
        if let Some(dir) = &self.predictions {
            image::write_png_gray8(&prediction_path(dir, name), w_out, h_out, &s.prediction)?;
            let color = colormap::colorize(&s.prediction, w_out, h_out, &self.palette);
            image::write_png_rgb(&dir.join(format!("{name}_color.png")), &color)?;
        }
        Ok(())
    }
}

/// A progress bar over `images` images on stderr (hidden unless `shown` and more than one).
pub(crate) fn images_bar(images: usize, shown: bool) -> ProgressBar {
    let bar = if shown && images > 1 { ProgressBar::new(images as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, eta {eta}").expect("static template"),
    );
    bar
}

/// A hidden folder inside the predictions folder that receives the predictions while the
/// evaluation runs. They are moved into place only once every image has been evaluated, so
/// that a failed evaluation leaves the folder's earlier predictions as they were.
struct Staging {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Staging {
    fn new(dir: &Path) -> Result<Self> {
        let tmp = dir.join(format!(".partial-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Staging { dir: dir.to_path_buf(), tmp })
    }

    fn commit(self) -> Result<()> {
        let entries = std::fs::read_dir(&self.tmp).with_context(|| format!("reading {}", self.tmp.display()))?;
        for entry in entries {
            let from = entry.with_context(|| format!("reading {}", self.tmp.display()))?.path();
            let to = self.dir.join(from.file_name().expect("a folder entry has a name"));
            std::fs::rename(&from, &to).with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// A tensor's bytes on the host, row-major (uint8 tensors: train ids).
fn host_bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(Vec::<u8>::try_from(t.f_to_kind(Kind::Uint8)?.f_flatten(0, -1)?)?)
}

/// The ensemble's train ids for preprocessed images `x` (`[n, 3, H, W]`, BGR minus the
/// mean), `argmax_c Σ_i weight_i · upsample(main_i)`, as a `[n, height, width]` uint8 tensor
/// on the first model's device; no host round-trip.
fn ids_on_device(
    models: &[(&SegModel, f64)],
    x: &Tensor,
    width: u32,
    height: u32,
    precision: crate::device::Precision,
) -> Result<Tensor> {
    tch::no_grad(|| -> Result<Tensor> {
        let mut sum: Option<Tensor> = None;
        for (model, weight) in models {
            let main = {
                let _autocast = crate::device::autocast(model.device(), precision)?;
                // Without waiting from page-locked memory (the batch was stacked there).
                model.forward_main(&crate::native::to_device_async(x, model.device())?)?
            };
            let logits = loss::upsample(&main.f_to_kind(Kind::Float)?, i64::from(height), i64::from(width))?;
            let weighted = if *weight == 1.0 { logits } else { logits.f_mul_scalar(*weight)? };
            sum = Some(match sum {
                None => weighted,
                Some(s) => {
                    let weighted = weighted.f_to_device(s.device())?;
                    s.f_add(&weighted)?
                }
            });
        }
        let sum = sum.context("no model to evaluate")?;
        Ok(sum.f_argmax(1, false)?.f_to_kind(Kind::Uint8)?)
    })
}

/// [`ids_on_device`] through a CUDA graph: the whole prediction of a batch (forward pass of
/// every model, upsampling, argmax) is captured once and then replayed with the next batch
/// copied into the same input tensor, which saves the per-kernel launch cost (most of the
/// time of a bf16 forward pass at batch 1). Captured again when the sizes change.
struct Graphed {
    device: tch::Device,
    current: Option<Capture>,
}

struct Capture {
    key: (Vec<i64>, u32, u32),
    input: Tensor,
    output: Tensor,
    graph: crate::native::CudaGraph,
}

impl Graphed {
    fn new(models: &[(&SegModel, f64)]) -> Result<Self> {
        let device = models[0].0.device();
        ensure!(device.is_cuda(), "CUDA graphs need a CUDA device");
        ensure!(models.iter().all(|(m, _)| m.device() == device), "CUDA graphs need every model on one device");
        ensure!(
            crate::native::cuda_graphs_supported(),
            "this build of advent has no CUDA graph support (the CUDA headers were not found when it was built)"
        );
        Ok(Graphed { device, current: None })
    }

    /// The train ids of the images `x` (`[n, 3, H, W]`, `n <= capacity`) as a
    /// `[n, height, width]` uint8 tensor on the device. The graph is captured for batches of
    /// `capacity` images; a smaller (last) batch is padded with zero images, whose
    /// predictions are dropped.
    fn predict(
        &mut self,
        models: &[(&SegModel, f64)],
        x: &Tensor,
        capacity: usize,
        width: u32,
        height: u32,
        precision: crate::device::Precision,
    ) -> Result<Tensor> {
        ensure!(width >= 1 && height >= 1, "the output size must be positive");
        let mut shape = x.size();
        let n = shape[0];
        ensure!(n >= 1 && n <= capacity as i64, "a batch of {n} images for a graph of {capacity}");
        shape[0] = capacity as i64;
        let key = (shape.clone(), width, height);
        if self.current.as_ref().map(|c| c.key != key).unwrap_or(true) {
            self.current = None;
            let input = Tensor::f_zeros(&shape, (Kind::Float, self.device))?;
            // Warm-up outside the graph: cuDNN's autotuner and the allocator settle first.
            for _ in 0..2 {
                let _ = ids_on_device(models, &input, width, height, precision)?;
            }
            let (graph, output) = crate::native::CudaGraph::capture(self.device, || {
                ids_on_device(models, &input, width, height, precision)
            })?;
            self.current = Some(Capture { key, input, output, graph });
        }
        let c = self.current.as_mut().expect("captured above");
        crate::native::copy_async(&c.input.f_narrow(0, 0, n)?, x)?;
        if n < capacity as i64 {
            let _ = c.input.f_narrow(0, n, capacity as i64 - n)?.f_zero_()?;
        }
        c.graph.replay()?;
        Ok(c.output.f_narrow(0, 0, n)?)
    }
}

/// `<dir>/<name>_trainids.png`: the prediction file [`evaluate`] (and `advent predict`)
/// writes for an image.
pub fn prediction_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}_trainids.png"))
}
