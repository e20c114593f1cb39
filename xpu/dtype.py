"""The half-precision policy: which dtype ``--half`` means on a device, and an autocast that works everywhere.

Policy (one place):
- CUDA: float16 (tensor cores on every CUDA GPU since Volta; the original Tortoise's ``--half`` path).
- XPU: float16 on Arc A-series (Alchemist lacks bf16 conversions) or whenever the device reports no bf16
  conversions; bfloat16 on devices that have them (Arc B-series, Data Center Max); float16 fallback.
- MPS: float16.
- CPU: bfloat16 only on CPUs with native bf16 (AVX512-BF16 / AMX); otherwise none (fp32 is faster there).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

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


@contextlib.contextmanager
def autocast(device: str | torch.device, enabled: bool = True, dtype: torch.dtype | None = None) -> Iterator[None]:
    """``torch.autocast`` with the device's half dtype; a no-op (with one warning per process and reason)
    where autocast or half precision is unsupported. ``enabled=False`` is always a silent no-op."""
    kind = torch.device(device).type if not isinstance(device, DeviceInfo) else device.type
    if not enabled:
        yield
        return
    dtype = dtype if dtype is not None else half_dtype(device)
    if dtype is None:
        warn_once(f"autocast-none-{kind}", f"half precision is not supported well on {kind}: running in float32")
        yield
        return
    available = getattr(torch.amp, "is_autocast_available", lambda _kind: True)(kind)
    if not available:
        warn_once(f"autocast-unavailable-{kind}", f"torch.autocast is unavailable for {kind}: running in float32")
        yield
        return
    with torch.autocast(device_type=kind, dtype=dtype):
        yield
