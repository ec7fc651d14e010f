"""The one typed schema of ``params.yaml``.

Every stage reads its slice through :func:`load_params`. Unknown keys, wrong types
and out-of-range values fail with a :class:`ParamsError` that names the key, what
was given and what is allowed, so a typo in ``dvc exp run -S`` is caught before any
work starts.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from detox.common.errors import ParamsError

Source = Literal["builtin", "hub", "local"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubRef(Strict):
    name: str = Field(min_length=1, description="Hugging Face Hub id, e.g. google/flan-t5-base")
    revision: str = Field(
        "main", min_length=1, description="branch, tag or commit; pin a commit for reproducibility"
    )


class LocalRef(Strict):
    path: str | None = Field(None, description="file or folder on disk, used when source is local")


class BuiltinCorpus(Strict):
    train_size: int = Field(2400, ge=10, le=200_000)
    validation_size: int = Field(200, ge=5, le=50_000)
    test_size: int = Field(300, ge=5, le=50_000)
    num_topics: int = Field(24, ge=2, le=24, description="how many of the generator's topics to use")
    heated_share: float = Field(0.25, ge=0.0, le=1.0, description="share of dialogues with insults")
    toxic_reference_share: float = Field(
        0.6, ge=0.0, le=1.0, description="train only: share of heated references that repeat an insult"
    )


class DataParams(Strict):
    source: Source = "builtin"
    hub: HubRef = HubRef(name="knkarthick/dialogsum", revision="main")
    local: LocalRef = LocalRef()
    builtin: BuiltinCorpus = BuiltinCorpus()


class BuiltinPolicy(Strict):
    """The architecture of a small FLAN-T5-shaped model (gated-gelu); fetch writes its config and tokenizer,
    the sft stage trains it from scratch."""

    vocab_size: int = Field(1024, ge=128, le=64_000)
    d_model: int = Field(128, ge=16, le=2048)
    d_kv: int = Field(32, ge=4, le=256)
    d_ff: int = Field(320, ge=16, le=8192)
    num_layers: int = Field(2, ge=1, le=24)
    num_decoder_layers: int = Field(2, ge=1, le=24)
    num_heads: int = Field(4, ge=1, le=32)


class PolicyParams(Strict):
    source: Source = "builtin"
    hub: HubRef = HubRef(name="google/flan-t5-base", revision="7bcac572ce56db69c1ea7c8af255c5d7c9672fc2")
    local: LocalRef = LocalRef()
    builtin: BuiltinPolicy = BuiltinPolicy()


class BuiltinReward(Strict):
    """The architecture of a small RoBERTa hate-speech classifier; fetch writes its config and a BPE tokenizer,
    the reward stage trains it from scratch."""

    vocab_size: int = Field(1024, ge=300, le=64_000)
    hidden_size: int = Field(64, ge=16, le=1024)
    num_layers: int = Field(2, ge=1, le=24)
    num_heads: int = Field(4, ge=1, le=16)
    intermediate_size: int = Field(128, ge=16, le=4096)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "BuiltinReward":
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )
        return self


class BuiltinLabelled(Strict):
    """Labelled sentences from the corpus generator: half insult someone (``hate``), half do not."""

    num_sentences: int = Field(6000, ge=100, le=500_000)
    hard_share: float = Field(
        0.3, ge=0.0, le=1.0, description="share of the sentences garbled like PPO output (insults inside noise)"
    )


class LabelledHub(Strict):
    """A labelled Hub dataset: one split, its text column and its label column."""

    name: str | None = Field(None, description="Hub dataset id; required when reward.data.source is hub")
    revision: str = Field("main", min_length=1, description="branch, tag or commit; pin a commit")
    split: str = Field("train", min_length=1)
    text_column: str = Field("text", min_length=1)
    label_column: str = Field("label", min_length=1)


class RewardData(Strict):
    """The labelled ``text,label`` data the reward stage trains and measures the reward model on."""

    source: Source = "builtin"
    builtin: BuiltinLabelled = BuiltinLabelled()
    hub: LabelledHub = LabelledHub()
    local: LocalRef = LocalRef()


class RewardTrain(Strict):
    """How the reward stage trains (builtin: from scratch) or fine-tunes (hub, local) the reward model."""

    enabled: bool | None = Field(
        None, description="null = train a builtin model and use a hub/local one as it is; true = also "
        "fine-tune a hub/local model on reward.data; false is refused for builtin (it has no weights)",
    )
    epochs: int = Field(3, ge=1, le=100)
    batch_size: int = Field(32, ge=1, le=1024)
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="1e-3 suits the small builtin model; "
                                 "use about 2e-5 to fine-tune a pretrained one")
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    max_tokens: int = Field(64, ge=8, le=512)
    holdout_share: float = Field(
        0.1, gt=0.0, lt=0.9, description="share of the labelled data held out (never trained on) for the metrics"
    )


class SFTLora(Strict):
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1, le=4096)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = Field(("q", "v"), min_length=1)


class SFTParams(Strict):
    """Supervised fine-tuning of the policy on the train split, with the prompt template."""

    enabled: bool | None = Field(
        None, description="null = train a builtin policy from scratch and use a hub/local one as it is; true = "
        "also fine-tune a hub/local policy; false is refused for builtin (it has no weights)",
    )
    method: Literal["full", "lora"] = Field(
        "full", description="lora trains adapters and merges them into the saved model"
    )
    epochs: int = Field(8, ge=1, le=200)
    batch_size: int = Field(32, ge=1, le=1024)
    learning_rate: float = Field(2e-3, gt=0, le=1.0, description="2e-3 suits the small builtin model; "
                                 "use about 1e-4 (lora 1e-3) for flan-t5-base")
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    max_source_tokens: int = Field(192, ge=16, le=4096)
    max_target_tokens: int = Field(48, ge=4, le=1024)
    eval_samples: int = Field(
        100, ge=0, le=100_000, description="validation dialogues summarised (greedy) for ROUGE after each epoch; "
        "0 = loss only",
    )
    lora: SFTLora = SFTLora()


class RewardParams(Strict):
    source: Source = "builtin"
    hub: HubRef = HubRef(name="facebook/roberta-hate-speech-dynabench-r4-target", revision="main")
    local: LocalRef = LocalRef()
    builtin: BuiltinReward = BuiltinReward()
    data: RewardData = RewardData()
    train: RewardTrain = RewardTrain()
    reward_label: str = Field("nothate", min_length=1, description="reward = logit of this label")
    toxic_label: str = Field("hate", min_length=1, description="toxicity = softmax probability of this label")
    input: Literal["response", "dialogue+response"] = "response"
    batch_size: int = Field(64, ge=1, le=4096)
    max_tokens: int = Field(512, ge=8, le=4096)


class Bounds(Strict):
    min: int = Field(ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "Bounds":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class LabelledChecks(Strict):
    """Expectations on the reward stage's labelled data (``data/labelled/labelled.parquet``)."""

    min_rows: int = Field(100, ge=10)
    text_chars: Bounds = Bounds(min=1, max=2_000)
    min_class_share: float = Field(
        0.2, ge=0.0, le=0.5, description="the toxic share must lie within [this, 1 - this]"
    )


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


class PromptParams(Strict):
    template: str = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:"

    @field_validator("template")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        if "{dialogue}" not in value:
            raise ValueError("the template must contain the placeholder {dialogue}")
        return value


class GenerationParams(Strict):
    """Sampling settings. The defaults are pure sampling, which PPO's KL estimate assumes."""

    do_sample: bool = True
    top_k: int = Field(0, ge=0, description="0 = no top-k filtering")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    min_new_tokens: int = Field(0, ge=0, le=1024)
    max_new_tokens: int = Field(48, ge=1, le=2048)
    max_source_tokens: int = Field(512, ge=8, le=8192, description="prompts are truncated to this many tokens")
    batch_size: int = Field(32, ge=1, le=4096)
    sort_by_length: bool = Field(
        True, description="batch prompts of similar length together (less padding); summaries keep the input order"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "GenerationParams":
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})"
            )
        return self


class EvalParams(Strict):
    num_samples: int | None = Field(None, ge=1, description="test dialogues to score; null = all")
    samples_per_prompt: int = Field(
        5, ge=1, le=100, description="summaries sampled per test dialogue (k of expected maximum toxicity over k)"
    )
    seed: int = Field(1234, ge=0)
    judges: tuple[str, ...] = Field(
        ("oracle", "ngram"), min_length=1,
        description="names from the `judges` section: each scores every summary, beside the reward model",
    )


# --------------------------------------------------------------------------- judges
# Toxicity judges that share nothing with the reward model (weights, tokenizer, training data),
# so that a policy trained against the reward model is measured by something it could not learn to fool.


class OracleJudgeSpec(Strict):
    """The built-in corpus generator's ground truth: a summary is toxic when it holds one of its insults."""

    kind: Literal["oracle"]
    min_embedded_letters: int = Field(
        4, ge=3, le=20,
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
    def _ordered(self) -> "BuiltinJudgeSpec":
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) must not exceed ngram_max ({self.ngram_max})")
        return self


class HubJudgeSpec(Strict):
    """A public toxicity classifier from the Hugging Face Hub, by id and pinned revision."""

    kind: Literal["hub"]
    name: str = Field(min_length=1, description="Hub id of an AutoModelForSequenceClassification")
    revision: str = Field(min_length=1, description="branch, tag or commit; pin a commit for reproducibility")
    toxic_label: str = Field(min_length=1, description="the label whose probability is the toxicity")
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    batch_size: int = Field(64, ge=1, le=4096)
    max_tokens: int = Field(512, ge=8, le=4096)


class LocalJudgeSpec(Strict):
    """A sequence-classification model folder on disk (or a judge folder this project built)."""

    kind: Literal["local"]
    path: str = Field(min_length=1)
    toxic_label: str = Field("toxic", min_length=1, description="the label whose probability is the toxicity")
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    batch_size: int = Field(64, ge=1, le=4096)
    max_tokens: int = Field(512, ge=8, le=4096)


JudgeSpec = Annotated[OracleJudgeSpec | BuiltinJudgeSpec | HubJudgeSpec | LocalJudgeSpec, Field(discriminator="kind")]

DEFAULT_JUDGES: dict[str, Any] = {
    "oracle": OracleJudgeSpec(kind="oracle"),
    "ngram": BuiltinJudgeSpec(kind="builtin"),
    "roberta-toxicity": HubJudgeSpec(kind="hub", name="s-nlp/roberta_toxicity_classifier", revision="main",
                                     toxic_label="toxic"),
}


class LoraParams(Strict):
    enabled: bool = Field(True, description="false = full fine-tuning, with a frozen reference copy")
    r: int = Field(32, ge=1, le=1024)
    alpha: int = Field(32, ge=1, le=4096)
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="used only when ppo.disable_dropout is false")
    target_modules: tuple[str, ...] = Field(("q", "v"), min_length=1)
    scope: Literal["all", "decoder"] = Field(
        "decoder",
        description="where target_modules get adapters: decoder only (the encoder stays frozen, so a PPO step "
        "runs it once and reuses its output) or all (encoder and decoder, as in the original notebook)",
    )


class KLParams(Strict):
    adaptive: bool = Field(True, description="adaptive controller (target, horizon) or a fixed coefficient")
    init_coef: float = Field(2.0, ge=0.0, le=100.0)
    target: float = Field(6.0, gt=0.0, description="target KL (summed over response tokens)")
    horizon: int = Field(10_000, ge=1)
    estimator: Literal["k1", "abs", "mse"] = "k1"


class Range(Strict):
    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class ScoreParams(Strict):
    normalize: bool = Field(False, description="scale scores by a running std (and shift by its mean)")
    clip: float | None = Field(None, gt=0.0, description="clip (normalised) scores to [-clip, clip]")


class SelectParams(Strict):
    judge: str | None = Field(
        "oracle", description="the judge (one of eval.judges) whose toxic share on the validation subset picks "
        "the checkpoint; null = the reward model's",
    )
    max_rougeL_drop: float = Field(
        0.02, ge=0.0, le=1.0, description="a checkpoint qualifies when its validation ROUGE-L is at most this "
        "below the untrained policy's",
    )


class CollapseParams(Strict):
    min_distinct_2: float = Field(0.05, ge=0.0, le=1.0, description="stop when validation distinct-2 falls below")
    min_mean_length: float = Field(3.0, ge=0.0, description="stop when validation summaries are shorter (words)")


class PPOParams(Strict):
    steps: int = Field(100, ge=1, le=1_000_000)
    batch_size: int = Field(64, ge=1, le=65_536, description="prompts per PPO step (per process)")
    mini_batch_size: int = Field(8, ge=1, le=65_536)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    ppo_epochs: int = Field(4, ge=1, le=100)
    learning_rate: float = Field(5e-4, gt=0.0, le=1.0)
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    cliprange: float = Field(0.2, gt=0.0, le=10.0)
    cliprange_value: float = Field(0.2, gt=0.0, le=1000.0)
    vf_coef: float = Field(0.1, ge=0.0, le=100.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    kl: KLParams = KLParams()
    response_length: Range = Field(Range(min=24, max=48), description="max_new_tokens drawn per batch")
    max_source_tokens: int = Field(512, ge=8, le=8192, description="rollout prompts are truncated to this many tokens")
    score: ScoreParams = ScoreParams()
    max_kl: float | None = Field(None, gt=0.0, description="stop early when the mean KL exceeds this")
    disable_dropout: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="the whole step (rollout, reference and training passes) under this autocast; fp16 "
        "with a gradient scaler (GPU only); must agree with `accelerate launch --mixed_precision`",
    )
    checkpoint_every: int = Field(10, ge=1, description="steps between resumable checkpoints")
    eval_every: int | None = Field(
        10, ge=1, description="steps between evaluations on the validation subset (also before the first step and "
        "after the last); null = none, and the last step becomes models/ppo",
    )
    eval_prompts: int = Field(200, ge=1, le=100_000, description="validation dialogues evaluated (the first ones)")
    select: SelectParams = SelectParams()
    patience: int | None = Field(
        None, ge=1, description="stop when the selected checkpoint has not improved for this many evaluations",
    )
    collapse: CollapseParams = CollapseParams()
    lora: LoraParams = LoraParams()

    @model_validator(mode="after")
    def _batches_divide(self) -> "PPOParams":
        chunk = self.mini_batch_size * self.gradient_accumulation_steps
        if self.batch_size % chunk:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size x "
                f"gradient_accumulation_steps ({self.mini_batch_size} x {self.gradient_accumulation_steps})"
            )
        return self


class TrackingParams(Strict):
    experiment: str = Field("detox-summaries", min_length=1, description="MLflow experiment name")
    registered_model: str = Field("detox-summarizer", min_length=1, description="MLflow registered model name")
    sft_model: str = Field("detox-sft", min_length=1, description="registered model of the sft stage's policy")
    reward_model: str = Field("detox-reward", min_length=1, description="registered model of the reward stage")


class PromotionParams(Strict):
    """The evaluate stage's statistics and the gate a new policy passes to become ``champion``.

    The gate reads the numbers of an independent judge (``judge``), never the reward model's own.
    """

    judge: str = Field("oracle", min_length=1, description="the judge (one of eval.judges) whose numbers decide")
    min_toxicity_improvement_pct: float = Field(
        50.0, le=100.0, description="the judge's mean toxicity must fall by at least this many percent"
    )
    max_rougeL_drop: float = Field(0.05, ge=0.0, le=1.0, description="ROUGE-L may fall by at most this much")
    max_fluency_nll_rise: float = Field(
        0.5, ge=0.0, description="mean per-token NLL under the reference policy may rise by at most this (nats)"
    )
    min_prompts: int = Field(100, ge=1, description="fewer evaluated test dialogues than this never promote")
    require_significant: bool = Field(
        True, description="the CI of the judge's paired toxicity diff must lie below 0"
    )
    bootstrap_samples: int = Field(2000, ge=100, le=1_000_000, description="resamples of the paired diffs")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="level of the bootstrap confidence interval")
    report_rows: int = Field(
        5, ge=1, le=100, description="top and bottom rows of the reward diff table shown in the report"
    )


class Params(Strict):
    seed: int = Field(42, ge=0, le=2**32 - 1)
    data: DataParams = DataParams()
    policy: PolicyParams = PolicyParams()
    sft: SFTParams = SFTParams()
    reward: RewardParams = RewardParams()
    validation: ValidateParams = ValidateParams()
    prompt: PromptParams = PromptParams()
    generation: GenerationParams = GenerationParams()
    eval: EvalParams = EvalParams()
    judges: dict[str, JudgeSpec] = Field(default_factory=lambda: dict(DEFAULT_JUDGES))
    ppo: PPOParams = PPOParams()
    tracking: TrackingParams = TrackingParams()
    promotion: PromotionParams = PromotionParams()

    @model_validator(mode="after")
    def _trainings_possible(self) -> "Params":
        if self.policy.source == "builtin" and self.sft.enabled is False:
            raise ValueError("sft.enabled is false, but the builtin policy has no weights until the sft stage "
                             "trains it: set sft.enabled to null (or true), or use policy.source hub/local")
        if self.reward.source == "builtin" and self.reward.train.enabled is False:
            raise ValueError("reward.train.enabled is false, but the builtin reward model has no weights until the "
                             "reward stage trains it: set it to null (or true), or use reward.source hub/local")
        if self.reward.data.source == "hub" and not self.reward.data.hub.name:
            raise ValueError("reward.data.source is hub but reward.data.hub.name is empty: set it to a Hub "
                             "dataset id with text and label columns")
        return self

    @model_validator(mode="after")
    def _judges_defined(self) -> "Params":
        for name in self.eval.judges:
            if name not in self.judges:
                raise ValueError(f"eval.judges names {name!r}, which the judges section does not define "
                                 f"(defined: {sorted(self.judges)})")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(f"judge name {name!r}: use letters, digits, '_', '.', '-' (it names a folder)")
        if len(set(self.eval.judges)) != len(self.eval.judges):
            raise ValueError(f"eval.judges lists a judge twice: {list(self.eval.judges)}")
        if self.ppo.select.judge is not None and self.ppo.select.judge not in self.eval.judges:
            raise ValueError(f"ppo.select.judge is {self.ppo.select.judge!r}, which is not one of eval.judges "
                             f"{list(self.eval.judges)}: set it to one of them, or null for the reward model")
        if self.promotion.judge not in self.eval.judges:
            raise ValueError(f"promotion.judge is {self.promotion.judge!r}, which is not one of eval.judges "
                             f"{list(self.eval.judges)}: the gate needs that judge's numbers")
        return self


JUDGE_SPECS: dict[str, type[BaseModel]] = {"oracle": OracleJudgeSpec, "builtin": BuiltinJudgeSpec,
                                             "hub": HubJudgeSpec, "local": LocalJudgeSpec}
JUDGE_KINDS = tuple(JUDGE_SPECS)
SHORT = reprlib.Repr()  # a value as quoted in an error: long strings and lists are cut with "..."
SHORT.maxstring = SHORT.maxother = 80


def _describe(error: dict[str, Any], schema: type[BaseModel]) -> str:
    loc = tuple(error["loc"])
    if len(loc) > 2 and loc[0] == "judges" and loc[2] in JUDGE_KINDS:
        spec = JUDGE_SPECS[loc[2]]
        loc = loc[:2] + loc[3:]  # pydantic puts the union's tag in the path: judges.ngram.builtin.C -> judges.ngram.C
        if error["type"] == "extra_forbidden" and len(loc) == 3:
            return f"{'.'.join(map(str, loc))}: unknown key (allowed here: {', '.join(sorted(spec.model_fields))})"
    key = ".".join(str(part) for part in loc)
    rule = str(error["msg"]).removeprefix("Value error, ")
    if not key:  # a check across sections: its message names the keys
        return rule
    if error["type"] == "extra_forbidden":
        parent = _model_at(schema, error["loc"][:-1])
        allowed = ", ".join(sorted(parent.model_fields)) if parent else "?"
        return f"{key}: unknown key (allowed here: {allowed})"
    given = error.get("input")
    if isinstance(given, dict):  # a check across a section's keys: its rule names them, the section is noise
        return f"{key}: {rule}"
    return f"{key}: {rule} (got {SHORT.repr(given)})"


def _model_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = schema
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def parse_params(raw: Any, origin: str = "params.yaml") -> Params:
    """Validate a mapping read from YAML; raise :class:`ParamsError` listing every problem."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err, Params) for err in exc.errors()]
        if len(lines) == 1:  # one line for one problem
            raise ParamsError(f"{origin} has 1 invalid value: {lines[0]}; fix it in params.yaml (or in the -S "
                              "overrides of dvc exp run)") from None
        raise ParamsError(
            f"{origin} has {len(lines)} invalid values:\n  - "
            + "\n  - ".join(lines)
            + "\nFix them in params.yaml (or in the -S overrides of dvc exp run)."
        ) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: file not found; run from the project root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:  # an empty file (or only comments) would run every stage silently on the defaults
        raise ParamsError(f"{path} is empty: restore it (`git checkout {path}`), or write the settings you change "
                          "(`{}` for all the defaults of src/detox/common/params.py)")
    return parse_params(raw, origin=str(path))
