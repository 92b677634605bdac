"""The model side of the demo's "Spoken digits" tab: a user's WAV in, the classifier's probabilities out, and
a WaveNet clip spoken for a chosen digit, with a picture of each clip.

`cfg` is the train run's resolved config (its `config.yaml` in MLflow, loaded with OmegaConf). The classifier
hears what its data module serves a test clip (dlzoo/data/fsdd.py, fsdd_classification.py): the recording
peak-normalised, its central `n_samples` kept (or padded with silence), mu-law encoded to 256 levels and
decoded back to floats, shape (1, 1, n_samples). `classifier_input` repeats exactly that, so the champion
scores an upload as it scored its test split.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dlzoo.data.fsdd import SAMPLE_RATE, SILENCE, fit_length, mu_law_decode, mu_law_encode
from dlzoo.data.fsdd_classification import decode
from dlzoo.errors import DataError

MAX_SECONDS = 10.0        # longest upload read: a spoken digit lasts under a second
SILENT_PEAK = 1e-3        # peak (of full scale 1.0) below which an upload is taken for silence (-60 dBFS)
MAX_GENERATE_SECONDS = 2.0   # the longest clip asked for: cached generation still computes one network step per sample
# The dataset's speakers in the order `prepare` numbers them (sorted names): the generator's speaker ids.
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


def sample_rate(cfg) -> int:
    """The recipe's sample rate: the classifier's front end states it; the prepared recordings' rate otherwise."""
    return int(OmegaConf.select(cfg, "model.net.sample_rate", default=None) or SAMPLE_RATE)


# ----------------------------------------------------------------------------- reading an upload
def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(samples, target // g, rate // g)


def read_wav(path: str | Path, cfg) -> np.ndarray:
    """A WAV file as float32 mono samples (full scale 1.0) at the recipe's rate, or a one-line DataError naming
    the file; soundfile reads the header first, so an over-long file is refused before its samples are read."""
    import soundfile as sf

    path = Path(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile's errors for unknown or damaged formats, OSError for a missing file
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: not a readable WAV file ({reason})") from None
    if info.format not in ("WAV", "WAVEX", "RF64"):
        raise DataError(f"{path}: a {info.format} file, expected a WAV file")
    if info.frames == 0 or info.samplerate <= 0:
        raise DataError(f"{path}: empty WAV file (no samples)")
    seconds = info.frames / info.samplerate
    if seconds > MAX_SECONDS:
        raise DataError(f"{path}: {seconds:.1f} s long, the demo takes clips of at most {MAX_SECONDS:g} s")
    try:
        samples, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: not a readable WAV file ({reason})") from None
    samples = samples.mean(axis=1)  # stereo (or more channels) mixed to mono
    if len(samples) == 0:
        raise DataError(f"{path}: empty WAV file (no samples)")
    peak = float(np.abs(samples).max())
    if not np.isfinite(peak):
        raise DataError(f"{path}: samples that are not finite numbers (NaN or infinity)")
    if peak < SILENT_PEAK:
        raise DataError(f"{path}: silent recording (peak {peak:.2g} of full scale, below {SILENT_PEAK:g})")
    target = sample_rate(cfg)
    if rate != target:
        samples = _resample(samples, rate, target)
    return samples.astype(np.float32)


def trim_silence(samples: np.ndarray, rate: int, top_db: float = 35.0, margin_s: float = 0.05) -> np.ndarray:
    """The span whose 16 ms frames come within `top_db` of the loudest one, plus a margin: a microphone recording's
    leading and trailing silence removed, as the dataset's recordings were trimmed (its test clips need none)."""
    frame = max(1, int(0.016 * rate))
    n = len(samples) // frame
    if n == 0:
        return samples
    energy = (samples[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1)
    loud = np.flatnonzero(10 * np.log10(energy + 1e-20) >= 10 * np.log10(energy.max() + 1e-20) - top_db)
    margin = int(margin_s * rate)
    return samples[max(0, loud[0] * frame - margin) : min(len(samples), (loud[-1] + 1) * frame + margin)]


# ----------------------------------------------------------------------------- the classifier
def classifier_input(samples: np.ndarray, cfg) -> np.ndarray:
    """Samples at the recipe's rate -> the network's input (1, 1, n_samples) float32, as the prepare stage and the
    classification data module make a test clip of a recording."""
    n_samples = int(OmegaConf.select(cfg, "data.prepare.n_samples", default=4096))
    target_peak = float(OmegaConf.select(cfg, "data.prepare.peak", default=1.0))
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    peak = np.abs(x).max() if len(x) else 0.0
    if not peak > 0:
        raise DataError("empty or silent clip: nothing to classify")
    fitted, length = fit_length(x / peak * target_peak, n_samples)
    codes = mu_law_encode(fitted).astype(np.uint8)
    codes[length:] = SILENCE
    return decode(codes[None]).numpy()


def _is_python_model(model) -> bool:
    """An `mlflow.pyfunc.PythonModel` itself (predict takes a context first), not a loaded PyFuncModel."""
    try:
        from mlflow.pyfunc import PythonModel
    except ImportError:
        return False
    return isinstance(model, PythonModel)


def classify(model, samples: np.ndarray, cfg) -> dict[str, float]:
    """Class name -> probability, from the champion pyfunc (a DataFrame, one column per class) or a bare network
    (softmax over its logits, classes named by their index)."""
    x = classifier_input(samples, cfg)
    if hasattr(model, "predict"):
        frame = model.predict(None, x) if _is_python_model(model) else model.predict(x)
        return {str(name): float(frame[name].iloc[0]) for name in frame.columns}
    if isinstance(model, torch.nn.Module) and model.training:
        try:
            model.eval()
        except NotImplementedError:  # a torch.export graph (the registry's pt2 model): traced in eval mode already
            pass
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    probs = torch.softmax(logits.double(), dim=-1)[0].numpy()
    return {str(i): float(p) for i, p in enumerate(probs)}


# ----------------------------------------------------------------------------- pictures and sound
def waveform_image(samples: np.ndarray, rate: int, title: str = "") -> np.ndarray:
    """The waveform above its log-mel spectrogram, rendered off-screen (no pyplot state: safe in a server's threads)
    as an (H, W, 3) uint8 image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    samples = np.asarray(samples, dtype=np.float64).reshape(-1)
    fig = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    wave_ax, spec_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.4]})
    t = np.arange(len(samples)) / rate
    wave_ax.plot(t, samples, linewidth=0.6, color="tab:blue")
    wave_ax.set_ylim(-1.05, 1.05)
    wave_ax.set_ylabel("amplitude", fontsize=8)
    wave_ax.set_title(title, fontsize=9)
    n_fft = max(64, 2 ** round(math.log2(0.032 * rate)))  # 32 ms windows, as the classifier's front end
    if len(samples) >= n_fft:
        from dlzoo.models.wavenet_classifier import LogMel

        with torch.no_grad():
            db = 10 / math.log(10) * LogMel(n_fft, n_fft // 4, 40, rate)(torch.from_numpy(samples).float()[None, None])[0].numpy()
        db = np.maximum(db, db.max() - 80.0)  # 80 dB of range below the loudest band
        spec_ax.imshow(db, origin="lower", aspect="auto", cmap="magma", extent=(0, len(samples) / rate, 0, db.shape[0]))
    spec_ax.set_ylabel("mel band", fontsize=8)
    spec_ax.set_xlabel("seconds", fontsize=8)
    if len(samples):
        spec_ax.set_xlim(0, len(samples) / rate)
    for ax in (wave_ax, spec_ax):
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """Samples in [-1, 1] (clipped) as a 16-bit PCM mono WAV file's bytes."""
    from scipy.io import wavfile

    pcm = np.round(np.clip(np.asarray(samples, dtype=np.float64).reshape(-1), -1, 1) * 32767).astype(np.int16)
    buffer = io.BytesIO()
    wavfile.write(buffer, int(rate), pcm)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the generator
def _wavenet(net, cfg):
    """A network with the cached `generate`: the WaveNet itself, its LightningModule's `.net`, or, for a graph the
    registry stores (torch.export: forward only), the recipe's WaveNet rebuilt from `cfg` with its weights."""
    if hasattr(net, "generate"):
        return net
    if hasattr(getattr(net, "net", None), "generate"):
        return net.net
    from dlzoo.config import build

    rebuilt = build(cfg.model.net, "model.net")
    state = net.state_dict()
    missing, unexpected = rebuilt.load_state_dict(state, strict=False)
    if missing:
        raise DataError(f"the generator model lacks {len(missing)} of the recipe's weights (e.g. {missing[0]}): "
                        f"is it the WaveNet of {OmegaConf.select(cfg, 'task')}?")
    return rebuilt


def _speaker_id(cfg, speaker: int | str | None) -> int:
    n_speakers = int(OmegaConf.select(cfg, "model.net.n_speakers", default=len(FSDD_SPEAKERS)))
    if speaker is None:
        speaker = OmegaConf.select(cfg, "evaluator.speaker", default=0)
    if isinstance(speaker, str):
        if speaker not in FSDD_SPEAKERS:
            raise DataError(f"unknown speaker {speaker!r}: one of {', '.join(FSDD_SPEAKERS)}")
        speaker = FSDD_SPEAKERS.index(speaker)
    if not 0 <= int(speaker) < n_speakers:
        raise DataError(f"speaker {speaker} out of range: the generator knows speakers 0..{n_speakers - 1}")
    return int(speaker)


@torch.no_grad()
def generate(net, cfg, digit: int, seed: int, seconds: float | None = None,
             speaker: int | str | None = None) -> tuple[np.ndarray, int]:
    """A clip of `digit` from the WaveNet generator by its cached-queue generation (`WaveNet.generate`), sampled by
    inverse CDF from seeded uniforms as the evaluate stage does: the same seed gives the same clip. `seconds`
    defaults to the evaluator's length (one prepared recording), `speaker` to the evaluator's speaker."""
    wavenet = _wavenet(net, cfg)
    wavenet.eval()
    rate = sample_rate(cfg)
    n_digits = wavenet.digit_embed.num_embeddings
    if not 0 <= int(digit) < n_digits:
        raise DataError(f"digit {digit} out of range: the generator speaks digits 0..{n_digits - 1}")
    if seconds is None:
        n = int(OmegaConf.select(cfg, "evaluator.generate_samples", default=None) or
                OmegaConf.select(cfg, "data.prepare.n_samples", default=4096))
    else:
        if not 0 < seconds <= MAX_GENERATE_SECONDS:
            raise DataError(f"duration {seconds} s: the demo generates between 0 and {MAX_GENERATE_SECONDS:g} s")
        n = max(1, round(seconds * rate))
    temperature = float(OmegaConf.select(cfg, "evaluator.temperature", default=1.0))
    uniforms = torch.rand(1, n, generator=torch.Generator().manual_seed(int(seed)))
    codes, _ = wavenet.generate(torch.tensor([int(digit)]), torch.tensor([_speaker_id(cfg, speaker)]), uniforms, SILENCE,
                                temperature=temperature)
    return mu_law_decode(codes[0].double()).numpy().astype(np.float32), rate
