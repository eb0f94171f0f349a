"""Peak memory and time of each hostile input from issue #18, every case in a fresh process.

    .venv/bin/python tools/hostile_rss.py            # one line per case: outcome, peak RSS, seconds

Each case builds its hostile file (a real bomb: full compressed streams, not just a lying header),
then runs the avminer boundary on it in a child process and reports the child's peak RSS
(``ru_maxrss``) and wall time. The goal of #18: every case refused, peak RSS under 500 MB.
"""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, channels: int = 1) -> bytes:
    """A complete PNG of zeros: every row present, compressed (a 20000² grey one is ~400 KB)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width * channels + 1)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, {1: 0, 3: 2}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def build(tmp: Path) -> dict[str, str]:
    """case name -> Python code run in the child (``tmp`` holds the files)."""
    (tmp / "bomb.png").write_bytes(png_bomb(20000, 20000))
    with zipfile.ZipFile(tmp / "cvat-png.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labelmap.txt", "background:0,0,0::\nRoad:128,64,128::\n")
        zf.writestr("SegmentationClass/s0000.png", png_bomb(10000, 10000, 3))
    with zipfile.ZipFile(tmp / "cvat-zeros.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labelmap.txt", "background:0,0,0::\nRoad:128,64,128::\n")
        with zf.open("SegmentationClass/s0001.png", "w", force_zip64=True) as fh:
            block = b"\x00" * (1 << 20)
            for _ in range(1024):
                fh.write(block)
    (tmp / "ls.json").write_text(json.dumps([{"id": 1, "data": {"sample_id": "s"}, "annotations": [{"result": [
        {"type": "brushlabels", "original_width": 30000, "original_height": 30000,
         "value": {"format": "rle", "rle": [0, 0, 0, 1], "brushlabels": ["Road"]}}]}]}]))
    frame = ("from avminer.events.records import CameraFrame\n"
             "f = CameraFrame('v', 'c', 1, 'f', 640, 480, image=None, image_uri='file:///dev/zero')\n")
    return {
        "image_uri=file:///dev/zero": frame + "from avminer.config import DecodeSettings\n"
        "from avminer.mining.decode import image_bytes\nimage_bytes(f, limits=DecodeSettings(image_roots=['/dev']))",
        "PNG bomb 20000^2 frame": "from avminer.config import DecodeSettings\nfrom avminer.mining.decode import "
        f"decode_image\ndecode_image(open('{tmp}/bomb.png','rb').read(), DecodeSettings(), encoding='png')",
        "PNG bomb 20000^2 mask": "from avminer.labels.masks import validate_mask\n"
        f"validate_mask(open('{tmp}/bomb.png','rb').read(), 960, 720)",
        "mask_uri=file:///dev/zero": "from avminer.storage.local import LocalFrameStore\n"
        f"LocalFrameStore('{tmp}/out').get('file:///dev/zero')",
        "Label Studio 30000x30000": "from avminer.labels.labelstudio import results_from_export\n"
        f"r, p = results_from_export('{tmp}/ls.json')\nassert not r\nraise SystemExit(p[0])",
        "CVAT zip with a 10000^2 PNG": "from avminer.labels.cvat import results_from_zip\n"
        f"r, p = results_from_zip('{tmp}/cvat-png.zip')\nassert not r\nraise SystemExit(p[0])",
        "CVAT zip with 1 GB of zeros": "from avminer.labels.cvat import results_from_zip\n"
        f"r, p = results_from_zip('{tmp}/cvat-zeros.zip')\nassert not r\nraise SystemExit(p[0])",
    }


def main() -> int:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        cases = build(tmp)
        sizes = {p.name: p.stat().st_size for p in tmp.iterdir()}
        print("hostile files: " + ", ".join(f"{k} {v:,} B" for k, v in sorted(sizes.items())))
        for case, code in cases.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over children so far
            lines = (proc.stderr.strip().splitlines() or [""])[-1]
            print(f"{case:32s} rc={proc.returncode} peak_rss<={max(peak, before) / 1024:.0f} MB "
                  f"{seconds:.2f}s  {lines[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
