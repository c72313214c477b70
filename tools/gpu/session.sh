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
#              by products, folded/fused evaluation, classifier padding, evaluation graph,
#              queued copies to the host and queued predictions)
#   round1     the AdvEnt step beside the reference, tf32 channels-last graphed: gradients
#              held (the first measured configuration), every candidate at once, and the
#              defaults with the upsampling by products (round2: again)
#   evalcore   evaluation, tf32: graphed, folded/fused, channels-last, batches of 4, bf16
#   track      200 AdvEnt iterations on CUDA (tf32, eager and graphed) against the CPU run
#   singles    each training change alone; limit0: the autotuner timing every algorithm
#   detect     SSD-300 on CUDA: the bench's steps and advent detect train end to end
#   detectref  ssd.pytorch's source-only step and forward pass (tools/bench/ssd_reference.py)
#   (all: round1 train tests evalcli predict track detect detectref singles round2 evalcore
#   evalmore limit0 profile dilation)
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
# Measured in the second device session of 2026-11-27 (BENCHMARKS.md, "The candidates
# measured"): every item prepared before it. Prepared since, for the next device session:
#  1. upsampling by products without the broadcast copy of the width matrix (its first GPU
#     run peaked 0.13 GiB above the kernel's): steps round1/round2 ("all") and singles
#     (matmul). Expected: peak 7.29 -> ~7.16 GiB held, "all" 7.11 -> ~6.98 GiB (the
#     reference 7.06), time unchanged or -0.5 ms (one product instead of 90 small ones).
#  2. advent train end to end (step train): batches in page-locked memory from the loader
#     threads, copied to the device without waiting (the graph's inputs and the eager
#     step's), a batch of one no longer copied by the stacking, and the losses of iteration
#     i read once iteration i+1 is queued. Before: 87.5 ms/iteration against the bench's 80.0
#     (the pageable copies of ~25 MB and the read of the losses each made the host wait for
#     the device, which then idled while the host copied). Expected: within 2 % of the
#     bench step (79.5 ms with the gradients freed, now the default).
#  3. the bf16 folded evaluation's parity (step tests; the test's bound for the unfolded bf16
#     pass was too tight and stopped it last time), and the graph with freed gradients with
#     the entropy ranking and the class-ratio prior.
#  4. advent eval end to end with channels-last and 16 loader threads (step evalcli): last
#     time 118.8 images/s contiguous with 8 threads, the network alone 161 (contiguous) and
#     252 (channels-last) images/s in batches of 4.
#  5. queued copies to the host (native.rs HostCopy: a copy into page-locked memory and an
#     event, waited for later). advent eval (step evalcli): each batch stacked into
#     page-locked memory, copied in and launched without waiting, its train ids' copy back
#     queued behind it; the host waits for the previous batch only after queueing the next.
#     Before, between two passes the device waited for a pageable copy back (~8 MB) and a
#     pageable copy in (~25 MB) at batch 4. Expected: 118.8 -> 140-155 images/s (90-96 % of
#     the bench's 161) unless the loaders bound it (their bicubic resize is 2.6x faster since,
#     ~15 -> ~6 ms a frame on the EPYC's scale). advent predict (step predict): inputs
#     pinned by the reader threads, the pass and its copies queued, the writer threads wait.
#     Expected 85.8 -> 95-105 images/s. advent train (step train): the losses' copy queued
#     behind each step, so the lagged read no longer waits for the next step too: on top of
#     item 2, within 1 % of the bench step. Correctness: tests queued_host_copies_on_cuda,
#     queued_predictions_on_cuda_match_one_at_a_time, and the evaluation-graph tests.
#  6. detection without host waits (2026-11-28, step detect, expectations there): the
#     multibox loss by masks, advent detect train's boxes matched by the loader threads, its
#     batches page-locked and copied without waiting, advent detect eval reading ahead with queued passes. Correctness: tests
#     cuda_detection_batches_are_page_locked_and_queued, cuda_detection_evaluation_queued_
#     matches_one_at_a_time, cuda_detection_objective_matches_ssd_pytorch.
#  7. the detection step beside a reference (step detectref, expectations there): ssd.pytorch's
#     source-only step and forward pass at batch 32 (tools/bench/ssd_reference.py).
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
# Every timeout is `timeout -k 15`: advent train stops on SIGTERM only once its iteration and its
# checkpoint are done; what has not stopped 15 s after is killed.
T() {
  local l
  l=$(left)
  [ "$l" -gt "${TMAX:-100000}" ] && l=${TMAX:-100000}
  [ "$l" -lt "$1" ] && { [ "$l" -ge 1 ] && echo "$l" || echo 1; } || echo "$1"
}

# --- steps -------------------------------------------------------------------------------

step_tests() {
  timeout -k 15 "$(T 200)" .gpu/cuda_tests --ignored --nocapture --test-threads 1 cuda_graph_training matmul_upsampling \
    folded_evaluation cuda_graph_evaluation classifier_padding queued cuda_detection 2>&1 \
    | grep -E "cuda |update differs|queued|test result|panicked|warning:|^test " | tee "$OUT/parity.txt"
}

step_track() {
  for g in true false; do
    rm -rf /tmp/track_$g
    timeout -k 15 "$(T 90)" $A train --config configs/demo.toml --set train.method=advent --set model.init=.gpu/tiny_init.pth \
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
  timeout -k 15 "$(T 60)" $B --precision tf32 --channels-last --cuda-graph --graph-grads held \
    --json "$OUT/r${r}_tf32_cl_graph_held.jsonl"
  timeout -k 15 "$(T 90)" $B --precision tf32 --channels-last --cuda-graph --graph-grads freed --upsampling matmul \
    --d-pad 32 --aspp-pad 24 --cudnn-benchmark-limit 0 --json "$OUT/r${r}_tf32_cl_graph_all.jsonl"
  timeout -k 15 "$(T 60)" $B --precision tf32 --channels-last --cuda-graph --upsampling matmul \
    --json "$OUT/r${r}_tf32_cl_graph_freed_matmul.jsonl"
  timeout -k 15 "$(T 70)" python3 .gpu/torch_reference.py --precisions tf32 --modes advent --iters 15 --warmup 4 2>&1 \
    | grep -E "train|eval" | tee "$OUT/r${r}_torch_tf32.jsonl"
}
step_round1() { round 1; }
step_round2() { round 2; }

# ev NAME BENCH-ARGS...: evaluation (1024x512 in, 2048x1024 argmax out); the reference's tf32
# evaluation is in the rounds' r*_torch_tf32.jsonl.
ev() {
  local name=$1
  shift
  timeout -k 15 "$(T 40)" $A bench --device $DEV --iters 30 --warmup 5 --what eval "$@" --json "$OUT/eval_$name.jsonl"
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

# The single changes against the held gradients (the configuration they were first measured
# against), each alone.
step_singles() {
  timeout -k 15 "$(T 50)" $B --precision tf32 --channels-last --cuda-graph --graph-grads freed --json "$OUT/tf32_cl_graph_freed.jsonl"
  timeout -k 15 "$(T 50)" $B --precision tf32 --channels-last --cuda-graph --graph-grads held --upsampling matmul \
    --json "$OUT/tf32_cl_graph_matmul.jsonl"
  timeout -k 15 "$(T 50)" $B --precision tf32 --channels-last --cuda-graph --graph-grads held --aspp-pad 24 \
    --json "$OUT/tf32_cl_graph_aspp24.jsonl"
  timeout -k 15 "$(T 50)" $B --precision tf32 --channels-last --cuda-graph --graph-grads held --d-pad 32 \
    --json "$OUT/tf32_cl_graph_dpad32.jsonl"
  timeout -k 15 "$(T 50)" $B --precision bf16 --channels-last --cuda-graph --graph-grads freed --json "$OUT/bf16_cl_graph_freed.jsonl"
}
step_limit0() {
  timeout -k 15 "$(T 90)" $B --precision tf32 --channels-last --cuda-graph --graph-grads held --cudnn-benchmark-limit 0 \
    --json "$OUT/tf32_cl_graph_limit0.jsonl"
}
step_profile() {
  timeout -k 15 "$(T 90)" python3 tools/gpu/profile_reference.py .gpu --channels-last --precision tf32 > "$OUT/profile_tf32_cl.txt" 2>&1
  grep -v Warning "$OUT/profile_tf32_cl.txt" | head -60
}
step_dilation() {
  timeout -k 15 "$(T 90)" python3 -u tools/gpu/dilation_probe.py 2>&1 | tee "$OUT/dilation_probe.txt"
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
  if timeout -k 15 "$(T "$secs")" "$@" > /tmp/timed.out 2>&1; then
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
  for opts in "--batch 4 --fold-bn fused --channels-last --workers 16" "--batch 4 --fold-bn fused --workers 8" \
    "--batch 1 --workers 8" "--batch 1 --save-predictions /tmp/preds --workers 8"; do
    for n in 40 440; do
      # shellcheck disable=SC2086
      timed eval_cli.txt "$opts" $n images 45 $EV $opts --list /tmp/list_$n.txt
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
    rm -rf /tmp/pout_$n
    timed predict_cli.txt "predict --workers 8 --channels-last --fold-bn fused" $n images 50 $A predict \
      --device $DEV --checkpoint /tmp/r101.pth --input /tmp/pin_$n --output /tmp/pout_$n --input-size 1024x512 \
      --output-size 2048x1024 --workers 8 --channels-last --fold-bn fused
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

# Detection on CUDA (prepared on 2026-11-28): SSD-300 at full width, batches of 32 per domain,
# tf32. The bench's step (inputs on the device, the device waited for after each step; H200
# before: source-only 53.3 ms, AdvEnt 106.4 ms), then advent detect train end to end (AdvEnt on
# the built-in scenes with the bench's settings, the loader's 12 threads drawing and matching,
# one checkpoint), 20 and 80 iterations: ms/iteration = the difference / 60. Before, each step
# waited three times for the forward pass (the loss's masked_select) and copied ~76 MB of
# pageable batches with blocking copies, and each iteration's losses were read at once.
# Expected: the bench step -0.5 to -1 ms (the waits inside it); end to end within 3 % of the
# bench's AdvEnt step (the copies queued from page-locked memory, ~1.5 ms, and the losses read
# an iteration later), unless the loader threads bind it. Correctness: the tests step's
# cuda_detection tests. advent detect eval read each frame on the network's thread (~30 ms a
# 2048x1024 frame: PNG decoding 21 ms, preparation 9 ms on the EPYC) against a ~3 ms pass, and
# waited for each pass before decoding its boxes on the host; now frames are read ahead, in
# page-locked memory, and a frame's boxes are decoded while the next pass runs. Expected: with
# 12 threads >= 5x the images/s of --workers 0 (which keeps the queued passes).
step_detect() {
  timeout -k 15 "$(T 60)" $A bench --device $DEV --task detection --what eval,source_only,advent --batch 32 --iters 10 \
    --warmup 3 --json "$OUT/detect_bench.jsonl"
  for n in 20 80; do
    rm -rf /tmp/detect_$n
    timed detect_cli.txt "detect train advent, batch 32" $n iterations 90 $A detect train \
      --config configs/detection/demo.toml --set model.width=64 --set source.batch_size=32 \
      --set target.batch_size=32 --set train.method=advent --set train.discriminator_width=64 \
      --set train.clip_grad_norm=0 --set train.workers=12 --set train.max_iters=1000 --set train.early_stop=$n \
      --run-dir /tmp/detect_$n --device $DEV
  done
  # advent detect eval of that detector on a full-size frame (2048x1024, a train frame under the
  # val frame's name, with tools/gpu/instance_map.py's boxes) listed 20 and 100 times: frames
  # read on the network's thread (--workers 0, as before 2026-11-28) and by 12 threads ahead.
  local D=/tmp/csdet
  mkdir -p $D/leftImg8bit/val/frankfurt $D/gtFine/val/frankfurt
  cp .gpu/cs/leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png \
    $D/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png
  python3 tools/gpu/instance_map.py $D/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_instanceIds.png
  for n in 20 100; do
    for i in $(seq $n); do echo frankfurt/frankfurt_000000_000294_leftImg8bit.png; done > /tmp/dlist_$n.txt
  done
  for w in 0 12; do
    for n in 20 100; do
      timed detect_cli.txt "detect eval --workers $w" $n images 40 $A detect eval --device $DEV --dataset cityscapes \
        --root $D --list /tmp/dlist_$n.txt --workers $w --checkpoint /tmp/detect_20/checkpoints/iter_000020/model.pth
    done
  done
}

# The reference beside step detect's bench (prepared on 2026-11-28): ssd.pytorch's source-only
# step (its network and MultiBoxLoss, transcribed and parity-tested) at batch 32, tf32, its
# targets matched in the loss image by image as ssd.pytorch does, and matched beforehand (the
# work of advent's step, whose loader threads match); its forward pass. Expected: advent's
# source-only step (53.3 ms before) at or below the prematched reference's (same kernels; the
# fused SGD and the masks instead of masked_select), and well below ssd.pytorch's own, whose
# per-image matching makes the host wait for the device.
step_detectref() {
  timeout -k 15 "$(T 45)" python3 tools/bench/ssd_reference.py --device $DEV --batch 32 --iters 10 --warmup 3 2>&1 \
    | grep '^{' | tee "$OUT/detect_reference.jsonl"
}

# --- the plan ------------------------------------------------------------------------------

# Each step's estimate in seconds (its wall time on the H200 in the second device session of
# 2026-11-27, a little more): it starts only if that much is left.
declare -A EST=([tests]=130 [round1]=140 [evalcore]=40 [track]=30 [round2]=120 [singles]=95 [evalcli]=60
  [train]=45 [predict]=35 [evalmore]=35 [limit0]=50 [profile]=60 [dilation]=15 [detect]=80 [detectref]=25)
if [ "$1" = all ]; then
  set -- round1 train tests evalcli predict track detect detectref singles round2 evalcore evalmore limit0 profile dilation
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
