#!/usr/bin/env python3
"""GTA5 loading speed of the reference pipeline (PIL + numpy), for comparison with
`advent`'s loader (the `bench_gta5_loading` test in crates/advent/tests/datasets.rs).

    python tools/bench/gta5_loading.py make DIR [--count 8]
        writes DIR/images/NNNNN.png (1914x1052 RGB, photo-like content) and
        DIR/labels/NNNNN.png (1914x1052 palette PNGs of Cityscapes label ids), GTA5's layout;
    python tools/bench/gta5_loading.py time DIR [--n 40] [--workers 0 1 2]
        times loading them as ADVENT's GTA5DataSet does (base_dataset.py, gta5.py):
        Image.open().convert('RGB').resize((1280, 720), BICUBIC) -> float32 -> BGR - mean ->
        CHW; label Image.open().resize((1280, 720), NEAREST) -> float32 -> id to train id
        with the reference's loop. Workers 0: in this process. Workers > 0: torch's
        DataLoader (batch 1, as the reference trains) when torch is importable, else a
        multiprocessing pool.

Needs pillow and numpy (torch optional). Prints images/s.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

IMG_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)
ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
SIZE = (1280, 720)
NATIVE = (1914, 1052)


def make(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    palette = list(rng.integers(0, 256, 256 * 3, dtype=np.uint8))
    w, h = NATIVE
    for i in range(1, count + 1):
        # Coarse regions of label ids, each with its own colour, smooth shading and
        # sensor-like noise: compresses about as well as a rendered frame.
        grid = rng.integers(0, 34, (22, 40), dtype=np.uint8)
        ids = np.asarray(Image.fromarray(grid).resize((w, h), Image.NEAREST))
        colours = rng.integers(0, 256, (34, 3)).astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        shade = 40 * np.sin(xx / 97.0 + i) * np.cos(yy / 61.0)
        img = colours[ids] + shade[..., None] + rng.normal(0, 3, (h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(
            root / "images" / f"{i:05d}.png")
        lab = Image.fromarray(ids, "P")
        lab.putpalette(palette)
        lab.save(root / "labels" / f"{i:05d}.png")
    sizes = [os.path.getsize(p) for p in (root / "images").glob("*.png")]
    print(f"wrote {count} frames to {root}, images {np.mean(sizes) / 1e6:.2f} MB each")


def load(root: Path, name: str):
    image = Image.open(root / "images" / name).convert("RGB").resize(SIZE, Image.BICUBIC)
    label = Image.open(root / "labels" / name).resize(SIZE, Image.NEAREST)
    image = np.asarray(image, np.float32)
    label = np.asarray(label, np.float32)
    label_copy = 255 * np.ones(label.shape, dtype=np.float32)
    for k, v in ID_TO_TRAINID.items():
        label_copy[label == k] = v
    image = image[:, :, ::-1] - IMG_MEAN
    image = image.transpose((2, 0, 1))
    return image.copy(), label_copy.copy()


class Frames:
    """An indexable list of the frames, repeated to `n` items (as the reference repeats)."""

    def __init__(self, root: Path, n: int):
        self.root = root
        names = sorted(p.name for p in (root / "images").glob("*.png"))
        self.names = [names[i % len(names)] for i in range(n)]

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        return load(self.root, self.names[i])


def _pool_load(args):
    root, name = args
    return load(root, name)


def time_loading(root: Path, n: int, workers: int) -> None:
    frames = Frames(root, n + 1)
    how = "in-process"
    if workers == 0:
        items = (frames[i] for i in range(len(frames)))
    else:
        try:
            import torch  # noqa: F401
            from torch.utils.data import DataLoader
            items = iter(DataLoader(frames, batch_size=1, shuffle=True, num_workers=workers,
                                    pin_memory=False))
            how = f"torch DataLoader {torch.__version__}"
        except ImportError:
            import multiprocessing as mp
            pool = mp.Pool(workers)
            items = pool.imap(_pool_load, [(root, nm) for nm in frames.names])
            how = "multiprocessing.Pool"
    next(items)  # warm-up (and worker start)
    t = time.perf_counter()
    for _ in range(n):
        image, label = next(items)
        assert tuple(image.shape)[-3:] == (3, 720, 1280) and tuple(label.shape)[-2:] == (720, 1280)
    s = time.perf_counter() - t
    print(f"PIL+numpy GTA5 1914x1052 PNG -> 1280x720 arrays (image + label), {workers} "
          f"worker(s), {how}: {n / s:.1f} images/s ({1e3 * s / n:.1f} ms/image)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("root", type=Path)
    m.add_argument("--count", type=int, default=8)
    t = sub.add_parser("time")
    t.add_argument("root", type=Path)
    t.add_argument("--n", type=int, default=40)
    t.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    if a.cmd == "make":
        make(a.root, a.count)
    else:
        import PIL
        print(f"pillow {PIL.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs")
        for w in a.workers:
            time_loading(a.root, a.n, w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
