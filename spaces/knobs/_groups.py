"""The channel groups of a model that Torch-Pruning prunes correctly, and the module whose graph prunes each.

Torch-Pruning's DependencyGraph traces a forward pass and couples every layer that reads or writes the same channels,
so that a group of channels leaves all of them at once. A channel shuffle defeats it two ways:

- it cannot build the graph. ShuffleNetV2 (``torchvision.models.shufflenetv2``) splits a block's channels in two,
  concatenates its branches and shuffles them (a view to five dimensions, a transpose, a view back); Torch-Pruning
  1.6.1's channel counts through those views come out 0 (``ZeroDivisionError`` in its reshape index mapping) and its
  split offsets out of range (its torchvision example lists ShuffleNetV2 among the models it fails to prune). Then each
  child module's graph is built on the input it gets in the model's forward, recursively where that fails too, and
  the module's own graph again with the children that failed cut off (their outputs taken as inputs);
- it builds a graph that takes the shuffle for an identity (``tests/spaces/odd_net.py``): a group then removes channel
  ``i`` before the shuffle and channel ``i`` after it, which the shuffle had moved.

So a group is kept only once checked on a copy: with a quarter of its channels pruned, the module whose graph found it
must compute what it computes when every layer reading those channels reads zeros (same shape, same values). A
group whose channels leave that module (its output changes shape) or that Torch-Pruning follows wrongly (the values
differ) is left out, with the reason. Every group of a module found that way is checked; of a model whose whole graph
builds, the groups that pass a reshape (Torch-Pruning maps channels through a reshape only where it flattens a feature
map into a Linear layer's features). The groups are checked all at once, and each alone only where that fails.

What is pruned where is found once per model structure in a process (``channel_groups``): each prune then builds only
the graphs of the modules it prunes in.
"""
from __future__ import annotations

import copy
import functools
import resource
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from .._layers import COMPRESSIBLE, compressible_layers, example_input, one_line, output_layer, single_thread

CHECKED = 0.25  # the share of a group's channels the check prunes
# seconds Torch-Pruning may take to list a model's channel groups (``channel_groups``), all its modules together:
# past it the knob stops with that one line. Swin-T's (a residual stream through every window partition) ran past 5
# minutes and 18 GB without an end, on the whole model and again on each stage; DenseNet-121, EfficientNetV2-S and
# ConvNeXt-T list theirs in seconds
GROUPS_S = 120


@dataclass
class Groups:
    """``scopes``: {module fqn ('' = the model): (its children cut off, the roots of the groups its graph prunes)};
    ``left_out``: {layer fqn: why its channels are not pruned} for the layers rooting a group that failed its check."""

    scopes: dict[str, tuple[tuple[str, ...], list[str]]]
    left_out: dict[str, str]

    @property
    def roots(self) -> list[str]:
        return [root for _, roots in self.scopes.values() for root in roots]


_FOUND: dict[str, Groups] = {}  # by model structure and input shape, in this process


def channel_groups(model: nn.Module, input_shape: Sequence[int], dtype: str = "float32") -> Groups:
    """The groups Torch-Pruning prunes correctly in ``model`` on inputs of ``input_shape`` and ``dtype`` (the module
    docstring)."""
    key = repr((type(model).__qualname__, str(model), tuple(input_shape), dtype))
    if key not in _FOUND:
        was_training = model.training
        started = time.monotonic()
        try:
            with single_thread(), _deadline(GROUPS_S):  # forward passes of one input: one thread is faster
                _FOUND[key] = _find(model.eval(), input_shape, dtype)
        except _Expired:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            raise ValueError(f"Torch-Pruning did not list the model's channel groups within {GROUPS_S} s (stopped "
                             f"after {time.monotonic() - started:.0f} s, this process at {peak:.0f} MB at its peak): "
                             "leave the channels knob out (space.knobs.channels=null)") from None
        finally:
            model.train(was_training)
    return _FOUND[key]


def scope_graph(model: nn.Module, scope: str, args: tuple[Any, ...], cuts: Sequence[str] = (),
                roots: Sequence[str] | None = None) -> tuple[tp.DependencyGraph, dict[str, Any]]:
    """Torch-Pruning's graph of the module ``scope`` of ``model`` on its inputs ``args``, its modules ``cuts`` cut off
    (fqns in ``model``), and its groups by root fqn (in ``model``). The model's output layer roots none. ``roots``:
    only the groups of these (roots the graph found before), not every group. Leaves the module in eval mode (the
    trace does)."""
    return _graph(model.get_submodule(scope), scope, args, cuts, output_layer(model), roots)


def _graph(module: nn.Module, scope: str, args: tuple[Any, ...], cuts: Sequence[str],
           output: str, roots: Sequence[str] | None = None) -> tuple[tp.DependencyGraph, dict[str, Any]]:
    """``scope_graph`` of ``module``, the module ``scope`` of a model whose output layer is ``output``."""
    names = _names(module, scope)
    by_name = {name: m for m, name in names.items()}
    hooks = [by_name[c].register_forward_hook(_detached) for c in cuts]
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(module, example_inputs=args, verbose=False)
    finally:
        for h in hooks:
            h.remove()
    if roots is not None:  # the group of each, as ``get_all_groups`` builds it (rooted at its output channels):
        # every group of a model with many concatenations (DenseNet-121) costs seconds for each pruned layer
        return graph, {fqn: _group_of(graph, by_name[fqn]) for fqn in roots}
    ignored = [by_name[output]] if output in by_name else []
    groups = {names[g[0].dep.target.module]: g
              for g in graph.get_all_groups(ignored_layers=ignored, root_module_types=COMPRESSIBLE)}
    return graph, groups


class _Expired(BaseException):
    """``_deadline``'s: a ``BaseException``, so that no ``except Exception`` on the way (a module whose graph fails
    is split into its children) takes it for a module that failed and starts over on the children."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """``_Expired`` where the block runs past ``seconds`` (a timer signal: the main thread only; in another thread
    the block runs unbounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _Expired

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _group_of(graph: tp.DependencyGraph, layer: nn.Module) -> Any:
    """The group ``graph.get_all_groups`` roots at ``layer``: all its output channels and what they couple."""
    pruner = graph.get_pruner_of_module(layer)
    return graph.get_pruning_group(layer, pruner.prune_out_channels, list(range(pruner.get_out_channels(layer))))


def _names(module: nn.Module, scope: str) -> dict[nn.Module, str]:
    """``module``'s modules by their fqn in the model where ``module`` is ``scope``."""
    return {m: ".".join(p for p in (scope, n) if p) for n, m in module.named_modules()}


def inputs(model: nn.Module, input_shape: Sequence[int], scopes: Sequence[str],
           dtype: str = "float32") -> dict[str, tuple[Any, ...]]:
    """The positional inputs each module of ``scopes`` gets in a forward pass of ``model`` in eval mode on a random
    input of ``input_shape`` (the model's own for '')."""
    x = example_input(input_shape, dtype=dtype)
    seen: dict[str, tuple[Any, ...]] = {"": (x,)}
    hooks = [model.get_submodule(s).register_forward_pre_hook(functools.partial(_keep, seen, s)) for s in scopes if s]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen


def _keep(seen: dict[str, tuple[Any, ...]], name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
    seen.setdefault(name, tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args))


def _detached(module: nn.Module, args: Any, output: Any) -> Any:
    return output.detach() if isinstance(output, torch.Tensor) else None


def _container(module: nn.Module) -> bool:
    return next(module.children(), None) is not None


def _find(model: nn.Module, input_shape: Sequence[int], dtype: str) -> Groups:
    finder = _Finder(model, input_shape, dtype)
    finder.search("")
    kept = {root for _, roots in finder.scopes.values() for root in roots}
    return Groups(scopes=finder.scopes,
                  left_out={root: why for root, why in finder.rejected.items() if root not in kept})


class _Finder:
    """The walk of ``_find``: a module's graph, or, where Torch-Pruning cannot build it, its children's and then its
    own with the children that failed cut off."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], dtype: str = "float32") -> None:
        self.model, self.input_shape, self.dtype = model, tuple(input_shape), dtype
        self.args: dict[str, tuple[Any, ...]] = {"": (example_input(input_shape, dtype=dtype),)}
        self.scopes: dict[str, tuple[tuple[str, ...], list[str]]] = {}
        self.rejected: dict[str, str] = {}  # {root: why}, from the innermost module that found its group
        self.failed: dict[str, str] = {}  # {module: why Torch-Pruning could not build its graph}

    def search(self, scope: str, cuts: tuple[str, ...] = ()) -> None:
        try:
            _, groups = scope_graph(self.model, scope, self.args[scope], cuts)
        except Exception as exc:  # noqa: BLE001 - whatever Torch-Pruning raises, the children are tried instead
            if not cuts:
                self.failed[scope] = one_line(exc)
                self.split(scope)
            return
        roots = list(groups)
        # a model's own graph is trusted but where it passes a reshape; a module's is checked whole
        checked = roots if scope or cuts else [r for r in roots if _reshaped(groups[r])]
        broken = _check(self.model, scope, self.args[scope], cuts, checked)
        for root, why in broken.items():
            self.rejected.setdefault(root, f"{why}{self.context(scope)}")
        taken = {r for _, rs in self.scopes.values() for r in rs}
        self.scopes[scope] = (cuts, [r for r in roots if r not in broken and r not in taken])

    def split(self, scope: str) -> None:
        """The children of ``scope`` (those with layers), each on its own, then ``scope`` without those that failed."""
        module = self.model.get_submodule(scope)
        children = [".".join(p for p in (scope, n) if p) for n, c in module.named_children()
                    if _container(c) and any(isinstance(m, COMPRESSIBLE) for m in c.modules())]
        if any(c not in self.args for c in children):
            containers = [n for n, m in self.model.named_modules() if n and _container(m)]
            self.args.update(inputs(self.model, self.input_shape, containers, self.dtype))
        children = [c for c in children if c in self.args]  # a module the forward pass never calls has no graph
        for child in children:
            self.search(child)
        cut = tuple(c for c in children if c in self.failed)
        layers = [f for f in compressible_layers(self.model) if _under(f, scope)]
        if cut and any(not any(_under(f, c) for c in cut) for f in layers):  # layers outside what is cut off
            self.search(scope, cut)

    def context(self, scope: str) -> str:
        """Why the graph of a module around ``scope`` was not built (its nearest ancestor that failed)."""
        around = [s for s in self.failed if s != scope and _under(scope, s)]
        if not around:
            return ""
        nearest = max(around, key=len)
        return f" (Torch-Pruning cannot trace {nearest or 'the model'} whole: {self.failed[nearest]})"


def _under(fqn: str, scope: str) -> bool:
    return not scope or fqn == scope or fqn.startswith(f"{scope}.")


def _reshaped(group: Any) -> bool:
    return any(item.dep.target.type == tp.ops.OPTYPE.RESHAPE for item in group)


def group_split(graph: tp.DependencyGraph, group: Any) -> int:
    """How many groups a grouped conv (or GroupNorm) in ``group`` splits its channels into, 1 where none does
    (Torch-Pruning's MetaPruner's rule). Torch-Pruning slices such a layer's weight as if the same offsets went from
    each group, so a pruning (and the check's) removes the same offsets from every group: RegNet's and ResNeXt's
    grouped convs, pruned otherwise, failed with 'INDICES element is out of DATA bounds'."""
    found = [1]
    for dep, _ in group:
        module, pruner = dep.target.module, graph.get_pruner_of_module(dep.target.module)
        if pruner is None or isinstance(module, nn.Conv2d) and module.groups == module.out_channels:
            continue  # depthwise: each channel its own group, pruned with its input
        out = graph.is_out_channel_pruning_fn(dep.handler)
        found.append(pruner.get_out_channel_groups(module) if out else pruner.get_in_channel_groups(module))
    return max(found)


def kept_least(split: int) -> int:
    """The channels a pruning keeps at least in each of a layer's ``split`` groups: two for a grouped conv, whose one
    channel per group Torch-Pruning would take for a depthwise conv's and prune its input with its output (ResNeXt's
    32 groups of 4 cut to 1: 'expected input to have 64 channels, but got 80')."""
    return 2 if split > 1 else 1


def _check(model: nn.Module, scope: str, args: tuple[Any, ...], cuts: tuple[str, ...],
           roots: list[str]) -> dict[str, str]:
    """{root: why} for those of ``roots`` whose groups do not prune correctly (the module docstring): all at once, then
    each alone where that fails."""
    if not roots:
        return {}
    why = _pruned_as_read_as_zero(model, scope, args, cuts, roots)
    if why is None:
        return {}
    if len(roots) == 1:
        return {roots[0]: why}
    alone = {root: _pruned_as_read_as_zero(model, scope, args, cuts, [root]) for root in roots}
    return {root: why for root, why in alone.items() if why is not None}


def _pruned_as_read_as_zero(model: nn.Module, scope: str, args: tuple[Any, ...], cuts: tuple[str, ...],
                            roots: list[str]) -> str | None:
    """None if ``scope`` with a quarter of each of ``roots``' groups pruned computes what it does when the layers
    reading those channels read zeros; else why not."""
    module = model.get_submodule(scope)
    where = scope or "the model"
    with torch.no_grad():
        expected_shapes = [t.shape for t in _tensors(module(*args))]
    copied = copy.deepcopy(module)
    graph, groups = _graph(copied, scope, args, cuts, output_layer(model), roots)
    names = _names(copied, scope)
    generator = torch.Generator().manual_seed(0)
    chosen, zeros = {}, {}
    for root in roots:
        group = groups[root]
        split = group_split(graph, group)
        size = len(group[0].idxs) // split  # a grouped conv's: the same offsets in each of its groups
        if size <= kept_least(split):  # nothing a ratio below 1 removes
            continue
        offsets = torch.randperm(size, generator=generator)[:max(1, int(size * CHECKED))].tolist()
        idxs = sorted(o + size * g for g in range(split) for o in offsets)
        chosen[root] = idxs
        pruning = graph.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs)
        for item in pruning:
            target = item.dep.target.module
            if target in names and graph.is_in_channel_pruning_fn(item.dep.handler):
                if isinstance(target, nn.Embedding):  # its input is token ids: no channel to read as zeros
                    return (f"its channels reach {names[target]}, an embedding table whose input is token ids, not "
                            "channels, so the check cannot read them as zeros")
                zeros.setdefault(names[target], set()).update(int(i) for i in item.idxs)
    try:
        for root, idxs in chosen.items():
            group = groups[root]
            graph.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs).prune()
        with torch.no_grad():
            got = _tensors(copied.eval()(*args))
    except Exception as exc:  # noqa: BLE001 - whatever breaks, the group is left out and said why
        return f"pruning its channels breaks {where}: {one_line(exc)}"
    shapes = [t.shape for t in got]
    if shapes != expected_shapes:
        return (f"its channels leave {where} (pruning them changes its output from "
                f"{_shapes(expected_shapes)} to {_shapes(shapes)})")
    try:
        with _reading_zeros(model, zeros), torch.no_grad():
            reference = _tensors(module(*args))
    except Exception as exc:  # noqa: BLE001 - a layer read in a way the check cannot zero: left out, said why
        return f"its pruning cannot be checked in {where}: {one_line(exc)}"
    worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(got, reference))
    if worst > 1e-4:
        return (f"pruning its channels changes the channels kept (by {worst:.2g} of the output): Torch-Pruning "
                "follows them through an operation it cannot map (a channel shuffle or another reshape)")
    return None


@contextmanager
def _reading_zeros(model: nn.Module, zeros: dict[str, set[int]]) -> Iterator[None]:
    """``model`` with the input channels ``zeros`` ({layer fqn: channels}) read as zeros."""
    def zero(idxs: list[int], module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].clone()
        x.index_fill_(_channel_dim(module, x), torch.tensor(idxs), 0.0)
        return (x, *args[1:])

    hooks = [model.get_submodule(n).register_forward_pre_hook(functools.partial(zero, sorted(idxs)))
             for n, idxs in zeros.items()]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _channel_dim(module: nn.Module, x: torch.Tensor) -> int:
    """The dimension of ``module``'s input that holds the channels it reads: the one of the size it takes where only
    one is (ConvNeXt's ``LayerNorm2d`` is a ``LayerNorm`` reading N x C x H x W), else the last for a ``Linear`` and a
    ``LayerNorm`` of its own forward (channels last), the second for the rest (convolutions, BatchNorm)."""
    count = next((int(v if isinstance(v, int) else v[-1]) for v in (
        getattr(module, a, None) for a in ("in_channels", "in_features", "num_features", "num_channels",
                                            "normalized_shape")) if v is not None), None)
    fits = [d for d in (1, x.dim() - 1) if x.dim() > 1 and x.shape[d] == count]
    if len(fits) == 1:
        return fits[0]
    last = isinstance(module, nn.Linear) or type(module).forward is nn.LayerNorm.forward
    return -1 if last else 1


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _tensors(o)] if isinstance(out, (list, tuple)) else []


def _shapes(shapes: list[torch.Size]) -> str:
    return ", ".join(str(tuple(s)) for s in shapes)
