"""The optional Intel Extension for PyTorch: probed by package metadata, imported only on a major.minor match.

Installed distributions are faked by monkeypatching the module's one metadata lookup; the extension itself by a
fake module returned from its one import point (which the mismatch tests forbid to be called at all)."""

import types
import warnings

import pytest
import torch

import xpu
from xpu import dtype as xdtype
from xpu import ipex as xipex

TORCH_MM = ".".join(torch.__version__.split(".")[:2])


def _installed(monkeypatch, version, module_present=True):
    monkeypatch.setattr(xipex, "_distribution_version",
                        lambda name: version if name == "intel-extension-for-pytorch" else None)
    monkeypatch.setattr(xipex, "_module_present", lambda name: module_present)


def _forbid_import(monkeypatch):
    def boom():
        raise AssertionError("a mismatched or absent IPEX must never be imported")
    monkeypatch.setattr(xipex, "_import_ipex", boom)


class _FakeIpex:
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def optimize(self, model, dtype=None, inplace=False):
        self.calls.append((model, dtype, inplace))
        if self.fail:
            raise RuntimeError("unsupported op")
        return types.SimpleNamespace(optimized=model)


def test_not_installed(monkeypatch):
    _installed(monkeypatch, None)
    _forbid_import(monkeypatch)
    status = xpu.ipex_status(env={})
    assert (status.installed, status.usable, status.version) == (False, False, None)
    assert "not installed" in status.reason
    model = torch.nn.Linear(2, 2)
    assert xpu.optimize(model, torch.bfloat16) is model


@pytest.mark.parametrize("version", ["2.8.10+xpu", "2.1.40+xpu", "1.13.0", "garbage"])
def test_version_mismatch_is_never_imported(monkeypatch, version):
    _installed(monkeypatch, version)
    _forbid_import(monkeypatch)
    status = xpu.ipex_status(env={})
    assert status.installed and not status.usable and status.version == version
    assert "does not match" in status.reason and torch.__version__ in status.reason
    model = torch.nn.Linear(2, 2)
    assert xpu.optimize(model, status=status) is model
    assert xpu.optimize(model) is model


def test_match_is_used(monkeypatch):
    _installed(monkeypatch, f"{TORCH_MM}.10+xpu")
    fake = _FakeIpex()
    monkeypatch.setattr(xipex, "_import_ipex", lambda: fake)
    status = xpu.ipex_status(env={})
    assert status.usable and "matches" in status.reason
    model = torch.nn.Linear(2, 2).train()
    out = xpu.optimize(model, torch.float16)
    assert out.optimized is model and not model.training
    assert fake.calls == [(model, torch.float16, True)]


def test_match_but_disabled_or_module_missing(monkeypatch):
    _installed(monkeypatch, f"{TORCH_MM}.0+cpu")
    _forbid_import(monkeypatch)
    assert "disabled by TORTOISE_DISABLE_IPEX" in xpu.ipex_status(env={"TORTOISE_DISABLE_IPEX": "1"}).reason
    _installed(monkeypatch, f"{TORCH_MM}.0+cpu", module_present=False)
    status = xpu.ipex_status(env={})
    assert not status.usable and "reinstall" in status.reason


def test_disable_zero_means_enabled(monkeypatch):
    _installed(monkeypatch, f"{TORCH_MM}.0+cpu")
    assert xpu.ipex_status(env={"TORTOISE_DISABLE_IPEX": "0"}).usable


def test_optimize_failure_falls_back_with_one_warning(monkeypatch):
    xdtype._WARNED.clear()
    _installed(monkeypatch, f"{TORCH_MM}.0+xpu")
    monkeypatch.setattr(xipex, "_import_ipex", lambda: _FakeIpex(fail=True))
    model = torch.nn.Linear(2, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert xpu.optimize(model) is model
        assert xpu.optimize(model) is model
    assert len([w for w in caught if "unsupported op" in str(w.message)]) == 1


def test_real_probe_on_this_machine():
    status = xpu.ipex_status()
    assert status.reason and status.torch_version == torch.__version__
    assert status.to_dict()["usable"] == status.usable


def test_major_minor():
    assert xipex.major_minor("2.8.10+xpu") == (2, 8)
    assert xipex.major_minor("2.13.0+cpu") == (2, 13)
    assert xipex.major_minor("dev") is None
