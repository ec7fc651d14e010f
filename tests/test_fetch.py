import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from transformers import AutoConfig, AutoTokenizer

from conftest import HANG_S, TINY, free_port, run_watched, tiny_params
from detox.common.errors import HubUnreachableError, SourceError
from detox.common.io import sha256_tree
from detox.common.params import BuiltinCorpus
from detox.data.corpus import generate_corpus
from detox.data.fetch import run_fetch
from detox.data.hub import ensure_reachable
from detox.data.sentences import labelled_sentences

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


def fetch(params, root):
    return run_fetch(params, root / "raw", root / "labelled", root / "base")


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    root = tmp_path_factory.mktemp("fetch")
    return root, fetch(tiny_params(), root)


def test_builtin_fetch_writes_splits_labelled_data_untrained_models_and_manifest(fetched):
    root, manifest = fetched
    for split, rows in (("train", 96), ("validation", 24), ("test", 24)):
        assert len(pd.read_parquet(root / "raw" / f"{split}.parquet")) == rows
        assert manifest["data"]["splits"][split]["rows"] == rows
    on_disk = {
        **json.loads((root / "raw" / "manifest.json").read_text()),
        **json.loads((root / "labelled" / "manifest.json").read_text()),
        **json.loads((root / "base" / "manifest.json").read_text()),
    }
    assert on_disk == json.loads(json.dumps(manifest))
    labelled = pd.read_parquet(root / "labelled" / "labelled.parquet")
    assert set(labelled["label"]) == {"hate", "nothate"} and len(labelled) == manifest["labelled"]["rows"]
    assert not labelled["text"].isin(set(pd.read_parquet(root / "raw" / "test.parquet")["summary"])).any()
    assert manifest["labelled"]["rows"] + manifest["labelled"]["dropped_test_overlap"] == 200
    # fetch trains nothing: configurations and tokenizers only
    for model in ("policy", "reward"):
        files = {p.name for p in (root / "base" / model).iterdir()}
        assert "config.json" in files and "tokenizer.json" in files
        assert not files & {"model.safetensors", "pytorch_model.bin"}, files
    assert not list(root.glob(".*")), "scratch folders must be gone after a successful fetch"


def test_fetched_configurations_and_tokenizers_load_with_auto_classes(fetched):
    root, _ = fetched
    tokenizer = AutoTokenizer.from_pretrained(root / "base" / "policy")
    config = AutoConfig.from_pretrained(root / "base" / "policy")
    assert config.model_type == "t5" and config.feed_forward_proj == "gated-gelu_pytorch_tanh"
    assert config.dense_act_fn == "gelu_pytorch_tanh" and config.is_gated_act  # flan-t5's GELU, one fused kernel
    assert config.dropout_rate == tiny_params().policy.builtin.dropout_rate == 0.0  # sft trains without dropout
    ids = tokenizer("#Person1#: Hello.", return_tensors="pt")["input_ids"]
    assert ids[0, -1].item() == tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "#Person1#: Hello."
    reward = AutoConfig.from_pretrained(root / "base" / "reward")
    assert reward.model_type == "roberta" and reward.id2label == {0: "nothate", 1: "hate"}
    assert AutoTokenizer.from_pretrained(root / "base" / "reward")("You are an idiot.")["input_ids"]


def test_same_seed_gives_identical_fetch_outputs(fetched, tmp_path):
    root, manifest = fetched
    assert fetch(tiny_params(), tmp_path) == manifest  # includes content hashes of the data and both folders


def test_other_labelled_data_leaves_the_splits_and_the_policy_folder_byte_identical(fetched, tmp_path):
    root, manifest = fetched
    other = fetch(tiny_params(**{"reward.data.builtin.hard_share": 0.5}), tmp_path)
    assert other["labelled"]["sha256"] != manifest["labelled"]["sha256"]
    assert sha256_tree(tmp_path / "raw") == sha256_tree(root / "raw")  # sft's inputs: it is not rerun
    assert sha256_tree(tmp_path / "base" / "policy") == sha256_tree(root / "base" / "policy")


def test_failed_fetch_keeps_previous_outputs(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "keep.txt").write_text("previous run")
    params = tiny_params(**{"policy.source": "local", "policy.local.path": str(tmp_path / "nowhere")})
    with pytest.raises(SourceError, match="not a Hugging Face model folder"):
        fetch(params, tmp_path)
    assert [p.name for p in raw.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_local_sources(fetched, tmp_path):
    root, _ = fetched
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "validation", "test"):
        frame = pd.read_parquet(root / "raw" / f"{split}.parquet").drop(columns="heated")
        frame.to_csv(data_dir / f"{split}.csv", index=False)
    labelled = labelled_sentences(60, 5)  # integer ids are accepted as well as names
    labelled.drop(columns="hard").to_csv(tmp_path / "labels.csv", index=False)
    policy = saved_policy(root, tmp_path / "policy")
    reward = saved_reward(root, tmp_path / "reward")
    params = tiny_params(
        **{
            "data.source": "local",
            "data.local.path": str(data_dir),
            "policy.source": "local",
            "policy.local.path": str(policy),
            "reward.source": "local",
            "reward.local.path": str(reward),
            "reward.data.source": "local",
            "reward.data.local.path": str(tmp_path / "labels.csv"),
        }
    )
    manifest = fetch(params, tmp_path / "out")
    assert manifest["data"]["source"] == "local" and manifest["data"]["splits"]["test"]["rows"] == 24
    assert manifest["policy"]["sha256"] == sha256_tree(policy) and manifest["reward"]["sha256"] == sha256_tree(reward)
    assert list(pd.read_parquet(tmp_path / "out" / "raw" / "test.parquet").columns) == [
        "id",
        "dialogue",
        "summary",
        "topic",
    ]
    out = pd.read_parquet(tmp_path / "out" / "labelled" / "labelled.parquet")
    assert list(out.columns) == ["text", "label"] and set(out["label"]) == {"0", "1"} and len(out) == 60


def test_local_labelled_file_needs_text_and_label_columns(tmp_path):
    pd.DataFrame({"sentence": ["a"], "label": [1]}).to_csv(tmp_path / "labels.csv", index=False)
    params = tiny_params(**{"reward.data.source": "local", "reward.data.local.path": str(tmp_path / "labels.csv")})
    with pytest.raises(SourceError, match=r"no column\(s\) \['text'\]; it has \['sentence', 'label'\]"):
        fetch(params, tmp_path)
    params = tiny_params(**{"reward.data.source": "local", "reward.data.local.path": str(tmp_path / "no.csv")})
    with pytest.raises(SourceError, match="is not a file"):
        fetch(params, tmp_path)


def test_local_single_file_needs_a_split_column(tmp_path):
    path = tmp_path / "all.jsonl"
    path.write_text('{"id": "a", "dialogue": "#Person1#: Hi.", "summary": "Hi.", "topic": "x"}\n')
    params = tiny_params(**{"data.source": "local", "data.local.path": str(path)})
    with pytest.raises(SourceError, match="needs a 'split' column"):
        fetch(params, tmp_path)


def test_labelled_hub_dataset_fails_fast_offline(monkeypatch, tmp_path, connections):
    port = free_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    params = tiny_params(**{"reward.data.source": "hub", "reward.data.hub.name": "someone/toxic-sentences"})
    with pytest.raises(HubUnreachableError, match="someone/toxic-sentences@main.*reward.data.local.path"):
        fetch(params, tmp_path)
    assert len(connections.to(port)) == 1, "one attempt, and no Hub client with its retries"
    assert not (tmp_path / "raw").exists()


def test_hub_unreachable_fails_fast_with_advice(monkeypatch, connections):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubUnreachableError) as err:
        ensure_reachable("dataset knkarthick/dialogsum@main")
    assert len(connections.to(port)) == 1, "one attempt, no retries"
    message = str(err.value)
    assert "unreachable" in message and "'builtin'" in message and "local.path" in message


def test_fetch_stage_from_hub_offline_exits_cleanly(tmp_path):
    params = {key: value for key, value in TINY.items()}
    params["data"] = {**TINY["data"], "source": "hub"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    port = free_port()
    proc, seen = run_watched(
        ROOT / "stages" / "fetch.py", tmp_path, {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}"}, watch=[]
    )
    assert proc.returncode == 1
    assert seen["connect"].count(["127.0.0.1", port]) == 1, "one attempt, and no Hub client with its retries"
    assert f"the Hugging Face Hub at http://127.0.0.1:{port} is unreachable" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.parquet"))


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_killed_training_stage_leaves_no_partial_outputs(tmp_path, signum, status):
    """A scheduler's SIGTERM and a Ctrl-C (SIGINT) alike: one line, exit 128 + the signal, nothing half-written."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**TINY, "sft": {**TINY["sft"], "epochs": 50}}))
    run_fetch(tiny_params(), tmp_path / "data" / "raw", tmp_path / "data" / "labelled", tmp_path / "models" / "base")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "validation.json").write_text('{"success": true}')  # as the validate stage leaves it
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "stages" / "sft.py")],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + HANG_S  # however long the imports take on a busy machine
    while not list((tmp_path / "models").glob(".policy.*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((tmp_path / "models").glob(".policy.*")), f"the stage never started writing (exit code {proc.poll()})"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=HANG_S)
    assert proc.returncode == status, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        f"error: stopped by {signal.Signals(signum).name}; nothing was half-written and the previous outputs are as "
        "they were: run the stage again to finish it"
    )
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert [p.name for p in tmp_path.rglob(".policy.*")] == []
    assert not (tmp_path / "models" / "policy").exists() and not (tmp_path / "metrics" / "sft.json").exists()


def test_a_stage_after_validate_refuses_data_that_failed_validation(tmp_path):
    fetched = tmp_path / "fetched"
    run_fetch(tiny_params(), fetched / "data" / "raw", fetched / "data" / "labelled", fetched / "models" / "base")
    failure = "test: expect_column_values_to_be_unique(id) failed: 2 unexpected of 24 rows; expected unique values"
    refused = "says the data failed validation, so this stage does not run on it"
    # (stage, its validation metrics file, what the file holds: None for a missing file)
    cases = [
        ("sft", "validation.json", failure),
        ("reward", "validation_labelled.json", failure),
        ("baseline", "validation.json", failure),
        ("ppo", "validation.json", failure),
        ("evaluate", "validation.json", failure),
        ("ppo", "validation.json", None),
    ]
    runs = []
    for number, (stage, metrics, failed) in enumerate(cases):  # a project each, so the stages run side by side
        project = tmp_path / f"{number}-{stage}"
        (project / "metrics").mkdir(parents=True)
        (project / "models").mkdir()
        (project / "data").symlink_to(fetched / "data")
        (project / "models" / "base").symlink_to(fetched / "models" / "base")
        (project / "params.yaml").write_text(yaml.safe_dump(dict(TINY)))
        for name in ("validation.json", "validation_labelled.json"):
            (project / "metrics" / name).write_text('{"success": true}')
        if failed is None:
            (project / "metrics" / metrics).unlink()
        else:
            (project / "metrics" / metrics).write_text(json.dumps({"success": False, "failures": [failed]}))
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "stages" / f"{stage}.py")],
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs.append((project, stage, metrics, failed, proc))
    for project, stage, metrics, failed, proc in runs:
        stderr = proc.communicate(timeout=HANG_S)[1]
        assert proc.returncode == 1, (stage, stderr[-2000:])
        expected = (
            f"error: metrics/{metrics} {refused}"
            if failed
            else f"error: {stage} cannot start, its inputs are missing: metrics/{metrics} (made by validate); "
        )
        assert expected in stderr and (failed is None or failed in stderr), (stage, stderr[-2000:])
        assert "Traceback" not in stderr
        assert not (project / "models" / "policy").exists() and not (project / "models" / "reward").exists()
        assert not (project / "mlflow.db").exists()


# --------------------------------------------------------------------------- bad model folders and data files


def saved_policy(fetched_root: Path, folder: Path) -> Path:
    """A policy folder with weights (random), its config and tokenizer, like a local checkpoint."""
    from transformers import AutoModelForSeq2SeqLM

    base = fetched_root / "base" / "policy"
    AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(base)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def saved_reward(fetched_root: Path, folder: Path) -> Path:
    from transformers import AutoModelForSequenceClassification

    base = fetched_root / "base" / "reward"
    AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(base)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def fetch_local_policy(folder: Path, tmp_path: Path) -> str:
    params = tiny_params(**{"policy.source": "local", "policy.local.path": str(folder)})
    (tmp_path / "raw").mkdir(parents=True, exist_ok=True)
    (tmp_path / "raw" / "keep.txt").write_text("previous run")
    with pytest.raises(SourceError) as err:
        fetch(params, tmp_path)
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["keep.txt"], "nothing may be replaced"
    return str(err.value)


def test_a_local_policy_folder_that_would_load_only_half_stops_fetch(fetched, tmp_path):
    import shutil

    root, _ = fetched
    good = saved_policy(root, tmp_path / "good")
    assert fetch(tiny_params(**{"policy.source": "local", "policy.local.path": str(good)}), tmp_path / "ok")

    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(good, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "spiece.model"):
        (no_tokenizer / name).unlink(missing_ok=True)
    assert f"policy.local: {no_tokenizer} has no tokenizer files" in fetch_local_policy(no_tokenizer, tmp_path / "a")

    other_tokenizer = tmp_path / "other_tokenizer"
    shutil.copytree(good, other_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(root / "base" / "reward" / name, other_tokenizer / name)
    message = fetch_local_policy(other_tokenizer, tmp_path / "b")
    assert "tokens but config.json's vocab_size is" in message and "do not belong together" in message

    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    message = fetch_local_policy(truncated, tmp_path / "c")
    assert f"the weights in {truncated} cannot be read" in message

    causal = tmp_path / "causal"
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=400)).save_pretrained(causal)
    AutoTokenizer.from_pretrained(root / "base" / "policy").save_pretrained(causal)
    message = fetch_local_policy(causal, tmp_path / "d")
    assert "describes GPT2LMHeadModel, but this needs a sequence-to-sequence model" in message


def test_a_masked_lm_given_as_the_reward_model_stops_fetch(fetched, tmp_path):
    from transformers import RobertaForMaskedLM

    root, _ = fetched
    folder = tmp_path / "mlm"
    RobertaForMaskedLM(AutoConfig.from_pretrained(root / "base" / "reward")).save_pretrained(folder)
    AutoTokenizer.from_pretrained(root / "base" / "reward").save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["RobertaForMaskedLM"]
    params = tiny_params(**{"reward.source": "local", "reward.local.path": str(folder)})
    with pytest.raises(
        SourceError,
        match="describes RobertaForMaskedLM, but this needs a sequence classifier.*"
        "its classification head would be random",
    ):
        fetch(params, tmp_path / "out")


def test_a_csv_export_of_the_data_keeps_its_types(fetched, tmp_path):
    root, _ = fetched
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "validation", "test"):  # heated included: a csv holds it as text
        pd.read_parquet(root / "raw" / f"{split}.parquet").to_csv(data_dir / f"{split}.csv", index=False)
    fetch(tiny_params(**{"data.source": "local", "data.local.path": str(data_dir)}), tmp_path / "out")
    again = pd.read_parquet(tmp_path / "out" / "raw" / "test.parquet")
    assert again["heated"].dtype == bool
    pd.testing.assert_series_equal(again["heated"], pd.read_parquet(root / "raw" / "test.parquet")["heated"])
    frame = pd.read_csv(data_dir / "test.csv", dtype=str)
    frame.loc[0, "heated"] = "yes"
    frame.to_csv(data_dir / "test.csv", index=False)
    with pytest.raises(SourceError, match=r"test.csv: column 'heated', row 1: 'yes' is not a boolean"):
        fetch(tiny_params(**{"data.source": "local", "data.local.path": str(data_dir)}), tmp_path / "again")


def test_a_file_that_is_not_utf8_names_the_file_and_the_row(fetched, tmp_path):
    root, _ = fetched
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "validation", "test"):
        pd.read_parquet(root / "raw" / f"{split}.parquet").to_csv(data_dir / f"{split}.csv", index=False)
    frame = pd.read_parquet(root / "raw" / "validation.parquet")
    frame.loc[2, "summary"] = "They meet at the café."
    (data_dir / "validation.csv").write_bytes(frame.to_csv(index=False).encode("latin-1"))
    params = tiny_params(**{"data.source": "local", "data.local.path": str(data_dir)})
    with pytest.raises(
        SourceError,
        match=r"validation.csv: not UTF-8 text: byte 0xe9 at line \d+, data row 3; "
        "save the file as UTF-8",
    ):
        fetch(params, tmp_path / "out")


# --------------------------------------------------------------------------- required columns, texts and labels


def split_files(fetched_root: Path, folder: Path, suffix: str = ".csv") -> Path:
    """The fetched splits saved as local data files (csv by default), as a user would give them."""
    folder.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        frame = pd.read_parquet(fetched_root / "raw" / f"{split}.parquet")
        frame.to_csv(folder / f"{split}.csv", index=False) if suffix == ".csv" else frame.to_parquet(
            folder / f"{split}{suffix}", index=False
        )
    return folder


def fetch_fails(params, root: Path) -> str:
    """The message of a fetch that must fail before it replaces anything (a previous output stays)."""
    (root / "raw").mkdir(parents=True, exist_ok=True)
    (root / "raw" / "keep.txt").write_text("previous run")
    with pytest.raises(SourceError) as err:
        fetch(params, root)
    assert [p.name for p in (root / "raw").iterdir()] == ["keep.txt"], "nothing may be replaced"
    assert sorted(p.name for p in root.iterdir()) == ["raw"], "no scratch folder may be left"
    return str(err.value)


def test_local_data_without_a_required_column_stops_fetch_naming_the_file(fetched, tmp_path):
    root, _ = fetched
    data = split_files(root, tmp_path / "data")
    frame = pd.read_csv(data / "train.csv").drop(columns="summary")
    frame.to_csv(data / "train.csv", index=False)
    message = fetch_fails(tiny_params(**{"data.source": "local", "data.local.path": str(data)}), tmp_path / "out")
    assert message == (
        f"{data / 'train.csv'}: no column(s) ['summary']; it has {list(frame.columns)}. Dialogue data "
        "needs the columns id, dialogue, summary, topic (DialogSum's)"
    )


def test_an_empty_dialogue_stops_fetch_with_its_row(fetched, tmp_path):
    root, _ = fetched
    data = split_files(root, tmp_path / "data")
    frame = pd.read_csv(data / "validation.csv")
    frame.loc[2, "dialogue"] = ""  # an empty csv cell: read as missing
    frame.loc[5, "dialogue"] = "   "
    frame.to_csv(data / "validation.csv", index=False)
    message = fetch_fails(tiny_params(**{"data.source": "local", "data.local.path": str(data)}), tmp_path / "out")
    assert message.startswith(
        f"{data / 'validation.csv'}: 2 row(s) without a dialogue (data row(s) 3, 6: empty, "
        "blank or not text); every row needs a dialogue and a summary"
    )

    table = pd.concat(
        [pd.read_parquet(root / "raw" / f"{s}.parquet").assign(split=s) for s in ("train", "validation", "test")],
        ignore_index=True,
    )
    table.loc[100, "summary"] = None  # a null in a parquet file with a split column: its row in the whole file
    table.to_parquet(tmp_path / "all.parquet", index=False)
    params = tiny_params(**{"data.source": "local", "data.local.path": str(tmp_path / "all.parquet")})
    message = fetch_fails(params, tmp_path / "again")
    assert message.startswith(f"{tmp_path / 'all.parquet'}: 1 row(s) without a summary (data row(s) 101: ")


def test_a_reward_model_without_the_configured_labels_stops_fetch(fetched, tmp_path):
    root, _ = fetched
    folder = saved_reward(root, tmp_path / "reward")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "LABEL_0", "1": "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    (folder / "config.json").write_text(json.dumps(config))
    message = fetch_fails(tiny_params(**{"reward.source": "local", "reward.local.path": str(folder)}), tmp_path / "out")
    assert message == (
        f"reward.local: {folder / 'config.json'} has no label(s) 'nothate' (reward.reward_label), "
        "'hate' (reward.toxic_label) in id2label; its labels are ['LABEL_0', 'LABEL_1']: set "
        "reward.reward_label / reward.toxic_label to its names, or use a model whose id2label "
        "names them"
    )
    message = fetch_fails(tiny_params(**{"reward.toxic_label": "toxic"}), tmp_path / "builtin")
    assert message.startswith(
        "reward.builtin: its config.json has no label(s) 'toxic' (reward.toxic_label) in "
        "id2label; its labels are ['hate', 'nothate']"
    )


def test_fetch_stage_on_data_without_a_required_column_prints_one_line(fetched, tmp_path):
    root, _ = fetched
    data = split_files(root, tmp_path / "data")
    pd.read_csv(data / "test.csv").drop(columns="summary").to_csv(data / "test.csv", index=False)
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(
        yaml.safe_dump({**TINY, "data": {**TINY["data"], "source": "local", "local": {"path": str(data)}}})
    )
    previous = {"data/raw/keep.txt": "previous run", "metrics/fetch.json": "{}"}
    for name, text in previous.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "fetch.py")], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {data / 'test.csv'}: no column(s) ['summary']; it has ['id', 'dialogue', 'topic', 'heated']. "
        "Dialogue data needs the columns id, dialogue, summary, topic (DialogSum's)"
    )
    assert "Traceback" not in proc.stderr
    assert {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()} == {"params.yaml", *previous}
    assert all((project / name).read_text() == text for name, text in previous.items())


def test_the_builtin_policys_dropout_comes_from_params(tmp_path):
    fetch(tiny_params(**{"policy.builtin.dropout_rate": 0.1}), tmp_path)
    assert AutoConfig.from_pretrained(tmp_path / "base" / "policy").dropout_rate == 0.1
