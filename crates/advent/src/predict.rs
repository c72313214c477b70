//! Prediction as the reference evaluates (SPEC §6): bicubic resize to the input size, BGR
//! minus mean, main head, bilinear upsampling of the logits with `align_corners=True` to
//! the output size, softmax, argmax and normalised entropy.

use crate::classes;
use crate::image::{self, colormap, RgbImage};
use crate::loss;
use crate::model::SegModel;
use crate::native::HostCopy;
use anyhow::{ensure, Context, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// Width × height in pixels.
pub type Size = (u32, u32);

#[derive(Debug, Clone, Copy, Default)]
pub struct PredictOptions {
    /// Size the image is resized to (bicubic) before the network; `None` keeps its size.
    pub input_size: Option<Size>,
    /// Size the logits are upsampled to; `None` gives the image's own size.
    pub output_size: Option<Size>,
    /// CUDA arithmetic of the forward pass (bf16: autocast; the probabilities and entropy
    /// from float32 logits). The caller sets the TF32 switches
    /// ([`crate::device::set_precision`]).
    pub precision: crate::device::Precision,
}

/// The outputs for one image, on the CPU.
pub struct Prediction {
    pub width: u32,
    pub height: u32,
    pub num_classes: usize,
    /// `[C, H, W]` float32 softmax probabilities, when asked for ([`predict`] always keeps
    /// them; [`run`] when told to: at 2048x1024 they are 160 MB to bring from a GPU).
    pub prob: Option<Tensor>,
    /// `[H, W]` float32 normalised entropy in `[0, 1]` (sum over classes of the weighted
    /// self-information).
    pub entropy: Tensor,
    /// Row-major `H·W` train ids.
    pub train_ids: Vec<u8>,
}

/// An image made ready for the network (on the CPU, so that loader threads can do it):
/// resized, BGR minus the mean.
pub struct Prepared {
    /// `[1, 3, H, W]` float32.
    pub input: Tensor,
    /// The size the logits are upsampled to.
    pub output_size: Size,
}

/// Resizes an image (bicubic, PIL's) to the input size and makes the network's input.
///
/// # Errors
///
/// A size of zero.
pub fn prepare(img: &RgbImage, options: &PredictOptions) -> Result<Prepared> {
    let (w_in, h_in) = options.input_size.unwrap_or(img.dimensions());
    let (w_out, h_out) = options.output_size.unwrap_or(img.dimensions());
    ensure!(w_in >= 1 && h_in >= 1 && w_out >= 1 && h_out >= 1, "sizes must be positive");
    let resized;
    let net_input = if (w_in, h_in) == img.dimensions() {
        img
    } else {
        resized = image::resize_bicubic(img, w_in, h_in);
        &resized
    };
    Ok(Prepared { input: image::to_input_tensor(net_input, image::IMG_MEAN_BGR), output_size: (w_out, h_out) })
}

impl Prepared {
    /// The input in page-locked memory when it is for a CUDA device (copied there without
    /// waiting, by [`launch`]); as it is otherwise.
    pub fn pinned(self, device: tch::Device) -> Result<Self> {
        if !device.is_cuda() {
            return Ok(self);
        }
        let input = crate::native::page_locked(&self.input).context("copying an image into page-locked memory")?;
        Ok(Prepared { input, ..self })
    }
}

/// Runs the network on one image, with its probabilities.
pub fn predict(model: &SegModel, img: &RgbImage, options: &PredictOptions) -> Result<Prediction> {
    run(model, &prepare(img, options)?, options.precision, true)
}

/// Runs the network on a prepared image: softmax, argmax and entropy on the model's device;
/// the probabilities come back only with `keep_prob`.
pub fn run(
    model: &SegModel,
    prepared: &Prepared,
    precision: crate::device::Precision,
    keep_prob: bool,
) -> Result<Prediction> {
    launch(model, prepared, precision, keep_prob)?.wait()
}

/// [`run`] without waiting for the device: the network's pass and the copies of its outputs
/// to the host are queued (on a GPU; on the CPU they are done), and [`Launched::wait`] gives
/// the prediction. A GPU can so compute one image while the host, possibly on another
/// thread, writes the last one's files, and the next image is queued without waiting for
/// either. Its input is copied without waiting when it is in page-locked memory
/// ([`Prepared::pinned`]).
pub fn launch(
    model: &SegModel,
    prepared: &Prepared,
    precision: crate::device::Precision,
    keep_prob: bool,
) -> Result<Launched> {
    let num_classes = model.config.num_classes;
    ensure!(num_classes <= 256, "more than 256 classes do not fit 8-bit train-id images");
    let (w_out, h_out) = prepared.output_size;
    let x = crate::native::to_device_async(&prepared.input, model.device())?;
    let (prob, entropy, ids) = tch::no_grad(|| -> Result<(Tensor, Tensor, Tensor)> {
        let main = {
            let _autocast = crate::device::autocast(model.device(), precision)?;
            model.forward_main(&x)?
        };
        let logits = loss::upsample(&main.f_to_kind(Kind::Float)?, h_out as i64, w_out as i64)?;
        let prob = logits.f_softmax(1, Kind::Float)?.f_squeeze_dim(0)?;
        let entropy = loss::entropy_map(&prob.f_unsqueeze(0)?)?.f_squeeze_dim(0)?;
        let ids = prob.f_argmax(0, false)?.f_to_kind(Kind::Uint8)?;
        Ok((prob, entropy, ids))
    })?;
    Ok(Launched {
        width: w_out,
        height: h_out,
        num_classes: num_classes as usize,
        prob: if keep_prob { Some(HostCopy::start(&prob)?) } else { None },
        entropy: HostCopy::start(&entropy)?,
        ids: HostCopy::start(&ids)?,
    })
}

/// A prediction on its way to the host ([`launch`]).
pub struct Launched {
    width: u32,
    height: u32,
    num_classes: usize,
    prob: Option<HostCopy>,
    entropy: HostCopy,
    ids: HostCopy,
}

impl Launched {
    /// The prediction, once its copies are done.
    pub fn wait(self) -> Result<Prediction> {
        let contiguous = |c: HostCopy| -> Result<Tensor> { Ok(c.wait()?.f_contiguous()?) };
        let train_ids = Vec::<u8>::try_from(contiguous(self.ids)?.f_flatten(0, -1)?)?;
        Ok(Prediction {
            width: self.width,
            height: self.height,
            num_classes: self.num_classes,
            prob: self.prob.map(contiguous).transpose()?,
            entropy: contiguous(self.entropy)?,
            train_ids,
        })
    }
}

/// What [`write_prediction`] writes beside the train ids, colours and entropy map.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extras<'a> {
    /// `<stem>_prob.npy` (`[C, H, W]` float32) and `<stem>_entropy.npy` (`[H, W]` float32).
    pub save_prob: bool,
    /// `<stem>_overlay.png`: the colours laid over this image (the input as read) with this
    /// weight; the image is resized (bicubic) to the prediction's size if it differs.
    pub overlay: Option<(&'a RgbImage, f32)>,
}

/// Writes `<stem>_trainids.png`, `<stem>_color.png`, `<stem>_entropy.png` and the
/// [`Extras`] asked for into `dir`. Each file is written to a temporary name and renamed.
pub fn write_prediction(dir: &Path, stem: &str, p: &Prediction, extras: Extras) -> Result<()> {
    let (w, h) = (p.width, p.height);
    let file = |suffix: &str| dir.join(format!("{stem}_{suffix}"));
    image::write_png_gray8(&file("trainids.png"), w, h, &p.train_ids)?;
    let palette = classes::palette(p.num_classes);
    let colours = colormap::colorize(&p.train_ids, w, h, &palette);
    image::write_png_rgb(&file("color.png"), &colours)?;
    if let Some((input, alpha)) = extras.overlay {
        ensure!((0.0..=1.0).contains(&alpha), "the overlay's weight must be in [0, 1], got {alpha}");
        let resized;
        let input = if input.dimensions() == (w, h) {
            input
        } else {
            resized = image::resize::resize_bicubic(input, w, h);
            &resized
        };
        image::write_png_rgb(&file("overlay.png"), &colormap::blend(input, &colours, alpha))?;
    }
    let entropy = Vec::<f32>::try_from(p.entropy.f_flatten(0, -1)?)?;
    image::write_png_rgb(&file("entropy.png"), &colormap::heatmap(&entropy, w, h))?;
    if extras.save_prob {
        let prob = p.prob.as_ref().context("the probabilities were not kept (predict::run without keep_prob)")?;
        for (suffix, t) in [("prob.npy", prob), ("entropy.npy", &p.entropy)] {
            let path = file(suffix);
            crate::fs::write_via_temporary(&path, |tmp| {
                t.write_npy(tmp).with_context(|| format!("writing {}", tmp.display()))
            })?;
        }
    }
    Ok(())
}
