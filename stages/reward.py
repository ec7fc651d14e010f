"""DVC stage `reward`: train (or take as it is) the reward model and measure it on held-out labelled data.

Writes models/reward/, metrics/reward.json and plots/reward/ (ROC, calibration, per-epoch history,
held-out predictions for a confusion matrix). The run is logged to MLflow and the model registered as
a new version of tracking.reward_model (see src/detox/models/reward_training.py).
"""

import tempfile
from pathlib import Path

import pandas as pd

from detox.common.cli import run_stage
from detox.common.io import atomic_dir, sha256_file, sha256_tree, write_json, write_text
from detox.common.params import load_params
from detox.models.reward_training import run_reward
from detox.serve.reward_model import RewardClassifier, reward_config, reward_signature
from detox.common.timings import TIMINGS_DIR, write_timings
from detox.tracking.provenance import run_name, stage_params
from detox.tracking.registry import PolicyModel
from detox.tracking.runs import Tracker, log_training
from detox.common.gate import LABELLED_METRICS, ready

BASE = Path("models/base/reward")
LABELLED = Path("data/labelled/labelled.parquet")
REWARD = Path("models/reward")
METRICS = Path("metrics/reward.json")
PLOTS = Path("plots/reward")
DESCRIPTION = ("The reward model of PPO: a hate-speech classifier (RoBERTa) trained by the reward stage. Input: a "
               "`text` column; output per text: `reward` (the logit of reward.reward_label, e.g. nothate) and "
               "`toxicity` (the probability of reward.toxic_label, e.g. hate).")
INPUTS = (LABELLED_METRICS, LABELLED, BASE / "config.json")
OUTPUTS = (REWARD, METRICS, PLOTS, TIMINGS_DIR / "reward.json")


def main() -> None:
    params = load_params("params.yaml")
    ready("reward", INPUTS, OUTPUTS)  # never train on labelled data whose validation failed
    tracker = Tracker(params.tracking.experiment)  # a tracking server that is down fails here, before training
    raw = params.model_dump(mode="json")
    # The run spans the training, so MLflow shows how long it took; any failure ends it FAILED.
    with (tracker.run("reward", params=stage_params("reward", raw)), atomic_dir(REWARD) as scratch,
          tempfile.TemporaryDirectory(prefix="detox-reward-") as logged):
        result = run_reward(params, BASE, LABELLED, scratch)
        timings = {"seconds": round(result.fit.seconds, 1)} if result.fit else {}
        history = pd.DataFrame(result.fit.history if result.fit else [], columns=[
            "epoch", "train_loss", "eval_loss", "eval_accuracy"])
        tables = {"history.tsv": history, "roc.tsv": result.curves["roc"],
                  "calibration.tsv": result.curves["calibration"], "predictions.csv": result.curves["predictions"]}
        texts = {name: table.to_csv(sep="," if name.endswith(".csv") else "\t", index=False)
                 for name, table in tables.items()}
        for name, text in texts.items():  # for MLflow now; to plots/ once everything succeeded
            write_text(Path(logged) / name, text)
        heldout = result.metrics["heldout"]
        model = None  # a hub/local model used as it is stays where it came from (the fetch manifest names it)
        if result.trained:
            model = PolicyModel(RewardClassifier(), scratch, reward_config(params.reward), reward_signature(),
                                pd.DataFrame({"text": ["You are an idiot.", "Thanks for your help."]}),
                                artifact="reward", description=DESCRIPTION,
                                version_description=f"{run_name('reward')}: {params.reward.source} classifier; "
                                                    f"held-out accuracy {heldout['accuracy']:.4f}, ROC-AUC "
                                                    f"{heldout['roc_auc']} on {heldout['examples']} texts")
        version = log_training(
            tracker, "reward", history.to_dict("records"), {**result.metrics, "timing": timings},
            [Path(logged) / name for name in tables], model,
            params.tracking.reward_model,
            {"sha256": sha256_tree(scratch), "stage": "reward", "trained": result.trained,
             "heldout.accuracy": heldout["accuracy"], "heldout.roc_auc": heldout["roc_auc"],
             "labelled.sha256": sha256_file(LABELLED), "reward.source": params.reward.source},
        )
    for name, text in texts.items():
        write_text(PLOTS / name, text)
    write_json(METRICS, result.metrics)
    write_timings("reward", timings)  # not a DVC metric: it varies by run
    print(f"reward model {'trained' if result.trained else 'used as fetched'}: held-out accuracy "
          f"{heldout['accuracy']:.4f}, ROC-AUC {heldout['roc_auc']}, calibration error "
          f"{heldout['calibration_error']:.4f} on {heldout['examples']} texts; MLflow model "
          f"{params.tracking.reward_model} version {version}")

if __name__ == "__main__":
    run_stage(main)
