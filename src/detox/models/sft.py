"""The sft stage: supervised fine-tuning of the policy on the train split, with the prompt template.

The built-in T5 is trained from scratch (fetch wrote only its configuration and tokenizer).
A Hub or local policy (flan-t5-base by default) is used as it is, or fine-tuned when
``sft.enabled`` is true: all weights (``sft.method: full``) or LoRA adapters merged into the
saved model afterwards (``lora``), so ``models/policy`` is always a plain model folder.
After every epoch the stage records the train loss, the loss on the validation split and
ROUGE-L of greedy summaries of the first ``sft.eval_samples`` validation dialogues.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import DataCollatorForSeq2Seq, PreTrainedModel, PreTrainedTokenizerBase

from detox.common.params import GenerationParams, Params
from detox.data.reading import load_split
from detox.evaluate.quality import rouge
from detox.models.attention import use_attention
from detox.models.check import load_or_init
from detox.models.generation import build_prompts, generate_summaries
from detox.models.precision import resolve_precision
from detox.models.training import Fit, Schedule, fit

log = logging.getLogger(__name__)


@dataclass
class SFTResult:
    trained: bool
    metrics: dict[str, Any]
    fit: Fit | None


def trains_policy(params: Params) -> bool:
    enabled = params.sft.enabled
    return params.policy.source == "builtin" if enabled is None else enabled


def examples(
    tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame, template: str, max_source: int, max_target: int
) -> list[dict[str, Any]]:
    """Prompt token ids and summary token ids (``labels``), one dict per dialogue."""
    sources = tokenizer(build_prompts(frame["dialogue"].tolist(), template), truncation=True, max_length=max_source)
    targets = tokenizer(frame["summary"].tolist(), truncation=True, max_length=max_target)["input_ids"]
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": labels}
        for ids, mask, labels in zip(sources["input_ids"], sources["attention_mask"], targets, strict=True)
    ]


def _with_lora(model: PreTrainedModel, params: Params) -> PreTrainedModel:
    from peft import LoraConfig, TaskType, get_peft_model

    lora = params.sft.lora
    config = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
    )
    return get_peft_model(model, config)


def run_sft(params: Params, base_dir: Path, raw_dir: Path, out_dir: Path) -> SFTResult:
    """Train (or take as it is) the policy in ``base_dir``; save it to the empty folder ``out_dir``."""
    cfg = params.sft
    if not trains_policy(params):
        shutil.copytree(base_dir, out_dir, dirs_exist_ok=True)
        return SFTResult(trained=False, metrics={"trained": False}, fit=None)
    precision = resolve_precision("sft.precision", cfg.precision)
    model, tokenizer = load_or_init(base_dir, "seq2seq", params.seed)
    use_attention(model, params.policy.attention)
    template = params.prompt.template
    train = examples(tokenizer, load_split(raw_dir, "train"), template, cfg.max_source_tokens, cfg.max_target_tokens)
    validation = load_split(raw_dir, "validation")
    held = examples(tokenizer, validation, template, cfg.max_source_tokens, cfg.max_target_tokens)
    probe = validation.head(cfg.eval_samples)
    greedy = GenerationParams(do_sample=False, max_new_tokens=cfg.max_target_tokens, batch_size=cfg.batch_size)

    def validation_rouge(trained: PreTrainedModel) -> dict[str, float]:
        if probe.empty:
            return {}
        summaries = generate_summaries(
            trained,
            tokenizer,
            build_prompts(probe["dialogue"].tolist(), template),
            greedy,
            params.seed,
            cfg.max_source_tokens,
            desc="sft validation",
        )
        trained.train()
        return {"eval_rougeL": float(rouge(summaries, probe["summary"].tolist())["rougeL"].mean())}

    trainable = _with_lora(model, params) if cfg.method == "lora" else model
    schedule = Schedule.of(cfg, group_by_length=cfg.group_by_length, precision=precision)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    record = fit(
        trainable, train, collator, schedule, params.seed, evaluation=held, on_epoch=validation_rouge, desc="policy"
    )
    trained_params = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
    if cfg.method == "lora":
        model = trainable.merge_and_unload()
    model.generation_config.max_new_tokens = cfg.max_target_tokens
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if (base_dir / "spiece.model").is_file() and not (out_dir / "spiece.model").exists():
        shutil.copy2(base_dir / "spiece.model", out_dir / "spiece.model")  # the slow tokenizer's model, as on the Hub
    metrics = {
        "trained": True,
        "method": cfg.method,
        "precision": precision,
        "epochs": cfg.epochs,
        "steps": record.steps,
        "train_examples": len(train),
        "validation_examples": len(held),
        "train_loss": record.last("train_loss"),
        "validation_loss": record.last("eval_loss"),
        "validation_rougeL": record.last("eval_rougeL"),
        "rouge_dialogues": len(probe),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "trained_parameters": int(trained_params),
    }
    log.info(
        "policy (%s): validation loss %.4f, ROUGE-L %s",
        precision,
        metrics["validation_loss"],
        metrics["validation_rougeL"],
    )
    return SFTResult(trained=True, metrics=metrics, fit=record)
