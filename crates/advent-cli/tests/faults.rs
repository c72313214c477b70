//! Training under faults, with real processes: `kill -9` at random moments and while a
//! checkpoint is being written or deleted, Ctrl-C and SIGTERM (a stop with a checkpoint), a
//! full disk during a save, and the determinism that makes "reproduces the uninterrupted run
//! exactly" testable at all.
//!
//! The run is the tiny network on the built-in generator (AdvEnt with discriminators of
//! width 8, 64x32, 41 iterations, a checkpoint of 9.4 MB every 4 keeping the last 2), a few
//! seconds on two cores.

mod common;

use common::{advent, advent_with_file_limit, assert_clean_failure, metrics, s, stderr};
use std::io::BufRead;
use std::os::unix::process::{CommandExt, ExitStatusExt};
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

/// Waits until `run`'s metrics.jsonl has at least `lines` lines (the process still running).
fn wait_for_metrics(child: &mut Child, run: &Path, lines: usize) {
    let began = Instant::now();
    loop {
        let n = std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |m| m.lines().count());
        if n >= lines {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before {lines} iterations were logged");
        assert!(began.elapsed() < Duration::from_secs(300), "no {lines} iterations logged in 300 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn send(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

/// `advent ARGS` with stderr piped, and SIGINT ignored when `ignore_sigint` (as a shell starts a
/// background job), at its default otherwise (whatever the test process inherited: the suite
/// may itself run as a background job).
fn spawn(args: &[&str], ignore_sigint: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_advent"));
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: signal(2) is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGINT, if ignore_sigint { libc::SIG_IGN } else { libc::SIG_DFL });
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd.spawn().expect("starts")
}

/// Stops a running `advent train` (or `detect train`) with `signal` once `lines` iterations
/// are logged: it must exit with 128 + the signal's number after writing the checkpoint of
/// the iteration it was in, and say so. Returns that iteration.
fn stop_with(mut child: Child, run: &Path, lines: usize, signal: libc::c_int, name: &str, command: &str) -> u64 {
    wait_for_metrics(&mut child, run, lines);
    send(&child, signal);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(128 + signal), "stopped by {name}: {err}");
    assert!(!err.contains("error:") && !err.contains("panicked"), "{err}");
    assert!(err.contains("advent: stopping after this iteration, with a checkpoint"), "{err}");
    let newest = advent::train::checkpoints(run).unwrap().pop().expect("a checkpoint").0;
    let said = format!("stopped by {name} after iteration {newest}; continue with: {command} --resume {}", s(run));
    assert!(err.contains(&said), "expected `{said}` in: {err}");
    // The checkpoint is of the last iteration logged: nothing done was lost.
    assert_eq!(metrics(run).len() as u64, newest + 1);
    assert!(hidden(run).is_empty(), "leftovers: {:?}", hidden(run));
    newest
}

#[test]
fn sigint_and_sigterm_stop_with_a_checkpoint_and_resuming_reproduces_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    // No periodic checkpoint before the last: every earlier one is a stop's.
    let train = [("early_stop", "60"), ("discriminator_width", "8"), ("save_every", "1000"), ("max_iters", "100")];
    let config = common::tiny_config_with(dir.path(), "advent", &train);
    let reference = dir.path().join("reference");
    let o = advent(&["train", "--config", s(&config), "--run-dir", s(&reference)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = dir.path().join("stopped");
    let child = spawn(&["train", "--config", s(&config), "--run-dir", s(&run)], false);
    let first = stop_with(child, &run, 6, libc::SIGINT, "SIGINT", "advent train");
    assert!((5..60).contains(&first), "stopped at {first}");
    let child = spawn(&["train", "--resume", s(&run)], false);
    let second = stop_with(child, &run, first as usize + 6, libc::SIGTERM, "SIGTERM", "advent train");
    assert!(second > first && second < 60, "stopped at {second} after {first}");
    assert_eq!(advent::train::checkpoints(&run).unwrap().iter().map(|c| c.0).collect::<Vec<_>>(), [first, second]);
    // A job that ignores SIGINT (a background job of a script) keeps ignoring it.
    let mut child = spawn(&["train", "--resume", s(&run)], true);
    wait_for_metrics(&mut child, &run, second as usize + 4);
    send(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics(&run), metrics(&reference), "losses after the stops differ from the uninterrupted run");
    let last = "checkpoints/iter_000060/model.pth";
    assert!(std::fs::read(run.join(last)).unwrap() == std::fs::read(reference.join(last)).unwrap());
}

#[test]
fn the_same_signal_twice_stops_at_once_without_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // Iterations of about half a second on two cores: long enough to signal twice within one.
    let config = dir.path().join("slow.toml");
    std::fs::write(
        &config,
        "[model]\narch = \"deeplabv2-tiny\"\n[source]\ndataset = \"synthetic\"\nsize = [512, 256]\n\
         [target]\ndataset = \"synthetic\"\nsize = [512, 256]\n[synthetic]\nlen = 2\n[train]\n\
         method = \"advent\"\nmax_iters = 100\nearly_stop = 50\nsave_every = 1000\ndiscriminator_width = 8\n",
    )
    .unwrap();
    let run = dir.path().join("run");
    let mut child = spawn(&["train", "--config", s(&config), "--run-dir", s(&run)], false);
    wait_for_metrics(&mut child, &run, 1);
    send(&child, libc::SIGINT);
    // The handler's message, after the plan's lines (no bar: stderr is a pipe).
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("advent: stopping after this iteration") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "stderr closed before the handler's message");
    }
    send(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert!(advent::train::checkpoints(&run).unwrap().is_empty(), "a checkpoint was written");
}

#[test]
fn a_detection_run_stops_on_sigterm_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("det.toml");
    std::fs::write(
        &config,
        "[source]\ndataset = \"synthetic\"\nbatch_size = 1\n[target]\ndataset = \"synthetic\"\nbatch_size = 1\n\
         [synthetic]\nlen = 4\n[train]\nmethod = \"minent\"\nmax_iters = 100\nearly_stop = 60\nsave_every = 1000\n\
         workers = 1\n",
    )
    .unwrap();
    let run = dir.path().join("run");
    let child = spawn(&["detect", "train", "--config", s(&config), "--run-dir", s(&run)], false);
    let stopped = stop_with(child, &run, 3, libc::SIGTERM, "SIGTERM", "advent detect train");
    assert!((2..60).contains(&stopped), "stopped at {stopped}");
    for f in ["model.pth", "optimizer.safetensors", "state.json"] {
        assert!(run.join(format!("checkpoints/iter_{stopped:06}/{f}")).is_file(), "{f} missing");
    }
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
