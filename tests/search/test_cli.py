"""Bad input: a one-line error naming the key, the value and what is allowed; exit != 0; nothing written."""
from __future__ import annotations

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
        (["space=all", "distill.alpha=1.5"], ["distill.alpha", "1.5", "[0, 1]"]),
        (["space=all", "distill.steps=0"], ["distill.steps", "0"]),
        (["space=all", "space.arch=[teacher,pupil]"], ["space.arch", "pupil", "'student'"]),
        (["space=all", "space.student.knobs=[bits,nope]"], ["space.student.knobs", "nope", "bits"]),
        (["space=all", "model.student=null"], ["model.student", "cnn", "space.student.family"]),
        (["space=all", "model.student.choices.width_mult=[]"], ["model.student.choices.width_mult", "[]"]),
        (["space=all", "model.student.choices.kernel_size=[3,4]"], ["model.student", "kernel_size"]),
        (["early_stopping.checkpoints=[0.5,1.5]"], ["early_stopping.checkpoints", "1.5", "(0, 1)"]),
        (["space=all", "distill.teachers=[nosuchmodel]"], ["distill.teachers[0]", "nosuchmodel", "resnet8"]),
        (["hardware.batch_size=0"], ["hardware", "batch_size", "0"]),
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
