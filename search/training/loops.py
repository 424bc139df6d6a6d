"""Training: the teacher once, a short distillation fine-tune (recovery) for every trial, and students
trained from scratch by distillation (``distill``)."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from search.data import Streamed, feed

CLIP_NORM = 5.0  # gradient-norm limit during recovery fine-tunes
# The teacher's gradient-norm limit where nothing normalizes the activations (torchvision's SqueezeNet, AlexNet and
# plain VGG): there one large step can push the pre-ReLU logits of SqueezeNet's conv-ReLU-pool head below zero for
# every image, after which no gradient flows and the model predicts one class for good. Measured on Fashion-MNIST
# (squeezenet1_1, batch 128, one epoch): unclipped its logits died at lr 0.05 and at 0.01 (torchvision's recipe for
# it), with gradient norms of 0.3-2.6 as they died (validation accuracy 0.12, chance); clipped to 1 it learns at
# 0.05 (0.728 after one epoch, 0.793 after two). Networks with normalization layers train unclipped.
TEACHER_CLIP = 1.0
NORMALIZATION = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
                 nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.RMSNorm)


# A BatchNorm whose running statistics moved less than this over the teacher's training (momentum x steps) still
# weighs its initial mean 0 and variance 1 by more than e^-5 (1 - momentum)^steps: torchvision's MobileNetV3 (momentum
# 0.01) and MNASNet (0.0003) after 128 steps scored at chance in eval mode (MobileNetV3-Small 0.083 on the validation
# split, its training loss 1.43). Their statistics are computed again once the teacher is trained, as a plain average
# over up to SETTLE_BATCHES training batches (momentum None); the other layers' stay as trained
SETTLED, SETTLE_BATCHES = 5.0, 100


def teacher_clip(model: nn.Module) -> float | None:
    """The gradient-norm limit ``train_teacher`` applies to ``model``: ``TEACHER_CLIP`` where it has no
    normalization layer, else None (no limit)."""
    return None if any(isinstance(m, NORMALIZATION) for m in model.modules()) else TEACHER_CLIP


def logits(out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """A model's logits from what its forward returns: torchvision's GoogLeNet and Inception v3 return their logits
    first in a tuple with their auxiliary heads' in training mode (``GoogLeNetOutputs``, ``InceptionOutputs``); the
    auxiliary heads are not trained (the artifact, exported in eval mode, has none)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def batches(n: int, batch_size: int, *, seed: int, steps: int | None = None) -> Iterator[torch.Tensor]:
    """Index batches of a seeded shuffle, epoch after epoch; ``steps`` batches in all (one epoch if None)."""
    gen = torch.Generator().manual_seed(seed)
    total = steps if steps is not None else math.ceil(n / batch_size)
    done = 0
    while done < total:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            if done == total:
                return
            yield order[start : start + batch_size]
            done += 1


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, *, temperature: float, alpha: float
) -> torch.Tensor:
    """``alpha`` * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels) (Hinton et al. 2015).

    The T^2 factor keeps the soft term's gradients at the hard term's scale as T changes.
    """
    hard = F.cross_entropy(student, labels)
    if alpha == 0:
        return hard
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean", log_target=True,
    )
    return alpha * temperature**2 * soft + (1 - alpha) * hard


def train_teacher(
    model: nn.Module, x: torch.Tensor | Streamed, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int,
    seed: int, log=print,
) -> nn.Module:
    """SGD with Nesterov momentum and a one-cycle schedule; cross-entropy on hard labels; gradients clipped where
    the model has no normalization layer (``teacher_clip``)."""
    torch.manual_seed(seed)
    clip = teacher_clip(model)
    steps_per_epoch = max(1, len(x) // batch_size)  # a training split smaller than a batch: one batch of it
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        total = 0.0
        order = list(batches(len(x), batch_size, seed=seed + epoch, steps=steps_per_epoch))
        for idx, images in zip(order, feed(x, order)):
            loss = F.cross_entropy(logits(model(images)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip)
            opt.step()
            sched.step()
            total += loss.item()
        log(f"teacher epoch {epoch + 1}/{epochs}: train loss {total / steps_per_epoch:.4f}")
    settle_batchnorm(model, x, steps=epochs * steps_per_epoch, batch_size=batch_size, seed=seed, log=log)
    return model.eval()


def settle_batchnorm(model: nn.Module, x: torch.Tensor | Streamed, *, steps: int, batch_size: int, seed: int,
                     log=print) -> None:
    """The running statistics of the BatchNorm layers of ``model`` that ``steps`` training steps could not settle
    (``SETTLED``), computed again on training batches in train mode, every other layer in eval mode."""
    slow = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.momentum is not None and m.momentum * steps < SETTLED]
    if not slow:
        return
    momenta = [m.momentum for m in slow]
    model.eval()
    for m in slow:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
        m.train()
    order = list(batches(len(x), batch_size, seed=seed, steps=min(SETTLE_BATCHES, max(1, len(x) // batch_size))))
    with torch.no_grad():
        for _, images in zip(order, feed(x, order)):
            model(images)
    for m, momentum in zip(slow, momenta):
        m.momentum = momentum
    model.eval()
    log(f"teacher: the running statistics of {len(slow)} BatchNorm layer(s) (momentum {min(momenta):.2g} over {steps} "
        f"steps) computed again on {len(order)} training batches")


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor | Streamed, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images) for images in feed(x, [slice(i, i + batch_size)
                                                            for i in range(0, len(x), batch_size)])])


def _fit(
    model: nn.Module, x: torch.Tensor | Streamed, y: torch.Tensor, teacher_logits: torch.Tensor | None, *,
    opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, steps: int, batch_size: int,
    temperature: float, alpha: float, seed: int, what: str, lr_key: str, lr: float,
    checkpoints: Sequence[int] = (), on_checkpoint: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """The loop ``recover`` and ``distill`` share: ``steps`` seeded batches of ``distillation_loss`` (hard labels
    only at ``alpha = 0``), gradients clipped, ``on_checkpoint`` after each step in ``checkpoints``."""
    wanted = set(checkpoints)
    model.train()
    order = list(batches(len(x), batch_size, seed=seed, steps=steps))  # indices are small; the images are read
    for step, (idx, images) in enumerate(zip(order, feed(x, order)), start=1):
        teacher = teacher_logits[idx] if teacher_logits is not None else None
        loss = distillation_loss(logits(model(images)), teacher, y[idx], temperature=temperature, alpha=alpha)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{what} diverged at step {step} of {steps} (loss {loss.item()}); "
                                     f"lower {lr_key} ({lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for module in model.modules():  # a weight quantizer may adjust its gradients (k-means: per shared value)
            if hasattr(module, "before_step"):
                module.before_step()
        # Factorized layers without BatchNorm can take huge steps early on; clipping keeps them stable.
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=CLIP_NORM)
        opt.step()
        sched.step()
        if step in wanted and on_checkpoint is not None:
            on_checkpoint(step, model)
            model.train()
    return model.eval()


def recover(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor, *, steps: int,
    lr: float, batch_size: int, temperature: float, alpha: float, seed: int,
) -> nn.Module:
    """Fine-tune a compressed model for ``steps`` batches against the cached teacher logits, in place."""
    if steps <= 0:
        return model.eval()
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    return _fit(model, x, y, teacher_logits, opt=opt, sched=sched, steps=steps, batch_size=batch_size,
                temperature=temperature, alpha=alpha, seed=seed, what="recovery", lr_key="recovery.lr", lr=lr)


def distill(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None, *, steps: int,
    lr: float, batch_size: int, temperature: float, alpha: float, seed: int,
    checkpoints: Sequence[int] = (), on_checkpoint: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train a student from scratch for ``steps`` batches, in place: ``distillation_loss`` against the cached
    teacher logits (``alpha = 0``: hard labels only, no logits needed), SGD with Nesterov momentum and weight
    decay on a one-cycle schedule, as the teacher was trained. Deterministic under ``seed``.

    ``on_checkpoint(step, model)`` runs after each step in ``checkpoints`` (it may raise to stop training);
    the model is back in training mode afterwards.
    """
    if steps < 1:
        raise ValueError(f"distill: the budget must be at least 1 step, got {steps=}")
    if teacher_logits is None and alpha > 0:
        raise ValueError(f"distill: alpha={alpha} needs teacher logits")
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    return _fit(model, x, y, teacher_logits, opt=opt, sched=sched, steps=steps, batch_size=batch_size,
                temperature=temperature, alpha=alpha, seed=seed, what="student training", lr_key="distill.lr", lr=lr,
                checkpoints=checkpoints, on_checkpoint=on_checkpoint)
