import math

import numpy as np
import pytest
import torch

from dlzoo.data.digits import DigitsDataModule, prepare, random_shift
from dlzoo.errors import ConfigError
from dlzoo.evaluation.profiling import count_macs, count_parameters, profile_classifier
from dlzoo.models.cnn import PlainCNN
from dlzoo.models.densenet import DenseNet
from dlzoo.models.mobilenet import MobileNet
from dlzoo.models.norm import NORMS, make_norm
from dlzoo.models.vae import VAE

WIDTHS, STRIDES = (32, 64, 64, 128, 128), (1, 1, 2, 1, 2)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    prepare(str(out))
    return out


def test_split_is_stratified_disjoint_and_seeded(digits_dir, tmp_path):
    with np.load(digits_dir / "digits.npz") as d:
        idx = {s: set(d[f"{s}_index"].tolist()) for s in ("train", "val", "test")}
        assert not idx["train"] & idx["test"] and not idx["val"] & idx["test"] and not idx["train"] & idx["val"]
        assert sum(map(len, idx.values())) == 1797
        test_counts = np.bincount(d["test_y"], minlength=10)
        assert test_counts.min() >= 35 and test_counts.max() <= 37  # ~20% of each class
        assert 0.0 <= d["train_x"].min() and d["train_x"].max() <= 1.0
    prepare(str(tmp_path))
    with np.load(digits_dir / "digits.npz") as a, np.load(tmp_path / "digits.npz") as b:
        assert all((a[k] == b[k]).all() for k in a.files)
    with pytest.raises(ConfigError):
        prepare(str(tmp_path), val_fraction=0.6, test_fraction=0.5)


def test_datamodule_serves_images(digits_dir):
    dm = DigitsDataModule(str(digits_dir), batch_size=16)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.int64


def test_random_shift_moves_by_at_most_max_shift():
    x = torch.zeros(50, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    shifted = random_shift(x, 1)
    assert shifted.shape == x.shape
    assert torch.all(shifted.sum(dim=(1, 2, 3)) == 4)  # interior blob never falls off
    rows = shifted[:, 0].sum(dim=2).argmax(dim=1)
    assert set(rows.tolist()) <= {2, 3, 4} and len(set(rows.tolist())) > 1


@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_variant_trains_on_the_same_backbone(norm):
    net = PlainCNN(norm=norm)
    out = net(torch.randn(4, 1, 8, 8))
    assert out.shape == (4, 10)
    out.sum().backward()


def test_norm_layers_normalise_over_the_documented_axes():
    x = torch.randn(4, 8, 5, 5) * 3 + 2
    layer = make_norm("layer", 8)(x)
    assert torch.allclose(layer.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-5)
    inst = make_norm("instance", 8)(x)
    assert torch.allclose(inst.mean(dim=(2, 3)), torch.zeros(4, 8), atol=1e-5)
    assert isinstance(make_norm("group", 12), torch.nn.GroupNorm) and make_norm("group", 12).num_groups == 6
    with pytest.raises(ConfigError):
        make_norm("weight", 8)


def test_mobilenet_needs_at_most_a_fifth_of_the_plain_cnns_macs():
    x = torch.zeros(1, 1, 8, 8)
    cnn, mobile = PlainCNN(WIDTHS, STRIDES), MobileNet(WIDTHS, STRIDES)
    assert count_macs(mobile, x) <= count_macs(cnn, x) / 5
    assert count_parameters(mobile) < count_parameters(cnn) / 5
    # the width multiplier scales the cost roughly quadratically
    assert count_macs(MobileNet(WIDTHS, STRIDES, width_multiplier=0.5), x) < 0.4 * count_macs(mobile, x)


def test_mac_counter_on_a_hand_computed_conv():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert count_macs(conv, torch.zeros(1, 3, 8, 8)) == 8 * 8 * 3 * 4 * 9
    depthwise = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    assert count_macs(depthwise, torch.zeros(1, 4, 8, 8)) == 8 * 8 * 4 * 9


def test_densenet_grows_by_the_growth_rate():
    net = DenseNet(growth_rate=6, block_layers=(2, 3), compression=0.5)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    # stem 12 -> +2*6 = 24 -> transition 12 -> +3*6 = 30 channels before the head
    assert net.head[-1].in_features == 30


def test_profile_reports_cost_metrics():
    stats = profile_classifier(MobileNet(), (1, 8, 8))
    assert set(stats) == {"num_params", "macs", "latency_ms_b1", "latency_ms_b32", "latency_ms_b1_iqr", "latency_ms_b32_iqr"}
    # Only what holds on a loaded machine too: wall-clock ratios between timings belong to the pipeline's
    # latency metrics (with their spread), not to a unit test that fails when another process takes the CPU.
    for batch in (1, 32):
        assert stats[f"latency_ms_b{batch}"] > 0 and stats[f"latency_ms_b{batch}_iqr"] >= 0


def test_vae_elbo_terms():
    torch.manual_seed(0)
    vae = VAE(latent_dim=3)
    x = torch.rand(5, 1, 8, 8)
    recon, kl = vae.elbo_terms(x)
    assert recon.shape == kl.shape == (5,) and (kl >= 0).all() and (recon > 0).all()
    assert vae(x).shape == x.shape and vae.decode(torch.zeros(2, 3)).shape == (2, 64, 17)
    # a true likelihood: the importance-weighted bound on log p(x) is a log-probability of 17-level images, at
    # least the ELBO in expectation, and tightens with k
    g = torch.Generator().manual_seed(0)
    x17 = torch.randint(0, 17, (5, 1, 8, 8)).float() / 16
    ll1, ll500 = vae.log_likelihood(x17, 1, g), vae.log_likelihood(x17, 500, g)
    assert (ll500 < 0).all() and ll500.mean() > ll1.mean() and ll500.mean() >= -64 * math.log(17) - 50
    # KL of the prior against itself is zero
    mu, logvar = torch.zeros(1, 3), torch.zeros(1, 3)
    assert float(0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum()) == 0.0
    # the reparameterised sample lets gradients reach the encoder
    (recon + kl).mean().backward()
    assert vae.to_logvar.weight.grad is not None and vae.to_logvar.weight.grad.abs().sum() > 0


def test_evaluator_writes_each_test_examples_true_and_predicted_class(digits_dir, tmp_path):
    """The table `dvc plots` draws as the confusion matrix: one row per test example, the same counts as the
    matrix and accuracy the evaluator reports."""
    import pandas as pd

    from dlzoo.evaluation.classification import CONFUSION_TABLE, evaluate

    torch.manual_seed(0)
    net = PlainCNN((4, 4, 4, 4, 4), STRIDES)
    metrics, files = evaluate(net, DigitsDataModule(str(digits_dir), batch_size=64), tmp_path)
    table = pd.read_csv(tmp_path / CONFUSION_TABLE)
    assert tmp_path / CONFUSION_TABLE in files and list(table.columns) == ["actual", "predicted"]
    assert len(table) == metrics["test/num_examples"] == 360
    assert (table["actual"] == table["predicted"]).mean() == pytest.approx(metrics["test/accuracy"])
    assert (table["actual"] != table["predicted"]).sum() == metrics["test/error_count"]
    assert np.bincount(table["actual"], minlength=10).min() >= 35   # the stratified test split's true classes


def test_the_mixture_baseline_finds_clusters_the_independent_one_cannot():
    """Two kinds of 17-level images: a mixture of per-pixel categoricals (EM) gives them a higher likelihood than
    independent pixels, and both are proper log-probabilities (at most 64·log 17 nats for uniform guessing)."""
    from dlzoo.evaluation.generative import independent_nll, mixture_fit, mixture_nll

    rng = np.random.default_rng(0)
    kind = rng.integers(0, 2, 600)
    images = np.where(kind[:, None] == 1, rng.integers(12, 17, (600, 64)), rng.integers(0, 5, (600, 64)))
    train, test = images[:500], images[500:]
    independent = independent_nll(train, test)
    mixture = mixture_nll(mixture_fit(train, 2, iterations=30), test)
    assert mixture < independent <= 64 * math.log(17)
    assert abs(mixture - 64 * math.log(5)) < 5   # each kind: 5 equally likely levels per pixel


def test_vae_smoke_fit_reports_the_17_level_likelihood_beside_its_baselines(workdir, make_cfg):
    from conftest import prepare_data
    from dlzoo.evaluation.evaluate import evaluate
    from dlzoo.training.train import train

    cfg = make_cfg("experiment=digits-generative-vae", "profile=smoke", "tracking.log_model=false")
    prepare_data(cfg)
    train(cfg)
    m = evaluate(cfg)
    assert m["test/iwae_samples"] == 100 and m["baseline/mixture_components"] == 5
    # the importance-weighted bound is at least as tight as the ELBO (up to Monte Carlo noise)
    assert m["test/nll_iwae"] <= m["test/neg_elbo"] + 1.0
    assert m["test/nll_iwae_bits_per_pixel"] == pytest.approx(m["test/nll_iwae"] / (64 * math.log(2)))
    assert 0 < m["baseline/mixture_nll"] < m["baseline/independent_nll"] < 64 * math.log(17)
    assert m["test/nats_below_mixture"] == pytest.approx(m["baseline/mixture_nll"] - m["test/nll_iwae"])
