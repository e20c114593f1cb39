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
