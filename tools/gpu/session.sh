#!/bin/bash
# The device session of BENCHMARKS.md's GPU section, as one script: correctness first, then
# timing, each step bounded. Run from the repository root on the GPU machine with, in
# .gpu/: `advent` (the release binary built on the development machine, stripped),
# `cuda_tests` (the crates/advent/tests/cuda.rs test binary: cargo test --release -p advent
# --test cuda --no-run), torch_reference.py (../shared/bench), tiny_init.pth (a demo
# source-only checkpoint) and cpu_metrics.jsonl (the CPU run of the tracking command below).
# Results go to $OUT. Session of 2026-11-27 (run 1; runs 2 and 3 repeated its bench and
# reference lines): the CUDA graph of the training step.
set -u
TORCH_LIB=$(python3 -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
export LD_LIBRARY_PATH=$TORCH_LIB:${LD_LIBRARY_PATH:-}
A=.gpu/advent
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== correctness on CUDA: the graphed training step against the eager one, the speed options"
timeout 150 .gpu/cuda_tests --ignored --nocapture --test-threads 1 cuda_graph speed_options 2>&1 \
  | grep -E "cuda |update differs|test result|panicked" | tee "$OUT/parity.txt"

echo "== 200 AdvEnt iterations from a trained init (demo scale), CUDA tf32 eager and graphed, against the CPU"
for g in false true; do
  timeout 90 $A train --config configs/demo.toml --set train.method=advent --set model.init=.gpu/tiny_init.pth \
    --set train.early_stop=199 --set train.max_iters=4000 --set train.save_every=100000 --set train.precision=tf32 \
    --set train.tensorboard=false --set train.cuda_graph=$g --run-dir /tmp/track_$g --device cuda 2>&1 | tail -2 \
    | tee "$OUT/track_$g.log"
  python3 tools/gpu/compare_losses.py .gpu/cpu_metrics.jsonl /tmp/track_$g/metrics.jsonl --bound 5e-2 \
    | tee "$OUT/track_$g.txt"
done

echo "== advent bench: eager against graphed, same process settings"
B="$A bench --device cuda --iters 15 --warmup 4"
timeout 60 $B --precision tf32 --channels-last --what advent --json "$OUT/tf32_cl.jsonl"
timeout 60 $B --precision tf32 --channels-last --cuda-graph --what advent,minent,source_only --json "$OUT/tf32_cl_graph.jsonl"
timeout 50 $B --precision bf16 --what advent --json "$OUT/bf16.jsonl"
timeout 50 $B --precision bf16 --cuda-graph --what advent --json "$OUT/bf16_graph.jsonl"
timeout 50 $B --precision bf16 --channels-last --cuda-graph --what advent --json "$OUT/bf16_cl_graph.jsonl"
timeout 50 $B --precision tf32 --cuda-graph --what advent --json "$OUT/tf32_graph.jsonl"

echo "== the PyTorch reference, same card, same session"
timeout 100 python3 .gpu/torch_reference.py --precisions tf32,bf16 --modes advent --iters 15 --warmup 4 2>&1 \
  | tee "$OUT/torch.jsonl"
echo "== done"
