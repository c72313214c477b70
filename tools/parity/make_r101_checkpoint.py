"""Parity check of `advent predict` against the reference pipeline, on a full DeepLab-V2
ResNet-101 checkpoint in both PyTorch file formats.

Writes into OUTDIR:
  model_zip.pth      state dict, PyTorch's zip format (torch >= 1.6, what users get today)
  model_legacy.pth   the same, legacy format (_use_new_zipfile_serialization=False, as
                     PyTorch 0.4.1 wrote the released ADVENT checkpoints)
  cases.json         the prediction cases (image, input size, output size)
  ref_<case>_prob.npy, ref_<case>_entropy.npy
                     the reference pipeline's softmax probabilities (C x H x W) and
                     normalised entropy (H x W): PIL open -> convert('RGB') -> resize BICUBIC
                     -> float32 -> RGB to BGR -> minus IMG_MEAN -> model.eval() -> main head ->
                     bilinear upsampling, align_corners=True -> softmax -> prob_2_entropy summed.

The weights are not a trained model (none can be downloaded here) but are made to behave like
one: He-initialised convolutions, BatchNorm running statistics calibrated by train-mode
passes over real frames, so that predictions are confident and varied.

Usage: .venv/bin/python tools/parity/make_r101_checkpoint.py OUTDIR [SHARED_DATA]
then:  ADVENT_PARITY_DIR=OUTDIR scripts/test --test official_checkpoint -- --ignored
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'fixtures'))
from reference_nets import ResNetMulti, self_information

IMG_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)


def preprocess(path, size):
    img = Image.open(path).convert('RGB')
    if size is not None:
        img = img.resize(size, Image.BICUBIC)
    x = np.asarray(img, np.float32)[:, :, ::-1] - IMG_MEAN
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


def main():
    out = sys.argv[1]
    data = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared', 'data')
    cs = os.path.abspath(os.path.join(data, 'cityscapes-mini'))
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(1234)
    torch.set_num_threads(os.cpu_count())
    net = ResNetMulti((3, 4, 23, 3), 19, True)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            if m.out_channels == 19:
                m.weight.data.normal_(0, 0.01)
            else:
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    train = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(cs, 'leftImg8bit', 'train')) for f in fs)
    net.train()
    with torch.no_grad():
        for i in range(12):
            x = preprocess(train[i % len(train)], (256, 128))
            net(x + torch.randn_like(x) * 10)
    net.eval()
    sd = net.state_dict()
    torch.save(sd, os.path.join(out, 'model_zip.pth'))
    torch.save(sd, os.path.join(out, 'model_legacy.pth'), _use_new_zipfile_serialization=False)

    val = os.path.join(cs, 'leftImg8bit', 'val', 'frankfurt', 'frankfurt_000000_000294_leftImg8bit.png')
    cases = [
        {'name': 'val_up', 'image': val, 'input_size': [512, 256], 'output_size': [1024, 512]},
        {'name': 'train_paper', 'image': train[0], 'input_size': [1024, 512], 'output_size': [2048, 1024]},
    ]
    for case in cases:
        x = preprocess(case['image'], tuple(case['input_size']))
        w, h = case['output_size']
        with torch.no_grad():
            logits = F.interpolate(net(x)[1], size=(h, w), mode='bilinear', align_corners=True)
            prob = F.softmax(logits, dim=1)
            ent = self_information(prob).sum(1)
        np.save(os.path.join(out, f"ref_{case['name']}_prob.npy"), prob[0].numpy())
        np.save(os.path.join(out, f"ref_{case['name']}_entropy.npy"), ent[0].numpy())
        p = prob[0]
        print(case['name'], 'max prob mean %.3f' % float(p.max(0)[0].mean()), 'entropy mean %.3f' % float(ent.mean()),
              'classes present', int(p.argmax(0).unique().numel()))
    with open(os.path.join(out, 'cases.json'), 'w') as f:
        json.dump(cases, f, indent=1)


if __name__ == '__main__':
    main()
