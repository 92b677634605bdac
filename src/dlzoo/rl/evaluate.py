"""The RL evaluator (conf/evaluator/control.yaml), called by the generic evaluate stage with the trained
network: `evaluate(model, None, reports_dir, ...) -> (metrics, files)`.

- `episodes` test episodes on seeds `seed`, `seed + 1`, ... (never used by training or validation), with the
  greedy policy: `test/return_mean`, `test/return_std` (and min, max, mean length);
- the same seeds with a uniform-random policy: `baseline/random_return_mean`, `baseline/random_return_std`;
- from the training curve the runner saved next to the checkpoint (episodes.csv, validation.csv): the env
  steps and wall seconds until the running mean of the last `solve_window` training episodes first reached
  `solved_return` (`solve/steps`, `solve/seconds`; absent when it never did), the same for the greedy
  validation curve (`solve/val_steps`, `solve/val_seconds`), and the run's `train/env_steps`, `train/seconds`,
  `train/stopped_by_clock` (1 when the runner's `max_seconds` guard, not its step cap or early stop, ended
  training, from train_summary.json: such a run is not repeatable);
- artifacts: the learning curve (return against env steps, threshold drawn), one test episode as a GIF,
  and where `heatmap` names two state dimensions, V(s) over them (the other dimensions at 0), greedy actions drawn.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from dlzoo.errors import ConfigError
from dlzoo.io import write_json
from dlzoo.rl.envs import env_spaces
from dlzoo.rl.rollout import EPISODES_CSV, VAL_CSV, greedy_policy, run_episodes


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in (rows[0] if rows else {})}


def first_reach(steps: np.ndarray, seconds: np.ndarray, values: np.ndarray, threshold: float):
    """(steps, seconds) of the first point where `values` ≥ threshold, or None."""
    hit = np.flatnonzero(values >= threshold)
    return (int(steps[hit[0]]), float(seconds[hit[0]])) if hit.size else None


def running_mean(x: np.ndarray, window: int) -> np.ndarray:
    """The mean of the last `window` values at each point; NaN until a full window exists, so a few lucky
    early episodes never count as "solved" (NaN ≥ threshold is false)."""
    x = np.asarray(x, dtype=float)
    out = np.full(len(x), np.nan)
    if len(x) >= window:
        c = np.cumsum(np.insert(x, 0, 0.0))
        out[window - 1:] = (c[window:] - c[:-window]) / window
    return out


def evaluate(model, datamodule, reports_dir, *, env_id: str, solved_return: float, episodes: int = 100,
             seed: int = 2_000_000, solve_window: int = 20, model_dir: str | None = None, title: str = "",
             gif: bool = True, gif_every: int = 2, heatmap: dict | None = None) -> tuple[dict, list]:
    torch.set_num_threads(1)  # one observation at a time through a small MLP: threads only add contention
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    obs_dim, _ = env_spaces(env_id)
    # the first layer's width, float or int8 (an int8 network keeps its weights packed, outside parameters())
    first = next((m for m in model.modules() if hasattr(m, "in_features")), None)
    if first is not None and first.in_features != obs_dim:
        raise ConfigError(f"the trained network takes {first.in_features} observations, {env_id} gives {obs_dim}: "
                          f"a checkpoint of another environment?")
    model.eval()
    seeds = [seed + k for k in range(episodes)]
    start = time.perf_counter()
    returns, lengths, _ = run_episodes(greedy_policy(model), env_id, seeds)
    random_returns, _, _ = run_episodes(None, env_id, seeds)
    metrics = {
        "test/return_mean": float(np.mean(returns)), "test/return_std": float(np.std(returns)),
        "test/return_min": float(np.min(returns)), "test/return_max": float(np.max(returns)),
        "test/episode_length_mean": float(np.mean(lengths)), "test/episodes": float(episodes),
        "test/seconds": round(time.perf_counter() - start, 2),
        "baseline/random_return_mean": float(np.mean(random_returns)),
        "baseline/random_return_std": float(np.std(random_returns)),
    }
    files = [reports_dir / "test_returns.csv"]
    with open(files[0], "w", newline="") as f:
        csv.writer(f).writerows([("seed", "return", "length", "random_return"), *zip(seeds, returns, lengths, random_returns)])

    curve = _read_csv(Path(model_dir) / EPISODES_CSV) if model_dir else {}
    val = _read_csv(Path(model_dir) / VAL_CSV) if model_dir else {}
    if curve:
        smooth = running_mean(curve["return"], solve_window)
        metrics["train/env_steps"] = float(max(curve["env_steps"].max(), val["env_steps"].max() if val else 0))
        metrics["train/seconds"] = float(max(curve["seconds"].max(), val["seconds"].max() if val else 0))
        metrics["train/episodes"] = float(len(smooth))
        reached = first_reach(curve["env_steps"], curve["seconds"], smooth, solved_return)
        metrics["solve/reached"] = float(reached is not None)
        if reached:
            metrics["solve/steps"], metrics["solve/seconds"] = float(reached[0]), reached[1]
        if val:
            reached_val = first_reach(val["env_steps"], val["seconds"], val["val_return"], solved_return)
            if reached_val:
                metrics["solve/val_steps"], metrics["solve/val_seconds"] = float(reached_val[0]), reached_val[1]
        summary_path = Path(model_dir) / "train_summary.json"
        if summary_path.is_file():
            stopped_by = json.loads(summary_path.read_text()).get("stopped_by")
            metrics["train/stopped_by_clock"] = float(stopped_by == "max_seconds")
        files.append(_plot_curve(curve, smooth, val, solved_return, metrics, solve_window, reports_dir / "learning_curve.png", title))
    if gif:
        files.append(_save_gif(model, env_id, seeds[0], reports_dir / "episode.gif", gif_every))
    if heatmap:
        files.append(_plot_value(model, obs_dim, heatmap, reports_dir / "value_heatmap.png", title))
    write_json(reports_dir / "summary.json", metrics)
    files.append(reports_dir / "summary.json")
    return metrics, files


def _plot_curve(curve, smooth, val, threshold, metrics, window, path: Path, title: str) -> Path:
    from dlzoo.plotting import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(curve["env_steps"], curve["return"], ".", ms=2, alpha=0.3, color="tab:blue", label="training episode")
    ax.plot(curve["env_steps"], smooth, color="tab:blue", label=f"running mean ({window} episodes)")
    if val:
        ax.plot(val["env_steps"], val["val_return"], "o-", ms=3, color="tab:green", label="greedy validation")
    ax.axhline(threshold, ls="--", color="tab:red", label=f"solved ({threshold:g})")
    ax.axhline(metrics["baseline/random_return_mean"], ls=":", color="gray", label="uniform random policy")
    ax.axhline(metrics["test/return_mean"], ls="-.", color="black", lw=1,
               label=f"test: {metrics['test/return_mean']:.1f} ± {metrics['test/return_std']:.1f}")
    if "solve/steps" in metrics:
        ax.axvline(metrics["solve/steps"], color="tab:red", alpha=0.3)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def _save_gif(model, env_id: str, seed: int, path: Path, every: int) -> Path:
    from PIL import Image

    _, _, frames = run_episodes(greedy_policy(model), env_id, [seed], render=True)
    images = [Image.fromarray(f).reduce(2) for f in frames[::max(every, 1)]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40 * max(every, 1), loop=0, optimize=True)
    return path


def _plot_value(model, obs_dim: int, spec: dict, path: Path, title: str, n: int = 101) -> Path:
    """V(s) on a grid over two state dimensions (the others held at 0), with the greedy action's boundary."""
    from dlzoo.plotting import plt, save_figure

    (i, j), (lo_i, lo_j), (hi_i, hi_j) = spec["dims"], spec["low"], spec["high"]
    xs, ys = np.linspace(lo_i, hi_i, n), np.linspace(lo_j, hi_j, n)
    grid = np.zeros((n * n, obs_dim), dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    grid[:, i], grid[:, j] = gx.ravel(), gy.ravel()
    with torch.no_grad():
        obs = torch.as_tensor(grid)
        values = model.state_value(obs).numpy().reshape(n, n)
        actions = model.greedy(obs).numpy().reshape(n, n)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    mesh = ax.pcolormesh(xs, ys, values, shading="auto", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="V(s)" if hasattr(model, "critic") else "max_a Q(s, a)")
    ax.contour(xs, ys, actions, levels=[0.5], colors="white", linewidths=1)
    labels = spec.get("labels") or [f"s[{i}]", f"s[{j}]"]
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(f"{title}: value over two state dimensions\n(others 0; white: greedy action boundary)", fontsize=9)
    return save_figure(fig, path)
