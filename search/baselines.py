"""The policies a user would try by hand, written as parameters of the same space.

Each runs through the same pipeline as a searched trial and is stored in the study, so every front
is seen against them. A policy that needs a knob the space lacks is left out.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spaces import JointSpace
from spaces._layers import targets


def global_magnitude(space: JointSpace, teacher: nn.Module, sparsity: float) -> dict[str, float]:
    """Per-layer sparsities equal to one global magnitude threshold over all layers' weights."""
    knob = space["sparsity"]  # ranks the weights as the sparsity knob does: before BN folding
    weights = {fqn: targets(teacher, fqn)[0][1].weight.detach().abs().flatten() for fqn in knob.layers}
    threshold = torch.quantile(torch.cat(list(weights.values())), sparsity)
    return {
        knob.name(fqn): min(float((w < threshold).float().mean()), knob.high)
        for fqn, w in weights.items()
    }


def policies(space: JointSpace, teacher: nn.Module) -> dict[str, dict[str, Any]]:
    """{baseline name: full params}; ``uncompressed`` is always first."""
    has = space.__contains__
    out = {"uncompressed": space.identity()}
    if has("bits") and 8 in space["bits"].weight_bits and 8 in space["bits"].act_bits:
        out["uniform_int8"] = space.with_values(bits=space["bits"].uniform(8, act=8))
    if has("bits") and 4 in space["bits"].weight_bits and 8 in space["bits"].act_bits:
        out["uniform_w4a8"] = space.with_values(bits=space["bits"].uniform(4, act=8))
    if has("sparsity") and space["sparsity"].high >= 0.5:
        out["global_magnitude_50"] = space.with_values(sparsity=global_magnitude(space, teacher, 0.5))
    if has("channels") and space["channels"].low <= 0.5 <= space["channels"].high:
        half = space["channels"].uniform(0.5)
        out["channels_50"] = space.with_values(channels=half)
        if "uniform_int8" in out:
            out["channels_50_int8"] = space.with_values(channels=half, bits=space["bits"].uniform(8, act=8))
    if has("rank") and 0.5 in space["rank"].ratios:
        out["rank_50"] = space.with_values(rank=space["rank"].uniform(0.5))
    return out
