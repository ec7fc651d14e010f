"""Serving: the MLflow pyfunc models, the Hugging Face pipeline, model cards."""
