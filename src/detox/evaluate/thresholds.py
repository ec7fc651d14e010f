"""The reward model's toxic threshold, alone: the ppo stage reads it without the evaluation's code."""

TOXIC_THRESHOLD = 0.5  # the reward model's: toxic when P(toxic label) > 0.5
