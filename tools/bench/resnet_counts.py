"""Arithmetic and element-wise memory traffic of the reference's DeepLab-V2 ResNet-101
evaluation pass (../shared/bench/torch_reference.py), counted from its shapes on PyTorch's
meta device (nothing is computed): the figures behind BENCHMARKS.md's expectations for
`--fold-bn` and `--aspp-pad` and the README's 1.6 % for the aux classifier.

    python tools/bench/resnet_counts.py [--bench ../shared/bench] [--size 512x1024]

Convolutions: multiply-accumulates per top-level module. Traffic, float32: each batch norm
reads and writes its tensor, as does each ReLU; a residual addition reads two tensors and
writes one. Folding a batch norm into its convolution and fusing bias, residual and ReLU
into cuDNN's call leaves only the residual's read.
"""
import argparse, sys

import torch
import torch.nn as nn

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--bench", default="../shared/bench", help="folder of torch_reference.py")
ap.add_argument("--size", default="512x1024", help="input HxW")
a = ap.parse_args()
sys.path.insert(0, a.bench)
import torch_reference as r  # noqa: E402

h, w = (int(v) for v in a.size.split("x"))
m = r.DeepLabV2().eval().to("meta")
macs, traffic = {}, {"batch norms": 0, "ReLUs": 0, "residual additions": 0, "residual reads when fused": 0}
F32 = 4

def count_conv(name):
    top = name.split(".")[0]
    def hook(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        macs[top] = macs.get(top, 0) + out.numel() * mod.in_channels * k // mod.groups
    return hook

for name, mod in m.named_modules():
    if isinstance(mod, nn.Conv2d):
        mod.register_forward_hook(count_conv(name))
    elif isinstance(mod, nn.BatchNorm2d):
        mod.register_forward_hook(lambda mo, i, o: traffic.__setitem__("batch norms", traffic["batch norms"] + 2 * o.numel() * F32))
    elif isinstance(mod, r.Bottleneck):
        def block(mo, i, o):
            inner = 2 * (mo.conv1.out_channels * o.shape[2] * o.shape[3])  # relu(bn1), relu(bn2) outputs
            traffic["ReLUs"] += 2 * (inner + o.numel()) * F32
            traffic["residual additions"] += 3 * o.numel() * F32
            traffic["residual reads when fused"] += o.numel() * F32
        mod.register_forward_hook(block)
# The stem's ReLU.
m.bn1.register_forward_hook(lambda mo, i, o: traffic.__setitem__("ReLUs", traffic["ReLUs"] + 2 * o.numel() * F32))

with torch.no_grad():
    m(torch.randn(1, 3, h, w, device="meta"))
total = sum(macs.values())
print(f"input {h}x{w}: {total / 1e9:.1f} GMAC in convolutions")
for k, v in macs.items():
    print(f"  {k:8s} {v / 1e9:7.1f} GMAC  {100 * v / total:5.1f} %")
moved = sum(v for k, v in traffic.items() if k != "residual reads when fused")
print(f"element-wise traffic of batch norms, ReLUs and residual additions: {moved / 1e9:.1f} GB")
for k, v in traffic.items():
    print(f"  {k:26s} {v / 1e9:5.2f} GB")
