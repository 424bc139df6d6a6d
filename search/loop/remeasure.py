"""Latency re-measured together: the baselines and the searched trials that could dominate them, timed in one
interleaved run at the end of a search.

Each trial's latency is measured when the trial runs, minutes apart from the others; on a shared 2-core VM the
same ONNX model read 8.9 ms in one trial and 12.5 ms in another (``uniform_w4a8`` and ``uniform_int8`` run the very
same int8 graph). Whether a searched trial is faster than a baseline is therefore decided again here, with every
candidate timed in the same call (``BaseCostModel.measure_many``: timed runs in rounds, interleaved, so a slow
spell hits all alike) from the ONNX file the search stored for each full-fidelity trial (Optuna's artifact store,
``results/<study>/artifacts/``), with the runtime's own files where it cannot time ONNX (``kept_files``:
ExecuTorch's ``model.pte``). The recorded values are left as they are; ``remeasured.csv`` and
``summary.json: baselines_dominated_by_remeasured`` hold the second reading.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from objectives.hardware import BaseCostModel
from spaces import Artifact

from ..results.front import baseline_dominance, done, misses, objective_names, weakly_dominates
from ..results.outputs import atomic_write
from ..storage.artifacts import file_of, onnx_of, store
from ..storage.backends import backend as opened

def candidates(df: pd.DataFrame, tolerance: dict[str, float]) -> pd.DataFrame:
    """The baselines, and the searched full-fidelity trials no worse than some baseline on every objective but
    latency (those whose latency decides whether they dominate it)."""
    names = objective_names(df)
    ok = done(df)
    baselines, searched = ok[ok["baseline"] != ""], ok[ok["baseline"] == ""]
    others = [n for n in names if n != "latency_ms"]
    close = [i for i, s in searched.iterrows()
             if any(weakly_dominates(s, b, others, tolerance=tolerance) for _, b in baselines.iterrows())]
    return pd.concat([baselines, searched.loc[close]])


def remeasure(study: optuna.Study, df: pd.DataFrame, *, storage: str, cost_model: BaseCostModel, out_dir: Path,
              input_shape: tuple[int, ...], example: np.ndarray, tolerance: dict[str, float], n_val: int,
              limit: int = 40, location: str | None = None) -> dict[str, Any]:
    """Time the candidates together; write ``remeasured.csv``; the baselines' dominance under the new reading, and
    why each one left undominated is (``front.misses``, on ``n_val`` validation images). ``storage``: the study's
    storage URL (where the artifacts' records are); ``location``: its artifact store (``study.artifacts``)."""
    if "latency_ms" not in objective_names(df):
        return {}
    rows = candidates(df, tolerance)
    rows = pd.concat([rows[rows["baseline"] != ""], rows[rows["baseline"] == ""].sort_values("size_bytes")[:limit]])
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    artifacts, got, backend = store(out_dir, location), {}, opened(storage)
    reference = cost_model.reference()
    needs = reference.kept_names
    with tempfile.TemporaryDirectory() as tmp:
        for number in rows["number"].astype(int):
            onnx = onnx_of(trials[number], artifacts, Path(tmp), backend)
            files = {n: file_of(trials[number], artifacts, Path(tmp), backend, n) for n in needs}
            if onnx is not None and all(v is not None for v in files.values()):
                got[number] = Artifact(packed=b"", onnx=onnx, int8_layers=(), input_shape=tuple(input_shape),
                                       example=example, files=files or None)
    if not got:
        return {}
    readings = reference.measure_many(list(got.values()) * 2)  # each model in two sessions
    first, second = readings[: len(got)], readings[len(got):]
    kept = rows[rows["number"].isin(list(got))]
    table = kept.copy()
    table["latency_first_ms"] = table["number"].map(dict(zip(got, (m.value_ms for m in first))))
    table["latency_second_ms"] = table["number"].map(dict(zip(got, (m.value_ms for m in second))))
    table["latency_remeasured_ms"] = (table["latency_first_ms"] + table["latency_second_ms"]) / 2
    table = table[["number", "baseline", *objective_names(df), "latency_remeasured_ms", "latency_first_ms",
                   "latency_second_ms"]]
    atomic_write(Path(out_dir) / "remeasured.csv", table.to_csv(index=False))
    # the noise of this reading: how far one model's two sessions, timed together, fall apart (root mean square of
    # their gap over their mean, over all the models timed)
    gap = (table["latency_first_ms"] - table["latency_second_ms"]).abs() / table["latency_remeasured_ms"]
    noise = float(np.sqrt((gap ** 2).mean()))
    again = kept.assign(latency_ms=table["latency_remeasured_ms"])
    dominance = baseline_dominance(again, tolerance=tolerance)
    return {"baselines_dominated_by_remeasured": dominance, "remeasured_trials": int(len(table)),
            "remeasured_session_gap": round(noise, 4),
            "baselines_missed_remeasured": misses(again, dominance, n_val=n_val, tolerance=tolerance,
                                                  latency_noise=noise)}


def between_readings(remeasured: Path) -> float | None:
    """Root-mean-square relative gap, over the models of a study's ``remeasured.csv``, between each one's latency
    as a share of the uncompressed model's when it ran and when timed again together at the end; None without the
    file or the uncompressed model in it."""
    if not Path(remeasured).is_file():
        return None
    df = pd.read_csv(remeasured, keep_default_na=False)
    base = df[df["baseline"] == "uncompressed"]
    if base.empty or len(df) < 3 or not {"latency_ms", "latency_remeasured_ms"} <= set(df.columns):
        return None
    then = df["latency_ms"].astype(float) / float(base["latency_ms"].iloc[0])
    now = df["latency_remeasured_ms"].astype(float) / float(base["latency_remeasured_ms"].iloc[0])
    gaps = np.log(now / then)[df["baseline"] != "uncompressed"]
    return float(np.expm1(np.sqrt(np.mean(gaps ** 2))))
