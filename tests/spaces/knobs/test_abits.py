"""The abits knob: a calibrated 8-bit range on the inputs of layers with quantized weights."""
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


class TestActivationBitsKnob(KnobContract):
    knob = "abits"
    active = 8
    bad = [4, 16, "8"]
    context = ("bits",)  # only layers whose weights are quantized take an input quantizer


def test_act_quantizer_rounds_inputs_to_256_levels(small_cnn, batch):
    space = JointSpace([BitsKnob(model=small_cnn), ActivationBitsKnob(model=small_cnn)])
    out = space.apply(small_cnn, {**space.identity(), "bits.fc2": 8, "abits.fc2": 8})
    seen = []
    out.fc2.act.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    spaces.calibrate(out, [batch])
    with torch.no_grad():
        out(batch)
    assert len(torch.unique(seen[-1])) <= 256
    assert len(torch.unique(seen[-1])) > 16




# --------------------------------------------------------------------------- the int8 paths of Linears


class _Tokens(nn.Module):
    """A Linear over a sequence (batch, tokens, features) and a classifier over one vector."""

    def __init__(self) -> None:
        super().__init__()
        self.mix, self.head = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(x)).mean(1))


@pytest.mark.parametrize("linear,dynamic", [("auto", {"mix"}), ("static", set()), ("dynamic", {"mix", "head"})])
def test_linear_paths_choose_which_linears_quantize_their_inputs_at_run_time(linear, dynamic):
    torch.manual_seed(0)
    model = _Tokens().eval()
    knob = ActivationBitsKnob(model=model, linear=linear, input_shape=(1, 5, 16))
    assert knob.dynamic == dynamic


def test_a_dynamic_linear_runs_in_onnx_runtime_with_the_packed_weights_and_the_same_outputs():
    """MatMulInteger on the packed file's own 8-bit codes and the input's own range: ONNX Runtime computes what the
    PyTorch model scored, to float rounding."""
    import onnx
    import onnxruntime as ort

    from spaces.materialize import dynamic_layers

    torch.manual_seed(0)
    model = _Tokens().eval()
    space = JointSpace([BitsKnob(model=model, include=["mix"]),
                        ActivationBitsKnob(model=model, input_shape=(1, 5, 16))])
    built = space.apply(model, space.with_values(bits=space["bits"].uniform(8), abits=space["abits"].uniform(8)))
    x = torch.randn(16, 5, 16)
    spaces.calibrate(built, [x])
    assert dynamic_layers(built) == ["mix"]
    artifact = spaces.materialize(built, input_shape=(1, 5, 16), calibration=x.numpy())
    ops = [n.op_type for n in onnx.load_from_string(artifact.onnx).graph.node]
    assert ops.count("MatMulInteger") == 1 and "QuantizeLinear" not in ops
    session = ort.InferenceSession(artifact.onnx, providers=["CPUExecutionProvider"])
    mix = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = built(x).numpy()
    assert abs(mix - want).max() <= 1e-5


def test_node_scopes_name_nested_modules_by_their_fqn():
    from spaces.materialize import scope_fqn

    assert scope_fqn("/blocks/blocks.0/attn/qkv/MatMul") == "blocks.0.attn.qkv"
    assert scope_fqn("/features/features.0/Conv") == "features.0"
    assert scope_fqn("/fc1/Gemm") == "fc1" and scope_fqn("/Flatten") == ""
