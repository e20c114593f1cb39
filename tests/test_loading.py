"""The ModelSet: which networks take the half dtype, and the Intel Extension applied where the README says."""
import torch

import xpu
from tortoise.loading import HALF_NETWORKS, ModelSet
from tortoise.options import ModelOptions


def test_half_dtype_goes_to_the_tolerant_networks_only(models_dir):
    models = ModelSet("cpu", ModelOptions(models_dir=str(models_dir)), dtype=torch.bfloat16)
    for name in ("autoregressive", "clvp", "cvvp", "diffusion", "vocoder", "rlg_auto", "hifidecoder"):
        dtypes = {p.dtype for p in models.get(name).parameters()}
        if name in HALF_NETWORKS:
            assert torch.bfloat16 in dtypes, name
        else:
            assert dtypes == {torch.float32}, name
    ar = models.get("autoregressive")
    assert {p.dtype for p in ar.final_norm.parameters()} | {p.dtype for p in ar.mel_head.parameters()} == {
        torch.float32}


def test_networks_placed_on_an_xpu_go_through_the_intel_extension(models_dir, monkeypatch):
    """The device boundary is faked: low-VRAM mode keeps the networks on the CPU, the XPU is never touched."""
    calls = []
    monkeypatch.setattr(xpu, "optimize", lambda model, dtype=None: calls.append((type(model).__name__, dtype))
                        or model)
    models = ModelSet("xpu", ModelOptions(models_dir=str(models_dir)), dtype=torch.float16, high_vram=False)
    models.get("diffusion")
    models.get("vocoder")
    assert calls == [("DiffusionTts", torch.float16), ("UnivNetGenerator", None)]
    calls.clear()
    ModelSet("cpu", ModelOptions(models_dir=str(models_dir))).get("diffusion")
    assert calls == []
