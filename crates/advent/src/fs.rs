//! Files: writing that never leaves a half-written output behind, and finding the files of a
//! folder.
//!
//! Every output of the program goes through [`write_atomic`]: the bytes are written to a
//! temporary file in the destination folder, flushed to disk, and renamed over the target.
//! A crash, a full disk or a bad input therefore leaves either the old file or the new one.
//!
//! Every folder of inputs (a dataset's, predict's, score's) is read by [`files_under`].

use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes a file through `write`, atomically: `path` is replaced only if `write` succeeds
/// and the data reached the disk.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<()>,
{
    let tmp = temporary_sibling(path);
    let result = (|| -> Result<()> {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = BufWriter::new(file);
        write(&mut out)?;
        let file =
            out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |out| Ok(out.write_all(bytes)?))
}

/// Runs a writer that insists on a path of its own (libtorch's, for instance) and moves its
/// result over `path` only when it succeeded.
pub fn write_via_temporary<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let tmp = temporary_sibling(path);
    let result = write(&tmp).and_then(|()| {
        File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Builds an output folder in a hidden sibling of `out` (`build` gets its path and creates
/// it) and, once complete, puts it in place of `out` (an earlier output is moved aside first,
/// then deleted); a failed build leaves `out` as it was and no hidden folder behind. The
/// hidden folders of an earlier build into `out` that was killed or interrupted are removed
/// first. The demos and `advent rank` write their folders so.
pub fn staged_output<T>(out: &Path, build: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "output".into());
    remove_leftovers(parent, &[".tmp-", ".old-"], |stem| stem == name)?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let value = match build(&tmp) {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if out.exists() {
        fs::rename(out, &old).with_context(|| format!("moving the previous {} aside", out.display()))?;
    }
    fs::rename(&tmp, out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    let _ = fs::remove_dir_all(&old);
    Ok(value)
}

/// `dir/.name.tmp-PID-N`, hidden, in the same folder so that the rename stays on one
/// file system. The extension is kept last so that writers that look at it still work.
fn temporary_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
        _ => (name.clone(), String::new()),
    };
    path.with_file_name(format!(".{stem}.tmp-{}-{n}{ext}", std::process::id()))
}

/// Removes the hidden entries of `dir` named `.<stem><marker><pid>`, for each of `markers`
/// and each `stem` that `owned` accepts, whose process no longer runs: the temporary and
/// half-deleted outputs of a process that was killed. A live process's are left alone; this
/// process's own count as leftovers (an earlier process had its id: this one has written none
/// yet when it calls this).
pub(crate) fn remove_leftovers(dir: &Path, markers: &[&str], owned: impl Fn(&str) -> bool) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let pid = markers
            .iter()
            .find_map(|marker| name.strip_prefix('.').and_then(|n| n.rsplit_once(marker)))
            .filter(|(stem, _)| owned(stem))
            .and_then(|(_, pid)| pid.parse::<i32>().ok());
        if pid.is_some_and(|p| !process_alive(p)) {
            let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            removed.with_context(|| format!("removing the leftover {}", path.display()))?;
        }
    }
    Ok(())
}

/// Whether process `pid` runs (false for this process).
fn process_alive(pid: i32) -> bool {
    if pid == std::process::id() as i32 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Every file under `dir` (with `recursive`, in its subfolders too), following links;
/// hidden entries (`.name`) skipped; in no particular order.
///
/// # Errors
///
/// An unreadable folder, or a link that leads back to a folder it is in (a loop), named.
pub fn files_under(dir: &Path, recursive: bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(dir, recursive, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// [`files_under`] below `dir`, whose enclosing folders (resolved) are `ancestors`.
fn walk(dir: &Path, recursive: bool, ancestors: &mut Vec<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    let real = fs::canonicalize(dir).with_context(|| format!("listing folder {}", dir.display()))?;
    if ancestors.contains(&real) {
        bail!("folder {} leads back to {} (a link loop)", dir.display(), real.display());
    }
    ancestors.push(real);
    for entry in fs::read_dir(dir).with_context(|| format!("listing folder {}", dir.display()))? {
        let path = entry.with_context(|| format!("listing folder {}", dir.display()))?.path();
        if path.file_name().is_some_and(|n| n.as_encoded_bytes().first() == Some(&b'.')) {
            continue;
        }
        if path.is_dir() {
            if recursive {
                walk(&path, recursive, ancestors, out)?;
            }
        } else if path.is_file() {
            out.push(path);
        }
    }
    ancestors.pop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_demos_hidden_folders_are_removed_and_a_running_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("demo");
        // A process that has ended, and one that runs (the parent of this test process).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let alive = std::os::unix::process::parent_id();
        let hidden = |marker: &str, pid: u32| dir.path().join(format!(".demo{marker}{pid}"));
        for path in [hidden(".tmp-", dead), hidden(".old-", dead), hidden(".tmp-", alive)] {
            std::fs::create_dir_all(path.join("runs")).unwrap();
        }
        // Another output's leftovers are not this demo's.
        std::fs::create_dir_all(dir.path().join(format!(".demo2.tmp-{dead}"))).unwrap();
        staged_output(&out, |tmp| Ok(std::fs::create_dir_all(tmp)?)).unwrap();
        assert!(out.is_dir());
        assert!(!hidden(".tmp-", dead).exists() && !hidden(".old-", dead).exists());
        assert!(hidden(".tmp-", alive).exists(), "a running demo's folder was removed");
        assert!(dir.path().join(format!(".demo2.tmp-{dead}")).exists());
    }

    #[test]
    fn failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_bytes_atomic(&path, b"old").unwrap();
        let err = write_atomic(&path, |out| {
            out.write_all(b"partial")?;
            anyhow::bail!("disk full")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("disk full"));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn files_under_skips_hidden_entries_follows_links_and_refuses_loops() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for f in ["a.png", "sub/b.png", "sub/deep/c.png", ".hidden.png", ".cache/d.png", "other/e.png"] {
            let path = root.join(f);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, b"x").unwrap();
        }
        // A link to a folder elsewhere in the tree is followed (not a loop).
        std::os::unix::fs::symlink(root.join("other"), root.join("sub/to-other")).unwrap();
        let names = |recursive| {
            let mut n: Vec<String> = files_under(&root, recursive)
                .unwrap()
                .iter()
                .map(|p| p.strip_prefix(&root).unwrap().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(false), ["a.png"]);
        assert_eq!(names(true), ["a.png", "other/e.png", "sub/b.png", "sub/deep/c.png", "sub/to-other/e.png"]);
        // A link back to a folder it is in would be walked for ever.
        std::os::unix::fs::symlink(&root, root.join("sub/deep/up")).unwrap();
        let e = format!("{:#}", files_under(&root, true).unwrap_err());
        assert!(e.contains("sub/deep/up") && e.contains("link loop"), "{e}");
        assert_eq!(names(false), ["a.png"]);
        let e = format!("{:#}", files_under(&dir.path().join("nowhere"), true).unwrap_err());
        assert!(e.contains("listing folder") && e.contains("nowhere"), "{e}");
    }

    #[test]
    fn temporary_keeps_the_extension() {
        let t = temporary_sibling(Path::new("/x/model.safetensors"));
        assert!(t.to_string_lossy().ends_with(".safetensors"));
        assert!(t.file_name().unwrap().to_string_lossy().starts_with(".model.tmp-"));
    }
}
