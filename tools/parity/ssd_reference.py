"""SSD-300 as amdegroot/ssd.pytorch's ssd.py builds it (vgg, add_extras, multibox, L2Norm),
transcribed, compared with advent's outputs (see crates/advent/tests/ssd_parity.rs).

Usage: python tools/parity/ssd_reference.py DIR   (DIR written by the ignored test)
The network is also the reference of tools/bench/ssd_reference.py (imported: numpy only here).
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

BASE = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
EXTRAS = [256, "S", 512, 128, "S", 256, 128, 256, 128, 256]
MBOX = [4, 6, 6, 6, 4, 4]


def vgg(cfg, i):
    layers, c = [], i
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        elif v == "C":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)]
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = v
    pool5 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)
    conv7 = nn.Conv2d(1024, 1024, kernel_size=1)
    return layers + [pool5, conv6, nn.ReLU(inplace=True), conv7, nn.ReLU(inplace=True)]


def add_extras(cfg, i):
    layers, c, flag = [], i, False
    for k, v in enumerate(cfg):
        if c != "S":
            if v == "S":
                layers += [nn.Conv2d(c, cfg[k + 1], kernel_size=(1, 3)[flag], stride=2, padding=1)]
            else:
                layers += [nn.Conv2d(c, v, kernel_size=(1, 3)[flag])]
            flag = not flag
        c = v
    return layers


class L2Norm(nn.Module):
    def __init__(self, n, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.full((n,), float(scale)))

    def forward(self, x):
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10
        return self.weight[None, :, None, None] * torch.div(x, norm)


class SSD(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.vgg = nn.ModuleList(vgg(BASE, 3))
        self.L2Norm = L2Norm(512, 20)
        self.extras = nn.ModuleList(add_extras(EXTRAS, 1024))
        loc, conf = [], []
        for k, v in enumerate([21, -2]):
            loc += [nn.Conv2d(self.vgg[v].out_channels, MBOX[k] * 4, kernel_size=3, padding=1)]
            conf += [nn.Conv2d(self.vgg[v].out_channels, MBOX[k] * num_classes, kernel_size=3, padding=1)]
        for k, v in enumerate(self.extras[1::2], 2):
            loc += [nn.Conv2d(v.out_channels, MBOX[k] * 4, kernel_size=3, padding=1)]
            conf += [nn.Conv2d(v.out_channels, MBOX[k] * num_classes, kernel_size=3, padding=1)]
        self.loc, self.conf = nn.ModuleList(loc), nn.ModuleList(conf)

    def forward(self, x):
        sources, loc, conf = [], [], []
        for k in range(23):
            x = self.vgg[k](x)
        sources.append(self.L2Norm(x))
        for k in range(23, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, v in enumerate(self.extras):
            x = F.relu(v(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)
        for (x, l, c) in zip(sources, self.loc, self.conf):
            loc.append(l(x).permute(0, 2, 3, 1).contiguous())
            conf.append(c(x).permute(0, 2, 3, 1).contiguous())
        loc = torch.cat([o.view(o.size(0), -1) for o in loc], 1)
        conf = torch.cat([o.view(o.size(0), -1) for o in conf], 1)
        return loc.view(loc.size(0), -1, 4), conf.view(conf.size(0), -1, self.num_classes)


def main(d):
    import numpy as np

    net = SSD(9)
    state = torch.load(f"{d}/ssd.pth", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()
    x = torch.from_numpy(np.load(f"{d}/input.npy"))
    with torch.no_grad():
        loc, conf = net(x)
    for name, ours in [("loc", loc), ("conf", conf)]:
        theirs = torch.from_numpy(np.load(f"{d}/{name}.npy"))
        assert theirs.shape == ours.shape, (name, theirs.shape, ours.shape)
        diff = (theirs - ours).abs().max().item()
        scale = ours.abs().max().item()
        print(f"{name}: shape {tuple(ours.shape)}, max |diff| {diff:.3g}, max |value| {scale:.3g}")
        assert diff <= 1e-4 * max(scale, 1.0), f"{name} differs"
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
