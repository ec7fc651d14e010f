"""scripts/sweep.py: the report groups DVC experiments by configuration and summarises them over RL seeds."""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
import sys
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
        # the workspace's own run queued again with its seed spelled out: the same run, counted once
        {"revs": [entry("ppo-seed42", "ppo", 42, 0.013)], "name": "ppo-seed42"},
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
    assert sweep.main(["report", "--json", str(saved), "--out", str(out), "--no-mlflow"]) == 0
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
    # the stand-in metrics have no facts judge's numbers: n/a, not a crash
    assert table["ppo"]["rows"]["invented-fact summaries % after"]["mean"] is None
    assert "| invented-fact summaries % after | n/a | n/a |" in text
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_row_some_seeds_lack_says_how_many_it_covers(tmp_path):
    entries = show()
    entries[1]["experiments"][0]["revs"][0]["data"]["metrics"]["metrics/evaluate.json"]["data"]["after"]["quality"][
        "invented_share"
    ] = 0.02
    saved = tmp_path / "show.json"
    saved.write_text(json.dumps(entries))
    assert sweep.main(["report", "--json", str(saved), "--out", str(tmp_path / "s.md"), "--no-mlflow"]) == 0
    row = json.loads((tmp_path / "s.json").read_text())["ppo"]["rows"]["invented-fact summaries % after"]
    assert row["values"] == [pytest.approx(2.0), None] and row["mean"] == pytest.approx(2.0)
    assert (
        "| invented-fact summaries % after | 2.00 [2.00, 2.00] (1 of 2 seeds) | n/a |"
        in (tmp_path / "s.md").read_text()
    )


def test_the_report_is_an_mlflow_run_with_its_numbers_and_files(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "params.yaml").write_text("tracking:\n  experiment: sweep-test\n")
    (tmp_path / "show.json").write_text(json.dumps(show()))
    assert sweep.main(["report", "--json", "show.json"]) == 0
    table = json.loads((tmp_path / "reports" / "sweep.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("sweep-test").experiment_id])
    assert run.info.run_name.startswith("sweep")
    metrics = run.data.metrics
    assert metrics["ppo/oracle toxic pct after/mean"] == pytest.approx(
        table["ppo"]["rows"]["oracle toxic % after"]["mean"]
    )
    assert metrics["rloo/oracle change pct/min"] == pytest.approx(table["rloo"]["rows"]["oracle change %"]["min"])
    assert not any("invented" in key for key in metrics), "no number, no metric"
    files = {f.path for f in client.list_artifacts(run.info.run_id, "sweep")}
    assert files == {"sweep/sweep.md", "sweep/sweep.json", "sweep/sweep.png"}


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
    assert sweep.main(["report", "--json", str(saved), "--out", str(tmp_path / "x.md"), "--no-mlflow"]) == 2
    assert "no finished experiment" in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end, on the tiny world


@pytest.mark.slow
def test_a_sweep_of_two_rl_seeds_on_the_tiny_world_reports_the_experiments_own_numbers(tmp_path):
    """From a new project: `dvc repro`, queue two RL seeds, run the queue, report; the report's numbers are
    those of each experiment's metrics in `dvc exp show`, and only ppo and evaluate ran again."""
    from conftest import HANG_S
    from test_failures import DVC
    from test_services import base_env, copy_project, run

    repo = tmp_path / "repo"
    copy_project(repo)
    shutil.copytree(ROOT / "scripts", repo / "scripts")
    env = base_env(PYTHONPATH=str(repo / "src"))
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run([DVC, "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "dvc repro"], repo, env)
    python = [sys.executable, "scripts/sweep.py"]
    queued = run([*python, "queue", "--algorithms", "ppo", "--seeds", "5,6"], repo, env).stdout
    assert "queued ppo-seed5: ppo.algorithm=ppo ppo.seed=5" in queued and "queued ppo-seed6" in queued
    ran = run([DVC, "exp", "run", "--run-all", "--jobs", "1"], repo, env, timeout=HANG_S * 4)
    assert "Running stage 'ppo'" in ran.stdout and "Running stage 'sft'" not in ran.stdout, ran.stdout[-2000:]
    run([*python, "report", "--no-mlflow"], repo, env)
    table = json.loads((repo / "reports" / "sweep.json").read_text())
    # the workspace (RL seed = the pipeline seed) and the two experiments: one configuration, three seeds
    assert list(table) == ["ppo"] and table["ppo"]["seeds"] == [5, 6, 42]
    shown = json.loads(run([DVC, "exp", "show", "--json"], repo, env).stdout)
    metrics = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for revision in exp.get("revs") or []:
                data = revision["data"]
                metrics[data["params"]["params.yaml"]["data"]["ppo"]["seed"]] = data["metrics"]
    assert sorted(metrics) == [5, 6]
    rows = table["ppo"]["rows"]
    for i, seed in enumerate(table["ppo"]["seeds"][:2]):
        evaluate = metrics[seed]["metrics/evaluate.json"]["data"]
        after = evaluate["after"]
        assert rows["oracle toxic % after"]["values"][i] == pytest.approx(
            100 * after["toxicity"]["oracle"]["toxic_share"]
        )
        assert rows["ROUGE-L after"]["values"][i] == pytest.approx(after["rougeL"])
        assert rows["invented-fact summaries % after"]["values"][i] == pytest.approx(
            100 * after["quality"]["invented_share"]
        )
        assert rows["selected step"]["values"][i] == metrics[seed]["metrics/ppo.json"]["data"]["selected_step"]
        # the baseline is shared: the same numbers before PPO in every experiment
        assert rows["oracle toxic % before"]["values"][i] == rows["oracle toxic % before"]["values"][2]
    values = rows["oracle toxic % after"]["values"]
    assert rows["oracle toxic % after"]["mean"] == pytest.approx(statistics.fmean(values))
    assert "| RL seeds | 5, 6, 42 |" in (repo / "reports" / "sweep.md").read_text()
