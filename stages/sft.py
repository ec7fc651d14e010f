"""DVC stage `sft`: supervised fine-tuning of the policy -> models/policy/, metrics/sft.json, plots/sft/.

The builtin policy is trained from scratch on the train split; a hub/local policy is used as it is
unless sft.enabled is true. The run is logged to MLflow and the trained policy registered as a new
version of tracking.sft_model (see src/detox/models/sft.py).
"""

from pathlib import Path

import pandas as pd

from detox.common.cli import run_stage
from detox.common.gate import VALIDATION_METRICS, ready
from detox.common.params import GenerationParams, load_params
from detox.common.timings import TIMINGS_DIR
from detox.models.sft import run_sft
from detox.models.training_stage import HISTORY_FILE, Trained, history_table, run_training
from detox.serve.summarizer import Summarizer, model_config, signature
from detox.tracking.provenance import run_name
from detox.tracking.registry import PolicyModel

BASE = Path("models/base/policy")
RAW = Path("data/raw")
POLICY = Path("models/policy")
METRICS = Path("metrics/sft.json")
HISTORY = Path("plots/sft") / HISTORY_FILE
DESCRIPTION = (
    "The policy before PPO: a seq2seq summariser of dialogues (T5), fine-tuned on the train split by the "
    "sft stage. Input: a `dialogue` column; output: one summary per dialogue."
)
INPUTS = (
    VALIDATION_METRICS,
    *(RAW / f"{split}.parquet" for split in ("train", "validation", "test")),
    BASE / "config.json",
)
OUTPUTS = (POLICY, METRICS, HISTORY, TIMINGS_DIR / "sft.json")


def main() -> None:
    params = load_params("params.yaml")
    ready("sft", INPUTS, OUTPUTS)  # never train on data whose validation failed, or where nothing can be saved

    def train(scratch: Path) -> Trained:
        result = run_sft(params, BASE, RAW, scratch)
        history = history_table(result.fit, ["epoch", "train_loss", "eval_loss", "eval_rougeL"])
        model = None
        if result.trained:
            # Served greedily by default; a request may pass do_sample, temperature, seed, max_new_tokens.
            config = model_config(params.prompt.template, GenerationParams(do_sample=False), params.seed)
            model = PolicyModel(
                Summarizer(),
                scratch,
                config,
                signature(config),
                pd.DataFrame({"dialogue": pd.read_parquet(RAW / "test.parquet")["dialogue"].head(2)}),
                description=DESCRIPTION,
                version_description=f"{run_name('sft')}: {params.policy.source} policy, "
                f"{params.sft.epochs} epochs in {result.metrics['precision']}; validation ROUGE-L "
                f"{result.metrics.get('validation_rougeL')}",
            )
        return Trained(
            result.trained,
            result.metrics,
            result.fit,
            {HISTORY.name: history},
            model,
            {
                "policy.source": params.policy.source,
                "precision": result.metrics.get("precision"),  # what sft.precision resolved to (auto: bf16 or fp32)
                "validation_rougeL": result.metrics.get("validation_rougeL"),
            },
        )

    result, version = run_training("sft", params, POLICY, HISTORY.parent, METRICS, params.tracking.sft_model, train)
    if result.trained:
        print(
            f"policy trained: validation loss {result.metrics['validation_loss']:.4f}, ROUGE-L "
            f"{result.metrics['validation_rougeL']}; MLflow model {params.tracking.sft_model} version {version}"
        )
    else:
        print(f"policy used as fetched ({params.policy.source}); set sft.enabled true to fine-tune it")


if __name__ == "__main__":
    run_stage(main)
