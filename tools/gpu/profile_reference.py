"""Where the GPU time of an AdvEnt step goes: the reference's step (the same architecture,
sizes and cuDNN kernels as advent's) under torch.profiler, per step: CUDA time by operator,
by convolution shape (the discriminators' 19-channel inputs, the ASPP's 19 outputs, the
backbone), and the top kernels. Guides the speed work of BENCHMARKS.md; it times nothing for
the tables (the profiler adds overhead).

    python3 tools/gpu/profile_reference.py [FOLDER_OF_torch_reference.py] [--channels-last] [--precision tf32|bf16]

(`--cpu-smoke`: a CPU run at 64x128 that only checks the script itself.)
"""
import argparse
import sys

import torch

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("folder", nargs="?", default="../shared/bench", help="where torch_reference.py is")
ap.add_argument("--channels-last", action="store_true")
ap.add_argument("--precision", default="tf32", choices=["tf32", "bf16", "fp32"])
ap.add_argument("--cpu-smoke", action="store_true", help="a CPU run at 64x128 that checks the script itself")
a = ap.parse_args()
sys.path.insert(0, a.folder)
import torch_reference as r  # noqa: E402

channels_last, precision, smoke = a.channels_last, a.precision, a.cpu_smoke
where = dict(src=(64, 128), trg=(64, 128), dev="cpu") if smoke else {}
r.TUNE.update(channels_last=channels_last)
torch.backends.cudnn.benchmark = True
torch.backends.cudnn.allow_tf32 = precision != "fp32"
torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"

# A first run fills cuDNN's autotuner cache for every shape, so that the profiled run below
# holds no autotuning kernels.
print(r.run("advent", precision, 3, 3, **where), flush=True)
steps = 6
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU],
                            record_shapes=True) as prof:
    out = r.run("advent", precision, steps - 2, 2, **where)
print(out, flush=True)


def cuda_us(e):
    if smoke:  # no CUDA times on the CPU: exercise the listing with CPU times
        return e.self_cpu_time_total
    return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)


total = sum(cuda_us(e) for e in prof.key_averages()) / steps
print(f"== {precision} channels_last={channels_last}: {total / 1e3:.1f} ms of CUDA time per step (self times of "
      "operators and of kernels both, so most GPU time counts twice: compare operators with operators)")
print("== by operator (self CUDA time per step)")
ops = sorted(prof.key_averages(), key=cuda_us, reverse=True)
for e in ops[:25]:
    if cuda_us(e) > 0:
        print(f"{cuda_us(e) / steps / 1e3:8.2f} ms {e.count / steps:6.1f} calls  {e.key}")
print("== convolutions by input shape (forward and backward, self CUDA time per step)")
shapes = prof.key_averages(group_by_input_shape=True)
convs = [e for e in shapes if e.key in ("aten::cudnn_convolution", "aten::convolution_backward",
                                        "aten::_convolution", "aten::convolution") and cuda_us(e) > 0]
for e in sorted(convs, key=cuda_us, reverse=True)[:30]:
    print(f"{cuda_us(e) / steps / 1e3:8.2f} ms {e.count / steps:5.1f}x {e.key:28s} {str(e.input_shapes)[:150]}")
print("== top kernels")
kernels = [e for e in prof.key_averages() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
for e in sorted(kernels, key=cuda_us, reverse=True)[:25]:
    print(f"{cuda_us(e) / steps / 1e3:8.2f} ms {e.count / steps:6.1f}x  {e.key[:140]}")
