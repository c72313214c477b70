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

/// Floating-point mode of CUDA convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE float32 everywhere (PyTorch's `allow_tf32 = False`).
    Fp32,
    /// TF32 tensor-core arithmetic for convolutions, float32 storage: PyTorch's default for
    /// convolutions, and what the reference ran on Ampere and later.
    #[default]
    Tf32,
    /// bfloat16 autocast (`torch.autocast(dtype=torch.bfloat16)`): convolutions in bf16,
    /// the operations autocast keeps in float32 (losses, softmax, BatchNorm statistics) and
    /// the probabilities, entropies and optimiser state in float32.
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            _ => bail!("unknown precision `{s}` (expected fp32, tf32 or bf16)"),
        }
    }
}

/// libtorch keeps these switches in its global `at::Context`, which tch does not expose;
/// its setters are plain exported C++ functions (`this` first, as the Itanium ABI passes
/// it), looked up by name in the libtorch this process runs on.
mod context {
    use anyhow::{bail, Result};
    use std::ffi::{c_void, CStr};

    type Getter = unsafe extern "C" fn() -> *mut c_void;
    type Setter = unsafe extern "C" fn(*mut c_void, bool);
    type IntSetter = unsafe extern "C" fn(*mut c_void, i32);
    type IntReader = unsafe extern "C" fn(*const c_void) -> i32;

    fn symbol(name: &CStr) -> Result<*mut c_void> {
        // SAFETY: dlsym on the global scope with a NUL-terminated name.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        if p.is_null() {
            bail!("libtorch does not export {name:?}: another libtorch than 2.11?");
        }
        Ok(p)
    }

    type AutocastEnable = unsafe extern "C" fn(i8, bool);
    type AutocastDtype = unsafe extern "C" fn(i8, i8);
    type Nesting = unsafe extern "C" fn() -> i64;
    type Plain = unsafe extern "C" fn();

    /// libstdc++'s `std::string` (C++11 ABI): data pointer, length, then a 16-byte buffer
    /// that holds strings of up to 15 bytes in place.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    #[repr(C)]
    struct CxxString {
        data: *const u8,
        len: usize,
        _local: [u8; 16],
    }

    /// `at::get_cpu_capability()`: returns a `std::string` through the slot its caller
    /// provides (x86-64 System V: a hidden first argument).
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    pub fn cpu_capability() -> Option<String> {
        type Capability = unsafe extern "C" fn(*mut CxxString) -> *mut CxxString;
        let f = symbol(c"_ZN2at18get_cpu_capabilityB5cxx11Ev").ok()?;
        let mut out = std::mem::MaybeUninit::<CxxString>::uninit();
        // SAFETY: libtorch 2.11's signature, `std::string at::get_cpu_capability()`, with the
        // result slot passed as the hidden first argument; the function fills the slot.
        // `out` stays where it is: a short string's data pointer points into it.
        let s = unsafe {
            let get: Capability = std::mem::transmute(f);
            get(out.as_mut_ptr());
            out.assume_init_ref()
        };
        if s.data.is_null() || s.len > 64 {
            return None;
        }
        // SAFETY: the string's `len` bytes at `data` (in its own buffer for the short names
        // this returns; a longer one is read and its heap block left to the process).
        let bytes = unsafe { std::slice::from_raw_parts(s.data, s.len) };
        let name = String::from_utf8(bytes.to_vec()).ok()?;
        (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(name)
    }

    /// c10::DeviceType of CPU and CUDA; c10::ScalarType::BFloat16.
    pub const CPU: i8 = 0;
    pub const CUDA: i8 = 1;
    pub const BFLOAT16: i8 = 15;

    /// Enters an autocast region on this thread (autocast state is thread-local in libtorch).
    pub fn autocast_enter(device_type: i8) -> Result<()> {
        // SAFETY: the signatures of libtorch 2.11's at::autocast functions.
        unsafe {
            let dtype: AutocastDtype = std::mem::transmute(symbol(
                c"_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE",
            )?);
            let enable: AutocastEnable =
                std::mem::transmute(symbol(c"_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb")?);
            let nest: Nesting = std::mem::transmute(symbol(c"_ZN2at8autocast17increment_nestingEv")?);
            dtype(device_type, BFLOAT16);
            enable(device_type, true);
            nest();
        }
        Ok(())
    }

    /// Leaves it, dropping autocast's cached casts of the weights (they change every step).
    pub fn autocast_exit(device_type: i8) -> Result<()> {
        // SAFETY: as above.
        unsafe {
            let enable: AutocastEnable =
                std::mem::transmute(symbol(c"_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb")?);
            let nest: Nesting = std::mem::transmute(symbol(c"_ZN2at8autocast17decrement_nestingEv")?);
            let clear: Plain = std::mem::transmute(symbol(c"_ZN2at8autocast11clear_cacheEv")?);
            enable(device_type, false);
            if nest() as i32 == 0 {
                clear();
            }
        }
        Ok(())
    }

    /// Calls `at::globalContext().<setter>(value)` for an `int` setting, then its `reader`,
    /// and returns what libtorch now holds.
    pub fn set_int(setter: &CStr, reader: &CStr, value: i32) -> Result<i32> {
        let get = symbol(c"_ZN2at13globalContextEv")?;
        let (set, read) = (symbol(setter)?, symbol(reader)?);
        // SAFETY: the symbols have exactly these signatures in libtorch 2.11
        // (`void at::Context::setX(int)`, `int at::Context::x() const`).
        unsafe {
            let get: Getter = std::mem::transmute(get);
            let set: IntSetter = std::mem::transmute(set);
            let read: IntReader = std::mem::transmute(read);
            let context = get();
            set(context, value);
            Ok(read(context))
        }
    }

    /// Calls `at::globalContext().<setter>(on)`.
    pub fn set(setter: &CStr, on: bool) -> Result<()> {
        let get = symbol(c"_ZN2at13globalContextEv")?;
        let set = symbol(setter)?;
        // SAFETY: both symbols have exactly these signatures in libtorch 2.11
        // (`at::Context& at::globalContext()`, `void at::Context::setX(bool)`).
        unsafe {
            let get: Getter = std::mem::transmute(get);
            let set: Setter = std::mem::transmute(set);
            set(get(), on);
        }
        Ok(())
    }
}

/// Sets the precision of CUDA convolutions for the whole process (bf16 also needs
/// [`autocast`] around the work). Matrix products stay IEEE float32 in every precision, as
/// by PyTorch's default (`torch.backends.cuda.matmul.allow_tf32 = False`): the networks have
/// none, and `train.upsampling = "matmul"` needs its products exact.
pub fn set_precision(precision: Precision) -> Result<()> {
    context::set(c"_ZN2at7Context17setAllowTF32CuDNNEb", precision != Precision::Fp32)?;
    context::set(c"_ZN2at7Context18setAllowTF32CuBLASEb", false)
}

static TF32_EMULATION: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Emulates TF32 convolutions for the whole process (`advent train --emulate-tf32`): every
/// float32 convolution of the networks rounds its input and weight to TF32's 10-bit mantissa
/// going forward, and its incoming gradient going back (what the backward convolutions read),
/// as tensor cores do with `precision = "tf32"`; accumulation stays float32. For studying
/// TF32's effect on training on the CPU (BENCHMARKS.md derives the GPU tracking tolerance
/// from it). The rounding is to nearest; cuDNN's own conversion may differ in ties.
pub fn set_tf32_emulation(on: bool) {
    TF32_EMULATION.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`set_tf32_emulation`] is on.
pub fn tf32_emulation() -> bool {
    TF32_EMULATION.load(std::sync::atomic::Ordering::Relaxed)
}

/// Flush denormal floats to zero on the CPU (the SSE FTZ/DAZ flags, PyTorch's
/// `torch.set_flush_denormal`), for every thread libtorch starts from now on. Gradients of
/// a converging network can sink into the denormal range, where x86 arithmetic is tens of
/// times slower; values that small (below 1.2e-38) are zero for any purpose here.
pub fn set_flush_denormal(on: bool) -> Result<()> {
    context::set(c"_ZN2at7Context16setFlushDenormalEb", on)
}

/// Make MKL's matrix products repeat bit for bit from one run to the next: Intel's
/// conditional numerical reproducibility in its automatic mode (`MKL_CBWR=AUTO`: the code
/// path of this CPU, with the work split among threads the same way on every run), unless
/// the environment already names a mode. At batch 1, libtorch runs convolutions on small
/// maps through MKL's products (SSD's extra layers on maps of 10x10 and smaller, inputs of up
/// to 12800 values; larger ones go to oneDNN; checked with `MKL_VERBOSE=1`). Without this, on
/// an Intel Xeon with AVX-512 and two threads, two identical `advent detect train` runs came
/// out with weights up to 1e-6 apart after two iterations, and a resumed run could not repeat
/// the uninterrupted one. No cost measured beyond the machine's noise (BENCHMARKS.md). MKL
/// reads the variable at its first call: call this at the start of `main`, before any tensor
/// work and before other threads start (it sets the process's environment). Returns whether
/// it set the variable.
pub fn repeatable_blas() -> bool {
    if std::env::var_os("MKL_CBWR").is_some() {
        return false;
    }
    std::env::set_var("MKL_CBWR", "AUTO");
    true
}

/// The CPU as results should name it: its model, the vector instructions libtorch's own
/// kernels were dispatched to, and the threads, e.g. `cpu (Intel(R) Xeon(R) Processor @
/// 2.50GHz; kernels AVX512; 2 threads)`. Training on the CPU is bit-repeatable on one machine
/// and thread count (with [`repeatable_blas`]), but libtorch (ATen, oneDNN, MKL) picks its
/// kernels by instruction set, so the same run on another CPU rounds differently, and a
/// network trained from scratch amplifies that (README, "Reliability"): figures from two
/// machines compare only with this.
pub fn cpu_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu_model(&cpuinfo).unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let kernels = match cpu_capability() {
        Some(c) => format!("; kernels {c}"),
        None => String::new(),
    };
    format!("cpu ({model}{kernels}; {} threads)", tch::get_num_threads())
}

/// The first `model name` of a `/proc/cpuinfo` text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name" && !value.trim().is_empty())
            .then(|| value.split_whitespace().collect::<Vec<_>>().join(" "))
    })
}

/// ATen's CPU capability (`DEFAULT`, `AVX2`, `AVX512`, ...; what
/// `torch.backends.cpu.get_cpu_capability()` says, `ATEN_CPU_CAPABILITY` overriding it),
/// read from libtorch's `at::get_cpu_capability()`. `None` where that cannot be called
/// safely: its `std::string` result is returned through a caller-provided slot, which this
/// passes as the first argument, as the x86-64 System V ABI does (not aarch64's).
pub fn cpu_capability() -> Option<String> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    {
        static CAPABILITY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        CAPABILITY.get_or_init(context::cpu_capability).clone()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Keeps the memory that CPU tensors free inside the process, for the next tensors to reuse.
///
/// glibc's malloc serves every block above 32 MiB with its own `mmap` and unmaps it when it
/// is freed, so each large activation of a full-size image (layer3's outputs are 33.5 MB at
/// 1024x512, layer4's 67 MB) faults its pages in afresh, zero-filled by the kernel, on every
/// forward pass: more than a third of a 1024x512 evaluation's time on the CPU
/// (BENCHMARKS.md). This sets `M_MMAP_MAX` to 0 (blocks come from the heap, where freed
/// memory is reused: the main thread's, where the networks run, and other threads' arena
/// heaps up to 64 MiB a block) and `M_TRIM_THRESHOLD` to 2 GiB (the heap is not shrunk
/// after each pass); the cost is a higher resident size, about the largest pass's working
/// set.
/// Call it before the work starts. Returns whether the settings took; elsewhere than
/// glibc, nothing happens.
pub fn keep_freed_host_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's parameters; valid at any time.
        unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Whether the environment already sets glibc's malloc (`GLIBC_TUNABLES` naming
/// `glibc.malloc`, or a `MALLOC_*_` variable), in which case [`keep_freed_host_memory`] is
/// left out: the user's choice wins.
pub fn malloc_configured_by_environment() -> bool {
    malloc_configured_by(std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into())))
}

/// [`malloc_configured_by_environment`] on given variables.
pub fn malloc_configured_by(mut vars: impl Iterator<Item = (String, String)>) -> bool {
    vars.any(|(k, v)| {
        (k == "GLIBC_TUNABLES" && v.contains("glibc.malloc.")) || (k.starts_with("MALLOC_") && k.ends_with('_'))
    })
}

/// bfloat16 autocast on this thread while the guard lives (nothing for fp32 and tf32).
pub struct Autocast {
    device_type: Option<i8>,
}

/// Starts autocast for `device` when `precision` is bf16.
pub fn autocast(device: Device, precision: Precision) -> Result<Autocast> {
    if precision != Precision::Bf16 {
        return Ok(Autocast { device_type: None });
    }
    let device_type = if device.is_cuda() { context::CUDA } else { context::CPU };
    context::autocast_enter(device_type)?;
    Ok(Autocast { device_type: Some(device_type) })
}

impl Drop for Autocast {
    fn drop(&mut self) {
        if let Some(t) = self.device_type {
            let _ = context::autocast_exit(t);
        }
    }
}

/// cuDNN's autotuner (PyTorch's `cudnn.benchmark`): the fastest algorithm per shape,
/// chosen on first use. The reference turns it on.
pub fn set_cudnn_benchmark(on: bool) -> Result<()> {
    context::set(c"_ZN2at7Context17setBenchmarkCuDNNEb", on)
}

/// How many cuDNN convolution algorithms the autotuner (`cudnn_benchmark`) times per shape,
/// 0 for every one (`torch.backends.cudnn.benchmark_limit`; PyTorch's default 10). Returns
/// the value libtorch now holds.
pub fn set_cudnn_benchmark_limit(limit: u32) -> Result<u32> {
    let limit = i32::try_from(limit).map_err(|_| anyhow::anyhow!("cuDNN benchmark limit {limit} is too large"))?;
    let held = context::set_int(
        c"_ZN2at7Context22setBenchmarkLimitCuDNNEi",
        c"_ZNK2at7Context19benchmarkLimitCuDNNEv",
        limit,
    )?;
    Ok(held.max(0) as u32)
}

/// Deterministic cuDNN algorithms (slower). Bit-repeatable training on one GPU also needs
/// `train.upsampling = "matmul"` (the bilinear kernel's backward adds with atomics).
pub fn set_cudnn_deterministic(on: bool) -> Result<()> {
    context::set(c"_ZN2at7Context21setDeterministicCuDNNEb", on)
}

#[cfg(test)]
mod tests {
    #[test]
    fn context_switches_are_found() {
        set_precision(Precision::Fp32).unwrap();
        set_cudnn_benchmark(false).unwrap();
        set_cudnn_deterministic(false).unwrap();
        set_precision(Precision::Tf32).unwrap();
        // libtorch holds what was set (read back through its own getter).
        assert_eq!(set_cudnn_benchmark_limit(0).unwrap(), 0);
        assert_eq!(set_cudnn_benchmark_limit(10).unwrap(), 10);
        assert!("bf17".parse::<Precision>().is_err());
        // The names configs use, both ways.
        for (name, p) in [("fp32", Precision::Fp32), ("tf32", Precision::Tf32), ("bf16", Precision::Bf16)] {
            assert_eq!(name.parse::<Precision>().unwrap(), p);
            assert_eq!(p.to_string(), name);
        }
    }

    use super::*;

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let two = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC  7B13 64-Core Processor\n\n\
                   processor\t: 1\nmodel name\t: other\n";
        assert_eq!(cpu_model(two).as_deref(), Some("AMD EPYC 7B13 64-Core Processor"));
        assert_eq!(cpu_model("processor\t: 0\nmodel name\t:\n"), None);
        assert_eq!(cpu_model(""), None);
        let d = cpu_description();
        assert!(d.starts_with("cpu (") && d.ends_with(&format!("; {} threads)", tch::get_num_threads())), "{d}");
    }

    #[test]
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    fn cpu_capability_is_one_of_atens_names() {
        // ATen's names for x86-64 (aten/src/ATen/native/DispatchStub.cpp); the same twice.
        let c = cpu_capability().expect("libtorch 2.11 exports at::get_cpu_capability");
        assert!(["DEFAULT", "AVX2", "AVX512"].contains(&c.as_str()), "{c}");
        assert_eq!(cpu_capability().as_deref(), Some(c.as_str()));
    }

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
