"""Guarded, poisoned device buffers: NaN guard regions around tensors catch out-of-bounds reads and writes."""

from __future__ import annotations

import torch

GUARD = 257  # elements of NaN before and after every guarded tensor (odd, so it is no multiple of a vector width)


class Guarded:
    """A contiguous tensor living inside a larger NaN-filled buffer.

    A kernel reading past either end reads NaN (and its output goes non-finite); one writing past either end
    overwrites a NaN guard, which :meth:`guards_intact` reports.
    """

    def __init__(self, values: torch.Tensor | None, *, shape=None, dtype=None, device=None, fill=float("nan")):
        shape = tuple(values.shape) if values is not None else tuple(shape)
        dtype = values.dtype if values is not None else dtype
        device = values.device if values is not None else device
        numel = 1
        for s in shape:
            numel *= s
        self.buffer = torch.full((numel + 2 * GUARD,), float("nan"), dtype=dtype, device=device)
        self.tensor = self.buffer[GUARD:GUARD + numel].view(shape)
        if values is not None:
            self.tensor.copy_(values)
        elif fill == fill:  # not NaN
            self.tensor.fill_(fill)

    def guards_intact(self) -> bool:
        head, tail = self.buffer[:GUARD], self.buffer[-GUARD:]
        return bool(torch.isnan(head.float()).all() and torch.isnan(tail.float()).all())


def randn(shape, dtype, device, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Fresh N(0, scale^2) values drawn on the CPU from the case's generator (identical on every device), never
    zero: an exact zero is nudged, since an all-zero or zero-hit input hides a kernel that writes nothing."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    x = torch.where(x == 0, torch.full_like(x, 1e-3), x)
    return x.to(dtype).to(device)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal including NaN positions (NaN == NaN here): 'nothing else changed'."""
    a, b = a.detach().cpu(), b.detach().cpu()
    both_nan = torch.isnan(a.float()) & torch.isnan(b.float())
    return bool(((a == b) | both_nan).all())
