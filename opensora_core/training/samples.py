"""The training CSV and the metadata of its files (torch-free; PyAV for probing).

The CSV follows upstream's ``VariableVideoTextDataset``: one row per video or image with at least
``path`` and ``text``; ``num_frames``, ``height``, ``width`` and ``fps`` may be given (any other
columns are kept but unused). Relative paths are relative to the CSV's folder. Missing metadata is
read from the file with PyAV and cached (keyed by path, size and modification time), so a second
run probes nothing. Files that do not exist or cannot be opened are skipped and counted, never a
crash: ``load_samples`` returns them in its report.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clusterkit.errors import UserError

from ..geometry import IMG_FPS

REQUIRED_COLUMNS = ("path", "text")
METADATA_COLUMNS = ("num_frames", "height", "width", "fps")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
#: Upstream's fps when a video does not say.
DEFAULT_FPS = 24.0
PROBE_CACHE_VERSION = 1


@dataclass(frozen=True)
class Sample:
    """One usable row: a file whose size is known."""

    path: str
    text: str
    num_frames: int
    height: int
    width: int
    fps: float
    is_image: bool
    row: int
    """Line of the CSV (1 = the header), for messages."""


@dataclass
class LoadReport:
    """What ``load_samples`` did; ``skipped`` lists (row, path, reason) of every row left out."""

    rows: int = 0
    probed: int = 0
    cached: int = 0
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    def summary(self) -> str:
        kept = self.rows - len(self.skipped)
        text = f"{kept}/{self.rows} rows usable ({self.probed} probed, {self.cached} from the probe cache)"
        if self.skipped:
            shown = "; ".join(f"row {row} {path}: {why}" for row, path, why in self.skipped[:3])
            more = f" (+{len(self.skipped) - 3} more)" if len(self.skipped) > 3 else ""
            text += f"; skipped {len(self.skipped)}: {shown}{more}"
        return text

    def to_dict(self) -> dict:
        return {**asdict(self), "skipped": [list(s) for s in self.skipped]}


def is_image_path(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def default_probe_cache(csv_path: Path, fallback_dir: Path) -> Path:
    """``<csv>.probe.json`` beside the CSV when that folder is writable, else in ``fallback_dir``."""
    beside = csv_path.with_name(csv_path.name + ".probe.json")
    return beside if os.access(csv_path.parent, os.W_OK) else fallback_dir / beside.name


def load_samples(csv_path: str | Path, *, cache_path: Path | None = None) -> tuple[list[Sample], LoadReport]:
    """Read the CSV, fill missing metadata by probing (with the cache) and return the usable rows.

    A missing CSV, a missing required column or a malformed metadata value (e.g. ``num_frames`` of
    "abc") is a ``UserError`` naming the file, row and column; a missing or unreadable media file
    only skips its row.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise UserError(f"data CSV {str(csv_path)!r} does not exist",
                        hint="pass --data CSV with columns path,text[,num_frames,height,width,fps]")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise UserError(
                f"{csv_path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                f"the header has {', '.join(columns) if columns else 'no columns'}",
                hint="the CSV needs path and text; num_frames, height, width and fps are probed when absent")
        rows = list(reader)
    cache = ProbeCache(cache_path) if cache_path else None
    report = LoadReport(rows=len(rows))
    samples: list[Sample] = []
    for number, row in enumerate(rows, start=2):
        raw_path = (row.get("path") or "").strip()
        if not raw_path:
            report.skipped.append((number, "", "empty path"))
            continue
        path = Path(raw_path).expanduser()
        if not path.is_absolute():
            path = csv_path.parent / path
        path = path.resolve()
        given = {name: _number(row.get(name), name, csv_path, number) for name in METADATA_COLUMNS}
        image = is_image_path(str(path))
        if not path.is_file():
            report.skipped.append((number, str(path), "file does not exist"))
            continue
        if image:
            given["num_frames"] = 1
            given["fps"] = IMG_FPS
        if any(given[name] is None for name in ("num_frames", "height", "width")) or given["fps"] is None:
            probed = cache.get(path) if cache else None
            if probed is None:
                probed = probe_file(path)
                report.probed += 1
                if cache:
                    cache.put(path, probed)
            else:
                report.cached += 1
            if probed.get("error"):
                report.skipped.append((number, str(path), f"unreadable: {probed['error']}"))
                continue
            given = {name: given[name] if given[name] is not None else probed[name] for name in METADATA_COLUMNS}
        frames, height, width = int(given["num_frames"]), int(given["height"]), int(given["width"])
        if frames < 1 or height < 1 or width < 1:
            report.skipped.append((number, str(path), f"empty media ({frames} frames of {width}x{height})"))
            continue
        samples.append(Sample(path=str(path), text=row.get("text") or "", num_frames=frames, height=height,
                              width=width, fps=float(given["fps"] or DEFAULT_FPS), is_image=image, row=number))
    if cache:
        cache.save()
    return samples, report


def probe_file(path: Path) -> dict:
    """{num_frames, height, width, fps} of a video or image read with PyAV, or {"error": why}."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return {"error": "no video stream"}
            stream = container.streams.video[0]
            height, width = stream.codec_context.height, stream.codec_context.width
            rate = stream.average_rate or stream.guessed_rate
            frames = stream.frames
            if not frames:  # the container does not say: count the packets that carry a frame
                frames = sum(1 for packet in container.demux(stream) if packet.size)
    except (av.FFmpegError, OSError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if not height or not width:
        return {"error": "no frame size in the stream header"}
    return {"num_frames": int(frames), "height": int(height), "width": int(width),
            "fps": float(rate) if rate else DEFAULT_FPS}


class ProbeCache:
    """{absolute path: probed metadata} in one JSON file, valid while size and mtime are unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") == PROBE_CACHE_VERSION:
                self.entries = data.get("files", {})
        except (FileNotFoundError, ValueError, AttributeError):
            pass  # no cache or a damaged one: probe again

    @staticmethod
    def _stamp(path: Path) -> list[int]:
        stat = path.stat()
        return [stat.st_size, stat.st_mtime_ns]

    def get(self, path: Path) -> dict | None:
        entry = self.entries.get(str(path))
        if entry and entry.get("stamp") == self._stamp(path):
            return entry["meta"]
        return None

    def put(self, path: Path, meta: dict) -> None:
        self.entries[str(path)] = {"stamp": self._stamp(path), "meta": meta}
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        from clusterkit.launch.records import atomic_write_json

        try:
            atomic_write_json(self.path, {"version": PROBE_CACHE_VERSION, "files": self.entries})
        except OSError:
            pass  # a read-only place: the cache is an optimisation, probing again is correct
        self.dirty = False


def _number(value, column: str, csv_path: Path, row: int) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{csv_path} row {row}: {column} {value!r} is not a number",
                        hint=f"fix the value or leave {column} empty to have it probed") from None
    if column != "fps" and number != int(number):
        raise UserError(f"{csv_path} row {row}: {column} {value!r} must be a whole number")
    return number
