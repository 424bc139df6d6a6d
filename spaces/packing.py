"""The engine's packed weights format: the file whose byte count is the size objective.

Layout: ``b"CPZ1"``, a little-endian u32 header length, a compact JSON header listing each tensor
(name, shape, bits, sparse encoding), then each tensor's payload back to back:

- float tensors (bits 32): kept values as float32;
- quantized weights (bits b <= 8): per output channel float32 scale and uint8 zero point, then the
  kept values' integer codes packed at b bits;
- sparse tensors: before the values, either a bitmask (1 bit per weight) or the kept positions'
  indices at ceil(log2 n) bits each, whichever is smaller.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch

MAGIC = b"CPZ1"
FLOAT_BITS = 32


@dataclass(frozen=True)
class PackedTensor:
    name: str
    values: torch.Tensor  # float values before quantization (masked weights, biases, ranges)
    bits: int = FLOAT_BITS
    mask: torch.Tensor | None = None  # 1 = kept; None = dense


def _pack_bits(values: np.ndarray, width: int) -> bytes:
    """Unsigned ints in [0, 2**width) packed ``width`` bits each, little-endian bit order."""
    if values.size == 0:
        return b""
    bits = (values.astype(np.uint64)[:, None] >> np.arange(width, dtype=np.uint64)) & 1
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def _unpack_bits(data: bytes, count: int, width: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: count * width]
    weights = (1 << np.arange(width, dtype=np.uint64))
    return (bits.reshape(count, width).astype(np.uint64) * weights).sum(axis=1)


def _nbytes(count: int, width: int) -> int:
    return math.ceil(count * width / 8)


def _index_width(n: int) -> int:
    return max(1, math.ceil(math.log2(n)))


def sparse_encoding(n: int, kept: int) -> str:
    """'dense', 'bitmask' or 'index': the cheapest way to say which of ``n`` weights are kept."""
    if kept == n:
        return "dense"
    return "index" if _nbytes(kept, _index_width(n)) < _nbytes(n, 1) else "bitmask"


def _encode(t: PackedTensor) -> tuple[dict, bytes]:
    from ._compressed import quantize_weight

    values = t.values.detach().float()
    flat_mask = (t.mask.reshape(-1) > 0) if t.mask is not None else torch.ones(values.numel(), dtype=torch.bool)
    n, kept = values.numel(), int(flat_mask.sum())
    encoding = sparse_encoding(n, kept)
    head = {"n": t.name, "s": list(values.shape), "b": t.bits, "e": encoding}
    parts = []
    if encoding == "bitmask":
        parts.append(_pack_bits(flat_mask.numpy().astype(np.uint64), 1))
    elif encoding == "index":
        head["k"] = kept
        idx = torch.nonzero(flat_mask).flatten().numpy()
        parts.append(_pack_bits(idx, _index_width(n)))
    if t.bits >= FLOAT_BITS:
        parts.append(values.reshape(-1)[flat_mask].numpy().astype("<f4").tobytes())
    else:
        codes, scale, zp = quantize_weight(values, t.bits)
        parts.append(scale.numpy().astype("<f4").tobytes())
        parts.append(zp.numpy().astype(np.uint8).tobytes())
        parts.append(_pack_bits(codes.reshape(-1)[flat_mask].numpy().astype(np.uint64), t.bits))
    return head, b"".join(parts)


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
            mask = _unpack_bits(data[pos : pos + _nbytes(n, 1)], n, 1).astype(bool)
            pos += _nbytes(n, 1)
        elif enc == "index":
            k, width = h["k"], _index_width(n)
            mask = np.zeros(n, dtype=bool)
            mask[_unpack_bits(data[pos : pos + _nbytes(k, width)], k, width).astype(np.int64)] = True
            pos += _nbytes(k, width)
        kept = int(mask.sum())
        flat = torch.zeros(n)
        if bits >= FLOAT_BITS:
            flat[torch.from_numpy(mask)] = torch.from_numpy(
                np.frombuffer(data[pos : pos + 4 * kept], "<f4").copy()
            )
            pos += 4 * kept
        else:
            from ._compressed import dequantize_weight

            rows = shape[0]
            scale = torch.from_numpy(np.frombuffer(data[pos : pos + 4 * rows], "<f4").copy())
            zp = torch.from_numpy(np.frombuffer(data[pos + 4 * rows : pos + 5 * rows], np.uint8).astype(np.float32))
            pos += 5 * rows
            codes = np.zeros(n, dtype=np.float32)
            codes[mask] = _unpack_bits(data[pos : pos + _nbytes(kept, bits)], kept, bits)
            pos += _nbytes(kept, bits)
            flat = dequantize_weight(torch.from_numpy(codes).reshape(shape), scale, zp).reshape(-1)
            flat[~torch.from_numpy(mask)] = 0.0
        if pos > len(data):
            raise ValueError(f"tensor {h['n']!r} ends at byte {pos}, past the end of the file")
        out[h["n"]] = flat.reshape(shape)
    if pos != len(data):
        raise ValueError(f"packed file has {len(data) - pos} trailing bytes; file is corrupt")
    return out
