"""Checks that TensorBoard shows each step of a resumed run once (run by hand, not in CI).

A resumed run writes a new event file that starts with `SessionLog { status: START }` at the
first iteration it trains; TensorBoard's EventAccumulator then drops the events of the earlier,
interrupted file from that step on. Usage, in a venv with `pip install tensorboard`:

    advent train --config C --run-dir R --set train.early_stop=20
    advent train --resume R/checkpoints/iter_000016 --set train.early_stop=20
    python tools/parity/tensorboard_restart.py R

Checked with TensorBoard 2.21.0 (2026-11-26): 21 steps, each once, equal to metrics.jsonl.
"""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator as ea

run = sys.argv[1]
acc = ea.EventAccumulator(f"{run}/tensorboard", purge_orphaned_data=True, size_guidance={ea.SCALARS: 0})
acc.Reload()
events = acc.Scalars("loss_seg_src_main")
steps = [e.step for e in events]
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
assert steps == [r["iter"] for r in rows], f"steps {steps} != metrics.jsonl's"
assert all(abs(e.value - r["loss_seg_src_main"]) < 1e-6 for e, r in zip(events, rows))
print(f"ok: {len(steps)} steps, each once, equal to metrics.jsonl")
