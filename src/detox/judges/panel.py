"""Toxicity judges: instruments that share nothing with the reward model.

PPO maximises the reward model's score, mistakes included, so the reward model cannot
measure the policy it trained. A judge scores every summary beside it, and the report
and the promotion gate read the judges:

- ``oracle`` (built-in world): the corpus generator's ground truth, see
  :mod:`detox.judges.oracle`;
- ``builtin``: a character n-gram classifier trained here on its own sentences and seed
  (:mod:`detox.judges.ngram`);
- ``hub``: a public toxicity classifier trained on other data than the reward model
  (by default ``s-nlp/roberta_toxicity_classifier``, trained on Jigsaw's comments),
  downloaded like the other models;
- ``local``: a sequence-classification model folder on disk.

The ``judges`` stage builds each judge named in ``eval.judges`` into
``models/judges/<name>/`` with a ``judge.json`` that says what it is; later stages load
them with :func:`load_judges`, without knowing where they came from.

The facts judge of ``eval.facts_judge`` (:mod:`detox.judges.facts`: the generator's facts, or an NLI
model) is built beside them and loaded with :func:`load_facts_judge`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detox.common.errors import DetoxError, HubUnreachableError, SourceError
from detox.common.io import sha256_tree, write_json
from detox.common.params import (
    BuiltinJudgeSpec,
    FactsJudgeSpec,
    HubJudgeSpec,
    LocalJudgeSpec,
    NliJudgeSpec,
    OracleJudgeSpec,
    Params,
)
from detox.data.hub import download_model
from detox.models.classifier import batch_outputs, label_index, token_limit

JUDGE_FILE = "judge.json"
ORACLE_THRESHOLD = 0.5


class Judge:
    """Scores texts with a toxicity in [0, 1]; toxic above ``threshold``."""

    def __init__(self, name: str, threshold: float) -> None:
        self.name, self.threshold = name, threshold

    def score(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def explain(self, texts: Sequence[str]) -> list[str] | None:
        """Why each text is toxic, when the judge can say (the oracle names the insult); else None."""
        return None


class OracleJudge(Judge):
    def __init__(self, name: str, record: Mapping[str, Any]) -> None:
        from detox.judges.oracle import InsultOracle

        super().__init__(name, ORACLE_THRESHOLD)
        self.oracle = InsultOracle(record["insults"], record.get("words", ()), int(record["min_embedded_letters"]))

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return self.oracle.score(texts)

    def explain(self, texts: Sequence[str]) -> list[str]:
        return ["; ".join(self.oracle.find(t)) for t in texts]


class NgramJudge(Judge):
    def __init__(self, name: str, folder: Path, threshold: float) -> None:
        from detox.judges.ngram import load_ngram_judge

        super().__init__(name, threshold)
        self.pipeline = load_ngram_judge(folder)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty(0)
        return self.pipeline.predict_proba(list(texts))[:, 1].astype(np.float64)


class ClassifierJudge(Judge):
    """A Hugging Face sequence classifier; toxicity = the probability of its toxic label.

    Softmax over the labels, or a sigmoid of the toxic label's logit for a multi-label model
    (``problem_type: multi_label_classification``, as Jigsaw-trained models often are).
    """

    def __init__(
        self, name: str, folder: Path, toxic_label: str, threshold: float, batch_size: int = 64, max_tokens: int = 512
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        super().__init__(name, threshold)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.index = label_index(
            self.model,
            toxic_label,
            owner=f"the judge {name!r} ({folder})",
            fix=f"set judges.{name}.toxic_label in params.yaml to one of them",
        )
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        self.batch_size = batch_size
        self.max_tokens = token_limit(self.model, max_tokens)

    def _toxicity(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.sigmoid() if self.multi_label else logits.softmax(-1)
        return probs[:, self.index]

    def score(self, texts: Sequence[str]) -> np.ndarray:
        out = batch_outputs(self.model, self.tokenizer, texts, self.batch_size, self.max_tokens, head=self._toxicity)
        return torch.cat(out).numpy().astype(np.float64) if out else np.empty(0)


class FactsJudge:
    """Which summaries state a fact that their dialogue does not contain (see :mod:`detox.judges.facts`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def invented(self, dialogues: Sequence[str], summaries: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Per summary: whether it invents, and what (``name 'Tom'; day 'Friday'``, or the unsupported sentence)."""
        raise NotImplementedError


class GeneratorFactsJudge(FactsJudge):
    def __init__(self, name: str, record: Mapping[str, Any]) -> None:
        from detox.judges.facts import FactFinder

        super().__init__(name)
        self.finder = FactFinder(record["names"], record["days"], record["requests"], record["problems"])

    def invented(self, dialogues: Sequence[str], summaries: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        found = [self.finder.invented(d, s) for d, s in zip(dialogues, summaries, strict=True)]
        return np.array([bool(f) for f in found], dtype=bool), ["; ".join(map(str, f)) for f in found]


class NliFactsJudge(FactsJudge):
    """SummaC-ZS style: a summary invents when one of its sentences is entailed by no premise."""

    def __init__(self, name: str, folder: Path, record: Mapping[str, Any]) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from detox.judges.facts import NliScorer

        super().__init__(name)
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        index = label_index(
            model,
            record["entailment_label"],
            owner=f"the facts judge {name!r} ({folder})",
            fix=f"set judges.{name}.entailment_label in params.yaml to one of them",
        )
        self.scorer = NliScorer(
            model,
            AutoTokenizer.from_pretrained(folder),
            index,
            int(record["batch_size"]),
            token_limit(model, int(record["max_tokens"])),
        )
        self.granularity, self.threshold = record["granularity"], float(record["threshold"])

    def invented(self, dialogues: Sequence[str], summaries: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        from detox.judges.facts import nli_support, sentences

        support = nli_support(self.scorer, dialogues, summaries, self.granularity)
        why = [
            "; ".join(
                f"{sentence!r} (entailment {value:.2f})"
                for sentence, value in zip(sentences(summary), values, strict=True)
                if value < self.threshold
            )
            for summary, values in zip(summaries, support, strict=True)
        ]
        return np.array([bool(w) for w in why], dtype=bool), why


# --------------------------------------------------------------------------- building


def build_judge(name: str, spec: Any, out_dir: Path) -> dict[str, Any]:
    """Build the judge ``spec`` into ``out_dir``; write its ``judge.json``; return its record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(spec, OracleJudgeSpec):
        record = _build_oracle(spec)
    elif isinstance(spec, BuiltinJudgeSpec):
        from detox.judges.ngram import train_ngram_judge

        record = {
            "kind": "ngram",
            "threshold": spec.threshold,
            "seed": spec.seed,
            "training": train_ngram_judge(spec, out_dir),
        }
    elif isinstance(spec, HubJudgeSpec):
        try:
            commit = download_model(spec.name, spec.revision, out_dir, f"judges.{name}")
        except HubUnreachableError as exc:
            raise HubUnreachableError(
                f"{exc} For the judges: list built-in ones in eval.judges ([oracle, ngram]), "
                "or define a `kind: local` judge with a model folder on disk."
            ) from None
        record = {
            "kind": "classifier",
            "source": "hub",
            "name": spec.name,
            "revision": spec.revision,
            "commit": commit,
            **_classifier_fields(spec),
        }
    elif isinstance(spec, LocalJudgeSpec):
        record = _copy_local(name, spec, out_dir)
    elif isinstance(spec, FactsJudgeSpec):
        record = _build_facts()
    elif isinstance(spec, NliJudgeSpec):
        record = _build_nli(name, spec, out_dir)
    else:  # the schema admits no other kind
        raise TypeError(f"unknown judge spec {type(spec).__name__}")
    record["name"] = name
    if record["kind"] in ("classifier", "nli"):
        from detox.models.check import check_model_folder

        check_model_folder(out_dir, "classifier", f"judges.{name}")
    write_json(out_dir / JUDGE_FILE, record)
    # a judge that does not load fails here, in the stage that built it
    (load_facts_judge if record["kind"] in ("facts", "nli") else load_judge)(out_dir)
    record["sha256"] = sha256_tree(out_dir)
    return record


def _build_oracle(spec: OracleJudgeSpec) -> dict[str, Any]:
    from detox.data.phrases import INSULTS
    from detox.data.sentences import labelled_sentences, vocabulary
    from detox.judges.oracle import InsultOracle, lexicon_version

    oracle = InsultOracle(INSULTS, sorted(vocabulary()), spec.min_embedded_letters)
    # A self-check: the generator's own labelled sentences, garbled ones included.
    check = labelled_sentences(2000, seed=1, hard_share=0.5)
    agreement = float((oracle.score(check["text"].tolist()) == check["label"].to_numpy()).mean())
    return {
        "kind": "oracle",
        "insults": list(INSULTS),
        "words": sorted(vocabulary()),
        "min_embedded_letters": spec.min_embedded_letters,
        "lexicon": lexicon_version(),
        "threshold": ORACLE_THRESHOLD,
        "labelled_sentences_agreement": agreement,
    }


def _build_facts() -> dict[str, Any]:
    from detox.common.params import BuiltinCorpus
    from detox.data.corpus import generate_corpus
    from detox.judges.facts import FactFinder, generator_fact_lists

    lists = generator_fact_lists()
    record: dict[str, Any] = {"kind": "facts", **lists}
    # A self-check: the generator's own references state only their dialogue's facts.
    finder = FactFinder(**lists)
    check = generate_corpus(BuiltinCorpus(train_size=500, validation_size=20, test_size=20), seed=1)["train"]
    pairs = list(zip(check["dialogue"], check["summary"], strict=True))
    record["reference_invented_share"] = float(np.mean([bool(finder.invented(d, s)) for d, s in pairs]))
    record["reference_facts_per_summary"] = float(np.mean([len(finder.facts(s)) for _, s in pairs]))
    return record


def _build_nli(name: str, spec: NliJudgeSpec, out_dir: Path) -> dict[str, Any]:
    fields = {
        "entailment_label": spec.entailment_label,
        "granularity": spec.granularity,
        "threshold": spec.threshold,
        "batch_size": spec.batch_size,
        "max_tokens": spec.max_tokens,
    }
    if spec.path is not None:
        src = Path(spec.path)
        if not (src / "config.json").is_file():
            raise SourceError(
                f"judges.{name}.path: {src} is no Hugging Face model folder (no config.json); "
                f"give an NLI sequence-classification model folder, or a Hub id in judges.{name}.name"
            )
        shutil.copytree(src, out_dir, dirs_exist_ok=True)
        return {"kind": "nli", "source": "local", "path": str(src), **fields}
    try:
        commit = download_model(spec.name, spec.revision, out_dir, f"judges.{name}")
    except HubUnreachableError as exc:
        raise HubUnreachableError(
            f"{exc} For the facts judge: set eval.facts_judge to facts (the built-in world's facts), "
            f"give the NLI model as a folder on disk (judges.{name}.path, name: null), or null for none."
        ) from None
    return {"kind": "nli", "source": "hub", "name": spec.name, "revision": spec.revision, "commit": commit, **fields}


def _classifier_fields(spec: HubJudgeSpec | LocalJudgeSpec) -> dict[str, Any]:
    return {
        "toxic_label": spec.toxic_label,
        "threshold": spec.threshold,
        "batch_size": spec.batch_size,
        "max_tokens": spec.max_tokens,
    }


def _copy_local(name: str, spec: LocalJudgeSpec, out_dir: Path) -> dict[str, Any]:
    src = Path(spec.path)
    if (src / JUDGE_FILE).is_file():  # a judge folder this project built
        shutil.copytree(src, out_dir, dirs_exist_ok=True)
        return {**json.loads((src / JUDGE_FILE).read_text(encoding="utf-8")), "source": "local", "path": str(src)}
    if not (src / "config.json").is_file():
        raise SourceError(
            f"judges.{name}.path: {src} is neither a judge folder ({JUDGE_FILE}) nor a Hugging Face "
            "model folder (config.json); give a sequence-classification model folder"
        )
    shutil.copytree(src, out_dir, dirs_exist_ok=True)
    return {"kind": "classifier", "source": "local", "path": str(src), **_classifier_fields(spec)}


def build_judges(params: Params, out_root: Path) -> dict[str, dict[str, Any]]:
    """Build every judge of ``eval.judges``, and the facts judge ``eval.facts_judge``, into ``out_root/<name>``;
    return their records by name."""
    names = [*params.eval.judges, *([params.eval.facts_judge] if params.eval.facts_judge else [])]
    return {name: build_judge(name, params.judges[name], out_root / name) for name in names}


# --------------------------------------------------------------------------- loading


def load_judge(folder: str | Path) -> Judge:
    folder = Path(folder)
    path = folder / JUDGE_FILE
    record = _record(folder)
    name, kind = record.get("name", folder.name), record.get("kind")
    if kind == "oracle":
        return OracleJudge(name, record)
    if kind == "ngram":
        return NgramJudge(name, folder, float(record["threshold"]))
    if kind == "classifier":
        return ClassifierJudge(
            name,
            folder,
            record["toxic_label"],
            float(record["threshold"]),
            int(record.get("batch_size", 64)),
            int(record.get("max_tokens", 512)),
        )
    raise DetoxError(f"{path}: unknown judge kind {kind!r}; run `dvc repro judges` to rebuild it")


def _record(folder: Path) -> dict[str, Any]:
    path = folder / JUDGE_FILE
    if not path.is_file():
        raise DetoxError(f"{path}: not found; the judges stage builds it: run `dvc repro judges`")
    return json.loads(path.read_text(encoding="utf-8"))


def load_facts_judge(folder: str | Path) -> FactsJudge:
    """The facts judge built into ``folder`` (``models/judges/<eval.facts_judge>``)."""
    folder = Path(folder)
    record = _record(folder)
    name, kind = record.get("name", folder.name), record.get("kind")
    if kind == "facts":
        return GeneratorFactsJudge(name, record)
    if kind == "nli":
        return NliFactsJudge(name, folder, record)
    raise DetoxError(
        f"{folder / JUDGE_FILE}: a {kind!r} judge is no judge of facts; eval.facts_judge must name a "
        "`kind: facts` or `kind: nli` judge (run `dvc repro judges` after changing it)"
    )


def load_judges(root: str | Path, names: Sequence[str]) -> dict[str, Judge]:
    """The judges ``names`` (``eval.judges``) from ``root`` (``models/judges``), in that order."""
    root = Path(root)
    missing = [n for n in names if not (root / n / JUDGE_FILE).is_file()]
    if missing:
        raise DetoxError(f"{root}: no judge {missing} (eval.judges is {list(names)}); run `dvc repro judges`")
    return {name: load_judge(root / name) for name in names}


def facts_judge(root: str | Path, name: str | None) -> FactsJudge | None:
    """The facts judge ``name`` (``eval.facts_judge``) from ``root`` (``models/judges``); None when it is null."""
    if name is None:
        return None
    if not (Path(root) / name / JUDGE_FILE).is_file():
        raise DetoxError(f"{root}: no facts judge {name!r} (eval.facts_judge); run `dvc repro judges`")
    return load_facts_judge(Path(root) / name)
