//! `advent report RUN_DIR` for a detection run (`advent detect train`): its settings, every
//! loss, the gradient norm and the learning rate over the iterations, and the last
//! checkpoint's detections on the first target images, drawn as `advent detect predict`
//! draws them.

use super::run::{
    grid, metric_charts, no_samples, read_metrics, write_page, ReportOptions, RunReport, DETECTION_CHARTS,
};
use super::{escape, img_tag};
use crate::detect::cityscapes::{class_name, LABEL_IDS};
use crate::detect::config::DetConfig;
use crate::detect::nms::{DetectConfig, Detection};
use crate::detect::predict::{class_color, detect_image, draw_boxes};
use crate::detect::priors::PriorConfig;
use crate::detect::ssd::Ssd;
use crate::image::RgbImage;
use anyhow::{Context, Result};
use std::path::Path;

/// Sample images wider than this are shown reduced to it.
const MAX_WIDTH: u32 = 640;

/// Writes `<run>/report.html` of a detection run. As for a segmentation run, a target
/// dataset that cannot be opened leaves the samples out; an image of it that cannot be read,
/// or a last checkpoint that does not load, is an error and leaves an earlier report alone.
pub fn write_detection_report(run_dir: &Path, options: &ReportOptions) -> Result<RunReport> {
    let &ReportOptions { device, samples, min_score } = options;
    let config = DetConfig::load(&run_dir.join("config.toml"), &[])?;
    let metrics = read_metrics(run_dir)?;
    let t = &config.train;
    let last_iter = metrics.values().filter_map(|v| v.last()).map(|p| p.0 as u64).max();
    let domain = |d: &crate::detect::config::DomainSection| {
        format!("{} {} (batch {}, augment {})", d.dataset, d.split, d.batch_size, d.augment)
    };
    let mut sections = vec![format!(
        r#"<p class="note">Detection run <code>{}</code>: {} with SSD-300 (VGG-16 width {}), {} classes with the background; source {}, target {}; {} of {} iterations logged (poly horizon {}), learning rate {}, gradient norm limit {}, seed {}.</p>"#,
        escape(&run_dir.display().to_string()),
        escape(&t.method),
        config.model.width,
        config.model.num_classes,
        escape(&domain(&config.source)),
        escape(&domain(&config.target)),
        last_iter.map_or(0, |i| i + 1),
        t.early_stop + 1,
        t.max_iters,
        t.learning_rate,
        if t.clip_grad_norm > 0.0 { t.clip_grad_norm.to_string() } else { "none".into() },
        t.seed
    )];
    sections.push("<h2>Training curves</h2>".into());
    sections.push(format!(r#"<div class="charts">{}</div>"#, metric_charts(&metrics, DETECTION_CHARTS).join("")));
    let mut samples_left_out = None;
    if let Some((iter, ckpt)) = crate::train::checkpoints(run_dir)?.last() {
        let ssd = Ssd::from_checkpoint(&ckpt.join("model.pth"), device)?;
        sections.push(format!("<h2>Detections of the checkpoint of iteration {iter} (score ≥ {min_score})</h2>"));
        match crate::detect::run::open_set(&config, false) {
            Ok(set) => {
                let (priors, detect) = (PriorConfig::default().priors(), DetectConfig::default());
                let mut rows = Vec::new();
                for i in 0..samples.min(set.len()) {
                    let frame = set.raw(i)?;
                    let dets = detect_image(&ssd, &frame.image, &priors, &detect)
                        .with_context(|| format!("detecting objects in {}", frame.name))?;
                    rows.push(sample_row(&frame.image, &dets, min_score)?);
                }
                let headers = ["target image".to_string(), "detections".to_string()];
                sections.push(format!("{}{}", grid(&headers, &rows), legend()));
            }
            Err(e) => samples_left_out = Some(no_samples(&e, &mut sections)),
        }
    }
    write_page(run_dir, &format!("advent detection run {}", config.name), &sections, samples_left_out)
}

/// The image and its detections of at least `min_score` drawn on it, both reduced to
/// [`MAX_WIDTH`] (small ones shown twice their size), with the count and the best score.
fn sample_row(image: &RgbImage, dets: &[Detection], min_score: f32) -> Result<Vec<String>> {
    let (w, h) = image.dimensions();
    let scale = if w * 2 <= MAX_WIDTH { 2 } else { 1 };
    let f = (MAX_WIDTH as f32 / w as f32).min(1.0);
    let shown = match f < 1.0 {
        true => crate::image::resize::resize_bicubic(image, MAX_WIDTH, ((h as f32 * f).round() as u32).max(1)),
        false => image.clone(),
    };
    let kept: Vec<Detection> =
        dets.iter().filter(|d| d.score >= min_score).map(|d| Detection { bbox: d.bbox.map(|v| v * f), ..*d }).collect();
    let mut drawn = shown.clone();
    draw_boxes(&mut drawn, &kept, if scale == 2 { 1 } else { 2 });
    let best = dets.iter().map(|d| d.score).fold(None, |m: Option<f32>, s| Some(m.map_or(s, |m| m.max(s))));
    let caption = format!(
        "{} detection{} ≥ {min_score}{}",
        kept.len(),
        if kept.len() == 1 { "" } else { "s" },
        best.map_or(String::new(), |b| format!("; best score {b:.2}"))
    );
    Ok(vec![
        img_tag(&shown, "target image", scale)?,
        format!("{}<br>{}", img_tag(&drawn, &caption, scale)?, escape(&caption)),
    ])
}

/// The detection classes in their box colours.
fn legend() -> String {
    let items: String = (1..=LABEL_IDS.len())
        .map(|c| {
            let [r, g, b] = class_color(c);
            format!(
                r#"<span><span class="swatch" style="background: rgb({r},{g},{b})"></span>{}</span>"#,
                escape(class_name(c).unwrap_or("?"))
            )
        })
        .collect();
    format!(r#"<p class="legend">{items}</p>"#)
}
