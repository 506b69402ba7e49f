"""Triton paged attention on a CUDA GPU: correctness pre-check, then decode and prefill timings.

Shape: Llama-3.2-1B attention (32 query heads, 8 KV heads, head_dim 64), bf16, block size 16.
Every number is measured in the same run as its baseline:
  * decode, batch 1/8/64 x context 1k/4k/16k: achieved K/V bandwidth (K/V bytes read / time) as a fraction of the
    device-to-device copy bandwidth (bytes read + written / time of a 1 GiB copy), and time against torch SDPA over
    the same K/V laid out contiguously [B, KH, ctx, D], and FlashInfer's paged decode (when importable) at the faster
    of its CUDA-core and tensor-core paths; and what a plain streaming read of the same K/V bytes reaches (the
    ceiling that a launch's fixed cost leaves for any kernel over so few bytes);
  * prefill, batch 4 x 1k/4k and 1 x 16k (causal): TFLOP/s against SDPA (flash backend where it takes the shape)
    on the same K/V laid out contiguously, and FlashInfer's paged prefill on the same cache.
Timings are triton.testing.do_bench medians. The decode rows read the cache in the layout the cuda backend stores
(UNIFER_CUDA_KV_LAYOUT: NHD by default, HND head-major), FlashInfer's in the same layout.

    python benchmarks/attention_cuda.py              # check, then benchmark (one table)
    python benchmarks/attention_cuda.py --check-only # correctness only (all kernels, several dtypes/shapes)
    python benchmarks/attention_cuda.py --captured [skip_empty_segments=0]
                                                     # decode at the split-KV segments of a graph captured long
    python benchmarks/attention_cuda.py --variants num_stages=4 tile_decode=64,num_stages=4
                                                     # config variants against the current row, interleaved
    python benchmarks/attention_cuda.py --prefill-variants unmasked_full_tiles=0  # the same on prefill shapes
    python benchmarks/attention_cuda.py --pages [128 32 16h 16]  # decode over page sizes and cache layouts
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace

import torch
import triton
import triton.language as tl
from unifer.backends.backend import AttentionMetadata
from unifer.kernels.triton import module, ops
from unifer.ops import reference as ref

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 64, 16


# ---------------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------------
def make_paged(query_lens, context_lens, *, heads, kv_heads, head_dim, block_size, dtype, device, seed=0, nan=True):
    """Random paged batch: shuffled block table, block 0 never used, unused slots NaN (when ``nan``)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    seq_lens = [c + q for c, q in zip(context_lens, query_lens, strict=True)]
    per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(per_seq) + 1
    perm = (torch.randperm(num_blocks - 1, generator=gen) + 1).to(torch.int32)
    table = torch.zeros(len(seq_lens), max(per_seq), dtype=torch.int32)
    at = 0
    for i, n in enumerate(per_seq):
        table[i, :n] = perm[at : at + n]
        at += n
    dgen = torch.Generator(device=device).manual_seed(seed)
    cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=dgen, device=device).to(dtype)
    if nan:  # poison the tail of every sequence's last block and block 0
        cache[:, 0] = float("nan")
        for i, s in enumerate(seq_lens):
            if s % block_size:
                cache[:, int(table[i, per_seq[i] - 1]), s % block_size :] = float("nan")
    total = sum(query_lens)
    q = torch.randn(total, heads, head_dim, generator=dgen, device=device).to(dtype)
    qsl = [0]
    for n in query_lens:
        qsl.append(qsl[-1] + n)
    md = AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_table=table.to(device),
        slot_mapping=torch.full((total,), -1, dtype=torch.int64, device=device),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_start_loc_host=qsl,
        seq_lens_host=seq_lens,
    )
    return q, cache, md


# ---------------------------------------------------------------------------------------------------------------
# correctness
# ---------------------------------------------------------------------------------------------------------------
ATT_TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3, torch.float32: 2e-4}


def check(device: str, small: bool) -> bool:
    att = module("attention")
    table = ops()
    dtypes = [torch.float32, torch.float16] if small else [torch.bfloat16, torch.float16, torch.float32]
    cases = [
        dict(query_lens=[1, 1, 1, 1], context_lens=[15, 16, 17, 300], heads=32, kv_heads=8, head_dim=64),
        dict(query_lens=[37, 1, 5, 1], context_lens=[0, 100, 64, 33], heads=32, kv_heads=8, head_dim=64),
        dict(query_lens=[20, 3], context_lens=[50, 0], heads=8, kv_heads=8, head_dim=80, block_size=32),
        dict(query_lens=[9, 1], context_lens=[40, 70], heads=16, kv_heads=2, head_dim=128, sliding_window=24),
        dict(query_lens=[4, 1], context_lens=[20, 90], heads=8, kv_heads=1, head_dim=96, soft_cap=30.0),
        dict(query_lens=[1, 1], context_lens=[2000, 77], heads=32, kv_heads=8, head_dim=256, num_segments=16),
        dict(
            query_lens=[1, 2],
            context_lens=[3000, 17],
            heads=32,
            kv_heads=8,
            head_dim=64,
            num_segments=None,
            sliding_window=1000,
        ),
    ]
    if small:
        cases = [
            dict(
                c, context_lens=[min(x, 40) for x in c["context_lens"]], query_lens=[min(x, 9) for x in c["query_lens"]]
            )
            for c in cases[:5]
        ]
    ok = True
    for dtype in dtypes:
        for i, c in enumerate(cases):
            c = dict(c)
            window, cap = c.pop("sliding_window", None), c.pop("soft_cap", None)
            segments = c.pop("num_segments", 1)
            bs = c.pop("block_size", BLOCK)
            for seg in [segments] if segments != 1 else [1, 8]:
                q, cache, md = make_paged(**c, block_size=bs, dtype=dtype, device=device, seed=i)
                scale = c["head_dim"] ** -0.5
                want = ref.paged_attention(
                    q.double(), cache.double(), md, scale=scale, sliding_window=window, soft_cap=cap
                )
                got = att.unified_attention(
                    q, cache, md, scale=scale, sliding_window=window, soft_cap=cap, num_segments=seg
                )
                err = (got.double() - want).abs().max().item()
                good = math.isfinite(err) and err <= ATT_TOL[dtype]
                ok &= good
                print(
                    f"  {'ok  ' if good else 'FAIL'} attention case {i} {str(dtype)[6:]:<8} segments={seg}: "
                    f"max err {err:.2e} (tol {ATT_TOL[dtype]:.0e})"
                )
        # the elementwise kernels at the Llama-3.2-1B shapes
        g = torch.Generator(device="cpu").manual_seed(1)
        n = 7 if small else 300

        def rnd(*shape, g=g, dtype=dtype):
            return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

        x, r, w = rnd(n, 2048), rnd(n, 2048), rnd(2048)
        o, s = table["rms_norm"](x, w, 1e-5, r)
        wo, ws = ref.rms_norm(x.double(), w.double(), 1e-5, r.double())
        errs = {"rms_norm": max(_rel(o, wo), _rel(s, ws))}
        qk = rnd(n, 48, 64)
        pos = torch.randint(0, 4096, (n,), generator=g).to(device)
        inv = 1.0 / (500000 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
        f = torch.arange(4096, dtype=torch.float64)[:, None] * inv
        cs = torch.cat((f.cos(), f.sin()), -1).to(device=device, dtype=torch.float32)
        gq, gk = table["rotary_embedding"](pos, qk[:, :32], qk[:, 32:40], cs)
        wq, wk = ref.rotary_embedding(pos, qk[:, :32].double(), qk[:, 32:40].double(), cs.double())
        errs["rotary_embedding"] = max(_rel(gq, wq), _rel(gk, wk))
        a = rnd(n, 2 * 8192 if not small else 2 * 96)
        errs["silu_and_mul"] = _rel(table["silu_and_mul"](a), ref.silu_and_mul(a.double()))
        k, v = rnd(n, 8, 64), rnd(n, 8, 64)
        slots = torch.randperm(4 * 16 * 8, generator=g)[:n].to(device)
        slots[::5] = -1
        c1 = torch.full((2, 4 * 8, 16, 8, 64), float("nan"), device=device, dtype=dtype)
        c2 = c1.clone()
        table["write_kv"](k, v, c1, slots)
        ref.write_kv(k, v, c2, slots)
        errs["write_kv"] = 0.0 if torch.equal(c1.nan_to_num(7.0), c2.nan_to_num(7.0)) else float("inf")
        c1.fill_(float("nan"))
        c2 = torch.full(c1.shape, float("nan"), device=device, dtype=torch.float64)
        gq = table["rotary_write_kv"](pos, qk[:, :32], qk[:, 32:40], qk[:, 40:], cs, c1, slots)
        wq = ref.rotary_write_kv(pos, qk[:, :32].double(), qk[:, 32:40].double(), qk[:, 40:].double(),
                                 cs.double(), c2, slots)
        same_slots = torch.equal(c1.isnan(), c2.isnan())
        errs["rotary_write_kv"] = max(_rel(gq, wq), _rel(c1.nan_to_num(0.0), c2.nan_to_num(0.0))) if same_slots \
            else float("inf")
        tol = {torch.bfloat16: 1.6e-2, torch.float16: 2e-3, torch.float32: 1e-5}[dtype]
        for name, err in errs.items():
            good = math.isfinite(err) and err <= tol
            ok &= good
            print(f"  {'ok  ' if good else 'FAIL'} {name:<17} {str(dtype)[6:]:<8}: rel err {err:.2e} (tol {tol:.0e})")
    return ok


def _rel(got, want) -> float:
    return ((got.double() - want).abs().max() / want.abs().max().clamp(min=1.0)).item()


# ---------------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------------
def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median")  # milliseconds


def bench_graph(fn) -> float:
    """Median ms of ``fn`` replayed from a CUDA graph, as the engine runs decode steps: no host launch cost.
    Falls back to eager timing for a callable that cannot be captured."""
    from triton.testing import do_bench_cudagraph

    try:
        return do_bench_cudagraph(fn, rep=100, return_mode="median")
    except Exception:
        torch.cuda.synchronize()
        return bench(fn)


@triton.jit
def _read_kernel(ptr, n, sink, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc ^= tl.load(ptr + offs, mask=offs < n, other=0)
    tl.store(sink + pid, tl.xor_sum(acc, 0))


def read_all(t: torch.Tensor) -> torch.Tensor:
    """Reads every byte of ``t`` once (an xor of its 32-bit words into one value per program)."""
    stored = t if t.is_contiguous() else t.transpose(2, 3)  # a head-major cache is the view of its transpose
    words = stored.view(-1).view(torch.int32)
    block = 4096
    programs = min(8 * torch.cuda.get_device_properties(t.device).multi_processor_count,
                   triton.cdiv(words.numel(), block))
    sink = torch.empty(programs, dtype=torch.int32, device=t.device)
    grid = (programs,)
    _read_kernel[grid](words, words.numel(), sink, BLOCK=block, num_warps=8)
    return sink


def copy_bandwidth(device) -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * (1 << 30) / (ms * 1e-3)  # bytes read + written per second


def sdpa(q, k, v, causal):
    try:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    except TypeError:  # torch without enable_gqa
        g = q.shape[1] // k.shape[1]
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=causal
        )


def _flashinfer_pages(md, batch, kv_len):
    """FlashInfer's description of the block table: page offsets per sequence, the pages, the last page's fill."""
    device = md.block_table.device
    per_seq = -(-kv_len // BLOCK)
    indptr = torch.arange(batch + 1, dtype=torch.int32, device=device) * per_seq
    indices = md.block_table[:, :per_seq].reshape(-1).contiguous()
    last = torch.full((batch,), kv_len - (per_seq - 1) * BLOCK, dtype=torch.int32, device=device)
    return indptr, indices, last


def flashinfer_decode(q, caches, md, batch, ctx, tensor_cores, head_major=False):
    """A callable running FlashInfer's paged decode on each of the same caches, or an error string.
    ``tensor_cores``: FlashInfer's tensor-core decode (its prefill kernel), which it recommends for GQA groups >= 4;
    ``head_major``: the caches are head-major, which FlashInfer reads as its "HND" layout."""
    try:
        import flashinfer
    except Exception:
        return "not installed"
    try:
        workspace = torch.empty(256 << 20, dtype=torch.uint8, device=q.device)
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "HND" if head_major else "NHD",
                                                                use_tensor_cores=tensor_cores)
        wrapper.plan(*_flashinfer_pages(md, batch, ctx), HEADS, KV_HEADS, HEAD_DIM, BLOCK, data_type=q.dtype,
                     q_data_type=q.dtype)
        kvs = [(cache[0].transpose(1, 2), cache[1].transpose(1, 2)) if head_major else (cache[0], cache[1])
               for cache in caches]
        wrapper.run(q, kvs[0])
        return lambda: [wrapper.run(q, kv) for kv in kvs]
    except Exception as exc:
        return f"error: {type(exc).__name__}: {str(exc)[:60]}"


def flashinfer_prefill(q, cache, md, batch, seqlen, context=0):
    """A callable running FlashInfer's causal paged prefill on the same cache (``seqlen`` new tokens per sequence
    after ``context`` cached ones), or an error string."""
    try:
        import flashinfer
    except Exception:
        return "not installed"
    try:
        workspace = torch.empty(256 << 20, dtype=torch.uint8, device=q.device)
        wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD")
        qo_indptr = torch.arange(batch + 1, dtype=torch.int32, device=q.device) * seqlen
        wrapper.plan(qo_indptr, *_flashinfer_pages(md, batch, context + seqlen), HEADS, KV_HEADS, HEAD_DIM, BLOCK,
                     causal=True, q_data_type=q.dtype, kv_data_type=cache.dtype)
        kv = (cache[0], cache[1])
        wrapper.run(q, kv)
        return lambda: wrapper.run(q, kv)
    except Exception as exc:
        return f"error: {type(exc).__name__}: {str(exc)[:60]}"


def bench_batch(query_lens, context_lens, dtype, device, block_size=BLOCK, head_major=False):
    """The benchmark shape's paged batch, without NaN poisoning; ``head_major``: the same logical cache with each
    page's positions of one KV head adjacent in memory (HND strides)."""
    q, cache, md = make_paged(query_lens, context_lens, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                              block_size=block_size, dtype=dtype, device=device, nan=False)
    if head_major:
        cache = cache.transpose(2, 3).contiguous().transpose(2, 3)
    return q, cache, md


def contiguous_kv(cache, md, batch, length):
    """The first ``length`` positions of each sequence's K and V, laid out contiguously for SDPA: [B, KH, len, D]."""
    pages = md.block_table[:, :-(-length // cache.shape[2])].long()
    k = cache[0][pages].reshape(batch, -1, KV_HEADS, HEAD_DIM)[:, :length]
    v = cache[1][pages].reshape(batch, -1, KV_HEADS, HEAD_DIM)[:, :length]
    return k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()


def sdpa_decode_inputs(q, cache, md, batch, ctx, copies):
    """A decode batch posed to SDPA: the query as [B, H, 1, D], and ``copies`` copies of the cache's K/V laid out
    contiguously (as many as the kernel's cold-L2 copies)."""
    k, v = contiguous_kv(cache, md, batch, ctx)
    return (q.view(batch, 1, HEADS, HEAD_DIM).transpose(1, 2),
            [(k, v)] + [(k.clone(), v.clone()) for _ in range(copies - 1)])


def cold_decode_batch(batch: int, ctx: int, device: str, block_size=BLOCK, head_major=False):
    """A decode batch of the benchmark shape, with copies of its cache that overflow L2 four times: (q, md, caches,
    K/V bytes). A cold-L2 timing replays the kernel over every copy and divides by their number, as in a decode
    step, where each layer's weights evict the previous layer's K/V."""
    q, cache, md = bench_batch([1] * batch, [ctx - 1] * batch, torch.bfloat16, device, block_size, head_major)
    kv_bytes = 2 * batch * ctx * KV_HEADS * HEAD_DIM * cache.element_size()
    l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20)
    n = max(1, math.ceil(4 * l2_bytes / kv_bytes))
    return q, md, [cache] + [cache.clone() for _ in range(n - 1)], kv_bytes  # clone keeps a head-major layout


def engine_head_major() -> bool:
    """Whether the cuda backend stores its cache head-major (UNIFER_CUDA_KV_LAYOUT=HND): the decode table times the
    layout the engine runs."""
    from unifer_cuda import CUDABackend

    return CUDABackend().kv_head_major


def run_benchmarks(device: str) -> None:
    dtype = torch.bfloat16
    props = torch.cuda.get_device_properties(device)
    copy_bw = copy_bandwidth(device)
    attention = ops()["paged_attention"]
    head_major = engine_head_major()
    print(
        f"\ndevice: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, "
        f"triton {__import__('triton').__version__}; decode over the engine's cache layout, "
        f"{'HND' if head_major else 'NHD'}"
    )
    print(f"device-to-device copy bandwidth: {copy_bw / 1e9:.0f} GB/s (1 GiB copy, read + write)")
    header = (
        f"{'kind':<8}{'batch':>6}{'context':>9}{'triton ms':>11}{'GB/s':>8}{'% copy':>8}{'plain read':>15}"
        f"{'TFLOP/s':>9}"
        f"{'SDPA ms':>9}{'SDPA/tri':>9}{'FI ms':>8}{'FI/tri':>8}{'FI path':>8}{'eager ms':>10}"
    )
    rows = []
    for batch in (1, 8, 64):
        for ctx in (1024, 4096, 16384):
            q, md, caches, kv_bytes = cold_decode_batch(batch, ctx, device, head_major=head_major)
            cache, n = caches[0], len(caches)
            scale = HEAD_DIM**-0.5
            t_eager = bench(lambda q=q, c=cache, md=md, s=scale: attention(q, c, md, scale=s))
            t = bench_graph(lambda q=q, md=md, s=scale, cs=caches: [attention(q, c, md, scale=s) for c in cs]) / n
            bw = kv_bytes / (t * 1e-3)
            # What a plain streaming read of the same bytes reaches, timed the same way: at small sizes a launch's
            # fixed cost, not bandwidth, bounds any kernel.
            t_read = bench_graph(lambda cs=caches: [read_all(c) for c in cs]) / n
            plain_read = cache.numel() * cache.element_size() / (t_read * 1e-3)
            qs, kvs = sdpa_decode_inputs(q, cache, md, batch, ctx, n)
            ts = bench_graph(lambda qs=qs, kvs=kvs: [sdpa(qs, k, v, False) for k, v in kvs]) / n
            # FlashInfer at the faster of its two decode paths (CUDA cores / tensor cores), named in 'FI path'.
            fi_times = {}
            for label, tc in (("cc", False), ("tc", True)):
                fi = flashinfer_decode(q, caches, md, batch, ctx, tc, head_major)
                if callable(fi):
                    fi_times[label] = bench_graph(fi) / n
            fi_path = min(fi_times, key=fi_times.get) if fi_times else None
            tf = fi_times.get(fi_path)
            rows.append(
                f"{'decode':<8}{batch:>6}{ctx:>9}{t:>11.4f}{bw / 1e9:>8.0f}{100 * bw / copy_bw:>7.0f}%"
                f"{100 * plain_read / copy_bw:>14.0f}%"
                f"{'':>9}{ts:>9.4f}{ts / t:>9.2f}"
                + (f"{tf:>8.4f}{tf / t:>8.2f}{fi_path:>8}" if tf is not None else f"  {fi}")
                + f"{t_eager:>10.4f}"
            )
            del caches, kvs
    for batch, seqlen in ((4, 1024), (4, 4096), (1, 16384)):
        q, cache, md = bench_batch([seqlen] * batch, [0] * batch, dtype, device)
        scale = HEAD_DIM**-0.5
        t = bench(lambda q=q, c=cache, md=md, s=scale: attention(q, c, md, scale=s))
        flops = 4 * batch * HEADS * HEAD_DIM * seqlen * seqlen / 2  # QK^T and PV, causal half
        k, v = contiguous_kv(cache, md, batch, seqlen)
        qs = q.view(batch, seqlen, HEADS, HEAD_DIM).transpose(1, 2).contiguous()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                sdpa(qs, k, v, True)
                ts = bench(lambda qs=qs, k=k, v=v: sdpa(qs, k, v, True))
            label = "flash"
        except RuntimeError:
            ts = bench(lambda qs=qs, k=k, v=v: sdpa(qs, k, v, True))
            label = "auto"
        fi = flashinfer_prefill(q, cache, md, batch, seqlen)
        tf = bench(fi) if callable(fi) else None
        if tf is not None:  # the same attention, or the comparison means nothing
            err = _rel(fi().float(), attention(q, cache, md, scale=scale).float())
            assert err < 2e-2, f"FlashInfer prefill differs from the Triton kernel: relative error {err:.2e}"
        rows.append(
            f"{'prefill':<8}{batch:>6}{seqlen:>9}{t:>11.4f}{'':>8}{'':>8}{'':>15}{flops / (t * 1e-3) / 1e12:>9.1f}"
            f"{ts:>9.4f}{ts / t:>9.2f}"
            + (f"{tf:>8.4f}{tf / t:>8.2f}{'':>8}" if tf is not None else f"  {fi}")
            + f"  (SDPA {label}: {flops / (ts * 1e-3) / 1e12:.1f} TFLOP/s"
            + (f", FlashInfer {flops / (tf * 1e-3) / 1e12:.1f})" if tf is not None else ")")
        )
    print(header)
    for row in rows:
        print(row)
    print("SDPA/tri and FI/tri > 1 mean the Triton kernel is faster; % copy = K/V bandwidth / copy bandwidth;")
    print("plain read = what a streaming read of the same K/V bytes (a Triton kernel that xors them) reaches, as")
    print("a share of the copy bandwidth, timed like the decode rows: the ceiling a launch's cost leaves at that size.")
    print("decode rows: every kernel timed as CUDA-graph replays (as the engine runs decode) with a cold L2 (each")
    print("replay cycles through copies of the inputs 4x the L2 size); 'eager ms' is the Triton kernel launched")
    print("from Python each time. prefill rows: eager launches.")


def sweep(device: str) -> None:
    """Decode launch variants (tile, stages, warps) x split-KV segment counts, timed as graph replays with a cold
    L2 (as ``run_benchmarks``), one table: the data the decode rows of the configs table and
    ``choose_num_segments`` are chosen from. '*' marks each row's best, '^' the count the current config picks."""
    from unifer.kernels.triton.configs import attention_launch, choose_num_segments
    from unifer.kernels.triton.util import current_configs

    att = module("attention")
    base = current_configs(torch.device(device)).attention
    variants = {
        f"t{tile}s{stages}w{warps}": replace(base, tile_decode=tile, num_stages=stages, num_warps=warps)
        for tile, stages, warps in ((64, 3, 4), (64, 4, 4), (128, 2, 4), (128, 3, 4), (128, 4, 4), (256, 2, 8))
    }
    segments = (1, 2, 4, 8, 16, 32, 64)
    copy_bw = copy_bandwidth(device)
    print(f"\nsplit-KV sweep (ms, graph replays, cold L2; best per row *, current pick ^), copy bandwidth "
          f"{copy_bw / 1e9:.0f} GB/s")
    cells = "".join(f"{'seg ' + str(s):>9}" for s in segments)
    print(f"{'batch':>5}{'ctx':>7}{'variant':>10}{cells}  best %copy")
    for batch in (1, 8, 64):
        for ctx in (1024, 4096, 16384):
            q, md, caches, kv_bytes = cold_decode_batch(batch, ctx, device)
            n = len(caches)
            for name, cfg in variants.items():
                tile = attention_launch(cfg, head_dim=HEAD_DIM, group=HEADS // KV_HEADS, decode=True)["TILE"]
                pick = choose_num_segments(batch, ctx, cfg, num_seqs=batch, num_kv_heads=KV_HEADS, tile=tile)
                times = [bench_graph(lambda s=s, q=q, cs=caches, md=md, cfg=cfg: [att.unified_attention(
                    q, c, md, scale=HEAD_DIM**-0.5, num_segments=s, config=cfg) for c in cs]) / n for s in segments]
                best = min(times)
                cells = "".join(f"{t:>7.4f}{'*' if t == best else ' '}{'^' if s == pick else ' '}"
                                for s, t in zip(segments, times, strict=True))
                print(f"{batch:>5}{ctx:>7}{name:>10}{cells}  {100 * kv_bytes / (best * 1e-3) / copy_bw:>5.0f}%")
            del q, md, caches


PAGE_LAYOUTS = ("16", "16h", "32", "64", "64h", "128", "128h")
PAGE_SHAPES = ((1, 256), (1, 1024), (1, 4096), (1, 16384), (8, 1024), (8, 4096), (8, 16384), (64, 1024), (64, 4096),
               (64, 16384))


def _page_run(batch: int, ctx: int, device: str, name: str, check: bool):
    """(copies, callable, K/V bytes) timing decode over a fresh cache of layout ``name`` ("BS" or "BSh"), or SDPA
    over the same K/V laid out contiguously (``name`` "SDPA"); with ``check``, the kernel's output is first compared
    with SDPA's on its own K/V."""
    attention = ops()["paged_attention"]
    bs = 16 if name == "SDPA" else int(name.rstrip("h"))
    q, md, caches, kv_bytes = cold_decode_batch(batch, ctx, device, bs, name.endswith("h"))
    if name == "SDPA":
        qs, kvs = sdpa_decode_inputs(q, caches[0], md, batch, ctx, len(caches))
        return len(kvs), lambda: [sdpa(qs, k, v, False) for k, v in kvs], kv_bytes
    if check:
        qs, [(k, v)] = sdpa_decode_inputs(q, caches[0], md, batch, ctx, 1)
        want = sdpa(qs, k, v, False).transpose(1, 2).reshape(q.shape).double()
        err = _rel(attention(q, caches[0], md, scale=HEAD_DIM**-0.5).float(), want)
        assert err < 2e-2, f"{name} at batch {batch} x {ctx} differs from SDPA: relative error {err:.2e}"
    return len(caches), lambda: [attention(q, c, md, scale=HEAD_DIM**-0.5) for c in caches], kv_bytes


def pages(device: str, layouts: list[str]) -> None:
    """Decode attention over caches of other page sizes and layouts ("BS" token-major NHD, "BSh" head-major HND
    strides), the current config row at its fitted segment count, against block size 16 NHD (the engine's
    default) and SDPA on the same K/V laid out contiguously: graph replays, cold L2, best of 3 interleaved rounds.
    Each round allocates every variant's inputs afresh, one variant at a time in the order given, SDPA's last, so
    the best of three is also the best of three placements in memory. Outputs are checked against SDPA's first."""
    copy_bw = copy_bandwidth(device)
    order = [*layouts, *([] if "16" in layouts else ["16"])]
    names = ["16", *[name for name in order if name != "16"], "SDPA"]
    print(f"\npage sizes and layouts (ms, graph replays, cold L2, best of 3 rounds, each allocating afresh; % copy; "
          f"ratio: block size 16 NHD / variant; h: head-major), copy bandwidth {copy_bw / 1e9:.0f} GB/s; in the "
          f"order {' '.join(order)} SDPA")
    print(f"{'batch':>5}{'ctx':>7}" + "".join(f"{name:>21}" for name in names))
    for batch, ctx in PAGE_SHAPES:
        best = dict.fromkeys(names, float("inf"))
        for round_ in range(3):
            for name in [*order, "SDPA"]:
                n, fn, kv_bytes = _page_run(batch, ctx, device, name, check=round_ == 0)
                best[name] = min(best[name], bench_graph(fn) / n)
                del fn
        cells = "".join(f"{best[name]:>9.4f} {100 * kv_bytes / (best[name] * 1e-3) / copy_bw:>4.0f}% "
                        f"{best['16'] / best[name]:>5.3f}" for name in names)
        print(f"{batch:>5}{ctx:>7}{cells}")


def config_rows(base, specs: list[str]) -> dict:
    """The current attention config row and one variant per spec ("field=N[,field=N...]"), by name."""
    rows = {"current": base}
    for spec in specs:
        rows[spec] = replace(base, **{k: int(v) for k, v in (field.split("=") for field in spec.split(","))})
    return rows


def variants(device: str, specs: list[str]) -> None:
    """Config variants (each "field=N[,field=N...]" of the attention config) against the current row, each at the
    segment count the heuristic fits, timed as the decode table times them (graph replays, cold L2) and interleaved
    (three rounds, best kept): the data for switching one on. Every variant's output is checked against the current
    row's first."""
    from unifer.kernels.triton.util import current_configs

    att = module("attention")
    base = current_configs(torch.device(device)).attention
    rows = config_rows(base, specs)
    copy_bw = copy_bandwidth(device)
    print(f"\nconfig variants (ms, graph replays, cold L2, best of 3 interleaved rounds; ratio: current / variant), "
          f"copy bandwidth {copy_bw / 1e9:.0f} GB/s")
    print(f"{'batch':>5}{'ctx':>7}" + "".join(f"{name:>22}" for name in rows))
    for batch in (1, 8, 64):
        for ctx in (1024, 4096, 16384):
            q, md, caches, kv_bytes = cold_decode_batch(batch, ctx, device)
            n, cache = len(caches), caches[0]
            want = att.unified_attention(q, cache, md, scale=HEAD_DIM**-0.5, config=base).float()
            for name, cfg in rows.items():
                err = (att.unified_attention(q, cache, md, scale=HEAD_DIM**-0.5, config=cfg).float() - want).abs().max()
                assert err.item() < 2e-2, f"{name} at batch {batch} x {ctx} differs from the current row by {err}"
            best = dict.fromkeys(rows, float("inf"))
            for _ in range(3):
                for name, cfg in rows.items():
                    t = bench_graph(lambda cfg=cfg, q=q, md=md, cs=caches: [
                        att.unified_attention(q, c, md, scale=HEAD_DIM**-0.5, config=cfg) for c in cs]) / n
                    best[name] = min(best[name], t)
            cells = "".join(f"{t:>9.4f} {100 * kv_bytes / (t * 1e-3) / copy_bw:>4.0f}% {best['current'] / t:>5.3f}"
                            for t in best.values())
            print(f"{batch:>5}{ctx:>7}{cells}")
            del caches


PREFILL_SHAPES = (  # (sequences, new tokens each, context before them)
    (4, 1024, 0), (4, 4096, 0), (1, 16384, 0), (1, 2048, 14336))


def prefill_variants(device: str, specs: list[str]) -> None:
    """Prefill config variants against the current row, as ``variants`` does for decode: eager launches (as the
    engine runs steps with prefill tokens), interleaved, best of three rounds, outputs checked; then FlashInfer's
    paged prefill on the same cache and SDPA (flash) on the same K/V laid out contiguously, in the same rounds. The
    last shape is a 2k-token chunk after a 14k context, which SDPA's causal mask (aligned top-left) cannot pose."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from unifer.kernels.triton.util import current_configs

    att = module("attention")
    base = current_configs(torch.device(device)).attention
    rows = config_rows(base, specs)

    print("\nprefill config variants (ms, eager, best of 3 interleaved rounds; TFLOP/s; ratio: current / variant)")
    print(f"{'seqs':>5}{'new':>7}{'ctx':>7}" + "".join(f"{name:>28}" for name in [*rows, "FlashInfer", "SDPA"]))
    for batch, new, ctx in PREFILL_SHAPES:
        q, cache, md = bench_batch([new] * batch, [ctx] * batch, torch.bfloat16, device)
        flops = 4 * batch * HEADS * HEAD_DIM * new * (ctx + new / 2)  # QK^T and PV over the causal part
        want = att.unified_attention(q, cache, md, scale=HEAD_DIM**-0.5, config=base).float()
        for name, cfg in rows.items():
            err = _rel(att.unified_attention(q, cache, md, scale=HEAD_DIM**-0.5, config=cfg).float(), want)
            assert err < 2e-2, f"{name} at {batch} x {new} after {ctx} differs from the current row by {err:.2e}"
        runs = {name: (lambda cfg=cfg, q=q, md=md, c=cache: att.unified_attention(
            q, c, md, scale=HEAD_DIM**-0.5, config=cfg)) for name, cfg in rows.items()}
        fi = flashinfer_prefill(q, cache, md, batch, new, ctx)
        if callable(fi):
            err = _rel(fi().float(), want)
            assert err < 2e-2, f"FlashInfer prefill differs from the Triton kernel: relative error {err:.2e}"
            runs["FlashInfer"] = fi
        if ctx == 0:
            k, v = contiguous_kv(cache, md, batch, new)
            qs = q.view(batch, new, HEADS, HEAD_DIM).transpose(1, 2).contiguous()
            runs["SDPA"] = lambda qs=qs, k=k, v=v: sdpa(qs, k, v, True)
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(3):
            for name, run in runs.items():
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    best[name] = min(best[name], bench(run))
        cells = "".join(f"{t:>9.4f} {flops / (t * 1e-3) / 1e12:>7.1f} {best['current'] / t:>6.3f}    "
                        for t in best.values())
        print(f"{batch:>5}{new:>7}{ctx:>7}{cells}")


def captured(device: str, specs: list[str]) -> None:
    """Decode attention as a CUDA graph runs it: the runner captures each batch bucket with the segment count of
    the longest context (``choose_num_segments`` at ``max_model_len``), then replays it at every shorter one.
    Times that count against the one fitted to the actual context, in the same run (graph replays, cold L2), for
    the current config row and each variant in ``specs`` ("field=N[,field=N...]", as ``--variants`` takes)."""
    from unifer.kernels.triton.configs import attention_launch, choose_num_segments
    from unifer.kernels.triton.util import current_configs

    att = module("attention")
    cfg = current_configs(torch.device(device)).attention
    rows = config_rows(cfg, specs)
    tile = attention_launch(cfg, head_dim=HEAD_DIM, group=HEADS // KV_HEADS, decode=True)["TILE"]
    lengths = (2048, 131072)
    print("\ndecode attention at the segment count a graph captured for max_model_len runs (ms, graph replays,")
    print("cold L2), against the count fitted to the context; ratio > 1: the captured count is slower than the")
    print("current row at the fitted count")
    print(f"{'row':>24}{'batch':>6}{'ctx':>7}{'fitted':>13}" + "".join(f"{'@ ' + str(m):>21}" for m in lengths))
    for batch in (1, 2, 4, 8):
        for ctx in (256, 1024, 4096):
            q, md, caches, _ = cold_decode_batch(batch, ctx, device)
            cache, n = caches[0], len(caches)

            def timed(s, c, md, q=q, caches=caches, n=n):
                return bench_graph(lambda: [att.unified_attention(q, k, md, scale=HEAD_DIM**-0.5, num_segments=s,
                                                                  config=c) for k in caches]) / n

            def run(s, c, md, q=q, k=cache):
                return att.unified_attention(q, k, md, scale=HEAD_DIM**-0.5, num_segments=s, config=c).float()

            fit, *counts = (choose_num_segments(batch, length, cfg, num_seqs=batch, num_kv_heads=KV_HEADS, tile=tile)
                            for length in (ctx, *lengths))
            bound = replace(md, max_seq_len_is_bound=True)  # as the runner captures: max_model_len bounds the context
            want = run(fit, cfg, md)
            for name, row in rows.items():  # every count and row gives the same output before any is timed
                for s in counts:
                    err = (run(s, row, bound) - want).abs().max().item()
                    assert err < 2e-2, f"{name}, batch {batch} ctx {ctx}: {s} segments differ from {fit} by {err}"
            fitted = timed(fit, cfg, md)
            for name, row in rows.items():
                cells = ""
                for s in counts:
                    t = timed(s, row, bound)
                    cells += f"{s:>5} seg {t:.4f} {t / fitted:>4.2f}"
                print(f"{name:>24}{batch:>6}{ctx:>7}{fit:>3} seg {fitted:.4f}{cells}")
            del caches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-only", action="store_true", help="run the correctness pre-check only")
    parser.add_argument("--sweep", action="store_true", help="time decode launch variants x split-KV segments only")
    parser.add_argument("--variants", nargs="+", metavar="FIELD=N[,FIELD=N]",
                        help="time these attention config variants against the current config row only")
    parser.add_argument("--prefill-variants", nargs="+", metavar="FIELD=N[,FIELD=N]",
                        help="time these config variants on prefill shapes against the current row only")
    parser.add_argument("--pages", nargs="*", metavar="BS[h]",
                        help="time decode over other page sizes and cache layouts (h: head-major), allocated in the "
                             f"order given (default {' '.join(PAGE_LAYOUTS)}), against block size 16 only")
    parser.add_argument("--captured", nargs="*", metavar="FIELD=N[,FIELD=N]",
                        help="time decode at the segment count a graph captured for a long max_model_len runs only,"
                             " for the current row and these variants")
    parser.add_argument(
        "--device",
        default="cuda",
        help="cuda (default); cpu runs a tiny check under TRITON_INTERPRET=1 (a dry run of this script)",
    )
    args = parser.parse_args()
    if args.captured is not None:  # checks its own outputs
        captured(args.device, args.captured)
        return 0
    if args.pages is not None:  # checks its own outputs
        pages(args.device, args.pages or list(PAGE_LAYOUTS))
        return 0
    small = args.device == "cpu"
    if small:
        _interpreter_compat()
    print("correctness against unifer.ops.reference (float64):")
    if not check(args.device, small):
        print("correctness check FAILED: no timings")
        return 1
    print("correctness: all ok")
    if args.check_only or small:
        return 0
    if args.sweep:
        sweep(args.device)
        return 0
    if args.variants:
        variants(args.device, args.variants)
        return 0
    if args.prefill_variants:
        prefill_variants(args.device, args.prefill_variants)
        return 0
    run_benchmarks(args.device)
    return 0


def _interpreter_compat() -> None:
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("--device cpu needs TRITON_INTERPRET=1 in the environment")
    import triton.runtime.interpreter as interp

    original = interp._patch_lang_tensor

    def patched(tensor, scope):  # NumPy >= 2.4 refuses int() of the interpreter's 1-element scalars
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interp._patch_lang_tensor = patched


if __name__ == "__main__":
    raise SystemExit(main())
