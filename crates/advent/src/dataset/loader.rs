//! Feeding a dataset to the training loop: batches in an endless, seeded, resumable order,
//! loaded ahead by worker threads.
//!
//! The reference repeats its list `ceil(250000 / len)` times and lets PyTorch's `DataLoader`
//! shuffle the repeated list (SPEC §5.1). Here the order is a sequence of epochs, each a
//! fresh permutation of the items, so that it never ends and its position is two numbers
//! ([`OrderState`]) that a checkpoint saves and a resumed run continues from.
//!
//! Epoch `e`'s permutation is a Fisher–Yates shuffle driven by splitmix64 seeded from
//! `(seed, e)` (see [`epoch_order`]): integer arithmetic only, the same on every platform
//! and with any number of workers. Workers load items ahead of the consumer, and their
//! results are handed out in sequence order whatever the thread timing.

use super::synthetic::Rng;
use super::{Dataset, Sample};
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use tch::Tensor;

/// How a [`Loader`] batches and prefetches.
#[derive(Debug, Clone, Copy)]
pub struct LoaderConfig {
    /// Samples per batch (> 0).
    pub batch_size: usize,
    /// Whether each epoch is a seeded permutation (training) or index order.
    pub shuffle: bool,
    /// Seed of the permutations.
    pub seed: u64,
    /// Loading threads; 0 loads on the caller's thread.
    pub workers: usize,
    /// Samples loaded ahead of the consumer at most (at least 1 is used with workers).
    pub prefetch: usize,
    /// Batches in page-locked host memory (training on CUDA), so that the step's copy to the
    /// device can be asynchronous and fast: at batch size 1 the loading threads copy each
    /// sample there (the batch is the sample); larger batches are stacked there. Needs a
    /// CUDA device.
    pub pin_memory: bool,
}

/// Position in the endless, seeded sample order: the next sample to deliver is item
/// `position` of epoch `epoch`'s order. Part of the resumable training state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OrderState {
    pub epoch: u64,
    pub position: u64,
}

/// A batch of samples.
#[derive(Debug)]
pub struct Batch {
    /// `[N, 3, H, W]` float32 on the CPU, BGR minus the mean.
    pub images: Tensor,
    /// `[N, H, W]` int64 train ids (255 = ignored), if the dataset loads labels.
    pub labels: Option<Tensor>,
    /// Each sample's name.
    pub names: Vec<String>,
}

/// The order of epoch `epoch` over `len` items: index order without shuffling, else a
/// Fisher–Yates permutation.
///
/// The shuffle draws from splitmix64 seeded with `splitmix64(seed) ^ splitmix64(!epoch)`
/// (the first output of each); for `i` from `len - 1` down to 1 it swaps item `i` with item
/// `j = (r * (i + 1)) >> 64`, `r` the next 64-bit output (Lemire's multiply-shift, no modulo
/// bias worth the name).
pub fn epoch_order(len: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = Rng::new(Rng::new(seed).next_u64() ^ Rng::new(!epoch).next_u64());
        for i in (1..len).rev() {
            let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// The endless item sequence from an [`OrderState`] on.
struct Order {
    len: usize,
    shuffle: bool,
    seed: u64,
    state: OrderState,
    current: Vec<usize>,
}

impl Order {
    fn new(len: usize, shuffle: bool, seed: u64, state: OrderState) -> Order {
        Order { current: epoch_order(len, shuffle, seed, state.epoch), len, shuffle, seed, state }
    }
}

impl Iterator for Order {
    type Item = Placed;
    fn next(&mut self) -> Option<Placed> {
        if self.state.position as usize >= self.len {
            self.state = OrderState { epoch: self.state.epoch + 1, position: 0 };
            self.current = epoch_order(self.len, self.shuffle, self.seed, self.state.epoch);
        }
        let item = Placed { index: self.current[self.state.position as usize], at: self.state };
        self.state.position += 1;
        Some(item)
    }
}

/// An item of an endless order: its index and its place in the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub index: usize,
    pub at: OrderState,
}

/// What the workers are handed for each item: an index, or a [`Placed`] index.
trait Key: Copy + Send + 'static {
    fn index(self) -> usize;
}

impl Key for usize {
    fn index(self) -> usize {
        self
    }
}

impl Key for Placed {
    fn index(self) -> usize {
        self.index
    }
}

type Keys<K> = Box<dyn Iterator<Item = K> + Send>;

/// Loads one item by index (a dataset's `get`, or any other preparation).
pub type LoadFn<T> = Arc<dyn Fn(usize) -> Result<T> + Send + Sync>;

/// Loads one item of an endless order by index and place: a preparation that depends on
/// where the item falls (seeded augmentation, the same after a resume).
pub type PlacedLoadFn<T> = Arc<dyn Fn(Placed) -> Result<T> + Send + Sync>;

/// Loads `get(k)` for each `k` of `keys`, in order, on worker threads or inline.
struct Prefetcher<K: Key, T: Send + 'static> {
    get: Arc<dyn Fn(K) -> Result<T> + Send + Sync>,
    mode: Mode<K, T>,
}

enum Mode<K: Key, T: Send + 'static> {
    Inline(Keys<K>),
    Threads { shared: Arc<Shared<K, T>>, threads: Vec<JoinHandle<()>> },
}

struct Shared<K, T> {
    state: Mutex<Queue<K, T>>,
    /// Workers wait here for room ahead of the consumer.
    room: Condvar,
    /// The consumer waits here for its next result.
    ready: Condvar,
}

struct Queue<K, T> {
    indices: Keys<K>,
    exhausted: bool,
    /// Next ticket (position in the sequence) a worker takes.
    next_ticket: u64,
    /// Tickets the consumer has taken.
    consumed: u64,
    /// Tickets at most this far ahead of `consumed` may be taken.
    ahead: u64,
    results: BTreeMap<u64, (K, Result<T>)>,
    stop: bool,
}

fn lock<K, T>(shared: &Shared<K, T>) -> MutexGuard<'_, Queue<K, T>> {
    // A worker never panics while holding the lock (loading runs outside it and panics
    // there are caught), so a poisoned lock still holds consistent data.
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// `get(key)`, with a panic turned into an error.
fn load<K: Key, T>(get: &(dyn Fn(K) -> Result<T> + Send + Sync), key: K) -> Result<T> {
    let index = key.index();
    match std::panic::catch_unwind(AssertUnwindSafe(|| get(key))) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Err(anyhow!("loading item {index} panicked: {what}"))
        }
    }
}

fn worker<K: Key, T>(get: Arc<dyn Fn(K) -> Result<T> + Send + Sync>, shared: Arc<Shared<K, T>>) {
    loop {
        let (ticket, index) = {
            let mut q = lock(&shared);
            loop {
                if q.stop || q.exhausted {
                    return;
                }
                if q.next_ticket < q.consumed + q.ahead {
                    break;
                }
                q = shared.room.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            match q.indices.next() {
                Some(index) => {
                    let ticket = q.next_ticket;
                    q.next_ticket += 1;
                    (ticket, index)
                }
                None => {
                    q.exhausted = true;
                    shared.ready.notify_all();
                    shared.room.notify_all();
                    return;
                }
            }
        };
        let result = load(get.as_ref(), index);
        let mut q = lock(&shared);
        if q.stop {
            return;
        }
        q.results.insert(ticket, (index, result));
        shared.ready.notify_all();
    }
}

impl<K: Key, T: Send + 'static> Prefetcher<K, T> {
    fn new(get: Arc<dyn Fn(K) -> Result<T> + Send + Sync>, indices: Keys<K>, workers: usize, prefetch: usize) -> Self {
        if workers == 0 {
            return Prefetcher { get, mode: Mode::Inline(indices) };
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(Queue {
                indices,
                exhausted: false,
                next_ticket: 0,
                consumed: 0,
                ahead: prefetch.max(1) as u64,
                results: BTreeMap::new(),
                stop: false,
            }),
            room: Condvar::new(),
            ready: Condvar::new(),
        });
        let threads = (0..workers)
            .map(|i| {
                let (get, shared) = (get.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("advent-loader-{i}"))
                    .spawn(move || worker(get, shared))
                    .expect("spawning a loader thread")
            })
            .collect();
        Prefetcher { get, mode: Mode::Threads { shared, threads } }
    }

    /// The next `(key, item)` in sequence order; `None` once the keys are exhausted.
    fn next(&mut self) -> Option<(K, Result<T>)> {
        match &mut self.mode {
            Mode::Inline(indices) => {
                let index = indices.next()?;
                Some((index, load(self.get.as_ref(), index)))
            }
            Mode::Threads { shared, .. } => {
                let mut q = lock(shared);
                loop {
                    let ticket = q.consumed;
                    if let Some(r) = q.results.remove(&ticket) {
                        q.consumed += 1;
                        shared.room.notify_all();
                        return Some(r);
                    }
                    if q.exhausted && q.next_ticket == q.consumed {
                        return None;
                    }
                    q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

impl<K: Key, T: Send + 'static> Drop for Prefetcher<K, T> {
    fn drop(&mut self) {
        if let Mode::Threads { shared, threads } = &mut self.mode {
            {
                let mut q = lock(shared);
                q.stop = true;
                q.results.clear();
            }
            shared.room.notify_all();
            // Each worker finishes at most the one item it is loading.
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

/// Endless items of a finite, indexable source in a seeded, resumable order, loaded ahead by
/// worker threads: the machinery of [`Loader`], for any kind of item.
pub struct Endless<T: Send + 'static> {
    len: usize,
    /// Where the consumer is: the next item [`Endless::next_items`] hands out.
    state: OrderState,
    prefetcher: Prefetcher<Placed, T>,
}

impl<T: Send + 'static> Endless<T> {
    /// Items `get(0..len)` in the order of `config` (its batch size unused), starting at
    /// `start`. Errors as [`Loader::new`].
    pub fn new(len: usize, get: LoadFn<T>, config: &LoaderConfig, start: OrderState) -> Result<Self> {
        Self::placed(len, Arc::new(move |p: Placed| get(p.index)), config, start)
    }

    /// As [`Endless::new`], each item loaded knowing its place in the order.
    pub fn placed(len: usize, get: PlacedLoadFn<T>, config: &LoaderConfig, start: OrderState) -> Result<Self> {
        ensure!(len > 0, "cannot load batches from an empty dataset");
        if start.position > len as u64 {
            bail!(
                "the saved data order (epoch {}, position {}) does not fit a dataset of {len} \
                 items: was it saved for another dataset?",
                start.epoch,
                start.position
            );
        }
        let state = normalize(start, len);
        let order = Order::new(len, config.shuffle, config.seed, state);
        Ok(Endless { prefetcher: Prefetcher::new(get, Box::new(order), config.workers, config.prefetch), len, state })
    }

    /// The next `n` items, each with its index and its place in the order (epoch, position).
    /// A failed item is an error at its turn and counts as delivered.
    pub fn next_items(&mut self, n: usize) -> Result<Vec<(usize, OrderState, T)>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (Placed { index, at: position }, item) =
                self.prefetcher.next().expect("the order of a loader is endless");
            self.state = normalize(OrderState { epoch: position.epoch, position: position.position + 1 }, self.len);
            let item = item.with_context(|| {
                format!("loading item {index} (epoch {}, position {})", position.epoch, position.position)
            })?;
            out.push((index, position, item));
        }
        Ok(out)
    }

    /// State after the last delivered item.
    pub fn state(&self) -> OrderState {
        self.state
    }
}

/// Endless batches of a dataset in a seeded order, loaded ahead by worker threads.
pub struct Loader {
    config: LoaderConfig,
    items: Endless<Sample>,
}

impl Loader {
    /// A loader whose first sample is item `start.position` of epoch `start.epoch`'s order
    /// (`OrderState::default()` to begin).
    ///
    /// # Errors
    ///
    /// An empty dataset, a batch size of 0, or a `start` that does not fit the dataset
    /// (a position beyond its length: a state saved for another dataset).
    pub fn new(dataset: Arc<dyn Dataset>, config: LoaderConfig, start: OrderState) -> Result<Loader> {
        ensure!(config.batch_size > 0, "batch size must be at least 1");
        let len = dataset.len();
        // Pinning a sample that stacking copies again would be wasted: only at batch size 1.
        let get: LoadFn<Sample> = if config.pin_memory && config.batch_size == 1 {
            Arc::new(move |i| dataset.get(i).and_then(pinned))
        } else {
            Arc::new(move |i| dataset.get(i))
        };
        Ok(Loader { items: Endless::new(len, get, &config, start)?, config })
    }

    /// The next `batch_size` samples of the endless order. When an epoch's order is
    /// exhausted the next epoch starts with a new permutation; a batch may straddle two
    /// epochs.
    ///
    /// # Errors
    ///
    /// A sample that failed to load, at its turn (the error names the file); samples of
    /// different sizes, or with and without labels. A failed sample counts as delivered
    /// (the rest of its batch is dropped): a further call continues with the sample after it.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let samples = self.items.next_items(self.config.batch_size)?;
        let to = if self.config.pin_memory { tch::Device::Cuda(0) } else { tch::Device::Cpu };
        collate(samples.into_iter().map(|(_, _, s)| s).collect(), to)
    }

    /// State after the last delivered batch: a loader created with it delivers exactly the
    /// batches that would have come next.
    pub fn state(&self) -> OrderState {
        self.items.state()
    }
}

/// `position == len` is the start of the next epoch.
fn normalize(s: OrderState, len: usize) -> OrderState {
    if s.position >= len as u64 {
        OrderState { epoch: s.epoch + 1, position: 0 }
    } else {
        s
    }
}

/// A sample with its tensors copied into page-locked host memory.
fn pinned(s: Sample) -> Result<Sample> {
    let pin = |t: &Tensor| crate::native::page_locked(t).context("copying a sample into page-locked memory");
    Ok(Sample { image: pin(&s.image)?, label: s.label.as_ref().map(pin).transpose()?, name: s.name })
}

/// Stacks samples into a batch for device `to` (for a CUDA device into page-locked memory,
/// in one copy: [`crate::native::stack_for`]); one sample's tensors are viewed with a batch
/// dimension, not copied (the paper's batch size, 1: no 25 MB copy on the training thread
/// per iteration; the loading threads pinned them).
fn collate(samples: Vec<Sample>, to: tch::Device) -> Result<Batch> {
    let names: Vec<String> = samples.iter().map(|s| s.name.clone()).collect();
    let first = samples[0].image.size();
    if let Some(s) = samples.iter().find(|s| s.image.size() != first) {
        bail!(
            "cannot batch images of different sizes: {} is {:?}, {} is {:?}",
            names[0],
            first,
            s.name,
            s.image.size()
        );
    }
    if let [one] = samples.as_slice() {
        return Ok(Batch {
            images: one.image.f_unsqueeze(0)?,
            labels: one.label.as_ref().map(|l| l.f_unsqueeze(0)).transpose()?,
            names,
        });
    }
    let images = crate::native::stack_for(&samples.iter().map(|s| &s.image).collect::<Vec<_>>(), to)?;
    let with_labels = samples.iter().filter(|s| s.label.is_some()).count();
    let labels = if with_labels == 0 {
        None
    } else if with_labels < samples.len() {
        bail!("a batch mixes samples with and without labels ({names:?})");
    } else {
        let labels: Vec<&Tensor> = samples.iter().filter_map(|s| s.label.as_ref()).collect();
        let first = labels[0].size();
        if let Some((s, l)) = samples.iter().zip(&labels).find(|(_, l)| l.size() != first) {
            bail!("cannot batch labels of different sizes: {} is {:?}, {} is {:?}", names[0], first, s.name, l.size());
        }
        Some(crate::native::stack_for(&labels, to)?)
    };
    Ok(Batch { images, labels, names })
}

/// Every item of `dataset` once, in index order, loaded ahead by `workers` threads (0: on
/// the caller's thread) at most `prefetch` items ahead. Dropping the iterator stops the
/// threads. An item that fails to load is an `Err` at its turn; the items after it follow.
pub fn sequential(
    dataset: Arc<dyn Dataset>,
    workers: usize,
    prefetch: usize,
) -> impl Iterator<Item = Result<(usize, Sample)>> {
    let len = dataset.len();
    in_order(len, Arc::new(move |i| dataset.get(i)), workers, prefetch)
}

/// [`sequential`] for any loading function: `get(0)`, ..., `get(len - 1)` in that order.
pub fn in_order<T: Send + 'static>(
    len: usize,
    get: LoadFn<T>,
    workers: usize,
    prefetch: usize,
) -> impl Iterator<Item = Result<(usize, T)>> {
    let mut prefetcher = Prefetcher::new(get, Box::new(0..len), workers, prefetch);
    std::iter::from_fn(move || {
        prefetcher
            .next()
            .map(|(index, sample)| sample.with_context(|| format!("loading item {index}")).map(|s| (index, s)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Items whose image holds their index; optional failing item and per-item delays.
    struct Numbers {
        len: usize,
        fail: Option<usize>,
        delay_ms: fn(usize) -> u64,
        labels: bool,
        loads: AtomicUsize,
    }

    impl Numbers {
        fn new(len: usize) -> Numbers {
            Numbers { len, fail: None, delay_ms: |_| 0, labels: true, loads: AtomicUsize::new(0) }
        }
    }

    impl Dataset for Numbers {
        fn len(&self) -> usize {
            self.len
        }
        fn get(&self, index: usize) -> Result<Sample> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis((self.delay_ms)(index)));
            if self.fail == Some(index) {
                bail!("decoding image /data/item{index}.png: truncated");
            }
            Ok(Sample {
                image: Tensor::full([3, 2, 2], index as f64, (tch::Kind::Float, tch::Device::Cpu)),
                label: self.labels.then(|| Tensor::full([2, 2], index as i64, (tch::Kind::Int64, tch::Device::Cpu))),
                name: format!("item{index}"),
            })
        }
    }

    /// A batch of one is its sample's tensors with a batch dimension (no copy on the training
    /// thread); two samples are stacked.
    #[test]
    fn a_batch_of_one_shares_its_samples_memory() {
        let sample = |v: f32| Sample {
            image: Tensor::full([3, 4, 5], f64::from(v), (tch::Kind::Float, tch::Device::Cpu)),
            label: Some(Tensor::full([4, 5], 7, (tch::Kind::Int64, tch::Device::Cpu))),
            name: format!("s{v}"),
        };
        let one = sample(1.0);
        let (image, label) = (one.image.data_ptr(), one.label.as_ref().unwrap().data_ptr());
        let b = collate(vec![one], tch::Device::Cpu).unwrap();
        assert_eq!(b.images.size(), [1, 3, 4, 5]);
        assert_eq!(b.labels.as_ref().unwrap().size(), [1, 4, 5]);
        assert_eq!((b.images.data_ptr(), b.labels.as_ref().unwrap().data_ptr()), (image, label));
        let b = collate(vec![sample(1.0), sample(2.0)], tch::Device::Cpu).unwrap();
        assert_eq!(b.images.size(), [2, 3, 4, 5]);
        assert_eq!(b.images.double_value(&[1, 0, 0, 0]), 2.0);
        assert_eq!(b.names, ["s1", "s2"]);
    }

    fn config(batch_size: usize, workers: usize) -> LoaderConfig {
        LoaderConfig { batch_size, shuffle: true, seed: 7, workers, prefetch: 4, pin_memory: false }
    }

    /// The item indices of `batches` batches, checking images, labels and names agree.
    fn take(loader: &mut Loader, batches: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for _ in 0..batches {
            let b = loader.next_batch().unwrap();
            let n = b.names.len();
            assert_eq!(b.images.size(), vec![n as i64, 3, 2, 2]);
            let firsts: Vec<f32> = Vec::try_from(b.images.view([n as i64, -1]).select(1, 0)).unwrap();
            let labels: Vec<i64> = Vec::try_from(b.labels.unwrap().view([n as i64, -1]).select(1, 3)).unwrap();
            for ((v, l), name) in firsts.iter().zip(&labels).zip(&b.names) {
                assert_eq!(*v as i64, *l);
                assert_eq!(name, &format!("item{l}"));
                out.push(*l as usize);
            }
        }
        out
    }

    /// splitmix64 and the shuffle written again in Python (the reference values below come
    /// from it, not from this crate):
    ///
    /// ```python
    /// M = 2**64 - 1
    /// def splitmix(state):
    ///     while True:
    ///         state = (state + 0x9E3779B97F4A7C15) & M
    ///         z = state
    ///         z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    ///         z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    ///         yield z ^ (z >> 31)
    /// def order(n, seed, epoch):
    ///     g = splitmix(next(splitmix(seed)) ^ next(splitmix(~epoch & M)))
    ///     o = list(range(n))
    ///     for i in range(n - 1, 0, -1):
    ///         j = (next(g) * (i + 1)) >> 64
    ///         o[i], o[j] = o[j], o[i]
    ///     return o
    /// ```
    #[test]
    fn permutation_matches_an_independent_implementation() {
        assert_eq!(epoch_order(10, true, 0, 0), vec![3, 7, 0, 6, 5, 9, 8, 1, 4, 2]);
        assert_eq!(epoch_order(10, true, 0, 1), vec![5, 3, 9, 1, 4, 2, 8, 6, 0, 7]);
        assert_eq!(epoch_order(7, true, 12345, 3), vec![2, 6, 0, 3, 5, 4, 1]);
        assert_eq!(epoch_order(5, false, 9, 9), vec![0, 1, 2, 3, 4]);
        assert_eq!(epoch_order(1, true, 9, 9), vec![0]);
        assert!(epoch_order(0, true, 9, 9).is_empty());
    }

    #[test]
    fn same_seed_same_order_and_every_epoch_a_permutation() {
        let ds = Arc::new(Numbers::new(11));
        let a = take(&mut Loader::new(ds.clone(), config(3, 0), OrderState::default()).unwrap(), 11);
        let b = take(&mut Loader::new(ds.clone(), config(3, 0), OrderState::default()).unwrap(), 11);
        assert_eq!(a, b);
        // 33 samples: three whole epochs, each a permutation, each different.
        let epochs: Vec<&[usize]> = a.chunks(11).collect();
        for e in &epochs {
            let mut s = e.to_vec();
            s.sort();
            assert_eq!(s, (0..11).collect::<Vec<_>>());
        }
        assert_ne!(epochs[0], epochs[1]);
        assert_ne!(epochs[1], epochs[2]);
        assert_eq!(epochs[1], epoch_order(11, true, 7, 1).as_slice());
        let other = LoaderConfig { seed: 8, ..config(3, 0) };
        let c = take(&mut Loader::new(ds, other, OrderState::default()).unwrap(), 11);
        assert_ne!(a, c);
    }

    #[test]
    fn without_shuffle_index_order_repeats() {
        let ds = Arc::new(Numbers::new(4));
        let cfg = LoaderConfig { shuffle: false, ..config(3, 2) };
        let mut l = Loader::new(ds, cfg, OrderState::default()).unwrap();
        assert_eq!(take(&mut l, 3), vec![0, 1, 2, 3, 0, 1, 2, 3, 0]);
        assert_eq!(l.state(), OrderState { epoch: 2, position: 1 });
    }

    #[test]
    fn resuming_from_state_continues_exactly() {
        let ds = Arc::new(Numbers::new(7));
        let whole = take(&mut Loader::new(ds.clone(), config(3, 0), OrderState::default()).unwrap(), 10);
        for stop_after in [0, 1, 2, 3, 5, 7] {
            let mut first = Loader::new(ds.clone(), config(3, 2), OrderState::default()).unwrap();
            let mut seen = take(&mut first, stop_after);
            let state = first.state();
            assert_eq!(state.epoch * 7 + state.position, 3 * stop_after as u64);
            drop(first);
            // The state survives serialisation (it is saved in checkpoints).
            let json = serde_json::to_string(&state).unwrap();
            let state: OrderState = serde_json::from_str(&json).unwrap();
            let mut resumed = Loader::new(ds.clone(), config(3, 1), state).unwrap();
            seen.extend(take(&mut resumed, 10 - stop_after));
            assert_eq!(seen, whole, "resumed after {stop_after} batches");
        }
        // `position == len` means the next epoch; beyond it is a state for another dataset.
        let end = OrderState { epoch: 0, position: 7 };
        let mut l = Loader::new(ds.clone(), config(1, 0), end).unwrap();
        assert_eq!(take(&mut l, 1), vec![whole[7]]);
        let err = Loader::new(ds, config(1, 0), OrderState { epoch: 0, position: 8 }).err().unwrap();
        assert!(err.to_string().contains("another dataset"), "{err}");
    }

    #[test]
    fn order_does_not_depend_on_workers_or_timing() {
        let mut ds = Numbers::new(13);
        // Uneven load times so that workers finish out of order.
        ds.delay_ms = |i| [3, 0, 7, 1, 0, 5][i % 6];
        let ds = Arc::new(ds);
        let reference = take(&mut Loader::new(ds.clone(), config(4, 0), OrderState::default()).unwrap(), 8);
        for (workers, prefetch) in [(1, 1), (2, 2), (3, 8), (5, 0)] {
            let cfg = LoaderConfig { prefetch, ..config(4, workers) };
            let got = take(&mut Loader::new(ds.clone(), cfg, OrderState::default()).unwrap(), 8);
            assert_eq!(got, reference, "{workers} workers, prefetch {prefetch}");
        }
    }

    #[test]
    fn prefetch_bounds_the_work_ahead() {
        let ds = Arc::new(Numbers::new(100));
        let cfg = LoaderConfig { prefetch: 5, ..config(2, 3) };
        let mut l = Loader::new(ds.clone(), cfg, OrderState::default()).unwrap();
        take(&mut l, 1);
        // 2 consumed + 5 ahead, and no more however long we wait.
        let t = Instant::now();
        while ds.loads.load(Ordering::SeqCst) < 7 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(ds.loads.load(Ordering::SeqCst), 7);
    }

    #[test]
    fn a_loading_error_arrives_at_its_turn() {
        let mut ds = Numbers::new(6);
        ds.fail = Some(4);
        ds.delay_ms = |i| if i == 4 { 0 } else { 5 };
        let ds = Arc::new(ds);
        let cfg = LoaderConfig { shuffle: false, ..config(2, 3) };
        let mut l = Loader::new(ds, cfg, OrderState::default()).unwrap();
        assert_eq!(take(&mut l, 2), vec![0, 1, 2, 3]);
        let err = format!("{:#}", l.next_batch().unwrap_err());
        assert!(err.contains("/data/item4.png") && err.contains("loading item 4"), "{err}");
        // It counted as delivered: the order goes on after it.
        assert_eq!(l.state(), OrderState { epoch: 0, position: 5 });
        assert_eq!(take(&mut l, 1), vec![5, 0]);
    }

    #[test]
    fn a_panicking_dataset_gives_an_error_not_a_hang() {
        struct Panics;
        impl Dataset for Panics {
            fn len(&self) -> usize {
                3
            }
            fn get(&self, index: usize) -> Result<Sample> {
                panic!("bad item {index}");
            }
        }
        let mut l = Loader::new(Arc::new(Panics), config(1, 2), OrderState::default()).unwrap();
        let err = format!("{:#}", l.next_batch().unwrap_err());
        assert!(err.contains("panicked: bad item"), "{err}");
    }

    #[test]
    fn dropping_stops_the_threads_promptly() {
        let mut ds = Numbers::new(1000);
        ds.delay_ms = |_| 20;
        let ds = Arc::new(ds);
        let cfg = LoaderConfig { prefetch: 64, ..config(2, 4) };
        let mut l = Loader::new(ds.clone(), cfg, OrderState::default()).unwrap();
        take(&mut l, 1);
        let t = Instant::now();
        drop(l);
        // Each worker finishes the one item it is loading (20 ms), no more (loading all
        // the rest would take 5 s; the bound leaves room for a loaded machine).
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Every thread has ended: they held the only other references to the dataset.
        assert_eq!(Arc::strong_count(&ds), 1);
        let loads = ds.loads.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(ds.loads.load(Ordering::SeqCst), loads);
    }

    #[test]
    fn invalid_configurations() {
        let empty = Arc::new(Numbers::new(0));
        assert!(Loader::new(empty, config(1, 0), OrderState::default()).is_err());
        let ds = Arc::new(Numbers::new(3));
        assert!(Loader::new(ds, config(0, 0), OrderState::default()).is_err());
    }

    #[test]
    fn unlabelled_batches() {
        let mut ds = Numbers::new(3);
        ds.labels = false;
        let mut l = Loader::new(Arc::new(ds), config(2, 1), OrderState::default()).unwrap();
        let b = l.next_batch().unwrap();
        assert!(b.labels.is_none());
        assert_eq!(b.images.size(), vec![2, 3, 2, 2]);
    }

    #[test]
    fn sequential_gives_every_item_once_in_order() {
        let mut ds = Numbers::new(9);
        ds.fail = Some(5);
        ds.delay_ms = |i| [4, 0, 2][i % 3];
        let ds = Arc::new(ds);
        for workers in [0, 1, 3] {
            let got: Vec<std::result::Result<usize, String>> = sequential(ds.clone(), workers, 2)
                .map(|r| {
                    r.map(|(i, s)| {
                        assert_eq!(s.name, format!("item{i}"));
                        i
                    })
                    .map_err(|e| format!("{e:#}"))
                })
                .collect();
            assert_eq!(got.len(), 9);
            for (i, r) in got.iter().enumerate() {
                match r {
                    Ok(j) => assert_eq!(*j, i),
                    Err(e) => assert!(i == 5 && e.contains("item5.png"), "{e}"),
                }
            }
        }
        // Dropping it early stops its threads.
        let mut it = sequential(ds.clone(), 2, 4);
        it.next();
        drop(it);
        assert_eq!(Arc::strong_count(&ds), 1);
    }
}
