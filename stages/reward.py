"""DVC stage `reward`: train (or take as it is) the reward model and measure it on held-out labelled data.

Writes models/reward/, metrics/reward.json and plots/reward/ (ROC, calibration, per-epoch history,
held-out predictions for a confusion matrix). The run is logged to MLflow and the model registered as
a new version of tracking.reward_model (see src/detox/models/reward_training.py).
"""

from pathlib import Path

import pandas as pd

from detox.common.cli import run_stage
from detox.common.gate import LABELLED_METRICS, ready
from detox.common.io import sha256_file
from detox.common.params import load_params
from detox.common.timings import TIMINGS_DIR
from detox.models.reward_training import run_reward
from detox.models.training_stage import HISTORY_FILE, Trained, history_table, run_training
from detox.serve.reward_model import RewardClassifier, reward_config, reward_signature
from detox.tracking.provenance import run_name
from detox.tracking.registry import PolicyModel

BASE = Path("models/base/reward")
LABELLED = Path("data/labelled/labelled.parquet")
REWARD = Path("models/reward")
METRICS = Path("metrics/reward.json")
PLOTS = Path("plots/reward")
DESCRIPTION = (
    "The reward model of PPO: a hate-speech classifier (RoBERTa) trained by the reward stage. Input: a "
    "`text` column; output per text: `reward` (the logit of reward.reward_label, e.g. nothate) and "
    "`toxicity` (the probability of reward.toxic_label, e.g. hate)."
)
INPUTS = (LABELLED_METRICS, LABELLED, BASE / "config.json")
OUTPUTS = (REWARD, METRICS, PLOTS, TIMINGS_DIR / "reward.json")


def main() -> None:
    params = load_params("params.yaml")
    ready("reward", INPUTS, OUTPUTS)  # never train on labelled data whose validation failed

    def train(scratch: Path) -> Trained:
        result = run_reward(params, BASE, LABELLED, scratch)
        history = history_table(result.fit, ["epoch", "train_loss", "eval_loss", "eval_accuracy"])
        tables = {
            HISTORY_FILE: history,
            "roc.tsv": result.curves["roc"],
            "calibration.tsv": result.curves["calibration"],
            "predictions.csv": result.curves["predictions"],
        }
        heldout = result.metrics["heldout"]
        model = None  # a hub/local model used as it is stays where it came from (the fetch manifest names it)
        if result.trained:
            model = PolicyModel(
                RewardClassifier(),
                scratch,
                reward_config(params.reward),
                reward_signature(),
                pd.DataFrame({"text": ["You are an idiot.", "Thanks for your help."]}),
                artifact="reward",
                description=DESCRIPTION,
                version_description=f"{run_name('reward')}: {params.reward.source} classifier; "
                f"held-out accuracy {heldout['accuracy']:.4f}, ROC-AUC "
                f"{heldout['roc_auc']} on {heldout['examples']} texts",
            )
        return Trained(
            result.trained,
            result.metrics,
            result.fit,
            tables,
            model,
            {
                "trained": result.trained,
                "heldout.accuracy": heldout["accuracy"],
                "heldout.roc_auc": heldout["roc_auc"],
                "labelled.sha256": sha256_file(LABELLED),
                "reward.source": params.reward.source,
            },
        )

    result, version = run_training("reward", params, REWARD, PLOTS, METRICS, params.tracking.reward_model, train)
    heldout = result.metrics["heldout"]
    print(
        f"reward model {'trained' if result.trained else 'used as fetched'}: held-out accuracy "
        f"{heldout['accuracy']:.4f}, ROC-AUC {heldout['roc_auc']}, calibration error "
        f"{heldout['calibration_error']:.4f} on {heldout['examples']} texts; MLflow model "
        f"{params.tracking.reward_model} version {version}"
    )


if __name__ == "__main__":
    run_stage(main)
