"""The artifacts, lookup table and ExecuTorch cost model the cost-model tests share, once per session (an export
takes seconds, a worker's start as long)."""
from __future__ import annotations

import pytest

import spaces
from objectives.hardware.executorch import ExecuTorchCostModel, executorch_version
from tests.objectives.hardware.cost_model_contract import BATCH, artifact_of, build_table


@pytest.fixture(scope="session")
def small() -> spaces.Artifact:
    return artifact_of(4)


@pytest.fixture(scope="session")
def large() -> spaces.Artifact:
    return artifact_of(64)


@pytest.fixture(scope="session")
def lut_root(tmp_path_factory, small, large):
    root = tmp_path_factory.mktemp("costmodels")
    build_table(root, [small, large])
    return root


@pytest.fixture(scope="session")
def executorch_model():
    """One ExecuTorch cost model for this module's tests: its exported programs and its timing worker are shared
    (an export takes seconds, a worker's start as long)."""
    try:
        executorch_version()
    except ValueError as exc:
        pytest.skip(str(exc))
    model = ExecuTorchCostModel(batch_size=BATCH, threads=1, warmup=2, repeats=10, settle_s=0)
    yield model
    model.close()
