"""Tensor-parallel collectives through torch.distributed's "xla" process-group backend. The collectives become
XLA ops inside the step's graph, so they cost no extra compilation per step.
"""

from __future__ import annotations

from unifer.backends.comm import Communicator


class XLACommunicator(Communicator):
    """With ``xla://`` the PJRT runtime supplies rank and world size (one process per TPU chip, e.g. under
    torch_xla's launcher); pass them only with another init method."""

    name = "xla"
    default_init_method = "xla://"

    def prepare(self, *, rank: int | None, world_size: int | None, local_rank: int | None) -> None:
        import torch_xla.distributed.xla_backend  # noqa: F401  (registers the "xla" backend)
