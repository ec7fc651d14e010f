"""How ``generate`` draws each sampled token: torch's multinomial, or one uniform per row and the inverse CDF.

transformers' sampling loop draws every token with ``torch.multinomial(probs, num_samples=1)``. For one
sample torch takes its exponential race: an ``Exp(1)`` number for every entry of the vocabulary, then
``argmax(probs / q)``. On the CPU that fills the whole ``(rows, vocab)`` table through a serial random
number kernel: about 10 ms a decoding step for 16 rows of flan-t5-base's 32,128 tokens on a 2-core AMD
EPYC, 14% of the decoding steps' operator time (``benchmarks/generation_floor.py --profile``), and 16% at
the built-in model's size.

``inverse_cdf`` draws one uniform number per row instead and finds its token in the row's cumulative
distribution (a cumulative sum and a binary search): the same distribution, other draws. The sum runs in
float64 (float32 on a device without it), so each token's share of the unit interval is its probability to
within about 1e-16 (summing in float32, as torch's own with-replacement kernel does, would move each share by
up to about 1e-7, more than a rare token's whole probability). A token of probability 0 is never drawn: its
interval is empty.

Hence the params settings ``generation.sampler`` and ``ppo.sampler`` (``multinomial`` by default): the same
seed draws other summaries under each, so a run's results are another draw of the recipe. The exported Hugging
Face pipeline samples with ``torch.multinomial``, so it gives the summaries that were evaluated only under
the default.

transformers has no setting for the sampling function, so :func:`sampler` puts :func:`inverse_cdf_sample` in
the place of ``torch.multinomial`` for the block's duration, for one-draw calls only (every other call goes to
torch's own), and puts torch's back on exit, also after an error. The replacement is process-wide while it
lasts: the project generates from one thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from detox.common.params.base import SAMPLERS


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``probs`` (``(rows, vocab)``, non-negative, any positive sum): ``(rows, 1)`` int64.

    A row that sums to 0, or holds NaN or an infinity, raises ``RuntimeError``, as ``torch.multinomial`` does.
    """
    if probs.dim() != 2:
        raise ValueError(f"inverse_cdf_sample: expected (rows, vocab) probabilities, got shape {tuple(probs.shape)}")
    wide = torch.float32 if probs.device.type == "mps" else torch.float64  # MPS has no float64
    cdf = torch.cumsum(probs, dim=-1, dtype=wide)
    total = cdf[:, -1:]
    # A negative entry, NaN or an infinity leaves the row's total NaN, infinite or at most 0 (a negative
    # entry that a larger one hides is not caught: softmax gives none).
    if not bool(torch.isfinite(total).all()) or not bool((total > 0).all()):
        raise RuntimeError(
            "inverse_cdf_sample: a row of probabilities sums to 0 or holds inf or NaN (the logits were NaN or "
            "every token was filtered out)"
        )
    # uniform in [0, 1) times the total is below the total, so the search never runs off the end; the
    # clamp only guards the last bit of a float32 sum.
    target = torch.rand(total.shape, dtype=wide, device=probs.device, generator=generator).mul_(total)
    # right=True: the first token whose cumulative sum exceeds the target, never one of probability 0
    return torch.searchsorted(cdf, target, right=True).clamp_(max=probs.shape[-1] - 1)


@contextmanager
def sampler(mode: str = "multinomial") -> Iterator[None]:
    """Within the block, ``torch.multinomial(probs, 1)`` draws as ``mode`` says (a ``sampler`` setting of params).

    ``"multinomial"`` changes nothing; ``"inverse_cdf"`` sends one-draw calls on 2-D probabilities to
    :func:`inverse_cdf_sample`.
    """
    if mode not in SAMPLERS:
        raise ValueError(f"sampler: mode {mode!r} is none of {', '.join(SAMPLERS)}")
    if mode == "multinomial":
        yield
        return
    torch_multinomial = torch.multinomial

    def multinomial(input, num_samples, replacement=False, *, generator=None, out=None):  # torch's signature
        if num_samples == 1 and out is None and input.dim() == 2 and input.is_floating_point():
            return inverse_cdf_sample(input, generator)  # one draw: with or without replacement is the same
        return torch_multinomial(input, num_samples, replacement, generator=generator, out=out)

    torch.multinomial = multinomial
    try:
        yield
    finally:
        torch.multinomial = torch_multinomial
