"""The one typed schema of ``params.yaml``.

Every stage reads its slice through :func:`load_params`. Unknown keys, wrong types
and out-of-range values fail with a :class:`ParamsError` that names the key, what
was given and what is allowed, so a typo in ``dvc exp run -S`` is caught before any
work starts.

The defaults are written once, here (pydantic field defaults); ``params.yaml`` spells
out the same values for people to read and edit, and ``tests/test_params.py`` keeps the
two equal key by key. Defaults in the schema, rather than required fields read from the
file, keep a file with only some keys valid (``{}`` is every default, as the empty-file
error says; tests and scripts pass a few keys), while the error for a bad key or value,
and what ``dvc exp run -S`` writes into ``params.yaml``, stay as they are.
"""

from __future__ import annotations

from detox.common.errors import ParamsError
from detox.common.params.base import Bounds, HubRef, LocalRef, Lora, Range, Source, Sourced, Strict
from detox.common.params.data import (
    BuiltinCorpus,
    BuiltinLabelled,
    DataParams,
    LabelledChecks,
    LabelledHub,
    RewardData,
    ValidateParams,
)
from detox.common.params.evaluation import EvalParams, PromotionParams, TrackingParams
from detox.common.params.judges import (
    DEFAULT_JUDGES,
    FACTS_KINDS,
    JUDGE_KINDS,
    JUDGE_SPECS,
    BuiltinJudgeSpec,
    ClassifierJudgeSpec,
    FactsJudgeSpec,
    HubJudgeSpec,
    JudgeSpec,
    LocalJudgeSpec,
    NliJudgeSpec,
    OracleJudgeSpec,
)
from detox.common.params.loading import load_params, parse_params
from detox.common.params.models import (
    BuiltinPolicy,
    BuiltinReward,
    GenerationParams,
    PolicyParams,
    PromptParams,
    RewardParams,
    RewardTrain,
    SFTLora,
    SFTParams,
)
from detox.common.params.ppo import CollapseParams, KLParams, LoraParams, PPOParams, ScoreParams, SelectParams
from detox.common.params.schema import Params

__all__ = [
    "DEFAULT_JUDGES",
    "FACTS_KINDS",
    "JUDGE_KINDS",
    "JUDGE_SPECS",
    "Bounds",
    "BuiltinCorpus",
    "BuiltinJudgeSpec",
    "BuiltinLabelled",
    "BuiltinPolicy",
    "BuiltinReward",
    "ClassifierJudgeSpec",
    "FactsJudgeSpec",
    "CollapseParams",
    "DataParams",
    "EvalParams",
    "GenerationParams",
    "HubJudgeSpec",
    "HubRef",
    "JudgeSpec",
    "KLParams",
    "LabelledChecks",
    "LabelledHub",
    "LocalJudgeSpec",
    "NliJudgeSpec",
    "LocalRef",
    "Lora",
    "LoraParams",
    "OracleJudgeSpec",
    "PPOParams",
    "Params",
    "ParamsError",
    "PolicyParams",
    "PromotionParams",
    "PromptParams",
    "Range",
    "RewardData",
    "RewardParams",
    "RewardTrain",
    "SFTLora",
    "SFTParams",
    "ScoreParams",
    "SelectParams",
    "Source",
    "Sourced",
    "Strict",
    "TrackingParams",
    "ValidateParams",
    "load_params",
    "parse_params",
]
