"""opensora_core: a weight-compatible re-implementation of Open-Sora 1.2.

Importing this package (or ``opensora_core.geometry``) does not import torch; the models live in
``opensora_core.models`` and the sampler in ``opensora_core.schedulers``.
"""
