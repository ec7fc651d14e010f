"""The benchmark scripts run end to end on a tiny built-in world and report what they claim.

They are timing tools, so nothing here asserts a speed: only that both variants run on the
same inputs, that the reported numbers are consistent with each other, and that a missing
input is a clear error.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import conftest
from detox.models.precision import cpu_multiplies_bf16
from detox.models.skinny import packed_available

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ppo_vs_original.py"


@pytest.fixture(scope="module")
def bench_world(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench_world")
    params = conftest.tiny_params()
    conftest.build_world(params, root)
    params_file = root / "params.yaml"
    dumped = params.model_dump(mode="json")
    dumped["ppo"].update(mini_batch_size=2, ppo_epochs=1)
    params_file.write_text(yaml.safe_dump(dumped))
    return root, params_file


def run_bench(root: Path, params_file: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        str(SCRIPT),
        "--size",
        "builtin",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--eval-samples",
        "3",
        "--max-new-tokens",
        "6",
        "--params",
        str(params_file),
        "--policy",
        str(root / "models" / "policy"),
        "--reward",
        str(root / "models" / "reward"),
        "--train",
        str(root / "data" / "raw" / "train.parquet"),
        "--test",
        str(root / "data" / "raw" / "test.parquet"),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, cwd=root, env=env, timeout=conftest.HANG_S)


@pytest.mark.slow
def test_ppo_vs_original_runs_both_variants_counts_flops_and_profiles(bench_world):
    root, params_file = bench_world
    proc = run_bench(root, params_file, "--flops", "--profile")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("JSON ", 1)[1])
    original, ours = report["results"]["original"], report["results"]["ours"]
    assert original["params_m"] == ours["params_m"] > 0  # the same base model, counted before LoRA
    assert original["embedding_dtype"] == ours["embedding_dtype"] == "torch.float32"
    assert ours["mixed_precision"] == "no" and ours["matmul_dtype"] == "float32"  # ppo.precision fp32
    for result in (original, ours):
        phases = result["phases"]
        assert all(phases[p] >= 0 for p in ("generation", "scoring", "forward", "optimization"))
        assert phases["total"] >= phases["generation"] + phases["optimization"]
        assert result["eval_samples_per_s"] > 0 and result["gen_tokens_per_s"] > 0 and result["peak_rss_mib"] > 0
    gflop = ours["gflop"]
    assert {"generation", "forward", "optimization", "total"} <= gflop.keys()
    assert all(gflop[p] > 0 for p in ("generation", "forward", "optimization"))
    assert gflop["total"] == pytest.approx(gflop["generation"] + gflop["forward"] + gflop["optimization"])
    assert ours["eval_gflop_per_sample"] > 0 and min(ours["matmul_gflops"].values()) > 0
    assert "peak RSS b/a" in proc.stdout and "at that floor ours would be" in proc.stdout
    for phase in ("generation", "forward", "optimization"):
        assert f"[ours, profile of the {phase} phase]" in proc.stderr


@pytest.mark.slow
def test_ppo_vs_original_runs_in_bfloat16(bench_world):
    """The dtype reaches both variants' models (as a GPU run in bf16 needs); LoRA stays float32."""
    root, params_file = bench_world
    proc = run_bench(root, params_file, "--dtype", "bfloat16", "--variants", "ours,original")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("JSON ", 1)[1])
    assert {r["embedding_dtype"] for r in report["results"].values()} == {"torch.bfloat16"}
    assert all(r["peak_gpu_mib"] is None and r["device"] == "cpu" for r in report["results"].values())
    assert "cpu bfloat16" in proc.stdout


@pytest.mark.slow
def test_ppo_vs_original_runs_ours_under_the_stages_bf16_autocast(bench_world, tmp_path):
    """ppo.precision bf16 reaches ours' accelerator (fp32 weights, autocast), and the floor uses bf16 rates."""
    root, params_file = bench_world
    dumped = yaml.safe_load(params_file.read_text())
    dumped["ppo"]["precision"] = "bf16"
    bf16_params = tmp_path / "params.yaml"
    bf16_params.write_text(yaml.safe_dump(dumped))
    proc = run_bench(root, bf16_params, "--variants", "ours", "--flops")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = json.loads(proc.stdout.split("JSON ", 1)[1])["results"]["ours"]
    assert ours["mixed_precision"] == "bf16" and ours["embedding_dtype"] == "torch.float32"
    assert ours["matmul_dtype"] == "bfloat16" and "best bfloat16 matmul rate" in proc.stdout
    assert "cpu float32 weights, ours under ppo.precision bf16" in proc.stdout


def test_ppo_vs_original_refuses_fp16_on_a_cpu_as_the_stage_does(bench_world, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    root, params_file = bench_world
    dumped = yaml.safe_load(params_file.read_text())
    dumped["ppo"]["precision"] = "fp16"
    fp16_params = tmp_path / "params.yaml"
    fp16_params.write_text(yaml.safe_dump(dumped))
    proc = run_bench(root, fp16_params, "--variants", "ours")
    assert proc.returncode != 0 and "error: ppo.precision fp16 needs a GPU" in proc.stderr
    assert "Traceback" not in proc.stderr and "the ours variant failed" in proc.stderr


def test_ppo_vs_original_cuda_without_a_gpu_is_a_clear_error(bench_world):
    root, params_file = bench_world
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_bench(root, params_file, "--device", "cuda")
    assert proc.returncode == 2 and "--device cuda: torch sees no CUDA device" in proc.stderr


def test_ppo_vs_original_missing_input_is_a_clear_error(bench_world, tmp_path):
    root, params_file = bench_world
    proc = run_bench(root, params_file, "--policy", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert f"--policy {tmp_path / 'nowhere'} does not exist" in proc.stderr
    assert "dvc repro sft reward" in proc.stderr and "Traceback" not in proc.stderr


def machine_rates(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "machine_rates.py"), *args],
        capture_output=True,
        text=True,
        timeout=conftest.HANG_S,
    )


def test_machine_rates_prints_every_rate():
    proc = machine_rates("--seconds", "0.05")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in ("matmul float32", "matmul bfloat16", "decoding-step matmul", "copy of 1 GiB"):
        assert label in proc.stdout
    bad = machine_rates("--seconds", "0")
    assert bad.returncode == 2 and "--seconds must be positive" in bad.stderr
    skinny = machine_rates("--skinny", "--seconds", "0.01")
    assert skinny.returncode == 0, skinny.stderr[-3000:]
    rows = {line.split(" x ")[0].strip() + "x" + line.split()[2]: line for line in skinny.stdout.splitlines()[2:]}
    assert len(rows) == 8 and "copy of 1 GiB" not in skinny.stdout  # the table alone
    # the path: flan-t5-base's four layer shapes at 4, 16 and 64 rows; no built-in layer, no 1 or 256 rows
    marked = {shape: line.count("*") for shape, line in rows.items()}
    assert marked == {shape: 3 if shape in ("768x768", "768x2048", "2048x768", "768x32128") else 0 for shape in rows}
    for line in rows.values():
        assert len(re.findall(r"\d+\.\d -> +\d+\.\d \(\d+\.\d\d\)", line)) == 5  # rates and ratio per row count
    bf16 = machine_rates("--skinny", "--seconds", "0.01", "--dtype", "bfloat16")
    assert bf16.returncode == 0, bf16.stderr[-3000:]
    assert "threads, bfloat16;" in bf16.stdout and "*" not in bf16.stdout.split("\n", 1)[1]  # fp32 only takes the path
    assert len(bf16.stdout.splitlines()) == 10


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_machine_rates_times_weight_first_against_packed_weights_at_flan_t5_base_shapes(dtype):
    proc = machine_rates("--packed", "--seconds", "0.01", "--dtype", dtype)
    if not packed_available(getattr(torch, dtype)):
        assert proc.returncode == 1 and f"no oneDNN packed linear in {dtype} here" in proc.stdout
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("weight-first -> packed" if dtype == "float32" else "F.linear -> packed") in proc.stdout
    rows = proc.stdout.splitlines()[2:]
    assert [line.split(" x ")[0].strip() for line in rows] == ["768", "768", "2048", "768"]  # flan-t5-base's 4 shapes
    for line in rows:
        cells = re.findall(r"(\d+) -> +(\d+) \((\d+\.\d\d)\)(\*?)", line)
        assert len(cells) == 6  # 2 to 64 rows
        assert [mark for *_, mark in cells] == ["", "", "*", "*", "*", "*"]  # packed from 8 rows
        for first, packed, ratio, _ in cells:
            assert float(ratio) == pytest.approx(int(first) / int(packed), rel=0.05, abs=0.02)


def test_algorithms_benchmark_runs_ppo_rloo_and_grpo_at_the_same_number_of_summaries(bench_world):
    root, params_file = bench_world
    args = [
        sys.executable,
        str(ROOT / "benchmarks" / "algorithms.py"),
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--samples-per-prompt",
        "2",
        "--max-new-tokens",
        "6",
        "--params",
        str(params_file),
        "--policy",
        str(root / "models" / "policy"),
        "--reward",
        str(root / "models" / "reward"),
        "--train",
        str(root / "data" / "raw" / "train.parquet"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, cwd=root, env=env, timeout=conftest.HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("JSON ", 1)[1])["results"]
    assert list(results) == ["ppo", "rloo", "grpo"]
    assert [(r["k"], r["prompts_per_step"]) for r in results.values()] == [(1, 4), (2, 2), (2, 2)]
    assert [r["value_head"] for r in results.values()] == [True, False, False]
    assert results["ppo"]["trainable_m"] > results["rloo"]["trainable_m"] == results["grpo"]["trainable_m"]
    for result in results.values():
        assert result["phases"]["total"] >= result["phases"]["generation"] > 0 and result["response_tokens"] > 0
    assert "ratios against ppo" in proc.stdout and "total per response token" in proc.stdout
    bad = subprocess.run([*args, "--batch-size", "5"], capture_output=True, text=True, cwd=root, env=env)
    assert bad.returncode == 2 and "multiple of --samples-per-prompt" in bad.stderr


def _bench_module(name: str):
    """A script of benchmarks/ as a module (its ``from common import ...`` resolved beside it).

    The scripts set environment variables when imported (``TQDM_DISABLE``); they are undone here,
    so the tests after this one keep the environment they had."""
    import importlib.util
    from unittest import mock

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(os.environ), mock.patch.object(sys, "path", [str(ROOT / "benchmarks"), *sys.path]):
        spec.loader.exec_module(module)
    return module


def _pipeline_times():
    return _bench_module("pipeline_times")


def test_ppo_vs_original_and_algorithms_take_the_notebook_settings(bench_world, capsys):
    """--ppo-epochs and --mini-batch-size replace params.yaml's in the settings every worker builds."""
    root, params_file = bench_world
    bench = _bench_module("ppo_vs_original")
    common = ["--params", str(params_file), "--policy", str(root / "models" / "policy")]
    default = bench.bench_params(bench.parse_args(common))
    assert (default.ppo.ppo_epochs, default.ppo.mini_batch_size) == (1, 2)  # bench_world's params.yaml
    notebook = ["--max-new-tokens", "48", "--ppo-epochs", "3", "--mini-batch-size", "4"]
    ppo = bench.bench_params(bench.parse_args(common + notebook)).ppo
    assert (ppo.ppo_epochs, ppo.mini_batch_size, ppo.batch_size) == (3, 4, 16)
    assert ppo.response_length.min == ppo.response_length.max == 48
    algorithms = _bench_module("algorithms")
    for algorithm in ("ppo", "rloo"):
        ppo = algorithms.algorithm_params(algorithms.parse_args(common + notebook), algorithm).ppo
        assert (ppo.algorithm, ppo.ppo_epochs, ppo.mini_batch_size) == (algorithm, 3, 4)
    refused = ((["--mini-batch-size", "5"], "must divide --batch-size 16"), (["--ppo-epochs", "0"], "at least 1"))
    for parse in (bench.parse_args, algorithms.parse_args):
        for bad, words in refused:
            with pytest.raises(SystemExit):
                parse(common + bad)
            assert words in capsys.readouterr().err


def test_pipeline_times_runs_the_stages_in_an_order_dvc_can_run_them():
    times = _pipeline_times()
    order = times.stages(ROOT)
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(order) == set(dvc) and order[0] == "fetch" and order[-1] == "evaluate"

    def paths(entries):
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]

    made_by = {out: name for name, stage in dvc.items() for out in paths(stage.get("outs"))}
    for position, name in enumerate(order):
        for dep in dvc[name].get("deps", []):
            producer = next((made_by[out] for out in made_by if dep == out or dep.startswith(out + "/")), None)
            assert producer is None or order.index(producer) < position, (name, dep, producer)


def test_pipeline_times_runs_a_clone_with_the_clones_own_library_code(tmp_path):
    # the .venv installs this checkout's src in editable mode: a clone of another commit must not import it
    (tmp_path / "src" / "detox").mkdir(parents=True)
    (tmp_path / "src" / "detox" / "__init__.py").write_text("")
    env = _pipeline_times().stage_env(tmp_path)
    code = "import detox, pathlib; print(pathlib.Path(detox.__file__).resolve().parent)"
    found = subprocess.run(["python", "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert found.strip() == str((tmp_path / "src" / "detox").resolve())
    assert "MLFLOW_TRACKING_URI" not in env  # the clone's own store


def test_pipeline_times_applies_overrides_and_refuses_unknown_keys(tmp_path):
    times = _pipeline_times()
    params_file = tmp_path / "params.yaml"
    params_file.write_text((ROOT / "params.yaml").read_text())
    times.apply_sets(params_file, ["sft.epochs=2", "ppo.kl.init_coef=0.25", "eval.judges=[oracle]"])
    params = yaml.safe_load(params_file.read_text())
    assert params["sft"]["epochs"] == 2 and params["ppo"]["kl"]["init_coef"] == 0.25
    assert params["eval"]["judges"] == ["oracle"]
    for bad, words in (("sft.epoch=2", "no key 'epoch'"), ("sftx.epochs=2", "no section 'sftx'"), ("sft", "key=value")):
        with pytest.raises(SystemExit, match=words):
            times.apply_sets(params_file, [bad])
    assert yaml.safe_load(params_file.read_text()) == params  # a refused override changes nothing


def test_pipeline_times_reads_the_numbers_a_speed_up_must_keep(tmp_path):
    times = _pipeline_times()
    evaluation = json.loads((ROOT / "metrics" / "evaluate.json").read_text())
    judge = evaluation["promotion"]["judge"]
    numbers = times.outcome(ROOT)
    assert (
        numbers["sft_validation_rougeL"] == json.loads((ROOT / "metrics" / "sft.json").read_text())["validation_rougeL"]
    )
    assert numbers[f"{judge}_toxic_before"] == evaluation["before"]["toxicity"][judge]["toxic_share"]
    assert numbers[f"{judge}_toxic_after"] == evaluation["after"]["toxicity"][judge]["toxic_share"]
    # the evaluate stage's own improvement, with the sign of a change
    assert numbers[f"{judge}_toxic_change_pct"] == pytest.approx(-evaluation["improvement_pct"][judge]["toxic_share"])
    assert set(times.outcome(tmp_path).values()) == {None}  # a run that stopped early has no numbers


def test_sft_steps_times_random_and_grouped_batches_and_counts_the_floor(bench_world):
    root, params_file = bench_world
    args = [
        sys.executable,
        str(ROOT / "benchmarks" / "sft_steps.py"),
        "--rounds",
        "1",
        "--steps",
        "1",
        "--params",
        str(params_file),
        "--base",
        str(root / "models" / "base" / "policy"),
        "--raw",
        str(root / "data" / "raw"),
    ]
    proc = subprocess.run([*args, "--flops"], capture_output=True, text=True, cwd=root, timeout=conftest.HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.startswith(("random", "grouped"))
    }
    assert set(rows) == {"random", "grouped"}
    assert rows["random"][5] == "1.00x"  # the ratio column is against the random order itself
    assert "GFLOP" in proc.stdout and "compute floor" in proc.stdout
    bad = subprocess.run([*args[:-4], "--steps", "50", *args[-4:]], capture_output=True, text=True, cwd=root)
    assert bad.returncode == 2 and "an epoch has" in bad.stderr
    bf16 = subprocess.run([*args, "--bf16"], capture_output=True, text=True, cwd=root, timeout=conftest.HANG_S)
    variants = ("random", "grouped", "bf16")
    if cpu_multiplies_bf16():  # the variant runs, on the same batches as the random order
        assert bf16.returncode == 0, bf16.stderr[-3000:]
        rows = [line.split() for line in bf16.stdout.splitlines() if line.startswith(variants)]
        losses = {row[0]: float(row[-1]) for row in rows}
        assert set(losses) == {"random", "grouped", "bf16"} and math.isfinite(losses["bf16"])
    else:  # refused up front: bf16 would run hundreds of times slower here
        assert bf16.returncode == 2 and "this CPU has no bf16 instructions" in bf16.stderr


@pytest.mark.slow
def test_attention_benchmark_times_the_four_kernels_in_the_sft_step_and_generate(bench_world):
    root, params_file = bench_world
    args = [
        sys.executable,
        str(ROOT / "benchmarks" / "attention.py"),
        "--rounds",
        "1",
        "--steps",
        "1",
        "--batch",
        "4",
        "--new-tokens",
        "4",
        "--params",
        str(params_file),
        "--base",
        str(root / "models" / "base" / "policy"),
        "--raw",
        str(root / "data" / "raw"),
        "--policy",
        str(root / "models" / "policy"),
        "--data",
        str(root / "data" / "raw" / "test.parquet"),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=root, timeout=conftest.HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables = [table.strip() for table in proc.stdout.split("\n\n")]
    sft, generate = (next(t for t in tables if t.startswith(title)) for title in ("sft step", "generate"))
    for table, note in ((sft, "loss after 3 steps"), (generate, "tokens equal to the first line's")):
        rows = [line for line in table.splitlines() if line.startswith(("sdpa", "eager"))]
        names = [" ".join(line.split()[:2]) for line in rows]
        assert names == ["sdpa, gelu_new", "eager, gelu_new", "sdpa, gelu_pytorch_tanh", "eager, gelu_pytorch_tanh"]
        assert rows[0].split()[4] == "1.000x" and all(note in line for line in rows)  # against the first line
    assert "over the stage's" in sft
    bad = subprocess.run([*args, "--sft", "--size", "base"], capture_output=True, text=True, cwd=root)
    assert bad.returncode == 2 and "--size base is for --generate" in bad.stderr


def test_draws_benchmark_checks_both_paths_give_the_same_summaries(bench_world):
    root, params_file = bench_world
    args = [
        sys.executable,
        str(ROOT / "benchmarks" / "draws.py"),
        "--n",
        "5",
        "--k",
        "2",
        "--repeats",
        "1",
        "--params",
        str(params_file),
        "--policy",
        str(root / "models" / "policy"),
        "--data",
        str(root / "data" / "raw" / "test.parquet"),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=root, timeout=conftest.HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the same summaries from both" in proc.stdout
    assert "5 dialogues x 2 samples" in proc.stdout and "separate / draws (medians):" in proc.stdout
    missing = subprocess.run([*args[:-2], "--data", str(root / "nothing.parquet")], capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_generation_floor_counts_the_encoder_apart_and_the_decoding_per_token(bench_world):
    root, params_file = bench_world
    args = [
        sys.executable,
        str(ROOT / "benchmarks" / "generation_floor.py"),
        "--batch",
        "3",
        "--repeats",
        "1",
        "--params",
        str(params_file),
        "--policy",
        str(root / "models" / "policy"),
        "--data",
        str(root / "data" / "raw" / "test.parquet"),
    ]

    def table(new_tokens: int) -> dict[str, list[float]]:
        proc = subprocess.run(
            [*args, "--new-tokens", str(new_tokens)], capture_output=True, text=True, cwd=root, timeout=conftest.HANG_S
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "3 prompts of" in proc.stdout and "sampled tokens/s" in proc.stdout
        # the built-in model's layers are too small for skinny matmuls: both timed paths are F.linear
        assert "skinny matmuls (0 layers, packed) (the path above) against F.linear" in proc.stdout
        assert "100.0% of the tokens equal" in proc.stdout
        parts = ("encoder ", "decoding ", "generate ")
        rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.startswith(parts)}
        assert set(rows) == {"encoder", "decoding", "generate"}
        # part, GFLOP, GB read, compute s, memory s, median s, min s ("-" for decoding: the whole call less the
        # encoder), x floor, GFLOP/s, GB/s
        return {name: [float("nan") if v == "-" else float(v) for v in row] for name, row in rows.items()}

    tables = [table(n) for n in (4, 8, 12)]
    extra = subprocess.run(
        [*args, "--new-tokens", "4", "--static", "--profile", "--sampler", "--dtype", "bfloat16"],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert extra.returncode == 0, extra.stderr[-3000:]
    assert re.search(r"static KV cache, not compiled \([\d.e-]+ s median\): [\d.]+x the time", extra.stdout)
    drawn = r"sampler multinomial \(the path above; one draw [\d.]+ ms\) against inverse_cdf \([\d.e-]+ s median, "
    assert re.search(drawn + r"[\d.]+x the floor; one draw [\d.]+ ms\): [\d.]+x as fast; other draws", extra.stdout)
    profiled = "decoding steps of one call (skinny matmuls (0 layers, packed)), top operators by self CPU time:"
    assert profiled in extra.stdout
    assert "aten::mm" in extra.stdout and "Self CPU time total" in extra.stdout
    assert "bfloat16 matmul GFLOP/s" in extra.stdout and "memory bandwidth" in extra.stdout
    bf16 = {line.split()[0]: line.split()[1:] for line in extra.stdout.splitlines() if line.startswith("generate ")}
    # bf16 weights and cache: half the bytes of the fp32 call with the same prompts and tokens (4 significant digits)
    assert float(bf16["generate"][1]) == pytest.approx(tables[0]["generate"][1] / 2, rel=2e-3)
    for rows in tables:
        gflop, gb, compute, memory, median = rows["generate"][:5]
        assert gflop == pytest.approx(rows["encoder"][0] + rows["decoding"][0], rel=1e-3)
        assert gb == pytest.approx(rows["encoder"][1] + rows["decoding"][1], rel=1e-3)
        assert compute > 0 and memory > 0
        assert rows["generate"][6] == pytest.approx(median / max(compute, memory), rel=2e-3, abs=0.01)  # "x floor"
    assert len({rows["encoder"][0] for rows in tables}) == 1 and tables[0]["encoder"][0] > 0  # same prompts
    assert len({rows["encoder"][1] for rows in tables}) == 1 and tables[0]["encoder"][1] > 0  # its weights once
    # Each 4 more tokens add about the same decoding work (a little more: self-attention over a longer cache),
    # and more bytes each time: every step reads the decoder's weights and a cache one position longer.
    for column in (0, 1):
        decoding = [rows["decoding"][column] for rows in tables]
        first, second = decoding[1] - decoding[0], decoding[2] - decoding[1]
        assert 0 < first <= second * 1.01 and second == pytest.approx(first, rel=0.25)
    assert tables[2]["decoding"][1] - tables[1]["decoding"][1] > tables[1]["decoding"][1] - tables[0]["decoding"][1]
    bad = subprocess.run([*args[:2], "--batch", "10000", *args[4:]], capture_output=True, text=True, cwd=root)
    assert bad.returncode == 2 and "has only" in bad.stderr
    if not torch.cuda.is_available():
        gpu = subprocess.run([*args, "--device", "cuda"], capture_output=True, text=True, cwd=root)
        assert gpu.returncode == 2 and "--device cuda: torch sees no CUDA device here" in gpu.stderr


def test_memory_traffic_counts_each_weight_where_a_t5_generate_call_reads_it():
    """The bytes against a count by hand from a T5 config: the encoder's weights once; per decoding step the
    decoder's (the cross-attention's key and value once in all) and the LM head, and the KV cache it attends to."""
    from transformers import T5Config, T5ForConditionalGeneration

    bench = _bench_module("generation_floor")
    d, heads, d_kv, d_ff, vocab, buckets = 16, 2, 4, 24, 50, 8
    config = T5Config(
        d_model=d,
        d_kv=d_kv,
        num_heads=heads,
        d_ff=d_ff,
        num_layers=2,
        num_decoder_layers=3,
        vocab_size=vocab,
        relative_attention_num_buckets=buckets,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    model = T5ForConditionalGeneration(config).eval()
    inner = heads * d_kv
    attention, feed_forward = 4 * d * inner, 3 * d * d_ff  # q, k, v, o; wi_0, wi_1, wo
    encoder = 2 * (attention + feed_forward + 2 * d) + buckets * heads + d  # norms; relative bias; final norm
    decoder_step = 3 * (attention + 2 * d * inner + feed_forward + 3 * d) + buckets * heads + d + vocab * d
    once = 3 * 2 * d * inner  # the cross-attention's k and v in each decoder layer
    batch, prompt, steps = 5, 7, 6
    cache = sum(3 * 2 * batch * inner * (t + prompt) for t in range(1, steps + 1))  # K and V, self and cross
    assert bench.memory_traffic(model, batch, prompt, steps) == (4 * encoder, 4 * (once + steps * decoder_step + cache))
    half = bench.memory_traffic(model.to(torch.bfloat16), batch, prompt, steps)
    assert half == (2 * encoder, 2 * (once + steps * decoder_step + cache))


@pytest.mark.skipif(not packed_available(), reason="this torch has no oneDNN packed linear")
def test_generation_floor_counts_the_packed_paths_flops_and_times_it_against_weight_first(
    bench_world, monkeypatch, capsys
):
    """With every layer large enough (MIN_WEIGHT 1) and 8 rows, the pipeline's path packs weights: the FLOPs
    counted are still the F.linear path's (the counter does not see oneDNN's kernel), and weight-first without
    packing is timed as a third path."""
    import detox.models.skinny as skinny

    root, params_file = bench_world
    monkeypatch.setattr(skinny, "MIN_WEIGHT", 1)
    bench = _bench_module("generation_floor")
    common = ["--batch", "8", "--repeats", "1", "--new-tokens", "4", "--params", str(params_file)]
    common += ["--policy", str(root / "models" / "policy"), "--data", str(root / "data" / "raw" / "test.parquet")]

    def gflop(extra: list[str]) -> tuple[float, str]:
        assert bench.main(common + extra) == 0
        out = capsys.readouterr().out
        rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("generate ")}
        return float(rows["generate"][0]), out

    packed, out = gflop([])
    plain, plain_out = gflop(["--no-skinny"])
    assert re.search(r"skinny matmuls \([1-9]\d* layers, packed\) \(the path above\) against F.linear", out)
    assert re.search(r"with oneDNN's packed weights against weight-first without them \([\d.e-]+ s median", out)
    assert "packed weights" not in plain_out  # F.linear above: nothing packed to compare
    # bf16 where the kernel has no bf16 (a CPU without bf16 instructions): no packed path to time against
    monkeypatch.setattr(bench, "packed_available", lambda dtype=torch.float32: dtype == torch.float32)
    _, bf16_out = gflop(["--dtype", "bfloat16"])
    assert "bfloat16 matmul GFLOP/s" in bf16_out and "packed weights against weight-first" not in bf16_out
    assert packed == pytest.approx(plain, rel=1e-6) and packed > 0
