"""Compares the losses of two runs of `advent train` (their metrics.jsonl), iteration by
iteration: the relative difference |b - a| / max(|a|, 1e-3) per loss, at a few iterations,
its maximum and median. With --bound, exits 1 if any loss's maximum exceeds it.

    python3 tools/gpu/compare_losses.py cpu/metrics.jsonl gpu/metrics.jsonl --bound 2e-2
"""
import argparse
import json
import sys

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("a")
ap.add_argument("b")
ap.add_argument("--bound", type=float, default=None)
args = ap.parse_args()
a = [json.loads(line) for line in open(args.a)]
b = [json.loads(line) for line in open(args.b)]
if len(a) != len(b):
    sys.exit(f"{len(a)} iterations in {args.a}, {len(b)} in {args.b}")
rel = {}
for x, y in zip(a, b):
    for k, v in x.items():
        if k.startswith("loss_"):
            rel.setdefault(k, []).append(abs(y[k] - v) / max(abs(v), 1e-3))
worst = 0.0
for k, r in rel.items():
    at = ", ".join(f"{i} {r[i]:.2e}" for i in (0, 10, 50) if i < len(r))
    print(f"{k}: relative difference at iteration {at}, last {r[-1]:.2e}; max {max(r):.2e}, median {sorted(r)[len(r) // 2]:.2e}")
    worst = max(worst, max(r))
if args.bound is not None:
    print(f"largest {worst:.2e}, bound {args.bound:.1e}: {'within' if worst <= args.bound else 'EXCEEDED'}")
    sys.exit(0 if worst <= args.bound else 1)
