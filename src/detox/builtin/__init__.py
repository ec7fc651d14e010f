"""The offline world: a generated corpus and small models built from it."""
