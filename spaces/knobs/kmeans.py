"""Non-linear quantization by k-means weight sharing (Deep Compression, Han, Mao and Dally, ICLR 2016).

Per layer, the kept weights share ``2**b`` values found by k-means on them (linear initialisation over
[min, max], which the paper found best, then Lloyd's iterations); each weight stores only the b-bit index of its
value. Fine-tuning trains the shared values: the gradient of a shared value is the sum of the gradients of the
weights that use it (section 3.3 of the paper), which is what autograd gives for ``codebook[index]``. That sum
is taken at the learning rate divided by the number of weights sharing the value (``before_step``: the mean of
their steps), so the one learning rate of the recovery fine-tune fits a value shared by ten weights and one
shared by ten thousand alike; at the plain learning rate the 16 values of a 147k-weight layer moved so far in
five steps that a 4-bit model fell from 0.903 to 0.373 validation accuracy (smoke teacher). Pruned weights (the
``sparsity`` knob) stay zero and take no index.

Stored as the layer's codebook (``2**b`` float32 values) and the kept weights' b-bit indices (codec
``"kmeans"`` of ``spaces/packing.py``): the size objective counts exactly that. ONNX Runtime runs the layer in
float with its decoded weights: no int8 kernel reproduces arbitrary shared values, and a gather of the codebook
at run time would only add work, so the float kernel is the fastest exact form (the ``abits`` knob leaves such
layers alone). Per layer the weight quantizer is linear (``bits``) or k-means, never both: the two knobs share the
``quantize`` phase.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._base import Phase
from .._compressed import WeightQuantizer, quantize_, weight_mask
from ..packing import FLOAT_BITS, Codec, PackedTensor, nbytes, pack_bits, register_codec, unpack_bits
from .bits import BitWidthKnob

__all__ = ["KMeansKnob", "KMeansQuantizer"]

ALLOWED_BITS = (1, 2, 3, 4, 5, 6, 7, 8, FLOAT_BITS)
ITERATIONS = 30  # Lloyd's iterations at most; 1-D k-means on a layer's weights settles in far fewer


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids sorted ascending (k,), index of each value's centroid): Lloyd's algorithm from ``k`` centroids
    spread linearly over [min, max]; an empty cluster keeps its centroid. Deterministic."""
    x = values.detach().double().flatten()
    if x.numel() == 0:
        return torch.zeros(k, dtype=torch.float32), torch.zeros(0, dtype=torch.long)
    centroids = torch.linspace(float(x.min()), float(x.max()), k, dtype=torch.float64)
    for _ in range(iterations):
        index = torch.bucketize(x, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, index, x)
        counts = torch.bincount(index, minlength=k).double()
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.equal(updated, centroids):
            break
        centroids = torch.sort(updated).values
    centroids = centroids.float()
    index = torch.bucketize(x.float(), (centroids[1:] + centroids[:-1]) / 2)
    return centroids, index


class KMeansQuantizer(WeightQuantizer):
    """A layer's weights as ``codebook[index]`` (zero where ``kept`` is False): the codebook is trained."""

    int8 = False

    def __init__(self, weight: torch.Tensor, bits: int, kept: torch.Tensor | None = None) -> None:
        super().__init__()
        self.bits = int(bits)
        kept = torch.ones_like(weight, dtype=torch.bool) if kept is None else kept.bool()
        codebook, index = kmeans_1d(weight.detach()[kept], 2**self.bits)
        full = torch.zeros(weight.shape, dtype=torch.long)
        full[kept] = index
        self.codebook = nn.Parameter(codebook)
        self.register_buffer("index", full)
        self.register_buffer("kept", kept)
        self.register_buffer("members", torch.bincount(index, minlength=2**self.bits).clamp(min=1).float())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.where(self.kept, self.codebook[self.index], torch.zeros((), dtype=self.codebook.dtype))

    def packed(self, name: str, w: torch.Tensor, mask: torch.Tensor | None) -> PackedTensor:
        return PackedTensor(name, self.forward(w).detach(), bits=self.bits, mask=mask, codec="kmeans")

    def before_step(self) -> None:
        """Called by the training loop between ``backward`` and the optimiser's step: the summed gradient of each
        shared value divided by the number of weights that share it."""
        if self.codebook.grad is not None:
            self.codebook.grad /= self.members

    def extra_repr(self) -> str:
        return f"bits={self.bits}, values={2**self.bits}"


def _encode(kept: torch.Tensor, bits: int) -> tuple[dict, bytes]:
    """The layer's shared values (its distinct kept values, padded to ``2**bits``) and each kept value's index."""
    values = kept.detach().float().numpy()
    codebook = np.unique(values)
    if len(codebook) > 2**bits:
        raise ValueError(f"k-means codec: {len(codebook)} distinct values do not fit {bits} bits")
    padded = np.zeros(2**bits, dtype="<f4")
    padded[: len(codebook)] = codebook
    index = np.searchsorted(codebook, values).astype(np.uint64)
    return {}, padded.tobytes() + pack_bits(index, bits)


def _decode(data: bytes, pos: int, head: dict, kept: int) -> tuple[torch.Tensor, int]:
    bits = head["b"]
    codebook = np.frombuffer(data[pos : pos + 4 * 2**bits], "<f4")
    pos += 4 * 2**bits
    index = unpack_bits(data[pos : pos + nbytes(kept, bits)], kept, bits).astype(np.int64)
    return torch.from_numpy(codebook[index].copy()), pos + nbytes(kept, bits)


register_codec("kmeans", Codec(encode=_encode, decode=_decode))


class KMeansKnob(BitWidthKnob):
    """``kmeans.<fqn>``: the layer's weights share ``2**b`` values, b from ``choices``; 32 leaves them float."""

    knob = "kmeans"
    phase = Phase.QUANTIZE
    label = "shared weight values (k-means, bits per index)"
    short = "k-means bits"
    harder = "low"
    unit = "bits"
    scale = "log2"
    technique = "share 2^b weight values per layer (k-means weight sharing)"
    allowed = ALLOWED_BITS

    def __init__(
        self, *, model: nn.Module, choices: Sequence[int] = (2, 3, 4, 5, FLOAT_BITS),
        include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
    ) -> None:
        super().__init__(model=model, choices=choices, include=include, exclude=exclude)

    def apply_(self, model: nn.Module, values: Mapping[str, int]) -> None:
        for bits, layer in self.layers_to_change(model, values):
            mask = weight_mask(layer)
            w = layer.weight.detach() * mask if mask is not None else layer.weight.detach()
            quantize_(layer, KMeansQuantizer(w, bits, None if mask is None else mask > 0))

    def baselines(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        return {"uniform_kmeans4": {"kmeans": 4}}

    def describe(self, reference: nn.Module, built: nn.Module) -> str:
        layer = next((m for m in built.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)  # none: a TT layer
        wq = getattr(layer, "wq", None)
        return f"{2**wq.bits} values" if isinstance(wq, KMeansQuantizer) else ""
