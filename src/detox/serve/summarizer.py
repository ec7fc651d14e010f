"""The trained policy as an MLflow pyfunc model, served by ``mlflow models serve``.

The model's one artifact, ``policy``, is a folder with the merged seq2seq model and
its tokenizer; its ``model_config`` holds the prompt template, the generation settings and the
seed the policy was evaluated with. It generates through :func:`detox.models.generation.generate_summaries`,
so a served summary is the one the evaluate stage scored for the same dialogue, batch and seed. The
``detox`` package travels with the model (``code_paths``), so ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` need only the model's pip requirements. A request's ``params``
(``REQUEST_PARAMS``) must lie within the ranges ``params.yaml`` allows for them (:data:`PARAM_RANGES`),
``max_new_tokens`` within the model's limit; the request itself is checked as :mod:`detox.serve.pyfunc` says.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from pydantic import ValidationError
from transformers import PretrainedConfig

from detox.common.params import EvalParams, GenerationParams
from detox.models.generation import build_prompts, generate_summaries, load_policy
from detox.serve.pyfunc import Range, RequestError, Served, check_params

log = logging.getLogger(__name__)

POLICY_ARTIFACT = "policy"
INPUT_COLUMN = "dialogue"
REQUEST_PARAMS = {
    "do_sample": "boolean",
    "temperature": "double",
    "top_k": "long",
    "top_p": "double",
    "min_new_tokens": "long",
    "max_new_tokens": "long",
    "seed": "long",
}


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
    (see :mod:`detox.serve.pyfunc`): :func:`~detox.serve.pyfunc.request_texts` checks the input."""
    defaults = _defaults(config)
    return ModelSignature(
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec(name, kind, defaults[name]) for name, kind in REQUEST_PARAMS.items()]),
    )


def _defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Generation settings and seed by short name (``do_sample``, ``seed``)."""
    settings = {key.split(".", 1)[1]: value for key, value in config.items() if key.startswith("generation.")}
    return {**settings, "seed": config["eval.seed"]}


class Summarizer(Served):
    """Generates one summary per dialogue with the policy stored in the ``policy`` artifact."""

    column = INPUT_COLUMN

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model, self.tokenizer = load_policy(context.artifacts[POLICY_ARTIFACT])
        self.config = dict(context.model_config or {})
        defaults = _defaults(self.config)
        self.ranges = {
            **PARAM_RANGES,
            "max_new_tokens": max_new_tokens_range(self.model.config, int(defaults["max_new_tokens"])),
        }

    def answer(self, texts: list[str], params: dict[str, Any]) -> list[str]:
        """Summaries (one per dialogue, in order), exactly as evaluation generates them."""
        check_params(params, self.ranges)
        settings = {**_defaults(self.config), **params}
        # A model logged before a generation setting existed has none in its config: it was evaluated with
        # what the setting's default does (generation.sampler: torch's multinomial), so the default applies.
        known = {key: settings[key] for key in GenerationParams.model_fields if key in settings}
        try:
            generation = GenerationParams(**known)
        except ValidationError as exc:  # what no single range says, e.g. min_new_tokens > max_new_tokens
            raise RequestError(
                "params: " + "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
            ) from None
        prompts = build_prompts(texts, self.config["prompt.template"])
        limit = generation.max_source_tokens
        for row, ids in enumerate(self.tokenizer(prompts)["input_ids"]):
            if len(ids) > limit:
                log.warning(
                    "dialogue %d: %d tokens with the prompt; the model reads the first %d "
                    "(generation.max_source_tokens)",
                    row,
                    len(ids),
                    limit,
                )
        return generate_summaries(
            self.model,
            self.tokenizer,
            prompts,
            generation,
            int(settings["seed"]),
            generation.max_source_tokens,
            desc="serve",
        )
