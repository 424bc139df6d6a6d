"""The distillation trainer: the loss, a student trained on a toy budget, determinism, checkpoints, ensembles."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from search.data import Splits
from search.models import SmallCNN
from search.pipeline import Distillation
from search.training.teacher import build_model, ensemble_logits
from search.training.loops import distill, distillation_loss, logits_of


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def prototypes(n: int, seed: int, noise: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable toy images: one fixed random image per class plus noise."""
    protos = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    return protos[y] + noise * torch.randn(n, 1, 28, 28, generator=g), y


def student() -> torch.nn.Module:
    torch.manual_seed(0)
    return SmallCNN(widths=(8, 16, 32), hidden=32, width_mult=0.5, separable=True)


def test_distillation_loss_at_t1_alpha0_is_plain_cross_entropy():
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(32, 10, generator=g), torch.randn(32, 10, generator=g), torch.randint(0, 10, (32,), generator=g)
    assert torch.equal(distillation_loss(s, t, y, temperature=1.0, alpha=0.0), F.cross_entropy(s, y))
    # the soft term: zero when the student matches the teacher, T^2 x KL otherwise (Hinton et al. 2015)
    assert distillation_loss(t, t, y, temperature=4.0, alpha=1.0).abs() < 1e-6
    kl = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean")
    torch.testing.assert_close(distillation_loss(s, t, y, temperature=4.0, alpha=1.0), 16 * kl)
    mixed = distillation_loss(s, t, y, temperature=2.0, alpha=0.3)
    torch.testing.assert_close(mixed, 0.3 * 4 * F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1),
                                                         reduction="batchmean") + 0.7 * F.cross_entropy(s, y))


def test_a_student_trains_on_a_toy_budget_deterministically_under_a_seed():
    x, y = prototypes(512, seed=1)
    vx, vy = prototypes(256, seed=2)
    teacher_logits = F.one_hot(y, 10).float() * 5  # a confident teacher that is always right
    kw = dict(steps=40, lr=0.05, batch_size=32, temperature=4.0, alpha=0.5)
    a, b, c = student(), student(), student()
    distill(a, x, y, teacher_logits, seed=0, **kw)
    distill(b, x, y, teacher_logits, seed=0, **kw)
    distill(c, x, y, teacher_logits, seed=1, **kw)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))
    accuracy = (logits_of(a, vx).argmax(1) == vy).float().mean()
    assert accuracy > 0.5, accuracy  # chance is 0.1
    hard = student()
    distill(hard, x, y, None, seed=0, **{**kw, "alpha": 0.0})  # hard labels only: no teacher logits needed
    assert (logits_of(hard, vx).argmax(1) == vy).float().mean() > 0.5


def test_checkpoints_see_the_model_and_may_stop_training():
    x, y = prototypes(256, seed=1)
    seen = []

    class Stop(Exception):
        pass

    def check(step, model):
        seen.append((step, model.training))
        if step == 10:
            raise Stop

    with pytest.raises(Stop):
        distill(student(), x, y, None, steps=20, lr=0.05, batch_size=32, temperature=1.0, alpha=0.0, seed=0,
                checkpoints=(5, 10, 15), on_checkpoint=check)
    assert seen == [(5, True), (10, True)]
    with pytest.raises(ValueError, match="needs teacher logits"):
        distill(student(), x, y, None, steps=5, lr=0.05, batch_size=32, temperature=1.0, alpha=0.5, seed=0)


def test_distillation_settings_are_checked_and_lists_are_searched():
    d = Distillation(epochs=2, batch_size=100, temperature=[2, 4], alpha=0.5)
    assert d.total_steps(1000) == 20 and Distillation(steps=7).total_steps(10**6) == 7
    assert d.searched() == {"temperature": (2.0, 4.0)}
    assert d.value("temperature", {"distill.temperature": 2.0}) == 2.0 and d.value("alpha", {}) == 0.5
    for kw, key in (({"alpha": 1.5}, "distill.alpha"), ({"temperature": 0}, "distill.temperature"),
                    ({"steps": 0}, "distill.steps"), ({"epochs": -1}, "distill.epochs"),
                    ({"temperature": "hot"}, "distill.temperature"), ({"steps": [100, 0]}, r"distill.steps: \[0\]"),
                    ({"steps": [100.5]}, "distill.steps"), ({"epochs": [1, 0]}, "distill.epochs"),
                    ({"epochs": []}, "distill.epochs")):
        with pytest.raises(ValueError, match=key):
            Distillation(**kw)


def test_a_students_budget_may_be_searched_in_steps_or_epochs():
    d = Distillation(steps=[100, 400], batch_size=100)
    assert d.searched() == {"steps": (100, 400)}
    assert d.total_steps(1000, {"distill.steps": 400}) == 400 and d.total_steps(1000, {"distill.steps": 100}) == 100
    e = Distillation(epochs=[0.5, 2], batch_size=100)
    assert e.searched() == {"epochs": (0.5, 2.0)} and e.total_steps(1000, {"distill.epochs": 2.0}) == 20
    assert Distillation(epochs=[0.5, 2], steps=7).searched() == {}  # steps win over epochs, as for numbers
    with pytest.raises(KeyError):
        d.total_steps(1000, {})  # a searched budget is the trial's: no default stands in for it


def test_an_ensemble_averages_the_teachers_logits(tmp_path):
    x, y = prototypes(64, seed=3)
    splits = Splits(x, y, x, y, x, y, source="toy")
    cfg = OmegaConf.create({"name": "small", "net": {"_target_": "search.models.SmallCNN", "widths": [8, 16, 32],
                                                     "hidden": 16}, "checkpoint": str(tmp_path / "w.pt"),
                            "train": {"epochs": 1, "lr": 0.1, "batch_size": 32, "seed": 0}})
    member = build_model(cfg, splits)
    torch.save(member.state_dict(), tmp_path / "w.pt")
    first = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    mean = ensemble_logits(first, [cfg, cfg], splits, "toy", tmp_path / "cache", log=lambda _: None)
    torch.testing.assert_close(mean, (first + 2 * logits_of(member, x)) / 3)
    assert len(list((tmp_path / "cache" / "logits").glob("*.pt"))) == 1  # cached once per (teacher, data)
