//! Argument types shared by several commands.

use anyhow::{bail, Context, Result};

pub use advent::device::parse as parse_device;

/// `WxH`, e.g. `1024x512`.
pub fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s.split_once(['x', 'X']).with_context(|| format!("`{s}` is not a size WxH such as 1024x512"))?;
    let w: u32 = w.trim().parse().with_context(|| format!("bad width in `{s}`"))?;
    let h: u32 = h.trim().parse().with_context(|| format!("bad height in `{s}`"))?;
    if w == 0 || h == 0 {
        bail!("size `{s}` must be positive");
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024x512").unwrap(), (1024, 512));
        assert!(parse_size("1024").is_err());
        assert!(parse_size("0x5").is_err());
        assert!(parse_size("ax5").is_err());
    }
}
