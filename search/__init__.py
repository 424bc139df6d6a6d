"""Orchestration: the Hydra CLI, the Optuna study, recovery training, baselines and outputs."""
