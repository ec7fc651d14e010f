"""DVC stage `judges`: the toxicity judges of `eval.judges` and the facts judge of `eval.facts_judge`
-> models/judges/<name>/, metrics/judges.json.

Judges measure the policies beside the reward model and share nothing with it: the built-in
world's oracle (the corpus generator's ground truth), a character n-gram classifier trained
here, a public Hub classifier, or a local model folder (see src/detox/judges/panel.py).
"""

from pathlib import Path

from detox.common.cli import run_stage
from detox.common.gate import ready
from detox.common.io import atomic_dir, write_json
from detox.common.params import load_params
from detox.judges.panel import build_judges

JUDGES = Path("models/judges")
METRICS = Path("metrics/judges.json")
INPUTS: tuple[Path, ...] = ()  # a local judge's folder is checked where it is copied (detox.judges.panel)
OUTPUTS = (JUDGES, METRICS)


def main() -> None:
    params = load_params("params.yaml")
    ready("judges", INPUTS, OUTPUTS)
    with atomic_dir(JUDGES) as scratch:
        records = build_judges(params, scratch)
    metrics = {}
    for name, record in records.items():
        metrics[name] = {"kind": record["kind"]}
        for key in (
            "labelled_sentences_agreement",
            "reference_invented_share",
            "reference_facts_per_summary",
            "commit",
            "toxic_label",
            "entailment_label",
        ):
            if key in record:
                metrics[name][key] = record[key]
        metrics[name].update(record.get("training", {}))
    write_json(METRICS, metrics)
    for name, numbers in metrics.items():
        print(
            f"judge {name}: "
            + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items())
        )


if __name__ == "__main__":
    run_stage(main)
