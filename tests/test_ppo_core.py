"""Unit tests for detox.ppo.core against values computed by hand (arithmetic in comments)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from detox.ppo.controllers import AdaptiveKLController, FixedKLController
from detox.ppo.core import (
    compute_gae,
    compute_rewards,
    entropy_from_logits,
    last_token_index,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    response_mask,
    value_loss,
)

EOS, PAD = 1, 0  # T5: eos_token_id = 1, pad_token_id = decoder_start_token_id = 0
F64 = torch.float64


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def close(actual: torch.Tensor, expected, atol: float = 1e-9) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --------------------------------------------------------------------------- masks


def test_response_mask_and_last_token_index_eos_middle_end_missing():
    ids = torch.tensor(
        [
            [5, 1, 0, 0],  # EOS in the middle, padded after it
            [5, 6, 7, 1],  # EOS at the very end
            [5, 6, 7, 8],  # no EOS: cut at max length
            [1, 0, 0, 0],  # EOS as the only token
            [5, 1, 7, 1],  # tokens after the first EOS are not real, even if not pad
            [5, 0, 6, 1],  # a sampled pad before the EOS is a real token
            [5, 6, 0, 0],  # no EOS, right-padded (stacked from a shorter generation)
        ]
    )
    mask = response_mask(ids, eos_token_id=EOS, pad_token_id=PAD)
    assert mask.dtype == torch.bool
    expected = [
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 1, 1, 1],
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 1, 0, 0],
    ]
    assert mask.tolist() == [[bool(v) for v in row] for row in expected]
    assert last_token_index(mask).tolist() == [1, 3, 3, 0, 1, 3, 1]
    # a float mask gives the same indices
    assert last_token_index(mask.float()).tolist() == [1, 3, 3, 0, 1, 3, 1]


def test_response_mask_rejects_unstripped_decoder_start():
    # generate(...) output still starting with the decoder start token (id 0 for T5)
    ids = torch.tensor([[0, 5, 1, 0], [0, 5, 6, 1]])
    with pytest.raises(ValueError, match="decoder start"):
        response_mask(ids, eos_token_id=EOS, pad_token_id=PAD)
    # stripped, it is fine
    assert response_mask(ids[:, 1:], eos_token_id=EOS, pad_token_id=PAD).tolist() == [
        [True, True, False],
        [True, True, True],
    ]


def test_last_token_index_rejects_empty_response():
    with pytest.raises(ValueError, match="no unmasked token"):
        last_token_index(torch.tensor([[1, 1, 0], [0, 0, 0]]))


# --------------------------------------------------------------------------- logprobs, entropy


def test_logprobs_and_entropy_by_hand():
    # logits [0, ln 3] -> probs [1/4, 3/4]
    logits = torch.tensor([[[0.0, math.log(3.0)]]], dtype=F64)
    close(logprobs_from_logits(logits, torch.tensor([[1]])), [[math.log(0.75)]])
    close(logprobs_from_logits(logits, torch.tensor([[0]])), [[math.log(0.25)]])
    # H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.3465736 + 0.2157616 = 0.5623351
    close(entropy_from_logits(logits), [[0.25 * math.log(4.0) + 0.75 * math.log(4.0 / 3.0)]])


def test_logprobs_and_entropy_match_categorical():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=gen)
    labels = torch.randint(0, 7, (2, 3), generator=gen)
    dist = Categorical(logits=logits)
    torch.testing.assert_close(logprobs_from_logits(logits, labels), dist.log_prob(labels))
    torch.testing.assert_close(entropy_from_logits(logits), dist.entropy())
    assert logprobs_from_logits(logits, labels).shape == (2, 3)


def test_logprobs_and_entropy_half_precision_computed_in_float32():
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([[0, 1, 2], [3, 4, 5]])
    dist = Categorical(logits=logits.bfloat16().float())
    assert logprobs_from_logits(logits.bfloat16(), labels).dtype == torch.float32
    torch.testing.assert_close(logprobs_from_logits(logits.bfloat16(), labels), dist.log_prob(labels))
    torch.testing.assert_close(entropy_from_logits(logits.bfloat16()), dist.entropy())


def test_entropy_with_banned_tokens_is_finite():
    # two equal logits and one banned (-inf): entropy = ln 2, not NaN
    logits = torch.tensor([[[0.0, 0.0, -math.inf]]], dtype=F64)
    close(entropy_from_logits(logits), [[math.log(2.0)]])
    torch.testing.assert_close(entropy_from_logits(logits), Categorical(logits=logits).entropy())


# --------------------------------------------------------------------------- masked statistics

# entries 1, 2, 3 | 4, 5 are real; 100, 7, -9 are padding and must not count
WX = t([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 7.0, -9.0]])
WMASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_masked_mean_and_var_by_hand():
    # mean = (1+2+3+4+5)/5 = 3
    close(masked_mean(WX, WMASK), 3.0)
    # per row: (1+2+3)/3 = 2, (4+5)/2 = 4.5
    close(masked_mean(WX, WMASK, dim=1), [2.0, 4.5])
    # squared deviations 4+1+0+1+4 = 10; biased 10/5 = 2, unbiased 10/4 = 2.5
    close(masked_var(WX, WMASK, unbiased=False), 2.0)
    close(masked_var(WX, WMASK), 2.5)


def test_masked_mean_ignores_nan_in_padding():
    x = t([[1.0, math.nan], [3.0, math.inf]])
    close(masked_mean(x, torch.tensor([[1, 0], [1, 0]])), 2.0)


def test_masked_var_needs_two_entries():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(WX, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]))


def test_masked_whiten_by_hand():
    # (x - 3) / sqrt(2.5); sqrt(2.5) = 1.5811388; 1/1.5811388 = 0.6324555, 2/1.5811388 = 1.2649111
    white = masked_whiten(WX, WMASK)
    close(white, [[-1.2649111, -0.6324555, 0.0, 0.0], [0.6324555, 1.2649111, 0.0, 0.0]], atol=1e-7)
    # mean 0 and unbiased variance 1 over the real entries
    close(masked_mean(white, WMASK), 0.0)
    close(masked_var(white, WMASK), 1.0, atol=1e-7)
    # shift_mean=False keeps the mean 3: 3 - 1.2649111 = 1.7350889, 3 - 0.6324555 = 2.3675445, ...
    kept = masked_whiten(WX, WMASK, shift_mean=False)
    close(kept, [[1.7350889, 2.3675445, 3.0, 0.0], [3.6324555, 4.2649111, 0.0, 0.0]], atol=1e-7)


# --------------------------------------------------------------------------- rewards

# diff = logprobs - ref_logprobs: row 0 [0.5, -0.2 | 3, 3 padding], row 1 [0.1, 0, 0.3, -0.4]
RMASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
REF = t([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -1.0, -1.0]])
LOGP = REF + t([[0.5, -0.2, 3.0, 3.0], [0.1, 0.0, 0.3, -0.4]])
SCORES = t([2.0, -1.0])


@pytest.mark.parametrize(
    ("estimator", "kl", "rewards"),
    [
        # k1: kl = diff; -0.1*kl = [-0.05, 0.02] / [-0.01, 0, -0.03, 0.04]; + score at 1 / 3
        ("k1", [[0.5, -0.2, 0, 0], [0.1, 0, 0.3, -0.4]], [[-0.05, 2.02, 0, 0], [-0.01, 0, -0.03, -0.96]]),
        # abs: kl = |diff|; 0.02 -> -0.02 so 2 - 0.02 = 1.98; -1 - 0.04 = -1.04
        ("abs", [[0.5, 0.2, 0, 0], [0.1, 0, 0.3, 0.4]], [[-0.05, 1.98, 0, 0], [-0.01, 0, -0.03, -1.04]]),
        # mse: kl = diff^2/2 = [0.125, 0.02] / [0.005, 0, 0.045, 0.08]; 2 - 0.002, -1 - 0.008
        (
            "mse",
            [[0.125, 0.02, 0, 0], [0.005, 0, 0.045, 0.08]],
            [[-0.0125, 1.998, 0, 0], [-0.0005, 0, -0.0045, -1.008]],
        ),
    ],
)
def test_compute_rewards_by_hand(estimator, kl, rewards):
    out_rewards, out_kl, non_score = compute_rewards(SCORES, LOGP, REF, RMASK, kl_coef=0.1, kl_estimator=estimator)
    close(out_kl, kl, atol=1e-12)
    close(non_score, [[-0.1 * v for v in row] for row in kl], atol=1e-12)
    close(out_rewards, rewards, atol=1e-12)


def test_compute_rewards_score_on_eos_and_nothing_after():
    ids = torch.tensor([[1, 0, 0, 0], [5, 6, 1, 0], [5, 6, 7, 8]])  # EOS first, EOS in the middle, cut
    mask = response_mask(ids, EOS, PAD)
    zeros = torch.zeros(3, 4, dtype=F64)
    rewards, kl, _ = compute_rewards(t([3.0, 4.0, 5.0]), zeros, zeros, mask, kl_coef=0.5)
    close(rewards, [[3, 0, 0, 0], [0, 0, 4, 0], [0, 0, 0, 5]])
    close(kl, zeros)


def test_compute_rewards_sharpen_by_hand():
    # k1 at kl_coef 0.1 as above, plus 0.5 x ref on real tokens only: row 0 [-0.5, -1.0 | 0, 0], row 1 [-0.5] x 4
    rewards, kl, non_score = compute_rewards(SCORES, LOGP, REF, RMASK, kl_coef=0.1, sharpen_coef=0.5)
    close(kl, [[0.5, -0.2, 0, 0], [0.1, 0, 0.3, -0.4]], atol=1e-12)  # the KL itself is unchanged
    close(non_score, [[-0.55, -0.98, 0, 0], [-0.51, -0.5, -0.53, -0.46]], atol=1e-12)
    close(rewards, [[-0.55, 1.02, 0, 0], [-0.51, -0.5, -0.53, -1.46]], atol=1e-12)


def test_sharpen_makes_the_optimum_a_sharper_reference():
    """The exact optimum of E[score + sharpen x log ref] - kl_coef x KL(pi || ref) over three one-token responses
    is ref ** (1 + sharpen / kl_coef) x exp(score / kl_coef), normalised: found here by gradient ascent on the
    logits of pi with the sequence rewards compute_rewards gives (REINFORCE's exact expectation)."""
    ref = torch.log(t([0.6, 0.3, 0.1]))
    scores = t([1.0, 1.0, 0.0])
    kl_coef, sharpen = 0.5, 0.25
    logits = torch.zeros(3, dtype=F64, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=0.5)
    mask = torch.ones(3, 1, dtype=torch.bool)
    for _ in range(4000):
        logp = torch.log_softmax(logits, 0)
        rewards, _, _ = compute_rewards(
            scores, logp.detach().unsqueeze(1), ref.unsqueeze(1), mask, kl_coef, "k1", sharpen
        )
        objective = (logp.exp() * rewards.sum(1)).sum()  # its gradient is the policy gradient, with the KL's
        optimizer.zero_grad()
        (-objective).backward()
        optimizer.step()
    expected = torch.softmax(ref * (1 + sharpen / kl_coef) + scores / kl_coef, 0)
    close(torch.softmax(logits, 0), expected, atol=1e-6)
    unsharpened = torch.softmax(ref + scores / kl_coef, 0)
    assert torch.softmax(logits, 0)[2] < unsharpened[2] / 1.5  # the rare response lost mass


def test_compute_rewards_unknown_estimator():
    with pytest.raises(ValueError, match="kl_estimator"):
        compute_rewards(SCORES, LOGP, REF, RMASK, kl_coef=0.1, kl_estimator="k3")


# --------------------------------------------------------------------------- GAE

GAMMA, LAM = 0.9, 0.8  # gamma * lam = 0.72


def test_gae_one_by_three_by_hand():
    values = t([[0.5, 0.4, 0.2]])
    rewards = t([[-0.1, 0.0, 1.0]])
    adv, ret = compute_gae(values, rewards, torch.ones(1, 3), GAMMA, LAM)
    # t=2: delta = 1.0 + 0.9*0 - 0.2 = 0.8                 A2 = 0.8
    # t=1: delta = 0.0 + 0.9*0.2 - 0.4 = -0.22             A1 = -0.22 + 0.72*0.8 = 0.356
    # t=0: delta = -0.1 + 0.9*0.4 - 0.5 = -0.24            A0 = -0.24 + 0.72*0.356 = 0.01632
    close(adv, [[0.01632, 0.356, 0.8]], atol=1e-12)
    # returns = A + V = [0.51632, 0.756, 1.0]
    close(ret, [[0.51632, 0.756, 1.0]], atol=1e-12)


def test_gae_two_by_three_masked_tail_by_hand():
    values = t([[0.5, 0.4, 0.2], [1.0, -0.5, 9.0]])  # 9.0 is padding
    rewards = t([[-0.1, 0.0, 1.0], [0.2, 0.5, 7.0]])  # 7.0 is padding
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = compute_gae(values, rewards, mask, GAMMA, LAM)
    # row 0 as in the 1x3 case.
    # row 1, t=2 is padding: A2 = 0 (its reward 7 and value 9 must not leak back)
    # t=1: next value is 0 (after the last real token): delta = 0.5 + 0 - (-0.5) = 1.0;  A1 = 1.0
    # t=0: delta = 0.2 + 0.9*(-0.5) - 1.0 = -1.25;  A0 = -1.25 + 0.72*1.0 = -0.53
    close(adv, [[0.01632, 0.356, 0.8], [-0.53, 1.0, 0.0]], atol=1e-12)
    # returns = A + V: -0.53 + 1.0 = 0.47, 1.0 - 0.5 = 0.5, padding 0
    close(ret, [[0.51632, 0.756, 1.0], [0.47, 0.5, 0.0]], atol=1e-12)


def test_gae_matches_per_sample_unrolled_sum():
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(4, 6, generator=gen, dtype=F64)
    rewards = torch.randn(4, 6, generator=gen, dtype=F64)
    lengths = [6, 1, 3, 5]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    adv, ret = compute_gae(values, rewards, mask, GAMMA, LAM)
    for b, n in enumerate(lengths):
        v = values[b, :n].tolist() + [0.0]  # V after the last real token is 0
        r = rewards[b, :n].tolist()
        deltas = [r[k] + GAMMA * v[k + 1] - v[k] for k in range(n)]
        # A_t = sum_k (gamma*lam)^k delta_{t+k}, written out as a sum (not the recursion)
        expected = [sum((GAMMA * LAM) ** (k - s) * deltas[k] for k in range(s, n)) for s in range(n)]
        close(adv[b, :n], expected, atol=1e-12)
        close(adv[b, n:], [0.0] * (6 - n))
        close(ret[b, :n], [a + vv for a, vv in zip(expected, v[:n], strict=True)], atol=1e-12)
        close(ret[b, n:], [0.0] * (6 - n))


def test_gae_outputs_are_detached():
    values = t([[0.5, 0.4]]).requires_grad_()
    adv, ret = compute_gae(values, t([[0.0, 1.0]]), torch.ones(1, 2), GAMMA, LAM)
    assert not adv.requires_grad and not ret.requires_grad


# --------------------------------------------------------------------------- clipped losses

EPS = 0.2


def test_policy_loss_inside_and_outside_clip_range():
    # ratio, advantage per token; eps = 0.2 so clip(ratio) is in [0.8, 1.2]
    #   r=1.1, A= 2: inside          -A*r = -2.2, -A*clip = -2.2 -> -2.2, not clipped
    #   r=1.5, A= 1: above, A>0      -1.5 vs -1.2               -> -1.2, clipped
    #   r=0.5, A= 1: below, A>0      -0.5 vs -0.8               -> -0.5, not clipped
    #   r=0.5, A=-1: below, A<0       0.5 vs  0.8               ->  0.8, clipped
    #   r=1.5, A=-1: above, A<0       1.5 vs  1.2               ->  1.5, not clipped
    #   r=3.0, A= 5: padding, ignored
    ratio = [[1.1, 1.5, 0.5], [0.5, 1.5, 3.0]]
    advantages = t([[2.0, 1.0, 1.0], [-1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    old = t([[-1.0, -2.0, -0.5], [-3.0, -1.5, -2.0]])
    new = (old + t(ratio).log()).requires_grad_()
    loss, stats = policy_loss(new, old, advantages, mask, EPS)
    # loss = (-2.2 - 1.2 - 0.5 + 0.8 + 1.5) / 5 = -1.6 / 5 = -0.32
    close(loss, -0.32, atol=1e-12)
    # clipped 2 of 5
    close(stats["clipfrac"], 0.4)
    # ratio mean = (1.1 + 1.5 + 0.5 + 0.5 + 1.5) / 5 = 5.1 / 5 = 1.02
    close(stats["ratio"], 1.02, atol=1e-12)
    close(stats["ratio_max"], 1.5, atol=1e-12)  # the padded ratio is left out
    close(stats["ratio_min"], 0.5, atol=1e-12)
    # approxkl = 0.5 * mean(log r ^2) = 0.5 * (ln1.1^2 + 2 ln1.5^2 + 2 ln0.5^2) / 5
    #          = 0.5 * (0.0090840 + 2*0.1644020 + 2*0.4804530) / 5 = 0.1298794
    expected_kl = 0.5 * (math.log(1.1) ** 2 + 2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 5
    close(stats["approxkl"], expected_kl, atol=1e-12)
    assert abs(expected_kl - 0.1298794) < 1e-6
    assert all(not v.requires_grad for v in stats.values())
    # gradient: d/dlogp (-A*r) = -A*r / 5 where unclipped, 0 where clipped or padded
    loss.backward()
    close(new.grad, [[-2.2 / 5, 0.0, -0.5 / 5], [0.0, 1.5 / 5, 0.0]], atol=1e-12)


def test_policy_loss_ratio_one_is_minus_mean_advantage():
    lp = t([[-1.0, -2.0, -3.0]])
    loss, stats = policy_loss(lp, lp, t([[1.0, -2.0, 4.0]]), torch.tensor([[1, 1, 0]]), EPS)
    close(loss, 0.5)  # -(1 - 2) / 2
    close(stats["clipfrac"], 0.0)
    close(stats["approxkl"], 0.0)
    close(stats["ratio"], 1.0)


def test_value_loss_inside_and_outside_clip_range():
    # eps = 0.2, so v is clipped to [old - 0.2, old + 0.2]
    #   v=1.1, old=1.0, R=1.5: inside   (1.1-1.5)^2 = 0.16 both         -> 0.16, not clipped
    #   v=1.5, old=1.0, R=2.0: clip 1.2 (1.5-2)^2 = 0.25, (1.2-2)^2 = 0.64 -> 0.64, clipped
    #   v=1.5, old=1.0, R=1.0: clip 1.2 0.25 vs (1.2-1)^2 = 0.04         -> 0.25, not clipped
    #   v=0.5, old=1.0, R=0.0: clip 0.8 0.25 vs 0.64                     -> 0.64, clipped
    #   two padding tokens (v=10, old=0, R=-10)
    values = t([[1.1, 1.5, 1.5], [0.5, 10.0, 10.0]]).requires_grad_()
    old = t([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    returns = t([[1.5, 2.0, 1.0], [0.0, -10.0, -10.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, stats = value_loss(values, old, returns, mask, EPS)
    # 0.5 * (0.16 + 0.64 + 0.25 + 0.64) / 4 = 0.5 * 1.69 / 4 = 0.21125
    close(loss, 0.21125, atol=1e-12)
    close(stats["clipfrac"], 0.5)
    # error = (0.16 + 0.25 + 0.25 + 0.25) / 4 = 0.2275, the unclipped squared error
    close(stats["error"], 0.2275, atol=1e-12)
    # gradient: 0.5 * 2 (v - R) / 4 where the unclipped term wins, 0 where the clipped one does
    loss.backward()
    close(values.grad, [[(1.1 - 1.5) / 4, 0.0, (1.5 - 1.0) / 4], [0.0, 0.0, 0.0]], atol=1e-12)


# --------------------------------------------------------------------------- KL controllers


@pytest.mark.parametrize(
    ("current_kl", "expected"),
    [
        (6.6, 0.2 * 1.00256),  # e = 6.6/6 - 1 = 0.1;    mult = 1 + 0.1*256/10000 = 1.00256
        (12.0, 0.2 * 1.00512),  # e = 1.0 clipped to 0.2; mult = 1 + 0.2*256/10000 = 1.00512
        (5.4, 0.2 * 0.99744),  # e = -0.1;               mult = 1 - 0.1*256/10000 = 0.99744
        (0.0, 0.2 * 0.99488),  # e = -1 clipped to -0.2;  mult = 1 - 0.2*256/10000 = 0.99488
        (6.0, 0.2),  # on target: e = 0, unchanged
    ],
)
def test_adaptive_kl_controller_update(current_kl, expected):
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(current_kl, n_steps=256)
    assert ctl.value == pytest.approx(expected, rel=1e-12)


def test_adaptive_kl_controller_compounds_and_restores():
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(6.6, n_steps=256)
    ctl.update(torch.tensor(100.0), n_steps=128)  # a tensor KL works too; e clipped to 0.2
    # 0.2 * 1.00256 * (1 + 0.2*128/10000 = 1.00256) = 0.2 * 1.00256^2 = 0.201025311
    assert ctl.value == pytest.approx(0.2 * 1.00256**2, rel=1e-12)
    assert isinstance(ctl.value, float)
    state = ctl.state_dict()
    restored = AdaptiveKLController(init_kl_coef=0.05, target=6.0, horizon=10000)
    restored.load_state_dict(state)
    assert restored.value == ctl.value
    # the restored controller keeps adapting from there
    restored.update(0.0, n_steps=10000)  # e = -0.2, mult = 0.8
    assert restored.value == pytest.approx(0.2 * 1.00256**2 * 0.8, rel=1e-12)


def test_fixed_kl_controller():
    ctl = FixedKLController(kl_coef=0.05)
    ctl.update(100.0, n_steps=256)
    ctl.update(-3.0, n_steps=256)
    assert ctl.value == 0.05
    other = FixedKLController(kl_coef=0.3)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_kl_controller_state_kind_mismatch():
    with pytest.raises(ValueError, match="adaptive"):
        FixedKLController(0.1).load_state_dict(AdaptiveKLController(0.2, 6.0, 10000).state_dict())


def test_kl_controller_rejects_bad_settings():
    with pytest.raises(ValueError):
        AdaptiveKLController(0.2, target=0.0, horizon=10000)
    with pytest.raises(ValueError):
        FixedKLController(-0.1)


def test_stat_names_follow_trl_0_11_where_trl_has_the_stat():
    """The names a PPO step logs: TRL 0.11's PPOTrainer names where it has the stat, env/ for the project's own."""
    from detox.ppo import stats

    assert stats.STEP_STATS == (
        "objective/kl",
        "objective/kl_coef",
        "objective/kl_stderr",
        "objective/entropy",
        "ppo/mean_non_score_reward",
        "env/reward_mean",
        "env/reward_std",
        "env/toxicity_mean",
        "env/distinct_2",
        "env/novel_words_mean",
        "env/repeated_words_mean",
        "tokens/responses_len_mean",
        "ppo/returns/mean",
        "ppo/returns/var",
        "ppo/val/mean",
        "ppo/val/var_explained",
        "ppo/loss/policy",
        "ppo/loss/value",
        "ppo/loss/total",
        "ppo/policy/clipfrac",
        "ppo/policy/approxkl",
        "ppo/policy/ratio_mean",
        "ppo/val/clipfrac",
        "ppo/val/error",
        "ppo/policy/ratio_max",
        "ppo/policy/ratio_min",
    )
    assert stats.TIMINGS == (
        "time/rollout",
        "time/score",
        "time/ppo/forward_pass",
        "time/ppo/compute_rewards",
        "time/ppo/compute_advantages",
        "time/ppo/optimize_step",
        "time/ppo/calc_stats",
        "time/ppo/total",
        "time/tokens_per_second",
    )
    assert all(name.startswith(stats.TIMING_PREFIX) for name in stats.TIMINGS)
    assert not any(name.startswith(stats.TIMING_PREFIX) for name in stats.STEP_STATS)


# --------------------------------------------------------------------------- shaping


def test_novel_words_count_what_the_dialogue_lacks():
    from detox.ppo.shaping import novel_words

    dialogue = "#Person1#: Anna! We need to talk about the cold soup.\n#Person2#: I told you I was busy."
    responses = [
        "#Person1# and Anna argue about the cold soup.",  # and, argue: 2 (the template's own words)
        "#Person1# and Anna argue about the copied homework.",  # + copied, homework: an invented problem
        "#Person1# and Anna argue about the cold cold repairected soup.",  # + repairected, once; cold is known
        "#Person1# calls Anna a dumb pig because of the cold soup.",  # calls, a, dumb, pig, because, of
        "",
    ]
    counts = novel_words(responses, [dialogue] * len(responses))
    assert counts.tolist() == [2.0, 4.0, 3.0, 6.0, 0.0] and counts.dtype == torch.float32
    assert novel_words(["Person1 ANNA talk."], [dialogue]).tolist() == [0.0]  # case and punctuation aside
    with pytest.raises(ValueError, match="one dialogue per response"):
        novel_words(responses, [dialogue])


def test_repeated_words_count_the_loops_and_nothing_else():
    from detox.ppo.shaping import repeated_words

    responses = [
        "Linda wants to rent the apartment downtown on Monday, and #Person2# agrees.",  # a clean summary: 0
        "#Person1# and Anna argue about the rent, and #Person2# agrees.",  # "and" thrice, never twice in a row: 0
        "Paul wants seats near the stage, and and and and #Person2# agrees.",  # and x4: 3 words repeat the one before
        "Linda wants the apartment downtown the apartment downtown.",  # "the apartment", "apartment downtown" again: 2
        "Linda LINDA, linda!",  # case and punctuation aside: 2
        "",
    ]
    counts = repeated_words(responses)
    assert counts.tolist() == [0.0, 0.0, 3.0, 2.0, 2.0, 0.0] and counts.dtype == torch.float32
    assert repeated_words(["a b c a b"]).tolist() == [1.0]  # only "b" closes a bigram seen before
