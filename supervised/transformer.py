"""A pre-norm Transformer: causal decoder (character LM) or bidirectional encoder (classifier)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float, causal: bool):
        super().__init__()
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        batch, steps, width = x.shape
        q, k, v = self.qkv(x).view(batch, steps, 3, self.heads, width // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, C / heads)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(batch, steps, width))


class Block(nn.Module):
    """x + attn(norm(x)); x + mlp(norm(x)): pre-norm keeps deep stacks trainable without warmup
    tricks."""

    def __init__(self, d_model: int, heads: int, ff_mult: int, dropout: float, causal: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads, dropout, causal)
        self.mlp = nn.Sequential(nn.Linear(d_model, ff_mult * d_model), nn.GELU(),
                                 nn.Linear(ff_mult * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


def sinusoidal(max_len: int, d_model: int) -> torch.Tensor:
    """The fixed sin/cos position table of 'Attention is all you need': (1, max_len, d_model)."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    scale = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                      * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * scale)
    table[:, 1::2] = torch.cos(position * scale[: d_model // 2])
    return table[None]


class TransformerNet(nn.Module):
    """Tokens (vocab > 0) or feature vectors (input_dim > 0) -> blocks -> head.

    causal=True: next-token logits at every step (B, T, vocab). causal=False: mean-pooled
    sequence -> class logits (B, classes).
    """

    def __init__(self, num_outputs: int, d_model: int, heads: int, layers: int, ff_mult: int,
                 dropout: float, positions: str, max_len: int, input_dim: int = 0,
                 vocab: int = 0, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.embed = nn.Embedding(vocab, d_model) if vocab else nn.Linear(input_dim, d_model)
        if positions == "learned":
            self.positions = nn.Parameter(torch.zeros(1, max_len, d_model))
            nn.init.normal_(self.positions, std=0.02)
        else:
            self.register_buffer("positions", sinusoidal(max_len, d_model), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(d_model, heads, ff_mult, dropout, causal)
                                      for _ in range(layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) ids or (B, T, F)
        steps = x.shape[1]
        h = self.drop(self.embed(x) + self.positions[:, :steps])  # (B, T, C)
        h = self.norm(self.blocks(h))
        return self.head(h if self.causal else h.mean(dim=1))
