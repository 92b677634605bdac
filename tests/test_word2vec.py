"""word2vec: vocabulary and subsampling (checked against gensim), the noise distribution, example
generation (checked against a plain loop), bad and empty corpora, and a tiny corpus it must learn."""

import numpy as np
import pytest
import torch

from dlzoo.data.word2vec_corpus import (
    EpochExamples, Word2VecDataModule, build_vocab, cbow_examples, keep_probabilities, load_sentences, prepare,
    read_sentences, reduced_windows, skipgram_pairs, subsample,
)
from dlzoo.errors import ConfigError, DataError
from dlzoo.evaluation.embeddings import analogies, keyed_vectors, word_similarity
from dlzoo.models.word2vec import Word2Vec, Word2VecModule, linear_decay, vectors


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_vocab_is_min_count_filtered_and_frequency_ordered():
    words, counts = build_vocab([["b", "a", "c"], ["a", "b", "d"], ["a"]], min_count=2)
    assert words == ["a", "b"] and counts.tolist() == [3, 2]
    words, _ = build_vocab([["y", "x"], ["x", "y"]], min_count=1)
    assert words == ["x", "y"]  # ties: alphabetical, so ids never depend on line order
    assert build_vocab([["a", "a", "b", "b", "c"]], min_count=1, max_vocab=2)[0] == ["a", "b"]
    with pytest.raises(ConfigError):
        build_vocab([["a"]], min_count=0)


def test_subsampling_probabilities_match_gensim():
    from gensim.models import Word2Vec as GensimWord2Vec

    rng = np.random.default_rng(0)
    zipf = [[f"w{min(int(k), 300)}" for k in rng.zipf(1.3, size=12)] for _ in range(400)]
    words, counts = build_vocab(zipf, min_count=2)
    ours = keep_probabilities(counts, sample=1e-3)
    model = GensimWord2Vec(min_count=2, sample=1e-3, workers=1)
    model.build_vocab(zipf)
    theirs = np.array([model.wv.get_vecattr(w, "sample_int") / (2**32 - 1) for w in words])
    assert (ours < 1).any() and np.allclose(ours, theirs, atol=1e-6)
    assert keep_probabilities(counts, sample=0).tolist() == [1.0] * len(counts)


def test_noise_distribution_is_unigram_to_the_three_quarters():
    counts = [1000, 100, 10, 1]
    net = Word2Vec(counts=counts, dim=4, negative=5)
    expected = np.array(counts, dtype=float) ** 0.75
    assert np.allclose(net.noise.numpy(), expected / expected.sum())
    torch.manual_seed(0)
    draws = net.sample_negatives(40_000).flatten()
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    assert np.allclose(freq.numpy(), expected / expected.sum(), atol=0.01)
    assert Word2Vec(counts=counts, ns_exponent=0.0).noise.tolist() == [0.25] * 4


def brute_force_pairs(ids, sentence, windows):
    """The loop word2vec runs: for each center, each word of its sentence within its window."""
    pairs = []
    for i in range(len(ids)):
        for j in range(max(0, i - windows[i]), min(len(ids), i + windows[i] + 1)):
            if j != i and sentence[j] == sentence[i]:
                pairs.append((ids[i], ids[j]))
    return sorted(pairs)


def test_skipgram_pairs_match_the_word2vec_loop():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50, 300)
    sentence = np.repeat(np.arange(30), rng.multinomial(300, [1 / 30] * 30))
    windows = reduced_windows(len(ids), 5, rng)
    assert windows.min() == 1 and windows.max() == 5
    center, context = skipgram_pairs(ids, sentence, windows)
    assert sorted(zip(center.tolist(), context.tolist())) == brute_force_pairs(ids.tolist(), sentence, windows)


def test_cbow_windows_hold_exactly_the_context_words():
    ids = np.array([10, 11, 12, 13, 20, 21])
    sentence = np.array([0, 0, 0, 0, 1, 1])
    windows = np.array([2, 1, 2, 1, 2, 2])
    center, context = cbow_examples(ids, sentence, windows)
    assert center.tolist() == ids.tolist()
    rows = {c: sorted(x for x in row if x >= 0) for c, row in zip(center.tolist(), context.tolist())}
    assert rows == {10: [11, 12], 11: [10, 12], 12: [10, 11, 13], 13: [12], 20: [21], 21: [20]}
    # a one-word sentence has no context: no example
    assert len(cbow_examples(np.array([5]), np.array([0]), np.array([3]))[0]) == 0


def test_subsampling_keeps_rare_words_and_thins_frequent_ones():
    ids = np.array([0] * 9000 + [1] * 1000)
    offsets = np.array([0, 5000, 10000])
    kept, sentence = subsample(ids, offsets, np.array([0.1, 1.0]), np.random.default_rng(0))
    assert (kept == 1).sum() == 1000 and abs((kept == 0).sum() - 900) < 100
    assert sentence.tolist() == sorted(sentence.tolist())  # order (hence windows) preserved


def test_epoch_examples_are_fresh_each_epoch_with_a_fixed_batch_count():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, 2000).astype(np.int32)
    offsets = np.arange(0, 2001, 10)
    data = EpochExamples("skipgram", ids, offsets, np.full(20, 0.7), window=3, batch_size=64, seed=0)
    first, second = list(data), list(data)
    assert len(first) == len(second) == len(data) == data.n_batches
    assert all(len(c) == 64 for c, _ in first)
    assert not torch.equal(first[0][0], second[0][0])
    again = EpochExamples("skipgram", ids, offsets, np.full(20, 0.7), window=3, batch_size=64, seed=0)
    assert torch.equal(next(iter(again))[0], first[0][0])  # seeded


def test_cbow_gives_every_context_word_the_full_error():
    net = Word2Vec(counts=[5, 4, 3, 2, 1], dim=3, architecture="cbow")
    context = torch.tensor([[0, 1, -1, 2]])
    h = net.hidden(context)
    assert torch.allclose(h, net.inp.weight[[0, 1, 2]].mean(0, keepdim=True))
    h.sum().backward()
    grad = net.inp.weight.grad.to_dense()
    assert torch.allclose(grad[[0, 1, 2]], torch.ones(3, 3)) and grad[3:].abs().sum() == 0


def test_bad_lines_are_counted_not_fatal(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"a b c\n\n   \nd e \xff\xfe f\n" + b" ".join([b"x"] * 20) + b"\n")
    sentences, stats = read_sentences(path, max_line_tokens=10)
    assert stats == {"lines": 5, "empty_lines_skipped": 2, "long_lines_truncated": 1, "lines_with_bad_utf8": 1}
    assert len(sentences) == 3 and len(sentences[2]) == 10


def test_empty_corpus_is_a_clear_error(tmp_path):
    empty = write_lines(tmp_path / "empty.txt", ["", "  ", ""])
    dev = write_lines(tmp_path / "dev.txt", ["a b"])
    with pytest.raises(DataError, match="no tokens"):
        prepare(str(tmp_path / "out"), train_file=str(empty), val_file=str(dev))
    singletons = write_lines(tmp_path / "rare.txt", ["every word once"])
    with pytest.raises(DataError, match="min_count"):
        prepare(str(tmp_path / "out"), train_file=str(singletons), val_file=str(dev), min_count=2)
    with pytest.raises(DataError, match="dvc pull"):
        prepare(str(tmp_path / "out"), train_file=str(tmp_path / "missing.txt"), val_file=str(dev))
    with pytest.raises(DataError, match="dvc repro"):
        Word2VecDataModule(str(tmp_path / "nowhere")).setup()


def topic_corpus(n: int, seed: int) -> list[str]:
    """Sentences that each draw words from one of two disjoint topics."""
    rng = np.random.default_rng(seed)
    topics = [[f"a{i}" for i in range(8)], [f"b{i}" for i in range(8)]]
    return [" ".join(rng.choice(topics[rng.integers(2)], size=rng.integers(4, 9))) for _ in range(n)]


@pytest.mark.parametrize("architecture", ["skipgram", "cbow"])
def test_learns_topics_on_a_tiny_corpus(tmp_path, architecture):
    import lightning as L

    train, dev = write_lines(tmp_path / "train.txt", topic_corpus(600, 0) + [""]), write_lines(tmp_path / "dev.txt", topic_corpus(50, 1))
    summary = prepare(str(tmp_path / "data"), train_file=str(train), val_file=str(dev), min_count=1, sample=0)
    assert summary["vocab_size"] == 16 and summary["train_empty_lines_skipped"] == 1
    L.seed_everything(0)
    dm = Word2VecDataModule(str(tmp_path / "data"), architecture=architecture, window=3, batch_size=256)
    net = Word2Vec(vocab_file=str(tmp_path / "data" / "vocab.tsv"), dim=16, architecture=architecture)
    module = Word2VecModule(net, optimizer=lambda p: torch.optim.SGD(p, lr=0.025), scheduler=lambda o, total_steps: linear_decay(o, total_steps))
    trainer = L.Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.callback_metrics["val/loss"] < 0.8 * 6 * np.log(2)  # untrained: 6 log 2 (all scores 0)
    assert float(module.trained_tokens) == summary["train_tokens_in_vocab"] * 4 and float(module.train_seconds) > 0
    v = vectors(module)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    topic = np.array([w.startswith("a") for w in dm.words])
    sim = v @ v.T
    within = sim[np.ix_(topic, topic)].mean() / 2 + sim[np.ix_(~topic, ~topic)].mean() / 2
    between = sim[np.ix_(topic, ~topic)].mean()
    assert within - between > 0.3, (within, between)
    assert load_sentences(tmp_path / "data", "train", dm.words)[0] == open(train).readline().split()


def test_similarity_and_analogy_scores_agree_with_gensim():
    from gensim.test.utils import datapath

    words = ["king", "queen", "man", "woman", "car", "tiger", "cat", "book", "paper", "computer", "keyboard", "money", "bank"]
    kv = keyed_vectors(words, np.random.default_rng(0).normal(size=(len(words), 10)))
    ours = word_similarity(kv)
    _, spearman, oov = kv.evaluate_word_pairs(datapath("wordsim353.tsv"))
    assert ours["wordsim_spearman"] == pytest.approx(spearman.statistic) and ours["wordsim_oov_rate"] == pytest.approx(oov / 100)
    assert 3 <= ours["wordsim_pairs"] < 353
    scores = analogies(kv)
    assert scores["analogy_questions"] > 0 and 0 < scores["analogy_coverage"] < 0.01
    assert word_similarity(keyed_vectors(["zzz", "yyy"], np.ones((2, 3))))["wordsim_spearman"] == 0.0  # no pair: 0, not NaN
