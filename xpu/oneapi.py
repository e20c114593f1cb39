"""A oneAPI / GPU driver check for Intel XPU: each finding names the problem and its fix.

The file system, shared-library lookup, installed distributions and environment are injectable (:class:`System`)
so tests can fake any machine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import glob
import importlib.metadata
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .device import ARC_A_MAX_ALLOCATION, RELAXED_LIMITS_ENV, compiled_with, is_arc_a_series

# Intel runtime libraries that PyTorch's XPU wheels pull from PyPI.
PIP_RUNTIME_DISTRIBUTIONS = ("intel-sycl-rt", "intel-opencl-rt", "dpcpp-cpp-rt", "intel-cmplr-lib-rt",
                             "intel-cmplr-lib-ur", "intel-cmplr-lic-rt", "intel-pti", "umf", "tcmlib",
                             "onemkl-sycl-blas", "intel-openmp")
LEVEL_ZERO_LIBRARIES = ("libze_loader.so.1", "libze_loader.so", "ze_loader.dll")
INTEL_PCI_VENDOR = "0x8086"
ONEAPI_ENV = ("ONEAPI_ROOT", "SETVARS_COMPLETED", "ONEAPI_DEVICE_SELECTOR", "ZE_AFFINITY_MASK")


@dataclasses.dataclass(frozen=True)
class Finding:
    code: str  # stable identifier, e.g. "no-render-node"
    severity: str  # "error" (XPU cannot work), "warning" (likely trouble), "info"
    problem: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


class System:
    """The real machine. Tests pass an object with the same methods."""

    def glob(self, pattern: str) -> list[str]:
        return sorted(glob.glob(pattern))

    def access(self, path: str, mode: int) -> bool:
        return os.access(path, mode)

    def find_library(self, name: str) -> str | None:
        return ctypes.util.find_library(name)

    def can_load(self, name: str) -> bool:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            return False

    def distribution_version(self, name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    def platform(self) -> str:
        return sys.platform

    def torch_has_xpu(self) -> bool:
        return compiled_with("xpu")

    def intel_gpus(self) -> list[str]:
        """DRM devices whose PCI vendor is Intel (Linux sysfs; an empty list elsewhere or when unreadable)."""
        found = []
        for vendor in sorted(glob.glob("/sys/class/drm/card*/device/vendor")):
            try:
                with open(vendor, encoding="ascii") as f:
                    if f.read().strip().lower() == INTEL_PCI_VENDOR:
                        found.append(os.path.dirname(os.path.dirname(vendor)))
            except OSError:
                continue
        return found


@dataclasses.dataclass(frozen=True)
class Applicability:
    """Whether the oneAPI checks concern this machine, and why (or why not)."""
    applicable: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def oneapi_applicability(env: Mapping[str, str] | None = None, fs: Any = None,
                         device_type: str | None = None) -> Applicability:
    """The oneAPI / driver checks matter when this PyTorch is an XPU build, an Intel GPU is present, an XPU device is
    in use or asked for (``device_type``, ``$TORTOISE_DEVICE``), or a oneAPI environment is set up. Elsewhere (say an
    AMD CPU with an NVIDIA GPU) their "errors" would be noise: they are not applicable."""
    from .device import DEVICE_ENV
    env = os.environ if env is None else env
    fs = System() if fs is None else fs
    why = []
    if fs.torch_has_xpu():
        why.append("this PyTorch is an XPU build")
    gpus = getattr(fs, "intel_gpus", lambda: [])()
    if gpus:
        why.append(f"an Intel GPU is present ({', '.join(os.path.basename(g) for g in gpus)})")
    if device_type == "xpu" or env.get(DEVICE_ENV, "").strip().startswith("xpu"):
        why.append("an XPU device is asked for")
    oneapi = [k for k in ONEAPI_ENV if env.get(k)]
    if oneapi:
        why.append(f"a oneAPI environment is set ({', '.join(oneapi)})")
    if why:
        return Applicability(True, "; ".join(why))
    where = "under /sys/class/drm" if fs.platform().startswith("linux") else "that this check can see"
    return Applicability(False, f"no Intel GPU {where}, this PyTorch ({torch.__version__}) is not an XPU build and "
                                "no oneAPI environment is set; they matter only for an Intel GPU")


def oneapi_findings(env: Mapping[str, str] | None = None, fs: Any = None,
                    device_names: Iterable[str] = ()) -> list[Finding]:
    """Problems of the Intel GPU stack on this machine, each with its fix (empty when all looks right).

    ``device_names``: XPU device names already known (e.g. from :func:`xpu.describe`), for the Arc A-series check.
    """
    env = os.environ if env is None else env
    fs = System() if fs is None else fs
    found = []
    for check in (_check_torch_build, _check_render_nodes, _check_level_zero, _check_selectors, _check_mixed_runtime):
        found += check(env, fs)
    found += _check_allocation_limit(env, list(device_names))
    return found


def _check_torch_build(env: Mapping[str, str], fs: Any) -> list[Finding]:
    if fs.torch_has_xpu():
        return []
    return [Finding("torch-without-xpu", "error", f"this PyTorch ({torch.__version__}) was built without XPU support",
                    "pip install torch --index-url https://download.pytorch.org/whl/xpu "
                    "(PyTorch's XPU wheels; the Intel driver is the only system requirement)")]


def _check_render_nodes(env: Mapping[str, str], fs: Any) -> list[Finding]:
    if not fs.platform().startswith("linux"):
        return []
    nodes = fs.glob("/dev/dri/renderD*")
    if not nodes:
        return [Finding("no-render-node", "error", "no GPU render node under /dev/dri (no GPU driver loaded)",
                        "install Intel's GPU driver (i915 or xe; Arc A-series needs Linux 6.2+); in a container "
                        "pass the GPU with --device /dev/dri")]
    denied = [n for n in nodes if not fs.access(n, os.R_OK | os.W_OK)]
    if denied:
        return [Finding("render-node-permission", "error", f"no read/write access to {', '.join(denied)}",
                        "add your user to the render group (sudo usermod -aG render $USER) and log in again")]
    return []


def _check_level_zero(env: Mapping[str, str], fs: Any) -> list[Finding]:
    if fs.platform() == "darwin":
        return []
    if fs.find_library("ze_loader") or any(fs.can_load(name) for name in LEVEL_ZERO_LIBRARIES):
        return []
    return [Finding("no-level-zero", "error", "the Level Zero loader (libze_loader.so.1) was not found",
                    "install Level Zero with the Intel GPU driver (Ubuntu: apt install libze1 libze-intel-gpu1, "
                    "or intel-level-zero-gpu level-zero from Intel's repository)")]


def _check_selectors(env: Mapping[str, str], fs: Any) -> list[Finding]:
    found = []
    selector = env.get("ONEAPI_DEVICE_SELECTOR", "")
    if selector:
        if not _selector_keeps_level_zero(selector):
            found.append(Finding("selector-hides-level-zero", "error",
                                 f"ONEAPI_DEVICE_SELECTOR={selector} hides the Level Zero GPUs PyTorch XPU uses",
                                 "unset ONEAPI_DEVICE_SELECTOR or set it to level_zero:gpu (or level_zero:N)"))
        else:
            found.append(Finding("selector-set", "info",
                                 f"ONEAPI_DEVICE_SELECTOR={selector} restricts and renumbers the visible devices",
                                 "unset ONEAPI_DEVICE_SELECTOR to see every GPU"))
    mask = env.get("ZE_AFFINITY_MASK", "")
    if mask:
        found.append(Finding("affinity-mask-set", "info",
                             f"ZE_AFFINITY_MASK={mask} restricts the visible devices (xpu:0 is the first one left)",
                             "unset ZE_AFFINITY_MASK to see every GPU"))
    return found


def _selector_keeps_level_zero(selector: str) -> bool:
    """Whether ``ONEAPI_DEVICE_SELECTOR`` leaves some Level Zero device visible ("backend:devices" terms split by
    ';'; '!' terms exclude)."""
    terms = [t.strip().lower() for t in selector.split(";") if t.strip()]
    positive = [t for t in terms if not t.startswith("!")]
    negated = [t[1:].split(":", 1)[0] for t in terms if t.startswith("!")]
    if "level_zero" in negated or "*" in negated:
        return any(t.split(":", 1)[0] == "level_zero" for t in positive) and "*" not in negated
    if not positive:
        return True
    return any(t.split(":", 1)[0] in ("level_zero", "*") for t in positive)


def _check_mixed_runtime(env: Mapping[str, str], fs: Any) -> list[Finding]:
    sourced = [f"{k}={env[k]}" for k in ("SETVARS_COMPLETED", "ONEAPI_ROOT") if env.get(k)]
    if not sourced:
        return []
    pip_rt = [f"{n} {v}" for n in PIP_RUNTIME_DISTRIBUTIONS if (v := fs.distribution_version(n))]
    if pip_rt:
        return [Finding("mixed-oneapi-runtime", "warning",
                        f"a sourced oneAPI environment ({', '.join(sourced)}) is active beside pip-installed Intel "
                        f"runtime libraries ({', '.join(pip_rt[:4])}): mismatched SYCL/Level Zero runtimes can fail "
                        "with backend_mismatch or missing symbols",
                        "run from a shell that has not sourced oneAPI's setvars.sh (the PyTorch XPU wheels ship "
                        "their own runtime), or remove the pip runtime packages when building from source")]
    return [Finding("sourced-oneapi", "info", f"a sourced oneAPI environment is active ({', '.join(sourced)})",
                    "not needed with PyTorch's XPU wheels; keep it only for source builds")]


def _check_allocation_limit(env: Mapping[str, str], device_names: list[str]) -> list[Finding]:
    arc_a = [n for n in device_names if is_arc_a_series(n)]
    if not arc_a:
        return []
    limit = f"{ARC_A_MAX_ALLOCATION >> 30} GiB"
    if env.get(RELAXED_LIMITS_ENV, "") == "1":
        return [Finding("relaxed-allocation-limits", "info",
                        f"{RELAXED_LIMITS_ENV}=1: buffers over {limit} allowed on {arc_a[0]}",
                        f"unset {RELAXED_LIMITS_ENV} if kernels fail on large buffers")]
    return [Finding("arc-a-allocation-limit", "info",
                    f"{arc_a[0]} cannot allocate one buffer over {limit}; batch sizing keeps every tensor below it",
                    f"export {RELAXED_LIMITS_ENV}=1 to relax the limit (larger batches; experimental)")]
