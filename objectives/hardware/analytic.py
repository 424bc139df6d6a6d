"""An analytic latency estimate: a roofline per layer of the ONNX graph, nothing measured.

Each node costs ``max(operations / peak[precision], bytes moved / bandwidth) + overhead``:
operations are 2 x the multiply-accumulates of Conv/Gemm/MatMul (0 for the others), bytes are the
node's inputs, weights and outputs at their stored width (1 byte where the QDQ graph quantizes a
tensor, 4 for float), and a node runs at ``int8`` peak when both its input and its weight come
through DequantizeLinear (float16 weights, an initializer cast to float32, count as float32: runtimes fold the
cast before they run). QuantizeLinear/DequantizeLinear nodes are free (ONNX Runtime fuses them
into the int8 kernels) except where a float tensor enters an int8 region (a QuantizeLinear), which
moves it once. The device is described in ``conf/hardware/analytic*.yaml``.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import onnx
from onnx import numpy_helper, shape_inference

from ._base import BaseCostModel, Measurement

PRECISIONS = ("fp32", "fp16", "int8")
_HEAVY = ("Conv", "Gemm", "MatMul", "ConvTranspose")
_FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish")


def _shape(info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else 1 for d in info.type.tensor_type.shape.dim]


class AnalyticCostModel(BaseCostModel):
    """Roofline estimate of one batch from the ONNX graph and a device description.

    ``peak_tops`` per precision; ``lanes`` per precision: the output-channel vector width of the
    device's kernels (a layer with fewer output channels uses that share of the peak, as a 4-channel
    int8 convolution uses a sliver of a 64-wide int8 unit); ``memory_gbs`` for data movement, with
    ``op_memory_gbs`` overriding it for ``<Op>.<precision>`` (e.g. ``MaxPool.int8_entry``: an int8
    pool where an int8 region begins after a float layer, which runtimes run in a slow generic
    kernel); ``base_us`` is a fixed cost per run (layout changes and launches not modelled per node). Precisions: ``fp32``/``fp16``, ``int8`` (input and weight through DequantizeLinear),
    and for non-multiplying ops ``int8_entry`` when their int8 input comes from a float layer.
    """

    name: ClassVar[str] = "analytic"
    measures: ClassVar[bool] = False

    def __init__(self, *, device: str, peak_tops: dict[str, float], memory_gbs: float, overhead_us: float = 0.0,
                 batch_size: int = 64, float_precision: str = "fp32", lanes: dict[str, int] | None = None,
                 op_memory_gbs: dict[str, float] | None = None, base_us: float = 0.0,
                 reference_threads: int = 1) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"hardware.batch_size must be a positive integer, got {batch_size!r}")
        peaks = dict(peak_tops or {})
        unknown = sorted(set(peaks) - set(PRECISIONS))
        if unknown or "fp32" not in peaks or any(not isinstance(v, (int, float)) or v <= 0 for v in peaks.values()):
            raise ValueError(f"hardware.peak_tops must map {list(PRECISIONS)} (fp32 required) to numbers > 0, "
                             f"got {peak_tops!r}")
        if not isinstance(memory_gbs, (int, float)) or memory_gbs <= 0 or overhead_us < 0 or base_us < 0:
            raise ValueError(f"hardware: need memory_gbs > 0, overhead_us >= 0 and base_us >= 0, got {memory_gbs=}, "
                             f"{overhead_us=}, {base_us=}")
        if float_precision not in peaks:
            raise ValueError(f"hardware.float_precision must be one of {sorted(peaks)}, got {float_precision!r}")
        lanes = dict(lanes or {})
        if set(lanes) - set(PRECISIONS) or any(not isinstance(v, int) or v < 1 for v in lanes.values()):
            raise ValueError(f"hardware.lanes must map {list(PRECISIONS)} to integers >= 1, got {lanes!r}")
        op_gbs = dict(op_memory_gbs or {})
        if any(not isinstance(v, (int, float)) or v <= 0 for v in op_gbs.values()):
            raise ValueError(f"hardware.op_memory_gbs must map '<Op>.<precision>' to numbers > 0, got {op_gbs!r}")
        self.device, self.peak_tops, self.memory_gbs = device, peaks, float(memory_gbs)
        self.float_precision, self.lanes, self.op_memory_gbs = float_precision, lanes, op_gbs
        self.overhead_us, self.batch_size, self.reference_threads = float(overhead_us), batch_size, reference_threads
        self.base_us = float(base_us)

    def layers(self, onnx_bytes: bytes) -> list[dict[str, Any]]:
        """Per node: operator, precision, operations, bytes and estimated microseconds."""
        model = onnx.load_from_string(onnx_bytes)
        for inp in model.graph.input:
            dims = inp.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):
                dims[0].dim_value = self.batch_size
        g = shape_inference.infer_shapes(model).graph
        shapes = {v.name: _shape(v) for v in [*g.input, *g.value_info, *g.output]}
        inits = {t.name: t for t in g.initializer}
        shapes.update({name: list(t.dims) for name, t in inits.items()})
        producer = {out: n for n in g.node for out in n.output}
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        quantized = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}  # int8-stored tensors

        def numel(name: str) -> int:
            return math.prod(shapes.get(name, [0]))

        def stored_width(weight: str) -> int:
            p = producer.get(weight)
            if p is not None and p.op_type == "DequantizeLinear" and p.input[0] in inits:
                return numpy_helper.to_array(inits[p.input[0]]).itemsize
            return 4

        def upstream_heavy(name: str) -> onnx.NodeProto | None:
            node, seen = producer.get(name), 0
            while node is not None and node.op_type not in _HEAVY and node.input and seen < 50:
                node, seen = producer.get(node.input[0]), seen + 1
            return node if node is not None and node.op_type in _HEAVY else None

        def is_int8(node: onnx.NodeProto) -> bool:
            return len(node.input) > 1 and node.input[0] in quantized and node.input[1] in quantized

        out = []
        for n in g.node:
            ops, nbytes = 0, 0
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                data = n.input[0]  # free inside int8 regions; a float tensor entering one is read and written once
                precision = "int8"
                if n.op_type == "QuantizeLinear" and getattr(producer.get(data), "op_type", "") not in _HEAVY:
                    nbytes = numel(data) * 5
            elif n.op_type in ("Identity", "Flatten", "Reshape", "Shape", "Constant", "Squeeze", "Unsqueeze") \
                    or (n.op_type == "Cast" and n.input[0] in inits):  # a constant's cast (float16 weights): folded
                precision = self.float_precision
            elif n.op_type in _FUSED_ACTIVATIONS and getattr(producer.get(n.input[0]), "op_type", "") in _HEAVY:
                precision = self.float_precision  # fused into the convolution or GEMM before it
            elif n.op_type in _HEAVY:
                x, w, y = n.input[0], n.input[1] if len(n.input) > 1 else "", n.output[0]
                precision = "int8" if is_int8(n) else self.float_precision
                act = 1 if precision == "int8" else 4 if precision == "fp32" else 2
                nbytes = (numel(x) + numel(y)) * act + numel(w) * (stored_width(w) if precision == "int8" else act)
                wshape, yshape = shapes.get(w, []), shapes.get(y, [1, 1])
                if n.op_type == "Conv":
                    ops, cout = 2 * numel(y) * math.prod(wshape[1:]), yshape[1]
                else:  # Gemm / MatMul: out elements x reduction length
                    ops, cout = 2 * numel(y) * (shapes.get(x, [1])[-1]), yshape[-1]
                lanes = self.lanes.get(precision, 1)
                ops = ops / min(1.0, cout / lanes)  # a narrow layer fills only part of the vector units
            else:
                x, y = n.input[0], n.output[0]
                precision = self.float_precision
                if x in quantized:
                    up = upstream_heavy(x)
                    precision = "int8" if up is not None and is_int8(up) else "int8_entry"
                elif consumers.get(y) and all(c.op_type == "QuantizeLinear" for c in consumers[y]):
                    precision = "int8_entry"  # runtimes move the quantization before it: an int8 op on float's layout
                act = 1 if precision.startswith("int8") else 4 if precision == "fp32" else 2
                nbytes = (numel(x) + numel(y)) * act
            peak = self.peak_tops.get(precision, self.peak_tops["fp32"]) * 1e12
            gbs = self.op_memory_gbs.get(f"{n.op_type}.{precision}", self.memory_gbs)
            us = max(ops / peak, nbytes / (gbs * 1e9)) * 1e6
            if ops or nbytes:
                us += self.overhead_us
            out.append({"node": n.name, "op": n.op_type, "precision": precision, "ops": ops, "bytes": nbytes,
                        "us": us})
        return out

    def latency_ms(self, artifact: Any) -> Measurement:
        return Measurement((self.base_us + sum(layer["us"] for layer in self.layers(artifact.onnx))) / 1e3)

    def reference(self) -> BaseCostModel:
        from .cpu import OrtCpuCostModel

        return OrtCpuCostModel(batch_size=self.batch_size, threads=self.reference_threads)

    def describe(self) -> dict[str, Any]:
        return {"cost_model": self.name, "device": self.device, "peak_tops": self.peak_tops, "lanes": self.lanes,
                "memory_gbs": self.memory_gbs, "op_memory_gbs": self.op_memory_gbs, "overhead_us": self.overhead_us,
                "base_us": self.base_us,
                "batch_size": self.batch_size, "float_precision": self.float_precision, "predicted": True}
