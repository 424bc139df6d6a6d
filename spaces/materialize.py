"""From a compressed model to the artifact the objectives measure and pick ships.

The artifact is two byte strings: the packed weights file (its length is the size objective) and an
ONNX model for ONNX Runtime (int8 QDQ on the layers quantized to <= 8 bits with 8-bit inputs, float
elsewhere; float16 weights, ``Float16Quantizer``, as float16 initializers cast to float32). Removed channels and
factorized layers are simply absent from both.
"""
from __future__ import annotations

import io
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ._compressed import Float16Quantizer, LinearQuantizer, WeightQuantizer, _Compressed, to_plain
from .packing import FLOAT_BITS, PackedTensor, pack, quantize_weight

INPUT_NAME, OUTPUT_NAME = "input", "logits"
INT4_OPSET = 21  # DequantizeLinear of 4-bit integers: ONNX opset 21, run by ONNX Runtime's CPU provider


@dataclass(frozen=True)
class Artifact:
    """What a compressed model is shipped as and measured on: the packed weights file and the ONNX model."""

    packed: bytes  # the engine's own weights file: len(packed) is the size objective
    onnx: bytes  # self-contained ONNX model, dynamic batch
    int8_layers: tuple[str, ...]  # layers that run on int8 kernels in the ONNX model
    input_shape: tuple[int, ...]  # one sample's shape, batch dimension first (1, C, H, W)
    # What cost models may use beside the ONNX model: real input samples to time it on, and the
    # plain PyTorch module (pruned channels and factorized layers gone, weights dequantized).
    example: Any = field(default=None, repr=False, compare=False)
    module: Any = field(default=None, repr=False, compare=False)
    # A runtime's own files for this model (``BaseCostModel.export``: model.xml / model.bin, model.pte), where
    # they were read from a bundle: the cost model times these rather than exporting anew.
    files: Any = field(default=None, repr=False, compare=False)


def packed_tensors(model: nn.Module) -> list[PackedTensor]:
    """Every tensor needed to run ``model``, each as its layer's weight quantizer stores it.

    A weight quantizer's own state (a k-means codebook and assignment) is not stored beside the weight: the
    weight's packed form holds it."""
    compressed = {n: m for n, m in model.named_modules() if isinstance(m, _Compressed)}
    quantizers = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, WeightQuantizer))
    out = []
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked" or key.endswith((".weight_mask", ".act.calibrated")) \
                or key.startswith(quantizers):
            continue
        layer = compressed.get(owner)
        if layer is not None and leaf == "weight":
            mask = layer.weight_mask
            raw = value * mask if mask is not None else value
            if layer.wq is None:
                out.append(PackedTensor(key, raw, bits=FLOAT_BITS, mask=mask))
            else:
                with torch.no_grad():
                    out.append(layer.wq.packed(key, raw, mask))
        else:
            out.append(PackedTensor(key, value.float()))
    return out


def as_input(x: Any) -> np.ndarray:
    """An input batch as the ONNX model takes it: int64 token ids, or float32."""
    x = np.asarray(x)
    return x.astype(np.int64) if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)


def input_dtype_of(x: Any) -> str:
    """``int64`` for a batch of token ids, else ``float32``."""
    return "int64" if np.issubdtype(np.asarray(x).dtype, np.integer) else "float32"


def int8_layers(model: nn.Module) -> list[str]:
    """Layers whose weights and inputs are both quantized for ONNX Runtime's int8 kernels."""
    return [name for name, m in model.named_modules() if isinstance(m, _Compressed) and m.runs_int8]


def dynamic_layers(model: nn.Module) -> list[str]:
    """The int8 layers whose inputs are quantized at run time (``ActFakeQuant.dynamic``: MatMulInteger)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, _Compressed) and m.runs_int8 and getattr(m.act, "dynamic", False)]


def _bins(n: int, out: int) -> torch.Tensor:
    """The (out, n) matrix that averages ``n`` positions into ``out`` bins as adaptive average pooling does:
    bin i spans [floor(i n / out), ceil((i + 1) n / out)) (PyTorch's AdaptiveAvgPool2d)."""
    m = torch.zeros(out, n)
    for i in range(out):
        start, end = (i * n) // out, -((-(i + 1) * n) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: torch.Tensor, size: int | Sequence[int | None]) -> torch.Tensor:
    """``adaptive_avg_pool2d(x, size)``; in an ONNX export the same bins as two matrix products, as PyTorch's ONNX
    export of adaptive_avg_pool2d refuses an output size that does not divide the input's (torchvision's AlexNet
    and VGG pool to 6 x 6 and 7 x 7 whatever the input: 1 x 1 on small images)."""
    if not torch.onnx.is_in_onnx_export():
        return nn.functional.adaptive_avg_pool2d(x, size)
    h, w = (int(d) for d in x.shape[-2:])
    oh, ow = (size, size) if isinstance(size, int) else size
    oh, ow = oh or h, ow or w  # None: that side as it is
    return torch.matmul(torch.matmul(_bins(h, oh).to(x), x), _bins(w, ow).to(x).t())


@contextmanager
def _exportable_pools(model: nn.Module) -> Iterator[None]:
    """Every ``AdaptiveAvgPool2d`` of ``model`` exported as ``adaptive_avg_pool`` for the duration (an instance
    attribute over the class's forward, removed after): at a size the ONNX exporter takes, the same graph as ever
    (a global average pool); at one it refuses, two matrix products."""
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    for m in pools:
        m.forward = lambda x, _size=m.output_size: adaptive_avg_pool(x, _size) if _refused(x, _size) \
            else nn.functional.adaptive_avg_pool2d(x, _size)
    try:
        yield
    finally:
        for m in pools:
            del m.forward


def _refused(x: torch.Tensor, size: int | Sequence[int | None]) -> bool:
    """Whether PyTorch's ONNX export refuses ``adaptive_avg_pool2d(x, size)``: an output side not dividing the
    input's."""
    sides = (size, size) if isinstance(size, int) else tuple(size)
    return any(o is not None and int(n) % int(o) for n, o in zip(x.shape[-2:], sides))


def export_onnx(model: nn.Module, input_shape: Sequence[int], input_dtype: str = "float32") -> bytes:
    """Float ONNX of a plain model, batch dimension dynamic, weights named by fqn; its input float32, or int64 token
    ids."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), _exportable_pools(model):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (torch.zeros(*input_shape, dtype=getattr(torch, input_dtype)),), buf, dynamo=False,
            opset_version=17,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return buf.getvalue()


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Drop the root logger's records below ERROR for the duration, then restore it exactly as it was.

    ONNX Runtime calls ``logging.warning`` on the root logger, which would also install a stderr handler
    (``logging.basicConfig``) on a root without one: a null handler stands in while it runs."""
    root = logging.getLogger()
    level, stand_in = root.level, None
    if not root.handlers:
        stand_in = logging.NullHandler()
        root.addHandler(stand_in)
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)
        if stand_in is not None:
            root.removeHandler(stand_in)


def quantize_onnx(model_bytes: bytes, layers: Sequence[str], calibration: np.ndarray,
                  weighted_only: bool = False) -> bytes:
    """Static int8 QDQ (per-channel weights) on ``layers``; every other weighted node stays float. ONNX Runtime also
    puts QDQ pairs around the unweighted operators between them (Add, MaxPool, Reshape, ...) unless
    ``weighted_only``: a transformer's graph (LayerNorm, softmax and GELU as many small operators, its Linears on
    the dynamic path) keeps them float."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(np.array_split(calibration, max(1, len(calibration) // 64)))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: as_input(batch)}

    proto = onnx.load_from_string(model_bytes)
    chosen = set(_weighted_nodes(proto, layers))
    excluded = [n.name for n in proto.graph.node
                if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.name not in chosen]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model_bytes)
        with _quiet_root_logger():  # its advice to pre-process goes to the root logger each call
            quantize_static(
                str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded, **({"op_types_to_quantize": ["Conv", "Gemm", "MatMul"]} if weighted_only else {}),
            )
        return dst.read_bytes()


def scope_fqn(node_name: str) -> str:
    """The fqn of the module an exported node belongs to, from its scope name: "/blocks/blocks.0/attn/qkv/MatMul"
    is ``blocks.0.attn.qkv`` (a container's child is named "<container>.<index>", any other child by its attribute
    name alone), "/features/features.0/Conv" is ``features.0``."""
    fqn = ""
    for part in node_name.split("/")[1:-1]:
        fqn = part if not fqn or part.startswith(f"{fqn}.") else f"{fqn}.{part}"
    return fqn


def _weighted_nodes(proto: onnx.ModelProto, layers: Sequence[str]) -> list[str]:
    """The names of the Conv/Gemm/MatMul nodes that compute ``layers``' weights."""
    wanted, weights = set(layers), {f"{fqn}.weight" for fqn in layers}

    def chosen(node) -> bool:
        # Weights keep their fqn names, except a Linear's exported as MatMul (a bias-less one, or one over a
        # sequence) on a renamed, transposed copy; the node's scope names its module either way.
        return node.input[1] in weights or scope_fqn(node.name) in wanted

    return [n.name for n in proto.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and chosen(n)]


def quantize_onnx_dynamic(model_bytes: bytes, codes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> bytes:
    """Dynamic int8 on the Linears of ``codes`` (``weight_codes``): inputs quantized at run time
    (``DynamicQuantizeLinear`` + ``MatMulInteger``, ONNX Runtime's ``quantize_dynamic``), the weights then replaced by
    the packed file's own codes, scale and zero point per output channel (``MatMulInteger`` takes a zero point per
    column of B), so the ONNX model multiplies by exactly the weights the search scored; other nodes as they are."""
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load_from_string(model_bytes)
    by_node = {n: fqn for fqn in codes for n in _weighted_nodes(proto, [fqn])}
    weight_of = {n.name: n.input[1] for n in proto.graph.node if n.name in by_node}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model_bytes)
        with _quiet_root_logger():
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False,
                             nodes_to_quantize=list(by_node), op_types_to_quantize=["MatMul"])
        proto = onnx.load(str(dst))
    inits = {i.name: i for i in proto.graph.initializer}
    for node, weight in weight_of.items():
        q, scale, zp = codes[by_node[node]]
        names = (f"{weight}_quantized", f"{weight}_scale", f"{weight}_zero_point")
        if not all(n in inits for n in names) or tuple(inits[names[0]].dims) != q.T.shape:
            raise ValueError(f"dynamic int8: ONNX Runtime did not quantize {by_node[node]} as a MatMul ({node})")
        # as int8 (codes and zero point less 128: the same (code - zero point) x scale): ONNX Runtime's fast kernels
        # multiply uint8 inputs by int8 weights (u8s8); uint8 weights ran the ViT's Linears 1.2x slower than float
        signed = (np.ascontiguousarray(q.T).astype(np.int16) - 128).astype(np.int8), (zp.astype(np.int16) - 128).astype(np.int8)
        for name, value in zip(names, (signed[0], scale.reshape(-1), signed[1].reshape(-1))):
            inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return proto.SerializeToString()


def weight_codes(model: nn.Module, layers: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(codes as uint8, scale, zero point) by layer: the packed file's linear codes of ``layers``' masked weights."""
    out = {}
    for name in layers:
        m = model.get_submodule(name)
        if type(m.wq) is not LinearQuantizer:
            raise ValueError(f"dynamic int8: layer {name} stores its weights as {type(m.wq).__name__}, not linear codes")
        with torch.no_grad():
            w = m.weight * m.weight_mask if m.weight_mask is not None else m.weight
            q, scale, zp = quantize_weight(w.detach(), m.wq.bits)
        out[name] = (q.numpy().astype(np.uint8), scale.numpy().astype(np.float32), zp.numpy().astype(np.uint8))
    return out


#: which int8-run layers with weights of at most 4 bits store them at 4 bits in the ONNX model (``onnx_int4``):
#: none; linear, the fully connected ones (ONNX Runtime on this CPU runs them 0-8% slower than at int8); all (a
#: convolution then leaves ONNX Runtime's fused int8 kernels: 2.6-5.1x slower here, docs/results/runtimes.md)
INT4_CHOICES = ("none", "linear", "all")


def int4_codes(model: nn.Module, which: str = "all") -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(codes, scale, zero point) by layer, of the int8-run layers whose weights are linear codes of at most 4
    bits (``which``: ``INT4_CHOICES``): the packed file's own codes (``packing.quantize_weight`` of the masked
    weight), which dequantize to the layer's effective weight exactly."""
    if which not in INT4_CHOICES:
        raise ValueError(f"onnx_int4 must be one of {list(INT4_CHOICES)}, got {which!r}")
    out = {}
    for name, m in model.named_modules():
        if which == "none" or (which == "linear" and not isinstance(m, nn.Linear)):
            continue
        if isinstance(m, _Compressed) and m.runs_int8 and type(m.wq) is LinearQuantizer and m.wq.bits <= 4:
            with torch.no_grad():
                w = m.weight * m.weight_mask if m.weight_mask is not None else m.weight
                codes, scale, zp = quantize_weight(w.detach(), m.wq.bits)
            out[name] = (codes.numpy().astype(np.uint8), scale.numpy().astype(np.float32),
                         zp.numpy().astype(np.uint8))
    return out


def int4_weights(model_bytes: bytes, codes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> bytes:
    """The int8 QDQ model with the weights of ``codes``' layers stored as 4-bit integers (UINT4 codes, a float
    scale and a UINT4 zero point per output channel, ``DequantizeLinear`` at opset 21): the file then holds 4
    bits a weight, as the packed file does. A layer whose stored weight is not laid out as its codes (a
    transposed MatMul weight) keeps int8."""
    import ml_dtypes  # onnx's own dependency: numpy's 4-bit integer types
    from onnx import numpy_helper, version_converter

    if not codes:  # most trials: nothing at <= 4 bits, no parse of the model
        return model_bytes
    proto = onnx.load_from_string(model_bytes)
    if max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) < INT4_OPSET:
        proto = version_converter.convert_version(proto, INT4_OPSET)
        del proto.graph.value_info[:]  # the converter's inferred shapes: optional, and 10% of a small model's file
    inits = {i.name: i for i in proto.graph.initializer}
    dq = {n.input[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    for fqn, (q, scale, zp) in codes.items():
        node = dq.get(f"{fqn}.weight_quantized")
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if node is not None else None
        if node is None or axis != 0 or tuple(inits[node.input[0]].dims) != q.shape:
            continue
        for name, value in ((node.input[0], q.astype(ml_dtypes.uint4)), (node.input[2], zp.astype(ml_dtypes.uint4)),
                            (node.input[1], scale.reshape(-1))):
            inits[name].CopyFrom(numpy_helper.from_array(value, name))  # 4-bit values packed two to a byte
    return proto.SerializeToString()


def float16_layers(model: nn.Module) -> list[str]:
    """Layers whose weights are stored as float16 (``Float16Quantizer``)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, _Compressed) and isinstance(m.wq, Float16Quantizer)]


def float16_weights(model_bytes: bytes, layers: Sequence[str]) -> bytes:
    """The model with the weights of ``layers`` (``float16_layers``) stored as float16 initializers
    (``<fqn>.weight_float16``), each read through a ``Cast`` to float32 under the weight's own name: the file holds
    2 bytes a weight, and ONNX Runtime folds the ``Cast`` when the session starts, so the layer runs its float kernel
    on exactly the weights PyTorch ran. A weight the exporter changed on the way (a BatchNorm it folded into a
    convolution: the search folds them first, a knob applied alone does not) is no longer float16 and stays
    float32."""
    from onnx import helper, numpy_helper

    if not layers:  # most trials: no parse of the model
        return model_bytes
    proto = onnx.load_from_string(model_bytes)
    inits = {i.name: i for i in proto.graph.initializer}
    chosen = set(_weighted_nodes(proto, layers))
    weights = {n.input[1]: scope_fqn(n.name) for n in proto.graph.node if n.name in chosen}
    casts = []
    for name, fqn in weights.items():
        init = inits.get(name)
        if init is None or init.data_type != onnx.TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(init)
        if not np.array_equal(w.astype(np.float16).astype(np.float32), w):
            continue
        half = f"{fqn if fqn in layers else name}.weight_float16"
        init.CopyFrom(numpy_helper.from_array(w.astype(np.float16), half))
        casts.append(helper.make_node("Cast", [half], [name], name=f"{half}/Cast", to=onnx.TensorProto.FLOAT))
    nodes = casts + list(proto.graph.node)  # the casts first: nodes stay in topological order
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto.SerializeToString()


def onnx_weights(onnx_bytes: bytes) -> dict[str, str]:
    """How the ONNX model stores each quantized layer's weight, by layer: "int4", "int8" or "float16" (a layer
    missing here is stored as float32)."""
    kinds = {onnx.TensorProto.UINT4: "int4", onnx.TensorProto.INT4: "int4", onnx.TensorProto.INT8: "int8",
             onnx.TensorProto.UINT8: "int8"}
    out = {}
    for i in onnx.load_from_string(onnx_bytes).graph.initializer:
        if i.name.endswith(".weight_quantized"):
            out[i.name.removesuffix(".weight_quantized")] = kinds.get(i.data_type, "int8")
        elif i.name.endswith(".weight_float16"):
            out[i.name.removesuffix(".weight_float16")] = "float16"
    return out


def materialize(model: nn.Module, *, input_shape: Sequence[int], calibration: np.ndarray,
                int4: str = "none") -> Artifact:
    """The artifact for a compressed model: packed weights file + ONNX model. ``int4`` (``INT4_CHOICES``): which
    int8-run layers with weights of at most 4 bits store them as 4-bit integers in the ONNX model."""
    layers = int8_layers(model)
    codes = int4_codes(model, int4)  # first: a bad setting is refused before the export's seconds
    plain = to_plain(model)
    onnx_bytes = export_onnx(plain, input_shape, input_dtype_of(calibration))
    dynamic = dynamic_layers(model)
    static = [fqn for fqn in layers if fqn not in set(dynamic)]
    if static:
        onnx_bytes = int4_weights(quantize_onnx(onnx_bytes, static, calibration, weighted_only=bool(dynamic)), codes)
    if dynamic:
        onnx_bytes = quantize_onnx_dynamic(onnx_bytes, weight_codes(model, dynamic))
    onnx_bytes = float16_weights(onnx_bytes, float16_layers(model))
    return Artifact(
        packed=pack(packed_tensors(model)), onnx=onnx_bytes,
        int8_layers=tuple(layers), input_shape=tuple(input_shape),
        example=as_input(calibration), module=plain.eval(),
    )


__all__ = ["Artifact", "materialize", "packed_tensors", "export_onnx", "adaptive_avg_pool", "quantize_onnx",
           "quantize_onnx_dynamic", "input_dtype_of", "as_input", "dynamic_layers", "int4_codes", "int4_weights",
           "float16_layers", "float16_weights", "onnx_weights", "INT4_CHOICES", "FLOAT_BITS"]
