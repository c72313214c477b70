//! Safe wrappers of `csrc/native.cpp`: libtorch's fused optimiser kernels and the CUDA
//! caching allocator's statistics, which tch does not bind.

use anyhow::{bail, ensure, Context, Result};
use std::ffi::{c_char, c_int, CStr};
use tch::{Device, Tensor};
use torch_sys::C_tensor;

/// Opaque `AdventEvent` of native.cpp.
#[repr(C)]
struct RawEvent {
    _private: [u8; 0],
}

/// Opaque `AdventGraph` of native.cpp.
#[repr(C)]
struct RawGraph {
    _private: [u8; 0],
}

extern "C" {
    fn advent_free_message(m: *mut c_char);
    fn advent_fused_sgd(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        bufs: *const *const C_tensor,
        n: usize,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        lr_tensor: *const C_tensor,
        first_step: c_int,
    ) -> *mut c_char;
    fn advent_fused_adam(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        exp_avg: *const *const C_tensor,
        exp_avg_sq: *const *const C_tensor,
        steps: *const *const C_tensor,
        n: usize,
        lr: f64,
        lr_tensor: *const C_tensor,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> *mut c_char;
    fn advent_clear_grads(ts: *const *const C_tensor, n: usize) -> *mut c_char;
    fn advent_zero_grads(ts: *const *const C_tensor, n: usize) -> *mut c_char;
    fn advent_copy_async(dst: *const C_tensor, src: *const C_tensor) -> *mut c_char;
    fn advent_host_copy_start(src: *const C_tensor, host: *mut *mut C_tensor, event: *mut *mut RawEvent)
        -> *mut c_char;
    fn advent_event_synchronize(e: *mut RawEvent) -> *mut c_char;
    fn advent_event_free(e: *mut RawEvent);
    fn advent_stack_pinned(ts: *const *const C_tensor, n: usize, out: *mut *mut C_tensor) -> *mut c_char;
    fn advent_tf32_operand(x: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn advent_tf32_output(x: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn advent_graphs_supported() -> c_int;
    fn advent_graph_new(out: *mut *mut RawGraph) -> *mut c_char;
    fn advent_graph_free(g: *mut RawGraph);
    fn advent_graph_capture_begin(g: *mut RawGraph, device: c_int) -> *mut c_char;
    fn advent_graph_capture_end(g: *mut RawGraph) -> *mut c_char;
    fn advent_graph_replay(g: *mut RawGraph) -> *mut c_char;
    fn advent_cuda_memory(device: c_int, out: *mut i64) -> *mut c_char;
    fn advent_cuda_reset_peak(device: c_int) -> *mut c_char;
}

/// Turns native.cpp's message (NULL: success) into a result.
fn check(m: *mut c_char) -> Result<()> {
    if m.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null message is a NUL-terminated malloc'd string that we own.
    let text = unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned();
    unsafe { advent_free_message(m) };
    bail!("libtorch: {}", text.trim())
}

/// A learning rate: a number fixed when the kernel is queued, or a 0-dimensional float
/// tensor on the parameters' device read when the kernel runs (what a CUDA graph of the
/// step needs, since the rate changes every iteration).
#[derive(Clone, Copy)]
pub enum Rate<'a> {
    Value(f64),
    Tensor(&'a Tensor),
}

impl Rate<'_> {
    fn parts(self) -> (f64, *const C_tensor) {
        match self {
            Rate::Value(v) => (v, std::ptr::null()),
            Rate::Tensor(t) => (0.0, t.as_ptr()),
        }
    }

    fn check(self, params: &[&Tensor]) -> Result<()> {
        if let (Rate::Tensor(t), Some(p)) = (self, params.first()) {
            ensure!(
                t.dim() == 0 && t.kind() == tch::Kind::Float && t.device() == p.device(),
                "a learning-rate tensor must be a float32 scalar on {:?}, got {:?} {:?} on {:?}",
                p.device(),
                t.size(),
                t.kind(),
                t.device()
            );
        }
        Ok(())
    }
}

fn ptrs(ts: &[&Tensor]) -> Vec<*const C_tensor> {
    ts.iter().map(|t| t.as_ptr()).collect()
}

/// The fused kernels trust that every list matches the parameters element by element (the
/// CPU kernels do not check): make sure.
fn ensure_like(what: &str, params: &[&Tensor], others: &[&Tensor]) -> Result<()> {
    ensure!(others.len() == params.len(), "{what}: {} tensors for {} parameters", others.len(), params.len());
    for (i, (p, o)) in params.iter().zip(others).enumerate() {
        ensure!(
            p.size() == o.size() && p.kind() == o.kind() && p.device() == o.device(),
            "{what} {i}: {:?} {:?} on {:?} for a parameter {:?} {:?} on {:?}",
            o.size(),
            o.kind(),
            o.device(),
            p.size(),
            p.kind(),
            p.device()
        );
    }
    Ok(())
}

/// `torch.optim.SGD(momentum, weight_decay)` (no dampening, no Nesterov) on every
/// parameter at once: libtorch's `_fused_sgd_`, one multi-tensor kernel. With `first_step`
/// each buffer becomes the decayed gradient, as in PyTorch's first step.
pub fn fused_sgd(
    params: &[&Tensor],
    grads: &[&Tensor],
    buffers: &[&Tensor],
    weight_decay: f64,
    momentum: f64,
    lr: Rate<'_>,
    first_step: bool,
) -> Result<()> {
    let n = params.len();
    ensure_like("fused_sgd: gradient", params, grads)?;
    ensure_like("fused_sgd: momentum buffer", params, buffers)?;
    lr.check(params)?;
    if n == 0 {
        return Ok(());
    }
    let (p, g, b) = (ptrs(params), ptrs(grads), ptrs(buffers));
    let (lr, lr_tensor) = lr.parts();
    // SAFETY: n valid tensor pointers in each list and a valid or null rate tensor, alive for
    // the call.
    check(unsafe {
        advent_fused_sgd(
            p.as_ptr(),
            g.as_ptr(),
            b.as_ptr(),
            n,
            weight_decay,
            momentum,
            lr,
            lr_tensor,
            first_step as c_int,
        )
    })
}

/// The moments and step counts of [`fused_adam`], one per parameter.
pub struct AdamState<'a> {
    pub exp_avg: &'a [&'a Tensor],
    pub exp_avg_sq: &'a [&'a Tensor],
    /// float32 scalars: the step number of this update (1 for the first).
    pub steps: &'a [&'a Tensor],
}

/// `torch.optim.Adam(betas, eps)` without weight decay on every parameter at once:
/// libtorch's `_fused_adam_`.
pub fn fused_adam(
    params: &[&Tensor],
    grads: &[&Tensor],
    state: AdamState<'_>,
    lr: Rate<'_>,
    betas: (f64, f64),
    eps: f64,
) -> Result<()> {
    let n = params.len();
    ensure_like("fused_adam: gradient", params, grads)?;
    ensure_like("fused_adam: exp_avg", params, state.exp_avg)?;
    ensure_like("fused_adam: exp_avg_sq", params, state.exp_avg_sq)?;
    ensure!(state.steps.len() == n, "fused_adam: {} step counts for {n} parameters", state.steps.len());
    lr.check(params)?;
    if n == 0 {
        return Ok(());
    }
    let (p, g) = (ptrs(params), ptrs(grads));
    let (m, v, s) = (ptrs(state.exp_avg), ptrs(state.exp_avg_sq), ptrs(state.steps));
    let (lr, lr_tensor) = lr.parts();
    // SAFETY: n valid tensor pointers in each list and a valid or null rate tensor, alive for
    // the call.
    check(unsafe {
        let (mp, vp, sp) = (m.as_ptr(), v.as_ptr(), s.as_ptr());
        advent_fused_adam(p.as_ptr(), g.as_ptr(), mp, vp, sp, n, lr, lr_tensor, betas.0, betas.1, 0.0, eps)
    })
}

/// `grad = None` for each tensor (PyTorch's `zero_grad(set_to_none=True)`, its default):
/// unlike zeroing, the gradients' memory is free until the next backward pass.
pub fn clear_grads(tensors: &[&Tensor]) -> Result<()> {
    let p = ptrs(tensors);
    // SAFETY: valid tensor pointers, alive for the call.
    check(unsafe { advent_clear_grads(p.as_ptr(), p.len()) })
}

/// The defined gradients of `tensors` set to zero in place (one multi-tensor kernel): unlike
/// [`clear_grads`], each gradient keeps its memory, which the next backward pass adds into,
/// so that a CUDA graph of the step finds its gradients where it captured them.
pub fn zero_grads(tensors: &[&Tensor]) -> Result<()> {
    let p = ptrs(tensors);
    // SAFETY: valid tensor pointers, alive for the call.
    check(unsafe { advent_zero_grads(p.as_ptr(), p.len()) })
}

/// `dst.copy_(src, non_blocking=true)`: the values of `src` into `dst` (same shape, or
/// broadcast), without waiting for the copy when it can be queued (page-locked host memory
/// to a CUDA device: stream order keeps every later use of `dst` after it, and libtorch's
/// host allocator keeps `src`'s memory until it is done). Elsewhere an ordinary copy.
pub fn copy_async(dst: &Tensor, src: &Tensor) -> Result<()> {
    // SAFETY: valid tensor pointers, alive for the call.
    check(unsafe { advent_copy_async(dst.as_ptr(), src.as_ptr()) })
}

/// `t` on `device`, the copy queued without waiting for it when `t` is in page-locked
/// memory (as the training loaders, [`stack_for`] and `Prepared::pinned` give it on CUDA):
/// the host goes on while it runs; stream order keeps every use after the copy, and
/// libtorch keeps the host memory until it is done. From pageable memory, an ordinary copy.
pub fn to_device_async(t: &Tensor, device: Device) -> Result<Tensor> {
    Ok(t.f_to_device_(device, t.kind(), true, false)?)
}

/// A tensor's values on its way to the host: on a CUDA device the copy (into page-locked
/// memory) and an event after it are queued on the current stream and the host goes on;
/// [`HostCopy::wait`] waits for that event only, not for the work queued after the copy. So
/// the host can queue the next pass of a network before it needs the last one's results,
/// and the device is not left idle while the host reads them. Stream order keeps the copy
/// ahead of whatever is queued later, so the source may be overwritten by later work (a CUDA
/// graph's next replay). On the CPU there is nothing to wait for: the tensor itself.
pub struct HostCopy {
    host: Tensor,
    /// Null on the CPU.
    event: *mut RawEvent,
}

// SAFETY: the tensor is Send (tch); the event is owned by this value alone and CUDA's event
// calls (synchronize, destroy) may come from any thread.
unsafe impl Send for HostCopy {}

impl HostCopy {
    /// Queues the copy of `t` to the host.
    pub fn start(t: &Tensor) -> Result<Self> {
        if t.device() == Device::Cpu {
            return Ok(HostCopy { host: t.shallow_clone(), event: std::ptr::null_mut() });
        }
        let mut host: *mut C_tensor = std::ptr::null_mut();
        let mut event = std::ptr::null_mut();
        // SAFETY: a valid tensor pointer; on success both outputs are new objects we own.
        check(unsafe { advent_host_copy_start(t.as_ptr(), &mut host, &mut event) })?;
        // SAFETY: as above.
        Ok(HostCopy { host: unsafe { Tensor::from_ptr(host) }, event })
    }

    /// The values on the host, once the copy is done.
    pub fn wait(self) -> Result<Tensor> {
        if !self.event.is_null() {
            // SAFETY: a live event from advent_host_copy_start (freed by Drop).
            check(unsafe { advent_event_synchronize(self.event) })?;
        }
        Ok(self.host.shallow_clone())
    }
}

impl Drop for HostCopy {
    fn drop(&mut self) {
        if !self.event.is_null() {
            // SAFETY: from advent_host_copy_start, freed once. (The pending copy itself is
            // safe to abandon: libtorch's host allocator keeps its memory until it is done.)
            unsafe { advent_event_free(self.event) }
        }
    }
}

/// A copy of the host tensor `t` in page-locked memory (CUDA's host allocator), from which
/// a copy to a CUDA device can be queued without waiting. Needs a CUDA device.
pub fn page_locked(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_pin_memory(Device::Cuda(0))?)
}

/// `Tensor::stack(ts, 0)` for a copy to `device`: into page-locked host memory when `device`
/// is a CUDA device (its copy can then be queued without waiting, [`copy_async`] or a
/// non-blocking `to`), an ordinary stack elsewhere.
pub fn stack_for(ts: &[&Tensor], device: Device) -> Result<Tensor> {
    if !device.is_cuda() || ts.iter().any(|t| t.device() != Device::Cpu) {
        return Ok(Tensor::f_stack(ts, 0)?);
    }
    let first = ts.first().context("nothing to stack")?;
    if let Some(t) = ts.iter().find(|t| (t.size(), t.kind()) != (first.size(), first.kind())) {
        bail!("cannot stack a {:?} {:?} tensor with a {:?} {:?} one", t.size(), t.kind(), first.size(), first.kind());
    }
    let p = ptrs(ts);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: valid tensor pointers, alive for the call; on success out is a new tensor we own.
    check(unsafe { advent_stack_pinned(p.as_ptr(), p.len(), &mut out) })?;
    // SAFETY: as above.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// A float32 convolution operand as a TF32 tensor core reads it: rounded to a 10-bit
/// mantissa (to nearest, ties to even) going forward; its gradient passes through unchanged.
pub fn tf32_operand(x: &Tensor) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    check(unsafe { advent_tf32_operand(x.as_ptr(), &mut out) })?;
    // SAFETY: on success `out` is a new heap-allocated tensor that we now own.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// A TF32 convolution's output: the same values going forward, the gradient coming back
/// rounded to a 10-bit mantissa (the backward convolutions read it in TF32).
pub fn tf32_output(x: &Tensor) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    check(unsafe { advent_tf32_output(x.as_ptr(), &mut out) })?;
    // SAFETY: as in tf32_operand.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Whether this build can capture CUDA graphs (it found the CUDA headers when built).
pub fn cuda_graphs_supported() -> bool {
    // SAFETY: no arguments.
    unsafe { advent_graphs_supported() != 0 }
}

/// A captured sequence of CUDA kernels, replayed with one launch.
///
/// Everything the captured work reads must stay where it was at capture (copy new inputs
/// into the same tensors); what it creates stays in the graph's memory and is overwritten
/// by each replay.
pub struct CudaGraph {
    raw: *mut RawGraph,
}

impl CudaGraph {
    /// Captures the work that `f` queues on `device` (on a side stream; run the work
    /// uncaptured a few times first, so that cuDNN's autotuner and the allocator have
    /// settled). Nothing runs during capture: the tensors `f` returns are filled by
    /// [`CudaGraph::replay`].
    pub fn capture<T>(device: Device, f: impl FnOnce() -> Result<T>) -> Result<(Self, T)> {
        let Device::Cuda(i) = device else { bail!("CUDA graphs need a CUDA device") };
        let mut raw = std::ptr::null_mut();
        // SAFETY: writes a new graph into raw.
        check(unsafe { advent_graph_new(&mut raw) })?;
        let graph = CudaGraph { raw };
        // SAFETY: raw is a live graph.
        check(unsafe { advent_graph_capture_begin(graph.raw, i as c_int) })?;
        let result = f();
        // SAFETY: ends the capture begun above whatever f did, restoring the stream.
        let end = check(unsafe { advent_graph_capture_end(graph.raw) });
        let value = result?;
        end?;
        Ok((graph, value))
    }

    /// Queues the captured kernels again.
    pub fn replay(&self) -> Result<()> {
        // SAFETY: raw is a live graph.
        check(unsafe { advent_graph_replay(self.raw) })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: raw came from advent_graph_new and is freed once.
        unsafe { advent_graph_free(self.raw) }
    }
}

/// What the CUDA caching allocator holds on one device, in bytes (PyTorch's
/// `memory_allocated`, `max_memory_allocated`, `memory_reserved`, `max_memory_reserved`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CudaMemory {
    pub allocated: i64,
    pub peak_allocated: i64,
    pub reserved: i64,
    pub peak_reserved: i64,
}

/// The allocator's statistics for `device` (`None` on the CPU).
pub fn cuda_memory(device: Device) -> Result<Option<CudaMemory>> {
    let Device::Cuda(i) = device else { return Ok(None) };
    let mut out = [0i64; 4];
    // SAFETY: out has the four slots native.cpp writes.
    check(unsafe { advent_cuda_memory(i as c_int, out.as_mut_ptr()) })?;
    Ok(Some(CudaMemory { allocated: out[0], peak_allocated: out[1], reserved: out[2], peak_reserved: out[3] }))
}

/// Starts a new peak (`torch.cuda.reset_peak_memory_stats`); nothing on the CPU.
pub fn reset_peak_memory(device: Device) -> Result<()> {
    match device {
        // SAFETY: a device index; libtorch checks it.
        Device::Cuda(i) => check(unsafe { advent_cuda_reset_peak(i as c_int) }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn fused_sgd_two_steps_by_hand() {
        // w = 1, g = 2, wd = 0.5, m = 0.9, lr = 0.1: step 1 d = 2.5, buf = 2.5, w = 0.75;
        // step 2 (g = 2) d = 2.375, buf = 4.625, w = 0.2875.
        let w = Tensor::from_slice(&[1.0f32]);
        let g = Tensor::from_slice(&[2.0f32]);
        let b = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        fused_sgd(&[&w], &[&g], &[&b], 0.5, 0.9, Rate::Value(0.1), true).unwrap();
        assert!((w.double_value(&[0]) - 0.75).abs() < 1e-7);
        assert!((b.double_value(&[0]) - 2.5).abs() < 1e-7);
        // The second step with the rate in a tensor.
        let lr = Tensor::from(0.1f32);
        fused_sgd(&[&w], &[&g], &[&b], 0.5, 0.9, Rate::Tensor(&lr), false).unwrap();
        assert!((w.double_value(&[0]) - 0.2875).abs() < 1e-6, "{}", w.double_value(&[0]));
        // A rate tensor of the wrong kind is refused before the kernel sees it.
        let bad = Tensor::from(0.1f64);
        let err = fused_sgd(&[&w], &[&g], &[&b], 0.5, 0.9, Rate::Tensor(&bad), false).unwrap_err();
        assert!(err.to_string().contains("float32 scalar"), "{err}");
    }

    #[test]
    fn fused_adam_first_step_moves_by_the_rate() {
        // The first Adam step moves each weight by lr·sign(g) (up to eps).
        let w = Tensor::from_slice(&[1.0f32, -1.0]);
        let g = Tensor::from_slice(&[3.0f32, -0.5]);
        let (m, v) = (w.zeros_like(), w.zeros_like());
        let step = Tensor::from(1.0f32);
        let state = AdamState { exp_avg: &[&m], exp_avg_sq: &[&v], steps: &[&step] };
        fused_adam(&[&w], &[&g], state, Rate::Value(0.01), (0.9, 0.99), 1e-8).unwrap();
        assert!((w.double_value(&[0]) - 0.99).abs() < 1e-6);
        assert!((w.double_value(&[1]) + 0.99).abs() < 1e-6);
        // The same with the rate in a tensor, from fresh moments.
        let w = Tensor::from_slice(&[1.0f32, -1.0]);
        let (m, v) = (w.zeros_like(), w.zeros_like());
        let lr = Tensor::from(0.01f32);
        let state = AdamState { exp_avg: &[&m], exp_avg_sq: &[&v], steps: &[&step] };
        fused_adam(&[&w], &[&g], state, Rate::Tensor(&lr), (0.9, 0.99), 1e-8).unwrap();
        assert!((w.double_value(&[0]) - 0.99).abs() < 1e-6);
        assert!((w.double_value(&[1]) + 0.99).abs() < 1e-6);
    }

    #[test]
    fn errors_become_messages() {
        let w = Tensor::from_slice(&[1.0f32, 2.0]);
        let g = Tensor::from_slice(&[1.0f32]);
        let err = fused_sgd(&[&w], &[&g], &[&w.zeros_like()], 0.0, 0.9, Rate::Value(0.1), true).unwrap_err();
        assert!(err.to_string().contains("gradient 0: [1]"), "{err}");
        if tch::Cuda::device_count() == 0 {
            // A C++ exception, caught and returned as a message.
            let err = cuda_memory(Device::Cuda(0)).unwrap_err().to_string();
            assert!(err.starts_with("libtorch:"), "{err}");
        }
        assert!(cuda_memory(Device::Cpu).unwrap().is_none());
        assert!(CudaGraph::capture(Device::Cpu, || Ok(())).is_err());
    }

    #[test]
    fn cleared_gradients_are_none() {
        let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        (&w * 3.0).sum(Kind::Float).backward();
        assert!(w.grad().defined());
        clear_grads(&[&w]).unwrap();
        assert!(!w.grad().defined());
        // And the next backward pass starts from nothing, not from the old gradient.
        (&w * 2.0).sum(Kind::Float).backward();
        assert_eq!(w.grad().double_value(&[0]), 2.0);
    }

    #[test]
    fn zeroed_gradients_keep_their_memory() {
        let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let unused = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        (&w * 3.0).sum(Kind::Float).backward();
        let before = w.grad().data_ptr();
        zero_grads(&[&w, &unused]).unwrap();
        assert_eq!(w.grad().double_value(&[1]), 0.0);
        assert!(!unused.grad().defined(), "an undefined gradient stays undefined");
        // The next backward pass adds into the same memory.
        (&w * 2.0).sum(Kind::Float).backward();
        assert_eq!(w.grad().double_value(&[0]), 2.0);
        assert_eq!(w.grad().data_ptr(), before);
    }

    /// The values land in the destination's own memory (what a CUDA graph's input slot
    /// needs); a shape that does not broadcast is an error, not a crash.
    #[test]
    fn an_async_copy_writes_in_place() {
        let dst = Tensor::zeros([2, 3], (tch::Kind::Float, Device::Cpu));
        let before = dst.data_ptr();
        let src = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape([2, 3]);
        copy_async(&dst, &src).unwrap();
        assert_eq!(dst.data_ptr(), before);
        assert_eq!(Vec::<f32>::try_from(dst.flatten(0, -1)).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let e = copy_async(&dst, &Tensor::zeros([4], (tch::Kind::Float, Device::Cpu))).unwrap_err().to_string();
        assert!(e.contains("size"), "{e}");
    }

    /// On the CPU a host copy is the tensor itself, and stacking for the CPU is a stack;
    /// tensors that cannot be stacked are an error naming their shapes, not a crash.
    #[test]
    fn host_copies_and_stacks_on_the_cpu() {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let copy = HostCopy::start(&t).unwrap();
        assert_eq!(Vec::<f32>::try_from(copy.wait().unwrap()).unwrap(), [1.0, 2.0, 3.0]);
        let a = Tensor::from_slice(&[1.0f32, 2.0]);
        let b = Tensor::from_slice(&[3.0f32, 4.0]);
        let cuda = if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu };
        for device in [Device::Cpu, cuda] {
            let s = stack_for(&[&a, &b], device).unwrap();
            assert_eq!(s.size(), [2, 2]);
            assert_eq!(Vec::<f32>::try_from(s.flatten(0, -1)).unwrap(), [1.0, 2.0, 3.0, 4.0]);
        }
        let c = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let e = stack_for(&[&a, &c], cuda).unwrap_err().to_string();
        assert!(e.contains("[3]") && e.contains("[2]"), "{e}");
    }
}
