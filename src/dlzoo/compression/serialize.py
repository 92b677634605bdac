"""Compressed models on disk as safetensors: one JSON header, then every tensor's bytes back to back.

Why not `torch.save(state_dict)`: its zip container spends ~300 bytes per stored tensor (a zip entry,
64-byte alignment, pickle opcodes) and keeps per-channel quantisation parameters as float64 scales and
int64 zero points. For the 36k-100k-parameter digit networks that is a quarter to a half of an int8
file, so it measured the container rather than the quantisation. safetensors (Hugging Face's
format for shipping weights: no pickle, memory-mappable) costs one header line per tensor.

safetensors has no quantised dtypes, and a quantised network's state_dict also holds non-tensors (packed
(weight, bias) tuples, dtypes). `encode` therefore stores a quantised tensor as its integer values plus
its quantisation parameters, scalars (activation scales, zero points, BN step counters) and Python values
in a layout kept in the header's metadata; `decode` rebuilds the exact state_dict for `load_state_dict`.
Parent and compressed models are written the same way, so their size ratio compares like with like.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from dlzoo.errors import CheckpointError

LAYOUT_KEY = "dlzoo.state_dict_layout"
FORMAT_VERSION = 1
PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)
QSCHEMES = {str(q): q for q in (torch.per_tensor_affine, torch.per_tensor_symmetric, torch.per_channel_affine,
                                torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)}
QDTYPES = {str(d): d for d in (torch.qint8, torch.quint8, torch.qint32)}
DTYPES = {str(d): d for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                              torch.int16, torch.int8, torch.uint8, torch.bool, *QDTYPES.values())}


def _narrow(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`values` in the smaller `dtype` when that is exact (per-channel scales are float32 numbers held
    as float64 by torch; zero points are small integers held as int64), else unchanged."""
    narrowed = values.to(dtype)
    return narrowed if torch.equal(narrowed.to(values.dtype), values) else values


class _Encoder:
    """Splits a state_dict into safetensors tensors and a compact JSON layout of everything else. A layout
    entry is a list, `[kind, *arguments]`; plain tensors need none (they are stored under their key):
    ["q", dtype, qscheme, scale, zero_point]  per-tensor quantised (its integer values under the key)
    ["qc", dtype, qscheme, axis, scales dtype, zero points dtype]  per-channel (+ key#scales, key#zero_points)
    ["scalar", value, dtype, shape]  a one-element tensor (activation scales, zero points, BN step counters)
    ["alias", key]  the same tensor as `key` (tied weights are stored once)
    ["tuple" | "list", [items]], ["tensor"] (an item stored under key#i), ["dtype", name], ["py", value], ["none"]
    """

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        # (data_ptr, dtype, shape, stride) of the caller's tensor -> (key, tensor): the reference keeps the
        # address from being reused by another tensor while the state_dict is encoded
        self.stored: dict[tuple, tuple[str, torch.Tensor]] = {}

    def encode(self, key: str, value) -> list:
        if value is None:
            return ["none"]
        if isinstance(value, torch.dtype):
            return ["dtype", str(value)]
        if isinstance(value, (tuple, list)):
            return [type(value).__name__, [self.encode(f"{key}#{i}", v) for i, v in enumerate(value)]]
        if isinstance(value, (bool, int, float, str)):
            return ["py", value]
        if not torch.is_tensor(value):
            raise TypeError(f"cannot store state_dict entry {key!r} of type {type(value).__name__}")
        original, value = value, value.detach().cpu()
        if value.is_quantized:
            if str(value.dtype) not in QDTYPES:
                raise TypeError(f"cannot store {key!r}: quantised dtype {value.dtype} is not supported ({sorted(QDTYPES)})")
            if value.qscheme() == torch.per_channel_affine_float_qparams and value.q_per_channel_axis() != 0:
                raise TypeError(f"cannot store {key!r}: float-qparams tensors are supported along axis 0 only")
            self.tensors[key] = value.int_repr().contiguous()
            if value.qscheme() in PER_TENSOR:
                return ["q", str(value.dtype), str(value.qscheme()), value.q_scale(), value.q_zero_point()]
            scales, zero_points = value.q_per_channel_scales(), value.q_per_channel_zero_points()
            self.tensors[f"{key}#scales"] = _narrow(scales, torch.float32)
            self.tensors[f"{key}#zero_points"] = _narrow(zero_points, torch.float32 if zero_points.is_floating_point() else torch.int32)
            return ["qc", str(value.dtype), str(value.qscheme()), value.q_per_channel_axis(), str(scales.dtype), str(zero_points.dtype)]
        if value.numel() == 1 and value.dtype in (torch.float32, torch.float64, torch.int64, torch.int32):
            return ["scalar", value.item(), str(value.dtype), list(value.shape)]
        identity = (original.data_ptr(), original.device, value.dtype, tuple(value.shape), original.stride())
        if value.numel() and identity in self.stored:
            return ["alias", self.stored[identity][0]]
        self.stored[identity] = (key, original)
        self.tensors[key] = value.contiguous()
        return ["tensor"]


def encode(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """state_dict -> (tensors, metadata) for safetensors."""
    encoder = _Encoder()
    layout = {}
    for key, value in state_dict.items():
        if "#" in key:
            raise TypeError(f"state_dict key {key!r} contains '#', which the model file format reserves")
        spec = encoder.encode(key, value)
        if spec != ["tensor"]:
            layout[key] = spec
    header = {"version": FORMAT_VERSION, "torch": torch.__version__.split("+")[0], "entries": layout}
    return encoder.tensors, {LAYOUT_KEY: json.dumps(header, separators=(",", ":"))}


def _decode(key: str, spec: list, tensors: dict):
    kind, *args = spec
    if kind == "tensor":
        return tensors[key]
    if kind == "none":
        return None
    if kind == "dtype":
        return DTYPES[args[0]]
    if kind in ("tuple", "list"):
        items = [_decode(f"{key}#{i}", s, tensors) for i, s in enumerate(args[0])]
        return tuple(items) if kind == "tuple" else items
    if kind == "py":
        return args[0]
    if kind == "scalar":
        value, dtype, shape = args
        return torch.tensor(value, dtype=DTYPES[dtype]).reshape(shape)
    if kind == "alias":
        return tensors[args[0]]
    if kind == "q":
        _, _, scale, zero_point = args
        return torch._make_per_tensor_quantized_tensor(tensors[key], scale, zero_point)
    if kind == "qc":
        dtype, qscheme, axis, scales_dtype, zero_points_dtype = args
        values = tensors[key]
        scales = tensors[f"{key}#scales"].to(DTYPES[scales_dtype])
        zero_points = tensors[f"{key}#zero_points"].to(DTYPES[zero_points_dtype])
        if QSCHEMES[qscheme] == torch.per_channel_affine_float_qparams:
            # float zero points (int8 embedding rows): only quantize_per_channel takes them; re-quantising
            # the dequantised values with the same parameters gives back the same integers (axis 0 only)
            shape = (-1, *[1] * (values.dim() - 1))
            dequantised = (values.float() - zero_points.reshape(shape)) * scales.reshape(shape)
            return torch.quantize_per_channel(dequantised, scales, zero_points, axis, QDTYPES[dtype])
        return torch._make_per_channel_quantized_tensor(values, scales, zero_points, axis)
    raise CheckpointError(f"unknown entry kind {kind!r} for {key!r}: written by a newer dlzoo?")


def decode(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None, module_versions=None) -> dict:
    """(tensors, metadata) written by `encode` -> the original state_dict. `module_versions` is the
    target network's `state_dict()._metadata`: quantised modules read a state_dict without their format
    version as an older layout, and a network of the same structure has the same versions, so the file
    need not carry them."""
    if not metadata or LAYOUT_KEY not in metadata:
        raise CheckpointError("not a dlzoo model file: its safetensors header has no dlzoo layout")
    layout = json.loads(metadata[LAYOUT_KEY])
    if layout.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"model file format version {layout.get('version')} is not {FORMAT_VERSION}")
    decoded: OrderedDict = OrderedDict((key, value) for key, value in tensors.items() if "#" not in key)
    for key, spec in layout["entries"].items():
        decoded[key] = _decode(key, spec, tensors)
    if module_versions is not None:
        decoded._metadata = module_versions  # where load_state_dict looks for them
    return decoded


def model_bytes(model: nn.Module) -> bytes:
    tensors, metadata = encode(model.state_dict())
    return st_save(tensors, metadata=metadata)


def save_model(model: nn.Module, path: str | Path) -> Path:
    """Write `model`'s weights (float, half, pruned or quantised) as one safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(model_bytes(model))
    tmp.replace(path)  # never a half-written model file
    return path


def load_model(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a file written by `save_model` into `model`, a network of the same structure (for a quantised
    one: the same network after the same quantisation steps; its calibration is overwritten)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no model file at {path}")
    raw = path.read_bytes()
    try:
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len]).get("__metadata__")
        tensors = st_load(raw)
    except Exception:  # a bad length or JSON, or safetensors' own SafetensorError on a truncated file
        raise CheckpointError(f"{path} is not a safetensors model file (unreadable header or truncated)") from None
    _check_torch_version(path, metadata)
    try:
        state_dict = decode(tensors, metadata, getattr(model.state_dict(), "_metadata", None))
    except CheckpointError:
        raise
    except Exception as exc:  # a layout entry that points at a missing tensor, an unknown dtype, a bad shape
        raise CheckpointError(f"{path} is corrupt or from an unsupported writer ({type(exc).__name__}: {str(exc)[:200]})") from None
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, KeyError) as exc:  # quantised modules raise KeyError for a float layout
        raise CheckpointError(f"{path} does not fit this network: {str(exc)[:300]}") from None
    return model


def _check_torch_version(path: Path, metadata: dict | None) -> None:
    """Quantised modules version their state_dict layout; the file does not carry those versions (the
    target network has them), so it must come from the same torch release line."""
    if not metadata or LAYOUT_KEY not in metadata:
        return  # decode() names the problem
    written = str(json.loads(metadata[LAYOUT_KEY]).get("torch", ""))
    running = torch.__version__.split("+")[0]
    if written.split(".")[:2] != running.split(".")[:2]:
        raise CheckpointError(f"{path} was written by torch {written or '?'}, this is torch {running}: "
                              "re-run its compress stage to rewrite it")
