"""What a compressed model costs on disk and in parameters, measured the same way for every method.

`size_mb` is the size of the model file the compress stage writes (decimal MB): the weights as one
safetensors file (serialize.py), what one would ship. `size_mb_torch_save` is the same state_dict
through `torch.save`, whose per-tensor container overhead is kept for comparison. Unstructured pruning
leaves the dense file as large as before, so `size_mb_gzip` (the safetensors bytes deflated) shows what
the zeros are worth in storage.
"""

from __future__ import annotations

import gzip
import io

import torch
from torch import nn

from dlzoo.compression.serialize import model_bytes


def torch_save_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """Every weight tensor, float or int8: a quantised layer keeps its packed weight outside parameters()
    and exposes it (and its bias) through `weight()` / `bias()` methods."""
    tensors, seen = [], set()
    for module in model.modules():
        if callable(getattr(module, "weight", None)):
            weight = module.weight()
            tensors.append(weight.int_repr() if weight.is_quantized else weight.detach())
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            if bias is not None:
                tensors.append(bias.detach())
        tensors += [p.detach() for p in module.parameters(recurse=False)]
    unique = []
    for t in tensors:  # tied weights (a translator's embedding = its output layer) count once
        key = (t.data_ptr(), tuple(t.shape))
        if t.numel() and key not in seen:
            seen.add(key)
            unique.append(t)
    return unique


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
    raw = model_bytes(model)
    n_params, n_nonzero = count_params(model)
    return {
        "size_mb": len(raw) / 1e6,
        "size_mb_gzip": len(gzip.compress(raw, compresslevel=6, mtime=0)) / 1e6,
        "size_mb_torch_save": len(torch_save_bytes(model)) / 1e6,
        "num_params": n_params,
        "nonzero_params": n_nonzero,
    }
