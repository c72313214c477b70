//! `advent report RUN RUN... --out FILE`: several training runs of one task side by side — a
//! table of what each run is and its evaluated checkpoints (best and last, per evaluation
//! protocol), every loss and learning rate with one line per run, and the target score per
//! checkpoint with one line per run. One colour per run in every chart.

use super::run::{read_metrics, read_sweeps, smooth, DETECTION_CHARTS, SEGMENTATION_CHARTS};
use super::{escape, line_chart, page, Series};
use crate::train::{run_task, Task};
use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One run as the comparison reads it.
struct Run {
    dir: PathBuf,
    /// What it trained (`method`, network), from its config.toml.
    what: String,
    metrics: BTreeMap<String, Vec<(f64, f64)>>,
    /// Evaluation protocol → (iteration, headline figure).
    sweeps: BTreeMap<String, Vec<(f64, f64)>>,
}

/// The task of the run in `dir`; a missing folder, or one that is not a run, is an error
/// naming it.
fn task_of(dir: &Path) -> Result<Task> {
    ensure!(dir.is_dir(), "{}: no such run folder", dir.display());
    run_task(dir).with_context(|| format!("{} is not a training run: it has no config.toml", dir.display()))
}

/// Reads `dir`'s run, which must be of `task`.
fn read_run(dir: &Path, task: Task) -> Result<Run> {
    if task_of(dir)? != task {
        bail!("{}: runs of segmentation and detection cannot be compared in one report", dir.display());
    }
    let what = match task {
        Task::Segmentation => {
            let c = crate::config::Config::load(&dir.join("config.toml"), &[])?;
            format!("{}, {}", c.train.method.name(), c.model.arch)
        }
        Task::Detection => {
            let c = crate::detect::config::DetConfig::load(&dir.join("config.toml"), &[])?;
            format!("{}, SSD-300 width {}", c.train.method, c.model.width)
        }
    };
    Ok(Run { dir: dir.to_path_buf(), what, metrics: read_metrics(dir)?, sweeps: read_sweeps(dir)? })
}

/// The best and the last point of a series (the best: highest, the earliest of equals).
fn best_and_last(points: &[(f64, f64)]) -> Option<((f64, f64), (f64, f64))> {
    let last = *points.last()?;
    let best = points.iter().copied().fold(None, |best: Option<(f64, f64)>, p| match best {
        Some(b) if b.1 >= p.1 => Some(b),
        _ => Some(p),
    })?;
    Some((best, last))
}

/// Writes the comparison of `runs` (at least two, of one task) to `out`, atomically. The runs'
/// names in the page are their folders as given.
pub fn write_comparison(runs: &[PathBuf], out: &Path) -> Result<()> {
    ensure!(runs.len() >= 2, "a comparison needs at least two runs");
    let task = task_of(&runs[0])?;
    let runs: Vec<Run> = runs.iter().map(|d| read_run(d, task)).collect::<Result<_>>()?;
    let figure = match task {
        Task::Segmentation => "mIoU",
        Task::Detection => "mAP",
    };
    let name = |r: &Run| r.dir.display().to_string();
    let mut sections = Vec::new();

    // The table: a row per run, best and last per evaluation protocol.
    let protocols: BTreeSet<&String> = runs.iter().flat_map(|r| r.sweeps.keys()).collect();
    let mut head =
        String::from(r#"<tr><th class="name">run</th><th class="name">trained</th><th>iterations logged</th>"#);
    for p in &protocols {
        head += &format!("<th>{figure} {}: best (iteration)</th><th>last (iteration)</th>", escape(p));
    }
    head += "</tr>";
    let best_of: BTreeMap<&String, f64> = protocols
        .iter()
        .map(|p| {
            let top = runs
                .iter()
                .filter_map(|r| best_and_last(r.sweeps.get(*p)?))
                .map(|(best, _)| best.1)
                .fold(f64::NEG_INFINITY, f64::max);
            (*p, top)
        })
        .collect();
    let mut rows = String::new();
    for (i, r) in runs.iter().enumerate() {
        let logged = r.metrics.values().map(Vec::len).max().unwrap_or(0);
        rows += &format!(
            r#"<tr><td class="name"><span class="swatch" style="background:{}"></span>{}</td><td class="name">{}</td><td>{logged}</td>"#,
            super::chart::color(i),
            escape(&name(r)),
            escape(&r.what)
        );
        for p in &protocols {
            match r.sweeps.get(*p).and_then(|s| best_and_last(s)) {
                Some((best, last)) => {
                    let class = if best.1 == best_of[*p] { r#" class="best""# } else { "" };
                    rows += &format!(
                        "<td{class}>{:.2} ({})</td><td>{:.2} ({})</td>",
                        best.1, best.0 as u64, last.1, last.0 as u64
                    );
                }
                None => rows += "<td>-</td><td>-</td>",
            }
        }
        rows += "</tr>";
    }
    sections.push(format!("<table>{head}{rows}</table>"));
    sections.push(format!(
        r#"<p class="note">{figure} per checkpoint as <code>advent {}eval --sweep</code> cached it in each run's <code>eval/</code> folder (its evaluation protocol heads the columns); the best of each protocol is marked. The best snapshot is selected with the target validation set's ground truth, as the paper selects its models; the last is not.</p>"#,
        if task == Task::Detection { "detect " } else { "" }
    ));

    // One chart per evaluation protocol and per metric, a line per run.
    if !protocols.is_empty() {
        let charts: Vec<String> = protocols
            .iter()
            .map(|p| {
                let series = per_run(&runs, |r| r.sweeps.get(*p).cloned());
                line_chart(&format!("Target {figure} (%), {p}"), "iteration", &series, 560, 300)
            })
            .collect();
        sections
            .push(format!(r#"<h2>Target {figure} per checkpoint</h2><div class="charts">{}</div>"#, charts.join("")));
    }
    let groups = match task {
        Task::Segmentation => SEGMENTATION_CHARTS,
        Task::Detection => DETECTION_CHARTS,
    };
    let longest = runs.iter().flat_map(|r| r.metrics.values().map(Vec::len)).max().unwrap_or(0);
    let window = (longest / 50).max(1);
    let mut charts = Vec::new();
    for &(title, prefix) in groups {
        let keys: BTreeSet<&String> = runs
            .iter()
            .flat_map(|r| r.metrics.keys())
            .filter(|k| if prefix == "lr" { k.as_str() == "lr" || k.as_str() == "lr_d" } else { k.starts_with(prefix) })
            .collect();
        // The main head's before the aux head's.
        let mut keys: Vec<&String> = keys.into_iter().collect();
        keys.sort_by_key(|k| k.ends_with("_aux"));
        for key in keys {
            let raw = prefix == "lr";
            let series =
                per_run(&runs, |r| r.metrics.get(key).map(|v| if raw { v.clone() } else { smooth(v, window) }));
            let subtitle = if raw || window == 1 { String::new() } else { format!(", moving average of {window}") };
            charts.push(line_chart(&format!("{title}: {key}{subtitle}"), "iteration", &series, 560, 300));
        }
    }
    sections.push(format!(r#"<h2>Training curves</h2><div class="charts">{}</div>"#, charts.join("")));
    let title = format!("advent: {} runs compared", runs.len());
    crate::fs::write_bytes_atomic(out, page(&title, &sections).as_bytes())
}

/// A series per run that has `points`, each in its run's colour.
fn per_run(runs: &[Run], points: impl Fn(&Run) -> Option<Vec<(f64, f64)>>) -> Vec<Series> {
    runs.iter()
        .enumerate()
        .filter_map(|(i, r)| Some(Series { name: r.dir.display().to_string(), points: points(r)?, color: Some(i) }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::best_and_last;

    #[test]
    fn best_is_the_earliest_highest_and_last_the_last() {
        let p = [(2.0, 30.0), (4.0, 41.5), (6.0, 41.5), (8.0, 39.0)];
        assert_eq!(best_and_last(&p), Some(((4.0, 41.5), (8.0, 39.0))));
        assert_eq!(best_and_last(&[]), None);
    }
}
