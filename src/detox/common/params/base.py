"""The shapes several sections of ``params.yaml`` share: where a model or data set comes from, bounds, LoRA."""

from __future__ import annotations

from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Source = Literal["builtin", "hub", "local"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubRef(Strict):
    name: str = Field(min_length=1, description="Hugging Face Hub id, e.g. google/flan-t5-base")
    revision: str = Field("main", min_length=1, description="branch, tag or commit; pin a commit for reproducibility")


class LocalRef(Strict):
    path: str | None = Field(None, description="file or folder on disk, used when source is local")


HubT = TypeVar("HubT", bound=BaseModel)
BuiltinT = TypeVar("BuiltinT", bound=BaseModel)


class Sourced(Strict, Generic[HubT, BuiltinT]):
    """A model or data set that ``source`` takes from the Hub, from disk or from this project's generator.

    A section sets the defaults of ``hub`` and ``builtin`` (fields keep this order when redeclared).
    """

    source: Source = "builtin"
    hub: HubT
    local: LocalRef = LocalRef()
    builtin: BuiltinT


class Bounds(Strict):
    """An inclusive ``[min, max]`` of counts (characters, tokens)."""

    min: int = Field(ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class Range(Bounds):
    """Bounds whose ``min`` is at least 1 (a number of tokens to draw)."""

    min: int = Field(ge=1)


LoraRank = Annotated[int, Field(ge=1, le=1024)]


def _skinny_from_bool(value: object) -> object:
    """params files written before the setting had three values said true (the fast path) or false."""
    if value is True:
        return "packed"
    if value is False:
        return "off"
    return value


# How generate draws each sampled token (detox.models.sampling).
SAMPLERS = ("multinomial", "inverse_cdf")
Sampler = Literal[SAMPLERS]
SAMPLER_HELP = (
    "multinomial = torch.multinomial (an Exp(1) number per vocabulary entry); inverse_cdf = one uniform "
    "number per row and the row's cumulative distribution (float64): the same distribution, other draws, "
    "1.1x faster generation at flan-t5-base size on 2 cores (the exported Hugging Face pipeline samples "
    "with multinomial)"
)

# How a decoding step's few rows meet each large weight on the CPU (detox.models.skinny).
SKINNY_MODES = ("packed", "weight_first", "off")
SkinnyMatmul = Annotated[Literal[SKINNY_MODES], BeforeValidator(_skinny_from_bool)]
SKINNY_MATMUL_HELP = (
    "on the CPU (detox.models.skinny): packed = oneDNN's packed weights from 8 rows (weight-first below), "
    "about 1.3x faster generation than off at flan-t5-base size on 2 cores, for one more copy of the "
    "decoder's weights while it generates (in bf16 too, under ppo.precision bf16 or with bf16 weights, on a "
    "CPU that multiplies bf16: about 1.1x); weight_first = (W @ x.T).T, no copy, about 1.1x (fp32 only); "
    "off = F.linear; "
    "no effect on the built-in model; the three may differ in the last bits (true and false, from older "
    "files, mean packed and off)"
)


# The policy's attention kernel (detox.models.attention): auto = eager on a CPU, sdpa where a GPU is available.
ATTENTION_MODES = ("auto", "eager", "sdpa")

# The precisions a training runs in (ppo.precision; sft.precision adds auto): detox.models.precision checks them.
PRECISIONS = ("fp32", "bf16", "fp16")


class Lora(Strict):
    """LoRA adapters: rank, scale, dropout and the modules they wrap."""

    r: LoraRank  # each section sets its own default
    alpha: int = Field(32, ge=1, le=4096)
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="in ppo used only when ppo.disable_dropout is false")
    target_modules: tuple[str, ...] = Field(("q", "v"), min_length=1)
