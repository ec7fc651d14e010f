"""Models: checks, the shared training loop, generation, SFT, the reward model and its training."""
