"""Scheduler + KVCacheManager: token budget, chunked prefill, prefix hits, preemption, aborts, and random runs that
check the block accounting after every step."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unifer.config import SchedulerConfig
from unifer.kv.manager import KVCacheManager
from unifer.sched.request import Request, RequestStatus
from unifer.sched.scheduler import Scheduler


def make(num_blocks=64, block_size=4, budget=64, max_seqs=8, chunked=True, caching=True, max_model_len=256):
    kv = KVCacheManager(num_blocks, block_size, caching)
    config = SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=max_seqs, enable_chunked_prefill=chunked)
    return Scheduler(config, kv, max_model_len), kv


def check(sched: Scheduler, kv: KVCacheManager) -> None:
    """No leak, no double hold: each block's ref count is the number of live requests holding it."""
    holders = [0] * kv.num_blocks
    for r in sched.running:
        ids = kv.block_ids(r.request_id)
        assert len(set(ids)) == len(ids)
        assert 0 not in ids
        assert len(ids) >= kv.blocks_needed(r.num_computed_tokens)
        for b in ids:
            holders[b] += 1
    for r in sched.waiting:
        assert kv.block_ids(r.request_id) == []
        assert r.num_computed_tokens == 0
    pool = kv.pool
    assert [b.ref_cnt for b in pool.blocks] == holders
    used = sum(1 for b in pool.blocks[1:] if b.ref_cnt > 0)
    assert used + kv.num_free_blocks == kv.num_usable_blocks
    assert all((b.ref_cnt == 0) == pool.is_free(b) for b in pool.blocks[1:])


def step(sched: Scheduler, token: int = 1, max_tokens: int | None = None, rng: random.Random | None = None,
         finish_prob: float = 0.0):
    """One engine step without a model: schedule, compute, append a token to each request that samples."""
    out = sched.schedule()
    assert out.num_batched_tokens == sum(s.num_new_tokens for s in out.scheduled)
    assert out.num_batched_tokens <= sched.config.max_num_batched_tokens
    sampled = [s.request for s in out.scheduled if s.samples]
    sched.finish_step(out)
    for r in sampled:
        r.append_token(token)
        done = (max_tokens is not None and r.num_output_tokens >= max_tokens) or r.num_tokens >= sched.max_model_len
        if done or (rng is not None and rng.random() < finish_prob):
            sched.finish_request(r.request_id, RequestStatus.FINISHED_LENGTH)
    return out


def test_add_request_rejects_what_can_never_run():
    sched, _ = make(num_blocks=5, block_size=4, max_model_len=32)
    with pytest.raises(ValueError, match="prompt has 33 tokens, more than max_model_len 32"):
        sched.add_request(Request("a", list(range(33))))
    with pytest.raises(ValueError, match="needs 5 KV blocks"):
        sched.add_request(Request("b", list(range(17))))
    sched.add_request(Request("c", list(range(16))))
    with pytest.raises(ValueError, match="already"):
        sched.add_request(Request("c", [1]))
    sched2, _ = make(budget=8, chunked=False)
    with pytest.raises(ValueError, match="chunked prefill is off"):
        sched2.add_request(Request("d", list(range(9))))


def test_prefill_then_decode():
    sched, kv = make(block_size=4, budget=64)
    r = Request("a", list(range(10)))
    sched.add_request(r)
    out = sched.schedule()
    (s,) = out.scheduled
    assert (s.start, s.num_new_tokens, s.samples) == (0, 10, True)
    assert r.num_computed_tokens == 0  # schedule() decides only
    assert len(kv.block_ids("a")) == 3
    sched.finish_step(out)
    assert r.num_computed_tokens == 10
    r.append_token(5)
    (s,) = sched.schedule().scheduled
    assert (s.start, s.num_new_tokens, s.samples) == (10, 1, True)
    check(sched, kv)


def test_chunked_prefill_splits_by_budget():
    sched, kv = make(block_size=4, budget=8)
    r = Request("a", list(range(20)))
    sched.add_request(r)
    starts = []
    while True:
        out = step(sched)
        (s,) = out.scheduled
        starts.append((s.start, s.num_new_tokens, s.samples))
        if s.samples:
            break
    assert starts == [(0, 8, False), (8, 8, False), (16, 4, True)]
    check(sched, kv)


def test_budget_shared_between_running_and_waiting():
    sched, kv = make(block_size=4, budget=10)
    a, b = Request("a", list(range(6))), Request("b", list(range(100, 110)))
    sched.add_request(a)
    sched.add_request(b)
    out = sched.schedule()
    assert [(s.request.request_id, s.num_new_tokens) for s in out.scheduled] == [("a", 6), ("b", 4)]
    check(sched, kv)


def test_no_chunking_waits_for_whole_prefill():
    sched, kv = make(block_size=4, budget=10, chunked=False)
    sched.add_request(Request("a", list(range(6))))
    sched.add_request(Request("b", list(range(100, 110))))
    out = sched.schedule()
    assert [s.request.request_id for s in out.scheduled] == ["a"]
    assert sched.num_waiting == 1


def test_max_num_seqs():
    sched, _ = make(max_seqs=2)
    for i in range(3):
        sched.add_request(Request(str(i), [i, 1, 2]))
    out = sched.schedule()
    assert len(out.scheduled) == 2 and sched.num_running == 2 and sched.num_waiting == 1


def test_prefix_hit_shares_blocks():
    sched, kv = make(block_size=4)
    prefix = list(range(12))
    a = Request("a", prefix + [50, 51])
    sched.add_request(a)
    step(sched)
    b = Request("b", prefix + [60])
    sched.add_request(b)
    out = sched.schedule()
    (s,) = [s for s in out.scheduled if s.request is b]
    assert b.num_cached_prompt_tokens == 12 and s.start == 12 and s.num_new_tokens == 1
    assert kv.block_ids("b")[:3] == kv.block_ids("a")[:3]
    check(sched, kv)
    assert kv.prefix_hits == 12 and kv.prefix_queries == 14 + 13
    sched.finish_step(out)
    # a's blocks stay cached after it finishes, so a third request hits them while they are free
    sched.finish_request("a", RequestStatus.FINISHED_STOPPED)
    sched.finish_request("b", RequestStatus.FINISHED_STOPPED)
    c = Request("c", prefix + [70, 71, 72, 73, 74])
    sched.add_request(c)
    sched.schedule()
    assert c.num_cached_prompt_tokens == 12
    check(sched, kv)


def test_full_hit_recomputes_last_block():
    sched, kv = make(block_size=4)
    sched.add_request(Request("a", list(range(8))))
    step(sched)
    b = Request("b", list(range(8)))
    sched.add_request(b)
    out = sched.schedule()
    (s,) = [s for s in out.scheduled if s.request is b]
    assert (s.start, s.num_new_tokens, s.samples) == (4, 4, True)
    check(sched, kv)


def test_no_prefix_caching():
    sched, kv = make(block_size=4, caching=False)
    sched.add_request(Request("a", list(range(8))))
    step(sched)
    b = Request("b", list(range(8)))
    sched.add_request(b)
    sched.schedule()
    assert b.num_cached_prompt_tokens == 0 and kv.prefix_hit_rate == 0.0
    assert kv.pool.num_cached_blocks == 0


def test_preemption_recomputes_newest_and_everything_completes():
    sched, kv = make(num_blocks=9, block_size=4, budget=64)  # 8 usable blocks
    reqs = [Request(str(i), [i * 10 + j for j in range(7)]) for i in range(3)]  # 2 blocks each
    for r in reqs:
        sched.add_request(r)
    preempted = []
    for _ in range(200):
        if not sched.has_unfinished():
            break
        out = step(sched, max_tokens=12)
        preempted += [r.request_id for r in out.preempted]
        check(sched, kv)
    assert not sched.has_unfinished()
    assert preempted and preempted[0] == "2"  # the newest goes first
    assert all(r.num_output_tokens == 12 for r in reqs)
    assert kv.num_free_blocks == kv.num_usable_blocks


def test_abort_frees_at_once():
    sched, kv = make()
    r = Request("a", list(range(10)))
    sched.add_request(r)
    step(sched)
    assert kv.num_free_blocks < kv.num_usable_blocks
    assert sched.abort("a") and r.status is RequestStatus.FINISHED_ABORTED
    assert kv.num_free_blocks == kv.num_usable_blocks and sched.get("a") is None
    assert not sched.abort("a") and not sched.abort("nope")
    sched.add_request(Request("w", [1, 2]))
    assert sched.abort("w") and sched.num_waiting == 0


def test_abort_between_schedule_and_finish_step():
    sched, kv = make()
    sched.add_request(Request("a", list(range(10))))
    out = sched.schedule()
    sched.abort("a")
    sched.finish_step(out)
    assert kv.num_free_blocks == kv.num_usable_blocks


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_blocks=st.integers(8, 40), block_size=st.sampled_from([1, 2, 4, 16]),
       budget=st.integers(4, 64), chunked=st.booleans(), caching=st.booleans(), max_seqs=st.integers(1, 8))
def test_random_runs_keep_block_accounting(seed, num_blocks, block_size, budget, chunked, caching, max_seqs):
    rng = random.Random(seed)
    max_model_len = min(budget if not chunked else 64, (num_blocks - 1) * block_size)
    sched, kv = make(num_blocks, block_size, budget, max_seqs, chunked, caching, max_model_len)
    prefixes = [[rng.randrange(100) for _ in range(rng.randint(0, 12))] for _ in range(3)]
    added, steps = 0, 0
    while (added < 12 or sched.has_unfinished()) and steps < 2000:
        steps += 1
        action = rng.random()
        if added < 12 and action < 0.3:
            prompt = (rng.choice(prefixes) + [rng.randrange(100) for _ in range(rng.randint(1, 8))])
            prompt = prompt[:max_model_len - 1] or [1]
            sched.add_request(Request(f"r{added}", prompt))
            added += 1
        elif action < 0.35 and sched.has_unfinished():
            victim = rng.choice(list(sched._requests))
            assert sched.abort(victim)
        else:
            step(sched, token=rng.randrange(100), max_tokens=rng.randint(1, 10), rng=rng, finish_prob=0.05)
        check(sched, kv)
    assert not sched.has_unfinished(), f"stuck after {steps} steps: {sched.running} {list(sched.waiting)}"
    assert kv.num_free_blocks == kv.num_usable_blocks
    assert all(b.ref_cnt == 0 for b in kv.pool.blocks)


def test_shared_prefixes_hit_and_preemption_under_pressure():
    """A long random run with a tight pool: prefix hits must happen, preemption must happen, all must finish."""
    rng = random.Random(0)
    sched, kv = make(num_blocks=24, block_size=4, budget=32, max_seqs=8, max_model_len=64)
    system = list(range(16))
    for i in range(40):
        sched.add_request(Request(f"r{i}", system + [rng.randrange(100) for _ in range(rng.randint(1, 10))]))
    preemptions = 0
    for _ in range(5000):
        if not sched.has_unfinished():
            break
        out = step(sched, token=rng.randrange(100), max_tokens=rng.randint(5, 20))
        preemptions += len(out.preempted)
        check(sched, kv)
    assert not sched.has_unfinished()
    assert preemptions > 0
    assert kv.prefix_hits > 0 and kv.prefix_hit_rate > 0.3
    assert kv.num_free_blocks == kv.num_usable_blocks
