"""Which device: parse a request, find what is present, describe it, and the per-device primitives
(synchronize, empty_cache, memory statistics, offload, out-of-memory detection).

Everything dispatches on ``torch.device(...).type``; backend modules are looked up with ``getattr`` because
``torch.xpu`` / ``torch.mps`` and some of their functions are missing on some builds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import platform
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch

DEVICE_ENV = "TORTOISE_DEVICE"
AUTO_ORDER = ("xpu", "cuda", "mps", "cpu")  # first available wins
GIB = 1 << 30
ARC_A_MAX_ALLOCATION = 4 * GIB  # Level Zero limit of one buffer on Alchemist (Arc A-series / Flex) GPUs
RELAXED_LIMITS_ENV = "UR_L0_ENABLE_RELAXED_ALLOCATION_LIMITS"

_INSTALL_HINT = {
    "xpu": "install PyTorch's XPU build (pip install torch --index-url https://download.pytorch.org/whl/xpu) "
           "and the Intel GPU driver, then run `python -m xpu` for a driver check",
    "cuda": "install a CUDA build of PyTorch (https://pytorch.org/get-started/locally/) and the NVIDIA driver",
    "mps": "MPS needs Apple silicon, macOS 12.3 or newer and a PyTorch build with MPS",
    "cpu": "",
}


class DeviceUnavailable(RuntimeError):
    """A requested device is absent or unsupported. The message is one line: what was found and the fix."""


# ---------------------------------------------------------------- backends

def backend(kind: str) -> Any:
    """The torch submodule of a device type (``torch.cuda``, ``torch.xpu``, ``torch.mps``, ``torch.cpu``) or None."""
    return getattr(torch, kind, None)


def _call(obj: Any, name: str, *args: Any, default: Any = None, **kwargs: Any) -> Any:
    """``obj.name(*args)``; ``default`` when the function is missing or raises (builds without the backend)."""
    fn = getattr(obj, name, None)
    if fn is None:
        return default
    try:
        return fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - a missing or broken backend is "absent", never a crash
        return default


def is_available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "mps":
        return bool(_call(getattr(torch.backends, "mps", None), "is_available", default=False))
    return bool(_call(backend(kind), "is_available", default=False))


def device_count(kind: str) -> int:
    if kind in ("cpu", "mps"):
        return int(is_available(kind))
    if not is_available(kind):
        return 0
    return int(_call(backend(kind), "device_count", default=0) or 0)


def compiled_with(kind: str) -> bool:
    """Whether this torch build supports ``kind`` at all (False for XPU/CUDA on a CPU-only wheel)."""
    if kind == "cpu":
        return True
    if kind == "mps":
        return bool(_call(getattr(torch.backends, "mps", None), "is_built", default=False))
    mod = backend(kind)
    return bool(_call(mod, "_is_compiled", default=getattr(torch.version, kind, None) is not None))


def available_devices() -> list[str]:
    """Devices present, in auto order, e.g. ``['xpu:0', 'xpu:1', 'cpu']``."""
    found = []
    for kind in AUTO_ORDER:
        if kind in ("cpu", "mps"):
            found += [kind] if is_available(kind) else []
        else:
            found += [f"{kind}:{i}" for i in range(device_count(kind))]
    return found


# ---------------------------------------------------------------- resolution

def _parse(requested: str | torch.device, source: str) -> torch.device:
    try:
        dev = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in AUTO_ORDER:
        raise DeviceUnavailable(
            f"unknown device {str(requested)!r} ({source}): use one of xpu, xpu:N, cuda, cuda:N, mps, cpu or auto")
    return dev


def _absent(dev: torch.device, source: str, text: str) -> DeviceUnavailable:
    kind = dev.type
    found = ", ".join(available_devices())
    if device_count(kind) > 0:  # the type exists, the index does not
        n = device_count(kind)
        return DeviceUnavailable(
            f"device {text!r} requested ({source}) but only {n} {kind} device(s) exist (found: {found}); "
            f"use {kind}:0..{kind}:{n - 1} or another device")
    build = "" if compiled_with(kind) else f"; this PyTorch {torch.__version__} was built without {kind.upper()}"
    return DeviceUnavailable(
        f"device {text!r} requested ({source}) but no {kind.upper()} device is available{build} "
        f"(found: {found}); fix: {_INSTALL_HINT[kind]}, or choose another with --device / {DEVICE_ENV}")


def resolve_device(requested: str | torch.device | None = None, env: Mapping[str, str] | None = None) -> torch.device:
    """The device to run on: ``requested``, else ``$TORTOISE_DEVICE``, else auto (xpu → cuda → mps → cpu).

    XPU/CUDA devices come back with an explicit index (``xpu`` → ``xpu:0``) so they compare equal to tensors' devices.
    Raises :class:`DeviceUnavailable` when the requested device is absent.
    """
    env = os.environ if env is None else env
    source = "--device"
    if requested is None or str(requested).strip() in ("", "auto"):
        requested, source = env.get(DEVICE_ENV, "").strip(), f"{DEVICE_ENV}"
        if requested in ("", "auto"):
            return _auto()
    dev = _parse(requested, source)
    if dev.type in ("cpu", "mps"):
        if not is_available(dev.type):
            raise _absent(dev, source, str(requested))
        return torch.device(dev.type)
    index = 0 if dev.index is None else dev.index
    if index >= device_count(dev.type):
        raise _absent(torch.device(dev.type, index), source, str(requested))
    return torch.device(dev.type, index)


def _auto() -> torch.device:
    for kind in AUTO_ORDER:
        if kind in ("cpu", "mps") and is_available(kind):
            return torch.device(kind)
        if device_count(kind) > 0:
            return torch.device(kind, 0)
    return torch.device("cpu")


# ---------------------------------------------------------------- description

@dataclasses.dataclass
class DeviceInfo:
    """What the rest of the package needs to know about one device. Memory in bytes."""
    type: str
    index: int | None
    name: str
    total_memory: int
    free_memory: int
    free_memory_is_estimate: bool = False
    memory_note: str = ""
    supports_fp16: bool = False
    supports_bf16: bool = False
    arc_a_series: bool = False
    max_allocation: int | None = None  # largest single buffer the driver allows; None = no known limit
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return torch.device(self.type, self.index) if self.index is not None else torch.device(self.type)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"device": str(self.device)}


_ARC_A_RE = re.compile(r"\bArc\(TM\)\s+A\d{3}M?\b|\bArc\s+A\d{3}M?\b|\bData Center GPU Flex\b", re.IGNORECASE)


def is_arc_a_series(name: str) -> bool:
    """Alchemist (DG2) discrete GPUs: Arc A310..A770 (and mobile A370M..), Data Center GPU Flex."""
    return bool(_ARC_A_RE.search(name or ""))


def describe(device: str | torch.device | None = None, env: Mapping[str, str] | None = None) -> DeviceInfo:
    """Name, memory and half-precision support of ``device`` (resolved with :func:`resolve_device`)."""
    dev = resolve_device(device, env)
    env = os.environ if env is None else env
    return {"xpu": _describe_xpu, "cuda": _describe_cuda, "mps": _describe_mps, "cpu": _describe_cpu}[dev.type](
        dev, env)


def _props_dict(props: Any) -> dict[str, Any]:
    keep = ("name", "total_memory", "major", "minor", "multi_processor_count", "gpu_eu_count", "driver_version",
            "platform_name", "vendor", "version", "has_fp16", "has_fp64", "has_bfloat16_conversions",
            "has_subgroup_matrix_multiply_accumulate", "max_compute_units", "gcnArchName")
    out = {}
    for key in keep:
        value = getattr(props, key, None)
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
    return out


def _free_memory(mod: Any, index: int, total: int, kind: str) -> tuple[int, bool, str]:
    """(free bytes, is_estimate, note). ``mem_get_info`` raises on Intel iGPUs, WSL2 and some drivers."""
    try:
        free, _ = mod.mem_get_info(index)
        return int(free), False, ""
    except Exception as exc:  # noqa: BLE001
        reserved = int(_call(mod, "memory_reserved", index, default=0) or 0)
        note = (f"torch.{kind}.mem_get_info is unsupported here ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:80] if str(exc) else 'no message'}; usual on integrated GPUs and WSL2): "
                "free memory estimated as total minus what this process reserved")
        return max(total - reserved, 0), True, note


def _describe_xpu(dev: torch.device, env: Mapping[str, str]) -> DeviceInfo:
    mod = torch.xpu
    props = mod.get_device_properties(dev.index)
    name = str(getattr(props, "name", "") or _call(mod, "get_device_name", dev.index, default="Intel GPU"))
    total = int(getattr(props, "total_memory", 0))
    free, estimate, note = _free_memory(mod, dev.index, total, "xpu")
    bf16 = getattr(props, "has_bfloat16_conversions", None)
    if bf16 is None:
        bf16 = _call(mod, "is_bf16_supported", including_emulation=False, default=False)
    arc_a = is_arc_a_series(name)
    relaxed = env.get(RELAXED_LIMITS_ENV, "") == "1"
    return DeviceInfo("xpu", dev.index, name, total, free, estimate, note,
                      supports_fp16=bool(getattr(props, "has_fp16", True)), supports_bf16=bool(bf16),
                      arc_a_series=arc_a, max_allocation=ARC_A_MAX_ALLOCATION if arc_a and not relaxed else None,
                      properties=_props_dict(props))


def _describe_cuda(dev: torch.device, env: Mapping[str, str]) -> DeviceInfo:
    mod = torch.cuda
    props = mod.get_device_properties(dev.index)
    total = int(getattr(props, "total_memory", 0))
    free, estimate, note = _free_memory(mod, dev.index, total, "cuda")
    major = int(getattr(props, "major", 0))
    bf16 = _call(mod, "is_bf16_supported", including_emulation=False, default=major >= 8)
    return DeviceInfo("cuda", dev.index, str(getattr(props, "name", "CUDA GPU")), total, free, estimate, note,
                      supports_fp16=True, supports_bf16=bool(bf16), properties=_props_dict(props))


def _system_memory() -> tuple[int, int, bool]:
    """(total, available, is_estimate) of host RAM, from /proc/meminfo where present."""
    total = avail = 0
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="ascii") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        total = int(fields["MemTotal"].split()[0]) * 1024
        avail = int(fields["MemAvailable"].split()[0]) * 1024
        return total, avail, False
    pages = _sysconf("SC_PHYS_PAGES") * _sysconf("SC_PAGE_SIZE")
    free = _sysconf("SC_AVPHYS_PAGES") * _sysconf("SC_PAGE_SIZE")
    return pages, free or pages, True


def _sysconf(name: str) -> int:
    try:
        return int(os.sysconf(name))
    except (AttributeError, ValueError, OSError):
        return 0


def _describe_mps(dev: torch.device, env: Mapping[str, str]) -> DeviceInfo:
    sys_total, _, _ = _system_memory()
    total = int(_call(torch.mps, "recommended_max_memory", default=0) or sys_total)
    used = int(_call(torch.mps, "driver_allocated_memory", default=0) or 0)
    note = "unified memory: free = Metal's recommended working set minus what this process's driver allocated"
    return DeviceInfo("mps", None, f"Apple MPS ({platform.machine()})", total, max(total - used, 0), True, note,
                      supports_fp16=True, supports_bf16=False)


def cpu_has_native_bf16() -> bool:
    caps = _call(torch.cpu, "get_capabilities", default=None) or {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def _describe_cpu(dev: torch.device, env: Mapping[str, str]) -> DeviceInfo:
    caps = _call(torch.cpu, "get_capabilities", default=None) or {}
    name = str(caps.get("cpu_name") or platform.processor() or platform.machine() or "CPU")
    total, free, estimate = _system_memory()
    isa = _call(torch.backends.cpu, "get_cpu_capability", default="") or ""
    note = "host RAM available to new allocations (MemAvailable)" if not estimate else "host RAM (sysconf estimate)"
    props = {"isa": isa, "threads": torch.get_num_threads(),
             "cores": caps.get("num_physical_cores", os.cpu_count())}
    return DeviceInfo("cpu", None, name, total, free, estimate, note,
                      supports_fp16=bool(caps.get("avx512_fp16") or caps.get("amx_fp16")),
                      supports_bf16=cpu_has_native_bf16(), properties=props)


# ---------------------------------------------------------------- CPU threads

def _cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs a container's cgroup quota allows this process (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or
    None where there is no quota."""
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(root, "cpu.max"), encoding="ascii") as fh:
            quota, period = fh.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us"), encoding="ascii") as fh:
            quota = int(fh.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us"), encoding="ascii") as fh:
            period = int(fh.read())
        return None if quota <= 0 else quota / period
    return None


def cpu_budget(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may run on: its affinity mask (``taskset``, a scheduler's pinning), capped by a container's
    CPU quota. torch's own default (one thread per physical core of the whole machine) ignores both."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        n = min(n, max(1, int(limit)))
    return max(1, n)


def set_threads(threads: int | None = None) -> int:
    """Threads for CPU work (torch's intra-op pool): ``threads`` when given, else torch's default capped by
    :func:`cpu_budget`, so a pinned or quota-limited process does not run more threads than it has CPUs (which
    slows every step). Returns the count set."""
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        n = int(threads)
    else:
        n = min(torch.get_num_threads(), cpu_budget())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


# ---------------------------------------------------------------- primitives

def synchronize(device: str | torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    dev = torch.device(device)
    if dev.type in ("cuda", "xpu"):
        backend(dev.type).synchronize(dev)
    elif dev.type == "mps":
        _call(torch.mps, "synchronize")


def empty_cache(device: str | torch.device) -> None:
    """Return cached blocks to the driver (after Python frees what it can)."""
    gc.collect()
    kind = torch.device(device).type
    if kind in ("cuda", "xpu", "mps") and is_available(kind):
        _call(backend(kind), "empty_cache")


def memory_stats(device: str | torch.device) -> dict[str, int | None]:
    """Bytes: ``allocated``, ``reserved``, ``peak_allocated`` by this process; ``free``/``total`` of the device.

    CPU: allocated is the resident set size, peak the maximum resident set size.
    """
    dev = torch.device(device)
    if dev.type in ("cuda", "xpu"):
        mod, idx = backend(dev.type), 0 if dev.index is None else dev.index
        total = int(getattr(_call(mod, "get_device_properties", idx), "total_memory", 0) or 0) or None
        free = _call(mod, "mem_get_info", idx)
        return {"allocated": _call(mod, "memory_allocated", idx), "reserved": _call(mod, "memory_reserved", idx),
                "peak_allocated": _call(mod, "max_memory_allocated", idx),
                "free": free[0] if free else None, "total": total}
    if dev.type == "mps":
        return {"allocated": _call(torch.mps, "current_allocated_memory"),
                "reserved": _call(torch.mps, "driver_allocated_memory"), "peak_allocated": None,
                "free": None, "total": _call(torch.mps, "recommended_max_memory")}
    total, free, _ = _system_memory()
    rss, max_rss = _rss(), _max_rss()
    peak = max(rss, max_rss) if rss is not None and max_rss is not None else max_rss  # the kernel's peak lags
    return {"allocated": rss, "reserved": None, "peak_allocated": peak, "free": free, "total": total}


def _rss() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _sysconf("SC_PAGE_SIZE")
    return None


def _max_rss() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    kib_or_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib_or_bytes if platform.system() == "Darwin" else kib_or_bytes * 1024


def _module_device(model: torch.nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def offload(model: torch.nn.Module, device: str | torch.device,
            home: str | torch.device | None = None) -> Iterator[torch.nn.Module]:
    """Move ``model`` to ``device`` for one stage, then back to ``home`` (default: where it was, usually cpu),
    also when the stage raises; the device cache is emptied afterwards."""
    device = torch.device(device)
    home = _module_device(model) if home is None else torch.device(home)
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)
        if device.type != "cpu":
            empty_cache(device)


# ---------------------------------------------------------------- errors

_OOM_MARKERS = ("out of memory", "ur_result_error_out_of_device_memory", "ur_result_error_out_of_resources",
                "pi_error_out_of_resources", "pi_error_out_of_device_memory", "can't allocate memory",
                "ze_result_error_out_of_device_memory")


def is_oom_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) means the device ran out of memory, on any backend:
    ``torch.OutOfMemoryError``, CUDA/XPU/MPS "out of memory", Level Zero / Unified Runtime / PI out-of-resources
    codes, and the CPU allocator's "can't allocate memory"."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        oom_type = getattr(torch, "OutOfMemoryError", None)
        if isinstance(exc, MemoryError) or (oom_type is not None and isinstance(exc, oom_type)):
            return True
        text = str(exc).lower()
        if isinstance(exc, Exception) and any(marker in text for marker in _OOM_MARKERS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
