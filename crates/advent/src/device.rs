//! Choosing where the tensors live.

use anyhow::{bail, Result};
use tch::Device;

/// `cpu`, `cuda` or `cuda:N`; a CUDA device must be usable by libtorch.
pub fn parse(s: &str) -> Result<Device> {
    let device = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => Device::Cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => bail!("unknown device `{s}` (expected cpu, cuda or cuda:N)"),
        },
    };
    load_cuda_backend();
    let count = tch::Cuda::device_count();
    match device {
        Device::Cuda(i) if (i as i64) < count => Ok(device),
        _ if count == 0 => bail!("`--device {s}`: no CUDA device is available to libtorch"),
        _ => bail!("`--device {s}`: only {count} CUDA device(s) available"),
    }
}

/// libtorch registers its CUDA backend when `libtorch_cuda.so` is loaded. Nothing in our
/// binary references a symbol of it, so the linker (with `--as-needed`) drops it: load it
/// by hand, from the same libtorch (found through the library path), before asking for
/// CUDA. Without it (a CPU-only libtorch) CUDA simply stays unavailable.
pub fn load_cuda_backend() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: dlopen with a constant, NUL-terminated name; the handle is kept for the
        // life of the process, as libtorch expects of its backends.
        unsafe {
            libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse("cpu").unwrap(), Device::Cpu);
        let err = parse("tpu").unwrap_err().to_string();
        assert!(err.contains("expected cpu, cuda"), "{err}");
        if tch::Cuda::device_count() == 0 {
            let err = parse("cuda").unwrap_err().to_string();
            assert!(err.contains("no CUDA device"), "{err}");
        }
    }
}
