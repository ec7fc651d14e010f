"""dvc.yaml's plots read the files and fields that the stages write, and DVC renders every one of them.

The evaluate stage's plot data come from :func:`detox.report.write_plot_data`; renaming a file or a
field there (or in dvc.yaml) fails here. The last test renders all plots with the real ``dvc plots
diff`` in a scratch git + DVC project, comparing two commits as one compares two experiments.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from detox.comparison import compare
from detox.params import PromotionParams
from detox.report import JUDGE_FIELDS, PLOT_DATA, REPORT_FILES, SAMPLE_FIELDS, write_plot_data

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")
TEMPLATES = ROOT / ".dvc" / "plots"
BUILTIN_TEMPLATES = {"linear", "simple", "scatter", "scatter_jitter", "smooth", "confusion", "confusion_normalized",
                     "bar_horizontal", "bar_horizontal_sorted"}
DECLARED = {"samples": SAMPLE_FIELDS, "judges": JUDGE_FIELDS}


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


def definitions() -> dict[str, dict]:
    """The top-level plots: title -> properties."""
    return {name: props for item in dvc_yaml()["plots"] for name, props in item.items()}


def fields(props: dict) -> dict[str, set[str]]:
    """file -> the fields a plot definition reads of it (x and y)."""
    out: dict[str, set[str]] = {}
    for axis in ("x", "y"):
        spec = props.get(axis)
        if isinstance(spec, dict):
            for file, names in spec.items():
                out.setdefault(file, set()).update([names] if isinstance(names, str) else names)
    return out


def stage_constant(name: str) -> str:
    """A ``NAME = Path("...")`` constant of stages/evaluate.py, read without importing the stage."""
    tree = ast.parse((ROOT / "stages" / "evaluate.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [name]:
            return ast.literal_eval(node.value.args[0])
    raise AssertionError(f"stages/evaluate.py has no {name} = Path(...)")


def frames(shift: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A baseline and a PPO frame shaped like score_policy's: 6 prompts x 2 samples, two judges, heated flags."""
    rng = np.random.default_rng(7)
    n = 12

    def one(reward: np.ndarray, toxicity: np.ndarray) -> pd.DataFrame:
        frame = pd.DataFrame({
            "id": np.repeat([f"test_{i}" for i in range(6)], 2), "sample": np.tile([0, 1], 6),
            "dialogue": np.repeat([f"#Person1#: hi {i}\n#Person2#: ho" for i in range(6)], 2),
            "reference": "a reference", "response": [f"summary {i}" for i in range(n)],
            "reward": reward.astype(np.float32), "toxicity": toxicity.astype(np.float32),
            "rouge1": 0.5, "rouge2": 0.4, "rougeL": 0.5, "length": 2, "heated": np.repeat([True, False] * 3, 2),
        })
        frame["toxic"] = frame["toxicity"] > 0.5
        for judge, noise in (("oracle", 0.0), ("ngram", 0.05)):
            frame[f"toxicity:{judge}"] = np.clip(toxicity + noise, 0, 1)
            frame[f"toxic:{judge}"] = frame[f"toxicity:{judge}"] > 0.5
        return frame

    toxicity = rng.uniform(0, 1, n)
    before = one(rng.normal(0, 2, n), toxicity)
    after = one(before["reward"].to_numpy() + 1.0 + shift, toxicity * 0.3)
    return before, after


def write_evaluate_data(out_dir: Path, shift: float = 0.0) -> dict[str, Path]:
    before, after = frames(shift)
    metrics = compare(before, after, PromotionParams(bootstrap_samples=100), seed=0)
    return write_plot_data(before, after, metrics, "oracle", out_dir)


def test_evaluate_plots_read_files_and_fields_the_stage_writes(tmp_path):
    plots_dir = stage_constant("PLOTS")
    written = write_evaluate_data(tmp_path)
    headers = {f"{plots_dir}/{path.name}": path.read_text().splitlines()[0].split("\t")
               for path in written.values()}
    declared = {f"{plots_dir}/{PLOT_DATA[key]}": names for key, names in DECLARED.items()}
    assert {k: list(v) for k, v in declared.items()} == headers  # the files have exactly the declared fields

    read = {}
    for name, props in definitions().items():
        for file, names in fields(props).items():
            if file.startswith(f"{plots_dir}/"):
                assert file in headers, f"{name!r} reads {file}, which the evaluate stage does not write"
                assert names <= set(headers[file]), f"{name!r}: {sorted(names - set(headers[file]))} not in {file}"
                read.setdefault(file, set()).update(names)
    assert set(read) == set(headers), "every plot data file the evaluate stage writes is plotted"

    evaluate = dvc_yaml()["stages"]["evaluate"]
    outs = {next(iter(o)) if isinstance(o, dict) else o: (o[next(iter(o))] if isinstance(o, dict) else {})
            for o in evaluate["outs"] + evaluate.get("metrics", []) + evaluate.get("plots", [])}
    figures, reports = stage_constant("FIGURES"), stage_constant("REPORTS")
    for path in [*headers, figures, *(f"{reports}/{name}" for name in REPORT_FILES.values())]:
        assert path in outs, f"{path} is written by evaluate but is not one of its outs in dvc.yaml"
        assert outs[path] == {"cache": False, "persist": True}, path  # small files, committed to git
    assert all(props.get("persist") is True for props in outs.values())
    assert not any(o.startswith(f"{plots_dir}/") and o.endswith(".png") for o in outs)


def test_every_plot_has_a_template_git_keeps_and_one_quantity_per_axis():
    custom = {p.stem for p in TEMPLATES.glob("*.json")}
    for name, props in definitions().items():
        template = props.get("template", "linear")
        assert template in BUILTIN_TEMPLATES | custom, f"{name!r}: no template {template!r}"
    for path in TEMPLATES.glob("*.json"):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT)
        assert ignored.returncode == 1, f"{path.relative_to(ROOT)} is ignored by git"
        assert "<DVC_METRIC_DATA>" in path.read_text()
    # the reward (a logit) and a toxicity (0 to 1) never share an axis
    for name, props in definitions().items():
        for names in fields(props).values():
            assert not ({"env/reward_mean"} <= names and {"env/toxicity_mean"} <= names), name


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd,
                   check=True, capture_output=True)


@pytest.mark.skipif(not Path(DVC).exists(), reason="dvc is not installed beside this Python")
def test_dvc_plots_diff_renders_every_plot_of_two_revisions(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    subprocess.run([DVC, "init", "-q"], cwd=repo, check=True, capture_output=True)
    shutil.copy2(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(TEMPLATES, repo / ".dvc" / "plots")
    files = {file for props in definitions().values() for file in fields(props)}
    plots_dir = stage_constant("PLOTS")
    for file in files - {f"{plots_dir}/{name}" for name in PLOT_DATA.values()}:
        (repo / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / file, repo / file)  # the other stages' committed plot data
    write_evaluate_data(repo / plots_dir)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "first", cwd=repo)
    write_evaluate_data(repo / plots_dir, shift=0.5)  # another experiment's numbers, in the workspace

    proc = subprocess.run([DVC, "plots", "diff", "HEAD", "--json"], cwd=repo, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert not shown.get("errors"), shown.get("errors")
    rendered = shown["data"]
    for name, props in definitions().items():
        assert name in rendered, f"{name!r} was not rendered"
        [plot] = rendered[name]
        assert plot["type"] == "vega" and set(plot["revisions"]) == {"HEAD", "workspace"}, name
        content = plot["content"]
        text = json.dumps(content)
        assert "<DVC_METRIC" not in text, f"{name!r}: an anchor was left unfilled"
        values = content["data"]["values"]
        assert {row["rev"] for row in values} == {"HEAD", "workspace"}, name
        for names in fields(props).values():
            for rev in ("HEAD", "workspace"):
                assert all(any(f in row for row in values if row["rev"] == rev) for f in names), (name, rev)
        if any(file.startswith(f"{plots_dir}/") for file in fields(props)):  # ours: flat encodings
            for channel in ("x", "y"):
                field = content["encoding"][channel].get("field")
                if field is not None:  # (a histogram's y is a count)
                    assert all(field in row for row in values), f"{name!r}: {channel} field {field!r} not in its data"
    # the evaluate data files are only plotted through these definitions (no meaningless default plot)
    assert not any(key.startswith(f"{plots_dir}/") for key in rendered)
    histogram = rendered["Evaluate reward distribution, baseline and PPO (summaries per bin)"][0]["content"]
    assert histogram["encoding"]["x"]["bin"] and histogram["encoding"]["row"]["field"] == "field"
    assert {row["field"] for row in histogram["data"]["values"]} == {"reward_before", "reward_after"}
