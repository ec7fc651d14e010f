"""Skinny matmuls on the CPU: the linear layers of a decoding step, a few rows times a large weight.

A decoding step feeds each linear layer one row per sequence (16 in a flan-t5-base rollout).
``F.linear(x, W)`` asks MKL for ``x @ W.T``, the weight as the second operand. Inside
:func:`skinny_matmuls` such a layer computes ``(W @ x.T).T`` instead, the weight as the first
operand: MKL takes another kernel for that order, and for a few rows times a large weight it ran
faster (below).

Where it applies, and why only there (``python benchmarks/machine_rates.py --skinny`` times
each layer shape on the machine at hand, ``benchmarks/generation_floor.py`` a whole ``generate``):

- CPU inputs of 2 to ``MAX_ROWS`` rows, in fp32 outside autocast (bf16: packed weights only, below):
  one row, larger inputs (the encoder, training), fp16 and GPUs keep ``F.linear``;
- layers whose weight has at least ``MIN_WEIGHT`` elements. On a 2-core AMD EPYC, flan-t5-base's
  layer shapes (768 x 768 and larger) ran 1.03x to 2.2x faster at 4 to 64 rows, and the built-in
  model's 0.58x to 1.27x, mixed, so those keep ``F.linear`` (and the built-in pipeline keeps its
  summaries). In a whole ``generate`` at flan-t5-base size, whose weights come from memory rather
  than the caches, the gain was 1.05x.

Packed weights (from ``PACKED_MIN_ROWS`` rows): a layer's first such call inside the block has
oneDNN reorder its weight into the blocked layout its kernels read for that row count
(``torch.ops.mkldnn._reorder_linear_weight``, the packing ``torch.compile``'s CPU backend does when it
freezes weights), and every call after it multiplies with ``torch.ops.mkldnn._linear_pointwise``. On a
2-core AMD EPYC with AVX-512, flan-t5-base's layer shapes at 8 to 64 rows, the weights streamed from
memory, ran 1.4x to 2.5x faster than weight-first (the LM head at 16 rows 2.5x); at 2 and 4 rows
weight-first was as fast or faster, so it keeps them. The packed copy is made again when the row count,
the weight's storage or its version changes (a training step in between), lives as long as the block,
and so costs one more copy of the switched weights' memory while it lasts. Inputs that need a gradient
keep weight-first (the packed kernel has no backward). A torch without oneDNN (:func:`packed_available`)
keeps weight-first everywhere.

bf16 (weights stored in bf16, or a bf16 autocast such as ``ppo.precision: bf16`` with its frozen weights
stored in bf16): only the packed kernel, from ``PACKED_MIN_ROWS`` rows, on a CPU that multiplies bf16
(``avx512_bf16`` or AMX) and where :func:`packed_available` says the kernel gives bf16's product; fewer
rows keep ``F.linear`` (weight-first in bf16 measured mixed, 0.35x to 1.3x). Under an autocast the input,
the weight and the bias are cast to bf16 first, as autocast casts them for ``F.linear``, and the output is
bf16, as autocast's. On a 2-core AMD EPYC with ``avx512_bf16`` flan-t5-base's layer shapes ran 1.3x to
1.7x faster at 16 rows and 1.2x to 1.3x at 64, and gave bit for bit ``F.linear``'s bf16 products.

Numerics: the same products summed along the same inner dimension, but MKL and oneDNN may block the
sum differently from ``F.linear``, so results can differ in the last bits (at 16 and 64 rows weight-first
was bit for bit equal on that machine, at 3 rows not). Hence the params settings
``generation.skinny_matmul`` and ``ppo.skinny_matmul`` (``packed``, ``weight_first`` or ``off``: the
speed, the memory of the packed copies and the last bits are the user's choice), and tests bounding
the difference.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter

from detox.common.params.base import SKINNY_MODES
from detox.models.precision import cpu_multiplies_bf16

MAX_ROWS = 64
MIN_WEIGHT = 1 << 18
PACKED_MIN_ROWS = 8


def weight_first(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for a 2-D ``x``, computed as ``(weight @ x.T).T``: the weight as MKL's first operand.

    The result is made contiguous (a copy of a few rows): the transposed view has a last-dim stride of
    ``rows``, and an attention query made from it fails SDPA's stride check, so decoding fell back from
    the fused CPU kernel (the plain path's) to the math path, whose numerics differ.
    """
    return torch.matmul(weight, x.T).T.contiguous()


def large_layers(model: nn.Module) -> list[nn.Linear]:
    """``model``'s plain ``nn.Linear`` layers with at least ``MIN_WEIGHT`` weight elements, whose forward
    nothing has replaced: the layers :func:`skinny_matmuls` switches."""
    return [
        m
        for m in model.modules()
        if type(m) is nn.Linear and m.weight.numel() >= MIN_WEIGHT and "forward" not in vars(m)
    ]


@functools.cache
def packed_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch has oneDNN's packed linear kernel, and it gives the product in ``dtype`` (float32 or
    bfloat16; checked once each). bf16 also needs a CPU that multiplies it (``cpu_multiplies_bf16``)."""
    if dtype == torch.bfloat16 and not cpu_multiplies_bf16():
        return False
    # fixed inputs, no random numbers: the probe must not move the stream a seeded caller draws from; in
    # its dtype also when first asked inside a bf16 autocast (ppo.precision), where F.linear would return bf16
    with torch.autocast("cpu", enabled=False):
        try:
            weight = torch.arange(48 * 16, dtype=torch.float32).reshape(48, 16).sin().to(dtype)
            x = torch.arange(PACKED_MIN_ROWS * 16, dtype=torch.float32).reshape(PACKED_MIN_ROWS, 16).cos().to(dtype)
            got = packed_product(x, pack(weight, PACKED_MIN_ROWS), None)
        except (AttributeError, RuntimeError):  # no mkldnn ops in this build, or none for this CPU or dtype
            return False
        tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # bf16's 8 bits of mantissa: products rounded
        expected = F.linear(x, weight).float()
        return got.dtype == dtype and bool(torch.allclose(got.float(), expected, rtol=tolerance, atol=tolerance))


def pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` reordered by oneDNN into the layout its linear kernel reads for ``rows`` input rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)


def packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a 2-D ``x`` with the weight :func:`pack` made."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _packed_product_flops(x_shape: torch.Size, weight_shape: torch.Size, *args: object, **kwargs: object) -> int:
    """FLOPs of :func:`packed_product`, as ``torch.utils.flop_counter`` counts ``mm``: 2 x rows x d_in x d_out."""
    rows = math.prod(x_shape[:-1])
    return 2 * rows * x_shape[-1] * weight_shape[0]


def _count_packed_flops() -> None:
    """Tell ``FlopCounterMode`` the packed kernel's FLOPs, so a compute floor counts the same work whichever kernel
    runs it (without this it counts the packed products as 0)."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is not None and op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(op)(_packed_product_flops)


_count_packed_flops()


class _Packed:
    """One layer's packed weight inside a :func:`skinny_matmuls` block, made again when it would be stale."""

    def __init__(self) -> None:
        self.key: tuple[int, int, int, torch.dtype] | None = None
        self.weight: torch.Tensor | None = None

    def get(self, weight: torch.Tensor, rows: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``weight`` packed for ``rows`` rows, in ``dtype`` (cast first, as autocast casts it) or its own."""
        dtype = dtype or weight.dtype
        key = (rows, weight.data_ptr(), weight._version, dtype)
        if key != self.key:
            self.weight, self.key = None, None  # the old copy goes before the new one is made
            self.weight, self.key = pack(weight.detach().to(dtype), rows), key
        return self.weight


def _skinny_forward(self: nn.Linear, x: torch.Tensor, packed: _Packed | None = None) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.dim() >= 2 else 1
    if not 1 < rows <= MAX_ROWS or x.device.type != "cpu":
        return F.linear(x, self.weight, self.bias)
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype  # what F.linear would multiply in
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
    if dtype == torch.bfloat16:  # packed weights only; F.linear below PACKED_MIN_ROWS, for a gradient, elsewhere
        if packed is None or rows < PACKED_MIN_ROWS or needs_grad or not packed_available(torch.bfloat16):
            return F.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.to(dtype)
        out = packed_product(x.reshape(rows, x.shape[-1]).to(dtype), packed.get(self.weight, rows, dtype), bias)
        return out.reshape(*x.shape[:-1], out.shape[-1])
    if dtype != torch.float32 or autocast:  # fp16, fp64; an fp16 autocast
        return F.linear(x, self.weight, self.bias)
    flat = x.reshape(rows, x.shape[-1])
    if packed is not None and rows >= PACKED_MIN_ROWS and not needs_grad and packed_available():
        out = packed_product(flat, packed.get(self.weight, rows), self.bias)
    else:
        out = weight_first(flat, self.weight)
        if self.bias is not None:
            out = out + self.bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _switched_forward(layer: nn.Linear, packed: _Packed | None) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _skinny_forward(layer, x, packed)

    return forward


@contextmanager
def skinny_matmuls(model: nn.Module, mode: str = "packed") -> Iterator[int]:
    """Within the block, ``model``'s large ``nn.Linear`` layers multiply few-row inputs another way.

    ``mode`` is a ``skinny_matmul`` setting of params: ``"packed"`` (weight-first, and oneDNN's packed
    weights from ``PACKED_MIN_ROWS`` rows where :func:`packed_available`), ``"weight_first"`` or ``"off"``
    (params have already read the booleans of older files as ``"packed"`` and ``"off"``). Yields how many
    layers took the path (0 when off or none is large enough). The layers are restored, and their packed
    copies freed, on exit, also after an error.
    """
    if mode not in SKINNY_MODES:
        raise ValueError(f"skinny_matmuls: mode {mode!r} is none of {', '.join(SKINNY_MODES)}")
    layers = large_layers(model) if mode != "off" else []
    use_packed = mode == "packed" and bool(layers)  # where the kernel gives the product in the input's dtype
    for layer in layers:
        layer.forward = _switched_forward(layer, _Packed() if use_packed else None)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward
