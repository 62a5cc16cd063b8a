"""Hyperparameter search with KerasTuner, and the sweep analysis of its trials."""
