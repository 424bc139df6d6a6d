"""Benchmark: what the engine does for torchvision models it was not written around, at a reduced but real budget.

    python3 -m uv run --locked python benchmarks/user_models.py [--families resnet18 mobilenet_v3_small]
                                                                [--trials 20] [hydra overrides]

For each family, a search exactly as a user starts one (``model=torchvision model.net.name=<family>``: the stem
takes Fashion-MNIST's one channel, the head its ten classes; ``vit``: ``model=vit space=transformer``, a small
timm-style Vision Transformer searched over its heads, MLP width and int8 Linears), with the budget of this benchmark (``BUDGET``: the
teacher trained for ``--epochs`` epochs and cached, 200 + 40 recovery steps per trial, ``--trials`` searched trials
or 20 minutes of search, whichever comes first; the default's sensitivity pass, screening and guided start, the
latter with 3 configurations; the anchors' baselines off, as each costs a full trial). ResNet-18 brings residual
additions; MobileNetV3-Small depthwise convolutions, squeeze-and-excitation blocks (a pooled branch that multiplies
the main one) and hard-swish. A family whose knobs break it is told by the
start-up probe (``spaces/probe.py``, said in the log); a knob that leaves it near chance is told after the baselines
(``search/process.py``).

Per family, ``results/benchmarks/user_models.csv``: ``family``, ``study``, ``parameters``, ``teacher_accuracy``
(validation, the uncompressed baseline's), ``trials_full`` (searched trials completed at full fidelity),
``trials_screened`` (searched trials left at the screening fidelity), ``trials_failed``, ``hypervolume_searched``
and ``hypervolume_baselines`` (against the study's own reference), ``baselines_dominated`` of ``baselines_total``;
``best_trial``: the searched full-fidelity trial within 1 point of the uncompressed model with the smallest size x
latency product (empty when none is), its ``best_accuracy``, ``best_size_ratio`` and ``best_latency_ratio`` (its
packed bytes and its latency as fractions of the uncompressed model's, both from the search's own records);
``smallest_size_ratio`` and ``fastest_latency_ratio`` among those within the point; ``wall_s``.
``user_models_trials.csv``: every completed trial of every family (``family``, ``number``, ``baseline``,
``fidelity``, ``accuracy``, ``size_ratio``, ``latency_ratio``, ``on_front``). With hydra overrides
(``recovery.steps=500 ...``, which replace ``BUDGET``'s) the study is ``user-<family>-<hash>``, the files
``user_models-<hash>.csv``, and the family's sensitivity table at the defaults is read back where it still applies.
A family takes 19-25 minutes on the 2-core VM at the defaults, of which the sensitivity pass 6-11 (441 entries on
ResNet-18, 1,063 on MobileNetV3-Small).

    python3 -m uv run --locked python benchmarks/user_models.py --pick-verification [--study NAME] [--repeats 3]

Does pick's verification tell the machine's noise from a mismatch? Every trial on the front of a finished study is
picked ``--repeats`` times; each pick replays the trial, writes its bundle and verifies it, latency included
(``search/pick/verify.py``: timed together with the ONNX model the search stored and the uncompressed model's). A
valid trial should verify every time: a rejection here is a false one. ``--study`` (default: the default search's,
``fashion-mnist-cnn``) is read from ``results/<study>/`` with the config the search wrote beside it. Per pick:
``study``, ``trial``, ``attempt``, ``verified``, ``reasons`` (what failed, ``; ``-joined), ``recorded_ms``,
``measured_ms``, ``searched_ms`` (the stored ONNX model timed with it), ``apart`` and ``allowed`` (bundle against that
model), ``share_apart`` and ``share_allowed`` (share of the uncompressed model's latency now against the recorded
share), ``seconds``. Writes ``results/benchmarks/pick_verification.csv`` and prints the count of rejected picks. One
pick takes 20-60 s on the 2-core VM (the replay fine-tunes as the search did).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import optuna
import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from search.cli import compose_checked
from search.pick.picker import pick
from search.results.front import done, hypervolume, reference
from search.results.outputs import atomic_write, trials_frame
from search.run import run
from search.training.teacher import cache_key

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks"
WITHIN = 0.01  # accuracy below the uncompressed model's a "best" trial may lose (1 point)
BUDGET = [  # the reduced but real budget: a full trial trains about a minute on the 2-core VM, a screened one 10 s
    "recovery.steps=200", "recovery.qat_steps=40", "recovery.batch_size=64",
    "screening.steps=20", "screening.qat_steps=4", "anchors.enabled=false", "guided.n=3", "guided.perturbed=0",
    "study.timeout_s=1200",
]


SPACES = {"vit": "transformer"}  # a family that is a conf/model option of its own, and the space it is searched in


def config(family: str, epochs: int, trials: int, overrides: list[str], tag: str = ""):
    """The family's search config; an override of a ``BUDGET`` key (``recovery.steps=500``) replaces it. A family
    that names a conf/model option (``vit``) is that model, searched in its space (``SPACES``); any other is a
    torchvision classifier."""
    given = {o.split("=", 1)[0] for o in overrides}
    own = (ROOT / "conf" / "model" / f"{family}.yaml").is_file()
    model = [f"model={family}", f"space={SPACES.get(family, 'compress')}"] if own else \
        ["model=torchvision", f"model.net.name={family}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[
            *model, f"model.train.epochs={epochs}",
            f"study.name=user-{family}{tag}", f"study.n_trials={trials}", "png=false", "report.importances=false",
            *(b for b in BUDGET if b.split("=", 1)[0] not in given), *overrides])


def summary(family: str, df: pd.DataFrame, out: Path, wall: float) -> tuple[dict, pd.DataFrame]:
    ok = done(df)
    ref = reference(df)
    base = ok[ok["baseline"] == "uncompressed"].iloc[0]
    size0, ms0, acc0 = float(base["size_bytes"]), float(base["latency_ms"]), float(base["accuracy"])
    ratios = ok.assign(size_ratio=ok["size_bytes"] / size0, latency_ratio=ok["latency_ms"] / ms0)
    searched = ratios[ratios["baseline"] == ""]
    close = searched[searched["accuracy"] >= acc0 - WITHIN]
    best = close.loc[(close["size_ratio"] * close["latency_ratio"]).idxmin()] if len(close) else None
    hand = ratios[(ratios["baseline"] != "") & (ratios["baseline"] != "uncompressed")]
    dominance = json.loads((out / "summary.json").read_text()).get("baselines_dominated_by", {})
    completed = df[df["state"] == "COMPLETE"]
    fidelity = (completed["fidelity"].fillna("full") if "fidelity" in completed.columns
                else pd.Series("full", completed.index))
    row = {
        "family": family, "study": out.name, "teacher_accuracy": round(acc0, 4),
        "trials_full": int(((completed["baseline"] == "") & (fidelity != "screen")).sum()),
        "trials_screened": int(((completed["baseline"] == "") & (fidelity == "screen")).sum()),
        "trials_failed": int((df["state"] == "FAIL").sum()),
        "hypervolume_searched": round(hypervolume(ok[ok["baseline"] == ""], ref), 4),
        "hypervolume_baselines": round(hypervolume(ok[ok["baseline"] != ""], ref), 4),
        "baselines_dominated": sum(v is not None for k, v in dominance.items() if k != "uncompressed"),
        "baselines_total": int(len(hand)),
        "best_trial": None if best is None else int(best["number"]),
        "best_accuracy": None if best is None else round(float(best["accuracy"]), 4),
        "best_size_ratio": None if best is None else round(float(best["size_ratio"]), 4),
        "best_latency_ratio": None if best is None else round(float(best["latency_ratio"]), 4),
        "smallest_size_ratio": round(float(close["size_ratio"].min()), 4) if len(close) else None,
        "fastest_latency_ratio": round(float(close["latency_ratio"].min()), 4) if len(close) else None,
        "wall_s": round(wall, 1),
    }
    cols = ["number", "baseline", "fidelity", "accuracy", "size_ratio", "latency_ratio", "on_front"]
    every = completed.assign(size_ratio=completed["size_bytes"] / size0, latency_ratio=completed["latency_ms"] / ms0,
                             fidelity=fidelity)
    return row, every[[c for c in cols if c in every.columns]].assign(family=family)


def int8_paths(models: list[str], batch: int = 64, threads: int = 1) -> pd.DataFrame:
    """Each model (a conf/model option: ``vit`` on 28x28 images, ``text`` on 48 token ids) timed in ONNX Runtime
    three ways, interleaved by the cpu cost model's
    protocol: float, the engine's uniform int8 (``bits=8 abits=8`` on every Linear and Conv the space covers, its
    default int8 paths: dynamic for Linears over sequences, static QDQ elsewhere), and ONNX Runtime's own
    ``quantize_dynamic`` (QInt8 weights, MatMul and Gemm) of the float model. Latency only: the weights are the
    architecture's untrained ones, as the three run the same graphs on any weights."""
    import tempfile

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from objectives.hardware import OrtCpuCostModel
    from search.app import build_space
    from spaces import Artifact, calibrate, materialize
    from spaces.materialize import export_onnx

    rows = []
    for name in models:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"model={name}", "space=transformer"])
        torch.manual_seed(0)
        vocab = cfg.model.net.get("vocab_size")  # a text model: token ids (48 of them, 0 never: no padding)
        net = instantiate(cfg.model.net).eval()
        shape = (1, 48) if vocab else (1, int(cfg.data.channels), 28, 28)
        space = build_space(cfg, net, shape, input_dtype="int64" if vocab else "float32")
        x = torch.randint(1, vocab, (batch, 48)) if vocab else torch.randn(batch, *shape[1:])
        int8 = space.apply(net, space.with_values(bits=space["bits"].uniform(8), abits=space["abits"].uniform(8)))
        calibrate(int8, [x])
        floating = export_onnx(net, shape, "int64" if vocab else "float32")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "f.onnx").write_bytes(floating)
            quantize_dynamic(str(Path(tmp) / "f.onnx"), str(Path(tmp) / "d.onnx"), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
            ort_dynamic = (Path(tmp) / "d.onnx").read_bytes()
        engine = materialize(int8, input_shape=shape, calibration=x.numpy())
        arts = {kind: Artifact(packed=b"", onnx=b, int8_layers=(), input_shape=shape, example=x.numpy())
                for kind, b in (("float", floating), ("engine_int8", engine.onnx), ("ort_quantize_dynamic", ort_dynamic))}
        cost = OrtCpuCostModel(batch_size=batch, threads=threads)
        got = dict(zip(arts, cost.measure_many(list(arts.values()))))
        row = {"model": name, "float_ms": got["float"].value_ms, "engine_int8_ms": got["engine_int8"].value_ms,
               "ort_quantize_dynamic_ms": got["ort_quantize_dynamic"].value_ms,
               "engine_dynamic_layers": len(space["abits"].dynamic), "int8_layers": len(engine.int8_layers)}
        row["engine_vs_float"] = round(row["engine_int8_ms"] / row["float_ms"], 3)
        row["ort_dynamic_vs_float"] = round(row["ort_quantize_dynamic_ms"] / row["float_ms"], 3)
        cost.close()
        print(f"{name}: float {row['float_ms']:.2f} ms, engine int8 {row['engine_int8_ms']:.2f} ms "
              f"({row['engine_vs_float']}x), ONNX Runtime quantize_dynamic {row['ort_quantize_dynamic_ms']:.2f} ms "
              f"({row['ort_dynamic_vs_float']}x) at batch {batch}, {threads} thread(s)")
        rows.append(row)
    return pd.DataFrame(rows)


def main(families: list[str], epochs: int, trials: int, overrides: list[str]) -> None:
    tag = f"-{cache_key(*overrides)[:6]}" if overrides else ""  # other settings: other files, as search_efficiency
    rows, tables = [], []
    for family in families:
        cfg = config(family, epochs, trials, overrides, tag)
        if tag:  # the sensitivity table of the family's run at the defaults, where there is one: the search reads it
            # back only if its key (teacher, data, space, sweep and cost model) is the same, and sweeps otherwise
            first, out = ROOT / "results" / f"user-{family}", ROOT / "results" / str(cfg.study.name)
            for name in ("sensitivity.csv", "sensitivity.json"):
                if (first / name).is_file() and not (out / name).exists():
                    out.mkdir(parents=True, exist_ok=True)
                    shutil.copy(first / name, out / name)
        started = time.time()
        out = run(cfg)
        storage = cfg.study.storage or f"sqlite:///{out / 'study.db'}"
        study = optuna.load_study(study_name=str(cfg.study.name), storage=storage)
        row, table = summary(family, trials_frame(study), out, time.time() - started)
        row["parameters"] = sum(p.numel() for p in instantiate(cfg.model.net).parameters())  # as the user gave it
        rows.append(row)
        tables.append(table)
        print(pd.Series(row).to_string())
        OUT.mkdir(parents=True, exist_ok=True)  # after each family: a later one that breaks keeps the earlier ones
        atomic_write(OUT / f"user_models{tag}.csv", pd.DataFrame(rows).to_csv(index=False))
        atomic_write(OUT / f"user_models_trials{tag}.csv", pd.concat(tables).to_csv(index=False))
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"wrote {OUT / f'user_models{tag}.csv'} and user_models_trials{tag}.csv")


def verify_picks(study_name: str, repeats: int) -> None:
    """``--pick-verification``: each front trial of ``study_name`` picked ``repeats`` times (the module's docstring)."""
    out = ROOT / "results" / study_name
    storage = f"sqlite:///{out / 'study.db'}"
    df = trials_frame(optuna.load_study(study_name=study_name, storage=storage))
    front = df[df["on_front"].astype(bool)].sort_values("number")
    print(f"{study_name}: {len(front)} trial(s) on the front, each picked {repeats} times")
    rows = []
    for number in front["number"].astype(int):
        for attempt in range(repeats):
            started = time.time()
            picked = pick(compose_checked([f"study.name={study_name}", f"results_dir={ROOT / 'results'}",
                                           f"pick.trial={number}"]))
            lat = picked.report["latency_ms"]
            t = lat.get("together") or {}
            rows.append({
                "study": study_name, "trial": number, "attempt": attempt, "verified": bool(picked.verified),
                "reasons": "; ".join(picked.report["reasons"]), "recorded_ms": lat["recorded"],
                "measured_ms": lat["measured"], "searched_ms": t.get("searched_ms"), "apart": t.get("apart"),
                "allowed": t.get("allowed"), "share_apart": t.get("share_apart"),
                "share_allowed": t.get("share_allowed"), "seconds": round(time.time() - started, 1),
            })
            print(f"trial {number}, pick {attempt + 1}: {'verified' if picked.verified else 'REJECTED'}"
                  f" ({rows[-1]['seconds']} s)")
    table = pd.DataFrame(rows)
    atomic_write(ROOT / "results" / "benchmarks" / "pick_verification.csv", table.to_csv(index=False))
    rejected = table[~table["verified"]]
    print(table.drop(columns=["reasons", "study"]).to_string(index=False))
    print(f"rejected: {len(rejected)} of {len(table)} picks of {table['trial'].nunique()} front trial(s)")
    for _, r in rejected.iterrows():
        print(f"  trial {r['trial']}, pick {r['attempt'] + 1}: {r['reasons']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["resnet18", "mobilenet_v3_small"])
    parser.add_argument("--epochs", type=int, default=2, help="the teacher's training epochs (cached per family)")
    parser.add_argument("--trials", type=int, default=20, help="searched trials per family (baselines on top)")
    parser.add_argument("--int8-paths", nargs="*", metavar="MODEL",
                        help="only time float, the engine's int8 and ONNX Runtime's quantize_dynamic of these "
                             "conf/model options (default vit text), into results/benchmarks/int8_paths.csv")
    parser.add_argument("--pick-verification", action="store_true", help="pick a study's front trials again instead")
    parser.add_argument("--study", default="fashion-mnist-cnn", help="--pick-verification: the study")
    parser.add_argument("--repeats", type=int, default=3, help="--pick-verification: picks per front trial")
    args, extra = parser.parse_known_args()
    if args.pick_verification:
        verify_picks(args.study, args.repeats)
        raise SystemExit(0)
    if args.int8_paths is not None:
        table = int8_paths(args.int8_paths or ["vit", "text"])
        OUT.mkdir(parents=True, exist_ok=True)
        atomic_write(OUT / "int8_paths.csv", table.to_csv(index=False))
        raise SystemExit(0)
    extra += [f for f in args.families if "=" in f]  # "--families resnet18 recovery.steps=500": an override
    args.families = [f for f in args.families if "=" not in f]
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the search's own lines (probe, near chance)
    main(args.families, args.epochs, args.trials, extra)
