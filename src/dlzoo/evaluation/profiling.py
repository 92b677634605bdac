"""Cost of a model next to its accuracy: parameters, multiply-accumulates and CPU latency.

MACs come from PyTorch's own `torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2), which
counts grouped/depthwise convolutions by their real weight shape.
"""

from __future__ import annotations

import copy
import statistics
import time

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


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, example: torch.Tensor, repeats: int = 50, warmup: int = 10, threads: int = 1) -> float:
    """Median wall time of one forward pass, after warm-up, with a fixed intra-op thread count.

    Timed on a fresh copy of `model`: int8 convolutions on the x86 backend (oneDNN) keep one cached kernel,
    built for the first input shape and thread count they see, and rebuild it on every call that differs.
    A model already run at another batch size (an evaluation loop) would otherwise be timed on that slow
    path; a deployment serving a fixed batch size runs the cached one."""
    model = copy.deepcopy(model).eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            model(example)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(example)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)


def profile_classifier(model: nn.Module, input_shape: tuple[int, ...], threads: int = 1) -> dict[str, float]:
    """`size`-type metrics for an image classifier with per-image input shape `input_shape`."""
    one = torch.zeros(1, *input_shape)
    return {
        "num_params": count_parameters(model),
        "macs": count_macs(model, one),
        "latency_ms_b1": cpu_latency_ms(model, one, threads=threads),
        "latency_ms_b32": cpu_latency_ms(model, torch.zeros(32, *input_shape), repeats=20, threads=threads),
    }
