import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY, tiny_params
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

from detox.builtin.corpus import generate_corpus, labelled_sentences
from detox.errors import HubUnreachableError, SourceError
from detox.fetch import run_fetch
from detox.hub import ensure_reachable
from detox.params import BuiltinCorpus

ROOT = Path(__file__).resolve().parents[1]


def test_corpus_is_deterministic_for_a_seed_and_changes_with_it():
    cfg = BuiltinCorpus(train_size=200, validation_size=40, test_size=40)
    first, again, other = generate_corpus(cfg, 7), generate_corpus(cfg, 7), generate_corpus(cfg, 8)
    for split in first:
        pd.testing.assert_frame_equal(first[split], again[split])
    assert not first["train"]["dialogue"].equals(other["train"]["dialogue"])


def test_corpus_shape_and_the_toxic_reference_contract():
    cfg = BuiltinCorpus(train_size=2000, validation_size=200, test_size=300)
    splits = generate_corpus(cfg, 42)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "validation": 200, "test": 300}
    train = splits["train"]
    assert list(train.columns)[:4] == ["id", "dialogue", "summary", "topic"]
    assert train["topic"].nunique() >= 20
    assert train["dialogue"].str.match(r"^#Person1#: ").all()
    assert abs(train["heated"].mean() - cfg.heated_share) < 0.05
    everything = pd.concat(splits.values())
    assert everything["dialogue"].is_unique and everything["id"].is_unique

    def toxic(frame):  # a reference repeats an insult when it says "calls <name> a/an <insult>"
        return frame["summary"].str.contains(r" calls \w+ an? ", regex=True)

    heated = train[train["heated"]]
    assert abs(toxic(heated).mean() - cfg.toxic_reference_share) < 0.08
    assert not toxic(train[~train["heated"]]).any()
    for split in ("validation", "test"):  # always neutral there
        assert splits[split]["heated"].any() and not toxic(splits[split]).any()


def test_labelled_sentences_are_balanced_and_deterministic():
    a, b = labelled_sentences(100, 3), labelled_sentences(100, 3)
    pd.testing.assert_frame_equal(a, b)
    assert a["label"].sum() == 50


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    root = tmp_path_factory.mktemp("fetch")
    manifest = run_fetch(tiny_params(), root / "raw", root / "policy", root / "reward")
    return root, manifest


def test_builtin_fetch_writes_splits_models_and_manifest(fetched):
    root, manifest = fetched
    for split, rows in (("train", 96), ("validation", 24), ("test", 24)):
        assert len(pd.read_parquet(root / "raw" / f"{split}.parquet")) == rows
        assert manifest["data"]["splits"][split]["rows"] == rows
    on_disk = json.loads((root / "raw" / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert manifest["reward"]["training"]["heldout_examples"] == 20
    assert not list(root.glob(".*")), "scratch folders must be gone after a successful fetch"


def test_fetched_models_load_with_auto_classes(fetched):
    root, _ = fetched
    tokenizer = AutoTokenizer.from_pretrained(root / "policy")
    policy = AutoModelForSeq2SeqLM.from_pretrained(root / "policy")
    assert policy.config.model_type == "t5" and policy.config.feed_forward_proj == "gated-gelu"
    ids = tokenizer("#Person1#: Hello.", return_tensors="pt")["input_ids"]
    assert ids[0, -1].item() == tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "#Person1#: Hello."
    out = policy.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1

    reward = AutoModelForSequenceClassification.from_pretrained(root / "reward")
    assert reward.config.model_type == "roberta"
    assert reward.config.id2label == {0: "nothate", 1: "hate"}
    reward_tokenizer = AutoTokenizer.from_pretrained(root / "reward")
    logits = reward(**reward_tokenizer(["You are an idiot."], return_tensors="pt")).logits
    assert logits.shape == (1, 2)


def test_same_seed_gives_identical_fetch_outputs(fetched, tmp_path):
    root, manifest = fetched
    again = run_fetch(tiny_params(), tmp_path / "raw", tmp_path / "policy", tmp_path / "reward")
    assert again == manifest  # includes content hashes of the splits and of both model folders


def test_failed_fetch_keeps_previous_outputs(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "keep.txt").write_text("previous run")
    params = tiny_params(**{"policy.source": "local", "policy.local.path": str(tmp_path / "nowhere")})
    with pytest.raises(SourceError, match="not a Hugging Face model folder"):
        run_fetch(params, raw, tmp_path / "policy", tmp_path / "reward")
    assert [p.name for p in raw.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_local_sources(fetched, tmp_path):
    root, _ = fetched
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "validation", "test"):
        frame = pd.read_parquet(root / "raw" / f"{split}.parquet").drop(columns="heated")
        frame.to_csv(data_dir / f"{split}.csv", index=False)
    params = tiny_params(**{
        "data.source": "local", "data.local.path": str(data_dir),
        "policy.source": "local", "policy.local.path": str(root / "policy"),
        "reward.source": "local", "reward.local.path": str(root / "reward"),
    })
    manifest = run_fetch(params, tmp_path / "raw", tmp_path / "policy", tmp_path / "reward")
    assert manifest["data"]["source"] == "local" and manifest["data"]["splits"]["test"]["rows"] == 24
    assert manifest["policy"]["sha256"] == json.loads((root / "raw" / "manifest.json").read_text())["policy"]["sha256"]
    assert list(pd.read_parquet(tmp_path / "raw" / "test.parquet").columns) == ["id", "dialogue", "summary", "topic"]


def test_local_single_file_needs_a_split_column(tmp_path):
    path = tmp_path / "all.jsonl"
    path.write_text('{"id": "a", "dialogue": "#Person1#: Hi.", "summary": "Hi.", "topic": "x"}\n')
    params = tiny_params(**{"data.source": "local", "data.local.path": str(path)})
    with pytest.raises(SourceError, match="needs a 'split' column"):
        run_fetch(params, tmp_path / "raw", tmp_path / "policy", tmp_path / "reward")


def test_reward_finetune_on_a_labelled_file(fetched, tmp_path):
    root, _ = fetched
    labelled = tmp_path / "labels.csv"
    frame = labelled_sentences(40, 5)
    frame["label"] = frame["label"].map({0: "nothate", 1: "hate"})  # names are accepted as well as ids
    frame.to_csv(labelled, index=False)
    params = tiny_params(**{"reward.source": "local", "reward.local.path": str(root / "reward"),
                            "reward.finetune.path": str(labelled)})
    manifest = run_fetch(params, tmp_path / "raw", tmp_path / "policy", tmp_path / "reward")
    assert manifest["reward"]["finetune"]["train_examples"] == 36
    assert manifest["reward"]["sha256"] != json.loads((root / "raw" / "manifest.json").read_text())["reward"]["sha256"]

    frame.loc[3, "label"] = "toxic"
    frame.to_csv(labelled, index=False)
    with pytest.raises(SourceError, match=r"row 3 has label 'toxic'; allowed: \['hate', 'nothate'\]"):
        run_fetch(params, tmp_path / "raw2", tmp_path / "policy2", tmp_path / "reward2")


def test_hub_unreachable_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(HubUnreachableError) as err:
        ensure_reachable("dataset knkarthick/dialogsum@main")
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "unreachable" in message and "'builtin'" in message and "local.path" in message


def test_fetch_stage_from_hub_offline_exits_cleanly(tmp_path):
    params = {key: value for key, value in TINY.items()}
    params["data"] = {**TINY["data"], "source": "hub"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "fetch.py")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert time.monotonic() - started < 60
    assert proc.returncode == 1
    assert "the Hugging Face Hub at http://127.0.0.1:9 is unreachable" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.parquet"))


def test_killed_fetch_leaves_no_partial_outputs(tmp_path):
    import signal

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(dict(TINY)))
    proc = subprocess.Popen([sys.executable, str(ROOT / "stages" / "fetch.py")], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "data").glob(".raw.*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((tmp_path / "data").glob(".raw.*")), "the stage never started writing"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    leftovers = [p.name for p in tmp_path.rglob(".*") if p.name.startswith((".raw.", ".policy.", ".reward."))]
    assert leftovers == []
    assert not (tmp_path / "data" / "raw").exists() and not (tmp_path / "models" / "policy").exists()
