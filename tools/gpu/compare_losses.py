"""Compares the losses of two runs of `advent train` (their metrics.jsonl), iteration by
iteration: the relative difference |b - a| / max(|a|, 1e-3) per loss, at a few iterations,
its maximum and median, and the largest relative difference of the losses' means over
windows of --window iterations (which averages out the chaotic part of the divergence and
keeps any drift). Each --bound-* given is checked (exit 1 if any is exceeded):

    python3 tools/gpu/compare_losses.py cpu/metrics.jsonl gpu/metrics.jsonl \\
        --bound-first 4e-4 --bound-median 1.1e-2 --bound-window 2e-2 --bound 0.19

--bound-first: iteration 0 (any loss); --bound-median: each loss's median; --bound-window:
any window mean; --bound: any single iteration. BENCHMARKS.md derives the tf32 bounds from
`advent train --emulate-tf32` runs on the CPU.
"""
import argparse
import json
import sys

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("a")
ap.add_argument("b")
ap.add_argument("--bound", type=float, default=None, help="largest single-iteration difference")
ap.add_argument("--bound-first", type=float, default=None, help="largest difference at iteration 0")
ap.add_argument("--bound-median", type=float, default=None, help="largest per-loss median")
ap.add_argument("--bound-window", type=float, default=None, help="largest difference of window means")
ap.add_argument("--window", type=int, default=20)
args = ap.parse_args()
a = [json.loads(line) for line in open(args.a)]
b = [json.loads(line) for line in open(args.b)]
if len(a) != len(b):
    sys.exit(f"{len(a)} iterations in {args.a}, {len(b)} in {args.b}")
if not a:
    sys.exit(f"no iterations in {args.a}")


def rel(x, y):
    return abs(y - x) / max(abs(x), 1e-3)


names = [k for k in a[0] if k.startswith("loss_")]
worst = {"first": 0.0, "median": 0.0, "window": 0.0, "max": 0.0}
for k in names:
    r = [rel(x[k], y[k]) for x, y in zip(a, b)]
    w = args.window
    windows = [
        rel(sum(x[k] for x in a[s : s + w]) / len(a[s : s + w]), sum(y[k] for y in b[s : s + w]) / len(b[s : s + w]))
        for s in range(0, len(a), w)
    ]
    median = sorted(r)[len(r) // 2]
    at = ", ".join(f"{i} {r[i]:.2e}" for i in (0, 10, 50) if i < len(r))
    print(
        f"{k}: relative difference at iteration {at}, last {r[-1]:.2e}; max {max(r):.2e}, median {median:.2e}; "
        f"{w}-iteration means {max(windows):.2e}"
    )
    for key, v in (("first", r[0]), ("median", median), ("window", max(windows)), ("max", max(r))):
        worst[key] = max(worst[key], v)
bounds = {"first": args.bound_first, "median": args.bound_median, "window": args.bound_window, "max": args.bound}
ok = True
for key, bound in bounds.items():
    if bound is not None:
        within = worst[key] <= bound
        ok &= within
        print(f"largest ({key}) {worst[key]:.2e}, bound {bound:.1e}: {'within' if within else 'EXCEEDED'}")
sys.exit(0 if ok else 1)
