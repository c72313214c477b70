//! A bounded channel whose receiving end several worker threads share: each takes the next
//! item, so that work spreads over whichever threads are free.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};

/// The shared receiving end of [`channel`]. Every worker holds a clone; when the last one
/// is dropped (its thread ended or unwound), the channel closes and the sender's `send`
/// fails instead of blocking on a queue that nobody empties.
pub struct SharedReceiver<T>(Arc<Mutex<Receiver<T>>>);

impl<T> Clone for SharedReceiver<T> {
    fn clone(&self) -> Self {
        SharedReceiver(Arc::clone(&self.0))
    }
}

impl<T> SharedReceiver<T> {
    /// The next item, waiting for it; `None` once every sender is gone and the queue is
    /// empty. A worker that panicked while holding the lock does not stop the others.
    pub fn recv(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).recv().ok()
    }
}

/// A channel holding at most `bound` items, for one producer and several consumers.
pub fn channel<T>(bound: usize) -> (SyncSender<T>, SharedReceiver<T>) {
    let (tx, rx) = sync_channel(bound);
    (tx, SharedReceiver(Arc::new(Mutex::new(rx))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_item_is_taken_by_exactly_one_worker() {
        let (tx, rx) = channel::<usize>(2);
        let taken = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..3)
                .map(|_| {
                    let rx = rx.clone();
                    scope.spawn(move || std::iter::from_fn(|| rx.recv()).collect::<Vec<_>>())
                })
                .collect();
            drop(rx);
            for i in 0..100 {
                tx.send(i).unwrap();
            }
            drop(tx);
            workers.into_iter().flat_map(|w| w.join().unwrap()).collect::<Vec<_>>()
        });
        let mut taken = taken;
        taken.sort_unstable();
        assert_eq!(taken, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn sending_fails_once_every_worker_has_gone() {
        let (tx, rx) = channel::<u8>(1);
        let worker = rx.clone();
        drop(rx);
        std::thread::spawn(move || drop(worker)).join().unwrap();
        // With a receiver left the send would be queued and succeed; with none it fails.
        assert!(tx.send(1).is_err());
    }
}
