"""The ``judges`` section: toxicity judges that share nothing with the reward model (weights, tokenizer,
training data), so that a policy trained against the reward model is measured by something it could not
learn to fool."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from detox.common.params.base import Strict


class OracleJudgeSpec(Strict):
    """The built-in corpus generator's ground truth: a summary is toxic when it holds one of its insults."""

    kind: Literal["oracle"]
    min_embedded_letters: int = Field(
        4,
        ge=3,
        le=20,
        description="insult words at least this long are also caught inside a token that is no English word; "
        "shorter ones only when glued to English words",
    )


class BuiltinJudgeSpec(Strict):
    """A character n-gram classifier (scikit-learn) trained here on its own labelled sentences and seed."""

    kind: Literal["builtin"]
    seed: int = Field(20_261_129, ge=0, description="its own seed: other sentences than the reward model's")
    num_sentences: int = Field(6000, ge=100, le=500_000)
    hard_share: float = Field(0.3, ge=0.0, le=1.0, description="share of sentences garbled like PPO's output")
    ngram_min: int = Field(2, ge=1, le=10)
    ngram_max: int = Field(5, ge=1, le=10)
    C: float = Field(10.0, gt=0.0, description="inverse regularisation strength of the logistic regression")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="toxic when the probability exceeds this")

    @model_validator(mode="after")
    def _ordered(self) -> BuiltinJudgeSpec:
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) must not exceed ngram_max ({self.ngram_max})")
        return self


ToxicLabel = Annotated[str, Field(min_length=1, description="the label whose probability is the toxicity")]


class ClassifierJudgeSpec(Strict):
    """A sequence-classification model as a judge: how it scores. A spec lists it after its location's
    base, so that the location's keys come first (pydantic lays out fields from the last base on)."""

    toxic_label: ToxicLabel
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    batch_size: int = Field(64, ge=1, le=4096)
    max_tokens: int = Field(512, ge=8, le=4096)


class _OnHub(Strict):
    kind: Literal["hub"]
    name: str = Field(min_length=1, description="Hub id of an AutoModelForSequenceClassification")
    revision: str = Field(min_length=1, description="branch, tag or commit; pin a commit for reproducibility")


class _OnDisk(Strict):
    kind: Literal["local"]
    path: str = Field(min_length=1)


class HubJudgeSpec(ClassifierJudgeSpec, _OnHub):
    """A public toxicity classifier from the Hugging Face Hub, by id and pinned revision."""


class LocalJudgeSpec(ClassifierJudgeSpec, _OnDisk):
    """A sequence-classification model folder on disk (or a judge folder this project built)."""

    toxic_label: ToxicLabel = "toxic"


JudgeSpec = Annotated[OracleJudgeSpec | BuiltinJudgeSpec | HubJudgeSpec | LocalJudgeSpec, Field(discriminator="kind")]

DEFAULT_JUDGES: dict[str, Any] = {
    "oracle": OracleJudgeSpec(kind="oracle"),
    "ngram": BuiltinJudgeSpec(kind="builtin"),
    "roberta-toxicity": HubJudgeSpec(
        kind="hub", name="s-nlp/roberta_toxicity_classifier", revision="main", toxic_label="toxic"
    ),
}

JUDGE_SPECS: dict[str, type[BaseModel]] = {
    "oracle": OracleJudgeSpec,
    "builtin": BuiltinJudgeSpec,
    "hub": HubJudgeSpec,
    "local": LocalJudgeSpec,
}
JUDGE_KINDS = tuple(JUDGE_SPECS)
