"""Vocabularies and special token ids: what the data preparation writes and the models, evaluators and the
translate CLI read. It lives outside dlzoo.data so a network can know its special ids, and a training
module its vocabulary, without importing any dataset or DataModule code.

Translation (enja): two kinds of vocabulary map corpus tokens to ids, with the same special ids
(PAD 0, BOS 1, EOS 2, UNK 3), so models never need to know which one they were given:
- `WordVocab`: one id per corpus word, built from the training split only (min count, max size).
- `SubwordVocab`: a sentencepiece model trained on the training split; decoding gives corpus words back.
`load_vocab` reads either from the `vocab.<lang>.json` the prepare stage wrote; `load_direction_vocabs`
gives the (source, target) pair of a translation direction.

word2vec: `read_word_counts` reads the prepared `vocab.tsv` (word, count, keep probability).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dlzoo.errors import ConfigError, DataError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
DIRECTIONS = ("en-ja", "ja-en")
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def content_ids(ids: Iterable[int]) -> list[int]:
    """The ids of a decoded sentence: up to its first EOS, without PAD/BOS."""
    kept = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i not in (PAD, BOS):
            kept.append(i)
    return kept


class WordVocab:
    """Corpus word <-> id, most frequent first (ties broken alphabetically, so builds are deterministic)."""

    kind = "word"

    def __init__(self, itos: list[str]):
        if itos[: len(SPECIALS)] != SPECIALS:
            raise DataError(f"a vocabulary must start with the specials {SPECIALS}")
        self.itos = itos
        self.stoi = {w: i for i, w in enumerate(itos)}

    @classmethod
    def build(cls, sentences: Iterable[list[str]], min_count: int = 1, max_size: int | None = None) -> WordVocab:
        if min_count < 1:
            raise ConfigError(f"vocabulary min_count must be >= 1, got {min_count}")
        counts = Counter(w for s in sentences for w in s)
        if not counts:
            raise DataError("cannot build a vocabulary from an empty corpus")
        words = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIALS), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - len(SPECIALS))]
        return cls(SPECIALS + words)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.stoi.get(t, UNK) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> words, stopping at EOS and dropping PAD/BOS (UNK stays visible as <unk>)."""
        return [self.itos[i] if i < len(self.itos) else SPECIALS[UNK] for i in content_ids(ids)]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"kind": self.kind, "itos": self.itos}, ensure_ascii=False) + "\n")


class SubwordVocab:
    """A sentencepiece model over the corpus words (spaces become word boundaries, so decoding restores them)."""

    kind = "subword"

    def __init__(self, model_file: str | Path | None = None, model_proto: bytes | None = None):
        import sentencepiece as spm

        self.model_file = str(model_file) if model_file else None
        self.sp = spm.SentencePieceProcessor(model_file=self.model_file) if model_file else spm.SentencePieceProcessor(model_proto=model_proto)
        self.itos = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]

    @classmethod
    def train(cls, sentences: list[list[str]], prefix: str | Path, vocab_size: int) -> SubwordVocab:
        import sentencepiece as spm

        if not sentences:
            raise DataError("cannot train sentencepiece on an empty corpus")
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(" ".join(s) for s in sentences), model_prefix=str(prefix), vocab_size=vocab_size,
                hard_vocab_limit=False,  # a small corpus gets a smaller vocabulary instead of an error
                model_type="unigram", character_coverage=1.0, pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK,
                pad_piece=SPECIALS[PAD], bos_piece=SPECIALS[BOS], eos_piece=SPECIALS[EOS], unk_piece=SPECIALS[UNK],
                num_threads=1, minloglevel=2,  # one thread: the same model every time
            )
        except RuntimeError as exc:  # sentencepiece reports bad settings as RuntimeError
            raise ConfigError(f"sentencepiece could not train a {vocab_size}-piece vocabulary: {exc}") from None
        return cls(f"{prefix}.model")

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        return self.sp.encode(" ".join(tokens))

    def decode(self, ids: Iterable[int]) -> list[str]:
        return self.sp.decode(content_ids(ids)).split()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"kind": self.kind, "model_file": Path(self.model_file).name}) + "\n")


def load_vocab(path: str | Path) -> WordVocab | SubwordVocab:
    """A translation vocabulary saved by `WordVocab.save` / `SubwordVocab.save`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"vocabulary {path} is missing: run `dvc repro prepare_enja` first")
    spec = json.loads(path.read_text())
    if spec.get("kind") == "subword":
        return SubwordVocab(path.parent / spec["model_file"])
    return WordVocab(spec["itos"])


def load_direction_vocabs(data_dir: str | Path, direction: str) -> tuple[WordVocab | SubwordVocab, WordVocab | SubwordVocab]:
    """(source, target) vocabularies of `direction` from a prepared enja directory."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"data.module.direction must be en-ja or ja-en, got {direction!r}")
    src, tgt = direction.split("-")
    return load_vocab(Path(data_dir) / f"vocab.{src}.json"), load_vocab(Path(data_dir) / f"vocab.{tgt}.json")


def read_word_counts(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(words, counts, keep probabilities) from a word2vec `vocab.tsv` written by its prepare stage."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prepared data missing in {path.parent}/ ({path.name}): "
                        f"run `dvc repro` (or the matching `prepare_...` stage) first")
    words, counts, keep = [], [], []
    with open(path, encoding="utf-8") as f:
        next(f, None)  # header
        for line in f:
            w, c, k = line.rstrip("\n").split("\t")
            words.append(w)
            counts.append(int(c))
            keep.append(float(k))
    if not words:
        raise DataError(f"{path} is empty: rerun `dvc repro prepare_...` on a non-empty corpus")
    return words, np.array(counts, dtype=np.int64), np.array(keep, dtype=np.float64)
