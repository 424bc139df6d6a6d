"""Optuna, where the engine needs more than ``optuna.Study`` offers: one place, each use with its reason.

- ``compute_hypervolume``: Optuna 5.0 has no public hypervolume function (only ``plot_hypervolume_history``);
  its private ``optuna._hypervolume.compute_hypervolume`` is the exact algorithm it uses itself.
- ``set_user_attr``: an attribute on a trial the current process did not start (a trial a killed search left
  RUNNING), through the storage's public API by study name and trial number, not ``study._storage``.
- ``study_id``: the dashboard's URL names a study by its storage id, again through the storage's public API.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .backends import backend


def compute_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume dominated by ``points`` (minimisation) up to ``reference``."""
    from optuna._hypervolume import compute_hypervolume as _hv

    return float(_hv(np.asarray(points, dtype=float), np.asarray(reference, dtype=float), assume_pareto=False))


def study_id(storage: str, name: str) -> int:
    return backend(storage).get_study_id_from_name(name)


def set_user_attr(storage: str, name: str, number: int, key: str, value: Any) -> None:
    """``key = value`` on trial ``number`` of study ``name`` in ``storage`` (a URL), whatever its state."""
    store = backend(storage)
    trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(name), number)
    store.set_trial_user_attr(trial_id, key, value)
