"""The door every stage passes before any work (src/detox/common/gate.py, src/detox/common/cli.py): missing
inputs name the stage to run first, read-only folders and full disks stop a stage before it starts, and a disk
that fills during the work gives one line and loses nothing."""

from __future__ import annotations

import errno
import os
import re
import runpy
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import pytest
import yaml

from conftest import TINY
from detox.common.cli import run_stage
from detox.common.errors import MissingInputError, OutputLocationError
from detox.common.gate import MB, PRODUCERS, RESERVE_ENV, STAGES, producer, require_writable, space_needed

ROOT = Path(__file__).resolve().parents[1]
DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
WORKING_FILES = ("logs", "checkpoints")  # written by stages, tracked by neither git nor DVC
# Dependencies in dvc.yaml that a stage reads when they are there (the model card's sources, the report's curves).
READ_WHEN_PRESENT = {
    ("ppo", "models/base/manifest.json"),
    ("evaluate", "models/base/manifest.json"),
    ("evaluate", "plots/ppo/history.tsv"),
    ("evaluate", "models/base/policy"),
}


def stage_paths(name: str) -> tuple[list[PurePosixPath], list[PurePosixPath]]:
    """A stage script's INPUTS and OUTPUTS, read without running it."""
    script = runpy.run_path(str(ROOT / "stages" / f"{name}.py"))
    return ([PurePosixPath(str(p)) for p in script["INPUTS"]], [PurePosixPath(str(p)) for p in script["OUTPUTS"]])


def outs(stage: dict) -> list[PurePosixPath]:
    return [
        PurePosixPath(next(iter(entry)) if isinstance(entry, dict) else entry)
        for key in ("outs", "metrics", "plots")
        for entry in stage.get(key, [])
    ]


def within(path: PurePosixPath, folder: PurePosixPath) -> bool:
    return path == folder or folder in path.parents


def test_the_doors_inputs_outputs_and_producers_agree_with_dvc_yaml():
    assert tuple(DVC_STAGES) == STAGES
    for name, stage in DVC_STAGES.items():
        inputs, outputs = stage_paths(name)
        data_deps = [PurePosixPath(d) for d in stage["deps"] if not d.startswith(("src/", "stages/"))]
        for path in inputs:
            assert any(within(path, dep) for dep in data_deps), f"{name}: {path} is not a dependency in dvc.yaml"
            made_by = outs(DVC_STAGES[producer(path)])
            assert any(within(path, out) or within(out, path) for out in made_by), f"{path} is not {producer(path)}'s"
        for dep in data_deps:
            assert any(within(path, dep) for path in inputs) or (name, str(dep)) in READ_WHEN_PRESENT, (
                f"{name}: the door does not check its dependency {dep}"
            )
        for out in outs(stage):
            assert any(within(out, path) for path in outputs), f"{name}: the door does not check its output {out}"
        for path in outputs:
            assert path.parts[0] in WORKING_FILES or any(within(out, path) for out in outs(stage)), (
                f"{name}: {path} is none of its outputs in dvc.yaml"
            )
    for prefix, name in PRODUCERS.items():
        holders = {
            other
            for other, stage in DVC_STAGES.items()
            if any(within(out, PurePosixPath(prefix)) for out in outs(stage))
        }
        assert holders == {name}, f"{prefix}: written by {holders}, not by {name} alone"


def fresh_clone(root: Path) -> Path:
    """What a clone holds before `dvc repro` or `dvc pull`: params and the committed metrics, no data or models."""
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(TINY))
    (root / "metrics").mkdir()
    for name in ("validation.json", "validation_labelled.json"):
        shutil.copy2(ROOT / "metrics" / name, root / "metrics" / name)
    return root


def listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_script(name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{name}.py")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", **env},
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The stage's error: exit status 1, no traceback, its message on the last line of stderr and on no other."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [proc.stderr.strip().splitlines()[-1]], proc.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        (
            "ppo",
            "error: ppo cannot start, its inputs are missing: data/raw/train.parquet, data/raw/validation.parquet "
            "(made by fetch); models/policy/config.json (made by sft); models/reward/config.json (made by reward); "
            "models/judges (made by judges). Run `dvc repro fetch sft reward judges` first, or `dvc repro ppo` to run "
            "them and then ppo",
        ),
        (
            "sft",
            "error: sft cannot start, its inputs are missing: data/raw/train.parquet, data/raw/validation.parquet, "
            "data/raw/test.parquet, models/base/policy/config.json (made by fetch). Run `dvc repro fetch` first, or "
            "`dvc repro sft` to run them and then sft",
        ),
    ],
)
def test_a_training_stage_in_a_fresh_clone_names_the_stages_to_run_first(tmp_path, stage, expected):
    """Before `dvc repro`, metrics/validation.json (committed) says the data passed, but there is no data: the
    stage says what is missing and who makes it, and never takes models/policy for a Hub id."""
    project = fresh_clone(tmp_path / "clone")
    before = listing(project)
    proc = run_script(stage, project)
    assert one_error_line(proc) == expected
    assert "huggingface" not in proc.stderr.lower() and "Repo id" not in proc.stderr
    assert listing(project) == before, "nothing may be written"


@pytest.mark.parametrize(
    ("stage", "made_by"),
    [
        ("validate", ["data/raw/train.parquet", "models/base/reward/config.json (made by fetch)"]),
        ("reward", ["data/labelled/labelled.parquet, models/base/reward/config.json (made by fetch)"]),
        ("baseline", ["models/policy/config.json (made by sft)", "models/judges (made by judges)"]),
        (
            "evaluate",
            [
                "reports/validation (made by validate)",
                "metrics/baseline.json (made by baseline)",
                "models/ppo/ppo_policy.json (made by ppo)",
                "`dvc repro fetch validate sft reward judges baseline ppo` first, or `dvc repro evaluate`",
            ],
        ),
    ],
)
def test_every_stage_in_a_fresh_clone_names_what_is_missing(tmp_path, monkeypatch, stage, made_by):
    project = fresh_clone(tmp_path / "clone")
    before = listing(project)
    monkeypatch.chdir(project)
    main = runpy.run_path(str(ROOT / "stages" / f"{stage}.py"))["main"]
    with pytest.raises(MissingInputError, match=f"^{stage} cannot start, its inputs are missing: ") as err:
        main()
    assert all(part in str(err.value) for part in made_by), str(err.value)
    assert "\n" not in str(err.value)
    assert listing(project) == before


@contextmanager
def refusing_new_files(folder: Path) -> Iterator[None]:
    """``folder`` made read-only: by its mode, or for root (whom modes do not stop) by the immutable attribute."""

    def accepts() -> bool:
        try:
            fd, probe = tempfile.mkstemp(dir=folder)
        except OSError:
            return False
        os.close(fd)
        os.unlink(probe)
        return True

    folder.chmod(0o555)
    immutable = accepts() and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        if accepts():
            pytest.skip("this user writes into read-only folders (root, and no chattr here)")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_read_only_models_folder_stops_fetch_before_any_work(tmp_path):
    project = tmp_path / "project"
    (project / "models" / "base").mkdir(parents=True)
    (project / "models" / "base" / "manifest.json").write_text("{}")  # a previous output
    (project / "params.yaml").write_text(yaml.safe_dump(TINY))
    before = listing(project)
    with refusing_new_files(project / "models"):
        proc = run_script("fetch", project)
    message = one_error_line(proc)
    assert message.startswith("error: models cannot be written (")
    assert message.endswith(
        "), and fetch writes its outputs there; make it writable (e.g. chmod u+w models) or run as its owner"
    )
    assert listing(project) == before and not (project / "data").exists(), "no work may start"


def test_the_space_asked_for_is_twice_the_outputs_plus_the_reserve(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"x" * 3000)
    (tmp_path / "metrics.json").write_bytes(b"x" * 500)
    monkeypatch.setenv(RESERVE_ENV, "0.25")
    needed = space_needed([tmp_path / "model", tmp_path / "metrics.json", tmp_path / "new" / "later.json"])
    assert needed == {tmp_path: 2 * 3500 + 250_000}  # one filesystem; a new output counts nothing yet
    monkeypatch.setenv(RESERVE_ENV, "lots")
    with pytest.raises(OutputLocationError, match=f"^{RESERVE_ENV} is 'lots': set it to the megabytes to keep free"):
        space_needed([tmp_path / "model"])


def test_too_little_free_space_stops_a_stage_before_any_work(tmp_path, monkeypatch):
    free = shutil.disk_usage(tmp_path).free
    monkeypatch.setenv(RESERVE_ENV, str(2 * free / MB))  # more than this filesystem will ever have free
    with pytest.raises(OutputLocationError) as err:
        require_writable("sft", [tmp_path / "models" / "policy"])
    message = str(err.value)
    assert message.startswith(f"{tmp_path}: ") and " MB free on its filesystem, but sft needs about " in message
    assert f"plus a reserve of {2 * free / MB:g} MB, {RESERVE_ENV}); free some space (`df -h {tmp_path}`)" in message
    assert not (tmp_path / "models").exists()


SMALL_DISK = """set -e
mount -t tmpfs -o size=16k tmpfs data
mkdir -p data/raw && echo "previous run" > data/raw/keep.txt
for reserve in "" 0; do
  set +e
  DETOX_MIN_FREE_MB=$reserve "$PYTHON" "$STAGE" 2> "$LOGS/stderr$reserve.txt"
  echo $? > "$LOGS/status$reserve.txt"
  set -e
  find data | sort > "$LOGS/data$reserve.txt"
  cat data/raw/keep.txt >> "$LOGS/data$reserve.txt"
done
"""


def test_a_full_disk_stops_fetch_at_the_door_and_during_the_work_with_one_line(tmp_path):
    """``data/`` on a 16 kB filesystem of its own (a mount namespace): with the default reserve fetch refuses
    to start; with no reserve it runs out of space while writing, says so in one line and keeps data/raw."""
    if subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode:
        pytest.skip("needs a mount namespace (unshare --user --mount) to make a small filesystem")
    project, logs = tmp_path / "project", tmp_path / "logs"
    (project / "data").mkdir(parents=True)
    logs.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "PYTHON": sys.executable, "STAGE": str(ROOT / "stages" / "fetch.py"), "LOGS": str(logs)}
    subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", SMALL_DISK],
        cwd=project,
        env=env,
        check=True,
        timeout=600,
    )
    kept = "data\ndata/raw\ndata/raw/keep.txt\nprevious run\n"
    door = r"error: data: 0\.\d MB free on its filesystem, but fetch needs about 100\.0 MB there "
    for reserve, expected in (("", door), ("0", r"error: no space left on a filesystem this stage writes to; ")):
        stderr = (logs / f"stderr{reserve}.txt").read_text()
        run = subprocess.CompletedProcess([], int((logs / f"status{reserve}.txt").read_text()), "", stderr)
        assert re.match(expected, one_error_line(run)), stderr[-3000:]
        assert (logs / f"data{reserve}.txt").read_text() == kept, "data/raw kept, no scratch folder left"
    assert "fetched:" not in (logs / "stderr.txt").read_text()
    assert not list((project / "models").glob(".*")) and not (project / "metrics").exists()


def fail_with(error: BaseException) -> None:
    raise error


@pytest.fixture
def signal_handlers() -> Iterator[None]:
    """run_stage installs its SIGINT and SIGTERM handlers: pytest's own come back afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_run_stage_prints_a_full_disk_or_a_refused_write_as_one_line(capsys, signal_handlers, monkeypatch):
    # run_stage sets the stage process's environment (MLflow's link printing off); here that process is pytest's,
    # so the variable is set through monkeypatch, which removes it again after the test
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

    def wrapped() -> None:  # how MLflow reports sqlite's full disk: SQLAlchemy's error, raised from sqlite3's
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as exc:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full [SQL: INSERT ...]") from exc

    cases = [
        (
            lambda: fail_with(OSError(errno.ENOSPC, "No space left on device", "models/.policy.x/model.safetensors")),
            "error: no space left on models/.policy.x/model.safetensors's filesystem; free some space there (`df -h` "
            "shows where) and run the stage again (no output was left half-written)",
        ),
        (
            wrapped,
            "error: no space left on a filesystem this stage writes to; free some space there (`df -h` shows "
            "where) and run the stage again (no output was left half-written)",
        ),
        (
            lambda: fail_with(PermissionError(errno.EACCES, "Permission denied", "metrics/sft.json")),
            "error: metrics/sft.json: Permission denied; give this user access to it (e.g. chmod u+rwX metrics) "
            "and run the stage again (no output was left half-written)",
        ),
    ]
    for main, expected in cases:
        with pytest.raises(SystemExit) as exited:
            run_stage(main)
        assert exited.value.code == 1
        assert capsys.readouterr().err == expected + "\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_stage(lambda: fail_with(ZeroDivisionError("division by zero")))
