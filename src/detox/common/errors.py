"""Errors a user can act on. Stage scripts print them without a traceback."""


class DetoxError(Exception):
    """Base class: the message says what was wrong, where, and what to do."""


class ParamsError(DetoxError):
    """params.yaml is missing, malformed or holds an invalid value."""


class SourceError(DetoxError):
    """A dataset or model could not be fetched from its configured source."""


class HubUnreachableError(SourceError):
    """The Hugging Face Hub cannot be reached from this machine."""


class DataValidationError(DetoxError):
    """The fetched data failed its Great Expectations suite."""


class RewardModelError(DetoxError):
    """The reward model does not fit what the pipeline needs (e.g. a missing label)."""


class TrackingError(DetoxError):
    """The MLflow tracking server in MLFLOW_TRACKING_URI cannot be reached or refuses the client."""


class MissingInputError(DetoxError):
    """A stage's input does not exist yet; the message names the stage that makes it."""


class OutputLocationError(DetoxError):
    """A place a stage writes cannot be written, or its filesystem has too little room."""


def error_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it was raised from, outermost first (MLflow wraps SQLAlchemy, which wraps
    sqlite3; requests wraps urllib3), at most 8 deep."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
