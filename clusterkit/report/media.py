"""The files of a report: each complete video hard-linked (or copied) into the report folder, and a
poster image per video, extracted with PyAV. PyAV is imported inside the functions: the CLI stays light.

A video is shown only when it is complete: its size equals the ``bytes`` its record states (sweeps),
PyAV decodes it to the end, and it has as many frames as its entry says. A partial or damaged file
(a copy cut short, a disk that filled up) becomes an "incomplete" tile that says why, and is not
copied: the report never plays half a video as if it were the result.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from clusterkit.report.gallery import INCOMPLETE, MISSING, OK, Tile
from clusterkit.report.sources import Column, Video

MEDIA = "media"


def place_column(column: Column, number: int, root: Path) -> list[Tile]:
    """Put the files of ``column`` under ``root/media/<NN>-<label>/``; one tile per video."""
    folder = Path(MEDIA) / f"{number + 1:02d}-{_slug(column.label)}"
    (root / folder).mkdir(parents=True, exist_ok=True)
    return [place_video(video, root, folder) for video in column.videos]


def place_video(video: Video, root: Path, folder: Path) -> Tile:
    """Check one video, then link or copy it into ``root/folder`` with a poster next to it; a tile
    saying why when the file is missing or incomplete (nothing is copied then)."""
    path = video.path
    if not path.is_file():
        return Tile(video, MISSING, detail=f"file missing on disk: {path}")
    expected_bytes = video.entry.get("bytes")
    size = path.stat().st_size
    if isinstance(expected_bytes, int) and size != expected_bytes:
        return Tile(video, INCOMPLETE, detail=f"{path.name} has {size} bytes, its record says {expected_bytes}: "
                                              "a partial or replaced file")
    try:
        probe = probe_video(path, _int_or_none(video.entry.get("frames")))
    except Exception as exc:  # noqa: BLE001 - PyAV raises many kinds; the tile says which
        return Tile(video, INCOMPLETE, detail=f"cannot decode {path.name} ({type(exc).__name__}: {exc}): "
                                              "a partial or damaged file")
    expected_frames = _int_or_none(video.entry.get("frames"))
    if expected_frames is not None and probe.frames < expected_frames:
        return Tile(video, INCOMPLETE, detail=f"{path.name} decodes to {probe.frames} of its {expected_frames} frames: "
                                              "a partial file")
    relative = folder / path.name
    link_or_copy(path, root / relative)
    if probe.frames == 1 and path.suffix.lower() == ".png":
        return Tile(video, OK, href=_href(relative))  # an image is its own poster
    poster = folder / f"{path.stem}.poster.png"
    write_png(probe.poster, root / poster)
    return Tile(video, OK, href=_href(relative), poster=_href(poster))


@dataclass(frozen=True)
class Probe:
    """What decoding a whole video found: its frame count and its poster frame (an ``av.VideoFrame``, rgb24)."""

    frames: int
    poster: object


def probe_video(path: Path, expected_frames: int | None = None) -> Probe:
    """Decode every frame of ``path`` (a partial file fails here or comes up short) and keep the
    middle one (of ``expected_frames`` when given, else of the count the container states, else the
    first) as the poster. ``ValueError`` when the file has no video frame."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream in the file")
        stream = container.streams.video[0]
        middle = (expected_frames or stream.frames or 0) // 2
        poster, count = None, 0
        for frame in container.decode(stream):
            if count == 0 or count == middle:
                poster = frame.reformat(format="rgb24")
            count += 1
    if poster is None:
        raise ValueError("no video frame in the file")
    return Probe(count, poster)


def write_png(image, dest: Path) -> None:
    """One rgb24 ``av.VideoFrame`` as a PNG file (PyAV's image2 muxer, no other image library)."""
    import av

    with av.open(str(dest), "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = image.width, image.height, "rgb24"
        for packet in (*stream.encode(image), *stream.encode()):
            out.mux(packet)


def link_or_copy(source: Path, dest: Path) -> None:
    """A hard link when source and dest share a filesystem (no extra space; a video remade later is
    renamed into place as a new file, so the link keeps the old one), else a copy."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _href(relative: Path) -> str:
    """A relative URL to a file of the report (every path segment percent-encoded)."""
    return "/".join(quote(part) for part in relative.parts)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")[:60] or "run"
