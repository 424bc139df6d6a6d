"""Conv+BatchNorm folding: the BN's affine transform moves into the conv's weight and bias."""
from __future__ import annotations

import copy
import warnings

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ._compressed import _Compressed
from ._layers import set_submodule


class _Tracer(fx.Tracer):
    """Keeps compressed layers as single modules, so a masked conv -> BN still reads as a pair."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _Compressed) or super().is_leaf_module(m, qualname)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv fqn, bn fqn) for every BatchNorm2d fed only by a Conv2d, found by an FX trace (none traced where the
    model has no BatchNorm2d: a transformer FX may not trace has nothing to fold)."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return []
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # a model FX cannot trace keeps its BNs; the search still runs
        warnings.warn(f"conv+BN folding skipped: FX could not trace the model ({exc})", stacklevel=2)
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}  # how often each module is called (a shared module: more than once)
    found: dict[tuple[str, str], int] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        calls[node.target] = calls.get(node.target, 0) + 1
        if not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and isinstance(modules.get(src.target), nn.Conv2d)
            and len(src.users) == 1
        ):
            found[(src.target, node.target)] = found.get((src.target, node.target), 0) + 1
    # a module called several times folds once, and only if every call of the conv and of the BN is that pair
    return [(conv, bn) for (conv, bn), n in found.items() if calls[conv] == n and calls[bn] == n]


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval form with each conv->BN folded and the BN replaced by Identity.

    The conv keeps its class and its sparsity mask (folding scales whole output channels, so
    pruned weights stay zero).
    """
    model = copy.deepcopy(model).eval()
    for conv_name, bn_name in conv_bn_pairs(model):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        w, b = fuse_conv_bn_weights(
            conv.weight, bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        conv.weight, conv.bias = nn.Parameter(w.detach()), nn.Parameter(b.detach())
        set_submodule(model, bn_name, nn.Identity())
    return model
