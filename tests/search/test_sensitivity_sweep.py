"""The sensitivity sweep on a toy model against hand-computed values; its cache; the guide's configurations."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from objectives import Accuracy, AnalyticCostModel
from search.sensitivity.guide import guided_configs, layer_options
from search.sensitivity.sweep import Measurer, Sweep, load_or_sweep, sweep_table
from spaces import JointSpace
from tests.spaces.knob_contract import build_knob

SHAPE = (1, 20)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(20, 40), nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def toy():
    torch.manual_seed(0)
    model = Toy().eval()
    x = torch.randn(300, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own labels: accuracy 1.0 unchanged
    space = JointSpace([build_knob("sparsity", model), build_knob("bits", model)])
    cost = AnalyticCostModel(device="toy", peak_tops={"fp32": 0.1, "int8": 0.2}, memory_gbs=8.0, batch_size=8)
    measurer = Measurer(teacher=model, space=space, accuracy=Accuracy(images=x, labels=y), calibration=x[:64],
                        input_shape=SHAPE, cost_model=cost, sweep=Sweep(subset=300, latency=False))
    return model, x, y, space, measurer


def test_the_table_holds_every_knob_layer_and_choice_with_hand_computed_savings(toy):
    model, x, y, space, measurer = toy
    table = sweep_table(measurer, log=lambda _: None)
    expected_rows = sum(len(k.choices(f)) for k in space.knobs for f in k.layers)
    assert len(table) == expected_rows and table["identity"].sum() == 4  # 2 knobs x 2 layers
    assert (table.loc[table["identity"], ["loss", "bytes_saved", "ms_saved"]] == 0).all().all()
    # fc1 at 8 bits: 800 float32 weights (3,200 B) become 800 bytes of codes + 40 x (4 B scale + 1 B zero point);
    # the header's entry for it reads "b":8 instead of "b":32: one character shorter
    row = table[(table["knob"] == "bits") & (table["layer"] == "fc1") & (table["choice"] == 8)].iloc[0]
    assert row["bytes_saved"] == 3200 - (800 + 40 * 5) + 1
    # fc1 at sparsity 0.5: 400 kept float32 values (1,600 B) and a 100-byte bitmask; "e":"dense" -> "e":"bitmask"
    row = table[(table["knob"] == "sparsity") & (table["layer"] == "fc1") & (table["choice"] == 0.5)].iloc[0]
    assert row["bytes_saved"] == 3200 - (1600 + 100) - 2
    # its accuracy: the 400 smallest-magnitude weights of fc1 zeroed by hand
    by_hand = Toy()
    by_hand.load_state_dict(model.state_dict())
    with torch.no_grad():
        w = by_hand.fc1.weight
        w.view(-1)[torch.argsort(w.abs().flatten(), stable=True)[:400]] = 0.0
        accuracy = int((by_hand(x).argmax(1) == y).sum()) / len(y)
    assert row["accuracy"] == pytest.approx(accuracy, abs=1e-12) and row["loss"] == pytest.approx(1.0 - accuracy)
    assert table.loc[table["knob"] == "sparsity", "macs_saved"].eq(0).all()  # dense kernels: no compute saved


def test_the_table_is_read_back_when_nothing_it_depends_on_changed(toy, tmp_path, monkeypatch):
    *_, measurer = toy
    first, _, cached = load_or_sweep(measurer, out_dir=tmp_path, key="abc", log=lambda _: None)
    assert not cached and (tmp_path / "sensitivity.csv").is_file()

    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep ran again")

    monkeypatch.setattr("search.sensitivity.sweep.sweep_table", no_sweep)
    again, _, cached = load_or_sweep(measurer, out_dir=tmp_path, key="abc", log=lambda _: None)
    assert cached and len(again) == len(first)
    with pytest.raises(AssertionError, match="ran again"):  # another key (another teacher, space, ...) sweeps
        load_or_sweep(measurer, out_dir=tmp_path, key="other", log=lambda _: None)


def test_layer_options_keep_the_pareto_set_and_combine_knobs_of_different_phases(toy):
    model, x, y, space, measurer = toy
    table = sweep_table(measurer, log=lambda _: None)
    options = layer_options(table, space, "fc1", layer_bytes=3200.0)
    assert all(set(o) == {"sparsity.fc1", "bits.fc1"} for o in options["option"])
    loss_bytes = options[["loss", "bytes_saved"]].to_numpy()
    for a in loss_bytes:  # no option is dominated by another on (loss, bytes saved)
        assert not any((b[0] <= a[0]) and (b[1] >= a[1]) and ((b[0] < a[0]) or (b[1] > a[1])) for b in loss_bytes)


def test_guided_configurations_are_complete_params_that_replay(toy):
    model, x, y, space, measurer = toy
    table = sweep_table(measurer, log=lambda _: None)
    configs = guided_configs(table, space, layer_bytes={"fc1": 3200.0, "fc2": 1600.0}, base_bytes=5000.0,
                             base_ms=float("nan"), n=3, perturbed=2, seed=0, targets=[(0.9, 1.0), (0.6, 1.0)])
    assert 1 <= len(configs) <= 5
    for params in configs:
        assert set(params) == set(space.identity())
        space.apply(model, params)
    assert configs[0] != space.identity()


def test_with_losses_all_zero_the_guided_problem_still_saves_only_what_the_budget_asks(toy):
    """Most choices measure a loss of 0 alone; the prior (TOUCH_LOSS, BYTES_LOSS) keeps the milder options and
    meets a loose budget with one knob on one layer instead of every free choice at once."""
    model, x, y, space, measurer = toy
    table = sweep_table(measurer, log=lambda _: None).assign(loss=0.0)
    raw = layer_options(table, space, "fc1", layer_bytes=3200.0)
    kept = layer_options(table, space, "fc1", layer_bytes=3200.0, base_bytes=5000.0)
    assert len(raw) == 1 and len(kept) > 1  # at loss 0 only the hardest option survives the raw Pareto cut
    assert kept.sort_values("bytes_saved")["loss"].is_monotonic_increasing  # saving more costs more
    identity = {"sparsity.fc1": 0.0, "bits.fc1": 32}  # the layer left alone stays an option (bits' identity comes
    assert identity in list(kept["option"])           # last among its entries, after the phase has others)
    configs = guided_configs(table, space, layer_bytes={"fc1": 3200.0, "fc2": 1600.0}, base_bytes=5000.0,
                             base_ms=float("nan"), n=1, perturbed=0, targets=[(0.9, 1.0)])
    moved = {k: v for k, v in configs[0].items() if v != space[k.split(".", 1)[0]].identity_value}
    assert len(moved) == 1, moved


def test_an_aimed_solution_whose_exact_size_misses_its_target_is_solved_again_then_put_last(toy):
    model, x, y, space, measurer = toy
    table = sweep_table(measurer, log=lambda _: None).assign(loss=0.0)
    calls = []

    def size_of(params):  # "exact" sizes the table does not predict: 1,000 B saved per knob moved, whatever it is
        calls.append(params)
        return 5000.0 - 1000.0 * sum(v != space[k.split(".", 1)[0]].identity_value for k, v in params.items())

    configs = guided_configs(table, space, layer_bytes={"fc1": 3200.0, "fc2": 1600.0}, base_bytes=5000.0,
                             base_ms=float("nan"), n=2, perturbed=0, targets=[(0.5, 1.0), (0.9, 1.0)],
                             size_of=size_of)
    assert len(calls) >= 3  # the 0.5 budget was re-solved tighter after its first solution came out too large
    assert size_of(configs[0]) <= 0.9 * 5000 and size_of(configs[1]) > 0.5 * 5000  # the miss comes last
