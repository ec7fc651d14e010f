"""``pipeline("summarization")`` for the merged policy in ``models/merged/``.

transformers 5 removed its summarization and text2text pipelines (``REMOVED_TASKS`` in
``transformers.pipelines``), so a seq2seq summariser ships its own, the way the Hub does it: the
model folder holds this file and names it in ``config.custom_pipelines``; then

    pipeline("summarization", model="models/merged", trust_remote_code=True)

loads it from any working directory and returns ``[{"summary_text": ...}]`` per input, as
transformers 4's summarization pipeline did. The prompt template and the source-token limit the
policy was trained and evaluated with are in ``config.json`` (``prompt_template``,
``max_source_tokens``); the generation defaults are the evaluate stage's (``generation_config.json``).

Sampling is seeded the way the served model seeds a request of one dialogue: ``torch.manual_seed(seed)``,
then ``generate``, with ``seed`` the one evaluate used (``config.json``'s ``sampling_seed``) unless the
call passes ``seed=...``. So the same dialogue gets the same summary from every call, and the same as
``mlflow models serve`` answers for it alone with the same seed. Each dialogue of a list is seeded on
its own (with ``batch_size`` > 1 the dialogues of a batch share one draw). The seeding does not reset
the caller's random state.

This module is copied into the model folder by ``save_pretrained`` (``custom_object_save``) and
imported there on its own, so it imports nothing from ``detox``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForSeq2SeqLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

TASK = "summarization"


class DialogueSummarizationPipeline(Pipeline):
    """Dialogue in, ``{"summary_text": ...}`` out: the prompt template applied, then ``generate``."""

    _pipeline_calls_generate = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(
        self, max_source_tokens: int | None = None, seed: int | None = None, **generate_kwargs: Any
    ):
        preprocess = {} if max_source_tokens is None else {"max_source_tokens": max_source_tokens}
        forward = generate_kwargs if seed is None else {**generate_kwargs, "seed": seed}
        return preprocess, forward, {}

    def preprocess(self, dialogue: str, max_source_tokens: int | None = None) -> dict[str, Any]:
        if not isinstance(dialogue, str) or not dialogue.strip():
            raise ValueError(f"expected a non-empty dialogue string, got {dialogue!r}")
        template = getattr(self.model.config, "prompt_template", None) or "{dialogue}"
        limit = max_source_tokens or getattr(self.model.config, "max_source_tokens", None) or 512
        return self.tokenizer(
            template.format(dialogue=dialogue), return_tensors="pt", truncation=True, max_length=limit
        )

    def _forward(self, model_inputs: dict[str, Any], seed: int | None = None, **generate_kwargs: Any) -> dict[str, Any]:
        # The call's and the pipeline's generation parameters on top of the model's generation_config.json.
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs)
        # fork_rng: seeding here must not reset the caller's random state (on a GPU, its device's too).
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.model.config.sampling_seed if seed is None else seed)
            return {"output_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs: dict[str, Any]) -> list[dict[str, str]]:
        return [
            {"summary_text": text.strip()}
            for text in self.tokenizer.batch_decode(model_outputs["output_ids"], skip_special_tokens=True)
        ]


def register() -> None:
    """Make ``save_pretrained`` of a :class:`DialogueSummarizationPipeline` write ``custom_pipelines``."""
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=DialogueSummarizationPipeline, pt_model=AutoModelForSeq2SeqLM, type="text"
    )
