"""Benchmark: students cut from the teacher with its weights (``init=inherit``) against the same architectures
trained from scratch (``init=scratch``), at the same distillation budget.

    python3 -m uv run --locked python benchmarks/students.py [--teachers cnn resnet18] [--seeds 0 1 2]
                                                            [--steps N] [hydra overrides of the search config]

Per teacher (``cnn``: the default ``model=cnn``; ``resnet18``: ``model=torchvision model.net.name=resnet18``; each
trained once and cached, as ``python -m search`` does) the students of ``spaces.DerivedFamily`` (``STUDENTS``: a
shallower one, half the droppable blocks dropped; a narrower one, half of every channel group removed; both), each
built with ``init=inherit`` and ``init=scratch`` (the same architecture, every weight drawn afresh under the seed),
then trained by the search's own distillation (``distill.*``: SGD, one-cycle, T and alpha, against the teacher's
cached logits) for the same ``--steps`` (default: ``distill.epochs`` of the training split), its batch order and the
scratch weights under each seed. Each is scored on the test split (and the validation split), its BatchNorm folded
and written as the engine's artifact (``size_bytes``: its packed file), and the artifacts of one teacher are timed
together by the configured cost model (``latency_ms``, interleaved). A student that removes what the teacher or an
earlier student removes is skipped: the default CNN has no block whose input and output shapes match, so its
"shallower" student would be the teacher and "both" the "narrower" one; only "narrower" runs for it.

``results/benchmarks/students.csv``: ``teacher``, ``student``, ``depth``, ``width``, ``init``, ``seed``, ``steps``,
``accuracy`` (test), ``val_accuracy``, ``size_bytes``, ``latency_ms``, ``params``, ``blocks_dropped``, ``seconds``
(training), ``teacher_accuracy`` (test); the mean gap of inherit over scratch per teacher and student is printed.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from objectives import Accuracy
from search.app import prepare
from search.results.outputs import atomic_write
from search.training.loops import distill
from spaces import DROPPED, DerivedFamily, fold_batchnorm

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks" / "students.csv"
TEACHERS = {"cnn": ["model=cnn"], "resnet18": ["model=torchvision", "model.net.name=resnet18"]}
STUDENTS = {"shallower": (0.5, 0.0), "narrower": (0.0, 0.5), "both": (0.5, 0.5)}  # (depth, width) fractions
INITS = ("inherit", "scratch")


def one_teacher(name: str, seeds: list[int], steps: int | None, overrides: list[str]) -> list[dict]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*TEACHERS[name], *overrides])
    p = prepare(cfg)  # the teacher (cached) and its logits on the training split
    s, d = p.setup.splits, p.setup.distillation
    steps = steps or d.total_steps(len(s.train_x))
    test, val = Accuracy(images=s.test_x, labels=s.test_y), Accuracy(images=s.val_x, labels=s.val_y)
    calibration = s.train_x[:int(cfg.calibration_samples)]
    print(f"teacher {cfg.model.name}: test {p.test_accuracy:.4f}; {steps} distillation steps per student, "
          f"lr {d.lr}, batch {d.batch_size}, T {d.temperature}, alpha {d.alpha}", flush=True)
    rows, artifacts = [], []
    for seed in seeds:
        for init in INITS:
            family = DerivedFamily(model=p.teacher, input_shape=s.input_shape, input_dtype=s.input_dtype,
                                   choices={"depth": sorted({v[0] for v in STUDENTS.values()}),
                                            "width": sorted({v[1] for v in STUDENTS.values()})},
                                   init=init, seed=seed, calibration=calibration)
            seen = set()
            for student, (depth, width) in STUDENTS.items():
                cut = (int(depth * len(family.blocks) + 0.5), width)  # what it removes: blocks, channel share
                if cut in seen or cut == (0, 0.0):
                    if seed == seeds[0] and init == INITS[0]:
                        print(f"{name} {student}: {cut[0]} of {len(family.blocks)} blocks and {width:.0%} of the "
                              "channels, the teacher itself or a student already run: skipped", flush=True)
                    continue
                seen.add(cut)
                model = family.build({"student.depth": depth, "student.width": width}).train()
                started = time.perf_counter()
                distill(model, s.train_x, s.train_y, p.pipeline.teacher_logits, steps=steps, lr=d.lr,
                        batch_size=d.batch_size, temperature=d.value("temperature", {}),
                        alpha=d.value("alpha", {}), seed=seed)
                took = time.perf_counter() - started
                folded = fold_batchnorm(model.eval())
                artifacts.append(p.pipeline.materialize(folded))
                rows.append({
                    "teacher": name, "student": student, "depth": depth, "width": width, "init": init, "seed": seed,
                    "steps": steps, "accuracy": test.of(folded), "val_accuracy": val.of(folded),
                    "size_bytes": len(artifacts[-1].packed), "params": sum(t.numel() for t in model.parameters()),
                    "blocks_dropped": sum(len(v) for v in getattr(model, DROPPED, {}).values()),
                    "seconds": round(took, 1), "teacher_accuracy": p.test_accuracy})
                r = rows[-1]
                print(f"{name} {student:9s} {init:7s} seed {seed}: test {r['accuracy']:.4f} val {r['val_accuracy']:.4f}"
                      f" {r['size_bytes']:,} B, {r['blocks_dropped']} block(s) dropped ({took:.0f} s)", flush=True)
    cost = p.setup.cost_model
    for row, m in zip(rows, cost.measure_many(artifacts)):  # timed together: drift hits all alike
        row["latency_ms"] = m.value_ms
    cost.close()
    return rows


def main(teachers: list[str], seeds: list[int], steps: int | None, overrides: list[str]) -> None:
    rows = []
    for name in teachers:
        rows += one_teacher(name, seeds, steps, overrides)
        atomic_write(OUT, pd.DataFrame(rows).to_csv(index=False))  # after each teacher: a later one that breaks
    df = pd.DataFrame(rows)
    paired = df.pivot_table(index=["teacher", "student", "seed"], columns="init", values="accuracy")
    gap = ((paired["inherit"] - paired["scratch"]) * 100).groupby(level=["teacher", "student"]).agg(["mean", "std"])
    print("inherit - scratch, test accuracy points (mean, std over seeds):")
    print(gap.round(2).to_string())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=list(TEACHERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="distillation steps per student (default: distill.*)")
    args, extra = parser.parse_known_args()
    main(args.teachers, args.seeds, args.steps, extra)
