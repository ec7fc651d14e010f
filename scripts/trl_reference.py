"""Compute tests/fixtures/trl_reference.json with TRL's own RLOO and GRPO code, in a side environment.

TRL is not a dependency of this project (its trainers have no encoder-decoder path), so the
formulas of :mod:`detox.ppo.critic_free` are checked against numbers TRL computed once::

    python -m venv /tmp/trl && /tmp/trl/bin/pip install torch==2.13.0 trl==1.16.0
    /tmp/trl/bin/python scripts/trl_reference.py tests/fixtures/trl_reference.json

The losses come from calling ``RLOOTrainer._compute_loss`` and ``GRPOTrainer._compute_loss``
themselves, on a stand-in ``self`` whose forward returns fixed per-token log-probs (the rest of a
trainer, models and data, is not needed for the formula). The advantages are computed inside
TRL's ``_generate_and_score_completions``, between generation and logging, so the script runs
those lines of TRL's installed source (located by their first and last statement) on fixed
rewards. The fixture records TRL's version and the sha256 of both source files.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
import trl
from trl.trainer import grpo_trainer, rloo_trainer
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.rloo_trainer import RLOOTrainer
from trl.trainer.utils import nanstd

K, PROMPTS, LENGTH = 4, 3, 6
CLIP = 0.2


def inputs() -> dict[str, torch.Tensor]:
    """Fixed tensors: 3 prompts x 4 responses of up to 6 tokens, padding after EOS, one group of equal rewards."""
    g = torch.Generator().manual_seed(20261202)
    n = K * PROMPTS
    lengths = torch.tensor([6, 3, 1, 5, 4, 6, 2, 6, 3, 5, 6, 4])
    mask = (torch.arange(LENGTH).expand(n, -1) < lengths.unsqueeze(1)).long()
    old = -torch.rand(n, LENGTH, generator=g) * 2 - 0.1
    new = old + torch.randn(n, LENGTH, generator=g) * 0.15  # within and beyond the clip range
    ref = old + torch.randn(n, LENGTH, generator=g) * 0.3
    scores = torch.randn(n, generator=g) * 2
    scores[4:8] = 1.5  # the second group: all rewards equal
    return {"mask": mask, "old": old, "new": new, "ref": ref, "scores": scores}


def block(method, first: str, last: str) -> str:
    """The statements of ``method`` from the line starting with ``first`` to the one starting with ``last``."""
    lines = inspect.getsource(method).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(first))
    end = next(i for i, line in enumerate(lines) if i > start and line.strip().startswith(last))
    return textwrap.dedent("\n".join(lines[start : end + 1]))


def rloo_advantages(data: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
    code = block(
        RLOOTrainer._generate_and_score_completions,
        "# Include the KL penalty in the reward",
        "advantages = torch.nan_to_num(advantages, nan=0.0)",
    )
    scope = {
        "torch": torch,
        "nanstd": nanstd,
        "gather": lambda t: t,
        "self": SimpleNamespace(beta=beta, normalize_advantages=False),
        "rewards": data["scores"].clone(),
        "old_per_token_logps": data["old"],
        "ref_per_token_logps": data["ref"],
        "completion_mask": data["mask"],
        "num_generations": K,
    }
    exec(code, scope)
    return scope["advantages"]


def grpo_advantages(data: dict[str, torch.Tensor], scale: str) -> torch.Tensor:
    code = block(
        GRPOTrainer._generate_and_score_completions,
        'if self.multi_objective_aggregation == "sum_then_normalize":',
        "advantages = torch.nan_to_num(advantages, nan=0.0)",
    )
    scope = {
        "torch": torch,
        "nanstd": nanstd,
        "self": SimpleNamespace(
            multi_objective_aggregation="sum_then_normalize", scale_rewards=scale, reward_weights=torch.ones(1)
        ),
        "rewards_per_func": data["scores"].unsqueeze(1).clone(),
        "unscorable_mask": torch.zeros(len(data["scores"]), dtype=torch.bool),
        "device": "cpu",
        "num_generations": K,
    }
    exec(code, scope)
    return scope["advantages"]


class Accelerator:
    num_processes = 1

    def gather(self, t):
        return t

    def reduce(self, t, reduction="sum"):
        return t

    def gather_for_metrics(self, t):
        return t


def stand_in(new: torch.Tensor, **attributes) -> SimpleNamespace:
    """A trainer's ``self`` with just what ``_compute_loss`` reads; its forward returns ``new``."""
    me = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (new, torch.zeros_like(new), None),
        model=SimpleNamespace(training=True),
        accelerator=Accelerator(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        aux_loss_enabled=False,
        epsilon_low=CLIP,
        epsilon_high=CLIP,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        use_vllm=False,
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        max_completion_length=LENGTH,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        **attributes,
    )
    return me


def loss_and_grad(compute_loss, me_attributes: dict, data: dict, model_inputs: dict) -> tuple[float, list]:
    new = data["new"].clone().requires_grad_(True)
    me = stand_in(new, **me_attributes)
    n = len(new)
    batch = {
        "prompt_ids": torch.zeros(n, 2, dtype=torch.long),
        "prompt_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_ids": torch.zeros(n, LENGTH, dtype=torch.long),
        "completion_mask": data["mask"],
        **model_inputs,
    }
    loss = compute_loss(me, None, batch)
    loss.backward()
    return loss.item(), new.grad.tolist()


def sha256(module) -> str:
    return hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()


def main(out: Path) -> None:
    torch.set_default_dtype(torch.float64)  # the fixture's numbers, not float32 rounding, are what is compared
    data = {k: (v.double() if v.is_floating_point() else v) for k, v in inputs().items()}
    fixture = {
        "source": {
            "package": "trl",
            "version": trl.__version__,
            "files": {
                "trl/trainer/rloo_trainer.py": sha256(rloo_trainer),
                "trl/trainer/grpo_trainer.py": sha256(grpo_trainer),
            },
            "computed_by": "scripts/trl_reference.py",
        },
        "k": K,
        "cliprange": CLIP,
        "inputs": {key: value.tolist() for key, value in data.items()},
        "rloo": [],
        "grpo": [],
    }
    for beta in (0.0, 0.05):
        advantages = rloo_advantages(data, beta)
        old_logps = (data["old"] * data["mask"]).sum(1)
        loss, grad = loss_and_grad(
            RLOOTrainer._compute_loss, {"beta": beta}, data, {"advantages": advantages, "old_logps": old_logps}
        )
        fixture["rloo"].append({"beta": beta, "advantages": advantages.tolist(), "loss": loss, "grad": grad})
    for scale in ("group", "none"):
        advantages = grpo_advantages(data, scale)
        for loss_type in ("dapo", "grpo", "dr_grpo"):
            for beta in (0.0, 0.04):
                loss, grad = loss_and_grad(
                    GRPOTrainer._compute_loss,
                    {"beta": beta, "loss_type": loss_type},
                    data,
                    {
                        "advantages": advantages,
                        "old_per_token_logps": data["old"],
                        "ref_per_token_logps": data["ref"],
                        "num_items_in_batch": data["mask"].sum().double(),
                    },
                )
                fixture["grpo"].append(
                    {
                        "scale_rewards": scale,
                        "loss_type": loss_type,
                        "beta": beta,
                        "advantages": advantages.tolist(),
                        "loss": loss,
                        "grad": grad,
                    }
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {out}: TRL {trl.__version__}, {len(fixture['rloo'])} rloo and {len(fixture['grpo'])} grpo cases")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/trl_reference.json"))
