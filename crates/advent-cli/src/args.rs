//! Argument types shared by several commands.

use anyhow::{bail, Context, Result};

pub use advent::device::parse as parse_device;

/// The largest side a size argument takes: 16384 pixels (8x a Cityscapes frame's width);
/// beyond, the buffers of one image alone would not fit in memory.
pub const MAX_SIDE: u32 = 16384;

/// The most threads a thread-count argument takes (as `train.workers`).
pub const MAX_THREADS: u64 = advent::config::MAX_WORKERS as u64;

/// `WxH`, e.g. `1024x512`, each side 1 to [`MAX_SIDE`].
pub fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s.split_once(['x', 'X']).with_context(|| format!("`{s}` is not a size WxH such as 1024x512"))?;
    let w: u32 = w.trim().parse().with_context(|| format!("bad width in `{s}`"))?;
    let h: u32 = h.trim().parse().with_context(|| format!("bad height in `{s}`"))?;
    if w == 0 || h == 0 {
        bail!("size `{s}` must be positive");
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        bail!("size `{s}`: each side is at most {MAX_SIDE} pixels");
    }
    Ok((w, h))
}

/// A count of threads, `min` to [`MAX_THREADS`].
pub fn threads(min: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(min..=MAX_THREADS)
}

/// Default count of loader (and writer) threads for evaluation and prediction: the CPU
/// cores, 2 to 8. Reading and resizing a 2048x1024 frame takes ~35 ms of one core and
/// writing a prediction's PNGs ~45 ms (`examples/host_costs.rs`), so on a GPU that
/// evaluates 100-200 images/s a fixed 4 threads would set the pace.
pub fn default_workers() -> u16 {
    std::thread::available_parallelism().map_or(4, |n| n.get()).clamp(2, 8) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024x512").unwrap(), (1024, 512));
        assert_eq!(parse_size("16384x16384").unwrap(), (16384, 16384));
        assert!(parse_size("16385x512").unwrap_err().to_string().contains("at most 16384"));
        assert!(parse_size("512x200000").is_err());
        assert!(parse_size("1024").is_err());
        assert!(parse_size("0x5").is_err());
        assert!(parse_size("ax5").is_err());
    }
}
