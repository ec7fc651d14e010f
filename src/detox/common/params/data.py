"""The data sections: the dialogue corpus (``data``), the reward stage's labelled data and the checks on both."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from detox.common.params.base import Bounds, HubRef, Sourced, Strict


class BuiltinCorpus(Strict):
    train_size: int = Field(4800, ge=10, le=200_000)
    validation_size: int = Field(200, ge=5, le=50_000)
    test_size: int = Field(300, ge=5, le=50_000)
    num_topics: int = Field(24, ge=2, le=24, description="how many of the generator's topics to use")
    heated_share: float = Field(0.25, ge=0.0, le=1.0, description="share of dialogues with insults")
    toxic_reference_share: float = Field(
        0.6, ge=0.0, le=1.0, description="train only: share of heated references that repeat an insult"
    )


class DataParams(Sourced[HubRef, BuiltinCorpus]):
    hub: HubRef = HubRef(name="knkarthick/dialogsum")
    builtin: BuiltinCorpus = BuiltinCorpus()


class BuiltinLabelled(Strict):
    """Labelled sentences from the corpus generator: half insult someone (``hate``), half do not."""

    num_sentences: int = Field(6000, ge=100, le=500_000)
    hard_share: float = Field(
        0.3, ge=0.0, le=1.0, description="share of the sentences garbled like PPO output (insults inside noise)"
    )


class LabelledHub(HubRef):
    """A labelled Hub dataset: one split, its text column and its label column."""

    name: str | None = Field(None, description="Hub dataset id; required when reward.data.source is hub")
    split: str = Field("train", min_length=1)
    text_column: str = Field("text", min_length=1)
    label_column: str = Field("label", min_length=1)


class RewardData(Sourced[LabelledHub, BuiltinLabelled]):
    """The labelled ``text,label`` data the reward stage trains and measures the reward model on."""

    hub: LabelledHub = LabelledHub()
    builtin: BuiltinLabelled = BuiltinLabelled()


class LabelledChecks(Strict):
    """Expectations on the reward stage's labelled data (``data/labelled/labelled.parquet``)."""

    min_rows: int = Field(100, ge=10)
    text_chars: Bounds = Bounds(min=1, max=2_000)
    min_class_share: float = Field(0.2, ge=0.0, le=0.5, description="the toxic share must lie within [this, 1 - this]")


class ValidateParams(Strict):
    min_rows: dict[Literal["train", "validation", "test"], int] = {"train": 100, "validation": 20, "test": 20}
    dialogue_chars: Bounds = Bounds(min=20, max=20_000)
    summary_chars: Bounds = Bounds(min=5, max=2_000)
    turn_pattern: str = Field(r"^#Person\d+#: ", description="regex every dialogue must start with")
    labelled: LabelledChecks = LabelledChecks()

    @field_validator("min_rows")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        for split, rows in value.items():
            if rows < 1:
                raise ValueError(f"min_rows.{split} must be at least 1 (got {rows})")
        return value
