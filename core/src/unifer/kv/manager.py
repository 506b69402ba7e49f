"""Which KV blocks each request holds, with prefix caching by chained block hashes.

The hash of block i is ``hash((hash of block i-1 or None, tuple(its token ids)))``, so equal hashes mean equal
whole prefixes. Each request's hashes are computed once and kept, so a decode step costs O(1) here.
"""

from __future__ import annotations

from collections.abc import Hashable

from unifer.kv.block_pool import Block, BlockPool
from unifer.sched.request import Request


class _ReqState:
    """Per-request bookkeeping: held blocks (and their ids, handed to the runner every step), the hashes of the
    request's full blocks computed so far, and how many leading blocks were already offered to the cache."""

    __slots__ = ("blocks", "block_ids", "hashes", "num_cached", "queried")

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.block_ids: list[int] = []
        self.hashes: list[Hashable] = []
        self.num_cached = 0
        self.queried = False


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self._reqs: dict[str, _ReqState] = {}
        self.prefix_queries = 0  # prompt tokens looked up at first admission
        self.prefix_hits = 0  # of those, tokens found in the cache

    # properties -----------------------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_usable_blocks(self) -> int:
        return self.pool.num_usable_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_ids(self, request_id: str) -> list[int]:
        """The request's block table (do not mutate the returned list)."""
        state = self._reqs.get(request_id)
        return state.block_ids if state is not None else []

    # hashing --------------------------------------------------------------------------------------------------
    def _hashes(self, state: _ReqState, tokens: list[int], num_blocks: int) -> list[Hashable]:
        """Extend the request's hash chain to cover its first ``num_blocks`` full blocks."""
        hashes, bs = state.hashes, self.block_size
        prev = hashes[-1] if hashes else None
        for i in range(len(hashes), num_blocks):
            prev = hash((prev, tuple(tokens[i * bs:(i + 1) * bs])))
            hashes.append(prev)
        return hashes

    # the API used by the scheduler ----------------------------------------------------------------------------
    def get_computed_blocks(self, request: Request) -> tuple[list[Block], int]:
        """The longest chain of cached full blocks matching the request's tokens, and the tokens they cover.
        Never covers every token: the last one must run through the model to give logits."""
        if not self.enable_prefix_caching:
            return [], 0
        state = self._reqs.get(request.request_id)
        if state is None:
            state = self._reqs[request.request_id] = _ReqState()
        tokens = request.all_token_ids
        hashes = self._hashes(state, tokens, len(tokens) // self.block_size)
        blocks = []
        lookup = self.pool.lookup
        for h in hashes:
            block = lookup(h)
            if block is None:
                break
            blocks.append(block)
        if blocks and len(blocks) * self.block_size >= len(tokens):
            blocks.pop()
        num_computed = len(blocks) * self.block_size
        if request.num_preemptions == 0 and not state.queried:  # a request retried while waiting counts once
            state.queried = True
            self.prefix_queries += len(tokens)
            self.prefix_hits += num_computed
        return blocks, num_computed

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       computed_blocks: list[Block] | None = None) -> bool:
        """Grow the request's blocks to cover ``num_computed_tokens`` + the computed blocks' tokens +
        ``num_new_tokens``. Returns False and changes nothing when the pool is short."""
        if num_new_tokens < 0:
            raise ValueError(f"num_new_tokens must be >= 0, got {num_new_tokens}")
        state = self._reqs.get(request.request_id)
        if not computed_blocks:
            if state is not None:  # fast path: a running request (decode or next prefill chunk)
                need = self.blocks_needed(request.num_computed_tokens + num_new_tokens) - len(state.blocks)
                if need <= 0:
                    return True
                if need > self.pool.num_free_blocks:
                    return False
                new = self.pool.allocate(need)
                state.blocks.extend(new)
                state.block_ids.extend(b.block_id for b in new)
                return True
            computed_blocks = []
        if state is not None and state.blocks:
            raise ValueError(f"request {request.request_id!r} already holds blocks; computed blocks are only "
                             "accepted at admission")
        total = request.num_computed_tokens + len(computed_blocks) * self.block_size + num_new_tokens
        need = max(0, self.blocks_needed(total) - len(computed_blocks))
        # Computed blocks sitting in the free queue stop being free once touched.
        reclaimed = sum(1 for b in computed_blocks if b.ref_cnt == 0)
        if need > self.pool.num_free_blocks - reclaimed:
            return False
        if state is None:
            state = self._reqs[request.request_id] = _ReqState()
        self.pool.touch(computed_blocks)
        new = self.pool.allocate(need)
        state.blocks.extend(computed_blocks)
        state.blocks.extend(new)
        state.block_ids.extend(b.block_id for b in state.blocks)
        state.num_cached = len(computed_blocks)  # they are cached already
        return True

    def cache_full_blocks(self, request: Request) -> None:
        """Register every block now completely filled by computed tokens, so later requests can share it."""
        if not self.enable_prefix_caching:
            return
        state = self._reqs.get(request.request_id)
        if state is None:
            return
        num_full = min(request.num_computed_tokens // self.block_size, len(state.blocks))
        if num_full <= state.num_cached:
            return
        hashes = self._hashes(state, request.all_token_ids, num_full)
        blocks, cache_block = state.blocks, self.pool.cache_block
        for i in range(state.num_cached, num_full):
            if blocks[i].block_hash is None:
                cache_block(blocks[i], hashes[i])
        state.num_cached = num_full

    def free(self, request: Request) -> None:
        """Release all of the request's blocks (tail first, so its head blocks stay cached longest) and forget
        it. A no-op for a request the manager does not know."""
        state = self._reqs.pop(request.request_id, None)
        if state is not None and state.blocks:
            self.pool.free(reversed(state.blocks))
