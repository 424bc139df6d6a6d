"""Students derived from the teacher: whole blocks dropped (depth), channels removed in every group (width), the
teacher's surviving weights kept (``init="inherit"``) or drawn afresh (``init="scratch"``).

Depth, after Minitron (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation")
and ShortGPT's block influence: a block that can be dropped is a child of an ``nn.Sequential`` that holds a Conv2d
or Linear layer (not the output layer) and whose output has its input's shape and dtype on an example input (found
with forward hooks): a residual block of a ResNet, a stride-1 inverted residual of MobileNetV2, a transformer block;
the outermost such module where they nest. Dropping replaces it with ``nn.Identity``. Blocks are ranked by how much
the teacher's output (its logits) changes, relative to its norm, on a calibration batch when that block alone is
skipped; ``student.depth`` is the fraction of them dropped (the nearest whole number, halves up), least change first.

Width: ``student.width`` of every channel group's channels removed (``spaces.knobs.channels``: Torch-Pruning's
groups), after the blocks are dropped; the output layer keeps its classes. Which channels go is decided by their
activations, as Minitron ranks neurons, heads and embedding channels: ``ActivationImportance``, the root mean square
of each channel's output on the calibration inputs (at the group's normalisation layers where it has some: a
BatchNorm's or LayerNorm's output is what the next layer reads; else at its convolutions' and Linears'), least
first; a channel that no input excites goes before one with large weights that never fires.

What the ranking and the norms decided is left on the built student, ``DROPPED`` ({Sequential fqn: positions of the
children dropped}) and ``PRUNED``; a teacher that holds them (``search.pick.bundle``: the architecture rebuilt on
untrained weights) gives exactly those blocks and channels, never its own ranking.

The ranking is computed once per teacher weights, keyed by a fingerprint of the weights (a search builds the space
before it trains the teacher in place): kept on the family, and, given ``cache`` (a search gives
``results/<study>/importance.csv``, as it keeps the sensitivity table), written there (``IMPORTANCE_COLUMNS``: each
block in model order, its importance and rank, the weights' fingerprint) and read back by any later process or
worker on the same weights, blocks and calibration size. The report draws it.
"""
from __future__ import annotations

import copy
import csv
import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ._layers import COMPRESSIBLE, example_input, output_layer, set_submodule
from .knobs._groups import channel_groups
from .knobs.channels import prune_channels_
from .students import PREFIX, ChoiceFamily

__all__ = ["ActivationImportance", "DerivedFamily", "DROPPED", "INITS", "IMPORTANCE_COLUMNS", "droppable_blocks", "block_importance"]

DROPPED = "dropped_blocks"  # attribute of a derived student: {Sequential fqn ('' = the model): child positions}
INITS = ("inherit", "scratch")
DEFAULT_CHOICES = {"depth": (0.0, 0.25, 0.5), "width": (0.0, 0.25, 0.5)}  # fractions of blocks, of channels
IMPORTANCE_COLUMNS = ("block", "importance", "rank", "teacher", "calibration")  # the cache file's, one row per block


def _record(seen: dict[str, list[bool]], fqn: str, module: nn.Module, args: tuple, output: Any) -> None:
    x = args[0] if len(args) == 1 else None
    same = isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor) and x.shape == output.shape \
        and x.dtype == output.dtype
    seen.setdefault(fqn, []).append(bool(same))


def droppable_blocks(model: nn.Module, input_shape: Sequence[int], dtype: str = "float32") -> list[str]:
    """The fqns of the blocks of ``model`` that ``nn.Identity`` can stand for (the module docstring), in order."""
    out = output_layer(model)
    seen: dict[str, list[bool]] = {}
    hooks = []
    for parent, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for name, child in seq.named_children():
            fqn = f"{parent}.{name}" if parent else name
            if any(isinstance(m, COMPRESSIBLE) for m in child.modules()) and not (out + ".").startswith(fqn + "."):
                hooks.append(child.register_forward_hook(functools.partial(_record, seen, fqn)))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input(input_shape, dtype=dtype))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    same = [fqn for fqn, calls in seen.items() if all(calls)]
    return [fqn for fqn in same if not any(fqn.startswith(o + ".") for o in same)]


def block_importance(model: nn.Module, blocks: Sequence[str], batch: torch.Tensor) -> dict[str, float]:
    """{block: ||f(x) - f_without_block(x)|| / ||f(x)||} over ``batch``: how much ``model``'s output moves when
    that block alone is skipped."""
    model = copy.deepcopy(model).eval()
    scores = {}
    with torch.no_grad():
        reference = model(batch).float()
        for fqn in blocks:
            block = model.get_submodule(fqn)
            set_submodule(model, fqn, nn.Identity())
            scores[fqn] = float((model(batch).float() - reference).norm() / reference.norm().clamp_min(1e-12))
            set_submodule(model, fqn, block)
    return scores


def _fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _positions(model: nn.Module, blocks: Sequence[str]) -> dict[str, list[int]]:
    """{Sequential fqn: positions of its children} of ``blocks`` (what a bundle stores), and back with ``_fqns``."""
    out: dict[str, list[int]] = {}
    for fqn in blocks:
        parent, _, name = fqn.rpartition(".")
        out.setdefault(parent, []).append(list(model.get_submodule(parent)._modules).index(name))
    return {k: sorted(v) for k, v in out.items()}


def _fqns(model: nn.Module, positions: Mapping[str, Sequence[int]]) -> list[str]:
    out = []
    for parent, idxs in positions.items():
        try:
            names = list(model.get_submodule(parent)._modules)
        except AttributeError:  # a parent the model lacks: named in the caller's error
            continue
        out += [f"{parent}.{names[i]}" if parent else names[i] for i in idxs if 0 <= int(i) < len(names)]
    return out


NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


class ActivationImportance:
    """A Torch-Pruning importance (a group -> one score per channel) from activations: each Conv2d, Linear and
    normalisation layer's output on ``inputs``, reduced to its root mean square per output channel (dimension 1 of
    a convolution's or a BatchNorm's output, the last of a Linear's or a LayerNorm's). A group scores its channels by
    the mean of its normalisation layers' (else its convolutions' and Linears') values; a group none of whose layers
    ran on the inputs scores by L2 norm of the weights."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor) -> None:
        self.rms: dict[nn.Module, torch.Tensor] = {}
        hooks = [m.register_forward_hook(self._record) for m in model.modules()
                 if isinstance(m, (*COMPRESSIBLE, *NORMS))]
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()(inputs)
        finally:
            model.train(was_training)
            for hook in hooks:
                hook.remove()
        self.fallback = tp.importance.MagnitudeImportance(p=2)

    def _record(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            return
        x = output.detach().float()
        channels = x.movedim(1, 0) if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)) \
            else x.movedim(-1, 0)
        self.rms[module] = channels.reshape(channels.shape[0], -1).pow(2).mean(1).sqrt()

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor:
        norms, layers = [], []
        for i, (dep, idxs) in enumerate(group):
            rms = self.rms.get(dep.layer)  # Torch-Pruning's out-channel functions: each layer type's prune_out_channels
            if getattr(dep.pruning_fn, "__name__", "") != "prune_out_channels" or rms is None or max(idxs, default=-1) >= len(rms):
                continue
            scores = torch.zeros(len(group[0].root_idxs)).index_add_(
                0, torch.as_tensor(group[i].root_idxs), rms[torch.as_tensor(idxs)])
            (norms if isinstance(dep.layer, NORMS) else layers).append(scores)
        found = norms or layers
        if not found:
            return self.fallback(group)
        return torch.stack(found).mean(0)


def reinitialise_(model: nn.Module, seed: int) -> None:
    """Every parameter of ``model`` drawn afresh under ``seed``: each module's own ``reset_parameters()``, and
    N(0, 0.02) for a parameter no such module owns (a position embedding, a class token: ViT's convention)."""
    owned = set()
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for module in model.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                owned.update(id(p) for p in module.parameters(recurse=False))
        for p in model.parameters():
            if id(p) not in owned:
                nn.init.normal_(p, std=0.02)


class DerivedFamily(ChoiceFamily):
    """Students cut from ``model`` (the teacher, trained in place after the space is built): ``student.depth`` of
    its droppable blocks dropped and ``student.width`` of every channel group removed (the module docstring).

    ``init``: ``inherit`` (the student is the teacher's copy with what survives) or ``scratch`` (the same
    architecture, every parameter drawn afresh under ``seed``). ``calibration``: the inputs the blocks are ranked
    on (the search passes training images); without it, ``calibration_size`` random inputs drawn under ``seed``.
    """

    def __init__(
        self, *, model: nn.Module, input_shape: Sequence[int], input_dtype: str = "float32",
        choices: Mapping[str, Sequence[float]] | None = None, init: str = "inherit", seed: int = 0,
        calibration: torch.Tensor | None = None, calibration_size: int = 32, key: str = "space.student.family",
        cache: str | Path | None = None,
    ) -> None:
        choices = dict(choices or DEFAULT_CHOICES)
        unknown = sorted(set(choices) - set(DEFAULT_CHOICES))
        if unknown:
            raise ValueError(f"{key}.choices: unknown key(s) {unknown}; allowed: {list(DEFAULT_CHOICES)}")
        super().__init__(choices={k: choices.get(k, (0.0,)) for k in DEFAULT_CHOICES}, key=key)
        for name, closed in (("depth", True), ("width", False)):
            bad = [v for v in self.choices[name] if isinstance(v, bool) or not isinstance(v, (int, float))
                   or not (0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0)]
            if bad:
                raise ValueError(f"{key}.choices.{name}: {bad} not fractions in {'[0, 1]' if closed else '[0, 1)'}")
        if init not in INITS:
            raise ValueError(f"space.student.init must be one of {list(INITS)}, got {init!r}")
        self.teacher, self.init, self.seed = model, init, int(seed)
        self.input_shape, self.input_dtype = tuple(input_shape), input_dtype
        if calibration is None:
            generator = torch.Generator().manual_seed(self.seed)
            calibration = example_input((calibration_size, *self.input_shape[1:]), generator, input_dtype)
        self.calibration = calibration
        #: the blocks that can be dropped, found on shapes alone (the weights do not change them)
        self.blocks = droppable_blocks(model, self.input_shape, input_dtype)
        self._ranked: dict[str, list[str]] = {}  # {teacher weights' fingerprint: blocks, least important first}
        self.cache = Path(cache) if cache is not None else None

    def ranked(self) -> list[str]:
        """The droppable blocks, least important first (ties in model order), for the teacher's weights now."""
        key = _fingerprint(self.teacher)
        if key not in self._ranked:
            scores = self._cached(key)
            if scores is None:
                scores = block_importance(self.teacher, self.blocks, self.calibration)
                self._write(key, scores)
            self._ranked[key] = sorted(self.blocks, key=scores.__getitem__)
        return self._ranked[key]

    def _cached(self, key: str) -> dict[str, float] | None:
        """The scores in ``cache`` where it holds exactly these blocks, ranked on these weights and as many inputs."""
        if self.cache is None or not self.cache.is_file():
            return None
        with self.cache.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if [r.get("block") for r in rows] != self.blocks or any(
                r.get("teacher") != key or r.get("calibration") != str(len(self.calibration)) for r in rows):
            return None
        return {r["block"]: float(r["importance"]) for r in rows}

    def _write(self, key: str, scores: Mapping[str, float]) -> None:
        if self.cache is None:
            return
        rank = {b: i for i, b in enumerate(sorted(self.blocks, key=scores.__getitem__))}
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache.with_name(f".{self.cache.name}.{os.getpid()}")  # whole or not at all: workers read it
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(IMPORTANCE_COLUMNS)
            writer.writerows([b, repr(scores[b]), rank[b], key, len(self.calibration)] for b in self.blocks)
        os.replace(tmp, self.cache)

    def dropped(self, depth: float) -> list[str]:
        """The blocks a student of ``depth`` drops: those the teacher names (``DROPPED``), else the ranking's."""
        n = int(depth * len(self.blocks) + 0.5)
        given = getattr(self.teacher, DROPPED, None)
        if given is not None:
            blocks = _fqns(self.teacher, given)
            if len(blocks) != n or not set(blocks) <= set(self.blocks):
                raise ValueError(f"{PREFIX}depth: the stored structure drops {blocks}, where depth {depth} drops {n} "
                                 f"of {self.blocks}")
            return blocks
        return self.ranked()[:n] if n else []

    def build(self, params: Mapping[str, Any]) -> nn.Module:
        arch = self.arch(params)
        student = copy.deepcopy(self.teacher).eval()
        dropped = set(self.dropped(arch["depth"]))
        dropped = [b for b in self.blocks if b in dropped]  # in model order
        for fqn in dropped:
            set_submodule(student, fqn, nn.Identity())
        if arch["width"] > 0:
            out = output_layer(student)
            roots = [r for r in channel_groups(student, self.input_shape, self.input_dtype).roots if r != out]
            prune_channels_(student, dict.fromkeys(roots, arch["width"]), self.input_shape, self.input_dtype,
                            importance=ActivationImportance(student, self.calibration))
        setattr(student, DROPPED, _positions(self.teacher, dropped))
        if self.init == "scratch":
            reinitialise_(student, self.seed)
        return student.eval()
