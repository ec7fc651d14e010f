"""DVC stage `fetch`: data, labelled reward data and model folders from the sources in params.yaml.

Writes data/raw/ (splits), data/labelled/labelled.parquet and models/base/{policy,reward}/, each
folder with a manifest.json of its sources (commits, hashes). It trains nothing: sft and reward do.
"""

from pathlib import Path

from detox.common.cli import run_stage
from detox.common.gate import ready
from detox.common.io import write_json
from detox.common.params import load_params
from detox.data.fetch import run_fetch

RAW, LABELLED, BASE, METRICS = Path("data/raw"), Path("data/labelled"), Path("models/base"), Path("metrics/fetch.json")
INPUTS: tuple[Path, ...] = ()  # what fetch reads is in params.yaml: the sources
OUTPUTS = (RAW, LABELLED, BASE, METRICS)


def main() -> None:
    params = load_params("params.yaml")
    ready("fetch", INPUTS, OUTPUTS)  # before anything is downloaded or built: a read-only folder, a full disk
    manifest = run_fetch(params, RAW, LABELLED, BASE)
    metrics = {f"rows_{split}": info["rows"] for split, info in manifest["data"]["splits"].items()}
    metrics["rows_labelled"] = manifest["labelled"]["rows"]
    if "dropped_test_overlap" in manifest["labelled"]:
        metrics["labelled_dropped_test_overlap"] = manifest["labelled"]["dropped_test_overlap"]
    write_json(METRICS, metrics)
    print(
        f"fetched: data={manifest['data']['source']} labelled={manifest['labelled']['source']} "
        f"policy={manifest['policy']['source']} reward={manifest['reward']['source']}; "
        "manifests in data/raw/, data/labelled/ and models/base/"
    )


if __name__ == "__main__":
    run_stage(main)
