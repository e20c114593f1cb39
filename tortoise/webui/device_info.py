"""What the web UI asks the device layer (`xpu`): the devices to offer, the doctor report, the start-up check.

Every question goes to `xpu`; a device layer that fails is reported as text, never a crash of the page.
"""

from __future__ import annotations

import sys

AUTO = "auto"


def device_choices() -> list[str]:
    """'auto' (the device layer's own choice: xpu -> cuda -> mps -> cpu) then every device present."""
    import xpu
    return [AUTO] + [d for d in xpu.available_devices() if d != AUTO]


def doctor_report() -> str:
    """The device layer's full report (devices, memory, dtype policy, driver / oneAPI checks), as text."""
    import xpu
    return xpu.doctor_report()


def environment_findings() -> list[str]:
    """Start-up findings: problems of the XPU / oneAPI environment, each with its fix (none on a sane machine)."""
    import xpu
    return [str(f) for f in xpu.oneapi_findings()]


def print_environment_check(stream=None) -> None:
    """What `turtle` prints before starting the server: the device chosen, then any finding with its fix."""
    stream = stream or sys.stderr
    try:
        devices = device_choices()[1:]
        findings = environment_findings()
    except Exception as e:  # a broken device layer must not stop the UI from starting; the panel shows details
        print(f"turtle: device check failed ({type(e).__name__}: {e}); see the Device panel in the page.",
              file=stream)
        return
    print(f"turtle: devices found: {', '.join(devices) or 'none'}", file=stream)
    for finding in findings:
        print(f"turtle: {finding}", file=stream)
