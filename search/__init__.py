"""Orchestration: the Hydra CLI, the Optuna study, one trial's pipeline, training, reports and picking."""
from . import cli  # noqa: F401 - registers space=full (every knob of conf/space/knob/) in the ConfigStore
