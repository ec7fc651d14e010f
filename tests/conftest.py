import copy

import pytest

from detox.params import parse_params

# A built-in world small enough to build in seconds: the same code paths as the
# default one, with fewer rows, epochs and sentences.
TINY = {
    "data": {"builtin": {"train_size": 96, "validation_size": 24, "test_size": 24, "num_topics": 8}},
    "policy": {"builtin": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1,
                           "num_heads": 2, "epochs": 1, "batch_size": 32, "vocab_size": 400}},
    "reward": {"builtin": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                           "num_sentences": 200, "vocab_size": 400, "training": {"epochs": 1}}},
    "validation": {"min_rows": {"train": 10, "validation": 5, "test": 5}},
    "generation": {"batch_size": 8, "max_new_tokens": 12},
    "eval": {"samples_per_prompt": 2},
    "judges": {"oracle": {"kind": "oracle"}, "ngram": {"kind": "builtin", "num_sentences": 400}},
    "promotion": {"min_prompts": 5},
}


def tiny_params(**overrides):
    raw = copy.deepcopy(TINY)
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_params(raw)


@pytest.fixture
def tiny():
    return tiny_params
