"""Rounding sizes up to powers of two: kernel block shapes, compile-shape buckets and padded index lengths."""

from __future__ import annotations


def next_pow2(n: int, minimum: int = 1) -> int:
    """The smallest power of two at or above both ``n`` and ``minimum`` (1 for n <= 1)."""
    n = max(int(n), minimum, 1)
    return 1 << (n - 1).bit_length()
