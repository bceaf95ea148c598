"""Samplers; v1.2 uses rectified flow."""

from . import rectified_flow

__all__ = ["rectified_flow"]
