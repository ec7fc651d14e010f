"""Which attention kernel the T5 policy runs (``policy.attention``): transformers' eager attention or SDPA.

T5 adds a learned relative-position bias to the scores of every attention. transformers' SDPA path hands
that bias to ``scaled_dot_product_attention`` as a float mask, first merged with the padding mask (a
``torch.where`` over batch x heads x queries x keys, in every layer), and when training the bias needs a
gradient, which PyTorch's fused CPU kernel does not give, so SDPA runs its unfused math path. On a CPU the
eager path (two matmuls and a softmax, the bias added) does the same work with less around it:
``benchmarks/attention.py`` measured the sft step of the built-in policy and ``generate`` at the built-in
and at flan-t5-base size faster with it (docs/benchmarks.md). On a GPU SDPA's fused kernels keep the
scores out of memory, so ``auto`` takes SDPA there. The two differ only in the rounding of the last bits.

transformers does not save the kernel in ``config.json``; every place a stage loads the policy calls
:func:`use_attention`.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from detox.common.params.base import ATTENTION_MODES


def attention_kernel(setting: str) -> str:
    """The kernel ``setting`` (one of :data:`ATTENTION_MODES`) names on this machine: ``eager`` or ``sdpa``."""
    if setting not in ATTENTION_MODES:
        raise ValueError(f"policy.attention must be one of {', '.join(ATTENTION_MODES)}, not {setting!r}")
    if setting == "auto":
        return "sdpa" if torch.cuda.is_available() else "eager"
    return setting


def use_attention(model: PreTrainedModel, setting: str) -> PreTrainedModel:
    """Switch ``model`` (and its encoder and decoder) to the kernel ``setting`` names; returns ``model``."""
    model.set_attn_implementation(attention_kernel(setting))
    return model
