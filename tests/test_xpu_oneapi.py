"""oneAPI / driver findings on faked machines (file system, libraries, distributions, environment injected),
and the real probe on this machine."""

import os

import pytest

import xpu
from xpu.oneapi import System

A770_NAME = "Intel(R) Arc(TM) A770 Graphics"


class FakeSystem:
    def __init__(self, nodes=("/dev/dri/renderD128",), denied=(), libs=("ze_loader",), dists=None,
                 platform="linux", torch_xpu=True):
        self.nodes, self.denied, self.libs = list(nodes), set(denied), set(libs)
        self.dists, self._platform, self._torch_xpu = dists or {}, platform, torch_xpu

    def glob(self, pattern):
        assert pattern == "/dev/dri/renderD*"
        return self.nodes

    def access(self, path, mode):
        assert mode == os.R_OK | os.W_OK
        return path not in self.denied

    def find_library(self, name):
        return f"lib{name}.so.1" if name in self.libs else None

    def can_load(self, name):
        return name in self.libs

    def distribution_version(self, name):
        return self.dists.get(name)

    def platform(self):
        return self._platform

    def torch_has_xpu(self):
        return self._torch_xpu


def codes(findings):
    return [f.code for f in findings]


def test_healthy_machine_has_no_findings():
    assert xpu.oneapi_findings(env={}, fs=FakeSystem(), device_names=["Intel(R) Arc(TM) B580 Graphics"]) == []


def test_every_finding_has_problem_and_fix():
    fs = FakeSystem(nodes=(), libs=(), torch_xpu=False, dists={"intel-sycl-rt": "2025.1.1"})
    env = {"ONEAPI_DEVICE_SELECTOR": "opencl:gpu", "ZE_AFFINITY_MASK": "0", "ONEAPI_ROOT": "/opt/intel/oneapi"}
    found = xpu.oneapi_findings(env=env, fs=fs, device_names=[A770_NAME])
    assert codes(found) == ["torch-without-xpu", "no-render-node", "no-level-zero", "selector-hides-level-zero",
                            "affinity-mask-set", "mixed-oneapi-runtime", "arc-a-allocation-limit"]
    for f in found:
        assert f.problem and f.fix and "\n" not in f.problem + f.fix and f.severity in ("error", "warning", "info")
        assert set(f.to_dict()) == {"code", "severity", "problem", "fix"}


def test_render_node_permission():
    found = xpu.oneapi_findings(env={}, fs=FakeSystem(nodes=["/dev/dri/renderD128", "/dev/dri/renderD129"],
                                                      denied=["/dev/dri/renderD129"]))
    assert codes(found) == ["render-node-permission"]
    assert "renderD129" in found[0].problem and "render group" in found[0].fix


def test_level_zero_found_by_dlopen_only():
    fs = FakeSystem(libs=("libze_loader.so.1",))  # find_library misses it, CDLL finds it
    assert xpu.oneapi_findings(env={}, fs=fs) == []
    assert codes(xpu.oneapi_findings(env={}, fs=FakeSystem(libs=()))) == ["no-level-zero"]


@pytest.mark.parametrize("selector, code, severity", [
    ("level_zero:0", "selector-set", "info"),
    ("level_zero:gpu", "selector-set", "info"),
    ("*:gpu", "selector-set", "info"),
    ("opencl:*", "selector-hides-level-zero", "error"),
    ("opencl:gpu;cuda:*", "selector-hides-level-zero", "error"),
    ("!opencl:*", "selector-set", "info"),
    ("!level_zero:*", "selector-hides-level-zero", "error"),
    ("level_zero:1;!level_zero:0", "selector-set", "info"),
])
def test_device_selector(selector, code, severity):
    (found,) = xpu.oneapi_findings(env={"ONEAPI_DEVICE_SELECTOR": selector}, fs=FakeSystem())
    assert (found.code, found.severity) == (code, severity) and selector in found.problem


def test_sourced_oneapi_with_and_without_pip_runtime():
    env = {"SETVARS_COMPLETED": "1"}
    (mixed,) = xpu.oneapi_findings(env=env, fs=FakeSystem(dists={"dpcpp-cpp-rt": "2025.0.4"}))
    assert mixed.code == "mixed-oneapi-runtime" and mixed.severity == "warning"
    assert "dpcpp-cpp-rt 2025.0.4" in mixed.problem and "setvars.sh" in mixed.fix
    (alone,) = xpu.oneapi_findings(env=env, fs=FakeSystem())
    assert alone.code == "sourced-oneapi" and alone.severity == "info"


def test_arc_a_allocation_limit_and_relaxed_env():
    (limit,) = xpu.oneapi_findings(env={}, fs=FakeSystem(), device_names=[A770_NAME])
    assert limit.code == "arc-a-allocation-limit" and "4 GiB" in limit.problem
    assert "UR_L0_ENABLE_RELAXED_ALLOCATION_LIMITS=1" in limit.fix
    (relaxed,) = xpu.oneapi_findings(env={"UR_L0_ENABLE_RELAXED_ALLOCATION_LIMITS": "1"}, fs=FakeSystem(),
                                     device_names=[A770_NAME])
    assert relaxed.code == "relaxed-allocation-limits"


def test_non_linux_skips_render_nodes_and_macos_level_zero():
    assert codes(xpu.oneapi_findings(env={}, fs=FakeSystem(nodes=(), platform="win32"))) == []
    assert codes(xpu.oneapi_findings(env={}, fs=FakeSystem(nodes=(), libs=(), platform="darwin"))) == []


@pytest.mark.parametrize("name, expected", [
    (A770_NAME, True), ("Intel(R) Arc(TM) A370M Graphics", True), ("Intel(R) Data Center GPU Flex 170", True),
    ("Intel(R) Arc(TM) B580 Graphics", False), ("Intel(R) Arc(TM) Graphics", False),
    ("Intel(R) Data Center GPU Max 1550", False), ("NVIDIA A100-SXM4-40GB", False)])
def test_arc_a_detection(name, expected):
    assert xpu.is_arc_a_series(name) is expected


def test_real_system_probe():
    fs = System()
    found = xpu.oneapi_findings(fs=fs)
    assert all(f.problem and f.fix for f in found)
    if not fs.torch_has_xpu():
        assert "torch-without-xpu" in codes(found)
    if fs.platform().startswith("linux") and not fs.glob("/dev/dri/renderD*"):
        assert "no-render-node" in codes(found)
