"""What both served MLflow pyfunc models share: the request's checks and an answer that shows no internals.

A request is checked by the model itself, the same way for both models (:class:`Served`): one text
column (``dialogue``; ``text`` for the reward model) and nothing else, every row a non-empty string;
the policy's ``params`` within the ranges ``params.yaml`` allows for them (:class:`Range`,
:func:`check_params`). A refusal is a
:class:`RequestError`: HTTP 400 whose body is ``{"error_code": ..., "message": <one line>}``; an
unexpected failure answers HTTP 500 with the exception's class only, its traceback goes to the
server's log. Neither answer holds a traceback, a path or the request's data.

The signatures declare the output and the params but no input schema, on purpose: MLflow enforces an
input schema before the model runs, and then drops unknown columns without a word and answers a
missing or mistyped column with a message that prints the whole request. MLflow's scoring server
also drops params the signature does not declare before ``predict`` sees them (it logs
``Unrecognized params [...] are ignored``), so a misspelt param cannot be refused here, and a param
of the wrong JSON type is refused by MLflow's own check, whose message holds the request's rows.

The models: :mod:`detox.serve.summarizer` (the policy), :mod:`detox.serve.reward_model`.
"""

from __future__ import annotations

import json
import logging
import operator
import reprlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from pydantic.fields import FieldInfo

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- what a request may hold


class RequestError(MlflowException):
    """A request the model refuses: HTTP 400 (500 for ``INTERNAL_ERROR``) whose message is this one line.

    MLflow's scoring server puts the request's data in front of the message of any ``MlflowException``
    raised in ``predict`` (``Failed to predict data '<the DataFrame>'``) before it answers; the reason
    is kept apart here and is the answer's ``message``.
    """

    def __init__(self, reason: str, error_code: int = INVALID_PARAMETER_VALUE) -> None:
        super().__init__(reason, error_code=error_code)
        self.reason = reason

    def serialize_as_json(self) -> str:
        return json.dumps({**json.loads(super().serialize_as_json()), "message": self.reason})


_COMPARE: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "gt": (operator.gt, ">"),
    "ge": (operator.ge, ">="),
    "lt": (operator.lt, "<"),
    "le": (operator.le, "<="),
}


@dataclass(frozen=True)
class Range:
    """The values a numeric param may take: bounds such as ``(("gt", 0.0), ("le", 10.0))``."""

    bounds: tuple[tuple[str, float], ...]
    why: str = ""

    @classmethod
    def of(cls, field: FieldInfo) -> Range:
        """The bounds a ``params.yaml`` field declares (pydantic's ``gt``/``ge``/``lt``/``le``)."""
        return cls(
            tuple(
                (key, getattr(rule, key))
                for rule in field.metadata
                for key in _COMPARE
                if getattr(rule, key, None) is not None
            )
        )

    def admits(self, value: Any) -> bool:
        return all(_COMPARE[key][0](value, bound) for key, bound in self.bounds)

    def __str__(self) -> str:
        text = " and ".join(f"{_COMPARE[key][1]} {bound:g}" for key, bound in self.bounds)
        return f"{text} ({self.why})" if self.why else text


def check_params(params: Mapping[str, Any], ranges: Mapping[str, Range]) -> None:
    """Refuse the first param outside its range, naming it and the range."""
    for name, value in params.items():
        allowed = ranges.get(name)
        if allowed is not None and not allowed.admits(value):
            raise RequestError(f"params.{name}: {value!r} is out of range; allowed: {allowed}")


def request_texts(model_input: Any, column: str) -> list[str]:
    """The texts of a request: the ``column`` of a DataFrame or of a dict of columns (and no other column),
    or a list of strings; these are what MLflow's JSON formats (``dataframe_records``, ``dataframe_split``,
    ``inputs``, ``instances``) arrive as. Every text must be a non-empty string; anything else is a
    :class:`RequestError` naming the row.
    """
    if isinstance(model_input, (pd.DataFrame, Mapping)):
        columns = list(model_input.keys())
        if column not in columns:
            raise RequestError(
                f"input: no {column!r} column (got columns {columns}); send "
                f'{{"dataframe_records": [{{"{column}": "..."}}]}}'
            )
        extra = [name for name in columns if name != column]
        if extra:
            raise RequestError(f"input: unknown column(s) {extra}; this model reads only the {column!r} column")
        values = list(np.asarray(model_input[column], dtype=object).reshape(-1))
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, (list, tuple, pd.Series, np.ndarray)):
        values = list(np.asarray(model_input, dtype=object).reshape(-1))
    else:
        raise RequestError(
            f"input: expected rows with a {column!r} column or a list of strings, got {type(model_input).__name__}"
        )
    for row, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            shown = "null" if pd.api.types.is_scalar(value) and pd.isna(value) else reprlib.repr(value)
            raise RequestError(f"{column} {row}: expected a non-empty string, got {shown}")
    return [str(value) for value in values]


class Served(mlflow.pyfunc.PythonModel, ABC):
    """What both served models share: the request's texts checked, and an answer that shows no internals."""

    column: str

    # A DataFrame hint: MLflow then infers nothing from the hint and passes the request as it came.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        try:
            texts = request_texts(model_input, self.column)
            return self.answer(texts, {key: value for key, value in (params or {}).items() if value is not None})
        except RequestError:
            raise
        except Exception as exc:  # the serving boundary: the traceback goes to the log, never into an answer
            log.exception("%s failed on a request", type(self).__name__)
            raise RequestError(
                f"the model failed on this request ({type(exc).__name__}); the server's log has the traceback",
                error_code=INTERNAL_ERROR,
            ) from exc

    @abstractmethod
    def answer(self, texts: list[str], params: dict[str, Any]) -> Any:
        """The model's answer to checked texts and the request's params (those MLflow passed on)."""
