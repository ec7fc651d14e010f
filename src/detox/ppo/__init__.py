"""PPO for seq2seq policies: the pure, model-free math lives in :mod:`detox.ppo.core`."""
