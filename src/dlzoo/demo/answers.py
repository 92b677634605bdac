"""The model side of the playground's translate, digits, control and time-series tabs: each asks the champion
through its registered answer (`mlflow.pyfunc`), exactly as `make serve` would, and turns the answer into what
the page shows."""

from __future__ import annotations

import io

import numpy as np

from dlzoo.errors import DataError

MAX_CHARS = 500  # a sentence or two: the translators were trained on sentences of up to 50 tokens


def translate(model, text: str, beam: int = 1) -> str:
    """One sentence through the champion's text answer (greedy for beam 1)."""
    text = (text or "").strip()
    if not text:
        raise DataError("type an English sentence to translate")
    if len(text) > MAX_CHARS:
        raise DataError(f"the text has {len(text)} characters; translate at most {MAX_CHARS} at a time")
    answer = model.predict([text], params={"beam": int(beam)})
    translation = list(answer)[0]
    if not translation:
        raise DataError("the translator gave no output for this text (too long after tokenising, or no known word)")
    return translation


def digit_from_sketch(sketch) -> np.ndarray:
    """A drawing (dark ink on a light page, any size) as the digits' input: 1x1x8x8 ink intensity in [0, 1],
    the scaling of scikit-learn's 8x8 digits (0 = paper, 16 = full ink, divided by 16)."""
    from PIL import Image

    if isinstance(sketch, dict):  # Gradio's image editor value: the flattened drawing is the composite
        sketch = sketch.get("composite")
    if sketch is None:
        raise DataError("draw a digit first")
    image = np.asarray(sketch)
    if image.ndim == 3 and image.shape[2] == 4:   # transparent paper counts as paper
        alpha = image[..., 3:4].astype(np.float64) / 255.0
        image = (image[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    grey = np.asarray(Image.fromarray(image.astype(np.uint8)).convert("L"), dtype=np.float64)
    ink = 1.0 - grey / 255.0
    if ink.max() < 0.05:
        raise DataError("the canvas is empty: draw a digit first")
    rows, cols = np.nonzero(ink > 0.05)
    # crop to the ink's square box with a margin, as the 8x8 digits are roughly centred and scaled
    side = max(np.ptp(rows), np.ptp(cols)) + 1
    pad = int(round(side * 0.15))
    r0 = max(0, (rows.min() + rows.max()) // 2 - side // 2 - pad)
    c0 = max(0, (cols.min() + cols.max()) // 2 - side // 2 - pad)
    crop = ink[r0 : r0 + side + 2 * pad, c0 : c0 + side + 2 * pad]
    small = Image.fromarray((crop * 255).astype(np.uint8)).resize((8, 8), Image.Resampling.BOX)
    x = np.asarray(small, dtype=np.float32) / 255.0
    x = np.round(x / x.max() * 16) / 16  # the digits' 17 grey levels, full ink at the darkest cell
    return x.reshape(1, 1, 8, 8).astype(np.float32)


def test_digit(cfg, index: int) -> tuple[np.ndarray, int]:
    """Test image `index` of the prepared digits split (the prepare stage's file) and its label."""
    from pathlib import Path

    path = Path(cfg.data.module.data_dir) / "digits.npz"
    if not path.is_file():
        raise DataError(f"{path}: not here (make repro TARGETS=prepare_digits writes it)")
    with np.load(path) as data:
        images, labels = data["test_x"], data["test_y"]
    if not 0 <= index < len(images):
        raise DataError(f"test image {index}: the test split has {len(images)} images (0 to {len(images) - 1})")
    return images[index].reshape(1, 1, 8, 8).astype(np.float32), int(labels[index])


def probabilities(model, x: np.ndarray) -> dict[str, float]:
    """Class name -> probability from a ClassProbabilities answer."""
    frame = model.predict(x)
    return {str(c): float(frame[c].iloc[0]) for c in frame.columns}


def digit_image(x: np.ndarray, size: int = 160) -> np.ndarray:
    """The 8x8 input as the network sees it, enlarged (ink dark on white)."""
    from PIL import Image

    grey = (255 - np.asarray(x).reshape(8, 8) * 255).clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grey).resize((size, size), Image.Resampling.NEAREST).convert("RGB"))


def episode(model, cfg, seed: int, max_steps: int = 500, every: int = 3, width: int = 300) -> tuple[bytes, float, int]:
    """One greedy episode of the policy champion in its environment, seeded: (GIF bytes, return, steps)."""
    import gymnasium as gym
    from PIL import Image

    env = gym.make(cfg.env.id, render_mode="rgb_array")
    try:
        observation, _ = env.reset(seed=int(seed))
        frames, total, steps = [], 0.0, 0
        for steps in range(1, max_steps + 1):
            if steps % every == 1:
                frame = Image.fromarray(env.render())
                frames.append(frame.resize((width, int(frame.height * width / frame.width))))
            action = int(model.predict(np.asarray(observation, dtype=np.float32)[None])["action"].iloc[0])
            observation, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
    finally:
        env.close()
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=60, loop=0)
    return buffer.getvalue(), total, steps


def forecast(model, cfg, steps: int = 1) -> tuple[np.ndarray, dict]:
    """The champion's forecasts over the series' test part against the truth: `steps`-ahead from each window of
    true values (1 = one step ahead, as the evaluate stage scores), as a plot and its mean absolute error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlzoo.data.timeseries import ForecastDataModule

    module = ForecastDataModule(data_dir=cfg.data.module.data_dir, window=cfg.data.module.window)
    module.setup("test")
    window, test = module.window, module.ranges["test"]
    origins = [i - steps + 1 for i in test if i - steps + 1 >= window]
    windows = np.stack([module.values[o - window : o] for o in origins])
    predicted = np.asarray(model.predict(windows, params={"steps": steps}))[:, -1]
    truth = module.values[[o + steps - 1 for o in origins]]
    t = module.t[[o + steps - 1 for o in origins]]
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    ax.plot(module.t[: module.n_train], module.values[: module.n_train], color="0.7", lw=1, label="training part")
    ax.plot(t, truth, color="black", lw=1.2, label="truth (test)")
    ax.plot(t, predicted, color="tab:red", lw=1.2, label=f"forecast, {steps} step(s) ahead")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("t")
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image, {"mae": float(np.mean(np.abs(predicted - truth))), "points": len(origins)}
