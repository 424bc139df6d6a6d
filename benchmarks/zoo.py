"""Benchmark: the smallest member of every family of torchvision's classification models, searched and picked.

    python3 -m uv run --locked python benchmarks/zoo.py [--families ResNet ViT ...] [--redo] [--limit-s 1200]
                                                        [hydra overrides]

Per family (``FAMILIES``: its smallest member by parameter count, and the smallest square input it accepts, found by
a forward pass), a search as a user starts one (``model=torchvision model.net.name=<model>``, Fashion-MNIST resized
to that input with ``data.image_size``) at a structural budget (``BUDGET``: ``space=channels``, the teacher one pass
over 4,096 training images at batch 32, one searched trial and the baselines ``uncompressed`` and ``channels_50``,
8 + 2 recovery steps each), then every complete trial picked (``python -m search.pick pick.trial=<n>``: its bundle written and verified). Each step is its own
process, as a user runs it: an error the engine reports is its one line, and a family that breaks leaves the others.

First, a measured step (``--preflight``): one training step of the teacher's batch on the family's input, timed, and
the process' peak memory. A family whose budget (steps x measured seconds) would take past ``--limit-s`` is refused
with those figures rather than started.

``results/benchmarks/zoo.csv``, one row per family, written after each: ``family``, ``model``, ``params``,
``input_size``, ``status`` (``picked``: every complete trial's bundle verified; ``refused``: the engine or the
measured step said why it cannot run here; ``failed``: anything else), ``trials_complete`` and ``trials_failed``
(baselines included), ``picked_verified`` (bundles verified), ``searched`` and ``left_out`` (per knob, the layers the
probe kept and left out: ``channels:17``), ``teacher_accuracy`` (validation), ``s_per_step`` and ``peak_mb`` (the
measured step), ``seconds`` (the family's wall time, all steps), ``reason``. A rerun skips the families already in
the file unless ``--redo``; each family's log is ``results/benchmarks/zoo/<family>.log``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks"
PYTHON = [sys.executable]
# family: (its smallest member by parameter count, the smallest square input it takes, its own overrides)
FAMILIES = {
    "AlexNet": ("alexnet", 64, []),  # 63 px and less: its third max-pool has nothing left to pool
    "ConvNeXt": ("convnext_tiny", 32, []),  # four stride-2 stages after a stride-4 stem: 32 px -> 1 x 1
    "DenseNet": ("densenet121", 32, []),
    "EfficientNet": ("efficientnet_b0", 28, []),
    # at the budget's lr 0.05 its teacher stayed at chance (0.145, refused); torchvision's recipe for it (lr 0.5 at
    # batch 1024) scaled to batch 32 is 0.016: at 0.01 one pass reached 0.275 (0.240 at 0.2), measured the same way
    "EfficientNetV2": ("efficientnet_v2_s", 28, ["model.train.lr=0.01"]),
    "GoogLeNet": ("googlenet", 28, []),
    # torchvision's own minimum (its docs: 75 x 75); its auxiliary head (in training only) needs more: its 5 x 5
    # pooling finds a 3 x 3 map at 75 px (RuntimeError in the teacher's first step), so it is built without
    "Inception v3": ("inception_v3", 75, ["+model.net.aux_logits=false"]),
    "MaxViT": ("maxvit_t", 224, ["+model.net.input_size=[224,224]"]),  # 7 x 7 windows on the 1/32 map: 224 px
    "MNASNet": ("mnasnet0_5", 28, []),
    "MobileNetV2": ("mobilenet_v2", 28, []),
    "MobileNetV3": ("mobilenet_v3_small", 28, []),
    "RegNet": ("regnet_y_400mf", 28, []),
    "ResNet": ("resnet18", 28, []),
    "ResNeXt": ("resnext50_32x4d", 28, []),
    "ShuffleNetV2": ("shufflenet_v2_x0_5", 28, []),
    "SqueezeNet": ("squeezenet1_1", 28, []),
    # pads each stage to its 7 x 7 windows. Its structural knob is low rank: Torch-Pruning did not list its channel
    # groups within 120 s (the channels knob stops at set-up: past 5 minutes and 18 GB when it was left to run)
    "Swin": ("swin_t", 28, ["space=rank"]),
    "VGG": ("vgg11", 32, []),  # five max-pools: 32 px -> 1 x 1
    "ViT": ("vit_b_16", 32, ["+model.net.image_size=32"]),  # 16 px patches: image_size a multiple of 16 (2 x 2)
    "Wide ResNet": ("wide_resnet50_2", 28, []),
}
# the family of each of torchvision's names: a model of a family not listed here is reported, not skipped silently
PREFIXES = {"alexnet": "AlexNet", "convnext": "ConvNeXt", "densenet": "DenseNet", "efficientnet_v2": "EfficientNetV2",
            "efficientnet_b": "EfficientNet", "googlenet": "GoogLeNet", "inception": "Inception v3",
            "maxvit": "MaxViT", "mnasnet": "MNASNet", "mobilenet_v2": "MobileNetV2", "mobilenet_v3": "MobileNetV3",
            "regnet": "RegNet", "resnet": "ResNet", "resnext": "ResNeXt", "shufflenet": "ShuffleNetV2",
            "squeezenet": "SqueezeNet", "swin": "Swin", "vgg": "VGG", "vit": "ViT", "wide_resnet": "Wide ResNet"}
TRAIN = dict(images=4096, batch=32, epochs=1)  # the teacher: one pass over 4,096 images (128 steps), cached
TRIALS, RECOVERY = 1, (8, 2)  # searched trials (the baselines uncompressed and channels_50 on top); their steps
# the budget's training steps: the teacher's, then each trial's recovery in the search and again in its pick
STEPS = TRAIN["images"] // TRAIN["batch"] * TRAIN["epochs"] + (TRIALS + 2) * 2 * sum(RECOVERY)
# the order of a full run: the cheapest first (measured seconds per step), so that a run cut short has the most rows
ORDER = ["MobileNetV3", "MNASNet", "SqueezeNet", "ShuffleNetV2", "MobileNetV2", "ResNet", "EfficientNet", "GoogLeNet",
         "RegNet", "ResNeXt", "DenseNet", "EfficientNetV2", "AlexNet", "ConvNeXt", "VGG", "Inception v3", "ViT",
         "Wide ResNet", "Swin", "MaxViT"]
BUDGET = [
    "experiment=smoke", "space=channels", f"data.train_size={TRAIN['images']}", "data.test_size=1000",
    f"model.train.epochs={TRAIN['epochs']}", f"model.train.batch_size={TRAIN['batch']}", f"study.n_trials={TRIALS}",
    f"recovery.steps={RECOVERY[0]}", f"recovery.qat_steps={RECOVERY[1]}", f"recovery.batch_size={TRAIN['batch']}",
    "hardware.warmup=2", "hardware.repeats=10", "threads=1", "png=false", "report.importances=false",
]
# what the engine says, exit status 2, where it refuses a model by design (not a bug): a teacher at chance, a model
# whose channel groups Torch-Pruning cannot list in time
REFUSALS = ("chance", "did not list the model's channel groups")
COLUMNS = ["family", "model", "params", "input_size", "status", "trials_complete", "trials_failed", "picked_verified",
           "searched", "left_out", "teacher_accuracy", "s_per_step", "peak_mb", "seconds", "reason"]


def family_of(name: str) -> str | None:
    return next((f for p, f in sorted(PREFIXES.items(), key=lambda kv: -len(kv[0])) if name.startswith(p)), None)


def overrides(family: str, extra: list[str]) -> list[str]:
    model, side, own = FAMILIES[family]
    sized = [] if side == 28 else [f"data.image_size={side}"]
    given = {o.split("=", 1)[0] for o in [*own, *extra]}  # the family's own (space=rank) replace the budget's
    budget = [b for b in BUDGET if b.split("=", 1)[0] not in given]
    return ["model=torchvision", f"model.net.name={model}", f"study.name=zoo-{model}", *budget, *sized, *own, *extra]


def preflight(family: str, limit_s: float) -> None:
    """Print the family's parameter count and one timed training step (the teacher's batch, its input size)."""
    import torch
    from search.models import torchvision_model

    model, side, own = FAMILIES[family]
    kwargs = {o.split("=")[0].removeprefix("+model.net."): json.loads(o.split("=", 1)[1]) for o in own
              if o.startswith("+model.net.")}
    torch.set_num_threads(1)  # as the search (BUDGET: threads=1): 2 threads on 2 shared cores ran slower
    net = torchvision_model(name=model, **kwargs).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(TRAIN["batch"], 1, side, side), torch.randint(0, 10, (TRAIN["batch"],))
    times = []
    for _ in range(3):  # the first step allocates; the best of the next two
        started = time.perf_counter()
        out = net(x)
        loss = torch.nn.functional.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - started)
        if times[0] * STEPS > 3 * limit_s:  # past three times the limit at once (MaxViT at 224 px): that step says so
            break
    print(json.dumps({"params": sum(p.numel() for p in net.parameters()), "s_per_step": min(times[1:] or times)}))


def call(cmd: list[str], log: Path, timeout: float) -> tuple[int, float, str]:
    """Run ``cmd`` with its output appended to ``log``; (exit status, its peak memory in MB, its last lines).
    Past ``timeout`` seconds it is stopped (status -9)."""
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.5)
        proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    return proc.returncode, usage.ru_maxrss / 1024, "\n".join(lines[-40:])


def _error_line(tail: str) -> str:
    found = [ln for ln in tail.splitlines() if ln.startswith("error:") or "Error" in ln]
    return (found or tail.splitlines()[-1:] or [""])[-1].strip()[:400]


def _probe(text: str) -> tuple[str, str]:
    """The probe's lines, per knob: layers kept and left out (a knob with no line left none out)."""
    found = re.findall(r"space\.knobs\.(\w+): (\d+) layer\(s\), (\d+) left out", text)
    if not found and "A new study created" not in text:  # the search stopped before the probe said anything
        return "", ""
    return ";".join(f"{k}:{n}" for k, n, _ in found), ";".join(f"{k}:{m}" for k, _, m in found) or "channels:0"


def one(family: str, extra: list[str], limit_s: float) -> dict:
    model, side, _ = FAMILIES[family]
    log = OUT / "zoo" / f"{family.replace(' ', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    row = dict.fromkeys(COLUMNS, "")
    row.update(family=family, model=model, input_size=f"{side}x{side}", trials_complete=0, trials_failed=0,
               picked_verified=0)
    started = time.time()
    rc, peak, tail = call([*PYTHON, __file__, "--preflight", family, "--limit-s", str(limit_s)], log, 600)
    if rc != 0:
        return {**row, "status": "failed", "reason": f"preflight: {_error_line(tail)}", "peak_mb": round(peak)}
    measured = json.loads(tail.splitlines()[-1])
    steps = STEPS
    row.update(params=measured["params"], s_per_step=round(measured["s_per_step"], 3), peak_mb=round(peak))
    if steps * measured["s_per_step"] > limit_s:
        return {**row, "status": "refused", "seconds": round(time.time() - started),
                "reason": f"a training step of {TRAIN['batch']} images at {side}x{side} takes "
                          f"{measured['s_per_step']:.2f} s on this machine (peak {peak:.0f} MB): the budget's "
                          f"{steps} steps alone would take {steps * measured['s_per_step'] / 60:.0f} min, past "
                          f"--limit-s {limit_s:.0f}"}
    args = overrides(family, extra)
    shutil.rmtree(ROOT / "results" / f"zoo-{model}", ignore_errors=True)  # a fresh study (the teacher stays cached)
    rc, peak, tail = call([*PYTHON, "-m", "search", *args], log, limit_s)
    text = log.read_text()
    row["searched"], row["left_out"] = _probe(text)
    row["peak_mb"] = max(row["peak_mb"], round(peak))
    acc = re.findall(r"teacher \S+ \([^\n]*?\): val (\d\.\d+)|the teacher \([^\n]*?\) scores (\d\.\d+)", text)
    acc = ["".join(a) for a in acc]
    row["teacher_accuracy"] = acc[-1] if acc else ""
    if rc != 0:
        line = _error_line(tail)
        refused = rc == 2 and any(r in line for r in REFUSALS)
        return {**row, "status": "refused" if refused else "failed", "seconds": round(time.time() - started),
                "reason": ("search: " + line) if rc != -9 else f"search: stopped past --limit-s {limit_s:.0f}"}
    import optuna

    study = optuna.load_study(study_name=f"zoo-{model}", storage=f"sqlite:///{ROOT / 'results' / f'zoo-{model}' / 'study.db'}")
    complete = [t.number for t in study.get_trials() if t.state.name == "COMPLETE"]
    failed = {t.number: t.user_attrs.get("error", "") for t in study.get_trials() if t.state.name == "FAIL"}
    row.update(trials_complete=len(complete), trials_failed=len(failed))
    rejected = []
    for number in complete:
        rc, peak, tail = call([*PYTHON, "-m", "search.pick", *args, f"pick.trial={number}"], log, limit_s)
        row["peak_mb"] = max(row["peak_mb"], round(peak))
        if rc == 0:
            row["picked_verified"] += 1
        else:
            rejected.append(f"trial {number}: {_error_line(tail)}")
    ok = complete and not rejected and not failed
    reasons = [f"trial {n} failed: {e[:200]}" for n, e in failed.items()] + rejected
    return {**row, "status": "picked" if ok else "failed", "seconds": round(time.time() - started),
            "reason": "; ".join(reasons) if reasons else ("" if complete else "no complete trial")}


def markdown(path: Path) -> str:
    """The CSV as the table of ``docs/results/zoo.md`` (``--table``)."""
    t = pd.read_csv(path, dtype=str, keep_default_na=False)
    cols = ["family", "model", "params", "input_size", "status", "trials_complete", "picked_verified", "searched",
            "left_out", "teacher_accuracy", "seconds", "reason"]
    t["params"] = t["params"].map(lambda v: f"{int(v) / 1e6:.1f} M" if v else "")
    t["model"] = "`" + t["model"] + "`"
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |" for _, r in t.iterrows()]
    return "\n".join(lines)


def main(families: list[str], redo: bool, limit_s: float, extra: list[str]) -> None:
    import torchvision

    unknown = sorted({n for n in torchvision.models.list_models(module=torchvision.models) if family_of(n) is None})
    if unknown:
        print(f"note: torchvision models of no family listed here: {unknown}")
    path = OUT / "zoo.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else pd.DataFrame(columns=COLUMNS)
    for family in families:
        if family in set(table["family"]) and not redo:
            print(f"{family}: in {path} already (--redo to run it again)")
            continue
        print(f"{family}: {FAMILIES[family][0]} ...", flush=True)
        row = one(family, extra, limit_s)
        print(f"{family}: {row['status']} in {row['seconds']} s {row['reason']}", flush=True)
        table = pd.concat([table[table["family"] != family], pd.DataFrame([row], dtype=str)], ignore_index=True)
        order = {f: i for i, f in enumerate(FAMILIES)}
        table = table.sort_values("family", key=lambda s: s.map(order)).reset_index(drop=True)
        OUT.mkdir(parents=True, exist_ok=True)  # after each family: a later one that breaks keeps the earlier rows
        tmp = path.with_suffix(".tmp")
        table[COLUMNS].to_csv(tmp, index=False)
        tmp.replace(path)
    print(table[["family", "model", "input_size", "status", "seconds", "reason"]].to_string(index=False))
    print(f"wrote {path}")


assert sorted(ORDER) == sorted(FAMILIES)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=ORDER, choices=list(FAMILIES), metavar="FAMILY")
    parser.add_argument("--redo", action="store_true", help="run the families already in the CSV again")
    parser.add_argument("--limit-s", type=float, default=1200, help="a family's search (and each pick) at most")
    parser.add_argument("--table", action="store_true", help="print the CSV as a markdown table and stop")
    parser.add_argument("--preflight", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashed step leaves no core file
    if args.table:
        print(markdown(OUT / "zoo.csv"))
    elif args.preflight:
        preflight(args.preflight, args.limit_s)
    else:
        main(args.families, args.redo, args.limit_s, extra)
