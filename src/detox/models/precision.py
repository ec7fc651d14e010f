"""Whether this machine can train under a mixed precision (``sft.precision``, ``ppo.precision``).

bf16 autocast keeps the weights and the optimizer in fp32 and runs the matmuls in bf16. A CPU that
multiplies bf16 in hardware (``avx512_bf16`` or AMX) runs them about twice as fast as fp32; one
without runs them through oneDNN's emulation, hundreds of times slower (``benchmarks/machine_rates.py``,
docs/benchmarks.md), so bf16 there is a trap, not a speed-up: :func:`check_precision` says so before
a stage starts. fp16 needs CUDA's gradient scaler. ``auto`` takes bf16 where the hardware multiplies
it (a GPU with bf16, or such a CPU) and fp32 elsewhere.

:data:`AUTOCAST_DTYPES` maps accelerate's ``mixed_precision`` names to the dtype its autocast multiplies in.
"""

from __future__ import annotations

import torch

from detox.common.errors import DetoxError
from detox.common.params.base import PRECISIONS

# accelerate's mixed_precision -> the dtype its autocast runs matmuls in ("no": none)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_multiplies_bf16() -> bool:
    """True when this CPU has bf16 matmul instructions (``avx512_bf16`` or AMX tiles)."""
    # torch.cpu's probes are private (no public API says this); a torch without them reports False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(setting: str, precision: str, cuda: bool | None = None) -> str:
    """The precision ``precision`` names on this machine, checked: ``auto`` becomes bf16 on a GPU that
    supports it or a CPU with bf16 instructions, fp32 elsewhere; the others are :func:`check_precision`'s."""
    on_gpu = torch.cuda.is_available() if cuda is None else cuda
    if precision == "auto":
        return "bf16" if (torch.cuda.is_bf16_supported() if on_gpu else cpu_multiplies_bf16()) else "fp32"
    check_precision(setting, precision, on_gpu)
    return precision


def check_precision(setting: str, precision: str, cuda: bool | None = None) -> None:
    """Refuse fp16 without a GPU and bf16 on a CPU that lacks bf16 instructions (``setting`` names the
    params key in the message). ``cuda`` None means ``torch.cuda.is_available()``."""
    if precision not in PRECISIONS:
        raise DetoxError(f"{setting} must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    on_gpu = torch.cuda.is_available() if cuda is None else cuda
    if precision == "fp16" and not on_gpu:
        raise DetoxError(f"{setting} fp16 needs a GPU (its gradient scaler is CUDA's); on the CPU use bf16 or fp32")
    if precision == "bf16" and not on_gpu and not cpu_multiplies_bf16():
        raise DetoxError(
            f"{setting} bf16: this CPU has no bf16 instructions (avx512_bf16 or AMX), so bf16 matmuls would run "
            f"hundreds of times slower than fp32; set {setting}: fp32 (-S {setting}=fp32)"
        )
