"""Bad input: a one-line error naming the key, the value and what is allowed; exit != 0; nothing written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cli(tmp_path: Path, env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search", "experiment=smoke", f"results_dir={tmp_path / 'results'}", *overrides],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
        )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["space.knobs.sparsity.include=[nolayer.*]"], ["space.knobs.sparsity.include", "nolayer.*", "features.0"]),
        (["space.knobs.bits.choices=[4,9]"], ["space.knobs.bits.choices", "9", "allowed"]),
        (["space.knobs.sparsity.high=1.0"], ["space.knobs.sparsity.high", "1.0", "[0, 1)"]),
        (["space.knobs.channels.high=1.5"], ["space.knobs.channels", "1.5"]),
        (["data.root=/nonexistent/fmnist", "data.download_dir=null"], ["data.root", "/nonexistent/fmnist", "apt-get install dataset-fashion-mnist"]),
        (["study.n_trials=-2"], ["study.n_trials", "-2"]),
        (["study.constraints.max_accuracy_drop=5"], ["study.constraints.max_accuracy_drop", "5", "[0, 1)"]),
        (["space=all", "distill.alpha=1.5"], ["distill.alpha", "1.5", "[0, 1]"]),
        (["space=all", "distill.steps=0"], ["distill.steps", "0"]),
        (["space=all", "distill.steps=[200,0]"], ["distill.steps", "[0]", "integers >= 1"]),
        (["space=all", "space.arch=[teacher,pupil]"], ["space.arch", "pupil", "'student'"]),
        (["space=all", "space.student.knobs=[bits,nope]"], ["space.student.knobs", "nope", "bits"]),
        (["space=all", "model.student=null"], ["model.student", "cnn", "space.student.family"]),
        (["space=all", "model.student.choices.width_mult=[]"], ["model.student.choices.width_mult", "[]"]),
        (["space=all", "model.student.choices.kernel_size=[3,4]"], ["model.student", "kernel_size"]),
        (["early_stopping.checkpoints=[0.5,1.5]"], ["early_stopping.checkpoints", "1.5", "(0, 1)"]),
        (["space=all", "distill.teachers=[nosuchmodel]"], ["distill.teachers[0]", "nosuchmodel", "resnet8"]),
        (["hardware.batch_size=0"], ["hardware", "batch_size", "0"]),
        (["hardware.host_lock=/nonexistent/x.lock"], ["hardware.host_lock", "/nonexistent/x.lock", "existing"]),
        (["hardware=lut", "hardware.device=nowhere"], ["hardware.device", "nowhere", "python -m search.hardware build"]),
        (["hardware=analytic", "hardware.peak_tops.fp32=-1"], ["hardware.peak_tops", "-1", "fp32"]),
        pytest.param(["hardware=gpu"], ["hardware=gpu", "no CUDA device", "hardware=cpu"], marks=pytest.mark.skipif(
            __import__("torch").cuda.is_available(), reason="a GPU is present: hardware=gpu is valid here")),
    ],
)
def test_bad_input_one_line_error_and_nothing_written(tmp_path, overrides, expected, capsys):
    """Through the entry helper of ``python -m search``, in process (a subprocess per case cost 8 s of start-up
    each); each command runs once as a real subprocess below."""
    from search.cli import entry
    from search.run import run

    with pytest.raises(SystemExit) as exc:
        entry(run, argv=["experiment=smoke", f"results_dir={tmp_path / 'results'}", *overrides])
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for word in expected:
        assert word in lines[0], (word, lines[0])
    assert list(tmp_path.iterdir()) == []  # no results/, no Hydra outputs/


def test_openvino_without_the_package_is_one_line_naming_it_and_the_command(tmp_path, capsys, monkeypatch):
    """hardware=openvino where the runtimes extra is not installed (its import made to fail, as it would)."""
    from search.cli import entry
    from search.run import run

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(SystemExit) as exc:
        entry(run, argv=["experiment=smoke", f"results_dir={tmp_path / 'results'}", "hardware=openvino"])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert exc.value.code == 2 and len(lines) == 1, lines
    assert "hardware=openvino" in lines[0] and "openvino" in lines[0] and "uv sync --extra runtimes" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_unknown_sampler_is_refused_by_hydra(tmp_path, cli_env):
    proc = run_cli(tmp_path, cli_env, "sampler=annealing")
    assert proc.returncode != 0
    assert "sampler" in proc.stderr and "tpe" in proc.stderr  # Hydra lists the available options
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(("args", "expected"), [
    ([], "usage: python -m search.hardware {build|validate}"),
    (["rebuild"], "'rebuild'"),
    (["build", "hardware=cpu"], "python -m search.hardware needs hardware=lut"),
])
def test_lut_command_errors_are_one_line(tmp_path, cli_env, args, expected):
    proc = subprocess.run([sys.executable, "-m", "search.hardware", *args, f"results_dir={tmp_path / 'results'}"]
                          if args else [sys.executable, "-m", "search.hardware"],
                          cwd=tmp_path, capture_output=True, text=True, env=cli_env, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- every entry point, one shared helper

WRONG = [
    (["study=smoke"], ["study=smoke", "config section", "experiment=smoke", "study.name=smoke"]),
    (["study.n_trial=5"], ["study.n_trial=5", "no such key", "study.n_trials"]),
    (["stdy.name=x"], ["stdy.name=x", "did you mean study.name"]),
    (["recovery.steps=abc"], ["recovery.steps=abc", "integer"]),
    (["png=maybe"], ["png=maybe", "true or false"]),
    (["model=nonexistent"], ["model=nonexistent", "cnn", "resnet8"]),
    (["sampler=foo"], ["sampler=foo", "tpe", "nsga2"]),
    (["space=ful"], ["space=ful", "full", "compress"]),
    (["study.seed=1.5"], ["study.seed=1.5", "integer"]),
    (["hardware.isolate=/tmp/x"], ["hardware.isolate=/tmp/x", "true or false"]),
    (["distill.temperature=[2,hot]"], ["distill.temperature=hot", "number"]),
    (["distill.steps=[200,0.5]"], ["distill.steps=0.5", "integer"]),
]


@pytest.mark.parametrize(("overrides", "expected"), WRONG)
def test_a_wrong_override_is_one_line_naming_key_value_and_what_is_allowed(overrides, expected, capsys):
    from search.cli import entry

    ran = []
    with pytest.raises(SystemExit) as exc:
        entry(ran.append, argv=["experiment=smoke", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and ran == [] and len(err) == 1, err
    for word in expected:
        assert word in err[0], (word, err[0])


def test_a_searched_distillation_setting_takes_a_list_of_its_values():
    from search.cli import compose_checked

    # the documented python -m search space=all 'distill.temperature=[2,4,8]' was refused: "must be a number"
    cfg = compose_checked(["experiment=smoke", "distill.temperature=[2,4,8]", "distill.steps=[200,500]"])
    assert list(cfg.distill.temperature) == [2, 4, 8] and list(cfg.distill.steps) == [200, 500]


def test_a_key_whose_constructor_takes_a_string_takes_one_beside_its_default():
    from search.cli import compose_checked

    # hardware.host_lock defaults to true, and OrtCpuCostModel / CudaCostModel declare it bool | str (a lock file)
    assert compose_checked(["hardware.host_lock=/tmp/x.lock"]).hardware.host_lock == "/tmp/x.lock"
    assert compose_checked(["hardware=gpu", "hardware.host_lock=false"]).hardware.host_lock is False


@pytest.mark.slow
@pytest.mark.parametrize(("module", "args"), [
    ("search", ["study.n_trial=5"]),
    ("search.pick", ["study=smoke"]),
    ("search.report", ["recovery.steps=abc"]),
    ("search.report.dashboard", ["model=nonexistent"]),
    ("search.hardware", ["build", "stdy.name=x"]),
])
def test_every_entry_point_answers_a_wrong_override_in_one_line(tmp_path, cli_env, module, args):
    proc = subprocess.run([sys.executable, "-m", module, *args, f"results_dir={tmp_path / 'results'}"],
                          cwd=tmp_path, capture_output=True, text=True, env=cli_env, timeout=300)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("module", ["search", "search.pick", "search.report", "search.report.dashboard",
                                    "search.hardware"])
def test_a_wrong_override_is_answered_before_pytorch_loads(tmp_path, cli_env, module):
    """The command's task is imported once its command line has passed (``search/cli.py``, ``search/_lazy.py``):
    a typo costs half a second, not the four PyTorch and ONNX Runtime take to load."""
    args = ["build"] if module == "search.hardware" else []
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", module, *args, "stdy.name=x"],
                          cwd=tmp_path, capture_output=True, text=True, env=cli_env, timeout=300)
    assert proc.returncode == 2 and "error: stdy.name=x" in proc.stderr
    loaded = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "search.cli" in loaded and not loaded & {"torch", "onnxruntime", "optuna"}


# --------------------------------------------------------------------------- checkpoints and resumed studies


def _refused(tmp_path, capsys, *overrides) -> str:
    """The one line ``python -m search`` (in process) answers ``overrides`` with, exit 2, nothing written."""
    from search.cli import entry
    from search.run import run

    results = tmp_path / "results"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        entry(run, argv=["experiment=smoke", f"results_dir={results}", *overrides])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert exc.value.code == 2 and len(lines) == 1, lines
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    return lines[0]


@pytest.mark.parametrize(("target", "step"), [
    # Torch-Pruning's failure on ShuffleNetV2's channel shuffle, before the channels knob handled it
    ("spaces.ChannelKnob.eligible", "space.knobs.channels"),
    ("search.app.build_model", "model"),
])
def test_a_failure_inside_set_up_is_one_line_naming_the_step(tmp_path, capsys, monkeypatch, target, step):
    """Not bad input but an exception inside a step (a bug's, a library's): one line naming the step and, where one
    fails, the knob, exit 2, nothing written."""
    monkeypatch.setattr(target, lambda *args, **kwargs: 1 // 0)
    line = _refused(tmp_path, capsys)
    assert line == f"error: setup: {step}: ZeroDivisionError: integer division or modulo by zero"


def test_a_checkpoint_that_is_not_one_or_does_not_fit_is_one_line(tmp_path, tmp_path_factory, capsys):
    import torch

    files = tmp_path_factory.mktemp("checkpoints")
    (files / "notes.txt").write_text("not weights\n" * 20)
    torch.save(torch.nn.Linear(3, 2).state_dict(), files / "linear.pt")
    line = _refused(tmp_path, capsys, f"model.checkpoint={files / 'notes.txt'}")
    assert "model.checkpoint=" in line and "notes.txt" in line and "not a PyTorch state_dict file" in line
    line = _refused(tmp_path, capsys, f"model.checkpoint={files / 'linear.pt'}")
    assert "does not fit" in line and "missing" in line and "2 unexpected (weight, bias)" in line


def test_a_model_at_chance_is_refused_before_any_trial(tmp_path, tmp_path_factory, capsys):
    """A checkpoint whose head gives every image the same logits (it predicts one class: chance at best) stops the
    run after its validation accuracy is measured: one line naming the accuracy, chance and the keys to change,
    exit 2, no study, no results folder."""
    import torch

    from search.models import SmallCNN

    net = SmallCNN()
    torch.nn.init.zeros_(net.fc2.weight)
    torch.nn.init.zeros_(net.fc2.bias)
    path = tmp_path_factory.mktemp("constant") / "constant.pt"
    torch.save(net.state_dict(), path)
    line = _refused(tmp_path, capsys, f"model.checkpoint={path}")
    assert "scores 0." in line and "within noise of chance" in line and "1000 validation images" in line, line
    assert f"model.checkpoint (now {path})" in line and "model.train.epochs" in line and "model.train.lr" in line, line


def test_a_search_of_no_trial_trains_the_teacher_and_says_so(tmp_path, quick_teacher, caplog):
    """``study.n_trials=0 study.baselines=false`` (the teacher only) ends in a line saying nothing was searched; it
    stopped at ``error: 'accuracy'`` (a front of no trial sorted by a column no trial wrote)."""
    import logging

    from hydra import compose, initialize_config_dir

    from search._checks import CONF
    from search.run import run

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"), caplog.at_level(logging.INFO):
        out = run(compose("config", overrides=["experiment=smoke", f"results_dir={tmp_path / 'results'}",
                                               f"model.checkpoint={quick_teacher}", "study.n_trials=0",
                                               "study.baselines=false"]))
    assert "0 trials: nothing searched" in caplog.text
    assert json.loads((out / "summary.json").read_text())["trials"] == 0


def test_a_study_resumed_with_other_settings_is_refused_naming_them(tmp_path, capsys):
    from omegaconf import OmegaConf

    from search.cli import compose_checked

    out = tmp_path / "results" / "smoke"
    out.mkdir(parents=True)
    stored = compose_checked(["experiment=smoke", f"results_dir={tmp_path / 'results'}", "recovery.steps=7"])
    (out / "config.yaml").write_text(OmegaConf.to_yaml(stored, resolve=True))
    line = _refused(tmp_path, capsys, "study.n_trials=3")  # a longer run alone would resume
    assert "other settings" in line and "recovery.steps: 7 -> " in line and "study.resume=force" in line
    assert "study.n_trials" not in line
    line = _refused(tmp_path, capsys, "study.resume=maybe")
    assert "study.resume" in line and "maybe" in line


def test_a_forced_resume_keeps_both_configs(tmp_path):
    from omegaconf import OmegaConf

    from search.cli import compose_checked
    from search.loop.study import check_resume, config_changes, keep_config

    first = compose_checked(["experiment=smoke", "recovery.steps=7"])
    keep_config(first, tmp_path, {})
    assert check_resume(compose_checked(["experiment=smoke", "recovery.steps=7", "study.n_trials=9"]), tmp_path) == {}
    second = compose_checked(["experiment=smoke", "study.resume=force"])
    changes = check_resume(second, tmp_path)
    assert list(changes) == ["recovery.steps"] and changes["recovery.steps"][0] == 7
    keep_config(second, tmp_path, changes)
    assert OmegaConf.load(tmp_path / "config.1.yaml").recovery.steps == 7
    assert OmegaConf.load(tmp_path / "config.yaml").recovery.steps == second.recovery.steps
    assert config_changes({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == {"a.c": ("<absent>", 2)}


def test_a_study_resumes_with_another_host_lock_or_one_from_before_the_key(tmp_path):
    from omegaconf import OmegaConf

    from search.cli import compose_checked
    from search.loop.study import check_resume, keep_config

    before = OmegaConf.to_container(compose_checked(["experiment=smoke"]))
    del before["hardware"]["host_lock"]  # a study's config.yaml written before hardware.host_lock existed
    keep_config(OmegaConf.create(before), tmp_path, {})
    assert "host_lock" not in OmegaConf.load(tmp_path / "config.yaml").hardware
    assert check_resume(compose_checked(["experiment=smoke"]), tmp_path) == {}
    assert check_resume(compose_checked(["experiment=smoke", "hardware.host_lock=false"]), tmp_path) == {}


# --------------------------------------------------------------------------- --multirun: one study per job


def test_sweep_study_names_follow_the_jobs_overrides():
    from search.cli import compose_checked, sweep_study_name

    assert sweep_study_name("fashion-mnist-cnn", ["sampler=nsga2", "experiment=smoke", "study.n_trials=60"]) == \
        "fashion-mnist-cnn-experiment_smoke-sampler_nsga2"
    name = sweep_study_name("x", ["model.net.name=resnet18", "results_dir=/tmp/r", "data.root=/a b/c"])
    assert name == "x-data.root__a_b_c-model.net.name_resnet18"
    assert compose_checked([f"study.name={name}", f"report.studies=[{name},y]"]).study.name == name  # read back


@pytest.mark.parametrize(("extra", "names"), [
    ([], ["smoke-experiment_smoke-sampler_random", "smoke-experiment_smoke-sampler_tpe"]),
    (["study.share=true"], ["smoke", "smoke"]),
    (["study.name=mine"], ["mine", "mine"]),
])
def test_each_multirun_job_gets_its_own_study_unless_told_to_share(tmp_path, extra, names):
    """``python -m search --multirun sampler=tpe,random``: Hydra runs one job per sampler (in this process here);
    each searches its own study, not the first job's study resumed with another sampler."""
    from search.cli import _hydra_main

    seen = []
    _hydra_main(lambda cfg: seen.append(str(cfg.study.name)),
                ["--multirun", "experiment=smoke", "sampler=tpe,random", f"results_dir={tmp_path}", *extra])
    assert sorted(seen) == sorted(names)


def test_a_multirun_command_line_reaches_hydra_with_its_sweeps(tmp_path, monkeypatch):
    """``entry`` checks what it can before Hydra runs the jobs: a sweep (``sampler=tpe,random``) is not a value
    to compose, so it is left to Hydra, and each job gets one sampler."""
    from search.cli import entry

    seen = []
    monkeypatch.chdir(tmp_path)
    entry(lambda cfg: seen.append((str(cfg.study.name), cfg.sampler._target_.rsplit(".", 1)[-1])),
          argv=["--multirun", "experiment=smoke", "sampler=tpe,random", f"results_dir={tmp_path}"])
    assert sorted(seen) == [("smoke-experiment_smoke-sampler_random", "RandomSampler"),
                            ("smoke-experiment_smoke-sampler_tpe", "TPESampler")]


def test_a_hydra_flag_s_value_is_not_read_as_an_override(capsys):
    """``--cfg job`` (a flag and its value, as Hydra takes them): the config printed, no "not a valid override"."""
    from search.cli import entry
    from search.run import run

    entry(run, argv=["experiment=smoke", "study.worker=1", "--cfg", "job"])
    out = capsys.readouterr().out
    assert "name: smoke" in out and "worker: 1" in out
