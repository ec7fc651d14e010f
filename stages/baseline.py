"""DVC stage `baseline`: the fetched policy on the test split -> data/scored/baseline.parquet, metrics.

Every summary is scored by the reward model and, beside it, by each judge of `eval.judges`;
fluency is measured under the same policy (the reference of PPO), garbling against the train split.
"""

from detox.common.cli import run_stage
from detox.common.gate import VALIDATION_METRICS, ready
from detox.common.io import write_json, write_parquet
from detox.common.params import load_params
from detox.common.timings import TIMINGS_DIR, write_timings
from detox.evaluate.scoring import eval_splits, score_test
from detox.evaluate.summary import headline, scope, summarize
from detox.judges.panel import facts_judge, load_judges
from detox.models.generation import load_policy
from detox.models.reward import RewardScorer

INPUTS = (
    VALIDATION_METRICS,
    "data/raw/test.parquet",
    "data/raw/train.parquet",
    "models/policy/config.json",
    "models/reward/config.json",
    "models/judges",
)
OUTPUTS = ("data/scored/baseline.parquet", "metrics/baseline.json", TIMINGS_DIR / "baseline.json")


def main() -> None:
    params = load_params("params.yaml")
    ready("baseline", INPUTS, OUTPUTS)
    test, train = eval_splits(params.eval.num_samples)
    model, tokenizer = load_policy("models/policy", params.policy.attention)
    scorer = RewardScorer.from_pretrained("models/reward", params.reward)
    judges = load_judges("models/judges", params.eval.judges)
    # fluency is measured under the same policy: the reference of PPO
    scored, samples_per_second = score_test(
        model,
        tokenizer,
        scorer,
        params,
        test,
        train,
        judges,
        (model, tokenizer),
        desc="baseline",
        facts=facts_judge("models/judges", params.eval.facts_judge),
    )
    write_parquet("data/scored/baseline.parquet", scored)
    metrics = summarize(scored)
    write_json("metrics/baseline.json", metrics)
    write_timings("baseline", {"samples_per_second": samples_per_second})  # not a DVC metric: it varies by run
    print(
        f"baseline on {scope(metrics)}: "
        f"reward {metrics['reward_mean']:.3f}, ROUGE-L {metrics['rougeL']:.3f}; toxic share "
        + headline(metrics["toxicity"])
    )


if __name__ == "__main__":
    run_stage(main)
