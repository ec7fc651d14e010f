"""dvc.yaml's plots read the files and fields that the stages write, and DVC renders exactly them, offline.

The evaluate stage's plot data come from :func:`detox.evaluate.tables.write_plot_data`; renaming a file or a
field there (or in dvc.yaml) fails here. The rendering tests run the real ``dvc plots diff`` / ``dvc
plots show`` in scratch git + DVC projects, comparing two commits as one compares two experiments, and
draw the charts with vl-convert (the Vega that the page bundles) to check what a reader sees: shares
that compare across experiments of any size, points off the charts' edges, a page that needs no network.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import vl_convert
import yaml

from detox.common.params import PromotionParams
from detox.common.plots_page import PLACEHOLDERS, configured_page, page_template, vega_lite_version
from detox.evaluate.report import REPORT_FILES
from detox.evaluate.statistics import compare
from detox.evaluate.tables import JUDGE_FIELDS, PLOT_DATA, SAMPLE_FIELDS, write_plot_data

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")
TEMPLATES = ROOT / ".dvc" / "plots"
BUILTIN_TEMPLATES = {
    "linear",
    "simple",
    "scatter",
    "scatter_jitter",
    "smooth",
    "confusion",
    "confusion_normalized",
    "bar_horizontal",
    "bar_horizontal_sorted",
}
DECLARED = {"samples": SAMPLE_FIELDS, "judges": JUDGE_FIELDS}
# Templates of ours that draw [0, 1] x [0, 1] (ROC, calibration, toxicity) and the one that bins a field.
UNIT_TEMPLATES = {"unit_curve", "unit_scatter"}
HISTOGRAM = "histogram"


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
        frame = pd.DataFrame(
            {
                "id": np.repeat([f"test_{i}" for i in range(6)], 2),
                "sample": np.tile([0, 1], 6),
                "dialogue": np.repeat([f"#Person1#: hi {i}\n#Person2#: ho" for i in range(6)], 2),
                "reference": "a reference",
                "response": [f"summary {i}" for i in range(n)],
                "reward": reward.astype(np.float32),
                "toxicity": toxicity.astype(np.float32),
                "rouge1": 0.5,
                "rouge2": 0.4,
                "rougeL": 0.5,
                "length": 2,
                "heated": np.repeat([True, False] * 3, 2),
            }
        )
        frame["toxic"] = frame["toxicity"] > 0.5
        for judge, noise in (("oracle", 0.0), ("ngram", 0.05)):
            frame[f"toxicity:{judge}"] = np.clip(toxicity + noise, 0, 1)
            frame[f"toxic:{judge}"] = frame[f"toxicity:{judge}"] > 0.5
        return frame

    toxicity = rng.uniform(0, 1, n)
    toxicity[:2] = [0.0, 1.0]  # the edges of a [0, 1] chart, where points must still show
    before = one(rng.normal(0, 2, n), toxicity)
    after_toxicity = toxicity * 0.3
    after_toxicity[2] = 1.0  # one summary turned toxic
    after = one(before["reward"].to_numpy() + 1.0 + shift, after_toxicity)
    return before, after


def write_evaluate_data(out_dir: Path, shift: float = 0.0) -> dict[str, Path]:
    before, after = frames(shift)
    metrics = compare(before, after, PromotionParams(bootstrap_samples=100), seed=0)
    return write_plot_data(before, after, metrics, "oracle", out_dir)


def test_evaluate_plots_read_files_and_fields_the_stage_writes(tmp_path):
    plots_dir = stage_constant("PLOTS")
    written = write_evaluate_data(tmp_path)
    headers = {f"{plots_dir}/{path.name}": path.read_text().splitlines()[0].split("\t") for path in written.values()}
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
    outs = {
        next(iter(o)) if isinstance(o, dict) else o: (o[next(iter(o))] if isinstance(o, dict) else {})
        for o in evaluate["outs"] + evaluate.get("metrics", []) + evaluate.get("plots", [])
    }
    figures, reports = stage_constant("FIGURES"), stage_constant("REPORTS")
    for path in [*headers, figures, *(f"{reports}/{name}" for name in REPORT_FILES.values())]:
        assert path in outs, f"{path} is written by evaluate but is not one of its outs in dvc.yaml"
        assert outs[path] == {"cache": False, "persist": True}, path  # small files, committed to git
    assert all(props.get("persist") is True for props in outs.values())
    assert not any(o.startswith(f"{plots_dir}/") and o.endswith(".png") for o in outs)


def test_every_plot_has_a_template_git_keeps():
    custom = {p.stem for p in TEMPLATES.glob("*.json")}
    for name, props in definitions().items():
        template = props.get("template", "linear")
        assert template in BUILTIN_TEMPLATES | custom, f"{name!r}: no template {template!r}"
    for path in TEMPLATES.glob("*.json"):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT)
        assert ignored.returncode == 1, f"{path.relative_to(ROOT)} is ignored by git"
        assert "<DVC_METRIC_DATA>" in path.read_text()


def quantity(field: str) -> str:
    """What a plotted field measures, without the split, the source or the policy it was measured on:
    ``eval_loss`` and ``train_loss`` -> loss, ``eval/oracle/toxic_share`` -> toxic_share, ``reward_after`` ->
    reward; ``objective/kl`` (kl) and ``objective/kl_coef`` (kl_coef) stay apart."""
    return re.sub(r"_(before|after)$", "", re.sub(r"^(train|eval)_", "", field.rsplit("/", 1)[-1]))


def test_each_chart_draws_one_quantity_on_one_scale():
    for name, props in definitions().items():
        y = props["y"]
        drawn = {quantity(f) for names in y.values() for f in ([names] if isinstance(names, str) else names)}
        assert len(drawn) == 1, f"{name!r} mixes {sorted(drawn)} on one axis: give each its own chart"
    assert quantity("objective/kl") != quantity("objective/kl_coef")
    assert quantity("eval_accuracy") != quantity("eval_loss")


def test_only_the_charts_of_the_top_level_plots_and_every_plot_file_is_drawn():
    stages = dvc_yaml()["stages"]
    # a stage-level `plots:` entry draws a default plot of every column against the row number
    assert [name for name, stage in stages.items() if "plots" in stage] == []
    plot_outs = {
        next(iter(o))
        for stage in stages.values()
        for o in stage.get("outs", [])
        if isinstance(o, dict) and next(iter(o)).startswith("plots/")
    }
    assert plot_outs, "no stage writes plot data under plots/"
    for path in plot_outs:
        assert dvc_yaml_out(path) == {"cache": False, "persist": True}, path  # small files, committed to git
    drawn = {file for props in definitions().values() for file in fields(props)}
    assert drawn == plot_outs, (
        f"drawn but not written: {sorted(drawn - plot_outs)}; written but not drawn: {sorted(plot_outs - drawn)}"
    )
    for name, props in definitions().items():
        assert props.get("x_label") or props.get("template") == HISTOGRAM, f"{name!r}: no x_label"
        assert props.get("y_label"), f"{name!r}: no y_label"
        # the title is the page's HTML id and sits in a JavaScript string there: a quote would break it
        assert not set(name) & set("'\"\\"), f"{name!r}: no quotes in a plot title"


def dvc_yaml_out(path: str) -> dict:
    for stage in dvc_yaml()["stages"].values():
        for out in stage.get("outs", []):
            if isinstance(out, dict) and path in out:
                return out[path]
    raise AssertionError(f"{path} is no out of dvc.yaml")


def axes(content: dict) -> list[tuple[str, dict]]:
    """Every x and y encoding of a Vega-Lite spec, in layers and facets too: (channel, definition)."""
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "encoding" and isinstance(value, dict):
                    found.extend((ch, value[ch]) for ch in ("x", "y") if isinstance(value.get(ch), dict))
                elif key != "data":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(content)
    return found


def assert_axes_titled(name: str, props: dict, content: dict) -> None:
    """Both axes carry the titles dvc.yaml gives them (a histogram: its field below, the share up the side)."""
    drawn = [(ch, enc) for ch, enc in axes(content) if "field" in enc]  # a datum (the diagonal) draws no axis
    assert {ch for ch, _ in drawn} == {"x", "y"}, f"{name!r}: not both axes drawn from the data"
    histogram = props.get("template") == HISTOGRAM
    expected = {
        "x": props["y_label"] if histogram else props["x_label"],
        "y": "share of summaries" if histogram else props["y_label"],
    }
    for channel, enc in drawn:
        assert enc.get("title") == expected[channel], f"{name!r}: the {channel} axis is titled {enc.get('title')!r}"
        assert expected[channel] not in {"x", "y"}, f"{name!r}: {channel} axis titled {expected[channel]!r}"


def git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def scratch_project(repo: Path) -> Path:
    """A git + DVC project with this one's dvc.yaml, DVC config and templates, the other stages' committed plot
    data and the evaluate data of :func:`frames`, committed."""
    repo.mkdir()
    git("init", "-q", cwd=repo)
    subprocess.run([DVC, "init", "-q"], cwd=repo, check=True, capture_output=True)
    shutil.copy2(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(TEMPLATES, repo / ".dvc" / "plots")
    files = {file for props in definitions().values() for file in fields(props)}
    plots_dir = stage_constant("PLOTS")
    for file in files - {f"{plots_dir}/{name}" for name in PLOT_DATA.values()}:
        (repo / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / file, repo / file)  # the other stages' committed plot data
    write_evaluate_data(repo / plots_dir)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "first", cwd=repo)
    return repo


def plots_diff(repo: Path) -> dict[str, dict]:
    """``dvc plots diff HEAD --json``: chart title -> its one Vega-Lite plot (workspace against HEAD)."""
    proc = subprocess.run(
        [DVC, "plots", "diff", "HEAD", "--json"], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert not shown.get("errors"), shown.get("errors")
    charts = {}
    for name, plots in shown["data"].items():
        [charts[name]] = plots
    return charts


def computed_fields(content: dict) -> set[str]:
    """The fields a spec's transforms make (not in the data files)."""
    made = set()
    for step in content.get("transform", []):
        made |= {step["as"]} if isinstance(step.get("as"), str) else set()
        made |= {op["as"] for op in step.get("joinaggregate", [])}
    return made


needs_dvc = pytest.mark.skipif(not Path(DVC).exists(), reason="dvc is not installed beside this Python")


@needs_dvc
def test_dvc_plots_diff_renders_every_plot_of_two_revisions(tmp_path):
    repo = scratch_project(tmp_path / "repo")
    plots_dir = stage_constant("PLOTS")
    write_evaluate_data(repo / plots_dir, shift=0.5)  # another experiment's numbers, in the workspace

    rendered = plots_diff(repo)
    # exactly the charts of dvc.yaml's top-level plots: no stage-level default plot of a file's every column
    assert list(rendered) == list(definitions())
    for name, props in definitions().items():
        plot = rendered[name]
        assert plot["type"] == "vega" and set(plot["revisions"]) == {"HEAD", "workspace"}, name
        content = plot["content"]
        text = json.dumps(content)
        assert "<DVC_METRIC" not in text, f"{name!r}: an anchor was left unfilled"
        assert_axes_titled(name, props, content)
        values = content["data"]["values"]
        assert {row["rev"] for row in values} == {"HEAD", "workspace"}, name
        for names in fields(props).values():
            for rev in ("HEAD", "workspace"):
                assert all(any(f in row for row in values if row["rev"] == rev) for f in names), (name, rev)
        for channel, enc in axes(content):
            if "field" in enc and enc["field"] not in computed_fields(content):
                assert all(enc["field"] in row for row in values), f"{name!r}: {channel} {enc['field']!r} not in data"
    [two_fields] = [
        name
        for name, props in definitions().items()
        if props.get("template") == HISTOGRAM and len(fields(props)[f"{plots_dir}/samples.tsv"]) == 2
    ]
    histogram = rendered[two_fields]["content"]
    assert histogram["encoding"]["x"]["bin"] and histogram["encoding"]["row"]["field"] == "field"
    assert {row["field"] for row in histogram["data"]["values"]} == {"reward_before", "reward_after"}


# --------------------------------------------------------------------------- what a reader sees


@pytest.fixture(scope="module")
def larger_experiment(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """A scratch project whose workspace holds the committed evaluate summaries three times over (an experiment
    three times the size, with the same distribution), and its ``dvc plots diff HEAD`` charts."""
    repo = scratch_project(tmp_path_factory.mktemp("larger") / "repo")
    samples = repo / stage_constant("PLOTS") / PLOT_DATA["samples"]
    frame = pd.read_csv(samples, sep="\t", dtype=str)
    pd.concat([frame] * 3).to_csv(samples, sep="\t", index=False)
    return repo, plots_diff(repo)


def scenegraph(content: dict) -> dict:
    """The chart as the page's Vega draws it (vl-convert runs the same Vega-Lite and Vega)."""
    return vl_convert.vegalite_to_scenegraph(content, vl_version=vega_lite_version())


def data_marks(node: object, marktype: str) -> list[list[dict]]:
    """The items of every data mark (not axes, legends or grid) of ``marktype`` in a scenegraph, per mark."""
    if isinstance(node, dict):
        own = [node["items"]] if node.get("marktype") == marktype and node.get("role") == "mark" else []
        return own + [items for value in node.values() for items in data_marks(value, marktype)]
    if isinstance(node, list):
        return [items for value in node for items in data_marks(value, marktype)]
    return []


def charts_with(template: str | set[str]) -> list[str]:
    templates = {template} if isinstance(template, str) else template
    names = [name for name, props in definitions().items() if props.get("template") in templates]
    assert names, f"no chart uses {templates}"
    return names


@needs_dvc
def test_histograms_show_shares_so_experiments_of_any_size_compare(larger_experiment):
    _, rendered = larger_experiment
    for name in charts_with(HISTOGRAM):
        content = rendered[name]["content"]
        assert content["encoding"]["y"]["title"] == "share of summaries", name
        sizes = pd.DataFrame(content["data"]["values"]).groupby("rev").size()
        assert sizes["workspace"] == 3 * sizes["HEAD"], name  # counts would make the workspace's bars 3x as high
        facets = data_marks(scenegraph(content), "rect")
        assert facets, f"{name!r}: no bars drawn"
        for bars in facets:
            by_rev: dict[str, list[tuple[float, float, float]]] = {}
            for bar in bars:
                by_rev.setdefault(bar["fill"], []).append(
                    (round(bar["x"], 6), round(bar["width"], 6), round(bar["height"], 6))
                )
            assert len(by_rev) == 2, f"{name!r}: one colour per revision"
            heights = [sorted(b) for b in by_rev.values()]
            assert heights[0] == heights[1], f"{name!r}: the same distribution drew different bars"
            assert all(h > 0 for _, _, h in heights[0])


@needs_dvc
def test_unit_charts_keep_points_on_0_and_1_off_the_edges(larger_experiment):
    _, rendered = larger_experiment
    at_edges = set()
    for name in charts_with(UNIT_TEMPLATES):
        content = rendered[name]["content"]
        graph = scenegraph(content)
        x_field, y_field = (
            next(e["field"] for ch, e in axes(content) if ch == axis and "field" in e) for axis in ("x", "y")
        )
        values = pd.DataFrame(content["data"]["values"])
        for axis, field_name in (("x", x_field), ("y", y_field)):
            at_edges |= {(axis, v) for v in values[field_name].astype(float) if v in (0.0, 1.0)}
        [points] = data_marks(graph, "symbol")
        assert len(points) == len(values), name
        for point in points:
            # the domain is [-0.04, 1.04]: 0 and 1 lie 4% of the plot inside its edges (12 px of 300)
            assert 10 < point["x"] < content["width"] - 10 and 10 < point["y"] < content["height"] - 10, name
        [diagonal] = data_marks(graph, "rule")
        assert len(diagonal) == 1, name
    assert at_edges == {("x", 0.0), ("x", 1.0), ("y", 0.0), ("y", 1.0)}  # the check saw points on every edge


# --------------------------------------------------------------------------- the page, offline


def test_page_template_inlines_the_bundle_and_keeps_dvcs_placeholders():
    page = page_template("window.vegaEmbed = function () {};")
    assert page.count("{plot_divs}") == 1 and page.count("{refresh_tag}") == 1
    assert "{scripts}" not in page  # where DVC would put its CDN <script> tags
    assert "window.vegaEmbed = function () {};" in page and not re.search(r"<script[^>]*\bsrc=", page)
    for bad in ("a = '</script>';", *(f"a = '{p}';" for p in PLACEHOLDERS)):
        with pytest.raises(ValueError, match="cannot be inlined"):
            page_template(bad)


@needs_dvc
def test_plain_dvc_plots_show_writes_a_page_that_needs_no_network(larger_experiment):
    repo, _ = larger_experiment
    write = subprocess.run([sys.executable, "-m", "detox.common.plots_page"], cwd=repo, capture_output=True, text=True)
    assert write.returncode == 0, write.stderr
    assert configured_page(repo).is_file() and configured_page(repo).parent == repo / ".dvc"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(configured_page(ROOT))], cwd=ROOT)
    assert ignored.returncode == 0, "the generated page is ignored by git"
    show = subprocess.run([DVC, "plots", "show"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert show.returncode == 0, show.stderr
    page = (repo / "dvc_plots" / "index.html").read_text(encoding="utf-8")

    markup = re.sub(r"(<script\b[^>]*>).*?</script>", r"\1</script>", page, flags=re.S | re.I)  # scripts' text out
    assert markup.count("<script") == len(definitions()) + 1  # the bundle, then one per chart
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", markup, re.I)
    assert not [t for t in tags if re.search(r"\b(?:src|href)\s*=", t, re.I)], "every script and style inline"
    assert "cdn.jsdelivr" not in page and "@import" not in page
    assert vl_convert.javascript_bundle(vl_version=vega_lite_version()) in page
    divs = re.findall(r'<div id = "([^"]*)">', page)
    assert len(divs) == len(definitions())  # one per chart of dvc.yaml, no default plot
    for div in divs:
        assert re.fullmatch(r"[A-Za-z][\w-]*", div), f"{div!r} breaks the page's vegaEmbed('#...') call"
        assert f"vegaEmbed('#{div}', spec);" in page
