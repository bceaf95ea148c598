"""A small synthetic dataset written with PyAV: moving colour patterns as h264 mp4s, PNG images and
the CSV that lists them. For trying the ``tiny`` preset, the tests and the benchmarks; no download.

    python -m opensora_core.training.synthetic DIR [--videos 8] [--frames 24] [--size 144x256]

writes ``DIR/data.csv`` (path, text only: the rest is probed) and the media next to it.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")


def pattern(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """[frames, height, width, 3] uint8: a colour gradient drifting by a seeded speed."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, size=3)
    speed = rng.uniform(1, 4, size=2)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        wave = np.sin((xs + speed[0] * t * 4) / 17.0) + np.cos((ys + speed[1] * t * 4) / 13.0)
        for c in range(3):
            out[t, :, :, c] = np.clip(base[c] + 60 * wave * (c + 1) / 3, 0, 255).astype(np.uint8)
    return out


def write_synthetic_dataset(
    folder: str | Path,
    *,
    videos: int = 8,
    frames: int = 24,
    size: tuple[int, int] = (144, 256),
    images: int = 0,
    corrupt: int = 0,
    missing: int = 0,
    fps: int = 24,
    seed: int = 0,
    metadata: bool = False,
) -> Path:
    """Write the media and ``folder/data.csv``; returns the CSV path.

    ``corrupt`` adds mp4 files holding random bytes, ``missing`` adds rows naming files that do not
    exist (both are skipped by the loader). With ``metadata`` the CSV also has num_frames, height,
    width and fps for the good files (no probing needed).
    """
    from opensora_core.inference.video_io import write_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    height, width = size
    rows = []
    for i in range(videos):
        name = f"video_{i:03d}.mp4"
        write_video(folder / name, pattern(frames, height, width, seed + i), fps=fps)
        rows.append({"path": name, "text": f"a {COLOURS[i % len(COLOURS)]} pattern drifting, clip {i}",
                     "num_frames": frames, "height": height, "width": width, "fps": fps})
    for i in range(images):
        name = f"image_{i:03d}.png"
        write_video(folder / name, pattern(1, height, width, seed + 1000 + i), fps=fps)
        rows.append({"path": name, "text": f"a still {COLOURS[i % len(COLOURS)]} pattern, image {i}",
                     "num_frames": 1, "height": height, "width": width, "fps": 120})
    rng = np.random.default_rng(seed + 7)
    for i in range(corrupt):
        name = f"corrupt_{i:03d}.mp4"
        (folder / name).write_bytes(rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes())
        rows.append({"path": name, "text": "a file that is not a video"})
    for i in range(missing):
        rows.append({"path": f"missing_{i:03d}.mp4", "text": "a file that does not exist"})
    columns = ["path", "text", *(["num_frames", "height", "width", "fps"] if metadata else [])]
    csv_path = folder / "data.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
    return csv_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opensora_core.training.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--images", type=int, default=0)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="144x256", help="HEIGHTxWIDTH (even numbers)")
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(argv)
    height, width = (int(v) for v in ns.size.lower().split("x"))
    path = write_synthetic_dataset(ns.folder, videos=ns.videos, images=ns.images, frames=ns.frames,
                                   size=(height, width), seed=ns.seed)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
