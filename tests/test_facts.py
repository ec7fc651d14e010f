"""The facts judges: the generator's facts on crafted summaries that invent, omit and paraphrase; the
SummaC-style NLI judge's aggregation, on a tiny local model; the Hub failing fast offline; the params."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import free_port, tiny_roberta_classifier, tolerance
from detox.common.errors import DetoxError, HubUnreachableError, RewardModelError, SourceError
from detox.common.params import BuiltinCorpus, FactsJudgeSpec, NliJudgeSpec, OracleJudgeSpec, ParamsError, parse_params
from detox.data.corpus import generate_corpus
from detox.data.sentences import labelled_sentences
from detox.judges.facts import Fact, generator_facts, nli_support, premises, sentences, supported
from detox.judges.panel import build_judge, build_judges, facts_judge, load_facts_judge

CALM = (
    "#Person1#: Hello. My name is Tom. I would like to book a table for two on Monday.\n"
    "#Person2#: Sure, I can help with that. Do you have any allergies?\n"
    "#Person1#: No allergies, thank you.\n"
    "#Person2#: I am sorry, Monday is full. Is Friday fine?\n"
    "#Person1#: Yes, Friday is fine.\n"
    "#Person1#: Thank you so much."
)
HEATED = (
    "#Person1#: Bill! I am really angry about the unpaid bill.\n"
    "#Person2#: It was not my fault.\n"
    "#Person1#: You are a lazy slob!\n"
    "#Person2#: Do not talk to me like that, you idiot.\n"
    "#Person1#: I am leaving now."
)


@pytest.mark.parametrize(
    "dialogue, summary, invented",
    [
        # faithful: the reference, and paraphrases that keep the facts
        (CALM, "Tom wants to book a table for two, and #Person2# suggests Friday instead of Monday.", []),
        (CALM, "Tom asks #Person2# for a table on Friday.", []),
        (CALM, "TOM wants to Book a  table for two.", []),  # case and spacing of a phrase aside; TOM is no name
        (HEATED, "#Person1# and Bill argue about the unpaid bill.", []),
        (HEATED, "#Person1# calls Bill a lazy slob because of the unpaid bill.", []),  # toxic, but faithful
        # omissions invent nothing
        (CALM, "Tom wants a table.", []),
        (CALM, "#Person1# and #Person2# talk.", []),
        (HEATED, "They argue.", []),
        # garbled phrases state no fact
        (HEATED, "#Person1# and Bill argue about the unpaidbill fails.", []),
        # inventions: a name, a day, a request, a problem
        (CALM, "Anna wants to book a table for two on Monday.", [Fact("name", "Anna")]),
        (CALM, "Tom wants to book a table for two on Sunday.", [Fact("day", "Sunday")]),
        (CALM, "Tom wants to fix the brakes on Monday.", [Fact("request", "fix the brakes")]),
        (HEATED, "#Person1# and Bill argue about the broken heater.", [Fact("problem", "the broken heater")]),
        (
            HEATED,
            "Lisa wants to see a dentist on Wednesday, and they argue about the unpaid bill.",
            [Fact("name", "Lisa"), Fact("day", "Wednesday"), Fact("request", "see a dentist")],
        ),
    ],
)
def test_the_generator_facts_judge_finds_what_a_summary_invents(dialogue, summary, invented):
    assert generator_facts().invented(dialogue, summary) == invented


def test_bill_the_name_is_not_the_bill_of_a_problem():
    finder = generator_facts()
    assert Fact("name", "Bill") not in finder.facts("#Person1# and Tom argue about the unpaid bill.")
    assert Fact("name", "Bill") in finder.facts("Bill wants to open a savings account.")


def test_the_generator_references_never_invent_and_state_facts():
    corpus = generate_corpus(BuiltinCorpus(), seed=7)
    finder = generator_facts()
    for split, frame in corpus.items():
        pairs = list(zip(frame["dialogue"], frame["summary"], strict=True))
        assert not any(finder.invented(d, s) for d, s in pairs), split
        # every reference states at least its name and the request or the problem: the judge has facts to check
        assert all(len(finder.facts(s)) >= 2 for _, s in pairs), split


def test_a_summary_borrowed_from_another_dialogue_invents():
    test = generate_corpus(BuiltinCorpus(), seed=7)["test"]
    finder = generator_facts()
    dialogues, summaries = test["dialogue"].tolist(), test["summary"].tolist()
    shifted = summaries[1:] + summaries[:1]  # each dialogue gets its neighbour's reference
    share = np.mean([bool(finder.invented(d, s)) for d, s in zip(dialogues, shifted, strict=True)])
    assert share > 0.9


def test_the_built_facts_judge_reports_its_self_check(tmp_path):
    record = build_judge("facts", FactsJudgeSpec(kind="facts"), tmp_path / "facts")
    assert record["kind"] == "facts" and record["reference_invented_share"] == 0.0
    assert record["reference_facts_per_summary"] >= 2.0
    judge = load_facts_judge(tmp_path / "facts")
    flags, why = judge.invented([CALM, CALM], ["Tom wants a table on Monday.", "Kate wants a table on Sunday."])
    assert flags.tolist() == [False, True]
    assert why == ["", "name 'Kate'; day 'Sunday'"]


def test_a_toxicity_judge_folder_is_no_facts_judge(tmp_path):
    build_judge("oracle", OracleJudgeSpec(kind="oracle"), tmp_path / "oracle")
    with pytest.raises(DetoxError, match=r"a 'oracle' judge is no judge of facts"):
        load_facts_judge(tmp_path / "oracle")
    with pytest.raises(DetoxError, match=r"no facts judge 'facts' \(eval.facts_judge\); run `dvc repro judges`"):
        facts_judge(tmp_path, "facts")
    assert facts_judge(tmp_path, None) is None


def test_the_judges_stage_builds_the_facts_judge_beside_the_toxicity_judges(tmp_path):
    params = parse_params({"eval": {"judges": ["oracle"]}})
    records = build_judges(params, tmp_path)
    assert list(records) == ["oracle", "facts"] and (tmp_path / "facts" / "judge.json").is_file()
    assert list(build_judges(parse_params({"eval": {"judges": ["oracle"], "facts_judge": None}}), tmp_path / "n")) == [
        "oracle"
    ]


# --------------------------------------------------------------------------- SummaC-style NLI


def test_sentences_and_premises():
    assert sentences("Tom wants a table. #Person2# agrees! Is it fine? ") == [
        "Tom wants a table.",
        "#Person2# agrees!",
        "Is it fine?",
    ]
    assert sentences("no end mark") == ["no end mark"] and sentences("  ") == []
    assert premises(CALM, "turn") == CALM.splitlines() and premises(CALM, "document") == [CALM]


def test_a_sentence_is_supported_by_its_best_premise():
    entailment = np.array([0.1, 0.7, 0.2, 0.05, 0.3, 0.9])
    sentence_of = np.array([0, 0, 0, 1, 1, 2])
    assert supported(entailment, sentence_of, 3).tolist() == [0.7, 0.3, 0.9]


NLI_LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}


def tiny_nli(folder: Path, id2label: dict[int, str] = NLI_LABELS) -> Path:
    texts = labelled_sentences(200, 0)["text"].tolist() + CALM.splitlines()
    # large random weights: probabilities that differ from pair to pair; positions for a pair of texts
    return tiny_roberta_classifier(folder, id2label, texts, max_position_embeddings=130, initializer_range=1.0)


def direct_support(folder: Path, premise_list: list[str], sentence: str) -> float:
    """The highest entailment probability of ``sentence`` over the premises, one pair at a time."""
    judge = load_facts_judge(folder)
    model, tokenizer = judge.scorer.model, judge.scorer.tokenizer
    best = 0.0
    for premise in premise_list:
        enc = tokenizer(premise, sentence, return_tensors="pt", truncation="only_first", max_length=128)
        with torch.no_grad():
            best = max(best, model(**enc).logits.softmax(-1)[0, 0].item())
    return best


SUMMARIES = ["Tom wants a table. Friday is fine.", "Tom wants a table on Friday.", "Anna is angry. Bill argues."]


@pytest.mark.parametrize("granularity", ["turn", "document"])
def test_the_nli_support_of_a_sentence_is_its_best_premise_computed_in_batches(tmp_path, granularity):
    model = tiny_nli(tmp_path / "nli")
    spec = NliJudgeSpec(kind="nli", path=str(model), granularity=granularity, max_tokens=128, batch_size=3)
    build_judge("nli", spec, tmp_path / "judge")
    dialogues = [CALM, HEATED, CALM]
    # the support of each sentence, computed pair by pair, against the judge's batched computation
    direct = [
        [direct_support(tmp_path / "judge", premises(d, granularity), x) for x in sentences(s)]
        for d, s in zip(dialogues, SUMMARIES, strict=True)
    ]
    batched = nli_support(load_facts_judge(tmp_path / "judge").scorer, dialogues, SUMMARIES, granularity)
    assert [len(row) for row in batched] == [2, 1, 2]
    assert all(np.allclose(a, b, rtol=0, atol=ATOL) for a, b in zip(batched, direct, strict=True))


ATOL = tolerance(torch.float32, 32)


def test_the_nli_judge_flags_a_summary_with_an_unsupported_sentence(tmp_path):
    model = tiny_nli(tmp_path / "nli")
    spec = {"kind": "nli", "path": str(model), "max_tokens": 128}
    build_judge("nli", NliJudgeSpec(**spec), tmp_path / "judge")
    dialogues = [CALM] * 3
    support = nli_support(load_facts_judge(tmp_path / "judge").scorer, dialogues, SUMMARIES, "turn")
    # a threshold in the widest gap between the summaries' weakest sentences splits them
    weakest = sorted(min(row) for row in support)
    gap, low = max((b - a, a) for a, b in zip(weakest, weakest[1:], strict=False))
    assert gap > 100 * ATOL, "the tiny model's supports must differ for this test to mean anything"
    threshold = low + gap / 2
    build_judge("nli", NliJudgeSpec(**spec, threshold=threshold), tmp_path / "judge2")
    flags, why = load_facts_judge(tmp_path / "judge2").invented(dialogues, SUMMARIES)
    expected = [min(row) < threshold for row in support]
    assert flags.tolist() == expected and any(expected) and not all(expected)
    for flagged, reason, row, summary in zip(flags, why, support, SUMMARIES, strict=True):
        unsupported = [x for x, v in zip(sentences(summary), row, strict=True) if v < threshold]
        assert (reason != "") == flagged and all(repr(x) in reason for x in unsupported)


def test_an_nli_model_without_the_entailment_label_is_named(tmp_path):
    model = tiny_nli(tmp_path / "nli", {0: "yes", 1: "no"})
    with pytest.raises(RewardModelError, match=r"the facts judge 'nli'.*no label 'entailment'.*entailment_label"):
        build_judge("nli", NliJudgeSpec(kind="nli", path=str(model)), tmp_path / "judge")


def test_an_nli_path_that_is_no_model_folder_is_refused(tmp_path):
    with pytest.raises(SourceError, match=r"judges.nli.path: .* no Hugging Face model folder"):
        build_judge("nli", NliJudgeSpec(kind="nli", path=str(tmp_path)), tmp_path / "judge")


def test_hub_nli_judge_fails_fast_offline_with_advice(tmp_path, monkeypatch, connections):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    spec = NliJudgeSpec(kind="nli", name="MoritzLaurer/DeBERTa-v3-base-mnli-fever-anli")
    with pytest.raises(HubUnreachableError) as err:
        build_judge("nli-facts", spec, tmp_path / "j")
    assert len(connections.to(port)) == 1, "one attempt, and no Hub client with its retries"
    message = str(err.value)
    assert "judges.nli-facts MoritzLaurer/DeBERTa-v3-base-mnli-fever-anli@main" in message and "unreachable" in message
    assert "eval.facts_judge to facts" in message and "judges.nli-facts.path" in message


def test_params_keep_facts_and_toxicity_judges_apart():
    assert parse_params({}).eval.facts_judge == "facts"
    with pytest.raises(ParamsError, match=r"eval.judges names 'facts', a judge of facts"):
        parse_params({"eval": {"judges": ["oracle", "facts"]}})
    with pytest.raises(ParamsError, match=r"eval.facts_judge is 'ngram', which is no judge of facts"):
        parse_params({"eval": {"facts_judge": "ngram"}})
    with pytest.raises(ParamsError, match=r"either by Hub id \(name\) or by folder \(path\)"):
        parse_params({"judges": {"mine": {"kind": "nli"}}})
    with pytest.raises(ParamsError, match=r"either by Hub id \(name\) or by folder \(path\)"):
        parse_params({"judges": {"mine": {"kind": "nli", "name": "a/b", "path": "/x"}}})
    assert parse_params({"eval": {"facts_judge": None}}).eval.facts_judge is None
