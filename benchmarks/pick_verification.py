"""Benchmark: does pick's verification tell the machine's noise from a mismatch? Every trial on the front of a
finished study is picked several times; each pick replays the trial, writes its bundle and verifies it, latency
included (``search/pick/verify.py``: timed together with the ONNX model the search stored and the uncompressed
model's). A valid trial should verify every time: a rejection here is a false one.

    python3 -m uv run --locked python benchmarks/pick_verification.py [--study NAME] [--repeats 3]

``--study`` (default: the default search's, ``fashion-mnist-cnn``) is read from ``results/<study>/`` with the
config the search wrote beside it. Per pick: ``study``, ``trial``, ``attempt``, ``verified``, ``reasons`` (what
failed, ``; ``-joined), ``recorded_ms``, ``measured_ms``, ``searched_ms`` (the stored ONNX model timed with it),
``apart`` and ``allowed`` (bundle against that model), ``share_apart`` and ``share_allowed`` (share of the
uncompressed model's latency now against the recorded share), ``seconds``. Writes
``results/benchmarks/pick_verification.csv`` and prints the count of rejected picks. One pick takes 20-60 s on the
2-core VM (the replay fine-tunes as the search did).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import optuna
import pandas as pd

from search.cli import compose_checked
from search.results.outputs import atomic_write, trials_frame
from search.pick.picker import pick

ROOT = Path(__file__).resolve().parents[1]


def main(study_name: str, repeats: int) -> None:
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
    parser.add_argument("--study", default="fashion-mnist-cnn")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    main(args.study, args.repeats)
