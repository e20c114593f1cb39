"""Fake GPUs for tests: monkeypatched ``torch.xpu`` / ``torch.cuda`` / ``torch.mps`` functions (through pytest's
``monkeypatch``) that describe devices a CPU-only machine does not have. Property values follow what the real
drivers report. Used by the xpu tests and by any test that needs "an Arc A770 with 2 GiB free"; never by the package."""

from __future__ import annotations

import types

import torch

GIB = 1 << 30

A770 = dict(name="Intel(R) Arc(TM) A770 Graphics", total_memory=16225243136, has_fp16=True, has_fp64=False,
            has_bfloat16_conversions=False, gpu_eu_count=512, driver_version="1.3.29735")
B580 = dict(name="Intel(R) Arc(TM) B580 Graphics", total_memory=12168933376, has_fp16=True, has_fp64=True,
            has_bfloat16_conversions=True, gpu_eu_count=160, driver_version="1.6.31294")
IGPU = dict(name="Intel(R) Arc(TM) Graphics", total_memory=15 * GIB, has_fp16=True, has_fp64=False,
            has_bfloat16_conversions=True, gpu_eu_count=128)
A100 = dict(name="NVIDIA A100-SXM4-40GB", total_memory=42298834944, major=8, minor=0, multi_processor_count=108)
T4 = dict(name="Tesla T4", total_memory=15828320256, major=7, minor=5, multi_processor_count=40)


def no_accelerators(mp) -> None:
    """Make every accelerator absent, whatever machine the tests run on."""
    mp.setattr(torch.xpu, "is_available", lambda: False)
    mp.setattr(torch.cuda, "is_available", lambda: False)
    mp.setattr(torch.backends.mps, "is_available", lambda: False)


class FakeGpu:
    """Installs fake devices of one kind (``xpu`` or ``cuda``) and records calls."""

    def __init__(self, mp, kind: str, props: list[dict], free: list[int] | None = None,
                 mem_error: Exception | None = None, reserved: int = 0):
        self.kind, self.props, self.calls = kind, props, []
        self.free = free if free is not None else [p["total_memory"] - GIB for p in props]
        mod = getattr(torch, kind)
        mp.setattr(mod, "is_available", lambda: True)
        mp.setattr(mod, "device_count", lambda: len(props))
        mp.setattr(mod, "_is_compiled", lambda: True, raising=False)
        mp.setattr(mod, "get_device_properties", lambda i=0: types.SimpleNamespace(**props[self._index(i)]))
        mp.setattr(mod, "get_device_name", lambda i=0: props[self._index(i)]["name"])

        def mem_get_info(i=0):
            self.calls.append(("mem_get_info", i))
            if mem_error is not None:
                raise mem_error
            return self.free[self._index(i)], props[self._index(i)]["total_memory"]

        mp.setattr(mod, "mem_get_info", mem_get_info)
        mp.setattr(mod, "memory_reserved", lambda i=0: reserved)
        mp.setattr(mod, "memory_allocated", lambda i=0: reserved // 2)
        mp.setattr(mod, "max_memory_allocated", lambda i=0: reserved)
        mp.setattr(mod, "synchronize", lambda d=None: self.calls.append(("synchronize", str(d))))
        mp.setattr(mod, "empty_cache", lambda: self.calls.append(("empty_cache",)))
        if kind == "cuda":
            mp.setattr(mod, "is_bf16_supported",
                       lambda including_emulation=True: props[0].get("major", 0) >= 8)

    @staticmethod
    def _index(i) -> int:
        if isinstance(i, torch.device):
            return i.index or 0
        return 0 if i is None else int(i)


class HealthyXpuSystem:
    """The oneAPI checker's view (``xpu.oneapi.System``) of a machine with a working Intel GPU stack: a render node,
    the Level Zero loader, no stray oneAPI environment, a torch built with XPU."""

    def glob(self, pattern):
        return ["/dev/dri/renderD128"]

    def access(self, path, mode):
        return True

    def find_library(self, name):
        return "libze_loader.so.1"

    def can_load(self, name):
        return True

    def distribution_version(self, name):
        return None

    def platform(self):
        return "linux"

    def torch_has_xpu(self):
        return True

    def intel_gpus(self):
        return ["/sys/class/drm/card0"]


# CPU features the device layer reads from ``torch.cpu.get_capabilities()``: native bf16 (AVX512-BF16 or AMX-BF16),
# AMX tiles, AVX512. A test that needs "a CPU with (or without) native bf16" sets them here instead of relying on the
# machine it runs on: the build machines are AMD EPYCs with AVX2 only or with AVX512-BF16, and Intel Xeons with AMX.
BF16_FEATURES = ("avx512_bf16", "amx_bf16")
AMX_FEATURES = ("amx_bf16", "amx_tile", "amx_int8", "amx_fp16")


def cpu_features(mp, *, bf16: bool, amx: bool = False) -> None:
    """Fake this CPU's capabilities: native bf16 or not, AMX or not (AMX implies bf16); the rest as the machine's."""
    real = torch.cpu.get_capabilities

    def capabilities():
        caps = dict(real())
        for name in BF16_FEATURES + AMX_FEATURES:
            caps[name] = False
        if bf16 or amx:
            caps["avx512_bf16"] = True
        if amx:
            caps.update(dict.fromkeys(AMX_FEATURES, True))
        return caps

    mp.setattr(torch.cpu, "get_capabilities", capabilities)
