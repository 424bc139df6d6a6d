"""The sensitivity sweep on a toy model against hand-computed values; its cache; the guide's configurations."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from objectives import Accuracy
from objectives.hardware import AnalyticCostModel
from search.sensitivity.baselines import refined
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


def test_the_cache_key_follows_the_cost_model_but_not_its_host_lock(toy, tmp_path):
    from objectives.hardware import OrtCpuCostModel
    from search.sensitivity.sweep import cache_key

    model, *_ = toy

    def key(**cpu) -> str:
        return cache_key(teacher=model, data="d", space_cfg={}, sweep=Sweep(),
                         cost_model=OrtCpuCostModel(settle_s=0, **cpu))

    assert key() == key(host_lock=False) == key(host_lock=str(tmp_path / "x.lock"))
    assert key() != key(threads=2)


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


def test_an_aimed_solution_whose_exact_size_misses_its_target_is_solved_again_and_the_closest_kept(toy):
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
    tried = [size_of(p) for p in calls[:-2]]
    # the 0.5 budget cannot be met (4 knobs moved at most: 1,000 B); it keeps its place, with its closest attempt
    assert size_of(configs[0]) == min(tried) > 0.5 * 5000 and size_of(configs[1]) <= 0.9 * 5000


def test_recovery_factor_is_what_fine_tuning_left_of_the_structural_baselines_table_loss(toy):
    """Summed over the baselines that change only structure with choices the table holds: their loss after
    recovery over their choices' summed table loss."""
    from search.sensitivity.table import MIN_RECOVERED, recovery_factor

    model, x, y, space, measurer = toy
    table = sweep_table(measurer, log=lambda _: None)
    table["loss"] = np.where(table["knob"] == "sparsity", table["choice"] * 0.15, 0.01)  # 0.5: 0.075, 0.9: 0.135
    table.loc[table["identity"], "loss"] = 0.0
    base = {"sparsity.fc1": 0.0, "sparsity.fc2": 0.0, "bits.fc1": 32, "bits.fc2": 32}
    rows = pd.DataFrame([
        {**base, "sparsity.fc1": 0.5, "sparsity.fc2": 0.5, "accuracy": 0.99},  # table 0.15, after recovery 0.01
        {**base, "sparsity.fc1": 0.9, "accuracy": 0.97},                        # table 0.135, after 0.03
        {**base, "sparsity.fc1": 0.5, "bits.fc1": 8, "accuracy": 0.5},           # moves bits too: not counted
        {**base, "sparsity.fc1": 0.6, "accuracy": 0.5},                          # a choice the table lacks
    ])
    assert recovery_factor(table, space, rows, accuracy=1.0) == pytest.approx(0.04 / 0.285)
    assert recovery_factor(table, space, rows.iloc[2:], accuracy=1.0) == 1.0  # nothing to say
    assert recovery_factor(table, space, rows.iloc[:1].assign(accuracy=1.0), accuracy=1.0) == MIN_RECOVERED
    # scaled by the factor, a structural choice that loses more than SAFE_LOSS alone stays in the guided problem
    table.loc[(table["knob"] == "bits") & ~table["identity"], "loss"] = 0.5  # bits out of the way
    sparsity = {o["sparsity.fc1"]: l for o, l in zip(*layer_options(table, space, "fc1", layer_bytes=3200.0,
                                                                     recovered=0.05)[["option", "loss"]].T.values)}
    assert sparsity[0.9] == pytest.approx(0.135 * 0.05) and sparsity[0.5] == pytest.approx(0.075 * 0.05)
    unscaled = layer_options(table, space, "fc1", layer_bytes=3200.0)
    assert all(o["sparsity.fc1"] == 0.0 for o in unscaled["option"])  # 0.1 point and more alone: left out
    # as heavy as half the first conv's channels of the default CNN (17.6 points alone, 0.5 once fine-tuned with
    # every other layer's half): still in; past 50 points alone: out
    table.loc[(table["knob"] == "sparsity") & (table["choice"] == 0.5), "loss"] = 0.3
    table.loc[(table["knob"] == "sparsity") & (table["choice"] > 0.5), "loss"] = 0.55
    sparsity = {o["sparsity.fc1"]: l for o, l in zip(*layer_options(table, space, "fc1", layer_bytes=3200.0,
                                                                     recovered=0.05)[["option", "loss"]].T.values)}
    assert sparsity[0.5] == pytest.approx(0.3 * 0.05) and max(sparsity) == 0.5


def test_latency_savings_from_macs_replace_the_timed_ones_only_where_macs_change():
    from search.sensitivity.table import by_macs

    table = pd.DataFrame({"identity": [True, False, False], "latency_ms": [10.0, 7.0, 10.0],
                          "macs": [1000, 600, 1000], "macs_saved": [0, 400, 0], "ms_saved": [0.0, 3.0, 1.5]})
    assert list(by_macs(table)["ms_saved"]) == [0.0, 4.0, 1.5]  # 40% of the MACs: 40% of 10 ms; int8 kernels kept


def test_an_aimed_solution_that_comes_out_slower_is_solved_again_under_a_tighter_latency_budget(toy):
    model, x, y, space, measurer = toy
    table = sweep_table(measurer, log=lambda _: None).assign(loss=0.0)
    moving = table["knob"] == "sparsity"
    table.loc[moving, "ms_saved"] = table.loc[moving, "choice"] * 4.0  # 10 ms unchanged; fc1 and fc2 save alike
    timings = []

    def latency_of(params):  # the "runtime" saves half of what the table says
        saved = sum(4.0 * v for k, v in params.items() if k.startswith("sparsity."))
        timings.append(params)
        return 1.0 - 0.5 * saved / 10.0

    configs = guided_configs(table, space, layer_bytes={"fc1": 3200.0, "fc2": 1600.0}, base_bytes=5000.0,
                             base_ms=10.0, n=1, perturbed=0, targets=[(1.0, 0.8)], latency_of=latency_of)
    assert len(timings) >= 2 and latency_of(configs[0]) <= 0.8  # table: 2 ms saved would do; it took 4


def test_pruning_and_fewer_bits_combine_on_one_layer_and_meet_an_exact_size(toy):
    """The table's pruning saving includes the next layer's removed inputs; quantizing the pruned layer still saves
    on what is left of it, and the shape's real layer sizes make the size exact (``weights_of``, ``size_of``)."""
    from spaces.knobs.channels import ChannelKnob
    from spaces.materialize import packed_tensors
    from spaces.packing import pack

    model, x, y, _, _ = toy
    space = JointSpace([ChannelKnob(model=model, input_shape=SHAPE), build_knob("bits", model)])
    cost = AnalyticCostModel(device="toy", peak_tops={"fp32": 0.1, "int8": 0.2}, memory_gbs=8.0, batch_size=8)
    measurer = Measurer(teacher=model, space=space, accuracy=Accuracy(images=x, labels=y), calibration=x[:64],
                        input_shape=SHAPE, cost_model=cost, sweep=Sweep(subset=300, latency=False))
    table = sweep_table(measurer, log=lambda _: None).assign(loss=0.0)

    def size_of(params):
        return len(pack(packed_tensors(measurer.build(params))))

    base = size_of(space.identity())
    options = layer_options(table, space, "fc1", layer_bytes=3200.0, base_bytes=float(base))
    assert any(o["channels.fc1"] > 0 and o["bits.fc1"] < 32 for o in options["option"])
    configs = guided_configs(table, space, layer_bytes={"fc1": 3200.0, "fc2": 1600.0}, base_bytes=float(base),
                             base_ms=float("nan"), n=1, perturbed=0, targets=[(0.15, 1.0)], size_of=size_of,
                             weights_of=measurer.weights)
    assert size_of(configs[0]) <= 0.15 * base
    assert configs[0]["channels.fc1"] > 0 and configs[0]["bits.fc1"] < 32


def test_a_shaping_knobs_latency_savings_are_scaled_by_its_middle_choice_timed_on_every_layer(toy):
    from search.sensitivity.table import timed_whole
    from spaces.knobs.channels import ChannelKnob

    model, x, y, _, measurer = toy
    space = JointSpace([ChannelKnob(model=model, input_shape=SHAPE), build_knob("bits", model)])
    table = sweep_table(Measurer(teacher=model, space=space, accuracy=measurer.accuracy, calibration=x[:64],
                                 input_shape=SHAPE, cost_model=measurer.cost_model, sweep=measurer.sweep),
                        log=lambda _: None)
    table["ms_saved"] = np.where(table["knob"] == "channels", table["choice"].astype(float) * 8.0, 0.5)
    timed = []

    def latency_of(params):  # channels 0.5 (the middle of 0.125 .. 0.75) on fc1 saves 1.5 ms of 10, not 4
        timed.append(params)
        return 0.85

    scaled = timed_whole(table, space, latency_of, base_ms=10.0)
    assert timed == [space.with_values(knobs={"channels.fc1": 0.5})]
    channels = table["knob"] == "channels"
    assert np.allclose(scaled.loc[channels, "ms_saved"], table.loc[channels, "ms_saved"] * 1.5 / 4.0)
    assert scaled.loc[~channels, "ms_saved"].eq(0.5).all()  # other phases as timed


def test_a_baselines_latency_budget_is_its_structure_timed_again_not_its_recorded_reading(toy):
    """``plan.retimed``: a baseline's latency fraction comes from timing (here predicting) its params against the
    unchanged model the way the guided solutions are checked; its recorded fraction only where its params are not
    all in the frame. Whole-number params read back from a frame as floats still replay."""
    from search.sensitivity.plan import Guidance, retimed

    model, x, y, space, measurer = toy
    g = Guidance(space=space, measurer=measurer)
    params = {"sparsity.fc1": 0.5, "sparsity.fc2": 0.0, "bits.fc1": 8, "bits.fc2": 32}
    row = pd.Series({k: float(v) for k, v in params.items()} | {"latency_ms": 123.0})  # as in `trials_frame`
    expected = measurer.latency_fraction(params)
    assert retimed(g, row, 0.123) == pytest.approx(expected) and expected != pytest.approx(0.123)
    assert retimed(g, row.drop("bits.fc2"), 0.123) == 0.123



def _bits_table(losses: dict[tuple[str, int], float], saved: dict[tuple[str, int], float]) -> pd.DataFrame:
    rows = [{"knob": "bits", "layer": layer, "choice": float(b), "identity": b == 32, "loss": losses.get((layer, b), 0.0),
             "bytes_saved": saved.get((layer, b), 0.0)} for layer in ("fc1", "fc2") for b in (2, 3, 4, 6, 8, 32)]
    return pd.DataFrame(rows)


def test_a_refined_baseline_is_the_same_graph_a_step_smaller_where_the_table_says_it_costs_least(toy):
    model, x, y, space, measurer = toy
    saved = {("fc1", 8): 2200, ("fc1", 6): 2600, ("fc1", 4): 2800, ("fc2", 8): 1100, ("fc2", 6): 1200,
             ("fc2", 4): 1300, ("fc1", 3): 2900, ("fc2", 3): 1350, ("fc1", 2): 3000, ("fc2", 2): 1400}
    # float weights: every layer whose 8-bit entry loses at most 1 point gets 8-bit weights, the rest untouched
    table = _bits_table({("fc2", 8): 0.05}, saved)
    sparse = space.with_values(sparsity={"sparsity.fc1": 0.5})
    twin = refined(table, space, sparse)
    assert twin == {**sparse, "bits.fc1": 8}
    # all stored in 8 bits already: one layer one bit-width lower, the most bytes per point lost (fc1: 400 B for
    # 0.2 points -> 400 / 0.0025 = 160,000; fc2: 100 B for nothing -> 100 / 0.0005 = 200,000)
    table = _bits_table({("fc1", 6): 0.002}, saved)
    at8 = space.with_values(bits={"bits.fc1": 8, "bits.fc2": 8})
    assert refined(table, space, at8) == {**at8, "bits.fc2": 6}
    # a step that loses more than 1 point alone is not taken; none left: None
    table = _bits_table({("fc2", 6): 0.02, ("fc1", 6): 0.02}, saved)
    assert refined(table, space, at8) is None
    assert refined(table, space, space.with_values(bits={"bits.fc1": 2, "bits.fc2": 2})) is None
    assert refined(table, JointSpace([build_knob("sparsity", model)]), sparse) is None  # no bits knob
