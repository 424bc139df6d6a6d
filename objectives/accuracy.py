"""Top-1 accuracy of a PyTorch model, an ONNX Runtime session or any runtime's logits on a labelled split."""
from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ._base import BaseObjective, Outcome


class Accuracy(BaseObjective):
    """Fraction of ``images`` whose arg-max prediction equals ``labels`` (maximise): the trial's PyTorch model
    (``of(model)``) or an ONNX Runtime session (``onnx(session)``)."""

    name: ClassVar[str] = "accuracy"
    direction = "maximize"
    unit = "top-1"
    label = "accuracy (%)"
    display = 100.0
    structural = False
    relative = False

    def __init__(self, *, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> None:
        if len(images) != len(labels):
            raise ValueError(f"accuracy: {len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.batch_size = images, labels, batch_size

    def __call__(self, outcome: Outcome) -> float:
        return self.of(outcome.model)

    @torch.no_grad()
    def of(self, model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        correct = 0
        for key, images in self._batches():
            correct += int((model(images).argmax(1) == self.labels[key]).sum())
        model.train(was_training)
        return correct / len(self.images)

    def onnx(self, session) -> float:
        """The same figure for an ``onnxruntime.InferenceSession`` (how a bundle is verified)."""
        name = session.get_inputs()[0].name
        return self.runtime(lambda x: session.run(None, {name: x})[0])

    def runtime(self, run: Callable[[np.ndarray], np.ndarray]) -> float:
        """The same figure for any runtime: ``run`` maps a float32 batch (numpy) to its logits (a cost model's
        ``load`` of its own files, e.g. OpenVINO's IR)."""
        correct = 0
        for key, images in self._batches():
            pred = np.argmax(run(images.numpy()), axis=1)
            correct += int((pred == self.labels[key].numpy()).sum())
        return correct / len(self.images)

    def _batches(self):
        """(slice, images) in order; images that are read on demand (``search.data.Streamed``) come through their
        own ``feed`` (its DataLoader's workers)."""
        keys = [slice(start, start + self.batch_size) for start in range(0, len(self.images), self.batch_size)]
        feed = getattr(self.images, "feed", None)
        return zip(keys, feed(keys) if feed is not None else (self.images[k] for k in keys))
