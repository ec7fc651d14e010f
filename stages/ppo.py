"""DVC stage `ppo`: PPO fine-tuning of the fetched policy against the reward model -> models/ppo/.

One process by default; several with `accelerate launch --multi_gpu --num_processes N stages/ppo.py`
(on a machine without GPUs too: the processes then train on the CPU with a gloo group).
"""

import sys

from detox.common.cli import run_stage
from detox.common.gate import VALIDATION_METRICS, ready
from detox.common.params import load_params
from detox.ppo.train import PPOPaths, run_ppo

PATHS = PPOPaths()
INPUTS = (
    VALIDATION_METRICS,
    PATHS.train,
    PATHS.validation,
    PATHS.policy / "config.json",
    PATHS.reward / "config.json",
    PATHS.judges,
)
OUTPUTS = (PATHS.out, PATHS.metrics, PATHS.history, PATHS.evaluations, PATHS.checkpoints, PATHS.timings)


def main() -> None:
    params = load_params("params.yaml")
    ready("ppo", INPUTS, OUTPUTS)  # never train on data whose validation failed, nor on a missing policy
    metrics = run_ppo(params, PATHS)
    # One write per line: under `accelerate launch` every process prints it to the same (unbuffered)
    # stdout, and print()'s separate write of the newline lets two processes' lines run together.
    sys.stdout.write(
        f"ppo: {metrics['steps']} steps, reward {metrics['reward_mean_first5']:.3f} -> "
        f"{metrics['reward_mean_last5']:.3f}, toxicity {metrics['toxicity_mean_first5']:.3f} -> "
        f"{metrics['toxicity_mean_last5']:.3f}, KL {metrics['kl_last5']:.3f}\n"
    )


if __name__ == "__main__":
    run_stage(main)
