"""scripts/sweep.py: the report groups DVC experiments by configuration and summarises them over RL seeds."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("sweep", ROOT / "scripts" / "sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def evaluate_metrics(before: float, after: float) -> dict:
    """metrics/evaluate.json as the evaluate stage writes it, with the keys the report reads."""

    def side(share: float, heated: float, calm: int) -> dict:
        judges = {name: {"toxic_share": share, "toxicity_probability": 2 * share} for name in sweep.JUDGES}
        return {
            "rougeL": 0.8,
            "toxicity": judges,
            "quality": {"fluency_nll": 0.25, "garbled_share": 0.1},
            "heated": {"toxicity": {"oracle": {"toxic_share": heated}}, "rougeL": 0.6},
            "calm": {"toxicity": {"oracle": {"toxic_count": calm}}, "rougeL": 0.9},
        }

    return {"before": side(before, 0.5, 5), "after": side(after, after * 3, 4)}


def entry(name: str, algorithm: str, seed: int | None, after: float, step: int = 60) -> dict:
    """One row of `dvc exp show --json` (DVC 3): params and metrics files under data."""
    return {
        "rev": f"rev-{name}",
        "name": name,
        "data": {
            "rev": f"rev-{name}",
            "params": {"params.yaml": {"data": {"seed": 42, "ppo": {"algorithm": algorithm, "seed": seed}}}},
            "metrics": {
                "metrics/evaluate.json": {"data": evaluate_metrics(0.13, after)},
                "metrics/ppo.json": {"data": {"selected_step": step}},
            },
        },
        "error": None,
        "experiments": None,
    }


def show() -> list[dict]:
    workspace = entry("workspace", "ppo", None, 0.013)  # the RL seed is the pipeline's: 42
    workspace["rev"], workspace["name"] = "workspace", None  # DVC names the workspace by its rev only
    commit = entry("main", "ppo", None, 0.013)  # the workspace at its commit: the same run, listed twice
    commit["experiments"] = [
        {"revs": [entry("ppo-seed1", "ppo", 1, 0.026, step=90)], "name": "ppo-seed1"},
        {"revs": [entry("rloo-seed1", "rloo", 1, 0.005)], "name": "rloo-seed1"},
        {"revs": [entry("rloo-seed2", "rloo", 2, 0.007)], "name": "rloo-seed2"},
        {"revs": [{"rev": "queued", "name": "grpo-seed1", "data": {}}], "name": "grpo-seed1"},
    ]
    for exp in commit["experiments"]:
        exp["executor"] = {"state": "success" if exp["revs"][0]["data"] else "queued"}
    # a running experiment: DVC shows its params with the metrics of the copy it started from
    running = entry("grpo-seed2", "grpo", 2, 0.013)
    commit["experiments"].append({"revs": [running], "name": "grpo-seed2", "executor": {"state": "running"}})
    return [workspace, commit]


def test_the_report_groups_by_algorithm_and_summarises_over_seeds(tmp_path):
    saved = tmp_path / "show.json"
    saved.write_text(json.dumps(show()))
    out = tmp_path / "sweep.md"
    assert sweep.main(["report", "--json", str(saved), "--out", str(out)]) == 0
    table = json.loads(out.with_suffix(".json").read_text())
    assert list(table) == ["ppo", "rloo"], "the queued and the running grpo runs have no results yet"
    assert table["ppo"]["seeds"] == [1, 42] and table["ppo"]["runs"] == ["ppo-seed1", "workspace"]
    after = table["ppo"]["rows"]["oracle toxic % after"]
    assert after["values"] == pytest.approx([2.6, 1.3])
    assert after["mean"] == pytest.approx(1.95) and after["min"] == pytest.approx(1.3)
    change = table["rloo"]["rows"]["oracle change %"]["values"]
    assert change == pytest.approx([100 * (0.005 - 0.13) / 0.13, 100 * (0.007 - 0.13) / 0.13])
    assert table["ppo"]["rows"]["selected step"]["values"] == [90, 60]
    heated = table["rloo"]["rows"]["heated: oracle toxic % after"]
    assert heated["mean"] == pytest.approx(statistics.fmean([1.5, 2.1]))
    text = out.read_text()
    assert "| | ppo | rloo |" in text and "| RL seeds | 1, 42 | 1, 2 |" in text


def test_queue_skips_what_the_workspace_holds_and_names_each_experiment(monkeypatch, capsys):
    calls = []

    def fake_dvc(*args):
        calls.append(args)
        return json.dumps(show()) if args[:2] == ("exp", "show") else ""

    monkeypatch.setattr(sweep, "dvc", fake_dvc)
    assert sweep.main(["queue", "--algorithms", "ppo,grpo", "--seeds", "42,7"]) == 0
    queued = [c for c in calls if c[:2] == ("exp", "run")]
    assert [c[c.index("--name") + 1] for c in queued] == ["ppo-seed7", "grpo-seed42", "grpo-seed7"]
    assert queued[1][:5] == ("exp", "run", "--queue", "--name", "grpo-seed42")
    assert queued[1][5:] == ("-S", "ppo.algorithm=grpo", "-S", "ppo.seed=42")
    assert "ppo seed 42: the workspace holds it" in capsys.readouterr().out


def test_no_finished_experiment_is_a_clear_error(tmp_path, capsys):
    saved = tmp_path / "show.json"
    saved.write_text(json.dumps([{"rev": "workspace", "name": None, "data": {"params": {}, "metrics": {}}}]))
    assert sweep.main(["report", "--json", str(saved), "--out", str(tmp_path / "x.md")]) == 2
    assert "no finished experiment" in capsys.readouterr().err
