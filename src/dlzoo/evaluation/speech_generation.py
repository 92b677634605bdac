"""Speech generation on held-out recordings: the model's test negative log-likelihood (bits and nats per
sample, padding excluded) beside unigram, bigram and trigram mu-law models fitted on the training split,
then fast (cached queues) against naive generation, both the textbook one (every layer over the whole receptive
field) and a trimmed one (only the positions the next sample depends on): speed, agreement,
and one generated WAV per digit with its spectrogram next to a real test recording's.

The n-gram baselines see exactly what the network sees: the same training recordings, the same silence
before each recording, the same test samples. Each interpolates its orders with the uniform distribution
(Jelinek-Mercer); the weights are fitted by EM on the validation split, held out from the counts.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlzoo.data.fsdd import IGNORE, SAMPLE_RATE, SILENCE, mu_law_decode
from dlzoo.errors import ConfigError
from dlzoo.plotting import plt, save_figure

LEVELS = 256


# ----------------------------------------------------------------------------- n-gram baselines
def _ngram_tokens(split: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(two samples back, one back, target) for every real sample of a split, silence before each start."""
    seqs = [np.concatenate([[SILENCE, SILENCE], codes[:n].astype(np.int64)]) for codes, n in zip(split["codes"], split["lengths"])]
    return (np.concatenate([s[:-2] for s in seqs]), np.concatenate([s[1:-1] for s in seqs]), np.concatenate([s[2:] for s in seqs]))


def _conditional(counts: np.ndarray, context: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Relative frequency of `target` after `context` (0 for a context never seen)."""
    totals = counts.sum(axis=1)
    return np.divide(counts[context, target], totals[context], out=np.zeros(len(target)), where=totals[context] > 0)


def _fit_weights(probs: np.ndarray, iterations: int = 100) -> np.ndarray:
    """EM for the mixture weights of the columns of `probs` (held-out tokens x components)."""
    weights = np.full(probs.shape[1], 1 / probs.shape[1])
    for _ in range(iterations):
        joint = probs * weights
        weights = (joint / joint.sum(axis=1, keepdims=True)).mean(axis=0)
    return weights


def ngram_baselines(train: dict, val: dict, test: dict) -> dict[str, float]:
    """Test NLL (nats per sample) of interpolated unigram, bigram and trigram models of the mu-law codes."""
    p2, p1, c = _ngram_tokens(train)
    unigram = np.bincount(c, minlength=LEVELS)
    bigram = np.bincount(p1 * LEVELS + c, minlength=LEVELS**2).reshape(LEVELS, LEVELS)
    trigram = np.bincount((p2 * LEVELS + p1) * LEVELS + c, minlength=LEVELS**3).reshape(LEVELS**2, LEVELS)

    def components(tokens) -> np.ndarray:  # columns: uniform, unigram, bigram, trigram probabilities
        q2, q1, t = tokens
        return np.stack([np.full(len(t), 1 / LEVELS), unigram[t] / unigram.sum(), _conditional(bigram, q1, t),
                         _conditional(trigram, q2 * LEVELS + q1, t)], axis=1)

    held_out, scored = components(_ngram_tokens(val)), components(_ngram_tokens(test))
    nll = {}
    for name, order in (("unigram", 2), ("bigram", 3), ("trigram", 4)):
        weights = _fit_weights(held_out[:, :order])
        nll[name] = float(-np.log(scored[:, :order] @ weights).mean())
    return nll


# ----------------------------------------------------------------------------- the model's likelihood
@torch.no_grad()
def test_nll(net, loader) -> tuple[float, int]:
    """Mean cross-entropy (nats) over every real test sample, and their number."""
    total, count = 0.0, 0
    for x, target in loader:
        total += F.cross_entropy(net(x), target, ignore_index=IGNORE, reduction="sum").item()
        count += int((target != IGNORE).sum())
    return total / count, count


# ----------------------------------------------------------------------------- generation
def timed_generation(net, digits, speakers, uniforms, prefix=None, naive=False, temperature=1.0):
    start = time.perf_counter()
    codes, logits = net.generate(digits, speakers, uniforms, SILENCE, prefix=prefix, naive=naive, temperature=temperature)
    return codes, logits, time.perf_counter() - start


@torch.no_grad()
def trimmed_generation(net, digits, speakers, uniforms, prefix, temperature=1.0):
    """Naive generation without the waste: for each new sample, every layer computes only the positions the last
    output depends on (1 + (k-1)·(the dilations above it)), not the whole window, and the head only the last one.
    The fair baseline for the cached queues; same inverse-CDF sampling as `WaveNet.generate`, written out here
    because the model's own naive path is the textbook one."""
    start = time.perf_counter()
    k, layers = net.kernel_size, list(net.layers)
    above = [(k - 1) * sum(layer.dilation for layer in layers[i + 1 :]) for i in range(len(layers))]
    g = net.condition(digits, speakers)
    conds = [layer.cond(g)[:, :, None] for layer in layers]
    seq = torch.cat([torch.full((len(digits), 1), SILENCE), prefix, torch.zeros_like(uniforms, dtype=torch.long)], dim=1)
    n_prefix, logits = prefix.shape[1], []
    for t in range(n_prefix, seq.shape[1] - 1):
        h = net.inputs(seq[:, max(0, t + 1 - net.receptive_field) : t + 1]).transpose(1, 2)
        skips = 0
        for layer, cond, later in zip(layers, conds, above):
            need_out = 1 + later
            need = need_out + (k - 1) * layer.dilation
            # positions before the window start are zeros at every layer's input, as the convolutions' padding
            keep = min(h.shape[-1], need_out)
            h = F.pad(h, (max(0, need - h.shape[-1]), 0))[:, :, -need:]
            res, skip = layer.out(layer.gated(layer.conv(h) + cond)).split(
                [layer.residual, layer.out.out_channels - layer.residual], dim=1)
            h = h[:, :, -keep:] + res[:, :, -keep:]
            skips = skips + skip[:, :, -1:]
        out = net.head(skips)[:, :, 0]
        cdf = torch.softmax(out / temperature, dim=1).cumsum(dim=1)
        seq[:, t + 1] = torch.searchsorted(cdf, uniforms[:, t - n_prefix, None].contiguous())[:, 0].clamp_max(net.n_classes - 1)
        logits.append(out)
    return seq[:, 1 + n_prefix :], torch.stack(logits, dim=1), time.perf_counter() - start


def plot_spectrograms(real: list[np.ndarray], generated: list[np.ndarray], titles: list[str], path: Path) -> Path:
    fig, axes = plt.subplots(len(real), 2, figsize=(9, 1.6 * len(real)), squeeze=False)
    for row, (r, g, title) in enumerate(zip(real, generated, titles)):
        for ax, audio, kind in ((axes[row, 0], r, "real"), (axes[row, 1], g, "generated")):
            ax.specgram(audio, NFFT=256, Fs=SAMPLE_RATE, noverlap=192, cmap="magma")
            ax.set_title(f"{title}: {kind}", fontsize=8)
            ax.set_ylabel("Hz", fontsize=7)
            ax.tick_params(labelsize=6)
    return save_figure(fig, path)


def write_wav(path: Path, codes: np.ndarray) -> Path:
    from scipy.io import wavfile

    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, SAMPLE_RATE, (mu_law_decode(codes.astype(np.float64)) * 32767).astype(np.int16))
    return path


_BASELINES: dict[tuple, dict[str, float]] = {}


def _baselines(datamodule) -> dict[str, float]:
    """ngram_baselines of the data module's splits, once per process: a compress stage scores the parent and the
    compressed network on the same splits, and the n-gram fit is a third of an evaluation's time."""
    arrays = [datamodule.arrays[s] for s in ("train", "val", "test")]
    key = tuple((id(a["codes"]), a["codes"].shape) for a in arrays)
    if key not in _BASELINES:
        _BASELINES[key] = ngram_baselines(*arrays)
    return _BASELINES[key]


def evaluate(module, datamodule, out_dir: str | Path, speaker: str, generate_samples: int = 4096, naive_steps: int = 100,
             temperature: float = 1.0, seed: int = 0, nll_margin_bits: float = 1.0, min_speedup: float = 10.0,
             min_receptive_field: int = 1024, max_logit_diff: float = 1e-4, generate: bool = True) -> tuple[dict, list[Path]]:
    """Test NLL against n-gram baselines and, with `generate`, cached against naive generation with samples and
    spectrograms (the compress stages turn generation off: speech stages share 12 minutes)."""
    datamodule.setup("test")
    net = module.net.eval()
    if speaker not in datamodule.speakers:
        raise ConfigError(f"evaluator.speaker={speaker!r} is not one of the prepared speakers {datamodule.speakers}")
    nats, n_samples = test_nll(net, datamodule.test_dataloader())
    baselines = _baselines(datamodule)
    bits = {name: value / math.log(2) for name, value in baselines.items()}
    metrics = {"test/nll_nats": nats, "test/nll_bits": nats / math.log(2), "test/num_samples": n_samples,
               "test/num_recordings": len(datamodule.datasets["test"])}
    for name in baselines:
        metrics[f"baseline/{name}_nats"], metrics[f"baseline/{name}_bits"] = baselines[name], bits[name]
    metrics["test/bits_below_bigram"] = bits["bigram"] - metrics["test/nll_bits"]
    metrics["test/bits_below_trigram"] = bits["trigram"] - metrics["test/nll_bits"]
    metrics["acceptance/nll_margin_bits"] = nll_margin_bits
    metrics["acceptance/nll_passed"] = int(metrics["test/bits_below_bigram"] >= nll_margin_bits and metrics["test/bits_below_trigram"] > 0)
    metrics["receptive_field"], metrics["receptive_field_ms"] = net.receptive_field, 1000 * net.receptive_field / SAMPLE_RATE
    if not generate:
        return metrics, []

    # One sequence per digit, all by one speaker, from one stream of uniforms: fast generation of the whole
    # length, then naive generation continuing the fast one's first `start` samples (a full receptive field,
    # so each naive step recomputes all of it) with the same uniforms, compared sample by sample.
    rf = net.receptive_field
    digits = torch.arange(10)
    speakers = torch.full_like(digits, datamodule.speakers.index(speaker))
    uniforms = torch.rand(len(digits), generate_samples, generator=torch.Generator().manual_seed(seed))
    fast, fast_logits, fast_seconds = timed_generation(net, digits, speakers, uniforms, temperature=temperature)
    start = min(rf, generate_samples - naive_steps)
    if start < 0:
        raise ConfigError(f"evaluator.naive_steps={naive_steps} exceeds evaluator.generate_samples={generate_samples}")
    naive, naive_logits, naive_seconds = timed_generation(net, digits, speakers, uniforms[:, start : start + naive_steps],
                                                          prefix=fast[:, :start], naive=True, temperature=temperature)
    trimmed, trimmed_logits, trimmed_seconds = trimmed_generation(net, digits, speakers, uniforms[:, start : start + naive_steps],
                                                                  fast[:, :start], temperature=temperature)
    fast_rate = len(digits) * generate_samples / fast_seconds
    naive_rate = len(digits) * naive_steps / naive_seconds
    trimmed_rate = len(digits) * naive_steps / trimmed_seconds
    diff = float((naive_logits - fast_logits[:, start : start + naive_steps]).abs().max())
    metrics.update({
        "gen/fast_samples_per_s": fast_rate, "gen/naive_samples_per_s": naive_rate, "gen/speedup": fast_rate / naive_rate,
        # against naive generation that recomputes only what the next sample depends on: the fair speed-up
        "gen/trimmed_samples_per_s": trimmed_rate, "gen/speedup_vs_trimmed": fast_rate / trimmed_rate,
        "gen/trimmed_max_logit_diff": float((trimmed_logits - fast_logits[:, start : start + naive_steps]).abs().max()),
        "gen/trimmed_sample_agreement": float((trimmed == fast[:, start : start + naive_steps]).float().mean()),
        "gen/max_logit_diff": diff,
        "gen/sample_agreement": float((naive == fast[:, start : start + naive_steps]).float().mean()),
        "gen/naive_window": min(rf, start + 1),
        "acceptance/speedup_passed": int(fast_rate / naive_rate >= min_speedup and rf >= min_receptive_field),
        "acceptance/logit_diff_passed": int(diff < max_logit_diff),
    })

    out_dir = Path(out_dir)
    files, real, titles = [], [], []
    test = datamodule.arrays["test"]
    for d in range(len(digits)):
        files.append(write_wav(out_dir / f"generated_digit{d}_{speaker}.wav", fast[d].numpy()))
        # a real test recording of the same digit, by the same speaker where the (possibly limited) test split has one
        same_digit = np.flatnonzero(test["digits"] == d)
        candidates = [i for i in same_digit if test["speakers"][i] == speakers[d].item()] or list(same_digit)
        i = candidates[0] if candidates else None
        real.append(mu_law_decode(test["codes"][i, : test["lengths"][i]].astype(np.float64)) if i is not None else np.zeros(256))
        titles.append(f"digit {d}, {speaker}")
    generated = [mu_law_decode(c.numpy().astype(np.float64)) for c in fast]
    files.append(plot_spectrograms(real, generated, titles, out_dir / "spectrograms.png"))
    return metrics, files
