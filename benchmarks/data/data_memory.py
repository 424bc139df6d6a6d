"""Benchmark: peak memory of a smoke search on an image folder, in memory and streamed (``data.stream``).

    python3 -m uv run --locked python benchmarks/data/data_memory.py DIR [--workers 0 1 2] [--repeats 1] [--append]
        [hydra overrides of the search config]

``DIR``: an image folder (``benchmarks/data/image_folders.py fashion-mnist DIR`` writes Fashion-MNIST's 70,000 images
as PNG files). Each case runs ``python -m search experiment=smoke data=image_folder data.root=DIR
data.stream=false`` (in memory) or ``data.stream=true data.workers=W`` (W from ``--workers``) as its own process,
in a fresh results folder (so each trains its own teacher and computes its own logits: the same work in every
case), and samples the proportional set size (PSS) of that process and its descendants (DataLoader workers) every
0.1 s from ``/proc/<pid>/smaps_rollup``: PSS splits the pages workers share with their parent, so the sum is what
the tree takes. ``peak_anon_mb`` counts the anonymous and shared-memory pages only (``Pss_Anon`` + ``Pss_Shmem``:
the data, the heap, a DataLoader's batches), not the shared libraries', whose share of PSS falls when other
processes map them too (another job of the same environment). Cases alternate, ``--repeats`` rounds (``--append``:
after the rounds the CSV holds). Writes ``results/benchmarks/data_memory.csv``: ``case``, ``stream``, ``workers``,
``round``, ``peak_anon_mb``, ``peak_pss_mb``, ``seconds``, ``trials`` (complete), ``accuracies`` (the trials'
validation accuracies in trial order: the same data read either way gives the same figures), ``exit``,
``command``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from search.results.outputs import atomic_write

ROOT = Path(__file__).resolve().parents[2]
PERIOD_S = 0.1


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from each process's parent in ``/proc/<p>/stat``."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def pss_mb(pids: list[int]) -> tuple[float, float]:
    """The summed PSS of ``pids`` in MB (a process gone meanwhile counts 0): all of it, and its anonymous and
    shared-memory part (``Pss_Anon`` + ``Pss_Shmem``)."""
    total, own = 0, 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])  # kB
                elif line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                    own += int(line.split()[1])
        except OSError:
            continue
    return total / 1024, own / 1024


def measure(args: list[str]) -> tuple[float, float, float, int]:
    """Run ``python -m search *args``; its peak PSS and peak anonymous PSS (MB, the process tree), seconds and exit
    status."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "search", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak = own = 0.0
    while proc.poll() is None:
        now = pss_mb(tree(proc.pid))
        peak, own = max(peak, now[0]), max(own, now[1])
        time.sleep(PERIOD_S)
    err = proc.stderr.read()
    if proc.returncode:
        print(err[-2000:], flush=True)
    return peak, own, time.perf_counter() - start, proc.returncode


def accuracies(results: Path) -> tuple[int, str]:
    """Complete trials and their accuracies (4 places, trial order) from the study's ``trials.csv``."""
    path = results / "smoke" / "trials.csv"
    if not path.is_file():
        return 0, ""
    df = pd.read_csv(path)
    done = df[df["state"] == "COMPLETE"].sort_values("number")
    return len(done), " ".join(f"{a:.4f}" for a in done["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="an image folder (DIR/train/<class>/<image>)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="data.workers of streamed cases")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--append", action="store_true", help="keep the CSV's rows; number the new rounds after them")
    args, overrides = parser.parse_known_args()
    cases = [("in_memory", False, 0)] + [(f"stream_w{w}", True, w) for w in args.workers]
    out = ROOT / "results" / "benchmarks" / "data_memory.csv"
    rows = pd.read_csv(out).to_dict("records") if args.append and out.is_file() else []
    first = max((r["round"] for r in rows), default=0) + 1
    for round_ in range(first, first + args.repeats):
        for case, stream, workers in cases:
            common = ["experiment=smoke", "data=image_folder", f"data.root={args.root.resolve()}",
                      f"data.stream={str(stream).lower()}", *([f"data.workers={workers}"] if stream else []),
                      *overrides]
            with tempfile.TemporaryDirectory(dir=ROOT / "results") as tmp:
                peak, own, seconds, code = measure([*common, f"results_dir={tmp}"])
                trials, accs = accuracies(Path(tmp))
            rows.append({"case": case, "stream": stream, "workers": workers, "round": round_,
                         "peak_anon_mb": round(own), "peak_pss_mb": round(peak), "seconds": round(seconds, 1), "trials": trials,
                         "accuracies": accs, "exit": code, "command": "python -m search " + " ".join(common)})
            print(f"{case} (round {round_}): peak anonymous PSS {own:,.0f} MB, PSS {peak:,.0f} MB, {seconds:.0f} s, {trials} trials, exit {code}",
                  flush=True)
            df = pd.DataFrame(rows)
            atomic_write(out, df.to_csv(index=False))  # after every case: a stopped benchmark keeps what it measured
    print(df.drop(columns=["command"]).to_string(index=False))
    same = df.groupby("round")["accuracies"].nunique().eq(1).all()
    print(f"trial accuracies the same in every case of a round: {same}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
