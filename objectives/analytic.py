"""An analytic latency estimate: a roofline per layer of the ONNX graph, nothing measured.

Each node costs ``max(operations / peak[precision], bytes moved / bandwidth) + overhead``:
operations are 2 x the multiply-accumulates of Conv/Gemm/MatMul (0 for the others), bytes are the
node's inputs, weights and outputs at their stored width (1 byte where the QDQ graph quantizes a
tensor, 4 for float), and a node runs at ``int8`` peak when both its input and its weight come
through DequantizeLinear. QuantizeLinear/DequantizeLinear nodes are free (ONNX Runtime fuses them
into the int8 kernels) except where a float tensor enters an int8 region (a QuantizeLinear), which moves it once.
The device is described in ``conf/hardware/analytic*.yaml``.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import onnx
from onnx import numpy_helper, shape_inference

from ._base import BaseCostModel, Measurement

PRECISIONS = ("fp32", "fp16", "int8")
_HEAVY = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def _shape(info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else 1 for d in info.type.tensor_type.shape.dim]


class AnalyticCostModel(BaseCostModel):
    """Roofline estimate of one batch from the ONNX graph and a device description."""

    name: ClassVar[str] = "analytic"
    measures: ClassVar[bool] = False

    def __init__(self, *, device: str, peak_tops: dict[str, float], memory_gbs: float, overhead_us: float = 0.0,
                 batch_size: int = 64, float_precision: str = "fp32", reference_threads: int = 1) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"hardware.batch_size must be a positive integer, got {batch_size!r}")
        peaks = dict(peak_tops or {})
        unknown = sorted(set(peaks) - set(PRECISIONS))
        if unknown or "fp32" not in peaks or any(not isinstance(v, (int, float)) or v <= 0 for v in peaks.values()):
            raise ValueError(f"hardware.peak_tops must map {list(PRECISIONS)} (fp32 required) to numbers > 0, "
                             f"got {peak_tops!r}")
        if not isinstance(memory_gbs, (int, float)) or memory_gbs <= 0 or overhead_us < 0:
            raise ValueError(f"hardware: need memory_gbs > 0 and overhead_us >= 0, got {memory_gbs=}, {overhead_us=}")
        if float_precision not in peaks:
            raise ValueError(f"hardware.float_precision must be one of {sorted(peaks)}, got {float_precision!r}")
        self.device, self.peak_tops, self.memory_gbs = device, peaks, float(memory_gbs)
        self.float_precision = float_precision
        self.overhead_us, self.batch_size, self.reference_threads = float(overhead_us), batch_size, reference_threads

    def layers(self, onnx_bytes: bytes) -> list[dict[str, Any]]:
        """Per node: operator, precision, operations, bytes and estimated microseconds."""
        model = onnx.load_from_string(onnx_bytes)
        for inp in model.graph.input:
            dims = inp.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):
                dims[0].dim_value = self.batch_size
        model = shape_inference.infer_shapes(model)
        g = model.graph
        shapes = {v.name: _shape(v) for v in [*g.input, *g.value_info, *g.output]}
        inits = {t.name: t for t in g.initializer}
        for name, t in inits.items():
            shapes[name] = list(t.dims)
        producer = {out: n for n in g.node for out in n.output}
        quantized = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}  # int8-stored tensors
        quant_out = {n.output[0] for n in g.node if n.op_type == "QuantizeLinear"}

        def numel(name: str) -> int:
            return math.prod(shapes.get(name, [0]))

        def width(name: str) -> int:
            return 1 if name in quantized or name in quant_out else 4

        def weight_width(name: str) -> int:
            p = producer.get(name)
            if p is not None and p.op_type == "DequantizeLinear" and p.input[0] in inits:
                return numpy_helper.to_array(inits[p.input[0]]).itemsize
            return 4

        out = []
        for n in g.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                data = n.input[0]  # a float tensor entering an int8 region is read once and written as int8
                boundary = n.op_type == "QuantizeLinear" and getattr(producer.get(data), "op_type", "") not in _HEAVY
                nbytes = numel(data) * 5 if boundary else 0
                ops, precision = 0, "int8"
            elif n.op_type in ("Identity", "Flatten", "Reshape", "Shape", "Constant", "Squeeze", "Unsqueeze"):
                nbytes, ops, precision = 0, 0, self.float_precision
            else:
                x, w = n.input[0], n.input[1] if len(n.input) > 1 else ""
                int8 = x in quantized and w in quantized
                precision = "int8" if int8 else self.float_precision
                act = 1 if int8 else 4 if precision == "fp32" else 2
                y = n.output[0]
                nbytes = numel(x) * act + numel(y) * act
                ops = 0
                if n.op_type in _HEAVY and w:
                    nbytes += numel(w) * (weight_width(w) if int8 else 4)
                    wshape = shapes.get(w, [])
                    if n.op_type == "Conv":
                        ops = 2 * numel(y) * math.prod(wshape[1:])
                    else:  # Gemm / MatMul: out elements x reduction length
                        ops = 2 * numel(y) * (shapes.get(x, [1])[-1])
            peak = self.peak_tops.get(precision, self.peak_tops["fp32"]) * 1e12
            us = max(ops / peak, nbytes / (self.memory_gbs * 1e9)) * 1e6
            if ops or nbytes:
                us += self.overhead_us
            out.append({"node": n.name, "op": n.op_type, "precision": precision, "ops": ops, "bytes": nbytes,
                        "us": us})
        return out

    def latency_ms(self, artifact: Any) -> Measurement:
        return Measurement(sum(layer["us"] for layer in self.layers(artifact.onnx)) / 1e3)

    def reference(self) -> BaseCostModel:
        from .latency import OrtCpuCostModel

        return OrtCpuCostModel(batch_size=self.batch_size, threads=self.reference_threads)

    def describe(self) -> dict[str, Any]:
        return {"cost_model": self.name, "device": self.device, "peak_tops": self.peak_tops,
                "memory_gbs": self.memory_gbs, "overhead_us": self.overhead_us, "batch_size": self.batch_size,
                "float_precision": self.float_precision,
                "predicted": True}
