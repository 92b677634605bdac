"""The demo's spoken-digit side (dlzoo/demo/audio.py): an upload's featurisation equals the data module's test
clip, the classifier's probabilities from a bare network and from the champion's pyfunc wrapper, bad uploads
refused in one line, seeded generation and the WAV bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.io import wavfile

from conftest import compose_config
from dlzoo.config import build
from dlzoo.data.fsdd import FSDDDataModule, prepare
from dlzoo.data.fsdd_classification import FSDDClassificationDataModule
from dlzoo.demo.audio import (classifier_input, classify, generate, read_wav, trim_silence, wav_bytes,
                              waveform_image)
from dlzoo.errors import DataError
from dlzoo.tracking.probabilities import ClassProbabilities
from test_wavenet import link_subset

RATE = 8000


@pytest.fixture(scope="module")
def cls_cfg():
    return compose_config("experiment=speech-fsdd-classification-wavenet-classifier", "profile=smoke")


@pytest.fixture(scope="module")
def gen_cfg():
    return compose_config("experiment=speech-fsdd-generation-wavenet", "profile=smoke")


@pytest.fixture(scope="module")
def classifier(cls_cfg):
    torch.manual_seed(0)
    return build(cls_cfg.model, "model").net.eval()  # random init, as the runner builds it


@pytest.fixture(scope="module")
def wavenet(gen_cfg):
    torch.manual_seed(0)
    return build(gen_cfg.model.net, "model.net").eval()


def write(path, samples, rate=RATE):
    wavfile.write(path, rate, np.asarray(samples))
    return path


def tone(seconds=0.5, rate=RATE, freq=440.0, amp=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


# ----------------------------------------------------------------------------- the classifier's input
def test_featurisation_equals_the_data_modules_test_clips(tmp_path, cls_cfg):
    raw = link_subset(tmp_path / "raw", takes={0, 5, 6, 7})
    p = cls_cfg.data.prepare
    summary = prepare(str(tmp_path / "out"), raw_dir=str(raw), n_samples=p.n_samples, peak=p.peak, val_per_class=1)
    assert summary["n_trimmed"] > 0 and summary["n_padded"] > 0  # both longer and shorter clips than n_samples
    dm = FSDDClassificationDataModule(str(tmp_path / "out"))
    dm.setup("test")
    codes = FSDDDataModule(str(tmp_path / "out"))  # the same prepared order, with each recording's take
    codes.setup("test")
    test = codes.arrays["test"]
    assert len(test["digits"]) == 60 and np.array_equal(test["digits"], dm.arrays["test"]["digits"])
    for i, (digit, speaker, take) in enumerate(zip(test["digits"], test["speakers"], test["takes"])):
        path = raw / f"{digit}_{dm.speakers[speaker]}_{take}.wav"
        x = classifier_input(read_wav(path, cls_cfg), cls_cfg)
        assert x.shape == (1, 1, p.n_samples) and x.dtype == np.float32
        assert np.array_equal(x, dm.datasets["test"].waves[i : i + 1].numpy()), path.name


# ----------------------------------------------------------------------------- probabilities
def test_classify_sums_to_one_and_equals_the_champion_wrapper(cls_cfg, classifier):
    samples = (tone(0.4, freq=300) * np.hanning(3200)).astype(np.float32)
    probs = classify(classifier, samples, cls_cfg)
    assert list(probs) == [str(d) for d in range(10)]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-9) and all(0 <= v <= 1 for v in probs.values())

    wrapper = ClassProbabilities()  # what load_context sets, without an MLflow model on disk
    wrapper.net, wrapper.classes = classifier, [str(d) for d in range(10)]
    assert classify(wrapper, samples, cls_cfg) == pytest.approx(probs, abs=1e-12)

    class Loaded:  # the pyfunc as mlflow.pyfunc.load_model returns it: predict(data)
        def predict(self, data, params=None):
            return wrapper.predict(None, data, params)

    assert classify(Loaded(), samples, cls_cfg) == pytest.approx(probs, abs=1e-12)
    with torch.no_grad():
        logits = classifier(torch.from_numpy(classifier_input(samples, cls_cfg)))
    assert max(probs, key=probs.get) == str(int(logits.argmax()))

    # the trained version as the registry holds it: a torch.export graph, batch dimension dynamic as MLflow saves it
    example = torch.randn(4, 1, cls_cfg.data.prepare.n_samples) * 0.1
    exported = torch.export.export(classifier, (example,), dynamic_shapes=[{0: torch.export.Dim.AUTO}]).module()
    assert classify(exported, samples, cls_cfg) == pytest.approx(probs, abs=1e-6)


# ----------------------------------------------------------------------------- reading uploads
def test_read_wav_mixes_stereo_and_resamples_to_the_recipes_rate(tmp_path, cls_cfg):
    left = tone(0.5, rate=16000, freq=300, amp=0.6)
    path = write(tmp_path / "stereo.wav", (np.stack([left, left], axis=1) * 32767).astype(np.int16), rate=16000)
    samples = read_wav(path, cls_cfg)
    assert samples.dtype == np.float32 and samples.ndim == 1 and len(samples) == 4000
    assert np.abs(samples[200:-200] - tone(0.5, freq=300, amp=0.6)[200:-200]).max() < 0.01


@pytest.mark.parametrize("kind", ["text", "flac", "empty", "silent", "too_long"])
def test_read_wav_refuses_a_bad_upload_in_one_line_naming_the_file(tmp_path, cls_cfg, kind):
    path = tmp_path / f"upload_{kind}.wav"
    if kind == "text":
        path.write_text("not audio at all\n")
    elif kind == "flac":
        path = tmp_path / "upload_flac.flac"
        sf.write(path, tone(), RATE, format="FLAC")
    elif kind == "empty":
        write(path, np.zeros(0, dtype=np.int16))
    elif kind == "silent":
        write(path, np.zeros(RATE, dtype=np.int16))
    else:
        write(path, (np.random.default_rng(0).standard_normal(11 * RATE) * 3000).astype(np.int16))
    with pytest.raises(DataError) as err:
        read_wav(path, cls_cfg)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    expected = {"text": "not a readable WAV", "flac": "FLAC", "empty": "empty", "silent": "silent", "too_long": "11.0 s"}
    assert expected[kind] in message


def test_trim_silence_keeps_the_spoken_part():
    burst = tone(0.3, freq=500)
    padded = np.concatenate([np.zeros(RATE), burst, np.zeros(RATE)])
    trimmed = trim_silence(padded, RATE)
    assert len(burst) <= len(trimmed) <= len(burst) + int(0.15 * RATE)
    assert np.abs(trimmed).max() == pytest.approx(np.abs(burst).max())


# ----------------------------------------------------------------------------- generation and output
def test_generate_is_seeded_finite_and_of_the_asked_length(gen_cfg, wavenet):
    a, rate = generate(wavenet, gen_cfg, digit=3, seed=1, seconds=0.05)
    assert rate == RATE and a.dtype == np.float32 and a.shape == (400,)
    assert np.isfinite(a).all() and np.abs(a).max() <= 1.0
    assert np.array_equal(a, generate(wavenet, gen_cfg, digit=3, seed=1, seconds=0.05)[0])
    assert not np.array_equal(a, generate(wavenet, gen_cfg, digit=3, seed=2, seconds=0.05)[0])
    default, _ = generate(wavenet, gen_cfg, digit=0, seed=0)
    assert len(default) == gen_cfg.evaluator.generate_samples
    with pytest.raises(DataError, match="digit 10 out of range"):
        generate(wavenet, gen_cfg, digit=10, seed=0, seconds=0.05)


def test_generate_from_the_registrys_exported_graph_equals_the_network(gen_cfg, wavenet):
    """torch.export (the train stage's pt2 model) keeps forward only: generate rebuilds the WaveNet with its weights."""
    example = torch.cat([torch.tensor([[3, 1]] * 2), torch.randint(0, 256, (2, 64))], dim=1)
    exported = torch.export.export(wavenet, (example,)).module()
    assert not hasattr(exported, "generate")
    ours, _ = generate(wavenet, gen_cfg, digit=5, seed=7, seconds=0.02)
    assert np.array_equal(ours, generate(exported, gen_cfg, digit=5, seed=7, seconds=0.02)[0])


def test_wav_bytes_round_trip_through_the_reader(tmp_path, cls_cfg):
    samples = tone(0.25, freq=350, amp=0.8).astype(np.float32)
    data = wav_bytes(samples, RATE)
    assert data[:4] == b"RIFF"
    rate, pcm = wavfile.read(io.BytesIO(data))
    assert rate == RATE and pcm.dtype == np.int16
    (tmp_path / "clip.wav").write_bytes(data)
    back = read_wav(tmp_path / "clip.wav", cls_cfg)
    assert back.shape == samples.shape and np.abs(back - samples).max() <= 2 / 32768  # written x 32767, read / 32768


def test_waveform_image_is_an_rgb_picture():
    image = waveform_image(tone(0.5, freq=600), RATE, title="digit 3")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0
