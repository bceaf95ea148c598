"""Training Open-Sora 1.2: bucketed video data, sharded data-parallel training, exact resume.

Torch-free (the CLI validates a run with them before launching): ``config`` (``TrainConfig``,
bucket tables), ``buckets`` (bucket assignment and the stateful batch sampler), ``samples``
(the CSV, PyAV probing and its cache) and ``checkpoint_files`` (the ``step-N/`` folder layout,
finding the newest complete one). The rest needs torch and runs on the ranks: ``data``
(decoding and batching), ``masks``, ``ema``, ``parallel`` (DDP / FSDP2 / ColossalAI),
``checkpoint`` (save and load), ``trainer`` (the loop) and ``run`` (the job entry,
``python -m opensora_core.training.run``).
"""
