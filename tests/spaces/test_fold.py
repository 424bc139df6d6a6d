"""Conv+BatchNorm folding keeps outputs, skips a conv used elsewhere, and keeps sparsity masks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spaces
from spaces import ActivationBitsKnob, BitsKnob, ChannelKnob, JointSpace, RankKnob, SparsityKnob
from spaces._compressed import ActFakeQuant, layer_bits
from spaces.materialize import int8_layers
from tests.spaces.knob_contract import KnobContract

INPUT_SHAPE = (1, 1, 28, 28)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Effective (masked, quantized) weight of every Conv2d/Linear, via the plain model."""
    plain = spaces.to_plain(model)
    return {n: m.weight.detach() for n, m in plain.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("name", ["small_cnn", "resnet8"])
def test_conv_bn_folding_keeps_outputs(request, name, batch):
    model = request.getfixturevalue(name)
    with torch.no_grad():
        expected = model(batch)
    folded = spaces.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not folded.training
    with torch.no_grad():
        got = folded(batch)
    assert (expected.abs().max()) > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


class SharedConv(nn.Module):
    """The conv's output feeds the BN and the residual: it must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_folding_skips_a_conv_whose_output_is_also_used_elsewhere(batch):
    model = SharedConv()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    model.eval()
    folded = spaces.fold_batchnorm(model)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(folded(batch), model(batch), atol=1e-6, rtol=0)


def test_sparsity_survives_conv_bn_folding_in_a_joint_space(small_cnn):
    space = JointSpace([SparsityKnob(model=small_cnn), BitsKnob(model=small_cnn), ActivationBitsKnob(model=small_cnn)])
    out = space.apply(small_cnn, space.with_values(sparsity={"sparsity.features.4": 0.5}))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in out.modules())
    w = _weights(out)["features.4"]
    assert int((w == 0).sum()) == math.floor(0.5 * w.numel())
    # folding rescaled the kept weights (per output channel), it did not zero any more of them
    folded = spaces.fold_batchnorm(small_cnn).features[4].weight.detach()
    kept = w != 0
    assert torch.equal(w[kept], folded[kept])
