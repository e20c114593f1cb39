"""What the web UI asks the device layer (`xpu`): the devices to offer, the doctor report, the start-up check.

Every question goes to `xpu`; a device layer that fails is reported as text, never a crash of the page.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

AUTO = "auto"


def device_choices() -> list[str]:
    """'auto' (the device layer's own choice: xpu -> cuda -> mps -> cpu) then every device present."""
    import xpu
    return [AUTO] + [d for d in xpu.available_devices() if d != AUTO]


def doctor_report(device: str | None = None) -> str:
    """The device layer's full report (device, memory, half policy, AR batch, IPEX, oneAPI checks), as text."""
    from xpu import doctor
    return doctor.format_report(doctor.build_report(None if device in (None, AUTO) else device))


def xpu_relevant(env: Mapping[str, str] | None = None, fs: Any = None) -> bool:
    """Whether the Intel XPU checks concern this machine (the device layer's `oneapi_applicability`: an XPU build
    of PyTorch, an Intel GPU present, an XPU device asked for, or a oneAPI environment set up)."""
    from xpu import oneapi_applicability
    return oneapi_applicability(env, fs).applicable


def environment_check(env: Mapping[str, str] | None = None, fs: Any = None) -> list[str]:
    """The lines `turtle` prints before serving: the device it will use; on XPU machines each oneAPI finding
    with its fix. Raises the device layer's DeviceUnavailable for an absent requested device."""
    import xpu
    env = os.environ if env is None else env
    dev = xpu.resolve_device(None, env)
    info = xpu.describe(dev, env)
    lines = [f"device {dev} ({info.name}); found: {', '.join(xpu.available_devices())}"]
    scope = xpu.oneapi_applicability(env, fs, device_type=dev.type)
    if not scope.applicable:
        return lines + [f"oneAPI checks not applicable: {scope.reason}"]
    names = [info.name] if dev.type == "xpu" else []
    findings = xpu.oneapi_findings(env, fs, device_names=names)
    if not findings:
        return lines + ["oneAPI / Intel GPU driver checks: no problems found"]
    for f in findings:
        lines.append(f"[{f.severity}] {f.problem}\n        fix: {f.fix}")
    return lines


def print_environment_check(stream=None) -> None:
    """Print the check; a failing device layer is reported in one line and does not stop the UI from starting."""
    stream = stream or sys.stderr
    try:
        lines = environment_check()
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        lines = [f"device check failed: {msg} (the page's Device panel has details)"]
    for line in lines:
        print(f"turtle: {line}", file=stream, flush=True)
