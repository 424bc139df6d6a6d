"""The heads knob: whole attention heads removed from transformers as timm and Hugging Face write them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from search.models import TextTransformer, ViT
from spaces import HEADS, HeadKnob, JointSpace
from spaces.knobs.heads import attention_heads
from tests.spaces.knob_contract import KnobContract, build_knob

INPUT_SHAPE = (1, 1, 28, 28)


class TestHeadKnob(KnobContract):
    knob = "heads"
    active = 2
    bad = [4, -1, 1.5, "2", True]

    @pytest.fixture(params=["vit"])
    def model(self, request) -> nn.Module:
        return request.getfixturevalue(request.param)

    def test_baselines_are_valid_params_where_the_space_has_their_knobs(self, vit):
        from spaces import BaseKnob

        joint = JointSpace([build_knob(n, vit) for n in BaseKnob.registry])
        policies = joint.policies(vit)
        assert {"heads_50", "heads_50_int8"} <= set(policies)
        assert set(policies["heads_50"][f"heads.{f}"] for f in joint["heads"].layers) == {2}
        joint.apply(vit, policies["heads_50_int8"])


def _zeroed(model: nn.Module, fqn: str, heads: list[int], width: int, sections: int, total: int) -> nn.Module:
    import copy

    out = copy.deepcopy(model)
    layer = out.get_submodule(fqn)
    with torch.no_grad():
        for s in range(sections):
            for h in heads:
                start = s * total * width + h * width
                layer.weight[start:start + width] = 0
                layer.bias[start:start + width] = 0
    return out


def test_removing_heads_computes_what_reading_them_as_zeros_does(vit):
    """Two heads of four cut from one fused qkv: the same logits as the model whose two heads' q, k and v are zeros;
    the four Linears shrink and the module's head count drops."""
    knob = HeadKnob(model=vit, input_shape=INPUT_SHAPE)
    fqn = "blocks.1.attn.qkv"
    built = knob.apply(vit, {**knob.identity(), f"heads.{fqn}": 2})
    removed = getattr(built, HEADS)[fqn]
    assert len(removed) == 2 and built.blocks[1].attn.num_heads == 2 and built.blocks[0].attn.num_heads == 4
    assert built.blocks[1].attn.qkv.weight.shape == (48, 32) and built.blocks[1].attn.proj.weight.shape == (32, 16)
    x = torch.randn(5, *INPUT_SHAPE[1:])
    with torch.no_grad():
        want = _zeroed(vit, fqn, removed, width=8, sections=3, total=4)(x)
        assert torch.allclose(built(x), want, atol=1e-5)


def test_the_lowest_norm_heads_go_and_a_stored_structure_removes_the_same_ones(vit):
    knob = HeadKnob(model=vit, input_shape=INPUT_SHAPE)
    fqn = "blocks.0.attn.qkv"
    with torch.no_grad():  # head 2 made the weakest
        vit.blocks[0].attn.qkv.weight[16:24] *= 0.01
        vit.blocks[0].attn.qkv.weight[48:56] *= 0.01
        vit.blocks[0].attn.qkv.weight[80:88] *= 0.01
    built = knob.apply(vit, {**knob.identity(), f"heads.{fqn}": 1})
    assert getattr(built, HEADS) == {fqn: [2]}
    fresh = ViT(dim=32, depth=2, num_heads=4).eval()  # other weights, told which heads the search removed
    setattr(fresh, HEADS, {fqn: [0]})
    rebuilt = knob.apply(fresh, {**knob.identity(), f"heads.{fqn}": 1})
    assert getattr(rebuilt, HEADS) == {fqn: [0]}
    setattr(fresh, HEADS, {fqn: [0, 1]})
    with pytest.raises(ValueError, match="heads.blocks.0.attn.qkv: the stored structure removes heads"):
        knob.apply(fresh, {**knob.identity(), f"heads.{fqn}": 1})


def test_hugging_face_separate_query_key_value_and_a_sibling_output_dense():
    torch.manual_seed(0)
    model = TextTransformer(num_classes=3, dim=32, depth=2, num_heads=4).eval()
    found = attention_heads(model)
    assert list(found) == ["layers.0.attention.self.query", "layers.1.attention.self.query"]
    assert found["layers.0.attention.self.query"].output == "layers.0.attention.output.dense"
    knob = HeadKnob(model=model, input_shape=(1, 16), input_dtype="int64")
    assert knob.layers == list(found)
    built = knob.apply(model, {**knob.identity(), "heads.layers.0.attention.self.query": 3})
    attn = built.layers[0].attention.self
    assert (attn.num_attention_heads, attn.all_head_size, attn.key.out_features) == (1, 8, 8)
    ids = torch.randint(1, 256, (4, 16))
    assert built(ids).shape == (4, 3)


class _ReadsWidthFromInput(nn.Module):
    """timm's older forward: the context reshaped to the input's width C, not heads x head_dim."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 2, 4
        self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


def test_an_attention_whose_forward_reads_the_width_elsewhere_is_left_out_with_the_reason():
    model = nn.Sequential(_ReadsWidthFromInput(), nn.Flatten(), nn.Linear(8 * 3, 2)).eval()
    knob = HeadKnob(model=model, input_shape=(1, 3, 8))
    assert knob.layers == [] and "the model breaks with a head removed (RuntimeError" in knob.left_out["0.qkv"]


def test_nn_multihead_attention_is_left_out_and_said():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn, self.head = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))

    knob = HeadKnob(model=Net().eval(), input_shape=(1, 3, 8))
    assert knob.layers == [] and "in_proj_weight" in knob.left_out["attn.out_proj"]
