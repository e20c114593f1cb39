"""The half-precision policy: which dtype ``--half`` means on a device (the pipeline casts the weights of the
networks that tolerate it to that dtype once, when it places them; nothing runs under autocast).

Policy (one place):
- CUDA: float16 (tensor cores on every CUDA GPU since Volta; the original Tortoise's ``--half`` path).
- XPU: float16 on Arc A-series (Alchemist lacks bf16 conversions) or whenever the device reports no bf16
  conversions; bfloat16 on devices that have them (Arc B-series, Data Center Max); float16 fallback.
- MPS: float16.
- CPU: bfloat16 only on CPUs with native bf16 (AVX512-BF16 / AMX); otherwise none (fp32 is faster there).
"""

from __future__ import annotations

import warnings

import torch

from .device import DeviceInfo, describe

_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Emit ``message`` as a UserWarning the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


def half_dtype(device: str | torch.device | DeviceInfo | None = None) -> torch.dtype | None:
    """The dtype ``--half`` means on ``device``, or None where half precision does not pay (e.g. most CPUs)."""
    info = device if isinstance(device, DeviceInfo) else describe(device)
    if info.type == "cuda":
        return torch.float16
    if info.type == "xpu":
        if info.supports_bf16 and not info.arc_a_series:
            return torch.bfloat16
        return torch.float16 if info.supports_fp16 else None
    if info.type == "mps":
        return torch.float16
    return torch.bfloat16 if info.supports_bf16 else None


def half_policy_reason(info: DeviceInfo) -> str:
    """One line explaining :func:`half_dtype` for ``info``."""
    dtype = half_dtype(info)
    name = str(dtype).replace("torch.", "") if dtype is not None else "none (float32)"
    why = {
        "cuda": "CUDA: float16 tensor cores",
        "mps": "MPS: float16",
        "cpu": "CPU with native bf16 (AVX512-BF16/AMX)" if info.supports_bf16
        else "CPU without native bf16: half precision would be emulated and slower",
    }.get(info.type)
    if info.type == "xpu":
        why = ("Arc A-series: no bf16 conversions" if info.arc_a_series
               else "device has bf16 conversions" if info.supports_bf16 else "device reports no bf16 conversions")
    return f"{name}: {why}"
