"""Skinny matmuls (detox.models.skinny): where they apply, which kernel (weight-first or oneDNN's packed
weights) takes which rows, that they stay within float tolerance of F.linear, that packed weights are made
again when stale and freed after the block, that the layers come back, and that the params switches reach
generation and rollouts."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import conftest
import detox.models.skinny as skinny
from conftest import tiny_corpus, tiny_params, tiny_t5
from detox.common.params import GenerationParams
from detox.models.generation import build_prompts, generate_draws
from detox.models.skinny import MAX_ROWS, MIN_WEIGHT, PACKED_MIN_ROWS, skinny_matmuls
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

    def counting(self, x, packed=None):
        calls.append(x.numel() // x.shape[-1])
        return original(self, x, packed)

    monkeypatch.setattr(skinny, "_skinny_forward", counting)
    return calls


@pytest.fixture
def packs(monkeypatch) -> list[tuple[int, weakref.ref]]:
    """Each packing of a weight appends its row count and a weak reference to the packed copy; each product
    with a packed weight appends ("product", rows)."""
    made: list = []
    skinny.packed_available(), skinny.packed_available(torch.bfloat16)  # probed now: their packing is not counted
    original_pack, original_product = skinny.pack, skinny.packed_product

    def packing(weight, rows):
        packed = original_pack(weight, rows)
        made.append((rows, weakref.ref(packed)))
        return packed

    def product(x, packed, bias):
        made.append(("product", x.shape[0]))
        return original_product(x, packed, bias)

    monkeypatch.setattr(skinny, "pack", packing)
    monkeypatch.setattr(skinny, "packed_product", product)
    return made


needs_onednn = pytest.mark.skipif(not skinny.packed_available(), reason="this torch has no oneDNN packed linear")


def rounding_bound(weight: torch.Tensor, x: torch.Tensor) -> float:
    """Two orders of summing ``x @ weight.T`` may differ by at most twice the rounding bound of the sum."""
    return 2 * conftest.tolerance(torch.float32, weight.shape[1], (x.abs() @ weight.detach().abs().T).max())


@pytest.mark.parametrize("rows", [1, 2, 3, PACKED_MIN_ROWS - 1, PACKED_MIN_ROWS, 16, MAX_ROWS, MAX_ROWS + 1])
@torch.no_grad()
def test_a_large_linear_agrees_with_f_linear_and_only_few_rows_take_the_path(rows, counted, packs):
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
    # packed weights from PACKED_MIN_ROWS rows (where this torch has oneDNN), weight-first below
    packed = skinny.packed_available() and PACKED_MIN_ROWS <= rows <= MAX_ROWS
    assert [entry[0] for entry in packs] == ([rows, "product"] if packed else [])


@needs_onednn
def test_packed_weights_are_made_again_when_stale_kept_otherwise_and_freed_after_the_block(packs):
    torch.manual_seed(0)
    layer = nn.Linear(512, 512, bias=False).requires_grad_(False)
    x16, x32 = torch.randn(16, 512), torch.randn(32, 512)
    with skinny_matmuls(layer):
        for _ in range(3):
            torch.testing.assert_close(layer(x16), x16 @ layer.weight.T, rtol=0, atol=rounding_bound(layer.weight, x16))
        assert [entry[0] for entry in packs] == [16, "product", "product", "product"]  # packed once for 16 rows
        layer(x32)  # another row count: packed again for it
        layer.weight.mul_(-2.0)  # a change in place (an optimizer step): its version moves, packed again
        torch.testing.assert_close(layer(x32), x32 @ layer.weight.T, rtol=0, atol=rounding_bound(layer.weight, x32))
        layer.weight = nn.Parameter(torch.randn(512, 512), requires_grad=False)  # another tensor: packed again
        with torch.no_grad():
            torch.testing.assert_close(layer(x32), x32 @ layer.weight.T, rtol=0, atol=rounding_bound(layer.weight, x32))
        made = [entry for entry in packs if entry[0] != "product"]
        assert [rows for rows, _ in made] == [16, 32, 32, 32]
        gc.collect()
        assert [ref() is None for _, ref in made] == [True, True, True, False]  # only the current copy is kept
    gc.collect()
    assert made[-1][1]() is None  # and it goes with the block


def test_inputs_that_need_a_gradient_packed_false_and_no_onednn_keep_weight_first(monkeypatch, packs):
    torch.manual_seed(0)
    layer = nn.Linear(512, 512)
    x = torch.randn(16, 512, requires_grad=True)
    with skinny_matmuls(layer):
        out = layer(x)  # the weight and x need gradients: the packed kernel has no backward
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    torch.testing.assert_close(
        x.grad, layer.weight.sum(0).expand(16, 512), rtol=0, atol=rounding_bound(layer.weight, x.detach())
    )
    assert packs == []
    with torch.no_grad(), skinny_matmuls(layer, "weight_first"):
        layer(x)
    assert packs == []
    monkeypatch.setattr(skinny, "packed_available", lambda dtype=torch.float32: False)
    with torch.no_grad(), skinny_matmuls(layer):
        layer(x)
    assert packs == []


def test_packed_available_says_whether_the_kernel_gives_the_product(monkeypatch):
    assert isinstance(skinny.packed_available(), bool)
    skinny.packed_available.cache_clear()

    def missing(*args):
        raise RuntimeError("no oneDNN here")

    monkeypatch.setattr(skinny, "pack", missing)
    try:
        assert skinny.packed_available() is False
    finally:
        skinny.packed_available.cache_clear()  # the real answer again for the tests after this one


def test_packed_available_gives_its_answer_when_first_asked_inside_a_bf16_autocast():
    """The ppo stage's rollout under ppo.precision bf16 enters skinny_matmuls inside its autocast."""
    outside = skinny.packed_available()
    skinny.packed_available.cache_clear()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert skinny.packed_available() is outside
    finally:
        skinny.packed_available.cache_clear()


def test_small_weights_other_dtypes_autocast_and_the_switch_keep_f_linear(counted):
    torch.manual_seed(0)
    small = nn.Linear(128, 320)  # the built-in model's feed-forward, below MIN_WEIGHT
    with skinny_matmuls(small) as layers:
        small(torch.randn(16, 128))
    assert layers == 0 and not counted

    large = nn.Linear(512, 512)
    x = torch.randn(16, 512)
    with skinny_matmuls(large, "off") as layers:
        large(x)
    assert layers == 0 and not counted

    few = x[: PACKED_MIN_ROWS - 1]  # bf16 takes packed weights only, from PACKED_MIN_ROWS rows
    with skinny_matmuls(large) as layers, torch.autocast("cpu", dtype=torch.bfloat16):
        got = large(few)
        expected = F.linear(few, large.weight, large.bias)
    assert layers == 1 and counted == [PACKED_MIN_ROWS - 1]
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)  # autocast, few rows: F.linear
    with skinny_matmuls(large, "weight_first"), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(large(x), F.linear(x, large.weight, large.bias))  # bf16 without packed weights: F.linear
    with skinny_matmuls(large), torch.autocast("cpu", dtype=torch.float16):
        assert torch.equal(large(x), F.linear(x, large.weight, large.bias))  # fp16 autocast: F.linear
    large.to(torch.float64)
    with skinny_matmuls(large):
        assert torch.equal(large(x.double()), F.linear(x.double(), large.weight, large.bias))  # fp64: F.linear
    assert counted == [PACKED_MIN_ROWS - 1, 16, 16, 16]
    assert "forward" not in vars(large)


def bf16_bound(expected: torch.Tensor, weight: torch.Tensor, x: torch.Tensor) -> float:
    """Two kernels' bf16 products of ``x @ weight.T``: sums in fp32 in another order, then each rounded to bf16
    (one bf16 step of the result apart at most, twice for safety)."""
    rounded = 2 * conftest.tolerance(torch.bfloat16, 1, expected.float().abs().max())
    return rounded + rounding_bound(weight.float(), x.float())


@pytest.mark.skipif(not skinny.packed_available(torch.bfloat16), reason="no packed bf16 kernel on this CPU")
@torch.no_grad()
def test_bf16_takes_packed_weights_under_autocast_and_with_bf16_weights_within_bf16_rounding(packs):
    torch.manual_seed(0)
    layer = nn.Linear(512, 512, bias=True).requires_grad_(False)  # fp32 weights, as the policy's trained ones
    x = torch.randn(16, 512)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.linear(x, layer.weight, layer.bias)  # what autocast gives without the path
        with skinny_matmuls(layer):
            got = layer(x)
    # the weight cast to bf16 and packed for 16 rows once, as autocast casts it for F.linear; the output bf16
    assert [entry[0] for entry in packs] == [16, "product"] and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=bf16_bound(expected, layer.weight, x))
    assert not torch.equal(got, torch.zeros_like(got))

    layer.to(torch.bfloat16)  # weights stored in bf16 (ppo.precision's frozen weights, --dtype bfloat16), no autocast
    packs.clear()
    x16 = x.to(torch.bfloat16)
    expected = F.linear(x16, layer.weight, layer.bias)
    with skinny_matmuls(layer):
        got = layer(x16)
        assert [entry[0] for entry in packs] == [16, "product"] and got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=bf16_bound(expected, layer.weight, x16))
        packs.clear()
        with torch.enable_grad():
            layer(x16.requires_grad_())  # an input that needs a gradient: F.linear (no backward for the kernel)
    assert packs == []


def test_packed_bf16_needs_a_cpu_that_multiplies_bf16(monkeypatch):
    skinny.packed_available.cache_clear()
    monkeypatch.setattr(skinny, "cpu_multiplies_bf16", lambda: False)
    try:
        assert skinny.packed_available(torch.bfloat16) is False
        layer = nn.Linear(512, 512, bias=False).requires_grad_(False).to(torch.bfloat16)
        x = torch.randn(16, 512, dtype=torch.bfloat16)
        with skinny_matmuls(layer):
            assert torch.equal(layer(x), F.linear(x, layer.weight))  # F.linear, bit for bit
    finally:
        skinny.packed_available.cache_clear()  # the real answers again for the tests after this one


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


def packed_step_inputs() -> tuple[nn.Module, dict, torch.Tensor]:
    """A T5 whose attention and feed-forward layers take the path, 8 prompts and their decoder start: a
    decoding step of PACKED_MIN_ROWS rows, the fewest that take packed weights."""
    model, tokenizer = tiny_t5(TEMPLATE, **LARGE)
    prompts = build_prompts(tiny_corpus()["train"]["dialogue"].tolist()[:PACKED_MIN_ROWS], TEMPLATE)
    start = torch.zeros(PACKED_MIN_ROWS, 1, dtype=torch.long)
    return model, tokenizer(prompts, padding=True, return_tensors="pt"), start


@needs_onednn
@torch.no_grad()
def test_a_decoding_step_of_8_rows_takes_packed_weights_and_stays_within_rounding(packs):
    model, enc, start = packed_step_inputs()
    plain = model(**enc, decoder_input_ids=start).logits
    with skinny_matmuls(model):
        fast = model(**enc, decoder_input_ids=start).logits
    # the decoder's 9 few-row layers, packed for 8 rows; the encoder's many rows keep F.linear
    assert [entry[0] for entry in packs].count(PACKED_MIN_ROWS) == 9
    torch.testing.assert_close(fast, plain, rtol=0, atol=conftest.tolerance(torch.float32, 512 * 8, plain.abs().max()))
    assert not torch.equal(fast, torch.zeros_like(fast))


@pytest.mark.skipif(not skinny.packed_available(torch.bfloat16), reason="no packed bf16 kernel on this CPU")
@torch.no_grad()
def test_a_bf16_decoding_step_takes_packed_weights_with_stored_bf16_weights_and_under_autocast(packs):
    model, enc, start = packed_step_inputs()
    for stored in (False, True):  # fp32 weights cast by autocast; the frozen weights kept in bf16 (ppo.precision)
        if stored:
            Seq2SeqPolicy(model, tiny_params().ppo).store_frozen_weights(torch.bfloat16)
        packs.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = model(**enc, decoder_input_ids=start).logits
            with skinny_matmuls(model):
                fast = model(**enc, decoder_input_ids=start).logits
        assert [entry[0] for entry in packs].count(PACKED_MIN_ROWS) == 9  # the decoder's few-row layers
        # bf16 rounding on the way through the decoder: a wrong product would be off by the logits' own size
        scale = plain.float().abs().max()
        torch.testing.assert_close(fast.float(), plain.float(), rtol=0, atol=0.05 * scale)
        assert not torch.equal(fast, torch.zeros_like(fast))


def test_generation_and_rollouts_take_the_path_only_when_params_say_so(counted, packs):
    model, tokenizer = tiny_t5(TEMPLATE, **LARGE)
    prompts = build_prompts(tiny_corpus()["train"]["dialogue"].tolist()[:PACKED_MIN_ROWS], TEMPLATE)
    packed = skinny.packed_available()
    for mode in ("off", "weight_first", "packed"):
        counted.clear()
        packs.clear()
        cfg = GenerationParams(max_new_tokens=4, batch_size=PACKED_MIN_ROWS, skinny_matmul=mode)
        draws = generate_draws(model, tokenizer, prompts, cfg, [1])
        assert len(draws[0]) == PACKED_MIN_ROWS
        # the encoder's many rows pass through the replaced forward too, to F.linear; the decoding steps take the path
        assert any(1 < rows <= MAX_ROWS for rows in counted) == (mode != "off")
        assert bool(packs) == (mode == "packed" and packed)  # 8 rows a decoding step: packed weights
        assert not any("forward" in vars(m) for m in model.modules())

    params = tiny_params()
    for mode in ("off", "weight_first", "packed"):
        counted.clear()
        packs.clear()
        cfg = params.ppo.model_validate({**params.ppo.model_dump(), "skinny_matmul": mode})
        torch.manual_seed(0)
        policy = Seq2SeqPolicy(tiny_t5(TEMPLATE, **LARGE)[0], cfg)
        rollout = sample(policy, tokenizer, cfg, prompts, seed=3, device=torch.device("cpu"))
        assert rollout.response_ids.shape[0] == PACKED_MIN_ROWS * cfg.group_size
        assert any(1 < rows <= MAX_ROWS for rows in counted) == (mode != "off")  # the decoding steps
        assert bool(packs) == (mode == "packed" and packed)
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


@needs_onednn
@torch.no_grad()
def test_flop_counter_counts_the_packed_product_as_the_plain_one(packs):
    from torch.utils.flop_counter import FlopCounterMode

    layer = nn.Linear(512, 768, bias=False)
    x = torch.randn(16, 1, 512)
    counts = []
    for packed in (True, False):
        with skinny_matmuls(layer, "packed" if packed else "weight_first"), FlopCounterMode(display=False) as counter:
            layer(x)
        counts.append(counter.get_total_flops())
    assert [entry[0] for entry in packs] == [16, "product"]  # the first block took the packed kernel
    assert counts == [2 * 16 * 512 * 768] * 2


def test_the_setting_takes_three_values_and_the_booleans_of_older_files():
    assert GenerationParams().skinny_matmul == "packed"
    assert GenerationParams(skinny_matmul=True).skinny_matmul == "packed"
    assert GenerationParams(skinny_matmul=False).skinny_matmul == "off"
    with pytest.raises(ValueError, match="'packed', 'weight_first' or 'off'"):
        GenerationParams(skinny_matmul="fast")
    with (
        pytest.raises(ValueError, match="mode 'fast' is none of packed, weight_first, off"),
        skinny_matmuls(nn.Linear(512, 512), "fast"),
    ):
        pass
