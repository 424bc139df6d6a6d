"""Benchmark: the same student trained on hard labels only and by distillation from the teacher.

    python3 -m uv run --locked python benchmarks/distillation.py [width_mult=0.25] [epochs=2] [seeds=0,1,2] \
        [temperature=4] [alpha=0.7] [hydra overrides of the search config]

The teacher is the search's own (``model=cnn`` by default: trained once and cached under results/cache, as
``python -m search`` does) and its cached logits on the training split are the soft targets. For each seed the
student (``SmallCNN`` at ``width_mult``, weights initialised under that seed) is trained twice with
``search.train.distill`` under the same budget, optimiser, schedule and batch order: ``hard`` (alpha 0, plain
cross-entropy) and ``distill`` (alpha and temperature as given). Both are scored on the 10k test images (and on
the search's validation split). Prints every run and the mean difference; writes
``results/benchmarks/distillation.csv`` (method, seed, accuracy = test accuracy, val_accuracy, seconds, ...).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from objectives import Accuracy
from search.models import SmallCNN
from search.results.outputs import atomic_write
from search.app import prepare
from search.training.loops import distill

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"width_mult": 0.25, "epochs": 2.0, "seeds": "0,1,2", "temperature": 4.0, "alpha": 0.7, "lr": 0.1,
            "batch_size": 128}


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    """This script's own ``key=value`` settings, and the rest as Hydra overrides of the search config."""
    settings, overrides = dict(SETTINGS), []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in SETTINGS:
            settings[key] = value if key == "seeds" else type(SETTINGS[key])(value)
        else:
            overrides.append(arg)
    settings["seeds"] = [int(s) for s in str(settings["seeds"]).split(",")]
    return settings, overrides


def main(argv: list[str]) -> None:
    settings, overrides = parse(argv)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    p = prepare(cfg)  # the teacher (cached) and its logits on the training split
    s = p.setup.splits
    steps = max(1, round(settings["epochs"] * len(s.train_x) / settings["batch_size"]))
    test, val = Accuracy(images=s.test_x, labels=s.test_y), Accuracy(images=s.val_x, labels=s.val_y)
    print(f"teacher {cfg.model.name}: test {p.test_accuracy:.4f}; student SmallCNN width_mult {settings['width_mult']}, "
          f"{steps} steps ({settings['epochs']} epochs) per run, T {settings['temperature']}, alpha {settings['alpha']}")
    rows = []
    for seed in settings["seeds"]:
        for method, alpha in (("hard", 0.0), ("distill", settings["alpha"])):
            torch.manual_seed(seed)
            student = SmallCNN(width_mult=settings["width_mult"])
            start = time.perf_counter()
            distill(student, s.train_x, s.train_y, p.pipeline.teacher_logits, steps=steps, lr=settings["lr"],
                    batch_size=settings["batch_size"], temperature=settings["temperature"], alpha=alpha, seed=seed)
            took = time.perf_counter() - start
            rows.append({"method": method, "seed": seed, "accuracy": test.of(student), "val_accuracy": val.of(student),
                         "seconds": round(took, 1), "steps": steps, "width_mult": settings["width_mult"],
                         "params": sum(t.numel() for t in student.parameters()), "temperature": settings["temperature"],
                         "alpha": alpha, "teacher": cfg.model.name, "teacher_test_accuracy": p.test_accuracy})
            r = rows[-1]
            print(f"seed {seed} {method:8s} test {r['accuracy']:.4f}  val {r['val_accuracy']:.4f}  ({took:.0f} s)",
                  flush=True)
    df = pd.DataFrame(rows)
    out = ROOT / "results" / "benchmarks" / "distillation.csv"
    atomic_write(out, df.to_csv(index=False))
    mean = df.groupby("method")[["accuracy", "val_accuracy"]].mean()
    paired = df.pivot(index="seed", columns="method", values="accuracy")
    gain = (paired["distill"] - paired["hard"]) * 100
    print(mean.round(4).to_string())
    print(f"distill - hard, test accuracy: {gain.mean():+.2f} points on average over {len(gain)} seeds "
          f"(per seed: {', '.join(f'{g:+.2f}' for g in gain)})")
    print(f"written: {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
