"""The model sections: the policy and its supervised fine-tuning, the reward model, the prompt and sampling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from detox.common.params.base import (
    ATTENTION_MODES,
    PRECISIONS,
    SAMPLER_HELP,
    SKINNY_MATMUL_HELP,
    HubRef,
    Lora,
    LoraRank,
    Sampler,
    SkinnyMatmul,
    Sourced,
    Strict,
)
from detox.common.params.data import RewardData


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
    feed_forward_proj: Literal["gated-gelu", "gated-gelu_pytorch_tanh"] = Field(
        "gated-gelu_pytorch_tanh",
        description="T5's feed-forward: gated-gelu_pytorch_tanh = the tanh GELU in PyTorch's fused kernel; "
        "gated-gelu = flan-t5's gelu_new, the same function op by op, slower to train and to generate "
        "(benchmarks/attention.py)",
    )
    dropout_rate: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="T5's dropout, used by sft only (PPO and generation run without it); 0 makes a step 1.8x "
        "faster on the CPU than 0.1 and, in the same 8 epochs, a policy with a higher validation ROUGE-L",
    )


class PolicyParams(Sourced[HubRef, BuiltinPolicy]):
    hub: HubRef = HubRef(name="google/flan-t5-base", revision="7bcac572ce56db69c1ea7c8af255c5d7c9672fc2")
    builtin: BuiltinPolicy = BuiltinPolicy()
    attention: Literal[ATTENTION_MODES] = Field(
        "auto",
        description="the policy's attention kernel in sft, baseline, ppo and evaluate (detox.models.attention): "
        "auto = eager on a CPU, sdpa where a GPU is available; eager = transformers' matmuls and softmax; "
        "sdpa = torch's scaled_dot_product_attention; they differ in the last bits",
    )


class SFTLora(Lora):
    r: LoraRank = 16


class SFTParams(Strict):
    """Supervised fine-tuning of the policy on the train split, with the prompt template."""

    enabled: bool | None = Field(
        None,
        description="null = train a builtin policy from scratch and use a hub/local one as it is; true = "
        "also fine-tune a hub/local policy; false is refused for builtin (it has no weights)",
    )
    method: Literal["full", "lora"] = Field(
        "full", description="lora trains adapters and merges them into the saved model"
    )
    epochs: int = Field(8, ge=1, le=200)
    batch_size: int = Field(32, ge=1, le=1024)
    learning_rate: float = Field(
        2e-3,
        gt=0,
        le=1.0,
        description="2e-3 suits the small builtin model; use about 1e-4 (lora 1e-3) for flan-t5-base",
    )
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    max_source_tokens: int = Field(192, ge=16, le=4096)
    max_target_tokens: int = Field(48, ge=4, le=1024)
    group_by_length: bool = Field(
        False,
        description="batch dialogues of similar length (Trainer's group_by_length sampling): less padding, "
        "other batches than random order, so another policy; on the builtin world 1.2x faster steps but a "
        "policy that invents more facts (docs/benchmarks.md)",
    )
    eval_samples: int = Field(
        100,
        ge=0,
        le=100_000,
        description="validation dialogues summarised (greedy) for ROUGE after each epoch; 0 = loss only",
    )
    precision: Literal[PRECISIONS + ("auto",)] = Field(
        "fp32",
        description="training under this autocast, weights and optimizer in fp32: auto = bf16 where the hardware "
        "multiplies bf16 (a GPU, a CPU with avx512_bf16 or AMX), fp32 elsewhere; bf16 is refused on other CPUs, "
        "where it is hundreds of times slower; fp16 on a GPU only. bf16 trains another policy (README)",
    )
    lora: SFTLora = SFTLora()


class BuiltinReward(Strict):
    """The architecture of a small RoBERTa hate-speech classifier; fetch writes its config and a BPE tokenizer,
    the reward stage trains it from scratch."""

    vocab_size: int = Field(1024, ge=300, le=64_000)
    hidden_size: int = Field(64, ge=16, le=1024)
    num_layers: int = Field(2, ge=1, le=24)
    num_heads: int = Field(4, ge=1, le=16)
    intermediate_size: int = Field(128, ge=16, le=4096)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> BuiltinReward:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        return self


class RewardTrain(Strict):
    """How the reward stage trains (builtin: from scratch) or fine-tunes (hub, local) the reward model."""

    enabled: bool | None = Field(
        None,
        description="null = train a builtin model and use a hub/local one as it is; true = also "
        "fine-tune a hub/local model on reward.data; false is refused for builtin (it has no weights)",
    )
    epochs: int = Field(3, ge=1, le=100)
    batch_size: int = Field(32, ge=1, le=1024)
    learning_rate: float = Field(
        1e-3,
        gt=0,
        le=1.0,
        description="1e-3 suits the small builtin model; use about 2e-5 to fine-tune a pretrained one",
    )
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    max_tokens: int = Field(64, ge=8, le=512)
    holdout_share: float = Field(
        0.1, gt=0.0, lt=0.9, description="share of the labelled data held out (never trained on) for the metrics"
    )


class RewardParams(Sourced[HubRef, BuiltinReward]):
    hub: HubRef = HubRef(name="facebook/roberta-hate-speech-dynabench-r4-target")
    builtin: BuiltinReward = BuiltinReward()
    data: RewardData = RewardData()
    train: RewardTrain = RewardTrain()
    reward_label: str = Field("nothate", min_length=1, description="reward = logit of this label")
    toxic_label: str = Field("hate", min_length=1, description="toxicity = softmax probability of this label")
    input: Literal["response", "dialogue+response"] = "response"
    batch_size: int = Field(64, ge=1, le=4096)
    max_tokens: int = Field(512, ge=8, le=4096)


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
    skinny_matmul: SkinnyMatmul = Field(
        "packed",
        description="how the decoding steps multiply their few rows by each large weight " + SKINNY_MATMUL_HELP,
    )
    sampler: Sampler = Field("multinomial", description="how each sampled token is drawn: " + SAMPLER_HELP)

    @model_validator(mode="after")
    def _ordered(self) -> GenerationParams:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})"
            )
        return self
