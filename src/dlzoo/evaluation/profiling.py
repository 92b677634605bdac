"""Cost of a model next to its accuracy: parameters, multiply-accumulates and CPU latency.

MACs come from PyTorch's own `torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2), which
counts grouped/depthwise convolutions by their real weight shape.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dlzoo.models import count_parameters


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on `example` (batch of 1 for per-image MACs)."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(example)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class Latency:
    """Per-call wall time of a forward pass in ms over the timed blocks: median and quartiles."""

    median: float
    q1: float
    q3: float
    blocks: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


@torch.no_grad()
def cpu_latency(model: nn.Module, example: torch.Tensor, threads: int = 1, min_run_time: float = 0.1,
                min_blocks: int = 10, block_s: float = 0.002, warmup: int = 10) -> Latency:
    """Wall time of one forward pass with a fixed intra-op thread count: median and interquartile range
    over timed blocks.

    After `warmup` calls (which also estimate the per-call time), calls are timed in blocks of as many
    calls as fill `block_s` (at least one; the clock's own overhead is then negligible), for at least
    `min_run_time` seconds and `min_blocks` blocks; each block gives one per-call time. A single median
    says nothing about whether a 5% difference between two models is real; the spread over blocks does.
    (`torch.utils.benchmark`'s `blocked_autorange` sizes its blocks to >= 10 ms here, which leaves 2-3
    blocks in a 0.2 s budget: too few for quartiles.)

    Timed on a fresh copy of `model`: int8 convolutions on the x86 backend (oneDNN) keep one cached kernel,
    built for the first input shape and thread count they see, and rebuild it on every call that differs.
    A model already run at another batch size (an evaluation loop) would otherwise be timed on that slow
    path; a deployment serving a fixed batch size runs the cached one."""
    model = copy.deepcopy(model).eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        for _ in range(warmup):
            model(example)
        per_call = (time.perf_counter() - start) / max(warmup, 1)
        number = max(1, math.ceil(block_s / max(per_call, 1e-9)))
        times, total = [], 0.0
        while total < min_run_time or len(times) < min_blocks:
            start = time.perf_counter()
            for _ in range(number):
                model(example)
            block = time.perf_counter() - start
            times.append(block / number * 1000)
            total += block
    finally:
        torch.set_num_threads(previous)
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return Latency(float(median), float(q1), float(q3), len(times))


def cpu_latency_ms(model: nn.Module, example: torch.Tensor, threads: int = 1, min_run_time: float = 0.1) -> float:
    """The median of `cpu_latency`, in ms."""
    return cpu_latency(model, example, threads=threads, min_run_time=min_run_time).median


def profile_classifier(model: nn.Module, input_shape: tuple[int, ...], threads: int = 1) -> dict[str, float]:
    """`size`-type metrics for an image classifier with per-image input shape `input_shape`:
    `latency_ms_b<batch>` is the median per-call time, `latency_ms_b<batch>_iqr` its interquartile range."""
    one = torch.zeros(1, *input_shape)
    out = {"num_params": count_parameters(model), "macs": count_macs(model, one)}
    for batch in (1, 32):
        latency = cpu_latency(model, torch.zeros(batch, *input_shape), threads=threads)
        out[f"latency_ms_b{batch}"], out[f"latency_ms_b{batch}_iqr"] = latency.median, latency.iqr
    return out
