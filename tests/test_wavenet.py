"""WaveNet on spoken digits: causality, the receptive field, cached against naive generation, the data stage's
splits and bad input, and a smoke fit + evaluate of the recipe on a subset of the real recordings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from conftest import REPO, mlflow_runs, prepare_data, run_entry
from dlzoo.data.fsdd import IGNORE, SAMPLE_RATE, SILENCE, FSDDDataModule, mu_law_decode, mu_law_encode, prepare
from dlzoo.errors import DataError
from dlzoo.models.wavenet import WaveNet

RECORDINGS = REPO / "data" / "fsdd" / "recordings"
SMALL = dict(residual_channels=6, gate_channels=5, skip_channels=16, cond_dim=3)


def small_net(kernel_size=2, layers_per_stack=3, stacks=2, seed=0) -> WaveNet:
    torch.manual_seed(seed)
    return WaveNet(kernel_size=kernel_size, layers_per_stack=layers_per_stack, stacks=stacks, **SMALL).eval()


# ----------------------------------------------------------------------------- the network
@pytest.mark.parametrize("kernel_size", [2, 3])
def test_output_t_has_zero_gradient_from_inputs_after_t(kernel_size):
    net = small_net(kernel_size)
    h = torch.randn(2, SMALL["residual_channels"], 40, requires_grad=True)
    g = net.condition(torch.tensor([3, 7]), torch.tensor([0, 5])).detach()
    for t in (0, 17, 39):
        (grad,) = torch.autograd.grad(net.stack(h, g)[:, :, t].sum(), h)
        assert torch.all(grad[:, :, t + 1 :] == 0)  # exactly zero: no path from the future
        assert grad[:, :, t].abs().sum() > 0       # and the present does reach it (for these seeded weights)


@pytest.mark.parametrize("kernel_size,layers_per_stack,stacks", [(2, 4, 2), (3, 3, 1), (2, 10, 1)])
def test_receptive_field_formula_matches_measured_impulse_response(kernel_size, layers_per_stack, stacks):
    net = small_net(kernel_size, layers_per_stack, stacks)
    rf = net.receptive_field
    assert rf == 1 + (kernel_size - 1) * sum(2**i for i in range(layers_per_stack)) * stacks
    length, s = rf + 50, 20
    h = torch.randn(1, SMALL["residual_channels"], length, dtype=torch.float64)
    g = net.double().condition(torch.tensor([1]), torch.tensor([2]))
    bumped = h.clone()
    bumped[:, :, s] += 1.0  # an impulse at input position s
    with torch.no_grad():
        changed = (net.stack(bumped, g) != net.stack(h, g)).any(dim=1)[0]
    assert changed.nonzero().flatten().tolist() == list(range(s, s + rf))


def test_cached_generation_equals_naive_sample_for_sample():
    net = small_net(kernel_size=2, layers_per_stack=4, stacks=2)  # receptive field 31: the run passes it 3 times
    digits, speakers = torch.tensor([0, 4, 9]), torch.tensor([1, 2, 5])
    uniforms = torch.rand(3, 100, generator=torch.Generator().manual_seed(1))
    fast, fast_logits = net.generate(digits, speakers, uniforms, SILENCE)
    naive, naive_logits = net.generate(digits, speakers, uniforms, SILENCE, naive=True)
    assert torch.equal(fast, naive)
    assert (fast_logits - naive_logits).abs().max() < 1e-4
    assert len(set(fast[0].tolist())) > 10  # sampled, not stuck on one code
    # naive continuing a fast prefix, as the evaluator times it
    cont, cont_logits = net.generate(digits, speakers, uniforms[:, 40:], SILENCE, prefix=fast[:, :40], naive=True)
    assert torch.equal(cont, fast[:, 40:]) and (cont_logits - fast_logits[:, 40:]).abs().max() < 1e-4
    # and the logits are those of the teacher-forced network on the generated sequence
    x = torch.cat([torch.full((3, 1), SILENCE), fast[:, :-1]], dim=1)
    with torch.no_grad():
        forced = net.logits(x, digits, speakers).transpose(1, 2)
    assert (forced - fast_logits).abs().max() < 1e-4


def test_mu_law_round_trip():
    x = np.linspace(-1, 1, 10001)
    codes = mu_law_encode(x)
    assert codes.min() == 0 and codes.max() == 255 and SILENCE == mu_law_encode(np.zeros(1))[0]
    assert np.all(np.diff(codes) >= 0)
    # within half a level: mu-law's levels are finest near zero, about 4.4% of |x| apart at full scale
    err = np.abs(mu_law_decode(codes) - x)
    assert np.all(err <= 0.022 * np.abs(x) + 1.5e-4)


# ----------------------------------------------------------------------------- the data stage
def link_subset(dst: Path, takes) -> Path:
    """Real recordings of every speaker and digit, only the given takes (symlinks)."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(RECORDINGS.glob("*.wav")):
        if int(path.stem.split("_")[2]) in takes:
            (dst / path.name).symlink_to(path)
    return dst


def test_official_split_and_validation_from_train_only(tmp_path):
    raw = link_subset(tmp_path / "raw", takes={0, 1, 5, 6, 7, 8})
    summary = prepare(str(tmp_path / "out"), raw_dir=str(raw), n_samples=1024, val_per_class=2)
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (120, 120, 120)
    dm = FSDDDataModule(str(tmp_path / "out"), crop_len=300)
    dm.setup()
    test, val, train = dm.arrays["test"], dm.arrays["val"], dm.arrays["train"]
    assert set(test["takes"]) == {0, 1} and min(val["takes"]) >= 5 and min(train["takes"]) >= 5
    keys = {s: {(d, p, t) for d, p, t in zip(a["digits"], a["speakers"], a["takes"])} for s, a in dm.arrays.items()}
    assert not keys["val"] & keys["train"] and len(keys["val"]) == 120
    # a whole test recording: the input is the target shifted by one sample, padding is ignored
    x, target = dm.datasets["test"][0]
    n = int(test["lengths"][0])
    assert x[0] == test["digits"][0] and x[1] == test["speakers"][0] and x[2] == SILENCE
    assert torch.equal(x[3 : 2 + n], target[: n - 1]) and torch.all(target[n:] == IGNORE)
    # a training crop is 300 consecutive samples of one recording, its input the sample before each
    torch.manual_seed(0)
    x, target = dm.datasets["train"][5]
    codes = torch.from_numpy(train["codes"][5].astype(np.int64))
    valid = target[target != IGNORE]
    start = next(i for i in range(len(codes)) if torch.equal(codes[i : i + len(valid)], valid))
    assert x.shape == (302,) and (start == 0 and x[2] == SILENCE or x[2] == codes[start - 1])


def write_tone(path: Path, rate: int = SAMPLE_RATE, n: int = 2000) -> Path:
    wavfile.write(path, rate, (8000 * np.sin(np.arange(n) / 5)).astype(np.int16))
    return path


def bad_folder(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A folder of good recordings plus one bad thing; the name the error must give."""
    raw = tmp_path / case
    raw.mkdir()
    for name in ("0_george_0.wav", "0_george_5.wav", "1_theo_7.wav"):
        write_tone(raw / name)
    if case == "corrupt":
        (raw / "3_lucas_9.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
        return raw, "3_lucas_9.wav"
    if case == "rate":
        write_tone(raw / "4_theo_12.wav", rate=16000)
        return raw, "4_theo_12.wav"
    if case == "name":
        write_tone(raw / "four_theo_12.wav")
        return raw, "four_theo_12.wav"
    for p in raw.iterdir():
        p.unlink()
    return raw, str(raw)


@pytest.mark.parametrize("case,match", [("corrupt", "not a readable WAV file"), ("rate", "sample rate 16000 Hz, expected 8000 Hz"),
                                        ("name", "file name is not"), ("empty", "no recordings")])
def test_bad_input_is_one_line_naming_the_file(tmp_path, case, match):
    raw, name = bad_folder(tmp_path, case)
    with pytest.raises(DataError, match=match) as err:
        prepare(str(tmp_path / "out"), raw_dir=str(raw))
    message = str(err.value)
    assert name in message and "\n" not in message
    assert not (tmp_path / "out" / "fsdd.npz").exists()


def test_bad_input_through_the_prepare_entry_point(tmp_path):
    raw, name = bad_folder(tmp_path, "corrupt")
    result = run_entry("prepare", "data=fsdd", f"data.prepare.raw_dir={raw}", cwd=tmp_path)
    # pipelines/prepare.py calls Hydra's instantiate, which reports the DataError inside its own short
    # "Error in call to target" note (exit 1) rather than as `error: ...` (exit 2); the one line is in it.
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if name in line]
    assert len(lines) == 1 and "not a readable WAV file" in lines[0]
    assert not (tmp_path / "artifacts" / "data" / "fsdd" / "fsdd.npz").exists()


# ----------------------------------------------------------------------------- the recipe, end to end
def test_smoke_fit_and_evaluate(workdir, make_cfg):
    from dlzoo.evaluation.evaluate import evaluate
    from dlzoo.training.train import train

    raw = link_subset(workdir / "raw", takes={0, 5, 6, 7})
    cfg = make_cfg("experiment=speech-fsdd-generation-wavenet", "profile=smoke", "tracking.log_model=false",
                   f"data.prepare.raw_dir={raw}")
    prepare_data(cfg)
    summary = train(cfg)
    assert Path(summary["checkpoint"]).is_file() and summary["num_params"] > 0
    metrics = evaluate(cfg)

    on_disk = json.loads(Path(cfg.paths.metrics_file).read_text())
    assert on_disk == pytest.approx(metrics)
    assert on_disk["test/nll_bits"] == pytest.approx(on_disk["test/nll_nats"] / math.log(2))
    assert on_disk["test/num_recordings"] == 50  # the smoke profile's eval_limit
    for order in ("unigram", "bigram", "trigram"):
        assert 0 < on_disk[f"baseline/{order}_bits"] < 8  # below the uniform code's 8 bits
    assert on_disk["receptive_field"] == 1 + sum(2**i for i in range(cfg.model.net.layers_per_stack))
    assert on_disk["gen/max_logit_diff"] < 1e-4 and on_disk["gen/sample_agreement"] == 1.0
    # the trimmed naive path computes the same logits as the cached one, so it draws the same samples
    assert on_disk["gen/trimmed_max_logit_diff"] < 1e-4 and on_disk["gen/trimmed_sample_agreement"] == 1.0
    assert on_disk["gen/speedup_vs_trimmed"] > 0
    assert on_disk["gen/fast_samples_per_s"] > 0 and on_disk["gen/naive_samples_per_s"] > 0

    reports = Path(cfg.paths.reports_dir)
    wavs = sorted(reports.glob("generated_digit*_jackson.wav"))
    assert len(wavs) == 10 and (reports / "spectrograms.png").is_file()
    rate, audio = wavfile.read(wavs[3])
    assert rate == SAMPLE_RATE and len(audio) == cfg.evaluator.generate_samples
    runs = {r["tags"]["stage"]: r for r in mlflow_runs(workdir / "mlflow.db")}
    assert runs["train"]["metrics"]["receptive_field"] == on_disk["receptive_field"]
    assert runs["evaluate"]["metrics"]["test/nll_bits"] == pytest.approx(on_disk["test/nll_bits"])

    # The recipe's compression, measured by this evaluator (shortened generation, same test NLL)
    from dlzoo.compression.compress import compress

    for method in cfg.compression.methods:
        compressed = compress(compose_compress(method, f"data.prepare.raw_dir={raw}"))
        assert compressed["test/num_recordings"] == 50 and not any(k.startswith("gen/") for k in compressed)
        assert compressed["parent/test/nll_bits"] == pytest.approx(on_disk["test/nll_bits"])
        assert compressed["size_mb"] < compressed["parent/size_mb"] or method != "wavenet-int8"
        assert compressed["num_params"] == compressed["parent/num_params"]
    assert 0.49 < compressed["sparsity"] < 0.51  # wavenet-prune, the last of the two


def compose_compress(method: str, *more: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dlzoo.compression.compress import for_profile

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="compression", overrides=["experiment=speech-fsdd-generation-wavenet", "profile=smoke",
                                                                 f"compress={method}", *more])
    finally:
        GlobalHydra.instance().clear()
    return for_profile(cfg)


def test_weight_only_int8_keeps_layers_and_generation():
    """Every conv/linear/embedding weight becomes int8 codes + a per-channel scale, the layers keep their classes'
    behaviour (cached generation still equals naive), the file shrinks, the parameter count does not."""
    from dlzoo.compression.measure import size_metrics
    from dlzoo.compression.weight_int8 import Int8WeightConv1d, quantize_weight, to_int8_weights

    net, ref = small_net(), small_net()
    n_layers = sum(isinstance(m, (torch.nn.Conv1d, torch.nn.Linear, torch.nn.Embedding)) for m in net.modules())
    assert to_int8_weights(net) == n_layers
    assert isinstance(net.layers[0].conv, Int8WeightConv1d) and net.layers[0].conv.weight_int8.dtype == torch.int8
    for (name, a), b in zip(net.named_modules(), ref.modules()):
        if hasattr(a, "weight_scale"):   # rounding error at most half a step of each channel's scale
            assert ((a.weight - b.weight).abs() <= a.weight_scale / 2 + 1e-7).all(), name
    before, after = size_metrics(ref), size_metrics(net)
    # smaller, though not 4x for a net this tiny: per-channel scales, biases and the file's header weigh in
    assert after["size_mb"] < before["size_mb"] and after["num_params"] == before["num_params"]
    x = torch.cat([torch.tensor([[3, 1]]), torch.randint(0, 256, (1, 40))], dim=1)
    assert (net(x) - ref(x)).abs().max() < 0.1
    u = torch.rand(1, 30, generator=torch.Generator().manual_seed(0))
    fast, fast_logits = net.generate(x[:, 0], x[:, 1], u, SILENCE)
    naive, naive_logits = net.generate(x[:, 0], x[:, 1], u, SILENCE, naive=True)
    assert torch.equal(fast, naive) and (fast_logits - naive_logits).abs().max() < 1e-4
    codes, scale = quantize_weight(torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
    assert codes.tolist() == [[127, -64], [0, 0]] and scale[1].item() > 0  # an all-zero channel stays zero
