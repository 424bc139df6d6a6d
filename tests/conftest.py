"""Shared fixtures."""
from __future__ import annotations

import io
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest

OBJECTIVES = ("accuracy", "size_bytes", "latency_ms")
DIRECTIONS = ("maximize", "minimize", "minimize")


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """The environment for ``python -m search...`` subprocesses: bytecode caching on (torch's
    import otherwise recompiles every time, ~7 s a process), warnings off so stderr is the error."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONWARNINGS": "ignore"}


# --------------------------------------------------------------------------- a study like a real one

LAYERS = ("features.0", "features.4", "fc1", "fc2")
_D = optuna.distributions
DISTRIBUTIONS = {
    **{f"channels.{fqn}": _D.FloatDistribution(0.0, 0.75, step=0.125) for fqn in LAYERS[:3]},
    **{f"rank.{fqn}": _D.CategoricalDistribution([0.125, 0.25, 0.5, 1.0]) for fqn in LAYERS},
    **{f"sparsity.{fqn}": _D.FloatDistribution(0.0, 0.9) for fqn in LAYERS},
    **{name: dist for fqn in LAYERS for name, dist in (
        (f"bits.{fqn}", _D.CategoricalDistribution([2, 3, 4, 6, 8, 32])),
        (f"abits.{fqn}", _D.CategoricalDistribution([8, 32])))},
}
UNCOMPRESSED = {**{f"channels.{f}": 0.0 for f in LAYERS[:3]}, **{f"rank.{f}": 1.0 for f in LAYERS},
                **{f"sparsity.{f}": 0.0 for f in LAYERS}, **{f"{k}.{f}": 32 for f in LAYERS for k in ("bits", "abits")}}


def _values(p: dict) -> tuple[float, float, float]:
    """Plausible objectives for a configuration: fewer bits, more sparsity, fewer channels -> smaller."""
    bits = np.mean([p[f"bits.{f}"] for f in LAYERS]) / 32
    keep = 1 - np.mean([p[f"sparsity.{f}"] for f in LAYERS])
    chans = 1 - np.mean([p[f"channels.{f}"] for f in LAYERS[:3]])
    rank = np.mean([p[f"rank.{f}"] for f in LAYERS])
    size = 966_728 * bits * (0.3 + 0.7 * keep) * chans * (0.4 + 0.6 * rank)
    latency = 6.0 * chans * (0.5 + 0.5 * rank) * (0.6 if all(p[f"abits.{f}"] == 8 for f in LAYERS) else 1.0)
    accuracy = 0.931 - 0.05 * (1 - keep) ** 2 - 0.04 * (1 - chans) - 0.03 * (1 - rank) - 0.02 * (bits < 0.2)
    return float(accuracy), float(round(size)), float(latency)


def make_study(results: Path, name: str, *, n_trials: int = 14, seed: int = 0, failed: int = 1) -> optuna.Study:
    """``results/<name>/study.db`` holding a study shaped like a real search's: metric names, the
    uncompressed and one uniform baseline first, then sampled trials with the same params and user_attrs
    a real trial records, and ``failed`` FAIL trials; plus the config.yaml a search writes."""
    out = results / name
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}", directions=list(DIRECTIONS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(OBJECTIVES))
    study.set_user_attr("cost_model", {"cost_model": "cpu", "device": "test CPU", "threads": 2, "batch_size": 64})
    rng = np.random.default_rng(seed)
    int8 = {**UNCOMPRESSED, **{f"{k}.{f}": 8 for f in LAYERS for k in ("bits", "abits")}}
    configs = [("uncompressed", UNCOMPRESSED), ("uniform_int8", int8)]
    for _ in range(n_trials):
        p = {}
        for key, dist in DISTRIBUTIONS.items():
            if isinstance(dist, _D.CategoricalDistribution):
                p[key] = dist.choices[rng.integers(len(dist.choices))]
            else:
                p[key] = float(np.round(rng.uniform(dist.low, dist.high) / (dist.step or 0.01)) * (dist.step or 0.01))
        configs.append(("", p))
    for baseline, p in configs:
        attrs = {"int8_layers": sum(p[f"bits.{f}"] <= 8 and p[f"abits.{f}"] == 8 for f in LAYERS),
                 "params": 241_546, "latency_spread_ms": 0.02, "macs": 7_599_872}
        if baseline:
            attrs["baseline"] = baseline
        study.add_trial(optuna.trial.create_trial(params=p, distributions=DISTRIBUTIONS, values=_values(p),
                                                  user_attrs=attrs))
    for _ in range(failed):
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL, params=configs[-1][1], distributions=DISTRIBUTIONS,
            user_attrs={"error": "RuntimeError: ONNX export failed"}))
    (out / "config.yaml").write_text(json.dumps({  # JSON is YAML
        "model": {"name": "cnn"}, "data": {"name": "fashion-mnist", "val_size": 5000, "seed": 0},
        "sampler": {"_target_": "optuna.samplers.TPESampler", "multivariate": True, "seed": seed},
        "study": {"name": name, "n_trials": n_trials, "baselines": True, "timeout_s": None},
        "recovery": {"steps": 500, "qat_steps": 100},
    }))
    return study


@pytest.fixture(scope="session")
def study_maker() -> Callable[..., optuna.Study]:
    """``make_study`` itself, for module-scoped fixtures (tests cannot import conftest)."""
    return make_study


@pytest.fixture
def synthetic_study(tmp_path) -> Callable[..., optuna.Study]:
    """``synthetic_study(name, **kw)``: a study like ``make_study``'s under ``tmp_path / "results"``."""
    return lambda name="synthetic", **kw: make_study(tmp_path / "results", name, **kw)


# --------------------------------------------------------------------------- a real headless Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One headless Chromium per test module; skipped where there is none (nothing is downloaded)."""
    from search.report.browser import Browser, find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium/Chrome found on PATH or at /usr/bin/chromium (apt-get install -y chromium)")
    with Browser(width=1500, height=1000, timeout_s=90) as b:
        yield b


def blank(png: bytes) -> bool:
    """A screenshot with (almost) nothing drawn: few colours or almost all white."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    arr = np.asarray(img)
    colours = len(img.getcolors(maxcolors=1 << 20) or [])
    ink = float((arr.min(axis=2) < 235).mean())
    return colours < 16 or ink < 0.01


_FIGURES_READY = ("(() => { const d = [...document.querySelectorAll('.js-plotly-plot')];"
                  " return d.length > 0 && d.every(x => x._fullLayout) ? d.length : 0; })()")


def open_report(b, path: Path) -> dict:
    """Load ``path`` and wait until every plotly figure is drawn; returns what the page shows."""
    b.errors.clear()
    b.open(path.resolve().as_uri())
    b.wait_for(_FIGURES_READY)
    b.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    time.sleep(0.3)  # WebGL scenes draw a frame later
    return b.evaluate("""(() => ({
        figures: [...document.querySelectorAll('.js-plotly-plot')].map(d => {
            const r = d.getBoundingClientRect();
            return {id: d.id, x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height,
                    traces: d.data.length};
        }),
        canvases: [...document.querySelectorAll('.gl-container canvas')].map(c => {
            const r = c.getBoundingClientRect();
            return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height};
        }),
        sections: [...document.querySelectorAll('section')].map(s => s.id),
        scripts_with_src: document.querySelectorAll('script[src]').length,
    }))()""")


def assert_rendered(b, shown: dict) -> None:
    """Every figure, and every WebGL canvas, has something drawn in its screenshot."""
    assert shown["figures"], "no figure on the page"
    for fig in shown["figures"]:
        clip = {k: fig[k] for k in ("x", "y", "width", "height")}
        assert fig["width"] > 100 and fig["height"] > 100, fig
        assert fig["traces"] > 0, f"{fig['id']} has no trace"
        assert not blank(b.screenshot(clip)), f"{fig['id']} looks blank"
    for canvas in shown["canvases"]:
        if canvas["width"] > 50 and canvas["height"] > 50:
            assert not blank(b.screenshot(canvas)), f"a WebGL canvas looks blank: {canvas}"


@pytest.fixture
def report_page(browser) -> Callable[[Path], dict]:
    """``report_page(path)``: load a report in Chromium, check it rendered, return what it shows."""
    def check(path: Path) -> dict:
        shown = open_report(browser, path)
        assert_rendered(browser, shown)
        assert browser.errors == [], browser.errors
        assert shown["scripts_with_src"] == 0  # nothing fetched: works offline
        return shown

    return check


@pytest.fixture(scope="session")
def quick_teacher(tmp_path_factory) -> Path:
    """A SmallCNN teacher trained on 6,400 Fashion-MNIST images (seconds, not a full epoch's minutes), saved as a
    checkpoint for ``model.checkpoint=``: accuracies of compressed trials still spread."""
    import torch

    from search import data as data_module
    from search.models import SmallCNN
    from search.training.loops import train_teacher

    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.manual_seed(0)
    splits = data_module.load(val_size=1000, seed=0)
    net = train_teacher(SmallCNN(), splits.train_x[:6400], splits.train_y[:6400], epochs=1, lr=0.05,
                        batch_size=128, seed=0, log=lambda _: None)
    torch.save(net.state_dict(), path)
    # its logits on the smoke split's training images, as a search computes and caches them (18-35 s a search on
    # 2 cores): ``primed`` puts them into a results folder's cache
    from search.training.teacher import cache_key, cached_logits, weights_key

    net.eval()
    cached_logits(net, splits.train_x, cache_key(weights_key(net), splits.fingerprint), path.parent / "cache")
    return path


@pytest.fixture(scope="session")
def primed(quick_teacher) -> Callable[[Path], Path]:
    """``primed(results)``: ``results/cache/logits`` holding the quick teacher's logits on the smoke split (hard
    links), so that a search on that teacher (``model.checkpoint=``) does not compute them again; ``results``."""

    def prime(results: Path) -> Path:
        source = quick_teacher.parent / "cache" / "logits"
        (Path(results) / "cache" / "logits").mkdir(parents=True, exist_ok=True)
        for f in source.glob("*.pt"):
            target = Path(results) / "cache" / "logits" / f.name
            if not target.exists():
                os.link(f, target)
        return Path(results)

    return prime


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory, quick_teacher, primed) -> Callable[[Path], Path]:
    """``smoke_study(results)``: ``results`` holding a copy of one smoke search, run once per session
    (``experiment=smoke``: the baselines and 3 searched trials, ``model.checkpoint=`` the quick teacher) in
    ``results/smoke``; each test module copies it rather than searching again (35-50 s a search on 2 cores)."""
    import shutil

    from hydra import compose, initialize_config_dir

    from search.run import run

    source = primed(tmp_path_factory.mktemp("smoke-once"))
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        run(compose("config", overrides=["experiment=smoke", f"results_dir={source}",
                                         f"model.checkpoint={quick_teacher}"]))

    def copy(results: Path) -> Path:
        shutil.copytree(source, results, dirs_exist_ok=True)
        return Path(results)

    return copy
