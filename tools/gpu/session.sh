#!/bin/bash
# The device session of BENCHMARKS.md's GPU section, as one script: correctness first, then
# timing, each step bounded. Run from the repository root on the GPU machine with, in
# .gpu/: `advent` (the release binary built on the development machine, stripped),
# `cuda_tests` (the crates/advent/tests/cuda.rs test binary: cargo test --release -p advent
# --test cuda --no-run), torch_reference.py (../shared/bench), tiny_init.pth (a demo
# source-only checkpoint) and cpu_metrics.jsonl (the CPU run of the tracking command below).
# Results go to $OUT.
set -u
TORCH_LIB=$(python3 -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
export LD_LIBRARY_PATH=$TORCH_LIB:${LD_LIBRARY_PATH:-}
A=.gpu/advent
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== parity on CUDA"
timeout 150 .gpu/cuda_tests --ignored --nocapture --test-threads 1 2>&1 | grep -E "^cuda|test result|panicked" | tee "$OUT/parity.txt"

echo "== 200 AdvEnt iterations from a trained init, CUDA against the CPU"
for p in fp32 tf32; do
  timeout 60 $A train --config configs/demo.toml --set train.method=advent --set model.init=.gpu/tiny_init.pth \
    --set train.early_stop=199 --set train.max_iters=4000 --set train.save_every=100000 --set train.precision=$p \
    --set train.tensorboard=false --run-dir /tmp/track_$p --device cuda 2>&1 | tail -1
  bound=$([ $p = fp32 ] && echo 2e-2 || echo 5e-2)
  python3 tools/gpu/compare_losses.py .gpu/cpu_metrics.jsonl /tmp/track_$p/metrics.jsonl --bound $bound | tee "$OUT/track_$p.txt"
done

echo "== advent bench"
B="$A bench --device cuda --iters 15 --warmup 4"
timeout 40 $B --precision tf32 --what eval,advent --json "$OUT/tf32.jsonl"
timeout 50 $B --precision tf32 --channels-last --what advent,minent,source_only --json "$OUT/tf32_cl.jsonl"
timeout 30 $B --precision tf32 --cuda-graph --what eval --json "$OUT/tf32_graph.jsonl"
timeout 40 $B --precision bf16 --what eval,advent --json "$OUT/bf16.jsonl"
timeout 50 $B --precision bf16 --channels-last --what eval,advent,minent,source_only --json "$OUT/bf16_cl.jsonl"
timeout 30 $B --precision bf16 --channels-last --cuda-graph --what eval --json "$OUT/bf16_cl_graph.jsonl"
timeout 60 $A bench --device cuda --task detection --what eval,source_only,advent --batch 32 --iters 10 --warmup 3 \
  --json "$OUT/detection.jsonl"

echo "== the PyTorch reference, same card, same session"
timeout 120 python3 .gpu/torch_reference.py --precisions tf32,bf16 --iters 15 --warmup 4 2>&1 | tee "$OUT/torch.jsonl"
timeout 60 python3 tools/gpu/graph_probe.py .gpu 2>&1 | tee "$OUT/graph_probe.jsonl"
