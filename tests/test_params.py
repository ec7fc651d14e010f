import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from conftest import HANG_S
from detox.common.errors import ParamsError
from detox.common.params import Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_file_is_valid_and_matches_schema_defaults():
    params = load_params(ROOT / "params.yaml")
    # The file spells out every default, so the two cannot drift apart silently.
    assert params == Params()


def drift(written: Any, default: Any, where: str = "params.yaml") -> list[str]:
    """Where ``written`` (YAML as read) and the schema ``default`` differ: a key one has and the other not, or
    another value (of another type: 1 is not 1.0)."""
    if isinstance(default, BaseModel):
        fields = type(default).model_fields
        if not isinstance(written, dict):
            return [f"{where}: a section in the schema, {written!r} in the file"]
        return (
            [f"{where}.{key}: in the file, not a schema field" for key in written if key not in fields]
            + [f"{where}.{key}: a schema field the file does not spell out" for key in fields if key not in written]
            + [
                line
                for key in fields
                if key in written
                for line in drift(written[key], getattr(default, key), f"{where}.{key}")
            ]
        )
    if isinstance(default, dict):  # named entries (judges, validation.min_rows): the same names, each equal
        if not isinstance(written, dict) or set(written) != set(default):
            return [
                f"{where}: names {sorted(written) if isinstance(written, dict) else written!r} in the file, "
                f"{sorted(default)} in the schema"
            ]
        return [line for key in default for line in drift(written[key], default[key], f"{where}.{key}")]
    if isinstance(default, tuple):
        default = list(default)
    if type(written) is not type(default) or written != default:
        return [f"{where}: {written!r} in the file, {default!r} in the schema"]
    return []


def test_params_yaml_spells_out_exactly_the_schema_defaults_key_by_key():
    written = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert drift(written, Params()) == []


def test_the_drift_check_names_each_difference():
    written = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    written["ppo"]["kl"]["target"] = 7.0
    written["ppo"]["gamma"] = 1
    written["eval"]["extra"] = 3
    del written["judges"]["ngram"]["C"]
    del written["tracking"]
    assert drift(written, Params()) == [
        "params.yaml.tracking: a schema field the file does not spell out",
        "params.yaml.eval.extra: in the file, not a schema field",
        "params.yaml.judges.ngram.C: a schema field the file does not spell out",
        "params.yaml.ppo.gamma: 1 in the file, 1.0 in the schema",
        "params.yaml.ppo.kl.target: 7.0 in the file, 6.0 in the schema",
    ]


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(ParamsError) as err:
        parse_params({"generation": {"temprature": 0.7}})
    message = str(err.value)
    assert "generation.temprature: unknown key" in message
    assert "temperature" in message and "top_p" in message


def test_wrong_type_names_key_and_value():
    with pytest.raises(ParamsError, match=r"data\.builtin\.train_size: .*integer.*'many'"):
        parse_params({"data": {"builtin": {"train_size": "many"}}})


def test_out_of_range_value_says_what_is_allowed():
    with pytest.raises(
        ParamsError, match=r"data\.builtin\.heated_share: Input should be less than or equal to 1 \(got 1\.5\)"
    ):
        parse_params({"data": {"builtin": {"heated_share": 1.5}}})


def test_bad_choice_lists_the_choices():
    with pytest.raises(ParamsError, match=r"data\.source: Input should be 'builtin', 'hub' or 'local'"):
        parse_params({"data": {"source": "s3"}})


def test_all_problems_are_reported_at_once():
    with pytest.raises(ParamsError, match=r"has 3 invalid value"):
        parse_params({"seed": -1, "generation": {"top_p": 0}, "nope": 1})


def test_cross_field_rules():
    with pytest.raises(ParamsError, match="min_new_tokens"):
        parse_params({"generation": {"min_new_tokens": 10, "max_new_tokens": 5}})
    with pytest.raises(ParamsError, match="placeholder"):
        parse_params({"prompt": {"template": "Summarize:"}})
    with pytest.raises(ParamsError, match="multiple of num_heads"):
        parse_params({"reward": {"builtin": {"hidden_size": 30, "num_heads": 4}}})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_an_empty_params_file_is_refused_not_run_on_the_defaults(tmp_path):
    for text in ("", "# every setting removed\n"):
        (tmp_path / "params.yaml").write_text(text)
        with pytest.raises(ParamsError, match=r"params.yaml is empty: restore it \(`git checkout .*params.yaml`\)"):
            load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("{}\n")  # said on purpose: every default
    assert load_params(tmp_path / "params.yaml") == Params()
    (tmp_path / "params.yaml").write_text("")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "judges.py")], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml is empty: restore it (`git checkout params.yaml`), "
        "or write the settings you change (`{}` for all the defaults of "
        "src/detox/common/params/)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"], "nothing may be written"


def test_a_rule_across_a_sections_keys_names_them_without_repeating_the_section():
    with pytest.raises(ParamsError) as err:
        parse_params({"ppo": {"batch_size": 8, "mini_batch_size": 16}})
    assert str(err.value) == (
        "params.yaml has 1 invalid value: ppo: batch_size (8) must be a multiple of "
        "mini_batch_size x gradient_accumulation_steps (16 x 1); fix it in params.yaml (or in "
        "the -S overrides of dvc exp run)"
    )
    with pytest.raises(ParamsError) as err:  # a long value is quoted in short
        parse_params({"prompt": {"template": "Summarize: " + "word " * 200}})
    message = str(err.value)
    assert (
        "prompt.template: the template must contain the placeholder {dialogue} (got 'Summarize: word word word "
        "word word w...rd word " in message
    )
    assert len(message) < 300 and message.count("word") < 20


def test_stage_reports_params_error_without_traceback(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"eval": {"num_samples": 0}}))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "baseline.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert proc.returncode == 1
    assert "eval.num_samples: Input should be greater than or equal to 1 (got 0)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_judge_key_error_names_the_key_as_written_in_params_yaml():
    with pytest.raises(ParamsError) as err:
        parse_params({"judges": {"ngram": {"kind": "builtin", "C": -1, "Cx": 2}}})
    message = str(err.value)
    assert "judges.ngram.C: Input should be greater than 0 (got -1)" in message
    assert "judges.ngram.Cx: unknown key (allowed here: C, hard_share, kind, ngram_max" in message
    assert "builtin.C" not in message
