"""Accuracy, the ONNX Runtime CPU cost model (no timing assertions) and the MAC/parameter counts."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import spaces
from objectives import Accuracy, ArtifactSize, Latency, Outcome, count_macs, count_params
from objectives.hardware import Measurement, OrtCpuCostModel
from spaces.materialize import export_onnx


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    yield
    torch.set_num_threads(threads)


class Constant(nn.Module):
    """Always predicts class ``k`` (its logit is the largest), whatever the input."""

    def __init__(self, k: int, classes: int = 5) -> None:
        super().__init__()
        self.k, self.classes = k, classes
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        logits = torch.zeros(len(x), self.classes)
        logits[:, self.k] = 1.0
        return logits


# --------------------------------------------------------------------------- accuracy


def test_accuracy_of_a_constant_predictor_is_the_share_of_that_label():
    labels = torch.tensor([3, 0, 3, 1, 3, 4, 2, 0, 1, 3])  # four 3s out of ten
    images = torch.randn(len(labels), 1, 4, 4)
    acc = Accuracy(images=images, labels=labels, batch_size=3)
    model = Constant(3).train()
    assert acc.of(model) == pytest.approx(0.4)
    assert model.calls == [3, 3, 3, 1]  # batched, every image seen once
    assert model.training  # the mode is given back
    assert Accuracy(images=images, labels=labels)(Outcome(Constant(0), None)) == pytest.approx(0.2)
    assert Accuracy(images=images, labels=labels).of(Constant(2)) == pytest.approx(0.1)


def test_accuracy_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        Accuracy(images=torch.zeros(3, 1, 4, 4), labels=torch.zeros(2, dtype=torch.long))


def test_accuracy_of_an_onnx_session_matches_pytorch():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    images = torch.randn(50, 1, 4, 4)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    labels = predicted.clone()
    labels[:10] = (labels[:10] + 1) % 5  # exactly 10 of 50 wrong
    acc = Accuracy(images=images, labels=labels, batch_size=16)
    assert acc.of(model) == pytest.approx(0.8)
    session = ort.InferenceSession(export_onnx(model, (1, 1, 4, 4)), providers=["CPUExecutionProvider"])
    assert acc.onnx(session) == pytest.approx(0.8)


# --------------------------------------------------------------------------- latency


@pytest.fixture(scope="module")
def artifact() -> spaces.Artifact:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    calibration = np.random.default_rng(0).standard_normal((8, 1, 8, 8), dtype=np.float32)
    return spaces.materialize(model, input_shape=(1, 1, 8, 8), calibration=calibration)


def test_cost_model_measures_a_positive_median_over_repeats(artifact):
    cost = OrtCpuCostModel(batch_size=2, threads=1, warmup=1, repeats=7, retries=1, settle_s=0)
    m = cost.latency_ms(artifact)
    assert isinstance(m, Measurement)
    assert len(m.samples) == 7
    assert all(t > 0 for t in m.samples)
    assert m.value_ms > 0
    assert m.value_ms == pytest.approx(float(np.median(m.samples)))
    q1, q3 = np.percentile(m.samples, [25, 75])
    assert m.spread_ms >= 0 and m.spread_ms == pytest.approx(float(q3 - q1))
    assert Latency(cost_model=OrtCpuCostModel(batch_size=1, threads=1, warmup=0, repeats=3, retries=0, settle_s=0))(Outcome(None, artifact)).value_ms > 0


def test_cost_model_feeds_a_batch_of_the_configured_size(artifact, monkeypatch):
    from objectives.hardware import _ort

    cost = OrtCpuCostModel(batch_size=5, threads=1, warmup=0, repeats=2, retries=0, settle_s=0)
    shapes = []
    real_session = _ort.session

    def spy(onnx_bytes, **kwargs):
        session = real_session(onnx_bytes, **kwargs)

        class Spy:
            def get_inputs(self):
                return session.get_inputs()

            def run(self, names, feed):
                shapes.extend(v.shape for v in feed.values())
                return session.run(names, feed)

        return Spy()

    monkeypatch.setattr(_ort, "session", spy)
    cost.latency_ms(artifact)
    assert shapes and set(shapes) == {(5, 1, 8, 8)}
    assert len(shapes) == 2  # no warm-up, two repeats, no retry


def test_cost_model_times_the_artifacts_real_examples(artifact):
    from objectives.hardware import _ort

    batch = _ort.example_batch(artifact.example, artifact.input_shape, 20)
    assert batch.shape == (20, 1, 8, 8) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[:8], artifact.example)  # the calibration samples, repeated to fill
    np.testing.assert_array_equal(batch[8:16], artifact.example)
    random = _ort.example_batch(None, (1, 1, 8, 8), 3)
    assert random.shape == (3, 1, 8, 8) and np.isfinite(random).all()


def test_cost_model_describe_names_where_and_how():
    d = OrtCpuCostModel(batch_size=16, threads=1, warmup=3, repeats=9).describe()
    assert d["device"] and isinstance(d["device"], str)
    assert d["runtime"] == f"onnxruntime {ort.__version__}"
    assert d["threads"] == 1 and d["batch_size"] == 16
    assert d["warmup"] == 3 and d["repeats"] == 9
    assert d["neighbours"].startswith("host lock ")  # measurements queue behind the host's lock by default


@pytest.mark.parametrize("key", ["batch_size", "threads", "repeats"])
@pytest.mark.parametrize("value", [0, -1, 2.0])
def test_cost_model_rejects_non_positive_settings(key, value):
    with pytest.raises(ValueError, match=key) as err:
        OrtCpuCostModel(**{key: value})
    assert repr(value) in str(err.value)


def test_cost_model_rejects_bad_protocol():
    for kwargs in ({"warmup": -1}, {"retries": -1}, {"max_rel_spread": 0.0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            OrtCpuCostModel(**kwargs)


# --------------------------------------------------------------------------- size, MACs, params


def test_artifact_size_is_the_packed_length(artifact):
    assert ArtifactSize()(Outcome(None, artifact)) == float(len(artifact.packed))
    assert ArtifactSize.direction == "minimize" and Accuracy.direction == "maximize"
    assert Latency.direction == "minimize"


def test_count_macs_conv_and_linear():
    assert count_macs(nn.Conv2d(1, 8, 3, padding=1), (1, 1, 28, 28)) == 28 * 28 * 8 * 9
    assert count_macs(nn.Linear(10, 5), (1, 10)) == 50
    # strided, grouped and stacked layers add up
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, stride=2, padding=1),  # 14 x 14 x 8 outputs, 4 * 9 MACs each
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 1 * 9 MACs each
        nn.Flatten(),
        nn.Linear(8 * 14 * 14, 10),
    )
    expected = 14 * 14 * 8 * 36 + 14 * 14 * 8 * 9 + 8 * 14 * 14 * 10
    assert count_macs(model, (1, 4, 28, 28)) == expected


def test_count_params_counts_all_and_nonzero():
    layer = nn.Linear(10, 5)
    with torch.no_grad():
        layer.weight[:2] = 0.0  # 20 zeros
    assert count_params(layer) == (55, 35)
