"""ExecuTorch's int8 program follows the ONNX model's logits, times the program an artifact carries, is timed
again at the end of a search from the programs it kept, and refuses what XNNPACK cannot run in one line."""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from objectives.hardware import (
    OpenVinoCostModel,
    OrtCpuCostModel,
    _ort,
)
from objectives.hardware.executorch import ExecuTorchCostModel
from tests.objectives.hardware.cost_model_contract import SHAPE, artifact_of


def test_an_int8_executorch_program_gives_logits_close_to_the_onnx_models(executorch_model):
    artifact = artifact_of(8, int8=True)
    # 40 calibration images, not whole batches of 16: the same ranges as ONNX Runtime's 32 (8 of them again)
    artifact = dataclasses.replace(artifact, example=np.concatenate([artifact.example, artifact.example[:8]]))
    files = executorch_model.export(artifact)
    assert set(files) == set(executorch_model.runtime_files) == {"model.pte"}
    images = np.random.default_rng(1).standard_normal((40, *SHAPE[1:]), dtype=np.float32)  # 2.5 program batches
    logits = executorch_model.load(files)(images)
    onnx = _ort.session(artifact.onnx, threads=1).run(None, {"input": images})[0]
    with torch.no_grad():
        float_logits = artifact.module(torch.from_numpy(images)).numpy()
    assert logits.shape == (40, 10) and executorch_model.load(files)(images[:1]).shape == (1, 10)
    int8_error = np.abs(onnx - float_logits).max()
    assert np.abs(logits - float_logits).max() > 0.2 * int8_error  # it really runs int8
    assert np.abs(logits - onnx).max() < 0.5 * int8_error  # and rounds as ONNX Runtime's int8 model does
    assert (logits.argmax(1) == onnx.argmax(1)).mean() >= 0.95


def test_executorch_times_the_program_an_artifact_carries(executorch_model, small):
    carried = dataclasses.replace(small, files=executorch_model.export(small), module=None)  # nothing to export
    assert executorch_model.latency_ms(carried).value_ms > 0


def test_the_end_of_a_search_times_executorch_trials_again_from_the_programs_it_kept(executorch_model, small,
                                                                                    study_maker, tmp_path):
    """``kept_files``: the program ExecuTorch timed (it cannot time the ONNX model, and the PyTorch module is not
    kept), none for a runtime that times the ONNX model; ``remeasure`` times a trial from its kept files and leaves
    out one whose study kept none (searched before the files were kept)."""
    from search.loop.remeasure import remeasure
    from search.results.outputs import trials_frame
    from search.storage.artifacts import store
    from search.storage.backends import backend

    kept = executorch_model.kept_files(small)
    assert set(kept) == {"model.pte"} and kept == executorch_model.export(small)
    assert OrtCpuCostModel().kept_files(small) == {} and OpenVinoCostModel().kept_files(small) == {}
    study = study_maker(tmp_path, "s", n_trials=0, failed=0)  # the uncompressed model and uniform_int8, no files
    url, artifacts = f"sqlite:///{tmp_path / 's' / 'study.db'}", store(tmp_path / "s")
    storage = backend(url)
    for source, files in zip(study.get_trials(), ({"model.onnx": small.onnx, **kept}, {"model.onnx": small.onnx})):
        # each again, its files uploaded while it runs (as a search does), then finished with its values
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, params=source.params,
                                                  distributions=source.distributions, user_attrs=source.user_attrs))
        trial = study.get_trials()[-1]
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
            optuna.artifacts.upload_artifact(artifact_store=artifacts, file_path=str(tmp_path / name),
                                             study_or_trial=trial, storage=storage)
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name("s"), trial.number)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, source.values)
    first = study.get_trials()[2]
    got = remeasure(study, trials_frame(study), storage=url, cost_model=executorch_model, out_dir=tmp_path / "s",
                    input_shape=SHAPE, example=small.example, tolerance={"accuracy": 0.001}, n_val=1000)
    table = pd.read_csv(tmp_path / "s" / "remeasured.csv", keep_default_na=False)
    assert got["remeasured_trials"] == 1 and table["number"].tolist() == [first.number]
    assert (table["latency_remeasured_ms"] > 0).all()


def test_a_missing_executorch_is_a_one_line_error_naming_the_package_and_the_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch", None)  # what `import executorch` meets where it is not installed
    with pytest.raises(ValueError, match=r"'executorch'.*uv sync --extra runtimes") as err:
        ExecuTorchCostModel()
    assert "\n" not in str(err.value)
