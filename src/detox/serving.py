"""The trained policy as an MLflow pyfunc model: dialogues in, summaries out.

The model's one artifact, ``policy``, is a folder with the merged seq2seq model and
its tokenizer; its ``model_config`` holds the prompt template, the generation
settings and the seed the policy was evaluated with. It generates through
:func:`detox.generation.generate_summaries`, so a served summary is the one the
evaluate stage scored for the same dialogue, batch and seed. The ``detox`` package
travels with the model (``code_paths``), so ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` need only the model's pip requirements.

A request may override ``do_sample``, ``max_new_tokens``, ``temperature`` and
``seed`` through MLflow's ``params``. The input is a ``dialogue`` string column (the signature's
input schema); an empty or non-string dialogue is refused with HTTP 400, and a dialogue longer than
``generation.max_source_tokens`` is read up to that length, with a warning in the server's log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from detox import hf_pipeline
from detox.generation import build_prompts, generate_summaries, generation_kwargs, load_policy
from detox.params import GenerationParams

log = logging.getLogger(__name__)

POLICY_ARTIFACT = "policy"
INPUT_COLUMN = "dialogue"
REQUEST_PARAMS = {"do_sample": "boolean", "max_new_tokens": "long", "temperature": "double", "seed": "long"}


def model_config(template: str, generation: GenerationParams, seed: int) -> dict[str, Any]:
    """What the model needs besides its weights, keyed by the ``params.yaml`` names it came from.

    MLflow also logs a model's config as params of its run: these are the names (and values)
    the training run already logged, so they agree (if ``eval.seed`` changed after training,
    MLflow warns that it cannot overwrite that param, and goes on).
    """
    return {
        "prompt.template": template,
        **{f"generation.{key}": value for key, value in generation.model_dump().items()},
        "eval.seed": seed,
    }


def signature(config: dict[str, Any]) -> ModelSignature:
    """Input: one ``dialogue`` string column (MLflow refuses other shapes and types with HTTP 400);
    output: one summary string per dialogue; the request params with their defaults."""
    defaults = _settings(config)
    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec(name, kind, defaults[name]) for name, kind in REQUEST_PARAMS.items()]),
    )


def _settings(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generation settings and seed by short name (``do_sample``, ``seed``), request overrides applied."""
    settings = {key.split(".", 1)[1]: value for key, value in config.items() if key.startswith("generation.")}
    settings["seed"] = config["eval.seed"]
    settings.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return settings


def export_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, template: str,
                  generation: GenerationParams) -> Path:
    """Save a (merged) policy and its tokenizer into one folder: the pyfunc model's artifact, and a Hugging
    Face model that ``pipeline("summarization", model=out_dir, trust_remote_code=True)`` loads
    (:mod:`detox.hf_pipeline`). The prompt template and source-token limit go into ``config.json``, the
    sampling settings into ``generation_config.json`` (``model`` is changed in place accordingly).
    """
    model.config.prompt_template = template
    model.config.max_source_tokens = generation.max_source_tokens
    for key, value in generation_kwargs(generation).items():
        setattr(model.generation_config, key, value)
    hf_pipeline.register()
    hf_pipeline.DialogueSummarizationPipeline(model=model, tokenizer=tokenizer).save_pretrained(out_dir)
    return Path(out_dir)


def dialogues_of(model_input: Any) -> list[str]:
    """The dialogues of a request: a DataFrame's ``dialogue`` column, a Series, a list or one string.

    Every dialogue must be a non-empty string: anything else (``""``, ``null``, a number) is refused
    with an :class:`~mlflow.exceptions.MlflowException` that the scoring server answers with HTTP 400.
    """
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN in model_input.columns:
            column = model_input[INPUT_COLUMN]
        elif model_input.shape[1] == 1:
            column = model_input.iloc[:, 0]
        else:
            raise _bad_request(f"expected a {INPUT_COLUMN!r} column; got columns {list(model_input.columns)}")
        values = column.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, (list, tuple, pd.Series, np.ndarray)):
        values = list(np.asarray(model_input, dtype=object).reshape(-1))
    else:
        raise _bad_request(f"expected a DataFrame with a {INPUT_COLUMN!r} column or a list of strings, "
                           f"got {type(model_input).__name__}")
    for row, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise _bad_request(f"{INPUT_COLUMN} {row}: expected a non-empty string, got {value!r}")
    return [str(value) for value in values]


def _bad_request(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class Summarizer(mlflow.pyfunc.PythonModel):
    """Generates one summary per dialogue with the policy stored in the ``policy`` artifact."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model, self.tokenizer = load_policy(context.artifacts[POLICY_ARTIFACT])
        self.config = dict(context.model_config or {})

    # A DataFrame hint: MLflow then validates the input against the signature, not against the hint.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        """Summaries (one per dialogue, in order), exactly as evaluation generates them."""
        settings = _settings(self.config, params)
        generation = GenerationParams(**{key: settings[key] for key in GenerationParams.model_fields})
        prompts = build_prompts(dialogues_of(model_input), self.config["prompt.template"])
        limit = generation.max_source_tokens
        for row, ids in enumerate(self.tokenizer(prompts)["input_ids"]):
            if len(ids) > limit:
                log.warning("dialogue %d: %d tokens with the prompt; the model reads the first %d "
                            "(generation.max_source_tokens)", row, len(ids), limit)
        return generate_summaries(self.model, self.tokenizer, prompts, generation, int(settings["seed"]),
                                  generation.max_source_tokens, desc="serve")


# --------------------------------------------------------------------------- the reward model

REWARD_ARTIFACT = "reward"
REWARD_CONFIG_KEYS = ("reward.reward_label", "reward.toxic_label", "reward.batch_size", "reward.max_tokens")


def reward_config(reward: Any) -> dict[str, Any]:
    """The reward model's serving settings, by their ``params.yaml`` names."""
    return {key: getattr(reward, key.split(".", 1)[1]) for key in REWARD_CONFIG_KEYS}


def reward_signature() -> ModelSignature:
    """Texts in (a ``text`` string column), reward and toxicity out."""
    return ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                          outputs=Schema([ColSpec("double", "reward"), ColSpec("double", "toxicity")]))


class RewardClassifier(mlflow.pyfunc.PythonModel):
    """Scores texts with the reward model in the ``reward`` artifact: the reward (logit of the reward
    label) and the toxicity (probability of the toxic label), exactly as PPO and evaluation score them."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from detox.params import RewardParams
        from detox.reward import RewardScorer

        config = dict(context.model_config or {})
        cfg = RewardParams(**{key.split(".", 1)[1]: config[key] for key in REWARD_CONFIG_KEYS if key in config})
        self.scorer = RewardScorer.from_pretrained(context.artifacts[REWARD_ARTIFACT], cfg)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame) and "text" in model_input.columns:
            model_input = model_input["text"]
        scores = self.scorer.score(dialogues_of(model_input))
        return pd.DataFrame({"reward": scores.reward.numpy().astype(float),
                             "toxicity": scores.toxicity.numpy().astype(float)})
