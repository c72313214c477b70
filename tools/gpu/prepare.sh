#!/bin/bash
# Prepares .gpu/ (git-excluded) for tools/gpu/session.sh on the development machine: what a
# device session carries (`carry: [".gpu"]`, about 26 MB). A fresh checkout has no .gpu/, and
# device minutes are too few to spend on building there (the GPU machine has no Rust).
#   .gpu/advent, .gpu/cuda_tests  stripped release binaries of the working tree
#   .gpu/torch_reference.py       the reference measurement script (../shared/bench)
#   .gpu/tiny_init.pth            a demo source-only checkpoint (advent demo --quick's pretraining)
#   .gpu/cpu_metrics.jsonl        the CPU run of session.sh's 200-iteration tracking command
#   .gpu/cs/                      the Cityscapes frames of ../shared/data (val included)
# Usage: bash tools/gpu/prepare.sh   (from the repository root; about 5-10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/env.sh
SHARED=${ADVENT_SHARED:-../shared}
mkdir -p .gpu
grep -qx '.gpu/' .git/info/exclude 2>/dev/null || echo '.gpu/' >> .git/info/exclude

echo "prepare: building the release binary and the CUDA test binary" >&2
cargo build --release -p advent-cli
tests=$(cargo test --release -p advent --test cuda --no-run --message-format=json \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])' | tail -n 1)
[ -x "$tests" ] || { echo "prepare: no CUDA test binary found" >&2; exit 1; }
strip -o .gpu/advent target/release/advent
strip -o .gpu/cuda_tests "$tests"

cp "$SHARED/bench/torch_reference.py" .gpu/
rm -rf .gpu/cs && cp -r "$SHARED/data/cityscapes-mini" .gpu/cs

echo "prepare: a demo source-only checkpoint (advent demo --quick's pretraining)" >&2
demo=$(mktemp -d)
target/release/advent demo --quick --out "$demo/demo" > /dev/null
init=$(ls -d "$demo"/demo/runs/seed*/pretrain/checkpoints/iter_* | tail -n 1)/model.pth
cp "$init" .gpu/tiny_init.pth

echo "prepare: the CPU run of the tracking command (200 AdvEnt iterations, fp32)" >&2
target/release/advent train --config configs/demo.toml --set train.method=advent --set model.init=.gpu/tiny_init.pth \
  --set train.early_stop=199 --set train.max_iters=4000 --set train.save_every=100000 \
  --set train.tensorboard=false --run-dir "$demo/track" --device cpu > /dev/null
cp "$demo/track/metrics.jsonl" .gpu/cpu_metrics.jsonl
rm -rf "$demo"
du -sh .gpu
