"""The engine's packed weights format: the file whose byte count is the size objective.

Layout: ``b"CPZ1"``, a little-endian u32 header length, a compact JSON header listing each tensor
(name, shape, bits, sparse encoding), then each tensor's payload back to back:

- float tensors (bits 32): kept values as float32;
- float16 tensors (bits 16): kept values as IEEE float16 (2 bytes each; exact for values float16 holds, as
  ``Float16Quantizer`` makes them);
- quantized weights (bits b <= 8): per output channel float32 scale and uint8 zero point, then the
  kept values' integer codes packed at b bits;
- sparse tensors: before the values, either a bitmask (1 bit per weight) or the kept positions'
  indices at ceil(log2 n) bits each, whichever is smaller;
- a tensor of another codec (header key ``"c"``, e.g. ``"kmeans"`` for shared values): its payload is the
  codec's own, after the sparse encoding. A knob that stores weights its own way registers a codec
  (``register_codec``) in its module; files without one are unchanged.
"""
from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

MAGIC = b"CPZ1"
FLOAT_BITS = 32  # "bits = 32" means the tensor stays float32
HALF_BITS = 16  # "bits = 16": the tensor is stored as float16 (weight-only: it runs in float32)


@dataclass(frozen=True)
class PackedTensor:
    """One tensor as the packed file stores it (what ``WeightQuantizer.packed`` returns for a layer's weight).

    ``bits`` 32 with no ``codec``: float32 values; ``bits`` 16: float16 values (rounded to nearest, so exact for
    values float16 holds); ``bits`` <= 8 with no ``codec``: affine per-output-channel codes
    of ``values`` (exact only for values on that grid, as ``LinearQuantizer`` makes them); a registered ``codec``
    (``register_codec``): the codec's own encoding of the kept values. ``mask`` (1 = kept) stores only the kept
    values and where they are.
    """

    name: str
    values: torch.Tensor  # float values before quantization (masked weights, biases, ranges)
    bits: int = FLOAT_BITS
    mask: torch.Tensor | None = None  # 1 = kept; None = dense
    codec: str | None = None  # None: float (bits 32 or 16) or linear per-channel (bits <= 8); else a registered codec


@dataclass(frozen=True)
class Codec:
    """A way to store a tensor's kept values: ``encode(kept values, bits) -> (header entries, payload)`` and
    ``decode(data, pos, header, kept count) -> (kept values, next pos)``."""

    encode: Callable[[torch.Tensor, int], tuple[dict, bytes]]
    decode: Callable[[bytes, int, dict, int], tuple[torch.Tensor, int]]


CODECS: dict[str, Codec] = {}


def register_codec(name: str, codec: Codec) -> None:
    """Make ``name`` a codec of packed files (a knob module does this once, at import)."""
    if name in CODECS and CODECS[name] != codec:
        raise ValueError(f"packing codec {name!r} is already registered")
    CODECS[name] = codec


def weight_qparams(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel affine scale and zero point; the range always holds 0 so pruned weights stay 0."""
    flat = w.detach().reshape(w.shape[0], -1)
    qmax = 2**bits - 1
    lo = flat.min(dim=1).values.clamp(max=0.0)
    hi = flat.max(dim=1).values.clamp(min=0.0)
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero_point


def quantize_weight(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(integer codes in [0, 2**bits - 1], scale, zero point), codes shaped like ``w``."""
    scale, zp = weight_qparams(w, bits)
    view = (-1,) + (1,) * (w.dim() - 1)
    codes = torch.clamp(torch.round(w.detach() / scale.view(view)) + zp.view(view), 0, 2**bits - 1)
    return codes, scale, zp


def dequantize_weight(codes: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    view = (-1,) + (1,) * (codes.dim() - 1)
    return (codes - zp.view(view)) * scale.view(view)


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Unsigned ints in [0, 2**width) packed ``width`` bits each, little-endian bit order."""
    if values.size == 0:
        return b""
    bits = (values.astype(np.uint64)[:, None] >> np.arange(width, dtype=np.uint64)) & 1
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, count: int, width: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: count * width]
    weights = (1 << np.arange(width, dtype=np.uint64))
    return (bits.reshape(count, width).astype(np.uint64) * weights).sum(axis=1)


def float_format(bits: int) -> str | None:
    """The numpy dtype a tensor of ``bits`` stores its kept values as (float32 or float16), None for codes."""
    return "<f4" if bits >= FLOAT_BITS else "<f2" if bits == HALF_BITS else None


def nbytes(count: int, width: int) -> int:
    return math.ceil(count * width / 8)


def _index_width(n: int) -> int:
    return max(1, math.ceil(math.log2(n)))


def sparse_encoding(n: int, kept: int) -> str:
    """'dense', 'bitmask' or 'index': the cheapest way to say which of ``n`` weights are kept."""
    if kept == n:
        return "dense"
    return "index" if nbytes(kept, _index_width(n)) < nbytes(n, 1) else "bitmask"


def _encode(t: PackedTensor) -> tuple[dict, bytes]:
    values = t.values.detach().float()
    flat_mask = (t.mask.reshape(-1) > 0) if t.mask is not None else torch.ones(values.numel(), dtype=torch.bool)
    n, kept = values.numel(), int(flat_mask.sum())
    encoding = sparse_encoding(n, kept)
    head = {"n": t.name, "s": list(values.shape), "b": t.bits, "e": encoding}
    parts = []
    if encoding == "bitmask":
        parts.append(pack_bits(flat_mask.numpy().astype(np.uint64), 1))
    elif encoding == "index":
        head["k"] = kept
        idx = torch.nonzero(flat_mask).flatten().numpy()
        parts.append(pack_bits(idx, _index_width(n)))
    if t.codec is not None:
        extra, payload = _codec(t.codec).encode(values.reshape(-1)[flat_mask], t.bits)
        head.update({"c": t.codec, **extra})
        parts.append(payload)
    elif float_format(t.bits) is not None:
        parts.append(values.reshape(-1)[flat_mask].numpy().astype(float_format(t.bits)).tobytes())
    else:
        codes, scale, zp = quantize_weight(values, t.bits)
        parts.append(scale.numpy().astype("<f4").tobytes())
        parts.append(zp.numpy().astype(np.uint8).tobytes())
        parts.append(pack_bits(codes.reshape(-1)[flat_mask].numpy().astype(np.uint64), t.bits))
    return head, b"".join(parts)


def _codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"unknown packing codec {name!r}; registered: {sorted(CODECS)}")
    return CODECS[name]


def pack(tensors: list[PackedTensor]) -> bytes:
    heads, payloads = zip(*(_encode(t) for t in tensors)) if tensors else ((), ())
    header = json.dumps(list(heads), separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + b"".join(payloads)


def unpack(data: bytes) -> dict[str, torch.Tensor]:
    """The float tensors a packed file stands for, by name (a state dict of the plain model)."""
    if data[:4] != MAGIC:
        raise ValueError(f"not a packed model file: starts with {data[:4]!r}, expected {MAGIC!r}")
    try:
        return _unpack(data)
    except (struct.error, RuntimeError, ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"packed model file is truncated or corrupt ({len(data)} bytes): {exc}") from exc


def _unpack(data: bytes) -> dict[str, torch.Tensor]:
    (hlen,) = struct.unpack("<I", data[4:8])
    heads = json.loads(data[8 : 8 + hlen])
    pos, out = 8 + hlen, {}
    for h in heads:
        shape, bits, enc = h["s"], h["b"], h["e"]
        n = math.prod(shape)
        mask = np.ones(n, dtype=bool)
        if enc == "bitmask":
            mask = unpack_bits(data[pos : pos + nbytes(n, 1)], n, 1).astype(bool)
            pos += nbytes(n, 1)
        elif enc == "index":
            k, width = h["k"], _index_width(n)
            mask = np.zeros(n, dtype=bool)
            mask[unpack_bits(data[pos : pos + nbytes(k, width)], k, width).astype(np.int64)] = True
            pos += nbytes(k, width)
        kept = int(mask.sum())
        flat = torch.zeros(n)
        if "c" in h:
            kept_values, pos = _codec(h["c"]).decode(data, pos, h, kept)
            flat[torch.from_numpy(mask)] = kept_values
        elif float_format(bits) is not None:
            end = pos + np.dtype(float_format(bits)).itemsize * kept
            flat[torch.from_numpy(mask)] = torch.from_numpy(
                np.frombuffer(data[pos:end], float_format(bits)).astype(np.float32)
            )
            pos = end
        else:
            rows = shape[0]
            scale = torch.from_numpy(np.frombuffer(data[pos : pos + 4 * rows], "<f4").copy())
            zp = torch.from_numpy(np.frombuffer(data[pos + 4 * rows : pos + 5 * rows], np.uint8).astype(np.float32))
            pos += 5 * rows
            codes = np.zeros(n, dtype=np.float32)
            codes[mask] = unpack_bits(data[pos : pos + nbytes(kept, bits)], kept, bits)
            pos += nbytes(kept, bits)
            flat = dequantize_weight(torch.from_numpy(codes).reshape(shape), scale, zp).reshape(-1)
            flat[~torch.from_numpy(mask)] = 0.0
        if pos > len(data):
            raise ValueError(f"tensor {h['n']!r} ends at byte {pos}, past the end of the file")
        out[h["n"]] = flat.reshape(shape)
    if pos != len(data):
        raise ValueError(f"packed file has {len(data) - pos} trailing bytes; file is corrupt")
    return out
