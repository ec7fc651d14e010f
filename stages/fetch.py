"""DVC stage `fetch`: data and models from the sources in params.yaml -> data/raw, models/."""

from pathlib import Path

from detox.cli import run_stage
from detox.fetch import run_fetch
from detox.io import write_json
from detox.params import load_params


def main() -> None:
    params = load_params("params.yaml")
    manifest = run_fetch(params, Path("data/raw"), Path("models/policy"), Path("models/reward"))
    metrics = {f"rows_{split}": info["rows"] for split, info in manifest["data"]["splits"].items()}
    for model in ("policy", "reward"):
        for key, value in manifest[model].get("training", {}).items():
            metrics[f"{model}_{key}"] = value
    if "finetune" in manifest["reward"]:
        metrics["reward_finetune_heldout_accuracy"] = manifest["reward"]["finetune"]["heldout_accuracy"]
    write_json("metrics/fetch.json", metrics)
    print(f"fetched: data={manifest['data']['source']} policy={manifest['policy']['source']} "
          f"reward={manifest['reward']['source']}; manifest in data/raw/manifest.json")


if __name__ == "__main__":
    run_stage(main)
