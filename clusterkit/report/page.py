"""The report's ``index.html`` (pure): one table, a header per run, a row per prompt, a tile per video.

Every piece of text goes through ``html.escape`` (prompts are user text), every link is relative
and percent-encoded, the CSS is inline and there is no script: the file opens from disk with no
server and loads nothing from the network (its Content-Security-Policy forbids it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape

from clusterkit.report.gallery import MISSING, OK, Row, Tile
from clusterkit.report.sources import Column, RunInfo

#: Tile border colours: a video/image tile, a tile whose file is missing or incomplete. Nothing
#: else on the page uses them (tests count tiles in a screenshot by these colours).
TILE_RGB = (0, 160, 80)
MISSING_RGB = (30, 90, 255)

#: Entry fields shown in their own lines (or deliberately not shown); any other field (conditioning:
#: reference paths, mask strategy, ...) is listed under "conditioning & more".
KNOWN_FIELDS = frozenset({
    "file", "path", "prompt_index", "sample", "prompt", "refined_prompt", "encoder_text", "tokens", "truncated",
    "seed", "frames", "height", "width", "fps", "pixels_sha256", "seconds", "node", "layout", "replica", "run",
    "bytes", "sweep", "refiner",
})
STAGES = (("load_s", "load"), ("text_encoding_s", "text encoding"), ("denoising_s", "denoising"),
          ("decode_s", "decode"), ("write_s", "write"), ("total_s", "total"))
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; media-src 'self'; "
       "script-src 'none'; base-uri 'none'; form-action 'none'")


def render_page(title: str, columns: Sequence[Column], rows: Sequence[Row], *, match: str, generated: str) -> str:
    """The whole HTML document."""
    videos = sum(1 for row in rows for tile in row.cells if tile is not None and tile.status == OK)
    head = "".join(f"<th scope=\"col\" class=\"run\">{_run_header(column)}</th>" for column in columns)
    body = "\n".join(_row(row) for row in rows)
    matched = "original prompt text and sample" if match == "prompt" else "prompt index and sample"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{escape(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p class="meta">{videos} video(s) from {len(columns)} run(s) in {len(rows)} row(s); rows matched by {matched}.
Made by <code>clusterkit report</code> at {escape(generated)}.</p>
<table class="gallery">
<thead><tr><th scope="col" class="rowhead">prompt</th>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
</body>
</html>
"""


def describe_layout(layout: object) -> str:
    """A layout dict as "1 replica × cfg 2 × sp 2 (dsp)"; "" when absent."""
    if not isinstance(layout, dict):
        return ""
    replicas = layout.get("replicas", 1)
    text = f"{replicas} replica{'s' if replicas != 1 else ''} × cfg {layout.get('cfg', 1)} × sp {layout.get('sp', 1)}"
    if (layout.get("sp") or 1) > 1 and layout.get("sp_scheme"):
        text += f" ({layout['sp_scheme']})"
    return text


def _run_header(column: Column) -> str:
    h = column.header
    lines = [f"<div class=\"label\">{escape(column.label)}</div>"]
    if h.get("random_weights"):
        lines.append("<div class=\"warn\">random weights: the videos are noise</div>")
    settings = [("model", h.get("model")), ("seed", h.get("seed")), ("steps", h.get("steps")),
                ("cfg scale", h.get("cfg_scale")), ("video", _geometry(h)),
                ("prompts", _prompts_kind(h))]
    lines.append(_fields(settings))
    for run in column.runs:
        lines.append(_run_block(run, show_id=column.kind == "sweep"))
    lines += [f"<div class=\"note\">{escape(note)}</div>" for note in column.notes]
    lines.append(f"<div class=\"folder\">{escape(str(column.folder))}</div>")
    return "".join(lines)


def _prompts_kind(header: dict) -> str | None:
    """Whether the run's prompts were refined (runs from before refinement existed: unknown, None)."""
    if "refiner" not in header:
        return None
    return f"refined ({header['refiner']})" if header["refiner"] else "as written (not refined)"


def _run_block(run: RunInfo, *, show_id: bool) -> str:
    r = run.result
    timings = r.get("timings") or {}
    stages = [f"{name} {timings[key]:.1f} s" for key, name in STAGES if isinstance(timings.get(key), (int, float))]
    step = timings.get("denoising_step_mean_s")
    peak = (r.get("peak_memory") or {}).get("peak_bytes")
    device = " ".join(str(v) for v in (r.get("device"), r.get("dtype")) if v)
    rows = [("run", run.run_id if show_id else None), ("state", run.state), ("node", r.get("node")),
            ("device", device or None), ("layout", describe_layout(r.get("layout")) or None),
            ("stages", ", ".join(stages) or None),
            ("per step", f"{step:.3f} s" if isinstance(step, (int, float)) else None),
            ("peak memory", f"{peak / 2**30:.2f} GiB" if isinstance(peak, (int, float)) else None),
            ("error", (r.get("error") or {}).get("message"))]
    return f"<div class=\"runinfo\">{_fields(rows)}</div>"


def _row(row: Row) -> str:
    sub = f"<div class=\"sub\">{escape(row.subtitle)}</div>" if row.subtitle else ""
    cells = "".join(f"<td>{_tile(tile)}</td>" if tile is not None else "<td class=\"none\">no video</td>"
                    for tile in row.cells)
    return f"<tr><th scope=\"row\" class=\"rowhead\"><div class=\"title\">{escape(row.title)}</div>{sub}</th>{cells}</tr>"


def _tile(tile: Tile) -> str:
    entry = tile.video.entry
    if tile.status == OK:
        media = _media(tile)
        kind = "tile media"
    else:
        label = "file missing" if tile.status == MISSING else "incomplete file, not shown"
        media = f"<div class=\"absent\"><strong>{label}</strong><br>{escape(tile.detail)}</div>"
        kind = f"tile {tile.status}"
    seconds = entry.get("seconds")
    refined = entry.get("refined_prompt")
    refined_by = f"refined prompt ({entry['refiner']})" if entry.get("refiner") else "refined prompt"
    fields = [("prompt", entry.get("prompt")), (refined_by, refined if refined else None),
              ("seed", entry.get("seed")), ("node", entry.get("node")),
              ("layout", describe_layout(entry.get("layout")) or None),
              ("time", f"{seconds:.1f} s per video" if isinstance(seconds, (int, float)) else None),
              ("video", _geometry(entry)), ("file", entry.get("file"))]
    if entry.get("truncated"):
        fields.append(("tokens", f"{entry.get('tokens')} (T5 truncated the prompt)"))
    extra = [(key, value) for key, value in entry.items() if key not in KNOWN_FIELDS and value is not None]
    more = f"<div class=\"more\">conditioning &amp; more</div>{_fields(extra)}" if extra else ""
    return f"<div class=\"{kind}\">{media}{_fields(fields)}{more}</div>"


def _media(tile: Tile) -> str:
    entry = tile.video.entry
    size = ""
    if isinstance(entry.get("width"), int) and isinstance(entry.get("height"), int):
        size = f" width=\"{entry['width']}\" height=\"{entry['height']}\""
    alt = escape(str(entry.get("prompt", "")))
    if tile.image:
        return f"<img src=\"{escape(tile.href)}\" alt=\"{alt}\"{size}>"
    poster = f" poster=\"{escape(tile.poster)}\"" if tile.poster else ""
    return (f"<video controls loop muted playsinline preload=\"metadata\" src=\"{escape(tile.href)}\"{poster}{size}"
            f" title=\"{alt}\"></video>")


def _fields(pairs: Sequence[tuple[str, object]]) -> str:
    items = "".join(f"<dt>{escape(str(name))}</dt><dd>{escape(_text(value))}</dd>"
                    for name, value in pairs if value is not None and value != "")
    return f"<dl>{items}</dl>" if items else ""


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _geometry(data: dict) -> str | None:
    width, height, frames, fps = (data.get(k) for k in ("width", "height", "frames", "fps"))
    if not width or not height:
        return None
    text = f"{width}×{height}"
    if frames:
        text += f", {frames} frame{'s' if frames != 1 else ''}"
    if fps and frames != 1:
        text += f" @ {fps} fps"
    return text


def _rgb(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in rgb)


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #1f2933; background: #f6f7f9; }
h1 { font-size: 20px; margin: 0 0 4px; }
.meta { color: #52606d; margin: 0 0 12px; }
table.gallery { border-collapse: separate; border-spacing: 10px; }
th, td { vertical-align: top; text-align: left; }
th.rowhead { width: 14rem; min-width: 10rem; font-weight: normal; }
th.rowhead .title { font-weight: 600; white-space: pre-wrap; overflow-wrap: anywhere; }
.sub, .folder, .note { color: #52606d; font-size: 12px; overflow-wrap: anywhere; }
.note { color: #9a3412; }
th.run { min-width: 280px; max-width: 420px; background: #e4e7eb; padding: 8px; font-weight: normal; }
th.run .label { font-weight: 700; font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
.warn { color: #b91c1c; font-weight: 600; }
.runinfo { border-top: 1px solid #cbd2d9; margin-top: 6px; padding-top: 4px; }
td.none { color: #9aa5b1; font-style: italic; }
.tile { padding: 6px; background: #ffffff; max-width: 420px; }
.tile.media { border: 4px solid TILE; }
.tile.missing, .tile.incomplete { border: 4px solid MISSING; }
.tile video, .tile img { display: block; width: 100%; height: auto; background: #111; }
.absent { padding: 24px 8px; background: #fff7ed; color: #7c2d12; overflow-wrap: anywhere; }
.more { margin-top: 4px; font-size: 12px; font-weight: 600; color: #52606d; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0 8px; margin: 6px 0 0; font-size: 12px; }
dt { color: #52606d; }
dd { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
""".replace("TILE", _rgb(TILE_RGB)).replace("MISSING", _rgb(MISSING_RGB))
