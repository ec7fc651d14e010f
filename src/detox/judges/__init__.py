"""Judges that share nothing with the reward model: the panel, the n-gram judge, the oracle."""
