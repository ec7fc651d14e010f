"""The trained policy and the reward model as MLflow pyfunc models, served by ``mlflow models serve``.

The policy model's one artifact, ``policy``, is a folder with the merged seq2seq model and
its tokenizer; its ``model_config`` holds the prompt template, the generation settings and the
seed the policy was evaluated with. It generates through :func:`detox.models.generation.generate_summaries`,
so a served summary is the one the evaluate stage scored for the same dialogue, batch and seed. The
``detox`` package travels with the model (``code_paths``), so ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` need only the model's pip requirements.

A request is checked by the model itself, the same way for both models (:class:`Served`): one text
column (``dialogue``; ``text`` for the reward model) and nothing else, every row a non-empty string;
the policy's ``params`` (``REQUEST_PARAMS``) within the ranges ``params.yaml`` allows for them
(:data:`PARAM_RANGES`), ``max_new_tokens`` within the model's limit. A refusal is a
:class:`RequestError`: HTTP 400 whose body is ``{"error_code": ..., "message": <one line>}``; an
unexpected failure answers HTTP 500 with the exception's class only, its traceback goes to the
server's log. Neither answer holds a traceback, a path or the request's data.

The signatures declare the output and the params but no input schema, on purpose: MLflow enforces an
input schema before the model runs, and then drops unknown columns without a word and answers a
missing or mistyped column with a message that prints the whole request. MLflow's scoring server
also drops params the signature does not declare before ``predict`` sees them (it logs
``Unrecognized params [...] are ignored``), so a misspelt param cannot be refused here, and a param
of the wrong JSON type is refused by MLflow's own check, whose message holds the request's rows.
"""

from __future__ import annotations

import json
import logging
import operator
import reprlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from detox.serve import hf_pipeline
from detox.models.generation import build_prompts, generate_summaries, generation_kwargs, load_policy
from detox.common.params import EvalParams, GenerationParams

log = logging.getLogger(__name__)

POLICY_ARTIFACT = "policy"
INPUT_COLUMN = "dialogue"
REQUEST_PARAMS = {"do_sample": "boolean", "temperature": "double", "top_k": "long", "top_p": "double",
                  "min_new_tokens": "long", "max_new_tokens": "long", "seed": "long"}


# --------------------------------------------------------------------------- what a request may hold

class RequestError(MlflowException):
    """A request the model refuses: HTTP 400 (500 for ``INTERNAL_ERROR``) whose message is this one line.

    MLflow's scoring server puts the request's data in front of the message of any ``MlflowException``
    raised in ``predict`` (``Failed to predict data '<the DataFrame>'``) before it answers; the reason
    is kept apart here and is the answer's ``message``.
    """

    def __init__(self, reason: str, error_code: int = INVALID_PARAMETER_VALUE) -> None:
        super().__init__(reason, error_code=error_code)
        self.reason = reason

    def serialize_as_json(self) -> str:
        return json.dumps({**json.loads(super().serialize_as_json()), "message": self.reason})


_COMPARE: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "gt": (operator.gt, ">"), "ge": (operator.ge, ">="), "lt": (operator.lt, "<"), "le": (operator.le, "<="),
}


@dataclass(frozen=True)
class Range:
    """The values a numeric param may take: bounds such as ``(("gt", 0.0), ("le", 10.0))``."""

    bounds: tuple[tuple[str, float], ...]
    why: str = ""

    @classmethod
    def of(cls, field: FieldInfo) -> Range:
        """The bounds a ``params.yaml`` field declares (pydantic's ``gt``/``ge``/``lt``/``le``)."""
        return cls(tuple((key, getattr(rule, key)) for rule in field.metadata for key in _COMPARE
                         if getattr(rule, key, None) is not None))

    def admits(self, value: Any) -> bool:
        return all(_COMPARE[key][0](value, bound) for key, bound in self.bounds)

    def __str__(self) -> str:
        text = " and ".join(f"{_COMPARE[key][1]} {bound:g}" for key, bound in self.bounds)
        return f"{text} ({self.why})" if self.why else text


# The ranges params.yaml allows for generation.* and eval.seed, so a request can ask for nothing evaluate could not.
PARAM_RANGES = {
    **{name: Range.of(GenerationParams.model_fields[name]) for name in REQUEST_PARAMS if name != "seed"},
    "seed": Range.of(EvalParams.model_fields["seed"]),
}


def max_new_tokens_range(config: PretrainedConfig, default: int) -> Range:
    """``max_new_tokens`` up to the policy's position limit where its architecture has one
    (``max_position_embeddings``, or ``n_positions`` as in FLAN-T5's config.json), else up to what
    params.yaml allows; the default the policy was evaluated with is always allowed."""
    schema = PARAM_RANGES["max_new_tokens"]
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not positions:
        return schema
    lower = tuple(bound for bound in schema.bounds if bound[0] in ("gt", "ge"))
    return Range((*lower, ("le", max(int(positions), default))), "the model's position limit")


def check_params(params: Mapping[str, Any], ranges: Mapping[str, Range]) -> None:
    """Refuse the first param outside its range, naming it and the range."""
    for name, value in params.items():
        allowed = ranges.get(name)
        if allowed is not None and not allowed.admits(value):
            raise RequestError(f"params.{name}: {value!r} is out of range; allowed: {allowed}")


def request_texts(model_input: Any, column: str) -> list[str]:
    """The texts of a request: the ``column`` of a DataFrame or of a dict of columns (and no other column),
    or a list of strings; these are what MLflow's JSON formats (``dataframe_records``, ``dataframe_split``,
    ``inputs``, ``instances``) arrive as. Every text must be a non-empty string; anything else is a
    :class:`RequestError` naming the row.
    """
    if isinstance(model_input, (pd.DataFrame, Mapping)):
        columns = list(model_input.keys())
        if column not in columns:
            raise RequestError(f"input: no {column!r} column (got columns {columns}); send "
                               f'{{"dataframe_records": [{{"{column}": "..."}}]}}')
        extra = [name for name in columns if name != column]
        if extra:
            raise RequestError(f"input: unknown column(s) {extra}; this model reads only the {column!r} column")
        values = list(np.asarray(model_input[column], dtype=object).reshape(-1))
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, (list, tuple, pd.Series, np.ndarray)):
        values = list(np.asarray(model_input, dtype=object).reshape(-1))
    else:
        raise RequestError(f"input: expected rows with a {column!r} column or a list of strings, "
                           f"got {type(model_input).__name__}")
    for row, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            shown = "null" if pd.api.types.is_scalar(value) and pd.isna(value) else reprlib.repr(value)
            raise RequestError(f"{column} {row}: expected a non-empty string, got {shown}")
    return [str(value) for value in values]


class Served(mlflow.pyfunc.PythonModel, ABC):
    """What both served models share: the request's texts checked, and an answer that shows no internals."""

    column: str

    # A DataFrame hint: MLflow then infers nothing from the hint and passes the request as it came.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        try:
            texts = request_texts(model_input, self.column)
            return self.answer(texts, {key: value for key, value in (params or {}).items() if value is not None})
        except RequestError:
            raise
        except Exception as exc:  # the serving boundary: the traceback goes to the log, never into an answer
            log.exception("%s failed on a request", type(self).__name__)
            raise RequestError(f"the model failed on this request ({type(exc).__name__}); the server's log has "
                               "the traceback", error_code=INTERNAL_ERROR) from exc

    @abstractmethod
    def answer(self, texts: list[str], params: dict[str, Any]) -> Any:
        """The model's answer to checked texts and the request's params (those MLflow passed on)."""


# --------------------------------------------------------------------------- the policy

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
    """Output: one summary string per dialogue; the request params with their defaults. No input schema
    (see the module's docstring): :func:`request_texts` checks the input."""
    defaults = _defaults(config)
    return ModelSignature(
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec(name, kind, defaults[name]) for name, kind in REQUEST_PARAMS.items()]),
    )


def _defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Generation settings and seed by short name (``do_sample``, ``seed``)."""
    settings = {key.split(".", 1)[1]: value for key, value in config.items() if key.startswith("generation.")}
    return {**settings, "seed": config["eval.seed"]}


def export_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, template: str,
                  generation: GenerationParams, seed: int) -> Path:
    """Save a (merged) policy and its tokenizer into one folder: the pyfunc model's artifact, and a Hugging
    Face model that ``pipeline("summarization", model=out_dir, trust_remote_code=True)`` loads
    (:mod:`detox.serve.hf_pipeline`). The prompt template, the source-token limit and the seed go into
    ``config.json`` (``sampling_seed``: the pipeline seeds as serving does), the sampling settings into
    ``generation_config.json`` (``model`` is changed in place accordingly).
    """
    model.config.prompt_template = template
    model.config.max_source_tokens = generation.max_source_tokens
    model.config.sampling_seed = seed
    for key, value in generation_kwargs(generation).items():
        setattr(model.generation_config, key, value)
    hf_pipeline.register()
    hf_pipeline.DialogueSummarizationPipeline(model=model, tokenizer=tokenizer).save_pretrained(out_dir)
    return Path(out_dir)


class Summarizer(Served):
    """Generates one summary per dialogue with the policy stored in the ``policy`` artifact."""

    column = INPUT_COLUMN

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model, self.tokenizer = load_policy(context.artifacts[POLICY_ARTIFACT])
        self.config = dict(context.model_config or {})
        defaults = _defaults(self.config)
        self.ranges = {**PARAM_RANGES,
                       "max_new_tokens": max_new_tokens_range(self.model.config, int(defaults["max_new_tokens"]))}

    def answer(self, texts: list[str], params: dict[str, Any]) -> list[str]:
        """Summaries (one per dialogue, in order), exactly as evaluation generates them."""
        check_params(params, self.ranges)
        settings = {**_defaults(self.config), **params}
        try:
            generation = GenerationParams(**{key: settings[key] for key in GenerationParams.model_fields})
        except ValidationError as exc:  # what no single range says, e.g. min_new_tokens > max_new_tokens
            raise RequestError("params: " + "; ".join(error["msg"].removeprefix("Value error, ")
                                                      for error in exc.errors())) from None
        prompts = build_prompts(texts, self.config["prompt.template"])
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
    """Reward and toxicity out, one row per text; no params, and no input schema (see the module's docstring):
    :func:`request_texts` checks the ``text`` column."""
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
        return pd.DataFrame({"reward": scores.reward.numpy().astype(float),
                             "toxicity": scores.toxicity.numpy().astype(float)})
