"""Precision names used on the command line, in plans and in run records (torch-free).

``torch_dtype(name)`` imports torch only when called, so the CLI can validate names without it.
"""

from __future__ import annotations

from clusterkit.errors import InvalidChoice

#: Names accepted everywhere a precision is chosen.
DTYPE_NAMES: tuple[str, ...] = ("fp32", "bf16", "fp16")


def check_dtype_name(name: str, what: str = "dtype") -> str:
    """``name`` if it is one of ``DTYPE_NAMES``, else ``InvalidChoice`` naming ``what``."""
    if name not in DTYPE_NAMES:
        raise InvalidChoice(what, name, DTYPE_NAMES)
    return name


def torch_dtype(name: str):
    """The torch dtype for a precision name ("bf16" -> torch.bfloat16)."""
    import torch

    check_dtype_name(name)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
