"""Reference timing of SSD-300's source-only training step and forward pass in PyTorch, beside
`advent bench --task detection` (BENCHMARKS.md). The ADVENT detection code was never released
(SPEC §8.4); it is built on amdegroot/ssd.pytorch, so the reference is ssd.pytorch's step:
its network (tools/parity/ssd_reference.py, parity-tested against ours), its MultiBoxLoss
(tools/fixtures/make_detection_fixtures.py, the fixture of our loss), and train.py's SGD
(learning rate 1e-3, momentum 0.9, weight decay 5e-4), 8 classes and the background, random
300x300 inputs. Two ways of giving the loss its targets:

  ssd.pytorch  boxes per image, matched to the 8732 default boxes inside the loss, image by
               image, as ssd.pytorch's MultiBoxLoss does on every step (`--objects` random
               boxes per image);
  prematched   targets matched beforehand, drawn as advent's bench draws them (about 2 % of
               the default boxes positive, random location targets): the work of advent's
               step, whose loader threads match each frame while the device trains.

Prints one JSON line per configuration (median and minimum step in ms, images/s, peak GiB on
CUDA). Examples:
    .venv/bin/python tools/bench/ssd_reference.py --device cpu --batch 4 --iters 5 --warmup 2
    python3 tools/bench/ssd_reference.py --device cuda --batch 32 --iters 10 --warmup 3
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'parity'))
sys.path.insert(0, os.path.join(HERE, '..', 'fixtures'))
from ssd_reference import SSD  # noqa: E402
from make_detection_fixtures import (NUM_CLASSES, VOC, match_targets, multibox_loss_of_targets,  # noqa: E402
                                     prior_box)


def sync(dev):
    if dev.startswith('cuda'):
        torch.cuda.synchronize()


def random_boxes(n, objects, dev, g):
    """`objects` boxes per image (relative corners, sides 0.05 to 0.4) with 0-based labels."""
    out = []
    for _ in range(n):
        centre = torch.rand(objects, 2, generator=g) * 0.8 + 0.1
        side = torch.rand(objects, 2, generator=g) * 0.35 + 0.05
        boxes = torch.cat([(centre - side / 2).clamp(0, 1), (centre + side / 2).clamp(0, 1)], 1)
        labels = torch.randint(0, NUM_CLASSES - 1, (objects, 1), generator=g).float()
        out.append(torch.cat([boxes, labels], 1).to(dev))
    return out


def timed(step, iters, warmup, dev):
    for _ in range(warmup):
        step()
    sync(dev)
    if dev.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        sync(dev)
        ts.append(time.perf_counter() - t)
    ts.sort()
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.startswith('cuda') else None
    return 1e3 * ts[len(ts) // 2], 1e3 * ts[0], peak


def train(mode, batch, iters, warmup, objects, dev, dtype):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = SSD(NUM_CLASSES).to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    priors = prior_box(VOC).to(dev)
    x = torch.randn(batch, 3, 300, 300, device=dev) * 50
    p = priors.size(0)
    boxes = loc_t = conf_t = None
    if mode == 'ssd.pytorch':
        boxes = random_boxes(batch, objects, dev, g)
    else:
        loc_t = torch.randn(batch, p, 4, device=dev)
        positive = torch.rand(batch, p, device=dev) < 0.02
        conf_t = torch.randint(1, NUM_CLASSES, (batch, p), device=dev) * positive
    positives = []

    def step():
        nonlocal loc_t, conf_t
        opt.zero_grad()
        loc, conf = net(x)
        if mode == 'ssd.pytorch':
            loc_t, conf_t = match_targets(loc, priors, boxes)
        loss_l, loss_c, _, _, pos, _, _ = multibox_loss_of_targets(loc, conf, loc_t, conf_t, with_gaps=False)
        (loss_l + loss_c).backward()
        opt.step()
        if not positives:
            positives.append(float(pos.float().mean()))

    median, low, peak = timed(step, iters, warmup, dev)
    return {'what': f'detect-train-ssd300-source_only-{mode}', 'dtype': dtype, 'batch': batch,
            'median_ms': round(median, 1), 'min_ms': round(low, 1), 'images_per_s': round(1e3 * batch / median, 1),
            'peak_gib': peak, 'positive_fraction': round(positives[0], 4),
            **({'objects': objects} if mode == 'ssd.pytorch' else {})}


def infer(batch, iters, warmup, dev, dtype):
    torch.manual_seed(0)
    net = SSD(NUM_CLASSES).to(dev).eval()
    x = torch.randn(batch, 3, 300, 300, device=dev)

    def step():
        with torch.no_grad():
            net(x)

    median, low, peak = timed(step, iters, warmup, dev)
    return {'what': f'detect-eval-ssd300-batch{batch}', 'dtype': dtype, 'median_ms': round(median, 1),
            'min_ms': round(low, 1), 'images_per_s': round(1e3 * batch / median, 1), 'peak_gib': peak}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--iters', type=int, default=10)
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--objects', type=int, default=16, help='boxes per image in the ssd.pytorch mode')
    ap.add_argument('--modes', default='ssd.pytorch,prematched')
    ap.add_argument('--precision', default='tf32', choices=['tf32', 'fp32'], help='tf32 applies on CUDA only')
    ap.add_argument('--threads', type=int, default=0, help='CPU threads (0: torch default)')
    ap.add_argument('--no-infer', action='store_true', help='skip the forward-pass timing')
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    gpu = a.device.startswith('cuda')
    dtype = a.precision if gpu else 'fp32'
    torch.backends.cudnn.benchmark = True  # as ssd.pytorch's train.py
    torch.backends.cudnn.allow_tf32 = dtype == 'tf32'
    torch.backends.cuda.matmul.allow_tf32 = dtype == 'tf32'
    print(json.dumps({'torch': torch.__version__, 'device': torch.cuda.get_device_name(0) if gpu else 'cpu',
                      'threads': torch.get_num_threads()}), flush=True)
    for mode in a.modes.split(','):
        if mode not in ('ssd.pytorch', 'prematched'):
            ap.error(f'--modes: unknown {mode!r} (ssd.pytorch, prematched)')
        print(json.dumps(train(mode, a.batch, a.iters, a.warmup, a.objects, a.device, dtype)), flush=True)
    if not a.no_infer:
        print(json.dumps(infer(a.batch, a.iters, a.warmup, a.device, dtype)), flush=True)


if __name__ == '__main__':
    main()
