"""The playground's translate, digits, control and time-series tabs without the page: what each sends the
champion's answer and what it makes of the reply, on stand-in models with the pyfunc answers' shapes."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from conftest import compose_config, prepare_data
from dlzoo.demo import answers
from dlzoo.errors import DataError


class _Echo:
    """A text answer that records its request."""

    def predict(self, lines, params=None):
        self.request = (list(lines), params)
        return [f"<{lines[0]}>"]


def test_translate_sends_one_sentence_with_its_beam_and_refuses_empty_or_long_text():
    model = _Echo()
    assert answers.translate(model, "  I can't swim.  ", beam=5) == "<I can't swim.>"
    assert model.request == (["I can't swim."], {"beam": 5})
    with pytest.raises(DataError, match="type an English sentence"):
        answers.translate(model, "   ")
    with pytest.raises(DataError, match="at most"):
        answers.translate(model, "word " * 200)


def test_a_drawing_becomes_the_digits_input_and_an_empty_canvas_is_refused():
    canvas = np.full((256, 256, 4), 255, np.uint8)
    canvas[60:200, 120:136, :3] = 0          # a dark vertical stroke: a "1"
    x = answers.digit_from_sketch({"composite": canvas})
    assert x.shape == (1, 1, 8, 8) and x.dtype == np.float32
    assert x.max() == 1.0 and np.allclose(x * 16, np.round(x * 16))       # the digits' 17 grey levels
    assert x[0, 0, :, 3:5].sum() > x[0, 0, :, :2].sum()                    # ink in the middle columns
    with pytest.raises(DataError, match="empty"):
        answers.digit_from_sketch({"composite": np.full((64, 64, 4), 255, np.uint8)})
    with pytest.raises(DataError, match="draw a digit"):
        answers.digit_from_sketch(None)


def test_probabilities_and_the_enlarged_input():
    class Probabilities:
        def predict(self, x):
            return pd.DataFrame([np.full(10, 0.1)], columns=[str(d) for d in range(10)])

    probs = answers.probabilities(Probabilities(), np.zeros((1, 1, 8, 8), np.float32))
    assert list(probs) == [str(d) for d in range(10)] and abs(sum(probs.values()) - 1) < 1e-9
    assert answers.digit_image(np.ones((1, 1, 8, 8)), size=80).shape == (80, 80, 3)


def test_an_episode_is_a_gif_with_its_return():
    from PIL import Image

    class AlwaysLeft:
        def predict(self, observations):
            return pd.DataFrame({"action": [0], "name": ["push left"]})

    cfg = compose_config("experiment=control-cartpole-dqn", "profile=smoke")
    data, total, steps = answers.episode(AlwaysLeft(), cfg, seed=0)
    gif = Image.open(io.BytesIO(data))
    assert gif.format == "GIF" and gif.n_frames >= 2
    assert total == steps and 5 <= steps < 100   # pushing one way, the pole falls within a few dozen steps


def test_the_forecast_plot_scores_the_test_part(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("experiment=timeseries-sunspots-rnn", "profile=smoke")
    prepare_data(cfg)

    class Persistence:
        """Tomorrow as today: the last value of each window, repeated for every step."""

        def predict(self, windows, params=None):
            return np.repeat(np.asarray(windows)[:, -1:], params["steps"], axis=1)

    image, stats = answers.forecast(Persistence(), cfg, steps=1)
    assert image.ndim == 3 and image.shape[2] == 3 and stats["points"] > 10 and stats["mae"] > 0


def test_make_demo_without_a_store_says_so_and_exits_2(tmp_path):
    """`make demo` from a shell with nothing activated, on a store that is not there: one line, no page."""
    import subprocess

    from conftest import REPO, user_env

    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "demo", f"STORE={tmp_path / 'none.db'}"],
                          env=user_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and not (tmp_path / "none.db").exists()
    assert f"error: {tmp_path / 'none.db'}: no such store" in done.stderr and "Traceback" not in done.stderr
