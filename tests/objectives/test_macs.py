"""The MACs objective: the plain model's multiply-accumulates per sample, as a study objective."""
from __future__ import annotations

from tests.objectives.objective_contract import ObjectiveContract, toy_outcome


class TestMacs(ObjectiveContract):
    name = "macs"


def test_macs_of_the_toy_are_counted_by_hand():
    import objectives

    macs = objectives.build(["macs"], input_shape=(1, 1, 16, 16))[0]
    # conv 1 -> 8, 3x3, on 16x16: 8 * 16 * 16 * 9; linear 8*8*8 -> 10
    assert macs(toy_outcome(8)) == 8 * 16 * 16 * 9 + 8 * 8 * 8 * 10
