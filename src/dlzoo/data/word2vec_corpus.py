"""A tokenised one-sentence-per-line corpus (data/enja/train.en, or train.ja) for word2vec.

`prepare` reads the training text once and writes, to `artifacts/data/embeddings-<lang>/`:
- `vocab.tsv`: word, count, keep probability; words with at least `min_count` occurrences
  (at most `max_vocab`), most frequent first (ties in word order), so ids are deterministic;
- `corpus.npz`: the training and validation sentences as word ids (out-of-vocabulary words
  dropped, as word2vec and gensim do), flat `*_ids` with `*_offsets` marking sentence starts;
- `summary.json`: line and token counts, what was skipped and why, and the subsampling stats.

Subsampling of frequent words follows word2vec/gensim exactly: with t = sample * (retained
tokens), a word seen c times is kept with probability (sqrt(c / t) + 1) * t / c (capped at 1).

The DataModule serves, each epoch, freshly drawn training examples, as word2vec does: frequent
words subsampled, then a "reduced window" per position (an effective window drawn uniformly
from 1..window, gensim's `reduced_windows`) giving
- skip-gram: (center, context) pairs, one per word within the center's window;
- CBOW: (center, contexts) with the window's words in a (n, 2 * window) matrix padded with -1.
Examples are generated vectorised with numpy and served in large shuffled batches; negatives
are drawn by the model (dlzoo/models/word2vec.py) from the unigram^0.75 noise distribution.
The validation split (dev.en by default: sentences never trained on) is drawn once, seeded.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from dlzoo.data.common import SplitDataModule, require_prepared, require_raw
from dlzoo.io import read_json, write_json
from dlzoo.errors import ConfigError, DataError
from dlzoo.vocab import read_word_counts

log = logging.getLogger(__name__)

ARCHITECTURES = ("skipgram", "cbow")


# ----------------------------------------------------------------------------- reading and vocab
def read_sentences(path: str | Path, max_line_tokens: int = 1000, max_lines: int | None = None) -> tuple[list[list[str]], dict]:
    """Whitespace-tokenised lines of `path`. Empty lines are skipped, lines longer than
    `max_line_tokens` truncated, undecodable bytes replaced (U+FFFD); each is counted."""
    path = require_raw(path)
    sentences: list[list[str]] = []
    stats = {"lines": 0, "empty_lines_skipped": 0, "long_lines_truncated": 0, "lines_with_bad_utf8": 0}
    with open(path, "rb") as f:
        for raw in f:
            if max_lines is not None and stats["lines"] >= max_lines:
                break
            stats["lines"] += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                stats["lines_with_bad_utf8"] += 1
            tokens = line.split()
            if not tokens:
                stats["empty_lines_skipped"] += 1
                continue
            if len(tokens) > max_line_tokens:
                tokens = tokens[:max_line_tokens]
                stats["long_lines_truncated"] += 1
            sentences.append(tokens)
    return sentences, stats


def build_vocab(sentences: list[list[str]], min_count: int = 2, max_vocab: int | None = None) -> tuple[list[str], np.ndarray]:
    """Words seen at least `min_count` times, most frequent first (ties alphabetical), with their counts."""
    from collections import Counter

    if min_count < 1:
        raise ConfigError(f"data.prepare.min_count must be >= 1, got {min_count}")
    counts = Counter(w for s in sentences for w in s)
    kept = sorted(((w, c) for w, c in counts.items() if c >= min_count), key=lambda wc: (-wc[1], wc[0]))
    if max_vocab is not None:
        kept = kept[:max_vocab]
    return [w for w, _ in kept], np.array([c for _, c in kept], dtype=np.int64)


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec's subsampling: P(keep) = (sqrt(c / t) + 1) * t / c with t = sample * sum(counts), capped at 1.
    `sample` <= 0 turns subsampling off."""
    counts = np.asarray(counts, dtype=np.float64)
    if sample <= 0:
        return np.ones_like(counts)
    threshold = sample * counts.sum()
    return np.minimum((np.sqrt(counts / threshold) + 1.0) * threshold / counts, 1.0)


def encode(sentences: list[list[str]], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Sentences -> flat ids (OOV words dropped) and offsets (sentence i = ids[offsets[i]:offsets[i+1]]).
    Sentences left with no in-vocabulary word are dropped; their number is returned."""
    ids, lengths, dropped = [], [], 0
    for s in sentences:
        encoded = [index[w] for w in s if w in index]
        if encoded:
            ids.extend(encoded)
            lengths.append(len(encoded))
        else:
            dropped += 1
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.asarray(ids, dtype=np.int32), offsets, dropped


def prepare(
    out_dir: str, train_file: str = "data/enja/train.en", val_file: str = "data/enja/dev.en",
    min_count: int = 2, max_vocab: int | None = None, sample: float = 1e-3,
    max_line_tokens: int = 1000, max_lines: int | None = None,
) -> dict:
    """Vocabulary, subsampling probabilities and id-encoded sentences (see the module docstring)."""
    sentences, train_stats = read_sentences(train_file, max_line_tokens, max_lines)
    if not sentences:
        raise DataError(f"{train_file} has no tokens ({train_stats['lines']} lines, all empty): word2vec needs a non-empty corpus")
    words, counts = build_vocab(sentences, min_count, max_vocab)
    if not words:
        raise DataError(f"no word of {train_file} occurs min_count={min_count} times: lower data.prepare.min_count or use a larger corpus")
    keep = keep_probabilities(counts, sample)
    index = {w: i for i, w in enumerate(words)}
    train_ids, train_offsets, train_dropped = encode(sentences, index)
    val_sentences, val_stats = read_sentences(val_file, max_line_tokens)
    val_ids, val_offsets, val_dropped = encode(val_sentences, index)
    if len(val_offsets) < 2:
        raise DataError(f"the validation text {val_file} has no in-vocabulary words: val/loss cannot be computed")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "vocab.tsv", "w", encoding="utf-8") as f:
        f.write("word\tcount\tkeep_prob\n")
        for w, c, k in zip(words, counts, keep):
            f.write(f"{w}\t{c}\t{k:.6f}\n")
    np.savez_compressed(out / "corpus.npz", train_ids=train_ids, train_offsets=train_offsets, val_ids=val_ids, val_offsets=val_offsets)
    n_tokens = sum(len(s) for s in sentences)
    summary = {
        "train_file": str(train_file), "val_file": str(val_file),
        "min_count": min_count, "max_vocab": max_vocab, "sample": sample,
        "vocab_size": len(words),
        "train_lines": train_stats["lines"], "train_sentences": int(len(train_offsets) - 1),
        "train_tokens": n_tokens, "train_tokens_in_vocab": int(len(train_ids)),
        "train_oov_token_rate": 1.0 - len(train_ids) / n_tokens,
        "train_sentences_all_oov_dropped": train_dropped,
        **{f"train_{k}": v for k, v in train_stats.items() if k != "lines"},
        "val_sentences": int(len(val_offsets) - 1), "val_tokens_in_vocab": int(len(val_ids)),
        "val_sentences_all_oov_dropped": val_dropped,
        **{f"val_{k}": v for k, v in val_stats.items()},
        "val_oov_token_rate": 1.0 - len(val_ids) / max(sum(len(s) for s in val_sentences), 1),
        # Expected share of in-vocabulary tokens that survive subsampling in an epoch.
        "subsampling_expected_kept_fraction": float((keep * counts).sum() / counts.sum()),
        "subsampled_words": int((keep < 1).sum()),
    }
    for key in ("empty_lines_skipped", "long_lines_truncated", "lines_with_bad_utf8"):
        if train_stats[key]:
            log.warning("%s: %d %s", train_file, train_stats[key], key.replace("_", " "))
    write_json(out / "summary.json", summary)
    return summary


def load_vocab(data_dir: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    return read_word_counts(Path(data_dir) / "vocab.tsv")


def load_sentences(data_dir: str | Path, split: str, words: list[str]) -> list[list[str]]:
    """The prepared split as lists of words (what the gensim reference trains on)."""
    with np.load(Path(data_dir) / "corpus.npz") as d:
        ids, offsets = d[f"{split}_ids"], d[f"{split}_offsets"]
    vocab = np.asarray(words, dtype=object)
    return [vocab[ids[a:b]].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


# ----------------------------------------------------------------------------- training examples
def subsample(ids: np.ndarray, offsets: np.ndarray, keep_prob: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Drop each token with probability 1 - keep_prob[word]; return kept ids and their sentence numbers."""
    sentence = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    if keep_prob is None:
        return ids, sentence
    kept = rng.random(len(ids)) < keep_prob[ids]
    return ids[kept], sentence[kept]


def reduced_windows(n: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Effective window per position, uniform in 1..window (word2vec's `b`, gensim's reduced_windows)."""
    return window - rng.integers(0, window, n)


def skipgram_pairs(ids: np.ndarray, sentence: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(center, context) word ids: every word of the same sentence within windows[center] positions."""
    centers, contexts = [], []
    for d in range(1, int(windows.max(initial=0)) + 1):
        i = np.arange(len(ids) - d)
        j = i + d
        same = sentence[i] == sentence[j]
        right = same & (windows[i] >= d)  # j is in i's window
        left = same & (windows[j] >= d)  # i is in j's window
        centers += [i[right], j[left]]
        contexts += [j[right], i[left]]
    c, x = np.concatenate(centers or [np.zeros(0, int)]), np.concatenate(contexts or [np.zeros(0, int)])
    return ids[c], ids[x]


def cbow_examples(ids: np.ndarray, sentence: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(center, contexts): the words within windows[center] positions, same sentence, as a
    (n, 2 * max window) matrix (left side, nearest last; right side, nearest first; -1 = none).
    Positions with no context word (one-word sentences) are dropped."""
    n, window = len(ids), int(windows.max(initial=1))
    contexts = np.full((n, 2 * window), -1, dtype=np.int64)
    pos = np.arange(n)
    for d in range(1, window + 1):
        for col, j in ((window - d, pos - d), (window + d - 1, pos + d)):
            ok = (j >= 0) & (j < n) & (windows >= d)
            ok[ok] &= sentence[j[ok]] == sentence[pos[ok]]
            contexts[ok, col] = ids[j[ok]]
    has = (contexts >= 0).any(axis=1)
    return ids[has].astype(np.int64), contexts[has]


def make_examples(architecture: str, ids, offsets, keep_prob, window: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's examples: subsample, draw a reduced window per kept position, pair up."""
    kept, sentence = subsample(ids, offsets, keep_prob, rng)
    windows = reduced_windows(len(kept), window, rng)
    if architecture == "skipgram":
        return skipgram_pairs(kept, sentence, windows)
    return cbow_examples(kept, sentence, windows)


class EpochExamples(IterableDataset):
    """Each pass (epoch) draws new examples, shuffles them and yields `n_batches` batches of
    (center, context[s]) tensors. The batch count is fixed (from the first draw) so Lightning's
    step count and the LR schedule are known up front; a later draw's few extra examples are
    dropped, or a few missing ones drawn again at random (the count varies by ~0.1%)."""

    def __init__(self, architecture, ids, offsets, keep_prob, window: int, batch_size: int, seed: int):
        self.architecture, self.ids, self.offsets, self.keep_prob = architecture, ids, offsets, keep_prob
        self.window, self.batch_size, self.seed, self.epoch = window, batch_size, seed, 0
        first = make_examples(architecture, ids, offsets, keep_prob, window, np.random.default_rng([seed, 0]))
        self.n_examples = len(first[0])
        if self.n_examples == 0:
            raise DataError("the training corpus yields no word2vec examples (every sentence has one word?)")
        self.n_batches = max(1, self.n_examples // batch_size)

    def __len__(self) -> int:
        _, world = _rank_world()
        return self.n_batches // world if self.n_batches >= world else 1

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        center, context = make_examples(self.architecture, self.ids, self.offsets, self.keep_prob, self.window, rng)
        need = self.n_batches * self.batch_size
        order = rng.permutation(len(center))
        if len(order) < need:
            order = np.concatenate([order, rng.integers(0, len(center), need - len(order))])
        order = order[:need]
        center = torch.from_numpy(center[order].astype(np.int64))
        context = torch.from_numpy(context[order].astype(np.int64))
        rank, world = _rank_world()
        for b in range(rank, len(self) * world, world):
            s = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield center[s], context[s]


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Word2VecDataModule(SplitDataModule):
    """Training examples drawn anew each epoch (`EpochExamples`); validation examples drawn once
    from the held-out sentences with a fixed seed. There is no test split: word2vec is scored on
    word similarity and analogies (dlzoo/evaluation/embeddings.py). Examples are generated in the
    main process (vectorised, well under a second per epoch): no loader workers."""

    def __init__(self, data_dir: str, architecture: str = "skipgram", window: int = 5, subsample: bool = True,
                 batch_size: int = 4096, seed: int = 0):
        super().__init__(batch_size, num_workers=0)
        if architecture not in ARCHITECTURES:
            raise ConfigError(f"data.module.architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
        if window < 1:
            raise ConfigError(f"data.module.window must be >= 1, got {window}")
        self.data_dir, self.architecture, self.window = data_dir, architecture, window
        self.use_subsampling, self.seed = subsample, seed

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        data_dir = require_prepared(self.data_dir, "vocab.tsv", "corpus.npz", "summary.json")
        self.words, self.counts, keep = load_vocab(data_dir)
        self.keep_prob = keep if self.use_subsampling else None
        self.summary = read_json(data_dir / "summary.json")
        with np.load(data_dir / "corpus.npz") as d:
            corpus = {k: d[k] for k in d.files}
        if len(corpus["train_ids"]) == 0:
            raise DataError(f"{data_dir}/corpus.npz has no training tokens: rerun the prepare stage on a non-empty corpus")
        self.train_tokens = int(len(corpus["train_ids"]))
        self.datasets["train"] = EpochExamples(self.architecture, corpus["train_ids"], corpus["train_offsets"], self.keep_prob,
                                               self.window, self.batch_size, self.seed)
        center, context = make_examples(self.architecture, corpus["val_ids"], corpus["val_offsets"], self.keep_prob, self.window,
                                        np.random.default_rng([self.seed, 10**6]))
        self.datasets["val"] = torch.utils.data.TensorDataset(torch.from_numpy(center.astype(np.int64)), torch.from_numpy(context.astype(np.int64)))

    def train_dataloader(self) -> DataLoader:
        # Lightning warns that an IterableDataset's __len__ can be wrong with several workers; there are none.
        warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
        # The dataset yields whole batches already; batch_size=None passes them through.
        return DataLoader(self.datasets["train"], batch_size=None, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        raise DataError("word2vec has no test loader: evaluate with dlzoo.evaluation.embeddings (word similarity, analogies)")
