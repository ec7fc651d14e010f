"""The one place that knows MLflow (besides the pyfunc model classes in :mod:`detox.serve.summarizer` and
:mod:`detox.serve.reward_model`).

- :mod:`detox.tracking.store`: where runs go (the embedded store or ``MLFLOW_TRACKING_URI``), and the
  checks before any work that a tracking server answers or a local store can be written;
- :mod:`detox.tracking.runs`: a stage's MLflow run (:class:`~detox.tracking.runs.Tracker`) and the run
  record a training stage leaves beside its model;
- :mod:`detox.tracking.results`: what the training and evaluate stages log into their runs (each
  evaluation a run of its own, a child of the PPO run);
- :mod:`detox.tracking.registry`: logged and registered models, their tags, and the promotion aliases;
- :mod:`detox.tracking.provenance`: the names and tags that tie a run to its DVC experiment, git commit
  and ``dvc.lock`` entry, and the params each stage's run records;
- :mod:`detox.tracking.relocate`: ``python -m detox.tracking.relocate`` points a copied project's
  embedded store at the copy (no stage imports it).
"""
