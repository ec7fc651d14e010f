"""Less toxic dialogue summaries: PPO against a hate-speech reward model, run as a DVC + MLflow pipeline."""

__version__ = "0.1.0"
