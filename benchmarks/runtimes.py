"""Benchmark: is the best configuration the same on every runtime? A finished study's front (and its baselines),
re-measured on every runtime installed here, interleaved; and int4 weights in ``model.onnx`` both ways.

    python3 -m uv run --locked --extra runtimes python benchmarks/runtimes.py [--study NAME] [--results DIR] [--all]

``--study`` (default: the default search's, ``fashion-mnist-cnn``) is read from ``<results>/<study>/`` with the
config the search wrote beside it. Each front trial and each baseline (``--all``: every completed trial) is replayed from its params (the recovery is
deterministic: the models are the ones the search scored) and timed by every runtime whose cost model loads here
(``hardware=cpu``: ONNX Runtime; ``openvino``; ``executorch``), each with the study's batch size and threads, its
models interleaved (``measure_many``). Each runtime's accuracy on the validation split is its own files' (the
ONNX model, the OpenVINO IR, the ExecuTorch program), not the PyTorch model's.

Writes ``results/benchmarks/runtimes.csv``, one row per (trial, runtime): ``study``, ``trial``, ``baseline``,
``runtime``, ``onnx_int4`` (how ``model.onnx`` stored <= 4-bit weights in that row: the study's setting, or the
other two for ONNX Runtime where the trial has such weights), ``accuracy`` (that runtime's, on validation),
``accuracy_recorded``, ``size_bytes`` (weights.cpz), ``onnx_bytes``, ``latency_ms``, ``spread_ms``, ``rank`` (by
latency among the runtime's rows at the study's setting), ``spearman`` and ``kendall`` (rank correlation of that
runtime's latencies with ONNX Runtime's over the same trials), ``on_front`` (non-dominated in accuracy, size and
that runtime's latency) and ``error`` (a runtime that cannot run the trial says why). Then
``results/benchmarks/runtimes.html`` (and ``.png`` where Chromium is): each runtime's latency against ONNX Runtime's.
Takes 10-20 minutes on the 2-core VM for a default study (the replays fine-tune as the search did).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import stats

from objectives import Accuracy
from search.app import prepare
from search.cli import compose_checked
from search.results.front import pareto_mask
from search.results.outputs import atomic_write, trials_frame
from search.pick.picker import replay_config
from spaces import INT4_CHOICES, materialize

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = {"cpu": "onnxruntime", "openvino": "openvino", "executorch": "executorch"}  # hardware= -> runtime
log = logging.getLogger("benchmarks.runtimes")


def cost_models(cfg) -> dict[str, object]:
    """Each installed runtime's cost model with the study's batch size and threads (its own protocol otherwise)."""
    out = {}
    for hardware, runtime in RUNTIMES.items():
        settings = OmegaConf.load(ROOT / "conf" / "hardware" / f"{hardware}.yaml")
        for key in ("batch_size", "threads"):
            if key in cfg.hardware and key in settings:
                settings[key] = cfg.hardware[key]
        try:
            out[runtime] = instantiate(settings)
        except (ImportError, ValueError) as exc:
            print(f"{runtime}: skipped ({str(exc).splitlines()[0]})")
    return out


def accuracy_on(cost_model, artifact, acc: Accuracy) -> tuple[float, object]:
    """The runtime's own accuracy: its exported files (ONNX Runtime: the ONNX model itself) on the split; and the
    artifact carrying those files, so that the very files are timed (not exported a second time)."""
    if not cost_model.runtime_files:
        import onnxruntime as ort

        return acc.onnx(ort.InferenceSession(artifact.onnx, providers=["CPUExecutionProvider"])), artifact
    files = cost_model.export(artifact)
    run = cost_model.load(files)
    correct = sum(int((np.argmax(run(acc.images[i:i + 500].numpy()), 1) == acc.labels[i:i + 500].numpy()).sum())
                  for i in range(0, len(acc.images), 500))
    return correct / len(acc.images), dataclasses.replace(artifact, files=files)


def main(study_name: str, results: Path, every: bool = False) -> None:
    out = results / study_name
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{out / 'study.db'}")
    cfg = replay_config(compose_checked([f"study.name={study_name}", f"results_dir={results}"]), out)
    setting = cfg.get("onnx_int4", "none")
    df = trials_frame(study)
    done = df[df["state"] == "COMPLETE"]
    chosen = done if every else done[done["on_front"].astype(bool) | (done["baseline"] != "")]
    chosen = chosen.sort_values("number")
    print(f"{study_name}: {len(chosen)} trials ({'every completed one' if every else 'the front and the baselines'}), "
          f"replayed; onnx_int4={setting}")
    p = prepare(cfg)
    acc = Accuracy(images=p.setup.splits.val_x, labels=p.setup.splits.val_y)
    shape, calibration = p.setup.splits.input_shape, p.pipeline.calibration.numpy()
    trials = {}
    for _, row in chosen.iterrows():
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == int(row["number"]))
        model = p.pipeline.build(trial.params)
        variants = {v: materialize(model, input_shape=shape, calibration=calibration, int4=v) for v in INT4_CHOICES}
        trials[trial.number] = (row, variants)
        print(f"trial {trial.number} {row['baseline'] or ''} replayed")
    models = cost_models(cfg)
    rows = []
    for runtime, cost_model in models.items():
        kinds = INT4_CHOICES if runtime == "onnxruntime" else (setting,)
        jobs = [(n, v) for n, (_, variants) in trials.items() for v in kinds
                if v == setting or variants[v].onnx != variants[setting].onnx]
        ok, errors = [], {}
        for n, v in jobs:  # a runtime that cannot express a trial says why (ExecuTorch: cost_model.export raises)
            try:
                ok.append((n, v, *accuracy_on(cost_model, trials[n][1][v], acc)))
            except ValueError as exc:
                errors[n] = str(exc).splitlines()[0]
        readings = cost_model.measure_many([carried for *_, carried in ok])
        for (n, v, accuracy, _), m in zip(ok, readings):
            row, variants = trials[n]
            rows.append({"study": study_name, "trial": n, "baseline": row["baseline"], "runtime": runtime,
                         "onnx_int4": v, "accuracy": accuracy, "accuracy_recorded": row["accuracy"],
                         "size_bytes": int(row["size_bytes"]), "onnx_bytes": len(variants[v].onnx),
                         "latency_ms": m.value_ms, "spread_ms": m.spread_ms, "error": ""})
        rows += [{"study": study_name, "trial": n, "baseline": trials[n][0]["baseline"], "runtime": runtime,
                  "onnx_int4": setting, "error": e} for n, e in errors.items()]
        if hasattr(cost_model, "close"):
            cost_model.close()
        print(f"{runtime}: {len(ok)} models timed, {len(errors)} refused")
    table = compare(pd.DataFrame(rows), setting)
    target = results / "benchmarks" / "runtimes.csv"
    atomic_write(target, table.to_csv(index=False))
    figure(table, setting, results / "benchmarks")
    shown = table[(table["onnx_int4"] == setting) & (table["error"] == "")]
    print(shown.pivot_table(index=["trial", "baseline"], columns="runtime", values="latency_ms").round(3).to_string())
    print(shown.groupby("runtime")[["spearman", "kendall"]].first().round(3).to_string())
    print(f"wrote {target}")


def compare(table: pd.DataFrame, setting: str) -> pd.DataFrame:
    """Rank, rank correlation with ONNX Runtime and front membership per runtime, at the study's int4 setting."""
    table = table.assign(rank=np.nan, spearman=np.nan, kendall=np.nan, on_front=False)
    main_rows = (table["onnx_int4"] == setting) & (table["error"] == "")
    ort = table[main_rows & (table["runtime"] == "onnxruntime")].set_index("trial")["latency_ms"]
    for runtime in table["runtime"].unique():
        sel = main_rows & (table["runtime"] == runtime)
        part = table[sel]
        table.loc[sel, "rank"] = part["latency_ms"].rank(method="min").to_numpy()
        common = part[part["trial"].isin(ort.index)]
        if len(common) >= 3:
            table.loc[sel, "spearman"] = stats.spearmanr(common["latency_ms"], ort[common["trial"]]).statistic
            table.loc[sel, "kendall"] = stats.kendalltau(common["latency_ms"], ort[common["trial"]]).statistic
        points = np.column_stack([-part["accuracy_recorded"], part["size_bytes"], part["latency_ms"]]).astype(float)
        table.loc[sel, "on_front"] = pareto_mask(points)
    return table


def figure(table: pd.DataFrame, setting: str, folder: Path) -> None:
    import plotly.express as px

    rows = table[(table["onnx_int4"] == setting) & (table["error"] == "")]
    ort = rows[rows["runtime"] == "onnxruntime"].set_index("trial")["latency_ms"].rename("onnxruntime_ms")
    others = rows[rows["runtime"] != "onnxruntime"].join(ort, on="trial")
    fig = px.scatter(others, x="onnxruntime_ms", y="latency_ms", color="runtime", symbol="on_front",
                     hover_data=["trial", "baseline", "accuracy", "size_bytes"], log_x=True, log_y=True,
                     labels={"onnxruntime_ms": "ONNX Runtime latency (ms)", "latency_ms": "latency on the runtime (ms)"},
                     title=f"{table['study'].iloc[0]}: the same models on each runtime")
    atomic_write(folder / "runtimes.html", fig.to_html(include_plotlyjs=True))
    try:
        fig.write_image(folder / "runtimes.png", width=900, height=600)
    except Exception as exc:  # noqa: BLE001 - the PNG needs a Chromium; the HTML is the figure
        print(f"runtimes.png not written: {str(exc).splitlines()[0]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="fashion-mnist-cnn")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--all", action="store_true", help="every completed trial, not only the front and baselines")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    main(args.study, args.results.resolve(), args.all)
