"""DVC stage `sft`: supervised fine-tuning of the policy -> models/policy/, metrics/sft.json, plots/sft/.

The builtin policy is trained from scratch on the train split; a hub/local policy is used as it is
unless sft.enabled is true. The run is logged to MLflow and the trained policy registered as a new
version of tracking.sft_model (see src/detox/models/sft.py).
"""

import tempfile
from pathlib import Path

import pandas as pd

from detox.common.cli import run_stage
from detox.common.io import atomic_dir, sha256_tree, write_json, write_text
from detox.common.params import GenerationParams, load_params
from detox.serve.summarizer import Summarizer, model_config, signature
from detox.models.sft import run_sft
from detox.common.timings import TIMINGS_DIR, write_timings
from detox.tracking.provenance import run_name, stage_params
from detox.tracking.registry import PolicyModel
from detox.tracking.runs import Tracker, log_training
from detox.common.gate import VALIDATION_METRICS, ready

BASE = Path("models/base/policy")
RAW = Path("data/raw")
POLICY = Path("models/policy")
METRICS = Path("metrics/sft.json")
HISTORY = Path("plots/sft/history.tsv")
DESCRIPTION = ("The policy before PPO: a seq2seq summariser of dialogues (T5), fine-tuned on the train split by the "
               "sft stage. Input: a `dialogue` column; output: one summary per dialogue.")
INPUTS = (VALIDATION_METRICS, *(RAW / f"{split}.parquet" for split in ("train", "validation", "test")),
          BASE / "config.json")
OUTPUTS = (POLICY, METRICS, HISTORY, TIMINGS_DIR / "sft.json")


def main() -> None:
    params = load_params("params.yaml")
    ready("sft", INPUTS, OUTPUTS)  # never train on data whose validation failed, or where nothing can be saved
    tracker = Tracker(params.tracking.experiment)  # a tracking server that is down fails here, before training
    raw = params.model_dump(mode="json")
    # The run spans the training, so MLflow shows how long it took; any failure ends it FAILED.
    with (tracker.run("sft", params=stage_params("sft", raw)), atomic_dir(POLICY) as scratch,
          tempfile.TemporaryDirectory(prefix="detox-sft-") as logged):
        result = run_sft(params, BASE, RAW, scratch)
        timings = {"seconds": round(result.fit.seconds, 1)} if result.fit else {}
        history = pd.DataFrame(result.fit.history if result.fit else [], columns=[
            "epoch", "train_loss", "eval_loss", "eval_rougeL"])
        # Written for MLflow now, and to plots/ only once everything succeeded (no half-updated outputs).
        write_text(Path(logged) / HISTORY.name, history.to_csv(sep="\t", index=False))
        model = None
        if result.trained:
            # Served greedily by default; a request may pass do_sample, temperature, seed, max_new_tokens.
            config = model_config(params.prompt.template, GenerationParams(do_sample=False), params.seed)
            model = PolicyModel(Summarizer(), scratch, config, signature(config),
                                pd.DataFrame({"dialogue": pd.read_parquet(RAW / "test.parquet")["dialogue"].head(2)}),
                                description=DESCRIPTION,
                                version_description=f"{run_name('sft')}: {params.policy.source} policy, "
                                                    f"{params.sft.epochs} epochs; validation ROUGE-L "
                                                    f"{result.metrics.get('validation_rougeL')}")
        version = log_training(
            tracker, "sft", history.to_dict("records"), {**result.metrics, "timing": timings},
            [Path(logged) / HISTORY.name], model, params.tracking.sft_model,
            {"sha256": sha256_tree(scratch), "stage": "sft", "policy.source": params.policy.source,
             "validation_rougeL": result.metrics.get("validation_rougeL")},
        )
    write_text(HISTORY, history.to_csv(sep="\t", index=False))
    write_json(METRICS, result.metrics)
    write_timings("sft", timings)  # not a DVC metric: it varies by run
    if result.trained:
        print(f"policy trained: validation loss {result.metrics['validation_loss']:.4f}, ROUGE-L "
              f"{result.metrics['validation_rougeL']}; MLflow model {params.tracking.sft_model} version {version}")
    else:
        print(f"policy used as fetched ({params.policy.source}); set sft.enabled true to fine-tune it")

if __name__ == "__main__":
    run_stage(main)
