"""The optional Intel Extension for PyTorch (IPEX), probed through package metadata before it is ever imported.

Importing an IPEX whose major.minor differs from torch's prints an error and ends the process (``os._exit``), so
:func:`ipex_status` decides from the installed distribution's version alone; :func:`optimize` imports the extension
only when that check passed. IPEX development stopped after 2.8 (its repository is archived): native ``torch.xpu``
is the primary Intel path and needs no extension.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from .dtype import warn_once

DISTRIBUTIONS = ("intel-extension-for-pytorch", "intel_extension_for_pytorch")
MODULE = "intel_extension_for_pytorch"
DISABLE_ENV = "TORTOISE_DISABLE_IPEX"


def _distribution_version(name: str) -> str | None:
    """The installed version of distribution ``name`` or None (the one place package metadata is read)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _module_present(name: str) -> bool:
    """Whether the top-level module could be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _import_ipex() -> Any:
    return importlib.import_module(MODULE)


def major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"\s*(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclasses.dataclass(frozen=True)
class IpexStatus:
    installed: bool
    version: str | None
    torch_version: str
    usable: bool
    reason: str  # always set: why it is or is not used

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ipex_status(env: Mapping[str, str] | None = None) -> IpexStatus:
    """Whether IPEX is installed and may be imported (its major.minor equals torch's)."""
    env = os.environ if env is None else env
    torch_version = torch.__version__
    version = next((v for v in map(_distribution_version, DISTRIBUTIONS) if v), None)
    if version is None:
        return IpexStatus(False, None, torch_version, False,
                          "not installed (optional; native torch.xpu needs no extension)")
    theirs, ours = major_minor(version), major_minor(torch_version)
    if theirs is None or theirs != ours:
        return IpexStatus(True, version, torch_version, False,
                          f"version {version} does not match torch {torch_version} (major.minor must be equal; "
                          "importing it would end the process): not used; uninstall it or install the matching "
                          "torch")
    if env.get(DISABLE_ENV, "") not in ("", "0"):
        return IpexStatus(True, version, torch_version, False, f"disabled by {DISABLE_ENV}")
    if not _module_present(MODULE):
        return IpexStatus(True, version, torch_version, False,
                          f"distribution {version} is installed but module {MODULE} is missing: reinstall it")
    return IpexStatus(True, version, torch_version, True, f"version {version} matches torch {torch_version}")


def optimize(model: torch.nn.Module, dtype: torch.dtype | None = None,
             status: IpexStatus | None = None) -> torch.nn.Module:
    """``ipex.optimize(model.eval(), dtype=dtype)`` when a version-matched IPEX is usable, else ``model`` unchanged.

    A failure inside IPEX falls back to the unchanged model with one warning.
    """
    status = ipex_status() if status is None else status
    if not status.usable:
        return model
    try:
        ipex = _import_ipex()
        return ipex.optimize(model.eval(), dtype=dtype, inplace=True)
    except Exception as exc:  # noqa: BLE001 - an optional accelerator must never break inference
        warn_once(f"ipex-optimize-{type(exc).__name__}",
                  f"intel_extension_for_pytorch.optimize failed ({type(exc).__name__}: {exc}); using the model as is")
        return model
