"""Fast unit tests for generation, reward scoring and evaluation, on tiny random models.

Nothing is trained: a byte-level BPE tokenizer and a SentencePiece tokenizer are
trained on a few generated sentences (well under a second), and the RoBERTa reward
model and the T5 policy keep their random initial weights. Every expected value is
computed independently (a direct forward pass, ``model.generate`` itself, or by hand).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification, T5Config, T5ForConditionalGeneration

from conftest import tolerance
from detox.common.errors import RewardModelError
from detox.common.params import BuiltinCorpus, GenerationParams, PromptParams, RewardParams
from detox.data.corpus import generate_corpus
from detox.data.sentences import labelled_sentences
from detox.data.words import words
from detox.evaluate.quality import ROUGE_KEYS, rouge
from detox.evaluate.scoring import SAMPLE_SEED_STRIDE, Instruments, sample_rows, score_policy
from detox.evaluate.summary import summarize
from detox.judges.panel import Judge
from detox.models import sampling as sampling_module
from detox.models.builtin import ID2LABEL, train_bpe_tokenizer, train_t5_tokenizer
from detox.models.generation import (
    build_prompts,
    generate_draws,
    generate_summaries,
    generation_kwargs,
    load_policy,
    sample_responses,
)
from detox.models.reward import RewardScorer, label_index

TEMPLATE = PromptParams().template
FF_WIDTH = 64  # the feed-forward width of both tiny models: the longest dot product behind each logit
PAD, EOS = 0, 1  # T5: pad = decoder start = 0, eos = 1

# Texts of very different lengths (1 word to ~80 tokens), some toxic, some not.
TEXTS = [
    "Hi.",
    "You are a stupid moron!",
    "Tom wants to book a table for two on Friday, and #Person2# agrees.",
    "#Person1# and Lisa argue about the broken heater. " * 6,
    "idiot",
    "I would like to renew a prescription on Monday. Do you have an ID with you? Yes, my passport.",
    "Shut up, you lazy slob.",
]


def close(actual: torch.Tensor, expected: torch.Tensor, logits: torch.Tensor) -> None:
    """Equal up to the rounding of another float32 kernel (a padded batch or one text) on ``logits`` of this size."""
    atol = tolerance(torch.float32, FF_WIDTH, logits.abs().max())
    torch.testing.assert_close(actual, expected.to(actual.dtype), atol=atol, rtol=0)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def reward_tokenizer():
    return train_bpe_tokenizer(labelled_sentences(200, 0)["text"].tolist(), 400)


def make_reward_model(tokenizer, id2label: dict[int, str], seed: int = 0) -> RobertaForSequenceClassification:
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=FF_WIDTH,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=1.0,  # at the default 0.02 a 1-layer model gives every text the same logits
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    return RobertaForSequenceClassification(config)


@pytest.fixture(scope="module")
def reward_model(reward_tokenizer):
    return make_reward_model(reward_tokenizer, ID2LABEL)


@torch.no_grad()
def direct_logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """One unpadded forward pass per text: the reference the batched scorer must match."""
    model.eval()
    return torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])


@pytest.fixture(scope="module")
def corpus():
    cfg = BuiltinCorpus(train_size=40, validation_size=5, test_size=6, num_topics=6, heated_share=0.5)
    return generate_corpus(cfg, 7)


@pytest.fixture(scope="module")
def policy(corpus):
    train = corpus["train"]
    tokenizer, _ = train_t5_tokenizer(
        [TEMPLATE.format(dialogue="")] + train["dialogue"].tolist() + train["summary"].tolist(), 300
    )
    tokenizer.padding_side = "right"
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=FF_WIDTH,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.1,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
    )
    assert tokenizer.pad_token_id == PAD and tokenizer.eos_token_id == EOS
    return T5ForConditionalGeneration(config).eval(), tokenizer


@pytest.fixture(scope="module")
def eos_heavy_policy(policy):
    """The tiny policy with +4 on the EOS logit, so most rows stop early and get padded."""
    model, tokenizer = policy
    model = copy.deepcopy(model)
    bias = torch.zeros(model.config.vocab_size)
    bias[EOS] = 4.0
    model.lm_head.register_forward_hook(lambda _module, _inputs, output: output + bias)
    return model, tokenizer


def sampling(**overrides) -> GenerationParams:
    return GenerationParams(**{"max_new_tokens": 12, "batch_size": 2, **overrides})


def tiny_data(corpus, n: int = 5) -> pd.DataFrame:
    return corpus["test"].iloc[:n].reset_index(drop=True)


# --------------------------------------------------------------------------- reward


def test_scores_equal_a_direct_forward_pass(reward_model, reward_tokenizer):
    reward_model.train()  # the scorer must put the model in eval mode (no dropout)
    scorer = RewardScorer(reward_model, reward_tokenizer, RewardParams(batch_size=3))
    scores = scorer.score(TEXTS)
    logits = direct_logits(reward_model, reward_tokenizer, TEXTS)
    nothate, hate = 0, 1  # ID2LABEL = {0: "nothate", 1: "hate"}
    assert scores.reward.shape == scores.toxicity.shape == (len(TEXTS),)
    close(scores.reward, logits[:, nothate], logits)  # a raw logit, not a log-probability
    close(scores.toxicity, logits.softmax(-1)[:, hate], logits)
    # the scores are informative: they differ between texts and between the two columns
    assert scores.reward.std() > 0.5 and scores.toxicity.std() > 0.05
    assert not torch.allclose(logits[:, 0], logits[:, 1], atol=1e-2)
    assert not torch.allclose(scores.toxicity, logits.softmax(-1)[:, nothate], atol=1e-2)


def test_labels_are_found_by_name_not_by_index(reward_tokenizer):
    swapped = make_reward_model(reward_tokenizer, {0: "hate", 1: "nothate"})
    scorer = RewardScorer(swapped, reward_tokenizer, RewardParams())
    assert (scorer.reward_index, scorer.toxic_index) == (1, 0)
    logits = direct_logits(swapped, reward_tokenizer, TEXTS)
    scores = scorer.score(TEXTS)
    close(scores.reward, logits[:, 1], logits)
    close(scores.toxicity, logits.softmax(-1)[:, 0], logits)


def test_label_lookup_is_case_insensitive(reward_model, reward_tokenizer):
    upper = make_reward_model(reward_tokenizer, {0: "NOTHATE", 1: "Hate"})
    assert (label_index(upper, "nothate"), label_index(upper, "hate")) == (0, 1)
    scorer = RewardScorer(reward_model, reward_tokenizer, RewardParams(reward_label="NotHate", toxic_label="HATE"))
    assert (scorer.reward_index, scorer.toxic_index) == (0, 1)


def test_label_lookup_reads_string_keys_of_a_saved_config(reward_model):
    model = copy.copy(reward_model)
    model.config = copy.deepcopy(reward_model.config)
    model.config.id2label = {"0": "hate", "1": "nothate"}  # as JSON would have them
    assert label_index(model, "nothate") == 1


@pytest.mark.parametrize(
    ("id2label", "missing"),
    [({0: "negative", 1: "positive"}, "nothate"), ({0: "nothate", 1: "offensive"}, "hate")],
)
def test_a_missing_label_names_itself_and_the_labels_the_model_has(reward_tokenizer, id2label, missing):
    model = make_reward_model(reward_tokenizer, id2label)
    with pytest.raises(RewardModelError) as info:
        RewardScorer(model, reward_tokenizer, RewardParams())
    message = str(info.value)
    assert f"no label {missing!r}" in message
    for label in id2label.values():
        assert repr(label) in message


def test_batched_scores_equal_one_by_one_scores(reward_model, reward_tokenizer):
    lengths = [len(reward_tokenizer(t)["input_ids"]) for t in TEXTS]
    assert max(lengths) > 10 * min(lengths)  # the batches really are padded
    batched = RewardScorer(reward_model, reward_tokenizer, RewardParams(batch_size=4)).score(TEXTS)  # 4 + 3
    single = RewardScorer(reward_model, reward_tokenizer, RewardParams(batch_size=1)).score(TEXTS)
    close(batched.reward, single.reward, single.reward)
    close(batched.toxicity, single.toxicity, single.reward)


def test_scoring_nothing_gives_empty_scores(reward_model, reward_tokenizer):
    scores = RewardScorer(reward_model, reward_tokenizer, RewardParams()).score([])
    assert scores.reward.shape == scores.toxicity.shape == (0,)


def test_dialogue_plus_response_scores_the_dialogue_followed_by_the_response(reward_model, reward_tokenizer):
    dialogues = ["#Person1#: Hello.\n#Person2#: Hi, you idiot.", "#Person1#: Book a table.\n#Person2#: Sure."]
    responses = ["#Person1# greets #Person2#.", "A table is booked."]
    joint = RewardScorer(reward_model, reward_tokenizer, RewardParams(input="dialogue+response", batch_size=2))
    joined = [f"{d}\n{r}" for d, r in zip(dialogues, responses, strict=True)]
    assert joint.texts(responses, dialogues) == joined
    scores = joint.score(responses, dialogues)
    logits = direct_logits(reward_model, reward_tokenizer, joined)
    close(scores.reward, logits[:, 0], logits)
    close(scores.toxicity, logits.softmax(-1)[:, 1], logits)
    # and it is not what scoring the response alone (the default input) gives
    alone = RewardScorer(reward_model, reward_tokenizer, RewardParams(batch_size=2)).score(responses, dialogues)
    assert not torch.allclose(alone.reward, scores.reward, atol=1e-3)


def test_dialogue_plus_response_fails_clearly_without_one_dialogue_per_response(reward_model, reward_tokenizer):
    joint = RewardScorer(reward_model, reward_tokenizer, RewardParams(input="dialogue+response"))
    with pytest.raises(ValueError, match="dialogue"):
        joint.score(["a summary"])
    with pytest.raises(ValueError, match="dialogue"):
        joint.score(["a summary", "another"], ["only one dialogue"])


def test_dialogue_plus_response_keeps_the_response_when_truncating(reward_model, reward_tokenizer):
    long_dialogue = "#Person1#: I would like to book a table for two on Friday. " * 4
    cfg = RewardParams(input="dialogue+response", max_tokens=16)
    scorer = RewardScorer(reward_model, reward_tokenizer, cfg)
    scores = scorer.score(["A table is booked.", "You are a stupid moron and a filthy liar!"], [long_dialogue] * 2)
    assert not torch.allclose(scores.reward[0], scores.reward[1], atol=1e-6)


# --------------------------------------------------------------------------- generation


def test_generation_kwargs_pass_sampling_settings_only_when_sampling():
    greedy = generation_kwargs(GenerationParams(do_sample=False, top_k=5, top_p=0.5, temperature=2.0))
    assert greedy == {"do_sample": False, "max_new_tokens": 48, "min_new_tokens": 0}
    sampled = generation_kwargs(GenerationParams(top_k=5, top_p=0.5, temperature=2.0, min_new_tokens=3), 20)
    assert sampled == {
        "do_sample": True,
        "max_new_tokens": 20,
        "min_new_tokens": 3,
        "top_k": 5,
        "top_p": 0.5,
        "temperature": 2.0,
    }


def test_build_prompts_fills_the_template():
    assert build_prompts(["a", "b"], "X {dialogue} Y") == ["X a Y", "X b Y"]


def test_sample_responses_drops_exactly_the_decoder_start_token(policy, corpus):
    model, tokenizer = policy
    cfg = sampling()
    enc = tokenizer(
        build_prompts(tiny_data(corpus, 4)["dialogue"].tolist(), TEMPLATE), padding=True, return_tensors="pt"
    )
    torch.manual_seed(11)
    full = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        pad_token_id=PAD,
        eos_token_id=EOS,
        **generation_kwargs(cfg),
    )
    torch.manual_seed(11)
    ids = sample_responses(model, tokenizer, enc["input_ids"], enc["attention_mask"], cfg)
    assert (full[:, 0] == model.config.decoder_start_token_id).all()
    assert ids.shape == (full.shape[0], full.shape[1] - 1)
    assert torch.equal(ids, full[:, 1:])
    assert not (ids[:, 0] == PAD).all()


def test_same_seed_same_summaries_other_seed_other_summaries(policy, corpus):
    model, tokenizer = policy
    prompts = build_prompts(tiny_data(corpus)["dialogue"].tolist(), TEMPLATE)
    first = generate_summaries(model, tokenizer, prompts, sampling(), seed=3)
    torch.rand(100)  # the global RNG state in between must not matter
    again = generate_summaries(model, tokenizer, prompts, sampling(), seed=3)
    other = generate_summaries(model, tokenizer, prompts, sampling(), seed=4)
    assert len(first) == len(prompts)
    assert first == again
    assert first != other
    assert sum(a != b for a, b in zip(first, other, strict=True)) >= 3


@pytest.mark.parametrize("sampler", ["multinomial", "inverse_cdf"])
def test_draws_equal_separate_calls_and_run_the_encoder_once_per_batch(policy, corpus, sampler):
    model, tokenizer = policy
    prompts = build_prompts(tiny_data(corpus, 6)["dialogue"].tolist(), TEMPLATE)
    cfg = sampling(batch_size=4, sampler=sampler)  # two batches, sorted by length
    separate = [generate_summaries(model, tokenizer, prompts, cfg, seed=seed) for seed in (3, 8, 21)]
    calls = []
    hook = model.get_encoder().register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        draws = generate_draws(model, tokenizer, prompts, cfg, [3, 8, 21])
    finally:
        hook.remove()
    assert draws == separate  # bit for bit: the same encoder output and the same seeded draws
    assert draws[0] != draws[1]
    assert len(calls) == 2  # once per batch, not once per batch and seed
    with pytest.raises(ValueError, match="no seeds"):
        generate_draws(model, tokenizer, prompts, cfg, [])


def test_generation_sampler_inverse_cdf_draws_every_token_of_a_summary_by_inverse_cdf(policy, corpus, monkeypatch):
    """generation.sampler reaches generate: each decoding step draws once through inverse_cdf_sample, seeded as
    before (the same seed, the same summaries), other summaries than torch.multinomial's."""
    model, tokenizer = policy
    prompts = build_prompts(tiny_data(corpus, 4)["dialogue"].tolist(), TEMPLATE)
    calls: list[tuple[int, ...]] = []
    real = sampling_module.inverse_cdf_sample
    monkeypatch.setattr(sampling_module, "inverse_cdf_sample", lambda p, g=None: calls.append(p.shape) or real(p, g))
    torch_multinomial = torch.multinomial
    cfg = sampling(sampler="inverse_cdf", min_new_tokens=12)  # every row the full 12 tokens: 12 draws a batch
    fast = generate_summaries(model, tokenizer, prompts, cfg, seed=3)
    assert calls == [(2, model.config.vocab_size)] * 24  # 2 batches of 2 prompts, 12 steps each
    assert torch.multinomial is torch_multinomial
    assert generate_summaries(model, tokenizer, prompts, cfg, seed=3) == fast
    plain = generate_summaries(model, tokenizer, prompts, sampling(min_new_tokens=12), seed=3)
    assert len(calls) == 48  # the default sampler never calls it
    assert sum(a != b for a, b in zip(fast, plain, strict=True)) >= 3  # other draws


def test_each_batch_is_seeded_with_seed_plus_its_first_index(policy, corpus):
    model, tokenizer = policy
    prompts = build_prompts(tiny_data(corpus)["dialogue"].tolist(), TEMPLATE)
    cfg = sampling(batch_size=2, sort_by_length=False)
    whole = generate_summaries(model, tokenizer, prompts, cfg, seed=5)
    tail = generate_summaries(model, tokenizer, prompts[2:], cfg, seed=7)
    assert whole[2:] == tail


def test_sorted_batches_group_prompts_by_length_and_keep_the_input_order(policy, corpus):
    """Longest first, cut into batches, each seeded with seed + its first sorted index;
    every summary lands on its own prompt's row."""
    model, tokenizer = policy
    dialogues = tiny_data(corpus, 6)["dialogue"].tolist()
    prompts = build_prompts([d if i % 2 else d[: len(d) // 4] for i, d in enumerate(dialogues)], TEMPLATE)
    cfg = sampling(batch_size=2)
    assert cfg.sort_by_length
    lengths = [len(tokenizer(p).input_ids) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    assert order != list(range(len(prompts))), "the prompts must not be sorted already"

    expected = [""] * len(prompts)
    for start in range(0, len(order), 2):
        rows = order[start : start + 2]
        enc = tokenizer([prompts[i] for i in rows], padding=True, return_tensors="pt")
        torch.manual_seed(11 + start)
        ids = sample_responses(model, tokenizer, enc["input_ids"], enc["attention_mask"], cfg)
        for row, text in zip(rows, tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
            expected[row] = text.strip()
    assert generate_summaries(model, tokenizer, prompts, cfg, seed=11) == expected
    unsorted = generate_summaries(model, tokenizer, prompts, sampling(batch_size=2, sort_by_length=False), seed=11)
    assert unsorted != expected


def test_greedy_summaries_ignore_the_seed_and_the_batching(policy, corpus):
    model, tokenizer = policy
    prompts = build_prompts(tiny_data(corpus)["dialogue"].tolist(), TEMPLATE)
    batched = generate_summaries(model, tokenizer, prompts, sampling(do_sample=False, batch_size=3), seed=1)
    single = generate_summaries(model, tokenizer, prompts, sampling(do_sample=False, batch_size=1), seed=2)
    assert batched == single


def test_summaries_never_contain_special_token_text(eos_heavy_policy, corpus):
    model, tokenizer = eos_heavy_policy
    prompts = build_prompts(tiny_data(corpus, 6)["dialogue"].tolist(), TEMPLATE)
    cfg = sampling(batch_size=6)
    # precondition: the raw ids do hold EOS and padding after it
    enc = tokenizer(prompts, padding=True, return_tensors="pt")
    torch.manual_seed(9)
    ids = sample_responses(model, tokenizer, enc["input_ids"], enc["attention_mask"], cfg)
    assert (ids == EOS).any(dim=1).all() and (ids == PAD).any()
    raw = tokenizer.batch_decode(ids)
    assert any(tokenizer.eos_token in r for r in raw) and any(tokenizer.pad_token in r for r in raw)

    summaries = generate_summaries(model, tokenizer, prompts, cfg, seed=9)
    for summary in summaries:
        for token in (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token, "<pad>", "</s>"):
            assert token not in summary
        assert summary == summary.strip()


def test_load_policy_pads_on_the_right_and_is_in_eval_mode(policy, tmp_path):
    model, tokenizer = policy
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_policy(tmp_path)
    assert loaded_tokenizer.padding_side == "right"
    assert not loaded.training
    assert (loaded_tokenizer.pad_token_id, loaded_tokenizer.eos_token_id) == (PAD, EOS)


# --------------------------------------------------------------------------- evaluation


def test_rouge_identical_is_one_and_disjoint_is_zero():
    frame = rouge(
        ["the cat sat on the mat", "alpha beta gamma", "the dogs are running", "the cat"],
        ["the cat sat on the mat", "delta epsilon zeta", "the dog is running", "the cat sat on the mat"],
    )
    assert list(frame.columns) == list(ROUGE_KEYS)
    assert frame.iloc[0].tolist() == [1.0, 1.0, 1.0]
    assert frame.iloc[1].tolist() == [0.0, 0.0, 0.0]
    # stemming: dogs -> dog, running -> run; "are" vs "is" differ: 3 of 4 unigrams match
    assert frame.loc[2, "rouge1"] == pytest.approx(0.75)
    # F-measure, not precision (1) or recall (1/3): 2 * 1 * 1/3 / (1 + 1/3) = 0.5
    assert frame.loc[3, "rouge1"] == pytest.approx(0.5)


def frame_of(**columns) -> pd.DataFrame:
    n = len(columns["reward"])
    base = {"id": [f"d{i}" for i in range(n)], "response": ["a b"] * n, "length": [2] * n}
    frame = pd.DataFrame({**base, **columns})
    frame["toxic"] = frame["toxicity"] > 0.5
    return frame


def test_summarize_overall_and_heated_calm_groups_by_hand():
    frame = frame_of(
        reward=[1.0, 2.0, 3.0, 4.0],
        toxicity=[0.1, 0.6, 0.5, 0.9],  # 0.5 is not toxic: the share counts toxicity > 0.5
        rouge1=[0.2, 0.4, 0.6, 0.8],
        rouge2=[0.0, 0.1, 0.2, 0.3],
        rougeL=[0.1, 0.3, 0.5, 0.7],
        heated=[True, False, True, False],
    )
    metrics = summarize(frame, 12.5)
    assert set(metrics) == {
        "n",
        "summaries",
        "samples_per_prompt",
        "reward_mean",
        "reward_std",
        "toxicity",
        "quality",
        "rouge1",
        "rouge2",
        "rougeL",
        "samples_per_second",
        "heated",
        "calm",
    }
    # overall: reward mean 2.5, sample variance (2.25+0.25+0.25+2.25)/3 = 5/3
    assert metrics["n"] == 4 and metrics["summaries"] == 4 and metrics["samples_per_prompt"] == 1
    assert metrics["samples_per_second"] == 12.5
    assert metrics["reward_mean"] == pytest.approx(2.5)
    assert metrics["reward_std"] == pytest.approx(math.sqrt(5 / 3))
    model = metrics["toxicity"]["reward_model"]
    # toxicity mean 2.1/4 = 0.525; deviations -.425 .075 -.025 .375 -> squares sum 0.3275, /3
    assert model["toxicity_mean"] == pytest.approx(0.525)
    assert model["toxicity_std"] == pytest.approx(math.sqrt(0.3275 / 3))
    assert model["toxic_share"] == pytest.approx(0.5) and model["toxic_count"] == 2
    assert (metrics["rouge1"], metrics["rouge2"], metrics["rougeL"]) == pytest.approx((0.5, 0.15, 0.4))
    # heated = rows 0 and 2; calm = rows 1 and 3
    heated, calm = metrics["heated"], metrics["calm"]
    assert (heated["n"], heated["reward_mean"], heated["reward_std"]) == pytest.approx((2, 2.0, math.sqrt(2)))
    assert heated["toxicity"]["reward_model"]["toxicity_mean"] == pytest.approx(0.3)
    assert heated["toxicity"]["reward_model"]["toxic_share"] == 0.0 and heated["rougeL"] == pytest.approx(0.3)
    assert calm["toxicity"]["reward_model"]["toxicity_std"] == pytest.approx(math.sqrt(0.045))
    assert calm["toxicity"]["reward_model"]["toxic_share"] == 1.0 and calm["rouge1"] == pytest.approx(0.6)


def test_summarize_without_heated_rows_or_column():
    frame = frame_of(reward=[1.0], toxicity=[0.7], rouge1=[0.5], rouge2=[0.5], rougeL=[0.5], heated=[False])
    metrics = summarize(frame, 1.0)
    assert metrics["heated"] == {"n": 0}
    assert metrics["calm"]["n"] == 1 and metrics["calm"]["reward_std"] == 0.0
    assert metrics["reward_std"] == 0.0 and metrics["toxicity"]["reward_model"]["toxic_share"] == 1.0
    assert "heated" not in summarize(frame.drop(columns="heated"), 1.0)
    assert "samples_per_second" not in summarize(frame)


def test_sample_rows_takes_the_first_rows():
    data = pd.DataFrame({"id": list("abcde")}, index=[10, 11, 12, 13, 14])
    assert sample_rows(data, 2)["id"].tolist() == ["a", "b"]
    assert sample_rows(data, 2).index.tolist() == [0, 1]
    assert sample_rows(data, None) is data


def test_score_policy_columns_values_and_alignment(policy, reward_model, reward_tokenizer, corpus):
    model, tokenizer = policy
    data = tiny_data(corpus, 3)
    data.index = [7, 3, 5]  # a non-default index must not misalign anything
    scorer = RewardScorer(reward_model, reward_tokenizer, RewardParams(batch_size=2))
    cfg = sampling()
    frame, samples_per_second = score_policy(
        model, tokenizer, scorer, data.drop(columns="heated"), TEMPLATE, cfg, seed=21
    )
    assert list(frame.columns) == [
        "id",
        "sample",
        "dialogue",
        "reference",
        "response",
        "reward",
        "toxicity",
        "toxic",
        "rouge1",
        "rouge2",
        "rougeL",
        "length",
    ]
    assert len(frame) == 3 and samples_per_second > 0
    assert frame["id"].tolist() == data["id"].tolist() and frame["sample"].tolist() == [0, 0, 0]
    assert frame["dialogue"].tolist() == data["dialogue"].tolist()
    assert frame["reference"].tolist() == data["summary"].tolist()
    expected = generate_summaries(model, tokenizer, build_prompts(data["dialogue"].tolist(), TEMPLATE), cfg, 21)
    assert frame["response"].tolist() == expected
    scores = scorer.score(expected)
    close(torch.tensor(frame["reward"].to_numpy()), scores.reward, scores.reward)
    close(torch.tensor(frame["toxicity"].to_numpy()), scores.toxicity, scores.reward)
    assert frame["toxic"].tolist() == (frame["toxicity"] > 0.5).tolist()
    pd.testing.assert_frame_equal(frame[list(ROUGE_KEYS)], rouge(expected, data["summary"].tolist()))

    with_heated, _ = score_policy(model, tokenizer, scorer, data, TEMPLATE, cfg, seed=21)
    assert list(with_heated.columns) == list(frame.columns) + ["heated"]
    assert with_heated["heated"].tolist() == data["heated"].tolist()
    pd.testing.assert_frame_equal(with_heated.drop(columns="heated"), frame)


class FixedJudge(Judge):
    """Toxic exactly when the text contains ``word``; explains with the word."""

    def __init__(self, word: str) -> None:
        super().__init__("fixed", 0.5)
        self.word = word

    def score(self, texts):
        return np.array([1.0 if self.word in t else 0.0 for t in texts])

    def explain(self, texts):
        return [self.word if self.word in t else "" for t in texts]


def test_score_policy_k_samples_judges_fluency_and_garbling(policy, reward_model, reward_tokenizer, corpus):
    model, tokenizer = policy
    data = tiny_data(corpus, 3)
    scorer = RewardScorer(reward_model, reward_tokenizer, RewardParams(batch_size=4))
    cfg = sampling()
    known = frozenset({"the", "and"})
    instruments = Instruments(
        judges={"fixed": FixedJudge("the"), "ngram": FixedJudge("and")}, reference=(model, tokenizer), vocabulary=known
    )
    frame, _ = score_policy(
        model, tokenizer, scorer, data, TEMPLATE, cfg, seed=21, samples_per_prompt=2, instruments=instruments
    )
    assert len(frame) == 6
    assert frame["id"].tolist() == [i for i in data["id"] for _ in range(2)]  # prompt by prompt
    assert frame["sample"].tolist() == [0, 1] * 3
    prompts = build_prompts(data["dialogue"].tolist(), TEMPLATE)
    # sample j is drawn with seed + j * SAMPLE_SEED_STRIDE: sample 0 is what a one-sample run draws
    for j in range(2):
        assert frame.loc[frame["sample"] == j, "response"].tolist() == generate_summaries(
            model, tokenizer, prompts, cfg, 21 + j * SAMPLE_SEED_STRIDE
        )
    responses = frame["response"].tolist()
    assert frame["toxicity:fixed"].tolist() == [1.0 if "the" in r else 0.0 for r in responses]
    assert frame["toxic:fixed"].tolist() == ["the" in r for r in responses]
    assert frame["why:fixed"].tolist() == ["the" if "the" in r else "" for r in responses]
    assert frame["heated"].tolist() == [h for h in data["heated"] for _ in range(2)]
    # fluency: the mean NLL per response token (EOS included) under the reference, from a direct forward pass
    enc = tokenizer([prompts[0]], return_tensors="pt")
    labels = tokenizer(text_target=[responses[1]], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(**enc, labels=labels).loss.item()
    assert frame["fluency_nll"].iloc[1] == pytest.approx(loss, abs=tolerance(torch.float32, FF_WIDTH, loss))
    assert frame["unknown_words"].tolist() == [sum(w not in known for w in words(r)) for r in responses]
    assert list(summarize(frame)["toxicity"]) == ["reward_model", "fixed", "ngram"]
