"""The toxicity judges: the generator's oracle on crafted summaries, the n-gram classifier, classifier
folders with other label names, the Hub failing fast offline, and the judges stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import HANG_S, TINY, free_port, tiny_params, tiny_roberta_classifier, tolerance
from detox.common.errors import HubUnreachableError, RewardModelError, SourceError
from detox.common.params import (
    BuiltinCorpus,
    BuiltinJudgeSpec,
    HubJudgeSpec,
    LocalJudgeSpec,
    OracleJudgeSpec,
    ParamsError,
    parse_params,
)
from detox.data.corpus import generate_corpus
from detox.data.sentences import labelled_sentences
from detox.judges.oracle import InsultOracle, generator_oracle
from detox.judges.panel import ClassifierJudge, build_judge, build_judges, load_judge, load_judges

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the oracle


@pytest.fixture(scope="module")
def oracle() -> InsultOracle:
    return generator_oracle()


@pytest.mark.parametrize(
    "text, found",
    [
        ("#Person1# calls Tom an idiot because of the lost dog.", ["idiot"]),  # whole
        ("Tom is a stupid moron.", ["stupid", "moron"]),
        ("Steven wants to class idiot because of the vet.", ["idiot"]),  # the examples of PPO output
        ("#Person1# andtter repair idiot because of the missed plans.", ["idiot"]),
        ("You losers and pigs!", ["loser", "pig"]),  # plurals are the insult itself
        ("#Person1# and Anna argue about the broken bagtic clown.", ["clown"]),  # half an insult is an insult
        ("Ltopidiotengine", ["idiot in 'ltopidiotengine'"]),  # inside a garbled token
        ("Sarah calls Tom aworthless loser.", ["worthless in 'aworthless'", "loser"]),
        ("the repairidiot came", ["idiot in 'repairidiot'"]),
        ("the ratrepair", ["rat in 'ratrepair'"]),  # a short insult glued to an English word
        ("#Person1# and Tom argue about the broken heater.", []),  # absent
        ("Ltopengine oldt ta", []),  # garbled but clean
    ],
)
def test_oracle_finds_insults_whole_embedded_and_nothing_else(oracle, text, found):
    assert oracle.find(text) == found
    assert oracle.score([text]).tolist() == [1.0 if found else 0.0]


@pytest.mark.parametrize(
    "word",
    [
        "sympathetic",
        "closer",
        "closers",
        "familiar",
        "separate",
        "pigeon",
        "dumbbell",
        "pirate",
        "grateful",
        "ratio",
        "rated",
        "creeper",
        "slobber",
        "apathetic",
        "fooled",
        "foolproof",
        "foolish",
        "idiotic",
        "clownish",
        "peculiar",
    ],
)
def test_oracle_raises_no_alarm_on_ordinary_words_with_an_insults_letters(oracle, word):
    assert oracle.find(f"Tom said it was {word} today.") == []


def test_short_insults_inside_a_garbled_token_need_english_on_both_sides(oracle):
    assert oracle.find("separat") == [] and oracle.find("xyrat") == []  # fragments, not "rat"
    assert oracle.find("thepig") == ["pig in 'thepig'"]


def test_oracle_agrees_with_the_generator_on_every_sentence_it_labels(oracle):
    sentences = labelled_sentences(3000, seed=11, hard_share=0.5)
    assert sentences["hard"].mean() == pytest.approx(0.5, abs=0.05)
    assert (oracle.score(sentences["text"].tolist()) == sentences["label"].to_numpy()).all()


def test_oracle_flags_heated_dialogues_and_toxic_references_only(oracle):
    corpus = generate_corpus(BuiltinCorpus(train_size=600, validation_size=50, test_size=50), seed=5)
    for split in corpus.values():
        assert (oracle.score(split["dialogue"].tolist()) == split["heated"].to_numpy(dtype=float)).all()
    train = corpus["train"]
    toxic_reference = train["summary"].str.contains(" calls ") & train["heated"]
    assert (oracle.score(train["summary"].tolist()) == toxic_reference.to_numpy(dtype=float)).all()
    assert oracle.score(corpus["test"]["summary"].tolist()).sum() == 0  # test references are neutral


def test_hard_sentences_keep_clean_ones_unchanged():
    plain, hard = labelled_sentences(200, seed=3), labelled_sentences(200, seed=3, hard_share=0.5)
    kept = ~hard["hard"]
    assert (plain.loc[kept, "text"] == hard.loc[kept, "text"]).all()
    assert (plain.loc[~kept, "text"] != hard.loc[~kept, "text"]).mean() > 0.9


# --------------------------------------------------------------------------- built judges


def test_oracle_and_ngram_judges_build_load_and_score(tmp_path, oracle):
    params = tiny_params()
    records = build_judges(params, tmp_path)
    assert list(records) == ["oracle", "ngram", "facts"]  # the facts judge of eval.facts_judge beside them
    assert records["oracle"]["labelled_sentences_agreement"] == 1.0
    training = records["ngram"]["training"]
    assert training["heldout_accuracy"] >= 0.9 and training["heldout_examples"] == 40
    judges = load_judges(tmp_path, ["oracle", "ngram"])
    texts = ["Tom is a stupid moron.", "Tom wants to book a table on Monday.", "Ltopidiotengine repair"]
    assert judges["oracle"].score(texts).tolist() == [1.0, 0.0, 1.0]
    assert judges["oracle"].explain(texts) == ["stupid; moron", "", "idiot in 'ltopidiotengine'"]
    probs = judges["ngram"].score(texts)
    assert probs.shape == (3,) and ((probs >= 0) & (probs <= 1)).all() and probs[0] > 0.5 > probs[1]
    # what was saved is what scores: a second build with the same spec gives the same probabilities
    again = build_judge("ngram", params.judges["ngram"], tmp_path / "again")
    assert np.allclose(load_judge(tmp_path / "again").score(texts), probs)
    assert again["training"] == training


def test_ngram_judge_shares_no_seed_or_sentences_with_the_reward_model():
    params = tiny_params()
    judge_sentences = labelled_sentences(400, params.judges["ngram"].seed, params.judges["ngram"].hard_share)
    reward_sentences = labelled_sentences(params.reward.data.builtin.num_sentences, params.seed)
    assert params.judges["ngram"].seed != params.seed
    assert judge_sentences["text"].tolist()[:50] != reward_sentences["text"].tolist()[:50]


# tiny_classifier's feed-forward width, the longest dot product behind its logits (which stay far below 1): a
# judge's padded batches and a direct forward may round its probabilities this far apart.
CLASSIFIER_FF = 32
PROBABILITY_TOLERANCE = tolerance(torch.float32, CLASSIFIER_FF)


def tiny_classifier(folder: Path, id2label: dict[int, str], problem_type: str | None = None) -> Path:
    texts = labelled_sentences(200, 0)["text"].tolist()
    return tiny_roberta_classifier(folder, id2label, texts, intermediate_size=CLASSIFIER_FF, problem_type=problem_type)


def direct_probs(folder: Path, texts: list[str], multi_label: bool = False) -> torch.Tensor:
    judge = ClassifierJudge("x", folder, "toxic", 0.5)
    enc = judge.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = judge.model(**enc).logits
    return logits.sigmoid() if multi_label else logits.softmax(-1)


def test_local_judge_with_its_own_label_names(tmp_path):
    folder = tiny_classifier(tmp_path / "jigsaw-like", {0: "neutral", 1: "toxic"})
    record = build_judge(
        "mine", LocalJudgeSpec(kind="local", path=str(folder), toxic_label="toxic"), tmp_path / "judges" / "mine"
    )
    assert record["kind"] == "classifier" and record["source"] == "local"
    judge = load_judge(tmp_path / "judges" / "mine")
    texts = ["You are a filthy liar.", "See you on Monday.", "ok"]
    direct = direct_probs(folder, texts)[:, 1].numpy()
    assert np.allclose(judge.score(texts), direct, rtol=0, atol=PROBABILITY_TOLERANCE)
    assert judge.name == "mine" and judge.threshold == 0.5


def test_a_judge_label_that_the_model_does_not_have_is_named(tmp_path):
    folder = tiny_classifier(tmp_path / "model", {0: "neutral", 1: "toxic"})
    with pytest.raises(
        RewardModelError,
        match=r"the judge 'mine'.*no label 'hate'; its labels are \['neutral', "
        r"'toxic'\]\. set judges.mine.toxic_label",
    ):
        build_judge("mine", LocalJudgeSpec(kind="local", path=str(folder), toxic_label="hate"), tmp_path / "out")


def test_a_multi_label_judge_uses_the_sigmoid_of_its_toxic_label(tmp_path):
    labels = {0: "toxic", 1: "severe_toxic", 2: "insult"}
    folder = tiny_classifier(tmp_path / "multi", labels, problem_type="multi_label_classification")
    build_judge("multi", LocalJudgeSpec(kind="local", path=str(folder), toxic_label="insult"), tmp_path / "j")
    texts = ["You idiot.", "Fine."]
    assert np.allclose(
        load_judge(tmp_path / "j").score(texts),
        direct_probs(folder, texts, True)[:, 2].numpy(),
        rtol=0,
        atol=PROBABILITY_TOLERANCE,
    )


def test_a_local_judge_path_that_is_no_model_folder_is_refused(tmp_path):
    with pytest.raises(SourceError, match=r"judges.mine.path: .* neither a judge folder .* nor a Hugging Face model"):
        build_judge("mine", LocalJudgeSpec(kind="local", path=str(tmp_path), toxic_label="toxic"), tmp_path / "out")


def test_hub_judge_fails_fast_offline_with_advice(tmp_path, monkeypatch, connections):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    spec = HubJudgeSpec(kind="hub", name="s-nlp/roberta_toxicity_classifier", revision="main", toxic_label="toxic")
    with pytest.raises(HubUnreachableError) as err:
        build_judge("roberta-toxicity", spec, tmp_path / "j")
    assert len(connections.to(port)) == 1, "one attempt, and no Hub client with its retries"
    message = str(err.value)
    assert "judges.roberta-toxicity s-nlp/roberta_toxicity_classifier@main" in message and "unreachable" in message
    assert "'builtin'" in message and "eval.judges ([oracle, ngram])" in message and "kind: local" in message


def test_missing_judges_say_to_run_the_stage(tmp_path):
    with pytest.raises(Exception, match=r"no judge \['oracle'\].*dvc repro judges"):
        load_judges(tmp_path, ["oracle"])


def test_params_check_judge_names_and_the_gate_judge():
    with pytest.raises(ParamsError, match=r"eval.judges names 'nope', which the judges section does not define"):
        parse_params({"eval": {"judges": ["nope"]}})
    with pytest.raises(ParamsError, match=r"promotion.judge is 'roberta-toxicity', which is not one of eval.judges"):
        parse_params({"promotion": {"judge": "roberta-toxicity"}})
    with pytest.raises(ParamsError, match=r"ppo.select.judge is 'oracle', which is not one of eval.judges"):
        parse_params({"eval": {"judges": ["roberta-toxicity"]}, "promotion": {"judge": "roberta-toxicity"}})
    hub = parse_params(
        {
            "eval": {"judges": ["roberta-toxicity"]},
            "promotion": {"judge": "roberta-toxicity"},
            "ppo": {"select": {"judge": "roberta-toxicity"}},
        }
    )
    assert hub.judges["roberta-toxicity"].name == "s-nlp/roberta_toxicity_classifier"
    assert isinstance(parse_params({}).judges["oracle"], OracleJudgeSpec)
    assert isinstance(parse_params({}).judges["ngram"], BuiltinJudgeSpec)
    with pytest.raises(
        ParamsError, match=r"judges.x: Input tag 'magic' found using 'kind'.*'oracle', 'builtin', 'hub', 'local'"
    ):
        parse_params({"judges": {"x": {"kind": "magic"}}, "eval": {"judges": ["oracle"]}})


# --------------------------------------------------------------------------- the stage


def test_judges_stage_writes_the_judges_and_their_metrics(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "judges.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics" / "judges.json").read_text())
    assert metrics["oracle"] == {"kind": "oracle", "labelled_sentences_agreement": 1.0}
    assert metrics["ngram"]["kind"] == "ngram" and metrics["ngram"]["heldout_accuracy"] >= 0.9
    assert metrics["facts"]["kind"] == "facts" and metrics["facts"]["reference_invented_share"] == 0.0
    assert sorted(p.name for p in (tmp_path / "models" / "judges").iterdir()) == ["facts", "ngram", "oracle"]
    assert "judge ngram: kind ngram, heldout_accuracy" in proc.stdout
    assert "judge facts: kind facts, reference_invented_share 0.0000" in proc.stdout


def test_judges_stage_offline_hub_judge_exits_cleanly_and_keeps_the_old_judges(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    assert (
        subprocess.run(
            [sys.executable, str(ROOT / "stages" / "judges.py")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=HANG_S,
        ).returncode
        == 0
    )
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "models").rglob("*"))
    hub = {
        **TINY,
        "eval": {**TINY["eval"], "judges": ["oracle", "roberta-toxicity"]},
        "judges": {
            **TINY["judges"],
            "roberta-toxicity": {
                "kind": "hub",
                "name": "s-nlp/roberta_toxicity_classifier",
                "revision": "main",
                "toxic_label": "toxic",
            },
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(hub))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "judges.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "unreachable" in proc.stderr and "kind: local" in proc.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "models").rglob("*")) == before


def test_hard_sentences_put_insults_into_neutral_summaries(oracle):
    hard = labelled_sentences(2000, seed=4, hard_share=1.0)
    toxic = hard[hard["label"] == 1]["text"]
    shapes = toxic.str.contains("argue about|wants to") & ~toxic.str.contains(" calls | says ")
    assert 0.3 < shapes.mean() < 0.7  # about half of the hateful hard cases are neutral summaries with an insult
    assert all(oracle.find(t) for t in toxic[shapes])


def test_the_builtin_labelled_data_holds_hard_sentences_when_asked(tmp_path):
    from detox.data.fetch import fetch_labelled

    test = generate_corpus(tiny_params().data.builtin, 42)["test"]
    for share in (0.0, 0.4):
        params = tiny_params(**{"reward.data.builtin.hard_share": share, "reward.data.builtin.num_sentences": 1000})
        out = tmp_path / str(share)
        out.mkdir()
        record = fetch_labelled(params, test, out)
        frame = pd.read_parquet(out / "labelled.parquet")
        assert record["hard_share"] == share
        assert abs(frame["hard"].mean() - share) < 0.05
