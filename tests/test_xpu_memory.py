"""AR memory estimate and batch sizing.

Parameter counts are those of the ORIGINAL UnifiedVoice (tortoise-tts 3.0.0) built on the meta device in
/work/origenv and counted with ``sum(p.numel() for p in model.parameters())``."""

import pytest
import torch

import xpu
from xpu import memory as xmem
from xpu.device import DeviceInfo
from xpu.testing import A770, B580, GIB, FakeGpu, no_accelerators

RELEASED_PARAMS = 421_526_786  # UnifiedVoice(**released config)
TINY = dict(layers=2, model_dim=64, heads=4, max_text_tokens=20, max_mel_tokens=30, number_text_tokens=40,
            number_mel_codes=100, start_mel_token=98, stop_mel_token=99, train_solo_embeddings=True, types=2)
TINY_PARAMS = 233_013  # UnifiedVoice(**TINY)
DEFAULT_PARAMS = 40_426_755  # UnifiedVoice()


def test_param_counts_match_the_original():
    assert xpu.ar_param_count(xmem.released_ar_config()) == RELEASED_PARAMS
    assert xpu.ar_param_count(TINY) == TINY_PARAMS
    assert xpu.ar_param_count({}) == DEFAULT_PARAMS


def test_mel_encoder_input_is_refused():
    with pytest.raises(ValueError, match="use_mel_codes_as_input"):
        xpu.ar_param_count(dict(use_mel_codes_as_input=False))


def test_estimate_terms():
    cfg = xmem.released_ar_config()
    seq = 2 + (402 + 2) + (604 + 2)  # conditioning inputs + text + mel, with start/stop tokens
    assert xmem.ar_max_sequence(cfg) == seq == 1012
    est = xpu.ar_memory(cfg, 16, 2)
    assert est.weights == RELEASED_PARAMS * 2
    assert est.kv_cache == 30 * 2 * 16 * seq * 1024 * 2
    assert est.logits == 16 * seq * 8194 * 4
    assert est.total == xpu.estimate_ar_memory(cfg, 16, 2) == est.weights + est.kv_cache + est.activations + est.logits
    assert est.largest_tensor == 16 * 16 * seq * seq * 4  # fp32 attention scores dominate at this size
    assert xpu.ar_memory(cfg, 16, 2, weights_loaded=True).weights == 0


def test_estimate_is_affine_in_batch():
    cfg = xmem.released_ar_config()
    e = [xpu.estimate_ar_memory(cfg, b, 4) for b in (1, 2, 3)]
    assert e[2] - e[1] == e[1] - e[0] > 0
    assert xpu.estimate_ar_memory(cfg, 8, 2) < xpu.estimate_ar_memory(cfg, 8, 4)


def _info(free, arc=False, name="GPU"):
    return DeviceInfo("xpu", 0, name, 16 * GIB, free, arc_a_series=arc, max_allocation=4 * GIB if arc else None)


def _check_plan(plan, info, cfg, nbytes, max_batch=xmem.DEFAULT_MAX_BATCH):
    """The chosen size fits, and the next power of two does not (or hits the cap)."""
    b = plan.batch_size
    assert b & (b - 1) == 0 and plan.fits
    assert xpu.estimate_ar_memory(cfg, b, nbytes) <= plan.budget
    nxt = xpu.ar_memory(cfg, 2 * b, nbytes)
    limit = info.max_allocation and info.max_allocation * xmem.ALLOCATION_MARGIN
    assert 2 * b > max_batch or nxt.total > plan.budget or (limit and nxt.largest_tensor > limit)


@pytest.mark.parametrize("free_gib", [3, 6, 11, 15, 40, 75])
@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_largest_power_of_two_that_fits(free_gib, dtype):
    cfg = xmem.released_ar_config()
    info = _info(free_gib * GIB)
    plan = xpu.plan_batch_size(info, cfg, dtype)
    _check_plan(plan, info, cfg, 4 if dtype is None else 2)


def test_arc_a_single_allocation_limit():
    cfg = xmem.released_ar_config()
    big = 75 * GIB  # memory is not the limit here: the 4 GiB buffer limit is
    plain = xpu.plan_batch_size(_info(big), cfg, torch.float16)
    arc = xpu.plan_batch_size(_info(big, arc=True), cfg, torch.float16)
    assert arc.batch_size < plain.batch_size
    assert arc.estimate.largest_tensor <= 4 * GIB * xmem.ALLOCATION_MARGIN < xpu.ar_memory(
        cfg, 2 * arc.batch_size, 2).largest_tensor
    assert "single-allocation limit" in arc.reason


def test_requested_batch_wins_and_is_validated():
    assert xpu.pick_batch_size(_info(1), TINY, requested=3) == 3
    assert xpu.pick_batch_size(_info(1), TINY, requested=64) == 64
    with pytest.raises(ValueError, match="at least 1"):
        xpu.pick_batch_size(_info(GIB), TINY, requested=0)


def test_cap_and_nothing_fits():
    cfg = xmem.released_ar_config()
    assert xpu.pick_batch_size(_info(75 * GIB), cfg, torch.float16, max_batch=16) == 16
    assert xpu.pick_batch_size(_info(75 * GIB), cfg, torch.float16, max_batch=12) == 8
    tiny = xpu.plan_batch_size(_info(GIB), cfg)
    assert tiny.batch_size == 1 and not tiny.fits and "--half" in tiny.reason


def test_resident_and_loaded_weights_change_the_budget():
    cfg = xmem.released_ar_config()
    info = _info(12 * GIB)
    base = xpu.plan_batch_size(info, cfg)
    assert xpu.plan_batch_size(info, cfg, resident_bytes=4 * GIB).batch_size < base.batch_size
    assert xpu.plan_batch_size(_info(4 * GIB), cfg, weights_loaded=True).batch_size > \
        xpu.plan_batch_size(_info(4 * GIB), cfg).batch_size


def test_pick_on_fake_devices(monkeypatch):
    no_accelerators(monkeypatch)
    FakeGpu(monkeypatch, "xpu", [A770, B580], free=[15 * GIB, 11 * GIB])
    cfg = xmem.released_ar_config()
    a770 = xpu.describe("xpu:0", env={})
    for dtype, nbytes in ((None, 4), (torch.float16, 2)):
        _check_plan(xpu.plan_batch_size("xpu:0", cfg, dtype), a770, cfg, nbytes)
    assert xpu.pick_batch_size("xpu:1", None, torch.bfloat16) == xpu.pick_batch_size(
        _info(11 * GIB), cfg, torch.bfloat16)


def test_cpu_for_real(monkeypatch):
    no_accelerators(monkeypatch)
    b = xpu.pick_batch_size("cpu", TINY, max_batch=8)
    assert b in (1, 2, 4, 8)
    assert xpu.pick_batch_size("cpu", TINY, max_batch=8) == 8  # the tiny model fits any machine able to run tests


def test_a_cpu_plans_a_float32_cache_under_half_weights():
    """tortoise.models.gpt2.cache_dtype keeps the KV cache float32 on a CPU; the batch plan counts it so."""
    cfg = xmem.released_ar_config()
    half = xpu.ar_memory(cfg, 16, 2)
    assert xpu.ar_memory(cfg, 16, 2, cache_bytes=4).kv_cache == 2 * half.kv_cache
    plan = xpu.plan_batch_size("cpu", dtype=torch.bfloat16, max_batch=1)
    assert plan.estimate.kv_cache == xpu.ar_memory(cfg, 1, 2, cache_bytes=4).kv_cache
