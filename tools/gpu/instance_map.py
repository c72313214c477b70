"""Writes a full-size (2048x1024) Cityscapes-style instanceIds PNG for timing `advent detect
eval` on full-size frames (../shared/data's only labelled frame is 256x128): road everywhere,
six cars (26000-26005) and four persons (24000-24003) as rectangles. 16-bit grayscale, written
with the standard library alone (the development venv has no image library).

    python3 tools/gpu/instance_map.py OUT.png
"""
import struct
import sys
import zlib
from array import array

W, H = 2048, 1024
ROAD = 7
BOXES = [(100 + 300 * k, 520, 340 + 300 * k, 700, 26000 + k) for k in range(6)] + [
    (160 + 480 * k, 380, 220 + 480 * k, 560, 24000 + k) for k in range(4)
]


def rows():
    for y in range(H):
        row = array("H", [ROAD]) * W
        for x0, y0, x1, y1, ident in BOXES:
            if y0 <= y < y1:
                row[x0:x1] = array("H", [ident]) * (x1 - x0)
        row.byteswap()  # PNG stores 16-bit samples big-endian
        yield b"\x00" + row.tobytes()


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def main(path):
    header = struct.pack(">IIBBBBB", W, H, 16, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows()), 6))
    with open(path, "wb") as f:
        f.write(png + chunk(b"IEND", b""))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
