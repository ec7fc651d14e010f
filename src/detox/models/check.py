"""Checks a model folder before a stage replaces anything with it.

A folder that loads only half (no tokenizer files: ``AutoTokenizer`` then builds a tiny
tokenizer that turns every word into ``<unk>``; a masked-LM checkpoint given as a classifier:
its classification head is random; a causal LM given as the policy; truncated weights) would
otherwise pass fetch and fail, or worse produce garbage, stages later. Each failure names the
folder, the file and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from detox.common.errors import SourceError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "spiece.model",
    "vocab.json",
    "sentencepiece.bpe.model",
    "vocab.txt",
    "tokenizer.model",
)
KINDS = {
    "seq2seq": (
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
        AutoModelForSeq2SeqLM,
        "a sequence-to-sequence model (T5, BART, ...: AutoModelForSeq2SeqLM)",
    ),
    "classifier": (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        AutoModelForSequenceClassification,
        "a sequence classifier (AutoModelForSequenceClassification)",
    ),
}


def has_weights(model_dir: str | Path) -> bool:
    """Whether a model folder holds weights (a builtin one from fetch holds only its configuration)."""
    return any((Path(model_dir) / name).is_file() for name in WEIGHT_FILES)


def load_or_init(model_dir: str | Path, kind: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The ``kind`` model (``seq2seq`` or ``classifier``) in ``model_dir`` and its tokenizer: its weights,
    or, for a builtin folder (configuration only), a fresh model initialised from ``seed``."""
    auto_class = KINDS[kind][1]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if has_weights(model_dir):
        return auto_class.from_pretrained(model_dir), tokenizer
    torch.manual_seed(seed)
    return auto_class.from_config(AutoConfig.from_pretrained(model_dir)), tokenizer


def check_model_folder(
    folder: str | Path,
    kind: str,
    section: str,
    weights: bool = True,
    shown: str | Path | None = None,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Raise :class:`SourceError` unless ``folder`` holds a ``kind`` model (``seq2seq`` or ``classifier``)
    with a matching tokenizer, the ``labels`` its users look up by name (``{param key: label}``) in its
    ``id2label`` and, when ``weights``, weights that load. Messages name ``shown`` (where the user's model
    came from) instead of ``folder`` (a scratch copy) when given."""
    folder = Path(folder)
    name = Path(shown) if shown is not None else folder
    mapping, auto_class, wanted = KINDS[kind]
    config_path = folder / "config.json"
    shown_config = name / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{section}: {name} is not a Hugging Face model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as exc:  # transformers raises ValueError, OSError, JSONDecodeError...
        raise SourceError(
            f"{section}: {shown_config} cannot be read ({_short(exc)}); re-download or re-save the model"
        ) from None
    architectures = list(config.architectures or [])
    heads = [
        a
        for a in architectures
        if (kind == "seq2seq" and a in set(mapping.values()))
        or (kind == "classifier" and a.endswith("ForSequenceClassification"))
    ]
    if config.model_type not in mapping or (architectures and not heads):
        found = ", ".join(architectures) or config.model_type
        raise SourceError(
            f"{section}: {shown_config} describes {found}, but this needs {wanted}"
            + (": its classification head would be random" if kind == "classifier" else "")
            + "; point it at another model folder"
        )
    names = sorted(str(label) for label in (config.id2label or {}).values())
    known = {label.lower() for label in names}  # matched as detox.models.reward.label_index matches them
    unknown = {key: label for key, label in (labels or {}).items() if label.lower() not in known}
    if unknown:
        where = shown_config if shown is not None else "its config.json"  # not the scratch folder of a builtin one
        raise SourceError(
            f"{section}: {where} has no label(s) "
            f"{', '.join(f'{label!r} ({key})' for key, label in unknown.items())} in id2label; its "
            f"labels are {names}: set {' / '.join(unknown)} to its names, or use a model whose "
            "id2label names them"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SourceError(
            f"{section}: {name} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer into the folder too (tokenizer.save_pretrained)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise SourceError(f"{section}: the tokenizer in {name} cannot be loaded ({_short(exc)})") from None
    vocab = getattr(config, "vocab_size", None)
    if vocab and not vocab // 2 <= len(tokenizer) <= vocab:
        raise SourceError(
            f"{section}: the tokenizer in {name} has {len(tokenizer)} tokens but config.json's "
            f"vocab_size is {vocab}: they do not belong together; save the model's own tokenizer"
        )
    if not weights:
        return
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise SourceError(f"{section}: {name} has no weights (one of {', '.join(WEIGHT_FILES)})")
    try:
        auto_class.from_pretrained(folder)
    except Exception as exc:
        raise SourceError(
            f"{section}: the weights in {name} cannot be read ({_short(exc)}); re-download or re-save the model"
        ) from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
