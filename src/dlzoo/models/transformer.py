"""Transformer encoder-decoder translation (Vaswani et al. 2017), written out in one screen like nanoGPT.

Pre-LayerNorm blocks (train stably without a long warmup), sinusoidal positions, multi-head attention on
`F.scaled_dot_product_attention` (PyTorch's fused kernel), the target embedding tied to the output layer.
Key-padding masks keep padding out of every attention; the decoder's self-attention is causal.
Decoding caches each decoder layer's self-attention keys/values (the "state"), so a step costs one position.
For the attention heat-maps the last decoder layer's cross-attention weights are computed explicitly (the
fused kernel does not return them).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlzoo.models.translation import Translator
from dlzoo.vocab import PAD


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query, self.key_value, self.out = nn.Linear(d_model, d_model), nn.Linear(d_model, 2 * d_model), nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, memory: Tensor, key_mask: Optional[Tensor], causal: bool, need_weights: bool,
                cache: Optional[Tensor] = None, projected: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Attend from `x` [B, t, D] to `memory` [B, s, D] (or to its key/value projection [B, s, 2D] when
        `projected`). `cache` holds the key/value projections of earlier positions ([B, s0, 2D], decoder
        self-attention); they are prepended, and the result is returned as the new cache. `causal` masks
        future positions when the queries are the whole sequence (training)."""
        b, t, d = x.shape
        h = self.heads
        kv = memory if projected else self.key_value(memory)
        if cache is not None:
            kv = torch.cat([cache.to(kv.dtype), kv], dim=1)
        s = kv.size(1)
        q = self.query(x).view(b, t, h, d // h).transpose(1, 2)  # [B, h, t, dk]
        k, v = kv.view(b, s, 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        weights = torch.zeros(b, t, 0, device=x.device)
        causal = causal and t > 1  # one new query may see every cached position
        if need_weights:  # the explicit path, same maths as the fused kernel
            scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
            if causal:
                scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            attn = scores.softmax(-1)
            y, weights = attn.to(v.dtype) @ v, attn.mean(1)
        else:
            mask = key_mask[:, None, None, :] if key_mask is not None else None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=causal and mask is None)
        return self.out(y.transpose(1, 2).reshape(b, t, d)), weights, kv


class FeedForward(nn.Sequential):
    # No dropout inside (only on the residual branch): on CPU, drawing masks for the wide hidden layer
    # cost ~10% of a training step for no measurable gain within this project's short budgets.
    def __init__(self, d_model: int, d_ff: int):
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(d_model), MultiHeadAttention(d_model, heads, dropout), nn.LayerNorm(d_model)
        self.ff, self.drop = FeedForward(d_model, d_ff), nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.drop(self.attn(y, y, mask, False, False)[0])
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(d_model), MultiHeadAttention(d_model, heads, dropout)
        self.norm2, self.cross_attn = nn.LayerNorm(d_model), MultiHeadAttention(d_model, heads, dropout)
        self.norm3, self.ff, self.drop = nn.LayerNorm(d_model), FeedForward(d_model, d_ff), nn.Dropout(dropout)

    def forward(self, x: Tensor, memory_kv: Tensor, src_mask: Tensor, cache: Tensor, need_weights: bool) -> tuple[Tensor, Tensor, Tensor]:
        y = self.norm1(x)
        attended, _, cache = self.self_attn(y, y, None, True, False, cache)
        x = x + self.drop(attended)
        attended, weights, _ = self.cross_attn(self.norm2(x), memory_kv, src_mask, False, need_weights, None, True)
        x = x + self.drop(attended)
        return x + self.drop(self.ff(self.norm3(x))), weights, cache


def sinusoidal_positions(length: int, d_model: int) -> Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
    return pe


class Transformer(Translator):
    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, d_model: int = 256, heads: int = 4, encoder_layers: int = 3,
                 decoder_layers: int = 3, d_ff: int = 1024, dropout: float = 0.1, max_len: int = 80):
        super().__init__(max_len)
        self.scale, self.attends, self.d_model = math.sqrt(d_model), True, d_model
        self.src_embed = nn.Embedding(src_vocab_size, d_model, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model, padding_idx=PAD)
        self.register_buffer("positions", sinusoidal_positions(max(max_len, 256) + 1, d_model), persistent=False)
        self.encoder_layers = nn.ModuleList(EncoderLayer(d_model, heads, d_ff, dropout) for _ in range(encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(d_model, heads, d_ff, dropout) for _ in range(decoder_layers))
        self.encoder_norm, self.decoder_norm, self.drop = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.Dropout(dropout)
        self.out = nn.Linear(d_model, tgt_vocab_size)
        self.out.weight = self.tgt_embed.weight  # tied: the output layer scores tokens by their embeddings
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)
        nn.init.normal_(self.src_embed.weight, std=d_model**-0.5)
        nn.init.normal_(self.tgt_embed.weight, std=d_model**-0.5)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mask = src != self.pad
        x = self.drop(self.src_embed(src) * self.scale + self.positions[: src.size(1)])
        for layer in self.encoder_layers:
            x = layer(x, mask)
        x = self.encoder_norm(x)
        # What the decoder attends to, projected once per sentence (not once per decoding step): every
        # layer's cross-attention keys/values, [B, layers, S, 2 * d_model].
        projections = []
        for decoder_layer in self.decoder_layers:
            projections.append(decoder_layer.cross_attn.key_value(x))
        memory_kv = torch.stack(projections, dim=1)
        # The decoder state is its self-attention cache: [B, layers, positions so far, 2 * d_model].
        cache = torch.zeros(src.size(0), len(self.decoder_layers), 0, 2 * self.d_model, device=src.device, dtype=memory_kv.dtype)
        return memory_kv, mask, cache

    def decode(self, tokens: Tensor, memory: Tensor, src_mask: Tensor, state: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """`tokens` continue the `state.size(2)` positions already decoded (0 in training: the whole target)."""
        offset = state.size(2)
        x = self.drop(self.tgt_embed(tokens) * self.scale + self.positions[offset : offset + tokens.size(1)])
        weights = torch.zeros(tokens.size(0), tokens.size(1), 0, device=tokens.device)
        caches = []
        for i, layer in enumerate(self.decoder_layers):
            x, w, cache = layer(x, memory[:, i], src_mask, state[:, i], need_weights)
            caches.append(cache)
            weights = w
        return self.out(self.decoder_norm(x)), torch.stack(caches, dim=1), weights
