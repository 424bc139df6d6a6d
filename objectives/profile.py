"""Counts recorded beside the objectives: parameters and multiply-accumulates per sample."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, non-zero parameters) of a plain model."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p))
    return total, nonzero


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one sample (dense kernels), and of any module that
    counts its own (a method ``multiply_accumulates(input)``: a layer held as tensor-train cores). A model that holds
    an ``nn.Embedding`` is given token ids (zeros, int64), any other an image of zeros."""
    macs = 0

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal macs
        if hasattr(module, "multiply_accumulates"):
            macs += int(module.multiply_accumulates(inputs[0][:1]))
        elif isinstance(module, nn.Conv2d):
            per_out = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs += output[0].numel() * per_out
        else:
            macs += output[0].numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) or hasattr(m, "multiply_accumulates")]
    try:
        tokens = any(isinstance(m, nn.Embedding) for m in model.modules())
        model.eval()(torch.zeros(1, *input_shape[1:], dtype=torch.long if tokens else torch.float32))
    finally:
        for h in handles:
            h.remove()
    return macs
