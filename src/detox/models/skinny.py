"""Skinny matmuls on the CPU: the linear layers of a decoding step, a few rows times a large weight.

A decoding step feeds each linear layer one row per sequence (16 in a flan-t5-base rollout).
``F.linear(x, W)`` asks MKL for ``x @ W.T``, the weight as the second operand. Inside
:func:`skinny_matmuls` such a layer computes ``(W @ x.T).T`` instead, the weight as the first
operand: MKL takes another kernel for that order, and for a few rows times a large weight it ran
faster (below).

Where it applies, and why only there (``python benchmarks/machine_rates.py --skinny`` times
each layer shape on the machine at hand, ``benchmarks/generation_floor.py`` a whole ``generate``):

- fp32 CPU inputs of 2 to ``MAX_ROWS`` rows outside autocast: one row, larger inputs (the
  encoder, training), bf16 and GPUs keep ``F.linear``;
- layers whose weight has at least ``MIN_WEIGHT`` elements. On a 2-core AMD EPYC, flan-t5-base's
  layer shapes (768 x 768 and larger) ran 1.03x to 2.2x faster at 4 to 64 rows, and the built-in
  model's 0.58x to 1.27x, mixed, so those keep ``F.linear`` (and the built-in pipeline keeps its
  summaries). In a whole ``generate`` at flan-t5-base size, whose weights come from memory rather
  than the caches, the gain was 1.05x.

Numerics: the same products summed along the same inner dimension, but MKL may block the sum
differently for the two operand orders, so results can differ in the last bits (at 16 and 64 rows
they were bit for bit equal on that machine, at 3 rows not). Hence the params switches
``generation.skinny_matmul`` and ``ppo.skinny_matmul``, and a test bounding the difference.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 64
MIN_WEIGHT = 1 << 18


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


def _skinny_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.dim() >= 2 else 1
    if (
        not 1 < rows <= MAX_ROWS
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")  # bf16 autocast: measured in fp32 only
    ):
        return F.linear(x, self.weight, self.bias)
    out = weight_first(x.reshape(rows, x.shape[-1]), self.weight)
    if self.bias is not None:
        out = out + self.bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


@contextmanager
def skinny_matmuls(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, ``model``'s large ``nn.Linear`` layers multiply few-row inputs weight first.

    Yields how many layers took the path (0 when ``enabled`` is false or none is large enough).
    The layers are restored on exit, also after an error.
    """
    layers = large_layers(model) if enabled else []
    for layer in layers:
        layer.forward = types.MethodType(_skinny_forward, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward
