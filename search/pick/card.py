"""The bundle's README.md: a short model card written from report.json and the per-layer table."""
from __future__ import annotations

from typing import Any

from ..data import MEAN, STD

# a report.json written before the data options holds no normalisation: it was Fashion-MNIST's
_FASHION_MNIST = {"mean": [MEAN], "std": [STD]}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[k]) for k in head) + " |" for r in rows]
    return "\n".join(lines)


def _runtime_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The accuracy on the runtime's own files, where the cost model ships some (``report["runtime"]``)."""
    rt, val = report.get("runtime"), report["accuracy"]["val"]
    if not rt:
        return []
    return [{"": f"validation accuracy, {rt['name']} ({rt['files'][0]})", "this model": _pct(val.get("runtime")),
             "searched (recorded)": _pct(val["recorded"]), "uncompressed": ""}]


def figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    acc, ref = report["accuracy"], report["uncompressed"]
    size, lat = report["size_bytes"], report["latency_ms"]
    return [
        {"": "validation accuracy, ONNX Runtime", "this model": _pct(acc["val"]["onnx"]),
         "searched (recorded)": _pct(acc["val"]["recorded"]), "uncompressed": _pct(ref.get("val_accuracy"))},
        {"": "validation accuracy, PyTorch", "this model": _pct(acc["val"]["pytorch"]),
         "searched (recorded)": _pct(acc["val"]["recorded"]), "uncompressed": _pct(ref.get("val_accuracy"))},
        *_runtime_rows(report),
        {"": "validation accuracy, load_model (float activations)", "this model": _pct(acc["val"].get("loader")),
         "searched (recorded)": "", "uncompressed": ""},
        {"": "test accuracy, ONNX Runtime", "this model": _pct(acc["test"]["onnx"]),
         "searched (recorded)": "not measured", "uncompressed": _pct(ref.get("test_accuracy"))},
        {"": "test accuracy, PyTorch", "this model": _pct(acc["test"]["pytorch"]),
         "searched (recorded)": "not measured", "uncompressed": _pct(ref.get("test_accuracy"))},
        {"": "weights.cpz (bytes)", "this model": f"{size['measured']:,}",
         "searched (recorded)": f"{int(size['recorded']):,}" if size["recorded"] is not None else "not an objective",
         "uncompressed": f"{int(ref['size_bytes']):,}" if ref.get("size_bytes") else "n/a"},
        {"": f"latency, batch {report['cost_model'].get('batch_size', '?')} (ms)",
         "this model": f"{lat['measured']:.3f}",
         "searched (recorded)": f"{lat['recorded']:.3f} +- {lat['recorded_spread']:.3f}"
         if lat["recorded"] is not None else "not an objective",
         "uncompressed": f"{ref['latency_ms']:.3f}" if ref.get("latency_ms") else "n/a"},
        *({"": name, "this model": f"{v['measured']:,.6g}", "searched (recorded)": f"{v['recorded']:,.6g}",
           "uncompressed": f"{ref[name]:,.6g}" if ref.get(name) is not None else "n/a"}
          for name, v in report.get("objectives", {}).items()),
    ]


_STARTS = {"scratch": "trained from scratch", "inherit": "cut from the teacher with its weights, then trained"}


def how_compressed(report: dict[str, Any], layers: list[dict[str, Any]]) -> str:
    """The trial in words: for each knob of the space, how many layers it changed (``report["knobs"]``: knob ->
    [changed layers, technique], from the trial's params)."""
    ft = report["finetune"]
    more = f", plus {ft['steps']} more steps ({ft['epochs']} epochs) after the pick." if ft["steps"] else "."
    changed = [f"{n} {technique}" for n, technique in report.get("knobs", {}).values() if n]
    what = "; ".join(changed) if changed else "no layer was changed"
    rec = report["recovery"]
    if report.get("student"):
        st = report["student"]
        arch = ", ".join(f"{k} {v}" for k, v in st["architecture"].items())
        teachers = "the teacher" if st.get("ensemble", 1) == 1 else f"an ensemble of {st['ensemble']} teachers"
        starts = _STARTS[st.get("init", "scratch")]
        return (
            f"A student ({arch}), {starts} by distillation from {teachers} for {st['steps']} steps "
            f"(temperature {st['temperature']}, alpha {st['alpha']}). Of its {len(layers)} layers: {what} "
            f"(structural knobs before training, quantization after conv+BN folding), with {rec['qat_steps']} "
            "quantization-aware steps" + more
        )
    return (
        f"From the trained teacher, of its {len(layers)} layers: {what}. The structural changes come first "
        f"(pruning, factorization, sparsity; BatchNorm in place), then conv+BN folding and quantization. The model was "
        f"distilled from the teacher for up to {rec['steps']} steps after the structural changes and "
        f"{rec['qat_steps']} quantization-aware steps after folding" + more
    )


def scaling(report: dict[str, Any]) -> str:
    """How a pixel becomes the model's input, with the data's per-channel normalisation."""
    norm = report.get("normalisation") or _FASHION_MNIST
    mean, std = norm["mean"], norm["std"]
    if len(mean) == 1:
        return f"`(pixel / 255 - {mean[0]}) / {std[0]}`"
    return f"`(pixel / 255 - mean[c]) / std[c]` per channel c, mean {list(mean)}, std {list(std)}"


def runtime_files(report: dict[str, Any]) -> str:
    """The Files entry of a runtime with files of its own (OpenVINO's IR), one line; empty for one without."""
    rt = report.get("runtime")
    if not rt:
        return ""
    names = ", ".join(f"`{n}`" for n in rt["files"])
    return f"- {names}: the model in {rt['name']}'s own format; the latency above was measured on these files.\n"


def render(report: dict[str, Any], layers: list[dict[str, Any]]) -> str:
    shape, cost = report["input_shape"], report["cost_model"]
    one_sample = ", ".join(map(str, [1, *shape[1:]]))
    dtype = report.get("input_dtype", "float32")
    inputs = (f"Inputs are float32 of shape (N, {', '.join(map(str, shape[1:]))}), pixels scaled as the search's data "
              f"module did\n(`search/data/`): {scaling(report)}." if dtype == "float32" else
              f"Inputs are token ids, {dtype}, of shape (N, {', '.join(map(str, shape[1:]))}) (0 pads), as the "
              "search's data held them.")
    study_links = ", ".join(f"[{f.rsplit('/', 1)[1]}]({f})" for f in report.get("study_figures", []))
    status = "verified" if report["verified"] else "NOT verified: " + "; ".join(report["reasons"])
    return f"""# {report['study']}, trial {report['trial']}: {report['model']} on {report['data']}

Picked as: {report['rule']}. Bundle {status}.

## Figures

{_table(figures(report))}

Latency: {cost.get('runtime')} on {report['machine']['cpu']}, {cost.get('threads')} thread(s);
the search's figures are from its own run, "this model" was measured now on the files of this folder.
PyTorch accuracy is the compressed model as trained (activations of int8 layers fake-quantized).
{"The whole study, this trial among the others: " + study_links if study_links else ""}

## How it was compressed

{how_compressed(report, layers)}

{_table(layers)}

`out`/`in`: channels (or features) in the {"student's architecture" if report.get("student") else "teacher"} -> here; `layers now`: how many
layers stand for it; one column per knob of the search space, as that knob describes what it did (empty: left alone).

## Files

- `model.onnx`: the model for ONNX Runtime (int8 on the layers with <= 8-bit weights and 8-bit inputs: static QDQ,
  or for a Linear over a sequence dynamic, its input quantized at run time by `DynamicQuantizeLinear` into
  `MatMulInteger`; weights at 4 bits where the table's `model.onnx` column says int4). Normalization, softmax and
  GELU run in float; with static QDQ alone, ONNX Runtime also keeps the additions and pooling between int8 layers
  on int8.
{runtime_files(report)}- `weights.cpz`: the packed weights ({report['size_bytes']['measured']:,} bytes; the size objective).
- `config.yaml`: the trial's parameters and the study's resolved config; `report.json`: every figure above.

## Use it

{inputs} Outputs are logits for {report['num_classes']} classes.

```python
import numpy as np, onnxruntime as ort
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
logits = session.run(None, {{"{report['onnx_input']}": np.zeros(({one_sample}), np.{dtype})}})[0]
```

```python
from search.bundle import load_model  # needs this project; not the trained teacher
model = load_model("path/to/this/folder")  # a plain nn.Module, activations in float
```
"""
