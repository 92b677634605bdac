"""What every translation family shares: the encoder-decoder interface, greedy and beam decoding,
the Lightning module (label-smoothed cross-entropy, dev-style BLEU on the held-out split) and the
warmup learning-rate schedule.

A family (seq2seq.py, transformer.py) subclasses `Translator` and implements
- `encode(src) -> (memory, src_mask, state)`: encoder outputs [B, S, H], True where src is a real token,
  and the decoder's recurrent state, batch-first ([B, ...]; an empty [B, 0] when it has none);
- `decode(tokens, memory, src_mask, state, need_weights) -> (logits [B, t, V], state, attention [B, t, S])`:
  decodes `tokens` given the state after the tokens before them (a GRU's hidden state; the Transformer's
  self-attention key/value cache). Every state is batch-first, so beam search can reorder it with one index.
Greedy search (`forward`) is TorchScript-compatible, so `torch.jit.script(net)` is a self-contained translator.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlzoo.models.base import FamilyModule
from dlzoo.vocab import BOS, EOS, PAD, load_direction_vocabs


class Translator(nn.Module):
    __constants__ = ["max_len", "pad", "bos", "eos"]  # TorchScript folds branches on these

    def __init__(self, max_len: int = 80):
        super().__init__()
        self.max_len = max_len
        self.pad, self.bos, self.eos = PAD, BOS, EOS  # module constants: TorchScript cannot read globals

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def decode(self, tokens: Tensor, memory: Tensor, src_mask: Tensor, state: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def logits(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: next-token logits [B, T, V] for every target position."""
        memory, src_mask, state = self.encode(src)
        return self.decode(tgt_in, memory, src_mask, state, False)[0]

    @torch.jit.export
    def decode_step(self, last: Tensor, memory: Tensor, src_mask: Tensor, state: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probabilities of the token after `last` [B] -> ([B, V], new state, attention [B, S] if `need_weights`)."""
        # contiguous: int8 embedding kernels (dynamic quantisation) refuse strided index tensors
        logits, state, attention = self.decode(last[:, None].contiguous(), memory, src_mask, state, need_weights)
        return F.log_softmax(logits[:, -1].float(), dim=-1), state, attention[:, -1]

    @torch.jit.export
    def length_limit(self, src: Tensor) -> int:
        return min(self.max_len, 2 * int(src.size(1)) + 10)

    def forward(self, src: Tensor) -> Tensor:
        """Greedy translation of a padded batch: token ids [B, L], PAD after each sentence's EOS."""
        memory, src_mask, state = self.encode(src)
        batch = src.size(0)
        ys = torch.full((batch, 1), self.bos, dtype=torch.long, device=src.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
        for _ in range(self.length_limit(src)):
            log_probs, state, _ = self.decode_step(ys[:, -1], memory, src_mask, state, False)
            token = log_probs.argmax(-1).masked_fill(finished, self.pad)
            ys = torch.cat([ys, token[:, None]], dim=1)
            finished = finished | (token == self.eos)
            if bool(finished.all()):
                break
        return ys[:, 1:]


@torch.no_grad()
def beam_search(net, src: Tensor, beam: int = 5, length_penalty: float = 1.0) -> Tensor:
    """Batched beam search over `net.encode`/`net.decode_step` (works on the nn.Module and on its TorchScript
    export). Finished hypotheses are extended with PAD at no cost; the final pick divides each score by
    length**length_penalty. With beam=1 this is exactly greedy search. Returns ids [B, L] like `forward`."""
    if beam < 1:
        raise ValueError(f"beam size must be >= 1, got {beam}")
    memory, src_mask, state = net.encode(src)
    batch = src.size(0)
    expand = torch.arange(batch).repeat_interleave(beam)
    memory, src_mask, state = memory[expand], src_mask[expand], state[expand]
    scores = torch.full((batch, beam), float("-inf"))
    scores[:, 0] = 0.0  # all beams start identical: keep one alive so the first step does not pick duplicates
    ys = torch.full((batch * beam, 1), BOS, dtype=torch.long)
    finished = torch.zeros(batch * beam, dtype=torch.bool)
    lengths = torch.zeros(batch * beam)
    for _ in range(net.length_limit(src)):
        log_probs, state, _ = net.decode_step(ys[:, -1], memory, src_mask, state, False)
        vocab = log_probs.size(-1)
        pad_only = torch.full_like(log_probs, float("-inf"))
        pad_only[:, PAD] = 0.0
        log_probs = torch.where(finished[:, None], pad_only, log_probs)
        top, flat_idx = (scores.reshape(-1, 1) + log_probs).reshape(batch, beam * vocab).topk(beam, dim=-1)
        parent = (torch.arange(batch)[:, None] * beam + flat_idx // vocab).reshape(-1)
        token = (flat_idx % vocab).reshape(-1)
        ys = torch.cat([ys[parent], token[:, None]], dim=1)
        state, lengths = state[parent], lengths[parent] + (~finished[parent]).float()
        finished = finished[parent] | (token == EOS)
        scores = top
        if bool(finished.all()):
            break
    normalised = scores / lengths.reshape(batch, beam).clamp(min=1) ** length_penalty
    best = normalised.argmax(-1) + torch.arange(batch) * beam
    return ys[best, 1:]


def warmup_schedule(optimizer, total_steps: int, warmup_steps: int = 1000, decay: str = "linear"):
    """Linear warmup to the base LR over `warmup_steps`, then `linear` decay to 0 at `total_steps` (best for a
    fixed, short budget) or `inverse_sqrt` decay (the original Transformer schedule)."""
    if decay not in ("linear", "inverse_sqrt"):
        raise ValueError(f"decay must be linear or inverse_sqrt, got {decay!r}")
    warmup_steps = max(1, min(warmup_steps, total_steps // 2))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        return math.sqrt(warmup_steps / (step + 1))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TranslationModule(FamilyModule):
    """Trains any `Translator`: label-smoothed cross-entropy with teacher forcing; every validation epoch
    greedy-decodes the held-out split and logs its BLEU (val/bleu picks the checkpoint)."""

    mlflow_serialization = "pickle"  # greedy search loops until EOS: torch.export cannot trace it

    def __init__(self, net, optimizer, data_dir: str, direction: str = "en-ja", scheduler=None,
                 scheduler_interval: str = "step", label_smoothing: float = 0.1):
        self.src_vocab, self.tgt_vocab = load_direction_vocabs(data_dir, direction)
        # `net` is a partial: the vocabulary sizes come from the prepared data, not from config.
        super().__init__(net(src_vocab_size=len(self.src_vocab), tgt_vocab_size=len(self.tgt_vocab)),
                         optimizer, scheduler, scheduler_interval)
        self.label_smoothing = label_smoothing
        self._hyps: list[str] = []
        self._refs: list[str] = []
        self._tokens, self._t0 = 0, 0.0

    def net_kwargs(self) -> dict[str, int]:
        """What a new network of this family needs from the data (a distillation student, for one)."""
        return {"src_vocab_size": len(self.src_vocab), "tgt_vocab_size": len(self.tgt_vocab)}

    def step(self, batch, split: str):
        src, tgt_in, tgt_out = batch
        logits = self.net.logits(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), tgt_out.reshape(-1),
                               ignore_index=PAD, label_smoothing=self.label_smoothing if split == "train" else 0.0)
        self.log(f"{split}/loss", loss, prog_bar=split == "train", on_step=False, on_epoch=True, batch_size=src.size(0))
        if split == "train":
            self._tokens += int((tgt_out != PAD).sum())
        else:
            self._hyps += [" ".join(self.tgt_vocab.decode(row)) for row in self.net(src).tolist()]
            self._refs += [" ".join(self.tgt_vocab.decode(row)) for row in tgt_out.tolist()]
        return loss

    def on_train_epoch_start(self):
        self._tokens, self._t0 = 0, time.perf_counter()

    def on_train_epoch_end(self):
        self.log("train/tokens_per_s", self._tokens / max(time.perf_counter() - self._t0, 1e-9))

    def on_validation_epoch_end(self):
        import sacrebleu

        if self._hyps:
            bleu = sacrebleu.corpus_bleu(self._hyps, [self._refs], tokenize="none").score
            self.log("val/bleu", bleu, prog_bar=True)
        self._hyps, self._refs = [], []
