"""The teacher: refused in one line when it learned nothing (chance on the validation labels), its gradients clipped
where nothing normalizes them."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from search.training.teacher import CHANCE_SE, chance, check_learned

TRAINED_HERE = OmegaConf.create({"checkpoint": None, "train": {"lr": 0.05, "epochs": 1}})


def test_chance_is_the_largest_class_share_and_its_binomial_standard_error():
    labels = torch.tensor([0] * 30 + [1] * 50 + [2] * 20)
    share, se = chance(labels)
    assert share == 0.5 and se == pytest.approx(math.sqrt(0.25 / 100))


def test_a_teacher_at_chance_trained_here_is_refused_naming_what_to_change():
    labels = torch.arange(1000) % 10  # chance 0.1, the limit 0.1 + 3 * 0.0095 = 0.128
    with pytest.raises(ValueError) as exc:
        check_learned(0.12, labels, TRAINED_HERE, "trained now")
    line = str(exc.value)
    assert "\n" not in line
    for words in ("scores 0.1200", "chance: 0.1000", f"= {0.1 + CHANCE_SE * math.sqrt(0.09 / 1000):.4f}",
                  "model.train.lr (now 0.05)", "model.train.epochs (now 1)", "model.checkpoint"):
        assert words in line, (words, line)


def test_a_teacher_above_the_noise_passes_and_a_split_too_small_to_tell_is_not_judged():
    labels = torch.arange(1000) % 10
    check_learned(0.13, labels, TRAINED_HERE, "trained now")  # above the 0.128 limit
    check_learned(0.0, torch.arange(90) % 10, TRAINED_HERE, "trained now")  # 9 of the largest class


def test_only_a_teacher_without_normalization_layers_is_clipped_and_cached_under_its_own_key(tmp_path):
    """A network without normalization layers (as SqueezeNet) trains with its gradient norm clipped, and its cache
    key says so; the default CNN (BatchNorm) is not clipped and keeps the key of its config and data alone."""
    from search.models import SmallCNN
    from search.training.loops import TEACHER_CLIP, teacher_clip
    from search.training.teacher import cache_key, teacher_path

    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 10, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
    cnn = SmallCNN()
    assert teacher_clip(plain) == TEACHER_CLIP and teacher_clip(cnn) is None
    cfg = OmegaConf.create({"name": "m", "net": {"_target_": "x"}, "train": {"lr": 0.1}})
    assert teacher_path(cfg, "data", tmp_path, cnn).name == f"m-{cache_key({'_target_': 'x'}, {'lr': 0.1}, 'data')}.pt"
    assert teacher_path(cfg, "data", tmp_path, plain) != teacher_path(cfg, "data", tmp_path, cnn)


def test_batchnorm_statistics_a_short_training_could_not_settle_are_computed_again(tmp_path):
    """torchvision's MobileNetV3 (BatchNorm momentum 0.01) scored at chance after 128 teacher steps, its running
    statistics still near mean 0 / variance 1: a BatchNorm whose momentum x steps is under ``SETTLED`` gets the
    average over training batches; one at PyTorch's default momentum keeps what training left, and its model's cache
    key (the default CNN's) stays the same."""
    from search.models import SmallCNN
    from search.training.loops import settle_batchnorm, train_teacher
    from search.training.teacher import teacher_path

    torch.manual_seed(0)
    x, y = torch.randn(256, 1, 8, 8) * 3 + 2, torch.randint(0, 10, (256,))
    slow, fast = torch.nn.BatchNorm2d(4, momentum=0.01), torch.nn.BatchNorm2d(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), slow, torch.nn.Conv2d(4, 4, 1), fast, torch.nn.Flatten(),
                              torch.nn.LazyLinear(10))
    net(x[:2])
    train_teacher(net, x, y, epochs=1, lr=0.01, batch_size=32, seed=0, log=lambda _: None)
    kept = fast.running_mean.clone()
    settle_batchnorm(net, x, steps=8, batch_size=32, seed=0, log=lambda _: None)  # again: the same average
    torch.testing.assert_close(fast.running_mean, kept)
    with torch.no_grad():
        features = net[0](x)
    torch.testing.assert_close(slow.running_mean, features.mean((0, 2, 3)), rtol=0.05, atol=0.05)
    assert slow.momentum == 0.01 and not net.training
    cfg = OmegaConf.create({"name": "m", "net": {"_target_": "x"}, "train": {"lr": 0.1}})
    assert teacher_path(cfg, "data", tmp_path, net) != teacher_path(cfg, "data", tmp_path, SmallCNN())


def test_a_model_with_auxiliary_heads_trains_on_its_logits():
    """torchvision's GoogLeNet returns (logits, aux2, aux1) in training mode: the teacher and the recovery train on
    the first (cross_entropy of the tuple raised TypeError in the teacher's first step)."""
    from search.training.loops import recover, train_teacher

    class Aux(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.aux = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)

        def forward(self, x):
            return (self.fc(x), self.aux(x)) if self.training else self.fc(x)

    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    net = train_teacher(Aux(), x, y, epochs=1, lr=0.01, batch_size=16, seed=0, log=lambda _: None)
    assert net(x).shape == (64, 3)
    recover(net, x, y, None, steps=2, lr=0.01, batch_size=16, temperature=4.0, alpha=0.0, seed=0)
