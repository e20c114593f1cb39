"""``python -m xpu``: a doctor report on the device, its memory, the dtype policy, the AR batch size for the
released model, IPEX and the oneAPI environment. ``--json`` prints the same as JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .device import DEVICE_ENV, DeviceUnavailable, _call, available_devices, describe, device_count, resolve_device
from .dtype import half_dtype, half_policy_reason
from .ipex import ipex_status
from .memory import ar_param_count, plan_batch_size, released_ar_config
from .oneapi import oneapi_applicability, oneapi_findings

GIB = float(1 << 30)
# Parameters of the released networks resident beside the AR model in the default (not low-VRAM) pipeline:
# DiffusionTts 292.3M + CLVP 243.8M + UnivNet 14.8M (CVVP is loaded only when used).
OTHER_RELEASED_PARAMS = 292_300_000 + 243_800_000 + 14_800_000


def _xpu_names() -> list[str]:
    return [str(_call(torch.xpu, "get_device_name", i, default="")) for i in range(device_count("xpu"))]


def _batch_entry(info: Any, config: Mapping[str, Any], dtype: torch.dtype | None) -> dict[str, Any]:
    nbytes = 4 if dtype is None else torch.empty((), dtype=dtype, device="meta").element_size()
    plan = plan_batch_size(info, config, dtype, resident_bytes=OTHER_RELEASED_PARAMS * nbytes)
    return {"dtype": str(dtype or torch.float32).replace("torch.", ""), "batch_size": plan.batch_size,
            "fits": plan.fits, "estimate_bytes": plan.estimate.total, "budget_bytes": plan.budget,
            "largest_tensor_bytes": plan.estimate.largest_tensor, "reason": plan.reason}


def build_report(device: str | None = None, env: Mapping[str, str] | None = None, fs: Any = None) -> dict[str, Any]:
    """Everything the doctor prints, as plain data. Raises DeviceUnavailable for an absent requested device."""
    env = os.environ if env is None else env
    dev = resolve_device(device, env)
    info = describe(dev, env)
    half = half_dtype(info)
    config = released_ar_config()
    batches = [_batch_entry(info, config, None)] + ([_batch_entry(info, config, half)] if half else [])
    scope = oneapi_applicability(env, fs, device_type=dev.type)
    findings = oneapi_findings(env, fs, device_names=_xpu_names()) if scope.applicable else []
    return {
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "requested": device or env.get(DEVICE_ENV) or "auto", "available": available_devices(),
        "device": info.to_dict(),
        "half": {"dtype": str(half).replace("torch.", "") if half else None, "policy": half_policy_reason(info)},
        "ar_batch": {"model": "released autoregressive (UnifiedVoice), CLVP, diffusion and vocoder resident",
                     "parameters": ar_param_count(config), "plans": batches},
        "ipex": ipex_status(env).to_dict(),
        "oneapi_checks": scope.to_dict(),  # applicable: false on machines without any Intel GPU stack
        "oneapi": [f.to_dict() for f in findings],
    }


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / GIB:.2f} GiB"


def format_report(r: Mapping[str, Any]) -> str:
    d = r["device"]
    lines = [f"torch {r['torch']} · python {r['python']} · {r['platform']}",
             f"device     {d['device']}  ({d['name']})   requested: {r['requested']}; found: "
             f"{', '.join(r['available'])}",
             f"memory     total {_gib(d['total_memory'])}, free {_gib(d['free_memory'])}"
             + (" (estimate)" if d["free_memory_is_estimate"] else "")]
    if d["memory_note"]:
        lines.append(f"           {d['memory_note']}")
    if d["max_allocation"]:
        lines.append(f"           largest single allocation {_gib(d['max_allocation'])}")
    lines.append(f"half       {r['half']['policy']}")
    ar = r["ar_batch"]
    lines.append(f"AR batch   {ar['model']}, {ar['parameters'] / 1e6:.1f}M parameters")
    for p in ar["plans"]:
        lines.append(f"           {p['dtype']:>8}: batch {p['batch_size']:<4} needs {_gib(p['estimate_bytes'])} "
                     f"of {_gib(p['budget_bytes'])}; {p['reason']}")
    ipex = r["ipex"]
    lines.append(f"IPEX       {'used' if ipex['usable'] else 'not used'}: {ipex['reason']}")
    checks = r.get("oneapi_checks", {"applicable": True, "reason": ""})
    if not checks["applicable"]:
        lines.append(f"oneAPI     not applicable: {checks['reason']}")
    else:
        lines.append("oneAPI     " + ("no problems found" if not r["oneapi"] else
                                      f"Intel XPU checks ({checks['reason']}):"))
    for f in r["oneapi"]:
        lines.append(f"  [{f['severity']}] {f['problem']}\n      fix: {f['fix']}")
    return "\n".join(lines)


EXIT_FAILED, EXIT_BAD_INPUT = 1, 2  # as every console script of the project (see tortoise.utils.errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 with the report; 2 for an unknown or absent device (bad input); 1 when the report itself fails.
    With ``--json`` an error is printed as JSON too (``{"error": ..., "exit_code": ...}``) on stdout."""
    parser = argparse.ArgumentParser(prog="python -m xpu", description=__doc__)
    parser.add_argument("--device", default=None, help=f"xpu, xpu:N, cuda, cuda:N, mps, cpu or auto "
                                                      f"(default: ${DEVICE_ENV}, else auto)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)  # bad arguments: argparse exits 2
    try:
        report = build_report(args.device)
    except Exception as exc:  # noqa: BLE001 - every failure is one line (or one JSON object), never a traceback
        code = EXIT_BAD_INPUT if isinstance(exc, DeviceUnavailable) else EXIT_FAILED
        message = " ".join(str(exc).split()) or type(exc).__name__
        if code == EXIT_FAILED:
            message = f"{type(exc).__name__}: {message}"
        if args.json:
            print(json.dumps({"error": message, "exit_code": code,
                              "requested": args.device or os.environ.get(DEVICE_ENV) or "auto"}, indent=2))
        print(f"error: {message}", file=sys.stderr)
        return code
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
