"""``python -m xpu``: the real CLI in a subprocess on this machine, and the report on a faked Arc A770."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import xpu
from xpu import doctor
from xpu.testing import A770, GIB, FakeGpu, HealthyXpuSystem, no_accelerators

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "TORTOISE_DEVICE"} | env
    return subprocess.run([sys.executable, "-m", "xpu", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=120)


def test_cli_absent_device_fails_with_one_line():
    # On this CPU machine plain "xpu" is absent; on a machine with an Intel GPU, ask for one that is not there.
    absent = "xpu:99" if "xpu:0" in xpu.available_devices() else "xpu"
    out = _run(TORTOISE_DEVICE=absent)
    assert out.returncode != 0 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: device '{absent}' requested (TORTOISE_DEVICE)")
    assert "found: " in lines[0] and "cpu" in lines[0]


def test_cli_json_on_cpu():
    out = _run("--json", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["device"]["type"] == "cpu" and report["device"]["total_memory"] > 0
    assert report["torch"] == torch.__version__ and "cpu" in report["available"]
    assert report["ar_batch"]["parameters"] == 421_526_786
    plan = report["ar_batch"]["plans"][0]
    assert plan["dtype"] == "float32" and plan["batch_size"] >= 1 and plan["reason"]
    assert report["ipex"]["reason"] and isinstance(report["oneapi"], list)


def test_text_report_in_process(monkeypatch, capsys):
    no_accelerators(monkeypatch)
    assert doctor.main(["--device", "cpu"]) == 0
    text = capsys.readouterr().out
    for label in ("device     cpu", "memory", "half", "AR batch", "IPEX", "oneAPI"):
        assert label in text


def test_unknown_device_exit_code(monkeypatch, capsys):
    no_accelerators(monkeypatch)
    assert doctor.main(["--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown device 'tpu'" in err


def test_report_on_fake_a770(monkeypatch):
    no_accelerators(monkeypatch)
    FakeGpu(monkeypatch, "xpu", [A770], free=[15 * GIB])
    report = doctor.build_report(None, env={}, fs=HealthyXpuSystem())
    assert report["device"]["device"] == "xpu:0" and report["device"]["arc_a_series"]
    assert report["half"]["dtype"] == "float16"
    plans = {p["dtype"]: p for p in report["ar_batch"]["plans"]}
    assert set(plans) == {"float32", "float16"} and plans["float16"]["batch_size"] >= plans["float32"]["batch_size"]
    assert all(p["largest_tensor_bytes"] < 4 * GIB for p in plans.values())
    assert [f["code"] for f in report["oneapi"]] == ["arc-a-allocation-limit"]
    text = doctor.format_report(report)
    assert A770["name"] in text and "largest single allocation 4.00 GiB" in text


class NoIntelSystem(HealthyXpuSystem):
    """A machine with no Intel GPU, a CPU (or CUDA) build of PyTorch and no oneAPI: every probe fails."""

    def glob(self, pattern):
        return []

    def find_library(self, name):
        return None

    def can_load(self, name):
        return False

    def torch_has_xpu(self):
        return False

    def intel_gpus(self):
        return []


def test_oneapi_checks_are_not_applicable_without_an_intel_gpu(monkeypatch):
    """Was: three [error] lines (no XPU torch, no render node, no Level Zero) on every non-Intel machine."""
    no_accelerators(monkeypatch)
    report = doctor.build_report("cpu", env={}, fs=NoIntelSystem())
    assert report["oneapi_checks"]["applicable"] is False and report["oneapi"] == []
    assert "no Intel GPU" in report["oneapi_checks"]["reason"]
    text = doctor.format_report(report)
    assert "oneAPI     not applicable: no Intel GPU" in text and "[error]" not in text


def test_oneapi_checks_apply_where_an_intel_gpu_or_oneapi_is_present(monkeypatch):
    no_accelerators(monkeypatch)
    gpu_but_cpu_torch = NoIntelSystem()
    gpu_but_cpu_torch.intel_gpus = lambda: ["/sys/class/drm/card1"]
    report = doctor.build_report("cpu", env={}, fs=gpu_but_cpu_torch)  # the fix to give: install the XPU wheels
    assert report["oneapi_checks"]["applicable"] and "Intel GPU is present (card1)" in report["oneapi_checks"]["reason"]
    assert [f["code"] for f in report["oneapi"]][:1] == ["torch-without-xpu"]
    report = doctor.build_report("cpu", env={"ONEAPI_ROOT": "/opt/intel/oneapi"}, fs=NoIntelSystem())
    assert report["oneapi_checks"]["applicable"] and "ONEAPI_ROOT" in report["oneapi_checks"]["reason"]
    assert xpu.oneapi_applicability({"TORTOISE_DEVICE": "xpu:1"}, NoIntelSystem()).applicable


def test_real_intel_gpu_probe_reads_sysfs(tmp_path, monkeypatch):
    from xpu import oneapi
    for card, vendor in (("card0", "0x10de\n"), ("card1", "0x8086\n")):
        (tmp_path / card / "device").mkdir(parents=True)
        (tmp_path / card / "device" / "vendor").write_text(vendor)
    real_glob = oneapi.glob.glob
    monkeypatch.setattr(oneapi.glob, "glob", lambda p: real_glob(p.replace("/sys/class/drm", str(tmp_path))))
    assert oneapi.System().intel_gpus() == [str(tmp_path / "card1")]


def test_cli_json_error_for_a_bogus_device():
    out = _run("--json", "--device", "bogus")
    assert out.returncode == 2
    payload = json.loads(out.stdout)
    assert payload["exit_code"] == 2 and payload["requested"] == "bogus"
    assert payload["error"].startswith("unknown device 'bogus'")
    assert out.stderr.strip().splitlines() == [f"error: {payload['error']}"]


def test_report_failure_at_run_time_exits_1(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "build_report", lambda device=None: (_ for _ in ()).throw(OSError("sysfs gone")))
    assert doctor.main(["--json"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["error"] == "OSError: sysfs gone" and out.err.count("\n") == 1
