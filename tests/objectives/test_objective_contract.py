"""The built-in objectives pass the objective contract; every registered objective has a contract test."""
from __future__ import annotations

import re
from pathlib import Path

from objectives import BaseObjective
from tests.objectives.objective_contract import ObjectiveContract


class TestAccuracy(ObjectiveContract):
    name = "accuracy"


class TestArtifactSize(ObjectiveContract):
    name = "size_bytes"


class TestLatency(ObjectiveContract):
    name = "latency_ms"


def test_every_registered_objective_has_a_contract_test():
    here = Path(__file__).resolve().parent
    tested = set()
    for path in here.glob("test_*.py"):
        text = path.read_text()
        if "(ObjectiveContract)" in text:
            tested |= set(re.findall(r'^    name = "(\w+)"', text, flags=re.M))
    assert set(BaseObjective.registry) <= tested, sorted(set(BaseObjective.registry) - tested)
