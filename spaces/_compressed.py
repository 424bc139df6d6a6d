"""Conv2d/Linear that carry a sparsity mask, a weight quantizer and an input activation quantizer.

The swap is done by class (``layer.__class__ = CompressedConv2d``) on a model the caller already copied, so
fqns and parameter names stay those of the teacher. ``effective_weight`` is exactly what the packed
artifact stores: masked, then quantized by the layer's ``WeightQuantizer`` (a knob's, e.g. linear per-channel,
float16 or k-means weight sharing), which also says how the weight is packed and whether ONNX runs it on int8 kernels.
Knobs set them with ``mask_`` and ``quantize_`` (public: a knob written outside this package needs no more).
"""
from __future__ import annotations

import abc
import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .packing import FLOAT_BITS, HALF_BITS, PackedTensor, dequantize_weight, quantize_weight

HALF_MAX = float(torch.finfo(torch.float16).max)  # 65504: a larger weight is stored as this, not as inf


def straight_through(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` (the stored values of ``w``) in the forward pass, the identity's gradient to ``w`` in the backward
    (quantization-aware fine-tuning); ``q`` itself where no gradient is wanted."""
    if not (w.requires_grad and torch.is_grad_enabled()):
        return q  # bit-exact with what the packed file decodes to
    return w + (q - w).detach()


def fake_quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient (quantization-aware fine-tuning)."""
    return straight_through(w, dequantize_weight(*quantize_weight(w, bits)))


class WeightQuantizer(nn.Module, abc.ABC):
    """How a compressed layer's weight is stored (set on the layer by ``quantize_``, in a quantize-phase knob).

    ``forward(w)`` returns the values the packed file decodes to (differentiable for fine-tuning);
    ``packed(name, w, mask)`` the tensor to write; ``int8`` whether ONNX Runtime runs the layer on int8 kernels
    (with 8-bit inputs) and reproduces those values there.
    """

    bits: int
    int8: ClassVar[bool] = False

    @abc.abstractmethod
    def forward(self, w: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def packed(self, name: str, w: torch.Tensor, mask: torch.Tensor | None) -> PackedTensor: ...


class LinearQuantizer(WeightQuantizer):
    """Affine per-output-channel quantization at ``bits`` (2-8): integer codes, a scale and a zero point per
    channel; ONNX runs it as int8 QDQ (the codes fit int8's grid exactly only at 8 bits, but the engine's
    export reproduces the dequantized values, see ``materialize``)."""

    int8 = True

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize_weight(w, self.bits)

    def packed(self, name: str, w: torch.Tensor, mask: torch.Tensor | None) -> PackedTensor:
        return PackedTensor(name, w, bits=self.bits, mask=mask)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class Float16Quantizer(WeightQuantizer):
    """Weight-only float16: each weight rounded to the nearest float16 (ties to even, as IEEE casts do; beyond
    float16's range, its largest value) and run in float32, trained straight through. Stored as 2 bytes a kept
    weight (``packing``, bits 16); in ONNX a float16 initializer and a ``Cast`` to float32, which ONNX Runtime folds
    when the session starts, so the layer runs the float kernel on exactly these values (``materialize``). Not an
    int8 form: the ``abits`` knob leaves such a layer in float."""

    int8 = False
    bits = HALF_BITS

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return straight_through(w, w.detach().clamp(-HALF_MAX, HALF_MAX).half().to(w.dtype))

    def packed(self, name: str, w: torch.Tensor, mask: torch.Tensor | None) -> PackedTensor:
        return PackedTensor(name, self.forward(w).detach(), bits=self.bits, mask=mask)


class ActFakeQuant(nn.Module):
    """Per-tensor affine (uint8) fake quantization of a layer's input with a calibrated range.

    ``observing`` collects min/max (calibration); in training the range follows an EMA; in eval it is
    fixed. The range always holds 0, as ONNX Runtime's static quantization does. ``dynamic``: the range is each
    input's own min/max instead, as ONNX Runtime's ``DynamicQuantizeLinear`` computes it at run time (the int8 path
    of Linears over sequences: ``spaces.knobs.abits``).
    """

    def __init__(self, bits: int = 8, momentum: float = 0.01, dynamic: bool = False) -> None:
        super().__init__()
        self.bits, self.momentum, self.observing, self.dynamic = bits, momentum, False, bool(dynamic)
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("calibrated", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = x.detach().min().clamp(max=0.0), x.detach().max().clamp(min=0.0)
        if self.observing or not bool(self.calibrated):
            first = not bool(self.calibrated)
            self.lo.copy_(lo if first else torch.minimum(self.lo, lo))
            self.hi.copy_(hi if first else torch.maximum(self.hi, hi))
            self.calibrated.fill_(True)
            if self.observing:
                return x
        elif self.training and not self.dynamic:
            self.lo.lerp_(lo, self.momentum)
            self.hi.lerp_(hi, self.momentum)
        lo, hi = (lo, hi) if self.dynamic else (self.lo, self.hi)
        qmax = 2**self.bits - 1
        scale = torch.clamp((hi - lo) / qmax, min=1e-8)
        zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point.int(), 0, qmax)


class _Compressed:
    weight: nn.Parameter
    weight_mask: torch.Tensor | None
    wq: WeightQuantizer | None
    act: ActFakeQuant | None

    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        if self.weight_mask is not None:
            w = w * self.weight_mask
        if self.wq is not None:
            w = self.wq(w)
        return w

    @property
    def wbits(self) -> int:
        """The stored bit-width of the weights (32 = float)."""
        return self.wq.bits if self.wq is not None else FLOAT_BITS

    @property
    def runs_int8(self) -> bool:
        """Weights and inputs both quantized in a form ONNX Runtime's int8 kernels reproduce."""
        return self.wq is not None and self.wq.int8 and self.act is not None and self.act.bits <= 8


class CompressedConv2d(_Compressed, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        return self._conv_forward(x, self.effective_weight(), self.bias)


class CompressedLinear(_Compressed, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        return F.linear(x, self.effective_weight(), self.bias)


def compressed(layer: nn.Module) -> _Compressed:
    """Turn ``layer`` (Conv2d or Linear) into its compressed twin in place; idempotent."""
    if isinstance(layer, _Compressed):
        return layer
    layer.__class__ = CompressedConv2d if isinstance(layer, nn.Conv2d) else CompressedLinear
    layer.register_buffer("weight_mask", None)
    layer.wq, layer.act = None, None
    return layer


def mask_(layer: nn.Module, mask: torch.Tensor) -> nn.Module:
    """Zero ``layer``'s weights where ``mask`` is 0, for good (in place; returns the layer).

    ``layer`` is a Conv2d or Linear (one of ``layers_of``), ``mask`` a tensor of its weight's shape, 1 = kept. The
    layer multiplies its weight by the mask in every forward pass, so fine-tuning cannot bring a zeroed weight
    back, and the packed file stores only the kept ones. A weight another mask zeroed stays zero.
    """
    if tuple(mask.shape) != tuple(layer.weight.shape):
        raise ValueError(f"mask_: the mask's shape {tuple(mask.shape)} is not the weight's {tuple(layer.weight.shape)} "
                         f"({type(layer).__name__})")
    layer = compressed(layer)
    mask = mask.detach().to(layer.weight)
    layer.weight_mask = mask if layer.weight_mask is None else layer.weight_mask * mask
    return layer


def quantize_(layer: nn.Module, weights: WeightQuantizer | None = None, *,
              inputs: ActFakeQuant | None = None) -> nn.Module:
    """Store ``layer``'s weights as ``weights`` says, and quantize its input with ``inputs`` (in place; returns the
    layer; None leaves that part as it is).

    ``layer`` is a Conv2d or Linear (one of ``layers_of``). The layer runs its (masked) weight through ``weights``
    in every forward pass, so quantization-aware fine-tuning sees what the packed file will decode to, and the
    packed file stores what ``weights.packed`` returns.
    """
    for name, given, kind in (("weights", weights, WeightQuantizer), ("inputs", inputs, ActFakeQuant)):
        if given is not None and not isinstance(given, kind):
            raise TypeError(f"quantize_: {name} must be a spaces.{kind.__name__}, got {type(given).__name__}")
    layer = compressed(layer)
    if weights is not None:
        layer.wq = weights
    if inputs is not None:
        layer.act = inputs
    return layer


def weight_mask(layer: nn.Module) -> torch.Tensor | None:
    """The mask ``mask_`` set on ``layer`` (1 = kept), or None where no weight is zeroed for good."""
    return getattr(layer, "weight_mask", None) if isinstance(layer, _Compressed) else None


def weight_quantizer(layer: nn.Module) -> WeightQuantizer | None:
    """The ``WeightQuantizer`` ``quantize_`` set on ``layer``, or None where its weights stay float."""
    return layer.wq if isinstance(layer, _Compressed) else None


def layer_bits(layer: nn.Module) -> tuple[int, int]:
    """(weight bits, activation bits) of a layer; plain layers are float."""
    if isinstance(layer, _Compressed):
        return layer.wbits, layer.act.bits if layer.act is not None else FLOAT_BITS
    return FLOAT_BITS, FLOAT_BITS


def to_plain(model: nn.Module) -> nn.Module:
    """A copy where every compressed layer is a plain Conv2d/Linear holding its effective weight."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, _Compressed):
            with torch.no_grad():
                w = module.effective_weight().detach().clone()
            module.__class__ = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
            del module.act, module.wq
            delattr(module, "weight_mask")
            module.weight = nn.Parameter(w)
    return model


def calibrate(model: nn.Module, batches) -> None:
    """Set every activation quantizer's range from ``batches`` (min/max), model in eval mode."""
    quantizers = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    if not quantizers:
        return
    was_training = model.training
    model.eval()
    for q in quantizers:
        q.calibrated.fill_(False)
        q.observing = True
    with torch.no_grad():
        for x in batches:
            model(x)
    for q in quantizers:
        q.observing = False
    model.train(was_training)
