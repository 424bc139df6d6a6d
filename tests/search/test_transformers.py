"""Transformers as users bring them: a small timm-style ViT searched over whole attention heads, MLP width and int8
Linears (space=transformer), and a BERT-style text classifier on token ids (real text: Debian's package
descriptions, ``text_data.py``); every completed trial of each picked into a verified bundle."""
from __future__ import annotations

import onnx
import pytest
import torch
from optuna.trial import TrialState

from tests.search.studies import searched, write_arrays

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vit_study(tmp_path_factory):
    """``model=vit space=transformer experiment=smoke`` at width 32, 2 blocks of 4 heads, on 6,400 training images
    (2 epochs: about 0.75 validation accuracy), low rank and sparsity left out (each is tested on CNNs and adds
    a baseline to pick), one searched trial."""
    from search import data as data_module

    folder = tmp_path_factory.mktemp("vit")
    write_arrays(folder / "data.npz", data_module.load(val_size=1000, seed=0), train=6400, test=1000)
    overrides = ["experiment=smoke", "model=vit", "model.net.dim=32", "model.net.depth=2", "model.train.epochs=2",
                 f"results_dir={folder / 'results'}", "data=arrays", f"data.path={folder / 'data.npz'}",
                 "data.mean=[0.0]", "data.std=[1.0]", "space=transformer", "space.knobs.rank=null",
                 "space.knobs.sparsity=null", "study.name=vit", "study.n_trials=1", "hardware.warmup=2",
                 "hardware.repeats=30"]  # 30 timed runs of its 1-2 ms: 10 left a pick's share 15% off once
    return overrides, searched(overrides)[1]


def test_trials_vary_heads_mlp_width_and_int8_linears_and_none_fails(vit_study):
    _, study = vit_study
    failed = {t.number: t.user_attrs.get("error") for t in study.get_trials() if t.state == TrialState.FAIL}
    assert failed == {}
    done = study.get_trials(states=(TrialState.COMPLETE,))
    baselines = {t.user_attrs.get("baseline") for t in done}
    assert {"uncompressed", "heads_50", "heads_50_int8", "channels_50_int8"} <= baselines
    searched = [t for t in done if "baseline" not in t.user_attrs]
    keys = set().union(*(t.params for t in searched))
    assert {f"heads.blocks.{b}.attn.qkv" for b in range(2)} <= keys
    assert {f"channels.blocks.{b}.mlp.fc1" for b in range(2)} <= keys  # the MLP's width
    assert {f"bits.blocks.{b}.attn.proj" for b in range(2)} <= keys and any(k.startswith("abits.") for k in keys)


def test_every_completed_trial_picks_into_a_verified_bundle_with_dynamic_int8_linears(vit_study):
    from search.cli import compose_checked
    from search.pick.bundle import load_model
    from search.pick.picker import pick
    from spaces import to_plain

    overrides, study = vit_study
    x = torch.randn(4, 1, 28, 28)
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        picked = pick(compose_checked([*overrides, f"pick.trial={trial.number}"]))
        assert picked.verified, (trial.number, picked.report["reasons"])
        with torch.no_grad():
            diff = (load_model(picked.path)(x) - to_plain(picked.model)(x)).abs().max().item()
        assert diff <= 1e-4, (trial.number, trial.params)
        if trial.user_attrs.get("baseline") == "heads_50_int8":  # half the heads, every Linear on int8 kernels
            ops = {n.op_type for n in onnx.load(str(picked.path / "model.onnx")).graph.node}
            assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops  # the Linears over tokens: dynamic int8
            assert picked.model.blocks[0].attn.num_heads == 2


# --------------------------------------------------------------------------- token ids: a text classifier


@pytest.fixture(scope="module")
def text_study(tmp_path_factory):
    """``model=text space=transformer experiment=smoke`` on 3,000 package descriptions of four sections (48 byte
    tokens each, int64 through data=arrays): width 32, 2 layers of 4 heads, 8 epochs (well above the 0.25 of
    chance); heads, bits and int8 inputs searched, one searched trial."""
    from tests.search.text_data import write

    folder = tmp_path_factory.mktemp("text")
    path = write(folder / "text.npz", per_class=750)
    overrides = ["experiment=smoke", "model=text", "model.net.dim=32", "model.net.hidden=64", "model.train.epochs=8",
                 "model.train.lr=0.1", f"results_dir={folder / 'results'}", "data=arrays", f"data.path={path}",
                 "data.val_size=600", "data.test_size=300", "space=transformer", "space.knobs.rank=null",
                 "space.knobs.sparsity=null", "space.knobs.channels=null", "study.name=text", "study.n_trials=1",
                 "hardware.warmup=2", "hardware.repeats=10"]
    return overrides, searched(overrides)[1]


def test_token_ids_search_and_pick_into_verified_bundles_that_take_int64(text_study):
    from search.cli import compose_checked
    from search.pick.bundle import load_model
    from search.pick.picker import pick
    from spaces import to_plain

    overrides, study = text_study
    failed = {t.number: t.user_attrs.get("error") for t in study.get_trials() if t.state == TrialState.FAIL}
    assert failed == {}
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert {"uncompressed", "heads_50", "heads_50_int8"} <= {t.user_attrs.get("baseline") for t in done}
    assert any(k.startswith("heads.layers.") for t in done for k in t.params)
    ids = torch.randint(1, 256, (4, 48))
    for trial in done:
        picked = pick(compose_checked([*overrides, f"pick.trial={trial.number}"]))
        assert picked.verified, (trial.number, picked.report["reasons"])
        model = onnx.load(str(picked.path / "model.onnx"))
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert "token ids, int64" in (picked.path / "README.md").read_text()
        with torch.no_grad():
            diff = (load_model(picked.path)(ids) - to_plain(picked.model)(ids)).abs().max().item()
        assert diff <= 1e-4, (trial.number, trial.params)
