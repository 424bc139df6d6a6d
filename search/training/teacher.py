"""The model to compress: built from config, loaded from a checkpoint or trained once and cached."""
from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..data import Splits
from ..results.outputs import atomic_write
from .loops import SETTLED, logits_of, teacher_clip, train_teacher


def cache_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_model(model_cfg: DictConfig, splits: Splits) -> nn.Module:
    """The untrained network of ``model.net`` (any ``_target_``), sized for the data."""
    torch.manual_seed(int(model_cfg.train.seed))  # the same initial weights on every machine
    try:
        net = instantiate(model_cfg.net)
    except Exception as exc:
        raise ValueError(f"model.net: cannot build {model_cfg.net.get('_target_')!r}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise ValueError(f"model.net: {model_cfg.net.get('_target_')!r} built a {type(net).__name__}, not an nn.Module")
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(splits.input_shape, dtype=getattr(torch, splits.input_dtype)))
    except Exception as exc:  # noqa: BLE001 - any failure on the data's shape is the same mismatch
        why = (str(exc).strip().splitlines() or [""])[0][:160]
        if splits.input_dtype != "float32":
            raise ValueError(f"model.net: {type(net).__name__} fails on the data's token ids {splits.input_shape} (1, "
                             f"length), int64 ({type(exc).__name__}: {why})") from exc
        raise ValueError(f"model.net: {type(net).__name__} fails on the data's input {splits.input_shape} (1, C, H, W) "
                         f"({type(exc).__name__}: {why}); give it in_channels={splits.channels}") from exc
    if tuple(out.shape) != (1, splits.num_classes):
        raise ValueError(
            f"model.net: output shape {tuple(out.shape)} for input {splits.input_shape}; expected (1, "
            f"{splits.num_classes}): the data has {splits.num_classes} classes (data.num_classes), so the model's head "
            "needs as many outputs"
        )
    return net


def _save(path: Path, state: dict[str, torch.Tensor]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(net: nn.Module, path: Path, *, key: str) -> None:
    """``net``'s weights from the ``state_dict`` file at ``path`` (``torch.save(model.state_dict())``, or a dict
    holding it under ``state_dict`` as Lightning writes); a file that is not one, or does not fit ``net``, is a
    one-line ValueError naming ``key``, the file and what is wrong."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors alike: not a weights file
        why = (str(exc).strip().splitlines() or [""])[0][:120]
        raise ValueError(f"{key}={path}: not a PyTorch state_dict file (torch.save(model.state_dict(), path)); "
                         f"torch.load said {type(exc).__name__}: {why}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{key}={path}: holds a {type(state).__name__}, not a state_dict (a dict of tensors, "
                         "torch.save(model.state_dict(), path))")
    own = net.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def few(items: list[str]) -> str:
            return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")

        parts = [f"{len(missing)} missing ({few(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
                 f"{len(shapes)} of another shape (file vs model: {few(shapes)})" if shapes else ""]
        raise ValueError(f"{key}={path}: does not fit {type(net).__name__} ({len(own)} keys): "
                         + "; ".join(p for p in parts if p))
    net.load_state_dict(state)


def trained_teacher(
    net: nn.Module, model_cfg: DictConfig, data_key: str, splits: Splits, cache_dir: Path, log=print,
    key: str = "model.checkpoint",
) -> tuple[nn.Module, str]:
    """Weights from ``model.checkpoint`` if given (``key``: what an error calls it), else from the cache, else
    trained now and cached."""
    if model_cfg.get("checkpoint"):
        path = Path(model_cfg.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{key}: no file at {str(path)!r}")
        load_checkpoint(net, path, key=key)
        return net.eval(), f"checkpoint {path}"
    train_cfg = OmegaConf.to_container(model_cfg.train, resolve=True)
    path = teacher_path(model_cfg, data_key, cache_dir, net)
    if path.is_file():
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.eval(), f"cache {path}"
    log(f"training {model_cfg.name} for {train_cfg['epochs']} epoch(s); cached at {path} for later runs")
    x, y = splits.train_x, splits.train_y
    train_teacher(net, x, y, epochs=train_cfg["epochs"], lr=train_cfg["lr"],
                  batch_size=train_cfg["batch_size"], seed=train_cfg["seed"], log=log)
    _save(path, net.state_dict())
    return net.eval(), f"trained now, cached at {path}"


# How far above chance a teacher must score to count as having learned something, in standard errors: a model
# that learned nothing scores at most about the largest class's share p of the n validation labels (always guessing
# that class scores exactly p, guessing at random 1/classes <= p), give or take sqrt(p (1 - p) / n) from the draw
# of those images; it passes p + 3 standard errors about once in 740 (one-sided, normal approximation), and a model
# only that far above chance would not be worth compressing either.
CHANCE_SE = 3.0


def chance(labels: torch.Tensor) -> tuple[float, float]:
    """What a model that learned nothing scores on ``labels``: the majority class's share, and its binomial
    standard error on ``len(labels)`` images."""
    n = len(labels)
    share = float(torch.bincount(labels.long()).max()) / n
    return share, math.sqrt(share * (1 - share) / n)


def check_learned(accuracy: float, labels: torch.Tensor, model_cfg: DictConfig, source: str) -> None:
    """A ValueError in one line if ``accuracy`` on the validation ``labels`` is within ``CHANCE_SE`` standard
    errors of chance (``chance``), naming the accuracy, chance and the keys to change. Silent on a split too small
    for the standard error to mean much: under 10 images of the largest class or of the others (the usual rule
    for the normal approximation of a binomial, n p >= 10 and n (1 - p) >= 10). A teacher trained and cached before
    this refusal stays cached: the same config trains the same weights, so the same command is refused again at
    once rather than after training them again."""
    n = len(labels)
    if n == 0:
        return
    share, se = chance(labels)
    limit = share + CHANCE_SE * se
    if accuracy > limit or min(n * share, n * (1 - share)) < 10:
        return
    what = (f"the teacher ({source}) scores {accuracy:.4f} on the {n} validation images, within noise of chance: "
            f"{share:.4f} (the largest class's share) + {CHANCE_SE:g} standard errors = {limit:.4f}; it learned "
            "nothing, and every trial would score the same")
    if model_cfg.get("checkpoint"):
        raise ValueError(f"{what}; give weights trained on this data as model.checkpoint (now {model_cfg.checkpoint}"
                         "), or unset it to train the model here (model.train.epochs, model.train.lr)")
    train = model_cfg.train
    raise ValueError(f"{what}; train it otherwise: a lower model.train.lr (now {train.lr}) or more "
                     f"model.train.epochs (now {train.epochs}), or give trained weights as model.checkpoint")


def teacher_path(model_cfg: DictConfig, data_key: str, cache_dir: Path, net: nn.Module) -> Path:
    """Where the teacher of ``model_cfg`` (built as ``net``) trained on the data ``data_key`` is cached: keyed by
    its config, the data and, where ``train_teacher`` clips its gradients, the limit; where it has a BatchNorm slower
    than PyTorch's default momentum (0.1), whose statistics ``train_teacher`` may compute again, that rule."""
    clip = teacher_clip(net)
    slow = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None and m.momentum < 0.1
               for m in net.modules())
    key = cache_key(OmegaConf.to_container(model_cfg.net, resolve=True),
                    OmegaConf.to_container(model_cfg.train, resolve=True), data_key,
                    *([{"clip": clip}] if clip is not None else []), *([{"settled": SETTLED}] if slow else []))
    return Path(cache_dir) / "teachers" / f"{model_cfg.name}-{key}.pt"


def logits_path(key: str, cache_dir: Path) -> Path:
    return Path(cache_dir) / "logits" / f"{key}.pt"


def cached_logits(teacher: nn.Module, x: torch.Tensor, key: str, cache_dir: Path) -> torch.Tensor:
    """The teacher's logits on the training split, computed once per (teacher, data)."""
    path = logits_path(key, cache_dir)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    logits = logits_of(teacher, x)
    _save(path, logits)
    return logits


def weights_key(model: nn.Module) -> str:
    """A fingerprint of a model's weights (what cached teacher logits depend on)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def ensemble_logits(
    first: torch.Tensor, members: list[DictConfig], splits: Splits, data_key: str, cache_dir: Path, log=print,
    used: list[Path] | None = None,
) -> torch.Tensor:
    """The mean of ``first`` (the model's own logits) and each extra teacher's logits on the training split.

    Each member is trained once (or loaded from its checkpoint) and its logits cached, like the model's; the cache
    files are added to ``used`` (what workers elsewhere fetch, ``search/storage/artifacts.py``).
    """
    all_logits = [first]
    for member in members:
        net, source = trained_teacher(build_model(member, splits), member, data_key, splits, cache_dir, log=log,
                                      key=f"distill.teachers ({member.name}) checkpoint")
        log(f"ensemble teacher {member.name} ({source})")
        key = cache_key(weights_key(net), data_key)
        all_logits.append(cached_logits(net, splits.train_x, key, cache_dir))
        if used is not None:
            used += [teacher_path(member, data_key, cache_dir, net), logits_path(key, cache_dir)]
    return torch.stack(all_logits).mean(dim=0)
