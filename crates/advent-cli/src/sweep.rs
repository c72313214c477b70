//! What `advent eval --sweep` and `advent detect eval --sweep` share: their arguments, the
//! line printed as each checkpoint comes, and the summary at the end.

use advent::eval::sweep::{SweepEntry, SweepResult, Swept};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct SweepArgs {
    /// Evaluate every checkpoint of this run folder, in iteration order.
    #[arg(long, value_name = "RUN_DIR")]
    pub sweep: Option<PathBuf>,
    /// With --sweep: keep polling for new checkpoints until the run's last iteration
    /// (train.early_stop in RUN_DIR/config.toml) is evaluated.
    #[arg(long, requires = "sweep")]
    pub wait: bool,
    /// With --wait: seconds between looks for new checkpoints.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub poll: f64,
}

impl SweepArgs {
    /// Checks --poll, and that `run_dir` is a run of `task` (`command` takes those); returns
    /// the polling interval.
    pub fn check(&self, run_dir: &Path, task: advent::train::Task, command: &str) -> Result<Duration> {
        ensure!(self.poll > 0.0 && self.poll <= 3600.0, "--poll must be a number of seconds above 0 and at most 3600");
        ensure!(run_dir.is_dir(), "no run folder {}", run_dir.display());
        advent::train::check_run_task(run_dir, task, command)?;
        Ok(Duration::from_secs_f64(self.poll))
    }

    /// What `sweeping …` adds when waiting.
    pub fn waiting(&self) -> &'static str {
        if self.wait {
            ", waiting for the run's last iteration"
        } else {
            ""
        }
    }
}

/// A headline figure: two decimals, `-` where there is none.
fn figure_value(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.2}")
    }
}

/// The line printed for a checkpoint as it comes: its figure (named `figure`), and the best
/// so far.
pub fn entry_line<S: Swept>(e: &SweepEntry<S>, best: &SweepEntry<S>, figure: &str) -> String {
    format!(
        "iter {:>6}  {figure} {:>6}   best {:>6} (iter {}){}",
        e.iteration,
        figure_value(e.scores.headline()),
        figure_value(best.scores.headline()),
        best.iteration,
        if e.cached { "  [cached]" } else { "" }
    )
}

/// Prints the best and the last snapshot (each with `table` of its scores), a note when the
/// run's last iteration is missing, and the counts; writes `json` (`{"best", "last"}`, each
/// `{"iteration", "scores"}`).
pub fn finish<S: Swept>(
    result: &SweepResult<S>,
    figure: &str,
    table: &dyn Fn(&S) -> String,
    json: Option<&Path>,
) -> Result<()> {
    let best = result.best().context("a sweep has results")?;
    let last = result.last().context("a sweep has results")?;
    println!(
        "\nbest snapshot: iteration {}, {figure} {} (as the paper selects its models: the best snapshot \
         on the target validation set, i.e. selected with its ground truth)",
        best.iteration,
        figure_value(best.scores.headline())
    );
    print!("{}", table(&best.scores));
    println!("\nlast snapshot: iteration {}, {figure} {}", last.iteration, figure_value(last.scores.headline()));
    print!("{}", table(&last.scores));
    if !result.complete() {
        match result.final_iteration {
            Some(f) => println!(
                "\nnote: the run's last iteration ({f}) has no checkpoint yet: still training, or \
                 stopped early (--wait follows a run)"
            ),
            None => println!("\nnote: no config.toml in the run folder: its last iteration is unknown"),
        }
    }
    println!(
        "\n{} checkpoint(s): {} evaluated now, {} from the cache; per iteration: {}",
        result.entries.len(),
        result.evaluated(),
        result.entries.len() - result.evaluated(),
        result.csv.display()
    );
    if let Some(path) = json {
        let entry = |e: &SweepEntry<S>| serde_json::json!({"iteration": e.iteration, "scores": e.scores});
        let json = serde_json::json!({"best": entry(best), "last": entry(last)});
        let bytes = serde_json::to_vec_pretty(&json).context("serialising the sweep")?;
        advent::fs::write_bytes_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
