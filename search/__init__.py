"""Orchestration, in layers from the top (``pyproject.toml``'s import-linter contracts; a layer imports only those
below it): ``run`` (``python -m search``), ``workers`` (many processes on one study), ``process`` (one process's
search), ``finish`` (its outputs) and ``hardware`` (the lookup-table builder); ``pick`` and ``report``; ``cli`` (the
entry helper every command uses); ``app`` (config -> objects); ``loop`` (the Optuna study, baselines, screening,
re-timing); ``pipeline`` (one trial); ``training`` and ``sensitivity``; ``results`` (front, tables, selection
rules); ``storage`` (where a study lives); ``data`` and ``models``."""
from . import cli  # noqa: F401 - registers space=full (every knob of conf/space/knob/) in the ConfigStore
