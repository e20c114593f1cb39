"""Device resolution, description, dtype policy, autocast, primitives and OOM detection.

The CPU path runs for real; XPU/CUDA/MPS presence and properties come from fakes at the torch boundary."""

import os
import subprocess
import sys

import pytest
import torch

import xpu
from xpu import device as xdevice
from xpu import dtype as xdtype
from xpu.testing import A100, A770, B580, GIB, IGPU, T4, FakeGpu, no_accelerators


@pytest.fixture
def cpu_only(monkeypatch):
    no_accelerators(monkeypatch)
    xdtype._WARNED.clear()


# ---------------------------------------------------------------- resolution

def test_cpu_resolution_and_env(cpu_only):
    assert xpu.resolve_device("cpu") == torch.device("cpu")
    assert xpu.resolve_device(None, env={}) == torch.device("cpu")
    assert xpu.resolve_device("auto", env={"TORTOISE_DEVICE": "cpu"}) == torch.device("cpu")
    assert xpu.resolve_device(None, env={"TORTOISE_DEVICE": " auto "}) == torch.device("cpu")
    assert xpu.resolve_device(torch.device("cpu"), env={"TORTOISE_DEVICE": "xpu"}) == torch.device("cpu")
    assert xpu.available_devices() == ["cpu"]


@pytest.mark.parametrize("request_, source", [("xpu", "--device"), ("cuda:1", "--device"), ("mps", "--device")])
def test_absent_device_is_one_line_error(cpu_only, request_, source):
    with pytest.raises(xpu.DeviceUnavailable) as err:
        xpu.resolve_device(request_, env={})
    msg = str(err.value)
    assert isinstance(err.value, RuntimeError) and "\n" not in msg
    assert repr(request_) in msg and source in msg and "found: cpu" in msg and "fix:" in msg


def test_absent_device_from_env_names_the_variable(cpu_only):
    with pytest.raises(xpu.DeviceUnavailable,
                       match=r"'xpu' requested \(TORTOISE_DEVICE\).*download.pytorch.org/whl/xpu"):
        xpu.resolve_device(None, env={"TORTOISE_DEVICE": "xpu"})


@pytest.mark.parametrize("name", ["foo", "meta", "xpu:x"])
def test_unknown_device(cpu_only, name):
    with pytest.raises(xpu.DeviceUnavailable, match="unknown device"):
        xpu.resolve_device(name, env={})


def test_fake_xpu_resolution(monkeypatch, cpu_only):
    FakeGpu(monkeypatch, "xpu", [A770, B580])
    assert xpu.available_devices() == ["xpu:0", "xpu:1", "cpu"]
    assert xpu.resolve_device(None, env={}) == torch.device("xpu", 0)
    assert xpu.resolve_device("xpu", env={}) == torch.device("xpu:0")
    assert xpu.resolve_device(None, env={"TORTOISE_DEVICE": "xpu:1"}) == torch.device("xpu:1")
    with pytest.raises(xpu.DeviceUnavailable, match=r"only 2 xpu device\(s\).*xpu:0\.\.xpu:1"):
        xpu.resolve_device("xpu:2", env={})


def test_auto_order(monkeypatch, cpu_only):
    FakeGpu(monkeypatch, "cuda", [A100])
    assert xpu.resolve_device(env={}) == torch.device("cuda:0")
    FakeGpu(monkeypatch, "xpu", [B580])
    assert xpu.resolve_device(env={}) == torch.device("xpu:0")  # xpu before cuda
    assert xpu.available_devices() == ["xpu:0", "cuda:0", "cpu"]


def test_mps_auto(monkeypatch, cpu_only):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert xpu.resolve_device(env={}) == torch.device("mps")
    assert xpu.available_devices() == ["mps", "cpu"]


def test_backend_missing_functions_mean_absent(monkeypatch, cpu_only):
    def boom():
        raise RuntimeError("driver exploded")
    monkeypatch.setattr(torch.xpu, "is_available", boom)
    monkeypatch.delattr(torch.cuda, "is_available")
    assert xpu.available_devices() == ["cpu"]
    assert xpu.resolve_device(env={}) == torch.device("cpu")


# ---------------------------------------------------------------- description and dtype policy

def test_describe_arc_a770(monkeypatch, cpu_only):
    FakeGpu(monkeypatch, "xpu", [A770], free=[12 * GIB])
    info = xpu.describe("xpu", env={})
    assert (info.type, info.index, info.name) == ("xpu", 0, A770["name"])
    assert (info.total_memory, info.free_memory) == (A770["total_memory"], 12 * GIB)
    assert not info.free_memory_is_estimate
    assert info.arc_a_series and not info.supports_bf16 and info.supports_fp16
    assert info.max_allocation == 4 * GIB
    assert xpu.half_dtype(info) == torch.float16
    assert xpu.half_dtype("xpu:0") == torch.float16
    assert "Arc A-series" in xpu.half_policy_reason(info)
    assert info.to_dict()["device"] == "xpu:0" and info.properties["gpu_eu_count"] == 512
    relaxed = xpu.describe("xpu", env={"UR_L0_ENABLE_RELAXED_ALLOCATION_LIMITS": "1"})
    assert relaxed.max_allocation is None


def test_describe_b580_uses_bf16(monkeypatch, cpu_only):
    FakeGpu(monkeypatch, "xpu", [B580])
    info = xpu.describe("xpu", env={})
    assert not info.arc_a_series and info.supports_bf16 and info.max_allocation is None
    assert xpu.half_dtype(info) == torch.bfloat16


def test_xpu_without_bf16_property_asks_torch(monkeypatch, cpu_only):
    props = {k: v for k, v in B580.items() if k != "has_bfloat16_conversions"}
    FakeGpu(monkeypatch, "xpu", [props])
    monkeypatch.setattr(torch.xpu, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert xpu.describe("xpu", env={}).supports_bf16  # asked without emulation


def test_igpu_free_memory_query_raises(monkeypatch, cpu_only):
    err = RuntimeError("The device (Intel(R) Arc(TM) Graphics) doesn't support querying the available free memory.")
    FakeGpu(monkeypatch, "xpu", [IGPU], mem_error=err, reserved=GIB)
    info = xpu.describe("xpu", env={})
    assert info.free_memory == IGPU["total_memory"] - GIB and info.free_memory_is_estimate
    assert "mem_get_info" in info.memory_note and "WSL2" in info.memory_note
    assert xpu.memory_stats("xpu:0")["free"] is None


def test_describe_cuda(monkeypatch, cpu_only):
    gpu = FakeGpu(monkeypatch, "cuda", [A100, T4], free=[30 * GIB, 10 * GIB])
    info = xpu.describe("cuda:1", env={})
    assert (info.name, info.free_memory, info.supports_fp16) == ("Tesla T4", 10 * GIB, True)
    assert ("mem_get_info", 1) in gpu.calls
    assert xpu.half_dtype(info) == torch.float16
    assert xpu.half_dtype(xpu.describe("cuda:0", env={})) == torch.float16


def test_describe_mps(monkeypatch, cpu_only):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 20 * GIB, raising=False)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 2 * GIB, raising=False)
    info = xpu.describe("mps", env={})
    assert (info.total_memory, info.free_memory, info.free_memory_is_estimate) == (20 * GIB, 18 * GIB, True)
    assert xpu.half_dtype(info) == torch.float16


def test_describe_cpu_for_real(cpu_only):
    info = xpu.describe("cpu", env={})
    assert info.type == "cpu" and info.index is None and info.name
    assert 0 < info.free_memory <= info.total_memory
    native = xdevice.cpu_has_native_bf16()
    assert info.supports_bf16 == native
    assert xpu.half_dtype("cpu") == (torch.bfloat16 if native else None)


def test_cpu_policy_follows_native_bf16(monkeypatch, cpu_only):
    from xpu.testing import cpu_features
    for bf16, amx in ((True, False), (False, True)):  # AVX512-BF16 (Zen 4/5, Cooper Lake), AMX (Sapphire Rapids on)
        cpu_features(monkeypatch, bf16=bf16, amx=amx)
        assert xpu.half_dtype("cpu") == torch.bfloat16 and xpu.describe("cpu", env={}).supports_bf16
    cpu_features(monkeypatch, bf16=False)
    assert xpu.half_dtype("cpu") is None and not xpu.describe("cpu", env={}).supports_bf16


# ---------------------------------------------------------------- primitives

def test_primitives_on_cpu_for_real(cpu_only):
    xpu.synchronize("cpu")
    xpu.empty_cache("cpu")
    stats = xpu.memory_stats("cpu")
    assert set(stats) == {"allocated", "reserved", "peak_allocated", "free", "total"}
    assert stats["total"] > stats["free"] > 0
    if sys.platform.startswith("linux"):
        assert stats["peak_allocated"] >= stats["allocated"] > 0


def test_primitives_dispatch_to_backend(monkeypatch, cpu_only):
    gpu = FakeGpu(monkeypatch, "xpu", [B580], free=[5 * GIB], reserved=2 * GIB)
    xpu.synchronize("xpu:0")
    xpu.empty_cache(torch.device("xpu", 0))
    assert gpu.calls == [("synchronize", "xpu:0"), ("empty_cache",)]
    stats = xpu.memory_stats("xpu")
    assert stats == {"allocated": GIB, "reserved": 2 * GIB, "peak_allocated": 2 * GIB, "free": 5 * GIB,
                     "total": B580["total_memory"]}


class _RecordingModule(torch.nn.Linear):
    def __init__(self):
        super().__init__(2, 2)
        self.moves = []

    def to(self, device):  # records the move; the real tensors stay on cpu (no GPU here)
        self.moves.append(str(device))
        return self


def test_offload_moves_there_and_back_also_on_error(monkeypatch, cpu_only):
    gpu = FakeGpu(monkeypatch, "xpu", [B580])
    model = _RecordingModule()
    with xpu.offload(model, "xpu:0") as m:
        assert m is model and model.moves == ["xpu:0"]
    assert model.moves == ["xpu:0", "cpu"] and ("empty_cache",) in gpu.calls
    with pytest.raises(ValueError):
        with xpu.offload(model, "xpu:0"):
            raise ValueError("stage failed")
    assert model.moves[-2:] == ["xpu:0", "cpu"]


def test_offload_real_cpu_module(cpu_only):
    model = torch.nn.Linear(3, 3)
    with xpu.offload(model, "cpu"):
        out = model(torch.ones(1, 3))
    assert out.shape == (1, 3) and model.weight.device.type == "cpu"


# ---------------------------------------------------------------- OOM detection

@pytest.mark.parametrize("exc", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("XPU out of memory. Tried to allocate 4.00 GiB (GPU 0; 15.11 GiB total capacity)"),
    RuntimeError("Native API failed. Native API returns: 39 (UR_RESULT_ERROR_OUT_OF_DEVICE_MEMORY)"),
    RuntimeError("level_zero backend failed with error: 40 (UR_RESULT_ERROR_OUT_OF_RESOURCES)"),
    RuntimeError("Native API failed. Native API returns: -5 (PI_ERROR_OUT_OF_RESOURCES)"),
    RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"),
    MemoryError(),
])
def test_oom_errors(exc):
    assert xpu.is_oom_error(exc)


@pytest.mark.parametrize("exc", [
    RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
    RuntimeError("Native API returns: 20 (UR_RESULT_ERROR_DEVICE_LOST)"),
    ValueError("bad value"),
    KeyboardInterrupt(),
])
def test_not_oom_errors(exc):
    assert not xpu.is_oom_error(exc)


def test_oom_found_through_cause_chain():
    try:
        try:
            raise RuntimeError("UR_RESULT_ERROR_OUT_OF_DEVICE_MEMORY")
        except RuntimeError as inner:
            raise ValueError("decode step failed") from inner
    except ValueError as outer:
        assert xpu.is_oom_error(outer)


def test_real_cpu_allocation_failure_is_oom():
    with pytest.raises(RuntimeError) as err:
        torch.empty(1 << 62, dtype=torch.uint8)
    assert xpu.is_oom_error(err.value)


# ---------------------------------------------------------------- import hygiene

def test_import_has_no_side_effects():
    code = ("import os, sys; before = dict(os.environ); import xpu; "
            "assert dict(os.environ) == before, 'environment written'; "
            "bad = [m for m in sys.modules if m.startswith(('intel_extension_for_pytorch', 'tortoise'))]; "
            "assert not bad, bad; print('ok')")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ---------------------------------------------------------------- CPU threads

def test_cpu_budget_follows_the_affinity_mask_and_a_container_quota(tmp_path, monkeypatch):
    from xpu import device as xdevice
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert xdevice.cpu_budget(str(tmp_path)) == 4  # no cgroup files: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert xdevice.cpu_budget(str(tmp_path)) == 4
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs (docker --cpus 1.5)
    assert xdevice.cpu_budget(str(tmp_path)) == 1
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert xdevice.cpu_budget(str(v1)) == 2
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert xdevice.cpu_budget(str(v1)) == 4


def test_set_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert xpu.set_threads(1) == 1 and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setattr(xdevice, "cpu_budget", lambda *a: 1)
        assert xpu.set_threads() == 1 and torch.get_num_threads() == 1  # the default never exceeds the budget
        with pytest.raises(ValueError, match="at least 1"):
            xpu.set_threads(0)
    finally:
        torch.set_num_threads(before)
