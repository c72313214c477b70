//! `advent report RUN_DIR` for a detection run (`advent detect train`): its settings, every
//! loss, the gradient norm and the learning rate over the iterations, target mAP per
//! checkpoint where `advent detect eval --sweep` has evaluated them, and the last
//! checkpoint's detections on the first target images, drawn as `advent detect predict`
//! draws them.

use super::run::{
    grid, metric_charts, no_samples, read_metrics, smooth, sweep_section, write_page, ReportOptions, RunReport,
    DETECTION_CHARTS,
};
use super::{escape, img_tag, line_chart, page, Series};
use crate::detect::cityscapes::{class_name, FrameBoxes, LABEL_IDS};
use crate::detect::config::DetConfig;
use crate::detect::data::{DetDataset, RawFrame};
use crate::detect::demo::{DetDemoResults, DETECTORS};
use crate::detect::nms::{DetectConfig, Detection};
use crate::detect::predict::{class_color, detect_image, draw_boxes};
use crate::detect::priors::PriorConfig;
use crate::detect::ssd::Ssd;
use crate::image::RgbImage;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

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
    sections.extend(sweep_section(run_dir, "mAP")?);
    let mut samples_left_out = None;
    if let Some((iter, ckpt)) = crate::train::checkpoints(run_dir)?.last() {
        let ssd = Ssd::from_checkpoint(&ckpt.join("model.pth"), device)?;
        sections.push(format!("<h2>Detections of the checkpoint of iteration {iter} (score ≥ {min_score})</h2>"));
        match crate::detect::run::open_set(&config, false) {
            Ok(set) => {
                let (priors, detect) = (PriorConfig::default().priors(), DetectConfig::default());
                // The built-in scenes have boxes (as the segmentation report shows their
                // labels); a real target is read without them.
                let truth = config.target.dataset == "synthetic";
                let mut rows = Vec::new();
                for i in 0..samples.min(set.len()) {
                    let frame = set.raw(i)?;
                    let dets = detect_image(&ssd, &frame.image, &priors, &detect)
                        .with_context(|| format!("detecting objects in {}", frame.name))?;
                    rows.push(sample_row(&frame, &dets, min_score, truth)?);
                }
                let first = if truth { "target image, ground truth" } else { "target image" };
                let headers = [first.to_string(), "detections".to_string()];
                let all: Vec<usize> = (1..=LABEL_IDS.len()).collect();
                sections.push(format!("{}{}", grid(&headers, &rows), legend(&all)));
            }
            Err(e) => samples_left_out = Some(no_samples(&e, &mut sections)),
        }
    }
    write_page(run_dir, &format!("advent detection run {}", config.name), &sections, samples_left_out)
}

/// The detection demo's `report.html`: the scores of every detector over the seeds (best
/// values marked), what they say (`findings`), the training curves of seed 1's runs (`runs`:
/// each detector's key in [`DETECTORS`] and run folder), and the first held-out target scenes
/// of `val` with their ground truth and each detector's boxes of at least `min_score`.
pub fn demo_page(
    results: &DetDemoResults,
    findings: &[String],
    runs: &[(&str, PathBuf)],
    val: &dyn DetDataset,
    device: tch::Device,
    min_score: f32,
) -> Result<String> {
    let schedule = &results.schedule;
    let label = |key: &str| DETECTORS.iter().find(|d| d.0 == key).map_or(key.to_string(), |d| d.1.to_string());
    let mut sections = vec![format!(
        r#"<p class="note">ADVENT's detection extension on the built-in synthetic-to-real shift, {} seed(s): per seed a source-only SSD-300 trains {} iterations on labelled source scenes (the start), then each method trains {} more from it with <code>advent detect train</code>'s code; every detector is scored by VOC mAP at IoU 0.5 (all-point; 11-point beside it) on {} held-out scenes of the target domain, and of the source domain (has it learned?). {:.0} s on {}. Settings: <code>configs/detection/demo.toml</code>.</p>"#,
        results.seeds,
        schedule.pretrain_iters,
        schedule.method_iters,
        schedule.val_scenes,
        results.seconds,
        escape(&results.device)
    )];
    sections.push("<h2>Target mAP (%)</h2>".into());
    sections.push(scores_table(results, &label));
    sections.push(format!(
        r#"<ul class="note">{}</ul>"#,
        findings.iter().map(|l| format!("<li>{}</li>", escape(l))).collect::<String>()
    ));
    // Curves of seed 1: the start's source losses over its own iterations, then each method's
    // losses side by side.
    let mut metrics = Vec::new();
    for (key, dir) in runs {
        metrics.push((*key, read_metrics(dir)?));
    }
    let start_groups: Vec<(&str, &str)> = DETECTION_CHARTS
        .iter()
        .filter(|g| matches!(g.1, "loss_loc_src" | "loss_conf_src" | "grad_norm"))
        .copied()
        .collect();
    if let Some((_, m)) = metrics.iter().find(|m| m.0 == "pretrain") {
        sections.push(format!("<h2>The source-only start (seed 1, {} iterations)</h2>", schedule.pretrain_iters));
        sections.push(format!(r#"<div class="charts">{}</div>"#, metric_charts(m, &start_groups).join("")));
    }
    let methods: Vec<&(&str, _)> = metrics.iter().filter(|m| m.0 != "pretrain").collect();
    let longest = methods.iter().flat_map(|m| m.1.values().map(Vec::len)).max().unwrap_or(0);
    let window = (longest / 50).max(1);
    let mut charts = Vec::new();
    for &(title, key) in DETECTION_CHARTS.iter().filter(|g| g.1 != "lr") {
        let series: Vec<Series> = methods
            .iter()
            .enumerate()
            .filter_map(|(color, (k, m))| {
                m.get(key).map(|v| Series { name: label(k), points: smooth(v, window), color: Some(color) })
            })
            .collect();
        if !series.is_empty() {
            let subtitle = if window > 1 { format!(" (moving average of {window})") } else { String::new() };
            charts.push(line_chart(&format!("{title}{subtitle}"), "iteration", &series, 560, 300));
        }
    }
    sections.push(format!("<h2>The methods (seed 1, {} iterations from the start)</h2>", schedule.method_iters));
    sections.push(format!(
        r#"<div class="charts">{}</div><p class="note">Losses are moving averages; a line hidden under another coincides with it (the target terms' small weights leave the source losses nearly alike). Every run's losses, learning rates and boxes are in its own report: <code>advent report runs/seed1/&lt;detector&gt; --min-score {min_score}</code> (pretrain, source_only, minent, advent), and in its TensorBoard logs.</p>"#,
        charts.join("")
    ));
    // Held-out target scenes: ground truth, then each detector's boxes.
    let priors = PriorConfig::default().priors();
    let detect = DetectConfig::default();
    let shown = 4.min(val.len());
    let frames: Vec<_> = (0..shown).map(|i| val.raw(i)).collect::<Result<_>>()?;
    let mut headers = vec![String::new()];
    headers.extend((1..=shown).map(|i| format!("held-out target scene {i}")));
    let mut row = vec!["ground truth".to_string()];
    // The classes drawn, for the legend.
    let mut drawn = std::collections::BTreeSet::new();
    for f in &frames {
        row.push(ground_truth_cell(&f.image, &f.frame, 1)?);
        drawn.extend(f.frame.objects.iter().map(|o| o.class));
    }
    let mut rows = vec![row];
    for (key, dir) in runs {
        let (_, ckpt) =
            crate::train::checkpoints(dir)?.pop().with_context(|| format!("{} has no checkpoint", dir.display()))?;
        let ssd = Ssd::from_checkpoint(&ckpt.join("model.pth"), device)?;
        let mut row = vec![escape(&label(key))];
        for f in &frames {
            let dets = detect_image(&ssd, &f.image, &priors, &detect)
                .with_context(|| format!("detecting objects in {}", f.name))?;
            row.push(boxes_cell(&f.image, &dets, min_score, 1)?);
            drawn.extend(dets.iter().filter(|d| d.score >= min_score).map(|d| d.class));
        }
        rows.push(row);
    }
    sections.push(format!("<h2>Held-out target scenes (seed 1; boxes of score ≥ {min_score})</h2>"));
    sections.push(format!("{}{}", grid(&headers, &rows), legend(&drawn.into_iter().collect::<Vec<_>>())));
    Ok(page("advent demo: ADVENT's detection extension on a synthetic-to-real shift", &sections))
}

/// The demo's table: each detector's target mAP over the seeds, its 11-point mAP, each
/// class's AP, its source-domain mAP and its training time; the best target values in bold.
fn scores_table(results: &DetDemoResults, label: &dyn Fn(&str) -> String) -> String {
    let rows: Vec<(&str, &crate::detect::demo::DetSummary)> =
        DETECTORS.iter().filter_map(|d| results.methods.get(d.0).map(|s| (d.0, s))).collect();
    let classes: Vec<&String> = rows.first().map(|r| r.1.ap.keys().collect()).unwrap_or_default();
    let best = |get: &dyn Fn(&crate::detect::demo::DetSummary) -> Option<f64>| {
        rows.iter().filter_map(|r| get(r.1)).fold(f64::NEG_INFINITY, f64::max)
    };
    let cell = |v: Option<f64>, best: f64| match v {
        Some(v) if v >= best => format!(r#"<td class="best">{v:.1}</td>"#),
        Some(v) => format!("<td>{v:.1}</td>"),
        None => "<td>–</td>".into(),
    };
    let spread = results.seeds > 1;
    let mut html = format!(
        r#"<table><tr><th class="name">detector</th><th>target mAP{}</th><th>per seed</th><th>11-point mAP</th>"#,
        if spread { " (mean ± sd)" } else { "" }
    );
    for c in &classes {
        html.push_str(&format!("<th>{} AP</th>", escape(c)));
    }
    html.push_str("<th>source-domain mAP</th><th>training (s)</th></tr>");
    let best_map = best(&|s| s.map);
    for (key, s) in &rows {
        html.push_str(&format!(r#"<tr><td class="name">{}</td>"#, escape(&label(key))));
        let map = match (s.map, s.map_std) {
            (Some(m), Some(sd)) if spread => format!("{m:.1} ± {sd:.1}"),
            (Some(m), _) => format!("{m:.1}"),
            _ => "–".into(),
        };
        let bold = s.map.is_some_and(|m| m >= best_map);
        html.push_str(&format!("<td{}>{map}</td>", if bold { r#" class="best""# } else { "" }));
        let per_seed: Vec<String> =
            s.map_per_seed.iter().map(|v| v.map_or("–".into(), |v| format!("{v:.1}"))).collect();
        html.push_str(&format!("<td>{}</td>", per_seed.join(", ")));
        html.push_str(&cell(s.map_11, best(&|s| s.map_11)));
        for c in &classes {
            html.push_str(&cell(s.ap.get(*c).copied().flatten(), best(&|s| s.ap.get(*c).copied().flatten())));
        }
        html.push_str(&format!(
            "<td>{}</td><td>{:.0}</td></tr>",
            s.source_map.map_or("–".into(), |v| format!("{v:.1}")),
            s.seconds
        ));
    }
    html.push_str("</table>");
    html
}

/// The image (with its ground-truth boxes when `truth`) and its detections of at least
/// `min_score` drawn on it, with the count and the best score.
fn sample_row(frame: &RawFrame, dets: &[Detection], min_score: f32, truth: bool) -> Result<Vec<String>> {
    let image = &frame.image;
    let first = match truth {
        true => ground_truth_cell(image, &frame.frame, 2)?,
        false => {
            let (shown, _, scale) = fitted(image, 2);
            img_tag(&shown, "target image", scale)?
        }
    };
    Ok(vec![first, boxes_cell(image, dets, min_score, 2)?])
}

/// `image` reduced to [`MAX_WIDTH`] if wider, the factor applied, and the scale it is shown
/// at (`enlarge` for images that fit [`MAX_WIDTH`] so enlarged, else 1).
fn fitted(image: &RgbImage, enlarge: u32) -> (RgbImage, f32, u32) {
    let (w, h) = image.dimensions();
    let scale = if w * enlarge <= MAX_WIDTH { enlarge.max(1) } else { 1 };
    let f = (MAX_WIDTH as f32 / w as f32).min(1.0);
    let shown = match f < 1.0 {
        true => crate::image::resize::resize_bicubic(image, MAX_WIDTH, ((h as f32 * f).round() as u32).max(1)),
        false => image.clone(),
    };
    (shown, f, scale)
}

/// A cell: `image` (fitted as [`fitted`] does) with the detections of at least `min_score`
/// drawn on it, captioned with their count and the best score of all.
fn boxes_cell(image: &RgbImage, dets: &[Detection], min_score: f32, enlarge: u32) -> Result<String> {
    let kept: Vec<Detection> = dets.iter().filter(|d| d.score >= min_score).copied().collect();
    let best = dets.iter().map(|d| d.score).fold(None, |m: Option<f32>, s| Some(m.map_or(s, |m| m.max(s))));
    let caption = format!(
        "{} detection{} ≥ {min_score}{}",
        kept.len(),
        if kept.len() == 1 { "" } else { "s" },
        best.map_or(String::new(), |b| format!("; best score {b:.2}"))
    );
    drawn_cell(image, &kept, enlarge, &caption, &caption)
}

/// A cell: `image` with the ground-truth boxes of `frame` drawn, captioned with their count
/// per class.
fn ground_truth_cell(image: &RgbImage, frame: &FrameBoxes, enlarge: u32) -> Result<String> {
    let boxes: Vec<Detection> = frame
        .objects
        .iter()
        .map(|o| Detection { class: o.class, score: 1.0, bbox: o.bbox.map(|v| v as f32) })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for o in &frame.objects {
        *counts.entry(class_name(o.class).unwrap_or("?")).or_insert(0usize) += 1;
    }
    let caption = match counts.is_empty() {
        true => "no objects".to_string(),
        false => counts.iter().map(|(c, n)| format!("{n} {c}")).collect::<Vec<_>>().join(", "),
    };
    drawn_cell(image, &boxes, enlarge, &format!("ground truth: {caption}"), &caption)
}

/// `image` fitted as [`fitted`] does with `boxes` (in its pixels) drawn on it, then
/// `caption` under it (`alt` its text alternative).
fn drawn_cell(image: &RgbImage, boxes: &[Detection], enlarge: u32, alt: &str, caption: &str) -> Result<String> {
    let (mut drawn, f, scale) = fitted(image, enlarge);
    let scaled: Vec<Detection> = boxes.iter().map(|d| Detection { bbox: d.bbox.map(|v| v * f), ..*d }).collect();
    draw_boxes(&mut drawn, &scaled, if scale == 2 { 1 } else { 2 });
    Ok(format!("{}<br>{}", img_tag(&drawn, alt, scale)?, escape(caption)))
}

/// Detection classes (1..=8) in their box colours.
fn legend(classes: &[usize]) -> String {
    let items: String = classes
        .iter()
        .map(|&c| {
            let [r, g, b] = class_color(c);
            format!(
                r#"<span><span class="swatch" style="background: rgb({r},{g},{b})"></span>{}</span>"#,
                escape(class_name(c).unwrap_or("?"))
            )
        })
        .collect();
    format!(r#"<p class="legend">{items}</p>"#)
}
