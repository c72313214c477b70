"""Whether cuDNN runs ResNet-101's dilated 3x3 convolutions slower than plain ones of the same
arithmetic, measured in PyTorch before building anything into advent (the result goes to
BENCHMARKS.md).

A dilated convolution (stride 1, padding = dilation d) equals a plain 3x3 convolution
(padding 1) on the input rearranged "space to batch": the d x d phases of the feature map
become d*d images of (H/d) x (W/d) (TensorFlow's atrous_conv2d), zero-padded to multiples
of d. For one convolution it is exact. Only the 3x3 convolutions mix neighbouring
positions, so a whole dilated stage (layer3: 23 blocks at d=2, layer4: 3 at d=4) could run
rearranged with one rearrangement at each end, but at 65x129 (not a multiple of 2 or 4)
the padded positions stop being zero after a batch norm's bias, so they would have to be
zeroed again before each 3x3 convolution (a few rows and columns), and training's batch
statistics would have to leave them out. Worth building only if the plain convolution is
clearly faster on the GPU.

Expected before measuring: no gain (cuDNN's implicit-GEMM kernels take the dilation in their
address arithmetic; on the development VM's CPU, oneDNN: 53 ms dilated, 56 ms rearranged for
layer3's shape, 171 against 201 ms for layer4's with its padding to a multiple of 4).

    python3 tools/gpu/dilation_probe.py [--cpu]
"""
import sys, time
import torch
import torch.nn.functional as F

dev = "cpu" if "--cpu" in sys.argv else "cuda"
torch.backends.cudnn.benchmark = True


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def timeit(f, n=30, warm=5):
    for _ in range(warm):
        f()
    sync()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); sync(); ts.append(time.perf_counter() - t)
    ts.sort()
    return 1e3 * ts[len(ts) // 2]


def to_batch(x, d):
    """[N, C, H, W] -> [d*d*N, C, ceil(H/d), ceil(W/d)], zero-padded to multiples of d."""
    n, c, h, w = x.shape
    hp, wp = -(-h // d) * d, -(-w // d) * d
    x = F.pad(x, (0, wp - w, 0, hp - h))
    return x.view(n, c, hp // d, d, wp // d, d).permute(3, 5, 0, 1, 2, 4).reshape(d * d * n, c, hp // d, wp // d)


def to_space(y, d, n, h, w):
    dn, c, hh, ww = y.shape
    return y.view(d, d, n, c, hh, ww).permute(2, 3, 4, 0, 5, 1).reshape(n, c, hh * d, ww * d)[:, :, :h, :w]


# The two dilated stages at the paper's evaluation size (1024x512 in: 65x129 feature maps).
torch.manual_seed(0)
for c, d in [(256, 2), (512, 4)]:
    x = torch.randn(1, c, 65, 129, device=dev)
    w = torch.randn(c, c, 3, 3, device=dev) * 0.02
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    exact = (to_space(F.conv2d(to_batch(x, d), w, padding=1), d, 1, 65, 129) - F.conv2d(x, w, padding=d, dilation=d))
    print(f"C={c} d={d}: rearranged against dilated, fp32, max |diff| {exact.abs().max().item():.2e}")
    for prec in (["fp32"] if dev == "cpu" else ["tf32", "bf16"]):
        torch.backends.cudnn.allow_tf32 = prec == "tf32"
        for n in [1, 4]:
            for cl in [False, True]:
                xs = torch.randn(n, c, 65, 129, device=dev)
                ws = w
                if prec == "bf16":
                    xs, ws = xs.bfloat16(), ws.bfloat16()
                fmt = torch.channels_last if cl else torch.contiguous_format
                xs, ws = xs.contiguous(memory_format=fmt), ws.contiguous(memory_format=fmt)
                xb = to_batch(xs, d).contiguous(memory_format=fmt)
                dil = timeit(lambda: F.conv2d(xs, ws, padding=d, dilation=d))
                plain = timeit(lambda: F.conv2d(xb, ws, padding=1))
                both = timeit(lambda: to_space(F.conv2d(to_batch(xs, d), ws, padding=1), d, n, 65, 129).contiguous(memory_format=fmt))
                print(f"  {prec} batch {n} {'channels-last' if cl else 'contiguous   '}: dilated {dil:7.3f} ms, "
                      f"rearranged {plain:7.3f} ms ({plain / dil:.2f}x), with the rearrangements {both:7.3f} ms")
