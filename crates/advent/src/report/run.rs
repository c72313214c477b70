//! `advent report RUN_DIR`: the HTML report of one training run — its settings, every loss
//! and learning rate over the iterations, target mIoU per checkpoint where `advent eval
//! --sweep` (or the demo) has evaluated them (mAP for a detection run), and the last checkpoint's predictions and
//! entropy maps on the first target images.

use super::{class_legend, entropy_legend, escape, img_tag, line_chart, page, Series};
use crate::classes;
use crate::config::Config;
use crate::dataset;
use crate::image::{colormap, from_input_tensor, IMG_MEAN_BGR};
use crate::model::SegModel;
use crate::predict::{predict, PredictOptions};
use crate::train::run::read_metrics_rows;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Device;

/// Per-iteration values of `metrics.jsonl`: name → (iteration, value).
pub fn read_metrics(run_dir: &Path) -> Result<BTreeMap<String, Vec<(f64, f64)>>> {
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for row in read_metrics_rows(&run_dir.join("metrics.jsonl"))? {
        for (k, v) in &row.values {
            if let (true, Some(v)) = (k != "iter", v.as_f64()) {
                out.entry(k.clone()).or_default().push((row.iter as f64, v));
            }
        }
    }
    Ok(out)
}

/// Target mIoU per checkpoint from the run's evaluation caches: protocol → (iteration, mIoU).
pub fn read_sweeps(run_dir: &Path) -> Result<BTreeMap<String, Vec<(f64, f64)>>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(run_dir.join("eval")) else { return Ok(out) };
    for entry in entries.flatten() {
        let csv = entry.path().join("scores.csv");
        let Ok(text) = std::fs::read_to_string(&csv) else { continue };
        let points: Vec<(f64, f64)> = text
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut cols = l.split(',');
                Some((cols.next()?.trim().parse().ok()?, cols.next()?.trim().parse().ok()?))
            })
            .collect();
        if !points.is_empty() {
            out.insert(entry.file_name().to_string_lossy().into_owned(), points);
        }
    }
    Ok(out)
}

/// Moving average over `window` points (centred, shorter at the ends): per-iteration losses
/// of batch-1 training are too noisy to read raw.
pub fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    if window <= 1 {
        return points.to_vec();
    }
    let half = window / 2;
    (0..points.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(points.len());
            let mean = points[lo..hi].iter().map(|p| p.1).sum::<f64>() / (hi - lo) as f64;
            (points[i].0, mean)
        })
        .collect()
}

/// The charts of a segmentation run: title and the prefix of the metrics drawn in it (the
/// reference's loss names).
pub const SEGMENTATION_CHARTS: &[(&str, &str)] = &[
    ("Source segmentation loss", "loss_seg_src_"),
    ("Adversarial loss (fooling the discriminators)", "loss_adv_trg_"),
    ("Discriminator loss (target half)", "loss_d_"),
    ("Target entropy loss", "loss_ent_"),
    ("Learning rate", "lr"),
];

/// The charts of a detection run (`advent detect train`'s metric names).
pub const DETECTION_CHARTS: &[(&str, &str)] = &[
    ("Source localisation loss (smooth L1)", "loss_loc_src"),
    ("Source confidence loss (mined negatives)", "loss_conf_src"),
    ("Adversarial loss (fooling the discriminator)", "loss_adv_trg"),
    ("Discriminator loss", "loss_d"),
    ("Target entropy loss", "loss_ent_trg"),
    ("Gradient norm (before clipping)", "grad_norm"),
    ("Learning rate", "lr"),
];

/// Charts of the losses (grouped by `groups`' name prefixes) and learning rates.
pub fn metric_charts(metrics: &BTreeMap<String, Vec<(f64, f64)>>, groups: &[(&str, &str)]) -> Vec<String> {
    let n = metrics.values().map(Vec::len).max().unwrap_or(0);
    let window = (n / 50).max(1);
    let mut charts = Vec::new();
    for &(title, prefix) in groups {
        let series: Vec<Series> = metrics
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && (prefix != "lr" || k.as_str() == "lr" || k.as_str() == "lr_d"))
            .map(|(k, v)| Series::new(k.clone(), if prefix == "lr" { v.clone() } else { smooth(v, window) }))
            .collect();
        if !series.is_empty() {
            let subtitle =
                if prefix == "lr" || window == 1 { String::new() } else { format!(" (moving average of {window})") };
            charts.push(line_chart(&format!("{title}{subtitle}"), "iteration", &series, 560, 300));
        }
    }
    charts
}

/// One row of sample images: input, ground truth (if any), prediction and entropy of each
/// model. Returns the cells' HTML.
pub fn sample_cells(
    models: &[(&str, &SegModel)],
    image: &tch::Tensor,
    label: Option<&tch::Tensor>,
    num_classes: usize,
    scale: u32,
) -> Result<Vec<String>> {
    let img = from_input_tensor(image, IMG_MEAN_BGR)?;
    let (w, h) = img.dimensions();
    let palette = classes::palette(num_classes);
    let mut cells = vec![img_tag(&img, "input", scale)?];
    if let Some(label) = label {
        let ids: Vec<u8> =
            Vec::<i64>::try_from(label.f_flatten(0, -1)?)?.into_iter().map(|v| v.clamp(0, 255) as u8).collect();
        cells.push(img_tag(&colormap::colorize(&ids, w, h, &palette), "ground truth", scale)?);
    }
    for (name, model) in models {
        let p = predict(model, &img, &PredictOptions::default())?;
        let entropy = Vec::<f32>::try_from(p.entropy.f_flatten(0, -1)?)?;
        let mean = entropy.iter().sum::<f32>() / entropy.len().max(1) as f32;
        cells.push(img_tag(&colormap::colorize(&p.train_ids, w, h, &palette), &format!("{name}: prediction"), scale)?);
        cells.push(img_tag(&colormap::heatmap(&entropy, w, h), &format!("{name}: entropy (mean {mean:.3})"), scale)?);
    }
    Ok(cells)
}

/// A grid with a header row.
pub fn grid(headers: &[String], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut html = format!(r#"<div class="grid" style="grid-template-columns: repeat({cols}, max-content)">"#);
    for h in headers {
        html.push_str(&format!("<div><b>{}</b></div>", escape(h)));
    }
    for row in rows {
        for cell in row {
            html.push_str(&format!("<div>{cell}</div>"));
        }
    }
    html.push_str("</div>");
    html
}

/// What a run's report shows.
#[derive(Debug, Clone, Copy)]
pub struct ReportOptions {
    /// Where the last checkpoint runs on the sample images.
    pub device: Device,
    /// Target images shown with the last checkpoint's output.
    pub samples: usize,
    /// Detection runs: boxes drawn have at least this class score.
    pub min_score: f32,
}

/// What [`write_run_report`] wrote.
pub struct RunReport {
    /// `<run>/report.html`.
    pub path: PathBuf,
    /// Why the sample images are left out, when the run's target dataset could not be
    /// opened (not on this machine, say).
    pub samples_left_out: Option<String>,
}

/// Writes `<run>/report.html`, of a segmentation run or (by [`super::detection`]) of a
/// detection run. A target dataset that cannot be opened leaves the sample images out (said
/// in the report and in the result); an image of it that cannot be read is an error, and the
/// earlier report is left as it was.
pub fn write_run_report(run_dir: &Path, options: &ReportOptions) -> Result<RunReport> {
    if !run_dir.is_dir() {
        anyhow::bail!("{}: no such run folder", run_dir.display());
    }
    if !run_dir.join("config.toml").exists() {
        // A demo's output holds runs and a report of its own, not a run.
        if run_dir.join("results.json").is_file() {
            anyhow::bail!(
                "{} is a demo's output, not a training run (no config.toml): its report is {}, and each of its runs \
                 can be reported: advent report {}",
                run_dir.display(),
                run_dir.join("report.html").display(),
                run_dir.join("runs").join("seed1").join("<method>").display()
            );
        }
        anyhow::bail!(
            "{} is not a training run: it has no config.toml (a run folder of advent train or advent detect train)",
            run_dir.display()
        );
    }
    if crate::train::run_task(run_dir) == Some(crate::train::Task::Detection) {
        return super::detection::write_detection_report(run_dir, options);
    }
    let &ReportOptions { device, samples, .. } = options;
    let config = Config::load(&run_dir.join("config.toml"), &[])?;
    let metrics = read_metrics(run_dir)?;
    let t = &config.train;
    let last_iter = metrics.values().filter_map(|v| v.last()).map(|p| p.0 as u64).max();
    let mut sections = vec![format!(
        r#"<p class="note">Run <code>{}</code>: {} with {}, {} classes; source {} {:?}, target {} {:?}; {} of {} iterations logged (poly horizon {}), learning rate {}, seed {}.</p>"#,
        escape(&run_dir.display().to_string()),
        t.method.name(),
        escape(&config.model.arch),
        config.model.num_classes,
        escape(&config.source.dataset),
        config.source.size,
        escape(&config.target.dataset),
        config.target.size,
        last_iter.map_or(0, |i| i + 1),
        t.early_stop + 1,
        t.max_iters,
        t.learning_rate,
        t.seed
    )];
    sections.push("<h2>Training curves</h2>".into());
    sections.push(format!(r#"<div class="charts">{}</div>"#, metric_charts(&metrics, SEGMENTATION_CHARTS).join("")));
    sections.extend(sweep_section(run_dir, "mIoU")?);
    let checkpoints = crate::train::checkpoints(run_dir)?;
    let mut samples_left_out = None;
    if let Some((iter, ckpt)) = checkpoints.last() {
        // A checkpoint that does not load is an error; a target dataset that is not on this
        // machine only leaves the sample images out.
        let model = crate::train::checkpoint_model(ckpt, device)?;
        sections.push(format!("<h2>Predictions of the checkpoint of iteration {iter}</h2>"));
        let mut spec = config.dataset_spec(false);
        spec.labels = dataset::is_synthetic(&spec.kind);
        match dataset::open(&spec).context("the run's target dataset") {
            Ok(set) => sections.push(samples_section(set.as_ref(), spec.labels, &model, samples)?),
            Err(e) => samples_left_out = Some(no_samples(&e, &mut sections)),
        }
    }
    write_page(run_dir, &format!("advent run {}", config.name), &sections, samples_left_out)
}

/// The headline figure (`mIoU`, `mAP`) of every checkpoint that `advent eval --sweep` (`advent
/// detect eval --sweep`) has evaluated, a line per evaluation protocol; nothing if none has.
pub(super) fn sweep_section(run_dir: &Path, figure: &str) -> Result<Option<String>> {
    let sweeps = read_sweeps(run_dir)?;
    if sweeps.is_empty() {
        return Ok(None);
    }
    let series: Vec<Series> = sweeps.iter().map(|(k, v)| Series::new(k.clone(), v.clone())).collect();
    Ok(Some(format!(
        "<h2>Target {figure} per checkpoint</h2>{}",
        line_chart(&format!("{figure} (%) by evaluation protocol"), "iteration", &series, 560, 300)
    )))
}

/// The note that replaces the sample images when the target dataset cannot be opened;
/// returns the reason.
pub(super) fn no_samples(e: &anyhow::Error, sections: &mut Vec<String>) -> String {
    let why = format!("{e:#}");
    sections.push(format!(r#"<p class="note">No sample images: {}</p>"#, escape(&why)));
    why
}

/// Writes `<run>/report.html` (atomically: an earlier report stays whole until replaced).
pub(super) fn write_page(
    run_dir: &Path,
    title: &str,
    sections: &[String],
    samples_left_out: Option<String>,
) -> Result<RunReport> {
    let path = run_dir.join("report.html");
    crate::fs::write_bytes_atomic(&path, page(title, sections).as_bytes())?;
    Ok(RunReport { path, samples_left_out })
}

fn samples_section(set: &dyn dataset::Dataset, labels: bool, model: &SegModel, count: usize) -> Result<String> {
    let n = count.min(set.len());
    let headers: Vec<String> = ["target image"]
        .into_iter()
        .chain(labels.then_some("ground truth"))
        .chain(["prediction", "entropy"])
        .map(String::from)
        .collect();
    let mut rows = Vec::new();
    for i in 0..n {
        let s = set.get(i)?;
        rows.push(sample_cells(&[("model", model)], &s.image, s.label.as_ref(), model.config.num_classes as usize, 2)?);
    }
    let names: Vec<(usize, String)> = (0..model.config.num_classes as usize)
        .zip(crate::eval::class_names(model.config.num_classes as usize))
        .collect();
    Ok(format!("{}{}{}", grid(&headers, &rows), class_legend(&names, &classes::palette(names.len())), entropy_legend()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_by_hand() {
        let p = [(0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (3.0, 7.0)];
        // Window 3: (1+3)/2, (1+3+5)/3, (3+5+7)/3, (5+7)/2.
        assert_eq!(smooth(&p, 3), vec![(0.0, 2.0), (1.0, 3.0), (2.0, 5.0), (3.0, 6.0)]);
        assert_eq!(smooth(&p, 1), p.to_vec());
    }
}
