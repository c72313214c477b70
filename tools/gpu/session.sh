#!/bin/bash
# The device session of BENCHMARKS.md's GPU section, as one script: correctness first, then
# timing, each step bounded (about 9 minutes in all on an H200). Run from the repository root
# on the GPU machine with, in .gpu/: `advent` (the release binary built on the development
# machine, stripped), `cuda_tests` (the crates/advent/tests/cuda.rs test binary: cargo test
# --release -p advent --test cuda --no-run), torch_reference.py (../shared/bench),
# tiny_init.pth (a demo source-only checkpoint) and cpu_metrics.jsonl (the CPU run of the
# tracking command below). Results go to $OUT.
#
# Prepared for the next device session (written 2026-11-27 without a GPU):
#  1. the graph of the training step with its gradients freed before the capture
#     (`--graph-grads freed`, GraphGrads::Freed): correctness (one step from one state, fp32
#     and bf16) and its peak memory against the held gradients and the reference;
#  2. the 200-iteration tf32 tracking against the CPU with the tolerances derived from
#     `advent train --emulate-tf32` (BENCHMARKS.md), the GPU's metrics kept;
#  3. the upsampling by products (`train.upsampling = "matmul"`, `--upsampling matmul`):
#     kernel against products timed at the paper's sizes, fixture parity, bit-identical
#     deterministic training; expected before measuring: -1 to -4 ms per AdvEnt step if the
#     kernel's atomic backward is as contended as measured elsewhere, +0.5 ms for the
#     float32 products of the forward passes;
#  4. the discriminators' 19-channel input zero-padded to 20 or 32 channels (`--d-pad`; the
#     same results, tested on the CPU), a count cuDNN's tensor-core kernels take whole:
#     expected 0 to -1 ms (the first discriminator layer is ~77 GFLOP per step: ~1.5 ms if
#     cuDNN runs 19 channels without tensor cores, ~0.3 ms with them);
#  5. cuDNN's autotuner timing every algorithm (`--cudnn-benchmark-limit 0`, PyTorch's
#     default 10): expected 0 to -3 % (the heuristics' top 10 may miss the fastest kernel
#     for the dilated convolutions), a longer first iteration;
#  6. tf32 channels-last step, graphed, against the reference, twice (the 0.75x margin):
#     the last session's configuration, and every candidate above at once;
#  7. where the reference's tf32 channels-last step spends its GPU time (the next speed work).
set -u
TORCH_LIB=$(python3 -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
export LD_LIBRARY_PATH=$TORCH_LIB:${LD_LIBRARY_PATH:-}
A=.gpu/advent
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== correctness on CUDA: the graphed training step against the eager one (gradients held and freed),"
echo "   the upsampling by products"
timeout 200 .gpu/cuda_tests --ignored --nocapture --test-threads 1 cuda_graph_training matmul_upsampling 2>&1 \
  | grep -E "cuda |update differs|test result|panicked" | tee "$OUT/parity.txt"

echo "== 200 AdvEnt iterations from a trained init (demo scale), CUDA tf32 eager and graphed, against the CPU"
for g in false true; do
  timeout 90 $A train --config configs/demo.toml --set train.method=advent --set model.init=.gpu/tiny_init.pth \
    --set train.early_stop=199 --set train.max_iters=4000 --set train.save_every=100000 --set train.precision=tf32 \
    --set train.tensorboard=false --set train.cuda_graph=$g --run-dir /tmp/track_$g --device cuda 2>&1 | tail -2 \
    | tee "$OUT/track_$g.log"
  cp /tmp/track_$g/metrics.jsonl "$OUT/track_${g}_metrics.jsonl"
  python3 tools/gpu/compare_losses.py .gpu/cpu_metrics.jsonl /tmp/track_$g/metrics.jsonl \
    --bound-first 4e-4 --bound-median 1.1e-2 --bound-window 2e-2 --bound 0.19 | tee "$OUT/track_$g.txt"
done

echo "== advent bench against the reference, AdvEnt, twice"
B="$A bench --device cuda --iters 15 --warmup 4 --what advent"
for r in 1 2; do
  timeout 60 $B --precision tf32 --channels-last --cuda-graph --json "$OUT/r${r}_tf32_cl_graph_held.jsonl"
  timeout 90 $B --precision tf32 --channels-last --cuda-graph --graph-grads freed --upsampling matmul --d-pad 32 \
    --cudnn-benchmark-limit 0 --json "$OUT/r${r}_tf32_cl_graph_all.jsonl"
  timeout 60 python3 .gpu/torch_reference.py --precisions tf32 --modes advent --iters 15 --warmup 4 2>&1 \
    | grep train | tee "$OUT/r${r}_torch_tf32.jsonl"
done
echo "== each change alone"
timeout 50 $B --precision tf32 --channels-last --cuda-graph --graph-grads freed --json "$OUT/tf32_cl_graph_freed.jsonl"
timeout 50 $B --precision tf32 --channels-last --cuda-graph --upsampling matmul --json "$OUT/tf32_cl_graph_matmul.jsonl"
timeout 50 $B --precision tf32 --channels-last --cuda-graph --d-pad 20 --json "$OUT/tf32_cl_graph_dpad20.jsonl"
timeout 50 $B --precision tf32 --channels-last --cuda-graph --d-pad 32 --json "$OUT/tf32_cl_graph_dpad32.jsonl"
timeout 90 $B --precision tf32 --channels-last --cuda-graph --cudnn-benchmark-limit 0 --json "$OUT/tf32_cl_graph_limit0.jsonl"
timeout 50 $B --precision bf16 --channels-last --cuda-graph --graph-grads freed --json "$OUT/bf16_cl_graph_freed.jsonl"

echo "== where the reference's tf32 channels-last step spends its GPU time"
timeout 120 python3 tools/gpu/profile_reference.py .gpu --channels-last --precision tf32 > "$OUT/profile_tf32_cl.txt" 2>&1
grep -v Warning "$OUT/profile_tf32_cl.txt" | head -60
echo "== done"
