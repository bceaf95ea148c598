"""Message sizes as users write them: ``8K``, ``1M``, ``4096``; lists ``8K,1M``; ranges ``8K:1G``."""

from __future__ import annotations

import argparse

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3}


def parse_size(text: str) -> int:
    """``8K`` / ``1M`` / ``4096`` -> bytes."""
    text = text.strip().upper()
    digits = text.rstrip("KMGB")
    unit = text[len(digits):]
    if not digits.isdigit() or unit not in _UNITS or int(digits) <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} is not like 8K, 1M, 64M or 4096")
    return int(digits) * _UNITS[unit]


def parse_sizes(text: str) -> list[int]:
    """``8K,1M,64M`` (a list) or ``8K:1G`` (every power-of-two step from 8K to 1G)."""
    if ":" in text:
        low, _, high = text.partition(":")
        start, stop = parse_size(low), parse_size(high)
        if stop < start:
            raise argparse.ArgumentTypeError(f"size range {text!r} runs backwards")
        sizes = [start]
        while sizes[-1] * 2 <= stop:
            sizes.append(sizes[-1] * 2)
        return sizes
    sizes = [parse_size(s) for s in text.split(",") if s.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"no sizes in {text!r}")
    return sizes
