//! Helpers shared by the end-to-end tests of the `advent` binary.
#![allow(dead_code)] // each test file uses its own subset

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `advent ARGS` to completion.
pub fn advent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_advent")).args(args).output().expect("runs")
}

/// Runs `advent ARGS` with files limited to `max_bytes`, as a full disk would stop them
/// (the write fails with EFBIG instead of ENOSPC; SIGXFSZ ignored, as the shell would not).
pub fn advent_with_file_limit(args: &[&str], max_bytes: u64) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_advent"));
    cmd.args(args);
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: max_bytes, rlim_max: max_bytes };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    cmd.output().expect("runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

pub fn assert_success(o: &Output) {
    assert!(o.status.success(), "failed: {}\n{}", stderr(o), stdout(o));
}

/// A failure is exactly what users should see: exit status 1, one `error:` line that
/// contains `needle`, no panic.
pub fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit status 1, stderr: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "panic: {err}");
    assert!(!err.contains("frame #"), "libtorch's C++ backtrace: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, stderr: {err}");
    assert!(errors[0].contains(needle), "expected `{needle}` in the error line: {err}");
}

pub fn write_image(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 3) as u8]));
    img.save(path).unwrap();
}

/// A small training config on the built-in generator: the tiny network, 64x32 images,
/// `early_stop` 6, a checkpoint every 3 iterations.
pub fn tiny_config(dir: &Path, method: &str) -> PathBuf {
    tiny_config_with(dir, method, &[])
}

/// [`tiny_config`] with `[train]` settings added or replaced (`("early_stop", "40")`).
pub fn tiny_config_with(dir: &Path, method: &str, train: &[(&str, &str)]) -> PathBuf {
    let method = format!("\"{method}\"");
    let mut settings = vec![
        ("method", method.as_str()),
        ("max_iters", "50"),
        ("early_stop", "6"),
        ("save_every", "3"),
        ("workers", "2"),
    ];
    for &(key, value) in train {
        match settings.iter_mut().find(|(k, _)| *k == key) {
            Some(setting) => setting.1 = value,
            None => settings.push((key, value)),
        }
    }
    let train: String = settings.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let text = format!(
        "[model]\narch = \"deeplabv2-tiny\"\n[source]\ndataset = \"synthetic\"\nsize = [64, 32]\n\
         [target]\ndataset = \"synthetic\"\nsize = [64, 32]\n[synthetic]\nlen = 5\n[train]\n{train}"
    );
    let path = dir.join(format!("{}.toml", method.trim_matches('"')));
    std::fs::write(&path, text).unwrap();
    path
}

/// The lines of a run's `metrics.jsonl`.
pub fn metrics(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(String::from).collect()
}

/// Every file under `dir` with its bytes, sorted by path: to show that a failed command
/// left existing outputs alone.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// Every file below `dir`, hidden ones included (the tests look for leftovers such as
/// `.partial-` folders and `.tmp-` files, which advent's own walker skips).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_below(&path));
        } else {
            files.push(path);
        }
    }
    files
}
