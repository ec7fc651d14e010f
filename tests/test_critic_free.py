"""Unit tests for detox.ppo.critic_free (RLOO and GRPO): values computed by hand (arithmetic in comments), and
the numbers TRL 1.16's own RLOOTrainer / GRPOTrainer code computed on fixed tensors
(tests/fixtures/trl_reference.json, made by scripts/trl_reference.py in a side environment)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from detox.common.params import PPOParams
from detox.ppo.core import compute_rewards
from detox.ppo.critic_free import (
    GRPO_EPS,
    dapo_normalizers,
    group_std,
    grpo_advantages,
    grpo_loss,
    k3_kl,
    rloo_advantages,
    rloo_loss,
)

F64 = torch.float64
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "trl_reference.json").read_text())


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def close(actual: torch.Tensor, expected, atol: float = 1e-9) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --------------------------------------------------------------------------- advantages


def test_rloo_advantage_is_the_reward_minus_the_mean_of_the_other_samples():
    # k = 2: each baseline is the other sample: [1 - 3, 3 - 1]
    close(rloo_advantages(t([1.0, 3.0]), 2), [-2.0, 2.0])
    # k = 3: 1 - (2 + 6) / 2 = -3, 2 - (1 + 6) / 2 = -1.5, 6 - (1 + 2) / 2 = 4.5; equal rewards give 0
    close(rloo_advantages(t([1.0, 2.0, 6.0, 5.0, 5.0, 5.0]), 3), [-3.0, -1.5, 4.5, 0.0, 0.0, 0.0])
    # the groups are consecutive rows: the same rewards laid out as (group, sample) give other baselines
    assert not torch.equal(
        rloo_advantages(t([1.0, 5.0, 2.0, 5.0, 6.0, 5.0]), 3), rloo_advantages(t([1.0, 2.0, 6.0, 5.0, 5.0, 5.0]), 3)
    )
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(t([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="consecutive"):
        rloo_advantages(t([1.0, 2.0, 3.0]), 2)


def test_grpo_advantage_is_the_group_standardised_reward():
    # k = 2, rewards 1 and 3: mean 2, Bessel std sqrt(((1-2)^2 + (3-2)^2) / 1) = sqrt(2)
    a = 1.0 / (math.sqrt(2.0) + GRPO_EPS)
    close(grpo_advantages(t([1.0, 3.0]), 2), [-a, a])
    # k = 4: 0, 0, 0, 4: mean 1, std sqrt((1 + 1 + 1 + 9) / 3) = 2; equal rewards: 0 / (0 + eps) = 0
    close(
        grpo_advantages(t([0.0, 0.0, 0.0, 4.0, 7.0, 7.0, 7.0, 7.0]), 4),
        [-1 / (2 + GRPO_EPS)] * 3 + [3 / (2 + GRPO_EPS)] + [0.0] * 4,
    )
    close(grpo_advantages(t([1.0, 3.0]), 2, scale="none"), [-1.0, 1.0])  # Dr. GRPO: centred only
    close(group_std(t([1.0, 3.0, 5.0, 5.0]), 2), [math.sqrt(2.0)] * 2 + [0.0] * 2)


def test_k3_kl_is_zero_at_the_reference_and_positive_elsewhere():
    logp, ref = t([math.log(0.5), math.log(0.2)]), t([math.log(0.5), math.log(0.4)])
    # d = ref - logp = log 2: exp(d) - d - 1 = 2 - log 2 - 1
    close(k3_kl(logp, ref), [0.0, 1.0 - math.log(2.0)])


# --------------------------------------------------------------------------- losses

MASK = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)  # lengths 1 and 3


def test_rloo_loss_clips_the_sequence_ratio_and_ignores_padding():
    old = t([[-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    # sequence log-ratios: log 1.1 on the first (one token), log 1.5 spread over the second's three tokens
    new = old + t([[math.log(1.1), 0.0, 0.0], [math.log(1.5) / 3] * 3])
    new_with_garbage = torch.where(MASK, new, t(float("nan")))  # padding after EOS may hold anything
    adv = t([2.0, 1.0])
    loss, stats = rloo_loss(new_with_garbage, old, adv, MASK, cliprange=0.2)
    # -min(1.1 * 2, 1.1 * 2) = -2.2; -min(1.5 * 1, 1.2 * 1) = -1.2: mean -1.7
    close(loss, -1.7)
    close(stats["clip_ratio/high_mean"], 0.5)  # the second sequence is above 1 + eps with A > 0
    close(stats["clip_ratio/low_mean"], 0.0)
    loss, _ = rloo_loss(new, old, t([2.0, -1.0]), MASK, cliprange=0.2)
    # a negative advantage is not clipped above: -min(-1.5, -1.2) = 1.5; mean of -2.2 and 1.5 = -0.35
    close(loss, -0.35)


def test_grpo_loss_normalisations_differ_as_their_definitions_say():
    old = t([[-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    adv = t([1.0, -1.0])  # ratio 1 everywhere: per-token loss = -A, so -1 on one token and +1 on three
    garbage = torch.where(MASK, old, t(float("inf")))
    dapo, _ = grpo_loss(garbage, old, old, adv, MASK, 0.2, 0.0, "dapo")
    close(dapo, (-1 + 3) / 4)  # token mean over the batch: 0.5
    grpo, _ = grpo_loss(old, old, old, adv, MASK, 0.2, 0.0, "grpo")
    close(grpo, (-1 / 1 + 3 / 3) / 2)  # mean over sequences of their token means: 0
    dr, _ = grpo_loss(old, old, old, adv, MASK, 0.2, 0.0, "dr_grpo", normalizer=2 * 4)
    close(dr, 2 / 8)  # the sum over a constant: 2 sequences x 4 tokens allowed
    with pytest.raises(ValueError, match="constant"):
        grpo_loss(old, old, old, adv, MASK, 0.2, 0.0, "dr_grpo")
    # the KL term: beta x k3 on each real token, here with the reference at twice the probability
    ref = old + math.log(2.0)
    kl_loss, stats = grpo_loss(old, old, ref, adv, MASK, 0.2, 0.5, "dapo")
    close(kl_loss, 0.5 + 0.5 * (1.0 - math.log(2.0)))
    close(stats["kl"], 1.0 - math.log(2.0))


def test_dapo_normalizers_make_two_processes_equal_one_with_twice_the_batch():
    """accelerate divides each mini-batch's loss by the accumulation steps, DDP averages the processes'
    gradients: with dapo_normalizers the step's gradient is the token mean over the whole batch."""
    g = torch.Generator().manual_seed(0)
    n, length = 8, 5
    mask = torch.arange(length).expand(n, -1) < torch.randint(1, length + 1, (n, 1), generator=g)
    old = -torch.rand(n, length, generator=g, dtype=F64)
    ref = old + 0.1 * torch.randn(n, length, generator=g, dtype=F64)
    adv = torch.randn(n, generator=g, dtype=F64)

    def grad(rows: slice, normalizer) -> torch.Tensor:
        new = old.clone().requires_grad_(True)
        loss, _ = grpo_loss(new[rows], old[rows], ref[rows], adv[rows], mask[rows], 0.2, 0.04, "dapo", normalizer)
        loss.backward()
        return new.grad

    whole = grad(slice(None), None)  # one process, one mini-batch: the plain token mean
    processes, accumulation = 2, 2  # 2 processes x 2 accumulated mini-batches of 2 rows
    window = mask.sum().to(F64)
    divisor = dapo_normalizers(window.view(1), processes, accumulation)[0]
    split = sum(grad(slice(i, i + 2), divisor) for i in range(0, n, 2)) / (accumulation * processes)
    close(split, whole, atol=1e-12)
    unscaled = sum(grad(slice(i, i + 2), None) for i in range(0, n, 2)) / (accumulation * processes)
    assert not torch.allclose(unscaled, whole), "a per-mini-batch token mean differs: the test must see it"


# --------------------------------------------------------------------------- against TRL's own code


def fixture_tensors() -> dict[str, torch.Tensor]:
    inputs = {k: torch.tensor(v, dtype=F64) for k, v in FIXTURE["inputs"].items()}
    inputs["mask"] = inputs["mask"].bool()
    return inputs


def test_the_fixture_names_its_source():
    assert FIXTURE["source"]["package"] == "trl" and FIXTURE["source"]["version"] == "1.16.0"
    assert set(FIXTURE["source"]["files"]) == {"trl/trainer/rloo_trainer.py", "trl/trainer/grpo_trainer.py"}
    assert len(FIXTURE["rloo"]) == 2 and len(FIXTURE["grpo"]) == 12


@pytest.mark.parametrize("case", FIXTURE["rloo"], ids=lambda c: f"beta={c['beta']}")
def test_rloo_matches_trl(case):
    x, k = fixture_tensors(), FIXTURE["k"]
    # RLOO's reward: the score minus beta x the summed k1 KL of the old policy, exactly PPO's per-token rewards summed
    rewards, _, _ = compute_rewards(x["scores"], x["old"], x["ref"], x["mask"], case["beta"], "k1")
    advantages = rloo_advantages(rewards.sum(1), k)
    close(advantages, case["advantages"], atol=1e-10)
    new = x["new"].clone().requires_grad_(True)
    loss, _ = rloo_loss(new, x["old"], advantages, x["mask"], FIXTURE["cliprange"])
    loss.backward()
    close(loss, case["loss"], atol=1e-10)
    close(new.grad, case["grad"], atol=1e-10)


@pytest.mark.parametrize(
    "case", FIXTURE["grpo"], ids=lambda c: f"{c['scale_rewards']}-{c['loss_type']}-beta={c['beta']}"
)
def test_grpo_matches_trl(case):
    x, k = fixture_tensors(), FIXTURE["k"]
    advantages = grpo_advantages(x["scores"], k, case["scale_rewards"])
    close(advantages, case["advantages"], atol=1e-10)
    normalizer = {
        "dapo": dapo_normalizers(x["mask"].sum().view(1), 1, 1)[0],
        "dr_grpo": torch.tensor(float(x["mask"].size(0) * x["mask"].size(1))),  # rows x max response length
        "grpo": None,
    }[case["loss_type"]]
    new = x["new"].clone().requires_grad_(True)
    loss, _ = grpo_loss(
        new, x["old"], x["ref"], advantages, x["mask"], FIXTURE["cliprange"], case["beta"], case["loss_type"],
        normalizer,
    )  # fmt: skip
    loss.backward()
    close(loss, case["loss"], atol=1e-10)
    close(new.grad, case["grad"], atol=1e-10)


def test_a_broken_baseline_or_normalisation_would_fail_the_trl_comparison():
    """The comparison above can fail: a baseline over all k samples (not the other k - 1) and GRPO without the
    group std both miss TRL's numbers."""
    x, k = fixture_tensors(), FIXTURE["k"]
    rewards = compute_rewards(x["scores"], x["old"], x["ref"], x["mask"], 0.05, "k1")[0].sum(1)
    with_itself = rewards - rewards.view(-1, k).mean(1).repeat_interleave(k)
    assert not torch.allclose(with_itself, t(FIXTURE["rloo"][1]["advantages"]), atol=1e-6)
    centred = grpo_advantages(x["scores"], k, "none")
    group = next(c for c in FIXTURE["grpo"] if c["scale_rewards"] == "group")
    assert not torch.allclose(centred, t(group["advantages"]), atol=1e-6)


# --------------------------------------------------------------------------- params


def test_algorithm_params_validate_the_group():
    assert PPOParams(algorithm="rloo").group_size == 4 and PPOParams(algorithm="ppo").group_size == 1
    assert PPOParams().algorithm == "rloo" and PPOParams().group_size == 4  # the default recipe
    assert not PPOParams(algorithm="grpo").uses_value_head and PPOParams(algorithm="ppo").uses_value_head
    with pytest.raises(ValueError, match="at least 2"):
        PPOParams(algorithm="grpo", samples_per_prompt=1)
    with pytest.raises(ValueError, match="multiple of samples_per_prompt"):
        PPOParams(algorithm="rloo", samples_per_prompt=3)  # 64 responses do not split into groups of 3
    assert PPOParams(samples_per_prompt=2).group_size == 2  # ppo may sample k > 1 too


def test_the_grpo_objective_divides_each_mini_batch_by_its_accumulation_windows_tokens():
    from types import SimpleNamespace

    from detox.ppo.objectives import GRPO, RLOO

    cfg = PPOParams(
        algorithm="grpo", batch_size=8, samples_per_prompt=2, mini_batch_size=2, gradient_accumulation_steps=2
    )
    lengths = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    mask = torch.arange(8).expand(8, -1) < lengths.unsqueeze(1)
    order = torch.tensor([7, 0, 1, 2, 3, 4, 5, 6])  # windows: rows 7, 0, 1, 2 (8+1+2+3) and 3, 4, 5, 6 (4+5+6+7)
    alone = SimpleNamespace(num_processes=1, reduce=lambda t, reduction: t)
    assert [float(d) for d in GRPO(cfg).normalizers(mask, order, alone)] == [7.0, 7.0, 11.0, 11.0]  # tokens / 2
    # two processes with the same token counts: the windows hold twice the tokens, shared by 2 x 2 mini-batches
    pair = SimpleNamespace(num_processes=2, reduce=lambda t, reduction: 2 * t)
    assert [float(d) for d in GRPO(cfg).normalizers(mask, order, pair)] == [7.0, 7.0, 11.0, 11.0]
    sequence_mean = cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"loss_type": "grpo"})})
    assert GRPO(sequence_mean).normalizers(mask, order, alone) == [None] * 4
    rloo = cfg.model_copy(update={"algorithm": "rloo"})
    assert RLOO(rloo).normalizers(mask, order, alone) == [None] * 4


def test_sharpen_adds_the_references_summed_log_probs_to_every_algorithms_sequence_reward():
    """ppo.sharpen: rloo's reward (KL in it) and grpo's (the score alone, its KL a loss term) both gain
    sharpen x the reference's log-probs summed over each response's real tokens; at 0 grpo keeps the score."""
    from detox.ppo.forward import ForwardPass
    from detox.ppo.objectives import GRPO, RLOO
    from detox.ppo.rollout import PolicyPass

    x, k = fixture_tensors(), FIXTURE["k"]
    forward = ForwardPass(PolicyPass(x["old"], None, torch.zeros_like(x["old"])), x["ref"])
    summed_ref = torch.where(x["mask"], x["ref"], 0.0).sum(1)
    for algorithm, beta in (("rloo", 0.05), ("grpo", 0.0)):
        plain = PPOParams(
            algorithm=algorithm, batch_size=len(x["scores"]), samples_per_prompt=k, mini_batch_size=1, sharpen=0.0
        )
        sharp = plain.model_copy(update={"sharpen": 0.3})
        objectives = {cfg.sharpen: (RLOO if algorithm == "rloo" else GRPO)(cfg) for cfg in (plain, sharp)}
        targets = {}
        for sharpen, objective in objectives.items():
            rewards = objective.rewards(x["scores"], forward, x["mask"], beta)
            targets[sharpen] = rewards.rewards.sum(1)
            if algorithm == "grpo" and sharpen == 0:
                close(objective.targets(rewards, forward, x["mask"]).advantages, grpo_advantages(x["scores"], k))
        close(targets[0.3] - targets[0.0], 0.3 * summed_ref, atol=1e-10)
    sharp_grpo = GRPO(
        PPOParams(algorithm="grpo", batch_size=len(x["scores"]), samples_per_prompt=k, mini_batch_size=1, sharpen=0.3)
    )
    rewards = sharp_grpo.rewards(x["scores"], forward, x["mask"], 0.0)
    expected = grpo_advantages(x["scores"] + 0.3 * summed_ref, k)
    close(sharp_grpo.targets(rewards, forward, x["mask"]).advantages, expected, atol=1e-8)
