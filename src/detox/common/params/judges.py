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


class FactsJudgeSpec(Strict):
    """The built-in world's facts judge: a summary invents when it states a name, a day, a request or a
    problem of the generator's lists that its dialogue does not contain."""

    kind: Literal["facts"]


class NliJudgeSpec(Strict):
    """A natural-language-inference model as a facts judge, used as SummaC-ZS does: premise the dialogue (or
    each turn), hypothesis each summary sentence; a summary invents when a sentence is not entailed."""

    kind: Literal["nli"]
    name: str | None = Field(None, min_length=1, description="Hub id of an NLI sequence-classification model")
    revision: str = Field("main", min_length=1, description="branch, tag or commit; pin a commit for reproducibility")
    path: str | None = Field(None, min_length=1, description="or a model folder on disk (then name is null)")
    entailment_label: str = Field("entailment", min_length=1, description="the label whose probability is support")
    granularity: Literal["document", "turn"] = Field(
        "turn", description="premise: the whole dialogue, or each turn (a sentence's support is its best premise)"
    )
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="a sentence supported less than this is invented")
    batch_size: int = Field(32, ge=1, le=4096)
    max_tokens: int = Field(512, ge=8, le=4096)

    @model_validator(mode="after")
    def _one_source(self) -> NliJudgeSpec:
        if (self.name is None) == (self.path is None):
            raise ValueError("give the NLI model either by Hub id (name) or by folder (path), not both or neither")
        return self


JudgeSpec = Annotated[
    OracleJudgeSpec | BuiltinJudgeSpec | HubJudgeSpec | LocalJudgeSpec | FactsJudgeSpec | NliJudgeSpec,
    Field(discriminator="kind"),
]
FACTS_KINDS = ("facts", "nli")  # judges of faithfulness (eval.facts_judge), not of toxicity

DEFAULT_JUDGES: dict[str, Any] = {
    "oracle": OracleJudgeSpec(kind="oracle"),
    "ngram": BuiltinJudgeSpec(kind="builtin"),
    "roberta-toxicity": HubJudgeSpec(
        kind="hub", name="s-nlp/roberta_toxicity_classifier", revision="main", toxic_label="toxic"
    ),
    "facts": FactsJudgeSpec(kind="facts"),
    "nli-facts": NliJudgeSpec(kind="nli", name="MoritzLaurer/DeBERTa-v3-base-mnli-fever-anli"),
}

JUDGE_SPECS: dict[str, type[BaseModel]] = {
    "oracle": OracleJudgeSpec,
    "builtin": BuiltinJudgeSpec,
    "hub": HubJudgeSpec,
    "local": LocalJudgeSpec,
    "facts": FactsJudgeSpec,
    "nli": NliJudgeSpec,
}
JUDGE_KINDS = tuple(JUDGE_SPECS)
