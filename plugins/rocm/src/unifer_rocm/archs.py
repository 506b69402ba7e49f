"""The AMD architectures this backend claims, by the gfx name ROCm reports (``gcnArchName``), with what each
declares. Launch configurations are not here: they are rows ("hip", arch) of ``unifer.kernels.triton.configs``,
the one table every Triton backend reads, so the AOT compile check and the launcher see the same numbers."""

from __future__ import annotations

from dataclasses import dataclass

from unifer.backends import Capabilities


@dataclass(frozen=True)
class CDNAArch:
    gfx: str
    family: str
    products: str
    lds_bytes: int  # LDS per workgroup: bounds the K/V tiles a launch config may stage
    capabilities: Capabilities


def _caps(gfx: str, family: str, lds_bytes: int) -> Capabilities:
    # The kernels are the same on every CDNA part, so the claims are too; what differs (LDS, wave slots) is
    # absorbed by the launch configs, and the AOT check proves each claimed combination fits.
    return Capabilities(
        dtypes=("bfloat16", "float16", "float32"),
        kv_cache_dtypes=("auto",),  # no fp8 KV cache: the kernels do not dequantise
        head_sizes=(64, 80, 96, 128, 256),
        block_sizes=(16, 32),
        max_gqa_ratio=16,
        sliding_window=True,
        logit_soft_cap=True,
        graph_capture=True,  # HIP graphs through torch.cuda.CUDAGraph on ROCm builds
        communicator="nccl",  # RCCL answers to torch.distributed's "nccl" name on ROCm
        extra={"arch": gfx, "family": family, "wavefront": 64, "lds_bytes": lds_bytes},
    )


ARCHS: dict[str, CDNAArch] = {
    a.gfx: a
    for a in (
        CDNAArch("gfx90a", "CDNA2", "MI210, MI250, MI250X", 64 * 1024, _caps("gfx90a", "CDNA2", 64 * 1024)),
        CDNAArch("gfx942", "CDNA3", "MI300X, MI300A, MI325X", 64 * 1024, _caps("gfx942", "CDNA3", 64 * 1024)),
        CDNAArch("gfx950", "CDNA4", "MI350X, MI355X", 160 * 1024, _caps("gfx950", "CDNA4", 160 * 1024)),
    )
}
DEFAULT_ARCH = "gfx942"


def base_arch(gcn_arch_name: str) -> str:
    """'gfx942:sramecc+:xnack-' -> 'gfx942' (ROCm appends target features after colons)."""
    return gcn_arch_name.split(":", 1)[0].strip().lower()
