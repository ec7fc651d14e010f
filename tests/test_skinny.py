"""Skinny matmuls (detox.models.skinny): where they apply, that they stay within float tolerance of
F.linear, that the layers come back, and that the params switches reach generation and rollouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import conftest
import detox.models.skinny as skinny
from conftest import tiny_corpus, tiny_params, tiny_t5
from detox.common.params import GenerationParams
from detox.models.generation import build_prompts, generate_draws
from detox.models.skinny import MAX_ROWS, MIN_WEIGHT, skinny_matmuls
from detox.ppo.policy import Seq2SeqPolicy
from detox.ppo.rollout import sample

TEMPLATE = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:"
# d_model x inner = 512 x 512 = MIN_WEIGHT: the attention and feed-forward weights take the path,
# the 250-token LM head (128,000 elements) does not
# (initializer_factor: T5's default init gives a 512-wide model logits so peaked that every sample is the same)
LARGE = dict(d_model=512, d_kv=64, num_heads=8, d_ff=512, initializer_factor=0.05)


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """Each call of the skinny forward appends its input's row count."""
    calls: list[int] = []
    original = skinny._skinny_forward

    def counting(self, x):
        calls.append(x.numel() // x.shape[-1])
        return original(self, x)

    monkeypatch.setattr(skinny, "_skinny_forward", counting)
    return calls


def rounding_bound(weight: torch.Tensor, x: torch.Tensor) -> float:
    """Two orders of summing ``x @ weight.T`` may differ by at most twice the rounding bound of the sum."""
    return 2 * conftest.tolerance(torch.float32, weight.shape[1], (x.abs() @ weight.detach().abs().T).max())


@pytest.mark.parametrize("rows", [1, 2, 3, 16, MAX_ROWS, MAX_ROWS + 1])
def test_a_large_linear_agrees_with_f_linear_and_only_few_rows_take_the_path(rows, counted):
    torch.manual_seed(0)
    layer = nn.Linear(512, MIN_WEIGHT // 512)
    x = torch.randn(rows, 1, 512)  # a decoding step's shape: rows sequences, one token each
    expected = F.linear(x, layer.weight, layer.bias)
    with skinny_matmuls(layer) as layers:
        got = layer(x)
    assert layers == 1
    assert got.shape == expected.shape
    assert counted == [rows]  # the layer's forward was replaced for the block
    if 1 < rows <= MAX_ROWS:
        torch.testing.assert_close(got, expected, rtol=0, atol=rounding_bound(layer.weight, x[:, 0]))
    else:  # one row or too many: F.linear itself
        assert torch.equal(got, expected)


def test_small_weights_other_dtypes_autocast_and_the_switch_keep_f_linear(counted):
    torch.manual_seed(0)
    small = nn.Linear(128, 320)  # the built-in model's feed-forward, below MIN_WEIGHT
    with skinny_matmuls(small) as layers:
        small(torch.randn(16, 128))
    assert layers == 0 and not counted

    large = nn.Linear(512, 512)
    x = torch.randn(16, 512)
    with skinny_matmuls(large, enabled=False) as layers:
        large(x)
    assert layers == 0 and not counted

    with skinny_matmuls(large) as layers, torch.autocast("cpu", dtype=torch.bfloat16):
        got = large(x)
        expected = F.linear(x, large.weight, large.bias)
    assert layers == 1 and counted == [16]
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)  # autocast: F.linear
    large.to(torch.float64)
    with skinny_matmuls(large):
        assert torch.equal(large(x.double()), F.linear(x.double(), large.weight, large.bias))  # fp64: F.linear
    assert counted == [16, 16]
    assert "forward" not in vars(large)


def test_the_layers_come_back_after_an_error():
    model, _ = tiny_t5(TEMPLATE, **LARGE)
    with pytest.raises(RuntimeError, match="boom"), skinny_matmuls(model) as layers:
        assert layers > 0
        assert sum("forward" in vars(m) for m in model.modules()) == layers
        raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in model.modules())


@torch.no_grad()
def test_a_decoding_step_of_a_t5_stays_within_rounding_of_the_plain_one(counted):
    model, tokenizer = tiny_t5(TEMPLATE, **LARGE)
    prompts = build_prompts(tiny_corpus()["test"]["dialogue"].tolist()[:4], TEMPLATE)
    enc = tokenizer(prompts, padding=True, return_tensors="pt")
    start = torch.zeros(4, 1, dtype=torch.long)  # 4 rows in every decoder layer
    plain = model(**enc, decoder_input_ids=start).logits
    with skinny_matmuls(model) as layers:
        fast = model(**enc, decoder_input_ids=start).logits
    assert layers == 7 + 11  # encoder: q k v o wi_0 wi_1 wo; decoder: 4 + 4 (cross) + 3; not the LM head
    # 4 rows: the decoder's self-attention (4), cross-attention query and output (2), feed-forward (3);
    # the encoder's 4 x S rows, also the cross-attention's keys and values, kept F.linear
    assert counted.count(4) == 9 and set(counted) == {4, enc["input_ids"].numel()}
    # the rounding of every matmul on the way to the logits, each sum of at most d_model terms
    torch.testing.assert_close(fast, plain, rtol=0, atol=conftest.tolerance(torch.float32, 512 * 8, plain.abs().max()))
    assert not torch.equal(fast, torch.zeros_like(fast))
    # the path's outputs are contiguous, so attention keeps the fused CPU kernel (a transposed query fell back to math)
    with skinny_matmuls(model), torch.profiler.profile() as profile:
        model(**enc, decoder_input_ids=start)
    kernels = {event.key for event in profile.key_averages() if "scaled_dot_product" in event.key}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels
    assert "aten::_scaled_dot_product_attention_math" not in kernels


def test_generation_and_rollouts_take_the_path_only_when_params_say_so(counted):
    model, tokenizer = tiny_t5(TEMPLATE, **LARGE)
    prompts = build_prompts(tiny_corpus()["test"]["dialogue"].tolist()[:4], TEMPLATE)
    for enabled in (False, True):
        counted.clear()
        cfg = GenerationParams(max_new_tokens=4, batch_size=4, skinny_matmul=enabled)
        draws = generate_draws(model, tokenizer, prompts, cfg, [1])
        assert len(draws[0]) == 4
        # the encoder's many rows pass through the replaced forward too, to F.linear; the decoding steps take the path
        assert any(1 < rows <= MAX_ROWS for rows in counted) == enabled
        assert not any("forward" in vars(m) for m in model.modules())

    params = tiny_params()
    for enabled in (False, True):
        counted.clear()
        cfg = params.ppo.model_copy(update={"skinny_matmul": enabled})
        torch.manual_seed(0)
        policy = Seq2SeqPolicy(tiny_t5(TEMPLATE, **LARGE)[0], cfg)
        rollout = sample(policy, tokenizer, cfg, prompts, seed=3, device=torch.device("cpu"))
        assert rollout.response_ids.shape[0] == 4 * cfg.group_size
        assert any(1 < rows <= MAX_ROWS for rows in counted) == enabled  # the decoding steps
        assert not any("forward" in vars(m) for m in policy.model.modules())
    # LoRA wraps the decoder's q and v; their base layers are plain nn.Linear and take the path too
    query = policy.model.get_base_model().decoder.block[0].layer[0].SelfAttention.q
    with skinny_matmuls(policy.model) as layers:
        assert layers == 7 + 11 and "forward" in vars(query.base_layer)


def test_large_layers_are_the_plain_large_linears_not_yet_switched():
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(128, 320), nn.Linear(512, 1024, bias=False))
    assert skinny.large_layers(model) == [model[0], model[2]]
    with skinny_matmuls(model) as layers:
        assert layers == 2
        assert skinny.large_layers(model) == []  # already switched: a nested block leaves them alone
    assert skinny.large_layers(model) == [model[0], model[2]]


def test_weight_first_is_the_linear_product():
    torch.manual_seed(0)
    weight, x = torch.randn(768, 512), torch.randn(16, 512)
    got = skinny.weight_first(x, weight)
    assert got.shape == (16, 768) and got.is_contiguous()
    torch.testing.assert_close(got, x @ weight.T, rtol=0, atol=rounding_bound(weight, x))
