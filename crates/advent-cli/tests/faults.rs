//! Training under faults, with real processes: `kill -9` at random moments and while a
//! checkpoint is being written or deleted, a full disk during a save, and the determinism
//! that makes "reproduces the uninterrupted run exactly" testable at all.
//!
//! The run is the tiny network on the built-in generator (AdvEnt with discriminators of
//! width 8, 64x32, 41 iterations, a checkpoint of 9.4 MB every 4 keeping the last 2), a few
//! seconds on two cores.

mod common;

use common::{advent, advent_with_file_limit, assert_clean_failure, metrics, s, stderr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EARLY_STOP: u64 = 40;

fn config(dir: &Path) -> PathBuf {
    let early_stop = EARLY_STOP.to_string();
    let train = [
        ("early_stop", early_stop.as_str()),
        ("discriminator_width", "8"),
        ("save_every", "4"),
        ("keep_checkpoints", "2"),
    ];
    common::tiny_config_with(dir, "advent", &train)
}

/// An uninterrupted run: its metrics and final network.
struct Reference {
    metrics: Vec<String>,
    model: Vec<u8>,
    seconds: f64,
}

fn reference(dir: &Path, config: &Path) -> Reference {
    let run = dir.join("reference");
    let began = Instant::now();
    let o = advent(&["train", "--config", s(config), "--run-dir", s(&run)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seconds = began.elapsed().as_secs_f64();
    let model = std::fs::read(final_model(&run)).unwrap();
    Reference { metrics: metrics(&run), model, seconds }
}

fn final_model(run: &Path) -> PathBuf {
    run.join(format!("checkpoints/iter_{EARLY_STOP:06}/model.pth"))
}

/// Starts the run, or continues it once it has a folder with its config.
fn start(config: &Path, run: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_advent"));
    if run.join("config.toml").is_file() {
        cmd.args(["train", "--resume", s(run)]);
    } else {
        cmd.args(["train", "--config", s(config), "--run-dir", s(run)]);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("starts")
}

/// Hidden folders in `checkpoints/`: checkpoints being written (`.tmp-`) or deleted (`.old-`).
fn hidden(run: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(run.join("checkpoints")) else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with('.')).collect()
}

/// What `--resume` may use must be whole: every visible checkpoint reads back.
fn assert_visible_checkpoints_complete(run: &Path) {
    for (iter, dir) in advent::train::checkpoints(run).unwrap() {
        for file in ["model.pth", "d_main.pth", "d_aux.pth", "optimizer.safetensors"] {
            let path = dir.join(file);
            advent::weights::load(&path).unwrap_or_else(|e| panic!("iteration {iter}: {file} unreadable: {e:#}"));
        }
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
        assert_eq!(state["iteration"], iter);
    }
}

/// Runs to the end (`--resume`, as many times as needed) and checks the result against the
/// uninterrupted run: every logged loss, and the final network byte for byte.
fn finish_and_compare(config: &Path, run: &Path, want: &Reference) {
    let mut child = start(config, run);
    assert!(child.wait().unwrap().success(), "the final resumption failed");
    assert_eq!(metrics(run), want.metrics, "losses after kills differ from the uninterrupted run");
    assert_eq!(std::fs::read(final_model(run)).unwrap(), want.model, "the final network differs");
    assert!(hidden(run).is_empty(), "leftovers after resuming: {:?}", hidden(run));
}

/// xorshift64*: reproducible delays without a dependency.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn kill_9_at_random_moments_then_resume_reproduces_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let want = reference(dir.path(), &config);
    let seed = std::env::var("ADVENT_FAULT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_u64);
    let mut rng = Rng(seed);
    let mut kills = 0;
    let mut kills_after_a_checkpoint = 0;
    let mut run = dir.path().join("killed-0");
    for attempt in 0..40 {
        if kills >= 5 && kills_after_a_checkpoint >= 2 {
            break;
        }
        if run.join(format!("checkpoints/iter_{EARLY_STOP:06}")).exists() {
            // Finished before enough kills (the machine got faster than the reference run
            // was): compare it, then go again in a new folder.
            finish_and_compare(&config, &run, &want);
            run = dir.path().join(format!("killed-{attempt}"));
        }
        let had_checkpoint = !advent::train::checkpoints(&run).unwrap_or_default().is_empty();
        let mut child = start(&config, &run);
        // Up to a third of a whole run's time: several kills per run, some while the
        // process starts, some while it trains, some while it saves.
        let delay = Duration::from_secs_f64(0.1 + rng.uniform() * (0.5 + want.seconds / 3.0));
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
            if had_checkpoint || !advent::train::checkpoints(&run).unwrap_or_default().is_empty() {
                kills_after_a_checkpoint += 1;
            }
        }
        child.wait().unwrap();
        assert_visible_checkpoints_complete(&run);
    }
    assert!(kills >= 5 && kills_after_a_checkpoint >= 2, "only {kills} kills landed (seed {seed})");
    finish_and_compare(&config, &run, &want);
}

#[test]
fn kill_9_while_a_checkpoint_is_written_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let want = reference(dir.path(), &config);
    let run = dir.path().join("killed");
    // `.tmp-`: a checkpoint half-written; `.old-`: an old one half-deleted (keep_checkpoints).
    // A write (9.4 MB, synced) takes long enough to be caught every time; a deletion (a
    // rename, then five unlinks) may finish between the sight and the kill on a fast
    // machine, so catching one is tried but not required.
    for (marker, required) in [(".tmp-", true), (".old-", false)] {
        let mut caught = false;
        for _ in 0..6 {
            let mut child = start(&config, &run);
            let seen = loop {
                if let Some(name) = hidden(&run).into_iter().find(|n| n.contains(marker)) {
                    child.kill().unwrap();
                    break Some(name);
                }
                if child.try_wait().unwrap().is_some() {
                    break None;
                }
                std::thread::sleep(Duration::from_micros(200));
            };
            child.wait().unwrap();
            assert_visible_checkpoints_complete(&run);
            // Caught in the act if the hidden folder outlived the process.
            if seen.is_some_and(|name| run.join("checkpoints").join(name).exists()) {
                caught = true;
                // `--resume` takes the newest complete checkpoint, never the hidden one.
                let (_, from) = advent::train::resolve_resume(&run).unwrap();
                match (from, advent::train::checkpoints(&run).unwrap().pop()) {
                    (advent::train::Start::Checkpoint(c), Some((_, newest))) => assert_eq!(c, newest),
                    (advent::train::Start::Over, None) => {}
                    (from, newest) => panic!("resumes from {from:?}, newest complete: {newest:?}"),
                }
                break;
            }
        }
        assert!(caught || !required, "never killed a process with a `{marker}` folder in place");
        if !caught {
            eprintln!("note: no kill landed while a `{marker}` folder was in place");
        }
        if run.join(format!("checkpoints/iter_{EARLY_STOP:06}")).exists() {
            break; // the run finished before the second kind of kill could be tried
        }
    }
    finish_and_compare(&config, &run, &want);
}

#[test]
fn a_failed_save_is_reported_and_the_previous_checkpoint_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let run = dir.path().join("run");
    let o = advent(&["train", "--config", s(&config), "--run-dir", s(&run), "--set", "train.early_stop=4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = common::snapshot(&run.join("checkpoints"));
    assert!(before.iter().any(|(p, _)| p.ends_with("iter_000004/model.pth")));

    // metrics.jsonl and the TensorBoard log stay far below 1 MB. With 1 MB the network
    // (model.pth, 4.17 MB, our zip writer) cannot be written; with 4.5 MB it and the
    // discriminators (0.19 MB each) can, the optimiser state (4.86 MB, libtorch's writer) cannot.
    for (limit, file) in [(1 << 20, "model.pth"), (9 << 19, "optimizer.safetensors")] {
        let o = advent_with_file_limit(&["train", "--resume", s(&run), "--set", "train.early_stop=8"], limit);
        assert_clean_failure(&o, "saving checkpoint");
        let err = stderr(&o);
        assert!(err.contains("iter_000008") && err.contains(file) && err.contains("File too large"), "{err}");
        assert_eq!(common::snapshot(&run.join("checkpoints")), before, "the previous checkpoint changed");
        assert!(hidden(&run).is_empty(), "a failed save left {:?}", hidden(&run));
    }

    // With room again, the run goes on from the kept checkpoint as if nothing had happened.
    let o = advent(&["train", "--resume", s(&run), "--set", "train.early_stop=8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("iter_000004"), "{}", stderr(&o));
    let full = dir.path().join("full");
    let o = advent(&["train", "--config", s(&config), "--run-dir", s(&full), "--set", "train.early_stop=8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics(&run), metrics(&full));
}

#[test]
fn two_runs_with_the_same_seed_are_identical() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let runs: Vec<PathBuf> = ["a", "b"].iter().map(|n| dir.path().join(n)).collect();
    for run in &runs {
        let o = advent(&["train", "--config", s(&config), "--run-dir", s(run), "--set", "train.early_stop=8"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let bytes = |run: &Path, file: &str| std::fs::read(run.join(file)).unwrap();
    assert_eq!(bytes(&runs[0], "metrics.jsonl"), bytes(&runs[1], "metrics.jsonl"));
    for file in ["model.pth", "d_main.pth", "d_aux.pth", "optimizer.safetensors", "state.json"] {
        let file = format!("checkpoints/iter_000008/{file}");
        assert!(bytes(&runs[0], &file) == bytes(&runs[1], &file), "{file} differs between the two runs");
    }
    // A different seed is a different run: the comparison above can fail.
    let c = dir.path().join("c");
    let o = advent(&["train", "--config", s(&config), "--run-dir", s(&c), "--set", "train.early_stop=8"]);
    assert!(o.status.success());
    let o = advent(&[
        "train",
        "--config",
        s(&config),
        "--run-dir",
        s(&dir.path().join("d")),
        "--set",
        "train.early_stop=8",
        "--set",
        "train.seed=7",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(metrics(&c), metrics(&dir.path().join("d")));
}
