"""Quantisation: 16-bit casts, dynamic int8, static post-training int8 and quantisation-aware training.

Static int8 and QAT use torch.ao's FX graph mode (`prepare_fx` / `convert_fx`) with the x86 backend
(fbgemm + oneDNN kernels). In torch 2.14 the PT2E flow (`prepare_pt2e`) lives in the separate
`torchao` package and its x86 quantiser only pays off after `torch.compile` (a C++ toolchain and
minutes of compilation on a 2-core CPU); FX graph mode produces modules that run real int8 kernels
eagerly, which is what the CPU latency numbers here measure. FX mode is marked deprecated in torch, so
its warnings are silenced where it is called.
"""

from __future__ import annotations

import warnings

import torch
from hydra.utils import get_class
from torch import nn

from dlzoo.compression.context import CompressContext, Compressed
from dlzoo.errors import ConfigError

DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class Cast(nn.Module):
    """A network stored and run in a 16-bit float type behind a float32 interface: floating inputs are
    cast down, floating outputs cast back up, integer inputs (token ids) pass through."""

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner, self.dtype = net.to(dtype), dtype  # not `.net`: the evaluators profile `.net` directly

    def forward(self, *args):
        out = self.inner(*[a.to(self.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args])
        return out.float() if torch.is_tensor(out) and out.is_floating_point() else out


def half(ctx: CompressContext, dtype: str = "float16") -> Compressed:
    """Cast every weight to fp16 or bf16: half the bytes; accuracy usually unchanged."""
    if dtype not in DTYPES:
        raise ConfigError(f"compress.apply.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return Compressed([Cast(ctx.parent(), DTYPES[dtype])], float_reference=ctx.parent())


def dynamic_int8(ctx: CompressContext, modules: tuple[str, ...] = ("torch.nn.Linear", "torch.nn.LSTM", "torch.nn.GRU"),
                 embeddings: bool = False) -> Compressed:
    """int8 weights, activations quantised on the fly per batch: for Linear/recurrent-heavy networks
    (Transformers, LSTMs), where the matrix multiplies dominate. Nothing to calibrate. `embeddings`
    also stores embedding tables as int8 rows (weight-only; a translator's vocabularies are a third of it)."""
    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig

    qconfigs = {}
    for name in modules:
        try:
            qconfigs[get_class(name)] = default_dynamic_qconfig
        except Exception:
            raise ConfigError(f"compress.apply.modules: {name!r} is not an importable class") from None
    if embeddings:
        qconfigs[nn.Embedding] = float_qparams_weight_only_qconfig
    net = ctx.parent().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(net, qconfigs, dtype=torch.qint8)
    info = {"quantized_modules": float(sum(_is_int8(m) for m in quantized.modules()))}
    return Compressed([quantized], info, float_reference=ctx.parent())


WEIGHT_SCHEMES = ("per_channel", "per_tensor")


def _qconfig_mapping(backend: str, qat: bool, weights: str = "per_channel"):
    """The backend's default qconfig mapping, optionally with one int8 scale per weight tensor instead of
    one per output channel. Per-channel is the safer default for accuracy (BN-folded filters differ in
    range); per-tensor saves a scale and zero point per channel, which in a small network (a depthwise
    filter is 9 weights) is a real share of the int8 file."""
    from torch.ao.quantization import QConfig, get_default_qat_qconfig_mapping, get_default_qconfig_mapping
    from torch.ao.quantization.fake_quantize import default_weight_fake_quant
    from torch.ao.quantization.observer import default_weight_observer

    if backend not in torch.backends.quantized.supported_engines:
        raise ConfigError(f"quantisation backend {backend!r} is not available here (have {torch.backends.quantized.supported_engines})")
    if weights not in WEIGHT_SCHEMES:
        raise ConfigError(f"compress.apply.weights must be one of {list(WEIGHT_SCHEMES)}, got {weights!r}")
    torch.backends.quantized.engine = backend
    mapping = (get_default_qat_qconfig_mapping if qat else get_default_qconfig_mapping)(backend)
    if weights == "per_tensor":
        activation = mapping.global_qconfig.activation
        mapping.set_global(QConfig(activation=activation, weight=default_weight_fake_quant if qat else default_weight_observer))
    return mapping


def static_int8(ctx: CompressContext, backend: str = "x86", calibration_batches: int = 8,
                weights: str = "per_channel") -> Compressed:
    """Post-training static int8: conv/BN/ReLU fused, observers calibrated on training batches, then int8
    weights and activations throughout (`weights`: per_channel or per_tensor scales; per-tensor activations)."""
    if calibration_batches < 1:
        raise ConfigError(f"compress.apply.calibration_batches must be >= 1, got {calibration_batches}")
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    mapping = _qconfig_mapping(backend, qat=False, weights=weights)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(ctx.parent().eval(), mapping, ctx.example(1))
        for inputs in ctx.calibration_batches(calibration_batches):
            prepared(*inputs)
        quantized = convert_fx(prepared)
    return Compressed([quantized], {"quantized_modules": float(sum(_is_int8(m) for m in quantized.modules()))},
                      float_reference=ctx.parent())


def qat_int8(ctx: CompressContext, backend: str = "x86", epochs: int = 3, lr: float = 5e-4,
             weights: str = "per_channel") -> Compressed:
    """Quantisation-aware training: fake-quantise weights and activations, fine-tune with the family's
    Lightning recipe for `epochs` (BN folded into the convs), then convert to the same int8 modules as static."""
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    mapping = _qconfig_mapping(backend, qat=True, weights=weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_qat_fx(ctx.parent().train(), mapping, ctx.example(1))
        ctx.fit(ctx.family_module(prepared, epochs, lr), epochs)
        quantized = convert_fx(prepared.eval())
    return Compressed([quantized], {"quantized_modules": float(sum(_is_int8(m) for m in quantized.modules()))},
                      float_reference=ctx.parent())


def _is_int8(module: nn.Module) -> bool:
    """A module that runs int8 kernels (torch.ao.nn.quantized / quantized.dynamic / intrinsic.quantized)."""
    return type(module).__module__.startswith("torch.ao.nn.") and ".quantized" in type(module).__module__
