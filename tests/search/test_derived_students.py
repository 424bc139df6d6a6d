"""Students cut from the teacher (space.student.family=derived) through the real pipeline at the smoke budget: a
ResNet-8 teacher trained on 2,560 images, one student trial with a block dropped and a quarter of the channels
removed, trained, exported and picked into a verified bundle that rebuilds with the same block dropped."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

pytestmark = pytest.mark.slow  # a real smoke search and pick: in make test, out of -m "not slow"
CONF = str(Path(__file__).resolve().parents[2] / "conf")
SMALL = ["experiment=smoke", "model=resnet8", "model.train.epochs=1", "data.train_size=2560"]
# one architecture, so that the one trial drops ResNet-8's one droppable block (layers.0): depth 0.5 of 1 block
DERIVED = ["space=student", "space.student.family={_target_:spaces.DerivedFamily,choices:{depth:[0.5],width:[0.25]}}",
           "study.name=derived", "study.n_trials=1", "study.baselines=false"]


def cfg(results: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[*SMALL, f"results_dir={results}", *overrides])


def test_the_derived_family_is_chosen_by_name_with_its_init(tmp_path):
    from search.app import setup
    from spaces import DerivedFamily

    s = setup(cfg(tmp_path, "space=all", "space.student.family=derived", "space.student.init=scratch"))
    family = s.space.family
    assert isinstance(family, DerivedFamily) and family.init == "scratch" and family.blocks == ["layers.0"]
    assert family.choices == {"depth": (0.0, 0.25, 0.5), "width": (0.0, 0.25, 0.5)}  # conf/space/family/derived.yaml
    assert len(family.calibration) == s.cfg.calibration_samples  # training images, not random ones
    assert s.space.family.teacher is s.net  # ranked on the teacher as trained in place later
    with pytest.raises(ValueError, match=r"space.student.family: no family config 'nope'; options: \['derived'\]"):
        setup(cfg(tmp_path, "space=student", "space.student.family=nope"))
    with pytest.raises(ValueError, match=r"space.student.init must be one of \['inherit', 'scratch'\], got 'warm'"):
        setup(cfg(tmp_path, "space=student", "space.student.family=derived", "space.student.init=warm"))


def test_a_student_cut_from_a_resnet8_trains_exports_and_is_picked_into_a_bundle_that_rebuilds_it(tmp_path):
    from search.pick.bundle import load_model
    from search.pick.picker import pick
    from search.run import run

    out = run(cfg(tmp_path, *DERIVED))
    df = pd.read_csv(out / "trials.csv", keep_default_na=False)
    trial = df[df["baseline"] == ""].iloc[0]
    assert trial["state"] == "COMPLETE" and trial["student.depth"] == 0.5, trial.to_dict()
    ranking = pd.read_csv(out / "importance.csv")  # the block ranking, kept with the study and drawn in its report
    assert list(ranking["block"]) == ["layers.0"] and ranking["importance"].iloc[0] > 0
    assert 'id="fig-blocks"' in (out / "report.html").read_text()

    picked = pick(cfg(tmp_path, *DERIVED, f"pick.trial={trial['number']}"))
    report = picked.report
    assert [r for r in report["reasons"] if not r.startswith("latency")] == []
    assert report["student"]["init"] == "inherit" and report["student"]["architecture"]["depth"] == 0.5
    assert "cut from the teacher with its weights" in (picked.path / "README.md").read_text()
    structure = OmegaConf.load(picked.path / "config.yaml").structure
    assert OmegaConf.to_container(structure.dropped_blocks) == {"layers": [0]} and structure.pruned_channels
    loaded = load_model(picked.path)  # the architecture from config.yaml, on untrained weights: the stored cuts
    assert isinstance(loaded.layers[0], nn.Identity) and not isinstance(loaded.layers[1], nn.Identity)
    first = next(m for m in loaded.fc.modules() if isinstance(m, nn.Linear))  # the classifier, maybe factorized
    assert first.in_features == 48  # 64 channels less a quarter
