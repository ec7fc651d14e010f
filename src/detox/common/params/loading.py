"""Reading ``params.yaml``: YAML to :class:`Params`, every problem as one readable :class:`ParamsError`."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from detox.common.errors import ParamsError
from detox.common.params.judges import JUDGE_KINDS, JUDGE_SPECS
from detox.common.params.schema import Params

SHORT = reprlib.Repr()  # a value as quoted in an error: long strings and lists are cut with "..."
SHORT.maxstring = SHORT.maxother = 80


def _describe(error: dict[str, Any], schema: type[BaseModel]) -> str:
    loc = tuple(error["loc"])
    if len(loc) > 2 and loc[0] == "judges" and loc[2] in JUDGE_KINDS:
        spec = JUDGE_SPECS[loc[2]]
        loc = loc[:2] + loc[3:]  # pydantic puts the union's tag in the path: judges.ngram.builtin.C -> judges.ngram.C
        if error["type"] == "extra_forbidden" and len(loc) == 3:
            return f"{'.'.join(map(str, loc))}: unknown key (allowed here: {', '.join(sorted(spec.model_fields))})"
    key = ".".join(str(part) for part in loc)
    rule = str(error["msg"]).removeprefix("Value error, ")
    if not key:  # a check across sections: its message names the keys
        return rule
    if error["type"] == "extra_forbidden":
        parent = _model_at(schema, error["loc"][:-1])
        allowed = ", ".join(sorted(parent.model_fields)) if parent else "?"
        return f"{key}: unknown key (allowed here: {allowed})"
    given = error.get("input")
    if isinstance(given, dict):  # a check across a section's keys: its rule names them, the section is noise
        return f"{key}: {rule}"
    return f"{key}: {rule} (got {SHORT.repr(given)})"


def _model_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = schema
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def parse_params(raw: Any, origin: str = "params.yaml") -> Params:
    """Validate a mapping read from YAML; raise :class:`ParamsError` listing every problem."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err, Params) for err in exc.errors()]
        if len(lines) == 1:  # one line for one problem
            raise ParamsError(
                f"{origin} has 1 invalid value: {lines[0]}; fix it in params.yaml (or in the -S "
                "overrides of dvc exp run)"
            ) from None
        raise ParamsError(
            f"{origin} has {len(lines)} invalid values:\n  - "
            + "\n  - ".join(lines)
            + "\nFix them in params.yaml (or in the -S overrides of dvc exp run)."
        ) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: file not found; run from the project root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:  # an empty file (or only comments) would run every stage silently on the defaults
        raise ParamsError(
            f"{path} is empty: restore it (`git checkout {path}`), or write the settings you change "
            "(`{}` for all the defaults of src/detox/common/params/)"
        )
    return parse_params(raw, origin=str(path))
