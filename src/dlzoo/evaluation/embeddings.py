"""Word-embedding quality, ours next to gensim's Word2Vec trained on the same corpus and settings.

- Word similarity: Spearman (and Pearson) correlation between cosine similarity and the human
  judgements of WordSim-353 (gensim's bundled `wordsim353.tsv`), over the pairs whose two words
  are in the vocabulary; the share of pairs that are not is the OOV rate.
- Analogies: 3CosAdd accuracy on `questions-words.txt` (a:b :: c:?), gensim's own
  `evaluate_word_analogies`, over the questions whose four words are in the vocabulary;
  coverage = that share of all questions.
- Reference: gensim's `Word2Vec` trained here with the same architecture, dimension, window,
  negatives, noise exponent, subsampling threshold, learning-rate schedule and epochs on the
  same prepared sentences; `runs` seeds averaged (on this small corpus one seed's WordSim
  Spearman varies by several hundredths), its training time and tokens/s logged beside ours.
- Artifacts: nearest neighbours of probe words (ours and gensim's), a 2-D PCA map of the probe
  words with their neighbours, the vectors in word2vec text format, the reference's per-seed scores.

Both models are scored by the same functions on `KeyedVectors`, so the numbers are comparable.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from scipy import stats

from dlzoo.io import write_json
from dlzoo.data.word2vec_corpus import load_sentences
from dlzoo.plotting import save_figure
from dlzoo.models.word2vec import vectors

log = logging.getLogger(__name__)

PROBES = ["man", "woman", "king", "dog", "car", "tokyo", "money", "water", "happy", "teacher", "summer", "run"]


def _gensim_data(name: str) -> str:
    from gensim.test.utils import datapath

    return datapath(name)


def keyed_vectors(words: list[str], matrix: np.ndarray, counts=None):
    """gensim KeyedVectors holding `matrix` (row i = words[i]), so both models are scored by the same code."""
    from gensim.models import KeyedVectors

    kv = KeyedVectors(matrix.shape[1])
    kv.add_vectors(words, matrix.astype(np.float32))
    if counts is not None:  # kept in the saved word2vec text file's order
        for word, count in zip(words, counts):
            kv.set_vecattr(word, "count", int(count))
    return kv


def word_similarity(kv, path: str | None = None) -> dict[str, float]:
    """WordSim-353 correlations over in-vocabulary pairs (case-insensitive, like gensim's evaluate_word_pairs)."""
    path = path or _gensim_data("wordsim353.tsv")
    index = {w.lower(): w for w in reversed(kv.index_to_key)}  # most frequent spelling wins
    gold, model, total = [], [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split("\t")
            if line.startswith("#") or len(parts) != 3:
                continue
            total += 1
            a, b = index.get(parts[0].lower()), index.get(parts[1].lower())
            if a is not None and b is not None:
                gold.append(float(parts[2]))
                model.append(float(kv.similarity(a, b)))
    n = len(gold)
    if n < 3:  # too few pairs for a correlation (e.g. a Japanese corpus): say so rather than NaN
        log.warning("only %d of %d word-similarity pairs are in the vocabulary: correlations reported as 0", n, total)
        spearman = pearson = 0.0
    else:
        spearman, pearson = float(stats.spearmanr(gold, model).statistic), float(stats.pearsonr(gold, model).statistic)
    return {"wordsim_spearman": spearman, "wordsim_pearson": pearson, "wordsim_pairs": n, "wordsim_oov_rate": 1.0 - n / max(total, 1)}


def analogies(kv, path: str | None = None) -> dict[str, float]:
    """3CosAdd accuracy over the in-vocabulary analogy questions (gensim's evaluate_word_analogies)."""
    path = path or _gensim_data("questions-words.txt")
    with open(path, encoding="utf-8") as f:
        total = sum(1 for line in f if line.strip() and not line.startswith(":"))
    accuracy, sections = kv.evaluate_word_analogies(path, case_insensitive=True)
    overall = next(s for s in sections if s["section"] == "Total accuracy")
    answered = len(overall["correct"]) + len(overall["incorrect"])
    return {"analogy_accuracy": float(accuracy), "analogy_questions": answered, "analogy_coverage": answered / max(total, 1)}


def score(kv) -> dict[str, float]:
    return {**word_similarity(kv), **analogies(kv)}


def gensim_settings(architecture: str, dim: int, window: int, negative: int, ns_exponent: float, sample: float,
                    subsample: bool, lr: float, min_lr_factor: float, epochs: int) -> dict:
    """Our recipe in gensim's Word2Vec keywords."""
    return {"sg": int(architecture == "skipgram"), "vector_size": dim, "window": window, "negative": negative,
            "ns_exponent": ns_exponent, "sample": sample if subsample else 0.0, "alpha": lr,
            "min_alpha": lr * min_lr_factor, "epochs": epochs}


def train_reference(sentences: list[list[str]], settings: dict, seed: int, workers: int):
    """gensim's Word2Vec with our settings; returns (KeyedVectors, training seconds)."""
    from gensim.models import Word2Vec

    model = Word2Vec(min_count=1, workers=workers, seed=seed, hs=0, cbow_mean=1, **settings)
    model.build_vocab(sentences)  # the sentences hold in-vocabulary words only: same vocabulary as ours
    start = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=model.epochs)
    return model.wv, time.perf_counter() - start


def neighbours(kv, words: list[str], topn: int) -> dict[str, list[tuple[str, float]]]:
    return {w: kv.most_similar(w, topn=topn) for w in words if w in kv.key_to_index}


def write_neighbours(ours: dict, reference: dict, path: Path) -> Path:
    lines = ["# Nearest neighbours (cosine) of probe words", "", "| word | ours | gensim |", "|---|---|---|"]
    for word, near in ours.items():
        fmt = lambda pairs: ", ".join(f"{w} ({s:.2f})" for w, s in pairs)  # noqa: E731
        lines.append(f"| **{word}** | {fmt(near)} | {fmt(reference.get(word, []))} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_neighbour_map(kv_by_name: dict, groups: dict[str, dict], path: Path, title: str = "") -> Path:
    """One panel per model: the probe words and their neighbours, projected to 2-D by PCA, one colour per probe."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kv_by_name), figsize=(7 * len(kv_by_name), 6.5), squeeze=False)
    colours = plt.get_cmap("tab20")
    for ax, (name, kv) in zip(axes[0], kv_by_name.items()):
        near = groups[name]
        words = [w for probe, pairs in near.items() for w in [probe] + [p for p, _ in pairs]]
        labels = [i for i, (probe, pairs) in enumerate(near.items()) for _ in range(1 + len(pairs))]
        if len(words) < 2:
            ax.set_title(f"{name}: no probe word in the vocabulary")
            continue
        x = np.stack([kv.get_vector(w, norm=True) for w in words])
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        xy = x @ vt[:2].T
        for (px, py), w, c in zip(xy, words, labels):
            is_probe = w in near
            ax.scatter(px, py, color=colours(c % 20), s=40 if is_probe else 12)
            ax.annotate(w, (px, py), fontsize=9 if is_probe else 7, weight="bold" if is_probe else "normal",
                        color=colours(c % 20), xytext=(2, 2), textcoords="offset points")
        ax.set_title(f"{name}: probe words and their nearest neighbours (PCA)")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return save_figure(fig, path)


def evaluate(module, datamodule, out_dir: str | Path, reference: dict, runs: int = 3, workers: int = 1, seed: int = 0,
             probes: list[str] | None = None, topn: int = 8) -> tuple[dict, list[Path]]:
    """Score our vectors and gensim's reference (see the module docstring); returns (metrics, artifact files).
    `reference`: the gensim_settings keywords (the evaluator config ties them to the recipe)."""
    settings = gensim_settings(**reference)
    logging.getLogger("gensim").setLevel(logging.WARNING)  # gensim logs every epoch and analogy section at INFO
    datamodule.setup("test")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = datamodule.words
    ours = keyed_vectors(words, vectors(module), datamodule.counts)
    metrics = {f"test/{k}": v for k, v in score(ours).items()}
    metrics["vocab_size"] = len(words)
    seconds, tokens = float(module.train_seconds), float(module.trained_tokens)
    metrics["train/seconds"] = seconds
    metrics["train/tokens_per_s"] = tokens / seconds if seconds > 0 else 0.0

    # The reference: same sentences (in-vocabulary words only), same settings, `runs` seeds.
    sentences = load_sentences(datamodule.data_dir, "train", words)
    per_seed, reference_kv = [], None
    for k in range(runs):
        kv, secs = train_reference(sentences, dict(settings), seed=seed + k, workers=workers)
        per_seed.append({"seed": seed + k, "train_seconds": secs, **score(kv)})
        reference_kv = reference_kv or kv
        log.info("gensim reference seed %d: %s", seed + k, per_seed[-1])
    corpus_tokens = sum(len(s) for s in sentences) * settings["epochs"]
    for key in ("wordsim_spearman", "wordsim_pearson", "analogy_accuracy", "train_seconds"):
        values = np.array([r[key] for r in per_seed])
        metrics[f"gensim/{key}"] = float(values.mean())
        if runs > 1 and key != "train_seconds":
            metrics[f"gensim/{key}_std"] = float(values.std(ddof=1))
    metrics["gensim/tokens_per_s"] = corpus_tokens / metrics["gensim/train_seconds"]
    metrics["gensim/runs"] = runs
    metrics["test/wordsim_spearman_minus_gensim"] = metrics["test/wordsim_spearman"] - metrics["gensim/wordsim_spearman"]
    metrics["test/analogy_accuracy_minus_gensim"] = metrics["test/analogy_accuracy"] - metrics["gensim/analogy_accuracy"]

    probes = [w for w in (probes or PROBES) if w in ours.key_to_index] or words[50:60]
    near = {"ours": neighbours(ours, probes, topn), "gensim": neighbours(reference_kv, probes, topn)}
    files = [
        write_neighbours(near["ours"], near["gensim"], out_dir / "nearest_neighbours.md"),
        plot_neighbour_map({"ours": ours, "gensim": reference_kv}, near, out_dir / "neighbour_map.png",
                           title=f"WordSim-353 Spearman: ours {metrics['test/wordsim_spearman']:.3f}, gensim {metrics['gensim/wordsim_spearman']:.3f}"),
    ]
    ours.save_word2vec_format(str(out_dir / "vectors.txt"))
    files.append(out_dir / "vectors.txt")
    write_json(out_dir / "gensim_reference.json", {"settings": settings, "workers": workers, "runs": per_seed})
    files.append(out_dir / "gensim_reference.json")
    return metrics, files
