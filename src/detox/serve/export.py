"""The policy exported as a Hugging Face model folder that ``pipeline("summarization")`` loads."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from detox.common.params import GenerationParams
from detox.models.generation import generation_kwargs
from detox.serve import hf_pipeline


def export_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    template: str,
    generation: GenerationParams,
    seed: int,
) -> Path:
    """Save a (merged) policy and its tokenizer into one folder: the pyfunc model's artifact, and a Hugging
    Face model that ``pipeline("summarization", model=out_dir, trust_remote_code=True)`` loads
    (:mod:`detox.serve.hf_pipeline`). The prompt template, the source-token limit and the seed go into
    ``config.json`` (``sampling_seed``: the pipeline seeds as serving does), the sampling settings into
    ``generation_config.json`` (``model`` is changed in place accordingly).
    """
    model.config.prompt_template = template
    model.config.max_source_tokens = generation.max_source_tokens
    model.config.sampling_seed = seed
    for key, value in generation_kwargs(generation).items():
        setattr(model.generation_config, key, value)
    hf_pipeline.register()
    hf_pipeline.DialogueSummarizationPipeline(model=model, tokenizer=tokenizer).save_pretrained(out_dir)
    return Path(out_dir)
