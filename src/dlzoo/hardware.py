"""Hardware-specific choices, resolved at run time instead of written into recipes.

Recipes ask for `trainer.precision: auto`: bfloat16 autocast where the hardware computes it natively
(a CUDA GPU with bf16, or an x86 CPU with AVX-512 BF16 or AMX), float32 everywhere else. Without native
support PyTorch emulates bf16 on the CPU, which makes convolutions and matmuls many times slower than
float32, so a default that assumed one CPU's instruction set would not travel.

`DLZOO_CPU_BF16=0|1` overrides the CPU detection (to measure the float32 path on a bf16 machine, or in tests).
The resolved values are logged as run params (`hardware/*`)."""

from __future__ import annotations

import os
from pathlib import Path

AUTO = "auto"


def cpu_has_native_bf16() -> bool:
    forced = os.environ.get("DLZOO_CPU_BF16")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes")
    import torch

    cpu = getattr(torch._C, "_cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    try:  # an older torch without the probes: the kernel's CPU flags say the same
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cuda_has_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` -> `bf16-mixed` on hardware with native bf16, else `32-true`; any other value as given."""
    if str(precision) != AUTO:
        return str(precision)
    if accelerator in ("gpu", "cuda"):
        return "bf16-mixed" if cuda_has_bf16() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def describe() -> dict[str, str]:
    """What the run params record about the machine the run resolved its choices on."""
    import torch

    return {
        "hardware/cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "hardware/cpu_bf16_native": str(cpu_has_native_bf16()),
        "hardware/cuda": str(torch.cuda.is_available()),
        "hardware/torch_threads": str(torch.get_num_threads()),
    }
