"""Upstream's ``mask_strategy`` strings: which reference frames go where in the latent video (torch-free).

A strategy is ";"-separated groups of up to 6 comma-separated numbers; missing fields take the
defaults ``0,0,0,0,1,0``::

    loop_id, ref_index, ref_start, target_start, length, edit_ratio

- ``loop_id``: the loop (``--loop``) the group applies to;
- ``ref_index``: which reference of the prompt's ";"-separated ``reference_path``;
- ``ref_start`` / ``target_start``: first latent frame taken from the reference / written in the
  video; negative values count from the end;
- ``length``: latent frames, clipped to what both sides have;
- ``edit_ratio``: 0 keeps the reference frames fixed, 0.4 lets them change once t <= 400, 1
  ignores them.

Every index and length is in **latent** frames (4x compressed in time; 5 latent frames = 17 pixel
frames). Starts snap to multiples of ``align`` (upstream's default 5) with upstream's
``find_nearest_point``. Unlike upstream, a start still outside its clip after that is an error,
not a silently misplaced slice.
"""

from __future__ import annotations

from dataclasses import dataclass

from opensora_core.errors import ConditioningError

FIELDS = ("loop_id", "ref_index", "ref_start", "target_start", "length", "edit_ratio")
DEFAULTS = ("0", "0", "0", "0", "1", "0")
#: Upstream's inference config: starts snap to multiples of 5 latent frames (17 pixel frames).
DEFAULT_ALIGN = 5
#: Latent frames one 17-frame VAE chunk makes; ``condition_frame_length`` counts in these.
LATENT_CHUNK, PIXEL_CHUNK = 5, 17
_RULE = ("a mask strategy is ';'-separated groups of 1 to 6 comma-separated numbers: "
         "loop_id,ref_index,ref_start,target_start,length,edit_ratio (missing fields: 0,0,0,0,1,0)")


@dataclass(frozen=True)
class MaskEntry:
    """One group of a mask strategy (see the module docstring)."""

    loop_id: int
    ref_index: int
    ref_start: int
    target_start: int
    length: int
    edit_ratio: float

    def render(self) -> str:
        """The group as upstream writes it: ``loop,ref,ref_start,target_start,length,ratio``."""
        return f"{self.loop_id},{self.ref_index},{self.ref_start},{self.target_start},{self.length},{self.edit_ratio:g}"


@dataclass(frozen=True)
class Placement:
    """Where one group's frames go once resolved against real lengths: ``ref[ref_start:ref_start+length]``
    becomes ``video[target_start:target_start+length]`` with ``edit_ratio``."""

    ref_index: int
    ref_start: int
    target_start: int
    length: int
    edit_ratio: float


def parse_mask_strategy(text: str, *, what: str | None = None) -> tuple[MaskEntry, ...]:
    """The groups of ``text`` ("" gives none); a ``ConditioningError`` naming the group and the rule
    for a wrong field count or a field that is not a number (the first five are integers). Messages
    start with ``what`` (default ``mask_strategy '<text>'``; the caller adds e.g. `` of prompt 2``)."""
    what = what or f"mask_strategy {text!r}"
    if not isinstance(text, str):
        raise ConditioningError(f"{what} must be a string", hint=_RULE)
    if not text.strip():
        return ()
    entries = []
    for group in text.split(";"):
        fields = [f.strip() for f in group.split(",")]
        if not 1 <= len(fields) <= len(FIELDS) or "" in fields:
            raise ConditioningError(f"{what}: group {group!r} has {len(fields)} field(s)"
                                    f"{' (one empty)' if '' in fields else ''}; {_RULE}")
        fields += DEFAULTS[len(fields):]
        values = []
        for name, field in zip(FIELDS, fields):
            try:
                values.append(float(field) if name == "edit_ratio" else int(field))
            except ValueError:
                kind = "a number" if name == "edit_ratio" else "an integer"
                raise ConditioningError(f"{what}: {name} {field!r} in group {group!r} is not {kind}",
                                        hint=_RULE) from None
        entries.append(MaskEntry(*values))
    return tuple(entries)


def check_entries(entries: tuple[MaskEntry, ...], *, references: int, loops: int, what: str) -> None:
    """The rules that need no file: ``ref_index`` below the number of references given, ``loop_id``
    below ``loops``, ``length`` >= 1, ``edit_ratio`` in [0, 1]."""
    for entry in entries:
        group = entry.render()
        if not 0 <= entry.ref_index < references:
            given = (f"the prompt has {references} reference(s): valid ref_index 0..{references - 1}" if references
                     else "the prompt has no reference_path")
            raise ConditioningError(f"{what}: group {group!r} uses ref_index {entry.ref_index} but {given}",
                                    hint="reference_path holds ';'-separated paths, numbered from 0")
        if not 0 <= entry.loop_id < loops:
            raise ConditioningError(f"{what}: group {group!r} has loop_id {entry.loop_id} but --loop is {loops} "
                                    f"(valid loop_id 0..{loops - 1})")
        if entry.length < 1:
            raise ConditioningError(f"{what}: group {group!r} has length {entry.length}; it must be >= 1 latent frame")
        if not 0.0 <= entry.edit_ratio <= 1.0:
            raise ConditioningError(f"{what}: group {group!r} has edit_ratio {entry.edit_ratio:g}; it must be in "
                                    "[0, 1] (0 keeps the reference, 1 ignores it)")


def find_nearest_point(value: int, point: int, max_value: int) -> int:
    """Upstream's snapping: ``value`` rounded to a multiple of ``point`` (down, or up when past the
    half and not into the last partial block of ``max_value``)."""
    t = value // point
    if value % point > point / 2 and t < max_value // point - 1:
        t += 1
    return t * point


def place(entry: MaskEntry, ref_frames: int, target_frames: int, align: int | None, *, what: str) -> Placement:
    """Resolve ``entry`` against a reference of ``ref_frames`` and a video of ``target_frames`` latent
    frames, as upstream's ``apply_mask_strategy``: negative starts from the end, snapping to
    ``align``, length clipped to both sides. A start outside its clip is a ``ConditioningError``."""
    ref_start, target_start = entry.ref_start, entry.target_start
    if ref_start < 0:
        ref_start += ref_frames
    if target_start < 0:
        target_start += target_frames
    if align is not None:
        ref_start = find_nearest_point(ref_start, align, ref_frames)
        target_start = find_nearest_point(target_start, align, target_frames)
    for name, start, frames, side in (("ref_start", ref_start, ref_frames, f"reference {entry.ref_index}"),
                                      ("target_start", target_start, target_frames, "the video")):
        if not 0 <= start < frames:
            raise ConditioningError(
                f"{what}: group {entry.render()!r}: {name} resolves to latent frame {start}, outside "
                f"{side} ({frames} latent frame(s): valid starts {-frames}..{frames - 1})",
                hint="indices and lengths are latent frames (5 latent frames = 17 video frames)")
    length = min(entry.length, target_frames - target_start, ref_frames - ref_start)
    return Placement(entry.ref_index, ref_start, target_start, length, entry.edit_ratio)


def reference_span(entries, ref_index: int, ref_frames: int, target_frames: int, align: int | None
                   ) -> tuple[int, int] | None:
    """(first, last + 1) latent frame of reference ``ref_index`` (``ref_frames`` long) that any group
    of ``entries`` copies into a ``target_frames`` video, placed as ``place`` does; None when none
    does (groups with edit_ratio 1 copy nothing)."""
    spans = []
    for entry in entries:
        if entry.ref_index == ref_index and entry.edit_ratio < 1:
            spot = place(entry, ref_frames, target_frames, align, what=f"mask_strategy group {entry.render()!r}")
            spans.append((spot.ref_start, spot.ref_start + spot.length))
    return (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None


def loop_entry(loop_i: int, ref_index: int, condition_frame_length: int, condition_frame_edit: float) -> MaskEntry:
    """What upstream adds for loop ``loop_i`` > 0: the last ``condition_frame_length`` latent frames of
    the previous clip (reference ``ref_index``) at position 0, with ``condition_frame_edit``."""
    return MaskEntry(loop_i, ref_index, -condition_frame_length, 0, condition_frame_length, condition_frame_edit)


def condition_pixel_frames(condition_frame_length: int) -> int:
    """Pixel frames of ``condition_frame_length`` latent frames (upstream's ``dframe_to_frame``): a later
    loop's clip drops this many frames, which repeat the end of the previous clip."""
    if condition_frame_length % LATENT_CHUNK:
        raise ConditioningError(f"--condition-frame-length {condition_frame_length} must be a multiple of "
                                f"{LATENT_CHUNK} latent frames (one VAE chunk of {PIXEL_CHUNK} frames)")
    return condition_frame_length // LATENT_CHUNK * PIXEL_CHUNK


def looped_frames(num_frames: int, loop: int, condition_frame_length: int) -> int:
    """Frames of a ``loop``-clip video: the first clip whole, each later one minus the frames it
    repeats: loop * (num_frames - P) + P with P = ``condition_pixel_frames``."""
    if loop == 1:
        return num_frames
    repeated = condition_pixel_frames(condition_frame_length)
    return loop * (num_frames - repeated) + repeated


__all__ = ["DEFAULT_ALIGN", "MaskEntry", "Placement", "check_entries", "condition_pixel_frames",
           "find_nearest_point", "loop_entry", "looped_frames", "parse_mask_strategy", "place", "reference_span"]
