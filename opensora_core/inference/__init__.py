"""Text-to-video inference: request (torch-free), prompts, models, pipeline, video files, job entry.

``request`` and ``prompts`` are torch-free so the CLI validates a run before launching it; the
job itself is ``python -m opensora_core.inference.run`` (started by torchrun on every rank).
"""
