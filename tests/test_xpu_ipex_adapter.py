"""The IPEX adapter's translation to ``ipex.llm.modules`` calls, without IPEX: a stand-in module implements the
calling conventions measured on IPEX 2.8 (heads-major CPU cache; flash-attention causal and window conventions;
in-place rotary) in plain torch, and the adapter must then agree with ``unifer.ops.reference``. The real kernels
are checked by scripts/ci_xpu.sh (conformance through IPEX's CPU build)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

try:
    import unifer_xpu  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "xpu" / "src"))

from unifer.backends import AttentionMetadata  # noqa: E402
from unifer.ops import reference  # noqa: E402
from unifer_xpu import ipex_ops  # noqa: E402

BS, KVH, HD = 4, 2, 8


class FakePagedAttention:
    calls: list[dict] = []

    @staticmethod
    def reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping, *args):
        assert (slot_mapping >= 0).all(), "IPEX's CPU kernel writes out of bounds for slot -1"
        assert key.dtype == key_cache.dtype
        blocks, offsets = slot_mapping // key_cache.shape[2], slot_mapping % key_cache.shape[2]
        key_cache[blocks, :, offsets] = key
        value_cache[blocks, :, offsets] = value

    @staticmethod
    def flash_attn_varlen_func(out, q, kc, vc, cu_q, cu_k, max_q, max_k, scale, causal, block_table, alibi,
                               window_size_left=-1, window_size_right=-1, softcap=-1.0, **kw):
        FakePagedAttention.calls.append(dict(left=window_size_left, softcap=softcap, cu_k=cu_k.tolist()))
        assert causal and window_size_left != 0  # IPEX 2.8 CPU mishandles a left window of 0
        bs, group = kc.shape[2], q.shape[1] // kc.shape[1]
        for i in range(len(cu_q) - 1):
            q0, q1, k_len = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i + 1] - cu_k[i])
            blocks = block_table[i, : -(-k_len // bs)].long()
            k = kc[blocks].transpose(1, 2).reshape(-1, kc.shape[1], kc.shape[3])[:k_len].repeat_interleave(group, 1)
            v = vc[blocks].transpose(1, 2).reshape(-1, vc.shape[1], vc.shape[3])[:k_len].repeat_interleave(group, 1)
            s = torch.einsum("qhd,khd->hqk", q[q0:q1].double(), k.double()) * scale
            if softcap > 0:
                s = softcap * torch.tanh(s / softcap)
            q_pos = torch.arange(k_len - (q1 - q0), k_len)[:, None]  # causal, aligned to the sequence's end
            k_pos = torch.arange(k_len)[None, :]
            mask = k_pos <= q_pos
            if window_size_left >= 0:
                mask &= k_pos >= q_pos - window_size_left
            out[q0:q1] = torch.einsum("hqk,khd->qhd", s.masked_fill(~mask, float("-inf")).softmax(-1),
                                      v.double()).to(out.dtype)


def fake_rotary(query, key, sin, cos, rotary_dim, rotary_half, position_ids=None):
    assert rotary_half and rotary_dim == query.shape[-1] and sin.shape[-1] == rotary_dim
    half = rotary_dim // 2
    assert torch.equal(sin[:, :half], sin[:, half:]), "full-width tables repeat each half"
    for x in (query, key):
        x1, x2 = x[..., :half].clone(), x[..., half:].clone()
        c, s = cos[:, None, :half], sin[:, None, :half]
        x.copy_(torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1))  # IPEX rotates in place
    return query, key


@pytest.fixture(autouse=True)
def fake_ipex(monkeypatch):
    mods = types.SimpleNamespace(
        PagedAttention=FakePagedAttention,
        RMSNorm=types.SimpleNamespace(apply_function=lambda x, w, eps: reference.rms_norm(x, w, eps)),
        RotaryEmbedding=types.SimpleNamespace(apply_function=fake_rotary))
    monkeypatch.setattr(ipex_ops, "_modules", lambda: mods)
    FakePagedAttention.calls.clear()


def step(seqs, q_heads, gen):
    """A batch of (cached, new) tokens per sequence, written through the adapter into a heads-major cache and
    through the reference into a default-layout one, with block 0 left unused."""
    seq_lens = [c + n for c, n in seqs]
    need = [-(-n // BS) for n in seq_lens]
    ids = (torch.randperm(sum(need), generator=gen) + 1).tolist()
    tables = [ids[sum(need[:i]):sum(need[:i + 1])] for i in range(len(seqs))]
    table = torch.zeros(len(seqs), max(need) + 1, dtype=torch.int32)
    for i, t in enumerate(tables):
        table[i, : len(t)] = torch.tensor(t)
    slot = [tables[i][p // BS] * BS + p % BS for i, n in enumerate(seq_lens) for p in range(n)]
    keys, vals = torch.randn(len(slot), KVH, HD, generator=gen), torch.randn(len(slot), KVH, HD, generator=gen)
    num_blocks = sum(need) + 1
    mine = torch.full(ipex_ops.kv_cache_shape("cpu", num_blocks, BS, KVH, HD), float("nan"))
    ref = torch.full((2, num_blocks, BS, KVH, HD), float("nan"))
    padded = torch.tensor(slot + [-1, -1])  # padding tokens must be skipped
    ipex_ops.write_kv(torch.cat([keys, keys[:2]]), torch.cat([vals, vals[:2]]), mine, padded)
    reference.write_kv(keys, vals, ref, torch.tensor(slot))
    qsl = [0]
    for _, n in seqs:
        qsl.append(qsl[-1] + n)
    new = [s for i, (c, n) in enumerate(seqs) for s in slot[sum(seq_lens[:i]) + c: sum(seq_lens[:i]) + c + n]]
    md = AttentionMetadata(torch.tensor(qsl, dtype=torch.int32), torch.tensor(seq_lens, dtype=torch.int32), table,
                           torch.tensor(new), max(n for _, n in seqs), max(seq_lens), qsl, seq_lens)
    return torch.randn(qsl[-1], q_heads, HD, generator=gen), mine, ref, md


def test_write_kv_layout_and_padding():
    _, mine, ref, _ = step([(5, 3), (0, 6)], 4, torch.Generator().manual_seed(0))
    assert torch.equal(mine.transpose(2, 3).nan_to_num(7.0), ref.nan_to_num(7.0))


@pytest.mark.parametrize("window, cap", [(None, None), (3, None), (None, 5.0), (2, 5.0), (1, None)])
def test_paged_attention_matches_reference(window, cap):
    q, mine, ref, md = step([(9, 1), (0, 7), (6, 4)], 4, torch.Generator().manual_seed(1))
    got = ipex_ops.paged_attention(q, mine, md, scale=0.3, sliding_window=window, soft_cap=cap)
    want = reference.paged_attention(q.double(), ref.double(), md, scale=0.3, sliding_window=window, soft_cap=cap)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    if window == 1:
        assert not FakePagedAttention.calls  # answered without the kernel
    else:
        (call,) = FakePagedAttention.calls
        assert call["cu_k"] == [0, 10, 17, 27]
        assert call["left"] == (window - 1 if window else -1) and call["softcap"] == (cap or -1.0)


def test_rotary_leaves_inputs_alone():
    gen = torch.Generator().manual_seed(2)
    positions = torch.tensor([0, 5, 17, 3])
    q, k = torch.randn(4, 4, HD, generator=gen), torch.randn(4, 2, HD, generator=gen)
    inv = 1.0 / 10000 ** (torch.arange(0, HD, 2) / HD)
    freqs = torch.outer(torch.arange(32.0), inv)
    cache = torch.cat((freqs.cos(), freqs.sin()), -1)
    q0, k0 = q.clone(), k.clone()
    got = ipex_ops.rotary_embedding(positions, q, k, cache)
    want = reference.rotary_embedding(positions, q, k, cache)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    torch.testing.assert_close(got, want)


def test_rms_norm_with_residual():
    x, r, w = torch.randn(3, 16), torch.randn(3, 16), torch.randn(16)
    out, summed = ipex_ops.rms_norm(x, w, 1e-6, residual=r)
    torch.testing.assert_close(summed, x + r)
    torch.testing.assert_close(out, reference.rms_norm(x + r, w, 1e-6))


def test_layout_per_device():
    assert ipex_ops.kv_cache_shape("cpu", 10, 16, 2, 64) == (2, 10, 2, 16, 64)
    assert ipex_ops.kv_cache_shape("xpu", 10, 16, 2, 64) == (2, 10, 16, 2, 64)
