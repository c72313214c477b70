//! Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM (`kill`, a batch system's
//! pre-emption or time limit): the iteration under way finishes, its checkpoint is written, and
//! the run returns, saying which signal stopped it ([`RunSummary::stopped_by`]); `--resume`
//! then goes on as if uninterrupted. Without this a stop loses every iteration since the last
//! periodic checkpoint (up to `train.save_every`, 2000 by default).
//!
//! The handler is installed for the training loop only, when [`RunOptions::stop_on_signal`]
//! asks for it (the command-line program does; a library caller keeps its own signal
//! handling), and the previous dispositions are restored when the loop ends. A signal that was
//! ignored when the loop started (a background job of a non-interactive shell ignores SIGINT)
//! stays ignored. The handler resets itself as it runs (`SA_RESETHAND`), so the same signal
//! again ends the process at once: that is safe, as a `kill -9` is, because checkpoints are
//! renamed into place only when complete.
//!
//! [`RunSummary::stopped_by`]: super::RunSummary::stopped_by
//! [`RunOptions::stop_on_signal`]: super::RunOptions::stop_on_signal

use anyhow::Result;
use std::sync::atomic::{AtomicI32, Ordering};

/// The signal received since [`StopOnSignal::install`], 0 for none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// A signal that stopped a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal(pub i32);

impl Signal {
    /// `SIGINT`, `SIGTERM`, or `signal N`.
    pub fn name(self) -> String {
        match self.0 {
            libc::SIGINT => "SIGINT".into(),
            libc::SIGTERM => "SIGTERM".into(),
            n => format!("signal {n}"),
        }
    }

    /// The exit status of a process that stops because of it, as shells report one killed
    /// by it: 128 + its number (130 for SIGINT, 143 for SIGTERM).
    pub fn exit_status(self) -> u8 {
        (128 + self.0).clamp(0, 255) as u8
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::SeqCst);
    const MESSAGE: &[u8] =
        b"\nadvent: stopping after this iteration, with a checkpoint (the same signal again stops at once)\n";
    // SAFETY: write(2) is async-signal-safe and the buffer is static; a failed write is harmless.
    unsafe {
        libc::write(libc::STDERR_FILENO, MESSAGE.as_ptr().cast(), MESSAGE.len());
    }
}

/// SIGINT and SIGTERM caught while it lives; the previous handlers are back when it drops.
pub(crate) struct StopOnSignal {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl StopOnSignal {
    pub(crate) fn install() -> Result<Self> {
        RECEIVED.store(0, Ordering::SeqCst);
        let mut guard = StopOnSignal { previous: Vec::new() };
        for signal in SIGNALS {
            // SAFETY: plain C structs filled before use; the handler only stores an atomic and
            // calls write(2), both async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                // SA_RESTART: the loader threads' reads go on instead of failing with EINTR.
                action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
                if old.sa_sigaction == libc::SIG_IGN {
                    libc::sigaction(signal, &old, std::ptr::null_mut());
                    continue;
                }
                guard.previous.push((signal, old));
            }
        }
        Ok(guard)
    }

    /// The signal received since the handler was installed, if any.
    pub(crate) fn received(&self) -> Option<Signal> {
        match RECEIVED.load(Ordering::SeqCst) {
            0 => None,
            n => Some(Signal(n)),
        }
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: restores a disposition sigaction returned.
            unsafe {
                libc::sigaction(*signal, old, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Signal;

    #[test]
    fn signals_are_named_and_exit_as_shells_report_them() {
        assert_eq!(Signal(libc::SIGINT).name(), "SIGINT");
        assert_eq!(Signal(libc::SIGTERM).name(), "SIGTERM");
        // bash: a process killed by SIGINT exits with 130, by SIGTERM with 143.
        assert_eq!(Signal(2).exit_status(), 130);
        assert_eq!(Signal(15).exit_status(), 143);
    }
}
