"""Launch configurations of the Triton kernels, keyed by (vendor, arch).

A vendor is Triton's backend name ("cuda", "hip", "xpu", ...) and an arch is what Triton's ``GPUTarget`` carries
(an int compute capability such as 90 for CUDA, a string such as "gfx942" for HIP). Lookup tries the exact
(vendor, arch), then (vendor, None), then ("default", None), so a backend adds its tuned rows (e.g. ROCm CDNA
configs) without touching the kernels. This module imports neither torch nor triton.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from unifer.pow2 import next_pow2


@dataclass(frozen=True)
class AttentionConfig:
    # Decode-only batches (max_query_len == 1): memory bound, small query blocks.
    block_m: int = 16  # query rows per program (query tokens x query heads of one KV-head group)
    tile_decode: int = 32  # KV positions per inner-loop step
    num_warps: int = 4
    num_stages: int = 1
    # Batches with prefill tokens: larger query blocks so each KV tile serves more queries.
    block_m_prefill: int = 64
    tile_prefill: int = 32
    num_warps_prefill: int = 4
    num_stages_prefill: int = 1
    # Split-KV: used when the batch has at most this many tokens and its longest context exceeds min_split_len.
    split_max_tokens: int = 128
    split_min_seq_len: int = 1024
    num_segments: int = 16  # the fixed segment count, or the cap when split_target_programs is set
    # 0: always num_segments. Otherwise the fewest segments (a power of two, at most num_segments, at least one KV
    # tile each) that give about this many programs over all sequences and KV heads: enough loads in flight to
    # saturate memory without paying the merge for many near-empty segments.
    split_target_programs: int = 0
    reduce_num_warps: int = 4
    # 1: batches with prefill tokens skip the causal and bounds masks on the KV tiles that every query row sees
    # whole, in a loop of their own. It costs registers (sm_80 prefill 168 -> 194, CDNA 92 -> 116), so a row turns
    # it on where it was timed faster. Decode launches always mask every tile: their 16-row blocks make the masks
    # cheap, and the second loop took the sm_90 split-KV decode kernel from 110 to 164 registers.
    unmasked_full_tiles: int = 0
    # 1: in launches whose metadata only bounds the contexts (``max_seq_len_is_bound``: the runner's CUDA graphs,
    # captured with the segment count of max_model_len), split-KV segments that get no tile of their query block
    # end before the dependent-launch wait, storing nothing, and the merge reads only the segments that got tiles.
    skip_empty_segments: int = 0


@dataclass(frozen=True)
class ElementwiseConfig:
    num_warps: int = 4
    max_block: int = 8192  # the widest row one program handles in a single pass (rms_norm)


@dataclass(frozen=True)
class KernelConfigs:
    attention: AttentionConfig = AttentionConfig()
    elementwise: ElementwiseConfig = ElementwiseConfig()
    # Programmatic dependent launch (``dependent_launch`` module): CUDA sm_90 and later only.
    dependent_launch: bool = False


_DEFAULT = KernelConfigs()
# Shared by the CDNA rows below; the split-KV segment count follows each part's CU count.
_CDNA_ATTENTION = replace(_DEFAULT.attention, tile_decode=64, block_m_prefill=64, tile_prefill=16)

CONFIGS: dict[tuple[str, int | str | None], KernelConfigs] = {
    ("default", None): _DEFAULT,
    # Ampere (A100): 108 SMs, 164 KiB shared memory per SM.
    ("cuda", 80): KernelConfigs(
        attention=replace(
            _DEFAULT.attention,
            tile_decode=64,
            num_warps=4,
            num_stages=2,
            block_m_prefill=64,
            tile_prefill=64,
            num_warps_prefill=4,
            num_stages_prefill=2,
        ),
    ),
    # Hopper (H100/H200): 132 SMs. Decode rows from the split-KV sweeps on an H200 (benchmarks/RESULTS.md):
    # 128-position tiles beat 64 and 256 (and 8 warps) at every batch and context; a third stage gains 1-7% at
    # batch 1-8 and is within 1% at batch 64; and ~512 programs was the best segment count at batch 1, 8 and 64.
    # Prefill skipping the masks on whole tiles was 1.15-1.32x faster at 4 x 1k to 1 x 16k tokens. Skipping empty
    # segments took the batch-1 engine step at max_model_len 131072 from 1.303 to 1.257 ms on an H100.
    ("cuda", 90): KernelConfigs(
        attention=replace(
            _DEFAULT.attention,
            tile_decode=128,
            num_warps=4,
            num_stages=3,
            num_segments=64,
            split_target_programs=512,
            block_m_prefill=128,
            tile_prefill=64,
            num_warps_prefill=8,
            num_stages_prefill=3,
            unmasked_full_tiles=1,
            skip_empty_segments=1,
        ),
        dependent_launch=True,
    ),
    # Blackwell (B200).
    ("cuda", 100): KernelConfigs(
        attention=replace(
            _DEFAULT.attention,
            tile_decode=64,
            num_warps=4,
            num_stages=3,
            block_m_prefill=128,
            tile_prefill=64,
            num_warps_prefill=8,
            num_stages_prefill=3,
        ),
        dependent_launch=True,
    ),
    ("cuda", None): KernelConfigs(attention=replace(_DEFAULT.attention, num_stages=2)),
    # CDNA (ROCm backend): 64-wide wavefronts, so num_warps=4 is 256 lanes and VGPRs, not shared memory, bound
    # the tiles. The paged K/V gather keeps a 64-bit address per tile element in VGPRs; wider prefill tiles
    # (64x32) compile to more than 256 VGPRs and one wave per SIMD, and 8 waves spill to scratch. These rows
    # keep every variant of the AOT check free of memory spills at 2+ waves per SIMD (head size 256 prefill
    # excepted, at 1). Not yet timed on hardware: starting points that compile cleanly, to tune on MI GPUs.
    ("hip", "gfx90a"): KernelConfigs(attention=_CDNA_ATTENTION),  # MI200: 110 CUs per GCD, 64 KiB LDS
    ("hip", "gfx942"): KernelConfigs(attention=replace(_CDNA_ATTENTION, num_segments=32)),  # MI300: 304 CUs
    ("hip", "gfx950"): KernelConfigs(attention=replace(_CDNA_ATTENTION, num_segments=32)),  # MI350: 256 CUs
}


def register(vendor: str, arch: int | str | None, configs: KernelConfigs) -> None:
    """Add or replace the configs of one (vendor, arch); for backends tuning their own hardware."""
    CONFIGS[(vendor, arch)] = configs


def lookup(vendor: str | None, arch: int | str | None) -> KernelConfigs:
    for key in ((vendor, arch), (vendor, None)):
        if key in CONFIGS:
            return CONFIGS[key]
    return CONFIGS[("default", None)]


def attention_launch(cfg: AttentionConfig, *, head_dim: int, group: int, decode: bool) -> dict:
    """Block shapes and launch options of the attention kernel for one batch kind (shared by the launcher and
    the AOT compile check, so both build the same variants)."""
    head_pad = next_pow2(head_dim, 16)
    block_m = max(cfg.block_m if decode else cfg.block_m_prefill, next_pow2(group, 16))
    tile = cfg.tile_decode if decode else cfg.tile_prefill
    if head_pad >= 256:
        tile = min(tile, 32)  # keeps the K and V tiles of a stage within shared memory
        if not decode:
            block_m = min(block_m, next_pow2(group, 64))
    return dict(
        HEAD_PAD=head_pad,
        BLOCK_M=block_m,
        BLOCK_Q=block_m // group,
        TILE=max(tile, 16),
        num_warps=cfg.num_warps if decode else cfg.num_warps_prefill,
        num_stages=cfg.num_stages if decode else cfg.num_stages_prefill,
        MASK_ALL=decode or not cfg.unmasked_full_tiles,
    )


def choose_num_segments(num_tokens: int, max_seq_len: int, cfg: AttentionConfig, *, num_seqs: int = 1,
                        num_kv_heads: int = 1, tile: int = 1) -> int:
    """Split-KV for few tokens over long contexts (decode of a small batch); 1 otherwise.

    Depends only on host ints. A graph runner that captures with ``max_seq_len`` = the model's maximum gets the
    split kernel, which is correct for every shorter context too, but not as fast there: at batch 1 a graph
    captured for 131072 positions runs 64 segments, mostly empty at short contexts, and its decode step took ~5%
    longer than one capped at 16 segments (benchmarks/RESULTS.md, eighth session).
    """
    if num_tokens > cfg.split_max_tokens or max_seq_len < cfg.split_min_seq_len:
        return 1
    if not cfg.split_target_programs:
        return cfg.num_segments
    want = min(cfg.num_segments, cfg.split_target_programs // max(num_seqs * num_kv_heads, 1), max_seq_len // tile)
    return 1 << (want.bit_length() - 1) if want >= 2 else 1
