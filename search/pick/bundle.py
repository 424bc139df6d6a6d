"""A picked model as a folder: ``model.onnx``, ``weights.cpz``, ``config.yaml``, ``report.json``, ``README.md``, and
the files of the cost model's runtime where it has its own (``BaseCostModel.runtime_files``: ``model.xml`` and
``model.bin`` for OpenVINO).

``load_model(bundle_dir)`` rebuilds the PyTorch model from the folder alone: the architecture from
``config.yaml`` (random weights, no trained teacher needed), the trial's params applied to get the
compressed shapes, then the weights from ``weights.cpz``. What the params alone do not fix is stored beside them
(``structure``): which channels channel pruning removed and, for a student cut from the teacher, which blocks it
dropped, decided on the trained weights; the rebuild removes those, never ranks the random weights' own.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from objectives.hardware import BaseCostModel
from spaces import DROPPED, HEADS, PRUNED, Artifact, to_plain, unpack
from spaces.materialize import onnx_weights

from ..results.outputs import atomic_write
from ..app import build_space

# Keys of weights.cpz that a plain model has no place for: the input activation ranges of int8 layers
# (the ONNX model carries them as QDQ scales).
_ACTIVATION_RANGES = (".act.lo", ".act.hi")


@contextmanager
def staging(final: Path) -> Iterator[Path]:
    """A temporary folder beside ``final`` that becomes ``final`` on success and is removed on error.

    Nothing half-written is ever at ``final``: an older bundle there is swapped out only once the new one is whole.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# what a knob or a derived student's family removed by the trained weights' importance (channels, heads, blocks)
STRUCTURE = (PRUNED, HEADS, DROPPED)


def structure_of(model: nn.Module) -> dict[str, Any]:
    """The structural decisions ``model`` holds that its params do not fix (see the module docstring)."""
    return {attr: {k: [int(i) for i in v] for k, v in removed.items()}
            for attr in STRUCTURE if (removed := getattr(model, attr, None))}


def bundle_spec(*, study: str, number: int, baseline: str, params: dict[str, Any], input_shape: tuple[int, ...],
                config: DictConfig, structure: dict[str, Any] | None = None,
                input_dtype: str = "float32") -> dict[str, Any]:
    """What config.yaml holds: enough to rebuild the model (``load_model``) or replay the trial (``pick``);
    ``structure``: ``structure_of`` the built model."""
    resolved = OmegaConf.to_container(config, resolve=True)
    resolved.pop("pick", None)
    return {"study": study, "trial": number, "baseline": baseline, "input_shape": list(input_shape),
            **({"input_dtype": input_dtype} if input_dtype != "float32" else {}),
            "params": dict(params), "structure": dict(structure or {}), "config": resolved}


def write_model_files(folder: Path, artifact: Artifact, spec: dict[str, Any]) -> None:
    """model.onnx (checked, one self-contained file), weights.cpz and config.yaml."""
    proto = onnx.load_from_string(artifact.onnx)
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ValueError(f"the ONNX model keeps {len(external)} tensor(s) in external files; a bundle needs one file")
    onnx.checker.check_model(proto)
    atomic_write(folder / "model.onnx", artifact.onnx)
    atomic_write(folder / "weights.cpz", artifact.packed)
    header = "# The trial's params and the study's resolved config. The model: search.bundle.load_model(<folder>)\n"
    atomic_write(folder / "config.yaml", header + OmegaConf.to_yaml(OmegaConf.create(spec)))


def write_runtime_files(folder: Path, cost_model: BaseCostModel, artifact: Artifact) -> list[str]:
    """The cost model's own files for ``artifact`` (``export``: OpenVINO's model.xml and model.bin), beside
    model.onnx; their names (none for a runtime that runs model.onnx itself)."""
    files = cost_model.export(artifact)
    if sorted(files) != sorted(cost_model.runtime_files):
        raise ValueError(f"cost model {cost_model.name!r} exported {sorted(files)}, and declares "
                         f"runtime_files {list(cost_model.runtime_files)}")
    for name, data in files.items():
        atomic_write(folder / name, data)
    return list(files)


def read_spec(bundle_dir: Path) -> dict[str, Any]:
    path = Path(bundle_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no bundle at {str(bundle_dir)!r}: config.yaml is missing")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def architecture(spec: dict[str, Any]) -> nn.Module:
    """The compressed model's shapes with untrained weights: teacher architecture + ``space.apply`` with the stored
    structure (for a student trial, the student's architecture with its compression)."""
    cfg = OmegaConf.create(spec["config"])
    with torch.random.fork_rng(), torch.enable_grad():  # building and tracing draw random numbers (leave the
        # caller's stream alone); channel pruning traces through autograd, even when called under torch.no_grad()
        torch.manual_seed(int(cfg.model.train.seed))
        net = instantiate(cfg.model.net)
        space = build_space(cfg, net, tuple(spec["input_shape"]), input_dtype=spec.get("input_dtype", "float32"))
        for attr in STRUCTURE:  # the channels, heads and blocks the search removed from the trained weights, not
            removed = (spec.get("structure") or {}).get(attr)  # the random weights' least important
            if removed:
                setattr(net, attr, {k: list(v) for k, v in removed.items()})
        return space.apply(net.eval(), spec["params"])


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """``model.load_state_dict(tensors, strict=False)`` with the module versions a state_dict of ``model`` carries
    (weights.cpz holds tensors only: torchvision's MNASNet, which reads its version when loading, refused it
    without); a state that does not fit is one ``ValueError`` naming ``where``."""
    state = OrderedDict(tensors)
    state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    try:
        return model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError) as exc:  # a shape that does not fit, a module that refuses its state
        raise ValueError(f"{where} does not fit the architecture of config.yaml: {exc}") from exc


def load_model(bundle_dir: str | Path) -> nn.Module:
    """The bundle's plain PyTorch model (Conv2d/Linear holding the decoded weights), in eval mode.

    Activations run in float here; the int8 layers' input ranges are in weights.cpz and in model.onnx.
    """
    bundle_dir = Path(bundle_dir)
    spec = read_spec(bundle_dir)
    model = to_plain(architecture(spec))
    result = load_weights(model, unpack((bundle_dir / "weights.cpz").read_bytes()), f"{bundle_dir}/weights.cpz")
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith(_ACTIVATION_RANGES)]
    if missing or unexpected:
        raise ValueError(
            f"{bundle_dir}/weights.cpz does not match config.yaml: missing {missing}, unexpected {unexpected}"
        )
    return model.eval()


def _dims(layer: nn.Module) -> tuple[int, int]:
    return (layer.weight.shape[0], layer.weight.shape[1]) if layer.weight.dim() > 1 else (layer.weight.shape[0], 1)


def layer_table(reference: nn.Module, model: nn.Module, knobs: Sequence[Any] = (),
                onnx: bytes | None = None) -> list[dict[str, Any]]:
    """One row per Conv2d/Linear of ``reference`` (the teacher, or a student's own architecture): what the
    compressed ``model`` (``pipeline.build``) made of it, its shapes, one column per knob of the space, as the knob
    describes it (``BaseKnob.describe``; empty where it left the layer alone), and how ``onnx`` (the bundle's
    model.onnx) stores the layer's weights (int4, int8 or float: ``onnx_int4``)."""
    stored = onnx_weights(onnx) if onnx is not None else None
    rows = []
    for fqn, layer in reference.named_modules():
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        built = model.get_submodule(fqn)
        factors = [m for m in built.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        (out_t, in_t), first, last = _dims(layer), factors[0], factors[-1]
        row = {"layer": fqn, "type": type(layer).__name__, "out": f"{out_t} -> {_dims(last)[0]}",
               "in": f"{in_t} -> {_dims(first)[1]}", "layers now": len(factors)}
        for knob in knobs:
            row[knob.knob] = knob.describe(layer, built) if fqn in knob.layers else ""
        if stored is not None:
            kinds = {kind for name, kind in stored.items() if name == fqn or name.startswith(f"{fqn}.")}
            row["model.onnx"] = "/".join(sorted(kinds)) or "float"
        rows.append(row)
    return rows
