import copy
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from detox.fetch import run_fetch
from detox.io import atomic_dir
from detox.params import parse_params
from detox.reward_training import run_reward
from detox.sft import run_sft

# A built-in world small enough to build in seconds: the same code paths as the
# default one, with fewer rows, epochs and sentences.
TINY = {
    "data": {"builtin": {"train_size": 96, "validation_size": 24, "test_size": 24, "num_topics": 8}},
    "policy": {"builtin": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1,
                           "num_heads": 2, "vocab_size": 400}},
    "sft": {"epochs": 1, "batch_size": 32, "eval_samples": 8},
    "reward": {"builtin": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                           "vocab_size": 400},
               "data": {"builtin": {"num_sentences": 200}}, "train": {"epochs": 1}},
    "validation": {"min_rows": {"train": 10, "validation": 5, "test": 5}, "labelled": {"min_rows": 50}},
    "generation": {"batch_size": 8, "max_new_tokens": 12},
    "eval": {"samples_per_prompt": 2},
    "judges": {"oracle": {"kind": "oracle"}, "ngram": {"kind": "builtin", "num_sentences": 400}},
    "promotion": {"min_prompts": 5},
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


def build_world(params, root: Path) -> Path:
    """What `dvc repro fetch sft reward` makes, under ``root`` (data/, models/), without MLflow."""
    root = Path(root)
    run_fetch(params, root / "data" / "raw", root / "data" / "labelled", root / "models" / "base")
    with atomic_dir(root / "models" / "policy") as scratch:
        run_sft(params, root / "models" / "base" / "policy", root / "data" / "raw", scratch)
    with atomic_dir(root / "models" / "reward") as scratch:
        run_reward(params, root / "models" / "base" / "reward", root / "data" / "labelled" / "labelled.parquet",
                   scratch)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine the thread pool's waits
    make generation many times slower; the previous setting is restored afterwards. A module
    asks for it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def wait_until_answering(url: str, process: subprocess.Popen, timeout_s: float,
                         explain: Callable[[], str] = lambda: "") -> None:
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
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    run = client.get_run(run_id)
    info = run.info
    models = client.search_logged_models([info.experiment_id], f"source_run_id = '{run_id}'")
    return {
        "info": (info.run_name, info.status, info.start_time, info.end_time, info.artifact_uri),
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "metrics": {key: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))
                    for key in run.data.metrics},
        "artifacts": files(info.artifact_uri),
        "models": {m.model_id: {"status": str(m.status), "params": dict(m.params), "tags": dict(m.tags),
                                "metrics": sorted((x.key, x.step, x.timestamp, x.value) for x in m.metrics or []),
                                "artifacts": files(m.artifact_location)} for m in models},
    }
