"""Typed errors raised by opensora_core (torch-free).

They subclass clusterkit's ``UserError`` so the CLI's single error boundary turns them into
a message and exit code 2. The ones about bad values also subclass ``ValueError``, so plain
Python callers can catch them the usual way.
"""

from __future__ import annotations

from clusterkit.errors import NotFound, UserError


class ConfigError(UserError, ValueError):
    """A model or sampler configuration value breaks a rule; the message names field, value and rule."""


class ModelInputError(UserError, ValueError):
    """Tensors passed to a model or sampler have the wrong shape, dtype or content."""


class CheckpointNotFound(NotFound):
    """A checkpoint path (file, folder or shard) does not exist."""


class CheckpointFormatError(UserError):
    """A checkpoint path exists but is not a format we can read, or the file is corrupt."""


class CheckpointMismatch(UserError):
    """A checkpoint's tensor names or shapes do not match the model; the message names the first bad key."""


class LayoutError(UserError, ValueError):
    """A parallel layout (replicas x cfg x sp) that cannot run; the message names the rule and the legal values."""


class ConditioningError(UserError, ValueError):
    """A reference_path / mask_strategy / loop setting breaks a rule; the message names the value and the rule."""


class ReferenceNotFound(NotFound):
    """A reference image or video (``reference_path``) does not exist."""
