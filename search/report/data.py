"""A study and what its folder holds, loaded once for the report pages (never creates a study)."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from omegaconf import OmegaConf

from objectives import objective_class

from ..results.front import Reference, reference
from ..results.outputs import objective_names_of, trials_frame
from ..storage.backends import load_study, url_for
from . import analysis as an

DEFAULT_RESULTS = "results"


@dataclass
class StudyData:
    """A study and what its folder holds; the derived tables are computed once, on first use."""

    name: str
    study: optuna.Study
    out_dir: Path
    results_dir: str
    storage: str | None = None  # an explicit study.storage (None: the study's own study.db)
    df: pd.DataFrame = field(init=False)
    names: list[str] = field(init=False)  # parameter names in the order the space samples them
    config: dict[str, Any] = field(init=False)  # results/<study>/config.yaml ({} if absent)
    summary: dict[str, Any] = field(init=False)  # results/<study>/summary.json ({} if absent)
    sensitivity: pd.DataFrame | None = field(init=False)  # results/<study>/sensitivity.csv (None if absent)
    blocks: pd.DataFrame | None = field(init=False)  # results/<study>/importance.csv: derived students' block ranking

    def __post_init__(self) -> None:
        self.df = trials_frame(self.study)
        self.names = an.param_names(self.study)
        self.config = _read(self.out_dir / "config.yaml", lambda text: OmegaConf.to_container(OmegaConf.create(text)))
        self.summary = _read(self.out_dir / "summary.json", json.loads)
        path = self.out_dir / "sensitivity.csv"
        self.sensitivity = pd.read_csv(path) if path.is_file() else None
        path = self.out_dir / "importance.csv"
        self.blocks = pd.read_csv(path) if path.is_file() else None

    @property
    def ref(self) -> Reference | None:
        return reference(self.df)

    def pick_command(self, number: int) -> str:
        """The command that bundles trial ``number`` for production."""
        parts = ["python -m search.pick", f"study.name={self.name}"]
        if self.results_dir != DEFAULT_RESULTS:
            parts.append(f"results_dir={self.results_dir}")
        if self.storage:
            parts.append(f"study.storage={self.storage}")
        return " ".join([*parts, f"pick.trial={number}"])


def _read(path: Path, parse: Callable[[str], Any]) -> dict[str, Any]:
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - a missing or unreadable file only leaves its rows out
        return {}
    return data if isinstance(data, dict) else {}


def plain_name(value: Any, key: str) -> str:
    name = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise ValueError(f"{key} must be a plain folder name, got {value!r}")
    return name


def locate(name: str, *, results_dir: str | Path, storage: str | None = None,
           key: str = "study.name") -> tuple[optuna.Study, str]:
    """The study a search wrote and its storage URL (never creates one)."""
    db = Path(results_dir) / name / "study.db"
    url = url_for(storage, results_dir=results_dir, name=name)
    if not storage and url.startswith("sqlite") and not db.is_file():
        raise FileNotFoundError(f"{key}: no study at {db}; run `python -m search` with the same overrides first "
                                f"(results_dir={results_dir})")
    try:
        study = load_study(name, url)
    except KeyError as exc:
        raise ValueError(f"{key}: no study {name!r} in {url}") from exc
    try:
        objective_names_of(study)
        for metric in study.metric_names:
            objective_class(metric, key=f"{key}: study {name!r}")
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from exc
    return study, url


def load(name: str, *, results_dir: str | Path, storage: str | None = None, key: str = "study.name") -> StudyData:
    study, _ = locate(name, results_dir=results_dir, storage=storage, key=key)
    return StudyData(name, study, Path(results_dir) / name, str(results_dir), storage or None)


