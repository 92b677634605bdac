"""GRU encoder-decoder translation, with or without attention.

- `attention: none`: the decoder starts from one fixed vector (the encoder's final state) and must carry the
  whole sentence in it: the bottleneck attention was invented to remove (Sutskever et al. 2014, Cho et al. 2014).
- `attention: luong`: the decoder GRU runs first and its output attends over the encoder states with a bilinear
  ("general") score (Luong et al. 2015); training runs the whole target sequence in one GRU call.
- `attention: bahdanau`: the previous decoder state attends with an additive score and the context is fed
  into the GRU step (Bahdanau et al. 2015); training steps through time, so it is slower per token.
- `bidirectional: true`: the encoder reads the source both ways (the curriculum's bidirectional RNN);
  both directions' final states initialise the decoder through a bridge layer.
Padding never leaks in: the encoder runs on packed sequences and attention masks padded positions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dlzoo.errors import ConfigError
from dlzoo.models.translation import Translator
from dlzoo.vocab import PAD


class LuongAttention(nn.Module):
    """score(q, k) = q^T W k."""

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        self.proj = nn.Linear(query_dim, key_dim, bias=False)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = torch.bmm(self.proj(query), keys.transpose(1, 2))  # [B, t, S]
        weights = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        return torch.bmm(weights.to(keys.dtype), keys), weights


class BahdanauAttention(nn.Module):
    """score(q, k) = v^T tanh(W q + U k)."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int):
        super().__init__()
        self.query, self.key, self.v = nn.Linear(query_dim, attn_dim, bias=False), nn.Linear(key_dim, attn_dim), nn.Linear(attn_dim, 1, bias=False)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.v(torch.tanh(self.query(query)[:, :, None] + self.key(keys)[:, None])).squeeze(-1)  # [B, t, S]
        weights = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        return torch.bmm(weights.to(keys.dtype), keys), weights


class Seq2Seq(Translator):
    __constants__ = ["max_len", "pad", "bos", "eos", "bidirectional", "attend_before"]

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_dim: int = 256, hidden_size: int = 256,
                 attention: str = "luong", bidirectional: bool = True, dropout: float = 0.2, max_len: int = 80):
        super().__init__(max_len)
        if attention not in ("none", "luong", "bahdanau"):
            raise ConfigError(f"model.net.attention must be none, luong or bahdanau, got {attention!r}")
        self.bidirectional, self.attend_before = bidirectional, attention == "bahdanau"
        self.attends = attention != "none"
        enc_dim = hidden_size * (2 if bidirectional else 1)
        self.src_embed = nn.Embedding(src_vocab_size, embed_dim, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, embed_dim, padding_idx=PAD)
        self.encoder = nn.GRU(embed_dim, hidden_size, batch_first=True, bidirectional=bidirectional)
        self.bridge = nn.Linear(enc_dim, hidden_size)  # final encoder state(s) -> the decoder's first state
        self.decoder = nn.GRU(embed_dim + (enc_dim if self.attend_before else 0), hidden_size, batch_first=True)
        self.attention, self.combine = None, None  # stay None without attention (TorchScript drops those branches)
        if attention == "luong":
            self.attention = LuongAttention(hidden_size, enc_dim)
        elif attention == "bahdanau":
            self.attention = BahdanauAttention(hidden_size, enc_dim, hidden_size)
        if self.attention is not None:
            self.combine = nn.Linear(hidden_size + enc_dim, hidden_size)  # [decoder output; context] -> features
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, tgt_vocab_size)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mask = src != self.pad
        packed = pack_padded_sequence(self.dropout(self.src_embed(src)), mask.sum(1).cpu(), batch_first=True, enforce_sorted=False)
        outputs, final = self.encoder(packed)
        memory, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.size(1))
        last = torch.cat([final[-2], final[-1]], dim=-1) if self.bidirectional else final[-1]
        return memory, mask, torch.tanh(self.bridge(last)).unsqueeze(1)  # state [B, 1, H]

    def decode(self, tokens: Tensor, memory: Tensor, src_mask: Tensor, state: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        embedded = self.dropout(self.tgt_embed(tokens))
        hidden = state.transpose(0, 1).contiguous()  # GRU wants [layers, B, H]
        weights = torch.zeros(tokens.size(0), tokens.size(1), memory.size(1), device=tokens.device)
        if self.attention is None or self.combine is None:
            features, hidden = self.decoder(embedded, hidden)
        else:
            if self.attend_before:  # Bahdanau: attend with the previous state, feed the context in
                outputs, contexts, step_weights = [], [], []
                for t in range(tokens.size(1)):
                    context, w = self.attention(hidden.transpose(0, 1), memory, src_mask)
                    out, hidden = self.decoder(torch.cat([embedded[:, t : t + 1], context.to(embedded.dtype)], -1), hidden)
                    outputs.append(out)
                    contexts.append(context)
                    step_weights.append(w)
                output, context, weights = torch.cat(outputs, 1), torch.cat(contexts, 1), torch.cat(step_weights, 1)
            else:  # Luong: run the GRU over all tokens, then attend with its outputs
                output, hidden = self.decoder(embedded, hidden)
                context, weights = self.attention(output, memory, src_mask)
            features = torch.tanh(self.combine(torch.cat([output, context.to(output.dtype)], -1)))
        return self.out(self.dropout(features)), hidden.transpose(0, 1), weights
