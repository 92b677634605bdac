import numpy as np
import pytest
import torch

from dlzoo.data.binary_addition import BinaryAdditionDataModule, encode, from_bits, prepare, to_bits
from dlzoo.errors import ConfigError
from dlzoo.models.init import init_recurrent
from dlzoo.models.simple_rnn import BinaryAdderRNN


def test_bits_round_trip_least_significant_first():
    values = np.array([0, 1, 2, 5, 255])
    bits = to_bits(values, 8)
    assert bits[3].tolist() == [1, 0, 1, 0, 0, 0, 0, 0]  # 5 = 101b, LSB first
    assert from_bits(bits).tolist() == values.tolist()


def test_encode_targets_are_the_sum_with_carry():
    a, b = np.array([255, 3, 0]), np.array([1, 5, 0])
    x, y = encode(a, b, num_bits=8)
    assert x.shape == (3, 9, 2) and y.shape == (3, 9)
    assert from_bits(y).tolist() == [256, 8, 0]  # the 9th step holds the final carry
    assert from_bits(x[:, :, 0]).tolist() == a.tolist()


def test_prepare_splits_are_disjoint_cover_everything_and_are_seeded(tmp_path):
    s1 = prepare(str(tmp_path / "a"), num_bits=4, seed=3)
    prepare(str(tmp_path / "b"), num_bits=4, seed=3)
    p1, p2 = np.load(tmp_path / "a" / "pairs.npz"), np.load(tmp_path / "b" / "pairs.npz")
    pairs = {s: set(zip(p1[f"{s}_a"].tolist(), p1[f"{s}_b"].tolist())) for s in ("train", "val", "test")}
    assert not pairs["train"] & pairs["test"] and not pairs["train"] & pairs["val"] and not pairs["val"] & pairs["test"]
    assert sum(len(p) for p in pairs.values()) == 2**8 == s1["n_train"] + s1["n_val"] + s1["n_test"]
    assert all((p1[k] == p2[k]).all() for k in p1.files)


def test_prepare_rejects_bad_sizes(tmp_path):
    with pytest.raises(ConfigError, match="num_bits"):
        prepare(str(tmp_path), num_bits=0)
    with pytest.raises(ConfigError, match="fraction"):
        prepare(str(tmp_path), val_fraction=0.5, test_fraction=0.6)


def test_datamodule_shapes(tmp_path):
    prepare(str(tmp_path), num_bits=6)
    dm = BinaryAdditionDataModule(str(tmp_path), batch_size=8)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 7, 2) and y.shape == (8, 7)


@pytest.mark.parametrize("init", ["default", "normal", "xavier", "he", "orthogonal"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_model_shapes_and_init(init, nonlinearity):
    torch.manual_seed(0)
    net = BinaryAdderRNN(hidden_size=12, nonlinearity=nonlinearity, init=init)
    assert net(torch.zeros(5, 9, 2)).shape == (5, 9)
    if init != "default":
        assert torch.count_nonzero(net.rnn.bias_hh_l0) == 0


def test_xavier_and_he_scale_weights_as_documented():
    rnn = torch.nn.RNN(2, 400)
    init_recurrent(rnn, "xavier")
    bound = torch.nn.init.calculate_gain("tanh") * (6 / (400 + 400)) ** 0.5
    assert rnn.weight_hh_l0.abs().max() <= bound + 1e-6
    init_recurrent(rnn, "he", nonlinearity="relu")
    assert rnn.weight_hh_l0.std().item() == pytest.approx((2 / 400) ** 0.5, rel=0.05)


def test_unknown_init_and_activation_are_config_errors():
    with pytest.raises(ConfigError, match="init scheme"):
        BinaryAdderRNN(init="glorot")
    with pytest.raises(ConfigError, match="nonlinearity"):
        BinaryAdderRNN(nonlinearity="sigmoid")
