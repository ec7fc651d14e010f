"""``sft.precision`` and ``ppo.precision``: what each machine is allowed, and that bf16 reaches the sft training."""

import pytest
import torch

from conftest import tiny_params
from detox.common.errors import DetoxError, ParamsError
from detox.data.fetch import run_fetch
from detox.models import precision
from detox.models.precision import check_precision, cpu_multiplies_bf16, resolve_precision
from detox.models.sft import run_sft


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision_world")
    run_fetch(tiny_params(), root / "data" / "raw", root / "data" / "labelled", root / "models" / "base")
    return root


def test_the_cpu_probe_reads_torch_s_bf16_and_amx_flags(monkeypatch):
    for avx512_bf16, amx, expected in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert cpu_multiplies_bf16() is expected
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_multiplies_bf16() is False  # a torch without the probes: fp32 is the safe answer


def test_each_precision_where_it_runs(monkeypatch):
    monkeypatch.setattr(precision, "cpu_multiplies_bf16", lambda: False)
    check_precision("sft.precision", "fp32", cuda=False)
    check_precision("sft.precision", "bf16", cuda=True)
    check_precision("sft.precision", "fp16", cuda=True)
    with pytest.raises(DetoxError, match=r"sft.precision bf16: this CPU has no bf16 .*-S sft.precision=fp32"):
        check_precision("sft.precision", "bf16", cuda=False)
    with pytest.raises(DetoxError, match="ppo.precision fp16 needs a GPU"):
        check_precision("ppo.precision", "fp16", cuda=False)
    with pytest.raises(DetoxError, match="one of fp32, bf16, fp16, not 'fp8'"):
        check_precision("sft.precision", "fp8", cuda=True)
    monkeypatch.setattr(precision, "cpu_multiplies_bf16", lambda: True)
    check_precision("sft.precision", "bf16", cuda=False)


def test_auto_takes_bf16_where_the_hardware_multiplies_it(monkeypatch):
    monkeypatch.setattr(precision, "cpu_multiplies_bf16", lambda: False)
    assert resolve_precision("sft.precision", "auto", cuda=False) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_precision("sft.precision", "auto", cuda=True) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_precision("sft.precision", "auto", cuda=True) == "fp32"  # a GPU older than Ampere
    monkeypatch.setattr(precision, "cpu_multiplies_bf16", lambda: True)
    assert resolve_precision("sft.precision", "auto", cuda=False) == "bf16"
    assert resolve_precision("sft.precision", "fp32", cuda=False) == "fp32"
    monkeypatch.setattr(precision, "cpu_multiplies_bf16", lambda: False)
    with pytest.raises(DetoxError, match="sft.precision bf16: this CPU has no bf16"):
        resolve_precision("sft.precision", "bf16", cuda=False)


def test_params_default_to_fp32_and_name_the_key_of_a_wrong_value():
    assert tiny_params().sft.precision == "fp32"
    with pytest.raises(ParamsError, match=r"sft\.precision"):
        tiny_params(**{"sft.precision": "fp8"})


def test_sft_refuses_bf16_on_a_cpu_without_it_before_writing_anything(fetched, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_multiplies_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DetoxError, match="sft.precision bf16"):
        run_sft(
            tiny_params(**{"sft.precision": "bf16"}), fetched / "models/base/policy", fetched / "data/raw", tmp_path
        )
    assert list(tmp_path.iterdir()) == []


def test_make_accelerator_refuses_bf16_on_a_cpu_without_it(monkeypatch):
    from detox.ppo.train import make_accelerator

    monkeypatch.setattr(precision, "cpu_multiplies_bf16", lambda: False)
    with pytest.raises(DetoxError, match=r"ppo.precision bf16: this CPU has no bf16"):
        make_accelerator(tiny_params(**{"ppo.precision": "bf16"}).ppo, cpu=True)


@pytest.mark.parametrize("setting", ["fp32", "bf16"])
def test_sft_trains_under_the_precision_asked_for_and_keeps_fp32_weights(fetched, tmp_path, monkeypatch, setting):
    """The training forward's matmuls run in the precision asked for (Trainer's autocast); the saved weights
    are fp32 either way. A tiny model: bf16 runs on any CPU here, emulated where it has no bf16."""
    from transformers import AutoModelForSeq2SeqLM

    monkeypatch.setattr(precision, "cpu_multiplies_bf16", lambda: True)
    seen: set[torch.dtype] = set()
    original = torch.nn.Linear.forward

    def recording(self, x):
        out = original(self, x)
        if torch.is_grad_enabled():  # the training steps, not evaluation or the ROUGE summaries
            seen.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    params = tiny_params(**{"sft.precision": setting, "sft.epochs": 1})
    result = run_sft(params, fetched / "models/base/policy", fetched / "data/raw", tmp_path)
    expected = torch.bfloat16 if setting == "bf16" else torch.float32
    assert seen == {expected}
    assert all(p.dtype == torch.float32 for p in AutoModelForSeq2SeqLM.from_pretrained(tmp_path).parameters())
    assert result.metrics["precision"] == setting and result.metrics["validation_loss"] > 0
