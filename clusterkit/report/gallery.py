"""The gallery's grid: columns are RUNs, rows are prompts, matched across the columns (pure).

``--match prompt`` (the default) puts videos in one row when their original prompt text and
sample number agree (the k-th time a text appears in a run's prompt list matches the k-th time
in another), so runs with differently ordered or partly different prompt lists line up, and a
refined run (whose entries keep the original prompt) sits next to its unrefined twin.
``--match index`` puts videos in one row when their prompt index and sample agree, for runs
whose prompt files differ on purpose (line 3 of one against line 3 of the other).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clusterkit.errors import InvalidChoice
from clusterkit.report.sources import Video

MATCH_CHOICES = ("prompt", "index")
OK, MISSING, INCOMPLETE = "ok", "missing", "incomplete"


@dataclass(frozen=True)
class Tile:
    """One video in the report: where its copy and poster are (relative to the report folder),
    or why it is not shown (``status`` missing: no file on disk; incomplete: a partial or damaged
    file: fewer bytes or frames than its entry says, or PyAV cannot decode it)."""

    video: Video
    status: str
    href: str | None = None
    poster: str | None = None
    detail: str = ""

    @property
    def image(self) -> bool:
        """A single-frame output (``--frames 1`` writes a .png), shown as an image."""
        return self.video.path.suffix.lower() == ".png"


@dataclass(frozen=True)
class Row:
    """One prompt: its title, and one cell per column (None where that column has no such video)."""

    key: tuple
    title: str
    subtitle: str
    cells: tuple[Tile | None, ...]


def match_rows(columns: Sequence[Sequence[Tile]], by: str = "prompt") -> list[Row]:
    """Rows in order of first appearance (column by column, each in prompt-index order)."""
    if by not in MATCH_CHOICES:
        raise InvalidChoice("--match", by, MATCH_CHOICES)
    order: list[tuple] = []
    titles: dict[tuple, tuple[str, str]] = {}
    cells: dict[tuple, dict[int, Tile]] = {}
    for number, tiles in enumerate(columns):
        ranked = sorted(tiles, key=lambda t: (_int(t.video.entry.get("prompt_index")), _int(t.video.entry.get("sample"))))
        for tile, key in zip(ranked, _keys(ranked, by)):
            if key not in cells:
                order.append(key)
                cells[key] = {}
                titles[key] = _title(tile.video.entry, key, by)
            cells[key][number] = tile
    return [Row(key, *titles[key], tuple(cells[key].get(n) for n in range(len(columns)))) for key in order]


def _keys(tiles: Sequence[Tile], by: str) -> list[tuple]:
    """Each tile's row key; a key met twice in one column (a video listed twice) gets its own row."""
    indices_of_text: dict[str, list[int]] = {}
    for tile in tiles:
        entry = tile.video.entry
        seen = indices_of_text.setdefault(str(entry.get("prompt", "")), [])
        if _int(entry.get("prompt_index")) not in seen:
            seen.append(_int(entry.get("prompt_index")))
    keys, used = [], set()
    for tile in tiles:
        entry = tile.video.entry
        index, sample = _int(entry.get("prompt_index")), _int(entry.get("sample"))
        if by == "prompt":
            text = str(entry.get("prompt", ""))
            key: tuple = ("prompt", text, indices_of_text[text].index(index), sample)
        else:
            key = ("index", index, sample)
        duplicate = 0
        while (*key, duplicate) in used:
            duplicate += 1
        used.add((*key, duplicate))
        keys.append((*key, duplicate))
    return keys


def _title(entry: dict, key: tuple, by: str) -> tuple[str, str]:
    sample = _int(entry.get("sample"))
    parts = [f"sample {sample}"] if sample else []
    if by == "prompt":
        occurrence = key[2]
        if occurrence:
            parts.insert(0, f"occurrence {occurrence + 1} of this prompt")
        title = str(entry.get("prompt", ""))
    else:
        title = f"prompt {key[1]}"
    if key[-1]:
        parts.append(f"listed again ({key[-1] + 1})")
    return title, ", ".join(parts)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
