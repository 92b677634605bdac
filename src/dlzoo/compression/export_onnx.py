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


# Ops that read int8 values and round an average back onto the int8 grid (same scale, a new rounding).
_AVERAGING = ("avg_pool", "adaptive_avg_pool", "mean")


def _rounds(node, gm, quantized_input: bool) -> bool:
    """Whether an FX node of a converted (int8) graph rounds a value onto an int8 grid: the input's
    quantize, a quantised module or `torch.ops.quantized.*` op (each requantises its result to its own
    scale and zero point), or an averaging op run on int8 values."""
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        if node.target in (torch.quantize_per_tensor, torch.quantize_per_channel) or name.startswith("quantize_per_"):
            return True
        if "quantized" in str(getattr(node.target, "__module__", "")) or str(node.target).startswith("quantized."):
            return True  # torch.ops.quantized.add / add_relu / mul / cat / ...: output scale + zero point arguments
        return quantized_input and any(a in name for a in _AVERAGING)
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if hasattr(module, "scale") and hasattr(module, "zero_point"):
            return True  # a quantised conv / linear / BN / hardswish: requantised to its output scale
        return quantized_input and any(a in type(module).__name__.lower().replace("avgpool", "avg_pool") for a in _AVERAGING)
    if node.op == "call_method":
        return quantized_input and node.target in ("mean",)
    return False


def requantisations(net: nn.Module) -> int:
    """Roundings onto an int8 grid on the longest path from input to output of a quantised network.

    On a torch.fx GraphModule (FX graph mode int8) this walks the graph in topological order: a node's
    count is the largest count among its inputs, plus one where the node rounds (`_rounds`); parallel
    branches (a residual block's two arms) count once, by their longer arm. Without a graph (eager-mode
    int8) the count is every rounding module, which bounds any path from above. 0 for a float network."""
    from torch.fx import GraphModule, Node

    if not isinstance(net, GraphModule):
        return sum(1 for m in net.modules() if hasattr(m, "scale") and hasattr(m, "zero_point") and not callable(m.scale))
    depth, quantized = {}, {}
    for node in net.graph.nodes:
        inputs = [a for a in node.all_input_nodes if isinstance(a, Node)]
        before = max((depth[a] for a in inputs), default=0)
        q_in = any(quantized[a] for a in inputs)
        rounds = _rounds(node, net, q_in)
        depth[node] = before + int(rounds)
        dequantizes = node.op == "call_method" and node.target == "dequantize" or getattr(node.target, "__name__", "") == "dequantize"
        quantized[node] = rounds or (q_in and not dequantizes)
    return max((depth[n] for n in net.graph.nodes if n.op == "output"), default=0)


# float32 slack on a step count: a difference of k whole steps, each side computed as (q - zp) * scale in
# float32, reads as k * (1 +- a few 2^-24) steps; 1e-3 of a step is far above that and far below one step.
STEP_SLACK = 1e-3


def check(path: str | Path, net: nn.Module, batches, atol: float | None,
          steps_per_requantisation: float | None = None) -> dict[str, float]:
    """Run the ONNX file with onnxruntime (CPU) and PyTorch on every batch of inputs; compare outputs.

    Returns the largest absolute difference and, for logits, how often both pick the same class.

    Float networks are held to `atol`. For an int8 network (one with requantisations) the tolerance is
    derived from its structure, not from measured differences: two int8 runtimes may round each
    requantisation differently (round-half-even vs half-away-from-zero, another accumulation order or
    fusion), by at most one step of that tensor's scale. Assuming such a one-step difference moves the
    output by at most one output step (`steps_per_requantisation` = 1) and that the differences add, the
    outputs may differ by `tolerance_steps = steps_per_requantisation x requantisations` steps of the int8
    output scale, `requantisations` counted on the longest input-to-output path. This is a heuristic
    bound: a layer with large weights can amplify an earlier one-step difference beyond one output step,
    and then the check fails (`onnx/within_tolerance` 0) rather than the bound being widened to fit."""
    import onnxruntime as ort

    n_requant = requantisations(net) if steps_per_requantisation else 0
    if atol is None and not n_requant:
        raise ConfigError("no ONNX tolerance: set compress.onnx.atol (float models) or compress.onnx.steps_per_requantisation "
                          f"(int8 models; this {type(net).__name__} has no int8 requantisation)")
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
    if n_requant:
        step = output_step(np.concatenate(outputs))
        steps = max_diff / step if step else float("inf")
        tolerance = steps_per_requantisation * n_requant
        result.update({"onnx/requantisations": float(n_requant), "onnx/tolerance_steps": float(tolerance),
                       "onnx/output_step": step, "onnx/max_diff_steps": steps,
                       "onnx/atol": tolerance * step,
                       "onnx/within_tolerance": float(steps <= tolerance + STEP_SLACK)})
    else:
        result.update({"onnx/atol": float(atol), "onnx/within_tolerance": float(max_diff <= atol)})
    return result


def float_model(ctx) -> "Compressed":
    """The `onnx` method: the parent network unchanged, so the stage exports and checks the float model."""
    from dlzoo.compression.context import Compressed

    return Compressed([ctx.parent()])
