"""Shape buckets: XLA compiles one graph per distinct input shape, so every step is padded up to a bucket.

Tokens and sequences pad to powers of two (at least MIN_TOKENS / MIN_SEQS); the block table pads to one fixed
width, enough for ``max_model_len``, once the engine has said what that is. A size past the largest bucket
still works: it pads to the next power of two and costs one more compilation (visible in ``stats()``).
"""

from __future__ import annotations

from dataclasses import dataclass

from unifer.pow2 import next_pow2

MIN_TOKENS = 16  # TPU tiles are 8 x 128; smaller token counts buy nothing
MIN_SEQS = 8


def ladder(limit: int, minimum: int) -> tuple[int, ...]:
    """minimum, 2 x minimum, ... up to the first size >= limit."""
    sizes = [next_pow2(minimum)]
    while sizes[-1] < limit:
        sizes.append(sizes[-1] * 2)
    return tuple(sizes)


@dataclass(frozen=True)
class Buckets:
    tokens: tuple[int, ...]
    seqs: tuple[int, ...]
    block_table_width: int | None = None  # None: pad widths to powers of two (the engine has not configured us)

    @classmethod
    def for_limits(cls, *, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int,
                   block_size: int) -> Buckets:
        tokens = ladder(max_num_batched_tokens, MIN_TOKENS)
        # A step never has more sequences than tokens, so seq buckets beyond the token cap are unreachable.
        seqs = ladder(min(max_num_seqs, tokens[-1]), MIN_SEQS)
        return cls(tokens, seqs, -(-max_model_len // block_size))

    def pad(self, num_tokens: int, num_seqs: int, max_blocks: int) -> tuple[int, int, int]:
        tokens = _fit(num_tokens, self.tokens, MIN_TOKENS)
        seqs = _fit(num_seqs, self.seqs, MIN_SEQS)
        width = self.block_table_width
        if width is None or max_blocks > width:
            width = next_pow2(max_blocks)
        return tokens, seqs, width

    def shapes(self) -> list[tuple[int, int]]:
        """Every (tokens, seqs) pair a step can pad to, i.e. the graphs a warm-up compiles. A pair is reachable
        when the fewest sequences that pad to ``seqs`` (one more than the bucket below) fit in ``tokens``."""
        pairs = []
        for t in self.tokens:
            below = 0
            for s in self.seqs:
                if below + 1 <= t:
                    pairs.append((t, s))
                below = s
        return pairs


def _fit(n: int, sizes: tuple[int, ...], minimum: int) -> int:
    for size in sizes:
        if size >= n:
            return size
    return next_pow2(n, minimum)
