"""What a compressed model costs on disk and in parameters, measured the same way for every method.

`size_mb` is the size of `torch.save(model.state_dict())` (decimal MB): what one would ship for the
weights. Unstructured pruning leaves that dense file as large as before, so `size_mb_gzip` (the same
bytes deflated) shows what the zeros are worth in storage.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import torch
from torch import nn


def state_dict_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def save_weights(model: nn.Module, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(state_dict_bytes(model))
    return path


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """Every weight tensor, float or int8: a quantised layer keeps its packed weight outside parameters()
    and exposes it (and its bias) through `weight()` / `bias()` methods."""
    tensors = []
    for module in model.modules():
        if callable(getattr(module, "weight", None)):
            weight = module.weight()
            tensors.append(weight.int_repr() if weight.is_quantized else weight.detach())
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            if bias is not None:
                tensors.append(bias.detach())
        tensors += [p.detach() for p in module.parameters(recurse=False)]
    return tensors


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters), int8 weights of quantised layers included."""
    tensors = _weights(model)
    return sum(t.numel() for t in tensors), sum(int(torch.count_nonzero(t)) for t in tensors)


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (module, 'weight') pairs magnitude pruning acts on: every conv and linear weight."""
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over the conv/linear weights (what pruning's `sparsity` is measured on)."""
    weights = [getattr(m, name).detach() for m, name in prunable(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def size_metrics(model: nn.Module) -> dict[str, float]:
    raw = state_dict_bytes(model)
    n_params, n_nonzero = count_params(model)
    return {
        "size_mb": len(raw) / 1e6,
        "size_mb_gzip": len(gzip.compress(raw, compresslevel=6, mtime=0)) / 1e6,
        "num_params": n_params,
        "nonzero_params": n_nonzero,
    }
