// The few libtorch entry points that tch does not bind: the fused multi-tensor optimiser
// kernels (with a fixed or a device-held learning rate), gradients reset to none or zeroed,
// TF32 rounding for emulating TF32 convolutions on the CPU, the CUDA caching allocator's statistics (device-generic
// headers: the CUDA allocator is found at run time once libtorch_cuda is loaded) and, when
// the CUDA runtime's headers were found at build time (ADVENT_CUDA_GRAPHS), CUDA graphs. Every function catches
// C++ exceptions and returns them as a message (NULL on success), freed by the caller with
// advent_free_message; Rust wraps them in crates/advent/src/native.rs.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <vector>

#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/csrc/autograd/custom_function.h>

#ifdef ADVENT_CUDA_GRAPHS
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAStream.h>
#endif

// tch's C_tensor: a heap-allocated at::Tensor.
typedef at::Tensor* tensor;

namespace {

char* message(const char* text) {
  size_t n = std::strlen(text);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, text, n + 1);
  }
  return out;
}

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception");
  }
}

std::vector<at::Tensor> list(const tensor* ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*ts[i]);
  }
  return out;
}

// float32 values rounded to TF32's 10-bit mantissa (nearest, ties to even: the 13 low bits
// of the float32 pattern), what tensor cores read of an fp32 operand; NaN stays NaN.
at::Tensor round_to_tf32(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "TF32 rounding takes float32 tensors, got ", x.scalar_type());
  at::Tensor bits = x.contiguous().view(at::kInt);
  at::Tensor lsb = bits.bitwise_right_shift(13).bitwise_and(1);
  at::Tensor rounded = bits.add(lsb).add(0xFFF).bitwise_and(static_cast<int64_t>(~0x1FFF)).view(at::kFloat);
  return at::where(x.isnan(), x, rounded);
}

// An operand of a TF32 convolution: rounded going forward, its gradient passed through
// unchanged (the gradient is rounded where it enters the convolution's backward pass).
struct Tf32Operand : public torch::autograd::Function<Tf32Operand> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& x) { return round_to_tf32(x); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {grads[0]};
  }
};

// A TF32 convolution's output: unchanged going forward; the gradient coming back is rounded,
// as the backward convolutions (data and filter) read it in TF32.
struct Tf32Output : public torch::autograd::Function<Tf32Output> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& x) { return x.clone(); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {grads[0].defined() ? round_to_tf32(grads[0]) : grads[0]};
  }
};

}  // namespace

extern "C" {

void advent_free_message(char* m) { std::free(m); }

// torch.optim.SGD(momentum, weight_decay, dampening=0, nesterov=False) over all `n`
// parameters in one multi-tensor kernel. `first_step`: the buffers are initialised to the
// (decayed) gradient, as PyTorch's first step does. With `lr_tensor` (not NULL) the rate is
// read from that 0-dimensional tensor on the device when the kernel runs (`lr` is unused), so
// that a CUDA graph of the step follows a changing rate.
char* advent_fused_sgd(const tensor* params, const tensor* grads, const tensor* bufs, size_t n, double weight_decay,
                       double momentum, double lr, const tensor lr_tensor, int first_step) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    if (lr_tensor != nullptr) {
      at::_fused_sgd_(list(params, n), list(grads, n), list(bufs, n), weight_decay, momentum, *lr_tensor, 0.0, false,
                      false, first_step != 0);
    } else {
      at::_fused_sgd_(list(params, n), list(grads, n), list(bufs, n), weight_decay, momentum, lr, 0.0, false, false,
                      first_step != 0);
    }
  });
}

// torch.optim.Adam(betas, eps, weight_decay) over all `n` parameters in one kernel;
// `steps` holds each parameter's step count, already incremented for this step. `lr_tensor`
// as for advent_fused_sgd.
char* advent_fused_adam(const tensor* params, const tensor* grads, const tensor* exp_avg, const tensor* exp_avg_sq,
                        const tensor* steps, size_t n, double lr, const tensor lr_tensor, double beta1, double beta2,
                        double weight_decay, double eps) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    if (lr_tensor != nullptr) {
      at::_fused_adam_(list(params, n), list(grads, n), list(exp_avg, n), list(exp_avg_sq, n), {}, list(steps, n),
                       *lr_tensor, beta1, beta2, weight_decay, eps, false, false);
    } else {
      at::_fused_adam_(list(params, n), list(grads, n), list(exp_avg, n), list(exp_avg_sq, n), {}, list(steps, n), lr,
                       beta1, beta2, weight_decay, eps, false, false);
    }
  });
}

// `param.grad = None` for each (PyTorch's zero_grad(set_to_none=True)): the memory goes
// back to the allocator until the next backward pass needs it.
char* advent_clear_grads(const tensor* ts, size_t n) {
  return guarded([&] {
    for (size_t i = 0; i < n; ++i) {
      ts[i]->mutable_grad().reset();
    }
  });
}

// The defined gradients of the `n` tensors set to zero in place, in one multi-tensor kernel
// (the gradient tensors stay where they are, as a CUDA graph of the step needs).
char* advent_zero_grads(const tensor* ts, size_t n) {
  return guarded([&] {
    std::vector<at::Tensor> grads;
    for (size_t i = 0; i < n; ++i) {
      const auto& g = ts[i]->grad();
      if (g.defined()) {
        grads.push_back(g);
      }
    }
    if (!grads.empty()) {
      at::_foreach_zero_(grads);
    }
  });
}

// `dst.copy_(src, non_blocking=True)`: from page-locked host memory to a CUDA tensor the
// copy is queued on the current stream and the call returns at once (tch binds copy_ only
// with non_blocking=False, which waits for the stream).
char* advent_copy_async(tensor dst, tensor src) {
  return guarded([&] { dst->copy_(*src, /*non_blocking=*/true); });
}

// Copies to the host that are queued, not waited for. `src` goes into new page-locked host
// memory on its device's current stream, followed by an event (device-generic: c10::Event
// finds the CUDA backend at run time, no CUDA headers needed); the values are there once
// advent_event_synchronize returns. Stream order keeps the copy ahead of everything queued
// after it, so `src` may be overwritten (a CUDA graph's next replay) once it is queued.
struct AdventEvent {
  c10::Event event;
};

char* advent_host_copy_start(tensor src, tensor* host, AdventEvent** event) {
  return guarded([&] {
    auto device = src->device();
    TORCH_CHECK(!device.is_cpu(), "a queued copy to the host needs a tensor on a device, not on the CPU");
    at::NoGradGuard no_grad;  // a copy of values: no autograd history from `src`
    at::Tensor out = at::empty(src->sizes(), src->options().device(at::kCPU).pinned_memory(true));
    out.copy_(*src, /*non_blocking=*/true);
    auto e = std::make_unique<AdventEvent>(AdventEvent{c10::Event(device.type())});
    c10::impl::VirtualGuardImpl impl(device.type());
    e->event.record(impl.getStream(device));
    *host = new at::Tensor(std::move(out));
    *event = e.release();
  });
}

char* advent_event_synchronize(AdventEvent* e) {
  return guarded([&] { e->event.synchronize(); });
}

void advent_event_free(AdventEvent* e) { delete e; }

// `ts` stacked along a new first dimension into new page-locked host memory, from which a
// copy to a device can be queued without waiting (advent_copy_async).
char* advent_stack_pinned(const tensor* ts, size_t n, tensor* out) {
  return guarded([&] {
    TORCH_CHECK(n > 0, "nothing to stack");
    auto parts = list(ts, n);
    std::vector<int64_t> shape{static_cast<int64_t>(n)};
    auto first = parts[0].sizes();
    shape.insert(shape.end(), first.begin(), first.end());
    at::Tensor stacked = at::empty(shape, parts[0].options().device(at::kCPU).pinned_memory(true));
    at::stack_out(stacked, parts, 0);
    *out = new at::Tensor(std::move(stacked));
  });
}

// Bytes held by the CUDA caching allocator on `device`: out[0] allocated now, out[1] peak
// allocated (torch.cuda.max_memory_allocated), out[2] reserved now, out[3] peak reserved.
char* advent_cuda_memory(int device, int64_t* out) {
  return guarded([&] {
    auto stats = c10::getDeviceAllocator(c10::DeviceType::CUDA)->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[all].current;
    out[1] = stats.allocated_bytes[all].peak;
    out[2] = stats.reserved_bytes[all].current;
    out[3] = stats.reserved_bytes[all].peak;
  });
}

char* advent_cuda_reset_peak(int device) {
  return guarded([&] {
    c10::getDeviceAllocator(c10::DeviceType::CUDA)->resetPeakStats(static_cast<c10::DeviceIndex>(device));
  });
}

// CUDA graphs. A graph records the kernels that the calling thread queues between
// capture_begin and capture_end (on a side stream, made current meanwhile, with autocast's
// weight cache off so that no captured buffer is freed behind the graph's back); replay
// queues them again on the current stream. Tensors created during capture live in the
// graph's private memory pool until the graph is freed.
struct AdventGraph {
#ifdef ADVENT_CUDA_GRAPHS
  at::cuda::CUDAGraph graph;
  std::optional<c10::cuda::CUDAStream> previous;
  bool cache_was_enabled = true;
#endif
};

int advent_graphs_supported() {
#ifdef ADVENT_CUDA_GRAPHS
  return 1;
#else
  return 0;
#endif
}

char* advent_tf32_operand(tensor x, tensor* out) {
  return guarded([&] { *out = new at::Tensor(Tf32Operand::apply(*x)); });
}

char* advent_tf32_output(tensor x, tensor* out) {
  return guarded([&] { *out = new at::Tensor(Tf32Output::apply(*x)); });
}

char* advent_graph_new(AdventGraph** out) {
  return guarded([&] { *out = new AdventGraph(); });
}

void advent_graph_free(AdventGraph* g) { delete g; }

char* advent_graph_capture_begin(AdventGraph* g, int device) {
  return guarded([&] {
#ifdef ADVENT_CUDA_GRAPHS
    auto index = static_cast<c10::DeviceIndex>(device);
    g->previous = c10::cuda::getCurrentCUDAStream(index);
    auto side = c10::cuda::getStreamFromPool(false, index);
    // The side stream starts after everything queued so far (inputs, warm-up runs).
    g->previous->synchronize();
    c10::cuda::setCurrentCUDAStream(side);
    g->cache_was_enabled = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);
    try {
      g->graph.capture_begin();
    } catch (...) {
      at::autocast::set_autocast_cache_enabled(g->cache_was_enabled);
      c10::cuda::setCurrentCUDAStream(*g->previous);
      throw;
    }
#else
    (void)g;
    (void)device;
    TORCH_CHECK(false, "this build of advent has no CUDA graph support (no CUDA headers at build time)");
#endif
  });
}

char* advent_graph_capture_end(AdventGraph* g) {
  return guarded([&] {
#ifdef ADVENT_CUDA_GRAPHS
    struct Restore {
      AdventGraph* g;
      ~Restore() {
        at::autocast::set_autocast_cache_enabled(g->cache_was_enabled);
        if (g->previous) {
          c10::cuda::setCurrentCUDAStream(*g->previous);
        }
      }
    } restore{g};
    g->graph.capture_end();
#else
    (void)g;
#endif
  });
}

char* advent_graph_replay(AdventGraph* g) {
  return guarded([&] {
#ifdef ADVENT_CUDA_GRAPHS
    g->graph.replay();
#else
    (void)g;
    TORCH_CHECK(false, "no CUDA graph support");
#endif
  });
}

}  // extern "C"
