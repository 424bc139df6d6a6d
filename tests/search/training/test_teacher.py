"""The teacher: its gradients clipped where nothing normalizes them."""
from __future__ import annotations

import torch
from omegaconf import OmegaConf

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
