"""word2vec (Mikolov et al. 2013): skip-gram and CBOW with negative sampling, one file.

Two embedding tables: `inp` holds the word vectors we keep, `out` the output ("context")
vectors used only by the objective. For an example with input h and target word w,

    loss = -log sigmoid(out[w] . h) - sum_{k=1..negative} log sigmoid(-out[n_k] . h),

with the n_k drawn from the unigram distribution raised to `ns_exponent` (3/4 in the paper),
so frequent words are drawn less often than their frequency and rare ones more often.
- skip-gram: h = inp[context word], w = the center word (gensim's orientation; the pair set is
  symmetric anyway), one example per (center, context) pair;
- CBOW: h = the mean of inp over the window's words, w = the center word. As in word2vec.c
  and gensim (cbow_mean=1), every context word receives the *full* error of h, not 1/n of it.
Subsampling of frequent words and the reduced windows happen in the data
(dlzoo/data/word2vec_corpus.py), which serves batches of (center, context[s]).

Training follows the original recipe so the gensim reference is a like-for-like comparison:
plain SGD on the *summed* loss at lr 0.025 decayed linearly to 0.0001 over all steps, vectors
initialised uniform(-1/dim, 1/dim), output vectors zero. Batches of thousands of examples replace
word2vec's one-pair-at-a-time Hogwild updates; `nn.Embedding(sparse=True)` makes each step touch
only the rows in the batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlzoo.errors import ConfigError
from dlzoo.models.base import FamilyModule
from dlzoo.vocab import read_word_counts

ARCHITECTURES = ("skipgram", "cbow")


class Word2Vec(nn.Module):
    def __init__(self, vocab_file: str | None = None, counts: Sequence[int] | None = None, dim: int = 100,
                 architecture: str = "skipgram", negative: int = 5, ns_exponent: float = 0.75):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ConfigError(f"model.net.architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
        if (vocab_file is None) == (counts is None):
            raise ConfigError("Word2Vec needs exactly one of vocab_file (a prepared vocab.tsv) or counts")
        counts = torch.as_tensor(read_word_counts(vocab_file)[1] if counts is None else list(counts), dtype=torch.float64)
        if negative < 1:
            raise ConfigError(f"model.net.negative must be >= 1, got {negative}")
        self.architecture, self.negative, self.dim = architecture, negative, dim
        self.inp = nn.Embedding(len(counts), dim, sparse=True)
        self.out = nn.Embedding(len(counts), dim, sparse=True)
        with torch.no_grad():
            self.inp.weight.uniform_(-1.0 / dim, 1.0 / dim)
            self.out.weight.zero_()
        noise = counts**ns_exponent
        self.register_buffer("noise", (noise / noise.sum()).float())

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        """Word ids -> their vectors (what the model is for once trained)."""
        return self.inp(words)

    def sample_negatives(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, negative) word ids from the noise distribution."""
        return torch.multinomial(self.noise, n * self.negative, replacement=True, generator=generator).view(n, self.negative)

    def hidden(self, context: torch.Tensor) -> torch.Tensor:
        """The input side h: one context word's vector (skip-gram) or the window's mean (CBOW, -1 = padding)."""
        if self.architecture == "skipgram":
            return self.inp(context)
        mask = (context >= 0).unsqueeze(-1).to(self.inp.weight.dtype)
        summed = (self.inp(context.clamp(min=0)) * mask).sum(dim=1)
        mean = summed / mask.sum(dim=1).clamp(min=1)
        # Forward the mean, backward the full gradient to every context word (word2vec.c, gensim).
        return summed - summed.detach() + mean.detach()

    def loss(self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Per-example negative-sampling loss (batch,). A negative that equals the target is ignored, as in gensim."""
        h = self.hidden(context)
        targets = torch.cat([center.unsqueeze(1), negatives], dim=1)  # (batch, 1 + negative)
        scores = (self.out(targets) * h.unsqueeze(1)).sum(dim=-1)
        keep = (negatives != center.unsqueeze(1)).to(scores.dtype)
        return -(F.logsigmoid(scores[:, 0]) + (F.logsigmoid(-scores[:, 1:]) * keep).sum(dim=1))


def linear_decay(optimizer, total_steps: int, min_lr_factor: float = 0.004):
    """word2vec's learning rate: linear from lr to lr * min_lr_factor over all steps (0.025 -> 0.0001)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(1.0 - step / max(total_steps, 1), min_lr_factor))


class Word2VecModule(FamilyModule):
    """Optimises the summed loss (each example is one word2vec update); logs the mean per example,
    and training throughput in corpus tokens per second. The trained time and tokens are buffers,
    so they travel with the checkpoint to the evaluate stage."""

    def __init__(self, net: Word2Vec, optimizer, scheduler=None, scheduler_interval: str = "step", val_seed: int = 0,
                 num_threads: int | None = 1):
        super().__init__(net, optimizer, scheduler, scheduler_interval)
        self.val_seed, self.num_threads = val_seed, num_threads
        self.register_buffer("train_seconds", torch.zeros((), dtype=torch.float64))
        self.register_buffer("trained_tokens", torch.zeros((), dtype=torch.float64))
        self._val_generator: torch.Generator | None = None

    def step(self, batch, split: str) -> torch.Tensor:
        center, context = batch
        generator = self._val_generator if split == "val" else None  # the same val negatives every epoch
        negatives = self.net.sample_negatives(len(center), generator)
        loss = self.net.loss(center, context, negatives)
        self.log(f"{split}/loss", loss.mean(), on_step=False, on_epoch=True, prog_bar=split == "val", sync_dist=True)
        return loss.sum()

    def on_fit_start(self) -> None:
        # Each step is a handful of small gathers: a second intra-op thread gains little, and when
        # the cores are shared every op waits for it (measured ~8x slower under load on 2 cores).
        self._threads_before = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)

    def on_fit_end(self) -> None:
        torch.set_num_threads(self._threads_before)

    def on_validation_epoch_start(self) -> None:
        self._val_generator = torch.Generator(device=self.device).manual_seed(self.val_seed)

    def on_train_epoch_start(self) -> None:
        self._epoch_start, self._epoch_batches = time.perf_counter(), 0

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._epoch_batches += 1
        if self._epoch_batches == self.trainer.num_training_batches:  # the epoch's last batch: before val and checkpointing
            self._record_throughput(time.perf_counter() - self._epoch_start)

    def _record_throughput(self, seconds: float) -> None:
        dm = self.trainer.datamodule
        if not hasattr(dm, "train_tokens"):  # fitted on bare dataloaders
            return
        # Corpus tokens the epoch covered (in-vocabulary, before subsampling: gensim's "raw words"),
        # scaled down when the profile limits the batches; all ranks together cover the corpus once.
        tokens = dm.train_tokens * self._epoch_batches / len(dm.datasets["train"])  # len: this rank's batches
        self.train_seconds += seconds
        self.trained_tokens += tokens
        self.log("train/tokens_per_s", tokens / max(seconds, 1e-9), on_step=False, on_epoch=True, batch_size=1)
        self.log("train/epoch_seconds", seconds, on_step=False, on_epoch=True, batch_size=1)


def vectors(module: Word2VecModule | Word2Vec) -> np.ndarray:
    """The trained word vectors (vocab_size, dim) as numpy."""
    net = module.net if isinstance(module, Word2VecModule) else module
    return net.inp.weight.detach().cpu().numpy().copy()
