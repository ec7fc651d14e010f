"""Hugging Face model cards (``README.md`` with the Hub's metadata block) for ``models/ppo`` and ``models/merged``.

The metadata is written with :class:`huggingface_hub.ModelCardData` (the Hub's own schema:
``base_model``, ``datasets``, ``license``, ``pipeline_tag``, ``model-index`` results); the body says what
the model is, how to load it, what evaluate measured with the judges beside the reward model, and
its limits. Every number comes from the metrics the stages wrote; none is typed here.

``base_model`` and ``datasets`` take Hub ids only, so they are left out for a model or data made
locally (the built-in world, a local folder) and the body says where they came from. The merged
model's license is its base model's, read from the base's own card (``license: apache-2.0`` for
google/flan-t5-base); the built-in world's model is this project's, and the project declares no
license, so its card says ``license: other`` with ``license_name: none-declared`` and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TAGS = ["summarization", "dialogue", "detoxification", "ppo", "rlhf"]
LIMITATIONS = """\
- The policy was trained to please one reward model. Its toxicity is measured by judges that share
  nothing with it (weights, tokenizer, training data), and the promotion decision rests on the judge
  named above, never on the reward model. A judge has blind spots of its own: the built-in oracle
  misses an insult split by a space or misspelt (`idi ot`), by design.
- In the built-in offline world the dialogues, the models and the judges are small and generated;
  its numbers show that the pipeline works, not how FLAN-T5 behaves on DialogSum.
- Summaries are sampled: the same dialogue gives other summaries under another seed. Lower toxicity
  is not zero toxicity, and a summary can still misstate what was said."""
INTENDED_USE = """\
Research and engineering on reducing the toxicity of a dialogue summariser with reinforcement
learning from a reward model: comparing runs, reward models and judges. It is not a content filter
or a safety guarantee, and not for summarising conversations where a wrong or omitted statement harms
someone without a human reading the dialogue."""


def _source(manifest: Mapping[str, Any], key: str) -> tuple[str | None, str]:
    """(Hub id or None, a phrase saying where the model or data came from) from a fetch manifest."""
    entry = manifest.get(key) or {}
    source = entry.get("source", "builtin")
    if source == "hub":
        name = entry.get("name")
        revision = entry.get("commit") or entry.get("revision")
        return name, f"`{name}`" + (f" (revision `{revision}`)" if revision else "")
    if source == "local":
        return None, f"a local {'model' if key != 'data' else 'dataset'} (`{entry.get('path')}`)"
    return None, (
        "the built-in generated DialogSum-like corpus"
        if key == "data"
        else "a small FLAN-T5-shaped model built and trained by this pipeline (stages fetch and sft)"
        if key == "policy"
        else "a small RoBERTa hate classifier trained by this pipeline (stage reward)"
    )


def card_data(path: Path) -> ModelCardData | None:
    """The metadata of a model's own card (its ``README.md``; a Hub snapshot has one), or None without one."""
    return ModelCard.load(path).data if path.is_file() else None


LICENSE_KEYS = ("license", "license_name", "license_link")


def _license(manifest: Mapping[str, Any], base_card: ModelCardData | None) -> tuple[dict[str, str], str]:
    """(license metadata, the card's paragraph about it): the base model's license, or why there is none."""
    declared = {key: getattr(base_card, key) for key in LICENSE_KEYS if base_card and getattr(base_card, key, None)}
    if "license" in declared:
        return declared, f"The license is the base model's, `{declared['license']}`, as its card declares it."
    if (manifest.get("policy") or {}).get("source", "builtin") == "builtin":
        return {"license": "other", "license_name": "none-declared"}, (
            "This model, its base and its data were made by this project (the built-in world), which declares no "
            "license (no LICENSE file, no license in pyproject.toml): hence `license: other` with "
            "`license_name: none-declared`. Choose a license before sharing the model."
        )
    return {"license": "other", "license_name": "unknown"}, (
        "The base model's card declares no license (or it has no card): hence `license: other` with "
        "`license_name: unknown`. Check the base model's terms before sharing this model."
    )


def _provenance(base_id: str | None, data_id: str | None, data: str) -> str:
    """What the card says besides its license about where the weights and data came from."""
    notes = []
    local = [
        (field, what)
        for field, what, hub_id in (("`base_model`", "the base model", base_id), ("`datasets`", "the data", data_id))
        if hub_id is None
    ]
    if local:
        fields, whats = (" and ".join(names) for names in zip(*local, strict=True))
        notes.append(
            f"The metadata has no {fields}: those fields take Hugging Face Hub ids, and {whats} "
            f"{'are' if len(local) > 1 else 'is'} not on the Hub (see above)."
        )
    if data_id is not None:
        notes.append(f"The training data, {data}, has terms of its own: see its card.")
    return " ".join(notes)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def results_table(metrics: Mapping[str, Any]) -> str:
    """Toxic share before and after PPO for the reward model and every judge, plus ROUGE-L, as Markdown."""
    before, after = metrics["before"], metrics["after"]
    rows = ["| measured by | toxic share before | toxic share after | change |", "|---|---|---|---|"]
    for name, scores in before["toxicity"].items():
        role = " (the reward model: it judges its own student)" if name == "reward_model" else ""
        share_after = after["toxicity"][name]["toxic_share"]
        rows.append(
            f"| {name}{role} | {scores['toxic_share']:.4f} | {share_after:.4f} | "
            f"{_percent(metrics['improvement_pct'][name]['toxic_share'])} fewer |"
        )
    rows.append(
        f"| ROUGE-L against the references | {before['rougeL']:.4f} | {after['rougeL']:.4f} | "
        f"{after['rougeL'] - before['rougeL']:+.4f} |"
    )
    return "\n".join(rows)


def _card(data: ModelCardData, body: str) -> str:
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n").content


ALGORITHM_NAMES = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO"}  # ppo.algorithm, as the cards spell it


def merged_card(
    name: str,
    manifest: Mapping[str, Any],
    metrics: Mapping[str, Any],
    judge: str,
    template: str,
    reward_label: str,
    base_card: ModelCardData | None,
    algorithm: str = "ppo",
) -> str:
    """The card of the merged policy that evaluate scored and registered (``models/merged/README.md``);
    ``base_card`` is the metadata of the base model's own card (:func:`card_data`), where it has one."""
    base_id, base = _source(manifest, "policy")
    data_id, data = _source(manifest, "data")
    _, reward = _source(manifest, "reward")
    after = metrics["after"]
    results = [
        EvalResult(
            task_type="summarization",
            dataset_type=data_id or "builtin-dialogues",
            dataset_name=f"{data_id or 'built-in dialogues'} (test)",
            dataset_split="test",
            metric_type="rouge",
            metric_name="ROUGE-L",
            metric_value=round(after["rougeL"], 4),
        )
    ]
    for scorer, scores in after["toxicity"].items():
        results.append(
            EvalResult(
                task_type="summarization",
                dataset_type=data_id or "builtin-dialogues",
                dataset_name=f"{data_id or 'built-in dialogues'} (test)",
                dataset_split="test",
                metric_type="toxic_share",
                metric_name=f"toxic share ({scorer})",
                metric_value=round(scores["toxic_share"], 4),
            )
        )
    license_metadata, license_text = _license(manifest, base_card)
    meta = ModelCardData(
        base_model=base_id,
        datasets=[data_id] if data_id else None,
        library_name="transformers",
        pipeline_tag="summarization",
        tags=TAGS,
        model_name=name,
        eval_results=results,
        **license_metadata,
    )
    promotion = metrics.get("promotion", {})
    reasons = "\n".join(f"- {reason}" for reason in promotion.get("reasons", []))
    body = f"""
# {name}

A dialogue summariser fine-tuned with {ALGORITHM_NAMES[algorithm]} to write less toxic summaries. It starts from
{base}, trained on {data}; the reward is the logit of the label `{reward_label}` of {reward}. The adapters
are merged into the weights: this folder loads without PEFT.

## How to use

```python
from transformers import pipeline

summarize = pipeline("summarization", model="<this folder>", trust_remote_code=True)
summarize("#Person1#: ...\\n#Person2#: ...")  # [{{"summary_text": "..."}}]
```

transformers 5 has no built-in summarization pipeline any more; this folder ships one
(`hf_pipeline.py`, named in `config.json`), which applies the prompt template the policy was trained with
and samples as evaluate did (`generation_config.json`; pass `do_sample=False` for greedy summaries).
Sampling is seeded with the seed evaluate used (`sampling_seed` in `config.json`; `seed=7` for another),
so the same dialogue gets the same summary on every call, and the one the served model (MLflow) answers
for it alone with the same seed.
Without it: `AutoModelForSeq2SeqLM.from_pretrained(...)`, and the prompt

```
{template}
```

## Results (stage evaluate, {metrics["n"]} test dialogues x {metrics["samples_per_prompt"]} samples)

Toxicity is measured by the reward model and, beside it, by judges that share nothing with it.
The promotion decision rests on the judge `{judge}`: {promotion.get("decision", "not taken")}.

{results_table(metrics)}

{reasons}

## Limitations

{LIMITATIONS}

## Intended use

{INTENDED_USE}

## License

{license_text} {_provenance(base_id, data_id, data)}
"""
    return _card(meta, body)


def adapter_card(
    manifest: Mapping[str, Any], base_path: str, selection: Mapping[str, Any] | None, algorithm: str = "ppo"
) -> str:
    """The card of the PPO adapter folder (``models/ppo/README.md``), written by the ppo stage."""
    base_id, base = _source(manifest, "policy")
    data_id, data = _source(manifest, "data")
    meta = ModelCardData(
        base_model=base_id,
        datasets=[data_id] if data_id else None,
        library_name="peft",
        pipeline_tag="summarization",
        tags=[*TAGS, "lora"],
    )
    chosen = ""
    if selection:
        chosen = (
            f"\nThe adapter is the policy after step {selection['selected_step']} of {selection['steps']}: "
            f"{selection['selection']}.\n"
        )
    body = f"""
# {ALGORITHM_NAMES[algorithm]} adapter of the detox summariser

LoRA adapters (PEFT){" and a value head" if algorithm == "ppo" else ""}, trained with {ALGORITHM_NAMES[algorithm]} \
on {data} so that the summaries of {base} (the `models/policy` folder of this pipeline) become less toxic.
{chosen}
## How to use

```python
from peft import AutoPeftModelForSeq2SeqLM

model = AutoPeftModelForSeq2SeqLM.from_pretrained("<absolute path>/models/ppo")
```

`adapter_config.json` names the base model by its absolute path, `{base_path}`, because PEFT
resolves a relative one against the working directory. After moving the project, rerun
`dvc repro ppo`, or use the merged model in `models/merged/` (written by the evaluate stage,
with the test results in its card), which needs no base model.

## Limitations

{LIMITATIONS}

## Intended use

{INTENDED_USE}
"""
    return _card(meta, body)
