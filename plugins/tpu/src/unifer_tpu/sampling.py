"""random_sample for XLA devices: the exponential race of ``unifer.ops.reference.random_sample``.

torch.Generator does not exist on XLA devices. Rows without a generator draw their noise from XLA's own RNG, on
the device. Rows with one (seeded requests) must reproduce the CPU draw exactly, so when any row is seeded the
whole noise matrix is drawn on the host and copied over: one host-to-device copy, no device-to-host sync, and
still one graph shape (the noise is an input either way).
"""

from __future__ import annotations

import torch


def random_sample(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    if any(g is not None for g in generators):
        noise = torch.empty(probs.shape, dtype=torch.float32).exponential_()
        for row, gen in enumerate(generators):
            if gen is not None:
                noise[row].exponential_(generator=gen)
        noise = noise.to(probs.device)
    else:
        noise = torch.empty_like(probs, dtype=torch.float32).exponential_()
    return (probs.to(torch.float32) / noise).argmax(dim=-1)
