"""The two pyfunc models (the summariser and the reward model) as MLflow loads and serves them.

Both are logged and registered in a temporary SQLite store exactly as the stages log them
(:func:`detox.tracking.registry.log_model`), with a tiny random T5 and a tiny random RoBERTa
(nothing trained but their tokenizers, about a second). Bad requests are sent to the loaded model
in Python and to a real ``mlflow models serve`` scoring server; every refusal must be one line of
JSON that names what was wrong, with no traceback, no path of this machine and no copy of the request.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from transformers import AutoConfig, RobertaForSequenceClassification, T5Config, pipeline

from conftest import HANG_S, free_port, tiny_corpus, tiny_t5, wait_until_answering
from detox.common.params import BuiltinReward, GenerationParams, PromptParams, RewardParams
from detox.data.sentences import labelled_sentences
from detox.models.builtin import write_reward_base
from detox.models.generation import build_prompts, generate_summaries
from detox.models.reward import RewardScorer
from detox.serve.export import export_policy
from detox.serve.pyfunc import RequestError
from detox.serve.reward_model import RewardClassifier, reward_config, reward_signature
from detox.serve.summarizer import PARAM_RANGES, Summarizer, max_new_tokens_range, model_config, signature
from detox.tracking.registry import PolicyModel, log_model

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = PromptParams().template
GENERATION = GenerationParams(max_new_tokens=8, batch_size=2)
SEED = 1234
SUMMARIZER, REWARD = "serve-test-summarizer", "serve-test-reward"
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dialogues() -> list[str]:
    return tiny_corpus()["test"]["dialogue"].tolist()


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A random tiny T5 and its tokenizer, exported as evaluate exports models/merged/."""
    model, tokenizer = tiny_t5(TEMPLATE)
    tokenizer.padding_side = "right"
    return (
        model,
        tokenizer,
        export_policy(model, tokenizer, tmp_path_factory.mktemp("policy"), TEMPLATE, GENERATION, SEED),
    )


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory) -> Path:
    """A random tiny RoBERTa classifier (nothate/hate) with a BPE tokenizer, as the reward stage saves one."""
    folder = tmp_path_factory.mktemp("reward")
    cfg = BuiltinReward(vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    write_reward_base(labelled_sentences(200, 0)["text"].tolist(), cfg, folder)
    torch.manual_seed(0)
    RobertaForSequenceClassification(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory, policy, reward_dir, dialogues) -> Iterator[dict]:
    """Both models logged and registered (version 1 each) in a fresh SQLite store, as the stages do it."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    patch = pytest.MonkeyPatch()
    patch.chdir(root)
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        config = model_config(TEMPLATE, GENERATION, SEED)
        with mlflow.start_run():
            log_model(
                PolicyModel(
                    Summarizer(), policy[2], config, signature(config), pd.DataFrame({"dialogue": dialogues[:1]})
                ),
                SUMMARIZER,
            )
            log_model(
                PolicyModel(
                    RewardClassifier(),
                    reward_dir,
                    reward_config(RewardParams()),
                    reward_signature(),
                    pd.DataFrame({"text": ["You are an idiot."]}),
                    artifact="reward",
                ),
                REWARD,
            )
        yield {"root": root, "uri": uri}
    finally:
        mlflow.set_tracking_uri(previous)
        patch.undo()


@pytest.fixture(scope="module")
def summarizer(store):
    return mlflow.pyfunc.load_model(f"models:/{SUMMARIZER}/1")


@pytest.fixture(scope="module")
def reward(store):
    return mlflow.pyfunc.load_model(f"models:/{REWARD}/1")


def expected_summaries(
    policy, dialogues: list[str], generation: GenerationParams = GENERATION, seed: int = SEED
) -> list[str]:
    """What the evaluate stage generates for these dialogues."""
    model, tokenizer, _ = policy
    return generate_summaries(model, tokenizer, build_prompts(dialogues, TEMPLATE), generation, seed)


# --------------------------------------------------------------------------- answers


def test_the_summarizer_answers_as_evaluate_generates(summarizer, policy, dialogues):
    frame = pd.DataFrame({"dialogue": dialogues[:3]})
    summaries = summarizer.predict(frame)
    assert summaries == expected_summaries(policy, dialogues[:3])
    assert len(summaries) == 3 and all(isinstance(s, str) and s for s in summaries)
    assert summarizer.predict(dialogues[:3]) == summaries  # a plain list of dialogues, as MLflow's "inputs"
    assert summarizer.predict({"dialogue": dialogues[:3]}) == summaries  # a dict of columns, as "inputs" too
    greedy = summarizer.predict(frame, params={"do_sample": False})
    assert greedy == expected_summaries(policy, dialogues[:3], GENERATION.model_copy(update={"do_sample": False}), 0)
    assert summarizer.predict(frame, params={"seed": 7}) != summaries
    assert summarizer.predict(frame, params={"temperature": 10.0, "top_p": 1.0, "top_k": 0}) == expected_summaries(
        policy, dialogues[:3], GENERATION.model_copy(update={"temperature": 10.0})
    )


def test_a_model_logged_before_a_generation_setting_existed_answers_with_its_default(policy, dialogues):
    """A registered model's config lacks the settings added after it was logged (generation.sampler): served by
    this code it answers as evaluate generated then, with the setting's default, instead of failing."""
    config = {k: v for k, v in model_config(TEMPLATE, GENERATION, SEED).items() if k != "generation.sampler"}
    served = Summarizer()
    served.load_context(SimpleNamespace(artifacts={"policy": str(policy[2])}, model_config=config))
    assert served.answer(dialogues[:3], {}) == expected_summaries(policy, dialogues[:3])
    assert GenerationParams().sampler == "multinomial"


def test_an_over_long_dialogue_is_read_up_to_the_limit_with_a_warning(summarizer, dialogues, caplog):
    long = " ".join([dialogues[0]] * 200)
    with caplog.at_level("WARNING", logger="detox.serve.summarizer"):
        [summary] = summarizer.predict(pd.DataFrame({"dialogue": [long]}))
    assert isinstance(summary, str)
    assert any("dialogue 0:" in r.message and "the model reads the first" in r.message for r in caplog.records)


def test_the_reward_model_scores_as_ppo_and_evaluate_score(reward, reward_dir):
    texts = ["You are an idiot.", "Thanks for your help."]
    got = reward.predict(pd.DataFrame({"text": texts}))
    scores = RewardScorer.from_pretrained(reward_dir, RewardParams()).score(texts)
    assert list(got.columns) == ["reward", "toxicity"]
    assert got["reward"].tolist() == pytest.approx(scores.reward.tolist(), abs=1e-5)
    assert got["toxicity"].tolist() == pytest.approx(scores.toxicity.tolist(), abs=1e-5)


def test_the_hugging_face_pipeline_answers_a_dialogue_as_the_served_model_does(summarizer, policy, dialogues):
    """One sampling path: torch seeded with the seed, then generate; a one-dialogue request of the served
    model and a pipeline call draw the same summary (a request of several dialogues seeds per batch)."""
    summarize = pipeline("summarization", model=str(policy[2]), trust_remote_code=True)
    answers = {}
    for seed in (SEED, 7):
        [answers[seed]] = summarizer.predict(pd.DataFrame({"dialogue": dialogues[:1]}), params={"seed": seed})
        assert summarize(dialogues[0], seed=seed)[0]["summary_text"] == answers[seed], seed
    assert answers[SEED] != answers[7] and all(answers.values()), "the seeds must matter for this to prove anything"
    assert summarize(dialogues[0])[0]["summary_text"] == answers[SEED]  # both default to the evaluated seed


# --------------------------------------------------------------------------- what is refused


BAD_PARAMS = [
    ({"temperature": 0}, r"params.temperature: 0(\.0)? is out of range; allowed: > 0 and <= 10"),
    ({"temperature": -1}, r"params.temperature: -1(\.0)? is out of range; allowed: > 0 and <= 10"),
    ({"max_new_tokens": 100000}, r"params.max_new_tokens: 100000 is out of range; allowed: >= 1 and <= 2048"),
    ({"max_new_tokens": 0}, r"params.max_new_tokens: 0 is out of range; allowed: >= 1 and <= 2048"),
    ({"top_p": 0.0}, r"params.top_p: 0.0 is out of range; allowed: > 0 and <= 1"),
    ({"top_p": 1.5}, r"params.top_p: 1.5 is out of range; allowed: > 0 and <= 1"),
    ({"top_k": -1}, r"params.top_k: -1 is out of range; allowed: >= 0"),
    ({"seed": -1}, r"params.seed: -1 is out of range; allowed: >= 0"),
    ({"min_new_tokens": 5, "max_new_tokens": 3}, r"params: min_new_tokens \(5\) must not exceed max_new_tokens \(3\)"),
]
BAD_DIALOGUES = [
    (
        pd.DataFrame({"id": ["x"], "dialogue": ["#Person1#: Hi."]}),
        r"input: unknown column\(s\) \['id'\]; this model reads only the 'dialogue' column",
    ),
    (
        pd.DataFrame({"dialogue": ["#Person1#: Hi."], "temperature": [0.5]}),
        r"input: unknown column\(s\) \['temperature'\]",
    ),
    (
        pd.DataFrame({"text": ["hello"]}),
        (
            r"input: no 'dialogue' column \(got columns \['text'\]\); send "
            r'\{"dataframe_records": \[\{"dialogue": "..."\}\]\}'
        ),
    ),
    (pd.DataFrame({"dialogue": ["#Person1#: Hi.", ""]}), r"dialogue 1: expected a non-empty string, got ''"),
    (pd.DataFrame({"dialogue": ["#Person1#: Hi.", "   "]}), r"dialogue 1: expected a non-empty string, got '   '"),
    (pd.DataFrame({"dialogue": ["#Person1#: Hi.", None]}), r"dialogue 1: expected a non-empty string, got null"),
    (pd.DataFrame({"dialogue": [123]}), r"dialogue 0: expected a non-empty string, got 123"),
    (5, r"input: expected rows with a 'dialogue' column or a list of strings, got int"),
]


def refusal(model, model_input, params=None) -> str:
    with pytest.raises(MlflowException) as caught:
        model.predict(model_input, params=params)
    assert isinstance(caught.value, RequestError), caught.value  # the model's own check, not MLflow's
    message = json.loads(caught.value.serialize_as_json())["message"]
    assert "\n" not in message and message == str(caught.value)
    return message


@pytest.mark.parametrize(("params", "expected"), BAD_PARAMS)
def test_a_param_out_of_its_range_is_refused_naming_it_and_the_range(summarizer, dialogues, params, expected):
    message = refusal(summarizer, pd.DataFrame({"dialogue": dialogues[:1]}), params)
    assert re.fullmatch(expected, message), message


@pytest.mark.parametrize(("model_input", "expected"), BAD_DIALOGUES)
def test_a_request_that_is_not_one_dialogue_column_of_strings_is_refused(summarizer, model_input, expected):
    message = refusal(summarizer, model_input)
    assert re.match(expected, message), message


@pytest.mark.parametrize(
    ("model_input", "expected"),
    [
        (
            pd.DataFrame({"text": ["fine"], "label": ["nothate"]}),
            r"input: unknown column\(s\) \['label'\]; this model reads only the 'text' column",
        ),
        (pd.DataFrame({"dialogue": ["fine"]}), r"input: no 'text' column \(got columns \['dialogue'\]\)"),
        (pd.DataFrame({"text": ["fine", ""]}), r"text 1: expected a non-empty string, got ''"),
        (pd.DataFrame({"text": [1.5]}), r"text 0: expected a non-empty string, got 1.5"),
    ],
)
def test_the_reward_model_refuses_the_same_way(reward, model_input, expected):
    assert re.match(expected, refusal(reward, model_input))


def test_an_unknown_param_is_dropped_by_mlflow_before_the_model_sees_it(summarizer, dialogues, caplog):
    """Documented, not refused: MLflow keeps only the params of the signature, and says so in its log."""
    frame = pd.DataFrame({"dialogue": dialogues[:2]})
    with caplog.at_level("WARNING", logger="mlflow.models.utils"):
        got = summarizer.predict(frame, params={"temprature": 0.01})
    assert got == summarizer.predict(frame)
    assert any("Unrecognized params ['temprature'] are ignored" in r.getMessage() for r in caplog.records)


def test_every_param_of_the_signature_has_the_range_params_yaml_gives_it(summarizer):
    params = {p.name: p.default for p in summarizer.metadata.get_params_schema().params}
    assert set(params) == set(PARAM_RANGES) and params["seed"] == SEED
    assert params["max_new_tokens"] == GENERATION.max_new_tokens and params["temperature"] == GENERATION.temperature
    assert summarizer.metadata.get_input_schema() is None  # the model checks its input (see detox.serve.pyfunc)
    assert all(PARAM_RANGES[name].admits(value) for name, value in params.items())


def test_max_new_tokens_stops_at_the_models_position_limit():
    assert str(max_new_tokens_range(T5Config(), 48)) == ">= 1 and <= 2048"  # T5: relative positions, no limit
    flan = T5Config(n_positions=512)  # google/flan-t5-base's config.json
    assert str(max_new_tokens_range(flan, 48)) == ">= 1 and <= 512 (the model's position limit)"
    assert not max_new_tokens_range(flan, 48).admits(513) and max_new_tokens_range(flan, 48).admits(512)
    assert max_new_tokens_range(flan, 600).admits(600)  # the default the policy was evaluated with stays allowed


class Failing(Summarizer):
    """A summariser whose generation breaks, as a bug or an exhausted device would break it."""

    def answer(self, texts, params):
        raise RuntimeError(f"CUDA error in {ROOT}/some/file.py")


def test_an_unexpected_failure_answers_with_its_class_only_and_logs_the_traceback(caplog):
    with caplog.at_level("ERROR", logger="detox.serve.pyfunc"), pytest.raises(RequestError) as caught:
        Failing().predict(None, pd.DataFrame({"dialogue": ["#Person1#: Hi."]}))
    body = json.loads(caught.value.serialize_as_json())
    assert body["error_code"] == "INTERNAL_ERROR" and caught.value.get_http_status_code() == 500
    assert body["message"] == "the model failed on this request (RuntimeError); the server's log has the traceback"
    assert isinstance(caught.value.__cause__, RuntimeError)  # in Python the cause is still there
    assert any(r.exc_info and "CUDA error" in str(r.exc_info[1]) for r in caplog.records)


def test_the_answer_keeps_the_reason_when_mlflow_prefixes_the_request():
    """What MLflow's scoring server does to an MlflowException raised in predict, before it answers."""
    error = RequestError("dialogue 0: expected a non-empty string, got ''")
    error.message = f"Failed to predict data '{pd.DataFrame({'dialogue': ['']})}'. \nError: {error.message}"
    body = json.loads(error.serialize_as_json())
    assert body["message"] == "dialogue 0: expected a non-empty string, got ''"
    assert body["error_code"] == "INVALID_PARAMETER_VALUE" and error.get_http_status_code() == 400


# --------------------------------------------------------------------------- the scoring server


@pytest.fixture(scope="module")
def server(store) -> Iterator[dict]:
    """``mlflow models serve`` of the registered summariser, as the README runs it."""
    port, log_path = free_port(), store["root"] / "serve.log"
    bin_dir = Path(sys.executable).parent  # the scoring server (uvicorn) lives beside this Python
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store["uri"],
        "OMP_NUM_THREADS": "1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                str(bin_dir / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{SUMMARIZER}/1",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                "1",
            ],
            cwd=store["root"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/ping", process, HANG_S, lambda: log_path.read_text()[-3000:])
        yield {"url": f"http://127.0.0.1:{port}", "log": log_path}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def invoke(url: str, body: dict | str) -> tuple[int, str]:
    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=HANG_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def assert_shows_no_internals(body: str) -> None:
    assert "Traceback" not in body and "stack_trace" not in body
    assert sys.prefix not in body and "site-packages" not in body and str(ROOT) not in body
    assert "Failed to predict data" not in body, "MLflow's preface, which prints the request as a DataFrame"


@pytest.mark.slow
def test_the_scoring_server_answers_as_evaluate_generates(server, policy, dialogues):
    status, body = invoke(server["url"], {"dataframe_records": [{"dialogue": d} for d in dialogues[:2]]})
    assert status == 200, body
    assert json.loads(body)["predictions"] == expected_summaries(policy, dialogues[:2])
    greedy = GENERATION.model_copy(update={"do_sample": False})
    for request in (
        {"inputs": dialogues[:2]},
        {"inputs": {"dialogue": dialogues[:2]}},
        {"dataframe_split": {"columns": ["dialogue"], "data": [[d] for d in dialogues[:2]]}},
    ):
        status, body = invoke(server["url"], {**request, "params": {"do_sample": False}})
        assert status == 200, (request, body)
        assert json.loads(body)["predictions"] == expected_summaries(policy, dialogues[:2], greedy), request


@pytest.mark.slow
def test_the_scoring_server_refuses_bad_requests_in_one_line_of_json(server, dialogues):
    one = [{"dialogue": dialogues[0]}]
    requests = [({"dataframe_records": one, "params": params}, expected) for params, expected in BAD_PARAMS]
    requests += [
        ({"dataframe_records": [{"id": "x", "dialogue": dialogues[0]}]}, r"input: unknown column\(s\) \['id'\]"),
        ({"dataframe_records": [{"text": "hello"}]}, r"input: no 'dialogue' column \(got columns \['text'\]\)"),
        ({"dataframe_records": [{"dialogue": ""}]}, r"dialogue 0: expected a non-empty string, got ''"),
        ({"dataframe_records": [{"dialogue": None}]}, r"dialogue 0: expected a non-empty string, got null"),
        ({"dataframe_records": [{"dialogue": 123}]}, r"dialogue 0: expected a non-empty string, got 123"),
        ({"inputs": [dialogues[0], ""]}, r"dialogue 1: expected a non-empty string, got ''"),
        ({"inputs": {"dialogue": [dialogues[0]], "id": ["x"]}}, r"input: unknown column\(s\) \['id'\]"),
        ({"dataframe_records": []}, r"input: no 'dialogue' column \(got columns \[\]\)"),
    ]
    for request, expected in requests:
        status, body = invoke(server["url"], request)
        assert status == 400, (request, body)
        assert_shows_no_internals(body)
        answer = json.loads(body)
        assert answer["error_code"] == "INVALID_PARAMETER_VALUE" and "\n" not in answer["message"]
        assert re.match(expected, answer["message"]), (request, answer["message"])


@pytest.mark.slow
def test_what_the_scoring_server_decides_before_the_model_runs(server, dialogues):
    """MLflow's own answers, documented in the README: an unknown param dropped (and logged), a param of the
    wrong type and a body that is not a request refused, without a traceback or a path."""
    request = {"dataframe_records": [{"dialogue": dialogues[0]}]}
    assert invoke(server["url"], {**request, "params": {"temprature": 0.01}}) == invoke(server["url"], request)
    assert "Unrecognized params ['temprature'] are ignored" in server["log"].read_text()
    for body, expected in (
        ({**request, "params": {"temperature": "hot"}}, "Invalid parameters found"),
        ("{not json", "Ensure that input is a valid JSON formatted string"),
        ({"dialogue": dialogues[0]}, "The input must be a JSON dictionary with exactly one of"),
    ):
        status, text = invoke(server["url"], body)
        assert status == 400 and expected in json.loads(text)["message"], text
        assert "Traceback" not in text and sys.prefix not in text and "site-packages" not in text
