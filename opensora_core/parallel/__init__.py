"""Parallel inference: layouts (torch-free), process groups, sequence and CFG parallelism, shared work.

Importing this package does not import torch: ``layout`` and ``volume`` are used by the CLI and
the planner. The torch parts are ``groups`` (process groups and a byte-counting communicator),
``sequence`` (Ulysses and DSP sequence parallelism of STDiT3), ``cfg`` (the CFG-parallel model
function) and ``shared`` (text embeddings broadcast and the VAE decode split across a group).
"""

from opensora_core.parallel.layout import (
    DEFAULT_SP_SCHEME,
    SP_SCHEMES,
    ParallelLayout,
    layouts_for,
    legal_sp_degrees,
)

__all__ = ["DEFAULT_SP_SCHEME", "SP_SCHEMES", "ParallelLayout", "layouts_for", "legal_sp_degrees"]
