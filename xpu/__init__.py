"""The device layer: which device, which half dtype, how much memory, which AR batch size, whether a version-matched
Intel Extension for PyTorch may be used, and whether the oneAPI / GPU driver environment is sane.

Everything else in the project asks this package instead of touching ``torch.cuda`` / ``torch.xpu`` directly.
Importing it imports no Intel extension, touches no device and writes no environment variable.
Run ``python -m xpu`` for a report on this machine.
"""

from .device import (AUTO_ORDER, DEVICE_ENV, DeviceInfo, DeviceUnavailable, available_devices, cpu_budget, describe,
                     device_count, empty_cache, is_arc_a_series, is_available, is_oom_error, memory_stats, offload,
                     resolve_device, set_threads, synchronize)
from .dtype import half_dtype, half_policy_reason, warn_once
from .ipex import IpexStatus, ipex_status, optimize
from .memory import (ArMemoryEstimate, BatchPlan, ar_memory, ar_param_count, estimate_ar_memory, pick_batch_size,
                     plan_batch_size)
from .oneapi import Applicability, Finding, oneapi_applicability, oneapi_findings

__all__ = [
    "AUTO_ORDER", "DEVICE_ENV", "DeviceInfo", "DeviceUnavailable", "available_devices", "cpu_budget", "describe",
    "device_count", "set_threads",
    "empty_cache", "is_arc_a_series", "is_available", "is_oom_error", "memory_stats", "offload", "resolve_device",
    "synchronize", "half_dtype", "half_policy_reason", "warn_once", "IpexStatus", "ipex_status", "optimize",
    "ArMemoryEstimate", "BatchPlan", "ar_memory", "ar_param_count", "estimate_ar_memory", "pick_batch_size",
    "plan_batch_size", "Applicability", "Finding", "oneapi_applicability", "oneapi_findings",
]
