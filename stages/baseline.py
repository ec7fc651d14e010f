"""DVC stage `baseline`: the fetched policy on the test split -> data/scored/baseline.parquet, metrics."""

from detox.cli import run_stage
from detox.data import load_split
from detox.evaluation import sample_rows, score_policy, summarize
from detox.generation import load_policy
from detox.io import write_json, write_parquet
from detox.params import load_params
from detox.reward import RewardScorer


def main() -> None:
    params = load_params("params.yaml")
    test = sample_rows(load_split("data/raw", "test"), params.eval.num_samples)
    model, tokenizer = load_policy("models/policy")
    scorer = RewardScorer.from_pretrained("models/reward", params.reward)
    scored, samples_per_second = score_policy(
        model, tokenizer, scorer, test, params.prompt.template, params.generation, params.eval.seed,
        params.generation.max_source_tokens, desc="baseline",
    )
    write_parquet("data/scored/baseline.parquet", scored)
    metrics = summarize(scored, samples_per_second)
    write_json("metrics/baseline.json", metrics)
    print(f"baseline on {metrics['n']} test dialogues: reward {metrics['reward_mean']:.3f}, "
          f"toxicity {metrics['toxicity_mean']:.3f}, toxic share {metrics['toxic_share']:.3f}, "
          f"ROUGE-L {metrics['rougeL']:.3f}")


if __name__ == "__main__":
    run_stage(main)
