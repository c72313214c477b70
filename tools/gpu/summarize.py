"""The ratios of a device session, from what tools/gpu/session.sh wrote to its $OUT folder, for
BENCHMARKS.md: each advent figure beside the reference's from the same run.

    python3 tools/gpu/summarize.py OUT_FOLDER

timing: per round, the AdvEnt step (median, minimum, peak memory) of each advent
configuration against the reference's tf32 step of that round, and every evaluation figure
against the reference's tf32 evaluation (the median of the rounds' figures); goals: step
<= 0.75x, evaluation >= 1.5x, peak memory <= the reference's. correctness: the CUDA tests'
summary and the tracking checks. pipeline: images/s end to end from the two list lengths
(the difference cancels start-up; a rerun's lines replace the earlier ones). singles: each training change against the graphed
held-gradient step of the timing rounds, when those are in the same folder.
"""
import json
import re
import statistics
import sys
from pathlib import Path


def lines(path):
    """The JSON objects of a file, one per line (other lines skipped)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def first(path, **match):
    for obj in lines(path) if path.is_file() else []:
        if all(str(obj.get(k, "")).startswith(v) for k, v in match.items()):
            return obj
    return None


def table(header, rows, cells):
    """A markdown table: each row's name, then `cells(result)`, or "(no result)"."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, result in rows:
        values = cells(result) if result else ["(no result)"] + [""] * (len(header) - 2)
        print("| " + " | ".join(str(v) for v in [name, *values]) + " |")


def main(out):
    gpu = sorted(out.glob("gpu*.txt"))
    if gpu:
        print("card:", gpu[0].read_text().strip())
    steps = out / "steps.txt"
    if steps.is_file():
        print("steps:", "; ".join(steps.read_text().strip().splitlines()))

    parity = out / "parity.txt"
    if parity.is_file():
        print("\n## correctness")
        for line in parity.read_text().splitlines():
            if "test result" in line or "panicked" in line or "FAILED" in line:
                print(" ", line.strip())
        for g in ["false", "true"]:
            t = out / f"track_{g}.txt"
            if t.is_file():
                text = t.read_text().strip().splitlines()
                print(f"  tracking, cuda_graph={g}: " + (text[-1] if text else "(empty)"))

    rounds = sorted({int(m.group(1)) for p in out.glob("r*_torch_tf32.jsonl") if (m := re.match(r"r(\d+)_", p.name))})
    ref_eval = []
    held = []
    if rounds:
        print("\n## AdvEnt step, tf32 (goal: <= 0.75x the reference's time, peak memory <= the reference's)")
        print("| round | configuration | median ms | min ms | peak GiB | reference median ms | ratio | peak vs reference |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rounds:
            ref = first(out / f"r{r}_torch_tf32.jsonl", what="train-advent")
            ev = first(out / f"r{r}_torch_tf32.jsonl", what="eval")
            if ev:
                ref_eval.append(ev["images_per_s"])
            for name in ["held", "all", "freed_matmul"]:
                a = first(out / f"r{r}_tf32_cl_graph_{name}.jsonl")
                if not (a and ref):
                    continue
                if name == "held":
                    held.append(a["median_ms"])
                ratio = a["median_ms"] / ref["median_ms"]
                peak = "n/a"
                if a.get("peak_gib") is not None and ref.get("peak_gib") is not None:
                    peak = f"{a['peak_gib'] - ref['peak_gib']:+.2f} GiB"
                print(f"| {r} | {name} | {a['median_ms']} | {a['min_ms']} | {a.get('peak_gib')} | {ref['median_ms']} "
                      f"| **{ratio:.3f}x** | {peak} |")

    evals = sorted(out.glob("eval_*.jsonl"))
    if evals:
        ref = statistics.median(ref_eval) if ref_eval else None
        print(f"\n## evaluation, 1024x512 in, 2048x1024 out (goal: >= 1.5x the reference's tf32 images/s; "
              f"reference: {ref_eval} images/s, median {ref})")
        table(["configuration", "ms per pass", "images/s", "vs reference"], [(p.stem[5:], first(p)) for p in evals],
              lambda a: [a["median_ms"], a["images_per_s"], f"**{a['images_per_s'] / ref:.2f}x**" if ref else ""])

    singles = [p for p in sorted(out.glob("*_cl_graph_*.jsonl")) if not p.name.startswith(("r", "eval_"))]
    if singles:
        base = statistics.median(held) if held else None
        print(f"\n## each change alone (against the held-gradient graphed tf32 step: {held} ms)")
        rows = [(p.stem, first(p)) for p in singles]
        table(["configuration", "median ms", "min ms", "peak GiB", "vs held"], rows,
              lambda a: [a["median_ms"], a["min_ms"], a.get("peak_gib"),
                         f"{a['median_ms'] / base:.3f}x" if base and a.get("precision") != "bf16" else ""])

    det = out / "detect_bench.jsonl"
    if det.is_file():
        print("\n## detection, SSD-300, batch 32, tf32 (H200 before the queued input path: source-only 53.3 ms, "
              "AdvEnt 106.4 ms)")
        table(["what", "median ms", "min ms", "images/s", "peak GiB"], [(a["what"], a) for a in lines(det)],
              lambda a: [a["median_ms"], a["min_ms"], a["images_per_s"], a.get("peak_gib")])

    ref = out / "detect_reference.jsonl"
    if ref.is_file():
        ours = {a["what"].split("-")[3 if a["what"].startswith("detect-train") else 1]: a
                for a in lines(det)} if det.is_file() else {}
        print("\n## detection beside ssd.pytorch's step (tools/bench/ssd_reference.py), same batch and precision")

        def against(a):
            mine = ours.get("eval" if a["what"].startswith("detect-eval") else "source_only")
            ratio = f"**{mine['median_ms'] / a['median_ms']:.2f}x**" if mine else ""
            return [a["median_ms"], a["min_ms"], a["images_per_s"], a.get("peak_gib"),
                    mine["median_ms"] if mine else "", mine.get("peak_gib") if mine else "", ratio]

        table(["reference", "median ms", "min ms", "images/s", "peak GiB", "advent ms", "advent GiB",
               "advent / reference"], [(a["what"], a) for a in lines(ref) if "what" in a], against)

    for name in ["eval_cli.txt", "predict_cli.txt", "train_cli.txt", "detect_cli.txt"]:
        p = out / name
        if not p.is_file():
            continue
        print(f"\n## {name[:-8]} end to end: the long run's extra work over its extra time")
        runs = {}
        for line in p.read_text().splitlines():
            m = re.match(r"(.*?): (\d+) (images|iterations) in (\d+) ms", line)
            if m:
                runs.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = int(m.group(4))
        for (opts, unit), t in runs.items():
            if len(t) == 2:
                (n0, t0), (n1, t1) = sorted(t.items())
                if t1 <= t0:
                    rate = "n/a (the longer run took no longer)"
                elif unit == "iterations":
                    rate = f"{(t1 - t0) / (n1 - n0):.1f} ms/iteration"
                else:
                    rate = f"{(n1 - n0) / (t1 - t0) * 1e3:.1f} images/s"
                print(f"  {opts}: {n0} {unit} {t0} ms, {n1} {unit} {t1} ms: {rate}")
            else:
                print(f"  {opts}: {t} (incomplete)")

    dil = out / "dilation_probe.txt"
    if dil.is_file():
        print("\n## dilation probe\n" + dil.read_text().rstrip())


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
