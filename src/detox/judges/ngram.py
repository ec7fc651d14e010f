"""The built-in independent toxicity classifier: character n-grams and a logistic regression.

It is built to share nothing with the reward model that PPO optimises against: not the
architecture (a linear model over character 2- to 5-grams, scikit-learn, instead of a
transformer), not the tokenizer (characters inside word boundaries, instead of byte-level
BPE), not the seed nor the draw of labelled sentences. Character n-grams see an insult
inside a garbled token ("repairidiot") because its letters are still there, where a
subword tokenizer may cut it into pieces it never saw in training.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from detox.common.params import BuiltinJudgeSpec
from detox.data.sentences import labelled_sentences

MODEL_FILE = "model.joblib"
HOLDOUT_SHARE = 0.1


def train_ngram_judge(spec: BuiltinJudgeSpec, out_dir: Path) -> dict[str, Any]:
    """Train on ``spec.num_sentences`` generated sentences; save the pipeline; return held-out metrics."""
    data = labelled_sentences(spec.num_sentences, spec.seed, hard_share=spec.hard_share)
    # Its own draw, not reward_training.holdout_split's nor sklearn's: those hold out other rows (results must stay).
    order = list(range(len(data)))
    random.Random(spec.seed).shuffle(order)
    n_hold = max(1, int(len(order) * HOLDOUT_SHARE))
    held, train = data.iloc[order[:n_hold]], data.iloc[order[n_hold:]]
    pipeline = Pipeline(
        [
            (
                "ngrams",
                TfidfVectorizer(
                    analyzer="char_wb",
                    ngram_range=(spec.ngram_min, spec.ngram_max),
                    lowercase=True,
                    sublinear_tf=True,
                    min_df=2,
                    dtype=np.float32,
                ),
            ),
            ("classifier", LogisticRegression(C=spec.C, max_iter=2000)),
        ]
    )
    pipeline.fit(train["text"].tolist(), train["label"].to_numpy())
    predicted = pipeline.predict_proba(held["text"].tolist())[:, 1] > spec.threshold
    correct = predicted == held["label"].to_numpy().astype(bool)
    hard = held["hard"].to_numpy(dtype=bool)
    out_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, out_dir / MODEL_FILE)
    return {
        "heldout_accuracy": float(correct.mean()),
        "heldout_accuracy_hard": float(correct[hard].mean()) if hard.any() else None,
        "heldout_examples": int(len(held)),
        "train_examples": int(len(train)),
        "features": int(len(pipeline.named_steps["ngrams"].vocabulary_)),
    }


def load_ngram_judge(path: Path) -> Pipeline:
    return joblib.load(Path(path) / MODEL_FILE)
