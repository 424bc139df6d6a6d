"""Benchmark: the same teacher recipe through each data option, on the same images and on a colour set.

    python3 -m uv run --locked python benchmarks/data/your_data.py [--cases fashion_mnist image_folder emoji_cnn ...]
        [--folders results/benchmarks/your_data] [hydra overrides of the search config]

Cases (``--cases``; all by default):

- ``fashion_mnist``: ``data=fashion_mnist`` (Debian's idx files), the default run's teacher recipe;
- ``image_folder``: the same 70,000 images written out as PNG files (``benchmarks/data/image_folders.py
  fashion-mnist``) and read back through ``data=image_folder data.val_size=5000``: the user's path for their own
  folder. Its validation split is carved from other images (the folder's order is by class), so the two agree
  within noise, not to the digit; the 10k test images are the same;
- ``emoji_cnn``, ``emoji_resnet8``: 1,870 colour emoji in 9 classes at 32 x 32 (``benchmarks/data/image_folders.py
  emoji``), ``data=image_folder`` with ``model=cnn`` / ``model=resnet8``.

Each case reads its data, builds the model the data sizes (``${data.num_classes}``, ``${data.channels}``) and
trains the teacher with the model config's recipe (``model.train``: same seed and budget in every case), in its own
results folder (``--folders``/<case>) so that nothing is reused from the default search's cache; a second run of
the benchmark reuses those teachers (``source: cached``). Writes ``results/benchmarks/your_data.csv``: ``case``,
``data``, ``model``, ``classes``, ``channels``, ``height``, ``width``, ``train``, ``val``, ``test`` (images),
``mean``, ``std``, ``fingerprint``, ``load_s``, ``train_s``, ``source``, ``val_accuracy``, ``test_accuracy``,
``test_se`` (binomial standard error of the test accuracy), ``command``.

    python3 -m uv run --locked python benchmarks/data/your_data.py --smoke [--models cnn resnet8 torchvision]

``--smoke``: the acceptance runs instead: ``python -m search experiment=smoke data=image_folder data.root=DIR``
on the grey folder (Fashion-MNIST as PNG files) and on the colour one (emoji, 32 x 32, 9 classes) with each model
(``--models``), then ``python -m search.pick`` of the knee of the front, each as its own process (as a user runs
them). Writes ``results/benchmarks/your_data_smoke.csv``: ``folder``, ``model``, ``trials``, ``complete``,
``failed``, ``search_s``, ``picked_trial``, ``verified``, ``reasons``, ``accuracy`` (the bundle's, measured again)
and ``recorded_accuracy``, ``size_bytes``, ``input_shape``, ``num_classes``, ``pick_exit``, ``command``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

import image_folders
from objectives import Accuracy
from search.app import load_data
from search.cli import compose_checked
from search.results.outputs import atomic_write
from search.training.teacher import build_model, trained_teacher
from spaces import fold_batchnorm

ROOT = Path(__file__).resolve().parents[2]
CASES = {
    "fashion_mnist": ("fashion-mnist", ["data=fashion_mnist"]),
    "image_folder": ("fashion-mnist-png", ["data=image_folder", "data.name=fashion-mnist-png", "data.val_size=5000"]),
    "emoji_cnn": ("emoji32", ["data=image_folder", "data.name=emoji32", "model=cnn", "model.train.epochs=30"]),
    "emoji_resnet8": ("emoji32", ["data=image_folder", "data.name=emoji32", "model=resnet8", "model.train.epochs=30"]),
}


def folder(which: str, root: Path) -> Path:
    """The case's image folder under ``root``, written the first time."""
    path = root / which
    if not path.exists():
        if which == "fashion-mnist-png":
            image_folders.fashion_mnist(path)
        else:
            image_folders.emoji(path, 32)
    return path


def run(case: str, root: Path, overrides: list[str]) -> dict:
    which, own = CASES[case]
    args = list(own)
    if which != "fashion-mnist":
        args.append(f"data.root={folder(which, root)}")
    args += [f"results_dir={root / case}", *overrides]
    cfg = compose_checked(args)
    start = time.perf_counter()
    splits = load_data(cfg)
    loaded = time.perf_counter() - start
    net = build_model(cfg.model, splits)
    start = time.perf_counter()
    teacher, source = trained_teacher(net, cfg.model, splits.fingerprint, splits, root / case / "cache",
                                      log=print)
    trained = time.perf_counter() - start
    folded = fold_batchnorm(teacher)
    val = Accuracy(images=splits.val_x, labels=splits.val_y).of(folded)
    test = Accuracy(images=splits.test_x, labels=splits.test_y).of(folded)
    _, channels, height, width = splits.input_shape
    row = {"case": case, "data": cfg.data.name, "model": cfg.model.name, "classes": splits.num_classes,
           "channels": channels, "height": height, "width": width, "train": len(splits.train_y),
           "val": len(splits.val_y), "test": len(splits.test_y), "mean": list(splits.mean), "std": list(splits.std),
           "fingerprint": splits.fingerprint, "load_s": round(loaded, 1), "train_s": round(trained, 1),
           "source": source, "val_accuracy": round(val, 4), "test_accuracy": round(test, 4),
           "test_se": round(math.sqrt(test * (1 - test) / len(splits.test_y)), 4),
           "command": "python -m search " + " ".join(a for a in args if not a.startswith("results_dir="))}
    print(f"{case}: {row['train']}/{row['val']}/{row['test']} images {channels}x{height}x{width}, "
          f"{row['classes']} classes; teacher {row['model']} ({source}, {trained:.0f} s): val {val:.4f}, "
          f"test {test:.4f} (SE {row['test_se']:.4f})", flush=True)
    return row


def smoke(which: str, model: str, root: Path, overrides: list[str]) -> dict:
    """``python -m search experiment=smoke`` on the folder ``which`` with ``model``, then ``search.pick``."""
    import optuna

    name = f"{which}-{model}"
    args = ["experiment=smoke", "data=image_folder", f"data.root={folder(which, root)}", f"data.name={which}",
            f"model={model}", f"results_dir={root / 'smoke' / name}", *overrides]
    start = time.perf_counter()
    searched = subprocess.run([sys.executable, "-m", "search", *args], cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - start
    print(searched.stdout[-1500:], searched.stderr[-1500:], sep="\n", flush=True)
    out = root / "smoke" / name / "smoke"  # results_dir / study.name
    storage = f"sqlite:///{out / 'study.db'}"
    trials = optuna.load_study(study_name="smoke", storage=storage).get_trials(deepcopy=False)
    picked = subprocess.run([sys.executable, "-m", "search.pick", *args], cwd=ROOT, capture_output=True, text=True)
    print(picked.stdout[-1500:], picked.stderr[-800:], sep="\n", flush=True)
    reports = sorted((out / "picked").glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    report = json.loads(reports[-1].read_text()) if reports else {}
    row = {"folder": which, "model": model, "search_exit": searched.returncode, "trials": len(trials),
           "complete": sum(t.state.name == "COMPLETE" for t in trials),
           "failed": sum(t.state.name == "FAIL" for t in trials), "search_s": round(took, 1),
           "picked_trial": report.get("trial"), "verified": report.get("verified"),
           "reasons": "; ".join(report.get("reasons", [])), "pick_exit": picked.returncode,
           "size_bytes": (report.get("size_bytes") or {}).get("measured"),
           "accuracy": ((report.get("accuracy") or {}).get("val") or {}).get("pytorch_replay"),
           "recorded_accuracy": ((report.get("accuracy") or {}).get("val") or {}).get("recorded"),
           "input_shape": report.get("input_shape"), "num_classes": report.get("num_classes"),
           "command": "python -m search " + " ".join(a for a in args if not a.startswith("results_dir="))}
    print(f"{name}: {row['complete']}/{row['trials']} complete, pick of trial {row['picked_trial']}: verified "
          f"{row['verified']} (exit {picked.returncode})", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--folders", type=Path, default=ROOT / "results" / "benchmarks" / "your_data")
    parser.add_argument("--smoke", action="store_true", help="the acceptance runs: search and pick on each folder")
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet8", "torchvision"])
    args, overrides = parser.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.smoke:
        rows = [smoke(which, model, args.folders.resolve(), overrides)
                for which in ("fashion-mnist-png", "emoji32") for model in args.models]
        out = ROOT / "results" / "benchmarks" / "your_data_smoke.csv"
        atomic_write(out, pd.DataFrame(rows).to_csv(index=False))
        print(pd.DataFrame(rows).drop(columns=["command", "reasons"]).to_string(index=False))
        print(f"wrote {out}")
        return
    rows = [run(case, args.folders.resolve(), overrides) for case in args.cases]
    df = pd.DataFrame(rows)
    out = ROOT / "results" / "benchmarks" / "your_data.csv"
    atomic_write(out, df.to_csv(index=False))
    print(df[["case", "model", "classes", "channels", "height", "train", "val_accuracy", "test_accuracy",
              "test_se", "train_s"]].to_string(index=False))
    if {"fashion_mnist", "image_folder"} <= set(df["case"]):
        a, b = (df.set_index("case").loc[c, "test_accuracy"] for c in ("fashion_mnist", "image_folder"))
        print(f"Fashion-MNIST as idx files vs as a PNG folder: test {a:.4f} vs {b:.4f}, "
              f"difference {abs(a - b) * 100:.2f} points")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
