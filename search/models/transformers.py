"""Transformers written the way their libraries write them, to compress as a user's own model.

``ViT``: a Vision Transformer as timm writes one (``timm.models.vision_transformer``): a patch-embedding
convolution, a class token and a position-embedding parameter, pre-norm blocks whose attention is one fused ``qkv``
Linear into ``scaled_dot_product_attention`` and a ``proj`` Linear, an MLP ``fc1``-GELU-``fc2``, LayerNorm.

``TextTransformer``: a text classifier as Hugging Face's BERT writes one (``transformers.models.bert``): token and
position embeddings (``nn.Embedding``), post-norm blocks whose self-attention has separate ``query``, ``key`` and
``value`` Linears, an explicit softmax(QK^T / sqrt(d)) V and an ``output.dense`` Linear, an MLP, LayerNorm; the
sequence mean-pooled over its non-padding tokens (id 0 pads) into a classifier. Its input is token ids (int64).

Both keep the head count in an attribute their forward pass reads (timm: ``num_heads``; Hugging Face:
``num_attention_heads`` and ``all_head_size``), which is what lets the ``heads`` knob remove whole heads.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ViT", "TextTransformer"]


class Attention(nn.Module):
    """timm's ``Attention``: fused qkv, heads of ``head_dim``, SDPA, output projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be a multiple of num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """timm's pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small Vision Transformer (defaults: 28 x 28 grey images, 7 x 7 patches, width 64, 4 blocks of 4 heads:
    139,018 parameters at 10 classes)."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch_size: int = 7,
                 dim: int = 64, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch_size) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class SelfAttention(nn.Module):
    """Hugging Face's ``BertSelfAttention`` (eager): separate query/key/value, softmax(QK^T / sqrt(d)) V."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be a multiple of num_heads {num_heads}")
        self.num_attention_heads, self.attention_head_size = num_heads, dim // num_heads
        self.all_head_size = dim
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.num_attention_heads, self.attention_head_size).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        context = torch.matmul(scores.softmax(dim=-1), v).permute(0, 2, 1, 3)
        return context.reshape(*context.shape[:-2], self.all_head_size)


class SelfOutput(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class BertAttention(nn.Module):
    """``BertAttention``: ``self`` (the heads) and ``output`` (their projection) as two modules, as BERT has them."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.self, self.output = SelfAttention(dim, num_heads), SelfOutput(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x))


class Layer(nn.Module):
    """A BERT layer, post-norm: LayerNorm(x + attention(x)), then LayerNorm(h + MLP(h))."""

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.attention, self.norm1 = BertAttention(dim, num_heads), nn.LayerNorm(dim)
        self.intermediate, self.act, self.out = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.out(self.act(self.intermediate(x))))


class TextTransformer(nn.Module):
    """A small text classifier over token ids (batch, length), int64, 0 = padding (defaults: 256 byte-level
    tokens, 64 positions, width 64, 2 layers of 4 heads: about 120k parameters)."""

    def __init__(self, *, num_classes: int, vocab_size: int = 256, max_length: int = 64, dim: int = 64,
                 depth: int = 2, num_heads: int = 4, hidden: int = 128) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_length, dim)
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.Sequential(*(Layer(dim, num_heads, hidden) for _ in range(depth)))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.word_embeddings(ids) + self.position_embeddings(positions))
        x = self.layers(x)
        kept = (ids != 0).unsqueeze(-1).to(x.dtype)
        return self.classifier((x * kept).sum(1) / kept.sum(1).clamp(min=1.0))
