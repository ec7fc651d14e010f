"""The merged policy as Hugging Face users load it (``pipeline("summarization")``, ``AutoModelForSeq2SeqLM``),
and the model cards' metadata and numbers.

A random tiny T5 with a SentencePiece tokenizer trained on a few generated dialogues (under a second).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

from conftest import tiny_corpus, tiny_t5
from detox.common.params import GenerationParams, PromptParams
from detox.models.generation import build_prompts, generate_summaries
from detox.serve.export import export_policy
from detox.serve.model_card import adapter_card, card_data, merged_card

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = PromptParams().template
SEED = 1234  # eval.seed


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """A tiny policy exported as evaluate exports models/merged/, and the test dialogues."""
    corpus = tiny_corpus()
    model, tokenizer = tiny_t5(TEMPLATE, tie_word_embeddings=False)
    with torch.no_grad():  # a random policy would write only padding; make it write words
        model.lm_head.weight[:3] = 0.0
        model.lm_head.weight[3:] *= 10.0
    generation = GenerationParams(max_new_tokens=9, max_source_tokens=300, temperature=0.7)
    out = export_policy(copy.deepcopy(model), tokenizer, tmp_path_factory.mktemp("merged"), TEMPLATE, generation, SEED)
    return out, corpus["test"]["dialogue"].tolist(), generation


def test_the_merged_policy_summarises_through_transformers_pipeline_from_another_directory(
    merged, tmp_path, monkeypatch
):
    folder, dialogues, _ = merged
    moved = tmp_path / "somewhere" / "merged"
    shutil.copytree(folder, moved)  # the folder is self-contained: its pipeline code travels with it
    monkeypatch.chdir(tmp_path)
    summarize = pipeline("summarization", model=str(moved.resolve()), trust_remote_code=True)
    got = summarize(dialogues[:2], do_sample=False, min_new_tokens=4)  # a random policy ends at once

    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(moved).eval(), AutoTokenizer.from_pretrained(moved)
    tokenizer.padding_side = "right"
    greedy = GenerationParams(do_sample=False, max_new_tokens=9, min_new_tokens=4, batch_size=1)
    # the pipeline applies the prompt template and the generation settings the pipeline generates with
    expected = generate_summaries(
        model, tokenizer, build_prompts(dialogues[:2], TEMPLATE), greedy, seed=0, max_source_tokens=300
    )
    assert [row[0]["summary_text"] for row in got] == expected
    assert all(expected), "the tiny policy wrote empty summaries: the comparison would prove nothing"


def test_the_merged_folder_carries_the_prompt_and_the_evaluated_sampling(merged):
    folder, _, generation = merged
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert model.config.prompt_template == TEMPLATE and model.config.max_source_tokens == 300
    assert model.config.sampling_seed == SEED
    config = model.generation_config
    assert (config.do_sample, config.max_new_tokens, config.temperature) == (True, 9, 0.7)
    assert (folder / "hf_pipeline.py").is_file()
    assert model.config.custom_pipelines["summarization"]["impl"] == "hf_pipeline.DialogueSummarizationPipeline"


def test_the_pipeline_samples_seeded_the_same_answer_for_the_same_dialogue(merged):
    folder, dialogues, _ = merged
    summarize = pipeline("summarization", model=str(folder), trust_remote_code=True)
    first = [row[0]["summary_text"] for row in summarize(dialogues[:3])]
    assert [row[0]["summary_text"] for row in summarize(dialogues[:3])] == first  # the evaluated seed, every call
    torch.manual_seed(99)
    state = torch.get_rng_state()
    assert [summarize(d)[0]["summary_text"] for d in reversed(dialogues[:3])] == first[::-1]  # each on its own
    assert torch.equal(torch.get_rng_state(), state), "seeding must not reset the caller's random state"
    assert summarize(dialogues[0], seed=SEED)[0]["summary_text"] == first[0]
    others = {summarize(dialogues[0], seed=seed)[0]["summary_text"] for seed in (1, 2, 3)}
    assert others - {first[0]}, "another seed draws other summaries"
    assert len(set(first)) > 1 and all(first), "the tiny policy must write something for this to prove anything"


def test_the_pipeline_refuses_an_empty_dialogue(merged):
    summarize = pipeline("summarization", model=str(merged[0]), trust_remote_code=True)
    with pytest.raises(ValueError, match="non-empty dialogue"):
        summarize("  ")


METRICS = {
    "n": 300,
    "samples_per_prompt": 5,
    "before": {
        "rougeL": 0.8298,
        "toxicity": {"reward_model": {"toxic_share": 0.1347}, "oracle": {"toxic_share": 0.1327}},
    },
    "after": {
        "rougeL": 0.8691,
        "toxicity": {"reward_model": {"toxic_share": 0.0133}, "oracle": {"toxic_share": 0.0107}},
    },
    "improvement_pct": {"reward_model": {"toxic_share": 90.1}, "oracle": {"toxic_share": 92.0}},
    "promotion": {"decision": "promoted", "reasons": ["pass: oracle: mean toxicity 0.1327 -> 0.0107"]},
}


HUB = {
    "policy": {"source": "hub", "name": "google/flan-t5-base", "revision": "main", "commit": "7bcac57"},
    "data": {"source": "hub", "name": "knkarthick/dialogsum"},
}


def test_the_merged_card_has_hub_metadata_and_the_measured_numbers(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\nlanguage:\n- en\n---\n\n# FLAN-T5 base\n")
    card = ModelCard(
        merged_card("detox-summarizer", HUB, METRICS, "oracle", TEMPLATE, "nothate", card_data(tmp_path / "README.md"))
    )  # the base's card, as a Hub snapshot has it
    assert card.data.base_model == "google/flan-t5-base" and card.data.datasets == ["knkarthick/dialogsum"]
    assert card.data.license == "apache-2.0" and card.data.license_name is None
    assert "The license is the base model's, `apache-2.0`" in card.text
    assert "`knkarthick/dialogsum`, has terms of its own" in card.text
    assert card.data.pipeline_tag == "summarization" and "ppo" in card.data.tags
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == {"ROUGE-L": 0.8691, "toxic share (reward_model)": 0.0133, "toxic share (oracle)": 0.0107}
    assert "| oracle | 0.1327 | 0.0107 | 92.0% fewer |" in card.text
    assert "decision rests on the judge `oracle`: promoted" in card.text
    assert "## Limitations" in card.text and "## Intended use" in card.text and TEMPLATE in card.text


def test_a_builtin_world_card_names_no_hub_base_model_and_says_the_project_declares_no_license(tmp_path):
    card = ModelCard(
        merged_card(
            "m",
            {"policy": {"source": "builtin"}, "data": {"source": "builtin"}},
            METRICS,
            "oracle",
            TEMPLATE,
            "nothate",
            card_data(tmp_path / "no-card.md"),
        )
    )
    assert card.data.base_model is None and card.data.datasets is None
    assert (card.data.license, card.data.license_name) == ("other", "none-declared")
    assert "built and trained by this pipeline" in card.text
    assert (
        "The metadata has no `base_model` and `datasets`: those fields take Hugging Face Hub ids, and the base "
        "model and the data are not on the Hub"
    ) in card.text
    assert "which declares no license" in card.text
    assert not (ROOT / "LICENSE").exists() and "license" not in (ROOT / "pyproject.toml").read_text().lower(), (
        "the project has a license now: the built-in world's card must name it"
    )
    roundtrip = ModelCardData(**card.data.to_dict())  # the Hub's schema reads it back as written
    assert roundtrip.to_dict() == card.data.to_dict()
    adapter = ModelCard(
        adapter_card({}, "/abs/models/policy", {"selected_step": 90, "steps": 100, "selection": "fewest toxic"})
    )
    assert adapter.data.library_name == "peft" and "/abs/models/policy" in adapter.text
    assert "after step 90 of 100: fewest toxic" in adapter.text


def test_a_hub_base_without_a_license_on_its_card_says_so():
    card = ModelCard(merged_card("m", HUB, METRICS, "oracle", TEMPLATE, "nothate", None))
    assert (card.data.license, card.data.license_name) == ("other", "unknown")
    assert "Check the base model's terms before sharing this model." in card.text
    other = ModelCardData(license="other", license_name="yi-license", license_link="LICENSE")
    card = ModelCard(merged_card("m", HUB, METRICS, "oracle", TEMPLATE, "nothate", other))
    assert (card.data.license, card.data.license_name, card.data.license_link) == ("other", "yi-license", "LICENSE")
