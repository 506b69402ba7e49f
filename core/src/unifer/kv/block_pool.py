"""Ref-counted KV-cache blocks with a prefix-hash map and an LRU queue of free blocks.

A free block that once held a full, hashed block keeps its hash while it waits in the free queue, so a later
request with the same prefix can take it back (a prefix-cache hit) until allocation reuses it (eviction).
Allocation takes the least recently freed block, so recently used prefixes survive longest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable


class Block:
    """One block of ``block_size`` KV slots. ``block_hash`` is set only while the block is registered in the
    pool's prefix-hash map (full and cached)."""

    __slots__ = ("block_id", "ref_cnt", "block_hash")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: Hashable | None = None

    def __repr__(self) -> str:
        return f"Block({self.block_id}, ref={self.ref_cnt}, hash={self.block_hash!r})"


class BlockPool:
    """Blocks ``1..num_blocks-1``; block 0 is the null block, never handed out, so block tables can pad with 0."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be at least 2 (block 0 is the reserved null block), got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.null_block = self.blocks[0]
        # Insertion order is the LRU order: head = least recently freed. OrderedDict gives O(1) removal of a
        # free block from the middle when a prefix hit takes it back.
        self._free: OrderedDict[int, Block] = OrderedDict((b.block_id, b) for b in self.blocks[1:])
        self._cached: dict[Hashable, Block] = {}

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Blocks with no holder, including cached ones that allocation may evict."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks held by at least one request."""
        return 1.0 - len(self._free) / self.num_usable_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def is_free(self, block: Block) -> bool:
        return block.block_id in self._free

    def allocate(self, n: int) -> list[Block]:
        """Take ``n`` blocks from the head of the free queue (evicting their cached hashes), each with ref 1."""
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of blocks ({n})")
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} KV blocks but only {len(self._free)} are free")
        out = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                self._evict(block)
            block.ref_cnt = 1
            out.append(block)
        return out

    def _evict(self, block: Block) -> None:
        if self._cached.get(block.block_hash) is block:
            del self._cached[block.block_hash]
        block.block_hash = None

    def free(self, blocks: Iterable[Block]) -> None:
        """Drop one reference from each block; a block reaching 0 joins the tail of the free queue. Pass a
        sequence's blocks in reverse so its tail blocks are evicted before its (more shareable) head blocks."""
        for block in blocks:
            if block.block_id == 0:
                raise RuntimeError("the null block (block 0) is never allocated and cannot be freed")
            if block.ref_cnt <= 0:
                raise RuntimeError(f"double free of KV block {block.block_id} (ref_cnt is {block.ref_cnt})")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block.block_id] = block

    def touch(self, blocks: Iterable[Block]) -> None:
        """Add a holder to each block (a prefix-cache hit), taking it out of the free queue if it sat there."""
        for block in blocks:
            if block.block_id == 0:
                raise RuntimeError("the null block (block 0) cannot be shared")
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def lookup(self, block_hash: Hashable) -> Block | None:
        return self._cached.get(block_hash)

    def cache_block(self, block: Block, block_hash: Hashable) -> bool:
        """Register a full block under ``block_hash``. Returns False (and leaves the block uncached) when caching
        is off or another block already holds that hash: the duplicate simply is not shared."""
        if not self.enable_caching:
            return False
        if block.block_hash is not None:
            return block.block_hash == block_hash
        if block_hash in self._cached:
            return False
        block.block_hash = block_hash
        self._cached[block_hash] = block
        return True
