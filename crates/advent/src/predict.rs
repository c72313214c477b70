//! Prediction as the reference evaluates (SPEC §6): bicubic resize to the input size, BGR
//! minus mean, main head, bilinear upsampling of the logits with `align_corners=True` to
//! the output size, softmax, argmax and normalised entropy.

use crate::classes;
use crate::image::{self, colormap, RgbImage};
use crate::loss;
use crate::model::SegModel;
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
    /// `[C, H, W]` float32 softmax probabilities.
    pub prob: Tensor,
    /// `[H, W]` float32 normalised entropy in `[0, 1]` (sum over classes of the weighted
    /// self-information).
    pub entropy: Tensor,
    /// Row-major `H·W` train ids.
    pub train_ids: Vec<u8>,
}

/// Runs the network on one image.
pub fn predict(model: &SegModel, img: &RgbImage, options: &PredictOptions) -> Result<Prediction> {
    ensure!(model.config.num_classes <= 256, "more than 256 classes do not fit 8-bit train-id images");
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
    let x = image::to_input_tensor(net_input, image::IMG_MEAN_BGR).f_to_device(model.device())?;
    let (prob, entropy) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
        let main = {
            let _autocast = crate::device::autocast(model.device(), options.precision)?;
            model.forward_main(&x)?
        };
        let logits = loss::upsample(&main.f_to_kind(Kind::Float)?, h_out as i64, w_out as i64)?;
        let prob = logits.f_softmax(1, Kind::Float)?;
        let entropy = loss::entropy_map(&prob)?;
        Ok((prob, entropy))
    })?;
    let prob = prob.f_squeeze_dim(0)?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let entropy = entropy.f_squeeze_dim(0)?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let ids = prob.f_argmax(0, false)?.f_to_kind(Kind::Uint8)?.f_contiguous()?;
    let train_ids = Vec::<u8>::try_from(ids.f_flatten(0, -1)?)?;
    Ok(Prediction { width: w_out, height: h_out, prob, entropy, train_ids })
}

/// Writes `<stem>_trainids.png`, `<stem>_color.png`, `<stem>_entropy.png` and, with
/// `save_prob`, `<stem>_prob.npy` (`[C, H, W]` float32) and `<stem>_entropy.npy` (`[H, W]`
/// float32) into `dir`. Each file is written to a temporary name and renamed.
pub fn write_prediction(dir: &Path, stem: &str, p: &Prediction, save_prob: bool) -> Result<()> {
    let (w, h) = (p.width, p.height);
    let file = |suffix: &str| dir.join(format!("{stem}_{suffix}"));
    image::write_png_gray8(&file("trainids.png"), w, h, &p.train_ids)?;
    let palette = classes::palette(p.prob.size()[0] as usize);
    image::write_png_rgb(&file("color.png"), &colormap::colorize(&p.train_ids, w, h, &palette))?;
    let entropy = Vec::<f32>::try_from(p.entropy.f_flatten(0, -1)?)?;
    image::write_png_rgb(&file("entropy.png"), &colormap::heatmap(&entropy, w, h))?;
    if save_prob {
        for (suffix, t) in [("prob.npy", &p.prob), ("entropy.npy", &p.entropy)] {
            let path = file(suffix);
            crate::fs::write_via_temporary(&path, |tmp| {
                t.write_npy(tmp).with_context(|| format!("writing {}", tmp.display()))
            })?;
        }
    }
    Ok(())
}
