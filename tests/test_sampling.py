"""The inverse-CDF sampler draws each token at its probability, and ``sampler`` swaps it in for one block only."""

from __future__ import annotations

import pytest
import torch

from detox.models import sampling
from detox.models.sampling import inverse_cdf_sample, sampler

DRAWS = 200_000


def frequencies(probs: torch.Tensor, draws: int = DRAWS, seed: int = 0) -> torch.Tensor:
    """The share of ``draws`` seeded draws that picked each token, per row of ``probs``."""
    torch.manual_seed(seed)
    rows, vocab = probs.shape
    tokens = inverse_cdf_sample(probs.repeat_interleave(draws, dim=0)).view(rows, draws)
    assert tokens.dtype == torch.int64
    return torch.stack([torch.bincount(row, minlength=vocab) for row in tokens]).double() / draws


def test_inverse_cdf_draws_each_token_at_its_probability():
    torch.manual_seed(1)
    probs = torch.stack(
        [
            torch.softmax(torch.randn(12) * 2, -1),  # every token possible, some rare
            torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.03125, 0.03125, 0, 0, 0, 0, 0, 0]),
            torch.full((12,), 1 / 12),
        ]
    )
    seen = frequencies(probs)
    error = (probs.double() * (1 - probs.double()) / DRAWS).sqrt()  # the standard error of each share
    # seeded, so the draw is fixed; 5 standard errors (plus a floor for tokens near 0) is far from the edge
    assert ((seen - probs.double()).abs() <= 5 * error + 1e-5).all(), (seen - probs.double()).abs().max()
    # an off-by-one in the search moves a whole token's share to its neighbour: far outside those bounds
    assert seen[1, 6:].sum() == 0


def test_inverse_cdf_never_draws_a_token_of_probability_zero_and_needs_no_normalised_rows():
    vocab = 1000
    probs = torch.zeros(4, vocab)
    probs[0, 0] = 1.0  # only the first token
    probs[1, -1] = 3.0  # only the last, unnormalised
    probs[2, [5, 500]] = torch.tensor([1e-30, 1.0])  # a token far rarer than float32's rounding of the sum
    probs[3, 1:-1] = torch.rand(vocab - 2) * 7  # everything but both ends, summing to about 3,500
    seen = frequencies(probs, draws=20_000)
    assert seen[0, 0] == 1 and seen[1, -1] == 1
    assert seen[2, 500] == 1  # the 1e-30 token: drawn with probability 1e-30
    assert seen[3, 0] == 0 and seen[3, -1] == 0 and seen[3, 1:-1].sum().item() == pytest.approx(1)
    normalised = probs[3] / probs[3].sum()
    assert (seen[3] - normalised.double()).abs().max() < 0.005  # about 7 standard errors of the largest share


@pytest.mark.parametrize("target, token", [(0.4999999, 0), (0.50000001, 1), (0.50000003, 2)])
def test_a_token_rarer_than_float32s_rounding_keeps_its_slice_of_the_unit_interval(monkeypatch, target, token):
    """The cumulative sum runs in float64: after a token of 0.5, a token of 2e-8 (below float32's half-ulp there,
    3e-8, so a float32 sum would give it no slice at all) is drawn when the uniform number lands in its slice."""
    probs = torch.tensor([[0.5, 2e-8, 0.5]])
    total = probs.double().sum().item()
    monkeypatch.setattr(
        torch, "rand", lambda shape, dtype, device, generator: torch.full(shape, target / total, dtype=dtype)
    )
    assert inverse_cdf_sample(probs).item() == token


def test_inverse_cdf_is_seeded_and_uses_a_given_generator():
    probs = torch.softmax(torch.randn(64, 50, generator=torch.Generator().manual_seed(0)), -1)
    first = inverse_cdf_sample(probs, torch.Generator().manual_seed(7))
    again = inverse_cdf_sample(probs, torch.Generator().manual_seed(7))
    other = inverse_cdf_sample(probs, torch.Generator().manual_seed(8))
    assert first.shape == (64, 1) and torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    inverse_cdf_sample(probs, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # a given generator leaves the global one alone


@pytest.mark.parametrize(
    "row", [[0.0, 0.0, 0.0], [0.5, float("nan"), 0.5], [0.5, float("inf"), 0.5], [-1.0, 0.5, 0.25]], ids=str
)
def test_inverse_cdf_refuses_the_rows_multinomial_refuses(row):
    probs = torch.tensor([[0.2, 0.3, 0.5], row])
    with pytest.raises(RuntimeError):
        torch.multinomial(probs, 1)
    with pytest.raises(RuntimeError, match="sums to 0 or holds inf or NaN"):
        inverse_cdf_sample(probs)


def test_inverse_cdf_wants_rows_of_probabilities():
    with pytest.raises(ValueError, match=r"expected \(rows, vocab\).*\(3,\)"):
        inverse_cdf_sample(torch.ones(3))


def test_sampler_sends_one_draw_calls_to_inverse_cdf_and_restores_torch_multinomial(monkeypatch):
    torch_multinomial = torch.multinomial
    calls: list[tuple[int, ...]] = []
    real = sampling.inverse_cdf_sample
    monkeypatch.setattr(sampling, "inverse_cdf_sample", lambda p, g=None: calls.append(tuple(p.shape)) or real(p, g))
    probs = torch.softmax(torch.randn(5, 40), -1)

    with sampler("multinomial"):
        assert torch.multinomial is torch_multinomial  # the default changes nothing
    with sampler("inverse_cdf"):
        assert torch.multinomial is not torch_multinomial
        assert torch.multinomial(probs, num_samples=1).shape == (5, 1)
        assert torch.multinomial(probs, 1, replacement=True).shape == (5, 1)
        several = torch.multinomial(probs, 4)  # more draws: torch's own, without replacement
        assert all(len(set(row.tolist())) == 4 for row in several)
        assert torch.multinomial(probs[0], 1).shape == (1,)  # one row, 1-D: torch's own
    assert calls == [(5, 40), (5, 40)]
    assert torch.multinomial is torch_multinomial

    with pytest.raises(KeyError, match="boom"), sampler("inverse_cdf"):
        raise KeyError("boom")
    assert torch.multinomial is torch_multinomial  # put back after an error too
    with pytest.raises(ValueError, match="'fast' is none of multinomial, inverse_cdf"), sampler("fast"):
        pass
