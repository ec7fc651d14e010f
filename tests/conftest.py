import atexit
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

# transformers copies the code of a trust_remote_code model (models/merged's pipeline) into a modules cache,
# one per user by default (~/.cache/huggingface/modules): two test runs side by side would write the same
# files. One folder per run instead, for this process and every script it starts; set before transformers is
# imported, since it reads the variable once.
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="detox-tests-hf-modules-")
atexit.register(shutil.rmtree, os.environ["HF_MODULES_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

from detox.common.io import atomic_dir  # noqa: E402
from detox.common.params import parse_params  # noqa: E402
from detox.data.fetch import run_fetch  # noqa: E402
from detox.models.reward_training import run_reward  # noqa: E402
from detox.models.sft import run_sft  # noqa: E402

# A built-in world small enough to build in seconds: the same code paths as the
# default one, with fewer rows, epochs and sentences.
TINY = {
    "data": {"builtin": {"train_size": 96, "validation_size": 24, "test_size": 24, "num_topics": 8}},
    "policy": {
        "builtin": {
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 64,
            "num_layers": 1,
            "num_decoder_layers": 1,
            "num_heads": 2,
            "vocab_size": 400,
        }
    },
    "sft": {"epochs": 1, "batch_size": 32, "eval_samples": 8},
    "reward": {
        "builtin": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "vocab_size": 400},
        "data": {"builtin": {"num_sentences": 200}},
        "train": {"epochs": 1},
    },
    "validation": {"min_rows": {"train": 10, "validation": 5, "test": 5}, "labelled": {"min_rows": 50}},
    "generation": {"batch_size": 8, "max_new_tokens": 12},
    "eval": {"samples_per_prompt": 2},
    "judges": {
        "oracle": {"kind": "oracle"},
        "ngram": {"kind": "builtin", "num_sentences": 400},
        "facts": {"kind": "facts"},
    },
    "promotion": {"min_prompts": 5},
    # the tests of the PPO engine were written for ppo with its leash; the default recipe is rloo (test_critic_free)
    "ppo": {"algorithm": "ppo", "kl": {"init_coef": 2.0}},
}


def tiny_params(**overrides):
    raw = copy.deepcopy(TINY)
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_params(raw)


@pytest.fixture
def tiny():
    return tiny_params


TINY_CORPUS = {"train_size": 30, "validation_size": 5, "test_size": 5, "num_topics": 4}


def tiny_corpus() -> dict:
    """The 30/5/5-dialogue corpus the tiny policies are built on (seed 3)."""
    from detox.common.params import BuiltinCorpus
    from detox.data.corpus import generate_corpus

    return generate_corpus(BuiltinCorpus(**TINY_CORPUS), 3)


def tiny_t5(template: str, **config: object):
    """A random one-layer T5 (seed 0) with a tokenizer trained on :func:`tiny_corpus` and the prompt template;
    ``config`` overrides T5Config fields (the shape too). Returns the model in eval mode and the tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    from detox.models.builtin import train_t5_tokenizer

    corpus = tiny_corpus()
    texts = [template.format(dialogue="")] + corpus["train"]["dialogue"].tolist() + corpus["train"]["summary"].tolist()
    tokenizer, _ = train_t5_tokenizer(texts, 250)
    torch.manual_seed(0)
    shape = dict(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2)
    ids = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    t5 = T5Config(vocab_size=len(tokenizer), feed_forward_proj="gated-gelu", **{**shape, **ids, **config})
    return T5ForConditionalGeneration(t5).eval(), tokenizer


def build_world(params, root: Path) -> Path:
    """What `dvc repro fetch sft reward` makes, under ``root`` (data/, models/), without MLflow."""
    root = Path(root)
    run_fetch(params, root / "data" / "raw", root / "data" / "labelled", root / "models" / "base")
    with atomic_dir(root / "models" / "policy") as scratch:
        run_sft(params, root / "models" / "base" / "policy", root / "data" / "raw", scratch)
    with atomic_dir(root / "models" / "reward") as scratch:
        run_reward(
            params, root / "models" / "base" / "reward", root / "data" / "labelled" / "labelled.parquet", scratch
        )
    return root


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy 2-core machine the thread pool's waits make
    training and generation many times slower (two SFT tests of test_training.py: 42 s on two threads,
    4 s on one). So every test runs torch on one thread, and so does every script it starts
    (``OMP_NUM_THREADS``); the previous settings are restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


def wait_until_answering(
    url: str, process: subprocess.Popen, timeout_s: float, explain: Callable[[], str] = lambda: ""
) -> None:
    """Poll ``url`` until it answers HTTP 200; fail the test when ``process`` exits or ``timeout_s`` passes
    first, with ``explain()`` (e.g. the end of the server's log) in the message."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {process.poll()}" if process.poll() is not None else f"no answer in {timeout_s:.0f} s"
            pytest.fail(f"{' '.join(map(str, process.args[:3]))} did not come up at {url} ({why}):\n{explain()}")
        time.sleep(0.5)


def run_snapshot(client, run_id: str) -> dict:
    """Everything MLflow holds of a run in a local store, to compare before and after: its info, params,
    tags, every value of every metric (history included), the bytes of every artifact (tables are
    artifacts), and its logged models' status, params, tags, metrics and artifact bytes."""
    import hashlib
    from urllib.parse import unquote, urlparse

    def files(uri: str) -> dict[str, str]:
        root = Path(unquote(urlparse(uri).path))
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    run = client.get_run(run_id)
    info = run.info
    models = client.search_logged_models([info.experiment_id], f"source_run_id = '{run_id}'")
    return {
        "info": (info.run_name, info.status, info.start_time, info.end_time, info.artifact_uri),
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "metrics": {
            key: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))
            for key in run.data.metrics
        },
        "artifacts": files(info.artifact_uri),
        "models": {
            m.model_id: {
                "status": str(m.status),
                "params": dict(m.params),
                "tags": dict(m.tags),
                "metrics": sorted((x.key, x.step, x.timestamp, x.value) for x in m.metrics or []),
                "artifacts": files(m.artifact_location),
            }
            for m in models
        },
    }


# --------------------------------------------------------------------------- what holds on any machine


# A hang guard for subprocesses and waits, never a measure of speed: on a loaded 2-core machine importing
# the stack alone takes half a minute, so only something stuck takes this long.
HANG_S = 1800


def tolerance(dtype: torch.dtype, n_terms: int, scale: float = 1.0) -> float:
    """How far two computations of one value may drift apart when they sum ``n_terms`` terms of magnitude
    ``scale`` in another order or kernel (batched vs one row, cached vs full decoding, AVX2 vs AVX-512).

    The worst-case rounding bound of a float sum, n * eps * scale: no fixed number that holds on one CPU's
    kernels only. For the tiny models of the tests it stays below the gaps they take for a real difference
    (1e-3 and more), and above the gaps measured between AVX2 and AVX-512 kernels (6 to 300 times).
    """
    return n_terms * torch.finfo(dtype).eps * float(scale)


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on: the OS picks a free one, which is then released, for a
    server to take or to stand for one that is down (a fixed port may be taken on some machine, or by a
    test running beside this one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Connections:
    """The connection attempts of this process's sockets during a test, refused or not, each with its socket's
    timeout: "fails fast" shown by what was not done (no retries) and by the wait allowed, not by a clock."""

    def __init__(self) -> None:
        self.made: list[tuple[object, float | None]] = []

    def to(self, port: int) -> list[float | None]:
        """One entry per attempt to 127.0.0.1:``port``: the timeout its socket had (other traffic is ignored)."""
        return [timeout for address, timeout in self.made if address == ("127.0.0.1", port)]


@pytest.fixture
def connections(monkeypatch) -> Connections:
    seen = Connections()
    real_connect = socket.socket.connect

    def connect(self, address):
        seen.made.append((tuple(address) if isinstance(address, (tuple, list)) else address, self.gettimeout()))
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


# Runs a script as `python script` does, with an audit hook (PEP 578) that sees what the script reaches for,
# inside any library: the addresses its sockets connect to, and the files it opens under the watched folders.
_WATCH = r"""
import json, os, runpy, sys
record, script, *folders = sys.argv[1:]
folders = [os.path.realpath(f) for f in folders]
seen = {"connect": [], "open": []}

def hook(event, args):
    if event == "socket.connect":
        address = args[1]
        seen["connect"].append(list(address) if isinstance(address, tuple) else address)
    elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if any(path == f or path.startswith(f + os.sep) for f in folders):
            seen["open"].append(path)

def save():
    with open(record, "w") as out:
        json.dump(seen, out)

import atexit
atexit.register(save)
sys.addaudithook(hook)
sys.argv, sys.path[0] = [script], os.path.dirname(script)
runpy.run_path(script, run_name="__main__")
"""


def run_watched(
    script: Path,
    cwd: Path,
    env: dict[str, str],
    watch: list[Path],
) -> tuple[subprocess.CompletedProcess, dict[str, list]]:
    """Run ``python script`` in ``cwd``; also return ``{"connect": [addresses], "open": [files under watch]}``."""
    with tempfile.TemporaryDirectory(prefix="detox-watch-") as folder:  # outside cwd: the script's outputs stay its own
        record = Path(folder) / "seen.json"
        proc = subprocess.run(
            [sys.executable, "-c", _WATCH, str(record), str(script), *map(str, watch)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_S,
        )
        assert record.is_file(), f"{script.name} exited before its watch was saved:\n{proc.stderr[-3000:]}"
        return proc, json.loads(record.read_text())


@pytest.fixture(autouse=True)
def nothing_leaks_between_tests() -> Iterator[None]:
    """A test leaves the working directory and the variables that steer MLflow, DVC and the Hub as it
    found them (mlflow.set_tracking_uri, for one, sets MLFLOW_TRACKING_URI for the whole process)."""

    def state() -> tuple[str, dict[str, str]]:
        return os.getcwd(), {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW_", "DVC_", "HF_"))}

    before = state()
    yield
    after = state()
    assert after == before, f"the test left the working directory or MLFLOW_*/DVC_*/HF_* changed: {before} -> {after}"


def tiny_roberta_classifier(folder, id2label: dict[int, str], texts: list[str], **config: object):
    """A random one-layer RobertaForSequenceClassification (seed 0, hidden 16, feed-forward 32) with a BPE
    tokenizer trained on ``texts``, saved into ``folder``; ``config`` overrides RobertaConfig fields."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from detox.models.builtin import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(texts, 300)
    torch.manual_seed(0)
    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
        "pad_token_id": tokenizer.pad_token_id,
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
        **config,
    }
    RobertaForSequenceClassification(RobertaConfig(**settings)).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
