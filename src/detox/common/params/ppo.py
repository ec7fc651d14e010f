"""The ``ppo`` section: the PPO loop, its KL leash, LoRA adapters, checkpoint selection and early stops."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from detox.common.params.base import (
    PRECISIONS,
    SAMPLER_HELP,
    SKINNY_MATMUL_HELP,
    Lora,
    LoraRank,
    Range,
    Sampler,
    SkinnyMatmul,
    Strict,
)


class _Switch(Strict):
    enabled: bool = Field(True, description="false = full fine-tuning, with a frozen reference copy")


class LoraParams(Lora, _Switch):  # _Switch listed last: pydantic lays out its field (enabled) first
    r: LoraRank = 32
    scope: Literal["all", "decoder"] = Field(
        "decoder",
        description="where target_modules get adapters: decoder only (the encoder stays frozen, so a PPO step "
        "runs it once and reuses its output) or all (encoder and decoder, as in the original notebook)",
    )
    train_modules: tuple[str, ...] = Field(
        ("final_layer_norm",),
        description="modules trained whole beside the adapters (peft's modules_to_save), within scope: "
        "final_layer_norm, the decoder's last norm, scales every logit, so the policy can learn a temperature",
    )


class KLParams(Strict):
    adaptive: bool = Field(True, description="adaptive controller (target, horizon) or a fixed coefficient")
    init_coef: float = Field(
        0.5, ge=0.0, le=100.0, description="the KL coefficient to start from (0.5: the recipe over RL seeds)"
    )
    target: float = Field(6.0, gt=0.0, description="target KL (summed over response tokens)")
    horizon: int = Field(10_000, ge=1)
    estimator: Literal["k1", "abs", "mse"] = "k1"


class GRPOParams(Strict):
    beta: float = Field(
        0.04,
        ge=0.0,
        le=100.0,
        description="coefficient of the per-token KL to the reference (k3 estimator) added to GRPO's loss; TRL's "
        "default is 0, DeepSeekMath's GRPO used 0.04: without a leash the policy garbles (see the README)",
    )
    loss_type: Literal["dapo", "grpo", "dr_grpo"] = Field(
        "dapo",
        description="how the per-token losses are averaged (TRL's names): dapo = over all response tokens of the "
        "optimizer step (token mean, TRL's default), grpo = per sequence then over sequences, dr_grpo = sum over "
        "a constant (sequences x ppo.response_length.max)",
    )
    scale_rewards: Literal["group", "none"] = Field(
        "group", description="divide each group's centred rewards by their std (group) or not (none: Dr. GRPO)"
    )


ALGORITHMS = ("ppo", "rloo", "grpo")
DEFAULT_SAMPLES_PER_PROMPT = {"ppo": 1, "rloo": 4, "grpo": 4}


class ScoreParams(Strict):
    normalize: bool = Field(False, description="scale scores by a running std (and shift by its mean)")
    clip: float | None = Field(None, gt=0.0, description="clip (normalised) scores to [-clip, clip]")


class SelectParams(Strict):
    judge: str | None = Field(
        "oracle",
        description="the judge (one of eval.judges) whose toxic share on the validation subset picks "
        "the checkpoint; null = the reward model's",
    )
    max_rougeL_drop: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="a checkpoint qualifies when its validation ROUGE-L is at most this below the untrained policy's",
    )
    tiebreak: Literal["rougeL", "reward"] = Field(
        "rougeL",
        description="among checkpoints equally toxic to the judge, the higher validation ROUGE-L (the better "
        "summaries) or the higher reward-model score (what RL maximised) wins",
    )


class CollapseParams(Strict):
    min_distinct_2: float = Field(0.05, ge=0.0, le=1.0, description="stop when validation distinct-2 falls below")
    min_mean_length: float = Field(3.0, ge=0.0, description="stop when validation summaries are shorter (words)")


class PPOParams(Strict):
    algorithm: Literal["ppo", "rloo", "grpo"] = Field(
        "rloo",
        description="ppo (clipped surrogate, value head, GAE), rloo (leave-one-out baseline, no value head) or "
        "grpo (group-normalised advantages, KL as a loss term, no value head); one engine runs all three",
    )
    samples_per_prompt: int | None = Field(
        None,
        ge=1,
        le=256,
        description="responses sampled per prompt (k; the group of rloo and grpo); null = 1 for ppo, 4 for rloo "
        "and grpo; batch_size counts responses, so a step sees batch_size / k prompts",
    )
    seed: int | None = Field(
        None,
        description="the RL seed: LoRA and value-head initialisation, data order and every sampling of the ppo "
        "stage; null = the pipeline's seed (data, sft, reward model and judges keep that one)",
    )
    steps: int = Field(100, ge=1, le=1_000_000)
    batch_size: int = Field(
        64, ge=1, le=65_536, description="responses per step (per process): batch_size / samples_per_prompt prompts"
    )
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
    novel_word_penalty: float = Field(
        0.0,
        ge=0.0,
        le=100.0,
        description="subtracted from the reward model's score for each word of a summary that its dialogue "
        "lacks: a wrong name, day or problem, or a garbled token (words all of a prompt's k samples share cancel "
        "in rloo's and grpo's group baselines); 0 = off (the default: on the built-in world it moved neither the "
        "invented facts nor the novel words per summary in 100 steps; see the README)",
    )
    repeat_penalty: float = Field(
        0.2,
        ge=0.0,
        le=100.0,
        description="subtracted from the reward model's score for each word of a summary that loops: repeats the "
        "word before it or closes a bigram the summary already had (rep-n, Welleck et al. 2019); the built-in "
        "world's references have none, and the reward model does not mind a loop (0.2: RL seeds 42, 1 to 4 loop "
        "less than the sft policy and keep the calm dialogues' ROUGE-L; see the README); 0 = off",
    )
    sharpen: float = Field(
        0.3,
        ge=0.0,
        le=100.0,
        description="coefficient of the reference policy's log-probability of each response token, added to the "
        "reward: the KL-regularised optimum becomes the reference raised to 1 + sharpen / kl_coef (a sharper "
        "reference), so the rare continuations where the policy garbles, repeats insults and invents facts lose "
        "their mass; 0 = off",
    )
    max_kl: float | None = Field(None, gt=0.0, description="stop early when the mean KL exceeds this")
    disable_dropout: bool = True
    skinny_matmul: SkinnyMatmul = Field(
        "packed",
        description="the same for the decoding steps of rollouts and checkpoint evaluations " + SKINNY_MATMUL_HELP,
    )
    sampler: Sampler = Field(
        "multinomial", description="how rollouts and checkpoint evaluations draw each token: " + SAMPLER_HELP
    )
    precision: Literal[PRECISIONS] = Field(
        "fp32",
        description="the whole step (rollout, reference and training passes) under this autocast; fp16 "
        "with a gradient scaler (GPU only); must agree with `accelerate launch --mixed_precision`",
    )
    checkpoint_every: int = Field(10, ge=1, description="steps between resumable checkpoints")
    eval_every: int | None = Field(
        10,
        ge=1,
        description="steps between evaluations on the validation subset (also before the first step and "
        "after the last); null = none, and the last step becomes models/ppo",
    )
    eval_prompts: int = Field(200, ge=1, le=100_000, description="validation dialogues evaluated (the first ones)")
    select: SelectParams = SelectParams()
    patience: int | None = Field(
        None,
        ge=1,
        description="stop when the selected checkpoint has not improved for this many evaluations",
    )
    collapse: CollapseParams = CollapseParams()
    lora: LoraParams = LoraParams()
    grpo: GRPOParams = GRPOParams()

    @property
    def group_size(self) -> int:
        """k, the responses sampled per prompt."""
        return self.samples_per_prompt or DEFAULT_SAMPLES_PER_PROMPT[self.algorithm]

    @property
    def uses_value_head(self) -> bool:
        return self.algorithm == "ppo"

    @model_validator(mode="after")
    def _groups_fit(self) -> PPOParams:
        k = self.group_size
        if self.algorithm != "ppo" and k < 2:
            raise ValueError(
                f"ppo.algorithm {self.algorithm} compares each response with the others of its prompt: "
                f"samples_per_prompt must be at least 2, got {k}"
            )
        if self.batch_size % k:
            raise ValueError(
                f"batch_size ({self.batch_size} responses) must be a multiple of samples_per_prompt ({k}), "
                "so that every prompt gets all its samples in one step"
            )
        return self

    @model_validator(mode="after")
    def _batches_divide(self) -> PPOParams:
        chunk = self.mini_batch_size * self.gradient_accumulation_steps
        if self.batch_size % chunk:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size x "
                f"gradient_accumulation_steps ({self.mini_batch_size} x {self.gradient_accumulation_steps})"
            )
        return self
