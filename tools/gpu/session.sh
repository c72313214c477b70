#!/bin/bash
# The device session of BENCHMARKS.md's GPU section: steps, most wanted first, run within a
# time budget in one call (the device gives 15 minutes a session, start-up included, and 10
# minutes a command):
#
#   BUDGET=540 bash tools/gpu/session.sh all      # every step that fits in 540 s, in order
#   bash tools/gpu/session.sh STEP...             # named steps (no budget unless BUDGET is set)
#
# Steps (about how long each took or is expected to take on an H200):
#   tests      the CUDA tests of the new options (graph with gradients held and freed, upsampling
#              by products, folded/fused evaluation, classifier padding, evaluation graph)
#   round1     the AdvEnt step beside the reference, tf32 channels-last graphed: the last
#              session's configuration and every candidate at once (round2: again)
#   evalcore   evaluation, tf32: graphed, folded/fused, channels-last, batches of 4, bf16
#   track      200 AdvEnt iterations on CUDA (tf32, eager and graphed) against the CPU run
#   singles    each training change alone; limit0: the autotuner timing every algorithm
#   (all: tests round1 evalcore track singles round2 evalcli train predict evalmore limit0
#   profile dilation)
#   evalcli    advent eval end to end; predict: advent predict end to end; train: advent train
#   evalmore   the remaining evaluation variants; profile: the reference's step under the
#              profiler; dilation: tools/gpu/dilation_probe.py
# A step runs only if its estimate fits in what is left of BUDGET, and its commands' timeouts
# are cut to the time left. Results go to /tmp/res as they come, with steps.txt (each step's
# wall time, or why it was skipped), and are packed after every step into $OUT/results.tgz
# (the device returns at most 8 files), so a cut run still returns what it measured.
# Run from the repository root on the GPU machine with, in .gpu/: `advent` (the release binary
# built on the development machine, stripped), `cuda_tests` (the crates/advent/tests/cuda.rs
# test binary), torch_reference.py (../shared/bench), tiny_init.pth (a demo source-only
# checkpoint), cpu_metrics.jsonl (the CPU run of the tracking command below) and cs/ (the
# Cityscapes frames of ../shared/data, val included); `bash tools/gpu/prepare.sh` makes all of
# it on the development machine (a fresh checkout has no .gpu/). Afterwards, here:
# `mkdir r && tar xzf results.tgz -C r && python3 tools/gpu/summarize.py r`.
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
#  4. the discriminators' 19-channel input zero-padded to 32 channels (`--d-pad 32`; the
#     same results, tested on the CPU), a count cuDNN's tensor-core kernels take whole:
#     expected 0 to -1 ms (the first discriminator layer is ~77 GFLOP per step: ~1.5 ms if
#     cuDNN runs 19 channels without tensor cores, ~0.3 ms with them);
#  4b. the segmentation classifiers' 19 output channels zero-padded to 24 (`--aspp-pad 24`;
#     the same logits and gradients, tested on the CPU), a count tf32 (4) and bf16 (8)
#     tensor-core kernels take whole: expected 0 to -5 ms per AdvEnt step (the eight ASPP
#     convolutions, 2048 and 1024 -> 19 channels, dilated 3x3, are ~290 GFLOP of the step's
#     ~6 TFLOP; if cuDNN runs 19 output channels off the tensor cores they cost ~5x their
#     share), 0 to -0.5 ms per evaluation (~35 GFLOP);
#  5. cuDNN's autotuner timing every algorithm (`--cudnn-benchmark-limit 0`, PyTorch's
#     default 10): expected 0 to -3 % (the heuristics' top 10 may miss the fastest kernel
#     for the dilated convolutions), a longer first iteration;
#  6. tf32 channels-last step, graphed, against the reference, twice (the 0.75x margin):
#     the last session's configuration, and every candidate above at once;
#  7. where the reference's tf32 channels-last step spends its GPU time (the next speed work);
#  8. evaluation with the batch norms folded into the convolutions (`--fold-bn on`) and with
#     cuDNN's fused convolution + bias (+ residual) + ReLU (`--fold-bn fused`): parity with
#     the fixture and the graph's labels (CUDA tests), then tf32 and bf16 timings, graphed,
#     both layouts, beside the reference's evaluation in the same run. Expected before
#     measuring: `on` about 0 (libtorch adds a convolution's bias in a pass of its own, which
#     takes the batch norm's place; only the allocations of ReLU and addition go); `fused`
#     -2 to -3 ms in tf32: at 1024x512 the batch-norm, ReLU and residual passes move ~11 GB
#     per image (tools/bench/resnet_counts.py), ~3 ms at the H200's bandwidth, and fused
#     into the convolutions' epilogue only the residual reads remain (~1.2 GB); so 9.8 ms
#     graphed -> 7-8 ms, at or near the 1.5x goal (7.2 ms against the reference's 10.8);
#     channels-last tf32 evaluation (16 ms eager last time, against 10.6 contiguous, with its
#     eval-mode batch norms) may then gain as the training step did (-10 to -20 %).
#     Evaluation now skips the aux classifier it does not use (the reference runs it): 1.6 %
#     of the forward pass's arithmetic, 0.1 to 0.3 ms, in every advent eval figure.
#  9. evaluation in batches (`--batch 2|4`): expected -10 to -25 % per image in tf32. At batch
#     1, 1024x512, layers 3 and 4 work on 64x128 = 8192 positions: a 1x1 or 3x3 convolution
#     with 256 output channels is an 8192 x 256 product, 128 tiles of 128x128 for the H200's
#     132 SMs, under one wave for most of ResNet-101's 23 layer3 blocks; four images fill four
#     waves. bf16 (4.9 ms graphed) less, its kernels are shorter but equally starved;
#  10. `advent eval` end to end on the GPU (not only the network): loading, the network,
#     scoring and the prediction files now run as a pipeline (scoring threads count the
#     confusion pairs and write the PNGs while the network runs the next batch). Before, the
#     host's ~3.5 ms per 2048x1024 image (label bytes, the pair counts) and, with
#     --save-predictions, ~12 ms of PNG encoding ran between the GPU's passes (examples/
#     host_costs.rs, on the development VM): expected
#     images/s end to end within 10 % of the bench figure (was ~25 % under without
#     predictions, ~2x under with them);
#  11. `advent predict` end to end: readers and writers around the network, softmax, argmax
#     and entropy on the GPU, the 160 MB of probabilities no longer brought back unless
#     --save-prob. Before: ~10 ms of network and over 100 ms of host work in series per
#     2048x1024 output (reading and resizing ~35 ms, three PNGs ~45 ms, examples/
#     host_costs.rs; the host's argmax), ~10 images/s; expected 80-200 images/s, bound by
#     the readers or the writers (~35 and ~45 ms an image) over 4 or 8 threads.
#  11b. `advent train` end to end at the paper's sizes with PNG files (train): the
#     workers decode and resize a source and a target frame per iteration (~20-35 ms each on
#     one core of the development VM) while the step runs; expected within 5 % of the
#     bench's graphed channels-last step (~77 ms on the H200), i.e. the loading hidden.
#  12. (singles) whether cuDNN runs the dilated 3x3 convolutions of layers 3 and 4 slower
#     than plain ones of the same arithmetic (tools/gpu/dilation_probe.py: the same
#     convolution on the feature map rearranged space-to-batch, exact). Expected: no gain
#     (on the CPU the rearranged one is 0-15 % slower); a stage run rearranged would be worth
#     building only if the plain convolution were clearly faster.
set -u
TORCH_LIB=$(python3 -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
export LD_LIBRARY_PATH=$TORCH_LIB:${LD_LIBRARY_PATH:-}
A=${ADVENT_BIN:-.gpu/advent}
DEV=${DEVICE:-cuda}  # DEVICE=cpu: a smoke run of the commands on the development machine
CG=--cuda-graph CGT=true  # the end-to-end steps' CUDA graphs (none on the CPU)
[ "$DEV" = cuda ] || CG= CGT=false
PACK=${OUT:-/tmp/out}
OUT=/tmp/res
mkdir -p "$OUT" "$PACK"
START=$(date +%s)
DEADLINE=$((START + ${BUDGET:-100000}))
[ $# -gt 0 ] || { echo "usage: [BUDGET=seconds] $0 all|STEP..." >&2; exit 2; }

pack() {
  tar czf "$PACK/results.tgz.part" -C "$OUT" . && mv "$PACK/results.tgz.part" "$PACK/results.tgz"
}
left() { echo $((DEADLINE - $(date +%s))); }
# T SECONDS: a command's timeout, cut to the time left (at least 1: timeout 0 would not bound it).
# TMAX caps every timeout (a smoke run: DEVICE=cpu TMAX=20).
T() {
  local l
  l=$(left)
  [ "$l" -gt "${TMAX:-100000}" ] && l=${TMAX:-100000}
  [ "$l" -lt "$1" ] && { [ "$l" -ge 1 ] && echo "$l" || echo 1; } || echo "$1"
}

# --- steps -------------------------------------------------------------------------------

step_tests() {
  timeout "$(T 200)" .gpu/cuda_tests --ignored --nocapture --test-threads 1 cuda_graph_training matmul_upsampling \
    folded_evaluation cuda_graph_evaluation classifier_padding 2>&1 \
    | grep -E "cuda |update differs|test result|panicked|warning:|^test " | tee "$OUT/parity.txt"
}

step_track() {
  for g in true false; do
    rm -rf /tmp/track_$g
    timeout "$(T 90)" $A train --config configs/demo.toml --set train.method=advent --set model.init=.gpu/tiny_init.pth \
      --set train.early_stop=199 --set train.max_iters=4000 --set train.save_every=100000 --set train.precision=tf32 \
      --set train.tensorboard=false --set train.cuda_graph=$g --run-dir /tmp/track_$g --device $DEV 2>&1 | tail -2 \
      | tee "$OUT/track_$g.log"
    cp /tmp/track_$g/metrics.jsonl "$OUT/track_${g}_metrics.jsonl"
    python3 tools/gpu/compare_losses.py .gpu/cpu_metrics.jsonl /tmp/track_$g/metrics.jsonl \
      --bound-first 4e-4 --bound-median 1.1e-2 --bound-window 2e-2 --bound 0.19 | tee "$OUT/track_$g.txt"
  done
}

B="$A bench --device $DEV --iters 15 --warmup 4 --what advent"
round() {
  local r=$1
  timeout "$(T 60)" $B --precision tf32 --channels-last --cuda-graph --json "$OUT/r${r}_tf32_cl_graph_held.jsonl"
  timeout "$(T 90)" $B --precision tf32 --channels-last --cuda-graph --graph-grads freed --upsampling matmul \
    --d-pad 32 --aspp-pad 24 --cudnn-benchmark-limit 0 --json "$OUT/r${r}_tf32_cl_graph_all.jsonl"
  timeout "$(T 70)" python3 .gpu/torch_reference.py --precisions tf32 --modes advent --iters 15 --warmup 4 2>&1 \
    | grep -E "train|eval" | tee "$OUT/r${r}_torch_tf32.jsonl"
}
step_round1() { round 1; }
step_round2() { round 2; }

# ev NAME BENCH-ARGS...: evaluation (1024x512 in, 2048x1024 argmax out); the reference's tf32
# evaluation is in the rounds' r*_torch_tf32.jsonl.
ev() {
  local name=$1
  shift
  timeout "$(T 40)" $A bench --device $DEV --iters 30 --warmup 5 --what eval "$@" --json "$OUT/eval_$name.jsonl"
}
step_evalcore() {
  ev tf32_graph_off --precision tf32 --cuda-graph
  ev tf32_graph_fused --precision tf32 --cuda-graph --fold-bn fused
  ev tf32_cl_graph_fused --precision tf32 --channels-last --cuda-graph --fold-bn fused
  ev tf32_graph_fused_b4 --precision tf32 --cuda-graph --fold-bn fused --batch 4
  ev tf32_cl_graph_fused_b4 --precision tf32 --channels-last --cuda-graph --fold-bn fused --batch 4
  ev tf32_graph_off_b4 --precision tf32 --cuda-graph --batch 4
  ev bf16_cl_graph_fused --precision bf16 --channels-last --cuda-graph --fold-bn fused
}
step_evalmore() {
  ev tf32_cl_graph_off --precision tf32 --channels-last --cuda-graph
  ev bf16_cl_graph_off --precision bf16 --channels-last --cuda-graph
  ev bf16_cl_graph_fused_b4 --precision bf16 --channels-last --cuda-graph --fold-bn fused --batch 4
  ev tf32_graph_fused_b2 --precision tf32 --cuda-graph --fold-bn fused --batch 2
  ev tf32_cl_graph_fused_b2 --precision tf32 --channels-last --cuda-graph --fold-bn fused --batch 2
  ev tf32_graph_on --precision tf32 --cuda-graph --fold-bn on
  ev tf32_cl_graph_on --precision tf32 --channels-last --cuda-graph --fold-bn on
  ev tf32_cl_eager_fused --precision tf32 --channels-last --fold-bn fused
  ev tf32_cl_graph_fused_aspp24 --precision tf32 --channels-last --cuda-graph --fold-bn fused --aspp-pad 24
}

step_singles() {
  timeout "$(T 50)" $B --precision tf32 --channels-last --cuda-graph --graph-grads freed --json "$OUT/tf32_cl_graph_freed.jsonl"
  timeout "$(T 50)" $B --precision tf32 --channels-last --cuda-graph --upsampling matmul --json "$OUT/tf32_cl_graph_matmul.jsonl"
  timeout "$(T 50)" $B --precision tf32 --channels-last --cuda-graph --aspp-pad 24 --json "$OUT/tf32_cl_graph_aspp24.jsonl"
  timeout "$(T 50)" $B --precision tf32 --channels-last --cuda-graph --d-pad 32 --json "$OUT/tf32_cl_graph_dpad32.jsonl"
  timeout "$(T 50)" $B --precision bf16 --channels-last --cuda-graph --graph-grads freed --json "$OUT/bf16_cl_graph_freed.jsonl"
}
step_limit0() {
  timeout "$(T 90)" $B --precision tf32 --channels-last --cuda-graph --cudnn-benchmark-limit 0 \
    --json "$OUT/tf32_cl_graph_limit0.jsonl"
}
step_profile() {
  timeout "$(T 90)" python3 tools/gpu/profile_reference.py .gpu --channels-last --precision tf32 > "$OUT/profile_tf32_cl.txt" 2>&1
  grep -v Warning "$OUT/profile_tf32_cl.txt" | head -60
}
step_dilation() {
  timeout "$(T 90)" python3 -u tools/gpu/dilation_probe.py 2>&1 | tee "$OUT/dilation_probe.txt"
}

# A DeepLab-V2 R101 in the reference's keys (reference_nets.py's random initialisation), made
# on the device once: the network of the end-to-end steps.
r101() {
  [ -f /tmp/r101.pth ] && return
  python3 -c "import sys, types; sys.path.insert(0, 'tools/fixtures'); import torch
try: import numpy  # reference_nets.py needs it only for its fixture fills, not used here
except ImportError: sys.modules['numpy'] = types.ModuleType('numpy')
from reference_nets import ResNetMulti
torch.manual_seed(0); torch.save(ResNetMulti((3, 4, 23, 3), 19, True).state_dict(), '/tmp/r101.pth')"
}
# timed FILE LABEL COUNT UNIT SECONDS COMMAND...: runs the command (timeout cut to the time
# left) and appends "LABEL: COUNT UNIT in T ms" (with advent eval's own "evaluated ..." line) to
# $OUT/FILE, or "LABEL: COUNT UNIT FAILED" and the command's last line, which summarize.py
# leaves out.
timed() {
  local file=$1 label=$2 n=$3 unit=$4 secs=$5
  shift 5
  local t0 own
  t0=$(date +%s%N)
  if timeout "$(T "$secs")" "$@" > /tmp/timed.out 2>&1; then
    own=$(grep -o 'evaluated .*' /tmp/timed.out)
    echo "$label: $n $unit in $(( ($(date +%s%N) - t0) / 1000000 )) ms${own:+; $own}" | tee -a "$OUT/$file"
  else
    echo "$label: $n $unit FAILED: $(tail -1 /tmp/timed.out)" | tee -a "$OUT/$file"
  fi
}
# A full-size (2048x1024) image under the val frame's name, so that loading costs what a real
# Cityscapes val image costs (the val frame of ../shared/data is 256x128, as is its label,
# which the scorers resize to the 2048x1024 output).
F=/tmp/csfull
full_frame() {
  mkdir -p $F/leftImg8bit/val/frankfurt $F/gtFine/val
  cp .gpu/cs/leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png \
    $F/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png
  cp -r .gpu/cs/gtFine/val/frankfurt $F/gtFine/val/
}
# advent eval end to end (loading, network, scoring): R101, tf32, graphed, the frame listed 40
# and 440 times: images/s = 400 / the difference.
step_evalcli() {
  r101
  full_frame
  for n in 40 440; do
    for i in $(seq $n); do echo frankfurt/frankfurt_000000_000294_leftImg8bit.png; done > /tmp/list_$n.txt
  done
  local EV="$A eval --device $DEV --checkpoint /tmp/r101.pth --dataset cityscapes --root $F --precision tf32 $CG"
  for opts in "--batch 4 --fold-bn fused" "--batch 1" "--batch 1 --save-predictions /tmp/preds"; do
    for n in 40 440; do
      # shellcheck disable=SC2086
      timed eval_cli.txt "$opts" $n images 45 $EV --workers 8 $opts --list /tmp/list_$n.txt
    done
  done
}
# advent predict end to end (readers, network, writers), the frame copied 30 and 150 times,
# 1024x512 in, 2048x1024 out, tf32: images/s = 120 / the difference.
step_predict() {
  r101
  full_frame
  for n in 30 150; do
    mkdir -p /tmp/pin_$n
    for i in $(seq $n); do cp $F/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png /tmp/pin_$n/f$i.png; done
    rm -rf /tmp/pout_$n
    timed predict_cli.txt "predict --workers 8" $n images 50 $A predict --device $DEV --checkpoint /tmp/r101.pth \
      --input /tmp/pin_$n --output /tmp/pout_$n --input-size 1024x512 --output-size 2048x1024 --workers 8
  done
}
# advent train end to end (PNG loading on the workers, the step, metrics, TensorBoard, one
# checkpoint), AdvEnt R101 tf32 channels-last graphed, 20 and 80 iterations: ms/iteration = the
# difference / 60. A GTA5 layout of the four 2048x1024 train frames (a GTA5 frame is 1914x1052)
# with the val frame's 256x128 label ids as every label, the Cityscapes train frames as target.
step_train() {
  r101
  local G=/tmp/gta k=0
  mkdir -p $G/images $G/labels
  for f in .gpu/cs/leftImg8bit/train/*/*_leftImg8bit.png; do
    k=$((k + 1))
    cp "$f" $G/images/0000$k.png
    cp .gpu/cs/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png $G/labels/0000$k.png
  done
  for n in 20 80; do
    rm -rf /tmp/train_$n
    timed train_cli.txt train $n iterations 150 $A train --config configs/gta2cityscapes_advent.toml \
      --set model.init=/tmp/r101.pth --set source.root=$G --set target.root=.gpu/cs --set train.early_stop=$n \
      --set train.save_every=100000 --set train.channels_last=true --set train.cuda_graph=$CGT \
      --run-dir /tmp/train_$n --device $DEV
  done
}

# --- the plan ------------------------------------------------------------------------------

# Each step's estimate in seconds: it starts only if that much is left.
declare -A EST=([tests]=150 [round1]=150 [evalcore]=120 [track]=60 [round2]=150 [singles]=150 [evalcli]=120
  [train]=120 [predict]=60 [evalmore]=150 [limit0]=60 [profile]=60 [dilation]=60)
if [ "$1" = all ]; then
  set -- tests round1 evalcore track singles round2 evalcli train predict evalmore limit0 profile dilation
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
for s in "$@"; do
  [ -n "${EST[$s]:-}" ] || { echo "unknown step $s" >&2; exit 2; }
  if [ "$(left)" -lt "${EST[$s]}" ]; then
    echo "$s: skipped, $(left) s left of the budget, estimate ${EST[$s]} s" | tee -a "$OUT/steps.txt"
    continue
  fi
  echo "== $s ($(left) s left)"
  t0=$(date +%s)
  "step_$s"
  echo "$s: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/steps.txt"
  pack
done
pack
echo "== done in $(( $(date +%s) - START )) s"
