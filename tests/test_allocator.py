"""detox.common.allocator: glibc keeps what a step frees (fewer page faults, the same values), and stays out of
the way of a user's own allocator settings."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import conftest

# A step's worth of activations: 20 blocks of 2 MiB alive at once, freed, then the same again, 30 times.
# Prints the minor page faults of the 30 steps after a first one, and whether the thresholds were set.
STEPS = """
import resource, sys, torch
from detox.common.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
def step():
    blocks = [torch.ones(1 << 19) for _ in range(20)]
    total = sum(float(b.sum()) for b in blocks)
    del blocks
    return total
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
totals = {step() for _ in range(30)}
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, sorted(totals))
"""

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def run(mode: str, **env: str) -> tuple[str, int, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DETOX_MALLOC", "LD_PRELOAD", "GLIBC_TUNABLES")}
    proc = subprocess.run(
        [sys.executable, "-c", STEPS, mode],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=conftest.HANG_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tuned, faults, totals = proc.stdout.split(" ", 2)
    return tuned, int(faults), totals


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt: Linux with glibc only")
def test_kept_memory_saves_the_page_faults_of_every_step_and_changes_no_value():
    tuned, tuned_faults, tuned_totals = run("tuned")
    plain, plain_faults, plain_totals = run("plain")
    assert (tuned, plain) == ("True", "False")
    # 30 steps of 40 MiB: glibc's defaults fault most of it in again each step (10,240 pages a step)
    assert plain_faults > 30 * 2_000 and tuned_faults * 4 < plain_faults
    assert tuned_totals == plain_totals == "[10485760.0]\n"


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt: Linux with glibc only")
@pytest.mark.parametrize(
    "env",
    [
        {"DETOX_MALLOC": "default"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
    ],
)
def test_a_users_own_malloc_settings_are_left_alone(env):
    tuned, _, _ = run("tuned", **env)
    assert tuned == "False"


def test_every_stage_keeps_freed_memory(monkeypatch):
    import detox.common.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # run_stage's default, undone after
    cli.run_stage(lambda: None)
    assert calls == [1]
