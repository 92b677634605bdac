"""English-Japanese parallel corpus (small_parallel_enja, pre-tokenised) for the translation families.

`prepare` (DVC stage prepare_enja):
- cleans the pairs (empty or over-long lines are skipped, and counted), holds `n_val` training pairs out
  for checkpoint selection (the dev split is the test set and is never trained or selected on);
- builds one vocabulary per language from the training split only (word-level, or sentencepiece with
  `vocab.kind=subword`), and encodes every split to ids; words outside the vocabulary become UNK (counted);
- keeps the test references as corpus tokens, so BLEU is scored against the real text, not against UNKs;
- measures how well the raw-input tokenisers reproduce the corpus segmentation on dev.

The DataModule serves length-bucketed batches (sentences of similar length together, so almost no
compute is spent on padding), in either direction (`direction: en-ja` or `ja-en`).

The vocabularies (word or subword, shared special ids) live in dlzoo.vocab, where the models read them too.

Tokenisers: raw user input (the translate CLI) is tokenised to match the corpus conventions:
English with the Moses tokenizer (sacremoses) after lowercasing; Japanese with janome, a maintained
pure-Python morphological analyser with its dictionary inside the wheel (offline). The corpus itself was
segmented with KyTea, which splits verb inflections further than janome does (e.g. 送っ|た vs 送|っ|た);
`token_agreement` measures how far the two agree (prepare_enja writes it for dev).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Sampler

from dlzoo.data.common import SplitDataModule, require_prepared, require_raw
from dlzoo.io import write_json
from dlzoo.errors import ConfigError, DataError
from dlzoo.vocab import BOS, DIRECTIONS, EOS, PAD, UNK, SubwordVocab, WordVocab

log = logging.getLogger(__name__)
LANGS = ("en", "ja")
SPLITS = ("train", "val", "test")


class EnglishTokenizer:
    """Lowercase + Moses tokenisation: "I can't swim." -> i can 't swim . (as in the corpus)."""

    def __init__(self):
        from sacremoses import MosesDetokenizer, MosesTokenizer

        self._tok, self._detok = MosesTokenizer("en"), MosesDetokenizer("en")

    def __call__(self, text: str) -> list[str]:
        return self._tok.tokenize(text.strip().lower(), escape=False)

    def detokenize(self, tokens: list[str]) -> str:
        return self._detok.detokenize(tokens)


class JapaneseTokenizer:
    """janome word segmentation (the corpus used KyTea; see the module docstring for the mismatch)."""

    def __init__(self):
        from janome.tokenizer import Tokenizer

        self._tok = Tokenizer(wakati=True)

    def __call__(self, text: str) -> list[str]:
        return [t for t in self._tok.tokenize(text.strip()) if t.strip()]

    def detokenize(self, tokens: list[str]) -> str:
        return "".join(tokens)


def tokenizer_for(lang: str) -> EnglishTokenizer | JapaneseTokenizer:
    if lang == "en":
        return EnglishTokenizer()
    if lang == "ja":
        return JapaneseTokenizer()
    raise ConfigError(f"no tokenizer for language {lang!r} (en or ja)")


def _boundaries(tokens: list[str]) -> set[tuple[int, int]]:
    spans, pos = set(), 0
    for t in tokens:
        spans.add((pos, pos + len(t)))
        pos += len(t)
    return spans


def token_agreement(tokenizer, reference: list[list[str]]) -> dict[str, float]:
    """How closely `tokenizer` reproduces the corpus tokens of `reference` from their detokenised text:
    the share of sentences tokenised identically, and token-level precision/recall/F1 (same character span)."""
    exact = tp = n_pred = n_ref = 0
    for ref in reference:
        pred = tokenizer(tokenizer.detokenize(ref))
        exact += pred == ref
        # Compare spans over the text without spaces, so the two segmentations are comparable.
        p, r = _boundaries(pred), _boundaries(ref)
        tp, n_pred, n_ref = tp + len(p & r), n_pred + len(p), n_ref + len(r)
    precision, recall = tp / max(n_pred, 1), tp / max(n_ref, 1)
    return {
        "sentence_exact": exact / max(len(reference), 1),
        "token_precision": precision,
        "token_recall": recall,
        "token_f1": 2 * precision * recall / max(precision + recall, 1e-12),
    }


def read_pairs(raw_dir: Path, split: str, max_len: int) -> tuple[list[tuple[list[str], list[str]]], dict[str, int]]:
    """Token pairs of one corpus split; empty and over-long pairs are skipped and counted, never fatal."""
    paths = [require_raw(raw_dir / f"{split}.{lang}") for lang in LANGS]
    lines = []
    for p in paths:
        try:
            lines.append(p.read_text(encoding="utf-8").splitlines())
        except UnicodeDecodeError as exc:
            raise DataError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if len(lines[0]) != len(lines[1]):
        raise DataError(f"{paths[0]} has {len(lines[0])} lines but {paths[1]} has {len(lines[1])}: the sides must align")
    pairs, counts = [], {"read": len(lines[0]), "skipped_empty": 0, "skipped_long": 0}
    for en, ja in zip(*lines):
        en, ja = en.split(), ja.split()
        if not en or not ja:
            counts["skipped_empty"] += 1
        elif len(en) > max_len or len(ja) > max_len:
            counts["skipped_long"] += 1
        else:
            pairs.append((en, ja))
    if not pairs:
        raise DataError(f"no usable sentence pairs in {raw_dir}/{split}.* ({counts})")
    return pairs, counts


def prepare(out_dir: str, raw_dir: str = "data/enja", vocab: dict | None = None, max_len: int = 50, n_val: int = 1000,
            limit_train: int | None = None, seed: int = 0) -> dict:
    vocab = {"kind": "word", "min_count": 2, "max_size": None, "subword_size": 8000, **(vocab or {})}
    if vocab["kind"] not in ("word", "subword"):
        raise ConfigError(f"data.prepare.vocab.kind must be word or subword, got {vocab['kind']!r}")
    raw, out = Path(raw_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_pairs, train_counts = read_pairs(raw, "train", max_len)
    test_pairs, test_counts = read_pairs(raw, "dev", max_len)
    order = np.random.default_rng(seed).permutation(len(train_pairs))
    if not 0 < n_val < len(order):
        raise ConfigError(f"data.prepare.n_val must be in (0, {len(order)}), got {n_val}")
    val_idx, train_idx = order[:n_val], order[n_val:]
    if limit_train:
        train_idx = train_idx[:limit_train]
    splits = {"train": [train_pairs[i] for i in sorted(train_idx)], "val": [train_pairs[i] for i in sorted(val_idx)], "test": test_pairs}

    summary = {"corpus": {"train": train_counts, "dev": test_counts}, "pairs": {s: len(p) for s, p in splits.items()}}
    arrays = {}
    for li, lang in enumerate(LANGS):
        sentences = [pair[li] for pair in splits["train"]]
        if vocab["kind"] == "word":
            v = WordVocab.build(sentences, vocab["min_count"], vocab["max_size"])
        else:
            v = SubwordVocab.train(sentences, out / f"spm.{lang}", vocab["subword_size"])
        v.save(out / f"vocab.{lang}.json")
        summary[f"vocab_size_{lang}"] = len(v)
        for split, pairs in splits.items():
            ids = [v.encode(pair[li]) for pair in pairs]
            flat = np.fromiter((i for s in ids for i in s), dtype=np.int32)
            summary[f"unk_rate_{split}_{lang}"] = float((flat == UNK).mean())
            arrays[f"{split}_{lang}_ids"] = flat
            arrays[f"{split}_{lang}_offsets"] = np.cumsum([0] + [len(s) for s in ids]).astype(np.int64)
        # References stay corpus tokens: BLEU is scored on the text, not on the vocabulary's view of it.
        (out / f"test.{lang}.txt").write_text("".join(" ".join(p[li]) + "\n" for p in splits["test"]), encoding="utf-8")
        summary[f"tokenizer_agreement_dev_{lang}"] = token_agreement(tokenizer_for(lang), [p[li] for p in test_pairs])
    np.savez_compressed(out / "enja.npz", **arrays)
    write_json(out / "summary.json", summary)
    log.info("prepared enja: %s", summary["pairs"])
    return {k: summary[k] for k in ("pairs", "vocab_size_en", "vocab_size_ja")}


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of sentences of similar length: indices are sorted by length inside large shuffled pools,
    cut into batches, and the batch order is shuffled. Seeded per epoch, so runs repeat exactly.

    Written here because torch/Lightning ship no length-bucketing sampler (torchtext, which had one, is retired).
    """

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0, pool_batches: int = 50):
        self.lengths, self.batch_size, self.shuffle, self.seed = np.asarray(lengths), batch_size, shuffle, seed
        self.pool = batch_size * pool_batches
        self.epoch = 0

    def _batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:  # evaluation: one global sort keeps padding minimal
            order = np.argsort(self.lengths, kind="stable")
            return [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(n)
        batches = []
        for start in range(0, n, self.pool):
            pool = order[start : start + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i : i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        batches = self._batches()
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size) if not self.shuffle else len(self._batches())


class PairDataset(torch.utils.data.Dataset):
    """(source ids + EOS, target ids) for one split; the collate function adds BOS/EOS and pads."""

    def __init__(self, arrays, split: str, src: str, tgt: str):
        def rows(lang):
            ids, off = arrays[f"{split}_{lang}_ids"], arrays[f"{split}_{lang}_offsets"]
            return [torch.from_numpy(ids[off[i] : off[i + 1]].astype(np.int64)) for i in range(len(off) - 1)]

        self.src, self.tgt = rows(src), rows(tgt)

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i):
        return self.src[i], self.tgt[i]

    def lengths(self) -> list[int]:
        return [max(len(s), len(t)) for s, t in zip(self.src, self.tgt)]


def collate_pairs(batch):
    """-> src [B, S] (ends in EOS), tgt_in [B, T] (starts with BOS), tgt_out [B, T] (ends in EOS); PAD-padded."""
    eos, bos = torch.tensor([EOS]), torch.tensor([BOS])
    src = pad_sequence([torch.cat([s, eos]) for s, _ in batch], batch_first=True, padding_value=PAD)
    tgt_in = pad_sequence([torch.cat([bos, t]) for _, t in batch], batch_first=True, padding_value=PAD)
    tgt_out = pad_sequence([torch.cat([t, eos]) for _, t in batch], batch_first=True, padding_value=PAD)
    return src, tgt_in, tgt_out


class TranslationDataModule(SplitDataModule):
    collate_fn = staticmethod(collate_pairs)

    def __init__(self, data_dir: str, direction: str = "en-ja", batch_size: int = 128, eval_batch_size: int = 250,
                 seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size, num_workers)
        if direction not in DIRECTIONS:
            raise ConfigError(f"data.module.direction must be en-ja or ja-en, got {direction!r}")
        self.data_dir, self.direction, self.eval_batch_size, self.seed = data_dir, direction, eval_batch_size, seed
        self.src_lang, self.tgt_lang = direction.split("-")

    def test_references(self) -> list[str]:
        """The test split's target sentences as corpus tokens (space-separated), for BLEU/chrF."""
        path = require_prepared(self.data_dir, f"test.{self.tgt_lang}.txt") / f"test.{self.tgt_lang}.txt"
        return path.read_text(encoding="utf-8").splitlines()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        data_dir = require_prepared(self.data_dir, "enja.npz")
        with np.load(data_dir / "enja.npz") as arrays:
            arrays = dict(arrays)
        for split in SPLITS:
            self.datasets[split] = PairDataset(arrays, split, self.src_lang, self.tgt_lang)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        dataset = self.datasets[split]
        size = self.batch_size if shuffle else self.eval_batch_size
        sampler = BucketBatchSampler(dataset.lengths(), size, shuffle=shuffle, seed=self.seed)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=self.collate_fn)

    def ordered_loader(self, split: str, batch_size: int, limit: int | None = None) -> DataLoader:
        """The split in file order (for decoding the test set against its references), its first `limit` pairs."""
        dataset = self.datasets[split]
        if limit is not None:
            dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=self.collate_fn)
