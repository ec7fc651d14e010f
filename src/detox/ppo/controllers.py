"""The state PPO carries from step to step: the KL coefficient and the running moments of the scores.

Each has ``state_dict``/``load_state_dict``, so a checkpoint resumes it exactly.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch


class KLController(ABC):
    """What both controllers share: ``value``, ``update``, ``state_dict``/``load_state_dict``.

    The state holds the current coefficient (and which kind of controller it came
    from); ``target`` and ``horizon`` come from the configuration, not the checkpoint.
    """

    kind: str

    def __init__(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"the KL coefficient must be >= 0, got {value}")
        self.value = float(value)

    @abstractmethod
    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust ``value`` after a batch whose mean per-response KL was ``current_kl``.

        ``n_steps`` is the number of responses in that batch (TRL passes the batch size).
        """

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"cannot load a {state.get('kind')!r} KL controller state into a {self.kind!r} one")
        self.value = float(state["value"])


class AdaptiveKLController(KLController):
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences").

    After each batch the coefficient moves toward keeping the observed KL at
    ``target``: ``e = clip(current_kl / target - 1, -0.2, 0.2)``,
    ``value *= 1 + e * n_steps / horizon``.
    """

    kind = "adaptive"

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        super().__init__(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)  # clipped relative error
        mult = 1.0 + proportional_error * n_steps / self.horizon
        self.value *= mult


class FixedKLController(KLController):
    """A constant KL coefficient; ``update`` does nothing."""

    kind = "fixed"

    def __init__(self, kl_coef: float) -> None:
        super().__init__(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class RunningMoments:
    """Running mean and std of scores across steps (Chan et al. parallel update)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-24

    def update(self, values: torch.Tensor) -> None:
        n = values.numel()
        batch_mean, batch_var = values.mean().item(), values.var(unbiased=False).item()
        delta, total = batch_mean - self.mean, self.count + n
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.mean, self.count = self.mean + delta * n / total, total

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.var > 0 else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
