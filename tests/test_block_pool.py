"""BlockPool: null block, LRU order of free blocks, eviction of cached hashes, ref counting, double free."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unifer.kv.block_pool import BlockPool


def check_pool(pool: BlockPool) -> None:
    free = [b for b in pool.blocks[1:] if pool.is_free(b)]
    assert all(b.ref_cnt == 0 for b in free)
    assert all(b.ref_cnt > 0 for b in pool.blocks[1:] if not pool.is_free(b))
    assert len(free) == pool.num_free_blocks
    used = sum(1 for b in pool.blocks[1:] if b.ref_cnt > 0)
    assert used + pool.num_free_blocks == pool.num_usable_blocks
    assert pool.null_block.ref_cnt == 0 and not pool.is_free(pool.null_block)
    for h, b in pool._cached.items():
        assert b.block_hash == h
    assert sum(1 for b in pool.blocks if b.block_hash is not None) == pool.num_cached_blocks


def test_null_block_never_allocated():
    pool = BlockPool(5, enable_caching=True)
    blocks = pool.allocate(4)
    assert sorted(b.block_id for b in blocks) == [1, 2, 3, 4]
    assert pool.num_free_blocks == 0 and pool.usage == 1.0
    with pytest.raises(RuntimeError, match="only 0 are free"):
        pool.allocate(1)
    with pytest.raises(RuntimeError, match="null block"):
        pool.free([pool.null_block])
    check_pool(pool)


def test_too_small_pool_is_rejected():
    with pytest.raises(ValueError, match="null block"):
        BlockPool(1, enable_caching=True)


def test_double_free_names_the_block():
    pool = BlockPool(4, enable_caching=False)
    (b,) = pool.allocate(1)
    pool.free([b])
    with pytest.raises(RuntimeError, match=f"block {b.block_id}"):
        pool.free([b])


def test_lru_order_and_eviction():
    pool = BlockPool(5, enable_caching=True)
    a, b, c, d = pool.allocate(4)
    assert pool.cache_block(a, "ha") and pool.cache_block(b, "hb")
    pool.free([b, a])  # reverse order: b freed first, so evicted first
    pool.free([c])
    assert pool.lookup("ha") is a and pool.lookup("hb") is b
    (x,) = pool.allocate(1)
    assert x is b and x.block_hash is None and pool.lookup("hb") is None  # evicted
    assert pool.lookup("ha") is a  # still cached while free
    pool.touch([a])  # a prefix hit takes it back from the middle of the queue
    assert a.ref_cnt == 1 and not pool.is_free(a)
    (y,) = pool.allocate(1)
    assert y is c
    check_pool(pool)
    pool.free([a, x, y, d])
    assert pool.num_free_blocks == 4 and pool.usage == 0.0
    check_pool(pool)


def test_shared_block_ref_counts():
    pool = BlockPool(3, enable_caching=True)
    (a,) = pool.allocate(1)
    pool.cache_block(a, 1)
    pool.touch([a])
    assert a.ref_cnt == 2
    pool.free([a])
    assert not pool.is_free(a)
    pool.free([a])
    assert pool.is_free(a) and pool.lookup(1) is a


def test_duplicate_hash_leaves_block_uncached():
    pool = BlockPool(3, enable_caching=True)
    a, b = pool.allocate(2)
    assert pool.cache_block(a, 7)
    assert not pool.cache_block(b, 7)
    assert b.block_hash is None and pool.lookup(7) is a


def test_caching_off_caches_nothing():
    pool = BlockPool(3, enable_caching=False)
    (a,) = pool.allocate(1)
    assert not pool.cache_block(a, 7)
    assert pool.lookup(7) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "free", "touch", "cache"]), st.integers(0, 6)), max_size=60))
def test_random_operations_keep_invariants(ops):
    pool = BlockPool(9, enable_caching=True)
    held: list = []  # one entry per reference
    for op, k in ops:
        if op == "alloc":
            if k <= pool.num_free_blocks:
                held.extend(pool.allocate(k))
            else:
                with pytest.raises(RuntimeError):
                    pool.allocate(k)
        elif op == "free" and held:
            pool.free([held.pop(k % len(held))])
        elif op == "touch":
            b = pool.lookup(k) if k % 2 else (held[k % len(held)] if held else None)
            if b is not None:
                pool.touch([b])
                held.append(b)
        elif op == "cache" and held:
            pool.cache_block(held[k % len(held)], k)
        for b in pool.blocks[1:]:
            assert b.ref_cnt == sum(1 for h in held if h is b)
        check_pool(pool)
    pool.free(held)
    assert pool.num_free_blocks == pool.num_usable_blocks
    check_pool(pool)
