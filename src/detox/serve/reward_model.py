"""The reward model as an MLflow pyfunc model: reward and toxicity per text (see :mod:`detox.serve.pyfunc`)."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from detox.serve.pyfunc import Served

REWARD_ARTIFACT = "reward"
REWARD_CONFIG_KEYS = ("reward.reward_label", "reward.toxic_label", "reward.batch_size", "reward.max_tokens")


def reward_config(reward: Any) -> dict[str, Any]:
    """The reward model's serving settings, by their ``params.yaml`` names."""
    return {key: getattr(reward, key.split(".", 1)[1]) for key in REWARD_CONFIG_KEYS}


def reward_signature() -> ModelSignature:
    """Reward and toxicity out, one row per text; no params, and no input schema (see :mod:`detox.serve.pyfunc`):
    :func:`~detox.serve.pyfunc.request_texts` checks the ``text`` column."""
    return ModelSignature(outputs=Schema([ColSpec("double", "reward"), ColSpec("double", "toxicity")]))


class RewardClassifier(Served):
    """Scores texts with the reward model in the ``reward`` artifact: the reward (logit of the reward
    label) and the toxicity (probability of the toxic label), exactly as PPO and evaluation score them."""

    column = "text"

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from detox.common.params import RewardParams
        from detox.models.reward import RewardScorer

        config = dict(context.model_config or {})
        cfg = RewardParams(**{key.split(".", 1)[1]: config[key] for key in REWARD_CONFIG_KEYS if key in config})
        self.scorer = RewardScorer.from_pretrained(context.artifacts[REWARD_ARTIFACT], cfg)

    def answer(self, texts: list[str], params: dict[str, Any]) -> pd.DataFrame:
        scores = self.scorer.score(texts)
        return pd.DataFrame(
            {"reward": scores.reward.numpy().astype(float), "toxicity": scores.toxicity.numpy().astype(float)}
        )
