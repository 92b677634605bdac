"""ONNX export of a network and its check with onnxruntime: the ONNX model must give the same outputs as
PyTorch on the held-out split, within a stated tolerance.

Export uses torch's TorchScript-based exporter (`dynamo=False`): it is still in torch 2.14, needs no
extra package (the torch.export-based default needs `onnxscript`), and when it meets an operator it
cannot translate it raises `UnsupportedOperatorError` naming that operator, which becomes a one-line
ExportError here.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlzoo.errors import ConfigError, ExportError

OPSET = 17


def export(net: nn.Module, example: tuple, path: str | Path, opset: int = OPSET) -> Path:
    """Write `net` as ONNX (batch dimension dynamic) or raise ExportError naming the unsupported operator."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"input{i}" if len(example) > 1 else "input" for i in range(len(example))]
    axes = {name: {0: "batch"} for name in [*names, "output"]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net.eval(), example, str(path), dynamo=False, opset_version=opset,
                              input_names=names, output_names=["output"], dynamic_axes=axes)
    except Exception as exc:  # the exporter raises many types; the message is what matters
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX export (opset {opset}) failed: {unsupported_operator(exc)}") from None
    return path


def unsupported_operator(exc: Exception) -> str:
    """'operator X is not supported' when the exporter names one, else the error's first line."""
    text = str(exc)
    found = re.search(r"operator '([^']+)'", text) or re.search(r"Unsupported: ONNX export of operator ([\w:.]+)", text) \
        or re.search(r"\b(quantized::\w+|aten::\w+|prim::\w+)\b", text)
    if found:
        return f"operator '{found.group(1)}' is not supported by the ONNX exporter"
    return f"{type(exc).__name__}: {text.strip().splitlines()[0][:300] if text.strip() else ''}"


def output_step(outputs: np.ndarray) -> float:
    """The spacing of an int8 network's outputs: its logits are (q - zero_point) * scale, so the smallest
    gap between distinct values over a test split is one step of the output scale."""
    gaps = np.diff(np.unique(outputs))
    return float(gaps.min()) if len(gaps) else 0.0


def check(path: str | Path, net: nn.Module, batches, atol: float | None, atol_steps: float | None = None) -> dict[str, float]:
    """Run the ONNX file with onnxruntime (CPU) and PyTorch on every batch of inputs; compare outputs.

    Returns the largest absolute difference and, for logits, how often both pick the same class. The
    tolerance is `atol`, or for an int8 network `atol_steps` steps of its output scale: two int8 runtimes
    round each intermediate requantisation their own way, and the outputs move by whole steps. With both
    set, `atol_steps` wins."""
    import onnxruntime as ort

    if atol is None and not atol_steps:
        raise ConfigError("no ONNX tolerance: set compress.onnx.atol or compress.onnx.atol_steps")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load {path}: {str(exc).strip().splitlines()[0][:300]}") from None
    names = [i.name for i in session.get_inputs()]
    max_diff, agree, count, outputs = 0.0, 0, 0, []
    net.eval()
    with torch.no_grad():
        for inputs in batches:
            expected = net(*inputs).float().numpy()
            got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})[0]
            max_diff = max(max_diff, float(np.abs(got - expected).max()))
            agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
            count += int(np.prod(expected.shape[:-1]))
            outputs.append(expected.ravel())
    result = {"onnx/max_abs_diff": max_diff, "onnx/argmax_agreement": agree / max(count, 1),
              "onnx/size_mb": Path(path).stat().st_size / 1e6}
    if atol_steps:
        step = output_step(np.concatenate(outputs))
        result["onnx/output_step"], result["onnx/max_diff_steps"] = step, max_diff / step if step else float("inf")
        atol = atol_steps * step * (1 + 1e-4)  # whole steps, measured on float32 values: a little slack
    result["onnx/atol"] = float(atol)
    result["onnx/within_atol"] = float(max_diff <= atol)
    return result


def float_model(ctx) -> "Compressed":
    """The `onnx` method: the parent network unchanged, so the stage exports and checks the float model."""
    from dlzoo.compression.context import Compressed

    return Compressed([ctx.parent()])
