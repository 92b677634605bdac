"""Weight-only int8: every conv, linear and embedding weight kept as int8 codes with one float scale per output
channel (per row for embeddings, symmetric), dequantised each time the layer runs; activations stay float.

Why a method of its own beside dynamic and static int8 (torch.ao): a network whose inference reads its weights
itself cannot run on quantised kernels, whose modules hold packed weights and no `.weight` tensor. WaveNet's
cached generation (dlzoo.models.wavenet) multiplies its convolution taps directly; here every layer stays the
float layer it was (same class family, same forward), with `.weight` computed from the int8 codes, so generation,
the evaluator and the training-free parts of the family work unchanged. The file is about 4x smaller and the
only error is the weights' rounding (at most half a step of each channel's scale); it is no faster, since the
weights are dequantised on every call. torchao's int8 weight-only quantisation does the same for Linear layers,
but torchao is not in this stack and its wheels are built for particular torch versions.
"""

from __future__ import annotations

import torch
from torch import nn

from dlzoo.compression.context import CompressContext, Compressed


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes in [-127, 127] and a float32 scale per output channel (dim 0)."""
    w = weight.detach().float()
    dims = tuple(range(1, w.dim()))
    scale = (w.abs().amax(dim=dims, keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


class _Int8Weight:
    """Mix-in: `weight` is a float tensor computed from the int8 codes (a Parameter, so parameter counts and the
    state_dict see it; never trained) and their per-channel scales (a buffer)."""

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_int8.float() * self.weight_scale


class Int8WeightConv1d(_Int8Weight, nn.Conv1d):
    pass


class Int8WeightConv2d(_Int8Weight, nn.Conv2d):
    pass


class Int8WeightLinear(_Int8Weight, nn.Linear):
    pass


class Int8WeightEmbedding(_Int8Weight, nn.Embedding):
    pass


REPLACEMENTS = {nn.Conv1d: Int8WeightConv1d, nn.Conv2d: Int8WeightConv2d, nn.Linear: Int8WeightLinear,
                nn.Embedding: Int8WeightEmbedding}


def to_int8_weights(net: nn.Module) -> int:
    """Turn every conv/linear/embedding weight of `net` into int8 codes in place; returns how many layers."""
    done = 0
    for module in net.modules():
        target = REPLACEMENTS.get(type(module))
        if target is None:
            continue
        codes, scale = quantize_weight(module.weight)
        del module._parameters["weight"]
        module.__class__ = target
        module.register_parameter("weight_int8", nn.Parameter(codes, requires_grad=False))
        module.register_buffer("weight_scale", scale)
        done += 1
    return done


def weight_only_int8(ctx: CompressContext) -> Compressed:
    net = ctx.parent().eval()
    reference = ctx.parent().eval()
    layers = to_int8_weights(net)
    with torch.no_grad():
        errors = [(getattr(a, "weight") - b.weight).abs().max() / b.weight.abs().max().clamp_min(1e-12)
                  for a, b in zip(net.modules(), reference.modules()) if isinstance(a, _Int8Weight)]
    return Compressed([net], {"int8_layers": float(layers),
                              "max_relative_weight_error": float(max(errors)) if errors else 0.0})
