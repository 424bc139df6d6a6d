"""Students cut from the teacher (space.student.family=derived) through the real pipeline at the smoke budget: a
torchvision ResNet-18 teacher trained on 2,560 images, one student trial with blocks dropped and a quarter of the
channels removed, trained, exported and picked into a verified bundle that rebuilds with the same cuts."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

pytestmark = pytest.mark.slow  # a real smoke search and pick: in make test, out of -m "not slow"
CONF = str(Path(__file__).resolve().parents[2] / "conf")
SMALL = ["experiment=smoke", "model.train.epochs=1", "data.train_size=2560"]


def cfg(results: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[*SMALL, f"results_dir={results}", *overrides])


def test_the_derived_family_is_chosen_by_name_with_its_init(tmp_path):
    from search.app import setup
    from spaces import DerivedFamily

    s = setup(cfg(tmp_path, "model=resnet8", "space=all", "space.student.family=derived", "space.student.init=scratch"))
    family = s.space.family
    assert isinstance(family, DerivedFamily) and family.init == "scratch" and family.blocks == ["layers.0"]
    assert family.choices == {"depth": (0.0, 0.25, 0.5), "width": (0.0, 0.25, 0.5)}  # conf/space/family/derived.yaml
    assert len(family.calibration) == s.cfg.calibration_samples  # training images, not random ones
    assert s.space.family.teacher is s.net  # ranked on the teacher as trained in place later
    with pytest.raises(ValueError, match=r"space.student.family: no family config 'nope'; options: \['derived'\]"):
        setup(cfg(tmp_path, "model=resnet8", "space=student", "space.student.family=nope"))
    with pytest.raises(ValueError, match=r"space.student.init must be one of \['inherit', 'scratch'\], got 'warm'"):
        setup(cfg(tmp_path, "model=resnet8", "space=student", "space.student.family=derived", "space.student.init=warm"))


# one architecture, so that the one trial drops 3 of the 5 blocks (depth 0.5, halves up) and a quarter of the channels
RESNET18 = ["model=torchvision", "model.net.name=resnet18", "space=student", "study.name=derived18",
            "study.n_trials=1", "study.baselines=false", "guided.students=0",
            "space.student.family={_target_:spaces.DerivedFamily,choices:{depth:[0.5],width:[0.25]}}"]
BLOCKS = ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]  # same shape in as out (28 x 28 images)


def test_a_resnet18_teacher_yields_students_with_fewer_blocks_per_stage_that_train_export_and_pick(tmp_path):
    """Issue 35: a student of a torchvision ResNet-18 with 3 of its 5 droppable blocks dropped by importance and a
    quarter of every channel group removed, trained, exported and picked into a verified bundle that rebuilds with
    the same blocks dropped and channels removed, from what it stores."""
    from search.pick.bundle import load_model
    from search.pick.picker import pick
    from search.run import run

    out = run(cfg(tmp_path, *RESNET18))
    df = pd.read_csv(out / "trials.csv", keep_default_na=False)
    trial = df[df["baseline"] == ""].iloc[0]
    assert trial["state"] == "COMPLETE" and trial["student.depth"] == 0.5, trial.to_dict()
    ranking = pd.read_csv(out / "importance.csv")  # the block ranking, kept with the study and drawn in its report
    assert list(ranking["block"]) == BLOCKS and (ranking["importance"] > 0).all()
    assert 'id="fig-blocks"' in (out / "report.html").read_text()

    picked = pick(cfg(tmp_path, *RESNET18, f"pick.trial={trial['number']}"))
    report = picked.report
    assert [r for r in report["reasons"] if not r.startswith("latency")] == []
    assert report["student"]["init"] == "inherit" and report["student"]["architecture"]["depth"] == 0.5
    assert "cut from the teacher with its weights" in (picked.path / "README.md").read_text()
    structure = OmegaConf.load(picked.path / "config.yaml").structure
    dropped = OmegaConf.to_container(structure.dropped_blocks)
    assert sum(len(v) for v in dropped.values()) == 3 and structure.pruned_channels
    assert dropped == {k: v for k, v in dropped.items() if k in {b.rpartition(".")[0] for b in BLOCKS}}
    loaded = load_model(picked.path)  # the architecture from config.yaml, on untrained weights: the stored cuts
    kept = {b: not isinstance(loaded.get_submodule(b), nn.Identity) for b in BLOCKS}
    assert sum(not k for k in kept.values()) == 3 and all(isinstance(loaded.get_submodule(f"{s}.{i}"), nn.Identity)
                                                          == (i in v) for s, v in dropped.items() for i in v)
    assert sum(1 for s in ("layer1", "layer2", "layer3", "layer4") for b in loaded.get_submodule(s)
               if not isinstance(b, nn.Identity)) == 8 - 3  # fewer blocks per stage
    first = next(m for m in loaded.fc.modules() if isinstance(m, nn.Linear))  # the classifier, maybe factorized
    assert first.in_features == 384  # 512 channels less a quarter
    assert (picked.path / "model.onnx").stat().st_size > 0
