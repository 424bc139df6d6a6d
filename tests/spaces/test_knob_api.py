"""The public names a knob written outside the project acts with: ``layers_of`` (the layers that stand for a teacher
layer, factorized or not), ``mask_`` (weights zeroed for good), ``quantize_`` and the readers ``weight_mask`` and
``weight_quantizer``."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from spaces import (
    ActFakeQuant, LinearQuantizer, layers_of, mask_, materialize, quantize_, to_plain, weight_mask, weight_quantizer,
)
from spaces.knobs.rank import RankKnob

INPUT = (1, 1, 28, 28)


def test_layers_of_reaches_both_factors_of_a_factorized_layer(small_cnn):
    knob = RankKnob(model=small_cnn)
    assert [(f, type(m)) for f, m in layers_of(small_cnn, "fc1")] == [("fc1", nn.Linear)]
    factorized = knob.apply(small_cnn, knob.uniform(0.125))
    assert [f for f, _ in layers_of(factorized, "fc1")] == ["fc1.0", "fc1.1"]
    assert all(isinstance(m, nn.Linear) for _, m in layers_of(factorized, "fc1"))


def test_a_mask_holds_through_fine_tuning_and_masks_combine(small_cnn, batch):
    layer = small_cnn.fc1
    first = (torch.arange(layer.weight.numel()) % 2).reshape(layer.weight.shape).float()
    assert mask_(layer, first) is layer and torch.equal(weight_mask(layer), first)
    second = torch.ones_like(first)
    second[0] = 0
    mask_(layer, second)
    kept = first * second
    assert torch.equal(weight_mask(layer), kept)  # a weight another mask zeroed stays zero
    small_cnn.train()
    opt = torch.optim.SGD(small_cnn.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        small_cnn(batch).square().mean().backward()
        opt.step()
    assert torch.all(to_plain(small_cnn).fc1.weight[kept == 0] == 0)
    with pytest.raises(ValueError, match=r"mask_: the mask's shape \(3,\) is not the weight's"):
        mask_(small_cnn.fc2, torch.ones(3))


def test_quantize_sets_what_the_packed_file_and_onnx_run(small_cnn):
    assert weight_mask(small_cnn.fc1) is None and weight_quantizer(small_cnn.fc1) is None
    layer = quantize_(small_cnn.fc1, LinearQuantizer(8), inputs=ActFakeQuant(8))
    assert weight_quantizer(layer).bits == 8 and layer.act.bits == 8
    quantize_(layer, LinearQuantizer(4))  # inputs left as they were
    assert weight_quantizer(layer).bits == 4 and layer.act.bits == 8
    artifact = materialize(small_cnn.eval(), input_shape=INPUT, calibration=torch.randn(8, *INPUT[1:]).numpy())
    assert artifact.int8_layers == ("fc1",)
    with pytest.raises(TypeError, match="quantize_: weights must be a spaces.WeightQuantizer, got int"):
        quantize_(layer, 8)
