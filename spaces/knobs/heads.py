"""Attention heads removed: the structural unit of a transformer's attention.

A head is a slice of the query, key and value projections (rows ``h * head_dim`` to ``(h + 1) * head_dim`` of each)
and the same slice of the output projection's input columns; removing it shrinks all four Linears, and the module's
head count (the attribute its forward pass reads) drops by one. Attention modules are found by what timm and Hugging
Face write: an int ``num_heads`` (timm, ``nn.MultiheadAttention``) or ``num_attention_heads`` (Hugging Face), and
either a fused ``qkv`` Linear or separate ``q``/``k``/``v``, ``query``/``key``/``value`` or ``q_proj``/``k_proj``/
``v_proj`` Linears, with an output projection ``proj``, ``out_proj``, ``o_proj`` or (BERT) the sibling
``output.dense``. The knob is keyed by the first of those Linears (``heads.blocks.0.attn.qkv``): heads removed.

Heads go lowest L2 norm first (their rows and columns in all four Linears, as Torch-Pruning's group importance
scores them). Torch-Pruning needs the same two facts given by hand (``num_heads`` per qkv Linear, and the attribute
updated after pruning, as its ViT and Hugging Face examples do); slicing the four Linears directly is the whole
operation. Each attention module is checked before it is searched, on a copy: with one head removed the model must
compute what it computes with that head's query, key and value read as zeros (the head then contributes nothing),
so a forward pass that reads the head count from elsewhere (a ``reshape(B, N, C)`` with C the input width) is left
out with the reason instead of searched wrongly. ``nn.MultiheadAttention`` keeps q, k and v in one parameter
(``in_proj_weight``), not a Linear: it is left out, said at start-up.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._base import BaseKnob, Phase
from .._layers import example_input, one_line, set_submodule

__all__ = ["HeadKnob", "HEADS", "attention_heads"]

HEADS = "pruned_heads"  # attribute of a pruned model: {key Linear fqn: head indices removed} (a bundle stores it,
# as channels' ``PRUNED``: a model rebuilt on untrained weights removes the same heads again)
_COUNTS = (("num_heads", "head_dim"), ("num_attention_heads", "attention_head_size"))
_SPLIT = (("q", "k", "v"), ("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))
_OUTPUT = ("proj", "out_proj", "o_proj")


@dataclass(frozen=True)
class Heads:
    """One attention module's head layout: the module holding the count, the Linears a head spans."""

    owner: str  # fqn of the module whose attributes hold the head count
    count: str  # the attribute: num_heads | num_attention_heads
    size: str  # the head width's attribute: head_dim | attention_head_size
    inputs: tuple[tuple[str, int], ...]  # (Linear fqn, sections): a fused qkv is 3 sections of heads
    output: str  # the output projection (a head is a slice of its input columns)


def _linear(model: nn.Module, fqn: str) -> bool:
    try:
        return type(model.get_submodule(fqn)) is nn.Linear
    except AttributeError:
        return False


def attention_heads(model: nn.Module) -> dict[str, Heads]:
    """Every attention module whose heads this knob can remove, by the fqn of its first query Linear."""
    out = {}
    for name, m in model.named_modules():
        attrs = next(((c, s) for c, s in _COUNTS if isinstance(getattr(m, c, None), int)
                      and isinstance(getattr(m, s, None), int)), None)
        if attrs is None or isinstance(m, nn.MultiheadAttention):
            continue
        at = f"{name}." if name else ""
        if _linear(model, f"{at}qkv"):
            inputs = ((f"{at}qkv", 3),)
        else:
            split = next((s for s in _SPLIT if all(_linear(model, f"{at}{p}") for p in s)), None)
            if split is None:
                continue
            inputs = tuple((f"{at}{p}", 1) for p in split)
        parent = name.rpartition(".")[0]
        candidates = [f"{at}{o}" for o in _OUTPUT] + [f"{parent}.output.dense" if parent else "output.dense"]
        output = next((o for o in candidates if _linear(model, o)), None)
        if output is not None:
            out[inputs[0][0]] = Heads(name, *attrs, inputs, output)
    return out


def _slice(layer: nn.Linear, rows: list[int] | None = None, cols: list[int] | None = None) -> nn.Linear:
    w = layer.weight.detach()
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    new = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None)
    new.weight.data.copy_(w)
    if layer.bias is not None:
        new.bias.data.copy_(layer.bias.detach()[rows] if rows is not None else layer.bias.detach())
    return new


def importance(model: nn.Module, heads: Heads) -> torch.Tensor:
    """Each head's squared L2 norm over its rows of the query/key/value Linears and its output columns."""
    owner = model.get_submodule(heads.owner)
    total, width = getattr(owner, heads.count), getattr(owner, heads.size)
    score = torch.zeros(total)
    for fqn, sections in heads.inputs:
        layer = model.get_submodule(fqn)
        w = layer.weight.detach().reshape(sections, total, width, -1)
        score += w.pow(2).sum(dim=(0, 2, 3))
        if layer.bias is not None:
            score += layer.bias.detach().reshape(sections, total, width).pow(2).sum(dim=(0, 2))
    out_w = model.get_submodule(heads.output).weight.detach().reshape(-1, total, width)
    return score + out_w.pow(2).sum(dim=(0, 2))


def remove_heads_(model: nn.Module, heads: Heads, removed: Sequence[int]) -> None:
    """Remove the heads ``removed`` from ``model`` in place: slice the four Linears, lower the head count."""
    owner = model.get_submodule(heads.owner)
    total, width = getattr(owner, heads.count), getattr(owner, heads.size)
    kept = [h for h in range(total) if h not in set(removed)]
    for fqn, sections in heads.inputs:
        rows = [s * total * width + h * width + j for s in range(sections) for h in kept for j in range(width)]
        set_submodule(model, fqn, _slice(model.get_submodule(fqn), rows=rows))
    cols = [h * width + j for h in kept for j in range(width)]
    set_submodule(model, heads.output, _slice(model.get_submodule(heads.output), cols=cols))
    setattr(owner, heads.count, len(kept))
    if isinstance(getattr(owner, "all_head_size", None), int):  # Hugging Face reshapes the context by it
        owner.all_head_size = len(kept) * width


def _zero_head_(model: nn.Module, heads: Heads, head: int) -> None:
    owner = model.get_submodule(heads.owner)
    total, width = getattr(owner, heads.count), getattr(owner, heads.size)
    for fqn, sections in heads.inputs:
        layer = model.get_submodule(fqn)
        for s in range(sections):
            start = s * total * width + head * width
            layer.weight.data[start:start + width] = 0
            if layer.bias is not None:
                layer.bias.data[start:start + width] = 0


def check(model: nn.Module, heads: Heads, input_shape: Sequence[int], input_dtype: str = "float32") -> str | None:
    """Why removing one head of ``heads`` does not compute what reading it as zeros does (None where it does)."""
    x = example_input(input_shape, torch.Generator().manual_seed(0), input_dtype)
    zeroed, pruned = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            _zero_head_(zeroed, heads, 0)
            remove_heads_(pruned, heads, [0])
            want, got = zeroed(x), pruned(x)
    except Exception as exc:  # noqa: BLE001 - the reason is said at start-up
        return f"the model breaks with a head removed ({one_line(exc)})"
    gap = float((want - got).abs().max())
    if gap > 1e-4 * (1.0 + float(want.abs().max())):
        return f"with a head removed the model computes something else than with it read as zeros (by {gap:.3g})"
    return None


class HeadKnob(BaseKnob):
    """``heads.<query Linear fqn>``: how many of the module's heads are removed (lowest L2 norm first), 0 to all but
    ``min_kept``."""

    knob = "heads"
    phase = Phase.PRUNE
    label = "attention heads removed"
    short = "heads cut"
    harder = "high"
    unit = " heads"
    technique = "cut to fewer attention heads (query, key, value and output projection sliced together)"

    def __init__(self, *, model: nn.Module, input_shape: Sequence[int], input_dtype: str = "float32",
                 min_kept: int = 1, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> None:
        if min_kept < 1:
            raise ValueError(f"space.knobs.heads.min_kept must be >= 1, got {min_kept=}")
        self.min_kept, self.input_shape = int(min_kept), tuple(input_shape)
        self.found = attention_heads(model)
        self.total = {fqn: getattr(model.get_submodule(h.owner), h.count) for fqn, h in self.found.items()}
        self._why = {fqn: why for fqn, h in self.found.items() if (why := check(model, h, self.input_shape, input_dtype))}
        super().__init__(model=model, include=include, exclude=exclude)
        self.left_out.update({fqn: why for fqn, why in self._why.items() if fqn in self.left_out})
        for name, m in model.named_modules():
            if isinstance(m, nn.MultiheadAttention) and f"{name}.out_proj" in self.left_out:
                self.left_out[f"{name}.out_proj"] = "nn.MultiheadAttention: q, k and v are one parameter " \
                    "(in_proj_weight), not Linears; its heads are not searched"

    ineligible = "not the query (or fused qkv) Linear of an attention module with two or more heads"

    def eligible(self, model: nn.Module, layers: list[str]) -> list[str]:
        return [f for f in layers if f in self.found and f not in self._why and self.total[f] > self.min_kept]

    @property
    def identity_value(self) -> int:
        return 0

    def choices(self, fqn: str) -> tuple[int, ...]:
        return tuple(range(self.total[fqn] - self.min_kept + 1))

    def check(self, value: Any, key: str) -> None:
        fqn = key.removeprefix(f"{self.knob}.")
        allowed = self.choices(fqn) if fqn in self.total else ()
        if isinstance(value, bool) or value not in allowed:
            raise ValueError(f"{key}: heads removed must be one of {list(allowed)}, got {value!r}")

    def apply_(self, model: nn.Module, values: Mapping[str, int]) -> None:
        given = dict(getattr(model, HEADS, None) or {})
        removed = {}
        for fqn, n in values.items():
            heads, total = self.found[fqn], self.total[fqn]
            if n <= 0:
                continue
            if fqn in given:
                idxs = [int(i) for i in given[fqn]]
                if len(idxs) != n or not all(0 <= i < total for i in idxs):
                    raise ValueError(f"heads.{fqn}: the stored structure removes heads {idxs} of {total} where "
                                     f"{n} are removed")
            else:
                idxs = sorted(torch.argsort(importance(model, heads))[:n].tolist())
            remove_heads_(model, heads, idxs)
            removed[fqn] = idxs
        if removed:
            setattr(model, HEADS, removed)

    def baselines(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        half = {fqn: min(self.total[fqn] // 2, self.total[fqn] - self.min_kept) for fqn in self.layers}
        return {"heads_50": {"heads": half}, "heads_50_int8": {"heads": half, "bits": 8, "abits": 8}}

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        if not isinstance(built, nn.Linear) or built.out_features == reference.out_features:
            return ""
        return f"{1 - built.out_features / reference.out_features:.0%} of the heads"
