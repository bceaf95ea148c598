"""CFG parallelism: the conditional and the unconditional half of classifier-free guidance on two ranks.

``rectified_flow.sample`` calls its ``model_fn`` with the doubled batch [z; z] and expects the
predictions for [captions; null captions]. Here CFG rank 0 runs the model on the first half with
the prompts' captions and CFG rank 1 on the second half with the learned null caption; the two
velocities are exchanged with one all-gather (the only communication: C x T x H x W fp32 values
per video and step), so both ranks take the same guided Euler step and keep identical latents.
Combined with sequence parallelism, each half is itself sharded over an SP group.
"""

from __future__ import annotations

import torch

from opensora_core.parallel.groups import Comm


def cfg_parallel_model_fn(stdit3, y: torch.Tensor, mask: torch.Tensor | None, *, fps, height, width, comm: Comm,
                          channels: int, sequence_parallel=None):
    """The ``model_fn`` of ``rectified_flow.sample`` for CFG rank ``comm.rank`` of a pair.

    Returns the first ``channels`` output channels (the velocity, all the sampler uses) of both halves.
    """
    if comm.size != 2:
        raise ValueError(f"CFG parallelism splits the pair over 2 ranks, got a group of {comm.size}")
    captions = torch.cat([y, stdit3.null_caption(y.shape[0]).to(y)])

    def model_fn(z: torch.Tensor, t: torch.Tensor, x_mask: torch.Tensor | None) -> torch.Tensor:
        half = z.shape[0] // 2
        # The embeddings (patches, time, captions: cheap) are computed for both halves, the blocks
        # for this rank's half only, so each half is bit for bit the one-process prediction.
        out = stdit3(z, t, captions, mask=mask, x_mask=x_mask, fps=fps, height=height, width=width,
                     sequence_parallel=sequence_parallel, batch_rows=slice(comm.rank * half, (comm.rank + 1) * half))
        return comm.all_gather(out[:, :channels], "cfg").flatten(0, 1)

    return model_fn
