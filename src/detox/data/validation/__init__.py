"""The ``validate`` stage's library: a Great Expectations suite per data split.

Each split (``train``, ``validation``, ``test``) is checked by a GX 1.x expectation
suite built from :class:`~detox.common.params.ValidateParams`:

* the required columns exist (``id``, ``dialogue``, ``summary``, ``topic``);
* their values are strings; ``id``, ``dialogue`` and ``summary`` are non-null and
  non-empty; ids are unique;
* no id and no dialogue is shared with another split;
* dialogue and summary lengths lie within ``dialogue_chars`` / ``summary_chars``;
* every dialogue matches ``turn_pattern`` (the speaker-turn format);
* the split has at least ``min_rows[split]`` rows.

The reward stage's labelled data (``text,label``) gets a suite of its own, ``labelled``:

* at least ``labelled.min_rows`` rows; ``text`` and ``label`` exist and are non-null;
* texts are strings of ``labelled.text_chars`` characters, not blank, and none equals a
  summary of the test split (the reward model must not train on what it is judged on);
* labels are in the reward model's set (its ``id2label`` names, or their ids);
* class balance: the share of rows with the toxic label (a derived ``toxic`` column, 0/1)
  lies within ``[min_class_share, 1 - min_class_share]``.

The GX context is ephemeral (in memory), so no ``gx/`` folder is created. Under the
report folder the stage leaves one GX validation-result JSON per split
(``<split>.json``) and a GX Data Docs site (``data_docs/index.html``).

Cross-split checks are made once per pair of splits, on the split that comes first
in ``train, validation, test`` order, against the values of the later split; the
larger split thus carries the (smaller) other split's values, which keeps the result
JSON small, and the failure says which split the value is shared with.

Modules: :mod:`.inputs` reads the files, :mod:`.suites` builds the expectation suites,
:mod:`.run` runs them with GX, :mod:`.failures` says what failed.
"""
